"""The client: find backends at a broker and call them like local functions.

Blocking calls use one DEALER socket per calling thread, so a call costs one
send and one receive with no hand-off to a helper thread, and events a call
produces (progress, streamed output, display data) are handled in the thread
that made the call, which is what lets a notebook show them in the right
cell.  ``submit()`` hands the call to the client's one I/O thread, which
carries any number of calls in flight, and returns a future that is also
awaitable (:mod:`de_magic.caller.mux`).

A call goes straight to a worker of the backend when the worker listens for
direct calls and this client can reach it, and through the broker otherwise
(:mod:`de_magic.caller.routes`); the API is the same either way.

A call always ends: with the result, with the remote error, or with
:class:`~de_magic.wire.errors.CallTimeout`.  While waiting, the client asks the
broker now and then whether the request is still known, so a broker restart
or a lost worker surfaces as :class:`~de_magic.wire.errors.BackendLost` instead of
a silent wait.

A client may know several equivalent brokers of a consortium ("doors"): it uses
one at a time, and when that one stops answering (``liveness`` heartbeats
without an answer, or at the next heartbeat when the connection drops) it moves
to the next.  The calls in flight on the lost door
end with ``BackendLost``, or go again through the next door if the caller
allowed retries (``retries=``, for idempotent members); an abandoned request's
late answer is never taken for another's, so nothing is answered twice.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Callable

import zmq

from ..wire import protocol as P
from ..wire import serialize
from ..wire.defaults import (DEFAULT_HEARTBEAT, DEFAULT_LISTING_TIMEOUT, DEFAULT_LIVENESS, DEFAULT_MAX_MESSAGE,
                             check_doors, default_url)
from ..wire.errors import (BackendLost, CallTimeout, DeMagicError, PayloadTooLarge, ProtocolMismatch, Refused,
                           UnknownBackend, from_header)
from ..wire import routingids
from ..wire.framing import PerThread, recv_frames, send_frames
from ..wire.handshake import WatchedSocket
from ..wire.security import Security
from . import refs
from .calls import decode_result, encode_call
from .jobs import Job, attach, list_jobs, start
from .progress import Progress, default_progress
from .proxies import RemoteBackend
from .mux import Multiplexer, settle
from .naming import called, knower, place
from .routes import Endpoint, Routes
from .tables import BackendTable

if TYPE_CHECKING:
    from .tables import JobTable

EventHandler = Callable[[dict, list], None]

log = logging.getLogger("de_magic.client")

SMALL_CALL = 1 << 20  # bytes: below this no broker's size limit is in question
HANDSHAKE_CHECK = 0.25  # seconds between looks for a refused handshake while the broker has said nothing
PREFER_GRACE = 0.5  # seconds a fresh client waits for a preferred broker once a later one answered
HELPER_THREADS = 4  # threads a client has for work its I/O thread must not wait for (see Client.in_background)

_request_ids = itertools.count(1)


class CallFuture(Future):
    """A :class:`concurrent.futures.Future` that asyncio code can ``await``."""

    def __await__(self):
        return asyncio.wrap_future(self).__await__()


class Client:
    """A connection to a broker, or to the first answering of several equivalent ones.

    ``url``: an address, or a list of a consortium's equivalent brokers' addresses (also as
    text separated by commas); default ``$DE_MAGIC_BROKER``.  Each broker's keys come from its
    table in the config file, unless ``security`` is given (then it holds for all).

    ``timeout`` is the default for every call in seconds; a single call may
    override it (``client.call(..., timeout=5)`` or ``proxy.f.options(timeout=5)``).
    ``None`` (the default) waits as long as the broker reports the call alive:
    analyses may take hours, and a lost worker or broker still ends the wait.
    """

    _shared: dict[str, "Client"] = {}
    _shared_lock = threading.Lock()

    def __init__(
        self,
        url: str | list[str] | None = None,
        *,
        timeout: float | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        liveness: int = DEFAULT_LIVENESS,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        on_progress: Callable[[Progress], None] | None = None,
        context: zmq.Context | None = None,
        security: Security | None = None,
        codec: str | None = None,
        direct: bool = True,
    ):
        #: The equivalent brokers this client may use, in the order it tries them.
        self.urls = check_doors(url or default_url())
        self._door = 0  # index of the broker in use
        self._securities = {door: (security or Security.resolve(url=door)).check_peer() for door in self.urls}
        #: None: pickle, or JSON for backends that take no pickles; "json": never send or unpickle pickles.
        self.codec = codec
        self._codecs: dict[str, str] = {}  # backend name -> codec it takes, learnt from listings
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.max_message_size = max_message_size
        self.on_progress = on_progress
        self._ctx = context or zmq.Context.instance()
        self._sockets = PerThread(self._new_socket)
        #: Direct endpoints of workers, and this client's sockets to them (see routes.py).
        self.routes = Routes(self._ctx)
        #: False: every call goes through the broker (for comparisons, or a network that drops direct traffic).
        self.direct = direct
        self._busy: set[zmq.Socket] = set()  # sockets of calls in flight (see close)
        self._lock = threading.Lock()
        self._mux: Multiplexer | None = None
        self._helpers: ThreadPoolExecutor | None = None  # see in_background
        self._door_chosen = False  # the first use asks every broker at once (see _choose_door)
        self._door_lock = threading.Lock()
        self._failing_back = False  # a return to a more preferred broker is being looked for (see _fail_back)
        self._down: dict[str, float] = {}  # brokers that did not answer a listing (url -> since when)
        self._apis: dict[str, tuple[str, dict]] = {}  # backend -> (api tag, api) seen in listings
        self._closed = False
        self._broker_limit: int | None = None  # the broker's maximum message size, once a listing said it

    @property
    def url(self) -> str:
        """The address of the broker in use."""
        return self.urls[self._door]

    @property
    def security(self) -> Security:
        """The keys for the broker in use."""
        return self._securities[self.url]

    @staticmethod
    def default_url() -> str:
        """``DE_MAGIC_BROKER`` if set, else ``tcp://127.0.0.1:5555``."""
        return default_url()

    @classmethod
    def shared(cls, url: str | list[str] | None = None) -> "Client":
        """A client per broker URL (or list of equivalent ones), shared by generated modules and magics."""
        url = ",".join(check_doors(url or default_url()))
        with cls._shared_lock:
            client = cls._shared.get(url)
            if client is None or client._closed:
                client = cls._shared[url] = cls(url)
            return client

    def __repr__(self) -> str:
        others = f" (or {', '.join(u for u in self.urls if u != self.url)})" if len(self.urls) > 1 else ""
        return f"<de_magic.Client {self.url}{others}{' (closed)' if self._closed else ''}>"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close this client: its sockets, its I/O thread; calls in flight end with an error.

        A socket in use by a call is closed by the thread making the call, within a
        heartbeat interval: closing it under that thread's feet is undefined in libzmq.
        """
        with self._lock:
            self._closed = True
        if self._mux is not None:
            self._mux.stop()
        if self._helpers is not None:
            self._helpers.shutdown(wait=False, cancel_futures=True)
        self._sockets.close(keep=set(self._busy))
        self.routes.close(keep=set(self._busy))

    def configure_socket(self, sock: zmq.Socket, url: str) -> None:
        """Hook for security settings (CURVE) before connecting to ``url``."""
        self._securities[url].connect(sock)
        # A refused handshake leaves the socket without a peer, where a send would block for ever.
        sock.sndtimeo = int(self.heartbeat * self.liveness * 1000)

    # -- low level -------------------------------------------------------------

    def _new_socket(self, unbounded: bool = False, url: str | None = None) -> WatchedSocket:
        """A socket to the broker at ``url`` (default: the one in use)."""
        url = url or self.url
        sock = routingids.declare(self._ctx.socket(zmq.DEALER, socket_class=WatchedSocket))
        sock.linger = 0
        if unbounded:  # no high-water mark: set before connecting, or it does not hold for the connection
            sock.sndhwm = sock.rcvhwm = 0
        self.configure_socket(sock, url)
        # a refused handshake must not pass for a dead broker; with another broker to go to, a drop counts
        sock.watch(url, "client", self._securities[url], drops=len(self.urls) > 1)
        sock.connect(url)
        return sock

    def _socket(self) -> WatchedSocket:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        self._choose_door()
        sock = self._sockets.get()
        if sock.watched_url != self.url:  # the client moved to another broker since this thread's last call
            sock = self._sockets.renew()
        return sock

    def _fail_over(self, url: str) -> str:
        """The broker at ``url`` does not answer: move to the next (unless another thread did); a sentence."""
        with self._lock:
            if len(self.urls) > 1 and self.url == url:
                self._door = (self._door + 1) % len(self.urls)
                log.warning("the broker at %s is not answering; using %s now", url, self.url)
        self._fail_over_to(self._door)
        return f"; this client now uses the broker at {self.url}" if self.url != url else ""

    def _probe_time(self) -> float:
        """Seconds a live broker takes at most to answer a listing (it answers at once), and between probes."""
        return self.heartbeat * self.liveness

    def _choose_door(self) -> None:
        """At first use: ask every broker at once, and use the first in order that answers, waiting at most
        PREFER_GRACE for an earlier one once a later one did; so a first broker that is down costs no wait."""
        if self._door_chosen:
            return
        with self._door_lock:
            if self._door_chosen or len(self.urls) == 1:
                self._door_chosen = True
                return
            asked = [self._ask(url, {"api": False}, self._probe_time()) for url in self.urls]
            began = time.monotonic()
            while True:
                answered = [i for i, f in enumerate(asked) if f.done() and f.exception() is None]
                waited = time.monotonic() - began
                chosen = next((i for i in answered if waited >= PREFER_GRACE or all(f.done() for f in asked[:i])),
                              None)
                if chosen is not None or all(f.done() for f in asked) or waited >= self._probe_time():
                    break
                pending = [f for f in asked if not f.done()]
                wait(pending, timeout=max(0.0, (PREFER_GRACE if answered else self._probe_time()) - waited),
                     return_when=FIRST_COMPLETED)
            if chosen is not None:
                with self._lock:
                    self._door = chosen
                self._absorb(asked[chosen].result(), None, False)  # api=False: no API to fill in
                if chosen:
                    log.warning("the broker at %s is not answering; using %s", self.urls[0], self.url)
                    self._fail_over_to(chosen)
            self._door_chosen = True

    def _fail_over_to(self, door: int) -> None:
        """Start looking for a return to a more preferred broker than ``door`` (see _fail_back)."""
        with self._lock:
            if door and not self._closed and not self._failing_back:
                self._failing_back = True
                self._calls_locked().later(self._probe_time(), self._fail_back)

    def _fail_back(self) -> None:
        """In the I/O thread, while a more preferred broker than the one in use is away: ask it and the one in
        use for a listing; go back to it once it answers and knows every backend the one in use knows (backends
        register again within a few heartbeats of a broker's return)."""
        door = self._door
        if door == 0 or self._closed:
            self._failing_back = False
            return
        query = {"api": False}
        current = self._ask(self.urls[door], query, self._probe_time())
        preferred = [(i, self._ask(self.urls[i], query, self._probe_time())) for i in range(door)]

        judged = []

        def judge(_=None) -> None:
            if judged or not current.done() or not all(f.done() for _, f in preferred):
                return
            judged.append(True)  # once: every future's callback comes here
            live = set(current.result()["backends"]) if current.exception() is None else set()
            for i, f in preferred:
                if f.exception() is None and live <= set(f.result()["backends"]):
                    with self._lock:
                        if i < self._door:
                            log.warning("the broker at %s answers again; using it again", self.urls[i])
                            self._door = i
                    break
            with self._lock:
                self._failing_back = False
            self._fail_over_to(self._door)

        for future in [current, *(f for _, f in preferred)]:
            future.add_done_callback(judge)

    def request(
        self,
        backend: str,
        header: dict,
        payload: list,
        *,
        timeout: float | None = None,
        on_event: EventHandler | None = None,
        worker: bytes = b"",
    ) -> tuple[dict, list]:
        """Send one request to ``backend`` and wait for its answer: ``(header, frames)``.

        Events the backend sends meanwhile go to ``on_event(header, frames)``.
        Raises the error the answer carries, :class:`CallTimeout` or :class:`BackendLost`.
        """
        size = serialize.nbytes(payload)
        limit = self._limit(size)
        if size > limit:
            raise PayloadTooLarge(f"call of {size} bytes exceeds the maximum message size of {limit} bytes "
                                  f"(the broker's at {self.url}, or this client's)")
        rid = struct.pack("!Q", next(_request_ids))
        frames = P.call(rid, backend, worker, P.dump_header(header), payload)
        timeout = self.timeout if timeout is None else timeout
        endpoint = self._direct_endpoint(backend, worker)
        what = called(backend, header)
        if endpoint is not None:
            sock = self.routes.socket(endpoint, self.security)
            if sock is not None:
                self.routes.started(endpoint)
                try:
                    return self._exchange(rid, frames, timeout, on_event, sock, endpoint, what)
                except (_NotSent, UnknownBackend):  # it went away, or another backend listens there now
                    self.routes.lost(endpoint)  # nothing ran: this call and the next ones go via the broker
                    rid = struct.pack("!Q", next(_request_ids))
                    frames = P.call(rid, backend, worker, P.dump_header(header), payload)
                finally:
                    self.routes.ended(endpoint)
        return self._exchange(rid, frames, timeout, on_event, what=what)

    def _direct_endpoint(self, backend: str, worker: bytes, learn: bool = True) -> Endpoint | None:
        """The worker endpoint to call ``backend`` at directly, if any (learnt from a listing now and then,
        unless not ``learn``: the I/O thread of submitted calls does not wait for listings)."""
        if not self.direct or self._closed:
            return None
        if learn and self.routes.stale(backend):
            try:
                self.listing(backend, api=False)  # every listing tells the routes
            except DeMagicError:
                return None  # the call through the broker will say what is wrong
        return self.routes.pick(backend, worker, self.security)

    def _limit(self, size: int) -> int:
        """The largest call that may be sent. The broker's own limit is learnt from a listing, asked
        for only when a call is large enough to matter: libzmq would cut a larger call off in transit."""
        if self._broker_limit is None and size > SMALL_CALL:
            self.listing(api=False)
        return min(self.max_message_size, self._broker_limit or self.max_message_size)

    def _exchange(self, rid: bytes, frames: list, timeout: float | None, on_event,
                  sock: WatchedSocket | None = None, endpoint: Endpoint | None = None,
                  what: str = "a listing") -> tuple[dict, list]:
        """Send the request ``rid`` (its ``frames``) on this thread's socket (to the broker, or ``sock`` to a
        worker's direct ``endpoint``) and wait for the answer; errors name ``what`` the user called."""
        sock = sock or self._socket()
        self._busy.add(sock)
        try:
            if endpoint is not None:
                if not self.routes.send(sock, frames):  # not connected (ZMQ_IMMEDIATE): nothing was sent
                    raise _NotSent
            else:
                if sock.failed_before:  # e.g. a retry after a refusal: fail now, not after a heartbeat
                    _raise_if_refused(sock)
                self._send(sock, frames)
            return self._wait(sock, rid, timeout, on_event, endpoint, what)
        except zmq.ZMQError:
            if self._closed:
                raise DeMagicError(f"{self!r} was closed during the call") from None
            raise
        finally:
            self._busy.discard(sock)
            if self._closed:  # close() left this socket to the thread using it
                sock.close(linger=0)

    def _send(self, sock: zmq.Socket, frames: list, flags: int = 0) -> None:
        try:
            send_frames(sock, frames, flags | zmq.NOBLOCK)
            return
        except zmq.Again:
            if flags & zmq.NOBLOCK:
                return  # a query or cancel: the unanswered count takes care of a dead broker
            _raise_if_refused(sock)  # a refused connection has no peer: waiting would not help
        try:
            send_frames(sock, frames, flags)  # blocks for at most sndtimeo
        except zmq.Again:
            url = sock.watched_url
            hint = " (CURVE: is this client's key allowed there, and the broker key right?)" if self._securities[url].curve else ""
            raise BackendLost(f"cannot reach the broker at {url}{hint}{self._fail_over(url)}") from None

    def _wait(self, sock: zmq.Socket, rid: bytes, timeout: float | None, on_event,
              endpoint: Endpoint | None = None, what: str = "a listing") -> tuple[dict, list]:
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        next_query = now + self.heartbeat
        unanswered, heard = 0, False
        try:
            while True:
                wait = next_query - time.monotonic()
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                if not heard:  # a refused handshake shows within moments: look often until the broker answers
                    wait = min(wait, HANDSHAKE_CHECK)
                if sock.poll(max(0.0, wait) * 1000):
                    msg = self._receive(sock, rid)
                    if msg is None:
                        continue  # a late answer to an earlier, abandoned request
                    unanswered, heard = 0, True
                    if type(msg) is P.Reply:
                        return msg.header, msg.payload
                    self._on_progress_of(sock, rid, msg, on_event, endpoint, what)
                    continue
                now = time.monotonic()
                if not heard:
                    _raise_if_refused(sock)
                if self._closed:
                    raise DeMagicError(f"{self!r} was closed during the call")
                if deadline is not None and now >= deadline:
                    _raise_if_refused(sock)  # a refusal says more than a timeout, however short the timeout
                    self._send(sock, P.cancel(rid), zmq.NOBLOCK)
                    raise CallTimeout(f"no answer from {what} within {timeout:g} s "
                                      f"({place(sock.watched_url, endpoint)})")
                if now >= next_query:
                    if sock.dropped and len(self.urls) > 1:  # with another broker to go to, don't wait it out
                        url = sock.watched_url
                        raise BackendLost(f"the broker at {url} dropped the connection{self._fail_over(url)}")
                    if unanswered >= self.liveness:
                        url = sock.watched_url
                        if endpoint is not None:
                            self.routes.lost(endpoint)
                            raise BackendLost(f"{what}: its worker is not answering ({place(url, endpoint)}); later "
                                              "calls go through the broker")
                        raise BackendLost(f"{what}: the broker at {url} is not answering{self._fail_over(url)}")
                    self._send(sock, P.query(rid), zmq.NOBLOCK)
                    unanswered += 1
                    next_query = now + self.heartbeat
        except KeyboardInterrupt:
            # the kernel's stop button: stop the remote work too
            self._send(sock, P.cancel(rid), zmq.NOBLOCK)
            raise

    @staticmethod
    def _receive(sock: zmq.Socket, rid: bytes):
        """The next message on ``sock`` if it is about request ``rid``, else None (a late one for another)."""
        try:
            msg = P.parse(recv_frames(sock), P.AT_CLIENT)
        except P.ProtocolError as exc:
            if exc.rid is not None and exc.rid != rid:
                return None
            raise ProtocolMismatch(f"broker at {sock.watched_url}: {exc}") from None
        return msg if msg.rid == rid else None

    def _on_progress_of(self, sock: zmq.Socket, rid: bytes, msg, on_event, endpoint: Endpoint | None,
                        what: str) -> None:
        """An event, status or error of a request still running: handled here, or raised."""
        if type(msg) is P.Event:
            if on_event is not None:
                try:
                    on_event(msg.header, msg.payload)
                except Exception:  # the caller gives up on the call: stop the remote work too
                    self._send(sock, P.cancel(rid), zmq.NOBLOCK)
                    raise
        elif type(msg) is P.Error:
            raise from_header(msg.header)
        elif msg.state == P.UNKNOWN:
            raise BackendLost(f"{what}: {knower(sock.watched_url, endpoint)} no longer knows this request "
                              "(it restarted, or the backend was lost)")

    # -- calls -----------------------------------------------------------------

    def call(
        self,
        backend: str,
        member: str,
        args: tuple = (),
        kwargs: dict | None = None,
        *,
        method: str | None = None,
        init: tuple[tuple, dict] | None = None,
        timeout: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_event: EventHandler | None = None,
        retries: int = 0,
        keep: bool = False,
    ):
        """Call ``member`` (a function, or with ``method`` and ``init`` a class's method) of ``backend``.

        ``retries``: how many times to send the call again when it ends with ``BackendLost`` (its broker
        or worker was lost); only for idempotent members, since the lost attempt may have run.
        ``keep``: leave the result on the worker and return a :class:`~de_magic.caller.refs.RemoteRef` to it.
        Arguments that are such references are used in place, on the worker that holds them.
        """
        # made when the first report comes, in this thread (which handles the call's events): most calls send none
        dispatch = _dispatcher(on_progress or self.on_progress or default_progress, on_event,
                               lazy=not (on_progress or self.on_progress))
        codec = self._codec_of(backend)
        header, payload, worker = encode_call(backend, member, args, kwargs, method, init, keep, codec)
        try:
            head, frames = self._retrying(retries, lambda: self.request(backend, header, payload, timeout=timeout,
                                                                        on_event=dispatch, worker=worker))
        except Refused:
            # a no-pickle backend refuses pickles before reading them: learn its codec and go again
            if codec == serialize.JSON or self._learn_codec(backend) != serialize.JSON:
                raise
            return self.call(backend, member, args, kwargs, method=method, init=init, timeout=timeout,
                             on_progress=on_progress, on_event=on_event, retries=retries, keep=keep)
        return self._result(backend, head, frames, keep)

    def _codec_of(self, backend: str) -> str:
        return self.codec or self._codecs.get(backend, serialize.PICKLE)

    def _result(self, backend: str, head: dict, frames: list, keep: bool = False):
        if self.codec == serialize.JSON and head.get("codec") != serialize.JSON:
            raise Refused(f"backend {backend!r} answered with a pickle; this client unpickles nothing (codec='json')")
        result = decode_result(head, frames)
        return refs.RemoteRef.adopt(self, backend, head, result) if keep else result

    @staticmethod
    def _retrying(retries: int, attempt: Callable[[], tuple[dict, list]]) -> tuple[dict, list]:
        for retry in range(1, retries + 1):
            try:
                return attempt()
            except BackendLost as exc:
                log.info("%s; sending the call again (retry %d of %d)", exc, retry, retries)
        return attempt()

    def _learn_codec(self, backend: str) -> str:
        self.listing(backend, api=False)  # every listing records the codecs it shows
        return self._codecs.get(backend, serialize.PICKLE)

    def submit(
        self,
        backend: str,
        member: str,
        args: tuple = (),
        kwargs: dict | None = None,
        *,
        method: str | None = None,
        init: tuple[tuple, dict] | None = None,
        timeout: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_event: EventHandler | None = None,
        retries: int = 0,
        keep: bool = False,
    ) -> CallFuture:
        """Like :meth:`call`, but return a :class:`CallFuture` at once (``await`` it in asyncio code).

        Submitted calls take no thread each: one I/O thread of this client carries them all, so
        thousands may be in flight (see :mod:`de_magic.caller.mux`). Cancelling the future
        cancels the remote call.
        """
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        # made here, not in the I/O thread, so that the bars belong to the cell that submitted
        dispatch = _dispatcher(on_progress or self.on_progress or default_progress(), on_event)
        future = CallFuture()
        call = (member, args, kwargs, method, init, keep)
        self._submit(future, backend, call, self.timeout if timeout is None else timeout, dispatch, retries)
        return future

    def _submit(self, future: CallFuture, backend: str, call: tuple, timeout, dispatch, retries: int,
                learn: bool = True) -> None:
        """Send one attempt of a submitted ``call``; its answer settles ``future``, or sends it again."""
        codec = self._codec_of(backend)
        try:
            header, payload, worker = encode_call(backend, *call, codec)
            sent = self.send_request(backend, header, payload, timeout=timeout, on_event=dispatch, worker=worker,
                                     learn=learn)
        except BaseException as exc:  # noqa: BLE001 - the future carries it
            return settle(future, exc=exc)
        future.add_done_callback(lambda f: f.cancelled() and sent.cancel())

        def answered(attempt: Future) -> None:
            if attempt.cancelled():
                return
            exc = attempt.exception()
            if isinstance(exc, BackendLost) and retries:
                log.info("%s; sending the call again (%d retries left)", exc, retries - 1)
                self._submit(future, backend, call, timeout, dispatch, retries - 1, learn=False)
            elif isinstance(exc, Refused) and codec != serialize.JSON:
                # perhaps a no-pickle backend: learning that takes a listing, which is not for the I/O thread
                self.in_background(self._resubmit_json, future, backend, call, timeout, dispatch, retries, exc)
            elif exc is not None:
                settle(future, exc=exc)
            else:
                try:
                    settle(future, self._result(backend, *attempt.result(), keep=call[-1]))
                except BaseException as error:  # noqa: BLE001
                    settle(future, exc=error)

        sent.add_done_callback(answered)

    def send_request(self, backend: str, header: dict, payload: list, *, timeout: float | None = None,
                     on_event: EventHandler | None = None, worker: bytes = b"", learn: bool = True) -> CallFuture:
        """Like :meth:`request`, without waiting: the client's I/O thread carries it, and the future ends with
        ``(header, frames)`` or the error; cancelling it cancels the request.

        ``learn``: a direct endpoint may be looked up with a listing first (not from the I/O thread, which
        must not wait for one).
        """
        if learn:
            self._choose_door()
        outcome = CallFuture()
        self._send_attempt(outcome, backend, header, payload, worker, self.timeout if timeout is None else timeout,
                           on_event, learn)
        return outcome

    def _send_attempt(self, outcome: CallFuture, backend: str, header: dict, payload: list, worker: bytes,
                      timeout: float | None, on_event, learn: bool) -> None:
        size = serialize.nbytes(payload)
        if size > self._limit(size):
            raise PayloadTooLarge(f"call of {size} bytes exceeds the maximum message size of "
                                  f"{self._limit(size)} bytes (the broker's at {self.url}, or this client's)")
        rid = struct.pack("!Q", next(_request_ids))
        frames = P.call(rid, backend, worker, P.dump_header(header), payload)
        endpoint = self._direct_endpoint(backend, worker, learn)
        calls = self._calls()
        sent = calls.send(rid, frames, timeout, on_event, endpoint, what=called(backend, header))
        outcome.add_done_callback(lambda f: f.cancelled() and calls.cancel(rid))

        def answered(attempt: Future) -> None:
            exc = attempt.exception()
            if isinstance(exc, UnknownBackend) and endpoint is not None:
                self.routes.lost(endpoint)  # another backend listens there now: nothing ran; go via the broker
                try:
                    self._send_attempt(outcome, backend, header, payload, worker, timeout, on_event, False)
                except BaseException as error:  # noqa: BLE001 - the future carries it
                    settle(outcome, exc=error)
            elif exc is not None:
                settle(outcome, exc=exc)
            else:
                settle(outcome, attempt.result())

        sent.add_done_callback(answered)

    def later(self, delay: float, work: Callable[[], None]) -> None:
        """Run ``work()`` in the client's I/O thread after ``delay`` seconds; it must not block."""
        self._calls().later(delay, work)

    def in_background(self, work: Callable, *args) -> None:
        """Run ``work(*args)`` on one of the client's few helper threads: for what the I/O thread must not wait
        for (a listing, looking for a job's worker), whatever the number of calls and jobs needing it."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if self._helpers is None:
                self._helpers = ThreadPoolExecutor(HELPER_THREADS, thread_name_prefix="de-magic-helper")
            self._helpers.submit(work, *args)

    def _resubmit_json(self, future, backend, call, timeout, dispatch, retries, refusal: Refused) -> None:
        try:
            relearnt = self._learn_codec(backend) == serialize.JSON
        except DeMagicError:
            relearnt = False
        if relearnt:
            self._submit(future, backend, call, timeout, dispatch, retries)
        else:
            settle(future, exc=refusal)

    def _calls(self) -> Multiplexer:
        """The I/O thread of submitted calls, started on first use."""
        with self._lock:
            return self._calls_locked()

    def _calls_locked(self) -> Multiplexer:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._mux is None:
            self._mux = Multiplexer(self)
        return self._mux

    # -- jobs: calls that outlive this process (jobs.py) --------------------------------------------------------

    def start(self, backend: str, member: str, args: tuple = (), kwargs: dict | None = None, **options) -> "Job":
        """Run a call as a job on the backend and return its :class:`~de_magic.caller.jobs.Job` at once.

        ``options``: ``method``, ``init`` (a class's method), ``on_progress``, ``timeout`` (of the start).
        """
        return start(self, backend, member, args, kwargs, **options)

    def jobs(self) -> "JobTable":
        """This caller's jobs on every live backend, as a table (text in a terminal, HTML in a notebook)."""
        return list_jobs(self)

    def job(self, job_id: str, *, on_progress: Callable[[Progress], None] | None = None) -> "Job":
        """Come back to one of this caller's jobs (from any process): progress live, ``result()``, ``cancel()``."""
        return attach(self, job_id, on_progress)

    # -- discovery -------------------------------------------------------------

    def listing(self, name: str | None = None, *, api: bool = True, timeout: float | None = None) -> dict:
        """What the broker knows: ``{"broker": {...}, "backends": {name: {...}}}``.

        APIs rarely change, so the client keeps those it has seen and the broker
        sends only the ones whose tag differs: a repeated listing stays small.
        """
        rid = struct.pack("!Q", next(_request_ids))
        query: dict = {"api": api}
        if name is not None:
            query["name"] = name
        if api:
            query["known"] = {n: tag for n, (tag, _) in self._apis.items() if name is None or n == name}
        head, frames = self._list(rid, query, self._listing_timeout(timeout))
        return self._absorb(decode_result(head, frames), name, api)

    def _listing_timeout(self, timeout: float | None) -> float:
        # a listing is quick: don't inherit a call timeout of hours
        return min(self.timeout or DEFAULT_LISTING_TIMEOUT, DEFAULT_LISTING_TIMEOUT) if timeout is None else timeout

    def _absorb(self, listing: dict, name: str | None, api: bool, in_use: bool = True) -> dict:
        """Learn from a listing (of the broker in use, unless not ``in_use``) what it tells: routes, codecs, APIs
        (the cached one filled in where the broker left it out), the broker's size limit."""
        if in_use:
            self._broker_limit = listing["broker"].get("max_message_size")
        if name is not None:
            self.routes.learn(name, listing["backends"].get(name))
        for entry_name, entry in listing["backends"].items():
            if name is None:
                self.routes.learn(entry_name, entry)
            self._codecs[entry_name] = entry.get("codec", serialize.PICKLE)
            if api and "api" in entry:
                self._apis[entry_name] = (entry["api_tag"], entry["api"])
            elif api:
                entry["api"] = self._apis[entry_name][1]
        return listing

    def _list(self, rid: bytes, query: dict, timeout: float) -> tuple[dict, list]:
        """Ask the broker in use for a listing; if it does not answer, the next one, until each was asked."""
        for tries_left in reversed(range(len(self.urls))):
            url = self.url
            try:
                return self._exchange(rid, P.list_query(rid, query), timeout, None)
            except (CallTimeout, BackendLost) as exc:
                if not tries_left:  # a listing is what tells that no broker is there
                    raise type(exc)(f"{exc}. {no_broker_hint(url)}") from None
                if isinstance(exc, CallTimeout):  # a live broker answers a listing at once: this one is gone
                    self._fail_over(url)
        raise AssertionError("a client has one broker at least")

    def _ask(self, url: str, query: dict, timeout: float) -> Future:
        """A listing query to the broker at ``url`` through the I/O thread (its connection there is kept); the
        future ends with the decoded listing, and the broker counts as down, or up again, by its outcome."""
        rid = struct.pack("!Q", next(_request_ids))
        asked = self._calls().send(rid, P.list_query(rid, query), timeout, None, None, url)
        listing = Future()

        def answered(attempt: Future) -> None:
            exc = attempt.exception()
            if exc is None:
                try:
                    exc, value = None, decode_result(*attempt.result())
                except BaseException as error:  # noqa: BLE001 - the future carries it
                    exc = error
            if exc is None:
                self._down.pop(url, None)
                settle(listing, value)
            else:
                self._down.setdefault(url, time.monotonic())
                settle(listing, exc=exc)

        asked.add_done_callback(answered)
        return listing

    def backends(self) -> BackendTable:
        """The live backends, as a table (text in a terminal, HTML in a notebook).

        With several brokers, every broker is asked at once over this client's own connections, and each
        backend says which of them it is reachable through (its ``"brokers"``); brokers that do not answer are
        listed as ``"down"``. A broker found down costs one probe: later listings wait for it no longer than
        for the others, and show it again once it answers.
        """
        if len(self.urls) == 1:
            return BackendTable(self.listing())
        query = {"api": True, "known": {n: tag for n, (tag, _) in self._apis.items()}}
        timeout = self._listing_timeout(None)
        probe = min(timeout, self.heartbeat * self.liveness)  # a live broker answers a listing at once
        asked = {url: self._ask(url, query, timeout) for url in self.urls}
        known_down = {url for url in self.urls if url in self._down}
        wait({asked[url] for url in self.urls if url not in known_down} or set(asked.values()), timeout=probe)
        listings, down = {}, []
        for url, listing in asked.items():
            if listing.done() and listing.exception() is None:
                listings[url] = self._absorb(listing.result(), None, True, in_use=url == self.url)
            else:
                self._down.setdefault(url, time.monotonic())  # its answer, if it comes, marks it up again
                down.append(url)
        return BackendTable(merge_listings(listings, down))

    def __getitem__(self, name: str) -> RemoteBackend:
        entry = self.listing(name)["backends"].get(name)
        if entry is None:
            live = ", ".join(sorted(self.listing(api=False)["backends"])) or "none"
            raise UnknownBackend(f"no backend named {name!r} at {self.url}; live backends: {live}")
        return RemoteBackend(self, entry)

    def _ipython_key_completions_(self) -> list[str]:
        return sorted(self.listing(api=False)["backends"])


class _NotSent(Exception):
    """A direct call could not be sent (the endpoint is not connected): it goes through the broker."""


def _dispatcher(progress, on_event: EventHandler | None, lazy: bool = False) -> EventHandler:
    """A call's event handler: progress events to ``progress``, the others to ``on_event``.

    ``lazy``: ``progress`` is a factory of the renderer (or None), called at the first report.
    """
    renderer = [] if lazy else [progress]

    def dispatch(event: dict, frames: list) -> None:
        if event.get("event") == "progress":
            if not renderer:
                renderer.append(progress())
            if renderer[0] is not None:
                renderer[0](Progress.from_event(event))
        elif on_event is not None:
            on_event(event, frames)
    return dispatch


def merge_listings(listings: dict[str, dict], down: list[str]) -> dict:
    """One listing of the backends of several brokers (url -> listing): each backend with the brokers it is
    reachable through, and its workers once (a backend registered at several brokers is there with each)."""
    backends: dict[str, dict] = {}
    for url, listing in listings.items():
        for name, entry in listing["backends"].items():
            merged = backends.setdefault(name, {**entry, "workers": [], "brokers": []})
            merged["brokers"].append(url)
            known = {w["id"] for w in merged["workers"]}
            merged["workers"] += [w for w in entry.get("workers", []) if w["id"] not in known]
    return {"broker": {"url": ", ".join(listings) or "none answering", "down": down}, "backends": backends}


def _raise_if_refused(sock: WatchedSocket) -> None:
    """Raise :class:`Refused` if the broker refused the connection (else it looks like a dead broker)."""
    reason = sock.handshake_failure()
    if reason is not None:
        raise Refused(reason) from None


def no_broker_hint(url: str) -> str:
    """What to do when no broker answers at ``url``."""
    return (f"Is a broker running there? Start one with `de-magic broker --bind {url}` "
            "(or `de-magic demo`), or give the address of another")
