"""The threads that serve a backend's direct endpoint (:mod:`.direct`): its own, and a relief.

The endpoint's thread reads callers' messages and what the slots say of their calls, and tells the
brokers which slots direct calls hold for a while.  While it runs a quick call inline and that call
runs long after all, the relief thread serves the sockets in its place (see :data:`.direct.RELIEF_AFTER`).
"""

from __future__ import annotations

import math
import threading
import time

import zmq

from ..wire.framing import readable, recv_frames
from .direct import RELIEF_AFTER, DirectEndpoint


class DirectThreads:
    """``backend`` gives ``stop_signal()`` (a socket that reads ``STOP`` when it stops), ``stopping``, and
    ``tell_load(busy, free)`` (slots to report busy and free to the brokers)."""

    def __init__(self, backend, direct: DirectEndpoint, stop: bytes):
        self.backend, self.direct, self.stop = backend, direct, stop
        self.sources = direct.sources()  # (made once: _serve runs at every message)

    def loop(self) -> None:
        """Calls from direct callers and what the slots say of them; news of the load for the brokers."""
        direct = self.direct
        control = self.backend.stop_signal()
        poller = zmq.Poller()
        for sock in [control, *(sock for sock, _ in self.sources)]:
            poller.register(sock, zmq.POLLIN)
        direct.lock.acquire()  # let go of only while a quick call runs inline (see direct.py)
        direct.thread_id = threading.get_ident()
        try:
            while True:
                wait = direct.report_at - time.monotonic()
                events = dict(poller.poll(None if wait == float("inf") else max(0, math.ceil(wait * 1000))))
                if control in events and control.recv() == self.stop:
                    break
                self._serve(events)
                self._tell_load()
        finally:
            control.close()
            direct.close()
            direct.lock.release()

    def relieve(self) -> None:
        """Serve the direct endpoint while a call that was expected to be quick runs inline for long."""
        direct, backend = self.direct, self.backend
        poller = zmq.Poller()
        for sock, _ in self.sources:
            poller.register(sock, zmq.POLLIN)
        while not backend.stopped.wait(RELIEF_AFTER):
            since = direct.inline_since
            if not since or time.monotonic() - since < RELIEF_AFTER or not direct.lock.acquire(blocking=False):
                continue
            direct.relieving = True
            try:
                while direct.inline_since == since and not backend.stopping:
                    events = dict(poller.poll(10))
                    if events:
                        self._serve(events)
                    self._tell_load()
            finally:
                direct.relieving = False
                direct.lock.release()

    def _serve(self, ready: dict) -> None:
        """The messages of the sockets the poll found ``ready``, each drained in a burst, like the broker's
        (see :func:`~de_magic.wire.framing.readable`); what comes meanwhile elsewhere, the next poll finds."""
        for sock, handle in self.sources:
            if sock in ready:
                for _ in range(1000):
                    try:
                        frames = recv_frames(sock, zmq.NOBLOCK)
                    except zmq.Again:  # (a relief thread took it meanwhile)
                        break
                    handle(frames)
                    if not readable(sock):
                        break

    def _tell_load(self) -> None:
        busy, free = self.direct.news(time.monotonic())
        if busy or free:
            self.backend.tell_load(busy, free)
