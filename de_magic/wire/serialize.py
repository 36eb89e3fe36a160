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

import io
import json
import pickle
from typing import Callable

import cloudpickle

from . import jsoncodec

PICKLE = "pickle"
JSON = "json"

#: Tag of the pickle persistent id that stands for a remote reference: ``(REF_TAG, id)``.
REF_TAG = "de-magic-ref"

#: Buffers smaller than this are left in the pickle stream: a frame of their own costs more.
OUT_OF_BAND_MIN = 2048


def dumps(obj, persistent_id: Callable | None = None) -> list:
    """Frames for ``obj``: the pickle stream first, then its out-of-band buffers.

    ``persistent_id(o)`` may name an object instead of pickling it (a remote reference: the object is
    already where the frames go); :func:`loads` gets it back with ``persistent_load``.
    """
    if _plain(obj):  # what cloudpickle would write too, without building a pickler (3 µs of a tiny call's 4)
        return [pickle.dumps(obj, protocol=5)]
    buffers: list = []

    def keep(buf: pickle.PickleBuffer):
        raw = buf.raw()
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True  # serialise in band
        buffers.append(raw)
        return False

    if persistent_id is None:
        return [cloudpickle.dumps(obj, protocol=5, buffer_callback=keep), *buffers]
    stream = io.BytesIO()
    pickler = _NamingPickler(stream, protocol=5, buffer_callback=keep)
    pickler.name = persistent_id
    pickler.dump(obj)
    return [stream.getvalue(), *buffers]


_SCALARS = frozenset({int, float, bool, type(None)})
_TEXTS = frozenset({str, bytes})
_CONTAINERS = frozenset({tuple, list, dict})
#: Containers longer than this are not looked through, nor strings and bytes longer than that: the shortcut
#: is for small calls, and looking must cost less than the pickler it saves (3 µs); a pickle stream longer
#: than that is not searched for persistent ids either (see :func:`_names_nothing`).
_PLAIN_ITEMS, _PLAIN_LEN = 8, 1024


def _plain(obj, depth: int = 3) -> bool:
    """Whether ``obj`` is small plain data (builtin scalars, and short tuples, lists and dicts of them, nested
    at most ``depth`` deep): pickled by value alike by pickle and cloudpickle, with no buffers to take out.
    (Loops, not generators: it runs for every call and every answer.)"""
    kind = type(obj)
    if kind in _SCALARS:
        return True
    if kind in _TEXTS:
        return len(obj) <= _PLAIN_LEN
    if depth == 0 or kind not in _CONTAINERS or len(obj) > _PLAIN_ITEMS:
        return False
    if kind is dict:
        for key in obj:
            if type(key) is not str or len(key) > _PLAIN_LEN:
                return False
        obj = obj.values()
    for item in obj:
        if type(item) not in _SCALARS and not _plain(item, depth - 1):
            return False
    return True


def size_of(obj) -> int:
    """The bytes :func:`dumps` would make of ``obj`` (pickle stream and out-of-band buffers), however deeply
    its data nest, counted as they are written: nothing is kept or copied. Raises as pickling would."""
    counter = _Counter()

    def count(buf: pickle.PickleBuffer) -> bool:
        counter.n += buf.raw().nbytes
        return False  # out of band: counted, never copied

    cloudpickle.Pickler(counter, protocol=5, buffer_callback=count).dump(obj)
    return counter.n


class _Counter:
    """A file that only counts what is written to it."""

    def __init__(self):
        self.n = 0

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        self.n += size
        return size


def loads(frames, persistent_load: Callable | None = None):
    """Inverse of :func:`dumps`; ``frames`` may be ``bytes`` or ``zmq.Frame`` objects."""
    if not frames:
        raise ValueError("empty payload: no pickle frame")
    head, *buffers = frames
    head, views = _view(head), [_view(b) for b in buffers]
    if persistent_load is None or _names_nothing(head):
        return pickle.loads(head, buffers=views)
    unpickler = _NamedUnpickler(io.BytesIO(head), buffers=views)
    unpickler.load_named = persistent_load
    return unpickler.load()


# Persistent ids are methods of subclasses, the documented way: Python 3.13's C pickler no longer lets an
# instance attribute stand in for them ("'_pickle.Unpickler' object attribute 'persistent_load' is read-only").
# The callables are plain attributes set after construction: a Python-level __init__ costs more than the rest.
class _NamingPickler(cloudpickle.Pickler):
    name: Callable

    def persistent_id(self, obj):
        return self.name(obj)


class _NamedUnpickler(pickle.Unpickler):
    load_named: Callable

    def persistent_load(self, pid):
        return self.load_named(pid)


_BINPERSID, _PERSID = pickle.BINPERSID, pickle.PERSID  # the opcodes that name an object instead of holding it


def _names_nothing(stream) -> bool:
    """Whether a small pickle ``stream`` surely holds no persistent id (no byte of either opcode occurs in it):
    it is then read by the C unpickler alone, without the Python-level subclass (2 µs)."""
    if len(stream) > _PLAIN_LEN:
        return False
    raw = stream if type(stream) is bytes else bytes(stream)
    return _BINPERSID not in raw and _PERSID not in raw


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
