"""Turning Python objects into ZeroMQ frames and back.

Payloads are cloudpickle'd with pickle protocol 5: large contiguous buffers
(numpy arrays and everything built on them: pandas, xarray) are taken out of
band and become frames of their own, so they are neither copied into the
pickle stream when sending nor copied out of it when receiving.  The receiver
hands the zmq frames' memory straight to ``pickle.loads(buffers=...)``; the
frames are writable, so arrays that arrive are writable too.

The JSON codec (``codec="json"``) is the no-pickle path for callers that must
not unpickle anything from the wire.
"""

from __future__ import annotations

import json
import pickle

import cloudpickle

from . import jsoncodec

PICKLE = "pickle"
JSON = "json"

#: Buffers smaller than this are left in the pickle stream: a frame of their own costs more.
OUT_OF_BAND_MIN = 2048


def dumps(obj) -> list:
    """Frames for ``obj``: the pickle stream first, then its out-of-band buffers."""
    buffers: list = []

    def keep(buf: pickle.PickleBuffer):
        raw = buf.raw()
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True  # serialise in band
        buffers.append(raw)
        return False

    return [cloudpickle.dumps(obj, protocol=5, buffer_callback=keep), *buffers]


def loads(frames):
    """Inverse of :func:`dumps`; ``frames`` may be ``bytes`` or ``zmq.Frame`` objects."""
    if not frames:
        raise ValueError("empty payload: no pickle frame")
    head, *buffers = frames
    return pickle.loads(_view(head), buffers=[_view(b) for b in buffers])


def _view(frame):
    return frame if isinstance(frame, (bytes, bytearray, memoryview)) else frame.buffer


def nbytes(frames) -> int:
    """Total size of a list of frames (bytes, memoryviews or zmq.Frames)."""
    total = 0
    for frame in frames:
        total += frame.nbytes if isinstance(frame, memoryview) else len(frame)
    return total


def dumps_json(obj) -> list:
    """One JSON frame; numpy, pandas and xarray values in the tagged form of :mod:`.jsoncodec`."""
    return [json.dumps(obj, separators=(",", ":"), default=jsoncodec.encode).encode()]


def loads_json(frames):
    """Inverse of :func:`dumps_json`; never unpickles, never imports what the data names."""
    if len(frames) != 1:
        raise ValueError(f"JSON payload must be one frame, got {len(frames)}")
    return json.loads(bytes(_view(frames[0])), object_hook=jsoncodec.decode)
