"""CURVE encryption and authentication, the insecure-bind refusal, authorization, and the no-pickle mode."""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zmq
import zmq.auth

from de_magic import Backend, Broker, Client
from de_magic.wire import serialize
from de_magic.wire import protocol as P
from de_magic.wire.errors import DeMagicError, Refused, UnknownBackend
from de_magic.wire.jsoncodec import TAG
from de_magic.wire.security import Security, create_keys, is_loopback
from de_magic.caller.session import RemoteSession

from conftest import HEARTBEAT, ROOT, Cluster, Processes, curve_keys, free_port, start_logged, wait_for


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "de_magic", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


# -- keys and settings -----------------------------------------------------------------


def test_keys_command_writes_a_pair_and_never_overwrites(tmp_path):
    done = _cli("keys", "alice", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    public, secret = tmp_path / "alice.key", tmp_path / "alice.key_secret"
    assert "secret" in done.stdout and str(public) in done.stdout
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    pair = Security(key=secret).key_pair
    assert len(pair[0]) == len(pair[1]) == 40  # Z85 keys
    again = _cli("keys", "alice", "--dir", str(tmp_path))
    assert again.returncode != 0 and "exists" in again.stderr
    assert Security(key=secret).key_pair == pair


def test_secret_key_is_created_owner_only_from_its_first_byte(tmp_path, monkeypatch):
    """Created 0600 by open(2) itself, even under umask 0: never created wider and narrowed after."""
    opened = {}
    real_open = os.open

    def recording_open(path, flags, mode=0o777, **kw):
        opened[Path(path).name] = (flags, mode)
        return real_open(path, flags, mode, **kw)

    def no_chmod(*args, **kwargs):
        raise AssertionError("a key file was chmod-ed after it was created")

    monkeypatch.setattr(os, "open", recording_open)
    for name in ("chmod", "fchmod", "lchmod"):
        monkeypatch.setattr(os, name, no_chmod, raising=False)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    old_umask = os.umask(0)
    try:
        public, secret = create_keys("carol", tmp_path)
    finally:
        os.umask(old_umask)
    flags, mode = opened["carol.key_secret"]
    assert mode == 0o600 and flags & os.O_CREAT and flags & os.O_EXCL
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and stat.S_IMODE(public.stat().st_mode) == 0o644
    assert zmq.auth.load_certificate(secret) == Security(key=secret).key_pair
    assert zmq.auth.load_certificate(public)[0] == Security(key=secret).key_pair[0]
    # a name taken by the public half only: refused, and no stray secret left behind
    (tmp_path / "dave.key").write_text("someone's")
    with pytest.raises(Refused, match="dave.key exists"):
        create_keys("dave", tmp_path)
    assert not (tmp_path / "dave.key_secret").exists()


def test_settings_resolve_flags_over_environment_over_config_file(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('key = "keys/me.key_secret"\nbroker_key = "/etc/broker.key"\n')
    monkeypatch.setenv("DE_MAGIC_CONFIG", str(config))
    monkeypatch.delenv("DE_MAGIC_KEY", raising=False)
    monkeypatch.setenv("DE_MAGIC_BROKER_KEY", "/env/broker.key")
    resolved = Security.resolve()
    assert resolved.key == tmp_path / "keys/me.key_secret"  # relative to the config file
    assert str(resolved.broker_key) == "/env/broker.key"
    assert str(Security.resolve(broker_key="/flag/broker.key").broker_key) == "/flag/broker.key"
    config.write_text('kye = "typo"\n')
    with pytest.raises(Refused, match="unknown setting"):
        Security.resolve()
    # a wrong key file shows where it was given, not later in a connection thread
    with pytest.raises(Refused, match=f"no key file {tmp_path / 'nope'}: create a key pair with `de-magic keys"):
        Client("tcp://127.0.0.1:1", security=Security(key=tmp_path / "nope", broker_key=tmp_path / "nope.key"))
    (tmp_path / "garbled.key").write_text("not a key\n")  # only a file that exists is called unreadable
    with pytest.raises(Refused, match="cannot read key file .*garbled.key: No public key found"):
        Security(broker_key=tmp_path / "garbled.key").broker_public  # noqa: B018
    with pytest.raises(Refused, match="only one was given"):
        Backend("x", {}, security=Security(broker_key=tmp_path / "broker.key"))


@pytest.mark.parametrize("url, local", [
    ("tcp://127.0.0.1:5555", True), ("tcp://localhost:1", True), ("tcp://[::1]:1", True), ("ipc:///tmp/x", True),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://10.1.2.3:5555", False),
    ("tcp://eth0:5555", False), ("tcp://broker.example.org:5555", False),
])
def test_loopback_detection(url, local):
    assert is_loopback(url) is local


def test_broker_refuses_non_loopback_without_curve_before_binding():
    port = free_port()
    done = _cli("broker", "--bind", f"tcp://0.0.0.0:{port}")
    assert done.returncode != 0
    assert "refusing to serve" in done.stderr and "--insecure" in done.stderr and "--allowed-keys" in done.stderr
    assert "listening" not in done.stdout + done.stderr


# -- a CURVE cluster: broker, a restricted and an open backend ------------------------------------


@pytest.fixture(scope="module")
def curve(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curve")
    keys = curve_keys(tmp)
    procs = Processes()
    cluster = Cluster(procs)
    cluster.keys, cluster.log = keys, tmp / "broker.log"
    cluster.client = client_for(cluster, "alice")
    try:
        cluster.broker = start_logged(procs, "broker", "--bind", cluster.url, "--heartbeat", str(HEARTBEAT),
                                      "--key", str(keys["broker"]), "--allowed-keys", str(keys["allowed"]),
                                      log=cluster.log)
        wait_for(cluster._answers, what="CURVE broker")
        # the same settings by flags (above), by environment variables and by config file (clients)
        env = {"DE_MAGIC_KEY": str(keys["backend"]), "DE_MAGIC_BROKER_KEY": str(keys["broker.public"])}
        cluster.start_backend("de_magic.demo.hello", "open", env=env)
        cluster.start_backend("de_magic.demo.hello", "private", "--allow-clients", "alice", env=env)
        yield cluster
    finally:
        cluster.client.close()
        procs.stop_all()


def client_for(cluster: Cluster, name: str, timeout: float = 20) -> Client:
    security = Security(key=cluster.keys[name], broker_key=cluster.keys["broker.public"])
    return Client(cluster.url, timeout=timeout, heartbeat=HEARTBEAT, security=security)


def test_curve_round_trip_encrypted_and_authenticated(curve, tmp_path, monkeypatch):
    listing = curve.client.listing()
    assert listing["broker"]["curve"] is True
    arr = np.arange(100_000.0)
    np.testing.assert_array_equal(curve.client["open"].echo(arr), arr)
    # a client configured only by its config file
    config = tmp_path / "config.toml"
    config.write_text(f'key = "{curve.keys["bob"]}"\nbroker_key = "{curve.keys["broker.public"]}"\n')
    monkeypatch.setenv("DE_MAGIC_CONFIG", str(config))
    with Client(curve.url, timeout=10, heartbeat=HEARTBEAT) as bob:
        assert bob.call("open", "scale", ([1.0],)) == [2.0]
    # and the command line, by flags
    listed = _cli("list", "--json", "--broker", curve.url, "--key", str(curve.keys["alice"]),
                  "--broker-key", str(curve.keys["broker.public"]))
    assert listed.returncode == 0, listed.stderr
    assert set(json.loads(listed.stdout)["backends"]) == {"open", "private"}


def test_unknown_key_and_plain_clients_are_refused_and_logged(curve):
    with client_for(curve, "mallory", timeout=1.5) as mallory, \
            Client(curve.url, timeout=1.5, heartbeat=HEARTBEAT, security=Security()) as plain:
        for intruder in (mallory, plain):
            with pytest.raises(DeMagicError):
                intruder.call("open", "echo", (1,))
    mallory_key = curve.keys["mallory.public"].read_text().split('public-key = "')[1].split('"')[0]
    wait_for(lambda: mallory_key in curve.log.read_text(), timeout=5, what="broker to log the refused key")
    line = next(line for line in curve.log.read_text().splitlines() if mallory_key in line)
    assert "refused connection from 127.0.0.1" in line


def test_a_flood_of_refused_handshakes_is_logged_throttled_with_a_count(tmp_path):
    keys = curve_keys(tmp_path)
    procs, url, log = Processes(), f"tcp://127.0.0.1:{free_port()}", tmp_path / "broker.log"
    try:
        start_logged(procs, "broker", "--bind", url, "--key", str(keys["broker"]),
                     "--allowed-keys", str(keys["allowed"]), log=log)
        wait_for(lambda: "listening" in log.read_text(), what="the broker to listen")
        attempts = 500
        sockets = [_intruder(keys, url) for _ in range(attempts)]
        try:
            # every attempt counted, once logged one by one or in a summary, in a few dozen lines
            wait_for(lambda: _refusals(log.read_text())[0] >= attempts, timeout=15, what="every refusal to be counted")
        finally:
            for sock in sockets:
                sock.close()
        counted, lines, summaries = _refusals(log.read_text())
        assert counted == attempts and summaries >= 1 and lines <= 40, (counted, lines, summaries)
    finally:
        procs.stop_all()


def _intruder(keys, url: str) -> zmq.Socket:
    """A DEALER with mallory's unknown key that tries its handshake once (no reconnect within the test)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.reconnect_ivl = 60_000
    Security(key=keys["mallory"], broker_key=keys["broker.public"]).connect(sock)
    sock.connect(url)
    return sock


def _refusals(text: str) -> tuple[int, int, int]:
    """Refusals counted in a broker log: (total, log lines about them, summary lines)."""
    single = text.count("refused connection from")
    summed = [int(m) for m in re.findall(r"bad input: (\d+) more in the last", text)]
    return single + sum(summed), single + len(summed), len(summed)


@pytest.mark.parametrize("key, broker_key, reason", [
    ("mallory", "broker.public", r"refused this client's key .{8}\.\.\. \(not in its allowed keys\)"),
    ("alice", "bob.public", r"the broker's public key configured here \(.*bob.key\) does not match the broker at"),
    (None, None, r'requires CURVE and its public key is not known here: add it as broker_key = .* to \[brokers\."tcp://'),
])
def test_a_refused_client_is_told_why_within_2_s(curve, key, broker_key, reason):
    security = Security(key=curve.keys[key], broker_key=curve.keys[broker_key]) if key else Security()
    with Client(curve.url, security=security) as client:  # default heartbeat: the time a person waits
        for attempt in (lambda: client.listing(), lambda: client.call("open", "echo", (1,))):
            start = time.monotonic()
            with pytest.raises(Refused, match=reason) as info:
                attempt()
            assert time.monotonic() - start < 2.0 and curve.url in str(info.value)
            assert "\n" not in str(info.value)


def test_a_curve_client_of_a_plain_broker_is_told_so(cluster, tmp_path):
    keys = curve_keys(tmp_path)
    with Client(cluster.url, security=Security(key=keys["alice"], broker_key=keys["broker.public"])) as client:
        # libzmq reports the mismatch itself, or (on a busy machine) only failed handshakes: both name the cause
        with pytest.raises(Refused, match="does not use CURVE"):
            client.listing()


def test_a_backend_with_a_refused_key_exits_saying_why(curve, tmp_path):
    log = tmp_path / "backend.log"
    start = time.monotonic()
    backend = start_logged(curve.procs, "serve", "de_magic.demo.hello", "--name", "intruder", "--broker", curve.url,
                           "--key", str(curve.keys["mallory"]), "--broker-key", str(curve.keys["broker.public"]),
                           log=log)
    assert backend.wait(timeout=10) != 0 and time.monotonic() - start < 6  # default heartbeat, and startup
    text = log.read_text()
    # said once, as the exit message: not also logged, and no "waiting for a broker" (it answered)
    assert text.count("refused this backend's key") == 1 and "none answers yet" not in text, text
    assert text.rstrip().splitlines()[-1].startswith("de-magic: the broker at ")
    assert "Traceback" not in text and "intruder" not in curve.client.listing(api=False)["backends"]


def test_backend_restricts_callers_in_listing_and_calls(curve):
    assert curve.client["private"].scale([1.0]) == [2.0]  # alice is allowed
    with client_for(curve, "bob") as bob:
        assert set(bob.listing(api=False)["backends"]) == {"open"}
        with pytest.raises(Refused, match="backend 'private' does not accept calls from this caller's key"):
            bob.call("private", "scale", ([1.0],))
        assert bob.call("open", "scale", ([1.0],)) == [2.0]
        # a wrong name lists what the caller may use, never a backend restricted to others
        with pytest.raises(UnknownBackend) as unknown:
            bob.call("nosuch", "scale", ([1.0],))
        assert "open" in str(unknown.value) and "private" not in str(unknown.value)
    assert "refused a call of 'private' from 'bob'" in curve.log.read_text()


def test_registering_under_a_live_name_with_another_key_is_refused(curve):
    """bob's key is allowed at the broker, but 'private' was registered with another key: he cannot join it,
    widen who may call it, or take its calls."""
    impostor = zmq.Context.instance().socket(zmq.DEALER)
    impostor.linger = 0
    Security(key=curve.keys["bob"], broker_key=curve.keys["broker.public"]).connect(impostor)
    impostor.connect(curve.url)
    try:
        impostor.send_multipart(P.ready("private", os.urandom(8), os.urandom(16), {"api": {}, "capacity": 1}))
        assert impostor.poll(5000), "no answer to the impostor's READY"
        answer = P.parse(impostor.recv_multipart(), P.AT_WORKER)
        assert isinstance(answer, P.Reject) and "registered at" in answer.reason and "by another key" in answer.reason
        assert len(curve.workers("private")) == 1
        with client_for(curve, "bob") as bob:
            assert "private" not in bob.listing(api=False)["backends"]
            with pytest.raises(Refused):
                bob.call("private", "scale", ([1.0],))
    finally:
        impostor.close()
    assert "refused registration of 'private' from 'bob'" in curve.log.read_text()


def test_a_key_alone_does_not_make_a_local_broker_curve(tmp_path):
    """A caller's own key (say from the config file) must not turn a local broker into a CURVE server."""
    keys = curve_keys(tmp_path)
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    try:
        assert Security(key=keys["alice"]).serve(sock, "tcp://127.0.0.1:5555") is None
        assert not sock.curve_server
        with pytest.raises(Refused, match="refusing to serve"):
            Security(key=keys["alice"]).serve(sock, "tcp://0.0.0.0:5555")
        with pytest.raises(Refused, match="needs the broker's own key"):
            Security(allowed_keys=keys["allowed"]).serve(sock, "tcp://127.0.0.1:5555")
    finally:
        sock.close()


def test_a_broker_that_cannot_bind_leaves_no_authenticator_running(tmp_path):
    keys = curve_keys(tmp_path)
    taken = zmq.Context.instance().socket(zmq.ROUTER)
    url = f"tcp://127.0.0.1:{free_port()}"
    taken.bind(url)
    try:
        before = threading.active_count()
        broker = Broker(url, security=Security(key=keys["broker"], allowed_keys=keys["allowed"]))
        with pytest.raises(zmq.ZMQError):
            broker.bind()
        assert threading.active_count() == before
    finally:
        taken.close()

# -- no-pickle mode ----------------------------------------------------------------------------


@pytest.fixture
def nopickle(hello):
    hello.start_backend("de_magic.demo.hello", "plain_json", "--no-pickle")
    return hello


def test_no_pickle_backend_round_trips_numpy_pandas_xarray(nopickle):
    entry = nopickle.client.listing(api=False)["backends"]["plain_json"]
    assert entry["codec"] == "json" and entry["allow_code"] is False
    be = nopickle.client["plain_json"]
    da = xr.DataArray(np.arange(6.0).reshape(2, 3), dims=("x", "y"), coords={"x": [10, 20]}, attrs={"units": "m"})
    xr.testing.assert_identical(be.echo(da), da)
    assert float(be.compute_sum(da)) == 15.0
    frame = pd.DataFrame({"a": [1, 2], "b": ["u", "v"], "t": pd.to_datetime(["2020-01-01", "2021-06-30"])})
    pd.testing.assert_frame_equal(be.echo(frame), frame)
    ints = np.arange(12, dtype=np.int16).reshape(3, 4)
    back = be.echo(ints)
    assert back.dtype == np.int16 and (back == ints).all()
    assert be.Stats(ddof=1).std([1.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_no_pickle_backend_validates_against_the_schema(nopickle):
    with pytest.raises(ValueError, match="less than or equal to 10"):
        nopickle.client["plain_json"].scale([1.0], factor=11)
    with pytest.raises(TypeError, match="argument 'values'"):
        nopickle.client["plain_json"].scale(["not a number"])
    assert nopickle.client["plain_json"].scale([1, 2], factor=10) == [10.0, 20.0]


def test_client_learns_the_codec_from_a_refusal(nopickle):
    with Client(nopickle.url, timeout=10, heartbeat=HEARTBEAT) as fresh:
        assert fresh.call("plain_json", "scale", ([1.0, 2.0],), {"factor": 3}) == [3.0, 6.0]
    called = _cli("call", "plain_json", "describe_table", "--args", '{"n_rows": 2}', "--broker", nopickle.url)
    assert called.returncode == 0, called.stderr
    assert "total" in called.stdout


def test_pickle_payload_is_refused_without_being_unpickled(nopickle, tmp_path):
    class Trap:
        def __init__(self, path):
            self.path = path

        def __reduce__(self):  # unpickling this creates the file
            return open, (str(self.path), "w")

    refused, control = tmp_path / "refused", tmp_path / "control"
    payload = pickle.dumps(((Trap(refused),), {}), protocol=5)
    with pytest.raises(Refused, match="takes no pickles"):
        nopickle.client.request("plain_json", {"member": "echo"}, [payload])
    assert not refused.exists()
    # the same trap springs at a pickle backend: the check above could fail
    payload = pickle.dumps(((Trap(control),), {}), protocol=5)
    with pytest.raises(DeMagicError):
        nopickle.client.request("hello_world", {"member": "echo"}, [payload])
    assert control.exists()


def test_no_pickle_excludes_code_execution_and_other_operations(nopickle):
    with pytest.raises(ValueError, match="cannot allow code execution"):
        Backend("x", {}, codec="json", allow_code=True)
    with pytest.raises(Refused, match="only JSON calls"):
        nopickle.client.request("plain_json", {"op": "exec", "codec": "json"}, serialize.dumps_json("print(1)"))


def test_a_json_client_runs_no_session_because_sessions_exchange_pickles(hello, tmp_path):
    trap = tmp_path / "unpickled"
    cell = ("class Trap:\n"
            "    def __reduce__(self):\n"
            f"        return open, ({str(trap)!r}, 'w')\n"
            "trap = Trap()\n")
    with Client(hello.url, timeout=10, heartbeat=HEARTBEAT, codec="json") as careful:
        with pytest.raises(Refused, match="unpickles nothing"):
            RemoteSession(careful, "hello_world").execute(cell, pull=["trap"])
    assert not trap.exists()


# -- the JSON encoding itself --------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    np.array([[1.5, np.nan], [np.inf, -0.0]]), np.array([True, False]), np.array(["a", "bcd"]),
    np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[ns]"), np.arange(3, dtype=">i4"),
    np.array([1, "x", None], dtype=object), np.zeros((0, 3)),
])
def test_json_encoding_keeps_arrays_exact(value):
    back = serialize.loads_json(serialize.dumps_json({"v": value}))["v"]
    assert back.dtype == value.dtype and back.shape == value.shape
    np.testing.assert_array_equal(back, value)


def test_json_encoding_of_pandas_and_xarray():
    frame = pd.DataFrame({"x": [1.0, 2.0], "c": pd.Categorical(["p", "q"])}, index=pd.Index([3, 4], name="i"))
    pd.testing.assert_frame_equal(serialize.loads_json(serialize.dumps_json(frame)), frame)
    series = pd.Series([1, 2], index=pd.date_range("2020", periods=2), name="s")
    pd.testing.assert_series_equal(serialize.loads_json(serialize.dumps_json(series)), series, check_freq=False)
    ds = xr.Dataset({"v": (("t",), np.arange(3.0))}, coords={"t": pd.date_range("2021", periods=3)}, attrs={"a": 1})
    xr.testing.assert_identical(serialize.loads_json(serialize.dumps_json(ds)), ds)


@pytest.mark.parametrize("text, needle", [
    ({TAG: "os.system", "args": "true"}, "unknown tagged"),
    ({TAG: "ndarray", "dtype": "O", "shape": [1], "data": "AA=="}, "object dtypes"),
    ({TAG: "ndarray", "dtype": "<f8", "shape": [2], "data": "AA=="}, "malformed ndarray"),
])
def test_json_decoding_refuses_anything_else(text, needle):
    with pytest.raises(ValueError, match=needle):
        serialize.loads_json([json.dumps(text).encode()])


MONITOR_FLOOD = '''
import time, zmq
from de_magic.wire.handshake import WatchedSocket
from de_magic.wire.security import Security
ctx = zmq.Context()
router = ctx.socket(zmq.ROUTER)
url = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
sock = ctx.socket(zmq.DEALER, socket_class=WatchedSocket)
sock.watch(url, "client", Security.resolve(), drops=True)
for _ in range(EVENTS):  # one handshake event each, none read: more than the monitor holds
    sock.connect(url)
    time.sleep(0.002)
    sock.disconnect(url)
time.sleep(0.5)
started = time.monotonic()
sock.close()
router.close()
ctx.term()
print(f"closed in {time.monotonic() - started:.2f} s")
'''


def test_a_socket_whose_monitor_nobody_read_still_closes():
    # libzmq blocks its I/O thread on a full monitor while holding the lock disable_monitor waits for; the
    # hang holds the GIL, so only another process can time it out
    done = subprocess.run([sys.executable, "-c", MONITOR_FLOOD.replace("EVENTS", "2500")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "closed in" in done.stdout
