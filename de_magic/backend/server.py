"""A backend: plain Python functions and classes, served to a broker.

A :class:`Backend` connects out to the broker, registers its name and API,
and heartbeats from an I/O thread of its own, so heartbeats flow however long
calls run; it re-registers by itself when the broker restarts.  Calls run in
``max_workers`` slot threads, each with its own connection to the broker: a
slot receives a call, runs it and answers on the same socket, with no hand-off
between threads on the way (ZeroMQ sockets are not thread-safe, and a hand-off
costs more than a small call).  The broker queues calls while all slots are
busy, and answers "busy" when that queue is full.

Work that must run in the process's main thread (code cells, so that an
interrupt can stop even a ``time.sleep``) goes through a queue that
:meth:`Backend.run` serves.

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
import queue
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
from ..wire.errors import Cancelled, PayloadTooLarge, ProtocolMismatch, Refused
from ..wire.handshake import WatchedSocket
from ..schema import describe
from ..wire.security import Security, allowed_callers
from ..wire.framing import PerThread, recv_frames, send_frames
from . import refs, shell
from .callcontext import Call, Operation
from .direct import DirectEndpoint
from .directloop import DirectThreads
from .failure import error_header
from .execute import code_operations
from .jobs import JobStore
from .members import MemberCalls
from .running import Running
from .slots import Slot
from .usage import Reporter

log = logging.getLogger("de_magic.backend")

# what the I/O thread tells the slot threads (HELLO: a broker welcomed us, say SLOT there)
_HELLO, _STOP = b"hello", b"stop"


class Door:
    """One broker this backend registers at (or its direct endpoint, to a slot): its address, keys, control
    connection and state."""

    def __init__(self, index: int, url: str, security: Security, direct: bool = False):
        self.index, self.url, self.security, self.direct = index, url, security, direct
        self.dealer: WatchedSocket | None = None
        self.expires = 0.0  # when the broker counts as silent
        self.welcomed = False  # registered: slots may say SLOT there

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
        self._last_call = time.monotonic()
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
        self._doors = [Door(i, url, (security or Security.resolve(url=url)).check_peer())
                       for i, url in enumerate(self.brokers)]
        #: Where slots take calls from: each broker, then the direct endpoint if there is one (see start).
        self.doors = list(self._doors)
        #: JSON: nothing from the wire is unpickled, arguments are validated against the schema.
        self.codec = codec
        #: Callers the broker lets use us (Z85 public keys, key names or .key files), None for all.
        self.allow_clients = allowed_callers(allow_clients)
        #: Bad input from peers, counted and logged at a bounded rate (the direct endpoint reports here too).
        self.bad = BadInput(log)
        #: Our public id: listings show it, sessions pin to it.
        self.id = os.urandom(8)
        #: Proves to the broker that a slot connection is ours; nobody else ever sees it (docs/protocol.md).
        self._secret = os.urandom(32)
        #: Routing ids of our connections: private and random, so nobody can connect in their place.
        self._control_id = os.urandom(16)
        #: The broker's limit, learnt at registration: a larger answer would be cut off in transit.
        self._limit = max_message_size
        self.api = describe(name, self.members, doc)
        #: More to say on registering (e.g. ``"dask"``: the cluster's size); see :meth:`announce`.
        self.extra_info: dict = {}
        self._reply_header = P.dump_header({"codec": codec, "worker": self.id.hex()})
        # a caller that sent JSON unpickles nothing (the HTTP gateway, other languages): it is answered in JSON
        self._json_reply_header = P.dump_header({"codec": serialize.JSON, "worker": self.id.hex()})
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
        self._usage = Reporter(self.refs)
        #: Calls that outlive their caller, and their kept results (see docs/jobs.md).
        self.jobs = JobStore(self, job_ttl, job_bytes, job_dir, max_jobs)
        self.operations.update(self.jobs.operations())
        self._init_plumbing(context)

    def _init_plumbing(self, context: zmq.Context | None) -> None:
        """The calls being served, the main-thread queue, and the in-process sockets between threads."""
        self._ctx = context or zmq.Context.instance()
        #: The calls being served (slots', the main thread's, jobs'): where each is executed and interrupted.
        self.running = Running()
        self._main_jobs: queue.SimpleQueue = queue.SimpleQueue()
        #: A slot thread's sockets (``slots``: one per door), that its calls' answers go out on.
        self.thread_sockets = threading.local()
        base = f"inproc://de-magic-backend-{id(self)}"
        self._out_url, self._stop_url, self._slots_url = base + "-out", base + "-stop", base + "-slots"
        self._out = PerThread(self._new_out_socket)
        self._threads: list[threading.Thread] = []
        #: Set once the backend stops.
        self.stopped = threading.Event()
        #: Set while registered at one broker at least.
        self.registered = threading.Event()
        #: Why the broker refused our connection (then the backend stops), else None.
        self.failure: str | None = None
        #: Set while run() serves main-thread work; without it such work would wait for ever.
        self._main_served = threading.Event()

    # -- life cycle --------------------------------------------------------

    def start(self) -> "Backend":
        """Connect and serve calls in background threads; main-thread work needs :meth:`run`."""
        if self.direct_at is not None:  # first: a taken port or a refused address must stop us here
            self.direct = DirectEndpoint(self, self.direct_at, len(self._doors), self._doors[0].security, self._ctx,
                                         self.advertise)
            log.info("listening for direct calls at %s", self.direct.url)
            door = Door(self.direct.index, self.direct.url, self._doors[0].security, direct=True)
            door.welcomed = True  # always: slots tell it SLOT and BUSY like a broker
            self.doors.append(door)
            self._direct_out = PerThread(self._new_direct_socket)
            threads = DirectThreads(self, self.direct, _STOP)
            self._threads.append(threading.Thread(target=threads.loop, name=f"de-magic-direct-{self.name}",
                                                  daemon=True))
            self._threads.append(threading.Thread(target=threads.relieve, name=f"de-magic-relief-{self.name}",
                                                  daemon=True))
        pull = self._ctx.socket(zmq.PULL)
        pull.bind(self._out_url)
        stop = self._ctx.socket(zmq.PAIR)
        stop.bind(self._stop_url)
        slots = self._ctx.socket(zmq.PUB)
        slots.bind(self._slots_url)
        self._threads.append(threading.Thread(
            target=self._io_loop, args=(pull, stop, slots), name=f"de-magic-io-{self.name}", daemon=True))
        for index in range(self.max_workers):
            self._threads.append(threading.Thread(target=Slot(self, os.urandom(16), _STOP).run,
                                                  name=f"de-magic-{self.name}-{index}", daemon=True))
        self._threads.append(threading.Thread(target=self._expire_leases, name=f"de-magic-leases-{self.name}",
                                              daemon=True))
        if self.idle_exit is not None:
            self._threads.append(threading.Thread(target=self._exit_when_idle, name=f"de-magic-idle-{self.name}",
                                                  daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def _expire_leases(self) -> None:
        """End ``%%remote`` namespaces and references whose caller is gone, now and then (a lease's tenth, at
        most a minute)."""
        while not self.stopped.wait(min(self.session_lease / 10, 60.0)):
            for key in shell.expire(self.session_lease):
                log.info("ended session %s: its caller was silent for more than %g s", key[:8], self.session_lease)
            dropped = self.refs.expire()
            if dropped:
                log.info("released %d reference(s): their caller was silent for more than %g s", dropped,
                         self.session_lease)

    def _exit_when_idle(self) -> None:
        """Stop once no call came for ``idle_exit`` seconds and none runs (a job counts while it runs): a backend
        in a batch allocation gives it back when nobody uses it."""
        while not self.stopped.wait(min(1.0, self.idle_exit / 4)):
            now = time.monotonic()
            if len(self.running):
                self._last_call = now
            elif now - self._last_call >= self.idle_exit:
                log.info("no calls for %g s: stopping (--idle-exit)", self.idle_exit)
                if self._main_served.is_set():
                    self._main_jobs.put(None)  # run() stops us, in the main thread, saying goodbye to the broker
                else:
                    threading.Thread(target=self.stop, name=f"de-magic-stop-{self.name}").start()
                return

    def run(self) -> None:
        """Serve until :meth:`stop`, SIGTERM or Ctrl-C (or ``idle_exit`` seconds without calls); main-thread work
        runs here."""
        self._main_served.set()  # before start(): work arriving meanwhile waits in the queue
        if not self._threads:
            self.start()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self._main_jobs.put(None))
            signal.signal(signal.SIGUSR1, self.running.interrupt_main)
        try:
            while True:
                job = self._main_jobs.get()
                if job is None:
                    break
                self._execute(job)
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
        self._main_jobs.put(None)
        if self._threads:
            poke = self._ctx.socket(zmq.PAIR)
            poke.linger = 0
            poke.connect(self._stop_url)
            poke.send(b"stop")
            poke.close()
            self.jobs.stop()  # waiting jobs never start
            self.running.cancel_all()  # the broker has told their callers: stop them, don't wait for them
            deadline = time.monotonic() + timeout
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join(max(0.0, deadline - time.monotonic()))
        self._out.close()
        if self.direct is not None:
            self._direct_out.close()

    def configure_socket(self, sock: zmq.Socket, security: Security) -> None:
        """Hook for security settings (CURVE) before connecting."""
        security.connect(sock)
        # like the broker's: a frame beyond the limit drops the connection instead of filling memory
        sock.maxmsgsize = self.max_message_size + (1 << 20)

    # -- the control connection (I/O thread) -------------------------------------

    def _connect(self, routing_id: bytes, door: Door, control: bool = False) -> WatchedSocket:
        sock = self._ctx.socket(zmq.DEALER, socket_class=WatchedSocket)
        sock.linger = 0
        sock.routing_id = routing_id
        self.configure_socket(sock, door.security)
        if control:
            # a refused handshake must stop us with its reason, not leave us blocked in a send
            sock.watch(door.url, "backend", door.security)
            sock.sndtimeo = int(self.heartbeat * self.liveness * 1000)
        sock.connect(door.url)
        return sock

    def _send_control(self, door: Door, frames: list, flags: int = 0) -> None:
        """Send on the control connection; a broker that takes nothing for a while costs the message."""
        try:
            send_frames(door.dealer, frames, flags)
        except zmq.Again:
            log.warning("broker %s takes no messages; dropped one", door.url)

    def _welcome(self, door: Door, welcomed: bool) -> None:
        door.welcomed = welcomed
        if any(d.welcomed for d in self._doors):
            self.registered.set()
        else:
            self.registered.clear()

    def _refused(self, door: Door) -> bool:
        """Whether the broker refused the control connection; if so, log why and have run() stop."""
        failure = door.dealer.handshake_failure()
        if failure is None:
            return False
        self._fail(failure)
        self._main_jobs.put(None)
        return True

    def _fail(self, reason: str) -> None:
        """Stop serving for ``reason``: run() raises it, so it is logged only for a backend served without run()."""
        self.failure = reason
        if not self._main_served.is_set():
            log.error("%s", reason)

    def _ready_frames(self, door: Door) -> list:
        info = {"api": self.api, "capacity": self.max_workers, "queue": self.max_queue,
                "allow_code": self.allow_code, "pid": os.getpid(), "host": socket.gethostname(), "codec": self.codec,
                "heartbeat": self.heartbeat}
        if self.allow_clients is not None:
            info["allow_clients"] = self.allow_clients
        info.update(self.extra_info)
        if self.direct is not None and door.security.key == self._doors[0].security.key:
            info["direct"] = self.direct.url  # the broker vouches for it with the key we connect with
            if self.direct.key is not None:  # or without CURVE, with the endpoint's own key, which it passes on
                info["direct_key"] = self.direct.key
        return P.ready(self.name, self.id, self._secret, info)

    def announce(self) -> None:
        """Register again, at every broker, with the current :attr:`extra_info` (from any thread; the I/O
        thread sends it)."""
        for door in self._doors:
            send_frames(self._out.get(), [bytes([door.index]), *self._ready_frames(door)])

    def _io_loop(self, pull: zmq.Socket, stop: zmq.Socket, slots: zmq.Socket) -> None:
        """Registration, heartbeats, cancels, and messages from threads that own no connection."""
        poller = zmq.Poller()
        for sock in (pull, stop):
            poller.register(sock, zmq.POLLIN)
        for door in self._doors:
            self._register(door, poller)
        next_beat = time.monotonic() + self.heartbeat
        try:
            while self.failure is None:
                events = dict(poller.poll(max(0.0, next_beat - time.monotonic()) * 1000))
                if stop in events:
                    break
                for door in self._doors:
                    if door.dealer in events:
                        door.expires = time.monotonic() + self.heartbeat * self.liveness
                        while door.dealer.poll(0) and self.failure is None:
                            self._on_control(door, slots, recv_frames(door.dealer))
                if pull in events:
                    self._relay(pull)
                now = time.monotonic()
                if now >= next_beat:
                    if any(self._refused(door) for door in self._doors):
                        break
                    usage = self._usage.due()  # at most once per heartbeat, and only when it changed
                    for door in self._doors:
                        self._send_control(door, P.heartbeat(), zmq.NOBLOCK)
                        if usage is not None and door.welcomed:
                            self._send_control(door, usage, zmq.NOBLOCK)
                    next_beat = now + self.heartbeat
                    self.bad.flush()
                for door in self._doors:
                    if now >= door.expires:
                        if door.welcomed:
                            log.warning("broker %s silent for %.1f s; reconnecting", door.url,
                                        self.heartbeat * self.liveness)
                        self._register(door, poller)
        finally:
            self.registered.clear()
            slots.send(_STOP)
            for door in self._doors:
                door.welcomed = False
                self._send_control(door, P.bye(), zmq.NOBLOCK)
                door.dealer.close(linger=100)
            for sock in (pull, stop, slots):
                sock.close()
            if self.failure is not None:
                self._main_jobs.put(None)  # run() returns, and raises Refused with the reason

    # -- the direct endpoint (threads of its own: see directloop.py) ----------------------------------

    def run_inline(self, door: int, msg: P.Work) -> None:
        """Serve a call in this thread (the direct endpoint's: see direct.py), as a slot would."""
        try:
            self.serve(door, msg)
        except Exception as exc:  # noqa: BLE001 - whatever arrives, the endpoint's thread must live on
            self.bad.failed("serving a direct call", exc)

    def stop_signal(self) -> zmq.Socket:
        """A socket of the calling thread's own that reads ``_STOP`` when the backend stops (and ``_HELLO``)."""
        control = self._ctx.socket(zmq.SUB)
        control.subscribe(b"")
        control.connect(self._slots_url)
        return control

    def tell_load(self, busy: list[bytes], free: list[bytes]) -> None:
        """Tell the brokers which slots direct calls hold for a while, and which they freed (see direct.py);
        the I/O thread sends it on the control connections."""
        for slots, message in ((busy, P.slot_busy), (free, P.slot)):
            if slots:
                for door in self._doors:
                    send_frames(self._out.get(), [bytes([door.index]), *message(self.id, self._secret, *slots)])

    def _register(self, door: Door, poller: zmq.Poller) -> None:
        """A fresh control connection to ``door``'s broker (closing the old one) that says READY."""
        self._welcome(door, False)
        if door.dealer is not None:
            poller.unregister(door.dealer)
            door.dealer.close(linger=0)
        door.dealer = self._connect(self._control_id, door, control=True)
        poller.register(door.dealer, zmq.POLLIN)
        door.expires = time.monotonic() + self.heartbeat * self.liveness
        self._send_control(door, self._ready_frames(door), zmq.NOBLOCK)

    def _relay(self, pull: zmq.Socket) -> None:
        """Send what threads without a connection of their own queued, events before answers, each to the
        broker of its call (the first frame says which).

        Threads send through sockets of their own, which the PULL reads round-robin:
        answers go after the events read with them, so no event trails its answer.
        """
        answers = []
        for _ in range(1000):
            if not pull.poll(0):
                break
            door, *frames = recv_frames(pull)
            msg = P.parse(frames, P.AT_BROKER)  # an answer, an event, READY again (see announce), SLOT or BUSY
            dealer = self._doors[door.bytes[0]].dealer
            if isinstance(msg, P.Answer) and msg.type == P.EVENT:
                send_frames(dealer, frames)
            else:
                answers.append((dealer, frames))
        for dealer, frames in answers:
            send_frames(dealer, frames)

    def _on_control(self, door: Door, slots: zmq.Socket, frames: list) -> None:
        try:
            self._handle_control(door, slots, P.parse(frames, P.AT_WORKER))
        except P.ProtocolError as exc:
            self.bad.report("bad message from broker: %s", exc)
        except Exception as exc:  # noqa: BLE001 - whatever a broker sends, the I/O thread must live on
            self.bad.failed("a message from the broker", exc)

    def _handle_control(self, door: Door, slots: zmq.Socket, msg) -> None:
        if isinstance(msg, P.Interrupt):
            self.cancel((door.index, msg.client, msg.rid))
        elif isinstance(msg, P.Welcome):
            if self.direct is not None:
                self.direct.core.vouch(door.index, msg.info.get("callers"))
            limit = msg.info.get("max_message_size")
            if type(limit) is int and limit > 0:
                self._limit = min(self.max_message_size, limit)
                if self.direct is not None:  # a call the broker would refuse as too large is refused direct too
                    self.direct.core.limit = self._limit
            if not door.welcomed:
                log.info("registered %r at %s", self.name, door.url)
                self._usage.resend()
            self._welcome(door, True)
            slots.send(_HELLO)
        elif isinstance(msg, P.Reject):
            self._fail(f"the broker at {door.url} refused to register {self.name!r}: {msg.reason}")
        elif isinstance(msg, P.Disconnect):
            log.info("broker %s asks to register again: %s", door.url, msg.reason)
            self._welcome(door, False)
            self._send_control(door, self._ready_frames(door), zmq.NOBLOCK)

    # -- slots (threads of their own: see slots.py) ---------------------------------------------------

    def connect(self, routing_id: bytes, door: "Door") -> WatchedSocket:
        """A connection to ``door``'s broker, with ``routing_id`` (a slot's)."""
        return self._connect(routing_id, door)

    def slot_message(self, busy: bool) -> list:
        """What a slot tells the brokers: BUSY, or SLOT (free), with our secret."""
        return (P.slot_busy if busy else P.slot)(self.id, self._secret)

    def serve(self, door: int, msg: P.Work) -> None:
        """Serve a call that came through ``door`` (a broker, or the direct endpoint), in this thread."""
        try:
            op = self._operation(msg.header)
        except (P.ProtocolError, Refused) as exc:
            kind = Refused.kind if isinstance(exc, Refused) else ProtocolMismatch.kind
            self.answer(P.ERROR, door, msg.client, msg.rid, P.error_header(kind, str(exc)))
            return
        call = Call(self, door, msg.client, msg.rid, msg.header, msg.payload, msg.caller)
        self._last_call = time.monotonic()
        self.running.accept(call)
        if op.main_thread:
            self._main_jobs.put(call)
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
        if op.main_thread and not self._main_served.is_set():
            raise Refused(f"backend {self.name!r} runs {op_name!r} requests in its main thread, which "
                          "serves them only within Backend.run() (it was started with start() alone)")
        return op

    def cancel(self, key: tuple[int, bytes, bytes]) -> None:
        """Interrupt the call ``key`` names (see :class:`.running.Running`)."""
        self.running.cancel(key)

    @property
    def stopping(self) -> bool:
        return self.stopped.is_set()

    # -- running calls ---------------------------------------------------------------

    def answer(self, mtype: bytes, door: int, client: bytes, rid: bytes, header: bytes, *payload) -> None:
        """Send a message for a call that came through broker ``door``: on this thread's slot connection
        to it, else via the I/O thread."""
        size = len(header) + serialize.nbytes(payload)
        if size > self._limit:  # it would be cut off in transit, and the caller would wait for ever
            mtype, header, payload = self._too_large(mtype, size)
        frames = P.answer(mtype, client, rid, header, payload)
        slots = getattr(self.thread_sockets, "slots", None)
        if slots is not None:
            send_frames(slots[door], frames)
        elif self.direct is not None and door == self.direct.index:
            # a call run inline goes straight out; other threads' go through the direct thread, in order
            if not self.direct.deliver(P.Answer(mtype, client, rid, [header, *payload])):
                send_frames(self._direct_out.get(), frames)
        else:
            send_frames(self._out.get(), [bytes([door]), *frames])

    def _too_large(self, mtype: bytes, size: int) -> tuple[bytes, bytes, tuple]:
        """What to send instead of a message over the size limit: an error, or for an event a note."""
        limit = f"over the maximum message size of {self._limit} bytes"
        if mtype == P.EVENT:
            note = f"[de-magic: left out an output of {size} bytes, {limit}]\n"
            return P.EVENT, P.dump_header({"event": "stream", "name": "stderr", "text": note}), ()
        return P.ERROR, P.error_header(PayloadTooLarge.kind, f"the answer is {size} bytes, {limit}"), ()

    def _new_direct_socket(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 1000
        sock.connect(self.direct.slots_url)
        return sock

    def _new_out_socket(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.PUSH)
        sock.linger = 1000
        sock.connect(self._out_url)
        return sock

    def _execute(self, call: Call) -> None:
        """Run a call (where every call runs: :meth:`.running.Running.execute`) and answer it."""
        try:
            result = self.running.execute(call, self.operations[call.header.get("op", "call")])
            header, frames = self._encode_result(call, result)
            self.answer(P.REPLY, call.door, call.client, call.rid, header, *frames)
        except KeyboardInterrupt as exc:
            header = P.error_header(Cancelled.kind, "interrupted on the backend") if call.cancelled else error_header(exc)
            self.answer(P.ERROR, call.door, call.client, call.rid, header)
        except BaseException as exc:
            self.answer(P.ERROR, call.door, call.client, call.rid, error_header(exc))

    def _encode_result(self, call: Call, result) -> tuple[bytes, list]:
        in_json = self.codec == serialize.JSON or call.header.get("codec") == serialize.JSON
        frames = serialize.dumps_json(result) if in_json else serialize.dumps(result)
        size = serialize.nbytes(frames)
        if size > self._limit:
            raise PayloadTooLarge(f"the result is {size} bytes, over the maximum message size of {self._limit} bytes "
                                  "(the broker's or this backend's)")
        return (self._json_reply_header if in_json else self._reply_header), frames


def _check_codec(codec: str, allow_code: bool) -> None:
    if codec not in (serialize.PICKLE, serialize.JSON):
        raise ValueError(f"codec must be {serialize.PICKLE!r} or {serialize.JSON!r}, not {codec!r}")
    if codec == serialize.JSON and allow_code:
        raise ValueError("a no-pickle (codec='json') backend cannot allow code execution: "
                         "the point of that mode is that callers cannot run code on it")
