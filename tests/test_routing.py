"""The broker's routing core, driven directly: no sockets, no processes, microseconds per message.

A :class:`Net` stands in for the ROUTER socket: it feeds messages to the
:class:`~de_magic.broker.routing.Router` and files what the router sends by address.
The property test at the end runs random interleavings of registrations,
slots, calls, cancels, answers, departures, time passing and garbage, and
checks the invariants the broker promises after every step.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from de_magic.wire import protocol as P
from de_magic.broker.routing import CONNECTED_SILENCE, MAX_WAITING, Config, Router

HEADER = P.dump_header({"member": "f"})
API = {"members": {"f": {"kind": "function"}}}
OTHER_API = {"members": {"g": {"kind": "function"}}}


class Keyed(bytes):
    """A received frame that knows the CURVE key of its sender (as zmq.Frame's User-Id does)."""

    key: str | None = None


def keyed(frames: list, key: str | None) -> list:
    first = Keyed(frames[0])
    first.key = key
    return [first, *frames[1:]]


class Net:
    """The router behind a pretend socket: what each address was sent, in order."""

    def __init__(self, started: float = 0.0, **config):
        """``started``: seconds since the broker started (past the start-up grace, calls are not held)."""
        self.now = 100.0
        self.router = Router(Config(url="tcp://test:1", **config), now=self.now - started, key_of=lambda f: getattr(f, "key", None),
                             key_names=lambda: {"KEY-alice": "alice"})
        self.inbox: dict[bytes, list] = defaultdict(list)

    def send(self, sender: bytes, frames: list, key: str | None = None) -> None:
        self._file(self.router.handle(sender, keyed(frames, key), self.now))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._file(self.router.tick(self.now))

    def _file(self, out: list[list]) -> None:
        for frames in out:
            self.inbox[frames[0]].append(frames[1:])

    def take(self, address: bytes, rules=P.AT_CLIENT) -> list:
        messages = [P.parse(frames, rules) for frames in self.inbox.pop(address, [])]
        return messages

    # -- shortcuts -------------------------------------------------------------------

    def register(self, name="svc", control=b"ctl", worker=b"W" * 8, secret=b"s" * 16, slots=(b"slot",),
                 key=None, api=API, **info) -> list:
        self.send(control, P.ready(name, worker, secret, {"api": api, "capacity": len(slots), **info}), key)
        for slot in slots:
            self.send(slot, P.slot(worker, secret), key)
        return self.take(control, P.AT_WORKER)

    def call(self, client=b"cli", rid=b"r1", name="svc", worker=b"", body=(HEADER, b"payload"), key=None) -> None:
        self.send(client, P.call(rid, name, worker, body[0], body[1:]), key)

    def alias(self, client=b"cli", rid=b"r1") -> bytes:
        """What the worker running that call knows its caller by."""
        return self.router.requests[(client, rid)].alias


def test_a_call_reaches_a_free_slot_and_its_reply_the_caller():
    net = Net()
    assert [type(m) for m in net.register()] == [P.Welcome]
    net.call()
    work = net.take(b"slot", P.AT_WORKER)
    alias = net.alias()  # never the caller's routing id, which a hostile worker could claim for itself
    assert work == [P.Work(alias, b"r1", "", {"member": "f"}, [b"payload"])] and alias != b"cli"
    net.send(b"slot", P.answer(P.REPLY, b"cli", b"r1", b"{}", [b"by the caller's name"]))
    assert net.take(b"cli") == [] and net.router.bad.count == 1
    net.send(b"slot", P.answer(P.REPLY, alias, b"r1", b'{"codec":"pickle"}', [b"result"]))
    assert net.take(b"cli") == [P.Reply(b"r1", {"codec": "pickle"}, [b"result"])]
    assert not net.router.requests


def test_usage_from_a_worker_shows_in_the_listing_and_bytes_routed_are_counted():
    net = Net()
    net.register()
    usage = {"sessions": {"count": 1, "bytes": 7, "each": [{"since": 1.0, "bytes": 7}]}, "refs": {"count": 2, "bytes": 9}}
    net.send(b"ctl", P.usage(usage))
    net.send(b"slot", P.usage(usage))  # only the control connection speaks for the worker
    assert net.router.bad.count == 1
    net.call()
    net.send(b"slot", P.answer(P.REPLY, net.alias(), b"r1", b"{}", [b"result"]))
    net.send(b"cli", P.list_query(b"l1", {"api": False}))
    listing = json.loads(net.take(b"cli")[-1].payload[0])
    worker = listing["backends"]["svc"]["workers"][0]
    assert worker["sessions"] == usage["sessions"] and worker["refs"] == usage["refs"]
    assert listing["broker"]["routed_bytes"] == len(HEADER) + len(b"payload") + len(b"{}") + len(b"result")


def test_a_slot_busy_through_another_broker_gets_no_call_until_it_is_free():
    net = Net()
    net.register(slots=(b"s1", b"s2"))
    net.send(b"s1", P.slot_busy(b"W" * 8, b"s" * 16))  # s1 runs a call that came through another broker
    for i in range(2):
        net.call(rid=b"r%d" % i)
    assert len(net.take(b"s2", P.AT_WORKER)) == 1 and net.take(b"s1", P.AT_WORKER) == []  # r1 waits
    net.send(b"s1", P.slot(b"W" * 8, b"s" * 16))  # free again: takes the waiting call
    assert [m.rid for m in net.take(b"s1", P.AT_WORKER)] == [b"r1"]
    # a SLOT while it holds a call of this broker changes nothing: one call per slot
    net.call(rid=b"r2")
    net.send(b"s1", P.slot(b"W" * 8, b"s" * 16))
    assert net.take(b"s1", P.AT_WORKER) == [] and len(net.router.requests) == 3
    # BUSY without the worker's secret is bad input, and changes nothing
    net.send(b"s2", P.slot_busy(b"W" * 8, b"x" * 16))
    assert net.router.bad.count == 1


def test_a_control_connection_reports_its_slots_busy_with_direct_calls_and_free_again():
    net = Net()
    net.register(slots=(b"s1", b"s2"), direct="tcp://127.0.0.1:7000")
    worker = P.slot_busy(b"W" * 8, b"s" * 16, b"s1", b"not-a-slot-of-ours")
    net.send(b"ctl", worker)  # s1 runs a direct call that lasts
    (entry,) = net.router.services["svc"].workers
    assert entry.busy == 1 and entry.describe()["direct"] == {"url": "tcp://127.0.0.1:7000", "key": None}
    for i in range(2):
        net.call(rid=b"r%d" % i)
    assert len(net.take(b"s2", P.AT_WORKER)) == 1 and net.take(b"s1", P.AT_WORKER) == []
    net.send(b"ctl", P.slot(b"W" * 8, b"s" * 16, b"s1"))  # the direct call ended: s1 takes the waiting call
    assert [m.rid for m in net.take(b"s1", P.AT_WORKER)] == [b"r1"]
    # a slot may speak only for itself; naming slots is for the control connection
    net.send(b"s2", P.slot_busy(b"W" * 8, b"s" * 16, b"s1"))
    assert net.router.bad.count == 1 and entry.busy == 2


def test_welcome_tells_the_worker_the_broker_limit():
    net = Net(max_message_size=12345)
    (welcome,) = net.register()
    assert welcome.info["max_message_size"] == 12345


def test_a_squatter_without_the_secret_gets_no_call_and_cannot_answer():
    net = Net()
    net.register()
    # the worker id is public (every listing shows it); the secret is not
    net.send(b"squat", P.slot(b"W" * 8, b"guessed-secret!!"))
    for i in range(5):
        net.call(rid=b"r%d" % i)
    assert not net.inbox[b"squat"]
    alias = net.alias(rid=b"r0")
    net.send(b"squat", P.answer(P.REPLY, alias, b"r0", b"{}", [b"forged"]))
    assert net.take(b"cli") == []
    # a stranger's answer earns it only the request to register, which it cannot do as that worker
    assert [type(m) for m in net.take(b"squat", P.AT_WORKER)] == [P.Disconnect]
    net.send(b"slot", P.answer(P.REPLY, alias, b"r0", b"{}", [b"real"]))
    assert net.take(b"cli") == [P.Reply(b"r0", {}, [b"real"])]
    assert net.router.bad.count == 1


def test_another_slot_of_the_same_worker_cannot_answer_for_a_call_it_does_not_hold():
    net = Net()
    net.register(slots=(b"slot-a", b"slot-b"))
    net.call()
    holder = b"slot-a" if net.inbox[b"slot-a"] else b"slot-b"
    other = b"slot-b" if holder == b"slot-a" else b"slot-a"
    net.send(other, P.answer(P.REPLY, net.alias(), b"r1", b"{}", [b"x"]))
    assert net.take(b"cli") == []


def test_under_curve_a_slot_must_come_from_the_worker_key():
    net = Net()
    net.register(slots=(), key="KEY-owner")
    net.send(b"slot", P.slot(b"W" * 8, b"s" * 16), key="KEY-mallory")
    assert net.router.by_id[b"W" * 8].slots == set()
    net.send(b"slot", P.slot(b"W" * 8, b"s" * 16), key="KEY-owner")
    assert net.router.by_id[b"W" * 8].slots == {b"slot"}


def test_a_worker_cannot_have_more_slots_than_its_capacity():
    net = Net()
    net.register(slots=(b"a", b"b"))
    for i in range(50):
        net.send(b"extra%d" % i, P.slot(b"W" * 8, b"s" * 16))
    assert len(net.router.slots) == 2


def test_a_name_belongs_to_its_owner_while_it_is_live():
    net = Net()
    net.register(key="KEY-alice")
    (answer,) = net.register(control=b"ctl2", worker=b"X" * 8, slots=(b"s2",), key="KEY-mallory")
    assert isinstance(answer, P.Reject) and "registered at tcp://test:1 by another key" in answer.reason
    # the owner may add workers
    (answer,) = net.register(control=b"ctl3", worker=b"Y" * 8, slots=(b"s3",), key="KEY-alice")
    assert isinstance(answer, P.Welcome)


def test_a_second_worker_with_another_api_is_refused_and_the_listing_follows_live_workers():
    net = Net()
    net.register()
    (answer,) = net.register(control=b"ctl2", worker=b"X" * 8, slots=(b"s2",), api=OTHER_API)
    assert isinstance(answer, P.Reject) and "different API" in answer.reason
    net.send(b"ctl", P.bye())
    (answer,) = net.register(control=b"ctl2", worker=b"X" * 8, slots=(b"s2",), api=OTHER_API)
    assert isinstance(answer, P.Welcome)
    net.send(b"cli", P.list_query(b"l", {"api": True}))
    (reply,) = net.take(b"cli")
    assert json.loads(reply.payload[0])["backends"]["svc"]["api"] == OTHER_API


def test_configured_owners_reserve_a_name():
    net = Net(owners={"svc": frozenset({"alice"})})
    (answer,) = net.register(key="KEY-bob")
    assert isinstance(answer, P.Reject) and "reserved" in answer.reason
    (answer,) = net.register(key="KEY-alice")  # "alice" is the key file's name
    assert isinstance(answer, P.Welcome)


def test_a_stolen_worker_id_does_not_take_over_the_worker():
    net = Net()
    net.register()
    net.send(b"evil", P.ready("svc", b"W" * 8, b"x" * 16, {"api": API}))
    assert isinstance(net.take(b"evil", P.AT_WORKER)[0], P.Reject)
    assert net.router.by_id[b"W" * 8].address == b"ctl"


def test_a_worker_that_reconnects_keeps_its_calls():
    net = Net()
    net.register()
    net.call()
    net.send(b"ctl-new", P.ready("svc", b"W" * 8, b"s" * 16, {"api": API, "capacity": 1}))
    assert isinstance(net.take(b"ctl-new", P.AT_WORKER)[0], P.Welcome)
    net.send(b"slot", P.answer(P.REPLY, net.alias(), b"r1", b"{}", []))
    assert net.take(b"cli") == [P.Reply(b"r1", {}, [])]


def test_queued_calls_are_bounded_by_bytes():
    net = Net(max_queued_bytes=1000)
    net.register()
    net.call(rid=b"running")
    net.call(rid=b"q1", body=(HEADER, bytes(600)))
    net.call(rid=b"q2", body=(HEADER, bytes(600)))
    (busy,) = net.take(b"cli")
    assert isinstance(busy, P.Error) and busy.rid == b"q2" and busy.header["kind"] == "busy"
    assert net.router.queued_bytes == 600 + len(HEADER)


def test_cancel_of_a_queued_call_answers_it_and_of_a_running_one_interrupts_the_worker():
    net = Net()
    net.register()
    net.call(rid=b"running")
    net.call(rid=b"queued")
    net.send(b"cli", P.cancel(b"queued"))
    assert [(m.rid, m.header["kind"]) for m in net.take(b"cli")] == [(b"queued", "cancelled")]
    net.send(b"cli", P.cancel(b"running"))
    assert net.take(b"ctl", P.AT_WORKER) == [P.Interrupt(net.alias(rid=b"running"), b"running")]
    assert net.router.queued_bytes == 0


def test_a_silent_worker_fails_its_calls_within_liveness():
    net = Net(heartbeat=1.0, liveness=3)
    net.register()
    net.call(rid=b"running")
    net.call(rid=b"queued")
    net.advance(3.5)
    kinds = {m.rid: m.header["kind"] for m in net.take(b"cli")}
    assert kinds == {b"running": "lost", b"queued": "lost"}
    assert not net.router.requests and not net.router.services


def test_a_worker_that_beats_slowly_is_given_time_by_its_own_heartbeat():
    net = Net(heartbeat=1.0, liveness=3)
    net.register(heartbeat=5.0)
    net.register(control=b"fast", worker=b"F" * 8, slots=(b"s2",), name="other")
    net.advance(10)
    assert set(net.router.by_id) == {b"W" * 8}  # 10 s of silence: gone at a 1 s beat, not yet at a 5 s one
    net.advance(6)
    assert not net.router.workers


def test_pinned_calls_wait_for_their_worker_and_are_lost_with_it():
    net = Net()
    net.register()
    net.register(control=b"ctl2", worker=b"X" * 8, slots=(b"s2",))
    net.call(rid=b"a", worker=b"W" * 8)
    net.call(rid=b"b", worker=b"W" * 8)  # W's one slot is busy: b waits for W, not for X's free slot
    assert net.inbox.get(b"s2") is None
    net.send(b"ctl", P.bye())
    kinds = {m.rid: m.header["kind"] for m in net.take(b"cli")}
    assert kinds == {b"a": "lost", b"b": "lost"}


def test_unknown_backend_lists_only_what_the_caller_may_see():
    net = Net(started=60)
    net.register(name="public", control=b"c1", worker=b"1" * 8, slots=(b"s1",))
    net.register(name="secret", control=b"c2", worker=b"2" * 8, slots=(b"s2",), allow_clients=["alice"])
    net.call(name="nosuch")
    (error,) = [m for m in net.take(b"cli") if isinstance(m, P.Error)]
    assert "public" in error.header["message"] and "secret" not in error.header["message"]
    net.call(rid=b"r2", name="nosuch", key="KEY-alice")
    (error,) = [m for m in net.take(b"cli") if isinstance(m, P.Error)]
    assert "secret" in error.header["message"]


def test_one_query_asks_after_many_requests():
    net = Net()
    net.register()
    net.call(rid=b"running")
    net.call(rid=b"queued")
    net.send(b"cli", P.query(b"running", b"queued", b"never"))
    (status,) = net.take(b"cli")
    assert (status.rid, status.state, status.more) == (b"running", P.PENDING, [b"queued", P.PENDING, b"never", P.UNKNOWN])


def test_a_deeply_nested_list_query_is_answered():
    net = Net()
    net.send(b"cli", P.message(P.LIST, [b"r"], b"[" * 100_000))
    (error,) = net.take(b"cli")
    assert error.rid == b"r" and error.header["kind"] == "protocol"


def test_calls_wait_for_backends_after_a_restart_then_are_told_unknown():
    net = Net()
    net.call(rid=b"early")
    assert net.take(b"cli") == []
    net.register()
    assert net.take(b"slot", P.AT_WORKER)[0].rid == b"early"
    net.call(rid=b"late", name="other")
    net.advance(10)
    errors = {m.rid: m.header["kind"] for m in net.take(b"cli")}
    assert errors[b"late"] == "unknown_backend" and not net.router.services.get("other")


def test_calls_waiting_for_a_restricted_backend_are_refused_when_its_rules_arrive():
    net = Net()
    net.call(rid=b"stranger")
    net.call(rid=b"friend", client=b"cli2", key="KEY-alice")
    net.register(allow_clients=["alice"])
    assert net.take(b"cli")[0].header["kind"] == "refused"
    assert net.take(b"slot", P.AT_WORKER)[0].rid == b"friend"


def test_waiting_calls_are_bounded_overall():
    net = Net(max_queued_bytes=1 << 40)
    for i in range(MAX_WAITING + 5):
        net.call(rid=b"%d" % i, name=f"n{i % 7}")
    busy = [m for m in net.take(b"cli") if m.header["kind"] == "busy"]
    assert len(busy) == 5 and net.router.waiting_total == MAX_WAITING


def test_many_cancelled_calls_do_not_pile_up_in_the_queue():
    net = Net()
    net.register()
    net.call(rid=b"running")
    for i in range(10_000):
        net.call(rid=b"%d" % i)
        net.send(b"cli", P.cancel(b"%d" % i))
    service = net.router.services["svc"]
    assert len(service.queue) < 200 and service.waiting == 0


@pytest.mark.parametrize("frames", [
    P.message(P.READY, [b"svc", b"W", b"short"], b"{}"),  # a secret too short to protect anything
    P.message(P.READY, [b"svc", b"", b"s" * 16], b"{}"),
    P.message(P.READY, [b"svc", b"W", b"s" * 16], b'{"capacity": -4}'),
])
def test_malformed_registrations_change_nothing(frames):
    net = Net()
    net.send(b"ctl", frames)
    assert not net.router.workers and not net.router.services


# -- random interleavings ---------------------------------------------------------------------

NAMES = ["a", "b"]
KEYS = [None, "KEY-alice", "KEY-mallory"]


class RouterMachine(RuleBasedStateMachine):
    """Random traffic from honest workers and clients, squatters and garbage, with time passing."""

    @initialize()
    def setup(self):
        self.net = Net(max_queued_bytes=5000)
        self.workers: dict[bytes, dict] = {}  # control address -> what the honest worker knows
        self.calls: dict[bytes, str] = {}  # rid -> backend name
        self.finals: dict[bytes, int] = defaultdict(int)
        self.serial = 0

    def _next(self, prefix: bytes) -> bytes:
        self.serial += 1
        return prefix + b"%d" % self.serial

    def _deliver(self) -> None:
        """Check what the router sent: work only to honest slots of the right name, finals counted."""
        for address in list(self.net.inbox):
            if address.startswith(b"cli"):
                for msg in self.net.take(address):
                    if isinstance(msg, (P.Reply, P.Error)):
                        self.finals[msg.rid] += 1
            elif address.startswith(b"slot"):
                owner = next(w for w in self.workers.values() if address in w["slots"])
                for msg in self.net.take(address, P.AT_WORKER):
                    if not isinstance(msg, P.Work):
                        continue
                    assert self.calls[msg.rid] == owner["name"], "a call reached a worker of another name"
                    owner["running"].append((address, msg))
            else:
                self.net.inbox.pop(address)

    @rule(name=st.sampled_from(NAMES), key=st.sampled_from(KEYS), other_api=st.booleans(), slots=st.integers(1, 3))
    def register(self, name, key, other_api, slots):
        control, worker = self._next(b"ctl"), self._next(b"W")
        addresses = [self._next(b"slot") for _ in range(slots)]
        self.net.send(control, P.ready(name, worker, b"secret-" + worker.ljust(9, b"."),
                                       {"api": OTHER_API if other_api else API, "capacity": slots, "queue": 3}), key)
        answer = self.net.take(control, P.AT_WORKER)
        if isinstance(answer[0], P.Welcome):
            for slot in addresses:
                self.net.send(slot, P.slot(worker, b"secret-" + worker.ljust(9, b".")), key)
            self.workers[control] = {"name": name, "slots": set(addresses), "running": [], "id": worker}
        self._deliver()

    @rule(name=st.sampled_from(NAMES + ["nosuch"]), size=st.integers(0, 3000), pin=st.booleans(),
          key=st.sampled_from(KEYS))
    def call(self, name, size, pin, key):
        rid = self._next(b"r")
        pinned = b""
        if pin and self.workers:
            pinned = next(iter(self.workers.values()))["id"]
        self.calls[rid] = name
        self.net.call(client=b"cli", rid=rid, name=name, worker=pinned, body=(HEADER, bytes(size)), key=key)
        self._deliver()

    @precondition(lambda self: self.calls)
    @rule(data=st.data())
    def cancel(self, data):
        rid = data.draw(st.sampled_from(sorted(self.calls)))
        self.net.send(b"cli", P.cancel(rid))
        self._deliver()

    @precondition(lambda self: any(w["running"] for w in self.workers.values()))
    @rule(data=st.data(), error=st.booleans())
    def answer(self, data, error):
        worker = data.draw(st.sampled_from([w for w in self.workers.values() if w["running"]]))
        slot, work = worker["running"].pop(0)
        self.net.send(slot, P.answer(P.ERROR if error else P.REPLY, work.client, work.rid, b"{}"))
        self._deliver()

    @precondition(lambda self: self.workers)
    @rule(data=st.data())
    def leave(self, data):
        control = data.draw(st.sampled_from(sorted(self.workers)))
        self.net.send(control, P.bye())
        del self.workers[control]
        self._deliver()

    @rule(steps=st.integers(1, 10))
    def time_passes(self, steps):
        for _ in range(steps):
            for control in self.workers:
                self.net.send(control, P.heartbeat())  # honest workers keep beating
            self.net.advance(0.5)
        self._deliver()

    @rule(junk=st.lists(st.binary(max_size=20), max_size=6), squat=st.booleans(),
          mtype=st.sampled_from(sorted(P.AT_BROKER)))
    def garbage(self, junk, squat, mtype):
        if squat and self.workers:  # a known worker id, a guessed secret
            worker = next(iter(self.workers.values()))
            self.net.send(b"squat", P.slot(worker["id"], b"x" * 16))
            self.net.send(b"squat", P.answer(P.REPLY, b"cli", next(iter(self.calls), b"r"), b"{}"))
        self.net.send(b"junk", [P.VERSION + b" " + b" ".join(junk[:2]), *junk[2:]])  # junk type and fields
        self.net.send(b"junk", [P.envelope(mtype, *junk[:3]), *junk[3:]])  # a known type, junk fields
        if junk:  # a ROUTER hands over at least one frame after the address
            self.net.send(b"junk", junk)
        self._deliver()

    @invariant()
    def at_most_one_final_answer_and_bounded_tables(self):
        if not hasattr(self, "net"):
            return
        assert all(count == 1 for count in self.finals.values()), "a request was answered twice"
        router = self.net.router
        assert not any(isinstance(m, P.Work) for m in self.net.take(b"squat", P.AT_WORKER))
        assert router.queued_bytes <= 5000
        assert len(router.requests) <= sum(len(w.slots) for w in router.workers.values()) + sum(
            s.waiting for s in router.services.values())
        assert all(len(w.slots) <= w.capacity for w in router.workers.values())

    def teardown(self):
        if not hasattr(self, "net"):
            return
        # every worker leaves, the grace passes: every call has had exactly one final answer
        for control in list(self.workers):
            self.net.send(control, P.bye())
        self.net.advance(60)
        self._deliver()
        unanswered = set(self.calls) - set(self.finals)
        assert not unanswered, f"{len(unanswered)} calls never answered"
        assert not self.net.router.requests and not self.net.router.services and self.net.router.queued_bytes == 0


TestRouterInterleavings = RouterMachine.TestCase
TestRouterInterleavings.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_a_queued_call_of_a_caller_silent_for_its_lease_is_dropped_not_run():
    net = Net()
    net.register()
    net.call(rid=b"running")
    running = net.alias(rid=b"running")
    net.take(b"slot", P.AT_WORKER)
    net.call(client=b"gone", rid=b"g1")
    net.call(client=b"alive", rid=b"a1")
    lease = net.router.caller_lease
    for _ in range(int(lease) + 2):  # "alive" asks after its call every second, "gone" says nothing
        net.advance(1.0)
        net.send(b"alive", P.query(b"a1"))
        net.send(b"ctl", P.heartbeat())
    net.send(b"slot", P.answer(P.REPLY, running, b"running", b"{}"))
    (dropped,) = net.take(b"gone")
    assert dropped.rid == b"g1" and dropped.header["kind"] == "cancelled" and "did not ask" in dropped.header["message"]
    assert [m.rid for m in net.take(b"slot", P.AT_WORKER)] == [b"a1"]
    assert net.router.queued_bytes == 0 and set(net.router.requests) == {(b"alive", b"a1")}


def test_a_silent_worker_whose_connection_is_up_is_kept_for_a_while_then_lost():
    net = Net(heartbeat=1.0, liveness=3)
    up = {b"ctl"}
    net.router.connected = lambda address: address in up  # what libzmq's own heartbeats tell the broker
    net.register()
    net.call(rid=b"running")
    net.advance(10)  # its Python holds the GIL: no HEARTBEAT, but its libzmq answers
    assert set(net.router.by_id) == {b"W" * 8} and net.take(b"cli") == []
    net.advance(CONNECTED_SILENCE)  # silent that long, connected or not: hung
    assert [m.header["kind"] for m in net.take(b"cli")] == ["lost"] and not net.router.workers
    net.register(control=b"ctl2", worker=b"V" * 8, slots=(b"s2",))
    net.call(rid=b"r2")
    net.advance(3.5)  # its connection is gone: lost within liveness, as without libzmq's word
    assert [m.header["kind"] for m in net.take(b"cli")] == ["lost"] and not net.router.workers
