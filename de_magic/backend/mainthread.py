"""Work that must run in the process's main thread: ``%%remote`` cells, so that an interrupt can stop even a
``time.sleep`` in one.

Such calls wait in a queue that :meth:`.server.Backend.run` serves.  A backend started with ``start()``
alone serves no such queue, and refuses them (see :attr:`MainThread.served`).
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

from .callcontext import Call


class MainThread:
    """The calls waiting for the main thread."""

    def __init__(self):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        #: Set while run() serves main-thread work; without it such work would wait for ever.
        self.served = threading.Event()

    def put(self, call: Call) -> None:
        self._calls.put(call)

    def end(self) -> None:
        """Have :meth:`serve` return once the calls queued before are done (from any thread)."""
        self._calls.put(None)

    def serve(self, execute: Callable[[Call], None]) -> None:
        """Run the queued calls with ``execute``, in this thread, until :meth:`end`."""
        while True:
            call = self._calls.get()
            if call is None:
                break
            execute(call)
