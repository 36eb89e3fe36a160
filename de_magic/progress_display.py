"""Showing the ``progress`` events of a call: live widget bars in a notebook, text in a terminal.

A renderer is a callable taking one :class:`Progress` report (what
:mod:`de_magic.progress` sends).  Progress ids are only unique within one backend process, so
every call gets a renderer of its own: :func:`default_progress` makes one per
call for clients that were not given ``on_progress=``.
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass, fields
from typing import Callable, TextIO


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
        return f"<Progress {self.desc or ''!r} {_count(self)} {self.elapsed:.1f} s{' done' if self.done else ''}>"


_FIELDS = frozenset(field.name for field in fields(Progress))


def default_progress() -> Callable[[Progress], None] | None:
    """A fresh renderer for one call: widgets inside a Jupyter kernel, text on a terminal, else none."""
    if in_kernel():
        return WidgetProgress()
    if sys.stderr.isatty():
        return TextProgress(sys.stderr)
    return None


def in_kernel() -> bool:
    """True inside an IPython kernel (a notebook, not a terminal IPython)."""
    if "IPython" not in sys.modules:  # scripts never pay for importing IPython
        return False
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def text_line(report: Progress) -> str:
    """One report as ``desc: n/total unit``."""
    return f"{report.desc or 'progress'}: {_count(report)}"


def _count(report: Progress) -> str:
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


class WidgetProgress:
    """Live ipywidgets bars for one call, nested bars indented under their parents.

    The bars appear at the first event: appended to ``output`` (an
    :class:`ipywidgets.Output`) when given, else displayed in the cell that
    made the renderer, even when events arrive on another thread (``submit()``).
    Finished nested bars are removed so that a loop in a loop does not pile up bars.
    """

    def __init__(self, output=None):
        self.output = output
        self.box = None
        self._bars: dict[int, tuple] = {}
        self._depth: dict[int, int] = {}
        self._parent = _cell_parent()

    def __call__(self, report: Progress) -> None:
        import ipywidgets as w

        if self.box is None:
            self.box = w.VBox()
            self._show()
        bar = self._bars.get(report.id)
        if bar is None:
            depth = self._depth[report.id] = self._depth.get(report.parent, -1) + 1
            bar = self._bars[report.id] = (
                w.IntProgress(min=0, max=1, description=report.desc or "", style={"description_width": "initial"}),
                w.Label())
            row = w.HBox(bar, layout=w.Layout(margin=f"0 0 0 {2 * depth}em"))
            self.box.children += (row,)
        progress_bar, label = bar
        total = report.total
        # an unknown total shows a full "info" bar with the count in the label
        progress_bar.max = max(total or report.n, 1)
        progress_bar.value = min(report.n, progress_bar.max)
        label.value = f"{_count(report)} [{report.elapsed:.1f} s]"
        if report.done:
            progress_bar.bar_style = "success"
            if self._depth[report.id] > 0:
                self._drop(report.id)
        elif not total:
            progress_bar.bar_style = "info"

    def _drop(self, bar_id: int) -> None:
        row = next(r for r in self.box.children if r.children[0] is self._bars[bar_id][0])
        self.box.children = tuple(r for r in self.box.children if r is not row)
        _close(row)
        del self._bars[bar_id]

    def close(self) -> None:
        """Close the widgets (and so their comms), e.g. when the output showing them is cleared."""
        if self.box is not None:
            _close(self.box)

    def _show(self) -> None:
        if self.output is not None:
            self.output.append_display_data(self.box)
            return
        from IPython import get_ipython
        from IPython.display import display

        shell = get_ipython()
        token = None
        if self._parent is not None and hasattr(shell, "set_thread_parent"):
            token = shell.set_thread_parent(self._parent)
        try:
            display(self.box)
        finally:
            if token is not None:
                shell.reset_thread_parent(token)


def _close(widget) -> None:
    for child in getattr(widget, "children", ()):
        _close(child)
    widget.close()


def _cell_parent() -> dict | None:
    """The request (cell) the kernel is running now, so that output from other threads lands in it."""
    if not in_kernel():
        return None
    from IPython import get_ipython

    get_parent = getattr(get_ipython(), "get_parent", None)
    return get_parent() if get_parent else None


#: session -> (cell, renderer); weak, so a session that is gone takes its renderer along
_session_renderers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _session_progress(header: dict, frames: list, session) -> None:
    """Progress of a session's request (a remote cell): a renderer per session and cell.

    The session outlives cells, but bars belong in the cell that runs; progress
    ids are unique within the session's one worker process.
    """
    cell = ((_cell_parent() or {}).get("header") or {}).get("msg_id")
    cached = _session_renderers.get(session)
    if cached is None or cached[0] != cell:
        cached = _session_renderers[session] = (cell, default_progress())
    if cached[1] is not None:
        cached[1](Progress.from_event(header))


#: Handlers for :data:`de_magic.session.EVENT_HANDLERS`.
EVENT_HANDLERS = {"progress": _session_progress}
