"""Processes started on someone's behalf end when that someone does.

The demo and a kernel's own broker start backends as child processes in
sessions of their own (so a Ctrl-C or a kernel interrupt does not reach them).
If the parent is killed outright, nothing tells them: they would keep
reconnecting to a broker that is gone, for ever.  So the parent passes its pid
(``de-magic serve --parent-pid PID``) and the child watches it.

Linux's ``prctl(PR_SET_PDEATHSIG)`` would need code run between fork and exec,
and it fires when the parent *thread* that forked exits, not the process; a
thread that polls works everywhere and fires on the right event: once the
parent is gone, the child is re-parented and ``os.getppid()`` changes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

log = logging.getLogger("de_magic.lifeline")


def exit_with_parent(parent: int, stop: Callable[[], None], interval: float = 1.0) -> threading.Thread:
    """Call ``stop()`` (once) when process ``parent`` is no longer our parent; look every ``interval`` s."""

    def watch() -> None:
        # compared with the pid we were given, not with getppid() at start: the parent may be gone already
        while os.getppid() == parent:
            time.sleep(interval)
        log.warning("parent process %d is gone; stopping", parent)
        stop()

    thread = threading.Thread(target=watch, name="de-magic-lifeline", daemon=True)
    thread.start()
    return thread
