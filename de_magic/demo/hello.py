"""hello_world: a few typed functions over numpy, pandas and xarray.

The seed example of de-magic: serve it with ``de-magic serve de_magic.demo.hello``
or run this file (``python -m de_magic.demo.hello listen``).
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import Field

from de_magic import progress

__all__ = ["compute_sum", "describe_table", "echo", "scale", "slow_sum", "Stats"]


def compute_sum(da: xr.DataArray) -> xr.DataArray:
    """Compute the sum over a data array.

    Parameters
    ----------
    da : xr.DataArray
        the input array

    Returns
    -------
    xr.DataArray
        the sum over all dimensions
    """
    return da.sum()


def scale(values: list[float], factor: Annotated[float, Field(ge=0, le=10)] = 2.0,
          mode: Literal["multiply", "divide"] = "multiply") -> list[float]:
    """Scale a list of numbers.

    Parameters
    ----------
    values : list of float
        the numbers
    factor : float
        how much to scale by, between 0 and 10
    mode : {"multiply", "divide"}
        whether to multiply or divide by ``factor``
    """
    if mode == "divide":
        return [v / factor for v in values]
    return [v * factor for v in values]


def describe_table(n_rows: int = 5, seed: int = 0) -> pd.DataFrame:
    """Make a small random table and return it with summary columns.

    Parameters
    ----------
    n_rows : int
        number of rows
    seed : int
        random seed
    """
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n_rows, 3)), columns=["a", "b", "c"])
    frame["total"] = frame.sum(axis=1)
    return frame


def echo(value: object) -> object:
    """Return ``value`` unchanged (for round-trip and speed checks)."""
    return value


def slow_sum(n: int = 20, delay: float = 0.05) -> int:
    """Add up 0..n-1 slowly, reporting progress.

    Parameters
    ----------
    n : int
        how many numbers
    delay : float
        seconds to wait per number
    """
    total = 0
    for i in progress(range(n), desc="adding"):
        time.sleep(delay)
        total += i
    return total


class Stats:
    """Statistics with a fixed delta degrees of freedom.

    Parameters
    ----------
    ddof : int
        delta degrees of freedom
    """

    def __init__(self, ddof: int = 0):
        self.ddof = ddof

    def std(self, values: list[float]) -> float:
        """Standard deviation of ``values``.

        Parameters
        ----------
        values : list of float
            the sample
        """
        return float(np.std(values, ddof=self.ddof))

    def mean(self, values: list[float]) -> float:
        """Arithmetic mean of ``values``."""
        return float(np.mean(values))


if __name__ == "__main__":
    from de_magic import main

    main(name="hello_world", members=__all__)
