"""Signatures rebuilt from an API description: one rule for proxies and generated client modules."""

from __future__ import annotations

import ast
import inspect
from typing import Callable

from .annotations import verbatim

_VARIADIC = ("VAR_POSITIONAL", "VAR_KEYWORD")


def has_default(param: dict) -> bool:
    return not param.get("required", True) and param.get("kind") not in _VARIADIC


def default_value(param: dict):
    """The default as an object: its value when the description's text is a literal, else that text."""
    text = param.get("default_repr") or "..."
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return verbatim(text)


def signature_from(entry: dict, default: Callable[[dict], object] = default_value,
                   annotation: Callable[[dict], str | None] = lambda p: p.get("annotation")) -> inspect.Signature:
    """The :class:`inspect.Signature` an API description entry describes.

    ``default(param)`` gives what a parameter with a default shows, ``annotation(param_or_returns)``
    the annotation text (None for none); both are shown verbatim, as the backend wrote them.
    """
    params = [inspect.Parameter(p["name"], getattr(inspect.Parameter, p.get("kind", "POSITIONAL_OR_KEYWORD")),
                                default=default(p) if has_default(p) else inspect.Parameter.empty,
                                annotation=verbatim(annotation(p)))
              for p in entry.get("parameters", [])]
    return inspect.Signature(params, return_annotation=verbatim(annotation(entry.get("returns") or {})))
