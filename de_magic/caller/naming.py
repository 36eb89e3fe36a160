"""How errors name a request: by what the user called (backend, member, broker); an internal endpoint, such
as a worker's direct one, only as a detail of how the request went."""

from __future__ import annotations

from .routes import Endpoint


def called(backend: str, header: dict) -> str:
    """What the user called, for error messages: ``backend.member`` (``.method``), or a job or session operation."""
    if "member" in header:
        return ".".join([backend, header["member"], *([header["method"]] if "method" in header else [])])
    return f"{backend} ({header.get('op', 'call')})"


def place(url: str, endpoint: Endpoint | None) -> str:
    """How a request went, as a detail of an error: the broker, or a worker's direct endpoint."""
    return f"sent straight to its worker's direct endpoint {url}" if endpoint is not None else f"via the broker at {url}"


def knower(url: str, endpoint: Endpoint | None) -> str:
    """Who forgot a request: the broker, or the worker a direct call went to."""
    return f"its worker (direct endpoint {url})" if endpoint is not None else f"the broker at {url}"
