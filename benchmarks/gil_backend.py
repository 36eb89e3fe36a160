"""The backend of benchmarks/dask_bench.py: a GIL-bound function and a tiny one."""


def spin(n: int) -> int:
    """Pure Python, holds the GIL throughout: n loop steps."""
    total = 0
    for i in range(n):
        total += i & 7
    return total


def tiny() -> int:
    """Nothing to do: what a call costs."""
    return 1
