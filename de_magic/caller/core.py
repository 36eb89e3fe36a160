"""The caller's core: every decision about requests in flight, and no sockets.

:class:`Core` is to the client what :class:`~de_magic.broker.routing.Router` is to the broker: it
takes what happened (a request to send, the frames that came on a connection, a connection that
could not take a message, the time) and returns what to do (:class:`Send` these frames on that
connection, :class:`Settle` that request, hand an :class:`Event` to its handler, count an endpoint
:class:`Lost`, absorb a :class:`Listed` listing).  The client's one I/O thread
(:mod:`de_magic.caller.mux`) is a thin loop around it, and the tests drive it directly through
any interleaving they like (tests/test_caller_core.py).

A connection ("way") is a broker's URL, or a worker's direct :class:`~de_magic.caller.routes.Endpoint`.
The core holds, for each, the requests waiting on it and how many heartbeats went unanswered, and
for the client the brokers ("doors") in the order of preference and the one in use.  Its policy,
once for blocking calls, futures, jobs, sessions and listings alike:

- every request ends exactly once: with its answer, the remote error, :class:`CallTimeout` at its
  deadline (a CANCEL tells the remote side), or :class:`BackendLost`; a late answer to an abandoned
  attempt is never taken for another's;
- each heartbeat, one QUERY per connection asks after all the requests waiting there (in batches of
  :data:`QUERY_BATCH`); a connection silent for ``liveness`` heartbeats is lost;
- fallbacks: a direct call that could not be sent, or reached a worker of another backend, goes
  through the broker (nothing ran); a broker that stops answering makes the client use the next
  one; a request allowed ``retries`` goes again (through the broker in use) when it was lost; a
  pickled call a backend refused goes again as JSON once a listing shows the backend takes JSON
  only; a listing that gets no answer asks the next broker;
- failback: while a later broker is in use, every probe interval the preferred ones are asked for a
  listing, and the client goes back to the first that answers and knows every backend the one in
  use knows (backends register again within a few heartbeats of a broker's return);
- memory: a finished request keeps nothing; its deadline entry is skipped when due, and the heap is
  rebuilt without such entries once they are most of it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import struct
from typing import Any, Callable, NamedTuple

from ..wire import protocol as P
from ..wire import serialize
from ..wire.errors import BackendLost, CallTimeout, ProtocolMismatch, Refused, UnknownBackend, from_header
from .naming import knower, place
from .routes import Endpoint

log = logging.getLogger("de_magic.client")

QUERY_BATCH = 10_000  #: request ids per QUERY, the most a broker answers at once
COMPACT_AFTER = 64  #: finished entries the deadline heap may hold before it is rebuilt (when they are most of it)

_request_ids = itertools.count(1)


def new_rid() -> bytes:
    """A request id unique in this process: a late answer to one attempt cannot be taken for another's."""
    return struct.pack("!Q", next(_request_ids))


# -- what the core asks its driver to do ----------------------------------------------------------------------

class Send(NamedTuple):
    way: Any  # str | Endpoint
    frames: list
    request: "Request | None"  # the request sent (None: a QUERY or a CANCEL); a direct one not sent: unsent()


class Settle(NamedTuple):
    token: Any  # the request's token (a future)
    result: Any
    exc: BaseException | None


class Event(NamedTuple):
    request: "Request"
    header: dict
    frames: list


class Lost(NamedTuple):
    endpoint: Endpoint  # calls there go through the broker for a while


class Listed(NamedTuple):
    url: str
    name: str | None  # the backend the listing was about, None: all
    listing: dict


class Request:
    """One request as the core carries it, across its attempts (each with a fresh request id).

    A call has a ``backend``; a listing has none, and a ``query``.  ``token`` is what :class:`Settle`
    names (a future); ``on_event`` what :class:`Event` hands the events to.  ``reencode(codec)`` gives the
    call's ``(header, payload, worker)`` in another codec (the pickle -> JSON fallback), None: no fallback.
    """

    __slots__ = ("token", "backend", "header", "payload", "worker", "endpoint", "url", "query", "timeout", "what",
                 "on_event", "retries", "reencode", "codec", "then", "rid", "way", "deadline", "in_heap")

    def __init__(self, token, backend: str | None = None, header: dict | None = None, payload: list = (),
                 worker: bytes = b"", *, endpoint: Endpoint | None = None, url: str | None = None,
                 query: dict | None = None, timeout: float | None = None, what: str | None = None,
                 on_event=None, retries: int = 0, reencode: Callable | None = None, codec: str = serialize.PICKLE,
                 then: Callable | None = None):
        self.token, self.backend, self.header, self.payload, self.worker = token, backend, header, list(payload), worker
        self.endpoint, self.url, self.query, self.timeout = endpoint, url, query, timeout
        self.what = what or ("a listing" if backend is None else backend)
        self.on_event, self.retries, self.reencode, self.codec = on_event, retries, reencode, codec
        self.then = then  # the core's own requests (probes, codec lookups): called with (result, exc), no Settle
        self.rid = b""
        self.way = None  # where the attempt in flight went; None: over (or not started)
        self.deadline: float | None = None
        self.in_heap = False  # whether the deadline heap holds a live entry for it

    @property
    def pinned(self) -> bool:
        """A listing asked of one broker (a probe): it follows no door."""
        return self.backend is None and self.url is not None

    def frames(self) -> list:
        if self.backend is None:
            return P.list_query(self.rid, self.query)
        return P.call(self.rid, self.backend, self.worker, P.dump_header(self.header), self.payload)


class Link:
    """One connection's books: the requests waiting on it, and how many heartbeats went unanswered."""

    __slots__ = ("requests", "unanswered")

    def __init__(self):
        self.requests: dict[bytes, Request] = {}
        self.unanswered = 0


class Core:
    """The caller's decisions (see the module's doc); not thread-safe: one thread drives it."""

    def __init__(self, doors: list[str], *, heartbeat: float, liveness: int, now: float):
        self.doors = list(doors)
        self.door = 0  #: index of the broker in use
        self.heartbeat, self.liveness = heartbeat, liveness
        self.links: dict[Any, Link] = {}
        #: worker id -> calls in flight there (a backend's least busy direct endpoint is picked)
        self.inflight: dict[bytes, int] = {}
        self._deadlines: list[tuple[float, int, Request]] = []
        self._finished_early = 0  # entries of _deadlines whose request ended before its deadline
        self._order = itertools.count()
        self._now = now
        self._next_beat = now + heartbeat
        self._next_failback: float | None = None  # when to probe the preferred brokers again
        self._probing = False  # a round of failback probes is out
        self._out: list = []
        self._in_flight = 0

    @property
    def url(self) -> str:
        """The broker in use."""
        return self.doors[self.door]

    @property
    def in_flight(self) -> int:
        """Requests whose attempt is on a connection (counted as they come and go: the loop asks at every call)."""
        return self._in_flight

    # -- inputs -------------------------------------------------------------------------------------------

    def start(self, request: Request, now: float) -> list:
        """Send a new request; its deadline counts from ``now``."""
        self._now = now
        if request.timeout is not None:
            request.deadline = now + request.timeout
        self._send(request)
        return self._flush()

    def cancel(self, request: Request) -> list:
        """The caller gave up on ``request`` (its future was cancelled): tell the remote side; no Settle."""
        link = self._link_of(request)
        if link is not None:
            self._out.append(Send(request.way, P.cancel(request.rid), None))
            self._end(link, request)
        else:
            self._release(request)  # it waits for a lookup (see _relearn_codec), which then finds it over
        return self._flush()

    def abandon(self, request: Request, exc: BaseException) -> list:
        """The caller's event handler raised ``exc``: stop the remote work, and end the request with it."""
        link = self._link_of(request)
        if link is not None:
            self._out.append(Send(request.way, P.cancel(request.rid), None))
            self._finish(link, request, exc=exc)
        return self._flush()

    def unsent(self, request: Request, now: float) -> list:
        """A direct attempt could not be sent (its endpoint is not connected): nothing ran, so the broker carries
        it, and the endpoint's later calls go through the broker for a while."""
        self._now = now
        link = self._link_of(request)
        if link is not None and isinstance(request.way, Endpoint):
            self._out.append(Lost(request.way))
            self._end(link, request, again=True)
            self._via_broker(request)
        return self._flush()

    def choose(self, door: int, now: float) -> list:
        """Use broker ``door``: a fresh client's parallel probe found it the first to answer."""
        self._now = now
        self.door = door
        self._watch_failback()
        return self._flush()

    def received(self, way, frames: list, now: float) -> list:
        """Frames that came on the connection ``way``."""
        self._now = now
        link = self.links.get(way)
        if link is None:
            return []
        link.unanswered = 0
        try:
            msg = P.parse(frames, P.AT_CLIENT)
        except P.ProtocolError as exc:
            request = link.requests.get(exc.rid) if exc.rid is not None else None
            if request is not None:
                self._finish(link, request, exc=ProtocolMismatch(f"{request.what}: {self._at(request)}: {exc}"))
            return self._flush()
        kind = type(msg)
        if kind is P.Status:
            for rid, state in msg.pairs():
                lost = link.requests.get(rid) if state == P.UNKNOWN else None
                if lost is not None:
                    self._lost(link, lost, BackendLost(
                        f"{lost.what}: {knower(_url(way), lost.endpoint)} no longer knows this request (it "
                        "restarted, or the backend was lost)"))
            return self._flush()
        request = link.requests.get(msg.rid)
        if request is None:
            return []  # a late answer to an attempt given up: never taken for another's
        if kind is P.Reply:
            self._finish(link, request, result=(msg.header, msg.payload))
        elif kind is P.Event:
            self._out.append(Event(request, msg.header, msg.payload))
        else:
            self._on_error(link, request, from_header(msg.header))
        return self._flush()

    def refused(self, url: str, reason: str) -> list:
        """The broker at ``url`` refused this client's handshake: its requests end with :class:`Refused`."""
        link = self.links.get(url)
        if link is not None:
            for request in list(link.requests.values()):
                self._finish(link, request, exc=Refused(reason))
        return self._flush()

    def silent(self, way, now: float, why: str = "is not answering") -> list:
        """The connection ``way`` is gone (its peer went silent, or dropped it): its requests are lost."""
        self._now = now
        self._silent(way, why)
        return self._flush()

    def _silent(self, way, why: str = "is not answering") -> None:
        link = self.links.get(way)
        if link is None or not link.requests:
            return
        link.unanswered = 0
        if isinstance(way, Endpoint):
            self._out.append(Lost(way))
            for request in list(link.requests.values()):
                self._lost(link, request, BackendLost(
                    f"{request.what}: its worker is not answering ({place(way.url, way)}); later calls go through "
                    "the broker"))
        else:
            moved = self._fail_over(way)
            for request in list(link.requests.values()):
                self._lost(link, request, BackendLost(f"{request.what}: the broker at {way} {why}{moved}"))

    def tick(self, now: float) -> list:
        """Time passed: deadlines, heartbeats (QUERY, silence), failback probes."""
        self._now = now
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, request = heapq.heappop(self._deadlines)
            if not request.in_heap:  # it ended before its deadline
                self._finished_early -= 1
                continue
            request.in_heap = False
            link = self._link_of(request)
            if link is None:
                continue  # it waits for the core's own lookup, which has a deadline of its own
            self._out.append(Send(request.way, P.cancel(request.rid), None))
            if request.backend is None and not request.pinned and request.retries > 0:
                # a live broker answers a listing at once: this one is gone, ask the next
                request.retries -= 1
                way = request.way
                self._end(link, request, again=True)
                self._fail_over(way)
                request.deadline = now + request.timeout
                self._send(request)
                continue
            self._finish(link, request, exc=CallTimeout(
                f"no answer from {request.what} within {request.timeout:g} s ({self._at(request)})"))
        if now >= self._next_beat:
            self._next_beat = now + self.heartbeat
            for way, link in list(self.links.items()):
                self._beat(way, link)
        if self._next_failback is not None and now >= self._next_failback:
            self._probe_preferred()
        return self._flush()

    def wake_at(self) -> float:
        """When :meth:`tick` has something to do at the latest."""
        wake = self._next_beat
        if self._deadlines:
            wake = min(wake, self._deadlines[0][0])
        if self._next_failback is not None:
            wake = min(wake, self._next_failback)
        return wake

    def shutdown(self, exc: BaseException) -> list:
        """The client closes: every request ends with ``exc``, and the remote sides are told (CANCEL)."""
        self._next_failback = None
        for way, link in self.links.items():
            for request in list(link.requests.values()):
                self._out.append(Send(way, P.cancel(request.rid), None))
                self._finish(link, request, exc=exc)
        return self._flush()

    # -- sending --------------------------------------------------------------------------------------------

    def _send(self, request: Request) -> None:
        request.rid = new_rid()
        if request.endpoint is not None:
            way = request.endpoint
            self.inflight[way.worker] = self.inflight.get(way.worker, 0) + 1
        else:
            way = request.url if request.pinned else self.url
        request.way = way
        link = self.links.get(way)
        if link is None:
            link = self.links[way] = Link()
        link.requests[request.rid] = request
        self._in_flight += 1
        if request.deadline is not None and not request.in_heap:
            request.in_heap = True
            heapq.heappush(self._deadlines, (request.deadline, next(self._order), request))
        self._out.append(Send(way, request.frames(), request))

    def _via_broker(self, request: Request) -> None:
        request.endpoint = None
        self._send(request)

    # -- ending ---------------------------------------------------------------------------------------------

    def _link_of(self, request: Request) -> Link | None:
        """The connection ``request``'s attempt is in flight on, if it is."""
        link = self.links.get(request.way) if request.way is not None else None
        return link if link is not None and link.requests.get(request.rid) is request else None

    def _end(self, link: Link, request: Request, again: bool = False) -> None:
        """Take the attempt in flight off its connection; unless it goes ``again``, the request is over."""
        if link.requests.pop(request.rid, None) is not None:
            self._in_flight -= 1
        if isinstance(request.way, Endpoint):
            worker = request.way.worker
            self.inflight[worker] -= 1
            if not self.inflight[worker]:
                del self.inflight[worker]
        request.way = None
        if not again:
            self._release(request)

    def _release(self, request: Request) -> None:
        """A finished request keeps nothing; its deadline entry is skipped when due, and the heap is rebuilt
        without such entries once they are most of it."""
        request.payload = request.header = request.on_event = request.reencode = request.then = None
        if request.in_heap:
            request.in_heap = False
            self._finished_early += 1
            if self._finished_early > COMPACT_AFTER and 2 * self._finished_early > len(self._deadlines):
                self._deadlines = [entry for entry in self._deadlines if entry[2].in_heap]
                heapq.heapify(self._deadlines)
                self._finished_early = 0

    def _finish(self, link: Link | None, request: Request, result=None, exc: BaseException | None = None) -> None:
        then = request.then
        if link is not None:
            self._end(link, request)
        else:
            self._release(request)
        if then is not None:
            then(result, exc)
        else:
            self._out.append(Settle(request.token, result, exc))

    def _lost(self, link: Link, request: Request, error: BackendLost) -> None:
        """The attempt in flight is lost: it goes again if allowed (a listing: to the next broker), else ends."""
        if request.retries > 0 and not request.pinned:
            request.retries -= 1
            if request.backend is not None:
                log.info("%s; sending it again (%d retries left)", error, request.retries)
            self._end(link, request, again=True)
            self._via_broker(request)
        else:
            self._finish(link, request, exc=error)

    def _on_error(self, link: Link, request: Request, error: BaseException) -> None:
        if isinstance(error, UnknownBackend) and isinstance(request.way, Endpoint):
            # another backend listens there now: nothing ran; the broker carries it, and the endpoint is shunned
            self._out.append(Lost(request.way))
            self._end(link, request, again=True)
            self._via_broker(request)
        elif isinstance(error, Refused) and request.reencode is not None and request.codec != serialize.JSON:
            self._end(link, request, again=True)
            self._relearn_codec(request, error)
        else:
            self._finish(link, request, exc=error)

    # -- pickle -> JSON ---------------------------------------------------------------------------------------

    def _relearn_codec(self, request: Request, refusal: Refused) -> None:
        """A backend refused a pickled call: perhaps it takes JSON only. A listing tells; then the call goes again
        as JSON, or ends with the refusal."""
        backend, url = request.backend, self.url

        def listed(result, exc) -> None:
            if request.reencode is None:
                return  # cancelled meanwhile
            entry = None
            if exc is None:
                try:
                    listing = _decode(result)
                    entry = listing["backends"].get(backend)
                except Exception:  # noqa: BLE001 - an unreadable listing: the refusal stands
                    entry = None
                else:
                    self._out.append(Listed(url, backend, listing))
            if entry is not None and entry.get("codec") == serialize.JSON:
                request.codec = serialize.JSON
                header, payload, request.worker = request.reencode(serialize.JSON)
                request.header, request.payload = header, list(payload)
                self._send(request)  # the same way: straight to the worker if it went there
            else:
                self._finish(None, request, exc=refusal)

        self._send_own(Request(None, url=url, query={"api": False, "name": backend}, timeout=self._probe_time(),
                               what=f"a listing of {backend!r}", then=listed))

    def _send_own(self, request: Request) -> None:
        request.deadline = self._now + request.timeout
        self._send(request)

    # -- brokers ----------------------------------------------------------------------------------------------

    def _probe_time(self) -> float:
        """Seconds a live broker takes at most to answer a listing (it answers at once), and between probes."""
        return self.heartbeat * self.liveness

    def _fail_over(self, url) -> str:
        """The broker at ``url`` does not answer: move to the next (if it is the one in use); a sentence."""
        if len(self.doors) > 1 and url == self.url:
            self.door = (self.door + 1) % len(self.doors)
            log.warning("the broker at %s is not answering; using %s now", url, self.url)
            self._watch_failback()
        return f"; this client now uses the broker at {self.url}" if self.url != url else ""

    def _watch_failback(self) -> None:
        if self.door and self._next_failback is None and not self._probing:
            self._next_failback = self._now + self._probe_time()

    def _probe_preferred(self) -> None:
        """Ask the broker in use and every preferred one for a listing; judge once each answered or did not."""
        self._next_failback = None
        if not self.door:
            return
        doors = range(self.door + 1)
        answers: dict[int, set | None] = {}

        def answered(door: int):
            def done(result, exc) -> None:
                names = None
                if exc is None:
                    try:
                        names = set(_decode(result)["backends"])
                    except Exception:  # noqa: BLE001 - an unreadable listing counts as no answer
                        names = None
                answers[door] = names
                if len(answers) == len(doors):
                    self._judge(answers)
            return done

        self._probing = True
        for door in doors:
            self._send_own(Request(None, url=self.doors[door], query={"api": False}, timeout=self._probe_time(),
                                   what=f"a probe of the broker at {self.doors[door]}", then=answered(door)))

    def _judge(self, answers: dict[int, set | None]) -> None:
        """Go back to the most preferred broker that answered and knows what the one in use knows."""
        self._probing = False
        live = answers.get(self.door) or set()
        for door in sorted(answers):
            if door < self.door and answers[door] is not None and live <= answers[door]:
                log.warning("the broker at %s answers again; using it again", self.doors[door])
                self.door = door
                break
        self._watch_failback()

    # -- heartbeats -------------------------------------------------------------------------------------------

    def _beat(self, way, link: Link) -> None:
        """A heartbeat: ask after every request waiting on ``way``; they are lost if it went silent."""
        if not link.requests:
            link.unanswered = 0  # silence while nothing was asked says nothing
            return
        if link.unanswered >= self.liveness:
            self._silent(way)
            return
        rids = list(link.requests)
        for first in range(0, len(rids), QUERY_BATCH):
            self._out.append(Send(way, P.query(*rids[first:first + QUERY_BATCH]), None))
        link.unanswered += 1

    # -- naming -----------------------------------------------------------------------------------------------

    @staticmethod
    def _at(request: Request) -> str:
        way = request.way
        return place(way.url, way) if isinstance(way, Endpoint) else place(way, None)

    def _flush(self) -> list:
        out, self._out = self._out, []
        return out


def _url(way) -> str:
    return way.url if isinstance(way, Endpoint) else way


def _decode(answer: tuple[dict, list]) -> dict:
    header, frames = answer
    if header.get("codec") == serialize.JSON:
        return serialize.loads_json(frames)
    return serialize.loads(frames)
