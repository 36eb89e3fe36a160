"""The direct endpoint's core, driven directly: no sockets, no threads, microseconds per message.

The property test at the end drives the broker's :class:`~de_magic.broker.routing.Router` (one worker
registered) and a :class:`~de_magic.backend.core.DirectCore` (that worker's direct endpoint) side by
side, through random interleavings of calls, cancels, answers, key changes, and slots taken by other
brokers' calls and given back, and checks that both admit, queue, start and refuse exactly the same.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from de_magic.backend.core import DirectCore
from de_magic.broker.routing import Config, Router
from de_magic.wire import protocol as P
from de_magic.wire.admission import MAX_QUERY
from de_magic.wire.errors import BackendLost, Busy, Cancelled, PayloadTooLarge, Refused, UnknownBackend

HEADER = P.dump_header({"member": "f"})
WORKER = b"W" * 8
MiB = 1 << 20


def core(capacity=1, *, max_queue=10, max_message_size=64 * MiB, max_queued_bytes=100 * MiB, allow_clients=None,
         curve=False) -> DirectCore:
    made = DirectCore("svc", WORKER, capacity, max_queue=max_queue, max_message_size=max_message_size,
                      max_queued_bytes=max_queued_bytes, allow_clients=allow_clients, curve=curve,
                      lease=10.0)
    for i in range(capacity):
        made.slot_free(b"slot%d" % i)
    return made


def call(c: DirectCore, rid: bytes, size: int = 0, *, caller=b"cli", key=None, name="svc", worker=b"") -> list:
    return c.on_caller(caller, P.parse(P.call(rid, name, worker, HEADER, [b"x" * size]), P.AT_BROKER), key, 0.0)


def kinds(out: list) -> list[str]:
    return [P.parse(frames[1:], P.AT_CLIENT).header["kind"] for frames in out]


def started(c: DirectCore) -> list[bytes]:
    rids = []
    while (entry := c.next()) is not None:
        rids.append(entry.rid)
    return rids


def test_a_call_starts_on_a_free_slot_and_the_next_waits_for_its_answer():
    c = core()
    assert call(c, b"a") == [] and started(c) == [b"a"]
    assert call(c, b"b") == [] and started(c) == []  # waits
    assert c.on_answer(b"cli", b"a", final=False) is not None and started(c) == []  # an event frees nothing
    assert c.on_answer(b"cli", b"a", final=True).slot == b"slot0"
    assert started(c) == [b"b"]
    assert c.on_answer(b"cli", b"a", final=True) is None  # answered already: dropped


def test_waiting_calls_are_bounded_by_bytes_as_at_a_broker():
    """60 calls of 20 MiB waiting for a busy slot: all were queued direct (1.2 GB), while a broker took 4."""
    c = core(max_queue=1000, max_queued_bytes=100 * MiB)
    call(c, b"running")
    started(c)
    answers = [kinds(call(c, b"w%d" % i, 20 * MiB)) for i in range(60)]
    assert answers.count([]) == 4 and answers[4:] == [[Busy.kind]] * 56
    assert c.queued_bytes <= 100 * MiB
    c.on_caller(b"cli", P.parse(P.cancel(b"w0"), P.AT_BROKER), None, 0.0)
    assert kinds(call(c, b"again", 20 * MiB)) == []  # a cancelled call's bytes are free again


def test_waiting_calls_are_bounded_by_count_and_start_in_arrival_order():
    c = core(max_queue=3)
    call(c, b"running")
    started(c)
    assert [kinds(call(c, b"w%d" % i)) for i in range(4)] == [[], [], [], [Busy.kind]]
    c.on_answer(b"cli", b"running", final=True)
    assert started(c) == [b"w0"]


def test_the_broker_size_limit_holds_direct_once_learnt():
    c = core(max_message_size=1 << 30)
    c.limit = 64 * MiB  # what the broker's WELCOME said
    assert kinds(call(c, b"big", 200 * MiB)) == [PayloadTooLarge.kind]


def test_without_curve_a_backend_that_names_its_callers_admits_nobody():
    c = core(allow_clients=["alice"])
    assert kinds(call(c, b"r1")) == [Refused.kind]
    assert not c.admits(None)


def test_under_curve_callers_are_those_the_brokers_vouch_for_and_revocation_holds_on_open_connections():
    c = core(capacity=4, allow_clients=["alice"], curve=True)
    assert kinds(call(c, b"r1", key="KEY-alice")) == [Refused.kind]  # no broker vouched yet
    c.vouch(0, {"KEY-alice": "alice", "KEY-bob": "bob"})
    assert kinds(call(c, b"r2", key="KEY-alice")) == [] and c.admits("KEY-alice")
    assert kinds(call(c, b"r3", key="KEY-bob")) == [Refused.kind]  # the broker lets bob in, the backend not
    c.vouch(0, {"KEY-bob": "bob"})  # alice's key was deleted at the broker
    assert kinds(call(c, b"r4", key="KEY-alice")) == [Refused.kind] and not c.admits("KEY-alice")
    c.vouch(1, {"KEY-alice": "alice"})  # another broker of ours still lets her in
    assert kinds(call(c, b"r5", key="KEY-alice")) == []


def test_pinned_cancelled_unknown_duplicate_and_queried_calls():
    c = core()
    assert kinds(call(c, b"p", worker=b"other-wk")) == [BackendLost.kind]
    assert kinds(call(c, b"n", name="other")) == [UnknownBackend.kind]
    call(c, b"a", worker=WORKER)
    started(c)
    call(c, b"b")
    with pytest.raises(P.ProtocolError, match="already in use"):
        call(c, b"b")
    status = c.on_caller(b"cli", P.parse(P.query(b"a", b"b", b"c"), P.AT_BROKER), None, 0.0)
    assert P.parse(status[0][1:], P.AT_CLIENT).pairs() == [(b"a", P.PENDING), (b"b", P.PENDING), (b"c", P.UNKNOWN)]
    assert c.started(b"cli", b"a") and not c.started(b"cli", b"b")
    assert kinds(c.on_caller(b"cli", P.parse(P.cancel(b"b"), P.AT_BROKER), None, 0.0)) == [Cancelled.kind]
    assert c.on_caller(b"cli", P.parse(P.cancel(b"a"), P.AT_BROKER), None, 0.0) == []  # running: the endpoint interrupts
    with pytest.raises(P.ProtocolError, match="QUERY of more than"):
        c.on_caller(b"cli", P.parse(P.query(*[b"q%d" % i for i in range(MAX_QUERY + 1)]), P.AT_BROKER), None, 0.0)


def test_cancelled_waiting_calls_are_compacted_away():
    c = core(max_queue=5)
    call(c, b"running")
    started(c)
    for i in range(10_000):
        call(c, b"c%d" % i)
        c.on_caller(b"cli", P.parse(P.cancel(b"c%d" % i), P.AT_BROKER), None, 0.0)
    assert len(c.queue) < 100 and c.waiting == 0 and c.queued_bytes == 0


def test_the_waiting_calls_of_a_caller_gone_silent_are_dropped_when_their_turn_comes():
    """As at a broker: a client that queued calls and went away does not make live callers wait for them."""
    c = core()
    call(c, b"running")
    assert started(c) == [b"running"]
    for i in range(3):
        call(c, b"gone%d" % i, caller=b"gone")
    c.on_caller(b"live", P.parse(P.call(b"mine", "svc", b"", HEADER, []), P.AT_BROKER), None, 5.0)
    c.on_caller(b"live", P.parse(P.query(b"mine"), P.AT_BROKER), None, 14.0)  # live asks after its call
    c.on_answer(b"cli", b"running", final=True)
    assert [e.rid for e in iter(lambda: c.next(14.0), None)] == [b"mine"]
    assert kinds(c.drain()) == [Cancelled.kind] * 3 and c.waiting == 0 and not c.calls.keys() - {(b"live", b"mine")}


def test_a_call_to_run_inline_starts_without_a_slot():
    c = DirectCore("svc", WORKER, 1, max_queue=10, max_message_size=MiB, max_queued_bytes=MiB, allow_clients=None,
                   curve=False, lease=10.0, inline=lambda entry: entry.rid.startswith(b"quick"))
    call(c, b"slow")
    call(c, b"quick")
    assert [(e.rid, e.slot) for e in iter(c.next, None)] == []  # no slot: nothing starts
    c.slot_free(b"slot0")
    assert [(e.rid, e.slot) for e in iter(c.next, None)] == [(b"slow", b"slot0"), (b"quick", b"")]


# -- the direct path decides as the broker path does ------------------------------------------------

KEYS = ("KEY-alice", "KEY-bob", "KEY-eve", None)
CALLERS = (b"cli", b"two")
SECRET = b"s" * 16


class Keyed(bytes):
    key: str | None = None


def keyed(frames: list, key: str | None) -> list:
    first = Keyed(frames[0])
    first.key = key
    return [first, *frames[1:]]


def _said(caller: bytes, frames: list) -> list[tuple]:
    """What a caller was told by the path itself: an error's kind, or a STATUS's states (answers and events
    of the worker are passed on, by the broker here, by the endpoint's loop there)."""
    msg = P.parse(frames, P.AT_CLIENT)
    if type(msg) is P.Error:
        return [(caller, msg.rid, msg.header["kind"])]
    if type(msg) is P.Status:
        return [(caller, tuple(bytes(f) for f in frames))]
    return []


class BothPaths(RuleBasedStateMachine):
    """A broker with one worker, and that worker's direct endpoint: the same events, the same decisions."""

    @initialize(capacity=st.integers(1, 3), max_queue=st.integers(0, 4), max_bytes=st.integers(0, 400),
                limit=st.integers(50, 300), curve=st.booleans(),
                allow=st.sampled_from([None, ["alice"], ["KEY-bob"]]))
    def setup(self, capacity, max_queue, max_bytes, limit, curve, allow):
        self.names = {"KEY-alice": "alice", "KEY-bob": "bob"}
        self.curve = curve
        self.now = 0.0
        config = Config(url="tcp://test:1", curve=curve, max_queued_bytes=max_bytes, max_message_size=limit)
        self.router = Router(config, now=-100.0, key_of=lambda f: getattr(f, "key", None),
                             key_names=lambda: self.names)
        info = {"api": {"members": {"f": {"kind": "function"}}}, "capacity": capacity, "queue": max_queue}
        if allow is not None:
            info["allow_clients"] = allow
        worker_key = "KEY-worker" if curve else None
        self._to_router(b"ctl", P.ready("svc", WORKER, SECRET, info), worker_key)
        self.slots = [b"slot%d" % i for i in range(capacity)]
        for slot in self.slots:
            self._to_router(slot, P.slot(WORKER, SECRET), worker_key)
        self.core = DirectCore("svc", WORKER, capacity, max_queue=max_queue, max_message_size=limit,
                               max_queued_bytes=max_bytes, allow_clients=allow, curve=curve,
                               lease=self.router.caller_lease)
        self.core.vouch(0, dict(self.names))
        for slot in self.slots:
            self.core.slot_free(slot)
        self.worker_key = worker_key
        self.other = set()  # slots busy with another broker's call (told BUSY, both sides)
        # running calls, by (caller, rid): at the broker their slot and the alias the worker knows the caller
        # by there (never the caller's routing id); at the endpoint their slot
        self.routed: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}
        self.direct: dict[tuple[bytes, bytes], bytes] = {}
        self.rids = 0

    def _to_router(self, sender: bytes, frames: list, key: str | None) -> list[list]:
        return self.router.handle(sender, keyed(frames, key), self.now)

    def _router_outcome(self, out: list[list]) -> tuple[list, list]:
        """What the broker did: errors and statuses to callers, calls started (by whom, on which slot)."""
        errors, starts = [], []
        aliases = {}
        for frames in out:
            address, rest = frames[0], frames[1:]
            if address in self.slots:
                work = P.parse(rest, P.AT_WORKER)
                aliases[work.rid] = address, work.client
                starts.append(work.rid)
            elif address in CALLERS:  # not an interrupt for the worker's control connection
                errors += _said(address, rest)
        for rid, (slot, alias) in aliases.items():  # whose call it is: the broker's books say
            request = self.router.slots[slot].inflight[alias]
            self.routed[(request.client, rid)] = slot, alias
        return sorted(errors), sorted(starts)

    def _core_outcome(self, out: list[list]) -> tuple[list, list]:
        starts = []
        while (entry := self.core.next(self.now)) is not None:
            starts.append(entry.rid)
            self.direct[(entry.caller, entry.rid)] = entry.slot
        errors = []
        for frames in out + self.core.drain():
            errors += _said(frames[0], frames[1:])
        return sorted(errors), sorted(starts)

    def _core(self, caller: bytes, frames: list, key: str | None) -> tuple[list, list]:
        try:
            out = self.core.on_caller(caller, P.parse(frames, P.AT_BROKER), key, self.now)
        except P.ProtocolError as exc:
            out = [] if exc.rid is None else [P.error_to(caller, exc.rid, "protocol", str(exc))]
        return self._core_outcome(out)

    @rule(size=st.integers(0, 350), key=st.sampled_from(KEYS), name=st.sampled_from(["svc", "svc", "svc", "other"]),
          pin=st.sampled_from([b"", b"", WORKER, b"Z" * 8]), again=st.booleans(), caller=st.sampled_from(CALLERS))
    def call(self, size, key, name, pin, again, caller):
        if not (again and self.rids):
            self.rids += 1
        rid = b"r%d" % self.rids  # ``again``: reuses the last id, which may still be in use
        key = key if self.curve else None
        frames = P.call(rid, name, pin, HEADER, [b"x" * size])
        assert self._core(caller, frames, key) == self._router_outcome(self._to_router(caller, frames, key))

    @rule(data=st.data(), caller=st.sampled_from(CALLERS))
    def cancel(self, data, caller):
        rid = b"r%d" % data.draw(st.integers(0, self.rids + 1))
        routed = self._router_outcome(self._to_router(caller, P.cancel(rid), None))
        assert self._core(caller, P.cancel(rid), None) == routed
        assert self.core.started(caller, rid) == ((caller, rid) in self.routed)  # running: both interrupt it

    @rule(caller=st.sampled_from(CALLERS))
    def query(self, caller):
        """A caller asks after its calls (a client does every heartbeat): it holds them on its lease."""
        frames = P.query(*[b"r%d" % i for i in range(self.rids + 1)])
        assert self._core(caller, frames, None) == self._router_outcome(self._to_router(caller, frames, None))

    @rule(seconds=st.sampled_from([0.5, 3.0, 6.0, 11.0]))
    def time_passes(self, seconds):
        """Time passes; a caller that says nothing meanwhile is gone, as a disconnected client is."""
        self.now += seconds
        self._to_router(b"ctl", P.heartbeat(), self.worker_key)  # the worker lives on

    @precondition(lambda self: self.routed)
    @rule(data=st.data(), final=st.booleans())
    def answer(self, data, final):
        self.answer_with(*data.draw(st.sampled_from(sorted(self.routed))), final)

    def answer_with(self, caller: bytes, rid: bytes, final: bool) -> tuple[list, list]:
        kind = P.REPLY if final else P.EVENT
        slot, alias = self.routed.pop((caller, rid)) if final else self.routed[(caller, rid)]
        routed = self._router_outcome(self._to_router(slot, P.answer(kind, alias, rid, b"{}", ()), self.worker_key))
        assert self.core.on_answer(caller, rid, final) is not None
        if final:
            del self.direct[(caller, rid)]
        assert self._core_outcome([]) == routed
        return routed

    @rule(key=st.sampled_from(KEYS[:3]))
    def revoke_or_restore(self, key):
        """A key deleted from the broker's allowed directory, or added again: the broker tells the endpoint."""
        names = dict(self.names)
        if key in names:
            del names[key]
        else:
            names[key] = key[4:].lower()
        self.names = names
        self.core.vouch(0, dict(names))

    @precondition(lambda self: len(self.other) < len(self.slots))
    @rule(data=st.data())
    def slot_taken_elsewhere(self, data):
        """A slot takes another broker's call: neither path sends it one until it is free again."""
        free = [s for s in self.slots if s not in self.other and s not in {slot for slot, _ in self.routed.values()}]
        if not free:
            return
        slot = data.draw(st.sampled_from(free))
        self.other.add(slot)
        self._to_router(slot, P.slot_busy(WORKER, SECRET), self.worker_key)
        self.core.slot_busy(slot)

    @precondition(lambda self: self.other)
    @rule(data=st.data())
    def slot_back(self, data):
        slot = data.draw(st.sampled_from(sorted(self.other)))
        self.other.discard(slot)
        routed = self._router_outcome(self._to_router(slot, P.slot(WORKER, SECRET), self.worker_key))
        self.core.slot_free(slot)
        assert self._core_outcome([]) == routed

    @invariant()
    def same_books(self):
        if hasattr(self, "core"):
            service = self.router.services["svc"]
            assert (self.core.waiting, self.core.queued_bytes) == (service.waiting, self.router.queued_bytes)
            assert sorted(self.routed) == sorted(self.direct)


def test_both_paths_drop_the_waiting_calls_of_a_caller_gone_silent_alike():
    """The case the random walk reaches rarely, spelled out: one caller keeps asking, one went away."""
    paths = BothPaths()
    paths.setup(capacity=1, max_queue=3, max_bytes=400, limit=300, curve=False, allow=None)
    for caller in (b"cli", b"two", b"cli"):
        paths.call(size=0, key=None, name="svc", pin=b"", again=False, caller=caller)
    paths.time_passes(6.0)
    paths.query(b"cli")
    paths.time_passes(6.0)  # b"two" said nothing for 12 s, over its 10 s lease
    errors, starts = paths.answer_with(b"cli", b"r1", final=True)
    assert (errors, starts) == ([(b"two", b"r2", Cancelled.kind)], [b"r3"])
    paths.same_books()


BothPaths.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestBothPaths = BothPaths.TestCase
