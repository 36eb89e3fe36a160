"""What 10,000 queued calls cost the broker, and what a tiny call costs beside them.

    python benchmarks/queued.py [--queued 10000] [--seconds 5]

A backend with one slot is kept busy; 10,000 calls wait in the broker's queue,
and their callers ask after them as real clients do: one QUERY per call per
heartbeat interval (1 s). The broker's CPU time is read from /proc while that
goes on, once with the queries and once without. Then a tiny call's latency is
measured with the queue full and with it empty.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from de_magic import Client  # noqa: E402
from de_magic.wire import protocol as P  # noqa: E402
from de_magic.wire import serialize  # noqa: E402

from bench import free_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "de_magic", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fill_queue(url: str, count: int) -> tuple[zmq.Socket, list[bytes]]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(url)
    header = P.dump_header({"member": "echo"})
    payload = serialize.dumps(((0,), {}))
    rids = [b"q%d" % i for i in range(count)]
    for rid in rids:
        sock.send_multipart(P.call(rid, "bench", b"", header, payload))
    return sock, rids


def broker_load(pid: int, sock: zmq.Socket, rids: list[bytes], seconds: float, batch: int) -> float:
    """Share of one core the broker used over ``seconds``, with each queued call queried once a second,
    ``batch`` request ids per QUERY (0: no queries)."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    per_tick = len(rids) // 20 if batch else 0
    i = 0
    while time.monotonic() - start < seconds:
        for _ in range(0, per_tick, batch or 1):  # spread over the second, as waiting callers are
            chunk = [rids[(i + k) % len(rids)] for k in range(batch)]
            sock.send_multipart(P.query(*chunk))
            i += batch
        while sock.poll(0):
            sock.recv_multipart()
        time.sleep(0.05)
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("the broker and backends did not get ready")
        time.sleep(0.05)


def ready(client: Client, name: str) -> bool:
    """Whether backend ``name`` is registered and all its slots have checked in."""
    entry = client.listing(api=False)["backends"].get(name)
    return bool(entry) and all(w["slots"] == w["capacity"] for w in entry["workers"])


def tiny_p50(client: Client, calls: int = 300) -> float:
    times = []
    for i in range(calls):
        t = time.perf_counter()
        client.call("tiny", "echo", (i,))
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    url = f"tcp://127.0.0.1:{free_port()}"
    procs = [start("broker", "--bind", url)]
    try:
        procs.append(start("serve", "de_magic.demo.hello", "--name", "bench", "--broker", url,
                           "--max-workers", "1", "--max-queue", str(args.queued + 10)))
        procs.append(start("serve", "de_magic.demo.hello", "--name", "tiny", "--broker", url, "--max-workers", "1"))
        client = Client(url, timeout=60)
        wait_until(lambda: all(ready(client, name) for name in ("bench", "tiny")))
        empty = tiny_p50(client)
        blocker = client.submit("bench", "slow_sum", (), {"n": 1000, "delay": 0.1})  # holds the one slot
        wait_until(lambda: client.listing(api=False)["backends"]["bench"]["workers"][0]["busy"] == 1)
        sock, rids = fill_queue(url, args.queued)
        wait_until(lambda: client.listing(api=False)["broker"]["queued"] >= args.queued)
        idle = broker_load(procs[0].pid, sock, rids, args.seconds, batch=0)
        one_by_one = broker_load(procs[0].pid, sock, rids, args.seconds, batch=1)
        batched = broker_load(procs[0].pid, sock, rids, args.seconds, batch=100)
        full = tiny_p50(client)
        print(f"broker CPU with {args.queued} calls queued: {idle:.1%} of a core with no queries; while their "
              f"callers ask after each once a second: {one_by_one:.1%} one id per QUERY (today's Client, one "
              f"socket per waiting thread), {batched:.1%} with 100 ids per QUERY")
        print(f"tiny call p50: {empty:.0f} µs with the queue empty, {full:.0f} µs with {args.queued} calls queued")
        blocker.cancel()
        sock.close()
        client.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


if __name__ == "__main__":
    main()
