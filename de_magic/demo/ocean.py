"""ocean_model: analysis close to the data.

Holds a small synthetic ocean model (temperature and salinity on a
lat/lon/time grid) that never leaves the backend; callers send a ship's track
and get the model interpolated along it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["get_model_parameter", "model_info"]

Parameter = Literal["temperature", "salinity"]


@lru_cache(maxsize=1)
def model() -> xr.Dataset:
    """The model dataset: smooth fields with a seasonal cycle, generated once."""
    lat = np.arange(30.0, 70.01, 0.5)
    lon = np.arange(-30.0, 30.01, 0.5)
    time = pd.date_range("2024-01-01", "2024-12-31", freq="5D")
    day = (time.dayofyear.to_numpy() / 365.25)[:, None, None]
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    temperature = 25 - 0.45 * (la - 30) + 1.5 * np.sin(np.radians(lo * 4)) + 4 * np.sin(2 * np.pi * (day - 0.3))
    salinity = 34.5 + 0.03 * (la - 50) - 0.02 * lo + 0.2 * np.cos(2 * np.pi * day) + 0 * la
    return xr.Dataset(
        {
            "temperature": (("time", "lat", "lon"), temperature, {"units": "degC"}),
            "salinity": (("time", "lat", "lon"), salinity, {"units": "PSU"}),
        },
        coords={"time": time, "lat": lat, "lon": lon},
        attrs={"title": "de-magic demo ocean model"},
    )


def model_info() -> dict:
    """Variables, units and extent of the model."""
    ds = model()
    return {
        "variables": {name: var.attrs.get("units", "") for name, var in ds.data_vars.items()},
        "time": [str(ds.time.values[0])[:10], str(ds.time.values[-1])[:10]],
        "lat": [float(ds.lat.min()), float(ds.lat.max())],
        "lon": [float(ds.lon.min()), float(ds.lon.max())],
    }


def get_model_parameter(names: list[Parameter], time: list[str], lat: list[float], lon: list[float]) -> pd.DataFrame:
    """Interpolate model parameters along a track.

    Parameters
    ----------
    names : list of str
        model variables to sample ("temperature", "salinity")
    time : list of str
        ISO time of each track point
    lat : list of float
        latitude of each track point (degrees north)
    lon : list of float
        longitude of each track point (degrees east)

    Returns
    -------
    pandas.DataFrame
        one row per track point: time, lat, lon and one column per parameter
    """
    if not len(time) == len(lat) == len(lon):
        raise ValueError(f"time, lat and lon must have the same length, got {len(time)}, {len(lat)}, {len(lon)}")
    ds = model()
    unknown = sorted(set(names) - set(ds.data_vars))
    if unknown:
        raise KeyError(f"unknown model parameter(s) {unknown}; the model has {sorted(ds.data_vars)}")
    track = {
        "time": xr.DataArray(pd.to_datetime(list(time)), dims="point"),
        "lat": xr.DataArray(np.asarray(lat, float), dims="point"),
        "lon": xr.DataArray(np.asarray(lon, float), dims="point"),
    }
    sampled = ds[list(names)].interp(track)
    frame = pd.DataFrame({"time": track["time"].values, "lat": track["lat"].values, "lon": track["lon"].values})
    for name in names:
        frame[name] = sampled[name].values
    return frame


if __name__ == "__main__":
    from de_magic import main

    main(name="ocean_model", members=__all__)
