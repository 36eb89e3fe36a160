"""The client: find backends at a broker and call them like local functions.

Every request goes through the client's one I/O thread (:mod:`de_magic.caller.mux`),
around a socket-free core that decides everything about requests in flight
(:mod:`de_magic.caller.core`): deadlines, heartbeats, retries and fallbacks.  A
blocking call's thread waits for its answer and handles the call's events
(progress, streamed output, display data) itself, which is what lets a notebook
show them in the right cell; ``submit()`` returns a future that is also
awaitable, whose events are handled in the I/O thread.

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
import logging
import queue
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Callable

import zmq

from ..wire import serialize
from ..wire.defaults import (DEFAULT_HEARTBEAT, DEFAULT_LISTING_TIMEOUT, DEFAULT_LIVENESS, DEFAULT_MAX_MESSAGE,
                             check_doors, default_url)
from ..wire.errors import (BackendLost, CallTimeout, DeMagicError, Interrupted, PayloadTooLarge, Refused,
                           UnknownBackend)
from ..wire import routingids
from ..wire.handshake import WatchedSocket
from ..wire.security import Security
from . import refs, tracebacks
from .calls import decode_result, encode_call
from .core import Core, Request
from .jobs import Job, attach, list_jobs, start
from .progress import Progress, default_progress
from .proxies import RemoteBackend
from .mux import Multiplexer, settle
from .naming import called
from .routes import Endpoint, Routes
from .tables import BackendTable

if TYPE_CHECKING:
    from .tables import JobTable

EventHandler = Callable[[dict, list], None]

log = logging.getLogger("de_magic.client")

SMALL_CALL = 1 << 20  # bytes: below this no broker's size limit is in question
PREFER_GRACE = 0.5  # seconds a fresh client waits for a preferred broker once a later one answered
HELPER_THREADS = 4  # threads a client has for work its I/O thread must not wait for (see Client.in_background)


class CallFuture(Future):
    """A :class:`concurrent.futures.Future` that asyncio code can ``await``."""

    def __await__(self):
        return asyncio.wrap_future(self).__await__()


class _Answer:
    """What a blocking call's thread waits for: the call's events, then its end, in order, from the I/O thread.

    It stands where a future would (the core settles it), without a future's lock, condition and callbacks,
    which cost a tiny call a fifth of its time."""

    __slots__ = ("_queue",)

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def event(self, header: dict, frames: list) -> None:
        self._queue.put((False, header, frames))

    def set_result(self, result) -> None:
        self._queue.put((True, result, None))

    def set_exception(self, exc: BaseException) -> None:
        self._queue.put((True, None, exc))

    def ready(self) -> bool:
        return not self._queue.empty()

    def next(self) -> tuple[bool, object, object]:
        """(False, header, frames) of an event, or (True, result, exception) at the end."""
        return self._queue.get()


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
        tracebacks.install()  # a plain script's errors without our frames (a kernel has its own display)
        #: The equivalent brokers this client may use, in the order it tries them.
        self.urls = check_doors(url or default_url())
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
        #: The decisions about requests in flight, and the broker in use (driven by the I/O thread).
        self._core = Core(self.urls, heartbeat=heartbeat, liveness=liveness, now=time.monotonic())
        #: Direct endpoints of workers, and this client's sockets to them (see routes.py).
        self.routes = Routes(self._ctx)
        #: False: every call goes through the broker (for comparisons, or a network that drops direct traffic).
        self.direct = direct
        self._lock = threading.Lock()
        self._mux: Multiplexer | None = None
        self._helpers: ThreadPoolExecutor | None = None  # see in_background
        self._door_chosen = False  # the first use asks every broker at once (see _choose_door)
        self._door_lock = threading.Lock()
        self._down: dict[str, float] = {}  # brokers that did not answer a listing (url -> since when)
        self._apis: dict[str, tuple[str, dict]] = {}  # backend -> (api tag, api) seen in listings
        self._closed = False
        self._broker_limit: int | None = None  # the broker's maximum message size, once a listing said it

    @property
    def url(self) -> str:
        """The address of the broker in use."""
        return self.urls[self._core.door]

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
        """Close this client: its sockets, its I/O thread; calls in flight end with an error."""
        with self._lock:
            self._closed = True
        if self._mux is not None:
            self._mux.stop()
        if self._helpers is not None:
            self._helpers.shutdown(wait=False, cancel_futures=True)
        self.routes.close()

    def configure_socket(self, sock: zmq.Socket, url: str) -> None:
        """Hook for security settings (CURVE) before connecting to ``url``."""
        self._securities[url].connect(sock)

    # -- low level -------------------------------------------------------------

    def _new_socket(self, url: str) -> WatchedSocket:
        """A socket to the broker at ``url``, for the I/O thread."""
        sock = routingids.declare(self._ctx.socket(zmq.DEALER, socket_class=WatchedSocket))
        sock.linger = 0
        # thousands of calls and answers in flight: libzmq holds them all (set before connecting, or it does not
        # hold for the connection)
        sock.sndhwm = sock.rcvhwm = 0
        self.configure_socket(sock, url)
        # a refused handshake must not pass for a dead broker; with another broker to go to, a drop counts
        sock.watch(url, "client", self._securities[url], drops=len(self.urls) > 1)
        sock.connect(url)
        return sock

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
                self._calls().run(lambda now: self._core.choose(chosen, now)).result()
                self._absorb(asked[chosen].result(), None, False)  # api=False: no API to fill in
                if chosen:
                    log.warning("the broker at %s is not answering; using %s", self.urls[0], self.url)
            self._door_chosen = True

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
        return self.routes.pick(backend, worker, self.security, self._core.inflight)

    def _limit(self, size: int) -> int:
        """The largest call that may be sent. The broker's own limit is learnt from a listing, asked
        for only when a call is large enough to matter: libzmq would cut a larger call off in transit."""
        if self._broker_limit is None and size > SMALL_CALL:
            self.listing(api=False)
        return min(self.max_message_size, self._broker_limit or self.max_message_size)

    # -- requests --------------------------------------------------------------

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

        Events the backend sends meanwhile go to ``on_event(header, frames)``, in this thread.
        Raises the error the answer carries, :class:`CallTimeout` or :class:`BackendLost`.
        """
        return self._carry(self._prepared(backend, header, payload, worker, timeout), on_event)

    def send_request(self, backend: str, header: dict, payload: list, *, timeout: float | None = None,
                     on_event: EventHandler | None = None, worker: bytes = b"", learn: bool = True) -> CallFuture:
        """Like :meth:`request`, without waiting: the future ends with ``(header, frames)`` or the error, and
        events go to ``on_event`` in the I/O thread; cancelling the future cancels the request.

        ``learn``: a direct endpoint may be looked up with a listing first (not from the I/O thread, which
        must not wait for one).
        """
        request = self._prepared(backend, header, payload, worker, timeout, learn=learn)
        request.on_event = on_event
        return self._future_of(request)

    def _prepared(self, backend: str, header: dict, payload: list, worker: bytes, timeout: float | None, *,
                  learn: bool = True, retries: int = 0, reencode: Callable | None = None,
                  codec: str = serialize.PICKLE) -> Request:
        """A request to ``backend`` for the core: checked for size, and sent straight to a worker if it can."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if learn:
            self._choose_door()
        size = serialize.nbytes(payload)
        limit = self._limit(size)
        if size > limit:
            raise PayloadTooLarge(f"call of {size} bytes exceeds the maximum message size of {limit} bytes "
                                  f"(the broker's at {self.url}, or this client's)")
        return Request(None, backend, header, payload, worker, endpoint=self._direct_endpoint(backend, worker, learn),
                       timeout=self.timeout if timeout is None else timeout, what=called(backend, header),
                       retries=retries, reencode=reencode, codec=codec)

    def _carry(self, request: Request, on_event: EventHandler | None = None) -> tuple[dict, list]:
        """Send ``request`` through the client's I/O loop (driven by this thread itself if it can: mux.wait) and
        wait for its answer in this thread, which handles its events."""
        answer = request.token = _Answer()
        if on_event is not None:
            request.on_event = answer.event
        mux, start = self._calls(), request
        try:
            while True:
                done, value, exc = mux.wait(answer, start)
                start = None
                if done:
                    if exc is not None:
                        raise exc
                    return value
                try:
                    on_event(value, exc)
                except Exception:  # the caller gives up on the call: stop the remote work too
                    mux.cancel(request)
                    raise
        except KeyboardInterrupt:  # the kernel's stop button: stop the remote work too
            mux.cancel(request)
            raise Interrupted(f"interrupted; the remote work was stopped ({request.what})") from None

    def _future_of(self, request: Request, decode: Callable | None = None) -> CallFuture:
        """Hand ``request`` to the I/O thread; the future ends with its answer (``decode``d, if given)."""
        future = CallFuture()
        mux = self._calls()
        future.add_done_callback(lambda f: f.cancelled() and mux.cancel(request))
        if decode is None:
            request.token = future
        else:
            request.token = attempt = Future()

            def answered(attempt: Future) -> None:
                exc = attempt.exception()
                if exc is not None:
                    return settle(future, exc=exc)
                try:
                    settle(future, decode(*attempt.result()))
                except BaseException as error:  # noqa: BLE001 - the future carries it
                    settle(future, exc=error)

            attempt.add_done_callback(answered)
        mux.start(request)
        return future

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
        request = self._call_request(backend, (member, args, kwargs, method, init, keep), timeout, retries)
        head, frames = self._carry(request, dispatch)
        return self._result(backend, head, frames, keep)

    def _call_request(self, backend: str, call: tuple, timeout: float | None, retries: int) -> Request:
        """The request of a call (member, args, kwargs, method, init, keep), in the codec the backend takes; a
        pickled one may go again as JSON if the backend refuses pickles (see core.py)."""
        codec = self._codec_of(backend)
        header, payload, worker = encode_call(backend, *call, codec)
        reencode = None if codec == serialize.JSON else (lambda to: encode_call(backend, *call, to))
        return self._prepared(backend, header, payload, worker, timeout, retries=retries, reencode=reencode,
                              codec=codec)

    def _codec_of(self, backend: str) -> str:
        return self.codec or self._codecs.get(backend, serialize.PICKLE)

    def _result(self, backend: str, head: dict, frames: list, keep: bool = False):
        if self.codec == serialize.JSON and head.get("codec") != serialize.JSON:
            raise Refused(f"backend {backend!r} answered with a pickle; this client unpickles nothing (codec='json')")
        result = decode_result(head, frames)
        return refs.RemoteRef.adopt(self, backend, head, result) if keep else result

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
        try:
            request = self._call_request(backend, (member, args, kwargs, method, init, keep), timeout, retries)
        except BaseException as exc:  # noqa: BLE001 - the future carries it
            failed = CallFuture()
            failed.set_exception(exc)
            return failed
        request.on_event = dispatch
        return self._future_of(request, lambda head, frames: self._result(backend, head, frames, keep))

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

    def _calls(self) -> Multiplexer:
        """The client's I/O thread, started on first use."""
        with self._lock:
            return self._calls_locked()

    def _calls_locked(self) -> Multiplexer:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._mux is None:
            self._mux = Multiplexer(self, self._core)
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
        query: dict = {"api": api}
        if name is not None:
            query["name"] = name
        if api:
            query["known"] = {n: tag for n, (tag, _) in self._apis.items() if name is None or n == name}
        self._choose_door()
        # a live broker answers a listing at once: one that does not is gone, and the next one is asked
        request = Request(None, query=query, timeout=self._listing_timeout(timeout), retries=len(self.urls) - 1)
        try:
            head, frames = self._carry(request)
        except (CallTimeout, BackendLost) as exc:  # a listing is what tells that no broker is there
            raise type(exc)(f"{exc}. {no_broker_hint(self.url)}") from None
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

    def _ask(self, url: str, query: dict, timeout: float) -> Future:
        """A listing query to the broker at ``url`` through the I/O thread (its connection there is kept); the
        future ends with the decoded listing, and the broker counts as down, or up again, by its outcome."""
        asked = self._future_of(Request(None, url=url, query=query, timeout=timeout))
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


def no_broker_hint(url: str) -> str:
    """What to do when no broker answers at ``url``."""
    return (f"Is a broker running there? Start one with `de-magic broker --bind {url}` "
            "(or `de-magic demo`), or give the address of another")
