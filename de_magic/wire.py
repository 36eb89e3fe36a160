"""Socket helpers that broker, backends and clients share: fast multipart sends, per-thread sockets.

pyzmq's ``send_multipart`` is convenient but, per frame, builds ``IntFlag``
values and ``Frame`` objects; for the 6-8 small frames of a call that is a
good part of a small call's cost.  Small ``bytes`` are cheapest copied; large
buffers and received ``zmq.Frame``\\ s are sent without a copy.
"""

from __future__ import annotations

import threading
from typing import Callable

import zmq

_MORE = int(zmq.SNDMORE)
_COPY_BELOW = 64 * 1024


def send_frames(sock: zmq.Socket, frames: list, flags: int = 0) -> None:
    """Send ``frames`` as one message; ``flags`` (e.g. NOBLOCK) apply to every frame."""
    send = sock.send
    more = _MORE | int(flags)
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        copy = type(frame) is bytes and len(frame) < _COPY_BELOW
        send(frame, more if i < last else int(flags), copy=copy)


class PerThread:
    """One socket per thread, made on first use by ``make()``, all closed together by :meth:`close`.

    ZeroMQ sockets must not be shared between threads; clients call from any thread and
    backend code may emit events from threads of its own.
    """

    def __init__(self, make: Callable[[], zmq.Socket]):
        self._make = make
        self._local = threading.local()
        self._sockets: list[zmq.Socket] = []
        self._lock = threading.Lock()
        self.closed = False

    def get(self) -> zmq.Socket:
        sock = getattr(self._local, "socket", None)
        if sock is None or sock.closed:
            if self.closed:
                raise RuntimeError("these sockets are closed")
            sock = self._local.socket = self._make()
            with self._lock:
                self._sockets.append(sock)
        return sock

    def close(self) -> None:
        with self._lock:
            self.closed = True
            for sock in self._sockets:
                sock.close(linger=0)
            self._sockets.clear()
