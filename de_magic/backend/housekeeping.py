"""A backend's housekeeping threads: sessions and references whose caller is gone end, and a backend that
nobody calls stops (``--idle-exit``)."""

from __future__ import annotations

import logging
import threading
import time

from . import shell

log = logging.getLogger("de_magic.backend")


def expire_leases(backend) -> None:
    """End ``%%remote`` namespaces and references whose caller is gone, now and then (a lease's tenth, at
    most a minute), until ``backend`` stops."""
    lease = backend.session_lease
    while not backend.stopped.wait(min(lease / 10, 60.0)):
        for key in shell.expire(lease):
            log.info("ended session %s: its caller was silent for more than %g s", key[:8], lease)
        dropped = backend.refs.expire()
        if dropped:
            log.info("released %d reference(s): their caller was silent for more than %g s", dropped, lease)


def exit_when_idle(backend) -> None:
    """Stop ``backend`` once no call came for its ``idle_exit`` seconds and none runs (a job counts while it
    runs): a backend in a batch allocation gives it back when nobody uses it."""
    busy = backend.last_call  # when a call was last seen running
    while not backend.stopped.wait(min(1.0, backend.idle_exit / 4)):
        now = time.monotonic()
        if len(backend.running):
            busy = now
        elif now - max(busy, backend.last_call) >= backend.idle_exit:
            log.info("no calls for %g s: stopping (--idle-exit)", backend.idle_exit)
            if backend.main.served.is_set():
                backend.main.end()  # run() stops us, in the main thread, saying goodbye to the broker
            else:
                threading.Thread(target=backend.stop, name=f"de-magic-stop-{backend.name}").start()
            return
