"""A light backend for the fault and soak tests: quick to start, and able to report its own state."""

from __future__ import annotations

import time

from de_magic.backend.callcontext import current_call


def echo(value: object) -> object:
    """Return ``value`` unchanged."""
    return value


def slow(seconds: float = 1.0, value: object = None) -> object:
    """Sleep, then return ``value``."""
    time.sleep(seconds)
    return value


def calls_held() -> int:
    """Calls this backend process holds, not counting this one (zero when nothing leaked)."""
    return len(current_call.get().backend.running) - 1
