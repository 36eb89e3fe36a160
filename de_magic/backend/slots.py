"""A backend's slots: one thread and one connection per broker for each call it can run at once.

A slot receives a call on its connection to a broker, runs it and answers on the same socket, with no
hand-off between threads (ZeroMQ sockets are not thread-safe, and a hand-off costs more than a small
call).  It runs one call at a time whichever broker sent it: it tells the other brokers ``BUSY`` while
it runs one and ``SLOT`` when it is free again, and a call another broker sent meanwhile waits in its
socket and runs next.  The direct endpoint is one more door to a slot (see :mod:`.direct`).
"""

from __future__ import annotations

import zmq

from ..wire import protocol as P
from ..wire.errors import ProtocolMismatch
from ..wire.framing import recv_frames, send_frames


class Slot:
    """One slot's thread (:meth:`run`). ``backend`` gives ``doors`` (each broker, then the direct endpoint's
    door if any), ``connect(routing_id, door)``, ``stop_signal()``, ``slot_message(busy)``, ``serve``,
    ``answer``, ``heartbeat``, ``direct``, ``bad`` and ``thread_sockets`` (where :meth:`run` leaves this
    thread's sockets, so that answers go out on them)."""

    def __init__(self, backend, routing_id: bytes, stop: bytes):
        self.backend, self.routing_id, self.stop = backend, routing_id, stop

    def run(self) -> None:
        """Receive calls on connections of our own (one per broker) and answer on them, with no hand-off."""
        backend = self.backend
        doors = backend.doors
        brokers = [door for door in doors if not door.direct]
        socks = backend.thread_sockets.slots = [backend.connect(self.routing_id, door) for door in brokers]
        if backend.direct is not None:  # the direct endpoint is one more door to a slot (see direct.py)
            socks.append(backend.direct.connect_slot(self.routing_id))
        control = backend.stop_signal()
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll(backend.heartbeat * 1000))
                if control in events and control.recv() == self.stop:
                    break
                calls = [door for door, sock in zip(doors, socks) if sock in events]
                for door in calls:  # one at a time: the others wait in their sockets
                    self._take_call(door, socks, recv_frames(socks[door.index]))
                if not calls:
                    # welcomed (HELLO), or idle for a heartbeat: make sure the brokers know this slot
                    _tell(doors, socks, backend.slot_message(busy=False))
        finally:
            for sock in socks:
                sock.close(linger=100)
            control.close()

    def _take_call(self, door, socks: list, frames: list) -> None:
        """Serve what ``door``'s broker sent this slot; other brokers hear that the slot is busy meanwhile."""
        # a direct call's slot is reported to the brokers by the I/O thread, if the call runs a while
        others = [] if door.direct else [d for d in self.backend.doors if d is not door]
        _tell(others, socks, self.backend.slot_message(busy=True))
        try:
            self._handle(door.index, frames)
        except Exception as exc:  # noqa: BLE001 - whatever arrives, the slot thread must live on
            self.backend.bad.failed("a call from the broker", exc)
        _tell(others, socks, self.backend.slot_message(busy=False))

    def _handle(self, door: int, frames: list) -> None:
        try:
            msg = P.parse(frames, P.AT_WORKER)
        except P.ProtocolError as exc:
            self.backend.bad.report("bad call: %s", exc)
            if exc.rid is not None and exc.client is not None:
                self.backend.answer(P.ERROR, door, exc.client, exc.rid,
                                    P.error_header(ProtocolMismatch.kind, str(exc)))
            return
        if isinstance(msg, P.Work):  # not e.g. DISCONNECT after a broker restart: the control connection
            self.backend.serve(door, msg)  # registers again


def _tell(doors: list, socks: list, frames: list) -> None:
    """Send ``frames`` on this slot's connection to each broker that welcomed us; never wait for a peer."""
    for door in doors:
        if door.welcomed:
            try:
                send_frames(socks[door.index], frames, zmq.NOBLOCK)
            except zmq.Again:
                pass  # not connected (yet, or refused): the next idle beat tries again
