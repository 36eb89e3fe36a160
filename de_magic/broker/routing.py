"""The broker's routing core: every decision the broker makes, and no sockets.

:class:`Router` takes what arrived (sender, frames, the time) and returns the
messages to send, as pyzmq's ``Authenticator`` sits inside
``ThreadAuthenticator`` or h11's ``Connection`` behind any socket: the broker
process (:mod:`de_magic.broker.server`) is a thin loop around it, and the tests drive
it directly, in microseconds, through any interleaving they like.

What it guarantees, against careless and hostile peers alike:

- every request with a return address gets exactly one final answer (REPLY or ERROR);
- a call reaches only a slot that proved it belongs to a live worker (the
  secret the worker chose at registration, and under CURVE the same public
  key), registered under that name by the name's owner, with the same API;
- every table is bounded (queued calls by count and by bytes, slots by the
  worker's capacity, calls waiting for a restarted broker's backends by count),
  and every lookup is O(1): requests are indexed, queues are deques with lazy
  deletion;
- with a state directory, a job started for an offline backend waits on disk
  (:mod:`.waiting`, bounded per caller) and is sent to a worker of it at most
  once, in the order jobs were started: what was sent is written before it goes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from hmac import compare_digest
from typing import Callable

from ..wire import admission
from ..wire import protocol as P
from ..wire.badinput import BadInput
from ..wire.defaults import (DEFAULT_HEARTBEAT, DEFAULT_LIVENESS, DEFAULT_MAX_MESSAGE, DEFAULT_MAX_QUEUED_BYTES,
                       STARTUP_GRACE)
from ..wire import serialize
from ..wire.errors import (NO_SUCH_JOB, BackendLost, BackendOffline, Busy, Cancelled, JobUnavailable, PayloadTooLarge,
                           ProtocolMismatch, Refused, UnknownBackend, duration)
from ..wire.serialize import nbytes
from . import waiting as W
from .launch import Launch, Launches
from .state import Remembered, StateStore, remembered_info

log = logging.getLogger("de_magic.broker")

#: Calls held, over all names, while a just (re)started broker waits for backends: bounds memory.
MAX_WAITING = 10_000
#: Longest heartbeat interval a worker may declare (seconds).
MAX_HEARTBEAT = 20.0
#: Shortest secret a worker may choose (bytes): its slots prove with it that they are the worker's.
MIN_SECRET = 16
#: Longest a worker whose connection is up may be silent (seconds): a call may hold its Python GIL that long
#: (its heartbeats wait for the GIL; libzmq's own, in libzmq's I/O thread, do not). Longer: it counts as hung.
CONNECTED_SILENCE = 60.0


@dataclass
class Config:
    url: str = ""
    heartbeat: float = DEFAULT_HEARTBEAT
    liveness: int = DEFAULT_LIVENESS
    max_message_size: int = DEFAULT_MAX_MESSAGE
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    #: backend name -> public keys (Z85) or key names that may register it (the config file's [owners])
    owners: dict[str, frozenset[str]] = field(default_factory=dict)
    curve: bool = False
    #: what each caller may keep waiting for offline backends (with a state directory)
    waiting: W.Bounds = field(default_factory=W.Bounds)
    #: backend name -> how the broker brings a worker of it up while jobs wait for it (the config's [launch])
    launch: dict[str, Launch] = field(default_factory=dict)


def no_key(frame) -> str | None:
    return None


def not_known(address: bytes) -> bool:
    return False


def no_launch(name: str, launch: Launch) -> str:
    return "this broker runs no commands"


class Request:
    """A call the broker holds: waiting in a queue, or running on a worker's slot."""

    __slots__ = ("client", "rid", "body", "size", "service", "pinned", "worker", "slot", "queued", "seq",
                 "deadline", "key", "alias")

    def __init__(self, client: bytes, rid: bytes, body: list, size: int, service: "Service",
                 pinned: "Worker | None", deadline: float | None = None, key: str | None = None):
        self.client, self.rid, self.body, self.size = client, rid, body, size
        self.service, self.pinned = service, pinned
        self.seq = 0  # arrival order among queued calls
        self.worker: Worker | None = None
        self.slot = b""
        self.queued = False
        self.deadline = deadline  # set while it waits for a backend to (re)register
        self.key = key  # the caller's key: checked against the backend's rules, and told to the worker
        self.alias = b""  # what the worker knows the caller by: never the caller's routing id (see _forward)


class Worker:
    """A registered backend process: a control connection, its slots, its calls."""

    __slots__ = ("id", "address", "secret", "key", "service", "capacity", "max_queue", "heartbeat", "idle", "slots",
                 "inflight", "pinned", "expires", "heard", "since", "pid", "host", "calls", "dask", "direct", "direct_key",
                 "direct_local", "usage")

    def __init__(self, msg: P.Ready, address: bytes, key: str | None, service: "Service", expires: float):
        info = msg.info
        self.id, self.address, self.secret, self.key, self.service = msg.worker, address, msg.secret, key, service
        self.capacity = max(1, info.get("capacity", 1))
        self.max_queue = info.get("queue", 1000)
        # a backend under load may beat slowly; it still counts as gone within a minute or so of silence
        self.heartbeat = min(info.get("heartbeat", 0.0), MAX_HEARTBEAT)
        self.idle: list[bytes] = []  # slot addresses ready for a call
        self.slots: set[bytes] = set()
        self.inflight: dict[bytes, Request] = {}  # by the alias the worker knows the call's caller by
        self.pinned: deque[Request] = deque()  # calls waiting for this worker in particular
        self.expires = self.heard = expires  # heard: when it last said anything
        self.since = time.time()
        self.pid, self.host = info.get("pid"), info.get("host")
        self.calls = 0
        self.dask = info.get("dask")  # the Dask cluster its calls run on (daskpool.cluster_info), if any
        self.direct = info.get("direct")  # where it takes direct calls, if it does (backend/direct.py)
        self.direct_key = info.get("direct_key")  # the direct endpoint's own key, without CURVE
        self.direct_local = info.get("direct_local")  # its Unix socket, for callers of its machine and user
        self.usage: dict = {}  # what its sessions and references hold, as its last USAGE said

    def describe(self) -> dict:
        described = {"id": self.id.hex(), "pid": self.pid, "host": self.host, "since": self.since,
                     "capacity": self.capacity, "slots": len(self.slots), "busy": self.busy,
                     "calls": self.calls}
        if self.dask is not None:
            described["dask"] = self.dask
        if self.direct is not None:
            # what a caller needs to call it directly, and to know it is this worker: the key we authenticated
            described["direct"] = {"url": self.direct, "key": self.key or self.direct_key}
            if self.direct_local is not None:
                described["direct"]["local"] = self.direct_local
        described.update(self.usage)
        return described

    @property
    def busy(self) -> int:
        """Calls running: those routed here, or more if slots said BUSY (direct calls, other brokers')."""
        return max(len(self.inflight), len(self.slots) - len(self.idle))

    def where(self) -> str:
        return f"worker {self.id.hex()} (pid {self.pid} on {self.host})"


def contract(info: dict) -> tuple:
    """What every worker of one backend name must agree on: API, codec, code execution, callers."""
    api = json.dumps(info.get("api", {}), separators=(",", ":"), sort_keys=True).encode()
    allowed = info.get("allow_clients")
    return (hashlib.blake2b(api, digest_size=8).hexdigest(), "json" if info.get("codec") == "json" else "pickle",
            bool(info.get("allow_code", False)), None if allowed is None else frozenset(allowed))


class Service:
    """All workers registered under one backend name, the rules they share, and their queue."""

    def __init__(self, name: str):
        self.name = name
        self.workers: list[Worker] = []
        self.queue: deque[Request] = deque()  # unpinned calls, oldest first; cancelled ones stay until popped
        self.waiting = 0  # live queued calls, pinned ones included
        self.dead = 0  # cancelled entries still in the deques
        self.contract: tuple | None = None
        self.owner: str | None = None
        self.api_json = b"{}"
        self.since = time.time()

    @property
    def api_tag(self) -> str:
        return self.contract[0] if self.contract else ""

    @property
    def allowed(self) -> frozenset[str] | None:
        return self.contract[3] if self.contract else None

    def adopt(self, info: dict, owner: str | None) -> None:
        self.contract, self.owner = contract(info), owner
        self.api_json = json.dumps(info.get("api", {}), separators=(",", ":")).encode()

    def pick(self) -> Worker | None:
        """The least busy worker with a free slot."""
        best, load = None, 2.0
        for worker in self.workers:
            if worker.idle:
                busy = worker.busy / worker.capacity  # direct calls and other brokers' count too
                if busy < load:
                    best, load = worker, busy
        return best

    def describe(self, with_api: bool, known_tag: str | None = None, jobs: int = 0) -> bytes:
        """This service as listing JSON; the API is left out when the caller has it already. ``jobs``: how
        many jobs wait at the broker for it (being handed over now)."""
        _, codec, allow_code, _ = self.contract or (None, "pickle", False, None)
        head = {"name": self.name, "allow_code": allow_code, "codec": codec, "since": self.since,
                "api_tag": self.api_tag, "queued": self.waiting, "waiting": jobs,
                "workers": [w.describe() for w in self.workers]}
        text = json.dumps(head, separators=(",", ":")).encode()
        if not with_api or known_tag == self.api_tag:
            return text
        return text[:-1] + b',"api":' + self.api_json + b"}"


class Router:
    """The broker's state and decisions. ``handle``/``tick`` return lists of messages to send,
    each a frame list whose first frame is the routing address.

    ``key_of(frame)`` tells the authenticated public key (Z85) of the peer that
    sent a received frame, or None without CURVE; ``key_names()`` maps keys to
    the names of their key files (for ``allow_clients`` and logs).
    ``connected(address)`` tells whether a peer's connection is up (libzmq's ZMTP
    heartbeats keep that true of a process whose Python is busy); unknown: False.
    ``state`` is a broker's state directory (:class:`~de_magic.broker.state.StateStore`): the backends it served
    before are listed while offline, their names stay their owners', a call of one says since when it is
    offline, and a job started for one waits here until a worker of it registers (:mod:`.waiting`).  Every
    change is written there before any message about it is sent.  Without it nothing is remembered: a name is
    free once its last worker left.
    ``launch(name, launch)`` runs a backend's launch command (:mod:`.launch`); it returns why it could not
    ("" when it ran).
    """

    def __init__(self, config: Config, *, now: float, key_of: Callable = no_key,
                 key_names: Callable[[], dict[str, str]] = dict, connected: Callable[[bytes], bool] = not_known,
                 state: StateStore | None = None, launch: Callable[[str, Launch], str] = no_launch):
        self.config = config
        self.launches, self._run_launch = Launches(config.launch), launch
        self.state = state
        self.remembered: dict[str, Remembered] = state.backends() if state else {}
        self.held = W.WaitingJobs(config.waiting, state.jobs() if state else [])
        self.handing: dict[str, Request] = {}  # backend name -> the held job on its way to a worker of it
        self.key_of, self.key_names, self.connected = key_of, key_names, connected
        self.id = uuid.uuid4().hex[:12]
        self.since = time.time()
        self.host = socket.gethostname()  # for listings: asked once, not per LIST
        self.bad = BadInput(log)
        self.services: dict[str, Service] = {}
        self.workers: dict[bytes, Worker] = {}  # by control address
        self.by_id: dict[bytes, Worker] = {}  # by public worker id
        self.slots: dict[bytes, Worker] = {}  # by slot address
        self.requests: dict[tuple[bytes, bytes], Request] = {}  # queued and running, by (client, request id)
        self.queued_bytes = 0
        self.routed_bytes = 0  # headers and payloads of calls and answers passed on: shows what travelled
        self.waiting_total = 0  # calls waiting for an unknown backend to register
        # backends that were connected before a restart come back within a heartbeat or two
        self.grace_until = now + max(STARTUP_GRACE, config.heartbeat * config.liveness)
        self.next_beat = now + config.heartbeat
        self.next_reap = float("inf")
        self.now = now
        self._out: list[list] = []
        self._arrivals = itertools.count()
        self._aliases = itertools.count(int.from_bytes(os.urandom(7), "big"))
        self.heard: dict[bytes, float] = {}  # caller address -> when it last sent anything (its lease)
        self.caller_lease = admission.caller_lease(config.heartbeat, config.liveness)
        self.next_lease_sweep = now + self.caller_lease
        self._callers: dict | None = None  # the allowed keys last told to direct workers
        self._handlers = {
            P.Call: self._on_call, P.Cancel: self._on_cancel, P.List: self._on_list, P.Query: self._on_query,
            P.Ready: self._on_ready, P.Slot: self._on_slot, P.SlotBusy: self._on_slot_busy,
            P.Heartbeat: self._on_heartbeat, P.Bye: self._on_bye, P.Usage: self._on_usage,
            P.Answer: self._on_answer,
        }

    # -- entry points -------------------------------------------------------------------------

    def handle(self, sender: bytes, frames: list, now: float) -> list[list]:
        """One message from ``sender`` (its frames without the routing address)."""
        out = self._out = []
        self.now = now
        try:
            msg = P.parse(frames, P.AT_BROKER)
            self._handlers[type(msg)](sender, msg, frames)
        except P.ProtocolError as exc:
            self.bad.report("bad message from %s: %s", sender.hex(), exc)
            answer = P.protocol_error_to(sender, exc)
            if answer is not None:
                out.append(answer)
        except Exception as exc:  # noqa: BLE001 - no message may stop the broker: it is bad input, and we live on
            self.bad.failed(f"a message from {sender.hex()}", exc)
        return out

    @property
    def wake_at(self) -> float:
        """When :meth:`tick` has work to do (a heartbeat, or a worker that may have gone silent)."""
        return min(self.next_beat, self.next_reap)

    def tick(self, now: float) -> list[list]:
        """Time passed: reap silent workers; each heartbeat interval, beat and expire waiting calls."""
        out = self._out = []
        self.now = now
        self._reap()
        if now >= self.next_beat:
            self.next_beat = now + self.config.heartbeat
            self.bad.flush()
            out.extend(P.heartbeat_to(w.address) for w in self.workers.values())
            if self.config.curve and self.key_names() is not self._callers:  # the allowed keys changed
                out.extend(self._welcome(w) for w in self.workers.values() if w.direct is not None)
            for service in [s for s in self.services.values() if not s.workers]:
                self._expire_waiting(service)
            if self.held.jobs:
                self._expire_held()
                self._launch([n for n in self.held.backends() if not self._live(n)])
            if now >= self.next_lease_sweep:  # forget callers gone for a lease: the table stays bounded
                self.next_lease_sweep = now + self.caller_lease
                self.heard = {c: t for c, t in self.heard.items() if now - t <= self.caller_lease}
        return out

    def shutdown(self) -> list[list]:
        """Messages for a clean stop: backends register again at once with the next broker."""
        self.bad.flush()
        return [P.disconnect(w.address, "broker stopping") for w in self.workers.values()]

    # -- helpers ------------------------------------------------------------------------------

    def _expires(self, worker: Worker) -> float:
        """When ``worker`` counts as gone if silent: liveness intervals of its heartbeat or ours, the longer
        (it was heard from now)."""
        worker.heard = self.now
        return self.now + max(self.config.heartbeat, worker.heartbeat) * self.config.liveness

    def _error(self, client: bytes, rid: bytes, error_cls, message: str) -> None:
        self._out.append(P.error_to(client, rid, error_cls.kind, message))

    def _allows(self, service: Service, key: str | None) -> bool:
        """Whether the caller with ``key`` may see and call ``service`` (its allow_clients)."""
        return self._admits(service.allowed, key)

    def _admits(self, allowed, key: str | None) -> bool:
        """See :func:`.admission.admits`: one rule for the broker path and the direct endpoint."""
        return admission.admits(allowed, key, self.key_names(), self.config.curve)

    def _who(self, key: str | None) -> str:
        if key is None:
            return "an unauthenticated peer"
        name = self.key_names().get(key)
        return repr(name) if name else f"key {key}"

    # -- clients --------------------------------------------------------------------------------

    def _on_call(self, client: bytes, msg: P.Call, frames: list) -> None:
        rid, name = msg.rid, msg.backend
        self.heard[client] = self.now
        if (client, rid) in self.requests:
            raise admission.duplicate(rid)  # logged as bad input
        size = nbytes(msg.body)
        too_large = admission.too_large(size, self.config.max_message_size, "the broker's")
        if too_large:
            return self._error(client, rid, PayloadTooLarge, too_large)
        service = self.services.get(name)
        key = self.key_of(frames[0])
        if msg.worker == P.BROKER_HELD:
            return self._on_held(client, msg, key)
        if (service is None or not service.workers) and name in self.remembered and not msg.worker:
            header = _header(msg)
            if header.get("op") == "job.start":
                return self._hold(client, msg, size, key, header)
        if service is None or not service.workers:
            return self._wait_for_backend(client, msg, size, key)
        if not self._allows(service, key):
            return self._refuse(client, rid, service, key)
        pinned = None
        if msg.worker:
            pinned = self.by_id.get(msg.worker)
            if pinned is None or pinned.service is not service:
                return self._error(client, rid, BackendLost, admission.gone(msg.worker, name))
        request = Request(client, rid, msg.body, size, service, pinned, key=key)
        self.routed_bytes += size
        worker = pinned if pinned is not None else service.pick()
        if worker is not None and worker.idle:
            self.requests[(client, rid)] = request
            self._forward(worker, request)
        elif self._admit(client, rid, service, size):
            self._enqueue(service, request)

    def _admit(self, client: bytes, rid: bytes, service: Service, size: int) -> bool:
        """Whether a call may wait in the queue: bounded by count per backend, and by bytes overall."""
        room = sum(w.max_queue for w in service.workers) if service.workers else MAX_WAITING
        busy = admission.queue_refusal(service.name, service.waiting, room, sum(w.capacity for w in service.workers),
                                       self.queued_bytes, size, self.config.max_queued_bytes, "the broker")
        if busy:
            self._error(client, rid, Busy, busy)
        return not busy

    def _enqueue(self, service: Service, request: Request) -> None:
        request.queued = True
        request.seq = next(self._arrivals)
        (request.pinned.pinned if request.pinned is not None else service.queue).append(request)
        service.waiting += 1
        self.queued_bytes += request.size
        self.requests[(request.client, request.rid)] = request

    def _settle(self, service: Service, request: Request) -> None:
        """The books of a request leaving its queue."""
        request.queued = False
        service.waiting -= 1
        self.queued_bytes -= request.size
        if request.deadline is not None:
            self.waiting_total -= 1
            request.deadline = None

    def _unqueue(self, service: Service, request: Request) -> None:
        """Drop a queued request (cancelled, failed); its deque entry is skipped when it comes up."""
        self._settle(service, request)
        service.dead += 1
        del self.requests[(request.client, request.rid)]
        if admission.compact_due(service.dead, service.waiting):  # compact, so cancelled calls cannot pile up
            service.queue = deque(r for r in service.queue if r.queued)
            for worker in service.workers:
                worker.pinned = deque(r for r in worker.pinned if r.queued)
            service.dead = 0

    def _wait_for_backend(self, client: bytes, msg: P.Call, size: int, key: str | None) -> None:
        """A call for a backend that is not (yet) registered: just after a restart, wait for it."""
        if self.now >= self.grace_until:
            return self._unknown(client, msg.rid, msg.backend, key)
        if msg.worker:
            return self._error(client, msg.rid, BackendLost, f"worker {msg.worker.hex()} of backend "
                                                             f"{msg.backend!r} is gone (the broker restarted)")
        service = self.services.get(msg.backend) or Service(msg.backend)
        if self.waiting_total >= MAX_WAITING:
            return self._error(client, msg.rid, Busy, "too many calls wait for backends to register")
        if not self._admit(client, msg.rid, service, size):
            return
        self.services[msg.backend] = service
        self.waiting_total += 1
        self._enqueue(service, Request(client, msg.rid, msg.body, size, service, None, self.grace_until, key))

    def _forward(self, worker: Worker, request: Request) -> None:
        # The worker knows the caller by an alias of this call alone: a caller's routing id is a name a
        # hostile backend could claim for itself at this broker (see wire/routingids.py).
        request.worker, request.slot, request.alias = worker, worker.idle.pop(), next(self._aliases).to_bytes(8, "big")
        worker.inflight[request.alias] = request
        worker.calls += 1
        self._out.append(P.work(request.slot, request.alias, request.rid, request.key, request.body))

    def _drain(self, worker: Worker) -> None:
        """Fill the worker's free slots with the oldest calls that may run there (held jobs first: they waited
        longest)."""
        service = worker.service
        self._hand_over(worker)
        while worker.idle and service.waiting:
            for queue in (worker.pinned, service.queue):
                while queue and not queue[0].queued:
                    queue.popleft()
                    service.dead -= 1
            if worker.pinned and (not service.queue or _older(worker.pinned[0], service.queue[0])):
                request = worker.pinned.popleft()
            elif service.queue:
                request = service.queue.popleft()
            else:
                return
            self._settle(service, request)
            if admission.silent(self.heard, request.client, self.now, self.caller_lease):
                # its caller has gone (or stopped asking after it): were it run, live callers would wait behind it
                del self.requests[(request.client, request.rid)]
                self._error(request.client, request.rid, Cancelled, admission.abandoned(self.caller_lease))
                continue
            self._forward(worker, request)

    def _refuse(self, client: bytes, rid: bytes, service: Service, key: str | None) -> None:
        self.bad.report("refused a call of %r from %s (%s): not among the backend's allowed callers",
                        service.name, self._who(key), client.hex())
        self._error(client, rid, Refused, admission.refusal(service.name, key))

    def _remember(self, entry: Remembered) -> None:
        """Keep ``entry`` here and in the state directory; a full disk must not stop the broker (it is logged)."""
        if self.state is None:
            return
        self.remembered[entry.name] = entry
        try:
            self.state.remember(entry)
        except Exception as exc:  # noqa: BLE001 - sqlite3/OSError: the broker serves on, from memory
            self.bad.failed(f"remembering backend {entry.name!r}", exc)

    def _unknown(self, client: bytes, rid: bytes, name: str, key: str | None) -> None:
        entry = self.remembered.get(name)
        if entry is not None and entry.last_seen is not None and self._admits(_allowed(entry), key):
            return self._error(client, rid, BackendOffline, f"backend {name!r} at {self.config.url} is offline since "
                               f"{_when(entry.last_seen)}; `.start()` queues it as a job")
        # only what this caller may see: a restricted backend's name is not for everyone
        live = sorted(n for n, s in self.services.items() if s.workers and self._allows(s, key))
        self._error(client, rid, UnknownBackend,
                    f"no backend named {name!r} at {self.config.url}; live backends: {', '.join(live) or 'none'}")

    def _expire_waiting(self, service: Service) -> None:
        for request in [r for r in service.queue if r.queued and r.deadline is not None and r.deadline <= self.now]:
            self._unqueue(service, request)
            self._unknown(request.client, request.rid, service.name, request.key)
        if not service.waiting:
            self.services.pop(service.name, None)

    def _on_cancel(self, client: bytes, msg: P.Cancel, frames: list) -> None:
        self.heard[client] = self.now
        request = self.requests.get((client, msg.rid))
        if request is None:
            return
        if request.worker is not None:
            self._out.append(P.interrupt(request.worker.address, request.alias, msg.rid))
            return
        self._unqueue(request.service, request)  # never started: it ends here
        self._error(client, msg.rid, Cancelled, "cancelled before it started")

    def _on_query(self, client: bytes, msg: P.Query, frames: list) -> None:
        self.heard[client] = self.now
        requests = self.requests
        self._out.append(P.status(client, admission.query_states(msg, lambda rid: (client, rid) in requests)))

    def _on_list(self, client: bytes, msg: P.List, frames: list) -> None:
        query = msg.query
        only, with_api, known = query.get("name"), query.get("api", True), query.get("known") or {}
        if not (only is None or isinstance(only, str)) or not isinstance(known, dict):
            raise P.ProtocolError("LIST query: 'name' must be a string and 'known' an object", msg.rid)
        key = self.key_of(frames[0])
        services = [s for s in self.services.values()
                    if s.workers and (only is None or s.name == only) and self._allows(s, key)]
        entries = [json.dumps(s.name).encode() + b":" + s.describe(with_api, known.get(s.name), self.held.count(s.name))
                   for s in services]
        entries += [json.dumps(name).encode() + b":" + _describe_offline(entry, with_api, known.get(name),
                                                                         self.held.count(name),
                                                                         self.launches.describe(name))
                    for name, entry in self.remembered.items()
                    if (only is None or name == only) and entry.last_seen is not None
                    and self._admits(_allowed(entry), key)]
        body = b",".join(entries)
        listing = b'{"broker":' + json.dumps(self.describe()).encode() + b',"backends":{' + body + b"}}"
        self._out.append(P.to_client(client, P.REPLY, msg.rid, (b'{"codec":"json"}', listing)))

    def describe(self) -> dict:
        """The broker itself, for listings: counts return to zero when all calls ended (leak tests use them)."""
        c = self.config
        return {"url": c.url, "id": self.id, "since": self.since, "protocol": P.VERSION.decode(),
                "host": self.host, "pid": os.getpid(), "curve": c.curve,
                "max_message_size": c.max_message_size, "max_queued_bytes": c.max_queued_bytes,
                "requests": len(self.requests), "queued": sum(s.waiting for s in self.services.values()),
                "waiting_jobs": sum(map(self.held.count, self.held.backends())),
                "queued_bytes": self.queued_bytes, "routed_bytes": self.routed_bytes, "bad_messages": self.bad.count}

    # -- jobs held for offline backends (see waiting.py) ---------------------------------------

    def _hold(self, client: bytes, msg: P.Call, size: int, key: str | None, header: dict) -> None:
        """A job started while its backend is offline: it waits here, on disk, until a worker of it registers."""
        entry, rid = self.remembered[msg.backend], msg.rid
        if not self._admits(_allowed(entry), key):
            return self._unknown(client, rid, msg.backend, key)
        owner = _owner(key, header)
        refusal = self.held.refusal(owner, size)
        if refusal:
            return self._error(client, rid, Busy, f"job for offline backend {msg.backend!r} refused: {refusal}")
        run, now = header.get("run", "call"), time.time()
        what = "%%remote" if run == "exec" else str(header.get("member", "?"))[:200]
        if run != "exec" and header.get("method"):
            what += f".{str(header['method'])[:200]}"
        job = W.WaitingJob(0, W.new_token(), msg.backend, owner, key, what, contract(entry.info)[0], now,
                           now + self.held.bounds.ttl, size)
        self.state.add_job(job, msg.body)  # on disk before the caller hears of it
        self.held.add(job)
        log.info("job %s of %s waits for backend %r", job.id, self._who(key), msg.backend)
        self._reply(client, rid, header, job.summary(), worker=P.BROKER_HELD.hex())
        self._launch([msg.backend])

    def _reply(self, client: bytes, rid: bytes, header: dict, value, **head) -> None:
        """A REPLY from the broker itself, in the codec the request asked for."""
        if header.get("codec") == serialize.JSON:
            head["codec"], frames = serialize.JSON, serialize.dumps_json(value)
        else:
            frames = serialize.dumps(value)
        self._out.append(P.to_client(client, P.REPLY, rid, (P.dump_header(head), *frames)))

    def _on_held(self, client: bytes, msg: P.Call, key: str | None) -> None:
        """A caller asks after its jobs held here (a CALL pinned to :data:`~de_magic.wire.protocol.BROKER_HELD`)."""
        self.heard[client] = self.now
        header, rid = _header(msg), msg.rid
        op, owner = header.get("op"), _owner(key, header)
        if op == "job.list":
            return self._reply(client, rid, header, [job.summary() for job in self.held.of(owner, msg.backend)])
        if op not in ("job.poll", "job.status", "job.cancel"):
            return self._error(client, rid, ProtocolMismatch, f"the broker holds jobs only: {str(op)[:40]!r} is "
                                                              "not one of its operations")
        job_id = str(header.get("id", ""))
        job = self.held.find(job_id.rpartition(":")[2], owner)
        if job is None or job.backend != msg.backend:
            return self._error(client, rid, JobUnavailable, f"{NO_SUCH_JOB} {job_id[:80]!r} at {self.config.url}")
        handing = self.handing.get(job.backend)
        if job.state == W.SENT and bytes.fromhex(job.worker) not in self.by_id and self.now >= self.grace_until \
                and (handing is None or handing.rid != job.token.encode()):  # sent by a broker before this one
            self._lose(job, f"it was handed to worker {job.worker} of backend {job.backend!r} as the broker "
                            "stopped, and that worker is gone")
        if job.state in (W.SENT, W.DELIVERED):  # the job is the worker's now: the caller asks there
            return self._reply(client, rid, header, {**job.summary(), "progress": 0}, worker=job.worker)
        if op == "job.cancel":  # False: it had ended already
            cancelled = job.state == W.WAITING
            if cancelled:
                self._end(job, W.CANCELLED, "cancelled while it waited for its backend")
            return self._reply(client, rid, header, cancelled)
        if job.state in (W.EXPIRED, W.REFUSED, W.LOST):
            return self._error(client, rid, JobUnavailable, f"job {job.id}: {job.reason}")
        if op == "job.status":
            return self._reply(client, rid, header, job.summary())
        reply = {"status": job.summary()["status"], "progress": 0}
        if job.state == W.CANCELLED:
            reply["error"] = {"kind": Cancelled.kind, "message": f"job {job.id} was {job.reason}"}
        self._reply(client, rid, header, reply)

    def _live(self, name: str) -> bool:
        service = self.services.get(name)
        return service is not None and bool(service.workers)

    def _launch(self, names: list[str]) -> None:
        """Run the launch command of each backend in ``names`` (jobs wait, no worker up) that is due."""
        for name, launch in self.launches.due(names, self.now, time.time()):
            log.info("launching backend %r: %s", name, " ".join(launch.command))
            why = self._run_launch(name, launch)
            if why:
                self.bad.report("could not launch backend %r: %s", name, why)
                self.launches.failed(name, why)

    def _end(self, job: W.WaitingJob, state: str, reason: str) -> None:
        self.held.leave(job, state, time.time(), reason=reason)
        self._store_job(job)
        log.info("job %s for backend %r: %s", job.id, job.backend, reason)

    def _lose(self, job: W.WaitingJob, why: str) -> None:
        self._end(job, W.LOST, f"{why}: whether it ran, and its result, can no longer be known; start it again")

    def _store_job(self, job: W.WaitingJob) -> None:
        try:
            self.state.update_job(job)
        except Exception as exc:  # noqa: BLE001 - sqlite3/OSError: the broker serves on, from memory
            self.bad.failed(f"storing job {job.id}", exc)

    def _hand_over(self, worker: Worker) -> None:
        """Hand the oldest job held for ``worker``'s backend to it, once the one before was taken (FIFO)."""
        service = worker.service
        if not worker.idle or service.name in self.handing:
            return
        while (job := self.held.first(service.name)) is not None:
            if job.api_tag != service.api_tag:
                self._end(job, W.REFUSED, f"backend {service.name!r} came back with a different API than the one it "
                                          "was started for, so it was not run; start it again")
                continue
            if not self._allows(service, job.key):
                self._end(job, W.REFUSED, f"backend {service.name!r} came back refusing calls from this caller's key")
                continue
            break
        if job is None:
            return
        frames = self.state.job_frames(job)
        self.held.leave(job, W.SENT, time.time(), worker=worker.id.hex())
        self.state.update_job(job)  # written before it is sent: a broker killed now never sends it again
        header = P.load_header(frames[0])
        header["token"] = job.token
        request = Request(HELD, job.token.encode(), [P.dump_header(header), *frames[1:]], job.size, service, None,
                          key=job.key)
        self.requests[(HELD, request.rid)] = self.handing[service.name] = request
        self._forward(worker, request)

    def _handed(self, worker: Worker, request: Request, msg: P.Answer) -> None:
        """The worker answered a held job's ``job.start``: it runs there now, or it refused it."""
        service = worker.service
        self.handing.pop(service.name, None)
        job = self.held.jobs.get(request.rid.decode())
        if job is None:
            return
        if msg.type == P.REPLY:
            self.held.leave(job, W.DELIVERED, time.time())
            self._store_job(job)
            log.info("job %s handed to %s", job.id, worker.where())
        else:
            try:
                why = P.load_header(msg.body[0]).get("message", "")
            except P.ProtocolError:
                why = "an unreadable error"
            self._end(job, W.REFUSED, f"backend {service.name!r} refused it: {str(why)[:500]}")

    def _lose_handed(self, request: Request, why: str) -> None:
        self.handing.pop(request.service.name, None)
        job = self.held.jobs.get(request.rid.decode())
        if job is not None:
            self._lose(job, why)

    def _expire_held(self) -> None:
        """Jobs that waited too long end; records past their time, or beyond the bound, are forgotten."""
        wall = time.time()
        gone = []
        for job in self.held.due(wall):
            if job.state == W.WAITING:
                self._end(job, W.EXPIRED, f"it waited {duration(self.held.bounds.ttl)} for backend "
                                          f"{job.backend!r}, which did not come back (--waiting-ttl)")
            elif job.state != W.SENT or self.handing.get(job.backend) is None:
                gone.append(job)
        gone += self.held.surplus()
        if gone:
            for job in gone:
                self.held.forget(job)
            try:
                self.state.forget_jobs(gone)
            except Exception as exc:  # noqa: BLE001 - sqlite3/OSError: forgotten again at the next restart
                self.bad.failed("forgetting old job records", exc)

    # -- workers --------------------------------------------------------------------------------

    def _on_ready(self, address: bytes, msg: P.Ready, frames: list) -> None:
        info = P.check_ready_info(msg.info)
        if not 1 <= len(msg.worker) <= 64 or len(msg.secret) < MIN_SECRET or msg.worker == P.BROKER_HELD:
            raise P.ProtocolError(f"READY: a worker id of 1 to 64 bytes and a secret of at least {MIN_SECRET} "
                                  "bytes are needed")
        key = self.key_of(frames[0])
        if address in self.slots:
            raise P.ProtocolError("READY from a slot connection")
        worker = self.by_id.get(msg.worker)
        if worker is not None and not (compare_digest(worker.secret, msg.secret) and worker.key == key):
            self.bad.report("READY for worker %s from %s (%s) without its secret", msg.worker.hex(), self._who(key),
                            address.hex())
            self._out.append(P.reject(address, f"worker id {msg.worker.hex()} is taken"))
            return
        same = worker is not None and worker.service.name == msg.name and worker.service.contract == contract(info)
        if worker is not None and not same:
            self._remove(worker, "registered again with another name or API")
            worker = None
        previous = self.workers.get(address)
        if previous is not None and previous is not worker:
            self._remove(previous, "registered again as another worker")
        if worker is not None:  # registering again (it lost us for a moment): its calls and slots stand
            self._rebind(worker, address)
            worker.dask = info.get("dask")  # a Dask backend registers again when its cluster scales
            worker.direct, worker.direct_key = info.get("direct"), info.get("direct_key")
            worker.direct_local = info.get("direct_local")
        else:
            worker = self._register(address, msg, key)
            if worker is None:
                return
        worker.expires = self._expires(worker)
        self.next_reap = min(self.next_reap, worker.expires)
        self._out.append(self._welcome(worker))

    def _welcome(self, worker: Worker) -> list:
        info = {"broker": self.id, "heartbeat": self.config.heartbeat, "max_message_size": self.config.max_message_size}
        if worker.direct is not None and self.config.curve:
            # the callers we let in, so that its direct endpoint lets in the same ones (docs/security.md)
            info["callers"] = self._callers = self.key_names()
        return P.welcome(worker.address, info)

    def _register(self, address: bytes, msg: P.Ready, key: str | None) -> Worker | None:
        service = self.services.get(msg.name)
        refusal = self._refusal(service, msg, key)
        if refusal:  # rate-limited: a peer can send these as fast as it likes
            self.bad.report("refused registration of %r from %s (%s): %s", msg.name, self._who(key), address.hex(),
                            refusal)
            self._out.append(P.reject(address, refusal))
            return None
        if service is None:
            service = self.services[msg.name] = Service(msg.name)
        if not service.workers:
            service.adopt(msg.info, key)
            self.launches.registered(msg.name)
            self._refuse_waiting(service)
            self._remember(Remembered(msg.name, key, remembered_info(msg.info)))
        worker = Worker(msg, address, key, service, self.now)
        worker.expires = self._expires(worker)
        service.workers.append(worker)
        self.workers[address] = worker
        self.by_id[msg.worker] = worker
        log.info("worker %s registered for %r (pid %s on %s, %d slots)",
                 msg.worker.hex(), msg.name, worker.pid, worker.host, worker.capacity)
        return worker

    def _refusal(self, service: Service | None, msg: P.Ready, key: str | None) -> str:
        """Why ``msg`` may not register (empty when it may): names belong to their owner, and all
        workers of a name agree on its API and rules."""
        url, name = self.config.url, msg.name
        owners = self.config.owners.get(name)
        if owners is not None and not (key in owners or self.key_names().get(key) in owners):
            return f"backend name {name!r} is reserved at {url} for other keys; choose another name (--name)"
        known = self.remembered.get(name)
        if owners is None and known is not None and known.owner != key:
            seen = "up now" if known.last_seen is None else f"last seen {_when(known.last_seen)}"
            return (f"backend name {name!r} belongs at {url} to another key ({seen}); choose another name (--name)")
        if service is None or not service.workers:
            return ""
        if owners is None and service.owner != key:
            return f"backend name {name!r} is registered at {url} by another key; choose another name (--name)"
        if service.contract != contract(msg.info):
            where = ", ".join(w.where() for w in service.workers[:3])
            return (f"backend name {name!r} is live at {url} with a different API or settings ({where}); "
                    "choose another name (--name), or stop those workers first")
        return ""

    def _refuse_waiting(self, service: Service) -> None:
        """Calls that waited for this backend before its rules were known, from callers it does not allow."""
        for request in [r for r in service.queue if r.queued and not self._allows(service, r.key)]:
            self._unqueue(service, request)
            self._refuse(request.client, request.rid, service, request.key)

    def _rebind(self, worker: Worker, address: bytes) -> None:
        """A worker came back on a new control connection (it reconnected)."""
        if address != worker.address:
            self.workers.pop(worker.address, None)
            worker.address = address
            self.workers[address] = worker

    def _slot_worker(self, address: bytes, msg: P.Slot | P.SlotBusy, frames: list) -> Worker | None:
        """The worker a SLOT or BUSY comes from, if it proves it (its secret, and key)."""
        worker = self.by_id.get(msg.worker)
        if worker is None:
            return None  # e.g. this broker restarted: the worker's control connection registers again first
        if not compare_digest(worker.secret, msg.secret) or worker.key != self.key_of(frames[0]):
            self.bad.report("%s for worker %s from %s without its secret", "SLOT" if isinstance(msg, P.Slot) else "BUSY",
                            msg.worker.hex(), address.hex())
            return None
        return worker

    def _on_slot(self, address: bytes, msg: P.Slot, frames: list) -> None:
        worker = self._slot_worker(address, msg, frames)
        if worker is None:
            return
        if msg.slots:  # the control connection frees slots its direct calls held (see BUSY)
            for slot in self._spoken_for(worker, address, msg):
                self._free(worker, slot)
            return
        owner = self.slots.get(address)
        if owner is worker:
            worker.expires = self._expires(worker)
            self._free(worker, address)  # free again after a call that came through another broker (see BUSY)
        elif owner is None and address not in self.workers and len(worker.slots) < worker.capacity:
            worker.slots.add(address)
            worker.idle.append(address)
            self.slots[address] = worker
            self._drain(worker)
        else:
            self.bad.report("SLOT %s for worker %s refused (taken, or over its capacity)", address.hex(),
                            msg.worker.hex())

    def _free(self, worker: Worker, slot: bytes) -> None:
        if slot not in worker.idle and all(r.slot != slot for r in worker.inflight.values()):
            worker.idle.append(slot)
            self._drain(worker)

    def _on_slot_busy(self, address: bytes, msg: P.SlotBusy, frames: list) -> None:
        """A slot took a call through another broker, or a direct call that runs a while (its worker's control
        connection says so for it): send it none until it says SLOT again. A call sent meanwhile waits at the
        slot and runs after (never lost)."""
        worker = self._slot_worker(address, msg, frames)
        if worker is None:
            return
        for slot in self._spoken_for(worker, address, msg) if msg.slots else (address,):
            if self.slots.get(slot) is worker and slot in worker.idle:
                worker.idle.remove(slot)

    def _spoken_for(self, worker: Worker, address: bytes, msg: P.Slot | P.SlotBusy) -> list[bytes]:
        """The slots a SLOT or BUSY names, if it came from their worker's control connection."""
        if address != worker.address or len(msg.slots) > worker.capacity:
            raise P.ProtocolError("SLOT or BUSY naming slots must come from their worker's control connection")
        return [s for s in msg.slots if self.slots.get(s) is worker]

    def _peer(self, address: bytes) -> Worker | None:
        worker = self.workers.get(address) or self.slots.get(address)
        if worker is None:
            # e.g. this broker restarted: ask the backend to register again
            self._out.append(P.disconnect(address, "unknown worker; register again"))
        else:
            worker.expires = self._expires(worker)
        return worker

    def _on_heartbeat(self, address: bytes, msg: P.Heartbeat, frames: list) -> None:
        self._peer(address)

    def _on_usage(self, address: bytes, msg: P.Usage, frames: list) -> None:
        """A worker's sessions and references changed: listings show them (only its control connection says so)."""
        worker = self.workers.get(address)
        if worker is None:
            raise P.ProtocolError("USAGE from a connection that registered no worker")
        worker.usage = msg.info

    def _on_bye(self, address: bytes, msg: P.Bye, frames: list) -> None:
        worker = self.workers.get(address)
        if worker is not None:
            self._remove(worker, "shut down")

    def _on_answer(self, address: bytes, msg: P.Answer, frames: list) -> None:
        worker = self._peer(address)
        if worker is None:
            return
        request = worker.inflight.get(msg.client)
        if request is None or request.rid != msg.rid or address not in (worker.address, request.slot):
            # answered already (e.g. as lost), or not this connection's: exactly one answer per request
            self.bad.report("worker %s sent %s for request %s it does not hold", worker.id.hex(), msg.type.decode(),
                            msg.rid.hex())
            return
        self.routed_bytes += nbytes(msg.body)
        if msg.type == P.EVENT:
            if request.client == HELD:
                return  # a job.start answers with no events
            self._out.append(P.to_client(request.client, P.EVENT, msg.rid, msg.body))
            return
        del worker.inflight[msg.client]
        del self.requests[(request.client, request.rid)]
        worker.idle.append(request.slot)
        if request.client == HELD:
            self._handed(worker, request, msg)
        else:
            self._out.append(P.to_client(request.client, msg.type, msg.rid, msg.body))
        if worker.service.waiting or self.held.first(worker.service.name) is not None:
            self._drain(worker)

    # -- workers going away ------------------------------------------------------------------

    def _reap(self) -> None:
        """Remove workers silent for ``liveness`` intervals, as soon as that is so rather than at the next
        beat: callers of a killed worker learn it within ``liveness`` heartbeat intervals."""
        if self.now < self.next_reap:
            return
        for worker in [w for w in self.workers.values() if w.expires < self.now]:
            if self.now - worker.heard < CONNECTED_SILENCE and self.connected(worker.address):
                # silent, but its process answers libzmq's heartbeats: a call holds its GIL; ask again in a beat
                worker.expires = self.now + self.config.heartbeat
                continue
            log.warning("%s of %r stopped heartbeating", worker.where(), worker.service.name)
            self._remove(worker, "stopped heartbeating")
        # a lower bound: heartbeats move expiries later, and then this wakes early and looks again
        self.next_reap = min((w.expires for w in self.workers.values()), default=float("inf"))

    def _remove(self, worker: Worker, why: str) -> None:
        service = worker.service
        del self.workers[worker.address]
        del self.by_id[worker.id]
        for slot in worker.slots:
            del self.slots[slot]
        service.workers.remove(worker)
        for request in worker.inflight.values():
            del self.requests[(request.client, request.rid)]
            if request.client == HELD:
                self._lose_handed(request, f"{worker.where()} {why} as it was handed the job")
                continue
            self._error(request.client, request.rid, BackendLost, f"backend {service.name!r} {worker.where()} {why} during the call")
        worker.inflight.clear()
        lost = [r for r in worker.pinned if r.queued]
        if not service.workers:
            lost += [r for r in service.queue if r.queued]
        for request in lost:
            self._unqueue(service, request)
            self._error(request.client, request.rid, BackendLost,
                        f"backend {service.name!r} {worker.where()} {why} before the call started")
        if not service.workers:
            entry = self.remembered.get(service.name)
            if entry is not None:
                entry.last_seen = time.time()
                self._remember(entry)
            if not service.waiting:
                del self.services[service.name]


#: The "caller" of a held job's ``job.start`` on its way to a worker: the broker itself (no peer has an empty
#: routing id), so that the answer stays here.
HELD = b""


def _older(a: Request, b: Request) -> bool:
    """Whether ``a`` was queued before ``b``; queue entries are compared by arrival order."""
    return a.seq < b.seq


def _allowed(entry: Remembered) -> frozenset[str] | None:
    allowed = entry.info.get("allow_clients")
    return None if allowed is None else frozenset(allowed)


def _header(msg: P.Call) -> dict:
    """The JSON header of a call the broker itself reads (a job's: only those for offline backends)."""
    try:
        return P.load_header(msg.body[0])
    except P.ProtocolError as exc:
        raise P.ProtocolError(str(exc), msg.rid) from None


def _owner(key: str | None, header: dict) -> str:
    """Whose a job is, as the backend's jobs go by it: the caller's key, else the user it claims (plaintext)."""
    return key or f"user:{header.get('user', '')}"


def _when(seen: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seen))


def _describe_offline(entry: Remembered, with_api: bool, known_tag: str | None, jobs: int,
                      launch: dict | None) -> bytes:
    """A remembered backend with no worker up, as listing JSON: its last API, since when it is offline, how
    many jobs wait for it, and whether a launch is pending."""
    tag, codec, allow_code, _ = contract(entry.info)
    head = {"name": entry.name, "allow_code": allow_code, "codec": codec, "since": entry.last_seen,
            "offline": entry.last_seen, "api_tag": tag, "queued": 0, "waiting": jobs, "workers": []}
    if launch is not None:
        head["launch"] = launch
    if with_api and known_tag != tag:
        head["api"] = entry.info.get("api", {})
    return json.dumps(head, separators=(",", ":")).encode()
