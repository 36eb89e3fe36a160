"""Counting and logging bad input without letting a flood of it slow us down.

Every malformed message deserves a log line naming its sender, but a peer that
sends a million of them (by a bug, or on purpose) must not make the broker
spend its time writing logs.  :class:`BadInput` logs the first few per
interval and sums up the rest in one line when the next interval starts.
Every line starts with "bad input: ", so operators (and tests) can count them.
"""

from __future__ import annotations

import logging
import threading
import time


class BadInput:
    """A counter of bad messages with a rate-limited log."""

    def __init__(self, logger: logging.Logger, per_interval: int = 20, interval: float = 1.0):
        self.logger = logger
        self.per_interval = per_interval
        self.interval = interval
        self.count = 0  #: bad messages seen since start
        self._window_start = time.monotonic()
        self._logged = 0
        self._suppressed = 0
        self._lock = threading.Lock()  # a backend's slot threads report concurrently
        self._failures: set[tuple] = set()  # where handling a message raised, so far: each traceback is logged once

    def report(self, message: str, *args, exc_info: bool = False) -> None:
        """Count one bad message; log it unless this interval's quota is used up."""
        with self._lock:
            self.count += 1
            now = time.monotonic()
            if now - self._window_start >= self.interval:
                self._flush(now)
            log = self._logged < self.per_interval
            if log:
                self._logged += 1
            else:
                self._suppressed += 1
        if log:
            self.logger.warning("bad input: " + message, *args, exc_info=exc_info)

    def failed(self, what: str, exc: BaseException) -> None:
        """Handling a peer's message raised ``exc`` (a bug its input found): count it like bad input, with the
        traceback logged the first time this kind of failure happens here, so that a peer repeating it
        cannot flood the log with tracebacks."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        kind = (type(exc), tb.tb_frame.f_code.co_filename if tb else "", tb.tb_lineno if tb else 0)
        with self._lock:
            first = kind not in self._failures and len(self._failures) < 1000
            if first:
                self._failures.add(kind)
        if first:
            self.count += 1
            self.logger.warning("bad input: %s raised %s (traceback logged once; later ones are counted)", what,
                              type(exc).__name__, exc_info=exc)
        else:
            self.report("%s raised %s", what, type(exc).__name__)

    def flush(self) -> None:
        """Log how many bad messages were not logged one by one, and start a new interval."""
        with self._lock:
            self._flush(time.monotonic())

    def _flush(self, now: float) -> None:
        if self._suppressed:
            self.logger.warning("bad input: %d more in the last %.1f s not logged one by one",
                                self._suppressed, now - self._window_start)
        self._window_start = now
        self._logged = self._suppressed = 0
