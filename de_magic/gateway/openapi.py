"""The OpenAPI 3.1 document of the live backends: one path per member, made from the listing's schemas.

A member's JSON Schema (what ``describe`` makes of its signature) is the request body, an object
of arguments by name; its return schema is the ``200`` response.  Pydantic's ``$defs`` move to
``components/schemas`` under a name prefixed by backend and member, since in an OpenAPI document
a ``$ref`` resolves against the document, not against the schema it sits in.  The document is
made again only when the set of backends or one of their API tags changes (:class:`Documents`).
"""

from __future__ import annotations

import re
import threading

from .catalog import request_schema
from .problems import MEDIA_TYPE, SCHEMA as PROBLEM_SCHEMA

#: Statuses a call can end with besides 200, and why.
CALL_ERRORS = {
    "404": "no such backend or member", "413": "the body is larger than the broker's maximum message size",
    "422": "an argument fails the member's schema (the problem's field names it)",
    "502": "the remote code raised (the problem has its type and traceback)",
    "503": "the backend is busy, or was lost", "504": "no answer within the timeout",
}
AUTH_ERRORS = {"401": "no token, or an unknown one", "403": "the token's identity is not allowed (allow_clients)"}

JOB_SCHEMA = {
    "type": "object",
    "required": ["id", "status"],
    "properties": {
        "id": {"type": "string", "description": "backend:worker:token"},
        "what": {"type": "string"}, "backend": {"type": "string"},
        "status": {"enum": ["queued", "running", "done", "failed", "cancelled"]},
        "created": {"type": "number"}, "finished": {"type": ["number", "null"]},
        "progress": {"type": ["object", "null"], "description": "the latest report of the job's outermost loop"},
        "result": {"description": "once done: the value, in de-magic's JSON encoding"},
        "error": {"$ref": "#/components/schemas/Problem", "description": "once failed or cancelled"},
    },
}

TIMEOUT = {"name": "timeout", "in": "query", "required": False, "schema": {"type": "number", "exclusiveMinimum": 0},
           "description": "seconds to wait for the answer (default: the gateway's)"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _problems(codes: dict) -> dict:
    return {code: {"description": why, "content": {MEDIA_TYPE: {"schema": _ref("Problem")}}} for code, why in codes.items()}


class _Defs:
    """Moves ``$defs`` of member schemas into the components, rewriting their ``$ref``s."""

    def __init__(self, components: dict):
        self.components = components

    def lift(self, schema: dict, prefix: str) -> dict:
        defs = schema.get("$defs", {})
        names = {name: re.sub(r"[^A-Za-z0-9._-]", "_", f"{prefix}.{name}") for name in defs}
        for name, body in defs.items():
            self.components[names[name]] = self._rewrite(body, names)
        return self._rewrite({k: v for k, v in schema.items() if k != "$defs"}, names)

    def _rewrite(self, node, names: dict):
        if isinstance(node, dict):
            out = {k: self._rewrite(v, names) for k, v in node.items() if k != "$defs"}
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in names:
                out["$ref"] = f"#/components/schemas/{names[ref[8:]]}"
            return out
        if isinstance(node, list):
            return [self._rewrite(item, names) for item in node]
        return node


def document(listing: dict, authenticated: bool = False) -> dict:
    """The OpenAPI 3.1 document for ``listing`` (a broker listing with APIs)."""
    components = {"Problem": PROBLEM_SCHEMA, "Job": JOB_SCHEMA}
    defs = _Defs(components)
    errors = {**CALL_ERRORS, **(AUTH_ERRORS if authenticated else {})}
    paths: dict = {
        "/backends": {"get": {"operationId": "listBackends", "summary": "The live backends (the broker's listing)",
                              "responses": {"200": _json({"type": "object"}, "the listing"),
                                            **_problems({k: v for k, v in errors.items() if k in ("401", "403", "503", "504")})}}},
        "/jobs/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {"operationId": "getJob", "summary": "A job's status, progress and (once finished) result",
                    "responses": {"200": _json(_ref("Job"), "the job"), **_problems(errors)}},
            "delete": {"operationId": "cancelJob", "summary": "Cancel a job",
                       "responses": {"200": _json({"type": "object", "properties": {
                           "id": {"type": "string"}, "cancelled": {"type": "boolean"}}}, "whether it was still running"),
                           **_problems(errors)}}},
        "/jobs/{id}/events": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {"operationId": "jobEvents", "summary": "A job's progress and output as Server-Sent Events, "
                                                           "ending with an 'end' event that carries the job",
                    "responses": {"200": {"description": "events: status, progress, output, end",
                                          "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                                  **_problems(errors)}}},
    }
    for backend, entry in sorted(listing["backends"].items()):
        api = entry.get("api", {})
        for member, info in sorted(api.get("members", {}).items()):
            if info.get("kind") == "class":
                init = defs.lift(request_schema(info), f"{backend}.{member}")
                for method, call in sorted(info.get("methods", {}).items()):
                    args = defs.lift(request_schema(call), f"{backend}.{member}.{method}")
                    body = {"type": "object", "additionalProperties": False,
                            "properties": {"init": {**init, "description": f"arguments of {member}(...)"},
                                           "args": {**args, "description": f"arguments of .{method}(...)"}}}
                    _add(paths, f"/backends/{backend}/{member}/{method}", backend, f"{member}.{method}", call, body,
                         defs, errors)
            else:
                _add(paths, f"/backends/{backend}/{member}", backend, member, info,
                     defs.lift(request_schema(info), f"{backend}.{member}"), defs, errors)
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "de-magic gateway", "version": "1",
                 "description": "Every live backend behind the broker; arguments and results in de-magic's JSON encoding "
                                "(docs/json-encoding.md). Regenerated when a backend's API changes."},
        "paths": paths,
        "components": {"schemas": components},
    }
    if authenticated:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _add(paths: dict, path: str, backend: str, name: str, info: dict, body: dict, defs: _Defs, errors: dict) -> None:
    returns = defs.lift(dict((info.get("returns") or {}).get("schema") or {}), f"{backend}.{name}.return")
    operation_id = re.sub(r"[^A-Za-z0-9_]", "_", f"{backend}__{name}")
    summary = info.get("summary") or name
    request = {"required": False, "content": {"application/json": {"schema": body}}}
    paths[path] = {"post": {
        "operationId": operation_id, "summary": summary, "description": info.get("doc", ""),
        "tags": [backend], "parameters": [TIMEOUT], "requestBody": request,
        "responses": {"200": _json(returns, "the result, in de-magic's JSON encoding"), **_problems(errors)}}}
    paths[f"{path}/jobs"] = {"post": {
        "operationId": f"{operation_id}__job", "summary": f"Start {name} as a job", "tags": [backend],
        "requestBody": request,
        "responses": {"202": {"description": "started; Location: /jobs/{id}",
                              "headers": {"Location": {"schema": {"type": "string"}}},
                              "content": {"application/json": {"schema": _ref("Job")}}},
                      **_problems(errors)}}}


class Documents:
    """The document, made again only when the backends or their API tags change."""

    def __init__(self, authenticated: bool):
        self.authenticated = authenticated
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._doc: dict | None = None

    def of(self, listing: dict) -> dict:
        key = tuple(sorted((name, entry.get("api_tag")) for name, entry in listing["backends"].items()))
        with self._lock:
            if key != self._key:
                self._doc, self._key = document(listing, self.authenticated), key
            return self._doc
