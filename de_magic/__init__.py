"""de-magic: call each other's analysis methods from a notebook.

The package is layered, and each layer imports only those below it:

=================================  ==========================================================
``de_magic.cli``                   the ``de-magic`` command
``de_magic.notebook``, ``.lab``    magics, forms, progress bars, widget mirror; the sidebar's server
``de_magic.embedded``              a broker and demo backends started on someone's behalf
``de_magic.caller``, ``.backend``, the caller's side (client, proxies, sessions), the backend side
``de_magic.broker``                (serving modules, running cells), the broker (routing core, loop)
``de_magic.schema``                API descriptions and argument checks
``de_magic.wire``                  protocol, framing, codecs, errors, defaults, keys
=================================  ==========================================================

Names are imported on first use (PEP 562), so ``import de_magic`` costs almost nothing; inside
a Jupyter kernel the notebook layer is plugged in when the client is first used.
"""

from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "Backend": "de_magic.backend.server",
    "progress": "de_magic.backend.progress",
    "current_call": "de_magic.backend.callcontext",
    "Broker": "de_magic.broker.server",
    "Client": "de_magic.caller.client",
    "RemoteSession": "de_magic.caller.session",
    "RemoteRef": "de_magic.caller.refs",
    "Job": "de_magic.caller.jobs",
    "Progress": "de_magic.caller.progress",
    **{name: "de_magic.wire.errors" for name in (
        "BackendLost", "BackendOffline", "BadAddress", "Busy", "CallTimeout", "Cancelled", "DeMagicError", "Interrupted",
        "JobUnavailable",
        "PayloadTooLarge",
        "ProtocolMismatch", "ReferenceGone", "Refused", "RemoteError", "UnknownBackend", "UnknownMethod")},
}
#: names whose users in a kernel expect widgets (progress bars, forms, mirrored widgets)
_UI_NAMES = {"Client", "RemoteSession"}

__all__ = [*_EXPORTS, "main"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'de_magic' has no attribute {name!r}")
    if name in _UI_NAMES and _in_kernel():
        importlib.import_module("de_magic.notebook")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # next time without __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _in_kernel() -> bool:
    return "ipykernel" in sys.modules


def main(name: str, members=None, **options) -> None:
    """Command line of a backend module: ``python backend.py listen|schema|generate|test-connect``.

    ``options`` are defaults for ``listen`` by their flag names (``allow_code=True``,
    ``max_workers=8``, ``broker="tcp://..."``); flags given on the command line win.
    """
    from .cli import backend_main

    backend_main(name, members, sys._getframe(1).f_globals, **options)


def load_ipython_extension(ipython) -> None:
    """``%load_ext de_magic``: register the ``%remote_*`` magics (see :mod:`de_magic.notebook.magics`).

    de-magic's errors then show as one line (remote errors with the remote traceback), without
    the frames of de-magic's own code, as IPython shows its own errors.
    """
    from .notebook.magics import RemoteMagics, show_errors_short

    ipython.register_magics(RemoteMagics)
    show_errors_short(ipython)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the prebuilt JupyterLab extension (the Remote backends sidebar) lives."""
    return [{"src": "labextension", "dest": "de-magic"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The jupyter_server extension serving the sidebar's REST endpoints (:mod:`de_magic.lab.server`)."""
    return [{"module": "de_magic.lab.server"}]
