"""Telling apart what answers at a broker's address: nothing, no host, a program that is no broker, a CURVE
broker. The probe itself, a client's refusal and the sidebar's listing, against real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
import zmq

from de_magic import Client
from de_magic.wire import probe
from de_magic.wire.errors import DeMagicError
from de_magic.wire.handshake import UNKNOWN_KEY

from conftest import free_port
from labtools import Jupyter


class Peer:
    """A TCP server on a free loopback port that does ``serve(connection)`` with each connection."""

    def __init__(self, serve):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.serve = serve
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            with connection:
                self.serve(connection)

    def close(self) -> None:
        self.listener.close()


def closes(connection) -> None:
    pass


def answers_http(connection) -> None:
    connection.recv(100)
    connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")


@pytest.fixture
def peers():
    made = []
    yield lambda serve: made.append(Peer(serve)) or made[-1]
    for peer in made:
        peer.close()


@pytest.fixture
def zmq_routers():
    """A plain ROUTER and a CURVE one (a broker's socket, without the broker), each on a free port."""
    context = zmq.Context()
    plain, curve = context.socket(zmq.ROUTER), context.socket(zmq.ROUTER)
    curve.curve_server = True
    curve.curve_secretkey = zmq.curve_keypair()[1]
    try:
        yield (f"tcp://127.0.0.1:{plain.bind_to_random_port('tcp://127.0.0.1')}",
               f"tcp://127.0.0.1:{curve.bind_to_random_port('tcp://127.0.0.1')}")
    finally:
        plain.close(0)
        curve.close(0)
        context.term()


def test_the_probe_tells_each_kind_of_peer_apart(peers, zmq_routers):
    plain, curve = zmq_routers
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never answers
    try:
        cases = {
            f"tcp://127.0.0.1:{free_port()}": (probe.REFUSED, "nothing listens at 127.0.0.1:"),
            "tcp://no-such-host.invalid:5555": (probe.UNRESOLVABLE, "'no-such-host.invalid' of "),
            peers(closes).url: (probe.NOT_ZEROMQ, "accepts connections and closes them"),
            peers(answers_http).url: (probe.NOT_ZEROMQ, "does not speak ZeroMQ (it answered b'HTTP/1.1 400"),
            f"tcp://127.0.0.1:{silent.getsockname()[1]}": (probe.NOT_ZEROMQ, "does not answer ZeroMQ's greeting"),
            plain: (probe.PLAIN, "speaks ZeroMQ without CURVE"),
            curve: (probe.CURVE, "uses CURVE"),
        }
        for url, (kind, words) in cases.items():
            start = time.monotonic()
            found = probe.probe(url, timeout=1.0)
            assert time.monotonic() - start < 2.0, url
            assert (found.kind, words in found.message) == (kind, True), (url, found)
    finally:
        silent.close()
    assert probe.probe("ipc:///tmp/de-magic-broker") is None  # no host to ask


def test_a_client_of_a_program_that_is_no_broker_is_not_told_about_curve(peers):
    url = peers(closes).url
    with Client(url, timeout=3) as client, pytest.raises(DeMagicError) as failed:
        client.listing()
    message = str(failed.value)
    assert "is not a de-magic broker: it accepts connections and closes them" in message, message
    assert "CURVE" not in message


def test_the_sidebar_says_what_answers_and_offers_a_key_only_to_a_curve_broker(peers, zmq_routers, tmp_path):
    plain, curve = zmq_routers
    jupyter = Jupyter(tmp_path, env={"DE_MAGIC_CONFIG": str(tmp_path / "de-magic.toml")},
                      config={"DeMagicLab": {"timeout": 1.0, "retry_interval": 0.1}})
    cases = {
        peers(closes).url: "is not a de-magic broker: it accepts connections and closes them",
        f"tcp://127.0.0.1:{free_port()}": "nothing listens at 127.0.0.1:",
        "tcp://no-such-host.invalid:5555": "does not resolve",
        curve: f"The broker at {curve} {UNKNOWN_KEY}",
    }
    with jupyter:
        for url, words in cases.items():
            body = jupyter.get("/de-magic/listing", broker=url).json()
            assert body["reachable"] is False and words in body["error"], (url, body)
            assert body["needs_key"] is (url == curve), (url, body)


# Two contexts in one process, each with a socket that a dead port refuses a thousand times a second and a monitor
# nobody reads: pyzmq's own (get_monitor_socket) and ours (WatchedSocket.watch). Sockets of a frozen context can
# never be closed, so this runs in a process of its own.
MONITOR_FLOOD = """
import os, sys, time, zmq
from de_magic.wire.handshake import WatchedSocket
from de_magic.wire.security import Security

def refused(ctx, ours):
    sock = ctx.socket(zmq.DEALER, socket_class=WatchedSocket)
    sock.reconnect_ivl = 1  # a refused reconnect, each an EVENT_CLOSED, every millisecond
    if ours:
        sock.watch(sys.argv[1], "client", Security())
    else:
        sock.get_monitor_socket(zmq.EVENT_CLOSED)
    sock.connect(sys.argv[1])
    return sock

def works(ctx):
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    b.connect(f"tcp://127.0.0.1:{a.bind_to_random_port('tcp://127.0.0.1')}")
    b.send(b"ping")
    return bool(a.poll(5000))

pyzmqs, ours = zmq.Context(), zmq.Context()
kept = refused(pyzmqs, False), refused(ours, True)  # referenced: a collected socket is closed
deadline = time.monotonic() + 120
while works(pyzmqs) and time.monotonic() < deadline:
    time.sleep(0.1)
print("pyzmq's monitor:", "works" if works(pyzmqs) else "frozen", "- ours:", "works" if works(ours) else "frozen",
      flush=True)
os._exit(0)
"""


def test_a_monitor_nobody_reads_never_freezes_the_process():
    """A client idle while its broker is gone must not stop every socket of its process (a kernel's too):
    libzmq hands monitor events over with a blocking send, and a full monitor froze its context for good."""
    done = subprocess.run([sys.executable, "-c", MONITOR_FLOOD, f"tcp://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=200)
    assert done.stdout.strip() == "pyzmq's monitor: frozen - ours: works", (done.stdout, done.stderr[-2000:])
