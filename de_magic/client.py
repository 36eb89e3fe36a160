"""The client: find backends at a broker and call them like local functions.

Blocking calls use one DEALER socket per calling thread, so a call costs one
send and one receive with no hand-off to a helper thread, and events a call
produces (progress, streamed output, display data) are handled in the thread
that made the call, which is what lets a notebook show them in the right
cell.  ``submit()`` runs the same blocking call in a small thread pool and
returns a future that is also awaitable.

A call always ends: with the result, with the remote error, or with
:class:`~de_magic.errors.CallTimeout`.  While waiting, the client asks the
broker now and then whether the request is still known, so a broker restart
or a lost worker surfaces as :class:`~de_magic.errors.BackendLost` instead of
a silent wait.
"""

from __future__ import annotations

import ast
import asyncio
import html
import inspect
import itertools
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import zmq

from . import protocol as P
from . import serialize
from .defaults import DEFAULT_HEARTBEAT, DEFAULT_LIVENESS, DEFAULT_MAX_MESSAGE, default_url
from .errors import (BackendLost, CallTimeout, DeMagicError, PayloadTooLarge, ProtocolMismatch, Refused,
                     UnknownBackend, UnknownMethod, from_header)
from .handshake import WatchedSocket
from .progress_display import default_progress
from .security import Security
from .wire import PerThread, recv_frames, send_frames

EventHandler = Callable[[dict, list], None]

LISTING_TIMEOUT = 10.0  # seconds, unless a listing is given a timeout of its own
SMALL_CALL = 1 << 20  # bytes: below this no broker's size limit is in question

_request_ids = itertools.count(1)


class CallFuture(Future):
    """A :class:`concurrent.futures.Future` that asyncio code can ``await``."""

    def __await__(self):
        return asyncio.wrap_future(self).__await__()


class Client:
    """A connection to one broker.

    ``timeout`` is the default for every call in seconds; a single call may
    override it (``client.call(..., timeout=5)`` or ``proxy.f.options(timeout=5)``).
    ``None`` (the default) waits as long as the broker reports the call alive:
    analyses may take hours, and a lost worker or broker still ends the wait.
    """

    _shared: dict[str, "Client"] = {}
    _shared_lock = threading.Lock()

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        liveness: int = DEFAULT_LIVENESS,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        on_progress: Callable[[dict], None] | None = None,
        context: zmq.Context | None = None,
        security: Security | None = None,
        codec: str | None = None,
    ):
        self.url = url or default_url()
        self.security = (security or Security.resolve()).check_peer()
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
        self._busy: set[zmq.Socket] = set()  # sockets of calls in flight (see close)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._apis: dict[str, tuple[str, dict]] = {}  # backend -> (api tag, api) seen in listings
        self._closed = False
        self._broker_limit: int | None = None  # the broker's maximum message size, once a listing said it

    @staticmethod
    def default_url() -> str:
        """``DE_MAGIC_BROKER`` if set, else ``tcp://127.0.0.1:5555``."""
        return default_url()

    @classmethod
    def shared(cls, url: str | None = None) -> "Client":
        """A client per broker URL, shared by generated modules and magics."""
        url = url or default_url()
        with cls._shared_lock:
            client = cls._shared.get(url)
            if client is None or client._closed:
                client = cls._shared[url] = cls(url)
            return client

    def __repr__(self) -> str:
        return f"<de_magic.Client {self.url}{' (closed)' if self._closed else ''}>"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close this client: its sockets, its submit pool; calls in flight end with an error.

        A socket in use by a call is closed by the thread making the call, within a
        heartbeat interval: closing it under that thread's feet is undefined in libzmq.
        """
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._sockets.close(keep=set(self._busy))

    def configure_socket(self, sock: zmq.Socket) -> None:
        """Hook for security settings (CURVE) before connecting."""
        self.security.connect(sock)
        # A refused handshake leaves the socket without a peer, where a send would block for ever.
        sock.sndtimeo = int(self.heartbeat * self.liveness * 1000)

    # -- low level -------------------------------------------------------------

    def _new_socket(self) -> WatchedSocket:
        sock = self._ctx.socket(zmq.DEALER, socket_class=WatchedSocket)
        sock.linger = 0
        self.configure_socket(sock)
        sock.watch(self.url, "client", self.security)  # a refused handshake must not pass for a dead broker
        sock.connect(self.url)
        return sock

    def _socket(self) -> zmq.Socket:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        return self._sockets.get()

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
        return self._exchange(rid, P.call(rid, backend, worker, P.dump_header(header), payload),
                              self.timeout if timeout is None else timeout, on_event)

    def _limit(self, size: int) -> int:
        """The largest call that may be sent. The broker's own limit is learnt from a listing, asked
        for only when a call is large enough to matter: libzmq would cut a larger call off in transit."""
        if self._broker_limit is None and size > SMALL_CALL:
            self.listing(api=False)
        return min(self.max_message_size, self._broker_limit or self.max_message_size)

    def _exchange(self, rid: bytes, frames: list, timeout: float | None, on_event) -> tuple[dict, list]:
        """Send the request ``rid`` (its ``frames``) on this thread's socket and wait for the answer."""
        sock = self._socket()
        self._busy.add(sock)
        try:
            if sock.failed_before:  # e.g. a retry after a refusal: fail now, not after a heartbeat
                _raise_if_refused(sock)
            self._send(sock, frames)
            return self._wait(sock, rid, timeout, on_event)
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
            hint = " (CURVE: is this client's key allowed there, and the broker key right?)" if self.security.curve else ""
            raise BackendLost(f"cannot reach the broker at {self.url}{hint}") from None

    def _wait(self, sock: zmq.Socket, rid: bytes, timeout: float | None, on_event) -> tuple[dict, list]:
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        next_query = now + self.heartbeat
        unanswered = 0
        try:
            while True:
                wait = next_query - time.monotonic()
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                if sock.poll(max(0.0, wait) * 1000):
                    frames = recv_frames(sock)
                    try:
                        msg = P.parse(frames, P.AT_CLIENT)
                    except P.ProtocolError as exc:
                        if exc.rid is not None and exc.rid != rid:
                            continue  # a late answer to an earlier, abandoned request
                        raise ProtocolMismatch(f"broker at {self.url}: {exc}") from None
                    if msg.rid != rid:
                        continue  # a late answer to an earlier, abandoned request
                    unanswered = 0
                    if type(msg) is P.Reply:
                        return msg.header, msg.payload
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
                        raise BackendLost(
                            f"the broker at {self.url} no longer knows this request "
                            "(it restarted, or the backend was lost)")
                    continue
                now = time.monotonic()
                if self._closed:
                    raise DeMagicError(f"{self!r} was closed during the call")
                if deadline is not None and now >= deadline:
                    self._send(sock, P.cancel(rid), zmq.NOBLOCK)
                    raise CallTimeout(f"no answer from {self.url} within {timeout:g} s")
                if now >= next_query:
                    _raise_if_refused(sock)
                    if unanswered >= self.liveness:
                        raise BackendLost(f"the broker at {self.url} is not answering")
                    self._send(sock, P.query(rid), zmq.NOBLOCK)
                    unanswered += 1
                    next_query = now + self.heartbeat
        except KeyboardInterrupt:
            # the kernel's stop button: stop the remote work too
            self._send(sock, P.cancel(rid), zmq.NOBLOCK)
            raise

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
        on_progress: Callable[[dict], None] | None = None,
        on_event: EventHandler | None = None,
    ):
        """Call ``member`` (a function, or with ``method`` and ``init`` a class's method) of ``backend``."""
        header = {"member": member}
        body = (tuple(args), dict(kwargs or {}))
        if method is not None:
            header["method"] = method
            body += tuple(init or ((), {}))
        progress = on_progress or self.on_progress or default_progress()
        codec = self.codec or self._codecs.get(backend, serialize.PICKLE)

        def dispatch(event: dict, frames: list) -> None:
            if event.get("event") == "progress":
                if progress is not None:
                    progress(event)
            elif on_event is not None:
                on_event(event, frames)

        if codec == serialize.JSON:
            header["codec"] = serialize.JSON
            payload = serialize.dumps_json([list(part) if i % 2 == 0 else part for i, part in enumerate(body)])
        else:
            payload = serialize.dumps(body)
        try:
            head, frames = self.request(backend, header, payload, timeout=timeout, on_event=dispatch)
        except Refused:
            # a no-pickle backend refuses pickles before reading them: learn its codec and go again
            if codec == serialize.JSON or self._learn_codec(backend) != serialize.JSON:
                raise
            return self.call(backend, member, args, kwargs, method=method, init=init, timeout=timeout,
                             on_progress=on_progress, on_event=on_event)
        if self.codec == serialize.JSON and head.get("codec") != serialize.JSON:
            raise Refused(f"backend {backend!r} answered with a pickle; this client unpickles nothing (codec='json')")
        return decode_result(head, frames)

    def _learn_codec(self, backend: str) -> str:
        self.listing(backend, api=False)  # every listing records the codecs it shows
        return self._codecs.get(backend, serialize.PICKLE)

    def submit(self, backend: str, member: str, args: tuple = (), kwargs: dict | None = None, **options) -> CallFuture:
        """Like :meth:`call`, but return a :class:`CallFuture` at once."""
        future = CallFuture()
        # made here, not in the pool thread, so that the bars belong to the cell that submitted
        options.setdefault("on_progress", self.on_progress or default_progress())
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(32, thread_name_prefix="de-magic-submit")

        def run():
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self.call(backend, member, args, kwargs, **options))
                except BaseException as exc:
                    future.set_exception(exc)

        started = self._pool.submit(run)
        # close() drops calls still waiting for a pool thread: their futures must end too
        started.add_done_callback(
            lambda job: job.cancelled() and future.cancel() and future.set_running_or_notify_cancel())
        return future

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
        if timeout is None:  # a listing is quick: don't inherit a call timeout of hours
            timeout = min(self.timeout or LISTING_TIMEOUT, LISTING_TIMEOUT)
        head, frames = self._exchange(rid, P.list_query(rid, query), timeout, None)
        listing = decode_result(head, frames)
        self._broker_limit = listing["broker"].get("max_message_size")
        for entry_name, entry in listing["backends"].items():
            self._codecs[entry_name] = entry.get("codec", serialize.PICKLE)
            if api and "api" in entry:
                self._apis[entry_name] = (entry["api_tag"], entry["api"])
            elif api:
                entry["api"] = self._apis[entry_name][1]
        return listing

    def backends(self) -> "BackendTable":
        """The live backends, as a table (text in a terminal, HTML in a notebook)."""
        return BackendTable(self.listing())

    def __getitem__(self, name: str) -> "RemoteBackend":
        entry = self.listing(name)["backends"].get(name)
        if entry is None:
            live = ", ".join(sorted(self.listing(api=False)["backends"])) or "none"
            raise UnknownBackend(f"no backend named {name!r} at {self.url}; live backends: {live}")
        return RemoteBackend(self, entry)

    def _ipython_key_completions_(self) -> list[str]:
        return sorted(self.listing(api=False)["backends"])


def _raise_if_refused(sock: WatchedSocket) -> None:
    """Raise :class:`Refused` if the broker refused the connection (else it looks like a dead broker)."""
    reason = sock.handshake_failure()
    if reason is not None:
        raise Refused(reason) from None


def decode_result(header: dict, frames: list):
    if header.get("codec") == serialize.JSON:
        return serialize.loads_json(frames)
    return serialize.loads(frames)


# -- proxies -------------------------------------------------------------------


class _Literal:
    """A default value shown by its source text (for signatures of remote members)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def signature_of(entry: dict) -> inspect.Signature:
    """An :class:`inspect.Signature` rebuilt from an API description entry."""
    params = []
    for p in entry.get("parameters", []):
        default = inspect.Parameter.empty
        if not p.get("required", True) and p.get("kind") not in ("VAR_POSITIONAL", "VAR_KEYWORD"):
            text = p.get("default_repr") or "..."
            try:
                default = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                default = _Literal(text)
        params.append(inspect.Parameter(
            p["name"], getattr(inspect.Parameter, p.get("kind", "POSITIONAL_OR_KEYWORD")),
            default=default, annotation=p.get("annotation") or inspect.Parameter.empty))
    returns = (entry.get("returns") or {}).get("annotation") or inspect.Signature.empty
    return inspect.Signature(params, return_annotation=returns)


def _remote_function(client: Client, backend: str, entry: dict, qualname: str, **call_kw) -> Callable:
    """A real function (so ``help()`` and Tab show its signature) that calls the remote member."""
    member = call_kw.pop("member", entry["name"])

    def remote(*args, **kwargs):
        return client.call(backend, member, args, kwargs, **call_kw)

    def options(**more) -> Callable:
        """The same call with other ``timeout=``, ``on_progress=``, ``on_event=``."""
        return _remote_function(client, backend, entry, qualname, member=member, **{**call_kw, **more})

    def submit(*args, **kwargs) -> CallFuture:
        """Start the call and return a future (also awaitable)."""
        return client.submit(backend, member, args, kwargs, **call_kw)

    def ui():
        """An ipywidgets form that makes this call (see :mod:`de_magic.widgets`)."""
        from .widgets import CallForm

        return CallForm(client, backend, entry, member=member, **call_kw)

    remote.__name__ = entry["name"]
    remote.__qualname__ = qualname
    remote.__doc__ = entry.get("doc") or None
    remote.__signature__ = signature_of(entry)
    remote.__module__ = f"de_magic.remote.{backend}"
    remote.options = options
    remote.submit = submit
    remote.ui = ui
    remote.api = entry
    return remote


class RemoteInstance:
    """A remote class with its constructor arguments; each method call builds the instance remotely."""

    def __init__(self, cls: "RemoteClass", args: tuple, kwargs: dict):
        self._cls, self._init = cls, (args, kwargs)

    def __getattr__(self, name: str) -> Callable:
        entry = self._cls.api.get("methods", {}).get(name)
        if entry is None:
            raise UnknownMethod(f"remote class {self._cls.api['name']} has no method {name!r}; "
                                f"it has: {', '.join(self._cls.api.get('methods', {}))}")
        return _remote_function(self._cls.client, self._cls.backend, entry, f"{self._cls.api['name']}.{name}",
                                member=self._cls.api["name"], method=name, init=self._init)

    def __dir__(self):
        return list(self._cls.api.get("methods", {}))

    def __repr__(self) -> str:
        args = [repr(a) for a in self._init[0]] + [f"{k}={v!r}" for k, v in self._init[1].items()]
        return f"<remote {self._cls.backend}.{self._cls.api['name']}({', '.join(args)})>"


class RemoteClass:
    """Proxy of a backend class: call it with constructor arguments to get a :class:`RemoteInstance`."""

    def __init__(self, client: Client, backend: str, entry: dict):
        self.client, self.backend, self.api = client, backend, entry
        self.__doc__ = entry.get("doc") or None
        self.__signature__ = signature_of(entry)
        self.__name__ = entry["name"]

    def __call__(self, *args, **kwargs) -> RemoteInstance:
        self.__signature__.bind(*args, **kwargs)
        return RemoteInstance(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<remote class {self.backend}.{self.api['name']}{self.api.get('signature', '')}>"


class RemoteBackend:
    """Proxy of one backend: its members are attributes (``dir()`` and Tab list them)."""

    def __init__(self, client: Client, entry: dict):
        self.client = client
        self.name = entry["name"]
        self.entry = entry
        self.api = entry.get("api", {})
        self._members: dict[str, object] = {}

    @property
    def workers(self) -> list[dict]:
        return self.entry.get("workers", [])

    @property
    def allow_code(self) -> bool:
        return bool(self.entry.get("allow_code"))

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        members = self.__dict__["api"].get("members", {})
        if name not in self._members:
            entry = members.get(name)
            if entry is None:
                raise UnknownMethod(f"backend {self.name!r} has no member {name!r}; it has: {', '.join(members)}")
            if entry.get("kind") == "class":
                self._members[name] = RemoteClass(self.client, self.name, entry)
            else:
                self._members[name] = _remote_function(self.client, self.name, entry, name)
        return self._members[name]

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.api.get("members", {})))

    def __repr__(self) -> str:
        lines = [f"<backend {self.name!r} at {self.client.url}: {len(self.workers)} worker(s)>"]
        for name, entry in self.api.get("members", {}).items():
            lines.append(f"  {name}{entry.get('signature', '')}  {entry.get('summary', '')}".rstrip())
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{html.escape(name)}{html.escape(e.get('signature', ''))}</code></td>"
            f"<td>{html.escape(e.get('kind', ''))}</td><td>{html.escape(e.get('summary', ''))}</td></tr>"
            for name, e in self.api.get("members", {}).items()
        )
        return (f"<b>{html.escape(self.name)}</b> at <code>{html.escape(self.client.url)}</code>, "
                f"{len(self.workers)} worker(s)<table><tr><th>member</th><th>kind</th><th>summary</th></tr>"
                f"{rows}</table>")


class BackendTable(dict):
    """The live backends at a broker: a dict by name that prints as a table."""

    def __init__(self, listing: dict):
        super().__init__(listing.get("backends", {}))
        self.broker = listing.get("broker", {})

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        out = []
        for name, entry in sorted(self.items()):
            workers = entry.get("workers", [])
            busy = sum(w.get("busy", 0) for w in workers)
            slots = sum(w.get("capacity", 0) for w in workers)
            members = ", ".join(entry.get("api", {}).get("members", {}))
            # a Dask backend's one worker is a front door: its calls run on the cluster's workers
            count = str(len(workers)) + "".join(f" (Dask: {w['dask']['workers']} workers, {w['dask']['threads']} "
                                                f"threads)" for w in workers if w.get("dask"))
            out.append((name, count, f"{busy}/{slots}", "yes" if entry.get("allow_code") else "no", members))
        return out

    _HEAD = ("backend", "workers", "busy", "code", "members")

    def __repr__(self) -> str:
        rows = [self._HEAD, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEAD))]
        text = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        text.insert(1, "  ".join("-" * w for w in widths))
        if not self:
            text.append(f"(no live backends at {self.broker.get('url', '?')})")
        return "\n".join(text)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in self._HEAD)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows())
        url = html.escape(self.broker.get("url", "?"))
        return f"<table><caption>de-magic backends at <code>{url}</code></caption><tr>{head}</tr>{body}</table>"
