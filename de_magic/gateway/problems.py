"""Errors of the HTTP gateway as RFC 9457 problem details (``application/problem+json``).

Every failure a caller over HTTP meets is one :class:`Problem`: an HTTP status, a one-line
``detail`` saying what happened and what to do, and de-magic's ``kind`` (the same names as
:mod:`de_magic.wire.errors`), so a program can tell a timeout from a lost backend from a bug
in the remote code without reading the text.
"""

from __future__ import annotations

import re
from http import HTTPStatus

from ..wire.errors import DeMagicError, RemoteError

MEDIA_TYPE = "application/problem+json"

#: de-magic error kind -> HTTP status (the kinds of de_magic.wire.errors, and the gateway's own)
STATUS = {
    "unknown_backend": 404, "unknown_method": 404, "job": 404, "not_found": 404,
    "invalid": 422, "bad_request": 400,
    "remote": 502, "protocol": 502, "error": 502,
    "busy": 503, "lost": 503,
    "timeout": 504,
    "too_large": 413,
    "unauthorized": 401, "refused": 403,
    "cancelled": 409,
    "method": 405,
}


class Problem(Exception):
    """An answer with an error status; ``extra`` members go into the problem document as they are."""

    def __init__(self, kind: str, detail: str, status: int | None = None, **extra):
        super().__init__(detail)
        self.kind, self.detail = kind, detail
        self.status = status or STATUS.get(kind, 502)
        self.extra = extra

    def document(self) -> dict:
        return {"type": f"urn:de-magic:problem:{self.kind}", "title": HTTPStatus(self.status).phrase,
                "status": self.status, "detail": self.detail, "kind": self.kind, **self.extra}


def from_error(exc: DeMagicError) -> Problem:
    """The problem a de-magic error is over HTTP; the remote code's exception keeps its type and traceback."""
    if isinstance(exc, RemoteError):
        message = exc.args[0] if exc.args else ""
        if exc.info.get("arguments"):  # the backend's decoding or validation refused them: the member never ran
            named = re.search(r"argument '([^']+)'", message)
            return Problem("invalid", f"the backend refused the arguments: {message}", field=named[1] if named else "")
        return Problem(exc.kind, f"the remote code raised {exc.remote_type}: {message}",
                       remote_type=exc.remote_type, traceback=exc.remote_traceback)
    return Problem(exc.kind, str(exc))


def from_header(header: dict) -> Problem:
    """The problem an ERROR header (e.g. of a failed job) describes."""
    kind = header.get("kind", "error")
    if kind == RemoteError.kind:
        return Problem(kind, f"the remote code raised {header.get('type', 'Exception')}: {header.get('message', '')}",
                       remote_type=header.get("type", "Exception"), traceback=header.get("traceback", ""))
    return Problem(kind, str(header.get("message", "unknown error")))


#: The problem document's JSON Schema, for the OpenAPI document.
SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "kind"],
    "properties": {
        "type": {"type": "string", "format": "uri-reference"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "kind": {"type": "string", "description": "de-magic's name of the error (timeout, lost, remote, ...)"},
        "field": {"type": "string", "description": "for 422: the argument that failed the schema"},
        "remote_type": {"type": "string", "description": "for 502: the type of the exception the remote code raised"},
        "traceback": {"type": "string", "description": "for 502: its traceback, formatted on the backend"},
    },
}
