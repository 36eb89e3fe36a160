"""Type annotations as text, the same on every side: what signatures, listings and generated modules show."""

from __future__ import annotations

import copy
import inspect
import json
import sys
import types
import typing
from functools import cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin


_EMPTY = inspect.Parameter.empty


# -- annotations as text ------------------------------------------------------


class Verbatim(str):
    """Text that :mod:`inspect` prints as written (not quoted) when used as an annotation or default."""

    def __repr__(self) -> str:
        return str(self)


def annotation_text(hint) -> str | None:
    """``hint`` as a reader would write it: ``list[float]``, ``float | None``, ``xarray.DataArray``."""
    if hint is _EMPTY:
        return None
    if isinstance(hint, str):  # an annotation that could not be resolved stays as written
        return hint
    if hint is None or hint is type(None):
        return "None"
    if hint is Ellipsis:
        return "..."
    if isinstance(hint, list):  # the argument list of Callable[[int], str]
        return f"[{', '.join(map(annotation_text, hint))}]"
    if isinstance(hint, (typing.TypeVar, typing.ForwardRef)):
        return getattr(hint, "__name__", None) or hint.__forward_arg__
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:  # the metadata ends up in the JSON Schema, not in the text
        return annotation_text(args[0])
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin in (Union, types.UnionType):
        return " | ".join(map(annotation_text, args))
    if origin is not None and args:
        return f"{annotation_text(origin)}[{', '.join(map(annotation_text, args))}]"
    if isinstance(hint, type):
        return _class_name(hint)
    return repr(hint).removeprefix("typing.")


@cache
def _class_name(cls: type) -> str:
    """The shortest public dotted name of a class: ``xarray.DataArray``, not ``xarray.core.dataarray.DataArray``."""
    if cls.__module__ in ("builtins", "typing", "__main__"):
        return cls.__qualname__
    parts = cls.__module__.split(".")
    for i in range(1, len(parts)):
        package = ".".join(parts[:i])
        if getattr(sys.modules.get(package), cls.__qualname__, None) is cls:
            return f"{package}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def hints_of(func) -> dict[str, Any]:
    """Resolved annotations of ``func``; those that cannot be resolved stay strings."""
    try:
        return typing.get_type_hints(func, include_extras=True)
    except Exception:  # noqa: BLE001 - e.g. a name imported only under TYPE_CHECKING
        namespace = getattr(func, "__globals__", {})
        return {key: _resolve(value, namespace) for key, value in getattr(func, "__annotations__", {}).items()}


def _resolve(annotation, namespace: dict):
    """One annotation evaluated as get_type_hints would, so one unknown name does not lose the others."""
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, namespace)  # noqa: S307 - the backend's own annotation, as get_type_hints does
    except Exception:  # noqa: BLE001 - anything that does not evaluate is kept as text
        return annotation


def init_hints_of(cls: type) -> dict[str, Any]:
    """Hints of a class's constructor parameters (none when it inherits object's)."""
    return hints_of(cls.__init__) if inspect.isfunction(cls.__init__) else {}


def verbatim(text: str | None):
    """Text as an annotation or default that inspect prints as written; None: no annotation."""
    return _EMPTY if text is None else Verbatim(text)


# -- JSON Schema --------------------------------------------------------------

_schema_cache: dict[tuple[object, str], dict] = {}


def json_schema(hint, mode: str) -> dict:
    """JSON Schema of ``hint`` (a fresh dict: callers add keys); TypeAdapters are slow to build, so cached."""
    if hint is _EMPTY:
        return {}
    try:
        schema = _schema_cache.get((hint, mode))
    except TypeError:  # unhashable metadata inside Annotated
        return _build_schema(hint, mode)
    if schema is None:
        schema = _schema_cache[hint, mode] = _build_schema(hint, mode)
    return copy.deepcopy(schema)


def _build_schema(hint, mode: str) -> dict:
    if not isinstance(hint, str):
        try:
            from pydantic import TypeAdapter  # only when a backend describes itself: pydantic is slow to import

            return TypeAdapter(hint).json_schema(mode=mode)
        except Exception:  # noqa: BLE001 - numpy, xarray, arbitrary classes: describe, never fail
            pass
    text = annotation_text(hint)
    return {"description": text, "x-python-type": text}


def to_json(value):
    """``value`` as plain JSON data (tuples become lists); TypeError/ValueError if it has none."""
    return json.loads(json.dumps(value, allow_nan=False))
