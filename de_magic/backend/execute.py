"""Code cells on a backend: the ``exec``, ``end`` and ``comm`` operations.

A backend started with ``--allow-code`` serves ``exec`` requests: run a cell
(or evaluate an expression) in the namespace of the caller's session
(:mod:`.shell`), with its output streamed as it runs (:mod:`.capture`).
``exec`` runs in the main thread, so the caller's interrupt stops even a
``time.sleep``.  Widgets the code makes are relayed (:mod:`.relay`).
"""

from __future__ import annotations

import functools
import os

from ..wire import serialize
from ..wire.defaults import DEFAULT_SESSION_LEASE
from ..wire.errors import Refused
from . import capture, relay
from .callcontext import Call, Operation
from .shell import end_session, note_change, renew, session_for

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def run_exec(call: Call, lease: float) -> dict:
    """The ``exec`` operation: push, run or evaluate, pull; the reply names the session's lease."""
    header = call.header
    session = session_for(str(header["session"]), header.get("colors", "NoColor"))
    pushed = serialize.loads(call.payload) if call.payload else {}
    with session.lock, capture.capture(call, session):
        session.namespace.update(pushed)
        reply = session.run(header.get("code", ""), evaluate=bool(header.get("eval")))
    note_change()  # the cell's variables count in the session's memory
    if reply["status"] == "ok":
        missing = [name for name in header.get("pull", ()) if name not in session.namespace]
        if missing:
            raise NameError(f"not defined in the remote session: {', '.join(missing)}")
        reply["pulled"] = {name: session.namespace[name] for name in header.get("pull", ())}
    reply["lease"] = lease
    return reply


def run_end(call: Call) -> bool:
    """The ``end`` operation: forget a session's namespace; False if there was none."""
    return end_session(str(call.header["session"]))


def run_renew(call: Call) -> bool:
    """The ``renew`` operation: the session's caller is still there; False if the session is gone."""
    return renew(str(call.header["session"]))


def code_operations(name: str, allow_code: bool, lease: float = DEFAULT_SESSION_LEASE) -> dict[str, Operation]:
    """The operations that run code: served if ``allow_code``, refused otherwise. A session whose caller
    has not renewed it for ``lease`` seconds ends (see :func:`.shell.expire`)."""
    if not allow_code:
        def refuse(call: Call):
            raise Refused(f"backend {name!r} does not run code; start it with --allow-code "
                          "(or main(..., allow_code=True)) to accept %%remote cells")

        return {op: Operation(refuse) for op in ("exec", "end", "renew", "comm")}
    relay.install()  # widgets created by remote code talk to the caller's notebook
    # Agg-based and shows plt.show() figures as display data; must be chosen before pyplot loads
    os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)
    return {"exec": Operation(functools.partial(run_exec, lease=lease), main_thread=True),
            "end": Operation(run_end), "renew": Operation(run_renew), **relay.OPERATIONS}
