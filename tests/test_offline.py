"""Backends that are not up: a broker with a state directory remembers each one's owner and last API across
restarts (also a ``kill -9``), lists it as offline, and says so at once when it is called."""

from __future__ import annotations

import inspect
import os
import signal
import stat

import pytest

from de_magic.broker.routing import Config, Router
from de_magic.broker.state import Remembered, StateStore
from de_magic.wire import protocol as P
from de_magic.wire.errors import BackendOffline, UnknownBackend

from conftest import Cluster, wait_for


def offline(cluster: Cluster, name: str) -> dict | None:
    entry = cluster.client.listing()["backends"].get(name)
    return entry if entry is not None and entry.get("offline") else None


def test_api_is_remembered_across_a_kill_9_of_the_broker(processes, tmp_path):
    state = tmp_path / "state"
    cluster = Cluster(processes)
    try:
        broker = cluster.start_broker("--state-dir", str(state))
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o700  # it names every backend and its owner
        backend = cluster.start_backend("de_magic.demo.hello", "hello_world")
        assert cluster.client.call("hello_world", "echo", (5,)) == 5
        backend.send_signal(signal.SIGTERM)
        backend.wait(10)
        entry = wait_for(lambda: offline(cluster, "hello_world"), what="the backend listed as offline")
        assert entry["workers"] == [] and "echo" in str(entry["api"])

        broker.kill()  # SIGKILL: nothing is written on the way out
        broker.wait(10)
        cluster.start_broker("--state-dir", str(state))
        entry = offline(cluster, "hello_world")
        assert entry is not None and "echo" in str(entry["api"])
        assert "offline since" in repr(cluster.client.backends())

        proxy = cluster.client["hello_world"]  # built from the remembered API
        assert "echo" in dir(proxy)
        assert "value" in str(inspect.signature(proxy.echo))
        with pytest.raises(BackendOffline, match=r"offline since .*`\.start\(\)` queues it as a job"):
            proxy.echo(1)

        cluster.start_backend("de_magic.demo.hello", "hello_world")  # its owner again: it is live
        assert cluster.client.call("hello_world", "echo", (7,)) == 7
        assert not cluster.client.listing()["backends"]["hello_world"].get("offline")
    finally:
        cluster.client.close()


def test_a_name_never_served_is_unknown_not_offline(processes, tmp_path):
    cluster = Cluster(processes)
    try:
        cluster.start_broker("--state-dir", str(tmp_path / "state"))
        with pytest.raises(UnknownBackend) as raised:
            cluster.client.call("nobody", "echo", (1,))
        assert not isinstance(raised.value, BackendOffline) and "no backend named 'nobody'" in str(raised.value)
    finally:
        cluster.client.close()


# -- the routing core with remembered backends (socket-free) ----------------------------------------------------

def test_a_remembered_name_stays_its_owners_and_is_listed_offline(tmp_path):
    store = StateStore(tmp_path / "state")
    store.remember(Remembered("model", "alice-key", {"api": {"f": {"doc": "f"}}}, last_seen=1.0))
    store.close()
    store = StateStore(tmp_path / "state")  # what a restarted broker reads
    caller = {"key": "mallory-key"}
    router = Router(Config(url="tcp://broker"), now=0.0, key_of=lambda frame: caller["key"],
                    remembered=store.backends(), remember=store.remember)
    listed = router.handle(b"C", P.list_query(b"r1", {}), 0.0)[0]
    assert b'"offline":1.0' in listed[-1] and b'"f"' in listed[-1]

    info = {"api": {"f": {"doc": "f"}}}
    out = router.handle(b"W", P.ready("model", b"W1", b"s" * 16, info), 0.0)
    assert out[0][2] == P.REJECT and b"belongs at tcp://broker to another key" in out[0][-1]

    caller["key"] = "alice-key"
    out = router.handle(b"W", P.ready("model", b"W1", b"s" * 16, info), 0.0)
    assert out[0][2] == P.WELCOME
    assert StateStore(tmp_path / "state").backends()["model"].owner == "alice-key"

    out = router.handle(b"W", P.bye(), 1.0)
    assert store.backends()["model"].last_seen > 1.0  # written when its last worker left
    store.close()
