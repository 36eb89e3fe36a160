"""A broker and the demo backends started from a notebook, for a first run with zero set-up.

``%remote_connect`` uses :func:`start_local` when nothing answers at the default
local address: the broker serves from a thread of the kernel, the demo
backends are child processes.  Everything stops when the kernel exits.
"""

from __future__ import annotations

import atexit
import os
import re
import socket
import subprocess
import sys
import time
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


class LocalCluster:
    """A broker in this process plus backend processes; :meth:`stop` ends all (also at exit)."""

    def __init__(self, url: str):
        # local by construction: plain TCP on loopback, whatever keys the environment or config file name
        self.broker: Broker | None = Broker(url, security=Security())
        self.url = bind(self.broker)
        self.broker.start()
        self.processes: dict[str, subprocess.Popen] = {}
        atexit.register(self.stop)

    def serve(self, name: str, module: str, *extra: str) -> subprocess.Popen:
        """Start ``de-magic serve module --name name`` against this broker."""
        # a session of its own: the kernel's interrupt (SIGINT to its group) must not reach it
        env = {k: v for k, v in os.environ.items() if k not in SECURITY_ENV.values()}
        env[CONFIG_ENV] = os.devnull
        # and it must end with this process, however that ends (see lifeline.py)
        proc = subprocess.Popen([sys.executable, "-m", "de_magic", "serve", module, "--name", name,
                                 "--broker", self.url, "--parent-pid", str(os.getpid()), *extra], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.processes[name] = proc
        return proc

    def wait_registered(self, client: Client, timeout: float = 60.0) -> None:
        """Block until every started backend is registered; raise if one exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            live = client.listing(api=False)["backends"]
            if all(name in live for name in self.processes):
                return
            dead = [name for name, proc in self.processes.items() if proc.poll() is not None]
            if dead:
                raise RuntimeError(f"de-magic: backend(s) {', '.join(dead)} exited while starting")
            if time.monotonic() > deadline:
                raise TimeoutError(f"de-magic: backends did not register within {timeout:g} s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.broker is None:
            return
        atexit.unregister(self.stop)
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.processes.clear()
        self.broker.stop()
        self.broker = None


def start_local(client: Client) -> LocalCluster:
    """Start a broker at ``client.url`` with the demo backends, and wait until they are ready."""
    cluster = LocalCluster(client.url)
    try:
        for name, (module, extra) in DEMO_BACKENDS.items():
            cluster.serve(name, module, *extra)
        cluster.wait_registered(client)
    except BaseException:
        # else the broker would keep the address, and the next attempt would find a broker without backends
        cluster.stop()
        raise
    return cluster
