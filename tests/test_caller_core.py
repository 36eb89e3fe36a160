"""The caller's core, driven directly: no sockets, no processes, microseconds per message.

A :class:`Wire` stands in for the client's I/O thread: it feeds the
:class:`~de_magic.caller.core.Core` requests, answers and the time, files what
the core sends by connection, and records how each request ended.  The property
test at the end runs random interleavings of calls (direct and through the
broker, with and without timeouts and retries), answers, late answers, events,
STATUS, errors, undeliverable direct sends, cancels and time passing, and checks
what the caller promises after every step.
"""

from __future__ import annotations

import json

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from de_magic.caller.core import COMPACT_AFTER, QUERY_BATCH, Core, Event, Listed, Lost, Request, Send, Settle
from de_magic.caller.routes import Endpoint
from de_magic.wire import protocol as P
from de_magic.wire import serialize
from de_magic.wire.errors import BackendLost, CallTimeout, Refused, UnknownBackend

A, B = "tcp://a:1", "tcp://b:1"
DIRECT = Endpoint(b"W" * 8, "tcp://w:9", None)
HEARTBEAT, LIVENESS = 1.0, 3


def _message(frames: list, rid: bytes) -> list:
    """An answer for ``rid``: a STATUS holds its states in the envelope, the others their header and payload."""
    if frames[0] == P.STATUS:
        return P.message(P.STATUS, [rid, *frames[1:]])
    return P.message(frames[0], [rid], *frames[1:])


class Wire:
    """The core behind pretend connections: what was sent on each, and how each request ended."""

    def __init__(self, doors=(A,), unreachable=()):
        self.now = 100.0
        self.core = Core(list(doors), heartbeat=HEARTBEAT, liveness=LIVENESS, now=self.now)
        self.sent: dict = {}  # way -> [parsed message]
        self.ended: dict = {}  # token -> (result, exc)
        self.events: list = []
        self.lost: list = []
        self.listed: list = []
        self.unreachable = set(unreachable)  # direct endpoints a send cannot reach

    # -- driving -----------------------------------------------------------------------------------

    def call(self, token, member="f", timeout=None, endpoint=None, retries=0, reencode=None,
             codec=serialize.PICKLE) -> Request:
        request = Request(token, "svc", {"member": member}, [b"args"], endpoint=endpoint, timeout=timeout,
                          what=f"svc.{member}", retries=retries, reencode=reencode, codec=codec)
        self.do(self.core.start(request, self.now))
        return request

    def listing(self, token, url=None, retries=0, timeout=10.0) -> Request:
        request = Request(token, url=url, query={"api": False}, timeout=timeout, retries=retries)
        self.do(self.core.start(request, self.now))
        return request

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.do(self.core.tick(self.now))

    def answer(self, request: Request, frames: list, way=None) -> None:
        self.do(self.core.received(way if way is not None else request.way,
                                   _message(frames, request.rid), self.now))

    def reply(self, request: Request, value=b"result", way=None) -> None:
        self.answer(request, [P.REPLY, b"{}", value], way)

    def error(self, request: Request, kind: str, message: str) -> None:
        self.answer(request, [P.ERROR, P.error_header(kind, message)])

    def list_reply(self, request: Request, backends: dict) -> None:
        listing = json.dumps({"broker": {}, "backends": backends}).encode()
        self.answer(request, [P.REPLY, b'{"codec":"json"}', listing])

    def do(self, actions: list) -> None:
        for action in actions:
            if type(action) is Send:
                if action.way in self.unreachable and action.request is not None:
                    self.do(self.core.unsent(action.request, self.now))
                    continue
                self.sent.setdefault(action.way, []).append(P.parse(action.frames, P.AT_BROKER))
            elif type(action) is Settle:
                assert action.token not in self.ended, f"{action.token} ended twice"
                self.ended[action.token] = (action.result, action.exc)
            elif type(action) is Event:
                self.events.append(action)
            elif type(action) is Lost:
                self.lost.append(action.endpoint)
            elif type(action) is Listed:
                self.listed.append(action)

    # -- looking -----------------------------------------------------------------------------------

    def take(self, way) -> list:
        return self.sent.pop(way, [])

    def outcome(self, token):
        result, exc = self.ended[token]
        return exc if exc is not None else result


def test_a_reply_ends_the_call_once_and_a_late_one_for_an_earlier_attempt_is_ignored():
    wire = Wire()
    call = wire.call("t1", retries=1)
    (sent,) = wire.take(A)
    assert type(sent) is P.Call and sent.backend == "svc" and sent.rid == call.rid
    first = call.rid
    wire.answer(call, [P.STATUS, P.UNKNOWN])  # the broker forgot it: it goes again, with a new id
    assert "t1" not in wire.ended and call.rid != first
    wire.do(wire.core.received(A, P.message(P.REPLY, [first], b"{}", b"late"), wire.now))
    assert "t1" not in wire.ended  # an abandoned attempt's answer is never taken for another's
    wire.reply(call)
    assert wire.outcome("t1") == ({}, [b"result"]) and wire.core.in_flight == 0


def test_one_query_per_heartbeat_asks_after_every_waiting_call_in_batches():
    wire = Wire()
    calls = [wire.call(i) for i in range(QUERY_BATCH * 2 + 5)]
    wire.take(A)
    wire.advance(HEARTBEAT)
    queries = wire.take(A)
    assert [type(q) for q in queries] == [P.Query] * 3
    asked = [rid for q in queries for rid in q.ids()]
    assert sorted(asked) == sorted(c.rid for c in calls) and max(len(q.ids()) for q in queries) == QUERY_BATCH


def test_a_silent_broker_loses_its_calls_and_the_client_moves_to_the_next_one_where_retries_go_again():
    wire = Wire(doors=(A, B))
    wire.call("once")
    again = wire.call("again", retries=1)
    for _ in range(LIVENESS + 1):
        wire.advance(HEARTBEAT)
    lost = wire.outcome("once")
    assert isinstance(lost, BackendLost)
    assert str(lost) == f"svc.f: the broker at {A} is not answering; this client now uses the broker at {B}"
    assert wire.core.url == B and [type(m) for m in wire.take(B)] == [P.Call]  # the retry, at the next broker
    wire.reply(again)
    assert wire.outcome("again") == ({}, [b"result"])


def test_a_timeout_cancels_the_call_and_names_what_was_called_with_the_endpoint_as_a_detail():
    wire = Wire()
    call = wire.call("t", member="slow", timeout=0.5, endpoint=DIRECT)
    wire.advance(0.4)
    assert "t" not in wire.ended
    wire.advance(0.1)
    timeout = wire.outcome("t")
    assert isinstance(timeout, CallTimeout)
    assert str(timeout) == ("no answer from svc.slow within 0.5 s (sent straight to its worker's direct endpoint "
                            "tcp://w:9)")
    assert [type(m) for m in wire.take(DIRECT)] == [P.Call, P.Cancel] and call.way is None


def test_finished_calls_keep_nothing_whatever_their_timeout():
    wire = Wire()
    for i in range(100_000):
        call = wire.call(i, timeout=30.0)
        wire.reply(call)
        assert call.payload is None and call.header is None  # released at once, not at its deadline
    wire.take(A)
    assert wire.core.in_flight == 0 and len(wire.core._deadlines) <= COMPACT_AFTER * 2 + 1
    assert not wire.core.inflight


def test_a_direct_call_that_cannot_be_sent_or_reaches_another_backend_goes_through_the_broker():
    wire = Wire(unreachable={DIRECT})
    unsent = wire.call("unsent", endpoint=DIRECT)
    assert unsent.way == A and wire.lost == [DIRECT] and [type(m) for m in wire.take(A)] == [P.Call]
    wire.unreachable.clear()
    other = wire.call("other", endpoint=DIRECT)
    wire.error(other, UnknownBackend.kind, "no backend 'svc' here")
    assert other.way == A and wire.lost == [DIRECT, DIRECT] and "other" not in wire.ended
    wire.reply(other)
    assert wire.outcome("other") == ({}, [b"result"]) and not wire.core.inflight


def test_a_refused_pickle_goes_again_as_json_once_a_listing_shows_the_backend_takes_json_only():
    for codec, expected in (("json", "answered"), ("pickle", "refused")):
        wire = Wire()
        call = wire.call("t", reencode=lambda to: ({"member": "f", "codec": to}, [b"[[1],{}]"], b""))
        wire.take(A)
        wire.error(call, Refused.kind, "this backend takes no pickles")
        (lookup,) = [m for m in wire.take(A) if type(m) is P.List]
        assert lookup.query == {"api": False, "name": "svc"}
        lookup_request = wire.core.links[A].requests[lookup.rid]
        wire.list_reply(lookup_request, {"svc": {"codec": codec, "workers": []}})
        assert wire.listed[0].name == "svc"  # the client learns the codec (and routes) from it
        if expected == "answered":
            (again,) = wire.take(A)
            assert P.load_header(again.body[0]) == {"member": "f", "codec": "json"}
            wire.reply(call)
            assert wire.outcome("t") == ({}, [b"result"])
        else:
            assert isinstance(wire.outcome("t"), Refused)


def test_a_listing_the_broker_does_not_answer_asks_the_next():
    wire = Wire(doors=(A, B))
    listing = wire.listing("l", retries=1, timeout=2.0)
    wire.advance(2.0)
    assert "l" not in wire.ended and wire.core.url == B and listing.way == B
    wire.list_reply(listing, {})
    assert wire.outcome("l")[1] == [json.dumps({"broker": {}, "backends": {}}).encode()]


def test_the_client_goes_back_to_its_preferred_broker_once_it_knows_what_the_one_in_use_knows():
    wire = Wire(doors=(A, B))
    wire.do(wire.core.choose(1, wire.now))  # a fresh client found A down
    for preferred_knows, back in (({}, False), ({"svc": {}}, True)):
        wire.advance(HEARTBEAT * LIVENESS)
        probes = {way: [m for m in wire.take(way) if type(m) is P.List] for way in (A, B)}
        assert len(probes[A]) == len(probes[B]) == 1
        for way, backends in ((A, preferred_knows), (B, {"svc": {}})):
            request = wire.core.links[way].requests[probes[way][0].rid]
            wire.list_reply(request, backends)
        assert (wire.core.url == A) is back  # A came back before svc registered there: not yet
    wire.advance(HEARTBEAT * LIVENESS * 3)
    assert not wire.take(A) and not wire.take(B)  # back at the first: no more probes


class CallerMachine(RuleBasedStateMachine):
    """Random interleavings; after every step, the caller's promises hold."""

    def __init__(self):
        super().__init__()
        self.wire = Wire(doors=(A, B))
        self.requests: dict[int, Request] = {}
        self.cancelled: set[int] = set()
        self.old_rids: list[tuple] = []  # (way, rid) of attempts that went again or ended

    def live(self) -> list[int]:
        return [t for t, r in self.requests.items() if r.way is not None]

    def carried(self) -> int:
        """Requests of the caller's in the core's books (not the core's own: failback probes, codec lookups)."""
        return sum(r.token is not None for link in self.wire.core.links.values() for r in link.requests.values())

    @rule(direct=st.booleans(), timeout=st.sampled_from([None, 0.5, 2.0, 30.0]), retries=st.integers(0, 2))
    def call(self, direct, timeout, retries):
        token = len(self.requests)
        self.requests[token] = self.wire.call(token, timeout=timeout, endpoint=DIRECT if direct else None,
                                              retries=retries)

    @precondition(lambda self: self.live())
    @rule(data=st.data(), kind=st.sampled_from(["reply", "event", "unknown", "error", "unknown_backend"]))
    def answer(self, data, kind):
        token = data.draw(st.sampled_from(self.live()))
        request = self.requests[token]
        self.old_rids.append((request.way, request.rid))
        if kind == "reply":
            self.wire.reply(request)
        elif kind == "event":
            self.wire.answer(request, [P.EVENT, b'{"event":"progress"}'])
        elif kind == "unknown":
            self.wire.answer(request, [P.STATUS, P.UNKNOWN])
        elif kind == "error":
            self.wire.error(request, "busy", "too many calls")
        else:
            self.wire.error(request, UnknownBackend.kind, "not here")

    @precondition(lambda self: self.old_rids)
    @rule(data=st.data())
    def late_answer(self, data):
        way, rid = data.draw(st.sampled_from(self.old_rids))
        ended = dict(self.wire.ended)
        live_rids = {r.rid for r in self.requests.values() if r.way is not None}
        self.wire.do(self.wire.core.received(way, P.message(P.REPLY, [rid], b"{}", b"late"), self.wire.now))
        if rid not in live_rids:
            assert self.wire.ended == ended  # nothing ends by an abandoned attempt's answer

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def cancel(self, data):
        token = data.draw(st.sampled_from(self.live()))
        self.cancelled.add(token)
        self.wire.do(self.wire.core.cancel(self.requests[token]))

    @rule(reachable=st.booleans())
    def direct_reachable(self, reachable):
        self.wire.unreachable = set() if reachable else {DIRECT}

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 3.0]))
    def advance(self, seconds):
        self.wire.advance(seconds)
        self.wire.sent.clear()

    @invariant()
    def every_request_is_in_flight_ended_or_cancelled_exactly_once(self):
        for token, request in self.requests.items():
            states = [request.way is not None, token in self.wire.ended, token in self.cancelled]
            assert sum(states) == 1, (token, states)

    @invariant()
    def the_books_hold_only_what_is_in_flight(self):
        core = self.wire.core
        assert self.carried() == len(self.live())
        assert core.in_flight == sum(len(link.requests) for link in core.links.values())
        assert sum(core.inflight.values()) == sum(isinstance(r.way, Endpoint) for r in self.requests.values())
        live_deadlines = sum(r.in_heap for r in self.requests.values())
        assert len(core._deadlines) <= 2 * live_deadlines + COMPACT_AFTER + 1
        for token in self.wire.ended:
            assert self.requests[token].payload is None  # ended: nothing kept

    @invariant()
    def no_call_outlives_its_deadline(self):
        for request in self.requests.values():
            if request.way is not None and request.deadline is not None:
                assert request.deadline > self.wire.now

    def teardown(self):
        # a caller always gets an answer or a timeout: silence ends every attempt within liveness heartbeats
        for _ in range(3 * (LIVENESS + 2)):  # a call has 2 retries at most
            self.wire.advance(HEARTBEAT)
        assert not self.live() and self.carried() == 0


TestCallerInterleavings = CallerMachine.TestCase
TestCallerInterleavings.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
