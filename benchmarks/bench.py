"""de-magic against its baselines, in one run, on loopback.

    python benchmarks/bench.py [--reps 3] [--calls 3000]

Measures (1) tiny-call latency p50/p99 and calls/s, (2) echo of 8 MB and
80 MB float64 arrays in GB/s (2 x bytes / round-trip time), (3) listing 100
backends with 20 methods each.  Systems are measured interleaved (A B C D,
A B C D, ...) and the medians over repetitions are reported, with ratios to
the baselines, because on a 2-core machine the scheduler moves numbers by
tens of percent between runs.

Baselines: raw pyzmq REQ/REP with pickle-5 out-of-band frames; the same
through a minimal one-hop ROUTER/DEALER relay (``zmq.proxy``, C); and
ipyparallel ``apply_sync`` on one engine (skipped if ipyparallel is absent).
de-magic is measured twice: through the broker, and direct (the backend
listens with ``--direct``, the client calls it without the broker in between).

Then, once: (4) fan-out, 1,000 submitted calls of ``slow(0.2)`` on 200 free
slots (ideal 1.0 s), brokered and direct; (5) aggregate bandwidth, 4 client
processes pulling 80 MB results at once, brokered and direct.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pickle
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zmq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from de_magic import Client  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# -- the raw pyzmq baselines (server side runs in a child process) ---------------------


def dumps(obj) -> list:
    buffers: list = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=lambda b: buffers.append(b.raw()) is None and False)
    return [head, *buffers]


def loads(frames):
    return pickle.loads(frames[0], buffers=[f.buffer for f in frames[1:]])


def rep_server(url: str, connect: bool) -> None:
    sock = zmq.Context.instance().socket(zmq.REP)
    sock.connect(url) if connect else sock.bind(url)
    while True:
        frames = sock.recv_multipart(copy=False)
        sock.send_multipart(dumps(loads(frames)), copy=False)


def relay(front: str, back: str) -> None:
    ctx = zmq.Context.instance()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.bind(front)
    dealer.bind(back)
    zmq.proxy(router, dealer)


class RawClient:
    def __init__(self, url: str):
        self.sock = zmq.Context.instance().socket(zmq.REQ)
        self.sock.connect(url)

    def echo(self, obj):
        self.sock.send_multipart(dumps(obj), copy=False)
        return loads(self.sock.recv_multipart(copy=False))

    def close(self):
        self.sock.close(linger=0)


# -- the systems ---------------------------------------------------------------------


class System:
    name = ""

    def start(self) -> None: ...

    def servers(self) -> list[subprocess.Popen]:
        """The processes answering a call: the server's side, for CPU per call."""
        return [self.proc]

    def echo(self, obj): ...

    def stop(self) -> None: ...


class RawReqRep(System):
    name = "pyzmq REQ/REP + pickle-5 OOB"

    def start(self):
        url = f"tcp://127.0.0.1:{free_port()}"
        self.proc = spawn(__file__, "--serve-rep", url)
        self.client = RawClient(url)
        self.client.echo(0)

    def echo(self, obj):
        return self.client.echo(obj)

    def stop(self):
        self.client.close()
        self.proc.kill()


class RawRelay(RawReqRep):
    name = "pyzmq one hop via zmq.proxy"

    def start(self):
        front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        self.relay = spawn(__file__, "--relay", front, back)
        self.proc = spawn(__file__, "--serve-rep", back, "--connect")
        self.client = RawClient(front)
        self.client.echo(0)

    def servers(self):
        return [self.proc, self.relay]

    def stop(self):
        super().stop()
        self.relay.kill()


class DeMagic(System):
    name = "de-magic via the broker"
    direct = False

    def start(self):
        self.url, self.broker, self.backend = start_cluster("de_magic.demo.hello", self.direct)
        self.client = Client(self.url, timeout=60, direct=self.direct)
        self.echo_fn = self.client["bench"].echo

    def echo(self, obj):
        return self.echo_fn(obj)

    def servers(self):
        return [self.backend] if self.direct else [self.backend, self.broker]

    def stop(self):
        self.client.close()
        self.backend.kill()
        self.broker.kill()


class DeMagicDirect(DeMagic):
    name = "de-magic direct"
    direct = True


def start_cluster(module: str, direct: bool, *extra: str) -> tuple[str, subprocess.Popen, subprocess.Popen]:
    """A broker and one backend ``bench`` of ``module`` (listening for direct calls if ``direct``), registered."""
    url = f"tcp://127.0.0.1:{free_port()}"
    broker = spawn("-m", "de_magic", "broker", "--bind", url)
    backend = spawn("-m", "de_magic", "serve", module, "--name", "bench", "--broker", url, *extra,
                    *(("--direct", "tcp://127.0.0.1:0") if direct else ()))
    with Client(url, timeout=60) as client:
        deadline = time.monotonic() + 30
        while not any(w["slots"] == w["capacity"] for w in client.listing(api=False)["backends"]
                      .get("bench", {}).get("workers", [])):
            if time.monotonic() > deadline:
                raise RuntimeError("de-magic backend did not register")
            time.sleep(0.05)
    return url, broker, backend


class IPyParallel(System):
    name = "ipyparallel apply_sync (1 engine)"

    def start(self):
        import ipyparallel as ipp

        self.cluster = ipp.Cluster(n=1, log_level=40)
        self.rc = self.cluster.start_and_connect_sync()
        self.view = self.rc[0]
        self.view.apply_sync(int, 0)

    def echo(self, obj):
        return self.view.apply_sync(_identity, obj)

    def stop(self):
        self.rc.close()
        self.cluster.stop_cluster_sync()

    def servers(self):
        return []


def _identity(x):
    return x


# -- measurements ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process so far, all its threads (libzmq's I/O threads too)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tiny(system: System, calls: int) -> tuple[float, float, float, float, float]:
    """p50 and p99 latency (µs), calls/s, and CPU per call (µs) of the client and of the server's side."""
    for _ in range(min(200, calls)):
        system.echo(1)
    times = []
    servers = [p.pid for p in system.servers()]
    server_cpu = sum(map(cpu_seconds, servers))
    client_cpu = time.process_time()
    start = time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        system.echo(1)
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    client_cpu = (time.process_time() - client_cpu) / calls * 1e6
    server_cpu = (sum(map(cpu_seconds, servers)) - server_cpu) / calls * 1e6
    times.sort()
    return (times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6, calls / total, client_cpu,
            server_cpu)


def throughput(system: System, arr: np.ndarray, repeat: int) -> float:
    system.echo(arr)
    best = []
    for _ in range(repeat):
        t = time.perf_counter()
        back = system.echo(arr)
        best.append(time.perf_counter() - t)
    assert back.shape == arr.shape
    return 2 * arr.nbytes / statistics.median(best) / 1e9


def fan_out(direct: bool, calls: int = 1000, slots: int = 200, seconds: float = 0.2) -> float:
    """Seconds for ``calls`` submitted calls of ``slow(seconds)`` on ``slots`` free slots."""
    url, broker, backend = start_cluster(str(HERE / "fanout_backend.py"), direct, "--max-workers", str(slots),
                                         "--max-queue", str(calls))
    try:
        with Client(url, timeout=60, direct=direct) as client:
            client.listing()
            for future in [client.submit("bench", "slow", (0.0,)) for _ in range(slots)]:
                future.result()  # warm: every slot's connection, the direct probe
            start = time.perf_counter()
            for future in [client.submit("bench", "slow", (seconds,)) for _ in range(calls)]:
                future.result()
            return time.perf_counter() - start
    finally:
        backend.kill()
        broker.kill()


def aggregate(direct: bool, clients: int = 4, pulls: int = 5, n: int = 10_000_000) -> float:
    """GB/s of ``clients`` processes each pulling an ``n``-float64 result ``pulls`` times, all at once."""
    url, broker, backend = start_cluster(str(HERE / "fanout_backend.py"), direct, "--max-workers", str(clients))
    try:
        procs = [subprocess.Popen([sys.executable, __file__, "--pull", url, str(pulls), str(n),
                                   *(["--direct"] if direct else [])], cwd=ROOT, stdout=subprocess.PIPE, text=True)
                 for _ in range(clients)]
        spans = [tuple(map(float, p.communicate()[0].split())) for p in procs]
        start, end = min(s for s, _ in spans), max(e for _, e in spans)
        return clients * pulls * n * 8 / (end - start) / 1e9
    finally:
        backend.kill()
        broker.kill()


def pull(url: str, pulls: int, n: int, direct: bool) -> None:
    """One client of :func:`aggregate`: prints when its pulls started and ended (wall clock)."""
    with Client(url, timeout=120, direct=direct) as client:
        client.call("bench", "block", (n,))  # warm: the connection, the backend's array
        time.sleep(1.0)  # let the other clients warm up too, so that the pulls overlap
        start = time.time()
        for _ in range(pulls):
            assert client.call("bench", "block", (n,)).shape == (n,)
        print(start, time.time())


def listing_benchmark(reps: int) -> tuple[float, float]:
    """Milliseconds to list 100 backends of 20 methods each: (first listing of a client, repeated)."""
    url = f"tcp://127.0.0.1:{free_port()}"
    broker = spawn("-m", "de_magic", "broker", "--bind", url)
    host = spawn(__file__, "--many-backends", url)
    try:
        with Client(url, timeout=30) as client:
            deadline = time.monotonic() + 60
            while len(client.listing(api=False)["backends"]) < 100:
                if time.monotonic() > deadline:
                    raise RuntimeError("the 100 backends did not register")
                time.sleep(0.1)
        cold, warm = [], []
        for _ in range(max(3, reps)):
            with Client(url, timeout=30) as client:
                t = time.perf_counter()
                listing = client.listing()
                cold.append(time.perf_counter() - t)
                for _ in range(5):
                    t = time.perf_counter()
                    listing = client.listing()
                    warm.append(time.perf_counter() - t)
            assert sum(len(b["api"]["members"]) for b in listing["backends"].values()) == 2000
        return statistics.median(cold) * 1e3, statistics.median(warm) * 1e3
    finally:
        host.kill()
        broker.kill()


def many_backends(url: str) -> None:
    """100 backends of 20 typed, documented functions each, in one process."""
    from de_magic import Backend

    def make(i: int):
        def method(x: float, n: int = 3, label: str = "a") -> list[float]:
            """A benchmark method.

            Parameters
            ----------
            x : float
                the value
            n : int
                how many
            label : str
                a label
            """
            return [x] * n

        method.__name__ = method.__qualname__ = f"method_{i:02d}"
        return method

    members = {f"method_{i:02d}": make(i) for i in range(20)}
    backends = [Backend(f"backend_{b:03d}", members, broker=url, max_workers=1).start() for b in range(100)]
    try:
        while True:
            time.sleep(3600)
    finally:
        for b in backends:
            b.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--no-ipyparallel", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="tiny calls only: latency, calls/s, CPU per call")
    parser.add_argument("--serve-rep", help=argparse.SUPPRESS)
    parser.add_argument("--connect", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--relay", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--many-backends", help=argparse.SUPPRESS)
    parser.add_argument("--pull", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pull:
        return pull(args.pull[0], int(args.pull[1]), int(args.pull[2]), args.direct)
    if args.serve_rep:
        return rep_server(args.serve_rep, args.connect)
    if args.relay:
        return relay(*args.relay)
    if args.many_backends:
        return many_backends(args.many_backends)

    systems: list[System] = [RawReqRep(), RawRelay(), DeMagic(), DeMagicDirect()]
    if args.no_ipyparallel or args.tiny:
        pass
    elif importlib.util.find_spec("ipyparallel"):
        systems.append(IPyParallel())
    else:
        print("(ipyparallel not installed: skipped; pip install -e '.[bench]')")
    small, large = np.ones(1_000_000), np.ones(10_000_000)
    results: dict[str, dict[str, list[float]]] = {s.name: {} for s in systems}
    for rep in range(args.reps):
        for system in systems:
            system.start()
            try:
                calls = args.calls if not isinstance(system, IPyParallel) else max(300, args.calls // 10)
                p50, p99, rate, client_cpu, server_cpu = tiny(system, calls)
                row = {"p50": p50, "p99": p99, "calls/s": rate, "client CPU": client_cpu, "server CPU": server_cpu}
                if not args.tiny:
                    row.update({"8MB": throughput(system, small, 5), "80MB": throughput(system, large, 3)})
            finally:
                system.stop()
            for key, value in row.items():
                results[system.name].setdefault(key, []).append(value)
            print(f"rep {rep + 1}: {system.name}: " + ", ".join(f"{k} {v:,.2f}" for k, v in row.items()),
                  file=sys.stderr, flush=True)
    med = {name: {k: statistics.median(v) for k, v in row.items()} for name, row in results.items()}

    def ratio(a: str, b: str, key: str) -> float:
        """Median over reps of a/b measured in the same rep (neighbours in time, so drift cancels)."""
        return statistics.median(x / y for x, y in zip(results[a][key], results[b][key]))

    print(f"\nMedians of {args.reps} interleaved reps on {os.cpu_count()} CPUs, loopback, {args.calls} tiny calls "
          "each; CPU: µs per tiny call, the client's process and the server's side (broker and backend, or relay "
          "and server).\n")
    print("| system | tiny p50 µs | p99 µs | calls/s | client CPU µs | server CPU µs |")
    print("|---|---|---|---|---|---|")
    for name, row in med.items():
        print(f"| {name} | {row['p50']:,.0f} | {row['p99']:,.0f} | {row['calls/s']:,.0f} | "
              f"{row['client CPU']:,.0f} | {row['server CPU']:,.0f} |")
    direct, raw, broker, hop = DeMagicDirect.name, RawReqRep.name, DeMagic.name, RawRelay.name
    print("\n| ratio | measured | goal |\n|---|---|---|")
    for label, value, goal, met in (
            ("direct tiny p50 / raw REQ/REP", ratio(direct, raw, "p50"), "≤ 1.15x", lambda v: v <= 1.15),
            ("tiny p50 via the broker / one-hop relay", ratio(broker, hop, "p50"), "≤ 1.5x", lambda v: v <= 1.5),
            ("direct calls/s / raw", ratio(direct, raw, "calls/s"), "≥ 0.9x", lambda v: v >= 0.9),
            ("client CPU per direct tiny call / raw", ratio(direct, raw, "client CPU"), "≤ 1.3x", lambda v: v <= 1.3),
            ("backend CPU per direct tiny call / raw server", ratio(direct, raw, "server CPU"), "≤ 1.3x",
             lambda v: v <= 1.3)):
        print(f"| {label} | {value:.2f}x | {goal}: {'met' if met(value) else '**missed**'} |")
    if args.tiny:
        return
    cold_ms, warm_ms = listing_benchmark(args.reps)
    fans = {direct: fan_out(direct) for direct in (False, True)}
    pulled = {direct: aggregate(direct) for direct in (False, True)}

    print("\nGB/s = 2 x bytes / echo time.\n")
    print("| system | tiny p50 µs | p99 µs | calls/s | 8 MB GB/s | 80 MB GB/s |")
    print("|---|---|---|---|---|---|")
    for name, row in med.items():
        print(f"| {name} | {row['p50']:,.0f} | {row['p99']:,.0f} | {row['calls/s']:,.0f} | "
              f"{row['8MB']:.2f} | {row['80MB']:.2f} |")

    print("\nRatios, medians of per-rep ratios (targets in brackets):")
    print(f"- tiny p50, de-magic via the broker / one-hop relay: {ratio(DeMagic.name, RawRelay.name, 'p50'):.2f}x"
          "  [<= 1.5x]")
    print(f"- tiny p50, de-magic direct / raw REQ/REP: {ratio(DeMagicDirect.name, RawReqRep.name, 'p50'):.2f}x"
          "  [<= 1.15x]")
    for size in ("80MB", "8MB"):
        print(f"- {size[:-2]} MB echo, de-magic direct / raw REQ/REP: "
              f"{ratio(DeMagicDirect.name, RawReqRep.name, size):.0%}  [>= 90%]")
    if IPyParallel.name in results:
        print(f"- tiny p50, ipyparallel / de-magic: {ratio(IPyParallel.name, DeMagic.name, 'p50'):.1f}x faster  [>= 5x]")
    print(f"- 80 MB echo, de-magic / raw REQ/REP: {ratio(DeMagic.name, RawReqRep.name, '80MB'):.0%}  [>= 70%]; "
          f"/ one-hop relay: {ratio(DeMagic.name, RawRelay.name, '80MB'):.0%}")
    print(f"- 8 MB echo, de-magic / raw REQ/REP: {ratio(DeMagic.name, RawReqRep.name, '8MB'):.0%}; "
          f"/ one-hop relay: {ratio(DeMagic.name, RawRelay.name, '8MB'):.0%}")
    print(f"- listing 100 backends x 20 methods: {warm_ms:.1f} ms  [< 20 ms]; "
          f"a client's first listing (2.5 MB of API JSON to parse): {cold_ms:.1f} ms")
    print(f"- fan-out, 1,000 submitted slow(0.2) on 200 slots: {fans[False]:.2f} s via the broker, "
          f"{fans[True]:.2f} s direct  [<= 1.3 s, ideal 1.0 s]")
    print(f"- aggregate, 4 clients pulling 80 MB results at once: {pulled[False]:.2f} GB/s via the broker, "
          f"{pulled[True]:.2f} GB/s direct")


if __name__ == "__main__":
    main()
