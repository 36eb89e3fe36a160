"""Exceptions a de-magic caller can meet, and how they travel as ERROR headers.

Every failure that reaches a caller is one of these, so notebook code can
``except de_magic.DeMagicError`` and tell a timeout from a lost backend from a
bug in the remote function.  ``kind`` is the name used on the wire.
"""

from __future__ import annotations

import builtins
import sys


class DeMagicError(Exception):
    """Base class of every de-magic error."""

    kind = "error"


class CallTimeout(DeMagicError, TimeoutError):
    """No answer arrived within the call's timeout."""

    kind = "timeout"


class BackendLost(DeMagicError, ConnectionError):
    """The worker (or the broker) handling a call went away before answering."""

    kind = "lost"


class UnknownBackend(DeMagicError, LookupError):
    """No live backend of that name is registered at the broker."""

    kind = "unknown_backend"


class BackendOffline(UnknownBackend):
    """The backend is known at the broker (it remembers its API) but no worker of it is up now."""

    kind = "backend_offline"


class UnknownMethod(DeMagicError, AttributeError):
    """The backend has no member of that name."""

    kind = "unknown_method"


class Busy(DeMagicError):
    """The backend's call queue is full; try again later or add workers."""

    kind = "busy"


class PayloadTooLarge(DeMagicError, ValueError):
    """A message is larger than the configured maximum message size."""

    kind = "too_large"


class ProtocolMismatch(DeMagicError):
    """The peer sent something this side cannot understand (version, frames)."""

    kind = "protocol"


class Refused(DeMagicError, PermissionError):
    """The backend does not allow this (code execution, a caller's key, pickles)."""

    kind = "refused"


class BadAddress(DeMagicError, ValueError):
    """A broker address that is not of the form ``tcp://HOST:PORT`` (nor ipc:// or inproc://)."""

    kind = "address"


class Cancelled(DeMagicError):
    """The call was cancelled (interrupt) before it finished."""

    kind = "cancelled"


class Interrupted(KeyboardInterrupt):
    """The caller stopped waiting (Ctrl-C, a notebook's stop button); the message says what became of the
    remote work.  A ``KeyboardInterrupt`` still, so code that stops on one stops here too; a notebook shows
    it as its one line, not as the frames of de-magic's client that were waiting."""


class ReferenceGone(DeMagicError, LookupError):
    """A remote reference that was released, whose lease ran out, or whose worker is gone."""

    kind = "ref_gone"


class JobUnavailable(DeMagicError, LookupError):
    """No such job for this caller, or its result is gone (expired, evicted, lost in a restart)."""

    kind = "job"


#: How a backend's answer about a job starts when it has no such job for the caller (it may be
#: someone else's: that is not said); a caller then asks the backend's other workers.
NO_SUCH_JOB = "no such job"


def duration(seconds: float) -> str:
    """A span of time as an error message says it: ``7 days``, ``1.5 hours``, ``30 s``."""
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


class RemoteError(DeMagicError):
    """An exception raised by the remote code.

    ``remote_type`` is the qualified name of the original exception type,
    ``remote_traceback`` the traceback formatted on the backend.  When the
    original type can be found locally, the raised exception is also an
    instance of it (see :func:`remote_error`), so ``except ValueError`` works.
    """

    kind = "remote"

    def __init__(self, message: str, remote_type: str = "Exception", remote_traceback: str = "", **info):
        # not super().__init__: in a mix-in with the original type that would be the original's
        # __init__, which may want other arguments (JSONDecodeError: msg, doc, pos) or keywords
        BaseException.__init__(self, message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
        self.info = info

    def __str__(self) -> str:
        text = f"{self.remote_type}: {self.args[0]}" if self.args else self.remote_type
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.remote_type!r}, {self.args[0] if self.args else ''!r})"

    def __reduce__(self):
        return (_rebuild, (self.remote_type, self.args[0] if self.args else "", self.remote_traceback, self.info))


def _rebuild(remote_type, message, traceback, info):
    return remote_error({"type": remote_type, "message": message, "traceback": traceback, **info})


_BY_KIND = {cls.kind: cls for cls in (*DeMagicError.__subclasses__(), BackendOffline)}
_MIXINS: dict[type, type] = {}


def _local_type(qualname: str) -> type | None:
    """The exception class ``qualname`` names, if this process has loaded it already.

    Only loaded modules are looked in: the name comes from the peer, and importing
    a module the peer names would run that module's code here.
    """
    module, _, name = qualname.rpartition(".")
    found = getattr(sys.modules.get(module) if module else builtins, name, None)
    if isinstance(found, type) and issubclass(found, Exception) and not issubclass(found, DeMagicError):
        return found
    return None


def remote_error(info: dict) -> RemoteError:
    """A :class:`RemoteError` that is also an instance of the original type when it exists here."""
    info = dict(info)
    qualname = info.pop("type", "Exception")
    message = info.pop("message", "")
    traceback = info.pop("traceback", "")
    info.pop("kind", None)
    base = _local_type(qualname)
    cls = RemoteError
    if base is not None:
        cls = _MIXINS.get(base)
        if cls is None:
            try:
                cls = type(f"Remote{base.__name__}", (RemoteError, base), {"__module__": __name__})
            except TypeError:  # layout conflicts (e.g. some C exceptions) cannot be mixed in
                cls = RemoteError
            _MIXINS[base] = cls
    try:
        error = cls.__new__(cls)  # the original's __new__ may also want arguments (a user's own)
    except Exception:  # noqa: BLE001 - whatever it wants, the caller gets the error as a plain RemoteError
        error = RemoteError.__new__(RemoteError)
    RemoteError.__init__(error, message, qualname, traceback, **info)
    return error


def from_header(header: dict) -> DeMagicError:
    """The exception an ERROR header describes."""
    kind = header.get("kind", "error")
    if kind == RemoteError.kind:
        return remote_error(header)
    cls = _BY_KIND.get(kind, DeMagicError)
    return cls(header.get("message", "unknown error"))
