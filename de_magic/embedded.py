"""A broker and the demo backends started from a notebook, for a first run with zero set-up.

``%remote_connect`` uses :func:`start_local` when nothing answers at the default
local address: the broker serves from a thread of the kernel, the demo
backends are child processes.  Everything stops when the kernel exits.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

import zmq

from .broker.server import Broker
from .caller.client import Client
from .wire.errors import DeMagicError
from .wire.security import CONFIG_ENV, ENV as SECURITY_ENV, Security

#: Demo backends: name -> (module, extra ``de-magic serve`` arguments). They take direct calls on
#: loopback, so the demo's calls skip the broker (docs/deploy.md), as a deployment's may.
_DIRECT = ("--direct", "tcp://127.0.0.1:0")
DEMO_BACKENDS = {
    "hello_world": ("de_magic.demo.hello", ("--allow-code", *_DIRECT)),
    "ocean_model": ("de_magic.demo.ocean", _DIRECT),
}


def is_local(url: str) -> bool:
    """Whether ``url`` is a TCP address on this machine, where we may start a broker."""
    parsed = urlparse(url)
    return parsed.scheme == "tcp" and parsed.hostname in ("127.0.0.1", "localhost")


def answers(client: Client, timeout: float = 1.0) -> bool:
    """Whether a broker answers at the client's URL."""
    try:
        client.listing(api=False, timeout=timeout)
        return True
    except DeMagicError:
        return False


def bind(broker: Broker) -> str:
    """``broker.bind()``; an address in use is a one-line DeMagicError naming who holds it, when it can tell."""
    try:
        return broker.bind()
    except zmq.ZMQError as exc:
        if exc.errno != zmq.EADDRINUSE:
            raise
    # a wildcard address is taken on loopback too, and a connect needs a host
    local = re.sub(r"//(\*|0\.0\.0\.0):", "//127.0.0.1:", broker.url)
    with Client(local, security=broker.security) as client:
        if answers(client):
            holder = f"a de-magic broker, which answers there: use it (`de-magic list --broker {local}`), or stop it"
        else:
            holder = "another program: stop it"
    with socket.socket() as probe:  # a port that is free now, as an example
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    raise DeMagicError(f"{broker.url} is already in use by {holder}; or choose another address, "
                       f"e.g. DE_MAGIC_BROKER=tcp://127.0.0.1:{port}")


#: Restarts of a demo backend that dies: the first after this many seconds, doubling up to RESTART_MAX...
RESTART_FIRST, RESTART_MAX = 1.0, 30.0
#: ...and back to the first once it ran this long; after RESTART_LIMIT deaths in a row it is left down.
RESTART_RESET, RESTART_LIMIT = 60.0, 5


_DEMO_REQUIREMENT = re.compile(r"([A-Za-z0-9_.-]+).*;\s*extra\s*==\s*[\"']demo[\"']\s*$")


def missing_demo_packages() -> list[str]:
    """The packages of the ``[demo]`` extra (the demo backends' imports) that are not installed here."""
    try:
        required = metadata.requires("de-magic") or []
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed: nothing to compare with
        return []
    names = [match[1] for match in map(_DEMO_REQUIREMENT.match, required) if match]
    return [name for name in names if importlib.util.find_spec(name.replace("-", "_")) is None]


@dataclass
class _Served:
    """One backend process of a LocalCluster, and what it takes to start it again."""

    command: list[str]
    proc: subprocess.Popen
    errors: Path  # its stderr, whose last line says why it died
    started: float
    deaths: int = 0  # in a row, without a long run between them
    restart_at: float | None = None


class LocalCluster:
    """A broker in this process plus backend processes; :meth:`stop` ends all (also at exit)."""

    def __init__(self, url: str):
        # local by construction: plain TCP on loopback, whatever keys the environment or config file name
        self.broker: Broker | None = Broker(url, security=Security())
        self.url = bind(self.broker)
        self.broker.start()
        self.served: dict[str, _Served] = {}
        self._logs = tempfile.TemporaryDirectory(prefix="de-magic-demo-")
        atexit.register(self.stop)

    @property
    def processes(self) -> dict[str, subprocess.Popen]:
        return {name: served.proc for name, served in self.served.items()}

    def serve(self, name: str, module: str, *extra: str) -> subprocess.Popen:
        """Start ``de-magic serve module --name name`` against this broker."""
        command = [sys.executable, "-m", "de_magic", "serve", module, "--name", name, "--broker", self.url,
                   "--parent-pid", str(os.getpid()), *extra]
        errors = Path(self._logs.name) / f"{name}.stderr"
        self.served[name] = _Served(command, self._start(command, errors), errors, time.monotonic())
        return self.served[name].proc

    @staticmethod
    def _start(command: list[str], errors: Path) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k not in SECURITY_ENV.values()}
        env[CONFIG_ENV] = os.devnull
        # a session of its own: the kernel's interrupt (SIGINT to its group) must not reach it; and it ends with
        # this process, however that ends (--parent-pid, see lifeline.py)
        with errors.open("wb") as err:
            return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)

    def why_exited(self, name: str) -> str:
        """How the backend ``name`` ended: the signal that killed it, or its exit code and last line on stderr."""
        served = self.served[name]
        code = served.proc.returncode
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        lines = [line for line in served.errors.read_text(errors="replace").splitlines() if line.strip()]
        return f"exit code {code}" + (f": {lines[-1].strip()}" if lines else "")

    def tend(self) -> list[str]:
        """Restart backends that died, with backoff; what happened, as lines for a person (call it often)."""
        said, now = [], time.monotonic()
        for name, served in self.served.items():
            if served.restart_at is not None:
                if now >= served.restart_at:
                    served.proc, served.started, served.restart_at = self._start(served.command, served.errors), now, None
                    said.append(f"backend {name} restarted")
                continue
            if served.proc.poll() is None or served.deaths > RESTART_LIMIT:
                continue
            served.deaths = 1 if now - served.started > RESTART_RESET else served.deaths + 1
            if served.deaths > RESTART_LIMIT:
                said.append(f"backend {name} exited ({self.why_exited(name)}) {RESTART_LIMIT} times in a row; "
                            "left down, the other backends keep running")
                continue
            delay = min(RESTART_FIRST * 2 ** (served.deaths - 1), RESTART_MAX)
            served.restart_at = now + delay
            said.append(f"backend {name} exited ({self.why_exited(name)}); restarting it in {delay:g} s")
        return said

    def wait_registered(self, client: Client, timeout: float = 60.0) -> None:
        """Block until every started backend is registered; raise if one exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            live = client.listing(api=False)["backends"]
            if all(name in live for name in self.served):
                return
            dead = [f"{name} ({self.why_exited(name)})" for name, served in self.served.items()
                    if served.proc.poll() is not None]
            if dead:
                raise DeMagicError(f"demo backend(s) {', '.join(dead)} exited while starting")
            if time.monotonic() > deadline:
                raise DeMagicError(f"the demo backends did not register within {timeout:g} s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.broker is None:
            return
        atexit.unregister(self.stop)
        procs = [served.proc for served in self.served.values()]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.served.clear()
        self._logs.cleanup()
        self.broker.stop()
        self.broker = None


def pinned(extra: tuple[str, ...], port: int) -> tuple[str, ...]:
    """A demo backend's ``extra`` arguments with its direct endpoint on ``port`` instead of a free one."""
    return tuple(f"tcp://127.0.0.1:{port}" if arg == _DIRECT[1] else arg for arg in extra)


def start_local(client: Client, direct_ports: int | None = None) -> LocalCluster:
    """Start a broker at ``client.url`` with the demo backends, and wait until they are ready.

    ``direct_ports``: the first backend's direct endpoint listens on this port, the next on the one after...
    (else on free ports), so that a firewall rule or a tunnel can name them.
    """
    missing = missing_demo_packages()
    if missing:  # else they would die while starting, with a reason only their own stderr knows
        raise DeMagicError(f"the demo backends need {', '.join(missing)}, not installed here: "
                           "pip install 'de-magic[demo]'")
    cluster = LocalCluster(client.url)
    try:
        for index, (name, (module, extra)) in enumerate(DEMO_BACKENDS.items()):
            cluster.serve(name, module, *(extra if direct_ports is None else pinned(extra, direct_ports + index)))
        cluster.wait_registered(client)
    except BaseException:
        # else the broker would keep the address, and the next attempt would find a broker without backends
        cluster.stop()
        raise
    return cluster
