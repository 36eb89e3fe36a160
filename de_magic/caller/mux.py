"""The client's one I/O thread: every request of a client, whatever waits for it, goes through here.

Blocking calls (whose thread waits on its future and handles the call's events itself), submitted
calls' futures, Jobs' polls, ``%%remote`` sessions and listings alike are handed to this thread,
which drives the client's socket-free :class:`~de_magic.caller.core.Core`: it sends what the core
says on the connection the core names (the broker's, made on first use and kept, or a worker's
direct endpoint), feeds it what comes back and the time, and settles futures as it says.  Any number
of requests may be in flight: each costs an entry in a dict, and the core asks after all those
waiting on one connection in one ``QUERY`` per heartbeat, so 10,000 waiting calls cost the broker
about what one does.  The thread also runs short work for later (:meth:`Multiplexer.later`: a Job's
next poll), so a Job holds no thread and no socket.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from typing import Callable

import zmq

from ..wire.errors import DeMagicError
from ..wire.framing import readable, recv_frames, send_frames
from .core import Core, Event, Listed, Lost, Request, Send, Settle
from .routes import Endpoint

log = logging.getLogger("de_magic.client")

CANCEL_LINGER = 500  #: ms a closed client's socket has to send the cancels of its calls in flight
HANDSHAKE_CHECK = 0.25  #: seconds between looks for a refused handshake or a dropped connection
READS_PER_TURN = 1000  #: messages taken from one connection before the others get a turn


class Multiplexer:
    """The I/O thread of a :class:`~de_magic.caller.client.Client`, around its :class:`Core`."""

    def __init__(self, client, core: Core):
        self.client, self.core = client, core
        # wakes the thread when there is something in its inbox: a write to an eventfd costs a system call, where
        # a message on an inproc socket cost 50 µs of a tiny call's 150 (and a socket per posting thread)
        self._wake: int | None = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._wake_lock = threading.Lock()  # no write to the eventfd once it is closed (its number may be reused)
        self._inbox: deque = deque()  # (what, *args) to do in the thread; None: stop
        self._brokers: dict[str, zmq.Socket] = {}  # url -> this thread's socket to that broker
        self._ways: dict[zmq.Socket, object] = {}  # socket -> the way (url or Endpoint) it carries
        self._poller = zmq.Poller()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []  # work for later in this thread (later())
        self._order = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="de-magic-calls", daemon=True)
        self._thread.start()

    # -- from any thread ----------------------------------------------------------------------

    def start(self, request: Request) -> None:
        """Send ``request``; its token (a future) is settled with ``(header, frames)`` or the error."""
        self._post(("start", request))

    def cancel(self, request: Request) -> None:
        self._post(("cancel", request))

    def run(self, work: Callable[[float], list]) -> Future:
        """Run ``work(now)`` in the I/O thread and carry out the core's actions it returns; the future ends then."""
        done = Future()
        self._post(("run", work, done))
        return done

    def later(self, delay: float, work: Callable[[], None]) -> None:
        """Run ``work()`` in the I/O thread after ``delay`` seconds (e.g. a job's next poll); it must not block."""
        self._post(("later", time.monotonic() + delay, work))

    def stop(self, timeout: float = 5.0) -> None:
        """End the I/O thread (calls in flight end with an error); it closes its sockets before this returns."""
        self._stopped = True
        self._post(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def sockets(self) -> int:
        """Connections this thread holds (to brokers and direct endpoints)."""
        return len(self._ways)

    def _post(self, item) -> None:
        with self._wake_lock:
            if self._wake is not None:
                self._inbox.append(item)
                os.eventfd_write(self._wake, 1)
                return
        if item is not None and item[0] in ("start", "run"):  # the thread has ended: this gets no answer
            settle(item[1].token if item[0] == "start" else item[2],
                   exc=DeMagicError(f"{self.client!r} is closed"))

    # -- the I/O thread --------------------------------------------------------------------------

    def _run(self) -> None:
        self._poller.register(self._wake, zmq.POLLIN)
        next_check = time.monotonic() + HANDSHAKE_CHECK
        try:
            while not self._stopped:
                wake = min(self.core.wake_at(), next_check)
                if self._timers:
                    wake = min(wake, self._timers[0][0])
                for sock, _ in self._poller.poll(max(0.0, wake - time.monotonic()) * 1000):
                    if sock == self._wake:
                        os.eventfd_read(self._wake)
                        self._take_inbox()
                    elif sock in self._ways:
                        self._read(sock)
                now = time.monotonic()
                if now >= self.core.wake_at():
                    self._do(self.core.tick(now))
                if self._timers and now >= self._timers[0][0]:
                    self._run_timers(now)
                if now >= next_check:
                    next_check = now + HANDSHAKE_CHECK
                    self._check_brokers(now)
        finally:
            self._close()

    def _take_inbox(self) -> None:
        while self._inbox:
            item = self._inbox.popleft()
            if item is None:
                return
            what = item[0]
            if what == "start":
                self._do(self.core.start(item[1], time.monotonic()))
            elif what == "cancel":
                self._do(self.core.cancel(item[1]))
            elif what == "run":
                self._do(item[1](time.monotonic()))
                settle(item[2])
            else:
                heapq.heappush(self._timers, (item[1], next(self._order), item[2]))

    def _read(self, sock: zmq.Socket) -> None:
        way = self._ways[sock]
        for _ in range(READS_PER_TURN):
            if not readable(sock):
                return
            self._do(self.core.received(way, recv_frames(sock), time.monotonic()))

    def _check_brokers(self, now: float) -> None:
        """A refused handshake ends its broker's requests at once; a dropped connection, with another broker to go
        to, is not waited out. Every socket's events are read, waited for or not: a connection retried for hours
        (a broker gone) would otherwise pile them up in its monitor."""
        for url, sock in list(self._brokers.items()):
            reason = sock.handshake_failure()
            if not self.core.links.get(url) or not self.core.links[url].requests:
                continue
            if reason is not None:
                self._do(self.core.refused(url, reason))
            elif sock.dropped and len(self.core.doors) > 1:
                self._do(self.core.silent(url, now, "dropped the connection"))

    def _do(self, actions: list) -> None:
        """Carry out what the core said, and what it says to that, until it says nothing more."""
        pending = deque(actions)
        while pending:
            action = pending.popleft()
            kind = type(action)
            if kind is Send:
                pending.extend(self._send(action))
            elif kind is Settle:
                settle(action.token, action.result, action.exc)
            elif kind is Event:
                handler = action.request.on_event
                if handler is not None:
                    try:
                        handler(action.header, action.frames)
                    except Exception as exc:  # noqa: BLE001 - the caller's handler gave up on the call
                        pending.extend(self.core.abandon(action.request, exc))
            elif kind is Lost:
                self.client.routes.lost(action.endpoint)
            elif kind is Listed:
                self.client._absorb(action.listing, action.name, False, in_use=action.url == self.core.url)

    def _send(self, action: Send) -> list:
        way, request = action.way, action.request
        if isinstance(way, Endpoint):
            sock = self._direct_socket(way)
            if sock is None or not self.client.routes.send(sock, action.frames):
                # not connected: nothing was sent; the broker carries it
                return self.core.unsent(request, time.monotonic()) if request is not None else []
            return []
        sock = self._broker_socket(way)
        try:
            send_frames(sock, action.frames, zmq.NOBLOCK)
        except zmq.Again:
            if request is not None:  # no high-water mark: only a connection without a peer refuses a message
                reason = sock.handshake_failure()
                if reason is not None:
                    return self.core.refused(way, reason)
                return self.core.silent(way, time.monotonic(), "cannot be reached")
        return []

    def _direct_socket(self, endpoint: Endpoint) -> zmq.Socket | None:
        sock = self.client.routes.socket(endpoint, self.client.security)
        if sock is not None and sock not in self._ways:
            self._add(sock, endpoint)
        return sock

    def _broker_socket(self, url: str) -> zmq.Socket:
        """This thread's socket to the broker at ``url``, made on first use and kept: listings ask every broker
        of the client, and a client that moved on may come back."""
        sock = self._brokers.get(url)
        if sock is None:
            sock = self._brokers[url] = self.client._new_socket(url)
            self._add(sock, url)
        return sock

    def _add(self, sock: zmq.Socket, way) -> None:
        self._ways[sock] = way
        self._poller.register(sock, zmq.POLLIN)

    def _run_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, work = heapq.heappop(self._timers)
            try:
                work()
            except Exception:  # noqa: BLE001 - one piece of work failing must not stop every call's thread
                log.exception("work in the I/O thread of %r failed", self.client)

    def _close(self) -> None:
        error = DeMagicError(f"{self.client!r} was closed during the call")
        with self._wake_lock:  # from here on, posts are answered by _post
            os.close(self._wake)
            self._wake = None
        shutdown = self.core.shutdown(error)  # the remote sides are told (CANCEL): no one waits for them now
        cancelling = {action.way for action in shutdown if type(action) is Send}
        self._do(shutdown)
        for url, sock in self._brokers.items():  # direct sockets belong to the client's routes, which close them
            # lingering only to deliver those cancels: a socket kept open longer holds a file descriptor
            sock.close(linger=CANCEL_LINGER if url in cancelling else 0)
        while self._inbox:
            item = self._inbox.popleft()
            if item is not None and item[0] == "start":
                settle(item[1].token, exc=error)
            elif item is not None and item[0] == "run":
                settle(item[2], exc=error)
            elif item is not None and item[0] == "later":
                heapq.heappush(self._timers, (item[1], next(self._order), item[2]))
        self._run_timers(float("inf"))  # work waiting for later finds the client closed, and says so to its caller


def settle(future: Future, result=None, exc: BaseException | None = None) -> None:
    """End ``future`` with ``result`` or ``exc``, unless it ended already (cancelled meanwhile)."""
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass

