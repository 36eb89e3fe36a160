"""JSON-safe encoding of numpy, pandas and xarray values, for the no-pickle mode.

A backend that takes calls from less trusted callers must not unpickle
anything (unpickling runs code).  In that mode arguments and results travel as
JSON; arrays and tables, which plain JSON cannot carry, become objects tagged
with the key :data:`TAG` (the format is documented in ``docs/json-encoding.md``):

* ``ndarray``: ``dtype`` (numpy's dtype string), ``shape`` and ``data``, the
  raw little/big-endian bytes as base64, so values and dtypes come back exactly;
  arrays of Python objects travel as ``items``, a list of JSON values, never as raw bytes;
* ``pandas.Index``, ``pandas.Series``, ``pandas.DataFrame``: their values as
  ``ndarray`` objects plus the pandas dtype names;
* ``xarray.DataArray`` / ``xarray.Dataset``: xarray's own ``to_dict`` layout
  with ``ndarray`` objects as data;
* ``bytes``: base64.

Decoding builds only those types, from data: no import is named by the wire
and no constructor other than these is ever called.
"""

from __future__ import annotations

import base64
import sys

TAG = "__de_magic__"


def encode(obj):
    """``json.dumps(default=...)`` hook: a tagged JSON object for the types above."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {TAG: "bytes", "data": base64.b64encode(obj).decode()}
    np, pd, xr = (sys.modules.get(name) for name in ("numpy", "pandas", "xarray"))
    if np is not None:
        if isinstance(obj, np.ndarray):
            return _encode_array(np, obj)
        if isinstance(obj, np.generic):
            return obj.item()
    if pd is not None:
        if isinstance(obj, pd.MultiIndex):
            raise TypeError("pandas.MultiIndex has no JSON encoding; reset_index() first")
        if isinstance(obj, pd.Index):
            return {TAG: "pandas.Index", "values": obj.to_numpy(), "dtype": str(obj.dtype), "name": obj.name}
        if isinstance(obj, pd.Series):
            return {TAG: "pandas.Series", "values": obj.to_numpy(), "dtype": str(obj.dtype),
                    "index": obj.index, "name": obj.name}
        if isinstance(obj, pd.DataFrame):
            return {TAG: "pandas.DataFrame", "columns": obj.columns, "index": obj.index,
                    "data": [obj.iloc[:, i].to_numpy() for i in range(obj.shape[1])],
                    "dtypes": [str(t) for t in obj.dtypes]}
    if xr is not None and isinstance(obj, (xr.DataArray, xr.Dataset)):
        return {TAG: f"xarray.{type(obj).__name__}", **obj.to_dict(data="array")}
    raise TypeError(f"{type(obj).__name__} has no JSON encoding in de-magic's no-pickle mode")


def _encode_array(np, arr):
    if arr.dtype.hasobject:
        # e.g. strings in pandas object columns: fine while every item is a JSON value
        return {TAG: "ndarray", "dtype": "object", "shape": list(arr.shape), "items": arr.ravel().tolist()}
    return {TAG: "ndarray", "dtype": arr.dtype.str, "shape": list(arr.shape),
            "data": base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode()}


def decode(obj: dict):
    """``json.loads(object_hook=...)`` hook: rebuild tagged objects, leave other dicts alone."""
    kind = obj.get(TAG)
    if kind is None:
        return obj
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise ValueError(f"unknown tagged JSON value {str(kind)[:40]!r}")
    try:
        return decoder(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"malformed {kind} value: {exc}") from None


def _decode_bytes(obj):
    return base64.b64decode(obj["data"], validate=True)


def _decode_array(obj):
    import numpy as np

    shape = tuple(int(n) for n in obj["shape"])
    if obj["dtype"] == "object":
        items = obj["items"]
        arr = np.empty(len(items), dtype=object)
        arr[:] = items  # item by item: nested lists stay lists instead of becoming dimensions
        return arr.reshape(shape)
    dtype = np.dtype(str(obj["dtype"]))
    if dtype.hasobject:
        raise ValueError("object dtypes travel as 'items', not as raw bytes")
    raw = bytearray(base64.b64decode(obj["data"], validate=True))  # bytearray: the array is writable
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _decode_index(obj):
    import pandas as pd

    return pd.Index(obj["values"], dtype=pd.api.types.pandas_dtype(obj["dtype"]), name=obj["name"])


def _decode_series(obj):
    import pandas as pd

    return pd.Series(obj["values"], index=obj["index"], name=obj["name"],
                     dtype=pd.api.types.pandas_dtype(obj["dtype"]))


def _decode_frame(obj):
    import pandas as pd

    columns, data, dtypes = obj["columns"], obj["data"], obj["dtypes"]
    if not (len(columns) == len(data) == len(dtypes)):
        raise ValueError("columns, data and dtypes differ in length")
    frame = pd.DataFrame({i: pd.Series(values, dtype=pd.api.types.pandas_dtype(dtype), index=obj["index"])
                          for i, (values, dtype) in enumerate(zip(data, dtypes))}, index=obj["index"])
    frame.columns = columns
    return frame


def _decode_xarray(obj):
    import xarray as xr

    cls = xr.DataArray if obj[TAG] == "xarray.DataArray" else xr.Dataset
    return cls.from_dict({k: v for k, v in obj.items() if k != TAG})


_DECODERS = {
    "bytes": _decode_bytes,
    "ndarray": _decode_array,
    "pandas.Index": _decode_index,
    "pandas.Series": _decode_series,
    "pandas.DataFrame": _decode_frame,
    "xarray.DataArray": _decode_xarray,
    "xarray.Dataset": _decode_xarray,
}
