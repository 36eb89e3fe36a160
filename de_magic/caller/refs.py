"""Remote references, the caller's side: results that stay on the worker that made them.

``ref = be.open_dataset.options(keep=True)(...)`` returns a :class:`RemoteRef`: the value stays
in the backend's worker (:mod:`de_magic.backend.refs`).  Passed as an argument, anywhere in a
call's arguments, a reference travels as its id only (a pickle persistent id), and the call is
pinned to the worker that holds it, which uses the object in place.  A call to another backend or
worker is refused, with a message that says how to move the value (``ref.fetch()``): data this
large should not cross the network unnoticed.

A reference is released when it is garbage collected (batched, from a thread of its own, so
that a ``del`` never waits for the network) or :meth:`RemoteRef.release`\\d; the worker drops it
as well once this process has been silent for the backend's lease time.  The references of this
process on one worker are renewed together (:class:`Tenancy`, renewed by :mod:`.leases`).
"""

from __future__ import annotations

import html
import queue
import secrets
import threading
import weakref
from collections import defaultdict
from typing import TYPE_CHECKING

from ..wire import serialize
from ..wire.errors import DeMagicError, Refused
from ..wire.security import local_user
from .leases import LEASES

if TYPE_CHECKING:
    from .client import Client

#: Names this process's leases on every backend: its references end when it stops renewing them.
PROCESS_LEASE = secrets.token_hex(16)
#: Seconds a release of collected references may take before it is given up (the lease ends them anyway).
RELEASE_TIMEOUT = 10.0


def claims() -> dict:
    """Header fields of a request that keeps or uses references: this process's lease, and its user (the
    owner on a plaintext broker; under CURVE the backend knows the caller by its key instead)."""
    return {"lease": PROCESS_LEASE, "user": local_user()}


class Tenancy:
    """This process's references on one worker of a backend: they are renewed and released together."""

    def __init__(self, client: Client, backend: str, worker: bytes):
        self.client, self.backend, self.worker = client, backend, worker

    def request(self, header: dict, timeout: float | None = None) -> list:
        """Send a reference operation to the worker; the answer's frames."""
        head, frames = self.client.request(self.backend, {**header, **claims()}, [], timeout=timeout,
                                           worker=self.worker)
        return frames

    def renew(self, timeout: float) -> bool:
        """This process still holds references here; False if it holds none any more (see :mod:`.leases`)."""
        if self.client._closed:
            return False
        return bool(serialize.loads(self.request({"op": "ref_renew"}, timeout)))


_tenancies: weakref.WeakValueDictionary[tuple, Tenancy] = weakref.WeakValueDictionary()
_tenancies_lock = threading.Lock()


def tenancy(client: Client, backend: str, worker: bytes) -> Tenancy:
    """The tenancy of this process's references on ``worker`` (one per client and worker)."""
    with _tenancies_lock:
        held = _tenancies.get((id(client), backend, worker))
        if held is None:
            held = _tenancies[(id(client), backend, worker)] = Tenancy(client, backend, worker)
        return held


class RemoteRef:
    """A value kept on the backend worker that made it: pass it to calls there, ``fetch()`` it, ``release()`` it."""

    _live: weakref.WeakSet = weakref.WeakSet()  # while there are none, calls are pickled without looking for them

    def __init__(self, place: Tenancy, descriptor: dict):
        self._place = place
        self.id: str = descriptor["ref"]
        self.type: str = descriptor.get("type", "object")
        self.nbytes: int = descriptor.get("nbytes", 0)
        self._finalizer = weakref.finalize(self, RELEASER.put, place, self.id)
        self._finalizer.atexit = False  # at exit the lease ends them; the network may be gone already
        RemoteRef._live.add(self)

    @classmethod
    def adopt(cls, client: Client, backend: str, header: dict, descriptor: dict) -> "RemoteRef":
        """The reference a ``keep`` call answered with (the reply header names the worker holding it)."""
        place = tenancy(client, backend, bytes.fromhex(header["worker"]))
        LEASES.keep(place, descriptor["lease"])
        RELEASER.start()  # here, not when the first reference is collected: that may be anywhere, in any thread
        return cls(place, descriptor)

    @property
    def backend(self) -> str:
        return self._place.backend

    @property
    def worker(self) -> bytes:
        return self._place.worker

    def fetch(self, timeout: float | None = None):
        """The value, brought here."""
        return serialize.loads(self._place.request({"op": "ref_fetch", "ref": self.id}, timeout))

    def release(self, timeout: float | None = None) -> None:
        """Free the value on the worker now; later calls with this reference fail with ``ReferenceGone``."""
        if self._finalizer.detach() is not None:
            self._place.request({"op": "ref_release", "refs": [self.id]}, timeout)

    def _remote_repr(self, as_html: bool) -> str | None:
        return serialize.loads(self._place.request({"op": "ref_repr", "ref": self.id, "html": as_html}))

    def _unshown(self, exc: DeMagicError) -> str:
        return f"<RemoteRef {self.id[:8]}: a {self.type} on {self.backend!r}, not shown: {exc}>"

    def __repr__(self) -> str:
        try:
            return self._remote_repr(False)
        except DeMagicError as exc:
            return self._unshown(exc)

    def _repr_html_(self) -> str:
        try:
            shown = self._remote_repr(True)
        except DeMagicError as exc:
            return f"<pre>{html.escape(self._unshown(exc))}</pre>"
        return shown if shown is not None else f"<pre>{html.escape(repr(self))}</pre>"

    def __reduce__(self):
        raise TypeError("a RemoteRef is not pickled: pass it as an argument of a call to its backend, "
                        "or pass ref.fetch() to move its value")


def pack(backend: str, header: dict, body: tuple, keep: bool) -> tuple[list, bytes]:
    """A call's payload, with references as ids, and the worker they pin the call to (b"": none).

    ``header`` gets what the worker needs to know whose references they are (and that the result is to be kept).
    """
    if keep:
        header.update(keep=True, **claims())
    if not RemoteRef._live:
        return serialize.dumps(body), b""
    used: list[RemoteRef] = []

    def persistent_id(obj):
        if type(obj) is RemoteRef:
            used.append(obj)
            return serialize.REF_TAG, obj.id
        return None

    payload = serialize.dumps(body, persistent_id)
    if not used:
        return payload, b""
    _check_place(used, backend)
    header.update(claims())
    return payload, used[0].worker


def _check_place(used: list[RemoteRef], backend: str) -> None:
    """Refuse a call that would need a value held elsewhere: moving it is the caller's explicit choice."""
    first = used[0]
    for ref in used:
        if ref.backend != backend:
            raise Refused(f"reference {ref.id[:8]} lives on backend {ref.backend!r}, not {backend!r}: "
                          "pass ref.fetch() to send its value through this process")
        if ref.worker != first.worker:
            raise Refused(f"references {first.id[:8]} and {ref.id[:8]} live on different workers of {backend!r}, "
                          "and a call runs on one: pass ref.fetch() for one of them")


class _Releaser:
    """Releases collected references in batches, from a thread of its own (a ``del`` never waits)."""

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="de-magic-release", daemon=True)
                self._thread.start()

    def put(self, place: Tenancy, ref: str) -> None:
        """Release ``ref`` soon; safe in a finalizer (a SimpleQueue's put is reentrant, and takes no lock here)."""
        self._queue.put((place, ref))

    def _run(self) -> None:
        while True:
            batch = defaultdict(list)
            place, ref = self._queue.get()
            batch[place].append(ref)
            while not self._queue.empty():
                place, ref = self._queue.get()
                batch[place].append(ref)
            for place, refs in batch.items():
                if not place.client._closed:
                    try:
                        place.request({"op": "ref_release", "refs": refs}, RELEASE_TIMEOUT)
                    except DeMagicError:
                        pass  # the worker or broker is gone: the references went with it, or their lease ends them


#: Releases the references this process lets go of.
RELEASER = _Releaser()
