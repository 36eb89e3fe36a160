"""Backends that are not up: a broker with a state directory remembers each one's owner and last API across
restarts (also a ``kill -9``), lists it as offline, and says so at once when it is called."""

from __future__ import annotations

import inspect
import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from de_magic.broker.routing import Config, Router
from de_magic.broker.launch import Launch
from de_magic.broker.state import Remembered, StateStore
from de_magic.broker.waiting import Bounds
from de_magic.caller.jobs import start_cell
from de_magic.caller.session import RemoteSession
from de_magic.wire import protocol as P
from de_magic.wire import serialize
from de_magic.wire.errors import BackendOffline, UnknownBackend

from conftest import ROOT, Cluster, wait_for
from test_routing import Net


def offline(cluster: Cluster, name: str) -> dict | None:
    entry = cluster.client.listing()["backends"].get(name)
    return entry if entry is not None and entry.get("offline") else None


def test_api_is_remembered_across_a_kill_9_of_the_broker(processes, tmp_path):
    state = tmp_path / "state"
    cluster = Cluster(processes)
    try:
        broker = cluster.start_broker("--state-dir", str(state))
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o700  # it names every backend and its owner
        backend = cluster.start_backend("de_magic.demo.hello", "hello_world", "--allow-code")
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

        # a %%remote NAME --noblock cell waits the same way, and runs in the session's namespace once it is back
        cell = start_cell(RemoteSession(cluster.client, "hello_world"), "z = 5\nprint('done')", {}, ["z"])
        assert cell.status == "waiting"

        cluster.start_backend("de_magic.demo.hello", "hello_world", "--allow-code")  # its owner again: it is live
        assert cluster.client.call("hello_world", "echo", (7,)) == 7
        reply = cell.result(timeout=30)
        assert reply["pulled"] == {"z": 5} and [o["text"] for o in cell.outputs] == ["done\n"]
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
                    state=store)
    listed = router.handle(b"C", P.list_query(b"r1", {}), 0.0)[0]
    assert b'"offline":1.0' in listed[-1] and b'"f"' in listed[-1]

    info = {"api": {"f": {"doc": "f"}}}
    out = router.handle(b"W", P.ready("model", b"W1", b"s" * 16, info), 0.0)
    assert P.peek(out[0][1])[1] == P.REJECT and b"belongs at tcp://broker to another key" in out[0][-1]

    caller["key"] = "alice-key"
    out = router.handle(b"W", P.ready("model", b"W1", b"s" * 16, info), 0.0)
    assert P.peek(out[0][1])[1] == P.WELCOME
    assert StateStore(tmp_path / "state").backends()["model"].owner == "alice-key"

    out = router.handle(b"W", P.bye(), 1.0)
    assert store.backends()["model"].last_seen > 1.0  # written when its last worker left
    store.close()


# -- jobs held for an offline backend, in the routing core (socket-free) ------------------------------------------

API_F = {"f": {"doc": "f"}}


class Held(Net):
    """The routing core of a broker with a state directory, behind a pretend socket (see test_routing.Net)."""

    def __init__(self, directory, started: float = 100.0, **bounds):
        self.store = StateStore(directory)
        self.now = 100.0
        self.router = Router(Config(url="tcp://test:1", waiting=Bounds(**bounds)), now=self.now - started,
                             key_of=lambda f: getattr(f, "key", None), state=self.store)
        self.inbox = defaultdict(list)

    def start(self, rid: bytes, tag: str, key: str = "KEY-alice", client: bytes = b"cli", size: int = 0):
        header = P.dump_header({"op": "job.start", "run": "call", "member": "f", "user": "u"})
        self.call(client, rid, "model", body=(header, b"x" * size or tag.encode()), key=key)
        return self.take(client)[-1]

    def ask(self, op: str, job_id: str = "", key: str = "KEY-alice", client: bytes = b"cli", user: str = "u"):
        header = P.dump_header({"op": op, "id": job_id, "user": user})
        self.call(client, b"q-" + op.encode(), "model", worker=P.BROKER_HELD, body=(header,), key=key)
        return self.take(client)[-1]

    def handed(self, slot: bytes = b"slot") -> list:
        """The job.start calls the worker's slot was sent: (alias, rid, header, payload)."""
        return [(w.client, w.rid, w.header, [bytes(f) for f in w.payload]) for w in self.take(slot, P.AT_WORKER)]


def held(tmp_path, **bounds) -> Held:
    net = Held(tmp_path / "state", **bounds)
    net.store.remember(Remembered("model", "KEY-alice", {"api": API_F}, last_seen=1.0))
    net.router.remembered = net.store.backends()
    return net


def value(reply):
    assert reply.__class__.__name__ == "Reply", reply
    return serialize.loads(reply.payload)


def test_held_jobs_go_to_the_registering_worker_in_fifo_order_one_at_a_time(tmp_path):
    net = held(tmp_path)
    ids = [value(net.start(f"r{i}".encode(), f"job{i}"))["id"] for i in range(3)]
    assert all(job_id.startswith("model:00:") for job_id in ids)
    assert [j["status"] for j in value(net.ask("job.list"))] == ["waiting"] * 3
    assert b'"waiting":3' in net.router.handle(b"C", P.list_query(b"l", {}), net.now)[0][-1]

    net.register("model", key="KEY-alice", api=API_F, slots=(b"slot", b"slot2"))
    sent = net.handed() + net.handed(b"slot2")
    assert len(sent) == 1  # the next goes once this one was taken: FIFO at the worker too
    for i in range(3):
        alias, rid, header, payload = sent[-1]
        assert header["token"] == ids[i].rpartition(":")[2] and payload == [f"job{i}".encode()]  # as sent
        net.send(b"slot", P.answer(P.REPLY, alias, rid, P.dump_header({"worker": "57" * 8}), serialize.dumps({})))
        sent = net.handed() + net.handed(b"slot2")
    assert sent == []
    moved = value(net.ask("job.poll", ids[0]))
    assert moved["worker"] == "57" * 8  # the caller asks the worker from now on
    assert net.take(b"cli") == []  # the worker's answers to job.start are the broker's, not any caller's


def test_each_caller_bound_is_enforced_with_a_clear_error(tmp_path):
    net = held(tmp_path, jobs=2, bytes=1000, ttl=0.0)
    value(net.start(b"r1", "a"))
    value(net.start(b"r2", "b"))
    refused = net.start(b"r3", "c")
    assert refused.header["kind"] == "busy" and "2 jobs waiting at this broker already" in refused.header["message"]
    value(net.start(b"r4", "d", key="KEY-bob"))  # a bound per caller: bob has room
    too_big = net.start(b"r5", "e", key="KEY-bob", size=2000)
    assert "would hold" in too_big.header["message"] and "--max-waiting-bytes" in too_big.header["message"]

    job_id = value(net.ask("job.list"))[0]["id"]
    net.advance(1.0)  # a heartbeat: the TTL (0 s) has passed
    gone = net.ask("job.poll", job_id)
    assert gone.header["kind"] == "job" and "which did not come back (--waiting-ttl)" in gone.header["message"]
    value(net.start(b"r6", "f"))  # expired jobs no longer count


def test_another_caller_cannot_see_cancel_or_fetch_a_held_job(tmp_path):
    net = held(tmp_path)
    job_id = value(net.start(b"r1", "a"))["id"]
    for op in ("job.poll", "job.status", "job.cancel"):
        answer = net.ask(op, job_id, key="KEY-mallory")
        assert answer.header["kind"] == "job" and "no such job" in answer.header["message"]
    assert value(net.ask("job.list", key="KEY-mallory")) == []
    assert value(net.ask("job.status", job_id))["status"] == "waiting"
    assert value(net.ask("job.cancel", job_id)) is True
    assert value(net.ask("job.cancel", job_id)) is False
    assert value(net.ask("job.poll", job_id))["status"] == "cancelled"
    net.register("model", key="KEY-alice", api=API_F)
    assert net.handed() == []  # a cancelled job never runs


def test_a_job_handed_over_as_the_broker_dies_never_runs_twice_and_is_reported_lost(tmp_path):
    net = held(tmp_path)
    job_id = value(net.start(b"r1", "a"))["id"]
    net.register("model", key="KEY-alice", api=API_F)
    assert len(net.handed()) == 1  # ... and the broker is killed before the worker answers
    net.store.close()

    again = Held(tmp_path / "state")  # the broker restarted on the same state directory
    again.register("model", key="KEY-alice", api=API_F, worker=b"N" * 8)
    assert again.handed() == []  # never sent twice
    again.advance(60.0)  # past the start-up grace: its first worker will not come back
    lost = again.ask("job.poll", job_id)
    assert lost.header["kind"] == "job" and "can no longer be known" in lost.header["message"]


def test_a_backend_back_with_another_api_refuses_held_jobs_with_the_reason(tmp_path):
    net = held(tmp_path)
    job_id = value(net.start(b"r1", "a"))["id"]
    net.register("model", key="KEY-alice", api={"g": {"doc": "g"}})
    assert net.handed() == []
    refused = net.ask("job.poll", job_id)
    assert "came back with a different API" in refused.header["message"]


# -- jobs held for an offline backend, end to end ---------------------------------------------------------------

def test_jobs_started_while_the_backend_is_down_run_once_when_it_registers_across_a_kill_9(processes, tmp_path):
    state, log = tmp_path / "state", tmp_path / "calls.log"
    env = {"OFFLINE_LOG": str(log)}
    cluster = Cluster(processes)
    try:
        broker = cluster.start_broker("--state-dir", str(state))
        backend = cluster.start_backend("tests/offline_backend.py", "runs", env=env)
        backend.send_signal(signal.SIGTERM)
        backend.wait(10)
        wait_for(lambda: offline(cluster, "runs"), what="the backend listed as offline")

        proxy = cluster.client["runs"]
        jobs = [proxy.record.start(tag) for tag in ("a", "b", "c")]
        assert [job.status for job in jobs] == ["waiting"] * 3
        assert offline(cluster, "runs")["waiting"] == 3
        assert "3 jobs waiting" in repr(cluster.client.backends())

        broker.kill()  # SIGKILL while they wait
        broker.wait(10)
        cluster.start_broker("--state-dir", str(state))
        table = cluster.client.jobs()
        assert sorted(job["id"] for job in table if job["status"] == "waiting") == sorted(j.id for j in jobs)
        assert other_caller(cluster.url, jobs[0].id) == "[] no such job"  # another user sees none of them

        cluster.start_backend("tests/offline_backend.py", "runs", env=env)
        assert jobs[2].result(timeout=30) == ["a", "b", "c"]  # FIFO, each once
        assert [job.result(timeout=30) for job in jobs[:2]] == [["a"], ["a", "b"]]
        assert cluster.client.job(jobs[0].id).result(timeout=30) == ["a"]  # its first id still finds it
        assert log.read_text().split() == ["a", "b", "c"]
    finally:
        cluster.client.close()


def other_caller(url: str, job_id: str) -> str:
    """What another user's process sees of the jobs at ``url``: its job list, and the answer for ``job_id``."""
    code = ("import sys\nfrom de_magic import Client\nclient = Client(sys.argv[1], timeout=20)\n"
            "try:\n    client.job(sys.argv[2])\n    seen = 'the job'\nexcept Exception as exc:\n    seen = str(exc)\n"
            "print([j['id'] for j in client.jobs()], seen[:11])\nclient.close()\n")
    env = {**os.environ, "LOGNAME": "mallory", "USER": "mallory"}  # the user a plaintext caller claims
    done = subprocess.run([sys.executable, "-c", code, url, job_id], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# -- backends on demand -------------------------------------------------------------------------------------------

def test_a_launch_command_runs_once_per_interval_while_jobs_wait_and_is_pending_until_a_worker_registers(tmp_path):
    launched = []
    net = held(tmp_path)
    net.router = Router(Config(url="tcp://test:1", launch={"model": Launch(("sbatch", "model.sh"), 30.0)}),
                        now=0.0, key_of=lambda f: getattr(f, "key", None), state=net.store,
                        launch=lambda name, launch: launched.append((name, launch.command)) or "")
    net.start(b"r1", "a")
    net.start(b"r2", "b")
    assert launched == [("model", ("sbatch", "model.sh"))]  # once, not per job
    listed = json.loads(net.router.handle(b"C", P.list_query(b"l", {}), net.now)[0][-1])
    assert listed["backends"]["model"]["launch"]["pending"] is True
    net.advance(29.0)
    assert len(launched) == 1
    net.advance(2.0)  # the interval passed and jobs still wait: once more
    assert len(launched) == 2
    net.register("model", key="KEY-alice", api=API_F)
    listed = json.loads(net.router.handle(b"C", P.list_query(b"l", {}), net.now)[0][-1])
    assert "launch" not in listed["backends"]["model"]
    for _ in range(40):  # past the interval, the worker heartbeating and its jobs still waiting their turn
        net.send(b"ctl", P.heartbeat())
        net.advance(1.0)
    assert len(launched) == 2  # a worker is up: nothing to launch


def test_a_launch_command_starts_the_backend_and_it_exits_when_idle(processes, tmp_path):
    log, launches = tmp_path / "calls.log", tmp_path / "launches.log"
    serve = (f'echo launched >> {launches}; sleep 1; exec "$0" -m de_magic serve {ROOT}/tests/offline_backend.py '
             f'--name runs --broker "$DE_MAGIC_BROKER" --heartbeat 0.2 --idle-exit 2')
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "state"\n\n[launch.runs]\ncommand = ["sh", "-c", {json.dumps(serve)}, '
                      f'{json.dumps(sys.executable)}]\nlaunch_interval = 60\n')
    env = {"OFFLINE_LOG": str(log), "DE_MAGIC_CONFIG": str(config)}
    cluster = Cluster(processes)
    pids = []
    try:
        cluster.start_broker(env=env)
        backend = cluster.start_backend(f"{ROOT}/tests/offline_backend.py", "runs", env=env)  # remembered
        backend.send_signal(signal.SIGTERM)
        backend.wait(10)
        wait_for(lambda: offline(cluster, "runs"), what="the backend listed as offline")

        first, second = (cluster.client["runs"].record.start(tag) for tag in ("a", "b"))
        assert offline(cluster, "runs")["launch"]["pending"]
        assert "launch pending" in repr(cluster.client.backends())
        pids += wait_for(lambda: [w["pid"] for w in cluster.workers("runs")], what="the launched backend")
        assert (first.result(timeout=30), second.result(timeout=30)) == (["a"], ["a", "b"])
        assert launches.read_text() == "launched\n"  # once for both jobs

        # --idle-exit 2: with no calls for 2 s the launched backend stops, and says goodbye
        wait_for(lambda: offline(cluster, "runs"), timeout=30, what="the idle backend to exit")
        wait_for(lambda: not _alive(pids[0]), what="its process to end")
    finally:
        cluster.client.close()
        for pid in pids:  # the broker's child, in a session of its own
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not open(f"/proc/{pid}/stat").read().split(") ")[1].startswith("Z")  # a zombie has ended


def test_the_http_gateway_starts_a_job_for_an_offline_backend_and_follows_it_to_its_worker(processes, tmp_path):
    from test_gateway import start_gateway

    import requests

    env = {"OFFLINE_LOG": str(tmp_path / "calls.log")}
    cluster = Cluster(processes)
    try:
        cluster.start_broker("--state-dir", str(tmp_path / "state"))
        backend = cluster.start_backend(f"{ROOT}/tests/offline_backend.py", "runs", env=env)
        base = start_gateway(processes, cluster.url, tmp_path)
        backend.send_signal(signal.SIGTERM)
        backend.wait(10)
        wait_for(lambda: offline(cluster, "runs"), what="the backend listed as offline")

        started = requests.post(f"{base}/backends/runs/record/jobs", json={"tag": "http"}, timeout=30)
        assert started.status_code == 202 and started.json()["status"] == "waiting", started.text
        location = base + started.headers["Location"]
        assert requests.get(location, timeout=30).json()["status"] == "waiting"

        cluster.start_backend(f"{ROOT}/tests/offline_backend.py", "runs", env=env)
        wait_for(lambda: requests.get(location, timeout=30).json()["status"] == "done", what="the job to run")
        assert requests.get(location, timeout=30).json()["result"] == ["http"]
    finally:
        cluster.client.close()


# -- held jobs, property-tested: random interleavings of starts, cancels, workers and kill -9s of the broker -------

class HeldJobs(RuleBasedStateMachine):
    """Whatever happens, a held job is sent to a worker at most once (also across restarts of the broker from
    its state directory), in the order the jobs were started, and each caller's waiting jobs stay in bounds."""

    def __init__(self):
        super().__init__()
        self.directory = tempfile.mkdtemp()
        self.net = Held(Path(self.directory) / "state", jobs=3)
        self.net.store.remember(Remembered("model", "KEY-alice", {"api": API_F}, last_seen=1.0))
        self.net.router.remembered = self.net.store.backends()
        self.started: list[str] = []  # tokens, in the order they were started
        self.cancelled: set[str] = set()
        self.handed: list[str] = []  # tokens, in the order they were sent to a worker
        self.pending: list[tuple[bytes, bytes]] = []  # (alias, rid) of job.starts the worker has not answered
        self.worker = False
        self.rids = itertools.count()

    def teardown(self):
        self.net.store.close()
        shutil.rmtree(self.directory)

    def _collect(self) -> None:
        for alias, rid, header, _ in self.net.handed():
            self.handed.append(header["token"])
            self.pending.append((alias, rid))

    @precondition(lambda self: not self.worker)  # (with one up, a job.start goes to it as any call does)
    @rule(owner=st.sampled_from(["KEY-alice", "KEY-bob"]))
    def start(self, owner):
        answer = self.net.start(f"r{next(self.rids)}".encode(), "x", key=owner)
        if answer.__class__.__name__ == "Reply":
            self.started.append(serialize.loads(answer.payload)["id"].rpartition(":")[2])
        else:
            assert answer.header["kind"] == "busy" and "at most 3" in answer.header["message"]
        self._collect()

    @precondition(lambda self: self.started)
    @rule(data=st.data())
    def cancel(self, data):
        token = data.draw(st.sampled_from(self.started))
        owner = "KEY-alice" if token not in self.handed else "KEY-nobody"
        answer = self.net.ask("job.cancel", f"model:00:{token}", key=owner)
        if answer.__class__.__name__ == "Reply" and serialize.loads(answer.payload) is True:
            self.cancelled.add(token)

    @precondition(lambda self: not self.worker)
    @rule()
    def register(self):
        self.net.register("model", key="KEY-alice", api=API_F, worker=os.urandom(8))
        self.worker = True
        self._collect()

    @precondition(lambda self: self.pending)
    @rule(refuse=st.booleans())
    def answer(self, refuse):
        alias, rid = self.pending.pop(0)
        kind = P.ERROR if refuse else P.REPLY
        self.net.send(b"slot", P.answer(kind, alias, rid, P.dump_header({"kind": "busy", "message": "no"})))
        self._collect()

    @precondition(lambda self: self.worker)
    @rule()
    def leave(self):
        self.net.send(b"ctl", P.bye())
        self.worker, self.pending = False, []
        self._collect()

    @rule()
    def kill_9(self):
        self.net.store.close()
        self.net = Held(Path(self.directory) / "state", jobs=3)  # from what is on disk, nothing else
        self.worker, self.pending = False, []

    @invariant()
    def each_job_is_sent_at_most_once_in_order_and_never_after_a_cancel(self):
        assert len(self.handed) == len(set(self.handed))
        order = [self.started.index(token) for token in self.handed]
        assert order == sorted(order)
        assert not self.cancelled & set(self.handed)
        assert set(self.handed) <= set(self.started)

    @invariant()
    def each_callers_waiting_jobs_stay_in_bounds(self):
        for owner in ("KEY-alice", "KEY-bob"):
            waiting = [j for j in self.net.router.held.jobs.values() if j.owner == owner and j.state == "waiting"]
            assert len(waiting) <= 3


test_held_jobs_property = HeldJobs.TestCase
test_held_jobs_property.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


def test_a_noblock_cell_for_an_offline_backend_waits_and_remote_result_fetches_it(processes, tmp_path):
    from test_magics import magics_kernel, text

    cluster = Cluster(processes)
    kernel = None
    try:
        cluster.start_broker("--state-dir", str(tmp_path / "state"))
        backend = cluster.start_backend("de_magic.demo.hello", "hello_world", "--allow-code")
        backend.send_signal(signal.SIGTERM)
        backend.wait(10)
        wait_for(lambda: offline(cluster, "hello_world"), what="the backend listed as offline")

        kernel = magics_kernel(cluster.url, tmp_path)
        reply, outputs = kernel.run("%%remote hello_world --noblock --pull z\nz = 5\nprint('done')")
        assert reply["content"]["status"] == "ok", outputs
        assert "waits for offline backend 'hello_world' as job hello_world:00:" in text(outputs)

        cluster.start_backend("de_magic.demo.hello", "hello_world", "--allow-code")
        reply, outputs = kernel.run("%remote_result\nz")
        assert reply["content"]["status"] == "ok", outputs
        assert text(outputs) == "done\n5"
    finally:
        if kernel is not None:
            kernel.close()
        cluster.client.close()
