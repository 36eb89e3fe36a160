"""The de-magic wire protocol: frames and message types, without any I/O.

Everything that crosses a ZeroMQ socket is built and taken apart here, so the
rules live in one place and can be tested without sockets (see
``docs/protocol.md`` for the prose version).  Every message starts with the
:data:`VERSION` frame so that peers of different protocol generations fail with
a clear error instead of misreading each other.

The broker reads only the small routing frames (type, ids, service name); the
``header`` (small JSON) and the ``payload`` frames (pickle or JSON, plus
out-of-band buffers) are opaque to it and are forwarded as they arrived.
"""

from __future__ import annotations

import json
from typing import NamedTuple, Sequence

VERSION = b"de-magic/1"

# client -> broker
CALL = b"CALL"
CANCEL = b"CANCEL"
LIST = b"LIST"
QUERY = b"QUERY"
# broker -> client (REPLY, EVENT and ERROR also travel worker -> broker)
REPLY = b"REPLY"
EVENT = b"EVENT"
ERROR = b"ERROR"
STATUS = b"STATUS"
# worker <-> broker
READY = b"READY"
HEARTBEAT = b"HEARTBEAT"
BYE = b"BYE"
SLOT = b"SLOT"
DISCONNECT = b"DISCONNECT"

#: Minimum number of frames after the version frame, per message type and direction.
#: Clients and workers share one broker socket; the type alone tells them apart.
FROM_CLIENT = {CALL: 5, CANCEL: 2, LIST: 3, QUERY: 2}
FROM_WORKER = {READY: 3, SLOT: 2, HEARTBEAT: 1, BYE: 1, REPLY: 4, EVENT: 4, ERROR: 4}
TO_CLIENT = {REPLY: 3, EVENT: 3, ERROR: 3, STATUS: 3}
TO_WORKER = {CALL: 4, CANCEL: 3, HEARTBEAT: 1, DISCONNECT: 2}

# Request status answers to QUERY.
PENDING = b"pending"
UNKNOWN = b"unknown"


class ProtocolError(ValueError):
    """A message that does not follow this protocol (wrong version, frames, type)."""


class Message(NamedTuple):
    """A decoded message: its type and the frames after the type frame."""

    type: bytes
    frames: Sequence


def _as_bytes(frame) -> bytes:
    return frame if isinstance(frame, bytes) else frame.bytes


def decode(frames: Sequence, rules: dict[bytes, int]) -> Message:
    """Check version and shape of ``frames`` (without routing envelope).

    ``rules`` is one of the ``FROM_*``/``TO_*`` tables.  Frames may be ``bytes``
    or :class:`zmq.Frame`; the returned frames keep their original objects so
    payloads can be forwarded without copies.
    """
    if len(frames) < 2:
        raise ProtocolError(f"message has {len(frames)} frame(s); at least 2 (version, type) are needed")
    version = _as_bytes(frames[0])
    if version != VERSION:
        shown = version[:40].decode("ascii", "replace")
        raise ProtocolError(
            f"protocol version mismatch: peer speaks {shown!r}, this side speaks {VERSION.decode()!r}"
        )
    mtype = _as_bytes(frames[1])
    need = rules.get(mtype)
    if need is None:
        shown = mtype[:40].decode("ascii", "replace")
        raise ProtocolError(f"unknown message type {shown!r}; expected one of {sorted(t.decode() for t in rules)}")
    if len(frames) - 1 < need:
        raise ProtocolError(f"{mtype.decode()} message needs {need} frames after the version, got {len(frames) - 1}")
    return Message(mtype, frames[2:])


def encode(mtype: bytes, *frames) -> list:
    """Frames for a message of type ``mtype``; the last argument may be a payload list."""
    return [VERSION, mtype, *frames]


def dump_header(header: dict) -> bytes:
    return json.dumps(header, separators=(",", ":"), default=str).encode()


def load_header(frame) -> dict:
    """Decode a JSON header frame, raising :class:`ProtocolError` on garbage."""
    try:
        value = json.loads(_as_bytes(frame))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"header frame is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("header frame must be a JSON object")
    return value


def error_header(kind: str, message: str, **extra) -> bytes:
    """Header of an ERROR message; ``kind`` is one of the names in :mod:`de_magic.errors`."""
    return dump_header({"kind": kind, "message": message, **extra})


def load_ready_info(frame) -> dict:
    """Decode the info frame of READY, checking the fields the broker relies on.

    The broker checks before it changes anything, so a malformed registration
    cannot leave half-applied state (an API or a caller restriction) on a live backend name.
    """
    info = load_header(frame)
    for key in ("capacity", "queue"):
        if key in info and type(info[key]) is not int:
            raise ProtocolError(f"READY info: {key!r} must be an integer")
    if not isinstance(info.get("api", {}), dict):
        raise ProtocolError("READY info: 'api' must be an object")
    allowed = info.get("allow_clients")
    if allowed is not None and not (isinstance(allowed, list) and all(isinstance(k, str) for k in allowed)):
        raise ProtocolError("READY info: 'allow_clients' must be a list of strings")
    return info
