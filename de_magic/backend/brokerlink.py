"""A backend's link to its brokers: a control connection to each, served by an I/O thread of its own.

The I/O thread says READY at each broker and heartbeats from here, so heartbeats flow however long
calls run; it registers again when a broker falls silent or asks to (``DISCONNECT``: it restarted),
passes a broker's cancels on, and says ``BYE`` when the backend stops.  Threads that own no connection
to a broker (the main thread's calls, jobs, the direct endpoint's news of the load) queue what they
send here, and the I/O thread sends it.  The slots hear from it too: ``HELLO`` when a broker welcomed
us (they say ``SLOT`` there), ``STOP`` when the backend stops.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import zmq

from ..wire import protocol as P
from ..wire.framing import PerThread, recv_frames, send_frames
from ..wire.handshake import WatchedSocket
from ..wire.security import Security
from .usage import Reporter

log = logging.getLogger("de_magic.backend")

#: What the I/O thread tells the slot threads (HELLO: a broker welcomed us, say SLOT there).
HELLO, STOP = b"hello", b"stop"


class Door:
    """One broker this backend registers at (or its direct endpoint, to a slot): its address, keys, control
    connection and state."""

    def __init__(self, index: int, url: str, security: Security, direct: bool = False):
        self.index, self.url, self.security, self.direct = index, url, security, direct
        self.dealer: WatchedSocket | None = None
        self.expires = 0.0  # when the broker counts as silent
        self.welcomed = False  # registered: slots may say SLOT there


class BrokerLink:
    """The control connections to ``doors`` (one per broker) and the I/O thread that serves them (:meth:`loop`).

    ``backend`` gives ``name``, ``id``, ``heartbeat``, ``liveness``, ``refs`` (for the usage reports), ``bad``,
    ``info(door)`` (what READY says), ``configure_socket``, ``cancel(key)``, ``welcome(door, info)`` (what a
    broker's WELCOME says), ``fail(reason)``, ``failure`` and ``main`` (whose ``end`` has run() return).
    """

    def __init__(self, backend, doors: list[Door], context: zmq.Context):
        self.backend, self.doors, self.context = backend, doors, context
        #: Proves to the broker that a slot connection is ours; nobody else ever sees it (docs/protocol.md).
        self._secret = os.urandom(32)
        #: Routing id of our control connections: private and random, so nobody can connect in their place.
        self._control_id = os.urandom(16)
        self._usage = Reporter(backend.refs)
        #: Set while registered at one broker at least.
        self.registered = threading.Event()
        base = f"inproc://de-magic-backend-{id(backend)}"
        self._out_url, self._stop_url, self._slots_url = base + "-out", base + "-stop", base + "-slots"
        self._out = PerThread(self._new_out_socket)

    def bind(self) -> None:
        """Bind the in-process sockets the I/O thread serves (before the threads that connect to them start)."""
        self._pull = self.context.socket(zmq.PULL)
        self._pull.bind(self._out_url)
        self._stop = self.context.socket(zmq.PAIR)
        self._stop.bind(self._stop_url)
        self._slots = self.context.socket(zmq.PUB)
        self._slots.bind(self._slots_url)

    # -- from any thread ------------------------------------------------------------------------

    def connect(self, routing_id: bytes, door: Door, control: bool = False) -> WatchedSocket:
        """A connection to ``door``'s broker with ``routing_id`` (a slot's, or ours for the control connection)."""
        sock = self.context.socket(zmq.DEALER, socket_class=WatchedSocket)
        sock.linger = 0
        sock.routing_id = routing_id
        self.backend.configure_socket(sock, door.security)
        if control:
            # a refused handshake must stop us with its reason, not leave us blocked in a send
            sock.watch(door.url, "backend", door.security)
            sock.sndtimeo = int(self.backend.heartbeat * self.backend.liveness * 1000)
        sock.connect(door.url)
        return sock

    def send(self, door: int, frames: list) -> None:
        """Have the I/O thread send ``frames`` to broker ``door`` (for threads with no connection of their own)."""
        send_frames(self._out.get(), [bytes([door]), *frames])

    def slot_message(self, busy: bool) -> list:
        """What a slot tells the brokers: BUSY, or SLOT (free), with our secret."""
        return (P.slot_busy if busy else P.slot)(self.backend.id, self._secret)

    def tell_load(self, busy: list[bytes], free: list[bytes]) -> None:
        """Tell the brokers which slots are busy for a while, and which are free again."""
        for slots, message in ((busy, P.slot_busy), (free, P.slot)):
            if slots:
                for door in self.doors:
                    self.send(door.index, message(self.backend.id, self._secret, *slots))

    def announce(self) -> None:
        """Register again, at every broker, with what :meth:`Backend.info` says now."""
        for door in self.doors:
            self.send(door.index, self._ready(door))

    def stop_signal(self) -> zmq.Socket:
        """A socket of the calling thread's own that reads ``STOP`` when the backend stops (and ``HELLO``)."""
        control = self.context.socket(zmq.SUB)
        control.subscribe(b"")
        control.connect(self._slots_url)
        return control

    def stop(self) -> None:
        """Have the I/O thread say goodbye to the brokers and end."""
        poke = self.context.socket(zmq.PAIR)
        poke.linger = 0
        poke.connect(self._stop_url)
        poke.send(b"stop")
        poke.close()

    def close(self) -> None:
        """Close the sockets threads queued their messages on (once they are done)."""
        self._out.close()

    # -- the I/O thread ---------------------------------------------------------------------------

    def loop(self) -> None:
        """Registration, heartbeats, cancels, and messages from threads that own no connection."""
        backend, pull, stop, slots = self.backend, self._pull, self._stop, self._slots
        poller = zmq.Poller()
        for sock in (pull, stop):
            poller.register(sock, zmq.POLLIN)
        for door in self.doors:
            self._register(door, poller)
        next_beat = time.monotonic() + backend.heartbeat
        try:
            while backend.failure is None:
                events = dict(poller.poll(max(0.0, next_beat - time.monotonic()) * 1000))
                if stop in events:
                    break
                for door in self.doors:
                    if door.dealer in events:
                        door.expires = time.monotonic() + backend.heartbeat * backend.liveness
                        while door.dealer.poll(0) and backend.failure is None:
                            self._on_control(door, recv_frames(door.dealer))
                if pull in events:
                    self._relay()
                now = time.monotonic()
                if now >= next_beat:
                    if any(self._refused(door) for door in self.doors):
                        break
                    usage = self._usage.due()  # at most once per heartbeat, and only when it changed
                    for door in self.doors:
                        self._send_control(door, P.heartbeat(), zmq.NOBLOCK)
                        if usage is not None and door.welcomed:
                            self._send_control(door, usage, zmq.NOBLOCK)
                    next_beat = now + backend.heartbeat
                    backend.bad.flush()
                for door in self.doors:
                    if now >= door.expires:
                        if door.welcomed:
                            log.warning("broker %s silent for %.1f s; reconnecting", door.url,
                                        backend.heartbeat * backend.liveness)
                        self._register(door, poller)
        finally:
            self.registered.clear()
            slots.send(STOP)
            for door in self.doors:
                door.welcomed = False
                self._send_control(door, P.bye(), zmq.NOBLOCK)
                door.dealer.close(linger=100)
            for sock in (pull, stop, slots):
                sock.close()
            if backend.failure is not None:
                backend.main.end()  # run() returns, and raises Refused with the reason

    def _ready(self, door: Door) -> list:
        return P.ready(self.backend.name, self.backend.id, self._secret, self.backend.info(door))

    def _register(self, door: Door, poller: zmq.Poller) -> None:
        """A fresh control connection to ``door``'s broker (closing the old one) that says READY."""
        self._welcome(door, False)
        if door.dealer is not None:
            poller.unregister(door.dealer)
            door.dealer.close(linger=0)
        door.dealer = self.connect(self._control_id, door, control=True)
        poller.register(door.dealer, zmq.POLLIN)
        door.expires = time.monotonic() + self.backend.heartbeat * self.backend.liveness
        self._send_control(door, self._ready(door), zmq.NOBLOCK)

    def _relay(self) -> None:
        """Send what threads without a connection of their own queued, events before answers, each to the
        broker of its call (the first frame says which).

        Threads send through sockets of their own, which the PULL reads round-robin:
        answers go after the events read with them, so no event trails its answer.
        """
        answers = []
        for _ in range(1000):
            if not self._pull.poll(0):
                break
            door, *frames = recv_frames(self._pull)
            msg = P.parse(frames, P.AT_BROKER)  # an answer, an event, READY again (see announce), SLOT or BUSY
            dealer = self.doors[door.bytes[0]].dealer
            if isinstance(msg, P.Answer) and msg.type == P.EVENT:
                send_frames(dealer, frames)
            else:
                answers.append((dealer, frames))
        for dealer, frames in answers:
            send_frames(dealer, frames)

    def _on_control(self, door: Door, frames: list) -> None:
        try:
            self._handle_control(door, P.parse(frames, P.AT_WORKER))
        except P.ProtocolError as exc:
            self.backend.bad.report("bad message from broker: %s", exc)
        except Exception as exc:  # noqa: BLE001 - whatever a broker sends, the I/O thread must live on
            self.backend.bad.failed("a message from the broker", exc)

    def _handle_control(self, door: Door, msg) -> None:
        backend = self.backend
        if isinstance(msg, P.Interrupt):
            backend.cancel((door.index, msg.client, msg.rid))
        elif isinstance(msg, P.Welcome):
            backend.welcome(door.index, msg.info)
            if not door.welcomed:
                log.info("registered %r at %s", backend.name, door.url)
                self._usage.resend()
            self._welcome(door, True)
            self._slots.send(HELLO)
        elif isinstance(msg, P.Reject):
            backend.fail(f"the broker at {door.url} refused to register {backend.name!r}: {msg.reason}")
        elif isinstance(msg, P.Disconnect):
            log.info("broker %s asks to register again: %s", door.url, msg.reason)
            self._welcome(door, False)
            self._send_control(door, self._ready(door), zmq.NOBLOCK)

    def _send_control(self, door: Door, frames: list, flags: int = 0) -> None:
        """Send on the control connection; a broker that takes nothing for a while costs the message."""
        try:
            send_frames(door.dealer, frames, flags)
        except zmq.Again:
            log.warning("broker %s takes no messages; dropped one", door.url)

    def _welcome(self, door: Door, welcomed: bool) -> None:
        door.welcomed = welcomed
        if any(d.welcomed for d in self.doors):
            self.registered.set()
        else:
            self.registered.clear()

    def _refused(self, door: Door) -> bool:
        """Whether the broker refused the control connection; if so, say why (run() stops: see :meth:`loop`)."""
        failure = door.dealer.handshake_failure()
        if failure is None:
            return False
        self.backend.fail(failure)
        return True

    def _new_out_socket(self) -> zmq.Socket:
        sock = self.context.socket(zmq.PUSH)
        sock.linger = 1000
        sock.connect(self._out_url)
        return sock
