"""A backend whose calls run as tasks on a Dask cluster (``de-magic serve ... --dask ADDRESS``).

The backend process stays the front door: it registers, takes calls and
answers them, but instead of running a member in its slot thread it submits
it to the cluster and waits.  On the Dask worker the call keeps what a backend
function has at home: :data:`~de_magic.backend.current_call` is a
:class:`TaskCall` whose events (``progress(...)``) travel back as Dask events
(``Worker.log_event`` -> scheduler -> our ``subscribe_topic`` handler), and
the slot thread that waits for the task sends them on the call's connection,
in order and before the answer.  A cancel interrupts the worker thread that
runs the task and cancels the future; a worker that dies under a call fails
that call (Dask would quietly run it again elsewhere, and calls may have side
effects).  ``distributed`` is imported only here, and only when a backend
uses a cluster.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import copyreg
import ctypes
import logging
import os
import queue
import sys
import threading
import uuid
from dataclasses import dataclass, field, replace

from ..wire.errors import BackendLost, Cancelled
from . import shell
from .callcontext import current_call
from .server import Backend

log = logging.getLogger("de_magic.daskpool")

#: How often the front door looks at the cluster's size, to keep its listing current.
WATCH_INTERVAL = 2.0
#: How the keys of our tasks begin (the rest: the member's name, a unique id).
TASK_PREFIX = "de-magic-"
#: How often a waiting slot thread wakes, so that a cancel (an async interrupt) lands.
_WAKE = 0.05


def cluster_address(value: str | None) -> str | None:
    """The cluster to use: ``value`` (a flag or main() option), else $DE_MAGIC_DASK, else the config file's ``dask``."""
    from ..wire.security import DASK, setting

    return setting(value, "DE_MAGIC_DASK", DASK)


def cluster_info(client) -> dict:
    """What listings show of the cluster: its scheduler, dashboard, workers and threads."""
    nthreads = client.nthreads()
    return {"scheduler": client.scheduler.address, "dashboard": client.dashboard_link,
            "workers": len(nthreads), "threads": sum(nthreads.values())}


def pickle_by_value(members: dict) -> None:
    """Ship the code of members from script files (top-level modules) with each task: the scheduler and
    workers started elsewhere cannot import ``backend.py``; members of packages must be installed there.

    Dask pickles a task with plain pickle when it can (by reference), so tasks carry the member
    already pickled by cloudpickle (see :meth:`DaskPool.invoke`).
    """
    import cloudpickle

    copyreg.pickle(contextvars.ContextVar, _context_var)
    for member in members.values():
        module = sys.modules.get(getattr(member, "__module__", None) or "")
        if module is not None and "." not in module.__name__ and module.__name__ != "__main__":
            cloudpickle.register_pickle_by_value(module)


def _context_var(var: contextvars.ContextVar):
    """A module shipped by value takes its globals along, ``current_call`` too: that one travels as a
    reference to the worker's own (a ContextVar cannot be copied)."""
    if var is not current_call:
        raise TypeError(f"cannot send {var!r} to a Dask worker: keep context variables out of a backend's globals")
    return _current_call, ()


def _current_call() -> contextvars.ContextVar:
    return current_call


# -- the front door (backend process) ------------------------------------------------


@dataclass
class _Waiting:
    """A call waiting for its task: the events relayed for it, and why it failed if its worker was lost."""

    events: "queue.SimpleQueue[dict]" = field(default_factory=queue.SimpleQueue)
    wake: threading.Event = field(default_factory=threading.Event)
    lost: str | None = None


class DaskPool:
    """Runs the calls of a backend on the cluster of ``client`` (see the module's docstring)."""

    def __init__(self, client):
        self.client = client
        self.backend: Backend | None = None
        self.topic = ""  # where our tasks' events go: named after the backend's id, on attach()
        self.scheduler = ""
        self._waiting: dict[str, _Waiting] = {}
        self._topics: list[str] = []  # Dask event topics this front door listens to
        self._stop = threading.Event()
        # stopping a task takes round trips to the scheduler and a worker: the caller's answer must not wait for them
        self._stopper = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="de-magic-dask-cancel")
        self._watcher = threading.Thread(target=self._watch, name="de-magic-dask-watch", daemon=True)

    @classmethod
    def connect(cls, address: str, port: int | None = None) -> "DaskPool":
        """A pool on ``address``: ``tcp://host:port`` of a running scheduler, or ``local[:N]`` for a
        LocalCluster of N one-thread worker processes (one per CPU without N), whose scheduler listens on
        ``port`` and its dashboard on the next (as Dask's 8786 and 8787), or on free ports without it."""
        from distributed import Client, LocalCluster

        kind, _, count = address.partition(":")
        if kind == "local":
            if count and not count.isdigit():
                raise ValueError(f"the Dask address local:N needs a number of workers, not {count!r}")
            if port is not None and not 0 <= port < 65535:
                raise ValueError(f"--dask-port must be a port number below 65535, not {port}")
            try:  # processes of one thread each: pure-Python calls must not share a GIL
                cluster = LocalCluster(n_workers=int(count or os.cpu_count() or 1), threads_per_worker=1,
                                       host="127.0.0.1", scheduler_port=port or 0,
                                       dashboard_address=f"127.0.0.1:{port + 1 if port else 0}")
            except RuntimeError as exc:  # e.g. --dask-port taken: the reason is the last of its causes
                while exc.__cause__ is not None:
                    exc = exc.__cause__
                pinned = f" with --dask-port {port}" if port else ""
                raise ValueError(f"cannot start a Dask cluster here{pinned}: {exc}") from None
            return cls(Client(cluster))
        if port is not None:
            raise ValueError(f"--dask-port is the port of a cluster started here (--dask local:N); the scheduler "
                             f"at {address} has its own")
        try:
            return cls(Client(address, timeout="10s"))
        except OSError as exc:
            raise ValueError(f"cannot reach the Dask scheduler at {address} ({exc}); start one with "
                             "`dask scheduler`, or use --dask local:N for a cluster on this machine") from None

    def attach(self, backend: Backend) -> None:
        """Have ``backend`` (not started yet) run its calls here."""
        self.backend = backend
        self.topic = f"de-magic-{backend.id.hex()}"
        self.scheduler = self.client.scheduler.address  # the client forgets it once it gives up on it
        pickle_by_value(backend.members)
        backend.calls.invoke = self.invoke
        cell = backend.operations["exec"]
        backend.operations["exec"] = replace(cell, run=lambda call: _computed(cell.run(call)))
        backend.extra_info["dask"] = cluster_info(self.client)
        self._subscribe(self.topic, self._on_event)
        self._subscribe("all", self._on_cluster_event)
        # %%remote cells run in the backend process, with the cluster at hand
        shell.SESSION_NAMES["dask_client"] = self.client
        self._watcher.start()

    def __enter__(self) -> "DaskPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop watching, and close the client (and the LocalCluster it started, if any)."""
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join()
        self._stopper.shutdown(cancel_futures=True)
        self._unsubscribe()
        cluster = self.client.cluster
        self.client.close()
        if cluster is not None:
            cluster.close()

    def _subscribe(self, topic: str, handler) -> None:
        self.client.subscribe_topic(topic, handler)
        self._topics.append(topic)

    def _unsubscribe(self) -> None:
        """Leave our topics before the client closes: the scheduler announces a leaving client on the topic
        "all", to its subscribers, this one too, whose connection is gone by then (a CRITICAL CommClosedError
        in the scheduler's log)."""
        if self.client.status != "running":  # the scheduler is gone: nobody to tell
            return
        for topic in self._topics:
            self.client.unsubscribe_topic(topic)
        self._topics.clear()

    def invoke(self, target, args: tuple, kwargs: dict):
        """Run ``target(*args, **kwargs)`` as a task; relay its events; answer with its result."""
        import cloudpickle

        call = current_call.get()
        key = f"{TASK_PREFIX}{call.header.get('member', 'call')}-{uuid.uuid4().hex}"
        waiting = self._waiting[key] = _Waiting()
        info = {"header": call.header, "client": call.client, "rid": call.rid}
        try:
            future = self.client.submit(run_task, key, self.topic, info, cloudpickle.dumps(target), args, kwargs,
                                        key=key, pure=False)
            future.add_done_callback(lambda _: waiting.wake.set())
            try:
                self._wait(future, waiting, call)
                value = future.result()  # a member's exception is raised here, with its traceback
            except BaseException:
                if not future.done():  # else it failed (or finished) by itself: nothing runs
                    self._stopper.submit(self._cancel, future, key)
                raise
            self._flush(waiting, call)
            return value
        finally:
            del self._waiting[key]

    def _wait(self, future, waiting: _Waiting, call) -> None:
        """Relay events until the task is done; short waits let a cancel interrupt this thread."""
        while not future.done():
            waiting.wake.wait(_WAKE)
            waiting.wake.clear()
            self._flush(waiting, call)
            if waiting.lost:
                raise BackendLost(waiting.lost)
            if self.client.status != "running":  # a scheduler that restarts has forgotten its tasks
                raise BackendLost(f"lost the Dask scheduler at {self.scheduler} "
                                  f"({self.client.status}); the call was dropped: call again once it is back")

    @staticmethod
    def _flush(waiting: _Waiting, call) -> None:
        while not waiting.events.empty():
            event = waiting.events.get()
            call.emit(event["e"], event["d"], event["p"])

    def _cancel(self, future, key: str) -> None:
        """Forget the task, so Dask starts it nowhere again, and interrupt it in the worker thread running it.

        Only workers that have it are asked: a broadcast would wait for every worker, gone ones too.
        """
        try:
            workers = [worker for worker, keys in self.client.processing().items() if key in keys]
            future.cancel()
            if workers:
                self.client.run(interrupt_task, key, workers=workers, on_error="ignore")
        except Exception as exc:  # noqa: BLE001 - e.g. the scheduler gone: nothing more to stop
            log.warning("could not stop Dask task %s: %s", key, exc)

    def _on_event(self, event) -> None:
        """An event of one of our tasks (in the Dask client's thread): queue it for its slot thread."""
        _, msg = event
        waiting = self._waiting.get(msg.get("t"))
        if waiting is not None:  # else its call was answered (e.g. cancelled) already
            waiting.events.put(msg)
            waiting.wake.set()

    def _on_cluster_event(self, event) -> None:
        """A worker left: fail the calls it had, which Dask would otherwise run again elsewhere."""
        _, msg = event
        if not (isinstance(msg, dict) and msg.get("action") == "remove-worker"):
            return
        for key in msg.get("processing-tasks") or ():
            waiting = self._waiting.get(key)
            if waiting is not None:
                log.warning("Dask worker %s left with call %s; failing it", msg.get("worker"), key)
                waiting.lost = _lost(msg.get("worker"))
                waiting.wake.set()

    def _watch(self) -> None:
        """Re-register when the cluster grows or shrinks, so listings show its size; stop with the cluster."""
        while not self._stop.wait(WATCH_INTERVAL):
            if self.client.status == "closed":  # Dask gave up reconnecting: a front door to nothing
                log.error("lost the Dask scheduler at %s for good; stopping", self.scheduler)
                self.backend.stop()
                return
            try:
                info = cluster_info(self.client)
                if info != self.backend.extra_info["dask"]:
                    log.info("Dask cluster now has %d workers, %d threads", info["workers"], info["threads"])
                    self.backend.extra_info["dask"] = info
                    self.backend.announce()
            except Exception as exc:  # noqa: BLE001 - e.g. a scheduler away for a moment: look again later
                log.warning("cannot follow the Dask cluster's size: %s", exc)


def _computed(reply: dict) -> dict:
    """A cell's reply with the Dask work it hands back (pulled variables, an evaluated value) computed."""
    if "value" in reply:
        reply["value"] = materialize(reply["value"])
    if "pulled" in reply:
        reply["pulled"] = {name: materialize(value) for name, value in reply["pulled"].items()}
    return reply


def _lost(worker: str | None) -> str:
    return (f"the Dask worker {worker} that had this call died (or left the cluster); the call was stopped, "
            "not run again elsewhere: call again if that is safe")


# -- on the Dask worker -------------------------------------------------------------

#: task key -> id of the worker thread running that task, while it runs (for interrupt_task).
_running: dict[str, int] = {}
_running_lock = threading.Lock()


@dataclass
class TaskCall:
    """:data:`current_call` on a Dask worker: the call's identity, and events relayed to the front door."""

    key: str
    topic: str
    header: dict
    client: bytes
    rid: bytes

    def emit(self, event: str, data: dict | None = None, payload: list | None = None) -> None:
        from distributed import get_worker

        get_worker().log_event(self.topic, {"t": self.key, "e": event, "d": data or {}, "p": list(payload or ())})


def run_task(key: str, topic: str, info: dict, target: bytes, args: tuple, kwargs: dict):
    """A de-magic call as Dask task ``key``: run the member (``target``, pickled) as the backend would,
    computing Dask results."""
    import cloudpickle

    logging.getLogger("distributed.worker").addFilter(reported_elsewhere)  # a no-op after this worker's first call
    context = current_call.set(TaskCall(key, topic, **info))
    try:
        with _running_lock:
            _running[key] = threading.get_ident()
        try:
            return materialize(cloudpickle.loads(target)(*args, **kwargs))
        finally:
            with _running_lock:
                del _running[key]
                # an interrupt sent just now must not land after this function, in Dask's own thread loop
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), None)
    except KeyboardInterrupt:
        raise Cancelled("interrupted on the Dask worker") from None
    finally:
        current_call.reset(context)


def reported_elsewhere(record: logging.LogRecord) -> bool:
    """False for the worker's "Compute Failed" record of a call of ours: the member's exception goes to its
    caller, with its traceback; the worker's log would only repeat it, as an error of Dask's."""
    failed = isinstance(record.msg, str) and record.msg.startswith("Compute Failed") and record.args
    return not (failed and str(record.args[0]).startswith(TASK_PREFIX))  # its first argument: the task's key


def interrupt_task(key: str) -> bool:
    """Interrupt the task ``key`` if it runs on this worker (run by ``Client.run`` on every worker)."""
    with _running_lock:
        thread_id = _running.get(key)
        if thread_id is None:
            return False
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(KeyboardInterrupt))
    return True


def materialize(value):
    """A result as it can travel: Dask collections computed, futures' values fetched.

    A lazy (or persisted) collection or a future means nothing to the caller, who has no client for
    this cluster.
    """
    import dask
    from distributed import Future

    if dask.is_dask_collection(value):
        return dask.compute(value)[0]
    if isinstance(value, Future):
        return value.result()
    return value
