"""Sending multipart messages fast: the one socket helper broker, backends and clients share.

pyzmq's ``send_multipart`` is convenient but, per frame, builds ``IntFlag``
values and ``Frame`` objects; for the 6-8 small frames of a call that is a
good part of a small call's cost.  Small ``bytes`` are cheapest copied; large
buffers and received ``zmq.Frame``\\ s are sent without a copy.
"""

from __future__ import annotations

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
