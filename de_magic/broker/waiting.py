"""Jobs that wait at the broker for their backend: the books, without sockets or disk.

A job started while its backend is offline (``proxy.f.start(...)``) waits here, FIFO per backend name, until a
worker of that name registers; then it is handed to it as the ``job.start`` it was, and runs there as any job.
The routing core (:mod:`.routing`) decides with these books and writes every change to the state directory
(:mod:`.state`) before it sends anything, which is what makes a job run at most once across a ``kill -9``:

- ``waiting``: on disk with its frames as sent; survives any restart.
- ``sent``: written *before* the ``job.start`` goes to worker ``worker``. If the broker dies now, it never
  sends it again: the job is that worker's, or lost.
- ``delivered``: the worker answered; the record says where the job is, for callers who ask by its first id.
- ``cancelled``, ``expired``, ``refused``, ``lost``: it ended here; the record says why, for a while.

Each caller (owner: its key under CURVE, else the user it claims) holds at most ``bounds.jobs`` waiting jobs of
at most ``bounds.bytes`` bytes in all, and a job waits at most ``bounds.ttl`` seconds.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass

from ..wire import protocol as P

WAITING, SENT, DELIVERED = "waiting", "sent", "delivered"
CANCELLED, EXPIRED, REFUSED, LOST = "cancelled", "expired", "refused", "lost"
ENDED = frozenset({CANCELLED, EXPIRED, REFUSED, LOST})
#: Records of jobs that left the broker (delivered or ended) kept at most, oldest forgotten first.
MAX_RECORDS = 10_000
#: Over all callers, a broker holds at most this many callers' bounds of waiting jobs: on a plaintext broker
#: a caller names itself, and a hundred made-up names must not fill the disk.
MAX_FULL_CALLERS = 64


@dataclass
class Bounds:
    """What one caller may keep waiting at a broker (the broker's --max-waiting-jobs, --max-waiting-bytes,
    --waiting-ttl)."""

    jobs: int = 100
    bytes: int = 64 << 20
    ttl: float = 7 * 86400.0


@dataclass
class WaitingJob:
    """A job the broker holds or held for a backend. Its frames (the ``job.start`` as sent) live on disk only."""

    seq: int  #: arrival order (the state store numbers jobs)
    token: str  #: the job's name on whichever worker runs it (the last part of its id)
    backend: str
    owner: str  #: whose it is: the caller's key, else ``user:NAME`` as claimed on a plaintext broker
    key: str | None  #: the caller's key under CURVE, told to the worker as the call's caller
    what: str  #: ``member`` or ``Class.method``, for listings
    api_tag: str  #: the API it was started against: a backend that comes back with another refuses it
    created: float
    expires: float  #: time.time() after which it no longer waits
    size: int  #: bytes of its frames
    state: str = WAITING
    worker: str = ""  #: hex id of the worker it was handed to
    reason: str = ""  #: why it ended

    @property
    def id(self) -> str:
        return f"{self.backend}:{P.BROKER_HELD.hex()}:{self.token}"

    def summary(self) -> dict:
        """As the backend's job listings show a job (status ``waiting`` while it waits here)."""
        status = WAITING if self.state == WAITING else "queued" if self.state in (SENT, DELIVERED) else self.state
        described = {"id": self.id, "what": self.what, "status": status, "created": self.created, "finished": None,
                     "size": self.size, "reason": self.reason, "progress": None}
        if self.worker and self.state in (SENT, DELIVERED):
            described["worker"] = self.worker  # where to ask from now on
        return described


def new_token() -> str:
    return os.urandom(9).hex()


class WaitingJobs:
    """The jobs a broker holds and the records of those that left: FIFO per backend, bounded per caller."""

    def __init__(self, bounds: Bounds, jobs: list[WaitingJob] = ()):
        self.bounds = bounds
        self.jobs: dict[str, WaitingJob] = {}  # by token, oldest first
        self._queues: dict[str, deque[WaitingJob]] = {}  # backend -> its waiting jobs, oldest first
        self._held: dict[str, list[int]] = {}  # owner -> [jobs, bytes] waiting
        self._bytes = 0  # of all waiting jobs
        for job in jobs:
            self.add(job)

    def refusal(self, owner: str, size: int) -> str:
        """Why a new job of ``size`` bytes of ``owner`` may not wait (empty when it may)."""
        count, held = self._held.get(owner, (0, 0))
        total = self._bytes
        if total + size > MAX_FULL_CALLERS * self.bounds.bytes or len(self._held) >= MAX_FULL_CALLERS * self.bounds.jobs:
            return (f"the broker holds {total} bytes of waiting jobs from {len(self._held)} callers already, its "
                    "limit; try again once backends came back for them")
        if count >= self.bounds.jobs:
            return (f"you have {count} jobs waiting at this broker already (at most {self.bounds.jobs}, "
                    "--max-waiting-jobs); wait until their backends come back, or cancel some")
        if held + size > self.bounds.bytes:
            return (f"your waiting jobs would hold {held + size} bytes of arguments at this broker (at most "
                    f"{self.bounds.bytes}, --max-waiting-bytes); pass less data, or wait for the backend")
        return ""

    def add(self, job: WaitingJob) -> None:
        self.jobs[job.token] = job
        if job.state == WAITING:
            self._queues.setdefault(job.backend, deque()).append(job)
            books = self._held.setdefault(job.owner, [0, 0])
            books[0] += 1
            books[1] += job.size
            self._bytes += job.size

    def first(self, backend: str) -> WaitingJob | None:
        """The oldest job still waiting for ``backend``."""
        queue = self._queues.get(backend)
        while queue and queue[0].state != WAITING:
            queue.popleft()  # handed over or ended while it waited: its books are settled already
        if not queue:
            self._queues.pop(backend, None)
            return None
        return queue[0]

    def waiting(self, backend: str) -> list[WaitingJob]:
        return [job for job in self._queues.get(backend, ()) if job.state == WAITING]

    def count(self, backend: str) -> int:
        return len(self.waiting(backend))

    def backends(self) -> list[str]:
        """The backend names jobs wait for."""
        return [name for name in list(self._queues) if self.first(name) is not None]

    def leave(self, job: WaitingJob, state: str, now: float, *, worker: str = "", reason: str = "") -> None:
        """``job`` stops waiting (handed to ``worker``, or ended for ``reason``); the caller stores the change."""
        if job.state == WAITING:
            books = self._held[job.owner]
            books[0] -= 1
            books[1] -= job.size
            self._bytes -= job.size
            if not books[0]:
                del self._held[job.owner]
        job.state, job.reason = state, reason
        job.worker = worker or job.worker
        if state != WAITING:
            job.expires = now + self.bounds.ttl  # the record's own time: it says where the job went, or why not

    def due(self, now: float) -> list[WaitingJob]:
        """Jobs whose wait, or whose record's time, is over (oldest first)."""
        return [job for job in self.jobs.values() if job.expires <= now]

    def surplus(self) -> list[WaitingJob]:
        """The oldest records beyond :data:`MAX_RECORDS`: forgotten, so the records stay bounded."""
        records = [job for job in self.jobs.values() if job.state in ENDED or job.state == DELIVERED]
        return records[:max(0, len(records) - MAX_RECORDS)]

    def forget(self, job: WaitingJob) -> None:
        self.jobs.pop(job.token, None)

    def find(self, token: str, owner: str) -> WaitingJob | None:
        """The job ``token`` if it is ``owner``'s: to anyone else it does not exist."""
        job = self.jobs.get(token)
        return job if job is not None and job.owner == owner else None

    def of(self, owner: str, backend: str) -> list[WaitingJob]:
        """``owner``'s jobs for ``backend`` that are here (waiting, or ended here), oldest first."""
        return [job for job in self.jobs.values()
                if job.owner == owner and job.backend == backend and job.state not in (SENT, DELIVERED)]
