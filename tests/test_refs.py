"""Remote references: results kept on the worker that made them, used in place, leased to their caller."""

from __future__ import annotations

import gc
import os
import re
import signal

import pytest

from de_magic import ReferenceGone, Refused
from de_magic.caller.refs import RemoteRef, tenancy
from de_magic.caller.tables import BackendTable

from conftest import HEARTBEAT, Cluster, Processes, curve_keys, rss_kib, start_logged, start_script, wait_for

MB = 1 << 20
LEASE = 2.0
BACKEND = "tests/refs_backend.py"


def _worker(cluster: Cluster) -> dict:
    return cluster.workers("refs")[0]


def _refs_listed(cluster: Cluster, count: int) -> dict:
    return wait_for(lambda: _worker(cluster).get("refs", {}).get("count") == count and _worker(cluster),
                    timeout=5, what=f"the listing to show {count} reference(s)")


def test_a_chain_of_calls_keeps_its_200_mb_intermediate_on_the_backend(cluster):
    cluster.start_backend(BACKEND, "refs", "--ref-bytes", str(450 * MB))
    be = cluster.client["refs"]
    before = cluster.client.listing(api=False)["broker"]["routed_bytes"]
    ones = be.open_dataset.options(keep=True)(200)
    doubled = be.scale.options(keep=True)(ones, 2.0)
    assert be.total(doubled) == 2 * 200 * MB // 8
    assert be.totals({"a": [ones, doubled]}) == {"a": [200 * MB // 8, 2 * 200 * MB // 8]}  # nested: in place too
    assert cluster.client.listing(api=False)["broker"]["routed_bytes"] - before < 100_000  # nothing large travelled
    assert "<xarray.Dataset>" in repr(ones) and "title:" in repr(ones)  # made remotely, without the data
    assert "xr-wrap" in ones._repr_html_()
    assert ones.type == "xarray.core.dataset.Dataset" and ones.nbytes >= 200 * MB
    assert _refs_listed(cluster, 2)["refs"]["bytes"] >= 400 * MB

    with pytest.raises(Refused, match=r"cannot keep a xarray.core.dataset.Dataset of [0-9,]+ bytes: .* \(release some"):
        be.open_dataset.options(keep=True)(200)  # over --ref-bytes
    with pytest.raises(Refused, match="lives on backend 'refs', not 'elsewhere': pass ref.fetch()"):
        cluster.client.call("elsewhere", "total", (ones,))
    doubled.release()
    with pytest.raises(ReferenceGone, match=r"reference \S+ on backend 'refs' was released"):
        be.total(doubled)
    del doubled
    small = be.open_dataset.options(keep=True)(1)
    assert float(small.fetch()["t"].sum()) == MB // 8
    tripled = be.scale.options(keep=True).submit(small, 3.0).result()  # submitted calls keep and pin alike
    assert be.total.submit(tripled).result() == 3 * MB // 8
    small.release(), tripled.release()  # (a submitted call's arguments live on in the client until its timeout)
    del ones
    gc.collect()
    assert _refs_listed(cluster, 0)["refs"]["bytes"] == 0  # collected references are released


def test_another_caller_key_cannot_use_a_reference(tmp_path):
    from de_magic import Client
    from de_magic.wire.security import Security

    keys = curve_keys(tmp_path)
    procs = Processes()
    cluster = Cluster(procs)
    clients = {name: Client(cluster.url, timeout=20, heartbeat=HEARTBEAT,
                            security=Security(key=keys[name], broker_key=keys["broker.public"]))
               for name in ("alice", "bob")}
    cluster.client = clients["alice"]
    try:
        cluster.start_broker("--key", str(keys["broker"]), "--allowed-keys", str(keys["allowed"]))
        cluster.start_backend(BACKEND, "refs", env={"DE_MAGIC_KEY": str(keys["backend"]),
                                                    "DE_MAGIC_BROKER_KEY": str(keys["broker.public"])})
        ref = clients["alice"]["refs"].open_dataset.options(keep=True)(1)
        stolen = RemoteRef(tenancy(clients["bob"], "refs", ref.worker), {"ref": ref.id, "lease": LEASE})
        with pytest.raises(Refused, match=r"reference \S+ on backend 'refs' belongs to another caller"):
            clients["bob"]["refs"].total(stolen)
        with pytest.raises(Refused, match="belongs to another caller"):
            stolen.fetch()
        stolen.release()  # releases nothing of alice's
        assert clients["alice"]["refs"].total(ref) == MB // 8
    finally:
        for client in clients.values():
            client.close()
        procs.stop_all()


ORPHAN = """
import sys, time
from de_magic import Client, RemoteSession
client = Client(sys.argv[1], timeout=30)
ref = client["refs"].open_dataset.options(keep=True)(200)
RemoteSession(client, "refs", key="orphan").execute("import numpy as np; x = np.ones(200 * 2**20 // 8)").result()
print("ready", flush=True)
time.sleep(120)
"""


def test_a_killed_callers_reference_and_session_expire_and_their_memory_is_returned(processes, tmp_path):
    cluster = Cluster(processes)
    cluster.start_broker()
    log = tmp_path / "backend.log"
    backend = start_logged(processes, "serve", BACKEND, "--name", "refs", "--broker", cluster.url, "--heartbeat",
                           str(HEARTBEAT), "--allow-code", "--session-lease", str(LEASE), log=log)
    wait_for(lambda: any(w["pid"] == backend.pid for w in cluster.workers("refs")), what="the backend")
    kept = cluster.client["refs"].open_dataset.options(keep=True)(1)  # this process renews it
    baseline = rss_kib(backend.pid)
    caller = start_script(processes, ORPHAN, cluster.url)
    assert caller.stdout.readline().strip() == "ready"
    worker = wait_for(lambda: _worker(cluster).get("sessions", {}).get("bytes", 0) >= 200 * MB and _worker(cluster),
                      timeout=5, what="the session's memory in the listing")
    assert worker["refs"]["count"] == 2 and worker["refs"]["bytes"] >= 201 * MB
    assert worker["sessions"]["count"] == 1 and worker["sessions"]["each"][0]["bytes"] >= 200 * MB
    table = repr(BackendTable(cluster.client.listing()))
    assert re.search(r"refs .* 1 \(2\d\d MB\) +2 \(2\d\d MB\) ", table), table  # sessions, references, memory
    assert rss_kib(backend.pid) - baseline > 350 * 1024

    os.kill(caller.pid, signal.SIGKILL)  # no clean exit, no release
    wait_for(lambda: "released 1 reference(s)" in log.read_text() and "ended session orphan" in log.read_text(),
             timeout=4 * LEASE, what="the orphan's leases to run out")
    wait_for(lambda: rss_kib(backend.pid) - baseline < 50 * 1024, timeout=5, what="the memory to be returned")
    wait_for(lambda: _worker(cluster)["sessions"]["count"] == 0 and _worker(cluster)["refs"]["count"] == 1,
             timeout=5, what="the listing to show the session and the reference gone")
    assert kept.fetch()["t"].size == MB // 8  # well past its lease: renewed all along


def test_references_work_on_the_direct_path_too(cluster):
    cluster.start_backend(BACKEND, "refs", "--direct", "tcp://127.0.0.1:0")
    be = cluster.client["refs"]
    ones = be.open_dataset.options(keep=True)(1)
    assert be.total(be.scale.options(keep=True)(ones, 2.0)) == 2 * MB // 8
    assert "<xarray.Dataset>" in repr(ones) and ones.fetch()["t"].size == MB // 8
    ones.release()
    with pytest.raises(ReferenceGone):
        be.total(ones)
    assert _worker(cluster)["calls"] == 0  # not one of them crossed the broker
