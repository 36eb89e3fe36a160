"""Faults: a worker killed mid-call, a broker killed and restarted, a client that vanishes mid-call.

``tests/test_core.py`` already covers the single-worker and fast-heartbeat
cases; these add the pool (another worker takes over), timings under the
default heartbeat, and what remains after a caller disappears.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from de_magic import Client
from de_magic.wire.defaults import DEFAULT_HEARTBEAT, DEFAULT_LIVENESS
from de_magic.wire.errors import BackendLost

from conftest import HEARTBEAT, ROOT, Cluster, wait_for

FAULT_BACKEND = str(Path(__file__).with_name("fault_backend.py"))


def test_worker_killed_mid_call_in_a_pool(cluster):
    pids = [cluster.start_backend(FAULT_BACKEND, "pool").pid for _ in range(2)]
    future = cluster.client.submit("pool", "slow", (30.0,))
    busy = wait_for(lambda: [w["pid"] for w in cluster.workers("pool") if w["busy"]], what="call running")
    (victim,) = busy
    start = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(BackendLost, match="stopped heartbeating"):
        future.result(10)
    latency = time.monotonic() - start
    print(f"\nBackendLost {latency:.2f} s after kill -9 = {latency / HEARTBEAT:.1f} heartbeat intervals")
    # expiry after `liveness` intervals of silence since the last heartbeat (which came before the kill);
    # one more interval of slack, so a loaded machine's scheduling does not fail the test
    assert latency < (DEFAULT_LIVENESS + 1) * HEARTBEAT
    survivor = next(pid for pid in pids if pid != victim)
    assert [w["pid"] for w in cluster.workers("pool")] == [survivor]
    assert [cluster.client.call("pool", "echo", (i,)) for i in range(10)] == list(range(10))
    assert cluster.workers("pool")[0]["calls"] >= 10


def test_broker_kill_and_restart_under_default_heartbeat(processes):
    """Backends re-register and the next call succeeds within 5 s, with the default 1 s heartbeat."""
    cluster = Cluster(processes)
    beat = str(DEFAULT_HEARTBEAT)
    broker = lambda: processes.start("broker", "--bind", cluster.url, "--heartbeat", beat)  # noqa: E731
    cluster.broker = broker()
    wait_for(cluster._answers, what="broker")
    for _ in range(2):
        processes.start("serve", FAULT_BACKEND, "--name", "pool", "--broker", cluster.url, "--heartbeat", beat)
    wait_for(lambda: len(cluster.workers("pool")) == 2, what="two workers")
    with Client(cluster.url, timeout=20) as client:
        assert client.call("pool", "echo", ("before",)) == "before"
        cluster.broker.kill()
        cluster.broker.wait()
        start = time.monotonic()
        cluster.broker = broker()
        assert client.call("pool", "echo", ("after",)) == "after"  # no user action
        first_call = time.monotonic() - start
        wait_for(lambda: len(cluster.workers("pool")) == 2, timeout=10, what="both workers back")
        all_back = time.monotonic() - start
    print(f"\nbroker restart: first call answered after {first_call:.2f} s, both workers back after {all_back:.2f} s")
    assert first_call < 5 and all_back < 5


def test_vanished_client_leaks_nothing(cluster):
    cluster.start_backend(FAULT_BACKEND, "pool")
    script = ("import sys; from de_magic import Client; "
              f"Client({cluster.url!r}).call('pool', 'slow', (1.5,)); sys.exit('the call was not interrupted')")
    caller = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True)
    cluster.procs.procs.append(caller)
    wait_for(lambda: any(w["busy"] for w in cluster.workers("pool")), what="call running")
    assert cluster.client.listing(api=False)["broker"]["requests"] == 1
    caller.kill()
    caller.wait()

    def clean() -> bool:
        broker = cluster.client.listing(api=False)["broker"]
        return broker["requests"] == 0 and broker["queued"] == 0 and not any(w["busy"] for w in cluster.workers("pool"))

    wait_for(clean, timeout=10, what="the broker to forget the vanished client's call")
    assert cluster.client.call("pool", "calls_held") == 0
