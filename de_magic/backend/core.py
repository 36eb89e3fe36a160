"""The direct endpoint's decisions, and no sockets: who is admitted, what waits, what starts where.

:class:`DirectCore` is to :class:`~de_magic.backend.direct.DirectEndpoint` what the broker's
:class:`~de_magic.broker.routing.Router` is to the broker process: the endpoint feeds it what arrived
(a caller's message and its key, a slot saying it is free or busy, an answer) and does what it returns.
Its rules are the broker's own (:mod:`de_magic.wire.admission`), applied to this one worker, so a call
is admitted, queued or refused alike on both paths (tests/test_worker_core.py checks that for random
interleavings).

What it guarantees:

- every CALL gets exactly one final answer: an error from here, or the answer of the slot it started on;
- callers are admitted as the brokers we registered at would admit them (their allowed keys, told in
  ``WELCOME`` and again when they change, and our ``allow_clients``), on every call, not only at the
  handshake: a revoked key stops working on open connections as soon as a broker says so; without CURVE a
  backend with ``allow_clients`` admits nobody here, as a plaintext broker admits nobody to it;
- waiting calls are bounded by count (``max_queue``) and by bytes (``max_queued_bytes``), and start in
  arrival order; cancelled ones are skipped, and compacted away before they can pile up;
- a waiting call whose caller has been silent for its lease (no CALL, CANCEL or QUERY: a client asks
  after its calls every heartbeat) is dropped when its turn comes, as at a broker: a gone client's
  calls do not run while live callers wait.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from ..wire import admission
from ..wire import protocol as P
from ..wire.errors import BackendLost, Busy, Cancelled, PayloadTooLarge, Refused, UnknownBackend
from ..wire.serialize import nbytes


class Entry:
    """A direct call: waiting (``queued``), or started on ``slot`` (``b""``: run inline, not on a slot)."""

    __slots__ = ("caller", "rid", "key", "body", "size", "slot", "queued", "header", "member")

    def __init__(self, caller: bytes, rid: bytes, key: str | None, body: list, size: int):
        self.caller, self.rid, self.key, self.body, self.size = caller, rid, key, body, size
        self.slot: bytes | None = None
        self.queued = False
        # what the endpoint learnt of it, to decide whether it runs inline: its header, and the member it
        # calls (``...``: not looked at yet; None: not a plain call of a member)
        self.header: dict | None = None
        self.member = ...


class DirectCore:
    """The calls of one worker's direct endpoint, its free slots and its queue.

    :meth:`on_caller` returns the frames to send to callers; :meth:`next` gives the calls to start, one at
    a time (the endpoint may run one inline before it asks for the next); :meth:`on_answer` frees a slot.
    ``inline(entry)`` tells whether a call is to run on the endpoint's own thread rather than a slot.
    """

    def __init__(self, name: str, worker: bytes, capacity: int, *, max_queue: int, max_message_size: int,
                 max_queued_bytes: int, allow_clients: list[str] | None, curve: bool, lease: float,
                 inline: Callable[[Entry], bool] = lambda entry: False):
        self.name, self.worker, self.capacity = name, worker, capacity
        self.max_queue, self.limit, self.max_queued_bytes = max_queue, max_message_size, max_queued_bytes
        self.allowed = None if allow_clients is None else frozenset(allow_clients)
        self.curve = curve
        self.inline = inline
        self.names: dict[str, str] = {}  # callers some broker of ours lets in: Z85 key -> key file name
        self._vouched: dict[int, dict[str, str]] = {}  # broker index -> its callers
        self.idle: dict[bytes, None] = {}  # free slots, oldest first
        self.calls: dict[tuple[bytes, bytes], Entry] = {}  # waiting and started, by (caller, request id)
        self.queue: deque[Entry] = deque()  # waiting calls, oldest first; cancelled ones stay until popped
        self.waiting = 0  # live entries of ``queue``
        self.dead = 0  # cancelled entries still in ``queue``
        self.queued_bytes = 0
        self.lease = lease
        self.heard: dict[bytes, float] = {}  # caller -> when it last sent a CALL, CANCEL or QUERY
        self._sweep_at = lease  # when callers silent for a lease are forgotten (the table stays bounded)
        self.now = 0.0
        self.out: list[list] = []  # answers decided while starting calls (see :meth:`drain`)

    # -- who may call ------------------------------------------------------------------------------

    def vouch(self, door: int, callers) -> None:
        """The callers the broker ``door`` lets in, as its WELCOME said ({Z85 key: name}); None: it said
        nothing (a plaintext broker), which changes nothing."""
        if isinstance(callers, dict):
            self._vouched[door] = {str(k): str(v) for k, v in callers.items()}
            merged: dict[str, str] = {}
            for vouched in self._vouched.values():
                merged.update(vouched)
            self.names = merged

    def admits(self, key: str | None) -> bool:
        return admission.admits(self.allowed, key, self.names, self.curve)

    # -- from callers ----------------------------------------------------------------------------

    def on_caller(self, caller: bytes, msg, key: str | None, now: float) -> list[list]:
        """A parsed message from a caller (CALL, CANCEL, QUERY; anything else is a ProtocolError)."""
        self.now = now
        if type(msg) in (P.Call, P.Cancel, P.Query):
            self._heard(caller, now)
        if type(msg) is P.Call:
            return self._on_call(caller, msg, key)
        if type(msg) is P.Cancel:
            return self._on_cancel(caller, msg.rid)
        if type(msg) is P.Query:
            return [P.status(caller, admission.query_states(msg, lambda rid: (caller, rid) in self.calls))]
        # a LIST is answered (it is a caller's request); a worker's messages are not, as at a broker
        raise P.ProtocolError(f"a direct endpoint serves CALL, CANCEL and QUERY, not {type(msg).__name__}",
                              msg.rid if type(msg) is P.List else None)

    def _on_call(self, caller: bytes, msg: P.Call, key: str | None) -> list[list]:
        rid = msg.rid
        if (caller, rid) in self.calls:
            raise admission.duplicate(rid)
        size = nbytes(msg.body)
        refusal = None
        if (why := admission.too_large(size, self.limit, f"backend {self.name!r}'s")) is not None:
            refusal = PayloadTooLarge, why
        elif msg.backend != self.name:
            refusal = UnknownBackend, f"this endpoint serves backend {self.name!r}, not {msg.backend!r}"
        elif not self.admits(key):
            refusal = Refused, admission.refusal(self.name, key)
        elif msg.worker and msg.worker != self.worker:
            refusal = BackendLost, admission.gone(msg.worker, self.name)
        elif not self.idle and (why := admission.queue_refusal(
                self.name, self.waiting, self.max_queue, self.capacity, self.queued_bytes, size,
                self.max_queued_bytes, f"backend {self.name!r}'s direct endpoint")) is not None:
            refusal = Busy, why
        if refusal is not None:
            return [P.error_to(caller, rid, refusal[0].kind, refusal[1])]
        entry = self.calls[(caller, rid)] = Entry(caller, rid, key, msg.body, size)
        entry.queued = True
        self.queue.append(entry)
        self.waiting += 1
        self.queued_bytes += size
        return []

    def _on_cancel(self, caller: bytes, rid: bytes) -> list[list]:
        """A waiting call ends here; a started one is the endpoint's to interrupt (:meth:`started`)."""
        entry = self.calls.get((caller, rid))
        if entry is None or not entry.queued:
            return []
        self._settle(entry)
        del self.calls[(caller, rid)]
        self.dead += 1
        if admission.compact_due(self.dead, self.waiting):
            self.queue = deque(e for e in self.queue if e.queued)
            self.dead = 0
        return [P.error_to(caller, rid, Cancelled.kind, "cancelled before it started")]

    def _heard(self, caller: bytes, now: float) -> None:
        self.heard[caller] = now
        if now >= self._sweep_at:
            self._sweep_at = now + self.lease
            self.heard = {c: t for c, t in self.heard.items() if now - t <= self.lease}

    def started(self, caller: bytes, rid: bytes) -> bool:
        """Whether that call is running (on a slot or inline): a cancel of it interrupts it."""
        entry = self.calls.get((caller, rid))
        return entry is not None and not entry.queued

    def _settle(self, entry: Entry) -> None:
        entry.queued = False
        self.waiting -= 1
        self.queued_bytes -= entry.size

    # -- starting calls ------------------------------------------------------------------------------

    def next(self, now: float | None = None) -> Entry | None:
        """The oldest waiting call, if it may start now (its ``slot`` says where), else None. Calls of
        silent callers met on the way are dropped, their answers left for :meth:`drain`."""
        if now is not None:
            self.now = now
        queue = self.queue
        while True:
            while queue and not queue[0].queued:
                queue.popleft()
                self.dead -= 1
            if not queue:
                return None
            entry = queue[0]
            if not admission.silent(self.heard, entry.caller, self.now, self.lease) or not self._startable(entry):
                break
            queue.popleft()
            self._settle(entry)
            del self.calls[(entry.caller, entry.rid)]
            self.out.append(P.error_to(entry.caller, entry.rid, Cancelled.kind, admission.abandoned(self.lease)))
        if self.inline(entry):
            entry.slot = b""
        elif self.idle:
            entry.slot = next(reversed(self.idle))  # the last freed: its thread and memory are warm
            del self.idle[entry.slot]
        else:
            return None
        queue.popleft()
        self._settle(entry)
        return entry

    def _startable(self, entry: Entry) -> bool:
        """Whether the head of the queue could start now (a broker looks at its queue only then, too)."""
        return bool(self.idle) or self.inline(entry)

    def drain(self) -> list[list]:
        """Answers decided by :meth:`next` (calls of silent callers, dropped)."""
        out, self.out = self.out, []
        return out

    # -- from slots ---------------------------------------------------------------------------------

    def slot_free(self, slot: bytes) -> None:
        self.idle[slot] = None

    def slot_busy(self, slot: bytes) -> None:
        """A slot took a broker's call: it gets none from here until it says it is free."""
        self.idle.pop(slot, None)

    def on_answer(self, caller: bytes, rid: bytes, final: bool) -> Entry | None:
        """A started call's event or final answer: its entry (None: not ours, or answered already, so drop it);
        a final answer ends the call and frees its slot."""
        entry = self.calls.get((caller, rid))
        if entry is None or entry.queued:
            return None
        if final:
            del self.calls[(caller, rid)]
            if entry.slot:
                self.idle[entry.slot] = None
        return entry
