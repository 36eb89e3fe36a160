"""Output of code run on a backend, streamed to its caller as events while it runs.

A :class:`Capture` turns what the code writes (``sys.stdout``/``sys.stderr``),
displays and clears into ``stream`` ``{name, text}``, ``display`` ``{transient?,
update?}`` with one JSON payload frame ``{data, metadata}``, and
``clear_output`` ``{wait}`` events of the call being served, batched by a
flusher thread every 50 ms.  :func:`redirect` lets a widget's ``with out:``
block take the output instead.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..wire import serialize
from .callcontext import Call, current_call

if TYPE_CHECKING:
    from .shell import Session

log = logging.getLogger("de_magic.backend.capture")

FLUSH_INTERVAL = 0.05

_active: contextvars.ContextVar["Capture | None"] = contextvars.ContextVar("de_magic_capture", default=None)


class Capture:
    """The output of code running for one call, queued and sent to its caller as events.

    Every event goes out from the single :class:`_Flusher` thread: ZeroMQ only keeps
    the order of messages sent through one socket, and the text a cell prints must
    reach the caller while the cell's own thread is busy (or asleep).
    """

    def __init__(self, call: Call):
        self.call = call
        # [event, data, payload]; for "stream": ["stream", name, [text, ...]], adjacent writes merged
        self._queue: list[list] = []
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)

    def write(self, name: str, text: str) -> None:
        with self._lock:
            if self._queue and self._queue[-1][0] == "stream" and self._queue[-1][1] == name:
                self._queue[-1][2].append(text)
            else:
                self._queue.append(["stream", name, [text]])

    def emit(self, event: str, data: dict | None = None, payload: list | None = None) -> None:
        """Queue any event (``comm_*`` messages too) in order with the output."""
        with self._lock:
            self._queue.append([event, data or {}, payload])
        _FLUSHER.wake()

    def display(self, data: dict, metadata: dict | None = None, transient: dict | None = None,
                update: bool = False) -> None:
        extra = {k: v for k, v in (("transient", transient), ("update", update)) if v}
        self.emit("display", extra, serialize.dumps_json({"data": data, "metadata": metadata or {}}))

    def send(self) -> None:
        """Send what is queued (called by the flusher thread only)."""
        with self._lock:
            queued, self._queue = self._queue, []
            for event, data, payload in queued:
                try:
                    if event == "stream":
                        self.call.emit(event, {"name": data, "text": "".join(payload)})
                    else:
                        self.call.emit(event, data, payload)
                except Exception:  # noqa: BLE001 - e.g. a widget's buffer that is no bytes: the one
                    # flusher thread must live on, or every later cell waits for it for ever
                    log.exception("could not send a %r event of a running cell; dropped", event)
            self._drained.notify_all()

    def close(self) -> None:
        """Wait until the flusher has sent everything queued, so no event trails the reply."""
        with self._lock:
            while self._queue:
                _FLUSHER.wake()
                self._drained.wait(1.0)


class _Flusher:
    """The one thread that sends the events of every active :class:`Capture`."""

    def __init__(self):
        self.captures: set[Capture] = set()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, capture: Capture) -> None:
        with self._lock:
            self.captures.add(capture)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="de-magic-output", daemon=True)
                self._thread.start()

    def discard(self, capture: Capture) -> None:
        with self._lock:
            self.captures.discard(capture)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            with self._lock:
                captures = list(self.captures)
            for capture in captures:
                capture.send()


_FLUSHER = _Flusher()


class _Stream:
    """``sys.stdout``/``sys.stderr``: text written under a :class:`Capture` goes to its caller."""

    def __init__(self, name: str, original):
        self.name = name
        self.original = original

    def write(self, text: str) -> int:
        capture = _active.get()
        if capture is None:
            return self.original.write(text)
        capture.write(self.name, text)
        return len(text)

    def flush(self) -> None:
        if _active.get() is None:
            self.original.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self.original, name)


def active() -> "Capture | None":
    """The capture (or sink) receiving output in this context; None outside one."""
    return _active.get()


@contextmanager
def redirect(sink):
    """Captured output in this context goes to ``sink`` (the methods of :class:`Capture`) instead."""
    token = _active.set(sink)
    try:
        yield sink
    finally:
        _active.reset(token)


def emit(event: str, data: dict | None = None, payload: list | None = None) -> None:
    """Send an event to the current caller, in order with the output of the running code."""
    capture = _active.get()
    if capture is not None:
        capture.emit(event, data, payload)
    else:
        current_call.get().emit(event, data, payload)


@contextmanager
def capture(call: Call, session: "Session"):
    """Route output of code run in ``session`` (in this thread) to ``call`` as events."""
    from IPython.core.interactiveshell import InteractiveShell

    if not isinstance(sys.stdout, _Stream):
        sys.stdout, sys.stderr = _Stream("stdout", sys.stdout), _Stream("stderr", sys.stderr)
    cap = Capture(call)
    _FLUSHER.add(cap)
    # display() and get_ipython() find the shell through the singleton
    previous, InteractiveShell._instance = InteractiveShell._instance, session.shell
    try:
        with redirect(cap):
            yield cap
    finally:
        InteractiveShell._instance = previous
        cap.close()
        _FLUSHER.discard(cap)
