"""A Dask-backed backend against a plain one, in one run, on loopback.

    python benchmarks/dask_bench.py [--reps 3] [--calls 200]

Serves benchmarks/gil_backend.py twice behind one broker: plainly with
``--max-workers 2``, and with ``--dask local:2`` (two one-thread worker
processes).  Measures (1) the wall time of 4 concurrent calls of a GIL-bound
pure-Python function of about 1 s each (the work is a fixed loop, calibrated
here, so threads sharing a GIL take longer, as they would); (2) the median
latency of a tiny call on each, and of a bare Dask ``submit().result()`` on
the same LocalCluster, the floor of the Dask path; the 4 long calls are
also run as bare Dask tasks, which shows what the cluster can do while other
load shares the machine.  Systems run interleaved, medians over repetitions.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from de_magic import Client  # noqa: E402
from de_magic.wire.errors import DeMagicError  # noqa: E402
from gil_backend import spin, tiny  # noqa: E402

BACKEND = str(ROOT / "benchmarks" / "gil_backend.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def calibrate(seconds: float = 1.0) -> int:
    """Loop steps of spin() that take ``seconds`` of CPU here (CPU time: other load on the machine
    would shorten a wall-clock calibration)."""
    n = 200_000
    while True:
        start = time.process_time()
        spin(n)
        took = time.process_time() - start
        if took > 0.2:
            return int(n * seconds / took)
        n *= 2


def wait_ready(client: Client, name: str, slots: int) -> dict:
    """The listing's entry of backend ``name``'s worker, once it has ``slots`` slots."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            entry = client.listing(api=False, timeout=1)["backends"].get(name)
        except DeMagicError:
            entry = None  # the broker is not up yet
        if entry and entry["workers"] and entry["workers"][0]["slots"] >= slots:
            return entry["workers"][0]
        time.sleep(0.1)
    raise SystemExit(f"backend {name} did not register")


def four_calls(client: Client, name: str, n: int) -> float:
    proxy = client[name]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: proxy.spin(n), range(4)))
    return time.perf_counter() - start


def four_tasks(dask, n: int) -> float:
    """The same work as bare Dask tasks: what the cluster can do on this machine at the moment."""
    start = time.perf_counter()
    dask.gather([dask.submit(spin, n, pure=False) for _ in range(4)])
    return time.perf_counter() - start


def median_latency(call, count: int) -> float:
    call()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def start(procs: list, url: str) -> Client:
    """A broker at ``url`` and the two backends, registered with both their slots."""
    procs.append(subprocess.Popen([sys.executable, "-m", "de_magic", "broker", "--bind", url], cwd=ROOT))
    serve = [sys.executable, "-m", "de_magic", "serve", BACKEND, "--broker", url]
    procs.append(subprocess.Popen([*serve, "--name", "plain", "--max-workers", "2"], cwd=ROOT,
                                  stderr=subprocess.DEVNULL))
    procs.append(subprocess.Popen([*serve, "--name", "dasked", "--dask", "local:2"], cwd=ROOT,
                                  stderr=subprocess.DEVNULL))
    client = Client(url, timeout=60)
    wait_ready(client, "plain", 2)
    wait_ready(client, "dasked", 2)
    return client


def report(walls: dict, tinies: dict) -> None:
    wall = {k: statistics.median(v) for k, v in walls.items()}
    best = {k: min(v) for k, v in walls.items()}  # other load on the machine only ever slows a rep down
    ms = {k: statistics.median(v) * 1e3 for k, v in tinies.items()}
    print(f"\n4 x spin ~1 s, median (best): plain --max-workers 2 {wall['plain']:.2f} s ({best['plain']:.2f}), "
          f"--dask local:2 {wall['dasked']:.2f} s ({best['dasked']:.2f}); "
          f"ratio {wall['dasked'] / wall['plain']:.2f} ({best['dasked'] / best['plain']:.2f}), target <= 0.6; "
          f"load average {os.getloadavg()[0]:.1f}; the same 4 as bare Dask tasks {wall['dask']:.2f} s "
          f"({best['dask']:.2f})")
    print(f"tiny call p50: plain {ms['plain']:.2f} ms, dask {ms['dasked']:.2f} ms, "
          f"overhead {ms['dasked'] - ms['plain']:.2f} ms (aim < 2 ms); bare Dask submit+result {ms['dask']:.2f} ms, "
          f"so de-magic adds {ms['dasked'] - ms['dask']:.2f} ms on top of Dask")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200, help="tiny calls per system and rep")
    args = parser.parse_args()
    from distributed import Client as DaskClient

    procs: list[subprocess.Popen] = []
    try:
        client = start(procs, f"tcp://127.0.0.1:{free_port()}")
        dask = DaskClient(wait_ready(client, "dasked", 2)["dask"]["scheduler"])
        n = calibrate()
        print(f"spin({n:,}) takes about 1 s of CPU here")
        walls: dict[str, list] = {"plain": [], "dasked": [], "dask": []}
        tinies: dict[str, list] = {"plain": [], "dasked": [], "dask": []}
        for rep in range(args.reps):
            for name in ("plain", "dasked"):
                walls[name].append(four_calls(client, name, n))
            walls["dask"].append(four_tasks(dask, n))
            for name in ("plain", "dasked"):
                tinies[name].append(median_latency(client[name].tiny, args.calls))
            tinies["dask"].append(median_latency(lambda: dask.submit(tiny, pure=False).result(), args.calls))
            print(f"rep {rep + 1}: 4 calls plain {walls['plain'][-1]:.2f} s, dask {walls['dasked'][-1]:.2f} s, "
                  f"bare dask {walls['dask'][-1]:.2f} s; "
                  f"tiny plain {tinies['plain'][-1] * 1e3:.2f} ms, dask {tinies['dasked'][-1] * 1e3:.2f} ms, "
                  f"bare dask {tinies['dask'][-1] * 1e3:.2f} ms", flush=True)
        dask.close()
        client.close()
        report(walls, tinies)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(20)


if __name__ == "__main__":
    main()
