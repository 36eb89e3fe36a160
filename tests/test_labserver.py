"""The sidebar's REST endpoints (de_magic/labserver.py) on a real Jupyter server,
against real brokers and backends."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import Cluster, free_port, wait_for
from labtools import Jupyter, timed

TIMEOUT = 1.0  # the server's broker timeout: short, so unreachable-broker tests stay quick
RETRY = 1.0  # seconds a failed broker is not asked again
DEFAULT = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
EXTRA = "tcp://127.0.0.1:1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jupyter")
    jupyter = Jupyter(
        tmp,
        env={"DE_MAGIC_BROKER": DEFAULT, "DE_MAGIC_CONFIG": str(tmp / "de-magic.toml")},
        config={"DeMagicLab": {"timeout": TIMEOUT, "retry_interval": RETRY, "brokers": [EXTRA, DEFAULT]}},
    )
    with jupyter:
        yield jupyter


def test_endpoints_require_authentication(server, hello):
    for path, params in [("/de-magic/brokers", {}), ("/de-magic/listing", {"broker": hello.url}),
                         ("/de-magic/backends", {"broker": hello.url}),
                         ("/de-magic/backends/hello_world", {"broker": hello.url}),
                         ("/de-magic/jobs", {"broker": hello.url})]:
        response = server.get(path, auth=False, **params)
        assert response.status_code == 403, (path, response.status_code)
        assert "hello_world" not in response.text
    # A wrong token is no better than none.
    response = server.get("/de-magic/brokers", auth=False, token="wrong")
    assert response.status_code == 403


def test_brokers_lists_the_default_then_configured_ones(server):
    response = server.get("/de-magic/brokers")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    # DE_MAGIC_BROKER of the server is the default; a configured duplicate of it is listed once.
    assert response.json() == {"default": DEFAULT, "brokers": [DEFAULT, EXTRA]}


def test_a_brokers_key_is_checked_then_stored_in_the_config_file(server, tmp_path):
    from de_magic.wire.security import create_keys, public_key

    config = server.tmp / "de-magic.toml"
    z85 = public_key(create_keys("hub", tmp_path)[0]).decode()
    assert server.post("/de-magic/brokers", {"url": EXTRA, "broker_key": z85}, auth=False).status_code == 403
    for body, needle in [({"url": EXTRA, "broker_key": "hello"}, "is neither a public key"),
                         ({"url": "hub:5555", "broker_key": z85}, "is not a broker address"),
                         ({"url": EXTRA}, "no public key given")]:
        response = server.post("/de-magic/brokers", body)
        assert response.status_code == 400 and needle in response.json()["message"], response.text
    assert not config.exists()
    response = server.post("/de-magic/brokers", {"url": EXTRA, "broker_key": z85})
    assert response.status_code == 200, response.text
    assert response.json() == {"url": EXTRA, "public_key": z85, "config": str(config)}
    assert f'[brokers."{EXTRA}"]\nbroker_key = "{z85}"' in config.read_text()


def test_listing_of_a_live_broker(server, hello):
    backend_pid = hello.procs.procs[-1].pid
    response = server.get("/de-magic/listing", broker=hello.url)
    assert response.status_code == 200
    listing = response.json()
    assert listing["reachable"] is True
    assert listing["broker"]["url"] == hello.url
    assert listing["broker"]["protocol"].startswith("de-magic/")
    assert 0 < listing["latency_ms"] < TIMEOUT * 1000

    backend = listing["backends"]["hello_world"]
    assert backend["allow_code"] is True
    assert backend["since"] > 0
    assert [w["pid"] for w in backend["workers"]] == [backend_pid]

    members = backend["api"]["members"]
    assert {"compute_sum", "scale", "slow_sum", "Stats"} <= set(members)
    scale = members["scale"]
    assert scale["kind"] == "function"
    assert scale["signature"].startswith("(values: list[float], factor: float = 2.0")
    assert scale["summary"] == "Scale a list of numbers."
    params = {p["name"]: p for p in scale["parameters"]}
    assert params["values"]["required"] is True
    assert params["factor"]["default_repr"] == "2.0"
    assert params["factor"]["doc"] == "how much to scale by, between 0 and 10"
    assert scale["schema"]["required"] == ["values"]
    assert scale["schema"]["properties"]["factor"]["maximum"] == 10
    stats = members["Stats"]
    assert stats["kind"] == "class"
    assert stats["methods"]["std"]["signature"] == "(values: list[float]) -> float"


def test_default_broker_is_used_without_a_broker_argument(server):
    response = server.get("/de-magic/listing")
    assert response.status_code == 200
    assert response.json()["broker"]["url"] == DEFAULT
    assert response.json()["reachable"] is False


def test_backends_without_and_with_api(server, hello):
    response = server.get("/de-magic/backends", broker=hello.url)
    assert response.status_code == 200
    backends = response.json()["backends"]
    assert set(backends) == {"hello_world"}
    assert "api" not in backends["hello_world"]
    assert len(backends["hello_world"]["workers"]) == 1

    one = server.get("/de-magic/backends/hello_world", broker=hello.url)
    assert one.status_code == 200
    assert "compute_sum" in one.json()["api"]["members"]

    missing = server.get("/de-magic/backends/no_such_backend", broker=hello.url)
    assert missing.status_code == 404
    assert "no_such_backend" in missing.json()["message"]


def test_jobs_lists_this_users_jobs_and_an_unreachable_broker_says_so(server, hello):
    job = hello.client["hello_world"].echo.start(7)
    assert job.result(timeout=10) == 7
    answer = server.get("/de-magic/jobs", broker=hello.url).json()
    assert answer["reachable"] is True
    assert [(j["id"], j["backend"], j["status"]) for j in answer["jobs"]] == [(job.id, "hello_world", "done")]
    down = server.get("/de-magic/jobs", broker=EXTRA).json()
    assert down["reachable"] is False and "jobs" not in down


def test_unreachable_broker_is_reported_quickly_without_blocking_the_server(server):
    dead = f"tcp://127.0.0.1:{free_port()}"
    results: dict = {}

    def slow_query():
        results["listing"] = timed(server.get, "/de-magic/listing", broker=dead)

    thread = threading.Thread(target=slow_query)
    thread.start()
    try:
        # While the broker query waits for its timeout, the server keeps answering.
        latencies = []
        while thread.is_alive():
            status, took = timed(server.get, "/api/status")
            assert status.status_code == 200
            latencies.append(took)
        assert len(latencies) >= 3
        assert max(latencies) < TIMEOUT / 2, f"/api/status took {max(latencies):.2f} s during a broker query"
    finally:
        thread.join(10)
    response, took = results["listing"]
    assert response.status_code == 200
    body = response.json()
    assert body["reachable"] is False
    assert dead in body["error"] and "running" in body["error"]
    assert TIMEOUT * 0.8 < took < TIMEOUT + 3

    summary = server.get("/de-magic/backends", broker=dead).json()
    assert summary["reachable"] is False and "backends" not in summary


def test_broker_recovers_when_it_comes_back(server, processes):
    cluster = Cluster(processes)
    try:
        before = server.get("/de-magic/listing", broker=cluster.url).json()
        assert before["reachable"] is False
        cluster.start_broker()
        # once its cool-down after the failure is over (see brokerpool.py)
        after = wait_for(lambda: _reachable(server.get("/de-magic/listing", broker=cluster.url).json()),
                         timeout=RETRY + 5, what="the server to see the broker")
        assert after["backends"] == {}
        cluster.start_backend("de_magic.demo.hello", "hello_world")
        again = server.get("/de-magic/listing", broker=cluster.url).json()
        assert again["backends"]["hello_world"]["allow_code"] is False
    finally:
        cluster.client.close()


def _reachable(listing: dict) -> dict | None:
    return listing if listing["reachable"] else None


def test_unreachable_brokers_do_not_delay_a_reachable_one(server, hello):
    """Three dead brokers, each polled by a few tabs at once, while a live one is listed."""
    dead = [f"tcp://127.0.0.1:{free_port()}" for _ in range(3)]
    with ThreadPoolExecutor(16) as pool:
        polls = [pool.submit(server.get, "/de-magic/listing", broker=url) for url in dead * 4]
        wait_for(lambda: sum(not p.done() for p in polls) == len(polls), what="the polls to be sent")
        response, took = timed(server.get, "/de-magic/listing", broker=hello.url)
        assert response.json()["reachable"] is True
        assert took < 0.5, f"a live broker's listing took {took:.2f} s while dead ones were queried"
        assert all(p.result().json()["reachable"] is False for p in polls)


@pytest.mark.parametrize("bad", ["http://example.org", "127.0.0.1:5555", "tcp://", "tcp://a b"])
def test_rejects_addresses_that_are_not_brokers(server, bad):
    response = server.get("/de-magic/listing", broker=bad)
    assert response.status_code == 400
    assert "is not a broker address: expected tcp://HOST:PORT" in response.json()["message"]


def _installed() -> bool:
    try:
        importlib.metadata.distribution("de-magic")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _installed(), reason="de-magic is not pip-installed (pip install -e .)")
def test_pip_install_enables_both_extensions():
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR")}

    def run(*args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "jupyter", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)

    def lines(proc: subprocess.Popen) -> list[str]:
        out = proc.communicate(timeout=60)[0]
        return [" ".join(re.sub(r"\x1b\[[0-9;]*m", "", line).split()) for line in out.splitlines()]

    # Both at once: each spends seconds importing every installed extension.
    server_list, lab_list = run("server", "extension", "list"), run("labextension", "list")
    servers, labs = lines(server_list), lines(lab_list)
    assert "de_magic enabled" in servers, servers
    assert any(re.fullmatch(r"de_magic [\w.]+ OK", line) for line in servers), servers
    assert any(re.fullmatch(r"de-magic v[\w.]+ enabled OK \(python, de-magic\)", line) for line in labs), labs


def test_a_consortiums_doors_are_one_entry_that_fails_over(server, hello):
    down = f"tcp://127.0.0.1:{free_port()}"
    listing = server.get("/de-magic/listing", broker=f"{down}, {hello.url}").json()
    assert listing["reachable"] is True and listing["broker"]["url"] == hello.url
    assert "hello_world" in listing["backends"]
    assert server.get("/de-magic/listing", broker=f"{down},,").json()["reachable"] is False  # down, said so
    assert server.get("/de-magic/listing", broker=f"{hello.url},hub:1").status_code == 400
