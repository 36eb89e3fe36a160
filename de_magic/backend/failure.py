"""What a call that raised is answered with: one line for de-magic's own errors, else the user's
exception with its traceback, from the first frame of the user's code.

The server answers its calls' errors with it, and the job store keeps it as a failed job's answer.
"""

from __future__ import annotations

import traceback

from ..wire import protocol as P
from ..wire.errors import DeMagicError, RemoteError

#: Modules whose frames are the backend's own (and a Dask backend's: its pool and Dask's client), left out of
#: the traceback a caller sees: it starts at the member.
_MACHINERY = {"de_magic.backend.server", "de_magic.backend.jobs", "de_magic.backend.refs", "de_magic.backend.daskpool",
              "distributed.client", "de_magic.schema.arguments", "de_magic.wire.serialize", "de_magic.wire.jsoncodec"}


def error_header(exc: BaseException) -> bytes:
    """ERROR header for an exception raised while serving a call."""
    if isinstance(exc, DeMagicError) and not isinstance(exc, RemoteError):
        return P.error_header(exc.kind, str(exc))
    cls = type(exc)
    qualname = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    # drop the backend's own frames: the caller wants to see the user code
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__") in _MACHINERY:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(cls, exc, tb))
    return P.error_header(RemoteError.kind, str(exc), type=qualname, traceback=text)

