"""Live progress bars in a notebook: ipywidgets bars for the ``progress`` events of a call.

:func:`register` (run by :mod:`de_magic.notebook`) makes them the renderer of calls made
inside a Jupyter kernel; elsewhere the caller layer's text renderer stays.
"""

from __future__ import annotations

import sys

from ..caller import progress, ui
from ..caller.progress import Progress, count


def in_kernel() -> bool:
    """True inside an IPython kernel (a notebook, not a terminal IPython)."""
    if "IPython" not in sys.modules:  # scripts never pay for importing IPython
        return False
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def register() -> None:
    """Widget bars for calls made in a kernel, each in the cell that made the call (idempotent)."""
    if _kernel_bars not in progress.RENDERERS:
        progress.RENDERERS.insert(0, _kernel_bars)
    ui.register(cell=_cell_id)


def _kernel_bars() -> "WidgetProgress | None":
    return WidgetProgress() if in_kernel() else None


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
        label.value = f"{count(report)} [{report.elapsed:.1f} s]"
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


def _cell_id() -> str | None:
    return ((_cell_parent() or {}).get("header") or {}).get("msg_id")
