"""``%%remote`` namespaces live as long as their caller: renewed while it runs, ended after it is gone."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

from de_magic.caller.session import RemoteSession

from conftest import HEARTBEAT, Cluster, rss_kib, start_logged, start_script, wait_for

LEASE = 2.0

ORPHAN = """
import sys, time
from de_magic import Client, RemoteSession
session = RemoteSession(Client(sys.argv[1], timeout=20), "hello_world", key="orphan")
session.execute("x = 'left behind'").result()
print("ready", flush=True)
time.sleep(120)
"""


def test_a_session_whose_caller_is_killed_ends_after_its_lease_and_a_live_one_stays(processes, tmp_path):
    cluster = Cluster(processes)
    cluster.start_broker()
    log = tmp_path / "backend.log"
    backend = start_logged(processes, "serve", "de_magic.demo.hello", "--name", "hello_world", "--broker", cluster.url,
                           "--heartbeat", str(HEARTBEAT), "--allow-code", "--session-lease", str(LEASE), log=log)
    wait_for(lambda: any(w["pid"] == backend.pid for w in cluster.workers("hello_world")), what="the backend")
    caller = start_script(processes, ORPHAN, cluster.url)
    assert caller.stdout.readline().strip() == "ready"
    kept = RemoteSession(cluster.client, "hello_world")
    kept.execute("y = 'still here'").result()  # this process renews it
    os.kill(caller.pid, signal.SIGKILL)  # a killed kernel: no clean exit, no `end`
    wait_for(lambda: "ended session orphan" in log.read_text(), timeout=4 * LEASE, what="the orphan's lease to run out")
    assert RemoteSession(cluster.client, "hello_world", key="orphan").eval("'x' in dir()") is False
    assert kept.eval("y") == "still here"  # well past its lease: renewed all along
    assert "ended session" not in log.read_text().replace("ended session orphan", "")
    kept.close()
    cluster.client.close()


def test_a_thousand_sessions_opened_and_closed_leave_resident_memory_flat(hello):
    backend = hello.workers("hello_world")[0]["pid"]

    def session(_) -> None:
        opened = RemoteSession(hello.client, "hello_world")
        opened.execute("values = list(range(1000))").result()
        assert opened.close()

    def sessions(count: int) -> None:
        with ThreadPoolExecutor(4) as pool:  # cells run one at a time; the round trips overlap
            list(pool.map(session, range(count)))

    sessions(100)  # imports, caches and allocator pools settle first
    before = rss_kib(backend)
    sessions(1000)
    after = rss_kib(backend)
    assert after <= 1.1 * before, f"resident memory grew from {before} to {after} KiB over 1,000 sessions"
