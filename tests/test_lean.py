"""The lean path (caller/mux.py): the main thread carries its blocking calls itself while no thread drives the
client's I/O loop, and a Ctrl-C at any moment of a call never leaves the loop half done."""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future

from de_magic import Client

from conftest import HEARTBEAT, wait_for

INTERRUPTS = 60
#: what pyzmq prints when a Ctrl-C is run in its frame deallocator, which checks for signals and can only drop the
#: KeyboardInterrupt (about one press in 600 here, wherever the program frees a received frame; not ours to hold)
PYZMQ_DROPPED = r"Traceback|  File \"zmq/backend/cython/_zmq\.py\"|KeyboardInterrupt|Exception ignored in: 'zmq\."

#: calls tiny echoes in a loop until interrupted; after each Ctrl-C, checks that the client is whole
INTERRUPTED_CALLER = """
import sys
from de_magic import Client

with Client(sys.argv[1], timeout=20) as client:
    print("calling", flush=True)
    for n in range(1, int(sys.argv[2]) + 1):
        try:
            i = 0
            while True:
                assert client.call("hello_world", "echo", (i,)) == i
                i += 1
        except KeyboardInterrupt as exc:  # Interrupted (in a call) or the bare one (between two)
            kind = type(exc).__name__
        # whole again: every call answered, none left in flight once the cancel went out
        assert [client.call("hello_world", "echo", (j,)) for j in range(20)] == list(range(20))
        print("interrupted", n, kind, client._core.in_flight, flush=True)
print("closed", flush=True)
"""


def _cpu_ticks(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_a_blocking_call_of_the_main_thread_is_carried_by_that_thread(cluster):
    cluster.start_backend("de_magic.demo.hello", "hello_world")
    with Client(cluster.url, heartbeat=HEARTBEAT) as client:
        assert client.call("hello_world", "echo", (0,)) == 0
        # a Job followed meanwhile: its polls are work for later, which must not wake the I/O thread at every call
        job = client["hello_world"].slow_sum.options(on_progress=lambda progress: None).start(n=1000, delay=0.01)
        io_thread = client._calls()._thread.native_id
        main = threading.get_native_id()
        before = {tid: _cpu_ticks(tid) for tid in (io_thread, main)}
        for i in range(3000):
            assert client.call("hello_world", "echo", (i,)) == i
        used = {tid: _cpu_ticks(tid) - before[tid] for tid in before}
        print(f"\nCPU over 3,000 tiny calls, in clock ticks: main thread {used[main]}, I/O thread {used[io_thread]}")
        # handed to the I/O thread and back, each call cost it as much CPU as the main thread; now it only wakes
        # for its heartbeats and checks
        assert used[main] >= 10 and used[io_thread] * 10 <= used[main], used
        assert not job.done() and job.cancel()


def test_ctrl_c_at_any_moment_of_a_call_leaves_the_client_whole(cluster, tmp_path):
    cluster.start_backend("de_magic.demo.hello", "hello_world")
    script = tmp_path / "caller.py"
    script.write_text(INTERRUPTED_CALLER)
    proc = subprocess.Popen([sys.executable, str(script), cluster.url, str(INTERRUPTS)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    said: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [said.put(line) for line in proc.stdout], daemon=True)
    reader.start()

    def next_line(timeout: float = 30) -> str:
        try:
            return said.get(timeout=timeout)
        except queue.Empty:  # a client left without a driver would hang here
            raise AssertionError("the caller stopped answering after a Ctrl-C") from None

    lost = 0
    try:
        assert next_line() == "calling\n"
        lines, rng = [], random.Random(7)
        for _ in range(INTERRUPTS):
            time.sleep(rng.uniform(0.002, 0.03))  # somewhere in a call, or between two: wherever it lands
            proc.send_signal(signal.SIGINT)
            try:
                line = said.get(timeout=5)
            except queue.Empty:  # pyzmq dropped it (see PYZMQ_DROPPED): a user presses again
                lost += 1
                proc.send_signal(signal.SIGINT)
                line = next_line()
            assert line.startswith("interrupted"), line
            lines.append(line.split())
        assert next_line() == "closed\n"
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(5)
        proc.stdout.close()
        errors = proc.stderr.read()
        proc.stderr.close()
    unexpected = [line for line in errors.splitlines() if not re.match(PYZMQ_DROPPED, line)]
    assert not unexpected and errors.count("Exception ignored") == lost <= 3, errors[-2000:]
    print(f"\n{INTERRUPTS} Ctrl-C: " + ", ".join(f"{kind} {inflight}" for _, _, kind, inflight in lines))
    assert all(inflight == "0" for *_, inflight in lines), lines
    assert any(kind == "Interrupted" for _, _, kind, _ in lines), lines  # most land in a call


def test_the_main_thread_and_the_io_thread_take_turns_at_the_loop_without_losing_a_call(cluster):
    """Calls of the main thread (which drives the loop while nobody does), of another thread (whose calls the
    I/O thread carries) and submitted futures, all at once: the role changes hands thousands of times."""
    cluster.start_backend("de_magic.demo.hello", "hello_world")
    with Client(cluster.url, heartbeat=HEARTBEAT) as client:
        results, failures = [], []

        def other_thread() -> None:
            try:
                results.extend(client.call("hello_world", "echo", (("t", i),)) for i in range(300))
            except BaseException as exc:  # noqa: BLE001 - the test fails with it below
                failures.append(exc)

        worker = threading.Thread(target=other_thread)
        worker.start()
        for round_ in range(10):
            futures = [client.submit("hello_world", "echo", ((round_, i),)) for i in range(200)]
            mine = [client.call("hello_world", "echo", (("m", round_, i),)) for i in range(50)]
            assert mine == [("m", round_, i) for i in range(50)]
            assert [future.result(30) for future in futures] == [(round_, i) for i in range(200)]
        worker.join(60)
        assert not worker.is_alive() and not failures, failures[:1]
        assert results == [("t", i) for i in range(300)]
        wait_for(lambda: client._core.in_flight == 0, what="nothing left in flight")


def test_a_callback_run_by_the_loop_may_make_a_blocking_call(cluster):
    """A future's callback runs in the thread driving the loop; a blocking call made there waited for that very
    thread, for good."""
    cluster.start_backend("de_magic.demo.hello", "hello_world")
    with Client(cluster.url, heartbeat=HEARTBEAT) as client:
        chained = Future()

        def then(future: Future) -> None:
            try:
                chained.set_result(client.call("hello_world", "echo", (future.result() + 1,)))
            except BaseException as exc:  # noqa: BLE001 - the test fails with it below
                chained.set_exception(exc)

        client.submit("hello_world", "echo", (1,)).add_done_callback(then)
        assert chained.result(20) == 2
        assert client.call("hello_world", "echo", (3,)) == 3
