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


def send_frames(sock: zmq.Socket, frames: list) -> None:
    send = sock.send
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        copy = type(frame) is bytes and len(frame) < _COPY_BELOW
        send(frame, _MORE if i < last else 0, copy=copy)
