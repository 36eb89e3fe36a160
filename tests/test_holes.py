"""Issue 18's holes, each as a hostile or careless peer found it: real processes on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from de_magic import Client
from de_magic.broker.routing import Config, Router
from de_magic.wire import protocol as P
from de_magic.wire.errors import DeMagicError, Refused, RemoteError

from conftest import HEARTBEAT, free_port, start_script, wait_for
from test_hostile import answers, raw_peer

HOSTILE_BACKEND = str(Path(__file__).with_name("hostile_backend.py"))


@pytest.fixture
def hostile(cluster):
    """A broker with tests/hostile_backend.py registered as ``hostile``, three slots."""
    cluster.start_backend(HOSTILE_BACKEND, "hostile", "--max-workers", "3")
    return cluster


def test_an_exception_whose_str_fails_is_answered_and_frees_its_slot(hostile):
    be = hostile.client["hostile"]
    for _ in range(4):  # more than the slots: each one must come back
        with pytest.raises(RemoteError, match="_BadStr: str\\(\\) of this exception failed") as caught:
            be.bad_str.options(timeout=10)()
    assert "'broken'" in str(caught.value)
    job = be.bad_str.start()
    wait_for(lambda: job.status != "running" and job.status != "queued", timeout=10, what="the job to end")
    assert job.status == "failed"
    assert be.nap(0.01) == 0.01


def test_a_members_own_keyboard_interrupt_is_an_error_not_a_cancel(hostile):
    be = hostile.client["hostile"]
    with pytest.raises(RemoteError, match="KeyboardInterrupt") as caught:
        be.interrupt.options(timeout=10)()
    assert "the member's own" in str(caught.value)
    job = be.interrupt.start()
    wait_for(lambda: job.status not in ("running", "queued"), timeout=10, what="the job to end")
    assert job.status == "failed"


def _nested(depth: int) -> str:
    """JSON text of a list nested ``depth`` deep (json.dumps itself would run out of recursion)."""
    return "[" * depth + '"deep"' + "]" * depth


def test_a_header_nested_982_deep_is_refused_and_the_broker_lives(hello):
    sock = raw_peer(hello.url)
    try:
        deep = _nested(982)
        for field, value in (("host", deep), ("dask", '{"x":%s}' % deep), ("api", '{"x":%s}' % deep),
                             ("extra", deep)):
            info = '{"capacity":1,"%s":%s}' % (field, value)
            sock.send_multipart(P.ready("deep_" + field, os.urandom(8), os.urandom(32), {})[:-1] + [info.encode()])
        sock.send_multipart(P.message(P.LIST, [b"deep-list"], b'{"name":%s}' % deep.encode()))
        (answer,) = answers(sock, 1)
        assert isinstance(answer, P.Error) and "more than 64 deep" in answer.header["message"]
    finally:
        sock.close()
    listing = hello.client.listing(api=False)
    assert set(listing["backends"]) == {"hello_world"} and listing["broker"]["bad_messages"] >= 5
    assert hello.client["hello_world"].echo("alive") == "alive"
    assert hello.broker.poll() is None


def test_an_exception_in_the_router_is_counted_logged_once_and_the_router_lives(caplog):
    router = Router(Config(), now=0.0)
    for i in range(50):  # a frame that is not bytes: no parser expects it, and nothing may escape
        assert router.handle(b"peer", [P.envelope(P.LIST, b"r%d" % i), i], float(i)) == []
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "traceback logged once" in tracebacks[0].getMessage()
    assert router.describe()["bad_messages"] == 50
    (listing,) = router.handle(b"peer", P.list_query(b"ok", {}), 60.0)
    assert P.peek(listing[1])[1] == P.REPLY


def test_the_reference_budget_counts_50_mib_nested_four_lists_deep(cluster):
    cluster.start_backend(HOSTILE_BACKEND, "hostile", "--ref-bytes", str(100 * 1000 * 1000))
    be = cluster.client["hostile"]
    kept = be.nested_bytes.options(keep=True)(50)
    assert 50 << 20 <= kept.nbytes < (50 << 20) + (1 << 20)
    with pytest.raises(Refused, match="cannot keep a list of 5[0-9,]+ bytes: its references hold 5[0-9,]+ of "
                                      "100,000,000 bytes"):
        be.nested_bytes.options(keep=True)(50)
    kept.release()
    assert be.nested_bytes.options(keep=True)(50).nbytes == kept.nbytes


# The first values libzmq's generate_random() returns in a process that never seeded rand() (glibc):
# where a ROUTER's made-up peer names (b"\x00" + uint32) start counting.
UNSEEDED_STARTS = """
import ctypes
libc = ctypes.CDLL(None)
libc.srand(1)
for _ in range(20):
    low, high = libc.rand(), libc.rand()
    print((low | (high << 31)) & 0xFFFFFFFF)
"""


def claim_made_up_names(url: str, count: int = 300, key: str | None = None) -> list:
    """``count`` sockets that declare the names libzmq would make up next, each checked in (answered)."""
    starts = [int(line) for line in subprocess.check_output([sys.executable, "-c", UNSEEDED_STARTS]).split()]
    names = [b"\x00" + ((start + step) & 0xFFFFFFFF).to_bytes(4, "big")
             for step in range(count // len(starts)) for start in starts]
    socks = []
    for name in names:
        sock = raw_peer_named(url, name, key)
        sock.send_multipart(P.query(b"hello"))
        socks.append(sock)
    # a name some peer had made up for it already is ignored (no handover): the rest are checked in
    answered = sum(1 for sock in socks if sock.poll(2000) and sock.recv_multipart())
    assert answered >= len(socks) - 10, f"only {answered} of {len(socks)} claiming sockets were answered"
    return socks


def raw_peer_named(url: str, name: bytes | None, key: str | None = None):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    if key is not None:  # a direct endpoint's: it always runs CURVE
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.curve_serverkey = key.encode()
    if name is not None:
        sock.routing_id = name
    sock.connect(url)
    return sock


def _plain_peer_is_answered(url: str, key: str | None) -> None:
    """A peer of another program, which declares no routing id, asks and is answered."""
    sock = raw_peer_named(url, None, key)
    try:
        sock.send_multipart(P.query(b"plain"))
        assert sock.poll(10_000), f"no answer at {url}"
        assert P.parse(sock.recv_multipart(), P.AT_CLIENT).rid == b"plain"
    finally:
        sock.close()


def test_300_sockets_claiming_made_up_routing_ids_abort_neither_broker_nor_direct_endpoint(cluster):
    proc = cluster.start_backend("de_magic.demo.hello", "hello_world", "--direct", "tcp://127.0.0.1:0")
    (worker,) = cluster.workers("hello_world")
    direct_url, key = worker["direct"]["url"], worker["direct"]["key"]
    claims = claim_made_up_names(cluster.url) + claim_made_up_names(direct_url, key=key)
    try:
        for url, server_key in ((cluster.url, None), (direct_url, key)) * 2:
            _plain_peer_is_answered(url, server_key)
        for direct in (True, False):
            with Client(cluster.url, heartbeat=HEARTBEAT, timeout=20, direct=direct) as client:
                assert client["hello_world"].echo(direct) is direct
        assert cluster.broker.poll() is None and proc.poll() is None
    finally:
        for sock in claims:
            sock.close()


# queues slow calls on a one-slot backend, says so, then waits to be killed or closes its client
QUEUER = """
import sys, time
from de_magic import Client
client = Client(sys.argv[1], timeout=600, heartbeat=0.2)
futures = [client["hello_world"].slow_sum.submit(n=2, delay=0.05) for _ in range(int(sys.argv[2]))]
print("queued", flush=True)
if sys.argv[3] == "close":
    client.close()
    print("closed", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("how", ["killed", "closed"])
def test_the_queued_calls_of_a_caller_that_has_gone_are_dropped_not_run(cluster, processes, how):
    cluster.start_backend("de_magic.demo.hello", "hello_world", "--max-workers", "1")
    queuer = start_script(processes, QUEUER, cluster.url, "800", "close" if how == "closed" else "wait")
    assert queuer.stdout.readline().strip() == "queued"
    wait_for(lambda: cluster.client.listing(api=False)["backends"]["hello_world"]["queued"] >= 700,
             what="the calls to be queued")
    if how == "killed":
        queuer.send_signal(signal.SIGKILL)
        bound = 30.0  # a caller lease (10 s) and the call running: not 800 calls of 0.1 s
    else:
        assert queuer.stdout.readline().strip() == "closed"
        bound = 10.0  # a closed client cancels its calls at once
    queuer.stdout.close()
    start = time.monotonic()
    assert cluster.client["hello_world"].echo.options(timeout=bound)("served") == "served"
    waited = time.monotonic() - start
    assert cluster.client.listing(api=False)["backends"]["hello_world"]["queued"] == 0, waited


def test_a_call_holding_the_gil_for_10_s_loses_neither_its_worker_nor_a_call_on_another_slot(cluster):
    proc = cluster.start_backend(HOSTILE_BACKEND, "hostile", "--max-workers", "2")
    (worker,) = cluster.workers("hostile")
    be = cluster.client["hostile"]
    healthy = be.nap.submit(1.0)
    wait_for(lambda: cluster.workers("hostile")[0]["busy"] == 1, what="the healthy call to run")
    held = be.hold_gil.submit(10.0)
    assert held.result(30) >= 10.0 and healthy.result(30) == 1.0
    assert [w["id"] for w in cluster.workers("hostile")] == [worker["id"]] and proc.poll() is None
    assert cluster.client.listing(api=False)["broker"]["bad_messages"] == 0


def _rogue(url: str, stop, seen: list) -> None:
    """A process that took a dead worker's direct port: it answers every call with a pickle of its own."""
    from de_magic.wire import serialize

    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.linger = 0
    sock.bind(url)
    try:
        while not stop.is_set():
            if sock.poll(50):
                address, *frames = sock.recv_multipart()
                seen.append(frames)
                msg = P.parse(frames, P.AT_BROKER)
                if isinstance(msg, P.Call):
                    sock.send_multipart([address, *P.to_client(b"", P.REPLY, msg.rid, [b'{"codec":"pickle"}',
                                                                                     *serialize.dumps("rogue")])[1:]])
    finally:
        sock.close()


def test_a_rogue_on_a_dead_workers_direct_port_never_answers_a_call(cluster, tmp_path):
    import threading

    port = free_port()
    # no Unix socket for this user's calls (its directory is open to all): the calls take the CURVE port
    (tmp_path / "de-magic").mkdir(mode=0o777)
    os.chmod(tmp_path / "de-magic", 0o777)
    proc = cluster.start_backend("de_magic.demo.hello", "hello_world", "--direct", f"tcp://127.0.0.1:{port}",
                                 env={"XDG_RUNTIME_DIR": str(tmp_path)})
    assert "local" not in cluster.workers("hello_world")[0]["direct"]
    hw = cluster.client["hello_world"]
    assert [hw.echo(i) for i in range(5)] == list(range(5))
    assert cluster.workers("hello_world")[0]["calls"] == 0  # direct: the client knows the endpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop, seen = threading.Event(), []
    rogue = threading.Thread(target=_rogue, args=(f"tcp://127.0.0.1:{port}", stop, seen))
    rogue.start()
    try:
        outcomes = []
        for i in range(20):
            try:
                outcomes.append(hw.echo.options(timeout=5)(i))
            except DeMagicError as exc:
                outcomes.append(type(exc).__name__)
        assert "rogue" not in outcomes and not seen, (outcomes, seen[:2])
        cluster.start_backend("de_magic.demo.hello", "hello_world")
        assert hw.echo("after") == "after"
    finally:
        stop.set()
        rogue.join()
