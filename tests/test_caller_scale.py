"""One client at scale: finished calls release their memory, and many jobs share the client's one I/O thread."""

from __future__ import annotations

import ctypes
import gc
import os
import threading

from de_magic import Client

from conftest import HEARTBEAT, rss_kib


def _echo_batches(client: Client, batches: int, size: int = 1000) -> None:
    for _ in range(batches):
        futures = [client.submit("hello_world", "echo", (i,)) for i in range(size)]
        assert [future.result(60) for future in futures] == list(range(size))


def _live_rss_kib() -> int:
    """Resident memory after handing freed heap back to the OS: what is still held, not a busy moment's peak."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_kib(os.getpid())


def test_finished_calls_release_their_memory_whatever_their_timeout(cluster):
    cluster.start_backend("de_magic.demo.hello", "hello_world")
    # timeout=30 outlives the test: a finished call kept until its deadline (about 250 B each) would add up
    with Client(cluster.url, timeout=30, heartbeat=HEARTBEAT) as client:
        _echo_batches(client, 10)  # warm up: sockets, buffers, the allocator's arenas
        before = _live_rss_kib()
        _echo_batches(client, 100)
        grown = (_live_rss_kib() - before) / 1024
        print(f"\nRSS grew {grown:.1f} MB over 100,000 submitted calls with timeout=30")
        assert grown < 8, f"RSS grew {grown:.1f} MB over 100,000 finished calls"
        assert len(client._core._deadlines) <= 64  # ended calls leave the deadline heap, not only their memory


def test_one_client_follows_a_thousand_jobs_with_a_bounded_number_of_threads_and_sockets(cluster):
    cluster.start_backend("de_magic.demo.hello", "hello_world", "--max-queue", "2000")
    with Client(cluster.url, timeout=30, heartbeat=HEARTBEAT) as client:
        threads_before = threading.active_count()
        remote = client["hello_world"]
        quick = remote.slow_sum.options(on_progress=lambda progress: None)
        # a thread and a socket per Job ran into libzmq's 1,023 sockets per context after about 340 jobs
        jobs = [quick.start(n=i % 7, delay=0.001) for i in range(1000)]
        assert [job.result(120) for job in jobs] == [sum(range(i % 7)) for i in range(1000)]
        assert {job.status for job in jobs} == {"done"}
        added = threading.active_count() - threads_before
        sockets = client._calls().sockets
        print(f"\n1,000 jobs followed with {added} more threads and {sockets} sockets")
        assert added <= 6, f"{added} threads for 1,000 jobs"  # the I/O thread, and at most the helpers
        assert sockets <= 4, f"{sockets} sockets for 1,000 jobs"
        assert client.call("hello_world", "echo", ("still calling",)) == "still calling"
