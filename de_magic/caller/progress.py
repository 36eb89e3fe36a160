"""Showing the ``progress`` events of a call: text on a terminal, or what a UI layer registered.

A renderer is a callable taking one progress event (see :mod:`de_magic.backend.progress`
for its fields).  Progress ids are only unique within one backend process, so
every call gets a renderer of its own: :func:`default_progress` makes one per
call for clients that were not given ``on_progress=``.  This layer knows no UI
toolkit: the notebook layer adds live widget bars to :data:`RENDERERS`.
"""

from __future__ import annotations

import sys
import weakref
from typing import Callable, TextIO


#: Renderer factories a UI layer plugs in (the notebook registers widget bars): each returns a
#: renderer for one call, or None where it does not apply. The first that gives one wins.
RENDERERS: list[Callable[[], Callable[[dict], None] | None]] = []

#: The cell running now, as the UI layer knows it (a notebook's request id); None without one.
current_cell: Callable[[], str | None] = lambda: None


def default_progress() -> Callable[[dict], None] | None:
    """A fresh renderer for one call: what a UI layer registered, else text on a terminal, else none."""
    for factory in RENDERERS:
        renderer = factory()
        if renderer is not None:
            return renderer
    if sys.stderr.isatty():
        return TextProgress(sys.stderr)
    return None


def text_line(event: dict) -> str:
    """One event as ``desc: n/total unit``."""
    total = f"/{event['total']}" if event.get("total") else ""
    return f"{event.get('desc') or 'progress'}: {event['n']}{total} {event.get('unit', '')}".rstrip()


class TextProgress:
    """Progress as text on ``stream``: one line redrawn in place on a terminal, a line per event elsewhere.

    Nested bars share the line (outer first), so a loop inside a loop stays one line.
    """

    def __init__(self, stream: TextIO, live: bool | None = None):
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self._active: dict[int, dict] = {}

    def __call__(self, event: dict) -> None:
        if not self.live:
            print(text_line(event), file=self.stream, flush=True)
            return
        self._active[event["id"]] = event
        line = " | ".join(text_line(e) for e in self._active.values())
        if event.get("done"):
            del self._active[event["id"]]
        # a finished outermost bar keeps its line; anything else is redrawn over
        end = "\n" if event.get("done") and event.get("parent") is None else ""
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
        cached[1](header)


#: Handlers for :data:`de_magic.caller.session.EVENT_HANDLERS`.
EVENT_HANDLERS = {"progress": _session_progress}
