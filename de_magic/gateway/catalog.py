"""What the gateway knows of the live backends: the broker's listing, kept briefly, and per member
the JSON Schema its arguments are checked against before a call leaves (a 422 names the field).

A listing is asked for again after :data:`FRESH` seconds, or at once when a call names a backend
or member the kept one does not have (it may have just registered): so a new backend is callable
at its first call and a gone one answers 404, while a stream of calls costs no listing each.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from jsonschema import Draft202012Validator

from .problems import Problem

FRESH = 2.0  # seconds a listing is used before it is asked for again


@dataclass(frozen=True)
class Target:
    """A callable member: a function, or a class's method (then ``init`` checks the constructor's arguments)."""

    backend: str
    member: str
    method: str | None
    args: Draft202012Validator
    init: Draft202012Validator | None


def request_schema(entry: dict) -> dict:
    """A member's (or method's) arguments by name as a JSON Schema; names it does not take are refused,
    unless it takes ``**kwargs``."""
    schema = dict(entry.get("schema") or {"type": "object", "properties": {}})
    if not any(p.get("kind") == "VAR_KEYWORD" for p in entry.get("parameters", ())):
        schema["additionalProperties"] = False
    return schema


class Catalog:
    """The live listing through ``listing()`` (a :meth:`Client.listing` of the gateway's own client)."""

    def __init__(self, listing):
        self._listing = listing
        self._lock = threading.Lock()
        self._kept: dict | None = None
        self._at = 0.0
        self._targets: dict[tuple, tuple[str, Target]] = {}  # (backend, member, method) -> (api tag, target)

    def listing(self, fresh: bool = False) -> dict:
        """The listing with APIs, at most :data:`FRESH` seconds old (or asked for now)."""
        with self._lock:
            if fresh or self._kept is None or time.monotonic() - self._at > FRESH:
                self._kept, self._at = self._listing(), time.monotonic()
            return self._kept

    def _member(self, backend: str, member: str, method: str | None) -> tuple[dict, dict]:
        """The listing entry of ``backend`` and the API of its ``member``, or a 404 that says what there is."""
        entry = self.listing()["backends"].get(backend)
        if entry is None or not _has(entry, member, method):
            entry = self.listing(fresh=True)["backends"].get(backend)  # it may have registered just now
        if entry is None:
            live = ", ".join(sorted(self.listing()["backends"])) or "none"
            raise Problem("unknown_backend", f"no backend named {backend!r} is live; live backends: {live}")
        members = entry["api"]["members"]
        info = members.get(member)
        if info is None:
            raise Problem("unknown_method", f"backend {backend!r} has no member {member!r}; it has: "
                                            f"{', '.join(sorted(members)) or 'nothing'}")
        return entry, info

    def is_class(self, backend: str, member: str) -> bool:
        return self._member(backend, member, None)[1]["kind"] == "class"

    def target(self, backend: str, member: str, method: str | None) -> Target:
        """The member a route names, or a 404 that says what there is."""
        entry, info = self._member(backend, member, method)
        if (info["kind"] == "class") != (method is not None):
            where = f"/backends/{backend}/{member}/METHOD" if method is None else f"/backends/{backend}/{member}"
            raise Problem("unknown_method", f"{member!r} of backend {backend!r} is "
                                            f"{'a class: call one of its methods' if method is None else 'a function'}"
                                            f", at {where}")
        if method is not None and method not in info.get("methods", {}):
            raise Problem("unknown_method", f"class {member!r} of backend {backend!r} has no method {method!r}; it "
                                            f"has: {', '.join(info.get('methods', {})) or 'none'}")
        key = (backend, member, method)
        kept = self._targets.get(key)
        if kept is None or kept[0] != entry["api_tag"]:
            call = info["methods"][method] if method else info
            init = Draft202012Validator(request_schema(info)) if method else None
            kept = self._targets[key] = entry["api_tag"], Target(backend, member, method,
                                                                 Draft202012Validator(request_schema(call)), init)
        return kept[1]


def _has(entry: dict, member: str, method: str | None) -> bool:
    info = entry.get("api", {}).get("members", {}).get(member)
    return info is not None and (method is None or method in info.get("methods", {}))


def check(validator: Draft202012Validator, arguments, what: str = "") -> None:
    """A 422 naming the first argument that fails ``validator``'s schema."""
    error = next(iter(validator.iter_errors(arguments)), None)
    if error is None:
        return
    path = [str(part) for part in error.absolute_path]
    if error.validator == "required":
        given = arguments if isinstance(arguments, dict) else {}
        path = [next((n for n in error.validator_value if n not in given), "")]
    elif error.validator == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        path = [next((n for n in arguments if n not in allowed), "")]
    field = "/".join(([what] if what else []) + path)
    message = error.message if len(error.message) < 300 else error.message[:300] + "..."
    raise Problem("invalid", f"argument {field!r}: {message}" if field else message, field=field)
