"""Remote references: results a worker keeps for their caller, used in place by later calls.

A call whose header says ``keep`` leaves its result here, under an unguessable id, and answers
with a small descriptor instead of the value (the caller's ``RemoteRef``).  A later call to this
worker that passes the reference carries only its id (a pickle *persistent id*), which
:meth:`RefStore.loader` turns back into the object: no bytes travel.

Each reference belongs to its caller: the public key the broker authenticated under CURVE, else
(on a plaintext loopback broker, where every local account is trusted alike) the user name the
caller's header claims.  It is held under a *lease*, named by the caller's process: a process
renews its leases a few times per lease time (with its ``%%remote`` sessions, see
:mod:`de_magic.caller.leases`), and the references of a process silent for longer are dropped, as
are those it releases.  What references hold counts against a byte budget per worker.
"""

from __future__ import annotations

import pickle
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..wire.errors import ReferenceGone, Refused
from ..wire.serialize import REF_TAG, size_of
from .callcontext import Call, Operation
from .usage import walked_size

@dataclass
class _Held:
    value: object
    lease: tuple[str, str]  #: (owner, lease id)
    nbytes: int


@dataclass
class _Lease:
    seen: float  #: monotonic time its caller was last heard from
    ids: set[str] = field(default_factory=set)


def _lease_of(call: Call) -> tuple[str, str]:
    return call.owner, str(call.header.get("lease", ""))


class RefStore:
    """The objects this worker keeps for remote references, by id, with their leases and byte budget."""

    def __init__(self, backend: str, budget: int, lease: float):
        self.backend, self.budget, self.lease = backend, budget, lease
        self._held: dict[str, _Held] = {}
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._lock = threading.Lock()
        self.bytes = 0
        #: Moves whenever a reference comes or goes (usage reports are sent again then).
        self.generation = 0

    @property
    def count(self) -> int:
        return len(self._held)

    def keep(self, call: Call, value) -> dict:
        """Keep ``value`` for the caller of ``call``; the descriptor its ``RemoteRef`` is made from."""
        size, kind = _measure(value), _qualname(type(value))
        lease = _lease_of(call)
        with self._lock:
            if self.bytes + size > self.budget:
                raise Refused(f"backend {self.backend!r} cannot keep a {kind} of {size:,} bytes: its references "
                              f"hold {self.bytes:,} of {self.budget:,} bytes (release some, or start it with a "
                              "larger --ref-bytes)")
            ref = secrets.token_urlsafe(18)
            self._held[ref] = _Held(value, lease, size)
            self._leases.setdefault(lease, _Lease(time.monotonic())).ids.add(ref)
            self.bytes += size
            self.generation += 1
        return {"ref": ref, "type": kind, "nbytes": size, "lease": self.lease}

    def get(self, call: Call, ref: str):
        """The object ``ref`` stands for, if the caller of ``call`` owns it."""
        held = self._held.get(ref)
        if held is None:
            raise ReferenceGone(f"reference {ref[:8]} on backend {self.backend!r} was released, or its lease ran "
                                "out (its caller was silent too long)")
        if held.lease[0] != call.owner:
            raise Refused(f"reference {ref[:8]} on backend {self.backend!r} belongs to another caller")
        return held.value

    def loader(self, call: Call) -> Callable:
        """A pickle ``persistent_load`` that resolves the references in a call's arguments."""
        def load(pid):
            if not (isinstance(pid, tuple) and len(pid) == 2 and pid[0] == REF_TAG and isinstance(pid[1], str)):
                raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:40]!r}")
            return self.get(call, pid[1])

        return load

    def release(self, call: Call, refs: list) -> int:
        """Drop the caller's references among ``refs``; how many there were."""
        owner = call.owner
        with self._lock:
            mine = [ref for ref in refs if isinstance(ref, str) and ref in self._held
                    and self._held[ref].lease[0] == owner]
            for ref in mine:
                self._drop(ref)
        return len(mine)

    def renew(self, call: Call) -> bool:
        """The caller's process is still there; False if it holds nothing here (released, expired)."""
        with self._lock:
            lease = self._leases.get(_lease_of(call))
            if lease is not None:
                lease.seen = time.monotonic()
            return lease is not None

    def expire(self) -> int:
        """Drop the references of processes not heard from for a lease time; how many were dropped."""
        now = time.monotonic()
        with self._lock:
            stale = [ref for lease in self._leases.values() if now - lease.seen > self.lease for ref in lease.ids]
            for ref in stale:
                self._drop(ref)
        return len(stale)

    def _drop(self, ref: str) -> None:
        held = self._held.pop(ref)
        lease = self._leases[held.lease]
        lease.ids.discard(ref)
        if not lease.ids:
            del self._leases[held.lease]
        self.bytes -= held.nbytes
        self.generation += 1


def _measure(value) -> int:
    """What ``value`` costs against the budget: the bytes it would travel as (pickle stream and buffers,
    however deep its data nest), or for a value that cannot travel, every object it holds, walked."""
    try:
        return size_of(value)
    except Exception:  # noqa: BLE001 - unpicklable (a lock, an open file): kept all the same, and measured
        return walked_size(value)


def _qualname(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _represent(value, html: bool) -> str | None:
    """``repr(value)``, or its HTML repr (None if it has none)."""
    if not html:
        return repr(value)
    method = getattr(value, "_repr_html_", None)
    return method() if callable(method) else None


def operations(store: RefStore, call: Operation) -> dict[str, Operation]:
    """The ``call`` operation that keeps its result when asked (``keep``), and the operations on references."""
    def keeping(request: Call):
        value = call.run(request)
        return store.keep(request, value) if request.header.get("keep") else value

    def fetch(request: Call):
        return store.get(request, str(request.header.get("ref")))

    def represent(request: Call):
        return _represent(fetch(request), bool(request.header.get("html")))

    def release(request: Call) -> int:
        refs = request.header.get("refs")
        return store.release(request, refs if isinstance(refs, list) else [])

    return {"call": Operation(keeping), "ref_fetch": Operation(fetch), "ref_repr": Operation(represent),
            "ref_release": Operation(release), "ref_renew": Operation(store.renew)}
