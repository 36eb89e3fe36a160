"""The direct data path: calls go straight to a worker when they can, through the broker when they must.

Which way a call went shows in the broker's books: a worker's ``calls`` counts only the calls the
broker routed, while its ``busy`` count includes direct calls (the slot tells the broker BUSY).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import zmq

from conftest import HEARTBEAT, Cluster, Processes, curve_keys, direct_peer, free_port, wait_for
from de_magic import Client
from de_magic.backend.direct import advertised, advertised_host
from de_magic.backend.server import Backend
from de_magic.wire import protocol as P
from de_magic.wire import serialize
from de_magic.wire.errors import BackendLost, BadAddress, CallTimeout, Cancelled, PayloadTooLarge, Refused
from de_magic.wire.security import Security

DIRECT = ("--direct", "tcp://127.0.0.1:0")


@pytest.fixture
def direct(cluster):
    """A broker with ``hello_world`` taking direct calls on loopback."""
    cluster.start_backend("de_magic.demo.hello", "hello_world", "--allow-code", *DIRECT)
    return cluster


def the_worker(cluster: Cluster, name: str = "hello_world") -> dict:
    (worker,) = cluster.workers(name)
    return worker


def test_a_direct_backend_is_listed_with_its_endpoint_and_called_without_the_broker(direct):
    worker = the_worker(direct)
    # without CURVE at the broker, the endpoint has a key of its own: callers check it is the worker
    assert worker["direct"]["url"].startswith("tcp://127.0.0.1:") and len(worker["direct"]["key"]) == 40
    hw = direct.client["hello_world"]
    assert [hw.echo(i) for i in range(50)] == list(range(50))
    assert the_worker(direct)["calls"] == 0  # not one of them crossed the broker
    with Client(direct.url, heartbeat=HEARTBEAT, direct=False) as brokered:
        assert brokered.call("hello_world", "echo", (3,)) == 3
    assert the_worker(direct)["calls"] == 1
    assert "direct" in repr(direct.client.backends())  # the table shows it


def test_direct_calls_count_as_busy_at_the_broker(direct):
    future = direct.client.submit("hello_world", "slow_sum", (), {"n": 20, "delay": 0.05})
    wait_for(lambda: the_worker(direct)["busy"] == 1, what="the broker to see the direct call's slot busy")
    assert future.result(timeout=10) == sum(range(20))
    wait_for(lambda: the_worker(direct)["busy"] == 0, what="the slot to be free again")
    assert the_worker(direct)["calls"] == 0


def test_progress_errors_and_cancel_work_direct(direct):
    seen = []
    hw = direct.client["hello_world"]
    assert hw.slow_sum.options(on_progress=seen.append)(n=5, delay=0.01) == 10
    assert seen[-1].n == 5 and seen[-1].done
    with pytest.raises(Exception, match="compute_sum"):
        hw.compute_sum("not numbers")
    future = direct.client.submit("hello_world", "slow_sum", (), {"n": 1000, "delay": 0.05})
    wait_for(lambda: the_worker(direct)["busy"] == 1, what="the call to run")
    future.cancel()
    wait_for(lambda: the_worker(direct)["busy"] == 0, what="the cancelled call to stop on the backend")
    with pytest.raises(CallTimeout):
        hw.slow_sum.options(timeout=0.3)(n=100, delay=0.05)
    wait_for(lambda: the_worker(direct)["busy"] == 0, what="the timed-out call to be cancelled")
    assert the_worker(direct)["calls"] == 0


def test_a_remote_session_is_pinned_to_its_worker_directly(direct):
    from de_magic.caller.session import RemoteSession

    session = RemoteSession(direct.client, "hello_world")
    try:
        session.execute("x = 41")
        session.execute("y = x + 1")
        assert session.pull("y") == 42
    finally:
        session.close()
    assert the_worker(direct)["calls"] == 0


def test_a_direct_worker_that_dies_mid_call_ends_the_call_and_the_next_goes_via_a_new_one(direct):
    proc = next(p for p in direct.procs.procs if "serve" in p.args)
    future = direct.client.submit("hello_world", "slow_sum", (), {"n": 1000, "delay": 0.05})
    wait_for(lambda: the_worker(direct)["busy"] == 1, what="the call to run")
    start = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    with pytest.raises(BackendLost, match="direct"):
        future.result(timeout=10 * HEARTBEAT * 3)
    assert time.monotonic() - start < 3 * HEARTBEAT * 3 + 1
    proc.wait()
    direct.start_backend("de_magic.demo.hello", "hello_world", *DIRECT)  # restarted: a new worker, a new port
    assert direct.client.call("hello_world", "echo", (5,)) == 5
    assert direct.client.call("hello_world", "echo", (6,)) == 6
    assert the_worker(direct)["calls"] <= 1  # the first may have gone via the broker, the next went direct


class Unreachable(Backend):
    """A backend that advertises a direct endpoint nobody listens at (a firewall, a NAT, a wrong host name)."""

    def info(self, door):
        return {**super().info(door), "direct": f"tcp://127.0.0.1:{free_port()}"}


def test_an_unreachable_endpoint_costs_one_short_attempt_then_calls_go_via_the_broker(cluster):
    def double(x: int) -> int:
        return 2 * x

    backend = Unreachable("far", {"double": double}, broker=cluster.url, heartbeat=HEARTBEAT).start()
    try:
        wait_for(lambda: any(w["slots"] > 0 for w in cluster.workers("far")), what="the backend to register")
        with Client(cluster.url, heartbeat=HEARTBEAT) as client:
            start = time.monotonic()
            assert [client.call("far", "double", (i,)) for i in range(20)] == [2 * i for i in range(20)]
            assert time.monotonic() - start < 3.0  # one probe of 0.5 s at most, not one per call
        assert the_worker(cluster, "far")["calls"] == 20
    finally:
        backend.stop()


def test_plain_direct_endpoint_beyond_loopback_is_refused(cluster):
    done = subprocess.run([sys.executable, "-m", "de_magic", "serve", "de_magic.demo.hello", "--broker", cluster.url,
                           "--direct", "tcp://0.0.0.0:0"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "without encryption" in done.stderr and "--key" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_bad_direct_address_is_one_line_before_anything_starts():
    with pytest.raises(BadAddress, match=r"'tcp://nohost' \(from --direct\) is not a direct endpoint address"):
        Backend("x", {}, broker="tcp://127.0.0.1:1", direct="tcp://nohost")


def test_ten_thousand_calls_in_flight_on_one_client_thread(cluster):
    cluster.start_backend("de_magic.demo.hello", "hello_world", "--max-workers", "50", "--max-queue", "20000")
    threads = threading.active_count()
    futures = [cluster.client.submit("hello_world", "echo", (i,)) for i in range(10_000)]
    assert threading.active_count() <= threads + 1  # one I/O thread for all of them
    assert [f.result(timeout=60) for f in futures] == list(range(10_000))


# -- CURVE ------------------------------------------------------------------------------------------

@pytest.fixture
def curve_broker(tmp_path):
    """A CURVE broker; its keys, address, a client of alice's, and the processes of the test."""
    keys = curve_keys(tmp_path)
    procs = Processes()
    url = f"tcp://127.0.0.1:{free_port()}"
    try:
        procs.start("broker", "--bind", url, "--heartbeat", str(HEARTBEAT), "--key", str(keys["broker"]),
                    "--allowed-keys", str(keys["allowed"]))
        with Client(url, heartbeat=HEARTBEAT,
                    security=Security(key=keys["alice"], broker_key=keys["broker.public"])) as alice:
            yield keys, url, alice, procs
    finally:
        procs.stop_all()


def _backend_args(keys: dict, url: str, *extra: str) -> list[str]:
    """`de-magic serve` of hello_world with the backend's keys, at the CURVE broker ``url``."""
    return ["serve", "de_magic.demo.hello", "--broker", url, "--heartbeat", str(HEARTBEAT), "--key",
            str(keys["backend"]), "--broker-key", str(keys["broker.public"]), *extra]


def _registered(alice: Client, backend: subprocess.Popen) -> dict:
    wait_for(lambda: _workers(alice) and _workers(alice)[0]["slots"] > 0, what="the backend to register")
    assert backend.poll() is None
    return _workers(alice)[0]


@pytest.fixture
def curve(curve_broker):
    keys, url, alice, procs = curve_broker
    _registered(alice, procs.start(*_backend_args(keys, url, "--allow-clients", "alice", *DIRECT)))
    return keys, url, alice


def _workers(client: Client) -> list[dict]:
    try:
        entry = client.listing(api=False, timeout=1)["backends"].get("hello_world")
    except Exception:  # noqa: BLE001 - not up yet
        return []
    return entry["workers"] if entry else []


def test_curve_direct_calls_are_vouched_both_ways(curve):
    keys, url, alice = curve
    (worker,) = _workers(alice)
    backend_key = keys["backend.public"].read_text().split('public-key = "')[1].split('"')[0]
    assert worker["direct"]["key"] == backend_key  # the key the broker authenticated, not one it was told
    assert alice.call("hello_world", "echo", (3,)) == 3
    assert _workers(alice)[0]["calls"] == 0  # alice went direct


def test_a_caller_the_broker_or_the_backend_refuses_is_refused_direct_too(curve):
    keys, url, alice = curve
    endpoint = _workers(alice)[0]["direct"]
    # bob is let in by the broker but not by the backend's --allow-clients: refused either way
    with Client(url, heartbeat=HEARTBEAT, security=Security(key=keys["bob"], broker_key=keys["broker.public"])) as bob:
        with pytest.raises(Refused, match="does not accept calls from this caller"):
            bob.call("hello_world", "echo", (3,))
    for name in ("bob", "mallory"):  # mallory: unknown to the broker too
        assert not _direct_handshake(keys[name], endpoint), f"{name} got through to the direct endpoint"
    assert _direct_handshake(keys["alice"], endpoint)


def test_a_wildcard_endpoint_is_advertised_as_told_and_called_there(curve_broker):
    keys, url, alice, procs = curve_broker
    port = free_port()
    backend = procs.start(*_backend_args(keys, url, "--direct", f"tcp://0.0.0.0:{port}", "--advertise", "127.0.0.1"))
    assert _registered(alice, backend)["direct"]["url"] == f"tcp://127.0.0.1:{port}"
    assert alice.call("hello_world", "echo", (3,)) == 3
    assert _workers(alice)[0]["calls"] == 0  # it went direct


def test_a_wildcard_endpoint_advertised_as_a_loopback_name_is_warned_about_once(curve_broker, tmp_path):
    keys, url, alice, procs = curve_broker
    port, log = free_port(), tmp_path / "backend.log"
    # a machine whose fully qualified name is localhost (as in many containers), without --advertise
    script = ("import socket, sys; socket.getfqdn = lambda name='': 'localhost'; "
              "from de_magic.cli import main; main(sys.argv[1:])")
    with log.open("wb") as out:
        backend = subprocess.Popen([sys.executable, "-c", script, *_backend_args(keys, url, "--direct", f"tcp://0.0.0.0:{port}")],
                                   stderr=out, start_new_session=True)
    procs.procs.append(backend)
    assert _registered(alice, backend)["direct"]["url"] == f"tcp://localhost:{port}"
    assert alice.call("hello_world", "echo", (3,)) == 3
    warnings = [line for line in log.read_text().splitlines() if "cannot reach: give --advertise HOST" in line]
    assert len(warnings) == 1, log.read_text()
    assert f"listens at tcp://0.0.0.0:{port} but is advertised as tcp://localhost:{port}" in warnings[0]


def test_advertise_takes_a_host_not_an_address():
    done = subprocess.run([sys.executable, "-m", "de_magic", "serve", "de_magic.demo.hello", "--broker",
                           "tcp://127.0.0.1:1", "--direct", "tcp://127.0.0.1:0", "--advertise", "tcp://host:5601"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip() == ("de-magic: --advertise takes a host name or address, not 'tcp://host:5601': "
                                   "callers are told tcp://HOST:PORT with the port the endpoint is bound to")


def test_a_config_setting_that_is_no_text_is_one_line(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("advertise = 5\n")
    done = subprocess.run([sys.executable, "-m", "de_magic", "serve", "de_magic.demo.hello", "--broker",
                           "tcp://127.0.0.1:1", "--direct", "tcp://127.0.0.1:0"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "DE_MAGIC_CONFIG": str(config)})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == f'de-magic: advertise in {config} must be text, e.g. advertise = "..."'


def test_the_advertised_host_may_come_from_the_config_file(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('advertise = "backend.example.org"\n')
    monkeypatch.setenv("DE_MAGIC_CONFIG", str(config))
    monkeypatch.delenv("DE_MAGIC_ADVERTISE", raising=False)
    assert advertised("tcp://0.0.0.0:5601", advertised_host(None)) == "tcp://backend.example.org:5601"
    assert advertised_host("10.0.0.5") == "10.0.0.5"  # the flag wins
    assert advertised("tcp://0.0.0.0:5601", "::1") == "tcp://[::1]:5601"


def _direct_handshake(key_file, endpoint: dict) -> bool:
    """Whether a raw CURVE socket with ``key_file``'s pair completes a handshake with the endpoint."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_publickey, sock.curve_secretkey = Security(key=key_file).key_pair
    sock.curve_serverkey = endpoint["key"].encode()
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                      | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    try:
        sock.connect(endpoint["url"])
        assert monitor.poll(5000), "no handshake outcome"
        from zmq.utils.monitor import recv_monitor_message

        return recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
    finally:
        sock.disable_monitor()
        monitor.close()
        sock.close()


def test_a_direct_endpoint_answers_bad_messages_and_unknown_requests(direct):
    sock = direct_peer(the_worker(direct)["direct"])
    try:
        sock.send_multipart(P.message(P.LIST, [b"r1"], b"{}"))  # only the broker lists
        assert P.parse(sock.recv_multipart(), P.AT_CLIENT).header["kind"] == "protocol"
        sock.send_multipart(P.call(b"r2", "other", b"", b"{}", [b""]))
        assert P.parse(sock.recv_multipart(), P.AT_CLIENT).header["kind"] == "unknown_backend"
        sock.send_multipart(P.query(b"r3", b"r4"))
        assert P.parse(sock.recv_multipart(), P.AT_CLIENT).pairs() == [(b"r3", P.UNKNOWN), (b"r4", P.UNKNOWN)]
        sock.send_multipart(P.call(b"r5", "hello_world", b"", P.dump_header({"member": "echo"}),
                                   serialize.dumps((("ok",), {}))))
        assert serialize.loads(P.parse(sock.recv_multipart(), P.AT_CLIENT).payload) == "ok"
        sock.send_multipart(P.call(b"r6", "hello_world", b"", P.dump_header({"member": "slow_sum"}),
                                   serialize.dumps(((), {"n": 1000, "delay": 0.05}))))
        wait_for(lambda: the_worker(direct)["busy"] == 1, what="the call to run")
        sock.send_multipart(P.cancel(b"r6"))
        answer = P.parse(sock.recv_multipart(), P.AT_CLIENT)
        while type(answer) is P.Event:  # its progress reports, then the end
            answer = P.parse(sock.recv_multipart(), P.AT_CLIENT)
        assert answer.rid == b"r6" and answer.header["kind"] == Cancelled.kind
    finally:
        sock.close()


def test_a_no_pickle_backend_and_its_size_limit_hold_direct(cluster):
    def double(x: int) -> int:
        return 2 * x

    backend = Backend("strict", {"double": double}, broker=cluster.url, heartbeat=HEARTBEAT, codec="json",
                      max_message_size=10_000, direct="tcp://127.0.0.1:0").start()
    try:
        wait_for(lambda: any(w["slots"] > 0 for w in cluster.workers("strict")), what="the backend to register")
        with Client(cluster.url, heartbeat=HEARTBEAT) as client:
            assert client.call("strict", "double", (21,)) == 42
            with pytest.raises(PayloadTooLarge, match="maximum message size of 10000"):
                client.call("strict", "double", ("x" * 20_000,))
            with pytest.raises(TypeError, match="expected int"):  # validated against the schema, as through the broker
                client.call("strict", "double", ("not a number",))
        assert the_worker(cluster, "strict")["calls"] == 0
    finally:
        backend.stop()


def test_cancelled_waiting_calls_do_not_pile_up_at_a_direct_endpoint(cluster):
    cluster.start_backend("de_magic.demo.hello", "hello_world", "--max-workers", "1", "--max-queue", "5", *DIRECT)
    sock = direct_peer(the_worker(cluster)["direct"])
    try:
        slow = P.dump_header({"member": "slow_sum"})
        sock.send_multipart(P.call(b"long", "hello_world", b"", slow, serialize.dumps(((), {"n": 100, "delay": 0.05}))))
        wait_for(lambda: the_worker(cluster)["busy"] == 1, what="the one slot to be busy")
        for i in range(2000):  # call and cancel, over and over, while the slot is busy: always room for more
            rid = b"c%d" % i
            sock.send_multipart(P.call(rid, "hello_world", b"", slow, serialize.dumps(((), {"n": 1}))))
            sock.send_multipart(P.cancel(rid))
        kinds = []
        while len(kinds) < 2000:
            msg = P.parse(sock.recv_multipart(), P.AT_CLIENT)
            if msg.rid != b"long":
                kinds.append(msg.header["kind"])
        assert set(kinds) == {Cancelled.kind}  # never "busy": cancelled calls left the queue
    finally:
        sock.close()


def test_a_quick_member_runs_inline_and_a_long_call_of_it_holds_up_nothing(cluster):
    from de_magic.backend.direct import QUICK_STREAK

    def nap(seconds: float) -> float:
        for _ in range(int(seconds * 100)):  # short sleeps: a cancel lands between them
            time.sleep(0.01)
        return seconds

    def echo(value: int) -> int:
        return value

    backend = Backend("napper", {"nap": nap, "echo": echo}, broker=cluster.url, heartbeat=HEARTBEAT,
                      direct="tcp://127.0.0.1:0").start()
    try:
        wait_for(lambda: any(w["slots"] > 0 for w in cluster.workers("napper")), what="the backend to register")
        with Client(cluster.url, heartbeat=HEARTBEAT) as client:
            # a busy machine can stretch one call past QUICK and restart the streak: call until it is long enough
            wait_for(lambda: client.call("napper", "nap", (0.0,)) == 0.0
                     and backend.direct.quick.get(("nap", None), 0) > QUICK_STREAK,
                     interval=0, what="a streak of quick calls")  # from now on it runs inline
            long_call = client.submit("napper", "nap", (5.0,))
            wait_for(lambda: backend.direct.inline_since and backend.direct.relieving, what="the relief thread")
            start = time.monotonic()
            assert [client.call("napper", "echo", (i,)) for i in range(5)] == list(range(5))  # via the slots
            assert time.monotonic() - start < 1.0 and not long_call.done()
            long_call.cancel()  # the relief thread takes the cancel to the call running inline
            wait_for(lambda: not backend.direct.inline_since, what="the inline call to stop")
            assert ("nap", None) not in backend.direct.quick  # it was not quick after all
            assert client.call("napper", "nap", (0.01,)) == 0.01
        assert the_worker(cluster, "napper")["calls"] == 0
    finally:
        backend.stop()


def test_an_endpoint_taken_over_by_another_backend_sends_the_call_via_the_broker(cluster):
    def which() -> str:
        return "alpha"

    def other() -> str:
        return "beta"

    alpha = Backend("alpha", {"which": which}, broker=cluster.url, heartbeat=HEARTBEAT,
                    direct="tcp://127.0.0.1:0").start()
    wait_for(lambda: any(w["slots"] > 0 for w in cluster.workers("alpha")), what="alpha to register")
    url = alpha.direct.url
    with Client(cluster.url, heartbeat=HEARTBEAT) as client:
        assert client.call("alpha", "which") == "alpha"  # direct: the client now knows alpha's endpoint
        alpha.stop()
        beta = Backend("beta", {"which": other}, broker=cluster.url, heartbeat=HEARTBEAT, direct=url).start()
        alpha = Backend("alpha", {"which": which}, broker=cluster.url, heartbeat=HEARTBEAT).start()
        try:
            wait_for(lambda: any(w["slots"] > 0 for w in cluster.workers("alpha")), what="alpha to register again")
            assert client.call("alpha", "which") == "alpha"  # beta refused it unrun: it went via the broker
            assert client.submit("alpha", "which").result(timeout=10) == "alpha"
            assert the_worker(cluster, "alpha")["calls"] == 2
        finally:
            beta.stop()
            alpha.stop()


def test_a_timeout_names_what_was_called_and_the_direct_endpoint_only_as_a_detail(direct):
    endpoint = the_worker(direct)["direct"]["url"]
    hw = direct.client["hello_world"]
    with pytest.raises(CallTimeout) as blocking:
        hw.slow_sum.options(timeout=0.3, on_progress=lambda progress: None)(n=100, delay=0.05)
    assert str(blocking.value).startswith("no answer from hello_world.slow_sum within 0.3 s")
    assert str(blocking.value).endswith(f"(sent straight to its worker's direct endpoint {endpoint})")
    submitted = direct.client.submit("hello_world", "slow_sum", (), {"n": 100, "delay": 0.05}, timeout=0.3,
                                     on_progress=lambda progress: None)
    with pytest.raises(CallTimeout) as later:
        submitted.result(10)
    assert str(later.value) == str(blocking.value)  # one core decides for both, and says it alike
    wait_for(lambda: the_worker(direct)["busy"] == 0, what="the timed-out calls to be cancelled")


# -- callers of the same machine and user: the Unix socket (wire/localsocket.py) ----------------------------------

def _connected_to(client: Client) -> list[str]:
    """Where the client's direct sockets are connected."""
    return [sock.last_endpoint.decode() for sock in client.routes._socks.values()]


def test_a_caller_of_the_same_machine_and_user_takes_the_unix_socket(cluster, tmp_path):
    import numpy as np
    import stat

    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    cluster.start_backend("de_magic.demo.hello", "hello_world", *DIRECT, env={"XDG_RUNTIME_DIR": str(runtime)})
    local = the_worker(cluster)["direct"]["local"]
    path = local.removeprefix("ipc://")
    assert os.path.dirname(path) == str(runtime / "de-magic") and stat.S_ISSOCK(os.stat(path).st_mode)
    folder = os.stat(runtime / "de-magic")
    assert folder.st_uid == os.getuid() and stat.S_IMODE(folder.st_mode) == 0o700  # nobody else may put one there
    with Client(cluster.url, heartbeat=HEARTBEAT) as client:
        array = np.arange(2_000_000, dtype="float64")  # 16 MB: unencrypted, at loopback's speed
        np.testing.assert_array_equal(client.call("hello_world", "echo", (array,)), array)
        assert _connected_to(client) == [local] and the_worker(cluster)["calls"] == 0
    cluster.procs.stop_all()
    assert not os.path.exists(path)  # a backend that stops removes its socket


def test_a_unix_socket_where_another_user_could_have_put_it_is_not_used(cluster, tmp_path):
    from de_magic.wire import localsocket

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "de-magic").mkdir()
    os.chmod(shared / "de-magic", 0o777)  # writable by all: a socket there proves nothing
    cluster.start_backend("de_magic.demo.hello", "hello_world", *DIRECT, env={"XDG_RUNTIME_DIR": str(shared)})
    worker = the_worker(cluster)
    assert "local" not in worker["direct"]  # the backend listens on its CURVE endpoint only
    with Client(cluster.url, heartbeat=HEARTBEAT) as client:
        assert client.call("hello_world", "echo", ("tcp",)) == "tcp"
        assert _connected_to(client) == [worker["direct"]["url"]]
    # and a caller checks for itself: a socket in a directory others may write to is not this user's proof
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(shared / "de-magic" / "x.sock"))
        assert not localsocket.trusted(f"ipc://{shared}/de-magic/x.sock")
        os.chmod(shared / "de-magic", 0o700)
        assert localsocket.trusted(f"ipc://{shared}/de-magic/x.sock")
    finally:
        listener.close()


def test_the_socket_of_a_backend_that_died_is_swept_by_the_next(cluster, tmp_path):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    proc = cluster.start_backend("de_magic.demo.hello", "hello_world", *DIRECT, env=env)
    dead = the_worker(cluster)["direct"]["local"].removeprefix("ipc://")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(dead)  # killed: it could not remove it
    cluster.start_backend("de_magic.demo.hello", "hello_world", *DIRECT, env=env)
    assert not os.path.exists(dead) and cluster.client.call("hello_world", "echo", (1,)) == 1
