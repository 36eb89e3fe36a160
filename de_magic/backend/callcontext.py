"""The call a backend is serving, as code running inside it sees it.

Backend functions report progress, relayed widgets find their caller and the
output capture routes text through :data:`current_call`; they import this small
module, never the backend server (as Pyro5 keeps its ``callcontext``).
"""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..wire import protocol as P

#: The call being served by this thread (for progress reports and output relays).
current_call: contextvars.ContextVar["Call | None"] = contextvars.ContextVar("de_magic_call", default=None)


@dataclass
class Call:
    """One request being served; ``emit`` sends an EVENT to its caller."""

    backend: object  #: the serving Backend: its ``answer(type, door, client, rid, header, *payload)`` sends
    door: int  #: index of the broker the call came through (a backend may be registered at several)
    client: bytes
    rid: bytes
    header: dict
    payload: list
    #: the caller's public key (Z85) as the broker or the direct endpoint authenticated it; "" without CURVE
    caller: str = ""
    thread_id: int | None = None
    done: bool = False
    #: a cancel interrupted it: a KeyboardInterrupt it raises then means "cancelled", else it is the member's own
    cancelled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def emit(self, event: str, data: dict | None = None, payload: list | None = None) -> None:
        """Send an intermediate event (progress, stream text, display data) to the caller."""
        header = {"event": event, **(data or {})}
        self.backend.answer(P.EVENT, self.door, self.client, self.rid, P.dump_header(header), *(payload or ()))

    @property
    def owner(self) -> str:
        """Whose jobs and references the call may touch: the key the broker (or the direct endpoint)
        authenticated, else, on a plaintext broker, the account the caller claims (nothing is proven there)."""
        return self.caller or f"user:{self.header.get('user', '')}"

    @property
    def key(self) -> tuple[int, bytes, bytes]:
        """What identifies the call: its broker, the caller's address there, and the request id."""
        return self.door, self.client, self.rid


@dataclass(frozen=True)
class Operation:
    """How the backend serves one kind of request (``header["op"]``)."""

    run: Callable[[Call], object]
    main_thread: bool = False
