"""What a UI layer plugs into the caller, which knows no UI toolkit (the notebook layer registers its own).

A UI layer registers each hook by name with :func:`register`; the caller asks :func:`hook` and does
without when none is registered (text on a terminal, or nothing).  Registering again replaces a hook,
so a layer imported twice does no harm.  Progress bar factories are registered in
:data:`de_magic.caller.progress.RENDERERS`, since several may apply.
"""

from __future__ import annotations

from typing import Callable

#: The hooks a UI layer may register, and what each is called with.
HOOKS = {
    "cell": "() -> the id of the cell running now (progress bars belong to it), or None",
    "publish": "(data, metadata, transient, update) -> None: show a remote cell's MIME bundle",
    "clear_output": "(wait) -> None: clear the current cell's output",
    "colors": "() -> the local traceback colour scheme, so remote tracebacks look like local ones",
    "show_job": "(job) -> None: show a Job so that its display follows its status and progress",
    "form": "(client, backend, entry, member=..., **call options) -> a form that makes the call",
}

_hooks: dict[str, Callable] = {}


def register(**hooks: Callable) -> None:
    """Plug in ``hooks`` by name (see :data:`HOOKS`)."""
    unknown = sorted(set(hooks) - set(HOOKS))
    if unknown:
        raise ValueError(f"no UI hook named {', '.join(unknown)}; the hooks are {', '.join(HOOKS)}")
    _hooks.update(hooks)


def hook(name: str) -> Callable | None:
    """The hook a UI layer registered under ``name``, or None."""
    return _hooks.get(name)
