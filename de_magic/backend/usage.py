"""What a worker's ``%%remote`` sessions and remote references hold, for the broker's listing.

Sizes are estimates that cost little: the ``nbytes`` of arrays (numpy, xarray) and the memory
usage pandas reports (not of the objects in object columns), ``sys.getsizeof`` of other objects; containers are
followed a few levels deep and sampled, so that a namespace of a million small objects is not
walked at every report.  The report goes to the broker when something changed, at most once
per heartbeat (see :class:`Reporter`).
"""

from __future__ import annotations

import itertools
import sys

from ..wire import protocol as P
from . import shell

#: Items of a container that are measured; the rest are estimated from them.
SAMPLE = 100
#: Levels of containers followed.
DEPTH = 3


def deep_size(obj, depth: int = DEPTH) -> int:
    """A cheap estimate of the bytes ``obj`` holds, its data buffers included."""
    try:
        held = _buffer_bytes(obj)
        if held is not None:  # not getsizeof: numpy's counts the data again, pandas' walks every object
            return held
        if depth and isinstance(obj, (list, tuple, set, frozenset, dict)):
            items = list(itertools.islice(obj.items() if isinstance(obj, dict) else obj, SAMPLE))
            sampled = sum(deep_size(item, depth - 1) for item in items)
            return sys.getsizeof(obj) + (sampled * len(obj) // len(items) if items else 0)
        return sys.getsizeof(obj)
    except (RuntimeError, TypeError, ValueError):  # changed while measured (another thread), or unsized
        return 0


def walked_size(obj) -> int:
    """The bytes ``obj`` holds, every container and object attribute followed however deep (each object once):
    for values that cannot be pickled, whose size :func:`~de_magic.wire.serialize.size_of` cannot tell."""
    total, seen, stack = 0, set(), [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        try:
            held = _buffer_bytes(item)
            if held is not None:
                total += held
                continue
            total += sys.getsizeof(item)
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, (list, tuple, set, frozenset)):
                stack.extend(item)
            elif not isinstance(item, type) and isinstance(getattr(item, "__dict__", None), dict):
                stack.append(item.__dict__)
        except (RuntimeError, TypeError, ValueError):  # changed while measured (another thread), or unsized
            continue
    return total


def _buffer_bytes(obj) -> int | None:
    """Bytes of the data buffers of an array-like (pandas first: its ``nbytes`` leaves the index out)."""
    if isinstance(obj, type):
        return None  # a class: its nbytes is a property object, not a number
    usage = getattr(obj, "memory_usage", None)
    if callable(usage) and type(obj).__module__.startswith("pandas"):
        total = usage(index=True, deep=False)
        return int(total.sum() if hasattr(total, "sum") else total)
    nbytes = getattr(obj, "nbytes", None)
    return nbytes if isinstance(nbytes, int) else None


def session_bytes(session: shell.Session) -> int:
    """The variables a session's code made, without IPython's own (``In``, ``Out``, ``get_ipython``...)."""
    namespace, hidden = dict(session.namespace), session.shell.user_ns_hidden
    return sum(deep_size(value) for name, value in namespace.items()
               if name not in hidden and not name.startswith("_"))


def report(refs) -> dict:
    """The USAGE info: sessions (count, bytes, each one's start and bytes: the largest) and references."""
    each = sorted(({"since": s.since, "bytes": session_bytes(s)} for s in shell.sessions()),
                  key=lambda s: s["bytes"], reverse=True)
    return {"sessions": {"count": len(each), "bytes": sum(s["bytes"] for s in each),
                         "each": each[:P.MAX_USAGE_SESSIONS]},
            "refs": {"count": refs.count, "bytes": refs.bytes}}


class Reporter:
    """Sends a USAGE when sessions or references changed since the last one (asked once per heartbeat)."""

    def __init__(self, refs):
        self.refs = refs
        self._sent: tuple | None = None

    def resend(self) -> None:
        """A broker (re)welcomed us: it knows nothing of our usage."""
        self._sent = None

    def due(self) -> list | None:
        """The USAGE frames to send now, or None if nothing changed."""
        state = (shell.changes(), self.refs.generation)
        if state == self._sent:
            return None
        self._sent = state
        return P.usage(report(self.refs))
