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

import inspect
import types
from typing import Callable


from .annotations import annotation_text, hints_of, init_hints_of, json_schema, to_json, verbatim
from .docstrings import doc_sections, parse_docstring, summary_of

_EMPTY = inspect.Parameter.empty
_VAR_POSITIONAL = inspect.Parameter.VAR_POSITIONAL
_VAR_KEYWORD = inspect.Parameter.VAR_KEYWORD


def describe(name: str, members: dict[str, object], doc: str = "") -> dict:
    """The JSON-serialisable API description of a backend serving ``members``."""
    return {"name": name, "doc": inspect.cleandoc(doc), "sections": doc_sections(doc),
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


# -- members ------------------------------------------------------------------


def _describe_member(name: str, obj) -> dict:
    if not inspect.isclass(obj):
        return _describe_callable(name, "function", inspect.signature(obj), hints_of(obj), _doc(obj))
    doc = _doc(obj)
    init_doc = _doc(obj.__init__) if inspect.isfunction(obj.__init__) else ""  # numpydoc allows either place
    entry = _describe_callable(name, "class", inspect.signature(obj), init_hints_of(obj), doc,
                               documented=f"{doc}\n\n{init_doc}")
    entry["methods"] = {key: _describe_callable(key, "method", sig, hints_of(func), _doc(func))
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
    entry = {"name": name, "kind": kind, "signature": str(text_sig), "summary": summary_of(doc), "doc": doc,
             "sections": doc_sections(doc), "parameters": params}
    if kind != "class":
        entry["returns"] = {"annotation": annotation_text(returns), "doc": returns_doc,
                            "schema": json_schema(returns, "serialization")}
    entry["schema"] = _object_schema(name, params)
    return entry


def _parameter(p: inspect.Parameter, hint, doc: str) -> dict:
    schema = json_schema(hint, "validation")
    if p.kind is _VAR_POSITIONAL:
        schema = {"type": "array", "items": schema}
    elif p.kind is _VAR_KEYWORD:
        schema = {"type": "object", "additionalProperties": schema}
    default = None
    if p.default is not _EMPTY:
        try:
            default = schema["default"] = to_json(p.default)
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
