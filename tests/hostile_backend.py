"""A backend whose members misbehave as a hostile or careless author's might (tests/test_holes.py)."""

from __future__ import annotations

import ctypes
import time


class _BadStr(Exception):
    """An exception whose ``__str__`` itself raises: it reads a second argument when one was given."""

    def __str__(self) -> str:
        return f"{self.args[0]} at {self.args[1]}"


def bad_str() -> None:
    """Raise :class:`_BadStr`."""
    raise _BadStr("broken")


def interrupt() -> None:
    """Raise KeyboardInterrupt by itself: nobody cancelled it."""
    raise KeyboardInterrupt("the member's own")


def hold_gil(seconds: float) -> float:
    """Sleep in a C routine that keeps the GIL: no other thread of this process runs Python meanwhile."""
    start = time.monotonic()
    ctypes.PyDLL(None).usleep(int(seconds * 1_000_000))  # a PyDLL call does not release the GIL
    return time.monotonic() - start


def nap(seconds: float) -> float:
    """Sleep, letting other threads run."""
    time.sleep(seconds)
    return seconds


def nested_bytes(mib: int, depth: int = 4) -> list:
    """``mib`` MiB of bytes, nested ``depth`` lists deep, in 1 MiB pieces."""
    value: list = [bytes(1 << 20) for _ in range(mib)]
    for _ in range(depth - 1):
        value = [value]
    return value
