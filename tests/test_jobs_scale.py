"""Jobs at scale (issue 18): they start in order, a waiting one costs no thread, finished ones are bounded in
count and cost nothing per operation, and after a crash those that never started say so."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from de_magic.backend.callcontext import Call
from de_magic.backend.server import Backend
from de_magic.wire import serialize
from de_magic.wire.errors import JobUnavailable

from conftest import HEARTBEAT, wait_for


def _backend(cluster, members: dict, **options) -> Backend:
    backend = Backend("jobs", members, broker=cluster.url, heartbeat=HEARTBEAT, **options).start()
    wait_for(lambda: backend.registered.is_set(), what="the backend to register")
    return backend


def test_waiting_jobs_start_in_the_order_they_were_started_and_hold_no_thread(cluster):
    """Before: each waiting job had a thread of its own polling a semaphore, which let them start in any order."""
    release, order = threading.Event(), []

    def hold():
        return release.wait(60)

    def note(i: int) -> int:
        order.append(i)
        return i

    backend = _backend(cluster, {"hold": hold, "note": note}, max_workers=1)
    try:
        be = cluster.client["jobs"]
        held = be.hold.start()
        wait_for(lambda: held.status == "running", what="the first job to run")
        before = threading.active_count()
        jobs = [be.note.start(i) for i in range(300)]
        assert threading.active_count() - before < 10, "waiting jobs hold threads"
        assert {job.status for job in jobs[-5:]} == {"queued"}
        release.set()
        assert [job.result(timeout=30) for job in jobs] == list(range(300))
        assert order == list(range(300))
    finally:
        release.set()
        backend.stop()


def test_finished_jobs_are_bounded_in_count_oldest_first(cluster):
    backend = _backend(cluster, {"echo": lambda x: x}, max_jobs=3)
    try:
        be = cluster.client["jobs"]
        jobs = []
        for i in range(5):
            jobs.append(be.echo.start(i))
            assert jobs[-1].result(timeout=10) == i
        with pytest.raises(JobUnavailable, match=r"evicted to keep the backend's finished jobs within 3 \(--max-jobs\)"):
            cluster.client.job(jobs[0].id)
        assert [job["status"] for job in cluster.client.jobs()] == ["evicted"] * 2 + ["done"] * 3
    finally:
        backend.stop()


def _timed(operation, times: int = 300) -> float:
    start = time.perf_counter()
    for _ in range(times):
        operation()
    return (time.perf_counter() - start) / times


def test_fifteen_thousand_finished_jobs_slow_neither_status_nor_start():
    """Before: every job operation sorted all jobs; with 15,000 finished ones a status took 28 times as long."""
    backend = Backend("jobs", {"tiny": lambda: None}, broker="tcp://127.0.0.1:1", max_workers=2,
                      max_queue=20_000, max_jobs=20_000)
    store, arguments = backend.jobs, serialize.dumps(((), {}))

    def start():
        return store.start(Call(backend, -1, b"t", b"r", {"member": "tiny"}, arguments))["id"]

    def settled():
        return store.book.running == 0 and store.book.waiting == 0

    def status(job_id: str):
        return lambda: store.status(Call(backend, -1, b"t", b"r", {"id": job_id}, []))

    try:
        few = [start() for _ in range(10)]
        wait_for(settled, what="the first jobs to finish")
        small_status, small_start = _timed(status(few[0])), _timed(start)
        wait_for(settled, what="those jobs to finish")
        many = [start() for _ in range(15_000)]
        wait_for(settled, timeout=120, what="15,000 jobs to finish")
        assert len(store.book.kept) > 15_000
        large_status, large_start = _timed(status(many[0])), _timed(start)
        # generous for a busy machine: the old code took 28 times as long for a status
        assert large_status < 4 * small_status + 20e-6, (small_status, large_status)
        assert large_start < 4 * small_start + 200e-6, (small_start, large_start)
    finally:
        backend.stop()


def test_after_a_crash_jobs_that_never_started_say_so(cluster, tmp_path):
    """Before: a job still waiting for a place when its backend crashed was said to have been running."""
    args = ("de_magic.demo.hello", "hello_world", "--job-dir", str(tmp_path / "jobs"), "--max-workers", "1")
    backend = cluster.start_backend(*args)
    be = cluster.client["hello_world"]
    running = be.slow_sum.start(n=600, delay=0.05)
    waiting = be.slow_sum.start(n=600, delay=0.05)
    wait_for(lambda: running.status == "running", what="the first job to run")
    assert waiting.status == "queued"
    os.kill(backend.pid, signal.SIGKILL)  # a crash: nothing is written on the way out
    backend.wait()
    cluster.start_backend(*args)
    with pytest.raises(JobUnavailable, match="still running when the backend stopped"):
        cluster.client.job(running.id)
    with pytest.raises(JobUnavailable, match="it never started: it was waiting for a free place"):
        cluster.client.job(waiting.id)
