"""Where every call a backend serves is executed, and how a running one is interrupted.

A call reaches a backend through a broker's slot, the direct endpoint (on a slot or inline), the main
thread's queue (code cells) or the job store: all of them run it with :meth:`Running.execute`, so a
cancel that comes before the call starts, while it runs or after it ended means the same everywhere,
and a stopping backend interrupts whatever runs.
"""

from __future__ import annotations

import ctypes
import signal
import threading

from ..wire.errors import Cancelled
from .callcontext import Call, Operation, current_call


class Running:
    """The calls of one backend from the moment they are accepted until they end, by :attr:`Call.key`."""

    def __init__(self):
        self._calls: dict[tuple[int, bytes, bytes], Call] = {}

    def __len__(self) -> int:
        """How many calls are accepted and not ended (a leak shows here)."""
        return len(self._calls)

    def accept(self, call: Call) -> None:
        """A call that will run soon (a cancel before it starts makes it answer "cancelled")."""
        self._calls[call.key] = call

    def execute(self, call: Call, operation: Operation):
        """Run ``call`` in this thread; its result, or what it raised (a KeyboardInterrupt with
        ``call.cancelled`` set means a cancel interrupted it). Raises Cancelled if it was cancelled before."""
        self._calls[call.key] = call
        token = current_call.set(call)
        try:
            with call.lock:
                started = not call.done  # done already: cancelled while it waited
                if started:
                    # from here on a cancel interrupts this thread: every way out answers
                    call.thread_id = threading.get_ident()
            if not started:
                raise Cancelled("cancelled before it started")
            return operation.run(call)
        finally:
            with call.lock:
                call.done = True
            self._calls.pop(call.key, None)
            current_call.reset(token)

    def cancel(self, key: tuple[int, bytes, bytes]) -> None:
        """Interrupt a running call (best effort: at its thread's next Python bytecode), or have one that
        has not started end as cancelled; nothing if it ended."""
        call = self._calls.get(key)
        if call is None:
            return
        with call.lock:
            if call.done or call.thread_id is None:
                call.done = True  # not started yet: execute() sees it and raises Cancelled
                return
            call.cancelled = True
            if call.thread_id == threading.main_thread().ident:
                signal.pthread_kill(call.thread_id, signal.SIGUSR1)  # see interrupt_main
            else:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(call.thread_id), ctypes.py_object(KeyboardInterrupt))

    def cancel_all(self) -> None:
        for key in list(self._calls):
            self.cancel(key)

    def interrupt_main(self, signum, frame) -> None:
        """SIGUSR1's handler: a cancel of the call the main thread runs (a ``time.sleep`` ends too)."""
        main = threading.main_thread().ident
        for call in list(self._calls.values()):
            if call.thread_id == main and not call.done:
                raise KeyboardInterrupt
