"""A backend whose results are large, for the tests of remote references."""

from __future__ import annotations

import numpy as np
import xarray as xr


def open_dataset(megabytes: int = 1) -> xr.Dataset:
    """A dataset of ``megabytes`` MiB of ones."""
    return xr.Dataset({"t": ("x", np.ones(megabytes * (1 << 20) // 8))}, attrs={"title": "ones"})


def scale(ds: xr.Dataset, factor: float) -> xr.Dataset:
    """Every value times ``factor``."""
    return ds * factor


def total(ds: xr.Dataset) -> float:
    """The sum of all values."""
    return float(ds["t"].sum())


def totals(groups: dict) -> dict:
    """The sum of each dataset in a dict of lists of datasets."""
    return {name: [total(ds) for ds in group] for name, group in groups.items()}
