"""The direct endpoint admits, queues and refuses as the broker does: raw sockets against real backends.

Each test here is a hole an outside check found in the direct path (issue 18): a byte budget that was
missing, ``allow_clients`` that a plaintext endpoint did not enforce, a revoked key still let in.
"""

from __future__ import annotations

import threading
import time

import zmq

from conftest import HEARTBEAT, wait_for
from de_magic import Client
from de_magic.backend.server import Backend
from de_magic.wire import protocol as P
from de_magic.wire import serialize
from de_magic.wire.errors import Refused
from de_magic.wire.security import Security
from test_direct import _workers, curve, curve_broker, the_worker  # noqa: F401 - curve and curve_broker are fixtures

MiB = 1 << 20


def echo(x):
    return x


def _raw(url: str, server_key: str, security: Security | None = None) -> zmq.Socket:
    """A bare socket at a direct endpoint (always CURVE: a plaintext one has a key of its own), with the
    caller's key pair, or without one (as a plaintext caller) a throwaway pair."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_publickey, sock.curve_secretkey = security.key_pair if security is not None else zmq.curve_keypair()
    sock.curve_serverkey = server_key.encode()
    sock.connect(url)
    return sock


def _call(sock: zmq.Socket, rid: bytes, name: str, member: str, *args) -> None:
    sock.send_multipart(P.call(rid, name, b"", P.dump_header({"member": member}), serialize.dumps((args, {}))))


def _final(sock: zmq.Socket, timeout: float = 10.0):
    assert sock.poll(int(timeout * 1000)), "no answer"
    msg = P.parse(sock.recv_multipart(), P.AT_CLIENT)
    while type(msg) is P.Event:
        msg = P.parse(sock.recv_multipart(), P.AT_CLIENT)
    return msg


def test_direct_calls_waiting_for_a_slot_are_bounded_by_bytes(cluster):
    """Before: 60 waiting calls of 20 MiB were all queued direct (+1.2 GB); a broker refused most."""
    release = threading.Event()

    def hold():  # keeps the one slot busy until the test has seen what was queued and what refused
        return release.wait(30)

    backend = Backend("budget", {"hold": hold, "echo": echo}, broker=cluster.url, heartbeat=HEARTBEAT, max_workers=1,
                      max_queued_bytes=50 * MiB, direct="tcp://127.0.0.1:0").start()
    sock = _raw(backend.direct.url, backend.direct.key)
    try:
        wait_for(lambda: cluster.workers("budget") and the_worker(cluster, "budget")["slots"] > 0,
                 what="the backend to register")
        _call(sock, b"hold", "budget", "hold")
        wait_for(lambda: the_worker(cluster, "budget")["busy"] == 1, what="the one slot to be busy")
        big = b"x" * (20 * MiB)
        for i in range(6):
            _call(sock, b"big%d" % i, "budget", "echo", big)
        answers = {}
        while len(answers) < 4:  # the refusals come while the slot is held
            msg = _final(sock)
            answers[msg.rid] = msg.header.get("kind", "reply") if type(msg) is P.Error else "reply"
        release.set()
        while len(answers) < 7:
            msg = _final(sock)
            answers[msg.rid] = msg.header.get("kind", "reply") if type(msg) is P.Error else "reply"
        assert answers.pop(b"hold") == "reply"
        assert sorted(answers.values()) == ["busy"] * 4 + ["reply"] * 2  # 2 x 20 MiB fit in 50 MiB, no more
    finally:
        release.set()
        sock.close()
        backend.stop()


def test_a_plaintext_direct_endpoint_of_a_backend_that_names_its_callers_admits_nobody(cluster):
    """Before: a raw socket got a result from the endpoint that the broker path refused."""
    backend = Backend("picky", {"echo": echo}, broker=cluster.url, heartbeat=HEARTBEAT, allow_clients=["alice"],
                      direct="tcp://127.0.0.1:0").start()
    sock = _raw(backend.direct.url, backend.direct.key)
    try:
        wait_for(lambda: backend.registered.is_set(), what="the backend to register")
        _call(sock, b"r1", "picky", "echo", "secret")
        answer = _final(sock)
        assert type(answer) is P.Error and answer.header["kind"] == Refused.kind
        assert "no proven key" in answer.header["message"]
        with Client(cluster.url, heartbeat=HEARTBEAT, direct=False) as client:  # the broker path: the same
            try:
                client.call("picky", "echo", ("secret",), timeout=5)
            except Refused:
                pass
            else:
                raise AssertionError("the broker let an unauthenticated caller call a backend with allow_clients")
    finally:
        sock.close()
        backend.stop()


def test_a_revoked_key_is_refused_on_open_connections_within_two_seconds(curve):  # noqa: F811
    """Before: a key deleted from the allowed directory was admitted direct for about 26 s."""
    keys, url, alice = curve
    endpoint = _workers(alice)[0]["direct"]
    sock = _raw(endpoint["url"], endpoint["key"], Security(key=keys["alice"]))
    brokered = Client(url, heartbeat=HEARTBEAT, direct=False,
                      security=Security(key=keys["alice"], broker_key=keys["broker.public"]))
    try:
        assert brokered.call("hello_world", "echo", (0,), timeout=5) == 0
        _call(sock, b"before", "hello_world", "echo", 1)
        assert type(_final(sock)) is P.Reply
        (keys["allowed"] / "alice.key").unlink()
        revoked = time.monotonic()
        refused = {}
        for i in range(200):  # on the open direct connection, and through the broker, until both refuse
            _call(sock, b"d%d" % i, "hello_world", "echo", i)
            direct = _final(sock)
            if "direct" not in refused and type(direct) is P.Error and direct.header["kind"] == Refused.kind:
                refused["direct"] = time.monotonic() - revoked
            if "broker" not in refused:
                try:
                    brokered.call("hello_world", "echo", (i,), timeout=5)
                except Refused:
                    refused["broker"] = time.monotonic() - revoked
            if len(refused) == 2:
                break
            time.sleep(0.05)
        assert set(refused) == {"direct", "broker"}, f"still admitted after 10 s: {refused}"
        assert max(refused.values()) < 2.0, refused
    finally:
        brokered.close()
        sock.close()
