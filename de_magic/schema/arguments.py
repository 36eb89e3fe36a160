"""Argument checks before a call runs: cheap ones from the type hints, full validation (no-pickle mode)."""

from __future__ import annotations

import inspect
import reprlib
import types
from numbers import Integral, Real
from typing import Annotated, Callable, Literal, NamedTuple, Union, get_args, get_origin

from pydantic import TypeAdapter  # a backend's module: the caller's side never imports this

from .annotations import annotation_text, hints_of, init_hints_of, json_schema

_VAR_POSITIONAL = inspect.Parameter.VAR_POSITIONAL
_VAR_KEYWORD = inspect.Parameter.VAR_KEYWORD


# -- argument checks ----------------------------------------------------------

#: Larger containers get their own type checked but not each item: checks must stay cheap.
MAX_CHECKED_ITEMS = 10_000

_Check = tuple[Callable[[object], bool], str, inspect._ParameterKind]
_POSITIONAL = frozenset({inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD})


class _Checker(NamedTuple):
    """What is learnt once of a member's signature."""

    sig: inspect.Signature
    checks: dict[str, _Check]
    limits: dict[str, TypeAdapter]
    name: str
    #: the parameters' names when all are positional (no ``*args``, ``**kw``, keyword-only): positional
    #: arguments alone are then bound by zipping, where ``Signature.bind`` costs a small call 4 µs
    positional: tuple[str, ...] | None
    required: int  #: how many of those have no default


_checkers: dict[object, _Checker] = {}


def check_arguments(func, args: tuple, kwargs: dict) -> None:
    """Raise TypeError if ``func(*args, **kwargs)`` clearly cannot be a valid call; never converts anything.

    Missing and unexpected arguments are caught, and values whose type does not
    match a simple annotation (int, float, str, bool, None, Literal, unions and
    builtin containers of those), and isinstance for other classes (numpy, xarray,
    the backend's own; see :func:`_instance_of`).  Anything else passes.
    Values outside the bounds an ``Annotated`` hint declares (``Field(le=10)``)
    raise ValueError: the schema promises them to callers, so the call honours them.
    """
    target = getattr(func, "__func__", func)  # bound methods are new objects at each access
    try:
        checker = _checkers[target]
    except KeyError:
        checker = _checkers[target] = _compile_checks(target)
    sig, checks, limits, name, positional, required = checker
    if target is not func:
        args = (func.__self__, *args)
    if not kwargs and positional is not None and required <= len(args) <= len(positional):
        arguments = dict(zip(positional, args))
    else:
        try:
            arguments = sig.bind(*args, **kwargs).arguments
        except TypeError as exc:
            raise TypeError(f"{name}() {exc}") from None
    for key, value in arguments.items():
        check = checks.get(key)
        if check is None:
            continue
        accepts, expected, kind = check
        for item in (value if kind is _VAR_POSITIONAL else value.values() if kind is _VAR_KEYWORD else (value,)):
            if not accepts(item):
                raise TypeError(f"{name}() argument {key!r}: expected {expected}, "
                                f"got {type(item).__name__} ({reprlib.repr(item)})")
    for key, adapter in limits.items():
        if key in arguments:
            try:
                adapter.validate_python(arguments[key])
            except ValueError as exc:  # pydantic's ValidationError
                reason = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
                raise ValueError(f"{name}() argument {key!r}: {reason}, got {reprlib.repr(arguments[key])}") from None


def _compile_checks(func) -> _Checker:
    hints = init_hints_of(func) if inspect.isclass(func) else hints_of(func)
    sig = inspect.signature(func)
    checks, limits = {}, {}
    for p in sig.parameters.values():
        hint = hints.get(p.name)
        if p.name in hints and (accepts := _accepts(hint)) is not None:
            checks[p.name] = accepts, annotation_text(hint), p.kind
        if get_origin(hint) is Annotated and p.kind not in (_VAR_POSITIONAL, _VAR_KEYWORD):
            try:
                limits[p.name] = TypeAdapter(hint)
            except Exception:  # noqa: BLE001 - a hint pydantic cannot build a validator for sets no limits
                pass
    params = sig.parameters.values()
    positional = tuple(p.name for p in params) if all(p.kind in _POSITIONAL for p in params) else None
    required = sum(p.default is inspect.Parameter.empty for p in params)
    return _Checker(sig, checks, limits, getattr(func, "__qualname__", repr(func)), positional, required)


_SCALARS: dict[type, Callable[[object], bool]] = {
    int: lambda v: isinstance(v, (int, Integral)),  # Integral: numpy integers too
    float: lambda v: isinstance(v, (float, Real)),  # int is fine where float is expected
    str: lambda v: isinstance(v, str),
    # numpy's bool scalar (bool_ in numpy 1, bool in 2) is no bool subclass: known by name, not importing numpy
    bool: lambda v: type(v).__name__ in ("bool", "bool_"),
    type(None): lambda v: v is None,
}
_CONTAINERS = {list: (list, tuple), tuple: (tuple, list), set: (set, frozenset), frozenset: (frozenset, set),
               dict: dict}


def _accepts(hint) -> Callable[[object], bool] | None:
    """A cheap test of values against ``hint``, or None when there is none (then every value passes)."""
    if hint is None:
        return _SCALARS[type(None)]
    origin, args = get_origin(hint) or hint, get_args(hint)
    if origin is Annotated:
        return _accepts(args[0])
    if origin is Literal:
        types_ = {type(a) for a in args}  # compare only same-typed values: arrays have no truth value
        return lambda v: type(v) in types_ and v in args
    if origin in (Union, types.UnionType):
        members = [_accepts(a) for a in args]
        return None if None in members else lambda v: any(accepts(v) for accepts in members)
    if isinstance(origin, type) and origin in _CONTAINERS:
        return _container_accepts(origin, args)
    if not isinstance(hint, type):
        return None
    return _SCALARS.get(hint) or _instance_of(hint)


def _instance_of(cls: type) -> Callable[[object], bool] | None:
    """An isinstance test for a class pydantic cannot build from data (numpy, xarray, the backend's own).

    Classes it can (models, dataclasses, enums) are left out: in no-pickle mode their values arrive as data
    and :func:`validate_arguments` converts them.  So are classes isinstance cannot test (protocols).
    """
    if "x-python-type" not in json_schema(cls, "validation"):
        return None
    try:
        isinstance(None, cls)
    except TypeError:
        return None
    return lambda v: isinstance(v, cls)


def _container_accepts(origin: type, args: tuple) -> Callable[[object], bool]:
    accepted = _CONTAINERS[origin]
    if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[int, str]: one test per position
        positions = [_accepts(a) or (lambda v: True) for a in args]
        return lambda v: (isinstance(v, accepted) and len(v) == len(positions)
                          and all(accepts(x) for accepts, x in zip(positions, v)))
    if origin is dict:
        keys, values = map(_accepts, args) if args else (None, None)
        return lambda v: isinstance(v, dict) and (
            len(v) > MAX_CHECKED_ITEMS
            or ((keys is None or all(map(keys, v))) and (values is None or all(map(values, v.values())))))
    items = _accepts(args[0]) if args else None
    return lambda v: isinstance(v, accepted) and (items is None or len(v) > MAX_CHECKED_ITEMS or all(map(items, v)))


# -- full validation (no-pickle mode) -------------------------------------------

_validators: dict[object, tuple[inspect.Signature, dict[str, tuple[TypeAdapter, inspect._ParameterKind]]]] = {}


def validate_arguments(func, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``(args, kwargs)`` validated against ``func``'s schema by pydantic, constraints included.

    For callers that are trusted less (no-pickle backends): beyond
    :func:`check_arguments`, bounds, patterns and nested models are enforced,
    and values come back as pydantic made them (``[1, 2]`` for ``list[float]``
    becomes ``[1.0, 2.0]``).  Annotations pydantic cannot use are left to
    :func:`check_arguments`, which runs first.
    """
    check_arguments(func, args, kwargs)
    target = getattr(func, "__func__", func)
    try:
        sig, adapters = _validators[target]
    except KeyError:
        sig, adapters = _validators[target] = _compile_validators(target)
    if target is not func:
        args = (func.__self__, *args)
    bound = sig.bind(*args, **kwargs)
    for key, value in bound.arguments.items():
        if key not in adapters:
            continue
        adapter, kind = adapters[key]
        try:
            if kind is _VAR_POSITIONAL:
                bound.arguments[key] = tuple(adapter.validate_python(v) for v in value)
            elif kind is _VAR_KEYWORD:
                bound.arguments[key] = {k: adapter.validate_python(v) for k, v in value.items()}
            else:
                bound.arguments[key] = adapter.validate_python(value)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise TypeError(f"{getattr(target, '__qualname__', target)}() argument {key!r}: {exc}") from None
    args = bound.args[1:] if target is not func else bound.args
    return tuple(args), dict(bound.kwargs)


def _compile_validators(func):
    hints = init_hints_of(func) if inspect.isclass(func) else hints_of(func)
    adapters = {}
    for p in inspect.signature(func).parameters.values():
        hint = hints.get(p.name)
        if hint is None or isinstance(hint, str):
            continue
        try:
            adapters[p.name] = TypeAdapter(hint, config={"arbitrary_types_allowed": True}), p.kind
        except Exception:  # noqa: BLE001 - a type pydantic cannot validate: check_arguments covers it
            continue
    return inspect.signature(func), adapters
