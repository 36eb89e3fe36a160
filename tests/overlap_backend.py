"""A backend that reports how many of its calls ran at once, for capacity tests."""

from __future__ import annotations

import threading
import time

_lock = threading.Lock()
_running = 0
_peak = 0


def hold(seconds: float) -> int:
    """Run for ``seconds``; return the most calls of this process that ran at once so far."""
    global _running, _peak
    with _lock:
        _running += 1
        _peak = max(_peak, _running)
    try:
        time.sleep(seconds)
    finally:
        with _lock:
            _running -= 1
    return _peak
