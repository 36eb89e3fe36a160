"""The broker issue's findings, each as it was seen: real broker and backend processes on loopback.

The routing decisions themselves are tested without sockets in test_routing.py; these tests show
that a peer that tries the same things over a real socket gets nothing and breaks nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import zmq

from de_magic.wire import protocol as P
from de_magic.wire.errors import Busy, PayloadTooLarge

from conftest import HEARTBEAT, ROOT, Cluster, wait_for

CALLS = 14


def raw_peer(url: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(url)
    return sock


def answers(sock: zmq.Socket, count: int, timeout: float = 10.0) -> list:
    out = []
    while len(out) < count and sock.poll(timeout * 1000):
        out.append(P.parse(sock.recv_multipart(), P.AT_CLIENT))
    return out


def test_a_slot_squatter_gets_no_calls_and_breaks_nothing(hello):
    (worker,) = hello.workers("hello_world")
    squatter = raw_peer(hello.url)
    try:
        # the worker id is in every listing: claim its slots, answer its calls, take over its registration
        public = bytes.fromhex(worker["id"])
        squatter.send_multipart(P.slot(public, os.urandom(32)))
        squatter.send_multipart(P.ready("hello_world", public, os.urandom(32), {"api": {}, "capacity": 4}))
        hw = hello.client["hello_world"]
        futures = [hw.echo.submit(i) for i in range(CALLS)]
        assert [f.result(20) for f in futures] == list(range(CALLS))
        received = []
        while squatter.poll(200):
            received.append(P.parse(squatter.recv_multipart(), P.AT_WORKER))
        assert [type(m) for m in received] == [P.Reject], received  # and no call, ever
    finally:
        squatter.close()
    assert hello.workers("hello_world")[0]["id"] == worker["id"]


def test_headers_nested_too_deep_are_answered_and_every_slot_survives(cluster):
    cluster.start_backend("de_magic.demo.hello", "hello_world", "--max-workers", "2")
    sock = raw_peer(cluster.url)
    try:
        for i in range(5):  # more than the backend has slots
            sock.send_multipart(P.call(b"deep%d" % i, "hello_world", b"", b"[" * 100_000, []))
        sock.send_multipart(P.message(P.LIST, [b"deep-list"], b'{"a":' * 100_000))
        got = answers(sock, 6)
        assert sorted(m.rid for m in got) == [b"deep-list"] + [b"deep%d" % i for i in range(5)]
        assert all(isinstance(m, P.Error) and m.header["kind"] == "protocol" for m in got)
    finally:
        sock.close()
    hw = cluster.client["hello_world"]
    futures = [hw.slow_sum.submit(n=2, delay=0.2) for _ in range(2)]  # both slots at once
    assert [f.result(10) for f in futures] == [1, 1]


def test_a_result_over_the_broker_limit_is_refused_at_the_backend_and_the_slot_is_free(processes):
    cluster = Cluster(processes)
    cluster.start_broker("--max-message-size", "100000")
    cluster.start_backend("de_magic.demo.hello", "hello_world", "--max-workers", "1")
    hw = cluster.client["hello_world"]
    with pytest.raises(PayloadTooLarge, match="over the maximum message size of 100000 bytes"):
        hw.describe_table.options(timeout=10)(n_rows=50_000)
    assert hw.echo("the one slot is free") == "the one slot is free"
    cluster.client.close()


def test_a_second_backend_with_another_api_is_told_why_and_the_first_stays(hello):
    proc = subprocess.run([sys.executable, "-m", "de_magic", "serve", "tests/sample_backend.py", "--name",
                           "hello_world", "--broker", hello.url, "--heartbeat", str(HEARTBEAT)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "refused to register 'hello_world'" in proc.stderr and "different API" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "slow_sum" in hello.client.listing()["backends"]["hello_world"]["api"]["members"]


def test_queued_calls_are_bounded_by_bytes(processes):
    cluster = Cluster(processes)
    cluster.start_broker("--max-queued-bytes", "3000000")
    cluster.start_backend("de_magic.demo.hello", "hello_world", "--max-workers", "1")
    hw = cluster.client["hello_world"]
    running = hw.slow_sum.submit(n=10, delay=0.2)
    wait_for(lambda: cluster.workers("hello_world")[0]["busy"] == 1, what="the slot to be busy")
    futures = [hw.echo.submit(np.zeros(125_000)) for _ in range(5)]  # 1 MB each
    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result(30).nbytes)
        except Busy as exc:
            assert "bytes of calls wait" in str(exc)
            outcomes.append("busy")
    assert outcomes.count("busy") >= 2 and outcomes.count(1_000_000) >= 2, outcomes
    assert running.result(30) == 45
    assert cluster.client.listing(api=False)["broker"]["queued_bytes"] == 0
    cluster.client.close()


def test_output_over_the_limit_becomes_a_note(processes):
    """Output larger than the broker's limit would be cut off in transit; it is left out, with a note."""
    cluster = Cluster(processes)
    cluster.start_broker("--max-message-size", "100000")
    cluster.start_backend("de_magic.demo.hello", "hello_world", "--allow-code")
    from de_magic.caller.session import RemoteSession

    session = RemoteSession(cluster.client, "hello_world")
    outputs = []
    session.execute("print('x' * 200_000)", on_output=outputs.append).result()
    session.execute("print('after')", on_output=outputs.append).result()
    text = "".join(o.get("text", "") for o in outputs)
    assert "left out an output of 2000" in text and text.endswith("after\n"), text
    session.close()
    cluster.client.close()
