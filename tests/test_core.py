"""Broker, backends and client as real processes talking over loopback ZeroMQ."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import textwrap

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from de_magic import Client
from de_magic.wire.errors import (
    BackendLost,
    Busy,
    CallTimeout,
    DeMagicError,
    PayloadTooLarge,
    RemoteError,
    UnknownBackend,
    UnknownMethod,
)

from conftest import HEARTBEAT, ROOT, wait_for


def test_listing_shows_backend_workers_and_api(hello):
    listing = hello.client.listing()
    assert listing["broker"]["url"] == hello.url
    entry = listing["backends"]["hello_world"]
    assert entry["allow_code"] is True
    (worker,) = entry["workers"]
    assert worker["capacity"] >= 1 and worker["busy"] == 0
    members = entry["api"]["members"]
    assert {"compute_sum", "scale", "slow_sum", "Stats"} <= set(members)
    compute_sum = members["compute_sum"]
    assert compute_sum["kind"] == "function"
    assert compute_sum["summary"] == "Compute the sum over a data array."
    assert compute_sum["parameters"][0]["name"] == "da"
    assert compute_sum["parameters"][0]["doc"] == "the input array"
    scale = members["scale"]["schema"]["properties"]
    assert scale["factor"]["maximum"] == 10 and scale["mode"]["enum"] == ["multiply", "divide"]
    assert set(members["Stats"]["methods"]) == {"std", "mean"}


def test_backends_table_reads_well(hello):
    table = hello.client.backends()
    text = repr(table)
    assert text.splitlines()[0].split() == ["backend", "workers", "busy", "code", "sessions", "refs", "members"]
    assert "hello_world" in text and "compute_sum" in text
    assert "<table>" in table._repr_html_()


def test_calls_like_local_functions(hello):
    hw = hello.client["hello_world"]
    assert "compute_sum" in dir(hw) and "Stats" in dir(hw)
    da = xr.DataArray(np.arange(12.0).reshape(3, 4), dims=("x", "y"))
    result = hw.compute_sum(da)
    assert isinstance(result, xr.DataArray) and float(result) == 66.0
    assert hw.scale([1.0, 2.0], factor=3) == [3.0, 6.0]
    frame = hw.describe_table(n_rows=4)
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["a", "b", "c", "total"] and len(frame) == 4
    assert hw.Stats(ddof=1).std([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert hw.Stats().mean([1.0, 2.0]) == 1.5


def test_proxies_have_real_signatures_and_docs(hello):
    hw = hello.client["hello_world"]
    sig = inspect.signature(hw.scale)
    assert list(sig.parameters) == ["values", "factor", "mode"]
    assert sig.parameters["factor"].default == 2.0
    assert "Scale a list of numbers." in hw.scale.__doc__
    assert "ddof" in str(inspect.signature(hw.Stats))


def test_remote_errors_carry_type_and_traceback(hello):
    with pytest.raises(ZeroDivisionError) as info:  # the local type, so `except ZeroDivisionError` works
        hello.client["hello_world"].scale([1.0], factor=0.0, mode="divide")
    assert isinstance(info.value, RemoteError) and info.value.remote_type == "ZeroDivisionError"
    assert "in scale" in info.value.remote_traceback
    assert "return [v / factor" in info.value.remote_traceback
    assert "de_magic/backend.py" not in info.value.remote_traceback


def test_unknown_backend_and_member_are_named(hello):
    with pytest.raises(UnknownBackend, match="live backends: hello_world"):
        hello.client["nope"]
    with pytest.raises(UnknownBackend, match="'nope'"):
        hello.client.call("nope", "f")
    with pytest.raises(UnknownMethod, match="compute_sum"):
        _ = hello.client["hello_world"].missing
    with pytest.raises(UnknownMethod, match="has no member 'missing'"):
        hello.client.call("hello_world", "missing")


def test_argument_errors_name_the_parameter(hello):
    hw = hello.client["hello_world"]
    with pytest.raises(TypeError, match="n_rows"):
        hw.describe_table(n_rows="five")
    with pytest.raises(TypeError, match="bogus"):
        hello.client.call("hello_world", "scale", ([1.0],), {"bogus": 1})
    # bounds in the type hints are part of the schema, so they hold too
    with pytest.raises(ValueError, match="argument 'factor': Input should be less than or equal to 10"):
        hw.scale([1.0], factor=11)


def test_timeouts_client_wide_and_per_call(hello):
    hw = hello.client["hello_world"]
    start = time.monotonic()
    with pytest.raises(CallTimeout):
        hw.slow_sum.options(timeout=0.3)(n=100, delay=0.05)
    assert time.monotonic() - start < 2
    with Client(hello.url, timeout=0.3, heartbeat=HEARTBEAT) as quick:
        with pytest.raises(CallTimeout):
            quick.call("hello_world", "slow_sum", (), {"n": 100, "delay": 0.05})
    # the backend is still fine afterwards
    assert hw.scale([1.0]) == [2.0]


def test_submit_returns_futures_that_asyncio_can_await(hello):
    hw = hello.client["hello_world"]
    futures = [hw.scale.submit([float(i)]) for i in range(20)]
    assert [f.result(10) for f in futures] == [[2.0 * i] for i in range(20)]

    async def gather():
        return await asyncio.gather(*(hw.Stats().mean.submit([1.0, float(i)]) for i in range(5)))

    assert asyncio.run(gather()) == [(1.0 + i) / 2 for i in range(5)]


def test_closing_a_client_ends_every_submitted_call(hello):
    # more calls than the backend has slots: some wait in the broker's queue when the client closes
    client = Client(hello.url, heartbeat=HEARTBEAT)
    futures = [client.submit("hello_world", "slow_sum", (), {"n": 10, "delay": 0.1}) for _ in range(40)]
    wait_for(lambda: hello.workers("hello_world")[0]["busy"] > 0, what="calls running")
    client.close()
    done, not_done = concurrent.futures.wait(futures, timeout=10)
    assert not not_done, f"{len(not_done)} calls never ended"
    assert all("was closed during the call" in str(f.exception()) for f in futures)
    with pytest.raises(RuntimeError, match="is closed"):
        client.submit("hello_world", "echo", ("late",))


def test_progress_events_reach_the_caller(hello):
    seen = []
    result = hello.client["hello_world"].slow_sum.options(on_progress=seen.append)(n=10, delay=0.02)
    assert result == sum(range(10))
    assert (seen[0].n, seen[0].total, seen[0].desc) == (0, 10, "adding")
    assert seen[-1].n == 10 and seen[-1].done is True
    assert repr(seen[-1]).startswith("<Progress 'adding' 10/10 ") and repr(seen[-1]).endswith(" s done>")
    assert seen[-1]["n"] == 10  # callbacks written for the dicts reports used to be still work


def test_a_failing_event_handler_stops_the_remote_call(hello):
    def broken(event):
        raise ValueError("a bug in the progress display")

    with pytest.raises(ValueError, match="a bug"):
        hello.client.call("hello_world", "slow_sum", (), {"n": 200, "delay": 0.05}, on_progress=broken)
    # the caller has given up on it: the backend does not go on for 10 s
    wait_for(lambda: all(w["busy"] == 0 for w in hello.workers("hello_world")), timeout=3,
             what="the abandoned call to be cancelled")

def test_pool_of_two_workers_shares_load(hello):
    second = hello.start_backend("de_magic.demo.hello", "hello_world", "--allow-code")
    pids = {w["pid"] for w in hello.workers("hello_world")}
    assert len(pids) == 2 and second.pid in pids
    hw = hello.client["hello_world"]
    futures = [hw.slow_sum.submit(n=2, delay=0.05) for _ in range(8)]
    [f.result(20) for f in futures]
    calls = [w["calls"] for w in hello.workers("hello_world")]
    assert sorted(calls) == [4, 4] or min(calls) >= 2, calls


def test_worker_killed_mid_call_raises_backend_lost(hello):
    victim = hello.start_backend("de_magic.demo.hello", "hello_world", "--allow-code")
    # leave only the victim serving by stopping the fixture's worker
    first = [p for p in hello.procs.procs if p.pid != victim.pid and p is not hello.broker and p.poll() is None]
    for proc in first:
        proc.terminate()
        proc.wait(5)
    wait_for(lambda: [w["pid"] for w in hello.workers("hello_world")] == [victim.pid], what="one worker left")
    future = hello.client["hello_world"].slow_sum.submit(n=1000, delay=0.01)
    wait_for(lambda: hello.workers("hello_world")[0]["busy"] == 1, what="call running")
    start = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    with pytest.raises(BackendLost, match="stopped heartbeating"):
        future.result(10)
    assert time.monotonic() - start < 3 * HEARTBEAT * 3 + 1
    # and it is gone from the listing
    assert "hello_world" not in hello.client.listing(api=False)["backends"]


def test_heartbeats_flow_while_long_calls_run(hello):
    # 1.6 s of work is several times the 0.6 s after which a silent worker counts as lost
    assert hello.client["hello_world"].slow_sum(n=8, delay=0.2) == sum(range(8))
    assert hello.workers("hello_world")[0]["calls"] >= 1


def test_broker_restart_backends_reregister_and_calls_succeed(hello):
    hw = hello.client["hello_world"]
    assert hw.scale([1.0]) == [2.0]
    hello.broker.kill()
    hello.broker.wait()
    start = time.monotonic()
    hello.start_broker()
    # no user action: the same proxy works again once the backend re-registered
    assert hw.scale([2.0]) == [4.0]
    assert time.monotonic() - start < 5


def test_call_in_flight_during_broker_restart_fails_clearly(hello):
    future = hello.client["hello_world"].slow_sum.submit(n=1000, delay=0.01)
    wait_for(lambda: hello.workers("hello_world")[0]["busy"] == 1, what="call running")
    hello.broker.kill()
    hello.broker.wait()
    with pytest.raises(BackendLost):
        future.result(10)


def test_large_arrays_round_trip_exactly(hello):
    arr = np.random.default_rng(0).normal(size=10_000_000)  # 80 MB
    back = hello.client["hello_world"].echo(arr)
    np.testing.assert_array_equal(back, arr)
    back[0] = 1.0  # arrives writable


def test_oversize_payload_is_refused_with_an_error(hello):
    with Client(hello.url, max_message_size=1_000_000, heartbeat=HEARTBEAT) as small:
        with pytest.raises(PayloadTooLarge, match="maximum message size"):
            small.call("hello_world", "echo", (np.zeros(200_000),))
        assert small.call("hello_world", "echo", (1,)) == 1


def test_broker_refuses_oversize_call_with_an_answer(processes):
    from conftest import Cluster

    cluster = Cluster(processes)
    cluster.start_broker("--max-message-size", "100000")
    cluster.start_backend()
    # a client that has seen a listing knows the broker's limit and says so before sending
    with pytest.raises(PayloadTooLarge, match="maximum message size of 100000 bytes .the broker's"):
        cluster.client.call("hello_world", "echo", (np.zeros(50_000),))
    # one that has not (a small-looking call) sends it, and the broker answers instead of dropping it
    with Client(cluster.url, timeout=10) as fresh:
        with pytest.raises(PayloadTooLarge, match="broker's maximum"):
            fresh.call("hello_world", "echo", (np.zeros(50_000),))
    # far over the limit, where libzmq would cut the message off: the client asks the broker's limit first
    with Client(cluster.url, timeout=10) as fresh:
        with pytest.raises(PayloadTooLarge, match="100000 bytes"):
            fresh.call("hello_world", "echo", (np.zeros(300_000),))
    assert cluster.client.call("hello_world", "echo", ("still fine",)) == "still fine"
    cluster.client.close()


def test_full_queue_answers_busy(cluster):
    cluster.start_backend("de_magic.demo.hello", "hello_world", "--max-workers", "1", "--max-queue", "1")
    hw = cluster.client["hello_world"]
    futures = [hw.slow_sum.submit(n=5, delay=0.1) for _ in range(6)]
    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result(20))
        except Busy as exc:
            assert "busy" in str(exc)
            outcomes.append("busy")
    assert outcomes.count(10) >= 2 and "busy" in outcomes


# -- backend modules and the command line ----------------------------------------

BACKEND_FILE = '''
"""A backend module written by a scientist."""
import xarray as xr

def compute_sum(da: xr.DataArray) -> xr.DataArray:
    """Compute the sum over a data array.

    Parameters
    ----------
    da : the input array
    """
    return da.sum()

class Stats:
    """Statistics with a fixed ddof."""
    def __init__(self, ddof: int = 0):
        self.ddof = ddof
    def std(self, values: list[float]) -> float:
        """Standard deviation."""
        import statistics
        return statistics.pstdev(values) if self.ddof == 0 else statistics.stdev(values)

if __name__ == "__main__":
    from de_magic import main
    main(name="hello_file", members=["compute_sum", "Stats"])
'''


@pytest.fixture
def backend_file(tmp_path):
    path = tmp_path / "backend.py"
    path.write_text(BACKEND_FILE)
    return path


def _run(*args, cwd=ROOT, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=60, **kw)


def test_backend_file_schema_generate_and_listen(cluster, backend_file, tmp_path):
    schema = json.loads(_run(str(backend_file), "schema").stdout)
    assert schema["name"] == "hello_file" and set(schema["members"]) == {"compute_sum", "Stats"}

    help_text = _run(str(backend_file), "--help").stdout
    assert all(word in help_text for word in ("listen", "schema", "generate", "test-connect"))

    check = _run(str(backend_file), "test-connect", "--broker", cluster.url)
    assert check.returncode == 0 and "answers" in check.stdout

    proc = subprocess.Popen([sys.executable, str(backend_file), "listen", "--broker", cluster.url,
                             "--heartbeat", str(HEARTBEAT)], start_new_session=True)
    cluster.procs.procs.append(proc)
    wait_for(lambda: cluster.workers("hello_file"), what="file backend")

    generated = _run(str(backend_file), "generate", "--broker", cluster.url)
    assert generated.returncode == 0, generated.stderr
    (tmp_path / "api.py").write_text(generated.stdout)
    script = textwrap.dedent("""
        import inspect, xarray as xr
        from api import compute_sum, Stats
        assert "da" in inspect.signature(compute_sum).parameters
        assert compute_sum.__doc__.startswith("Compute the sum")
        print(float(compute_sum(xr.DataArray([1.0, 2.0, 3.5]))), Stats(ddof=0).std([1.0, 3.0]))
    """)
    out = _run("-c", script, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["6.5", "1.0"]


def test_cli_serve_list_and_call(cluster, backend_file):
    cluster.start_backend(str(backend_file), "from_cli", "--members", "compute_sum")
    listed = _run("-m", "de_magic", "list", "--broker", cluster.url)
    assert listed.returncode == 0 and "from_cli" in listed.stdout and "compute_sum" in listed.stdout
    as_json = json.loads(_run("-m", "de_magic", "list", "--broker", cluster.url, "--json").stdout)
    assert list(as_json["backends"]["from_cli"]["api"]["members"]) == ["compute_sum"]

    cluster.start_backend("de_magic.demo.hello", "hello_world")
    called = _run("-m", "de_magic", "call", "hello_world", "scale", "--args", '{"values": [1, 2], "factor": 1.5}',
                  "--json", "--broker", cluster.url)
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout) == [1.5, 3.0]
    method = _run("-m", "de_magic", "call", "hello_world", "Stats.std", "--init", '{"ddof": 1}',
                  "--args", "[[1, 2, 3]]", "--broker", cluster.url)
    assert method.stdout.strip() == "1.0"
    bad = _run("-m", "de_magic", "call", "nope", "f", "--broker", cluster.url)
    assert bad.returncode != 0 and "no backend named 'nope'" in bad.stderr


def test_cli_call_arguments_of_the_wrong_kind_are_usage_errors():
    for flags, needle in ((["--args", "5"], "--args must be a JSON object or array"),
                          (["--args", "{bad"], "--args is not JSON"),
                          (["--init", "[1]"], "--init must be a JSON object")):
        done = _run("-m", "de_magic", "call", "hello_world", "Stats.std", *flags)
        assert done.returncode != 0 and needle in done.stderr and "Traceback" not in done.stderr, done.stderr

def test_demo_command_starts_on_the_direct_ports_asked_and_stops_cleanly(tmp_path):
    from conftest import free_port

    url, first = f"tcp://127.0.0.1:{free_port()}", free_port()
    proc = subprocess.Popen([sys.executable, "-m", "de_magic", "demo", "--broker", url, "--direct-ports", str(first)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(lines)
        assert "hello_world" in text and "ocean_model" in text and url in text
        with Client(url, timeout=10) as client:
            assert client.call("hello_world", "scale", ([1.0],)) == [2.0]
            backends = client.listing(api=False)["backends"]
        assert [backends[name]["workers"][0]["direct"]["url"] for name in ("hello_world", "ocean_model")] == [
            f"tcp://127.0.0.1:{first}", f"tcp://127.0.0.1:{first + 1}"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_local_start_that_fails_stops_what_it_started(monkeypatch):
    from conftest import free_port
    from de_magic import embedded as local

    monkeypatch.setitem(local.DEMO_BACKENDS, "broken", ("de_magic.no_such_module", ()))
    with Client(f"tcp://127.0.0.1:{free_port()}", timeout=5, heartbeat=HEARTBEAT) as client:
        with pytest.raises(DeMagicError, match=r"broken \(exit code 1: .*no module named 'de_magic.no_such_module'"):
            local.start_local(client)
        # nothing of it is left: the address is free again for the next attempt
        local.LocalCluster(client.url).stop()

def test_repeated_listing_sends_only_changed_apis(hello):
    import zmq

    from de_magic.wire import protocol as P

    first = hello.client.listing()["backends"]["hello_world"]
    tag = first["api_tag"]
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(hello.url)
    try:
        for known, has_api in (({"hello_world": tag}, False), ({"hello_world": "stale"}, True)):
            sock.send_multipart(P.message(P.LIST, [b"r"], P.dump_header({"api": True, "known": known})))
            assert sock.poll(5000)
            entry = json.loads(P.parse(sock.recv_multipart(), P.AT_CLIENT).payload[0])["backends"]["hello_world"]
            assert ("api" in entry) is has_api and entry["api_tag"] == tag
    finally:
        sock.close()
    # the client fills in what it already knows
    again = hello.client.listing()["backends"]["hello_world"]
    assert again["api"] == first["api"]


def test_main_options_are_defaults_of_listen(cluster, backend_file):
    configured = backend_file.read_text().replace(
        'main(name="hello_file", members=["compute_sum", "Stats"])',
        'main(name="hello_file", members=["compute_sum", "Stats"], allow_code=True, max_workers=2)')
    backend_file.write_text(configured)
    proc = subprocess.Popen([sys.executable, str(backend_file), "listen", "--broker", cluster.url,
                             "--heartbeat", str(HEARTBEAT)], start_new_session=True)
    cluster.procs.procs.append(proc)
    (worker,) = wait_for(lambda: cluster.workers("hello_file"), what="file backend")
    assert worker["capacity"] == 2
    assert cluster.client.listing(api=False)["backends"]["hello_file"]["allow_code"] is True

    backend_file.write_text(configured.replace("max_workers=2", "max_wrokers=2"))
    typo = _run(str(backend_file), "schema")
    assert typo.returncode != 0 and "unknown option(s) max_wrokers" in typo.stderr


def test_closing_a_client_ends_its_calls_in_flight(hello):
    from de_magic.wire.errors import DeMagicError

    client = Client(hello.url, heartbeat=HEARTBEAT)
    future = client["hello_world"].slow_sum.submit(n=1000, delay=0.01)
    wait_for(lambda: hello.workers("hello_world")[0]["busy"] == 1, what="call running")
    start = time.monotonic()
    client.close()
    with pytest.raises(DeMagicError, match="closed during the call"):
        future.result(5)
    assert time.monotonic() - start < 2 * HEARTBEAT + 1
