"""A backend for the Dask tests: its calls run as tasks on a Dask cluster (loaded by path, shipped by value)."""

import os
import time
from pathlib import Path

import dask

from de_magic import current_call
from de_magic import progress


def add(a: int, b: int) -> int:
    """Add two numbers (a tiny call)."""
    return a + b


def where() -> dict:
    """Where this call runs, and what it knows of itself."""
    call = current_call.get()
    return {"pid": os.getpid(), "member": call.header.get("member"), "call": type(call).__name__}


def steps(n: int, delay: float = 0.02) -> int:
    """Report progress over ``n`` steps."""
    total = 0
    for i in progress(range(n), desc="steps"):
        time.sleep(delay)
        total += i
    return total


def _slow_square(i: int) -> int:
    time.sleep(0.05)
    return i * i


def graph_sum(n: int) -> int:
    """Sum of squares as a Dask graph, reported as one bar of its tasks."""
    total = dask.delayed(sum)([dask.delayed(_slow_square)(i) for i in range(n)])
    return progress(total, desc="graph").compute()


def fan_out(n: int) -> dict:
    """Fan out with dask.delayed on the same cluster: the pids that did the work."""
    parts = [dask.delayed(lambda i: (i * i, os.getpid()))(i) for i in range(n)]
    done = dask.compute(*parts)
    return {"sum": sum(v for v, _ in done), "pids": sorted({pid for _, pid in done}), "me": os.getpid()}


def lazy(n: int):
    """A Dask collection as the result: computed before it is sent."""
    return dask.delayed(sum)(list(range(n)))


def sleeper(path: str, seconds: float) -> str:
    """Append a line to ``path`` every 20 ms, after our pid; note it when interrupted."""
    out = Path(path)
    out.write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            with out.open("a") as f:
                f.write("tick\n")
            time.sleep(0.02)
    except KeyboardInterrupt:
        with out.open("a") as f:
            f.write("stopped\n")
        raise
    return "slept"


class Scaler:
    """Built in the backend process, its methods run on a Dask worker."""

    def __init__(self, factor: float = 2.0):
        self.factor = factor

    def apply(self, values: list[float]) -> dict:
        """The values scaled, and where that happened."""
        return {"values": [v * self.factor for v in values], "pid": os.getpid()}


def boom(x: int) -> int:
    """Raise, for the traceback."""
    raise ValueError(f"no good: {x}")
