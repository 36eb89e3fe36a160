"""de-magic: call each other's analysis methods from a notebook.

Backends are plain, type-annotated Python functions and classes served to a
ZeroMQ broker (:mod:`de_magic.backend`, :mod:`de_magic.broker`); clients
discover and call them like local functions (:mod:`de_magic.client`).
"""

from .backend import Backend
from .broker import Broker
from .client import Client
from .errors import (
    BackendLost,
    BadAddress,
    Busy,
    CallTimeout,
    Cancelled,
    DeMagicError,
    PayloadTooLarge,
    ProtocolMismatch,
    Refused,
    RemoteError,
    UnknownBackend,
    UnknownMethod,
)
from .progress_display import Progress

__version__ = "0.1.0"

__all__ = [
    "Backend", "Broker", "Client", "Progress", "main",
    "BackendLost", "BadAddress", "Busy", "CallTimeout", "Cancelled", "DeMagicError", "PayloadTooLarge", "ProtocolMismatch",
    "Refused", "RemoteError", "UnknownBackend", "UnknownMethod",
]


def main(name: str, members=None, **options) -> None:
    """Command line of a backend module: ``python backend.py listen|schema|generate|test-connect``.

    ``options`` are defaults for ``listen`` by their flag names (``allow_code=True``,
    ``max_workers=8``, ``broker="tcp://..."``); flags given on the command line win.
    """
    import sys

    from .cli import backend_main

    backend_main(name, members, sys._getframe(1).f_globals, **options)


def load_ipython_extension(ipython) -> None:
    """``%load_ext de_magic``: register the ``%remote_*`` magics (see :mod:`de_magic.magics`).

    de-magic's errors then show as one line (remote errors with the remote traceback), without
    the frames of de-magic's own code, as IPython shows its own errors.
    """
    from .magics import RemoteMagics, show_error

    ipython.register_magics(RemoteMagics)
    ipython.set_custom_exc((DeMagicError,), show_error)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the prebuilt JupyterLab extension (the Remote backends sidebar) lives."""
    return [{"src": "labextension", "dest": "de-magic"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The jupyter_server extension serving the sidebar's REST endpoints (:mod:`de_magic.labserver`)."""
    return [{"module": "de_magic.labserver"}]
