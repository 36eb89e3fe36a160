"""A backend: plain Python functions and classes, served to a broker.

A :class:`Backend` connects out to the broker, registers its name and API,
and heartbeats from an I/O thread of its own, so heartbeats flow however long
calls run; it re-registers by itself when the broker restarts
(:mod:`.brokerlink`).  Calls run in ``max_workers`` slot threads
(:mod:`.slots`), each with its own connection to the broker: a slot receives a
call, runs it and answers on the same socket (:mod:`.replies`), with no hand-off
between threads on the way (ZeroMQ sockets are not thread-safe, and a hand-off
costs more than a small call).  The broker queues calls while all slots are
busy, and answers "busy" when that queue is full.

Work that must run in the process's main thread (code cells, so that an
interrupt can stop even a ``time.sleep``) goes through a queue that
:meth:`Backend.run` serves (:mod:`.mainthread`).

A backend may register the same workers at several brokers (a consortium's, so
that none is a single point of failure): one control connection per broker, and
each slot thread holds one connection per broker and polls them all.  A slot
runs one call at a time whichever broker sent it, so capacity is shared; it
tells the other brokers ``BUSY`` while it runs a call and ``SLOT`` when it is
free again, and a call another broker sent meanwhile waits at the slot and runs
next (never lost).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

import zmq

from ..wire import protocol as P
from ..wire import serialize
from ..wire.defaults import (DEFAULT_HEARTBEAT, DEFAULT_JOB_BYTES, DEFAULT_JOB_TTL, DEFAULT_LIVENESS, DEFAULT_MAX_MESSAGE,
                             DEFAULT_MAX_JOBS, DEFAULT_MAX_QUEUE, DEFAULT_MAX_QUEUED_BYTES, DEFAULT_REF_BYTES, DEFAULT_SESSION_LEASE,
                             check_doors, check_url, default_url)
from ..wire.badinput import BadInput
from ..wire.errors import Cancelled, ProtocolMismatch, Refused
from ..wire.handshake import WatchedSocket
from ..schema import describe
from ..wire.security import Security, allowed_callers
from . import refs
from .brokerlink import STOP, BrokerLink, Door
from .callcontext import Call, Operation
from .direct import DirectEndpoint
from .directloop import DirectThreads
from .failure import error_header
from .execute import code_operations
from .housekeeping import exit_when_idle, expire_leases
from .jobs import JobStore
from .mainthread import MainThread
from .members import MemberCalls
from .replies import Replies
from .running import Running
from .slots import Slot

log = logging.getLogger("de_magic.backend")


class Backend:
    """Serve ``members`` (name -> function or class) under ``name`` at a broker."""

    def __init__(
        self,
        name: str,
        members: dict[str, object],
        *,
        broker: str | list[str] | None = None,
        max_workers: int | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        heartbeat: float = DEFAULT_HEARTBEAT,
        liveness: int = DEFAULT_LIVENESS,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        allow_code: bool = False,
        doc: str = "",
        context: zmq.Context | None = None,
        security: Security | None = None,
        codec: str = serialize.PICKLE,
        allow_clients: list[str] | None = None,
        session_lease: float = DEFAULT_SESSION_LEASE,
        direct: str | None = None,
        advertise: str | None = None,
        ref_bytes: int = DEFAULT_REF_BYTES,
        job_ttl: float = DEFAULT_JOB_TTL,
        job_bytes: int = DEFAULT_JOB_BYTES,
        job_dir: str | os.PathLike | None = None,
        max_jobs: int = DEFAULT_MAX_JOBS,
        idle_exit: float | None = None,
    ):
        _check_codec(codec, allow_code)
        if idle_exit is not None and not idle_exit > 0:
            raise ValueError(f"--idle-exit must be a positive number of seconds, not {idle_exit}")
        #: Stop after this many seconds without calls (none running): scale to zero (docs/scale.md).
        self.idle_exit = idle_exit
        #: When the last call came (``idle_exit`` counts from it).
        self.last_call = time.monotonic()
        self.name = name
        self.members = dict(members)
        #: The brokers this backend registers at (several: the same workers at each).
        self.brokers = check_doors(broker or default_url())
        self.broker = ", ".join(self.brokers)  # for messages
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self.max_queue = max_queue
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.max_message_size = max_message_size
        #: Bytes of direct calls that may wait for a slot (a broker bounds its queues the same way).
        self.max_queued_bytes = max_queued_bytes
        self.allow_code = allow_code
        brokers = [Door(i, url, (security or Security.resolve(url=url)).check_peer())
                   for i, url in enumerate(self.brokers)]
        #: JSON: nothing from the wire is unpickled, arguments are validated against the schema.
        self.codec = codec
        #: Callers the broker lets use us (Z85 public keys, key names or .key files), None for all.
        self.allow_clients = allowed_callers(allow_clients)
        #: Bad input from peers, counted and logged at a bounded rate (the direct endpoint reports here too).
        self.bad = BadInput(log)
        #: Our public id: listings show it, sessions pin to it.
        self.id = os.urandom(8)
        self.api = describe(name, self.members, doc)
        #: More to say on registering (e.g. ``"dask"``: the cluster's size); see :meth:`announce`.
        self.extra_info: dict = {}
        #: Results kept for their callers (``options(keep=True)``), within ``ref_bytes``.
        self.refs = refs.RefStore(name, ref_bytes, session_lease)
        #: The ``call`` operation (its ``invoke`` runs a member: a Dask pool replaces it).
        self.calls = MemberCalls(name, self.members, self.api, codec, self.refs)
        self.operations: dict[str, Operation] = {"call": Operation(self.calls.call)}
        #: Seconds a ``%%remote`` namespace, or a remote reference, outlives its caller's last request or renewal.
        self.session_lease = session_lease
        self.operations.update(code_operations(name, allow_code, session_lease))
        #: Where to listen for direct calls (``tcp://HOST:PORT``, port 0 for any), None to connect out only.
        self.direct_at = check_url(direct, "--direct", "direct endpoint") if direct else None
        #: The host callers are told to reach it at; None: the bound one, a wildcard's being this machine's name.
        self.advertise = advertise
        #: The direct endpoint, once started: its ``url`` is what listings show.
        self.direct: DirectEndpoint | None = None
        self.operations.update(refs.operations(self.refs, self.operations["call"]))
        #: Calls that outlive their caller, and their kept results (see docs/jobs.md).
        self.jobs = JobStore(self, job_ttl, job_bytes, job_dir, max_jobs)
        self.operations.update(self.jobs.operations())
        self._init_plumbing(context, brokers)

    def _init_plumbing(self, context: zmq.Context | None, brokers: list[Door]) -> None:
        """The link to the ``brokers``, the calls being served and their answers, the main-thread queue."""
        self._ctx = context or zmq.Context.instance()
        #: The brokers we register at, and the I/O thread that talks to them.
        self.link = BrokerLink(self, brokers, self._ctx)
        #: Where slots take calls from: each broker, then the direct endpoint if there is one (see start).
        self.doors = list(self.link.doors)
        #: Set while registered at one broker at least.
        self.registered = self.link.registered
        #: The calls being served (slots', the main thread's, jobs'): where each is executed and interrupted.
        self.running = Running()
        self.replies = Replies(self.id.hex(), self.codec, self.max_message_size, self.link)
        #: A slot thread's sockets (``slots``: one per door), that its calls' answers go out on.
        self.thread_sockets = self.replies.thread_sockets
        #: Calls that must run in the main thread, which run() serves.
        self.main = MainThread()
        self._threads: list[threading.Thread] = []
        #: Set once the backend stops.
        self.stopped = threading.Event()
        #: Why the broker refused our connection (then the backend stops), else None.
        self.failure: str | None = None

    # -- life cycle --------------------------------------------------------

    def start(self) -> "Backend":
        """Connect and serve calls in background threads; main-thread work needs :meth:`run`."""
        security = self.link.doors[0].security
        if self.direct_at is not None:  # first: a taken port or a refused address must stop us here
            self.direct = DirectEndpoint(self, self.direct_at, len(self.link.doors), security, self._ctx,
                                         self.advertise)
            log.info("listening for direct calls at %s%s", self.direct.url, "" if self.direct.local_url is None
                     else f", and for this user's on this machine at {self.direct.local_url}")
            door = Door(self.direct.index, self.direct.url, security, direct=True)
            door.welcomed = True  # always: slots tell it SLOT and BUSY like a broker
            self.doors.append(door)
            self.replies.open_direct(self.direct)
            threads = DirectThreads(self, self.direct, STOP)
            self._thread("direct", threads.loop)
            self._thread("relief", threads.relieve)
        self.link.bind()
        self._thread("io", self.link.loop)
        for index in range(self.max_workers):
            self._threads.append(threading.Thread(target=Slot(self, os.urandom(16), STOP).run,
                                                  name=f"de-magic-{self.name}-{index}", daemon=True))
        self._thread("leases", expire_leases, self)
        if self.idle_exit is not None:
            self._thread("idle", exit_when_idle, self)
        for thread in self._threads:
            thread.start()
        return self

    def _thread(self, role: str, target, *args) -> None:
        self._threads.append(threading.Thread(target=target, args=args, name=f"de-magic-{role}-{self.name}",
                                              daemon=True))

    def run(self) -> None:
        """Serve until :meth:`stop`, SIGTERM or Ctrl-C (or ``idle_exit`` seconds without calls); main-thread work
        runs here."""
        self.main.served.set()  # before start(): work arriving meanwhile waits in the queue
        if not self._threads:
            self.start()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.main.end())
            signal.signal(signal.SIGUSR1, self.running.interrupt_main)
        try:
            self.main.serve(self._execute)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
        if self.failure is not None:
            raise Refused(self.failure)

    def stop(self, timeout: float = 5.0) -> None:
        """Say goodbye to the broker and stop all threads (thread-safe, idempotent)."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        self.main.end()
        if self._threads:
            self.link.stop()
            self.jobs.stop()  # waiting jobs never start
            self.running.cancel_all()  # the broker has told their callers: stop them, don't wait for them
            deadline = time.monotonic() + timeout
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join(max(0.0, deadline - time.monotonic()))
        self.link.close()
        self.replies.close()

    @property
    def stopping(self) -> bool:
        return self.stopped.is_set()

    def fail(self, reason: str) -> None:
        """Stop serving for ``reason``: run() raises it, so it is logged only for a backend served without run()."""
        self.failure = reason
        if not self.main.served.is_set():
            log.error("%s", reason)

    def configure_socket(self, sock: zmq.Socket, security: Security) -> None:
        """Hook for security settings (CURVE) before connecting."""
        security.connect(sock)
        # like the broker's: a frame beyond the limit drops the connection instead of filling memory
        sock.maxmsgsize = self.max_message_size + (1 << 20)

    # -- what the brokers hear and say (the I/O thread's: see brokerlink.py) ---------------------------

    def info(self, door: Door) -> dict:
        """What READY tells ``door``'s broker of us (its listing shows it)."""
        info = {"api": self.api, "capacity": self.max_workers, "queue": self.max_queue,
                "allow_code": self.allow_code, "pid": os.getpid(), "host": socket.gethostname(), "codec": self.codec,
                "heartbeat": self.heartbeat}
        if self.allow_clients is not None:
            info["allow_clients"] = self.allow_clients
        info.update(self.extra_info)
        if self.direct is not None and door.security.key == self.link.doors[0].security.key:
            info["direct"] = self.direct.url  # the broker vouches for it with the key we connect with
            if self.direct.key is not None:  # or without CURVE, with the endpoint's own key, which it passes on
                info["direct_key"] = self.direct.key
            if self.direct.local_url is not None:
                info["direct_local"] = self.direct.local_url  # for callers of this machine and user
        return info

    def welcome(self, door: int, info: dict) -> None:
        """What broker ``door`` says in WELCOME: the callers it lets in (the direct endpoint admits them too)
        and its size limit."""
        if self.direct is not None:
            self.direct.core.vouch(door, info.get("callers"))
        limit = info.get("max_message_size")
        if type(limit) is int and limit > 0:
            self.replies.limit = min(self.max_message_size, limit)
            if self.direct is not None:  # a call the broker would refuse as too large is refused direct too
                self.direct.core.limit = self.replies.limit

    def announce(self) -> None:
        """Register again, at every broker, with the current :attr:`extra_info` (from any thread; the I/O
        thread sends it)."""
        self.link.announce()

    def tell_load(self, busy: list[bytes], free: list[bytes]) -> None:
        """Tell the brokers which slots direct calls hold for a while, and which they freed (see direct.py);
        the I/O thread sends it on the control connections."""
        self.link.tell_load(busy, free)

    # -- slots and the direct endpoint (threads of their own: see slots.py, directloop.py) -------------

    def connect(self, routing_id: bytes, door: Door) -> WatchedSocket:
        """A connection to ``door``'s broker, with ``routing_id`` (a slot's)."""
        return self.link.connect(routing_id, door)

    def slot_message(self, busy: bool) -> list:
        """What a slot tells the brokers: BUSY, or SLOT (free), with our secret."""
        return self.link.slot_message(busy)

    def stop_signal(self) -> zmq.Socket:
        """A socket of the calling thread's own that reads ``STOP`` when the backend stops (and ``HELLO``)."""
        return self.link.stop_signal()

    def run_inline(self, door: int, msg: P.Work) -> None:
        """Serve a call in this thread (the direct endpoint's: see direct.py), as a slot would."""
        try:
            self.serve(door, msg)
        except Exception as exc:  # noqa: BLE001 - whatever arrives, the endpoint's thread must live on
            self.bad.failed("serving a direct call", exc)

    # -- running calls ---------------------------------------------------------------

    def serve(self, door: int, msg: P.Work) -> None:
        """Serve a call that came through ``door`` (a broker, or the direct endpoint), in this thread."""
        try:
            op = self._operation(msg.header)
        except (P.ProtocolError, Refused) as exc:
            kind = Refused.kind if isinstance(exc, Refused) else ProtocolMismatch.kind
            self.answer(P.ERROR, door, msg.client, msg.rid, P.error_header(kind, str(exc)))
            return
        call = Call(self, door, msg.client, msg.rid, msg.header, msg.payload, msg.caller)
        self.last_call = time.monotonic()
        self.running.accept(call)
        if op.main_thread:
            self.main.put(call)
        else:
            self._execute(call)

    def _operation(self, header: dict) -> Operation:
        """The operation a call header asks for, if this backend serves it to this caller."""
        op_name = header.get("op", "call")
        if self.codec == serialize.JSON and op_name != "call" and not (
                str(op_name).startswith("job.") and header.get("codec") == serialize.JSON):
            raise Refused(f"backend {self.name!r} serves only JSON calls and jobs of its members (no-pickle mode)")
        op = self.operations.get(op_name) if isinstance(op_name, str) else None
        if op is None:
            raise P.ProtocolError(f"backend {self.name!r} does not serve {str(op_name)[:40]!r} requests")
        if op.main_thread and not self.main.served.is_set():
            raise Refused(f"backend {self.name!r} runs {op_name!r} requests in its main thread, which "
                          "serves them only within Backend.run() (it was started with start() alone)")
        return op

    def cancel(self, key: tuple[int, bytes, bytes]) -> None:
        """Interrupt the call ``key`` names (see :class:`.running.Running`)."""
        self.running.cancel(key)

    def answer(self, mtype: bytes, door: int, client: bytes, rid: bytes, header: bytes, *payload) -> None:
        """Send a message for a call that came through ``door`` (see :meth:`.replies.Replies.answer`)."""
        self.replies.answer(mtype, door, client, rid, header, *payload)

    def _execute(self, call: Call) -> None:
        """Run a call (where every call runs: :meth:`.running.Running.execute`) and answer it."""
        try:
            result = self.running.execute(call, self.operations[call.header.get("op", "call")])
            header, frames = self.replies.encode(call, result)
            self.answer(P.REPLY, call.door, call.client, call.rid, header, *frames)
        except KeyboardInterrupt as exc:
            header = P.error_header(Cancelled.kind, "interrupted on the backend") if call.cancelled else error_header(exc)
            self.answer(P.ERROR, call.door, call.client, call.rid, header)
        except BaseException as exc:
            self.answer(P.ERROR, call.door, call.client, call.rid, error_header(exc))


def _check_codec(codec: str, allow_code: bool) -> None:
    if codec not in (serialize.PICKLE, serialize.JSON):
        raise ValueError(f"codec must be {serialize.PICKLE!r} or {serialize.JSON!r}, not {codec!r}")
    if codec == serialize.JSON and allow_code:
        raise ValueError("a no-pickle (codec='json') backend cannot allow code execution: "
                         "the point of that mode is that callers cannot run code on it")
