"""A call and its answer as the caller encodes and decodes them (the client, jobs and sessions alike)."""

from __future__ import annotations

from ..wire import serialize
from . import refs


def encode_call(backend: str, member: str, args: tuple, kwargs: dict | None, method: str | None, init, keep: bool,
                codec: str) -> tuple[dict, list, bytes]:
    """The header and payload frames of a call of ``member`` (or of its ``method``, with ``init``), and the worker
    the remote references among its arguments pin it to (b"": any); ``keep``: the result stays there."""
    header = {"member": member}
    body = (tuple(args), dict(kwargs or {}))
    if method is not None:
        header["method"] = method
        body += tuple(init or ((), {}))
    if codec == serialize.JSON:
        header["codec"] = serialize.JSON
        return header, serialize.dumps_json([list(part) if i % 2 == 0 else part for i, part in enumerate(body)]), b""
    payload, worker = refs.pack(backend, header, body, keep)
    return header, payload, worker


def decode_result(header: dict, frames: list):
    """The value an answer's frames carry, by the codec its header names."""
    if header.get("codec") == serialize.JSON:
        return serialize.loads_json(frames)
    return serialize.loads(frames)
