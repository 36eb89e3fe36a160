"""The broker: where backends register and clients find and call them.

One ROUTER socket serves both sides: backends connect *out* to it (so they
work from behind an institute's firewall), say READY with their name and API,
and heartbeat; clients send CALLs naming a backend, and the broker forwards
each to a free slot (one connection per concurrent call) of the least busy
worker of that name, queueing calls while every slot is busy.  The design
follows ZeroMQ's Majordomo pattern (RFC 7/18) with an MMI-like listing (RFC 8).

Speed matters here, so per message the broker reads only the small routing
frames; headers and payloads are forwarded as the zmq frames they arrived in.
The broker also remembers which worker holds which request, so that when a
worker stops heartbeating its callers get a ``lost`` error at once instead of
waiting for their timeout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections import deque

import zmq

from . import protocol as P
from .badinput import BadInput
from .errors import BackendLost, BadAddress, Busy, PayloadTooLarge, ProtocolMismatch, Refused, UnknownBackend
from .security import Security, caller, may_use
from .serialize import nbytes
from .wire import recv_frames, send_frames

log = logging.getLogger("de_magic.broker")

DEFAULT_URL = "tcp://127.0.0.1:5555"
DEFAULT_HEARTBEAT = 1.0
DEFAULT_LIVENESS = 3
DEFAULT_MAX_MESSAGE = 1 << 30
STARTUP_GRACE = 2.0  # seconds after binding during which calls to unknown backends wait
#: Calls held per backend name while a just (re)started broker waits for backends: bounds memory.
MAX_WAITING = 10_000


def default_url() -> str:
    """``$DE_MAGIC_BROKER`` if set (checked by :func:`check_url`), else :data:`DEFAULT_URL`."""
    url = os.environ.get("DE_MAGIC_BROKER")
    return check_url(url, "$DE_MAGIC_BROKER") if url else DEFAULT_URL


_URL = re.compile(r"tcp://(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(\d{1,5}|\*)|(ipc|inproc)://\S+")


def check_url(url: str, source: str = "") -> str:
    """``url`` if it is a ZeroMQ address a broker can have; else BadAddress, saying which form is expected.

    The one place addresses are checked, so that a typo reads as one line, not as a ZMQError from deep inside.
    """
    match = _URL.fullmatch(url.strip())
    if match is None or (match[2] not in (None, "*") and int(match[2]) > 65535):
        given = f"{url!r} (from {source})" if source else repr(url)
        raise BadAddress(f"{given} is not a broker address: expected tcp://HOST:PORT, e.g. {DEFAULT_URL}")
    return url.strip()


class Worker:
    """A registered backend process, as the broker sees it: a control connection plus slots."""

    __slots__ = ("address", "service", "capacity", "max_queue", "idle", "slots", "inflight", "expires",
                 "since", "pid", "host", "calls")

    def __init__(self, address: bytes, service: "Service", info: dict, expires: float):
        self.address = address
        self.service = service
        self.capacity = max(1, int(info.get("capacity", 1)))
        self.max_queue = max(0, int(info.get("queue", 1000)))
        self.idle: list[bytes] = []  # slot addresses ready for a call
        self.slots: set[bytes] = set()
        self.inflight: dict[tuple[bytes, bytes], bytes] = {}  # request -> slot
        self.expires = expires
        self.since = time.time()
        self.pid = info.get("pid")
        self.host = info.get("host")
        self.calls = 0

    def describe(self) -> dict:
        return {"id": self.address.hex(), "pid": self.pid, "host": self.host, "since": self.since,
                "capacity": self.capacity, "busy": len(self.inflight), "calls": self.calls}


class Queued:
    """A call waiting for a free slot (or, just after a restart, for its backend to register)."""

    __slots__ = ("client", "rid", "pinned", "frames", "deadline")

    def __init__(self, client: bytes, rid: bytes, pinned: bytes, frames: list, deadline: float | None):
        self.client, self.rid, self.pinned, self.frames, self.deadline = client, rid, pinned, frames, deadline


class Service:
    """All workers registered under one backend name, their shared API, and their queue."""

    def __init__(self, name: str):
        self.name = name
        self.workers: list[Worker] = []
        self.queue: deque[Queued] = deque()
        self.api_json, self.api_tag = b"{}", ""
        self.allow_code = False
        self.codec = "pickle"
        #: Callers the backend accepts (Z85 keys or key names), None for everyone: see security.may_use.
        self.allowed: frozenset[str] | None = None
        self._rules: dict[bytes, frozenset[str] | None] = {}  # each worker's own allowed callers
        self.since = time.time()

    def pick(self, pinned: bytes = b"") -> Worker | None:
        """The least busy worker with a free slot (the pinned one, if given)."""
        best, load = None, 2.0
        for worker in self.workers:
            if worker.idle and (not pinned or worker.address == pinned):
                busy = len(worker.inflight) / worker.capacity
                if busy < load:
                    best, load = worker, busy
        return best

    def set_api(self, api: dict) -> None:
        self.api_json = json.dumps(api, separators=(",", ":")).encode()
        self.api_tag = hashlib.blake2b(self.api_json, digest_size=8).hexdigest()

    def restrict(self, address: bytes, allowed: frozenset[str] | None, gone: bool = False) -> None:
        """Record a worker's allowed callers (or that it is ``gone``); every worker's restriction holds,
        so a peer registering under this name cannot widen who may call the other workers."""
        if gone:
            self._rules.pop(address, None)
        else:
            self._rules[address] = allowed
        sets = [rule for rule in self._rules.values() if rule is not None]
        self.allowed = frozenset.intersection(*sets) if sets else None

    def describe(self, with_api: bool, known_tag: str | None = None) -> bytes:
        """This service as listing JSON; the API is left out when the caller has it already."""
        head = {"name": self.name, "allow_code": self.allow_code, "codec": self.codec, "since": self.since,
                "api_tag": self.api_tag,
                "queued": len(self.queue), "workers": [w.describe() for w in self.workers]}
        text = json.dumps(head, separators=(",", ":")).encode()
        if not with_api or known_tag == self.api_tag:
            return text
        return text[:-1] + b',"api":' + self.api_json + b"}"


class Broker:
    """A de-magic broker bound to ``url``.

    ``run()`` serves in the calling thread until ``stop()`` (from any thread) or
    Ctrl-C; ``start()`` runs it in a thread of its own for embedding (tests, the
    notebook's embedded default).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        heartbeat: float = DEFAULT_HEARTBEAT,
        liveness: int = DEFAULT_LIVENESS,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        context: zmq.Context | None = None,
        security: Security | None = None,
    ):
        self.url = url or default_url()
        self.security = security or Security.resolve()
        self._auth = None  # the ZAP authenticator thread, with CURVE
        self._next_reap = float("inf")  # when the next worker may expire (see _reap)
        self.bad = BadInput(log)
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.max_message_size = max_message_size
        self.id = uuid.uuid4().hex[:12]
        self.since = time.time()
        self.services: dict[str, Service] = {}
        self.workers: dict[bytes, Worker] = {}  # by control address
        self.peers: dict[bytes, Worker] = {}  # by control or slot address
        self.orphans: dict[bytes, tuple[bytes, float]] = {}  # slot -> (worker, expires): slots seen before READY
        self.requests: dict[tuple[bytes, bytes], Worker] = {}
        self._ctx = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._stop_url = f"inproc://de-magic-broker-stop-{id(self)}"
        self._stopper = self._ctx.socket(zmq.PAIR)
        self._stopper.bind(self._stop_url)
        self._thread: threading.Thread | None = None
        self._handlers = {
            P.CALL: self._on_call,
            P.CANCEL: self._on_cancel,
            P.LIST: self._on_list,
            P.QUERY: self._on_query,
            P.READY: self._on_ready,
            P.SLOT: self._on_slot,
            P.HEARTBEAT: self._on_heartbeat,
            P.BYE: self._on_bye,
            P.REPLY: lambda address, frames: self._on_final(address, frames, P.REPLY),
            P.ERROR: lambda address, frames: self._on_final(address, frames, P.ERROR),
            P.EVENT: self._on_event,
        }
        self._rules = {**P.FROM_CLIENT, **P.FROM_WORKER}

    # -- life cycle --------------------------------------------------------

    def bind(self) -> str:
        """Bind the socket; returns the URL (with the real port if ``:0``/``*`` was asked)."""
        sock = self._ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.router_handover = True
        # A frame larger than this is cut off by libzmq before it reaches Python; the
        # configured limit itself is checked per message below, with an answer.
        sock.maxmsgsize = self.max_message_size + (1 << 20)
        try:
            self.configure_socket(sock)
            sock.bind(self.url)
        except BaseException:  # e.g. the address is taken: leave no socket or ZAP thread behind
            sock.close()
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
            raise
        self.url = sock.last_endpoint.decode().replace("0.0.0.0", "127.0.0.1")
        self._socket = sock
        # backends that were connected before a restart come back within a heartbeat or two
        self._grace_until = time.monotonic() + max(STARTUP_GRACE, self.heartbeat * self.liveness)
        return self.url

    def configure_socket(self, sock: zmq.Socket) -> None:
        """Hook for security settings (CURVE) before binding."""
        self._auth = self.security.serve(sock, self.url)

    def start(self) -> "Broker":
        """Serve in a daemon thread; returns once bound."""
        if self._socket is None:
            self.bind()
        self._thread = threading.Thread(target=self.run, name=f"de-magic-broker-{self.id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving (thread-safe) and wait for the serving thread, if any."""
        poke = self._ctx.socket(zmq.PAIR)
        poke.linger = 0
        poke.connect(self._stop_url)
        poke.send(b"stop")
        poke.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        if self._socket is None:
            self.bind()
        sock = self._socket
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._stopper, zmq.POLLIN)
        log.info("broker %s listening on %s", self.id, self.url)
        next_beat = time.monotonic() + self.heartbeat
        try:
            while True:
                wake = min(next_beat, self._next_reap)  # a silent worker is reaped between beats too
                events = dict(poller.poll(max(0.0, wake - time.monotonic()) * 1000))
                if self._stopper in events:
                    break
                # drain what is there (bounded, so heartbeats are not starved)
                for _ in range(1000):
                    if not sock.get(zmq.EVENTS) & zmq.POLLIN:
                        break
                    self._dispatch(recv_frames(sock))
                now = time.monotonic()
                if now >= next_beat:
                    self._beat(now)
                    next_beat = now + self.heartbeat
                elif now >= self._next_reap:
                    self._reap(now)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        for worker in list(self.workers.values()):
            self._send(worker.address, P.DISCONNECT, b"broker stopping")
        self._socket.close(linger=200)  # let the DISCONNECTs go out: backends then re-register at once
        self._stopper.close()
        if self._auth is not None:
            self._auth.stop()
        self.bad.flush()
        log.info("broker %s stopped", self.id)

    # -- plumbing ----------------------------------------------------------

    def _send(self, address: bytes, mtype: bytes, *frames) -> None:
        send_frames(self._socket, [address, P.VERSION, mtype, *frames])

    def _error(self, client: bytes, rid: bytes, error_cls, message: str, **extra) -> None:
        self._send(client, P.ERROR, rid, P.error_header(error_cls.kind, message, **extra))

    def _dispatch(self, frames: list) -> None:
        address = frames[0].bytes
        try:
            msg = P.decode(frames[1:], self._rules)
            self._handlers[msg.type](address, msg.frames)
        except P.ProtocolError as exc:
            self.bad.report("bad message from %s: %s", address.hex(), exc)
            # answer where the message has a request id to answer to
            if len(frames) >= 4 and frames[2].bytes in P.FROM_CLIENT:
                self._error(address, frames[3].bytes, ProtocolMismatch, str(exc))
        except Exception:
            self.bad.report("failed to handle a message from %s", address.hex(), exc_info=True)

    def _beat(self, now: float) -> None:
        self.bad.flush()
        self._reap(now)
        for worker in self.workers.values():
            self._send(worker.address, P.HEARTBEAT)
        for slot, (_, expires) in list(self.orphans.items()):
            if expires < now:
                del self.orphans[slot]
        for service in list(self.services.values()):
            if service.queue and not service.workers:
                self._expire_waiting(service, now)

    def _reap(self, now: float) -> None:
        """Remove workers silent for ``liveness`` intervals, as soon as that is so rather than at the next
        beat: callers of a killed worker learn it within ``liveness`` heartbeat intervals."""
        for worker in list(self.workers.values()):
            if worker.expires < now:
                log.warning("worker %s of %r stopped heartbeating", worker.address.hex(), worker.service.name)
                self._remove(worker, "stopped heartbeating")
        # a lower bound: heartbeats move expiries later, and then this wakes early and looks again
        self._next_reap = min((w.expires for w in self.workers.values()), default=now + self.heartbeat)

    def _expires(self) -> float:
        return time.monotonic() + self.heartbeat * self.liveness

    def _remove(self, worker: Worker, why: str) -> None:
        self.workers.pop(worker.address, None)
        self.peers.pop(worker.address, None)
        for slot in worker.slots:
            self.peers.pop(slot, None)
        service = worker.service
        service.restrict(worker.address, None, gone=True)
        if worker in service.workers:
            service.workers.remove(worker)
        for client, rid in worker.inflight:
            self.requests.pop((client, rid), None)
            self._error(
                client, rid, BackendLost,
                f"backend {service.name!r} worker {worker.address.hex()} (pid {worker.pid} on {worker.host}) "
                f"{why} during the call")
        worker.inflight.clear()
        lost = [q for q in service.queue if q.pinned == worker.address or not service.workers]
        for item in lost:
            service.queue.remove(item)
            self._error(item.client, item.rid, BackendLost,
                        f"backend {service.name!r} worker {worker.address.hex()} {why} before the call started")
        if not service.workers and not service.queue:
            del self.services[service.name]

    # -- client side -------------------------------------------------------

    def _on_call(self, client: bytes, frames) -> None:
        rid = frames[0].bytes
        name = frames[1].bytes.decode("utf-8", "replace")
        pinned = frames[2].bytes
        rest = frames[3:]  # header and payload, forwarded untouched
        size = nbytes(rest)
        if size > self.max_message_size:
            self._error(client, rid, PayloadTooLarge,
                        f"call of {size} bytes exceeds the broker's maximum message size of {self.max_message_size} bytes")
            return
        service = self.services.get(name)
        if service is None or not service.workers:
            if time.monotonic() < self._grace_until:
                # just (re)started: backends re-register within a heartbeat, so wait for them
                service = self.services.setdefault(name, Service(name))
                if len(service.queue) >= MAX_WAITING:
                    self._error(client, rid, Busy, f"too many calls wait for backend {name!r} to register")
                    return
                service.queue.append(Queued(client, rid, pinned, rest, self._grace_until))
                return
            self._unknown(client, rid, name)
            return
        if service.allowed is not None and not self._may_use(service, frames[0]):
            self._refuse(client, rid, name, frames[0])
            return
        if pinned and self.workers.get(pinned) not in service.workers:
            self._error(client, rid, BackendLost,
                        f"worker {pinned.hex()} of backend {name!r} is gone (it held this session's state)")
            return
        worker = service.pick(pinned)
        if worker is not None and not service.queue:
            self._forward(worker, client, rid, rest)
        elif len(service.queue) >= sum(w.max_queue for w in service.workers):
            self._error(client, rid, Busy,
                        f"backend {name!r} is busy: all {sum(w.capacity for w in service.workers)} slots working "
                        f"and {len(service.queue)} calls queued")
        else:
            service.queue.append(Queued(client, rid, pinned, rest, None))
            if worker is not None:
                self._drain(service)

    def _forward(self, worker: Worker, client: bytes, rid: bytes, rest) -> None:
        key = (client, rid)
        slot = worker.idle.pop()
        self.requests[key] = worker
        worker.inflight[key] = slot
        worker.calls += 1
        send_frames(self._socket, [slot, P.VERSION, P.CALL, client, rid, *rest])

    def _drain(self, service: Service) -> None:
        """Start queued calls while there are free slots that may take them."""
        for item in list(service.queue):
            worker = service.pick(item.pinned)
            if worker is None:
                if not item.pinned:
                    return
                continue
            service.queue.remove(item)
            self._forward(worker, item.client, item.rid, item.frames)

    def _may_use(self, service: Service, frame) -> bool:
        return may_use(service.allowed, frame, self._key_names())

    def _key_names(self) -> dict[str, str]:
        return self._auth.names if self._auth is not None else {}

    def _refuse(self, client: bytes, rid: bytes, name: str, frame) -> None:
        log.warning("refused a call of %r from %s (%s): not among the backend's allowed callers",
                    name, caller(frame, self._key_names()), client.hex())
        self._error(client, rid, Refused, f"backend {name!r} does not accept calls from this caller's key")

    def _unknown(self, client: bytes, rid: bytes, name: str) -> None:
        live = sorted(n for n, s in self.services.items() if s.workers)
        self._error(client, rid, UnknownBackend,
                    f"no backend named {name!r} at {self.url}; live backends: {', '.join(live) or 'none'}")

    def _expire_waiting(self, service: Service, now: float) -> None:
        for item in list(service.queue):
            if item.deadline is not None and item.deadline < now:
                service.queue.remove(item)
                self._unknown(item.client, item.rid, service.name)
        if not service.workers and not service.queue:
            self.services.pop(service.name, None)

    def _queued(self, client: bytes, rid: bytes) -> tuple[Service, Queued] | tuple[None, None]:
        for service in self.services.values():
            for item in service.queue:
                if item.rid == rid and item.client == client:
                    return service, item
        return None, None

    def _on_cancel(self, client: bytes, frames) -> None:
        rid = frames[0].bytes
        worker = self.requests.get((client, rid))
        if worker is not None:
            self._send(worker.address, P.CANCEL, client, rid)
            return
        service, item = self._queued(client, rid)
        if item is not None:  # never started: the caller stopped waiting, so just forget it
            service.queue.remove(item)

    def _on_query(self, client: bytes, frames) -> None:
        rid = frames[0].bytes
        known = (client, rid) in self.requests or self._queued(client, rid)[1] is not None
        self._send(client, P.STATUS, rid, P.PENDING if known else P.UNKNOWN)

    def _on_list(self, client: bytes, frames) -> None:
        rid = frames[0].bytes
        query = P.load_header(frames[1])
        only = query.get("name")
        with_api = query.get("api", True)
        known = query.get("known") or {}
        if not (only is None or isinstance(only, str)) or not isinstance(known, dict):
            raise P.ProtocolError("LIST query: 'name' must be a string and 'known' an object")
        services = [s for s in self.services.values()
                    if s.workers and (only is None or s.name == only) and self._may_use(s, frames[0])]
        body = b",".join(json.dumps(s.name).encode() + b":" + s.describe(with_api, known.get(s.name))
                         for s in services)
        head = {"url": self.url, "id": self.id, "since": self.since, "protocol": P.VERSION.decode(),
                "host": socket.gethostname(), "curve": self._auth is not None,
                # counts that return to zero when all calls ended (for operators and leak tests)
                "requests": len(self.requests), "queued": sum(len(s.queue) for s in self.services.values()),
                "bad_messages": self.bad.count}
        listing = b'{"broker":' + json.dumps(head).encode() + b',"backends":{' + body + b"}}"
        self._send(client, P.REPLY, rid, b'{"codec":"json"}', listing)

    # -- worker side -------------------------------------------------------

    def _on_ready(self, address: bytes, frames) -> None:
        name = frames[0].bytes.decode("utf-8", "replace")
        info = P.load_ready_info(frames[1])
        service = self.services.get(name) or self.services.setdefault(name, Service(name))
        service.set_api(info.get("api", {}))
        service.allow_code = bool(info.get("allow_code", False))
        service.codec = "json" if info.get("codec") == "json" else "pickle"
        allowed = info.get("allow_clients")
        service.restrict(address, None if allowed is None else frozenset(allowed))
        for item in [q for q in service.queue if not self._may_use(service, q.frames[0])]:
            service.queue.remove(item)  # queued while the broker (re)started, before the rules were known
            self._refuse(item.client, item.rid, name, item.frames[0])
        worker = self.workers.get(address)
        if worker is not None and worker.service is service:
            # registering again (it lost us for a moment): its calls and slots stand
            worker.expires = self._expires()
            return
        if worker is not None:
            self._remove(worker, "re-registered under another name")
        worker = Worker(address, service, info, self._expires())
        service.workers.append(worker)
        self.workers[address] = worker
        self.peers[address] = worker
        log.info("worker %s registered for %r (pid %s on %s, %d slots)",
                 address.hex(), name, worker.pid, worker.host, worker.capacity)
        for slot, (owner, _) in list(self.orphans.items()):
            if owner == address:
                del self.orphans[slot]
                self._add_slot(worker, slot)

    def _on_slot(self, address: bytes, frames) -> None:
        owner = frames[0].bytes
        worker = self.workers.get(owner)
        if worker is None:
            if len(self.orphans) < 100_000:
                self.orphans[address] = (owner, self._expires())
        elif address not in worker.slots:
            self._add_slot(worker, address)
        else:
            worker.expires = self._expires()

    def _add_slot(self, worker: Worker, slot: bytes) -> None:
        worker.slots.add(slot)
        worker.idle.append(slot)
        self.peers[slot] = worker
        if worker.service.queue:
            self._drain(worker.service)

    def _peer(self, address: bytes) -> Worker | None:
        worker = self.peers.get(address)
        if worker is None:
            # e.g. this broker restarted: ask the backend to register again
            self._send(address, P.DISCONNECT, b"unknown worker; register again")
        else:
            worker.expires = self._expires()
        return worker

    def _on_heartbeat(self, address: bytes, frames) -> None:
        self._peer(address)

    def _on_bye(self, address: bytes, frames) -> None:
        worker = self.workers.get(address)
        if worker is not None:
            self._remove(worker, "shut down")

    def _on_final(self, address: bytes, frames, mtype: bytes) -> None:
        worker = self._peer(address)
        if worker is None:
            return
        client, rid = frames[0].bytes, frames[1].bytes
        key = (client, rid)
        if self.requests.get(key) is not worker:
            # answered already (e.g. as lost), or not this worker's: exactly one answer per request
            self.bad.report("worker %s answered request %s it does not hold", address.hex(), rid.hex())
            return
        del self.requests[key]
        worker.idle.append(worker.inflight.pop(key))
        send_frames(self._socket, [client, P.VERSION, mtype, rid, *frames[2:]])
        if worker.service.queue:
            self._drain(worker.service)

    def _on_event(self, address: bytes, frames) -> None:
        worker = self._peer(address)
        if worker is not None and self.requests.get((frames[0].bytes, frames[1].bytes)) is worker:
            send_frames(self._socket, [frames[0], P.VERSION, P.EVENT, *frames[1:]])
