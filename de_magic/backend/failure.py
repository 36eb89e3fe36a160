"""What a call that raised is answered with: one line for de-magic's own errors, else the user's
exception with its traceback, from the first frame of the user's code.

The server answers its calls' errors with it, and the job store keeps it as a failed job's answer.
"""

from __future__ import annotations

import contextlib
import traceback

from ..wire import protocol as P
from ..wire.errors import DeMagicError, RemoteError

#: Modules whose frames are the backend's own (and a Dask backend's: its pool and Dask's client), left out of
#: the traceback a caller sees: it starts at the member.
_MACHINERY = {"de_magic.backend.server", "de_magic.backend.running", "de_magic.backend.jobs", "de_magic.backend.refs",
              "de_magic.backend.members", "de_magic.backend.daskpool",
              "distributed.client", "de_magic.schema.arguments", "de_magic.wire.serialize", "de_magic.wire.jsoncodec"}


#: Set on an exception that refused the caller's arguments (before the member ran), so the answer says so.
_ARGUMENTS = "de_magic_arguments"


@contextlib.contextmanager
def checking_arguments():
    """Errors in here are the caller's arguments (decoding, validation), not the member's: the answer
    carries ``arguments: true``, which lets the HTTP gateway answer 422 rather than 502."""
    try:
        yield
    except (TypeError, ValueError) as exc:
        setattr(exc, _ARGUMENTS, True)
        raise


def error_header(exc: BaseException) -> bytes:
    """ERROR header for an exception raised while serving a call; never raises itself, whatever the
    exception's ``__str__`` does: an unanswered call would wait for ever and hold its slot."""
    cls = type(exc)
    qualname = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    message = describe(exc)
    if isinstance(exc, DeMagicError) and not isinstance(exc, RemoteError):
        return P.error_header(exc.kind, message)
    # drop the backend's own frames: the caller wants to see the user code
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__") in _MACHINERY:
        tb = tb.tb_next
    try:
        text = "".join(traceback.format_exception(cls, exc, tb))
    except Exception:  # noqa: BLE001 - e.g. a __str__ of a chained exception that fails differently
        text = f"{qualname}: {message}\n(the traceback could not be formatted)\n"
    extra = {"arguments": True} if getattr(exc, _ARGUMENTS, False) else {}
    return P.error_header(RemoteError.kind, message, type=qualname, traceback=text, **extra)


def describe(exc: BaseException) -> str:
    """``str(exc)``, or where that fails (a broken ``__str__``), a description that says so."""
    try:
        text = str(exc)
        if isinstance(text, str):
            return text
    except Exception:  # noqa: BLE001 - the exception's own code is the user's
        pass
    try:
        return f"<{type(exc).__name__}: str() of this exception failed; args {repr(exc.args)[:200]}>"
    except Exception:  # noqa: BLE001 - its args' __repr__ may fail too
        return f"<{type(exc).__name__}: str() of this exception failed>"

