"""Jobs: calls that run on the backend independently of their caller, their answers kept for a while.

``job.start`` answers at once with the job's id and runs the call (a member, or a ``%%remote``
cell) as soon as one of the worker's places for jobs is free, in the order jobs were started
(:mod:`.jobbook` decides); its progress and output are recorded, and its answer is kept in the
:class:`JobStore` whether or not anyone waits for it.  ``job.poll`` sends what is new
since the caller's last poll (as events) and, once the job finished, its answer; ``job.status``,
``job.list`` and ``job.cancel`` do what they say.  Polls are short, so a followed job holds
no slot of the worker: a caller that disappears (a killed kernel, a closed laptop) costs
nothing, and finds its result again from any later process (docs/jobs.md).

A job belongs to the caller that started it: the public key the broker authenticated under
CURVE, else the local user name the client claims (a plaintext broker proves nothing).  To
anyone else a job does not exist, with the same words as an id that never did.

Kept answers are bounded by a time (``ttl``), a byte budget and a count, oldest evicted first.  With a
directory, answers (and an index) are written there as pickle-5 frames, so finished jobs
survive a restart; large ones live only there.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..wire import serialize
from ..wire.errors import NO_SUCH_JOB, JobUnavailable, Refused
from .callcontext import Call, Operation
from .failure import error_header
from .jobbook import (CANCELLED, DONE, FAILED, FINISHED, GONE, LOST, NEVER_STARTED, QUEUED, STOPPED, Job, JobBook,
                      token_of)

log = logging.getLogger("de_magic.backend.jobs")

#: The operations a job may run: a member call, or a ``%%remote`` cell.
RUNNABLE = ("call", "exec")
#: Answers at least this large live only on disk, when the store has a directory.
SPILL_MIN = 1 << 20
INDEX = "index.json"
#: Bytes of a running job's output budget kept for the note that says the rest was left out.
OUTPUT_NOTE_ROOM = 200
#: Finished inner loops whose last report is kept for pollers (a loop in a loop makes a new one each time).
MAX_DONE_BARS = 100


@dataclass
class JobCall(Call):
    """The call a job runs: its events are recorded on the job, for its pollers."""

    job: Job | None = None
    store: "JobStore | None" = None

    def emit(self, event: str, data: dict | None = None, payload: list | None = None) -> None:
        self.store.record(self.job, {"event": event, **(data or {})}, [bytes(memoryview(f)) for f in payload or ()])


class JobStore:
    """The jobs of one backend worker: :class:`~.jobbook.JobBook` decides, this runs and keeps them.

    Jobs run beside the slots, as many at a time as the backend has slots, each in a thread that, when
    its job ends, runs the next waiting one (a waiting job holds no thread). ``backend`` gives the
    name, id, limits, ``operations``, ``running`` (where calls are executed) and ``stopping``.
    """

    def __init__(self, backend, ttl: float, max_bytes: int, directory: str | os.PathLike | None = None,
                 max_jobs: int = 10_000):
        self.backend = backend
        self.max_bytes = max_bytes
        self.book = JobBook(backend.name, backend.max_workers, backend.max_queue, ttl, max_bytes, max_jobs)
        self.dir = Path(directory) if directory else None
        self._lock = threading.Lock()
        self._saving = threading.Lock()
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # pickles: whoever can write there runs code
            self._load()

    def operations(self) -> dict[str, Operation]:
        return {"job.start": Operation(self.start), "job.poll": Operation(self.poll),
                "job.status": Operation(self.status),
                "job.list": Operation(self.list), "job.cancel": Operation(self.cancel)}

    # -- operations ----------------------------------------------------------------------

    def start(self, call: Call) -> dict:
        """Start the job the header describes (``run``: ``call`` or ``exec``, and that op's fields)."""
        run = call.header.get("run", "call")
        if run not in RUNNABLE:
            raise ValueError(f"a job runs one of {', '.join(RUNNABLE)}, not {str(run)[:40]!r}")
        backend = self.backend
        job = Job(f"{backend.name}:{backend.id.hex()}:{_token(call.header)}", call.owner, _what(call.header, run))
        job.call = JobCall(backend, -1, b"job", job.token.encode(), {**call.header, "op": run}, call.payload,
                           call.caller, job=job, store=self)
        with self._lock:
            self.book.admit(job)
            summary = job.summary()
        self._save()
        self._start_next()
        return summary

    def poll(self, call: Call) -> dict:
        """Send the progress reports and output the caller has not seen (header ``progress``: how many
        reports it has seen, ``outputs``: how many outputs) as events; answer the job's status, and
        once it finished its result frames (out of band: no copy) or error."""
        job = self.find(call)
        seen, shown = int(call.header.get("progress", 0)), int(call.header.get("outputs", 0))
        with self._lock:
            status, seq = job.status, job.seq
            bars = sorted((bar for bar in job.progress.values() if bar["seq"] > seen), key=lambda bar: bar["seq"])
            outputs = job.outputs[shown:]
        answer = self._stored(job) if status in FINISHED else None
        for bar in bars:
            call.emit("progress", bar)
        for header, frames in answer["outputs"][shown:] if answer else outputs:
            call.emit(header["event"], header, frames)
        reply = {"status": status, "progress": seq}
        if answer is not None:
            reply.update((key, value) for key, value in answer.items() if key != "outputs")
            if "frames" in reply and call.header.get("codec") == serialize.JSON:
                reply["result"] = _json_result(job, reply.pop("frames"), reply.pop("codec"))
            elif "frames" in reply:
                reply["frames"] = [pickle.PickleBuffer(frame) for frame in reply["frames"]]
        return reply

    def status(self, call: Call) -> dict:
        job = self.find(call)
        with self._lock:
            return job.summary()

    def list(self, call: Call) -> list[dict]:
        """The caller's jobs here, oldest first."""
        owner = call.owner
        with self._lock:
            self._expire()
            return [job.summary() for job in self.book.jobs.values() if job.owner == owner]

    def cancel(self, call: Call) -> bool:
        """Stop the job; False if it had finished already."""
        job = self.find(call)
        with self._lock:
            withdrawn = self.book.withdraw(job)
            running = job.call  # None once finished
        if withdrawn:  # it was waiting: it ends here, never started
            self._finish(job, _cancelled(job), was_running=False)
            return True
        if running is None:
            return False
        self.backend.running.cancel(running.key)
        return True

    def find(self, call: Call) -> Job:
        """The caller's job that the header's ``id`` names; gone jobs and everyone else's raise."""
        job_id = str(call.header.get("id", ""))
        with self._lock:
            self._expire()
            job = self.book.jobs.get(token_of(job_id))
        if job is None or job.owner != call.owner:
            raise JobUnavailable(f"{NO_SUCH_JOB} {job_id[:80]!r} on backend {self.backend.name!r}")
        if job.status in GONE:
            raise JobUnavailable(f"job {job.id} on backend {self.backend.name!r}: {job.reason}")
        return job

    def stop(self) -> None:
        """The backend stops: waiting jobs are lost, and said never to have started."""
        with self._lock:
            lost = self.book.stop()
        for job in lost:
            job.outputs, job.call = [], None
        if lost:
            self._save()

    # -- running ---------------------------------------------------------------------------

    def _start_next(self) -> None:
        """Start a thread for the oldest waiting job if a place is free (see :meth:`_runner`)."""
        with self._lock:
            job = self._take()
        if job is not None:
            threading.Thread(target=self._runner, args=(job,), name=f"de-magic-job-{job.token[:8]}",
                             daemon=True).start()

    def _runner(self, job: Job | None) -> None:
        """Run jobs one after the other, as long as some wait: a place's thread, not a job's."""
        while job is not None:
            self._save()  # a crash from here on reports it as started, and lost
            self._run(job)
            with self._lock:
                job = self._take()

    def _take(self) -> Job | None:
        """The next job to run now, if any (under the lock); from here on a cancel interrupts it."""
        job = None if self.backend.stopping else self.book.take()
        if job is not None:
            self.backend.running.accept(job.call)
        return job

    def _run(self, job: Job) -> None:
        call = job.call
        try:
            answer = self._execute(call)
        except BaseException as exc:  # noqa: BLE001 - e.g. an interrupt that came after the job's end
            answer = {"status": FAILED, "error": json.loads(error_header(exc))}
        if self.backend.stopping:  # interrupted by the backend stopping, not by its caller
            self._lose(job)
        else:
            self._finish(job, answer)

    def _execute(self, call: JobCall) -> dict:
        """Run the job's operation here (as every call is run: see running.py); its answer."""
        try:
            result = self.backend.running.execute(call, self.backend.operations[call.header["op"]])
            if call.header.get("codec") == serialize.JSON:  # started in JSON: its caller unpickles nothing
                return {"status": DONE, "codec": serialize.JSON, "frames": serialize.dumps_json(result)}
            return {"status": DONE, "codec": serialize.PICKLE, "frames": serialize.dumps(result)}
        except BaseException as exc:  # noqa: BLE001 - whatever the job raised is its answer
            if isinstance(exc, KeyboardInterrupt) and call.cancelled:
                return _cancelled(call.job)
            return {"status": FAILED, "error": json.loads(error_header(exc))}

    def record(self, job: Job, header: dict, frames: list) -> None:
        """An event of a running job: progress replaces the loop's last report, output is kept."""
        with self._lock:
            if header["event"] != "progress":
                self._keep_output(job, header, frames)
                return
            job.seq += 1
            job.progress[header.get("id", 0)] = {**{k: v for k, v in header.items() if k != "event"}, "seq": job.seq}
            done = [key for key, bar in job.progress.items() if bar.get("done") and bar.get("parent") is not None]
            for key in done[:max(0, len(done) - MAX_DONE_BARS)]:
                del job.progress[key]

    def _keep_output(self, job: Job, header: dict, frames: list) -> None:
        """Keep an output event of a running job within the byte budget: of text, the part that fits;
        after the first event that did not fit, one note says so, and nothing more is kept."""
        if job.size > self.max_bytes:
            return
        room = self.max_bytes - job.size - OUTPUT_NOTE_ROOM
        size = _event_size(header, frames)
        if size > room and header.get("event") == "stream":
            header = _fit(header, room)
        kept = _event_size(header, frames)
        if kept <= room:
            job.outputs.append((header, frames))
            job.size += kept
        if size > room:
            note = f"[de-magic: this job's further output is left out: over {self.max_bytes} bytes (--job-bytes)]\n"
            job.outputs.append(({"event": "stream", "name": "stderr", "text": note}, []))
            job.size = self.max_bytes + 1  # full: nothing more is kept

    def _finish(self, job: Job, answer: dict, was_running: bool = True) -> None:
        answer["outputs"] = job.outputs
        size = serialize.nbytes(answer.get("frames", ())) + sum(_event_size(h, f) for h, f in job.outputs)
        if self.dir is not None:  # on disk before anyone hears it finished: a crash right after loses nothing
            _write_frames(self.dir / f"{job.token}.frames", answer)
        with self._lock:
            # a large answer is kept only on disk
            job.answer = None if self.dir is not None and size >= SPILL_MIN else answer
            job.outputs, job.call = [], None
            dropped = self.book.finish(job, answer["status"], size, time.time(), was_running)
        self._forget(dropped)
        self._save()

    def _lose(self, job: Job) -> None:
        with self._lock:
            self.book.lose(job, STOPPED, was_running=True)
            job.outputs, job.call = [], None
        self._save()

    def _stored(self, job: Job) -> dict:
        """A finished job's answer (result frames or error, and its output), from memory or disk."""
        with self._lock:
            answer = job.answer
        if answer is None:
            if job.status in GONE:  # expired or evicted since the poll looked
                raise JobUnavailable(f"job {job.id} on backend {self.backend.name!r}: {job.reason}")
            answer = _read_frames(self.dir / f"{job.token}.frames")
        return answer

    # -- bounds and disk ---------------------------------------------------------------------

    def _expire(self) -> None:
        """Forget answers past their time (under the lock; the book looks at no job it keeps)."""
        self._forget(self.book.expire(time.time()))

    def _forget(self, dropped: list[Job]) -> None:
        for job in dropped:
            log.info("job %s: %s", job.id, job.reason)
            if self.dir is not None:
                (self.dir / f"{job.token}.frames").unlink(missing_ok=True)

    def _save(self) -> None:
        """Write the index: what a restarted backend knows of its jobs (atomically: a crash leaves the old one)."""
        if self.dir is None:
            return
        with self._saving:  # one writer at a time, so that an older index never replaces a newer one
            with self._lock:
                index = [job.meta() for job in self.book.jobs.values()]
            temporary = self.dir / f".{INDEX}.partial"
            temporary.write_text(json.dumps(index))
            os.replace(temporary, self.dir / INDEX)

    def _load(self) -> None:
        """The jobs of an earlier process with this directory: finished ones keep their answers on disk;
        those that were running are lost with that process, and those that waited never started."""
        path = self.dir / INDEX
        if not path.exists():
            return
        jobs = []
        for meta in json.loads(path.read_text()):
            job = Job(meta["id"], meta["owner"], meta["what"], created=meta["created"], status=meta["status"],
                      finished=meta["finished"], reason=meta["reason"], size=meta["size"],
                      progress={bar.get("id", 0): bar for bar in meta["progress"]}, seq=meta["seq"])
            if job.status not in FINISHED | GONE:
                job.status, job.reason = LOST, NEVER_STARTED if job.status == QUEUED else STOPPED
            elif job.status in FINISHED and not (self.dir / f"{job.token}.frames").exists():
                job.status, job.reason = LOST, "its result file is missing from the backend's job directory"
            jobs.append(job)
        with self._lock:
            self.book.restore(jobs)
            self._expire()
        self._save()


def _event_size(header: dict, frames: list) -> int:
    return len(json.dumps(header)) + serialize.nbytes(frames)


def _fit(header: dict, room: int) -> dict:
    """A stream event with as much of its text as fits in ``room`` bytes (as JSON, escapes included)."""
    text = str(header.get("text", ""))
    keep = len(text)
    while keep > 0 and (excess := _event_size({**header, "text": text[:keep]}, []) - room) > 0:
        keep -= excess  # an escaped character takes more than one byte: cut again until it fits
    return {**header, "text": text[:max(0, keep)]}


def _what(header: dict, run: str) -> str:
    if run == "exec":
        return "%%remote"
    member = str(header.get("member", "?"))
    return f"{member}.{header['method']}" if header.get("method") else member


def _json_result(job: Job, frames: list, codec: str):
    """A finished job's result for a poll made in JSON: the JSON value, tagged values left as they are."""
    if codec != serialize.JSON:
        raise Refused(f"job {job.id} was started with pickles and its result is a pickle; a caller in JSON "
                      "gets the results of jobs it started in JSON")
    return json.loads(bytes(memoryview(frames[0])))


def _token(header: dict) -> str:
    """A new job's token: the one a broker gave a job it held while this backend was offline (so that the
    caller's id names it here too; the book refuses it if it is in use), else a new one."""
    token = header.get("token")
    if token is None:
        return os.urandom(9).hex()
    if not (isinstance(token, str) and len(token) == 18 and all(c in "0123456789abcdef" for c in token)):
        raise ValueError("a job's token is 18 lowercase hex digits")
    return token


def _cancelled(job: Job) -> dict:
    return {"status": CANCELLED, "error": {"kind": "cancelled", "message": f"job {job.id} was cancelled"}}


def _write_frames(path: Path, answer: dict) -> None:
    """An answer as pickle-5 frames (its result frames out of band), each with its length before it."""
    frames = serialize.dumps({**answer, "frames": [pickle.PickleBuffer(f) for f in answer.get("frames", ())]})
    temporary = path.with_suffix(".partial")
    with open(temporary, "wb") as out:
        out.write(struct.pack("!Q", len(frames)))
        for frame in frames:
            view = memoryview(frame).cast("B")
            out.write(struct.pack("!Q", view.nbytes))
            out.write(view)
    os.replace(temporary, path)


def _read_frames(path: Path) -> dict:
    with open(path, "rb") as source:
        (count,) = struct.unpack("!Q", source.read(8))
        frames = [source.read(struct.unpack("!Q", source.read(8))[0]) for _ in range(count)]
    return serialize.loads(frames)
