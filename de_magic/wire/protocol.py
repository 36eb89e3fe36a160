"""The de-magic wire protocol: every message, built and parsed here, without any I/O.

Each message type has one constructor (a function that returns its frames)
and one parser (a table entry that turns frames into a named tuple), so
broker, backend and client never assemble or read frames by position, and the
rules can be tested without sockets (``docs/protocol.md`` is the prose
version).  Every message starts with the :data:`VERSION` frame, so peers of
different protocol generations fail with a clear error instead of misreading
each other.  Any decoding failure, of whatever kind, is a
:class:`ProtocolError`, which carries the request it belongs to where one is
known so that it can be answered.

The broker reads only the small routing frames (type, ids, backend name); a
request's ``body`` (a small JSON header, then pickle or JSON payload frames
with their out-of-band buffers) is opaque to it and forwarded as it arrived.
Constructors of messages the broker sends take the routing address first.
"""

from __future__ import annotations

import json
import re
from typing import Callable, NamedTuple, Sequence

from .errors import ProtocolMismatch

VERSION = b"de-magic/4"

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
BUSY = b"BUSY"
WELCOME = b"WELCOME"
REJECT = b"REJECT"
DISCONNECT = b"DISCONNECT"
USAGE = b"USAGE"

#: The worker id in the id of a job started while its backend was offline: the broker holds it. A CALL pinned to
#: this id (no worker may register with it) asks the broker about the jobs it holds (docs/protocol.md).
BROKER_HELD = b"\x00"

# Request status answers to QUERY.
PENDING = b"pending"
UNKNOWN = b"unknown"

#: Longest backend name, in bytes; names appear in logs, listings and the sidebar.
MAX_NAME = 200
#: Largest USAGE info frame, in bytes: the broker keeps it and repeats it in every listing.
MAX_USAGE = 64 << 10
#: Most sessions a USAGE lists one by one (the largest); the count covers them all.
MAX_USAGE_SESSIONS = 100
#: Deepest nesting of lists and objects a header may have: deeper ones are refused when decoded, so that
#: logging, listing or re-encoding a header can never run out of recursion.
MAX_DEPTH = 64


class ProtocolError(ValueError):
    """A message that does not follow this protocol (version, frames, type, encoding).

    ``client`` and ``rid`` name the request the message belongs to, where the
    message got far enough to tell: the receiver answers that request with an ERROR.
    """

    legacy: bytes = b""  #: the type of a message in the layout of versions 1-3 (answered in that layout)

    def __init__(self, message: str, rid: bytes | None = None, client: bytes | None = None):
        super().__init__(message)
        self.rid, self.client = rid, client


def _bytes(frame) -> bytes:
    return frame if isinstance(frame, bytes) else frame.bytes


def _text(frame) -> str:
    raw = _bytes(frame)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ProtocolError("a text field is not UTF-8") from None


def _name(frame) -> str:
    name = _text(frame)
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise ProtocolError(f"a backend name must be 1 to {MAX_NAME} printable characters")
    return name


def load_header(frame, limit: int | None = None) -> dict:
    """Decode a JSON object frame (of at most ``limit`` bytes), raising :class:`ProtocolError` on anything else."""
    raw = _bytes(frame)
    if limit is not None and len(raw) > limit:
        raise ProtocolError(f"header frame over {limit} bytes")
    known = _seen_headers.get(raw)
    if known is not None:
        return known.copy()
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: a header of 100,000 "[" must cost one error, not the thread that reads it
        raise ProtocolError(f"header frame is not JSON: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise ProtocolError("header frame must be a JSON object")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise ProtocolError(f"header frame nests lists and objects more than {MAX_DEPTH} deep")
    if len(raw) <= _SEEN_SIZE and all(type(item) in _FLAT for item in value.values()):
        if len(_seen_headers) >= _SEEN_COUNT:  # a peer sending ever new headers costs decoding, never memory
            _seen_headers.clear()
        _seen_headers[raw] = value.copy()
    return value


#: Small flat headers decoded lately, by their bytes: a tiny call's come again and again, and decoding one
#: costs several µs on each side; each caller gets a copy of its own.
_seen_headers: dict[bytes, dict] = {}
_SEEN_SIZE, _SEEN_COUNT = 256, 512
_FLAT = frozenset({str, int, float, bool, type(None)})


def _depth(value) -> int:
    """How deep lists and objects nest in a decoded JSON value (without recursion: it may be very deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


_HEADER_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)  # made once: json.dumps makes one a call


def dump_header(header: dict) -> bytes:
    """A header as JSON; one whose values are all short strings (a call's ``member`` and ``method``) is encoded once."""
    try:
        key = tuple(header.items())
        known = _dumped_headers.get(key)
    except TypeError:  # a value that cannot be hashed
        key = known = None
    if known is not None:
        return known
    encoded = _HEADER_ENCODER.encode(header).encode()
    if key is not None and len(encoded) <= _SEEN_SIZE and all(type(value) is str for _, value in key):
        # (strings alone: a key of True would also find a header of 1, and 1 one of 1.0)
        if len(_dumped_headers) >= _SEEN_COUNT:
            _dumped_headers.clear()
        _dumped_headers[key] = encoded
    return encoded


_dumped_headers: dict[tuple, bytes] = {}


def error_header(kind: str, message: str, **extra) -> bytes:
    """Header of an ERROR message; ``kind`` is one of the names in :mod:`de_magic.wire.errors`."""
    return dump_header({"kind": kind, "message": message, **extra})


# -- messages, as parsed ----------------------------------------------------------------------
# A field is read by its converter; ``body``/``payload`` take every remaining frame (at least
# ``min_rest`` of them) as they arrived, so payloads are forwarded without copies.

class Call(NamedTuple):  # client -> broker
    rid: bytes
    backend: str
    worker: bytes  #: public id of the worker to pin to, or empty for any
    body: list  #: header frame, then payload frames


class Cancel(NamedTuple):  # client -> broker
    rid: bytes


class List(NamedTuple):  # client -> broker
    rid: bytes
    query: dict


class Query(NamedTuple):  # client -> broker
    rid: bytes
    more: list  #: further request ids: a client waiting for many asks after all of them at once

    def ids(self) -> list[bytes]:
        """Every request id asked after."""
        return [self.rid, *self.more]


class Ready(NamedTuple):  # worker control -> broker
    name: str
    worker: bytes  #: public worker id (listings show it; sessions pin to it)
    secret: bytes  #: shared with the worker's slots, known to nobody else
    info: dict


class Usage(NamedTuple):  # worker control -> broker: what its sessions and references hold
    info: dict


class Slot(NamedTuple):  # worker slot -> broker: free (for the slots named, from the control connection)
    worker: bytes
    secret: bytes
    slots: list  #: empty from a slot itself; from the control connection, the slots it speaks for


class SlotBusy(NamedTuple):  # worker slot -> broker: taken by a call through another broker or a direct one
    worker: bytes
    secret: bytes
    slots: list


class Heartbeat(NamedTuple):  # both ways
    pass


class Bye(NamedTuple):  # worker -> broker
    pass


class Answer(NamedTuple):  # worker -> broker: REPLY, EVENT or ERROR for a request
    type: bytes
    client: bytes
    rid: bytes
    body: list


class Reply(NamedTuple):  # broker -> client
    rid: bytes
    header: dict
    payload: list


class Event(NamedTuple):  # broker -> client
    rid: bytes
    header: dict
    payload: list


class Error(NamedTuple):  # broker -> client
    rid: bytes
    header: dict


class Status(NamedTuple):  # broker -> client
    rid: bytes
    state: bytes
    more: list  #: (request id, state) frame pairs answering a QUERY's further ids

    def pairs(self) -> list[tuple[bytes, bytes]]:
        """Every (request id, state) answered."""
        states = [self.rid, self.state, *self.more]
        return list(zip(states[::2], states[1::2]))


class Welcome(NamedTuple):  # broker -> worker control
    info: dict


class Reject(NamedTuple):  # broker -> worker control: registration refused, do not retry
    reason: str


class Disconnect(NamedTuple):  # broker -> worker control: unknown here, register again
    reason: str


class Work(NamedTuple):  # broker -> worker slot: a CALL
    client: bytes
    rid: bytes
    caller: str  #: the caller's public key (Z85) as the broker authenticated it, or "" without CURVE
    header: dict
    payload: list


class Interrupt(NamedTuple):  # broker -> worker control: a CANCEL
    client: bytes
    rid: bytes


_REST = object()  # converter marker: all remaining fields (of the envelope, or frames)


class Rule(NamedTuple):
    make: Callable
    head: tuple  # converters of the envelope's fields (None: the bytes as they are)
    frames: tuple  # converters of the frames after the envelope
    head_rest: bool  # the envelope's further fields are a list at the end
    rest: bool  # the further frames (at least min_rest) are a list at the end
    min_rest: int
    rid_at: int | None  # the envelope field that holds the request id, to answer a malformed message
    client_at: int | None  # the envelope field that holds the client's address, in messages to workers


def _rule(make: Callable, head: tuple = (), frames: tuple = (), min_rest: int = 0, *,
          rid_at: int | None = None, client_at: int | None = None) -> Rule:
    """A parse rule; :data:`_REST` last in ``head`` or ``frames`` takes what remains of them, as a list."""
    head_rest, rest = head[-1:] == (_REST,), frames[-1:] == (_REST,)
    return Rule(make, head[:len(head) - head_rest], frames[:len(frames) - rest], head_rest, rest, min_rest,
                rid_at, client_at)


def _rules(**spec) -> dict[bytes, Rule]:
    return {name.encode(): rule for name, rule in spec.items()}


def _usage(frame) -> dict:
    return check_usage(load_header(frame, MAX_USAGE))


#: What the broker accepts, from clients and workers alike on one socket: the type tells them apart.
AT_BROKER = _rules(
    CALL=_rule(Call, (None, _name, None), (_REST,), 1, rid_at=0),
    CANCEL=_rule(Cancel, (None,), rid_at=0),
    LIST=_rule(List, (None,), (load_header,), rid_at=0),
    QUERY=_rule(Query, (None, _REST), rid_at=0),
    READY=_rule(Ready, (_name, None, None), (load_header,)),
    USAGE=_rule(Usage, (), (_usage,)),
    SLOT=_rule(Slot, (None, None, _REST)),
    BUSY=_rule(SlotBusy, (None, None, _REST)),
    HEARTBEAT=_rule(Heartbeat),
    BYE=_rule(Bye),
    REPLY=_rule(lambda *f: Answer(REPLY, *f), (None, None), (_REST,), 1),
    EVENT=_rule(lambda *f: Answer(EVENT, *f), (None, None), (_REST,), 1),
    ERROR=_rule(lambda *f: Answer(ERROR, *f), (None, None), (_REST,), 1),
)
#: What a client accepts from the broker.
AT_CLIENT = _rules(
    REPLY=_rule(Reply, (None,), (load_header, _REST), rid_at=0),
    EVENT=_rule(Event, (None,), (load_header, _REST), rid_at=0),
    ERROR=_rule(Error, (None,), (load_header,), rid_at=0),
    STATUS=_rule(Status, (None, None, _REST), rid_at=0),
)
#: What a worker accepts from the broker, on its control connection and its slots.
AT_WORKER = _rules(
    WELCOME=_rule(Welcome, (), (load_header,)),
    REJECT=_rule(Reject, (), (_text,)),
    DISCONNECT=_rule(Disconnect, (), (_text,)),
    HEARTBEAT=_rule(Heartbeat),
    CALL=_rule(Work, (None, None, _text), (load_header, _REST), rid_at=1, client_at=0),
    CANCEL=_rule(Interrupt, (None, None)),
)

# -- the envelope ---------------------------------------------------------------------------------
# Frame 0 of every message: the version, a space, the type, a space, then the type's short fields,
# each as a 2-byte big-endian length and its bytes (docs/protocol.md). One frame for what took up to
# six, because every frame costs a few microseconds on each side of every hop.

_PREFIX = VERSION + b" "
_PREFIX_LEN = len(_PREFIX)
_LEGACY = re.compile(rb"de-magic/[1-3]")  # versions 1 to 3: the version alone in frame 0, the type in frame 1
_MAX_FIELD = 0xFFFF


def envelope(mtype: bytes, *fields: bytes) -> bytes:
    """Frame 0 of a message of type ``mtype`` with these envelope fields."""
    parts = [_PREFIX, mtype, b" "]
    for field in fields:
        if len(field) > _MAX_FIELD:
            raise ValueError(f"an envelope field is {len(field)} bytes; at most {_MAX_FIELD} fit")
        parts += (len(field).to_bytes(2, "big"), field)
    return b"".join(parts)


def message(mtype: bytes, head: Sequence[bytes] = (), *frames) -> list:
    """A whole message: the envelope of ``mtype`` with the fields ``head``, then ``frames``."""
    return [envelope(mtype, *head), *frames]


def _fields(data: bytes) -> tuple[list[bytes], str | None]:
    """The length-prefixed fields of an envelope, as many as are whole, and what is wrong with the rest (if anything)."""
    fields, at, size = [], 0, len(data)
    while at < size:
        end = at + 2 + (data[at] << 8 | data[at + 1] if at + 1 < size else size)
        if end > size:
            return fields, f"envelope field {len(fields) + 1} is cut off"
        fields.append(data[at + 2:end])
        at = end
    return fields, None


def peek(first: bytes) -> tuple[bytes, bytes, list[bytes], str | None]:
    """Frame 0 read as an envelope of any version from 4 on: version, type, the whole fields, what is wrong."""
    version, _, rest = first.partition(b" ")
    mtype, _, data = rest.partition(b" ")
    return (version, mtype, *_fields(data))


def _field_at(fields: list, index: int | None) -> bytes | None:
    return fields[index] if index is not None and index < len(fields) else None


def parse(frames: Sequence, rules: dict[bytes, Rule]):
    """The message ``frames`` (routing envelope removed) hold, as a named tuple of ``rules``.

    Frames may be ``bytes`` or :class:`zmq.Frame`; payload frames keep their
    original objects, so they can be forwarded without copies.  (Every message of every hop comes through
    here, the tiny call's included: loops rather than comprehensions, and each field of a rule read once.)
    """
    if not frames:
        raise ProtocolError("message has no frames; at least 1 (the envelope) is needed")
    first = _bytes(frames[0])
    if not first.startswith(_PREFIX):
        raise _mismatch(first, frames, rules)
    mtype, _, data = first[_PREFIX_LEN:].partition(b" ")
    rule = rules.get(mtype)
    if rule is None:
        shown = mtype[:40].decode("ascii", "replace")
        raise ProtocolError(f"unknown message type {shown!r}; expected one of {sorted(t.decode() for t in rules)}")
    make, head, tail, head_rest, rest, min_rest, rid_at, client_at = rule
    fields, cut = _fields(data)
    try:
        if cut:
            raise ProtocolError(cut)
        if len(fields) != len(head) and not (head_rest and len(fields) > len(head)):
            raise ProtocolError(f"needs {'at least ' if head_rest else ''}{len(head)} envelope fields, "
                                f"got {len(fields)}")
        more = len(frames) - 1 - len(tail)
        if more < min_rest or (more and not rest):
            need = f"at least {len(tail) + min_rest}" if rest else str(len(tail))
            raise ProtocolError(f"needs {need} frames after the envelope, got {len(frames) - 1}")
        values = []
        for convert, field in zip(head, fields):
            values.append(field if convert is None else convert(field))
        if head_rest:
            values.append(fields[len(head):])
        at = 1
        for convert in tail:
            values.append(convert(frames[at]))
            at += 1
    except ProtocolError as exc:
        raise ProtocolError(f"{mtype.decode()} message: {exc}", _field_at(fields, rid_at),
                            _field_at(fields, client_at)) from None
    if rest:
        values.append(list(frames[at:]))
    return make(*values)


def _mismatch(first: bytes, frames: Sequence, rules: dict[bytes, Rule]) -> ProtocolError:
    """A message of another protocol version: its request id, where its layout tells, so that it can be answered."""
    if first == VERSION:
        return ProtocolError(f"frame 0 holds only the version; in {VERSION.decode()} it holds the type and the "
                             "envelope's fields too")
    version = first.partition(b" ")[0]
    shown = version[:40].decode("ascii", "replace")
    error = ProtocolError(f"protocol version mismatch: peer speaks {shown!r}, this side speaks {VERSION.decode()!r}")
    if _LEGACY.fullmatch(first) and len(frames) > 1:  # versions 1-3 put each field in a frame of its own
        rule = rules.get(_bytes(frames[1]))
        if rule is not None:
            fields = [_bytes(frame) for frame in frames[2:2 + len(rule.head)]]
            error.rid, error.client = _field_at(fields, rule.rid_at), _field_at(fields, rule.client_at)
            error.legacy = _bytes(frames[1])
    elif first.startswith(b"de-magic/"):  # version 4 on: the envelope's layout stays, whatever it holds
        _, mtype, fields, _ = peek(first)
        rule = rules.get(mtype)
        if rule is not None:
            error.rid, error.client = _field_at(fields, rule.rid_at), _field_at(fields, rule.client_at)
    return error


# -- constructors: client -> broker -------------------------------------------------------

def call(rid: bytes, backend: str, worker: bytes, header: bytes, payload: Sequence) -> list:
    return [envelope(CALL, rid, backend.encode(), worker), header, *payload]


def cancel(rid: bytes) -> list:
    return [envelope(CANCEL, rid)]


def list_query(rid: bytes, query: dict) -> list:
    return [envelope(LIST, rid), dump_header(query)]


def query(rid: bytes, *more: bytes) -> list:
    return [envelope(QUERY, rid, *more)]


# -- constructors: worker -> broker -------------------------------------------------------

def ready(name: str, worker: bytes, secret: bytes, info: dict) -> list:
    return [envelope(READY, name.encode(), worker, secret), dump_header(info)]


def usage(info: dict) -> list:
    return [envelope(USAGE), dump_header(info)]


def slot(worker: bytes, secret: bytes, *slots: bytes) -> list:
    """SLOT from a slot's own connection; with ``slots``, from the control connection for those slots."""
    return [envelope(SLOT, worker, secret, *slots)]


def slot_busy(worker: bytes, secret: bytes, *slots: bytes) -> list:
    return [envelope(BUSY, worker, secret, *slots)]


_HEARTBEAT = envelope(HEARTBEAT)


def heartbeat() -> list:
    return [_HEARTBEAT]


def bye() -> list:
    return [envelope(BYE)]


def answer(mtype: bytes, client: bytes, rid: bytes, header: bytes, payload: Sequence = ()) -> list:
    """A worker's REPLY, EVENT or ERROR for the request ``rid`` of ``client``."""
    return [envelope(mtype, client, rid), header, *payload]


# -- constructors: broker -> peers (routing address first) --------------------------------

def to_client(address: bytes, mtype: bytes, rid: bytes, body: Sequence) -> list:
    """REPLY, EVENT or ERROR for a client: ``body`` is the header frame and any payload frames."""
    return [address, envelope(mtype, rid), *body]


def error_to(address: bytes, rid: bytes, kind: str, message: str, **extra) -> list:
    return [address, envelope(ERROR, rid), error_header(kind, message, **extra)]


def protocol_error_to(address: bytes, error: ProtocolError) -> list | None:
    """What answers a malformed message, in a layout its sender reads (that of versions 1-3 for them), if anything.

    A request with a readable id gets an ERROR; an older worker's READY a REJECT, which its parser reads
    as a version mismatch, so that its log says why it is not registered.
    """
    header = error_header(ProtocolMismatch.kind, str(error))
    if error.rid is None:
        return [address, VERSION, REJECT, str(error).encode()] if error.legacy == READY else None
    if error.legacy:  # their parser takes the version from frame 0 and the request id from frame 2
        return [address, VERSION, ERROR, error.rid, header]
    return [address, envelope(ERROR, error.rid), header]


def status(address: bytes, states: list) -> list:
    """STATUS: ``states`` alternates request ids and their states, as QUERY named them."""
    return [address, envelope(STATUS, *states)]


def welcome(address: bytes, info: dict) -> list:
    return [address, envelope(WELCOME), dump_header(info)]


def reject(address: bytes, reason: str) -> list:
    return [address, envelope(REJECT), reason.encode()]


def disconnect(address: bytes, reason: str) -> list:
    return [address, envelope(DISCONNECT), reason.encode()]


def heartbeat_to(address: bytes) -> list:
    return [address, _HEARTBEAT]


def work(slot_address: bytes, client: bytes, rid: bytes, caller: str | None, body: Sequence) -> list:
    """A CALL for a worker's slot; ``caller`` is the key the broker authenticated (None: no CURVE)."""
    return [slot_address, envelope(CALL, client, rid, (caller or "").encode()), *body]


def interrupt(address: bytes, client: bytes, rid: bytes) -> list:
    return [address, envelope(CANCEL, client, rid)]


# -- the READY info frame -------------------------------------------------------------------

def check_ready_info(info: dict) -> dict:
    """Check the fields of READY's info the broker relies on, before it changes anything.

    A malformed registration must not leave half-applied state (an API or a
    caller restriction) on a live backend name.
    """
    for key in ("capacity", "queue"):
        if key in info and (type(info[key]) is not int or info[key] < 0):
            raise ProtocolError(f"READY info: {key!r} must be a non-negative integer")
    heartbeat = info.get("heartbeat", 0.0)
    if type(heartbeat) not in (int, float) or not 0 <= heartbeat < float("inf"):
        raise ProtocolError("READY info: 'heartbeat' must be a non-negative number of seconds")
    if not (type(info.get("pid", 0)) is int and isinstance(info.get("host", ""), str) and len(info.get("host", "")) < 300):
        raise ProtocolError("READY info: 'pid' must be an integer and 'host' a name")
    for key in ("api", "dask"):  # dask: the cluster a Dask backend runs on, shown in listings
        if not isinstance(info.get(key, {}), dict):
            raise ProtocolError(f"READY info: {key!r} must be an object")
    direct = info.get("direct")
    if direct is not None and not (isinstance(direct, str) and direct.startswith("tcp://") and len(direct) < 300):
        raise ProtocolError("READY info: 'direct' must be a tcp:// address")
    local = info.get("direct_local")
    if local is not None and not (isinstance(local, str) and local.startswith("ipc://") and len(local) < 300):
        raise ProtocolError("READY info: 'direct_local' must be an ipc:// address")
    key = info.get("direct_key")
    if key is not None and not (isinstance(key, str) and len(key) == 40 and key.isascii() and key.isprintable()):
        raise ProtocolError("READY info: 'direct_key' must be a Z85 public key (40 characters)")
    allowed = info.get("allow_clients")
    if allowed is not None and not (isinstance(allowed, list) and all(isinstance(k, str) for k in allowed)):
        raise ProtocolError("READY info: 'allow_clients' must be a list of strings")
    return info


def check_usage(info: dict) -> dict:
    """USAGE info: ``{"sessions": {"count", "bytes", "each": [{"since", "bytes"}]}, "refs": {"count", "bytes"}}``."""
    sessions, refs = info.get("sessions"), info.get("refs")
    if not (isinstance(sessions, dict) and isinstance(refs, dict)):
        raise ProtocolError("USAGE info: 'sessions' and 'refs' must be objects")
    each = sessions.get("each", [])
    if not (isinstance(each, list) and len(each) <= MAX_USAGE_SESSIONS and all(
            isinstance(s, dict) and _counts(s, ("since", "bytes")) for s in each)):
        raise ProtocolError(f"USAGE info: 'each' must list at most {MAX_USAGE_SESSIONS} sessions' start and bytes")
    if not (_counts(sessions, ("count", "bytes")) and _counts(refs, ("count", "bytes"))):
        raise ProtocolError("USAGE info: counts and bytes must be non-negative numbers")
    return {"sessions": {"count": sessions["count"], "bytes": sessions["bytes"],
                         "each": [{"since": s["since"], "bytes": s["bytes"]} for s in each]},
            "refs": {"count": refs["count"], "bytes": refs["bytes"]}}


def _counts(info: dict, keys: tuple) -> bool:
    return all(type(info.get(k)) in (int, float) and 0 <= info[k] < float("inf") for k in keys)
