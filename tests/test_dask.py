"""Dask backends: a real `dask scheduler` and `dask worker` processes, and `--dask local:2`, behind a broker."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

distributed = pytest.importorskip("distributed")

from de_magic.wire.errors import BackendLost, CallTimeout, RemoteError  # noqa: E402
from de_magic.caller.session import EVENT_HANDLERS, RemoteSession  # noqa: E402

from conftest import ROOT, Cluster, Processes, free_port, start_logged, wait_for  # noqa: E402

BACKEND = str(ROOT / "tests" / "dask_backend.py")


class DaskProcesses(Processes):
    """Also `dask scheduler|worker` processes; each process group is killed at teardown (nannies have children)."""

    def dask(self, *args: str) -> subprocess.Popen:
        # their logs go where pytest captures them: shown with a failing test
        proc = subprocess.Popen([sys.executable, "-m", "dask", *args], cwd=ROOT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        super().stop_all()
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # LocalCluster workers, a nanny's worker
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def dask_setup():
    """A broker; a scheduler with two one-thread workers; a backend on it ("dask_ext"); and one on a
    LocalCluster of two worker processes ("dask_local", code allowed)."""
    procs = DaskProcesses()
    broker = Cluster(procs)
    scheduler = f"tcp://127.0.0.1:{free_port()}"
    client = None
    try:
        procs.dask("scheduler", "--host", "127.0.0.1", "--port", scheduler.rpartition(":")[2],
                   "--dashboard-address", "127.0.0.1:0")
        for name in ("w1", "w2"):
            procs.dask("worker", scheduler, "--nthreads", "1", "--name", name, "--host", "127.0.0.1", "--no-dashboard")
        broker.start_broker()
        client = wait_for(lambda: _dask_client(scheduler), what=f"Dask scheduler at {scheduler}")
        client.wait_for_workers(2, timeout=30)
        ext = broker.start_backend(BACKEND, "dask_ext", "--dask", scheduler)
        local = broker.start_backend(BACKEND, "dask_local", "--dask", "local:2", "--allow-code")
        yield {"procs": procs, "broker": broker, "client": broker.client, "dask": client, "scheduler": scheduler,
               "ext": ext, "local": local}
    finally:
        broker.client.close()
        if client is not None:
            client.close()
        procs.stop_all()


def _dask_client(address: str):
    try:
        return distributed.Client(address, timeout="1s")
    except OSError:
        return None


def _dask_info(setup, name: str) -> dict:
    (worker,) = setup["broker"].workers(name)
    return {**worker["dask"], "capacity": worker["capacity"]}


def test_listing_shows_the_cluster_and_follows_it_when_it_scales(dask_setup):
    info = _dask_info(dask_setup, "dask_ext")
    assert info["scheduler"] == dask_setup["scheduler"]
    assert (info["workers"], info["threads"], info["capacity"]) == (2, 2, 2)
    assert info["dashboard"].startswith("http://")
    assert "1 (Dask: 2 workers, 2 threads)" in repr(dask_setup["client"].backends())
    local = _dask_info(dask_setup, "dask_local")
    assert (local["workers"], local["threads"], local["capacity"]) == (2, 2, 2)
    extra = dask_setup["procs"].dask("worker", dask_setup["scheduler"], "--nthreads", "3", "--name", "w3",
                                     "--host", "127.0.0.1", "--no-dashboard")
    wait_for(lambda: _dask_info(dask_setup, "dask_ext")["threads"] == 5, what="listing to show a third worker")
    assert _dask_info(dask_setup, "dask_ext")["workers"] == 3
    extra.send_signal(signal.SIGTERM)
    wait_for(lambda: _dask_info(dask_setup, "dask_ext")["workers"] == 2, what="listing to drop the third worker")


def test_calls_run_on_dask_workers_and_know_their_call(dask_setup):
    backend = dask_setup["client"]["dask_ext"]
    assert backend.add(2, 3) == 5
    worker_pids = set(dask_setup["dask"].run(os.getpid).values())
    here = backend.where()
    assert here["pid"] in worker_pids and here["pid"] != dask_setup["ext"].pid
    assert here["member"] == "where" and here["call"] == "TaskCall"


def test_methods_of_classes_run_on_dask_workers(dask_setup):
    done = dask_setup["client"]["dask_ext"].Scaler(factor=3).apply([1.0, 2.0])
    assert done["values"] == [3.0, 6.0] and done["pid"] != dask_setup["ext"].pid


def test_dask_results_are_computed_before_they_are_sent(dask_setup):
    assert dask_setup["client"]["dask_ext"].lazy(10) == 45


def test_errors_arrive_with_the_members_traceback(dask_setup):
    with pytest.raises(ValueError) as caught:
        dask_setup["client"]["dask_ext"].boom(7)
    assert isinstance(caught.value, RemoteError) and "no good: 7" in str(caught.value)
    frames = [line for line in caught.value.remote_traceback.splitlines() if line.lstrip().startswith("File ")]
    # the member's frame first (its file shows as <dynamic-code>: a script's code travels by value)
    assert frames and frames[0].endswith("in boom"), caught.value.remote_traceback


def test_a_members_error_and_a_stop_leave_no_dask_noise_in_the_log(dask_setup, tmp_path):
    # the error reaches its caller: Dask's worker must not log it again ("Compute Failed"), and a clean stop
    # must not log the scheduler writing to the closed client (a CRITICAL CommClosedError)
    broker, log = dask_setup["broker"], tmp_path / "backend.log"
    proc = start_logged(dask_setup["procs"], "serve", BACKEND, "--name", "dask_quiet", "--broker", broker.url,
                        "--heartbeat", "0.2", "--dask", "local:1", log=log)
    wait_for(lambda: broker.workers("dask_quiet"), timeout=60, what="the backend to register")
    with pytest.raises(ValueError, match="no good: 3"):
        dask_setup["client"]["dask_quiet"].boom(3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    text = log.read_text()
    assert "Scheduler closing" in text  # the cluster's log was captured, to its end
    for noise in ("Compute Failed", "CommClosedError", "CRITICAL"):
        assert noise not in text, text


def test_a_local_clusters_ports_may_be_pinned(dask_setup):
    port = free_port()
    proc = dask_setup["broker"].start_backend(BACKEND, "dask_pinned", "--dask", "local:1", "--dask-port", str(port))
    info = _dask_info(dask_setup, "dask_pinned")
    assert info["scheduler"] == f"tcp://127.0.0.1:{port}" and info["dashboard"].startswith(f"http://127.0.0.1:{port + 1}/")
    assert dask_setup["client"]["dask_pinned"].add(1, 2) == 3
    proc.send_signal(signal.SIGTERM)  # its cluster would only load the machine for the next tests
    proc.wait(30)


def test_a_dask_port_that_cannot_be_had_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for address, said in (("local:1", f"cannot start a Dask cluster here with --dask-port {port}: "),
                              ("tcp://127.0.0.1:1", "--dask-port is the port of a cluster started here")):
            done = subprocess.run([sys.executable, "-m", "de_magic", "serve", BACKEND, "--broker", "tcp://127.0.0.1:1",
                                   "--dask", address, "--dask-port", str(port)], cwd=ROOT, capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 1 and done.stderr.splitlines()[-1].startswith(f"de-magic: {said}"), done.stderr
            assert "Traceback" not in done.stderr


def test_progress_from_a_dask_worker_reaches_the_caller(dask_setup):
    backend = dask_setup["client"]["dask_ext"]
    events = []
    assert backend.steps.options(on_progress=events.append)(20) == sum(range(20))
    assert events and all(e["desc"] == "steps" for e in events)
    assert [e["n"] for e in events] == sorted(e["n"] for e in events)
    assert events[-1]["done"] and events[-1]["n"] == events[-1]["total"] == 20  # all before the answer


def test_progress_of_a_dask_graph_is_one_bar(dask_setup):
    events = []
    assert dask_setup["client"]["dask_ext"].graph_sum.options(on_progress=events.append)(12) == sum(
        i * i for i in range(12))
    assert {e["id"] for e in events} == {events[0]["id"]} and events[0]["unit"] == "tasks"
    last = events[-1]
    assert last["done"] and last["total"] >= 13 and last["n"] == last["total"]


def test_timeout_cancels_the_task_on_its_worker(dask_setup, tmp_path):
    backend = dask_setup["client"]["dask_ext"]
    ticks = tmp_path / "ticks"
    with pytest.raises(CallTimeout):
        backend.sleeper.options(timeout=1.5)(str(ticks), 30)
    wait_for(lambda: ticks.read_text().endswith("stopped\n"), what="the task to be interrupted on its worker")
    wait_for(lambda: not any(dask_setup["dask"].processing().values()), what="the scheduler to drop the task")
    assert backend.add(1, 1) == 2


def test_fan_out_runs_on_the_same_cluster(dask_setup):
    done = dask_setup["client"]["dask_local"].fan_out(8)
    assert done["sum"] == sum(i * i for i in range(8))
    assert dask_setup["local"].pid not in done["pids"] and done["me"] != dask_setup["local"].pid


def test_remote_cell_has_a_dask_client_and_dask_output(dask_setup, monkeypatch):
    session = RemoteSession(dask_setup["client"], "dask_local")
    bars = []
    monkeypatch.setitem(EVENT_HANDLERS, "progress", lambda header, frames, session: bars.append(header))
    code = ("import os, dask\n"
            "from de_magic import progress\n"
            "absolute = progress(dask.delayed(sum)([dask.delayed(abs)(-i) for i in range(5)]), desc='cell').compute()\n"
            "from distributed import progress as dask_progress\n"
            "pid = dask_client.submit(os.getpid, pure=False).result()\n"
            "total = dask_client.compute(dask.delayed(sum)([1, 2, 3]))\n"
            "dask_progress(total)\n"
            "total = total.result()\n"
            "lazy = dask.delayed(sum)([4, 5])\n"
            "dask_client\n")
    outputs = []
    pulled = session.execute(code, pull=("pid", "total", "lazy", "absolute"), on_output=outputs.append,
                             timeout=30).result()
    assert pulled["absolute"] == 10 and bars[-1]["desc"] == "cell" and bars[-1]["done"]
    assert bars[-1]["n"] == bars[-1]["total"] >= 6
    assert pulled["total"] == 6 and pulled["pid"] != dask_setup["local"].pid
    assert pulled["lazy"] == 9  # computed on the cluster before it was sent
    text = "".join(o.get("text", "") for o in outputs if o["event"] == "stream")
    assert "100% Completed" in text, outputs
    html = [o["data"]["text/html"] for o in outputs if o["event"] == "display" and "text/html" in o["data"]]
    assert html and "Client" in html[-1]
    session.close()


def test_a_killed_worker_fails_its_call_and_the_backend_serves_on(dask_setup, tmp_path):
    backend = dask_setup["client"]["dask_ext"]
    ticks = tmp_path / "ticks"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(backend.sleeper.options(timeout=30), str(ticks), 30)
        pid = wait_for(lambda: ticks.exists() and ticks.read_text().partition("\n")[0], what="the call to start")
        os.kill(int(pid), signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(BackendLost, match="Dask worker .* died"):
            call.result(20)
    assert time.monotonic() - started < 10
    assert backend.add(20, 22) == 42


def test_the_cluster_may_come_from_the_config_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('dask = "local:many"\n')
    done = subprocess.run([sys.executable, "-m", "de_magic", "serve", BACKEND, "--broker", "tcp://127.0.0.1:1"],
                          cwd=ROOT, env={**os.environ, "DE_MAGIC_CONFIG": str(config)}, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode != 0
    assert "the Dask address local:N needs a number of workers, not 'many'" in done.stderr


def test_a_lost_scheduler_fails_the_call_clearly(dask_setup):
    procs = dask_setup["procs"]
    address = f"tcp://127.0.0.1:{free_port()}"
    scheduler = procs.dask("scheduler", "--host", "127.0.0.1", "--port", address.rpartition(":")[2],
                           "--no-dashboard")
    watcher = wait_for(lambda: _dask_client(address), what=f"Dask scheduler at {address}")
    backend = dask_setup["broker"].start_backend(BACKEND, "dask_orphan", "--dask", address)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(dask_setup["client"]["dask_orphan"].add.options(timeout=30), 1, 2)
        # no workers: the task waits at the scheduler until the scheduler dies
        wait_for(lambda: watcher.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)),
                 what="the call's task at the scheduler")
        watcher.close()
        scheduler.kill()
        with pytest.raises(BackendLost, match="lost the Dask scheduler at"):
            call.result(20)
    assert backend.poll() is None
    # once Dask gives up reconnecting (10 s), the front door stops: it would only fail calls
    wait_for(lambda: backend.poll() is not None, timeout=30, what="the backend to stop")
    assert not dask_setup["broker"].workers("dask_orphan")
