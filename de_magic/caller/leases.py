"""Leases: what this process holds on backends lives as long as the process does.

A backend ends a ``%%remote`` namespace, and drops remote references, whose caller has been silent
for its lease time (a killed kernel, a laptop that never came back).  One daemon thread here renews
everything this process holds, a few times per lease: each *holder* (a
:class:`~de_magic.caller.session.RemoteSession`, or the references of this process on one worker,
:class:`~de_magic.caller.refs.Tenancy`) has ``renew(timeout) -> bool``, False once there is nothing
left to renew.  Holders are held weakly: one that is garbage collected stops being renewed.
"""

from __future__ import annotations

import threading
import weakref

from ..wire.errors import DeMagicError


class Leases:
    """Renews the leases of this process's holders (sessions, references) until they are gone."""

    def __init__(self):
        self._holders: weakref.WeakKeyDictionary[object, float] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._changed = threading.Event()  # a holder with a shorter lease may need renewing sooner
        self._thread: threading.Thread | None = None

    def keep(self, holder, lease: float) -> None:
        """Renew ``holder`` (lease: seconds, as its backend said) while it lives."""
        with self._lock:
            new = self._holders.get(holder) != lease
            self._holders[holder] = lease
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="de-magic-leases", daemon=True)
                self._thread.start()
        if new:  # the same session's next cell changes nothing: the others' renewals must not wait for it
            self._changed.set()

    def _run(self) -> None:
        while True:
            with self._lock:
                interval = min((lease / 3 for lease in self._holders.values()), default=60.0)
            if self._changed.wait(interval):
                self._changed.clear()
                continue
            with self._lock:
                due = list(self._holders.items())
            for holder, lease in due:
                self._renew(holder, lease)

    def _renew(self, holder, lease: float) -> None:
        try:
            alive = holder.renew(lease / 3)
        except DeMagicError:  # the broker is away for a moment: the next round tries again
            return
        if not alive:  # ended on the backend (expired, released, or the backend restarted)
            with self._lock:
                self._holders.pop(holder, None)


#: The leases of this process's sessions and references.
LEASES = Leases()
