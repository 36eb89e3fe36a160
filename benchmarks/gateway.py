"""What the HTTP gateway adds to a tiny call, against the same call from the Python client.

    python benchmarks/gateway.py [--reps 5] [--calls 2000]

One broker, the demo backend ``hello_world`` listening for direct calls, and ``de-magic gateway``,
all on loopback.  Each rep measures, one after the other, ``client.call("hello_world", "echo",
(1,))`` (the Python client, direct to the worker, as the gateway's own client goes) and
``POST /backends/hello_world/echo`` with ``{"value": 1}`` over one kept-alive HTTP/1.1
connection (``http.client``, the leanest Python HTTP client).  Reported: p50 and p99 of each,
and the median over reps of the per-rep difference of the p50s, the gateway's overhead
(target: at most 1 ms).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from de_magic import Client  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "de_magic", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    raise SystemExit(f"benchmarks/gateway.py: {what} did not come up within {timeout:g} s")


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6


def python_calls(client: Client, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.call("hello_world", "echo", (1,))
        times.append(time.perf_counter() - start)
    return times


def http_calls(conn: http.client.HTTPConnection, n: int) -> list[float]:
    body, headers = b'{"value": 1}', {"Content-Type": "application/json"}
    times = []
    for _ in range(n):
        start = time.perf_counter()
        conn.request("POST", "/backends/hello_world/echo", body, headers)
        response = conn.getresponse()
        data = response.read()
        times.append(time.perf_counter() - start)
        assert response.status == 200 and json.loads(data) == 1, data
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    url, port = f"tcp://127.0.0.1:{free_port()}", free_port()
    procs = [spawn("broker", "--bind", url)]
    try:
        with Client(url, timeout=30) as client:
            wait(lambda: client.listing(api=False, timeout=1) is not None, "the broker")
            procs.append(spawn("serve", "de_magic.demo.hello", "--name", "hello_world", "--broker", url,
                               "--direct", "tcp://127.0.0.1:0"))
            wait(lambda: client.listing(api=False)["backends"].get("hello_world"), "the backend")
            procs.append(spawn("gateway", "--broker", url, "--bind", f"127.0.0.1:{port}"))
            wait(lambda: http_calls(http.client.HTTPConnection("127.0.0.1", port, timeout=5), 1), "the gateway")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            python_calls(client, 200), http_calls(conn, 200)  # warm: routes learnt, validators built
            rows = []
            for rep in range(args.reps):
                py = percentiles(python_calls(client, args.calls))
                gw = percentiles(http_calls(conn, args.calls))
                rows.append((py, gw))
                print(f"rep {rep + 1}: Python client p50 {py[0]:.0f} µs p99 {py[1]:.0f} µs; "
                      f"gateway p50 {gw[0]:.0f} µs p99 {gw[1]:.0f} µs; overhead {gw[0] - py[0]:.0f} µs", flush=True)
            conn.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
    med = lambda values: statistics.median(values)  # noqa: E731
    py50, py99 = med([r[0][0] for r in rows]), med([r[0][1] for r in rows])
    gw50, gw99 = med([r[1][0] for r in rows]), med([r[1][1] for r in rows])
    overhead = med([r[1][0] - r[0][0] for r in rows])
    print(f"\n| path | tiny p50 µs | p99 µs |\n|---|---|---|\n| Python client (direct) | {py50:.0f} | {py99:.0f} |\n"
          f"| HTTP gateway (keep-alive) | {gw50:.0f} | {gw99:.0f} |\n\ngateway overhead at p50: {overhead:.0f} µs "
          f"(target ≤ 1000 µs: {'met' if overhead <= 1000 else 'MISSED'})")


if __name__ == "__main__":
    main()
