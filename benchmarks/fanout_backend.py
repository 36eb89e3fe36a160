"""The backend of benchmarks/bench.py's fan-out and aggregate rows."""

import time

import numpy as np

_BLOCKS: dict[int, np.ndarray] = {}


def slow(seconds: float) -> float:
    """Sleep (without the GIL): a call that waits on something, like I/O."""
    time.sleep(seconds)
    return seconds


def block(n: int) -> np.ndarray:
    """``n`` float64s, made once: what pulling a large result costs, without making it each time."""
    if n not in _BLOCKS:
        _BLOCKS[n] = np.ones(n)
    return _BLOCKS[n]
