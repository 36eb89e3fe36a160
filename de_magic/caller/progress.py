"""Showing the ``progress`` events of a call: text on a terminal, or what a UI layer registered.

A renderer is a callable taking one :class:`Progress` report (what
:mod:`de_magic.backend.progress` sends).  Progress ids are only unique within one backend
process, so every call gets a renderer of its own: :func:`default_progress` makes one per call
for clients that were not given ``on_progress=``.  This layer knows no UI toolkit: the notebook
layer adds live widget bars to :data:`RENDERERS`.
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass, fields
from typing import Callable, TextIO

from . import ui


@dataclass(frozen=True)
class Progress:
    """One progress report of a loop running remotely: what ``on_progress=`` callbacks receive.

    ``id`` tells the loops of one call apart; ``parent`` is the ``id`` of the loop around this one.
    """

    desc: str | None
    n: int
    total: int | None = None
    unit: str = ""
    elapsed: float = 0.0
    done: bool = False
    id: int = 0
    parent: int | None = None

    @classmethod
    def from_event(cls, event: dict) -> "Progress":
        """The report a ``progress`` event carries (keys that newer backends may add are left out)."""
        return cls(**{key: event[key] for key in _FIELDS if key in event})

    def __getitem__(self, key: str):
        """``report["n"]``: callbacks written when reports were dicts keep working."""
        return getattr(self, key)

    def __repr__(self) -> str:
        return f"<Progress {self.desc or ''!r} {count(self)} {self.elapsed:.1f} s{' done' if self.done else ''}>"


_FIELDS = frozenset(field.name for field in fields(Progress))


#: Renderer factories a UI layer plugs in (the notebook registers widget bars): each returns a
#: renderer for one call, or None where it does not apply. The first that gives one wins.
RENDERERS: list[Callable[[], Callable[[Progress], None] | None]] = []


def current_cell() -> str | None:
    """The cell running now, as a UI layer knows it (a notebook's request id); None without one."""
    cell = ui.hook("cell")
    return cell() if cell is not None else None


def default_progress() -> Callable[[Progress], None] | None:
    """A fresh renderer for one call: what a UI layer registered, else text on a terminal, else none."""
    for factory in RENDERERS:
        renderer = factory()
        if renderer is not None:
            return renderer
    if sys.stderr.isatty():
        return TextProgress(sys.stderr)
    return None


def text_line(report: Progress) -> str:
    """One report as ``desc: n/total unit``."""
    return f"{report.desc or 'progress'}: {count(report)}"


def count(report: Progress) -> str:
    return f"{report.n}{f'/{report.total}' if report.total else ''} {report.unit}".rstrip()


class TextProgress:
    """Progress as text on ``stream``: one line redrawn in place on a terminal, a line per event elsewhere.

    Nested bars share the line (outer first), so a loop inside a loop stays one line.
    """

    def __init__(self, stream: TextIO, live: bool | None = None):
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self._active: dict[int, Progress] = {}

    def __call__(self, report: Progress) -> None:
        if not self.live:
            print(text_line(report), file=self.stream, flush=True)
            return
        self._active[report.id] = report
        line = " | ".join(text_line(r) for r in self._active.values())
        if report.done:
            del self._active[report.id]
        # a finished outermost bar keeps its line; anything else is redrawn over
        end = "\n" if report.done and report.parent is None else ""
        self.stream.write(f"\r\033[K{line}{end}")
        self.stream.flush()


#: session -> (cell, renderer); weak, so a session that is gone takes its renderer along
_session_renderers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _session_progress(header: dict, frames: list, session) -> None:
    """Progress of a session's request (a remote cell): a renderer per session and cell.

    The session outlives cells, but bars belong in the cell that runs; progress
    ids are unique within the session's one worker process.
    """
    cell = current_cell()
    cached = _session_renderers.get(session)
    if cached is None or cached[0] != cell:
        cached = _session_renderers[session] = (cell, default_progress())
    if cached[1] is not None:
        cached[1](Progress.from_event(header))


#: Handlers for :data:`de_magic.caller.session.EVENT_HANDLERS`.
EVENT_HANDLERS = {"progress": _session_progress}
