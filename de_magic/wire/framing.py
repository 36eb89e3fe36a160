"""Socket helpers that broker, backends and clients share: fast multipart I/O, per-thread sockets.

A small call is 6-8 small frames per message, four messages per call, and on
that path pyzmq's conveniences cost more than the work: ``recv_multipart``
asks the socket for ``RCVMORE`` after every frame (the received frame already
knows), and ``send_multipart`` goes through Python-level flag arithmetic and
copy-threshold logic per frame.  Measured on inproc, 8 frames: receive 11.3 µs
-> 4.7 µs, send 3.4 µs -> 1.7 µs.  Small ``bytes`` are cheapest copied; large
buffers and received ``zmq.Frame``\\ s are sent without a copy.
"""

from __future__ import annotations

import threading
from typing import Callable

import zmq

_MORE = int(zmq.SNDMORE)
_COPY_BELOW = 64 * 1024
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: enum arithmetic costs a microsecond a time


_send = zmq.backend.Socket.send  # below pyzmq's Python-level wrapper: we choose ``copy`` ourselves


def send_frames(sock: zmq.Socket, frames: list, flags: int = 0) -> None:
    """Send ``frames`` as one message; ``flags`` (e.g. NOBLOCK) apply to every frame."""
    flags = int(flags)
    more = _MORE | flags
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _send(sock, frame, more if i < last else flags, type(frame) is bytes and len(frame) < _COPY_BELOW)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list:
    """One whole message as ``zmq.Frame``\\ s (payloads stay in zmq's memory, no copies)."""
    frame = sock.recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(copy=False)
        frames.append(frame)
    return frames


def readable(sock: zmq.Socket) -> bool:
    """Whether a message waits on ``sock``. Unlike a poll, this keeps the GIL: a thread that serves a burst
    of messages is not preempted by the thread it just handed one to."""
    return bool(sock.get(_EVENTS) & _POLLIN)


class Sockets:
    """Sockets that several threads made, each for its own use, all closed together by :meth:`close`."""

    def __init__(self):
        self._sockets: list[zmq.Socket] = []
        self._lock = threading.Lock()
        self.closed = False

    def add(self, sock: zmq.Socket) -> zmq.Socket:
        with self._lock:
            self._sockets.append(sock)
        return sock

    def discard(self, sock: zmq.Socket) -> None:
        with self._lock:
            if sock in self._sockets:
                self._sockets.remove(sock)

    def close(self, keep: set = frozenset()) -> None:
        """Close every socket but those in ``keep`` (their threads close them), and make no more."""
        with self._lock:
            self.closed = True
            for sock in self._sockets:
                if sock not in keep:
                    sock.close(linger=0)
            self._sockets.clear()


class PerThread(Sockets):
    """One socket per thread, made on first use by ``make()``.

    ZeroMQ sockets must not be shared between threads; clients call from any thread and
    backend code may emit events from threads of its own.
    """

    def __init__(self, make: Callable[[], zmq.Socket]):
        super().__init__()
        self._make = make
        self._local = threading.local()

    def get(self) -> zmq.Socket:
        sock = getattr(self._local, "socket", None)
        if sock is None or sock.closed:
            if self.closed:
                raise RuntimeError("these sockets are closed")
            sock = self._local.socket = self.add(self._make())
        return sock

    def renew(self) -> zmq.Socket:
        """Close this thread's socket and make a new one (e.g. for another address)."""
        old = getattr(self._local, "socket", None)
        if old is not None:
            self.discard(old)
            old.close(linger=0)
            self._local.socket = None
        return self.get()
