"""Jobs seen from the caller: start one, list yours, and come back to one from any later process.

``client.start(...)`` (or ``be.f.start(...)``) asks the backend to run a call as a job
(:mod:`de_magic.backend.jobs`) and returns a :class:`Job` at once.  The job's id names its
backend and worker, so :func:`attach` (``client.job(id)``) knows whom to ask, from this process
or a later one; if that worker is gone (the backend restarted), the backend's other workers
are asked, since a restarted backend keeps its finished results when it has a job directory.

A :class:`Job` follows its job with short ``job.poll`` requests, each bringing the progress and
output that are new (so no slot of the backend is held while the job runs).  The polls go through
the client's one I/O thread, which also times the next one: a Job holds no thread and no socket,
so one client follows thousands.  Progress shows live (a bar in the cell that made the Job, text on a terminal), and the
poll after the job's end brings the answer.  Every request names the local user: on a plaintext
broker that is whose jobs they are (claimed, not proven); under CURVE the backend goes by the
caller's key.

A job started while its backend is offline waits at a broker with a state directory (status ``waiting``;
:mod:`de_magic.broker.waiting`): its id names :data:`~de_magic.wire.protocol.BROKER_HELD` for its worker, so
its requests go to the broker, until the broker answers with the worker it handed the job to.
"""

from __future__ import annotations

import html
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as futures_wait
from typing import TYPE_CHECKING, Callable

from ..wire import serialize
from ..wire.protocol import BROKER_HELD
from ..wire.errors import (NO_SUCH_JOB, BackendLost, CallTimeout, DeMagicError, Interrupted, JobUnavailable,
                           from_header)
from ..wire.security import local_user
from ..wire.defaults import DEFAULT_LISTING_TIMEOUT
from .calls import decode_result, encode_call
from . import ui
from .progress import Progress, default_progress, text_line
from .session import RemoteSession, colors
from .tables import JobTable, age

if TYPE_CHECKING:
    from .client import Client

#: Events of a ``%%remote`` job that are cell output, kept on the Job for replay.
OUTPUT_EVENTS = frozenset({"stream", "display", "clear_output"})
#: Seconds to look for a job's worker after a poll was lost (a broker or backend restarting).
RELOCATE_PATIENCE = 10.0
#: Seconds between polls of a running job: progress is this fresh.
POLL_INTERVAL = 0.5
#: Seconds between polls of a job waiting at the broker for its backend: it may wait for hours, and the broker
#: answers every waiting job's polls (the job itself starts as soon as its backend registers).
WAITING_POLL_INTERVAL = 2.0
#: Statuses after which a job changes no more: its poll brought the answer.
FINAL = frozenset({"done", "failed", "cancelled"})


def identity() -> dict:
    """What every job request says of its caller: who owns jobs on a plaintext broker."""
    return {"user": local_user()}


class Job:
    """A call running on a backend independently of this process (see :mod:`de_magic.caller.jobs`).

    ``status`` is waiting (for its backend, at the broker), queued, running, done, failed or cancelled;
    ``progress`` the latest report
    of its outermost loop; ``result()`` waits for the value; ``cancel()`` stops it.
    """

    def __init__(self, client: Client, backend: str, worker: bytes, summary: dict,
                 on_progress: Callable[[Progress], None] | None = None):
        self.client, self.backend, self.worker = client, backend, worker
        self.id: str = summary["id"]
        self.what: str = summary["what"]
        self.created: float = summary["created"]
        self.status: str = summary["status"]
        self.progress: Progress | None = None
        #: Output of a ``%%remote`` job (stream, display and clear_output events), in order.
        self.outputs: list[dict] = []
        self._render = on_progress or client.on_progress or default_progress()
        self._seen = self._shown = 0  # progress reports and other events seen: a poll brings only newer ones
        self._displays: list[Callable[[dict], None]] = []  # where a UI shows this job: see add_display
        self._future: Future = Future()
        self._poll(learn=True)

    # -- what a user calls -----------------------------------------------------------

    def result(self, timeout: float | None = None):
        """The job's value, once it is done (waits up to ``timeout`` seconds, default: as long as it runs)."""
        try:
            return self._future.result(timeout)
        except FutureTimeout:
            raise CallTimeout(f"job {self.id} is still {self.status} after {timeout:g} s") from None
        except KeyboardInterrupt:  # only the waiting here stops: the job is the backend's to run
            raise Interrupted(f"interrupted; job {self.id} goes on on {self.backend!r} "
                              f"(client.job({self.id!r}) comes back to it, .cancel() stops it)") from None

    def done(self) -> bool:
        return self._future.done()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job ends, or ``timeout`` seconds; whether it ended."""
        done, _ = futures_wait([self._future], timeout)
        return bool(done)

    def cancel(self) -> bool:
        """Stop the job on the backend (or where it waits for it); False if it had finished already."""
        return bool(self._request("job.cancel"))

    # -- following the job -----------------------------------------------------------

    def _request(self, op: str, on_event=None, **fields):
        head, frames = self.client.request(self.backend, {"op": op, "id": self.id, **fields, **identity()}, [],
                                           on_event=on_event, worker=self.worker)
        reply = serialize.loads(frames)
        if self._moved(reply):  # the broker handed it to a worker meanwhile: ask there
            return self._request(op, on_event, **fields)
        return reply

    def _moved(self, reply) -> bool:
        """Whether ``reply`` is the broker's word that the job it held runs on a worker now (followed there)."""
        if self.worker != BROKER_HELD or not isinstance(reply, dict) or "worker" not in reply:
            return False
        self.worker = bytes.fromhex(reply["worker"])
        return True

    def _poll(self, learn: bool = False) -> None:
        """Ask for what is new; the answer comes to :meth:`_polled` in the client's I/O thread."""
        try:
            sent = self.client.send_request(self.backend, {"op": "job.poll", "id": self.id, "progress": self._seen,
                                                           "outputs": self._shown, **identity()}, [],
                                            on_event=self._on_event, worker=self.worker, learn=learn)
        except BaseException as exc:  # noqa: BLE001 - the job's end, as the caller will see it (a closed client)
            return self._fail(exc)
        sent.add_done_callback(self._polled)

    def _polled(self, sent: Future) -> None:
        exc = sent.exception()
        if isinstance(exc, BackendLost) and self.worker == BROKER_HELD:  # the broker restarted; it still holds it
            failed = self._later(self._poll)
            return None if failed is None else self._fail(failed)
        if isinstance(exc, BackendLost):  # a restart: look for the job again, off the I/O thread
            try:
                return self.client.in_background(self._relocate)
            except RuntimeError as closed:
                return self._fail(DeMagicError(f"{closed}: job {self.id} is no longer followed here"))
        if exc is not None:
            return self._fail(exc)
        try:
            reply = serialize.loads(sent.result()[1])
        except BaseException as error:  # noqa: BLE001
            return self._fail(error)
        if self._moved(reply):
            return self._poll(learn=True)
        if (self.status, self._seen) != (reply["status"], reply["progress"]):
            self.status, self._seen = reply["status"], reply["progress"]
            self._update_displays()
        if self.status not in FINAL:
            failed = self._later(self._poll)
            return None if failed is None else self._fail(failed)
        if "error" in reply:
            self._future.set_exception(from_header(reply["error"]))
            return
        try:
            self._future.set_result(decode_result({"codec": reply["codec"]}, reply["frames"]))
        except BaseException as error:  # noqa: BLE001 - e.g. a class this process cannot unpickle
            self._future.set_exception(error)

    def _later(self, then: Callable[[], None]) -> BaseException | None:
        """Call ``then`` in a poll interval; the error that ends following the job if the client closed."""
        try:
            self.client.later(WAITING_POLL_INTERVAL if self.worker == BROKER_HELD else POLL_INTERVAL, then)
        except RuntimeError as closed:
            return DeMagicError(f"{closed}: job {self.id} is no longer followed here")
        return None

    def _relocate(self) -> None:
        try:
            self.worker, _ = locate(self.client, self.backend, self.id, self.worker, RELOCATE_PATIENCE)
        except BaseException as exc:  # noqa: BLE001
            return self._fail(exc)
        self._poll(learn=True)

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, JobUnavailable):
            self.status = "gone"  # expired, evicted, or lost in a restart: result() says which
            self._update_displays()
        self._future.set_exception(exc)

    def _on_event(self, header: dict, frames: list) -> None:
        kind = header.get("event")
        if kind == "progress":
            report = Progress.from_event(header)
            if report.parent is None:
                self.progress = report
            if self._render is not None:
                self._render(report)
            return
        self._shown += 1
        if kind in OUTPUT_EVENTS:
            output = dict(header)
            if frames:
                output.update(serialize.loads_json(frames))
            self.outputs.append(output)

    # -- how it shows ----------------------------------------------------------------

    def _progress_text(self) -> str:
        return f" ({text_line(self.progress)})" if self.progress is not None else ""

    def __repr__(self) -> str:
        return f"<Job {self.id}: {self.what} on {self.backend!r}, {self.status}{self._progress_text()}>"

    def _ipython_display_(self) -> None:
        """Show the job: live where a UI layer registered how (a notebook), else as text."""
        show = ui.hook("show_job")
        if show is not None:
            show(self)
        else:
            print(repr(self))

    def _repr_mimebundle_(self, include=None, exclude=None, bar: bool = True) -> dict:
        """``bar=False``: the HTML without the progress, for a display next to the job's own live bars."""
        return {"text/plain": repr(self), "text/html": self._repr_html_(bar)}

    def add_display(self, update: Callable[[dict], None]) -> None:
        """Call ``update(bundle)`` with the job's new MIME bundle whenever its status or progress changes."""
        self._displays.append(update)

    def _update_displays(self) -> None:
        for update in self._displays:
            update(self._repr_mimebundle_())

    def _repr_html_(self, with_bar: bool = True) -> str:
        bar, progress = "", self.progress if with_bar else None
        if progress is not None and progress.total:
            bar = (f" <progress value='{progress.n}' max='{progress.total}'></progress> "
                   f"{html.escape(text_line(progress))}")
        elif progress is not None:
            bar = f" {html.escape(text_line(progress))}"
        return (f"<div><b>job</b> <code>{html.escape(self.id)}</code>: {html.escape(self.what)} on "
                f"<b>{html.escape(self.backend)}</b>, <i>{html.escape(self.status)}</i>{bar}, "
                f"started {age(self.created)} ago</div>")


def parse_id(job_id: str) -> tuple[str, bytes]:
    """The backend and worker a job id names."""
    parts = str(job_id).rsplit(":", 2)
    if len(parts) == 3 and all(parts):
        try:
            return parts[0], bytes.fromhex(parts[1])
        except ValueError:
            pass
    raise JobUnavailable(f"{str(job_id)[:80]!r} is not a job id (they look like backend:worker:token)")


def is_job_id(text: str) -> bool:
    try:
        parse_id(text)
    except JobUnavailable:
        return False
    return True


def start(client: Client, backend: str, member: str, args: tuple = (), kwargs: dict | None = None, *,
          method: str | None = None, init: tuple[tuple, dict] | None = None,
          on_progress: Callable[[Progress], None] | None = None, timeout: float | None = None) -> Job:
    """Run a call of ``member`` (or ``method`` of a class built with ``init``) as a job; see :meth:`Client.start`."""
    # encoded as a plain call is: remote references among the arguments pin the job to their worker
    header, payload, worker = encode_call(backend, member, args, kwargs, method, init, False, serialize.PICKLE)
    header.update(op="job.start", run="call", **identity())
    head, frames = client.request(backend, header, payload, timeout=timeout, worker=worker)
    return Job(client, backend, bytes.fromhex(head["worker"]), serialize.loads(frames), on_progress)


def start_cell(session: RemoteSession, code: str, push: dict, pull) -> Job:
    """Run a ``%%remote`` cell as a job in ``session``'s namespace (on its worker; held by the broker while the
    backend is offline)."""
    header = {"op": "job.start", "run": "exec", "code": code, "pull": list(pull), "colors": colors(), **identity()}
    head, frames = session.request(header, serialize.dumps(dict(push)))
    return Job(session.client, session.backend, bytes.fromhex(head["worker"]), serialize.loads(frames))


def attach(client: Client, job_id: str, on_progress: Callable[[Progress], None] | None = None) -> Job:
    """The job ``job_id`` of this caller, followed from here on (progress live, ``result()``, ``cancel()``)."""
    backend, worker = parse_id(job_id)
    if worker == BROKER_HELD:  # started while its backend was offline: the broker knows where it is
        summary = _status(client, backend, worker, job_id)
        if "worker" not in summary:
            return Job(client, backend, worker, summary, on_progress)
        worker = bytes.fromhex(summary["worker"])
    worker, summary = locate(client, backend, job_id, worker)
    return Job(client, backend, worker, summary, on_progress)


def locate(client: Client, backend: str, job_id: str, worker: bytes, patience: float = 0.0) -> tuple[bytes, dict]:
    """The worker holding the job and its summary: the one its id names, else (a restarted backend) any
    other of the backend's workers that knows it; looking for up to ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while True:
        live = [bytes.fromhex(w["id"]) for w in _workers(client, backend)]
        for candidate in sorted(live, key=lambda w: w != worker):  # the named worker first
            try:
                return candidate, _status(client, backend, candidate, job_id)
            except BackendLost:  # a worker that died and is still listed for a moment
                continue
            except JobUnavailable as exc:
                if candidate == worker or not str(exc).startswith(NO_SUCH_JOB):
                    raise  # the job's own worker, or the one holding it, has spoken
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    raise JobUnavailable(f"{NO_SUCH_JOB} {job_id!r}: its worker of backend {backend!r} is gone (the backend "
                         "stopped or restarted) and no other worker has it; a job that was running is lost, and a "
                         "finished result outlives a restart only with --job-dir")


def _workers(client: Client, backend: str) -> list[dict]:
    try:
        entry = client.listing(backend, api=False)["backends"].get(backend)
    except (BackendLost, CallTimeout):  # the broker is away for a moment: no worker to ask now
        return []
    return entry["workers"] if entry else []


def _status(client: Client, backend: str, worker: bytes, job_id: str) -> dict:
    head, frames = client.request(backend, {"op": "job.status", "id": job_id, **identity()}, [], worker=worker,
                                  timeout=client.liveness * client.heartbeat * 2)
    return serialize.loads(frames)


def list_jobs(client: Client) -> JobTable:
    """This caller's jobs on every live backend that keeps jobs, and those waiting for an offline one, as a table."""
    jobs, silent = [], []
    for name, entry in sorted(client.listing(api=False)["backends"].items()):
        if entry.get("codec", serialize.PICKLE) != serialize.PICKLE:
            continue  # a no-pickle backend serves plain calls only
        held = [{"id": BROKER_HELD.hex()}] if entry.get("offline") or entry.get("waiting") else []
        for worker in held + entry["workers"]:
            try:
                head, frames = client.request(name, {"op": "job.list", **identity()}, [],
                                              worker=bytes.fromhex(worker["id"]), timeout=DEFAULT_LISTING_TIMEOUT)
            except DeMagicError:
                silent.append(name)
                continue
            jobs += [{**job, "backend": name} for job in serialize.loads(frames)]
    return JobTable(jobs, client.url, sorted(set(silent)))
