"""Widgets made by remote code, on the backend side: their comm messages relayed to the caller.

ipywidgets opens one comm per widget through ``comm.create_comm``.  On a
backend that runs code, :func:`install` replaces it: a
widget made while a de-magic call is served gets a :class:`RelayComm`, whose
messages become ``comm_open``/``comm_msg``/``comm_close`` events to the caller
of the call being served *when the message is sent*: the cell that made the
widget, later the frontend message whose callback changed it.  The ``comm``
operation hands a frontend message to the widget, inside the session's output
capture so that what a callback prints comes back.  ``with out:`` on an
``Output`` widget appends to ``out.outputs``: there is no frontend on the
backend to capture output by message id.

The caller's side is :mod:`de_magic.notebook.mirror`.
"""

from __future__ import annotations

import logging
import traceback
from typing import Callable

import comm
from comm.base_comm import BaseComm

from ..wire.errors import UnknownMethod
from . import capture
from .callcontext import Call, Operation, current_call
from .shell import session_for

log = logging.getLogger("de_magic.comms")

class RelayComm(BaseComm):
    """A comm whose messages go to whoever the backend is serving at the time."""

    def publish_msg(self, msg_type: str, data=None, metadata=None, buffers=None, **keys) -> None:
        call = current_call.get()
        if call is None:
            log.debug("comm %s: %s outside a call dropped: no one to send it to", self.comm_id, msg_type)
            return
        header = {"comm_id": self.comm_id, "data": data or {}, "metadata": metadata or {},
                  "worker": call.backend.id.hex(), **keys}
        # a buffer that is no bytes raises here, in the widget's code, not later half-way through a message
        frames = [memoryview(buffer) for buffer in buffers or ()]
        # through the output capture when there is one, so a widget opens before the display that shows it
        send = capture.emit if capture.active() is not None else call.emit
        send(msg_type, header, frames)


_local_create_comm: Callable | None = None


def install() -> None:
    """Make widgets created during de-magic calls relay their messages (idempotent).

    Outside a call the original ``create_comm`` is used, so a backend hosted in
    a kernel keeps its own widgets working.
    """
    global _local_create_comm
    if _local_create_comm is not None:
        return
    _local_create_comm = comm.create_comm
    comm.create_comm = _create_comm
    _patch_output_widget()


def _create_comm(*args, **kwargs) -> BaseComm:
    if current_call.get() is None:
        return _local_create_comm(*args, **kwargs)
    return RelayComm(*args, **kwargs)


def handle_comm(call: Call) -> None:
    """The ``comm`` operation: a frontend message for a widget on this backend."""
    header = call.header
    target = comm.get_comm_manager().get_comm(header["comm_id"])
    if not isinstance(target, RelayComm):
        raise UnknownMethod(f"no widget with comm id {header['comm_id']!r} on this backend "
                            "(it was closed, or the backend restarted)")
    msg = {"header": {"msg_type": header["msg_type"]}, "parent_header": {}, "metadata": header.get("metadata", {}),
           "content": {"comm_id": target.comm_id, "data": header.get("data", {})},
           "buffers": [frame.buffer for frame in call.payload]}
    session = session_for(str(header.get("session")))
    with session.lock, capture.capture(call, session) as output:
        shell = session.shell
        shell.last_error = None
        try:
            if header["msg_type"] == "comm_close":
                comm.get_comm_manager().unregister_comm(target)
                target._closed = True
                target.handle_close(msg)
            else:
                target.handle_msg(msg)
        except Exception:
            shell.showtraceback()
        # a kernel shows callback errors (CallbackDispatcher calls showtraceback); the session's shell keeps them
        if shell.last_error is not None:
            output.write("stderr", "\n".join(shell.last_error["traceback"]) + "\n")


#: Served by backends that allow code (see :func:`de_magic.backend.execute.code_operations`).
OPERATIONS = {"comm": Operation(handle_comm, main_thread=True)}


class _OutputSink:
    """Output captured inside ``with out:`` on the backend, appended to ``out.outputs``.

    It stands in for the session's capture (same methods); events that are not
    output (widget messages) go on to the capture it replaced.
    """

    def __init__(self, out, outer):
        self.out, self.outer = out, outer
        self._clear_pending = False

    def _append(self, output: dict) -> None:
        outputs = () if self._clear_pending else self.out.outputs
        self._clear_pending = False
        self.out.outputs = (*outputs, output)

    def write(self, name: str, text: str) -> None:
        last = self.out.outputs[-1] if self.out.outputs and not self._clear_pending else None
        if last is not None and last.get("output_type") == "stream" and last["name"] == name:
            # print() writes piecewise; one output per piece would make a ragged output area
            self.out.outputs = (*self.out.outputs[:-1], {**last, "text": last["text"] + text})
        else:
            self._append({"output_type": "stream", "name": name, "text": text})

    def display(self, data: dict, metadata: dict | None = None, transient=None, update: bool = False) -> None:
        self._append({"output_type": "display_data", "data": data, "metadata": metadata or {}})

    def emit(self, event: str, data: dict | None = None, payload: list | None = None) -> None:
        if event != "clear_output":
            self.outer.emit(event, data, payload)
        elif (data or {}).get("wait"):
            self._clear_pending = True
        else:
            self.out.outputs = ()

    def error(self, exc: BaseException) -> None:
        self._append({"output_type": "error", "ename": type(exc).__name__, "evalue": str(exc),
                      "traceback": traceback.format_exception(exc)})


def _patch_output_widget() -> None:
    from ipywidgets import Output

    enter, exit_ = Output.__enter__, Output.__exit__

    def __enter__(self):
        if current_call.get() is None:  # not serving a call: a kernel's own widget
            return enter(self)
        outer = capture.active()
        if outer is None:
            return enter(self)
        sink = _OutputSink(self, outer)
        redirect = capture.redirect(sink)
        redirect.__enter__()
        # a stack: the same widget may be entered again inside its own block
        self.__dict__.setdefault("_de_magic_sinks", []).append((sink, redirect))
        return self

    def __exit__(self, etype, evalue, tb):
        sinks = self.__dict__.get("_de_magic_sinks")
        if not sinks:
            return exit_(self, etype, evalue, tb)
        sink, redirect = sinks.pop()
        redirect.__exit__(None, None, None)
        if isinstance(evalue, Exception):  # as in a kernel: shown in the widget, not raised
            sink.error(evalue)
            return True
        return None

    Output.__enter__, Output.__exit__ = __enter__, __exit__
