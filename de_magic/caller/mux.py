"""The client's one I/O loop: every request of a client, whatever waits for it, goes through here.

Blocking calls (whose thread waits for the call's events and end), submitted calls' futures, Jobs'
polls, ``%%remote`` sessions and listings alike are handed to this loop, which drives the client's
socket-free :class:`~de_magic.caller.core.Core`: it sends what the core says on the connection the
core names (the broker's, made on first use and kept, or a worker's direct endpoint), feeds it what
comes back and the time, and settles futures as it says.  Any number of requests may be in flight:
each costs an entry in a dict, and the core asks after all those waiting on one connection in one
``QUERY`` per heartbeat, so 10,000 waiting calls cost the broker about what one does.  The loop also
runs short work for later (:meth:`Multiplexer.later`: a Job's next poll), so a Job holds no thread
and no socket.

One thread at a time drives the loop (holds its *role*): the client's I/O thread, or, while no
thread does, the main thread waiting for a blocking call of its own (:meth:`Multiplexer.wait`).
That is the lean path: a notebook's or a script's tiny call is sent and its answer read in the
thread that made it, where handing it to the I/O thread and back cost two thread wake-ups, about
a third of the call (benchmarks/README.md).  Rules and sockets stay one: the same loop runs the
same core in either thread, and the role (a lock) hands the sockets over with the memory barrier
libzmq asks for.  Only the main thread takes the lean path: Ctrl-C, the one exception that can
arrive at any moment, is held back there while it handles a message (see :class:`_HeldInterrupt`);
another thread may be stopped by an exception raised in it from outside (the call form's Cancel).
"""

from __future__ import annotations

import _signal  # signal's own functions: its enum conversions cost a tiny call 10 µs a time
import heapq
import itertools
import logging
import math
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
_MAIN = threading.main_thread().ident  # the thread that takes the lean path (see the module's doc)


class Multiplexer:
    """The I/O loop of a :class:`~de_magic.caller.client.Client`, around its :class:`Core`, and its I/O thread."""

    def __init__(self, client, core: Core):
        self.client, self.core = client, core
        # wakes the thread when there is something in its inbox: a write to an eventfd costs a system call, where
        # a message on an inproc socket cost 50 µs of a tiny call's 150 (and a socket per posting thread)
        self._wake: int | None = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # the driving thread: see the inbox
        self._kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # the I/O thread: drive, no thread does
        self._wake_lock = threading.Lock()  # no write to the eventfds once closed (their numbers may be reused)
        self._role = threading.Lock()  # held by the thread that drives the loop (see the module's doc)
        self._driver: int | None = None  # that thread's ident
        self._next_check = time.monotonic() + HANDSHAKE_CHECK
        self._parked_until = 0.0  # when the parked I/O thread looks again of its own accord (see _hand_back)
        self._inbox: deque = deque()  # (what, *args) to do in the thread; None: stop
        self._brokers: dict[str, zmq.Socket] = {}  # url -> the loop's socket to that broker
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

    def wait(self, answer, start: Request | None = None) -> tuple:
        """``answer.next()`` (see :class:`~de_magic.caller.client._Answer`): the next event of its call, or its
        end, once ``answer.ready()``; ``start``: send this request first (its token is ``answer``).

        The main thread drives the loop itself meanwhile if no thread does (the lean path); otherwise the
        thread driving it sends the request, and this one waits.  A thread that drives the loop already (a
        future's callback or a job's poll making a blocking call) drives on until its answer comes: waiting
        for itself, it would wait for good."""
        me = threading.get_ident()
        if self._driver == me:
            self._drive(answer, start)
            if not answer.ready():  # the client closes, and this thread is the one that would say so
                answer.set_exception(self._closed_error())
            return answer.next()
        if me == _MAIN:
            # Ctrl-C is held from before the role is taken until after it is let go: between the two, a
            # KeyboardInterrupt would leave the role taken and the loop without a driver, for good
            with _HeldInterrupt(self) as held:
                if self._role.acquire(blocking=False):
                    try:
                        self._driver = me
                        if self._drive(answer, start, held):
                            start = None
                    finally:
                        self._hand_back()
            held.deliver()  # Ctrl-C, now that nothing is half done: the caller cancels the call
        if start is not None:
            self.start(start)
        return answer.next()

    def _drive(self, answer, start: Request | None, held: "_HeldInterrupt | None" = None) -> bool:
        """In the thread holding the role: send ``start`` (if given), then turn the loop until ``answer`` has
        news, the client closes, or a Ctrl-C is ``held``; whether ``start`` was sent."""
        sent = start is not None and not self._stopped
        if sent:
            self._do(self.core.start(start, time.monotonic()))
        while not answer.ready() and not self._stopped and not (held and held.signal):
            self._turn()
        return sent

    def run(self, work: Callable[[float], list]) -> Future:
        """Run ``work(now)`` in the loop (the thread driving it) and carry out the core's actions it returns;
        the future ends then."""
        done = Future()
        self._post(("run", work, done))
        return done

    def later(self, delay: float, work: Callable[[], None]) -> None:
        """Run ``work()`` in the loop after ``delay`` seconds (e.g. a job's next poll); it must not block."""
        self._post(("later", time.monotonic() + delay, work))

    def stop(self, timeout: float = 5.0) -> None:
        """End the I/O thread (calls in flight end with an error); it closes its sockets before this returns."""
        self._stopped = True
        self._post(None)
        if threading.current_thread() is not self._thread and self._driver != threading.get_ident():
            self._thread.join(timeout)  # (the thread driving the loop lets the I/O thread close once it is done)

    @property
    def sockets(self) -> int:
        """Connections this thread holds (to brokers and direct endpoints)."""
        return len(self._ways)

    def _post(self, item) -> None:
        with self._wake_lock:
            if self._wake is not None:
                self._inbox.append(item)
                os.eventfd_write(self._wake, 1)
                if not self._role.locked():  # (a driver that lets go just now sees the inbox: see _hand_back)
                    os.eventfd_write(self._kick, 1)
                return
        if item is not None and item[0] in ("start", "run"):  # the thread has ended: this gets no answer
            settle(item[1].token if item[0] == "start" else item[2],
                   exc=DeMagicError(f"{self.client!r} is closed"))

    # -- the I/O thread --------------------------------------------------------------------------

    def _run(self) -> None:
        """The I/O thread: it drives the loop while there is work and no other thread drives it, and parks
        in between until it is kicked or something is due (a deadline, a heartbeat, a timer, a check)."""
        parked = zmq.Poller()
        parked.register(self._kick, zmq.POLLIN)
        self._poller.register(self._wake, zmq.POLLIN)
        try:
            while not self._stopped:
                if self._role.locked() or not self._busy():  # (work posted as it let go: no need to be kicked)
                    wait = HANDSHAKE_CHECK if self._role.locked() else max(0.0, self._wake_at() - time.monotonic())
                    self._parked_until = time.monotonic() + wait
                    if parked.poll(math.ceil(wait * 1000)):
                        os.eventfd_read(self._kick)
                if not self._role.acquire(blocking=False):
                    continue  # the main thread drives for now, and kicks this one if it leaves work
                try:
                    self._driver = threading.get_ident()
                    self._turn(0.0)  # what came in and what is due, without holding the role to wait
                    while not self._stopped and self._busy():
                        self._turn()
                finally:
                    self._hand_back()
        finally:
            with self._role:
                self._close()

    def _busy(self) -> bool:
        """Whether the loop has work in hand: requests in flight, or some waiting in the inbox."""
        return bool(self._inbox) or self.core.in_flight > 0

    def _hand_back(self) -> None:
        """Let go of the role; the I/O thread takes it up if the loop has work (the inbox is seen after letting
        go: a post made meanwhile either saw the role held and is here, or saw it free and kicked), or work for
        later due before the parked I/O thread would look by itself (not at every call while a Job is followed)."""
        self._driver = None
        self._role.release()
        if threading.current_thread() is not self._thread and (
                self._busy() or self._stopped or (self._timers and self._timers[0][0] < self._parked_until)):
            with self._wake_lock:
                if self._wake is not None:
                    os.eventfd_write(self._kick, 1)

    def _wake_at(self) -> float:
        """When the loop has something due at the latest (while nothing comes in)."""
        wake = min(self.core.wake_at(), self._next_check)
        return min(wake, self._timers[0][0]) if self._timers else wake

    def _turn(self, wait: float | None = None) -> None:
        """One turn of the loop, in the thread holding the role: what comes in within ``wait`` seconds (by
        default until something is due), then what is due."""
        if self._inbox:
            self._take_inbox()
        if wait is None:
            wait = max(0.0, self._wake_at() - time.monotonic())
        events = self._poller.poll(math.ceil(wait * 1000))  # (pyzmq rounds down: 0.4 ms would spin)
        for sock, _ in events:
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
        if now >= self._next_check:
            self._next_check = now + HANDSHAKE_CHECK
            self._check_brokers(now)

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
        """The messages waiting on ``sock``, which the poll found readable."""
        way = self._ways[sock]
        for _ in range(READS_PER_TURN):
            try:
                frames = recv_frames(sock, zmq.NOBLOCK)
            except zmq.Again:
                return
            self._do(self.core.received(way, frames, time.monotonic()))
            if not self.core.in_flight or not readable(sock):
                return  # (nothing waits: what else came, a late answer or a STATUS, the next poll finds)

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

    def _closed_error(self) -> DeMagicError:
        return DeMagicError(f"{self.client!r} was closed during the call")

    def _close(self) -> None:
        error = self._closed_error()
        with self._wake_lock:  # from here on, posts are answered by _post
            os.close(self._wake)
            os.close(self._kick)
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


class _HeldInterrupt:
    """Ctrl-C (SIGINT) in the main thread while it drives the loop: held until it has let go of the loop
    (:meth:`deliver`), so the core's state is never left between two steps; a poll the main thread waits in
    is woken at once.  Never raised from the handler itself: Python runs handlers wherever it checks for
    signals, pyzmq's frame deallocator included, where an exception is printed and dropped (a Ctrl-C lost).
    The handler in place (the default's KeyboardInterrupt, or IPython's) is the one run at the end, and it is
    back in place afterwards."""

    def __init__(self, mux: Multiplexer):
        self.mux = mux
        self.signal: tuple | None = None  # (signum, frame) of a held Ctrl-C
        self.handler = None

    def __enter__(self) -> "_HeldInterrupt":
        handler = _signal.getsignal(_signal.SIGINT)
        if callable(handler):  # SIG_IGN ignores it, SIG_DFL ends the process: nothing to hold back then
            self.handler = handler
            _signal.signal(_signal.SIGINT, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        if self.handler is not None:
            _signal.signal(_signal.SIGINT, self.handler)

    def _on_signal(self, signum, frame) -> None:
        self.signal = (signum, frame)
        if self.mux._driver == _MAIN:  # its poll wakes (the eventfd stays open while the main thread drives)
            os.eventfd_write(self.mux._wake, 1)

    def deliver(self) -> None:
        if self.signal is not None:
            self.handler(*self.signal)
