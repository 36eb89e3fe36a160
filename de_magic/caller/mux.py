"""Calls in flight without a thread each: one I/O thread per client carries every submitted call.

``Client.submit`` hands a call's frames to this thread and returns a future at
once; the thread sends it (to a worker's direct endpoint, or to the broker),
and settles the future when the answer comes.  Any number of calls may be in
flight: each costs an entry in a dict, and the thread asks after all the calls
waiting on one connection in one ``QUERY`` per heartbeat (the broker answers
for up to 10,000 at once), so 10,000 waiting calls cost the broker about what
one does.  Events (progress) are handled in this thread, as a submitted call's
were in its pool thread before.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from typing import Callable

import zmq

from ..wire import protocol as P
from ..wire.errors import BackendLost, CallTimeout, DeMagicError, ProtocolMismatch, Refused, from_header
from ..wire.framing import PerThread, recv_frames, send_frames
from .naming import knower, place
from .routes import Endpoint

log = logging.getLogger("de_magic.client")

CANCEL_LINGER = 500  #: ms a closed client's socket has to send the cancels of its calls in flight
QUERY_BATCH = 10_000  #: request ids per QUERY, the most a broker answers at once


class Pending:
    """A call in flight: where it went, and the future its answer settles."""

    __slots__ = ("rid", "frames", "future", "on_event", "deadline", "endpoint", "url", "what", "sock")

    def __init__(self, rid: bytes, frames: list, future: Future, on_event, deadline: float | None,
                 endpoint: Endpoint | None, url: str | None = None, what: str = "a listing"):
        self.rid, self.frames, self.future, self.on_event = rid, frames, future, on_event
        self.deadline, self.endpoint, self.url, self.what = deadline, endpoint, url, what
        self.sock: zmq.Socket | None = None


class Link:
    """One connection's books: the calls waiting on it, and how many heartbeats went unanswered."""

    __slots__ = ("sock", "url", "endpoint", "calls", "unanswered")

    def __init__(self, sock: zmq.Socket, url: str, endpoint: Endpoint | None):
        self.sock, self.url, self.endpoint = sock, url, endpoint
        self.calls: dict[bytes, Pending] = {}
        self.unanswered = 0


class Multiplexer:
    """The I/O thread of a :class:`~de_magic.caller.client.Client`'s submitted calls."""

    def __init__(self, client):
        self.client = client
        ctx = client._ctx
        self._wake_url = f"inproc://de-magic-mux-{id(self)}"
        self._wake = ctx.socket(zmq.PULL)
        self._wake.bind(self._wake_url)
        self._pokes = PerThread(lambda: _pusher(ctx, self._wake_url))
        self._inbox: deque = deque()  # Pending to send, or request ids to cancel
        self._links: dict[zmq.Socket, Link] = {}
        self._deadlines: list[tuple[float, int, Pending]] = []
        self._finished_early = 0  # entries of _deadlines whose call ended before its deadline
        self._timers: list[tuple[float, int, Callable[[], None]]] = []  # work for later in this thread (later())
        self._order = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="de-magic-calls", daemon=True)
        self._thread.start()

    # -- from any thread ----------------------------------------------------------------------

    def send(self, rid: bytes, frames: list, timeout: float | None, on_event, endpoint: Endpoint | None,
             url: str | None = None, what: str = "a listing") -> Future:
        """Send a request: to ``endpoint`` (direct) if given, else to the broker at ``url`` (default: the one in
        use); the future ends with ``(header, frames)`` or the error, which names ``what`` the user called."""
        future = Future()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._post(Pending(rid, frames, future, on_event, deadline, endpoint, url, what))
        return future

    def cancel(self, rid: bytes) -> None:
        self._post(rid)

    def later(self, delay: float, work: Callable[[], None]) -> None:
        """Run ``work()`` in the I/O thread after ``delay`` seconds (e.g. a job's next poll); it must not block."""
        self._post((time.monotonic() + delay, work))

    def stop(self, timeout: float = 5.0) -> None:
        """End the I/O thread (calls in flight end with an error); it closes its sockets before this returns."""
        self._stopped = True
        self._post(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _post(self, item) -> None:
        self._inbox.append(item)
        try:
            self._pokes.get().send(b"", zmq.NOBLOCK)
        except (zmq.Again, RuntimeError, zmq.ZMQError):
            pass  # a poke is already waiting, or we are closing

    # -- the I/O thread --------------------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake, zmq.POLLIN)
        heartbeat = self.client.heartbeat
        next_beat = time.monotonic() + heartbeat
        try:
            while not self._stopped:
                wait = next_beat - time.monotonic()
                if self._deadlines:
                    wait = min(wait, self._deadlines[0][0] - time.monotonic())
                if self._timers:
                    wait = min(wait, self._timers[0][0] - time.monotonic())
                for sock, _ in poller.poll(max(0.0, wait) * 1000):
                    if sock is self._wake:
                        while self._wake.poll(0):
                            self._wake.recv()
                        self._take_inbox(poller)
                    else:
                        self._read(self._links[sock])
                now = time.monotonic()
                self._expire(now)
                self._run_timers(now)
                if now >= next_beat:
                    next_beat = now + heartbeat
                    for link in list(self._links.values()):
                        self._beat(link, poller)
        finally:
            self._close(poller)

    def _take_inbox(self, poller: zmq.Poller) -> None:
        while self._inbox:
            item = self._inbox.popleft()
            if item is None:
                return
            if isinstance(item, bytes):
                self._cancel(item)
            elif isinstance(item, tuple):
                heapq.heappush(self._timers, (item[0], next(self._order), item[1]))
            else:
                self._start(item, poller)

    def _start(self, call: Pending, poller: zmq.Poller) -> None:
        if call.future.cancelled():
            return
        link = self._direct_link(call.endpoint, poller) if call.endpoint is not None else None
        if link is not None and not self.client.routes.send(link.sock, call.frames):
            self.client.routes.lost(call.endpoint)  # not connected: nothing was sent, the broker carries it
            link = None
        if link is None:
            call.endpoint = None
            link = self._broker_link(poller, call.url)
            if not _try_send(link.sock, call.frames):
                return settle(call.future, exc=BackendLost(f"cannot send to the broker at {link.url}"))
        call.frames = None  # sent: the payload is libzmq's now
        call.sock = link.sock
        link.calls[call.rid] = call
        if call.endpoint is not None:
            self.client.routes.started(call.endpoint)
        if call.deadline is not None:
            heapq.heappush(self._deadlines, (call.deadline, next(self._order), call))

    def _direct_link(self, endpoint: Endpoint, poller: zmq.Poller) -> Link | None:
        sock = self.client.routes.socket(endpoint, self.client.security)
        if sock is None:
            return None
        return self._links.get(sock) or self._add_link(sock, endpoint.url, endpoint, poller)

    def _broker_link(self, poller: zmq.Poller, url: str | None = None) -> Link:
        """The link to the broker at ``url`` (default: the one in use), made on first use and kept: listings ask
        every broker of the client, and a client that moved on may come back."""
        url = url or self.client.url
        for link in self._links.values():
            if link.endpoint is None and link.url == url:
                return link
        # thousands of calls and answers in flight: libzmq holds them all
        return self._add_link(self.client._new_socket(unbounded=True, url=url), url, None, poller)

    def _add_link(self, sock: zmq.Socket, url: str, endpoint: Endpoint | None, poller: zmq.Poller) -> Link:
        link = self._links[sock] = Link(sock, url, endpoint)
        poller.register(sock, zmq.POLLIN)
        return link

    def _read(self, link: Link) -> None:
        link.unanswered = 0
        for _ in range(1000):
            if not link.sock.poll(0):
                return
            try:
                msg = P.parse(recv_frames(link.sock), P.AT_CLIENT)
            except P.ProtocolError as exc:
                call = link.calls.get(exc.rid) if exc.rid is not None else None
                if call is not None:
                    self._finish(link, call, exc=ProtocolMismatch(f"{link.url}: {exc}"))
                continue
            call = link.calls.get(msg.rid)
            if call is not None:
                self._on_message(link, call, msg)

    def _on_message(self, link: Link, call: Pending, msg) -> None:
        kind = type(msg)
        if kind is P.Reply:
            self._finish(link, call, result=(msg.header, msg.payload))
        elif kind is P.Event:
            if call.on_event is not None:
                try:
                    call.on_event(msg.header, msg.payload)
                except Exception as exc:  # noqa: BLE001 - the caller's handler gave up on the call
                    _try_send(link.sock, P.cancel(call.rid))
                    self._finish(link, call, exc=exc)
        elif kind is P.Error:
            self._finish(link, call, exc=from_header(msg.header))
        elif kind is P.Status:
            for rid, state in msg.pairs():
                lost = link.calls.get(rid) if state == P.UNKNOWN else None
                if lost is not None:
                    self._finish(link, lost, exc=BackendLost(
                        f"{lost.what}: {knower(link.url, link.endpoint)} no longer knows this request (it restarted, "
                        "or the backend was lost)"))

    def _beat(self, link: Link, poller: zmq.Poller) -> None:
        """A heartbeat: ask after every call waiting on ``link``; fail them all if it went silent."""
        if not link.calls:
            link.unanswered = 0  # silence while nothing was asked says nothing
            return
        refusal = link.sock.handshake_failure() if link.endpoint is None else None
        if refusal is not None or link.unanswered >= self.client.liveness:
            if link.endpoint is not None:
                self.client.routes.lost(link.endpoint)
                fail_over = ""
            else:
                fail_over = self.client._fail_over(link.url) if refusal is None else ""
            for call in list(link.calls.values()):
                if refusal is not None:
                    error: DeMagicError = Refused(refusal)
                elif link.endpoint is not None:
                    error = BackendLost(f"{call.what}: its worker is not answering ({place(link.url, link.endpoint)}); "
                                        "later calls go through the broker")
                else:
                    error = BackendLost(f"{call.what}: the broker at {link.url} is not answering{fail_over}")
                self._finish(link, call, exc=error)
            return
        rids = list(link.calls)
        for start in range(0, len(rids), QUERY_BATCH):
            _try_send(link.sock, P.query(*rids[start:start + QUERY_BATCH]))
        link.unanswered += 1

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, call = heapq.heappop(self._deadlines)
            if call.future is None:
                self._finished_early -= 1
                continue
            link = self._links.get(call.sock)
            if link is not None and link.calls.get(call.rid) is call:
                _try_send(link.sock, P.cancel(call.rid))
                self._finish(link, call, exc=CallTimeout(
                    f"no answer from {call.what} within its timeout ({place(link.url, link.endpoint)})"))

    def _run_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, work = heapq.heappop(self._timers)
            try:
                work()
            except Exception:  # noqa: BLE001 - one piece of work failing must not stop every call's thread
                log.exception("work in the I/O thread of %r failed", self.client)

    def _release(self, call: Pending) -> None:
        """Forget a call that ended: its deadline entry is skipped when due, and once most entries are such, the
        heap is rebuilt without them, so a finished call costs nothing until its timeout would have passed."""
        call.future, call.on_event = None, None
        if call.deadline is None:
            return
        self._finished_early += 1
        if self._finished_early > 64 and 2 * self._finished_early > len(self._deadlines):
            self._deadlines = [entry for entry in self._deadlines if entry[2].future is not None]
            heapq.heapify(self._deadlines)
            self._finished_early = 0

    def _cancel(self, rid: bytes) -> None:
        for link in self._links.values():
            call = link.calls.get(rid)
            if call is not None:
                _try_send(link.sock, P.cancel(rid))
                link.calls.pop(rid)
                self._release(call)
                if call.endpoint is not None:
                    self.client.routes.ended(call.endpoint)

    def _finish(self, link: Link, call: Pending, result=None, exc: BaseException | None = None) -> None:
        if link.calls.pop(call.rid, None) is None:
            return
        if call.endpoint is not None:
            self.client.routes.ended(call.endpoint)
        future = call.future
        self._release(call)
        settle(future, result, exc)

    def _close(self, poller: zmq.Poller) -> None:
        error = DeMagicError(f"{self.client!r} was closed during the call")
        for link in list(self._links.values()):
            for call in list(link.calls.values()):
                _try_send(link.sock, P.cancel(call.rid))  # no one waits for it now: let it not run
                self._finish(link, call, exc=error)
            if link.endpoint is None:  # direct sockets belong to the client's routes, which close them
                link.sock.close(linger=CANCEL_LINGER)
        while self._inbox:
            item = self._inbox.popleft()
            if isinstance(item, Pending):
                settle(item.future, exc=error)
            elif isinstance(item, tuple):
                heapq.heappush(self._timers, (item[0], next(self._order), item[1]))
        self._run_timers(float("inf"))  # work waiting for later finds the client closed, and says so to its caller
        self._wake.close(linger=0)
        self._pokes.close()


def settle(future: Future, result=None, exc: BaseException | None = None) -> None:
    """End ``future`` with ``result`` or ``exc``, unless it ended already (cancelled meanwhile)."""
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def _try_send(sock: zmq.Socket, frames: list) -> bool:
    try:
        send_frames(sock, frames, zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False


def _pusher(ctx: zmq.Context, url: str) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.linger = 0
    sock.sndhwm = 1  # pokes only wake the thread: one waiting is enough
    sock.connect(url)
    return sock

