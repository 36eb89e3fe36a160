"""The rules a call meets on its way in, wherever it arrives: one copy for both paths.

A call reaches a backend through a broker (:mod:`de_magic.broker.routing`) or straight at the
backend's direct endpoint (:mod:`de_magic.backend.core`).  Both ask these functions, so a caller
refused, queued or told "busy" on one path is treated the same on the other (the property test in
tests/test_worker_core.py drives both side by side).  Plain logic: no sockets, no clocks.
"""

from __future__ import annotations

from typing import Callable, Mapping

from . import protocol as P

#: Request ids one QUERY may ask after.
MAX_QUERY = 10_000
#: Seconds (at least) a caller holds its waiting calls without asking after them (see :func:`caller_lease`).
MIN_CALLER_LEASE = 10.0


def caller_lease(heartbeat: float, liveness: int) -> float:
    """How long a waiting call's caller may be silent (no CALL, CANCEL or QUERY) before the call is dropped
    when its turn comes, instead of running while live callers wait: a gone client's calls do not run."""
    return max(MIN_CALLER_LEASE, heartbeat * liveness)


def silent(heard: Mapping[bytes, float], caller: bytes, now: float, lease: float) -> bool:
    """Whether ``caller`` (``heard``: when each caller last sent a CALL, CANCEL or QUERY) has been silent for
    longer than its lease; one forgotten by the last sweep of ``heard`` counts as heard a lease before time 0."""
    return now - heard.get(caller, -lease) > lease


def abandoned(lease: float) -> str:
    """Why a waiting call whose caller went silent was dropped (Cancelled)."""
    return f"dropped before it started: its caller did not ask after it for {lease:g} s"


def admits(allowed: frozenset[str] | None, key: str | None, names: Mapping[str, str], curve: bool) -> bool:
    """Whether the caller with ``key`` may call a backend whose ``allow_clients`` is ``allowed``.

    Under CURVE the key must still be one the broker lets in (``names``: key -> key file name), so a key
    deleted from the allowed directory stops working on open connections too.  Without CURVE nobody's key
    is proven, so a backend that names its callers lets nobody in: it fails closed.
    """
    if curve and (key is None or key not in names):
        return False
    if allowed is None:
        return True
    return key is not None and (key in allowed or names.get(key) in allowed)


def refusal(name: str, key: str | None) -> str:
    if key is None:
        return (f"backend {name!r} accepts calls only from the keys it names (allow_clients), and this caller "
                "has no proven key: call it through a CURVE broker with a key pair")
    return f"backend {name!r} does not accept calls from this caller's key"


def duplicate(rid: bytes) -> P.ProtocolError:
    """A request id that is in use: not answered, as an answer would give that id two final answers."""
    return P.ProtocolError(f"request id {rid.hex()} is already in use by this caller")


def too_large(size: int, limit: int, whose: str) -> str | None:
    """Why a call of ``size`` bytes is refused (PayloadTooLarge), or None if it fits."""
    if size <= limit:
        return None
    return f"call of {size} bytes exceeds {whose} maximum message size of {limit} bytes"


def gone(worker: bytes, name: str, why: str = "it held this call's session or references") -> str:
    """A call pinned to a worker that is not there (BackendLost)."""
    return f"worker {worker.hex()} of backend {name!r} is gone ({why})"


def queue_refusal(name: str, waiting: int, room: int, slots: int, queued_bytes: int, size: int, max_bytes: int,
                  holder: str) -> str | None:
    """Why a call may not wait for a slot (Busy), or None if it may: queues are bounded by count per backend
    and by bytes per ``holder`` (the broker, or the backend's direct endpoint)."""
    if waiting >= room:
        return f"backend {name!r} is busy: all {slots} slots working and {waiting} calls queued"
    if queued_bytes + size > max_bytes:
        return (f"{holder} is busy: {queued_bytes} bytes of calls wait in its queues (limit {max_bytes}); "
                "try again soon")
    return None


def query_states(msg: P.Query, pending: Callable[[bytes], bool]) -> list[bytes]:
    """The STATUS frames that answer a QUERY: each id, then PENDING or UNKNOWN."""
    if len(msg.more) >= MAX_QUERY:
        raise P.ProtocolError(f"QUERY of more than {MAX_QUERY} requests", msg.rid)
    states: list[bytes] = []
    for rid in msg.ids():
        states += (rid, P.PENDING if pending(rid) else P.UNKNOWN)
    return states


def compact_due(dead: int, waiting: int) -> bool:
    """Whether a queue with lazy deletion should drop its ``dead`` entries now, so cancels cannot pile up."""
    return dead > 64 + 2 * waiting
