"""The API description of a backend, built from plain Python objects.

Clients never import a backend's code: all they know about it (what can be
called, with which arguments, what those mean and which values are valid) is
the JSON made here from signatures, type hints and docstrings.  That JSON feeds
``help()`` and Tab completion of remote proxies, generated client modules, and
the forms of the JupyterLab sidebar (through its JSON Schema).  The same hints
let the backend refuse clearly wrong arguments with a readable message before
running a call, rather than failing somewhere deep inside the user's code.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import reprlib
import sys
import types
import typing
from functools import cache
from numbers import Integral, Real
from typing import Annotated, Any, Callable, Literal, Union, get_args, get_origin

from pydantic import TypeAdapter

_EMPTY = inspect.Parameter.empty
_VAR_POSITIONAL = inspect.Parameter.VAR_POSITIONAL
_VAR_KEYWORD = inspect.Parameter.VAR_KEYWORD


def describe(name: str, members: dict[str, object], doc: str = "") -> dict:
    """The JSON-serialisable API description of a backend serving ``members``."""
    return {"name": name, "doc": inspect.cleandoc(doc),
            "members": {key: _describe_member(key, obj) for key, obj in members.items()}}


def members_of(module: types.ModuleType | dict) -> dict[str, object]:
    """What a module (or its namespace) serves unless told otherwise: ``__all__``, else its own public
    functions and classes.  The one rule, for ``de-magic serve|schema|generate`` and ``python backend.py ...``."""
    namespace = module if isinstance(module, dict) else vars(module)
    names = namespace.get("__all__")
    if names is not None:
        # Constants listed in __all__ are fine for importers but cannot be called remotely.
        return {n: obj for n in names if callable(obj := namespace[n])}
    return {n: obj for n, obj in namespace.items()
            if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == namespace["__name__"]}


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


def _hints(func) -> dict[str, Any]:
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


def _init_hints(cls: type) -> dict[str, Any]:
    """Hints of a class's constructor parameters (none when it inherits object's)."""
    return _hints(cls.__init__) if inspect.isfunction(cls.__init__) else {}


# -- docstrings ---------------------------------------------------------------

_UNDERLINE = re.compile(r"^\s*-{3,}\s*$")
_GOOGLE_HEADER = re.compile(
    r"^\s*(Args|Arguments|Parameters|Keyword Args|Keyword Arguments|Other Parameters|Returns?|Yields?):\s*$")
_GOOGLE_PARAM = re.compile(r"^\*{0,2}(\w+)\s*(?:\(.*\))?\s*:\s*(.*)$")
_GOOGLE_RETURN_TYPE = re.compile(r"^[\w.]+(?:\[.*?\])?:\s+")
_PARAM_SECTIONS = {"args", "arguments", "parameters", "keyword args", "keyword arguments", "other parameters"}
_RETURN_SECTIONS = {"returns", "return", "yields", "yield"}


def parse_docstring(doc: str) -> tuple[dict[str, str], str]:
    """Per-parameter docs and the returns doc of a numpydoc or Google style docstring."""
    params: dict[str, str] = {}
    returns: list[str] = []
    for title, body, numpy in _sections(inspect.cleandoc(doc).splitlines()):
        items = _items(body)
        if title in _PARAM_SECTIONS:
            for head, desc in items:
                if numpy:
                    names, _, after = head.partition(":")
                    # "name : type" is followed by an indented description; the short "name : text" is not.
                    text = " ".join(desc) if desc else after.strip()
                    params.update((n.strip().lstrip("*"), text) for n in names.split(","))
                elif match := _GOOGLE_PARAM.match(head):
                    params[match[1]] = " ".join([match[2], *desc]).strip()
        elif title in _RETURN_SECTIONS:
            if numpy:  # "type" or "name : type", described by the indented lines below it
                returns += [" ".join(desc) if desc else head for head, desc in items]
            else:
                returns.append(_GOOGLE_RETURN_TYPE.sub("", " ".join(" ".join([h, *d]) for h, d in items), count=1))
    return params, "\n".join(returns)


def _sections(lines: list[str]):
    """(lowercase title, body lines, is numpydoc) of each section of a cleaned docstring."""

    def numpy_header(k: int) -> bool:
        return k + 1 < len(lines) and bool(lines[k].strip()) and bool(_UNDERLINE.match(lines[k + 1]))

    i = 0
    while i < len(lines):
        if numpy_header(i):
            end = i + 2
            while end < len(lines) and not numpy_header(end):
                end += 1
            yield lines[i].strip().lower(), lines[i + 2:end], True
        elif match := _GOOGLE_HEADER.match(lines[i]):
            indent, end = _indent(lines[i]), i + 1
            while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
                end += 1
            yield match[1].lower(), lines[i + 1:end], False
        else:
            end = i + 1
        i = end


def _items(body: list[str]) -> list[tuple[str, list[str]]]:
    """A section body as (header line, [more-indented description lines]) pairs."""
    lines = [line for line in body if line.strip()]
    base = min(map(_indent, lines), default=0)
    items: list[tuple[str, list[str]]] = []
    for line in lines:
        if _indent(line) == base:
            items.append((line.strip(), []))
        elif items:
            items[-1][1].append(line.strip())
    return items


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _summary(doc: str) -> str:
    return " ".join(re.split(r"\n\s*\n", doc, maxsplit=1)[0].split())


# -- JSON Schema --------------------------------------------------------------

_schema_cache: dict[tuple[object, str], dict] = {}


def _json_schema(hint, mode: str) -> dict:
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
            return TypeAdapter(hint).json_schema(mode=mode)
        except Exception:  # noqa: BLE001 - numpy, xarray, arbitrary classes: describe, never fail
            pass
    text = annotation_text(hint)
    return {"description": text, "x-python-type": text}


def _to_json(value):
    """``value`` as plain JSON data (tuples become lists); TypeError/ValueError if it has none."""
    return json.loads(json.dumps(value, allow_nan=False))


# -- members ------------------------------------------------------------------


def _describe_member(name: str, obj) -> dict:
    if not inspect.isclass(obj):
        return _describe_callable(name, "function", inspect.signature(obj), _hints(obj), _doc(obj))
    doc = _doc(obj)
    init_doc = _doc(obj.__init__) if inspect.isfunction(obj.__init__) else ""  # numpydoc allows either place
    entry = _describe_callable(name, "class", inspect.signature(obj), _init_hints(obj), doc,
                               documented=f"{doc}\n\n{init_doc}")
    entry["methods"] = {key: _describe_callable(key, "method", sig, _hints(func), _doc(func))
                        for key, (func, sig) in _methods(obj).items()}
    return entry


def _doc(obj) -> str:
    # obj.__doc__ rather than inspect.getdoc: a class without a docstring must not show its base class's.
    return inspect.cleandoc(obj.__doc__ or "")


def _methods(cls: type) -> dict[str, tuple[Callable, inspect.Signature]]:
    """Public methods (instance, static, class) of ``cls`` and their signatures without self/cls."""
    found = {}
    for klass in reversed(cls.__mro__[:-1]):  # base classes first, so overrides win
        for key, attr in vars(klass).items():
            if key.startswith("_"):
                continue
            func = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
            if not inspect.isfunction(func):  # properties, attributes, nested classes
                found.pop(key, None)
                continue
            sig = inspect.signature(func)
            if not isinstance(attr, staticmethod):
                sig = sig.replace(parameters=list(sig.parameters.values())[1:])
            found[key] = func, sig
    return found


def _describe_callable(name: str, kind: str, sig: inspect.Signature, hints: dict, doc: str,
                       documented: str | None = None) -> dict:
    param_docs, returns_doc = parse_docstring(doc if documented is None else documented)
    params = [_parameter(p, hints.get(p.name, _EMPTY), param_docs.get(p.name, "")) for p in sig.parameters.values()]
    returns = hints.get("return", _EMPTY) if kind != "class" else _EMPTY
    text_sig = sig.replace(
        parameters=[p.replace(annotation=verbatim(entry["annotation"]))
                    for p, entry in zip(sig.parameters.values(), params)],
        return_annotation=verbatim(annotation_text(returns)))
    entry = {"name": name, "kind": kind, "signature": str(text_sig), "summary": _summary(doc), "doc": doc,
             "parameters": params}
    if kind != "class":
        entry["returns"] = {"annotation": annotation_text(returns), "doc": returns_doc,
                            "schema": _json_schema(returns, "serialization")}
    entry["schema"] = _object_schema(name, params)
    return entry


def verbatim(text: str | None):
    """Text as an annotation or default that inspect prints as written; None: no annotation."""
    return _EMPTY if text is None else Verbatim(text)


def _parameter(p: inspect.Parameter, hint, doc: str) -> dict:
    schema = _json_schema(hint, "validation")
    if p.kind is _VAR_POSITIONAL:
        schema = {"type": "array", "items": schema}
    elif p.kind is _VAR_KEYWORD:
        schema = {"type": "object", "additionalProperties": schema}
    default = None
    if p.default is not _EMPTY:
        try:
            default = schema["default"] = _to_json(p.default)
        except (TypeError, ValueError):  # not JSON data: only default_repr tells what it is
            pass
    if doc:
        schema["description"] = doc
    return {"name": p.name, "kind": p.kind.name, "annotation": annotation_text(hint),
            "required": p.default is _EMPTY and p.kind not in (_VAR_POSITIONAL, _VAR_KEYWORD),
            "default": default, "default_repr": None if p.default is _EMPTY else repr(p.default),
            "doc": doc, "schema": schema}


def _object_schema(title: str, params: list[dict]) -> dict:
    """All parameters as the properties of one object: what a form for the call needs.

    ``*args`` is an array property and ``**kwargs`` an object property, like the
    others.  ``$defs`` (pydantic models, enums) move to the top so that the
    properties' ``$ref``s resolve.
    """
    properties, defs = {}, {}
    for p in params:
        properties[p["name"]] = {key: value for key, value in p["schema"].items() if key != "$defs"}
        defs.update(p["schema"].get("$defs", {}))
    schema = {"type": "object", "title": title, "properties": properties,
              "required": [p["name"] for p in params if p["required"]]}
    if defs:
        schema["$defs"] = defs
    return schema


# -- argument checks ----------------------------------------------------------

#: Larger containers get their own type checked but not each item: checks must stay cheap.
MAX_CHECKED_ITEMS = 10_000

_Check = tuple[Callable[[object], bool], str, inspect._ParameterKind]
_checkers: dict[object, tuple[inspect.Signature, dict[str, _Check], dict[str, TypeAdapter], str]] = {}


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
        sig, checks, limits, name = _checkers[target]
    except KeyError:
        sig, checks, limits, name = _checkers[target] = _compile_checks(target)
    if target is not func:
        args = (func.__self__, *args)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{name}() {exc}") from None
    for key, value in bound.arguments.items():
        check = checks.get(key)
        if check is None:
            continue
        accepts, expected, kind = check
        for item in (value if kind is _VAR_POSITIONAL else value.values() if kind is _VAR_KEYWORD else (value,)):
            if not accepts(item):
                raise TypeError(f"{name}() argument {key!r}: expected {expected}, "
                                f"got {type(item).__name__} ({reprlib.repr(item)})")
    for key, adapter in limits.items():
        if key in bound.arguments:
            try:
                adapter.validate_python(bound.arguments[key])
            except ValueError as exc:  # pydantic's ValidationError
                reason = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
                raise ValueError(f"{name}() argument {key!r}: {reason}, got {reprlib.repr(bound.arguments[key])}") from None


def _compile_checks(func) -> tuple[inspect.Signature, dict[str, _Check], dict[str, TypeAdapter], str]:
    hints = _init_hints(func) if inspect.isclass(func) else _hints(func)
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
    return sig, checks, limits, getattr(func, "__qualname__", repr(func))


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
    if "x-python-type" not in _json_schema(cls, "validation"):
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
    hints = _init_hints(func) if inspect.isclass(func) else _hints(func)
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
