"""A backend module as users write them, for the schema and generate tests.

It mixes the annotation and docstring styles de-magic must understand: numpydoc
and Google docstrings, Literal, Optional, Annotated bounds, defaults of every
flavour, keyword-only and variadic parameters, a class, and types pydantic
cannot describe (xarray, and pandas imported only for type checkers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, Optional

from pydantic import Field

try:
    import xarray
except ImportError:  # the description must not depend on xarray being importable
    xarray = None

if TYPE_CHECKING:
    import pandas

SCALE = 2.5  # a constant: not a member

#: A default that is neither JSON nor a Python literal.
MISSING = object()


def compute_sum(da: xarray.DataArray, dim: str = "time") -> xarray.DataArray:
    """Sum an array along one dimension.

    Parameters
    ----------
    da : xarray.DataArray
        the input array
    dim : str
        dimension to sum over,
        e.g. "time"

    Returns
    -------
    xarray.DataArray
        the summed array
    """
    return da.sum(dim)


def scale(values: list[float], factor: Annotated[int, Field(ge=0, le=10)] = 1,
          mode: Literal["a", "b"] = "a", offset: Optional[float] = None) -> list[float]:
    """Multiply values.

    Args:
        values (list[float]): the numbers
            to multiply.
        factor: how much, 0 to 10.
        mode: "a" or "b".

    Returns:
        list[float]: the scaled numbers.
    """
    return [v * factor + (offset or 0) for v in values]


def combine(first: int, /, *rest: int, sep: str = ",", strict: bool, **extra: float) -> str:
    """Join numbers.

    Parameters
    ----------
    first : the first number
    rest : more numbers
    """
    return sep.join(map(str, (first, *rest)))


def summarize(frame: pandas.DataFrame, how=MISSING, limit: int | None = 3) -> dict[str, float]:
    """Summary statistics of a table; ``frame`` is annotated with a name known only to type checkers."""
    return {"rows": float(len(frame)), "default_how": float(how is MISSING), "limit": float(limit or 0)}


def untyped(x, y=2):
    return x


class Stats:
    """Statistics with a fixed number of degrees of freedom.

    Parameters
    ----------
    ddof : int
        delta degrees of freedom
    """

    def __init__(self, ddof: int = 0):
        self.ddof = ddof

    def std(self, values: list[float]) -> float:
        """Standard deviation of ``values``."""
        mean = sum(values) / len(values)
        return (sum((v - mean) ** 2 for v in values) / (len(values) - self.ddof)) ** 0.5

    @staticmethod
    def norm(x: float, y: float = 0.0) -> float:
        """Euclidean norm of (x, y)."""
        return (x * x + y * y) ** 0.5

    @classmethod
    def default(cls, *, verbose: bool = False) -> Stats:
        """A Stats with ddof=1."""
        return cls(1)

    @property
    def label(self) -> str:
        return f"ddof={self.ddof}"

    def _private(self) -> None:
        pass
