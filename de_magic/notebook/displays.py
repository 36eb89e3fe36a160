"""How the caller's outputs show in IPython: remote cells' displays, traceback colours and live Jobs.

:func:`register` (run by :mod:`de_magic.notebook`) plugs these into the caller layer's UI hooks
(:mod:`de_magic.caller.ui`), which knows no IPython.
"""

from __future__ import annotations

from ..caller import ui
from .forms import CallForm
from .progress import WidgetProgress


def register() -> None:
    ui.register(publish=_publish, clear_output=_clear_output, colors=_colors, show_job=_show_job, form=CallForm)


def _publish(data: dict, metadata: dict, transient: dict | None, update: bool) -> None:
    from IPython.display import publish_display_data

    publish_display_data(data, metadata, transient=transient, update=update)


def _clear_output(wait: bool) -> None:
    from IPython.display import clear_output

    clear_output(wait=wait)


def _colors() -> str:
    from IPython import get_ipython

    shell = get_ipython()
    return getattr(shell, "colors", "Neutral") if shell is not None else "NoColor"


def _show_job(job) -> None:
    """Show ``job``; in a kernel the display follows its status and progress."""
    from IPython import get_ipython
    from IPython.display import display

    in_kernel = getattr(get_ipython(), "kernel", None) is not None
    bar = not isinstance(job._render, WidgetProgress)  # the job's own widget bars show its progress already
    handle = display(job._repr_mimebundle_(bar=bar), raw=True, display_id=in_kernel or None)
    if in_kernel:
        job.add_display(lambda bundle: handle.update(job._repr_mimebundle_(bar=bar), raw=True))
