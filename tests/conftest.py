"""Fixtures that start real brokers and backends as processes on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from de_magic import Client
from de_magic.wire.errors import DeMagicError

HEARTBEAT = 0.2  # fast heartbeats keep fault tests short
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Processes:
    """Every process a test starts; all are killed at teardown, whatever happened."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "de_magic", *args], cwd=ROOT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Cluster:
    """A broker process plus backend processes, for one test."""

    def __init__(self, procs: Processes):
        self.procs = procs
        self.url = f"tcp://127.0.0.1:{free_port()}"
        self.broker: subprocess.Popen | None = None
        self.client = Client(self.url, timeout=20, heartbeat=HEARTBEAT)

    def start_broker(self, *extra: str, env: dict | None = None) -> subprocess.Popen:
        self.broker = self.procs.start("broker", "--bind", self.url, "--heartbeat", str(HEARTBEAT), *extra, env=env)
        wait_for(self._answers, what=f"broker at {self.url}")
        return self.broker

    def _answers(self) -> bool:
        try:
            self.client.listing(api=False, timeout=1)
            return True
        except DeMagicError:
            return False

    def workers(self, name: str) -> list[dict]:
        entry = self.client.listing(api=False)["backends"].get(name)
        return entry["workers"] if entry else []

    def start_backend(self, target: str = "de_magic.demo.hello", name: str = "hello_world", *extra: str,
                      env: dict | None = None) -> subprocess.Popen:
        proc = self.procs.start("serve", target, "--name", name, "--broker", self.url,
                                "--heartbeat", str(HEARTBEAT), *extra, env=env)
        # ready when every slot of the worker has checked in, not merely the worker
        wait_for(lambda: any(w["pid"] == proc.pid and w["slots"] == w["capacity"] for w in self.workers(name))
                 or proc.poll() is not None, what=f"backend {name} to register")
        assert proc.poll() is None, f"backend {name} exited with {proc.returncode}"
        return proc


@pytest.fixture
def processes():
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def cluster(processes):
    """A running broker (no backends yet)."""
    c = Cluster(processes)
    c.start_broker()
    try:
        yield c
    finally:
        c.client.close()


@pytest.fixture
def hello(cluster):
    """A broker with the demo ``hello_world`` backend (code allowed) registered."""
    cluster.start_backend("de_magic.demo.hello", "hello_world", "--allow-code")
    return cluster


@pytest.fixture
def demo(cluster):
    """A broker with the demo backends, started as ``de-magic demo`` starts them."""
    from de_magic.embedded import DEMO_BACKENDS

    for name, (module, extra) in DEMO_BACKENDS.items():
        cluster.start_backend(module, name, *extra)
    return cluster


# -- helpers for the security, fault and soak tests --------------------------------


def start_script(procs: Processes, script: str, *args: str) -> subprocess.Popen:
    """A Python ``script`` (a caller to kill, say) in a process of its own, its stdout readable as text."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    procs.procs.append(proc)
    return proc


def start_logged(procs: Processes, *args: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Like ``procs.start`` but with stdout and stderr in ``log``, so a test can read what was logged."""
    out = open(log, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "de_magic", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    out.close()
    procs.procs.append(proc)
    return proc


def curve_keys(directory: Path) -> dict[str, Path]:
    """Key pairs for a CURVE cluster: the broker's, and alice's, bob's and a backend's public keys allowed
    in ``directory/allowed``; mallory has a pair too, but the broker does not know it."""
    from de_magic.wire.security import create_keys

    keys = {}
    for name in ("broker", "alice", "bob", "backend", "mallory"):
        public, secret = create_keys(name, directory / "pairs")
        keys[name], keys[name + ".public"] = secret, public
    allowed = directory / "allowed"
    allowed.mkdir()
    for name in ("alice", "bob", "backend"):
        (allowed / f"{name}.key").write_bytes(keys[name + ".public"].read_bytes())
    keys["allowed"] = allowed
    return keys


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def direct_peer(endpoint: dict):
    """A raw DEALER connected to a worker's direct endpoint (``{"url", "key"}`` from a listing): the endpoint
    always runs CURVE with the key the listing names, so a raw peer takes a key pair of its own."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.curve_serverkey = endpoint["key"].encode()
    sock.connect(endpoint["url"])
    return sock
