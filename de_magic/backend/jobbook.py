"""Which jobs wait, run, are kept and are forgotten: the job store's decisions, without threads, disk or clocks.

:class:`JobBook` is to :class:`~de_magic.backend.jobs.JobStore` what the worker's
:class:`~de_magic.backend.core.DirectCore` is to the direct endpoint: the store tells it what happened
(a job asked to start, one finished, one was cancelled, time passed) and runs what it decides.

What it guarantees (tests/test_jobbook.py checks them for random sequences):

- jobs start in the order they were started, at most ``capacity`` at a time; the rest wait in a queue of
  at most ``max_queue``, and a job that waits holds no thread, only its place in the queue;
- a job cancelled while it waits never starts; cancelled places are compacted away as in the broker's
  queues (:func:`~de_magic.wire.admission.compact_due`), so they cannot pile up;
- finished jobs are kept within ``ttl`` seconds, ``max_bytes`` of answers and ``max_kept`` jobs, the
  oldest finished going first; records of gone ones are kept to say why, at most :data:`MAX_GONE`;
- no operation looks at every job: each costs the jobs it changes, so 15,000 finished jobs slow no
  start, status or poll (only a listing walks the jobs, once).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from ..wire import admission
from ..wire.errors import Busy, Refused, duration

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
#: Statuses of jobs whose answer is gone; the record stays to say why.
EXPIRED, EVICTED, LOST = "expired", "evicted", "lost"
FINISHED = frozenset({DONE, FAILED, CANCELLED})
GONE = frozenset({EXPIRED, EVICTED, LOST})
#: Records of gone jobs kept to say what became of them (oldest forgotten first).
MAX_GONE = 10_000
#: Why a job that was running when its backend stopped has no answer.
STOPPED = "it was still running when the backend stopped, and its work was lost; start it again"
#: Why a job that was waiting for a free place when its backend stopped has no answer.
NEVER_STARTED = ("it never started: it was waiting for a free place when the backend stopped; "
                 "start it again")


@dataclass
class Job:
    """One job: what it runs, whose it is, what it has reported, and once finished its answer."""

    id: str  #: ``backend:worker:token``: where it was started, so a caller knows whom to ask
    owner: str
    what: str  #: ``member``, ``Class.method`` or ``%%remote``, for listings
    created: float = field(default_factory=time.time)
    status: str = QUEUED
    finished: float | None = None
    reason: str = ""  #: why a gone job's answer is gone
    size: int = 0  #: bytes of the kept answer (while it runs: of its output so far)
    progress: dict = field(default_factory=dict)  #: bar id -> its latest ``progress`` event, with its ``seq``
    seq: int = 0  #: how many progress reports there were: a poller says how many it has seen
    outputs: list = field(default_factory=list)  #: output events as (header, frames), in order
    answer: dict | None = None  #: once finished: result frames or error, and outputs; None when gone or on disk
    call: object = None  #: the call that runs it, until it finished

    @property
    def token(self) -> str:
        return token_of(self.id)

    def summary(self) -> dict:
        """What listings show (JSON): the latest report of the outermost loop is the job's progress."""
        outer = [bar for bar in self.progress.values() if bar.get("parent") is None]
        return {"id": self.id, "what": self.what, "status": self.status, "created": self.created,
                "finished": self.finished, "size": self.size, "reason": self.reason,
                "progress": max(outer, key=lambda bar: bar["seq"], default=None)}

    def meta(self) -> dict:
        """What the index on disk keeps of the job."""
        return {**self.summary(), "owner": self.owner, "progress": list(self.progress.values()), "seq": self.seq}


def token_of(job_id: str) -> str:
    """The part of an id that names the job on whichever worker of its backend holds it."""
    return str(job_id).rpartition(":")[2]


class JobBook:
    """The jobs of one worker, by state. Not thread-safe: the store holds its lock around every call."""

    def __init__(self, name: str, capacity: int, max_queue: int, ttl: float, max_bytes: int, max_kept: int):
        self.name, self.capacity, self.max_queue = name, capacity, max_queue
        self.ttl, self.max_bytes, self.max_kept = ttl, max_bytes, max_kept
        self.jobs: dict[str, Job] = {}  # every job known, by token, in the order they were started
        self.queue: deque[Job] = deque()  # waiting jobs, oldest first; cancelled ones stay until popped
        self.waiting = 0  # live entries of ``queue``
        self.dead = 0  # cancelled entries still in ``queue``
        self.running = 0
        self.kept: OrderedDict[str, Job] = OrderedDict()  # finished jobs with an answer, oldest finished first
        self.kept_bytes = 0
        self.gone: OrderedDict[str, None] = OrderedDict()  # jobs whose answer is gone, oldest first

    # -- starting ------------------------------------------------------------------------------

    def admit(self, job: Job) -> None:
        """A new job: it waits for its turn (see :meth:`take`), or raises Busy if too many wait already
        (Refused if its token is in use: a job a broker held while we were offline is not started twice)."""
        if job.token in self.jobs:
            raise Refused(f"a job with token {job.token} exists here already; it is not started twice")
        free = max(0, self.capacity - self.running)  # places that the jobs admitted so far will take
        if self.waiting - free >= self.max_queue:
            raise Busy(f"backend {self.name!r} has {self.waiting - free} jobs waiting already; try again later")
        self.jobs[job.token] = job
        self.queue.append(job)
        self.waiting += 1

    def take(self) -> Job | None:
        """The oldest waiting job, now running, if there is a free place for it; else None."""
        if self.running >= self.capacity:
            return None
        queue = self.queue
        while queue and queue[0].status != QUEUED:
            queue.popleft()
            self.dead -= 1
        if not queue:
            return None
        job = queue.popleft()
        self.waiting -= 1
        self.running += 1
        job.status = RUNNING
        return job

    def withdraw(self, job: Job) -> bool:
        """A cancel of a job that waits: it leaves the queue (True; the store answers it as cancelled).
        False if it is not waiting (running: the store interrupts it; finished: nothing to do)."""
        if job.status != QUEUED:
            return False
        job.status = CANCELLED  # its place in the queue is skipped, then compacted away
        self.waiting -= 1
        self.dead += 1
        if admission.compact_due(self.dead, self.waiting):
            self.queue = deque(j for j in self.queue if j.status == QUEUED)
            self.dead = 0
        return True

    # -- ending --------------------------------------------------------------------------------

    def finish(self, job: Job, status: str, size: int, now: float, was_running: bool = True) -> list[Job]:
        """A job ended with an answer of ``size`` bytes; the jobs whose answers are dropped to make room."""
        if was_running:
            self.running -= 1
        job.status, job.finished, job.size = status, now, size
        self.kept[job.token] = job
        self.kept_bytes += size
        return self.expire(now)

    def lose(self, job: Job, reason: str, was_running: bool) -> None:
        """A job that ends with no answer (its backend stopped)."""
        if was_running:
            self.running -= 1
        elif job.status == QUEUED:
            self.waiting -= 1
            self.dead += 1
        self._gone(job, LOST, reason)

    def stop(self) -> list[Job]:
        """The backend stops: the jobs that wait never start; they are lost, and said to be so."""
        waiting = [job for job in self.queue if job.status == QUEUED]
        for job in waiting:
            self.lose(job, NEVER_STARTED, was_running=False)
        self.queue.clear()
        self.dead = 0
        return waiting

    # -- bounds --------------------------------------------------------------------------------

    def expire(self, now: float) -> list[Job]:
        """Drop answers past their time, then the oldest while over the byte or count budget; the dropped.
        Answers are kept in the order they finished, so this looks at no job it does not drop."""
        dropped = []
        kept = self.kept
        while kept:
            job = next(iter(kept.values()))
            if now - job.finished > self.ttl:
                reason = f"its result expired: results are kept for {duration(self.ttl)}"
                status = EXPIRED
            elif self.kept_bytes > self.max_bytes:
                reason = (f"its result was evicted to keep the backend's kept results within {self.max_bytes} "
                          "bytes (--job-bytes)")
                status = EVICTED
            elif len(kept) > self.max_kept:
                reason = (f"its result was evicted to keep the backend's finished jobs within {self.max_kept} "
                          "(--max-jobs)")
                status = EVICTED
            else:
                break
            self._gone(job, status, reason)
            dropped.append(job)
        return dropped

    def _gone(self, job: Job, status: str, reason: str) -> None:
        if self.kept.pop(job.token, None) is not None:
            self.kept_bytes -= job.size
        job.status, job.reason, job.answer, job.size = status, reason, None, 0
        self.gone[job.token] = None
        while len(self.gone) > MAX_GONE:
            token, _ = self.gone.popitem(last=False)
            del self.jobs[token]

    # -- loading -----------------------------------------------------------------------------------

    def restore(self, jobs: list[Job]) -> None:
        """Jobs of an earlier process (finished, gone or lost), in the order they were started."""
        for job in jobs:
            self.jobs[job.token] = job
            if job.status in GONE:
                self.gone[job.token] = None
        for job in sorted((j for j in jobs if j.status in FINISHED), key=lambda j: j.finished or 0.0):
            self.kept[job.token] = job
            self.kept_bytes += job.size
        while len(self.gone) > MAX_GONE:
            del self.jobs[self.gone.popitem(last=False)[0]]
