"""Widgets made by remote code, live in the notebook: the kernel's side of the comm relay.

A backend relays the comm messages of widgets its code makes as events
(:mod:`de_magic.backend.relay`).  :func:`mirror` opens a real comm with the same
id in this kernel for each ``comm_open`` event, so the frontend renders the
widget; what the frontend sends to it goes back to the backend as a ``comm``
request.  When that fails (the backend restarted, the session is lost), the
widgets of that backend session are disabled and say "(disconnected)".
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

import comm
from comm.base_comm import BaseComm

from ..caller import session as sessions
from ..wire.errors import DeMagicError

log = logging.getLogger("de_magic.notebook.mirror")

KINDS = ("comm_open", "comm_msg", "comm_close")


def register() -> None:
    """Comm events of remote cells open and drive mirrored widgets here (idempotent)."""
    sessions.EVENT_HANDLERS.update(EVENT_HANDLERS)


Send = Callable[[dict, list], object]


class _Mirror:
    """A comm mirrored in this kernel, where its messages go, and its widget's description."""

    def __init__(self, local: BaseComm, send: Send, description: str | None):
        self.local, self.send, self.description = local, send, description
        self.disconnected = False


#: Comms mirrored in this kernel, by id.
_mirrored: dict[str, _Mirror] = {}


def mirror(header: dict, frames: list, send: Send) -> None:
    """Apply one comm event of a backend to this kernel's comms.

    ``send(header, buffers)`` delivers a frontend message to the backend that
    holds the widget (e.g. a session's ``request``), as a ``comm`` operation.
    """
    kind, comm_id = header["event"], header["comm_id"]
    buffers = [getattr(f, "bytes", f) for f in frames]
    if kind == "comm_open":
        local = comm.create_comm(target_name=header.get("target_name", ""), comm_id=comm_id,
                                 target_module=header.get("target_module"), data=header.get("data"),
                                 metadata=header.get("metadata"), buffers=buffers)
        local.on_msg(lambda msg: _forward(send, "comm_msg", msg))
        local.on_close(lambda msg: _forward(send, "comm_close", msg))
        _mirrored[comm_id] = _Mirror(local, send, _description(header.get("data")))
        return
    mirrored = _mirrored.get(comm_id) if kind == "comm_msg" else _mirrored.pop(comm_id, None)
    if mirrored is None:  # closed here already (the frontend closed it first)
        log.debug("%s for unknown comm %s ignored", kind, comm_id)
    elif kind == "comm_msg":
        mirrored.description = _description(header.get("data")) or mirrored.description
        mirrored.local.send(data=header.get("data"), metadata=header.get("metadata"), buffers=buffers)
    else:
        mirrored.local.close(data=header.get("data"), metadata=header.get("metadata"), buffers=buffers)


def _description(data: dict | None) -> str | None:
    """The description in a widget's state message, if it has one (sliders, buttons, text…)."""
    return (data or {}).get("state", {}).get("description")


def _forward(send: Send, msg_type: str, msg: dict) -> None:
    content = msg["content"]
    if msg_type == "comm_close":
        _mirrored.pop(content["comm_id"], None)
    header = {"op": "comm", "comm_id": content["comm_id"], "msg_type": msg_type,
              "data": content.get("data", {}), "metadata": msg.get("metadata", {})}
    try:
        send(header, list(msg.get("buffers") or ()))
    except DeMagicError as exc:  # a frontend message has no caller to raise to: say it where a kernel logs
        print(f"de-magic: widget message to the backend failed: {exc}", file=sys.stderr)
        _show_disconnected(send, exc)


def _show_disconnected(send: Send, exc: DeMagicError) -> None:
    """Disable the widgets relayed through ``send`` and say so in them: Lab shows the printed
    error only in its log console, while the widgets would go on moving and doing nothing."""
    for mirrored in list(_mirrored.values()):
        if mirrored.send != send or mirrored.disconnected:
            continue
        mirrored.disconnected = True
        state = {"disabled": True, "tooltip": f"disconnected from the backend: {exc}"}
        if mirrored.description is not None:
            state["description"] = f"{mirrored.description} (disconnected)".lstrip()
        mirrored.local.send(data={"method": "update", "state": state, "buffer_paths": []})


#: Handlers for :data:`de_magic.caller.session.EVENT_HANDLERS`: mirrored comms answer through the session.
EVENT_HANDLERS = {kind: (lambda header, frames, session: mirror(header, frames, session.request)) for kind in KINDS}

