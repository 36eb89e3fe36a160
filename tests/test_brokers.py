"""Many brokers: per-broker trust from the config file (like SSH's known hosts)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time

import pytest

from de_magic import Client
from de_magic.wire.errors import BackendLost, BadAddress, Refused
from de_magic.wire.security import Security, create_keys, public_key, remember_broker

from conftest import HEARTBEAT, ROOT, Cluster, Processes, curve_keys, free_port, start_logged, wait_for


def z85(path) -> str:
    return public_key(path).decode()


@pytest.fixture(scope="module")
def two_brokers(tmp_path_factory):
    """Two CURVE brokers with different key pairs that both let alice and the backend in, and one backend
    registered at both, which finds each broker's key in its config file."""
    tmp = tmp_path_factory.mktemp("brokers")
    keys = curve_keys(tmp)
    keys["other"] = create_keys("other", tmp / "pairs")[1]
    procs = Processes()
    urls = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
    backend_config = tmp / "backend.toml"
    backend_config.write_text(f'key = "{keys["backend"]}"\n[brokers."{urls[0]}"]\nbroker_key = "{keys["broker"]}"\n'
                              f'[brokers."{urls[1]}"]\nbroker_key = "{z85(keys["other"])}"\n')
    try:
        for url, own in zip(urls, ("broker", "other")):
            log = tmp / f"{own}.log"
            start_logged(procs, "broker", "--bind", url, "--heartbeat", str(HEARTBEAT), "--key", str(keys[own]),
                         "--allowed-keys", str(keys["allowed"]), log=log)
            wait_for(lambda log=log: "listening" in log.read_text(), what=f"the broker at {url} to listen")
        start_logged(procs, "serve", "de_magic.demo.hello", "--name", "hello", "--broker", urls[0],
                     "--broker", urls[1], "--heartbeat", str(HEARTBEAT), log=tmp / "backend.log",
                     env={"DE_MAGIC_CONFIG": str(backend_config), "DE_MAGIC_KEY": "", "DE_MAGIC_BROKER_KEY": ""})
        yield urls, keys
    finally:
        procs.stop_all()


@pytest.fixture
def config(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    monkeypatch.setenv("DE_MAGIC_CONFIG", str(path))
    for name in ("DE_MAGIC_KEY", "DE_MAGIC_BROKER_KEY"):
        monkeypatch.delenv(name, raising=False)
    return path


def _hello(client: Client) -> list:
    wait_for(lambda: "hello" in client.listing(api=False)["backends"], what=f"the backend at {client.url}")
    return client.call("hello", "scale", ([1.0],))


def test_each_broker_gets_its_own_key_from_the_config_file(two_brokers, config):
    (a, b), keys = two_brokers
    # one broker's key as a file, the other's as Z85 text (which may hold a "/")
    config.write_text(f'# my brokers\nkey = "{keys["alice"]}"\n\n[brokers."{a}"]\nbroker_key = "{keys["broker.public"]}"\n'
                      f'\n[brokers.other]\nurl = "{b}"\nbroker_key = "{z85(keys["other"])}"\n')
    for url in (a, b):
        with Client(url, timeout=10, heartbeat=HEARTBEAT) as client:
            assert _hello(client) == [2.0]
    # the command line reads the same tables
    listed = subprocess.run([sys.executable, "-m", "de_magic", "list", "--json", "--broker", b], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "hello" in json.loads(listed.stdout)["backends"], listed.stderr
    # a flag still wins over the table: here a wrong one, which says so
    with Client(a, heartbeat=HEARTBEAT, security=Security.resolve(broker_key=keys["other"], url=a)) as client:
        with pytest.raises(Refused, match="does not match the broker at"):
            client.listing()


def test_a_wrong_key_in_the_table_is_a_refusal_naming_the_table(two_brokers, config):
    (a, b), keys = two_brokers
    config.write_text(f'key = "{keys["alice"]}"\n[brokers."{b}"]\nbroker_key = "{keys["broker.public"]}"\n')
    with Client(b, heartbeat=HEARTBEAT) as client, pytest.raises(Refused) as info:
        client.listing()
    assert f'does not match the broker at {b}: check [brokers."{b}"] in {config}' \
        in str(info.value)


def test_an_unknown_broker_says_which_table_to_add(two_brokers, config):
    (a, b), keys = two_brokers
    # alice's own key is in the file, but nothing about broker b: it is not presented there
    config.write_text(f'key = "{keys["alice"]}"\n[brokers."{a}"]\nbroker_key = "{keys["broker.public"]}"\n')
    assert Security.resolve(url=b) == Security()
    with Client(b, heartbeat=HEARTBEAT) as client, pytest.raises(Refused) as info:
        client.listing()
    assert f'requires CURVE and its public key is not known here: add it as broker_key = "FILE or Z85 text" ' \
           f'to [brokers."{b}"] in {config}' in str(info.value)
    # which is what remember_broker (the sidebar's "+") does
    remember_broker(b, z85(keys["other"]))
    with Client(b, timeout=10, heartbeat=HEARTBEAT) as client:
        assert _hello(client) == [2.0]


def test_remember_broker_edits_only_its_table_and_refuses_what_is_not_a_key(tmp_path, config):
    keys = curve_keys(tmp_path)
    config.write_text('# mine\nkey = "me.key_secret"\n\n[brokers."tcp://h:1"]\nbroker_key = "old.key"\n'
                      'key = "special.key_secret"\n\n[owners]\nx = ["a"]\n')
    remember_broker("tcp://h:1", str(keys["broker.public"]))
    remember_broker("tcp://h:2", z85(keys["alice"]))
    text = config.read_text()
    assert text.startswith("# mine\n") and "[owners]\nx = " in text and "old.key" not in text
    h1, h2 = Security.resolve(url="tcp://h:1"), Security.resolve(url="tcp://h:2")
    assert h1.broker_key == keys["broker.public"] and h1.key == tmp_path / "special.key_secret"
    assert h2.broker_public == z85(keys["alice"]).encode() and h2.key == tmp_path / "me.key_secret"
    for bad in ("", "hello", z85(keys["alice"])[:-1], str(tmp_path / "missing.key")):
        with pytest.raises(Refused, match="public key"):
            remember_broker("tcp://h:3", bad)
    assert "h:3" not in config.read_text()


def test_a_typo_in_a_broker_table_is_an_error(config):
    config.write_text('[brokers."tcp://h:1"]\nbroker_kye = "x"\n')
    with pytest.raises(Refused, match=r'unknown setting\(s\) broker_kye in \[brokers."tcp://h:1"\]'):
        Security.resolve(url="tcp://h:1")


# -- a client with several doors ------------------------------------------------------------


@pytest.fixture
def consortium(processes):
    """Two plain brokers, each with a hello_world backend: equivalent doors to the same service."""
    clusters = [Cluster(processes), Cluster(processes)]
    try:
        for cluster in clusters:
            cluster.start_broker()
            cluster.start_backend("de_magic.demo.hello", "hello_world")
        yield clusters
    finally:
        for cluster in clusters:
            cluster.client.close()


def _call_in_a_loop(call, stop: threading.Event, record: list) -> None:
    """Call ``call(i)`` for i = 0, 1, ... until stopped; record (i, end time, result or exception)."""
    for i in itertools.count():
        if stop.is_set():
            return
        try:
            outcome = call(i)
        except Exception as exc:
            outcome = exc
        record.append((i, time.monotonic(), outcome))


def test_a_killed_broker_fails_over_to_the_next_door(consortium):
    a, b = consortium
    quiet = {"on_progress": lambda progress: None}
    with Client([a.url, b.url], timeout=20, heartbeat=HEARTBEAT) as client:
        remote = client["hello_world"]
        # slow enough (about 0.1 s) that a call is in flight when the broker dies
        retried = remote.slow_sum.options(retries=2, **quiet)
        plain = remote.slow_sum.options(**quiet)
        loops = {"retried": (lambda i: (i, retried(i % 5, 0.02))), "plain": (lambda i: (i, plain(i % 5, 0.02)))}
        stop, records = threading.Event(), {name: [] for name in loops}
        threads = [threading.Thread(target=_call_in_a_loop, args=(call, stop, records[name]))
                   for name, call in loops.items()]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: all(len(r) >= 10 for r in records.values()), what="calls through the first door")
            a.broker.kill()  # SIGKILL: no goodbye to anyone
            a.broker.wait()  # dead: an answer from now on came through the other broker
            killed = time.monotonic()
            wait_for(lambda: all(any(t > killed and not isinstance(o, Exception) for _, t, o in r)
                                 for r in records.values()), timeout=10, what="calls through the second door")
            wait_for(lambda: all(len(r) >= 10 + len([1 for _, t, _ in r if t > killed]) for r in records.values()),
                     what="a few more calls")
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert client.url == b.url
        for name, record in records.items():
            # one answer per call, each its own (nothing lost, nothing answered twice or crossed)
            assert [i for i, _, _ in record] == list(range(len(record)))
            answers = [(i, o) for i, _, o in record if not isinstance(o, Exception)]
            assert all(o == (i, sum(range(i % 5))) for i, o in answers), name
            errors = [o for _, _, o in record if isinstance(o, Exception)]
            back = min(t for _, t, o in record if t > killed and not isinstance(o, Exception)) - killed
            print(f"\n{name}: {len(record)} calls, {len(errors)} BackendLost, answers again {back:.2f} s after the kill")
            assert back < 3.0
            if name == "retried":
                assert errors == []
            else:  # at most the call in flight, told clearly
                assert len(errors) <= 1 and all(isinstance(e, BackendLost) and a.url in str(e) for e in errors)


def test_doors_from_the_environment_and_a_first_door_that_is_down(consortium, monkeypatch):
    a, b = consortium
    down = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("DE_MAGIC_BROKER", f"{down}, {b.url}")
    with Client(timeout=20, heartbeat=HEARTBEAT) as client:
        assert client.urls == [down, b.url]
        assert client.call("hello_world", "scale", ([1.0],), retries=1) == [2.0]
        assert client.url == b.url
    with pytest.raises(BadAddress, match="is not a broker address"):
        Client(f"{a.url},hub:5555")


# -- a backend on several brokers -----------------------------------------------------------


def test_a_backend_on_two_brokers_shares_its_capacity(consortium, processes):
    a, b = consortium
    capacity = 2
    backend = processes.start("serve", "tests/overlap_backend.py", "--name", "overlap", "--max-workers",
                              str(capacity), "--broker", a.url, "--broker", b.url, "--heartbeat", str(HEARTBEAT))
    for cluster in (a, b):
        wait_for(lambda c=cluster: any(w["pid"] == backend.pid and w["slots"] == capacity for w in c.workers("overlap")),
                 what=f"the backend's slots at {cluster.url}")
    assert a.workers("overlap")[0]["id"] == b.workers("overlap")[0]["id"]  # the same worker at each
    calls, seconds = 4, 0.3  # per broker: twice the capacity, from each side
    with Client(a.url, timeout=30, heartbeat=HEARTBEAT) as via_a, Client(b.url, timeout=30, heartbeat=HEARTBEAT) as via_b:
        start = time.monotonic()
        futures = [client.submit("overlap", "hold", (seconds,)) for _ in range(calls) for client in (via_a, via_b)]
        peaks = [future.result(timeout=30) for future in futures]  # every call answered: none lost
        elapsed = time.monotonic() - start
    print(f"\n{2 * calls} calls of {seconds} s through two brokers, capacity {capacity}: {elapsed:.2f} s, "
          f"at most {max(peaks)} at once")
    assert max(peaks) == capacity  # both slots used, never more
    assert elapsed >= 2 * calls * seconds / capacity - 0.05
    # a client of both brokers lists each backend once, with the brokers it is reachable through
    with Client([a.url, b.url], timeout=10, heartbeat=HEARTBEAT) as both:
        table = both.backends()
        assert table["overlap"]["brokers"] == [a.url, b.url] and len(table["overlap"]["workers"]) == 1
        assert len(table["hello_world"]["workers"]) == 2  # one process at each broker
        assert f"{a.url}, {b.url}" in repr(table).splitlines()[2]
        listed = subprocess.run([sys.executable, "-m", "de_magic", "list", "--broker", a.url, "--broker", b.url],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and f"{a.url}, {b.url}" in listed.stdout, listed.stderr
        a.broker.kill()
        table = both.backends()
        assert table["overlap"]["brokers"] == [b.url] and table.broker["down"] == [a.url]


def test_the_config_files_broker_is_the_default_after_the_environment(config, monkeypatch):
    from de_magic.wire.defaults import DEFAULT_URL, default_url

    monkeypatch.delenv("DE_MAGIC_BROKER", raising=False)
    assert default_url() == DEFAULT_URL
    config.write_text('broker = ["tcp://hub-a:5555", "tcp://hub-b:5555"]\n')
    assert default_url() == "tcp://hub-a:5555,tcp://hub-b:5555"
    assert Client().urls == ["tcp://hub-a:5555", "tcp://hub-b:5555"]
    monkeypatch.setenv("DE_MAGIC_BROKER", "tcp://mine:1")
    assert default_url() == "tcp://mine:1"
    monkeypatch.delenv("DE_MAGIC_BROKER")
    config.write_text('broker = "hub-a:5555"\n')
    with pytest.raises(BadAddress, match="from broker in"):
        default_url()


def test_a_session_carries_on_through_the_other_broker(consortium, processes):
    """A namespace lives on its worker, which both brokers know: losing one broker loses no state."""
    from de_magic.caller.session import RemoteSession

    a, b = consortium
    processes.start("serve", "de_magic.demo.hello", "--name", "coder", "--allow-code", "--broker", a.url,
                    "--broker", b.url, "--heartbeat", str(HEARTBEAT))
    for cluster in (a, b):
        wait_for(lambda c=cluster: c.workers("coder"), what=f"the backend at {cluster.url}")
    with Client([a.url, b.url], timeout=20, heartbeat=HEARTBEAT) as client:
        session = RemoteSession(client, "coder")
        session.push(x=41)  # code runs in the backend's main thread: its answers go back by the right broker
        a.broker.kill()
        a.broker.wait()
        with pytest.raises(BackendLost, match="namespace of session .* survived"):
            session.pull("x")
        assert client.url == b.url
        assert session.execute("x += 1", pull=["x"]).result()["x"] == 42


# -- listings, the first door and failback -------------------------------------------------


def _median_seconds(work, reps: int = 15) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return sorted(times)[reps // 2]


def test_listing_two_brokers_reuses_the_connections_and_shows_a_down_one_after_one_probe(consortium):
    a, b = consortium
    with Client(a.url, timeout=10, heartbeat=HEARTBEAT) as one, \
            Client([a.url, b.url], timeout=10, heartbeat=HEARTBEAT) as both:
        assert both.backends()["hello_world"]["brokers"] == [a.url, b.url]
        single, double = _median_seconds(one.backends), _median_seconds(both.backends)
        print(f"\nbackends(): one broker {single * 1000:.1f} ms, two brokers {double * 1000:.1f} ms")
        # the two are asked at once over kept connections, with the APIs this client has (was a fresh client each,
        # about 100x); 2 ms of slack: this listing is tiny, and the hop to the I/O thread is a fixed cost
        assert double <= 2 * single + 0.002, f"two brokers {double * 1000:.1f} ms, one {single * 1000:.1f} ms"
        links = both._calls().sockets
        a.broker.kill()
        a.broker.wait()
        start = time.monotonic()
        table = both.backends()
        first = time.monotonic() - start
        assert table.broker["down"] == [a.url] and table["hello_world"]["brokers"] == [b.url]
        assert f"the broker at {a.url} is down" in repr(table)
        assert f"<b>down</b>: <code>{a.url}</code>" in table._repr_html_()
        later = _median_seconds(both.backends, reps=5)
        print(f"with {a.url} down: the first listing {first:.2f} s, the next ones {later * 1000:.1f} ms")
        assert first < both.heartbeat * both.liveness + 1.0  # one probe
        assert later < 0.5  # the down broker is not waited for again
        assert both._calls().sockets == links  # no connection made per listing


def test_a_fresh_client_whose_first_broker_is_down_calls_within_a_second(consortium):
    a, b = consortium
    down = f"tcp://127.0.0.1:{free_port()}"
    with Client([down, b.url], timeout=20) as client:  # the default heartbeat: 4 s of silence meant "down"
        start = time.monotonic()
        assert client.call("hello_world", "scale", ([1.0],)) == [2.0]
        took = time.monotonic() - start
    print(f"\nfirst call with the first broker down: {took:.2f} s")
    assert took < 1.5, f"the first call took {took:.2f} s"  # 1 s goal, with room for a loaded machine
    assert client.url == b.url


def test_a_client_goes_back_to_its_first_broker_once_it_is_back(consortium):
    a, b = consortium
    with Client([a.url, b.url], timeout=20, heartbeat=HEARTBEAT) as client:
        assert client.call("hello_world", "scale", ([1.0],)) == [2.0] and client.url == a.url
        a.broker.kill()
        a.broker.wait()
        assert client.call("hello_world", "scale", ([1.0],), retries=2) == [2.0]
        assert client.url == b.url
        a.start_broker()  # the same address; its backend registers there again
        wait_for(lambda: client.url == a.url, timeout=20, what="the client to go back to its first broker")
        assert client.call("hello_world", "scale", ([2.0],)) == [4.0]
        assert client.submit("hello_world", "scale", ([3.0],)).result(20) == [6.0]
