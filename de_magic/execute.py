"""Code cells on a backend: per-session IPython shells whose output streams to the caller.

A backend started with ``--allow-code`` serves ``exec`` requests: run a cell
(or evaluate an expression) in the namespace of the caller's session, with
IPython semantics (magics, the last expression displayed, ``display()``, rich
reprs, matplotlib figures shown at the end of the cell) and IPython-formatted
tracebacks.  Each session has its own :class:`RemoteShell`, so variables,
``In``/``Out`` and the execution count of two notebooks never mix.

Output is sent to the caller as events while the cell runs (see
:class:`Capture`): ``stream`` ``{name, text}``, ``display`` ``{transient?,
update?}`` with one JSON payload frame ``{data, metadata}``, and
``clear_output`` ``{wait}``.  ``exec`` runs in the main thread, so the
caller's interrupt stops even a ``time.sleep``.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import sys
import threading
from contextlib import contextmanager
from types import ModuleType

from . import serialize
from .backend import Backend, Call, Operation, current_call
from .errors import Refused

log = logging.getLogger("de_magic.execute")

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
FLUSH_INTERVAL = 0.05

_active: contextvars.ContextVar["Capture | None"] = contextvars.ContextVar("de_magic_capture", default=None)
_sessions: dict[str, "Session"] = {}
#: Names every new session starts with (e.g. ``dask_client`` on a Dask backend, see daskpool.py).
SESSION_NAMES: dict[str, object] = {}
_sessions_lock = threading.Lock()


# -- output capture -------------------------------------------------------------


class Capture:
    """The output of code running for one call, queued and sent to its caller as events.

    Every event goes out from the single :class:`_Flusher` thread: ZeroMQ only keeps
    the order of messages sent through one socket, and the text a cell prints must
    reach the caller while the cell's own thread is busy (or asleep).
    """

    def __init__(self, call: Call):
        self.call = call
        # [event, data, payload]; for "stream": ["stream", name, [text, ...]], adjacent writes merged
        self._queue: list[list] = []
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)

    def write(self, name: str, text: str) -> None:
        with self._lock:
            if self._queue and self._queue[-1][0] == "stream" and self._queue[-1][1] == name:
                self._queue[-1][2].append(text)
            else:
                self._queue.append(["stream", name, [text]])

    def emit(self, event: str, data: dict | None = None, payload: list | None = None) -> None:
        """Queue any event (``comm_*`` messages too) in order with the output."""
        with self._lock:
            self._queue.append([event, data or {}, payload])
        _FLUSHER.wake()

    def display(self, data: dict, metadata: dict | None = None, transient: dict | None = None,
                update: bool = False) -> None:
        extra = {k: v for k, v in (("transient", transient), ("update", update)) if v}
        self.emit("display", extra, serialize.dumps_json({"data": data, "metadata": metadata or {}}))

    def send(self) -> None:
        """Send what is queued (called by the flusher thread only)."""
        with self._lock:
            queued, self._queue = self._queue, []
            for event, data, payload in queued:
                try:
                    if event == "stream":
                        self.call.emit(event, {"name": data, "text": "".join(payload)})
                    else:
                        self.call.emit(event, data, payload)
                except Exception:  # noqa: BLE001 - e.g. a widget's buffer that is no bytes: the one
                    # flusher thread must live on, or every later cell waits for it for ever
                    log.exception("could not send a %r event of a running cell; dropped", event)
            self._drained.notify_all()

    def close(self) -> None:
        """Wait until the flusher has sent everything queued, so no event trails the reply."""
        with self._lock:
            while self._queue:
                _FLUSHER.wake()
                self._drained.wait(1.0)


class _Flusher:
    """The one thread that sends the events of every active :class:`Capture`."""

    def __init__(self):
        self.captures: set[Capture] = set()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, capture: Capture) -> None:
        with self._lock:
            self.captures.add(capture)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="de-magic-output", daemon=True)
                self._thread.start()

    def discard(self, capture: Capture) -> None:
        with self._lock:
            self.captures.discard(capture)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            with self._lock:
                captures = list(self.captures)
            for capture in captures:
                capture.send()


_FLUSHER = _Flusher()


class _Stream:
    """``sys.stdout``/``sys.stderr``: text written under a :class:`Capture` goes to its caller."""

    def __init__(self, name: str, original):
        self.name = name
        self.original = original

    def write(self, text: str) -> int:
        capture = _active.get()
        if capture is None:
            return self.original.write(text)
        capture.write(self.name, text)
        return len(text)

    def flush(self) -> None:
        if _active.get() is None:
            self.original.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self.original, name)


def active() -> "Capture | None":
    """The capture (or sink) receiving output in this context; None outside one."""
    return _active.get()


@contextmanager
def redirect(sink):
    """Captured output in this context goes to ``sink`` (the methods of :class:`Capture`) instead."""
    token = _active.set(sink)
    try:
        yield sink
    finally:
        _active.reset(token)


def emit(event: str, data: dict | None = None, payload: list | None = None) -> None:
    """Send an event to the current caller, in order with the output of the running code."""
    capture = _active.get()
    if capture is not None:
        capture.emit(event, data, payload)
    else:
        current_call.get().emit(event, data, payload)


@contextmanager
def capture(call: Call, session: "Session"):
    """Route output of code run in ``session`` (in this thread) to ``call`` as events."""
    from IPython.core.interactiveshell import InteractiveShell

    if not isinstance(sys.stdout, _Stream):
        sys.stdout, sys.stderr = _Stream("stdout", sys.stdout), _Stream("stderr", sys.stderr)
    cap = Capture(call)
    _FLUSHER.add(cap)
    # display() and get_ipython() find the shell through the singleton
    previous, InteractiveShell._instance = InteractiveShell._instance, session.shell
    try:
        with redirect(cap):
            yield cap
    finally:
        InteractiveShell._instance = previous
        cap.close()
        _FLUSHER.discard(cap)


# -- the shell ----------------------------------------------------------------------


@functools.cache
def _shell_class():
    """:class:`RemoteShell`, built on first use so that backends without code never import IPython."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    class RemotePublisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs) -> None:
            capture = _active.get()
            if capture is not None:
                capture.display(data, metadata, transient, update)

        def clear_output(self, wait=False) -> None:
            capture = _active.get()
            if capture is not None:
                capture.emit("clear_output", {"wait": wait})

    class RemoteDisplayHook(DisplayHook):
        """The cell's result becomes a ``display`` event (no ``Out[n]:`` prompt text)."""

        def write_output_prompt(self) -> None:
            pass

        def write_format_data(self, format_dict, md_dict=None) -> None:
            self.shell.display_pub.publish(format_dict, md_dict)

        def finish_displayhook(self) -> None:
            pass

    class RemoteShell(InteractiveShell):
        """An IPython shell for one session; tracebacks are kept for the reply, not printed."""

        display_pub_class = RemotePublisher
        displayhook_class = RemoteDisplayHook
        last_error: dict | None = None

        def init_sys_modules(self) -> None:
            pass  # the backend's own __main__ stays in sys.modules

        def _showtraceback(self, etype, evalue, stb) -> None:
            self.last_error = {"ename": etype.__name__, "evalue": str(evalue), "traceback": stb}

    return RemoteShell


class Session:
    """A caller's namespace on this backend, with the IPython shell that runs its code."""

    def __init__(self, key: str, colors: str = "NoColor"):
        from traitlets.config import Config

        config = Config()
        config.HistoryManager.enabled = False  # no SQLite file per session
        config.InteractiveShell.colors = colors
        self.key = key
        self.shell = _shell_class()(config=config, user_module=ModuleType("__main__"))
        self.shell.display_formatter.formatters["image/png"].for_type_by_name(
            "matplotlib.figure", "Figure", _figure_png)
        self.namespace.update(SESSION_NAMES)
        self.lock = threading.Lock()

    @property
    def namespace(self) -> dict:
        return self.shell.user_ns

    def run(self, code: str, evaluate: bool = False) -> dict:
        """Run a cell (or evaluate an expression): ``{"status", "execution_count", "value"?, "error"?}``."""
        shell = self.shell
        shell.last_error = None
        outcome = {}
        if evaluate:
            try:
                outcome["value"] = shell.ev(code)
            except Exception:
                shell.showtraceback(tb_offset=2)  # from the expression on, not this frame and ev()
        elif code.strip():
            result = shell.run_cell(code, store_history=True)
            _show_figures(shell)
            failure = result.error_before_exec or result.error_in_exec
            if failure is not None and shell.last_error is None:  # e.g. UsageError: printed, not raised
                shell.last_error = {"ename": type(failure).__name__, "evalue": str(failure), "traceback": []}
        count = shell.execution_count - 1
        if shell.last_error is not None:
            return {"status": "error", "error": shell.last_error, "execution_count": count}
        return {"status": "ok", "execution_count": count, **outcome}


def _figure_png(figure) -> str:
    from IPython.core.pylabtools import print_figure

    return print_figure(figure, "png", base64=True)


def _show_figures(shell) -> None:
    """Display and close the figures a cell left open, as the inline backend does."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    for number in pyplot.get_fignums():
        data, metadata = shell.display_formatter.format(pyplot.figure(number))
        shell.display_pub.publish(data, metadata)
    pyplot.close("all")


def session_for(key: str, colors: str = "NoColor") -> Session:
    """The session named ``key``, created on first use."""
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = _sessions[key] = Session(key, colors)
        return session


# -- operations ------------------------------------------------------------------------


def run_exec(call: Call) -> dict:
    """The ``exec`` operation: push, run or evaluate, pull."""
    header = call.header
    session = session_for(str(header["session"]), header.get("colors", "NoColor"))
    pushed = serialize.loads(call.payload) if call.payload else {}
    with session.lock, capture(call, session):
        session.namespace.update(pushed)
        reply = session.run(header.get("code", ""), evaluate=bool(header.get("eval")))
    if reply["status"] == "ok":
        missing = [name for name in header.get("pull", ()) if name not in session.namespace]
        if missing:
            raise NameError(f"not defined in the remote session: {', '.join(missing)}")
        reply["pulled"] = {name: session.namespace[name] for name in header.get("pull", ())}
    return reply


def run_end(call: Call) -> bool:
    """The ``end`` operation: forget a session's namespace; False if there was none."""
    with _sessions_lock:
        session = _sessions.pop(str(call.header["session"]), None)
    if session is None:
        return False
    with session.lock:  # not while one of its cells still runs
        session.shell.reset(new_session=False)
    return True


def code_operations(backend: Backend) -> dict[str, Operation]:
    """The operations that run code: served if ``backend.allow_code``, refused otherwise."""
    if not backend.allow_code:
        def refuse(call: Call):
            raise Refused(f"backend {backend.name!r} does not run code; start it with --allow-code "
                          "(or main(..., allow_code=True)) to accept %%remote cells")

        return {op: Operation(refuse) for op in ("exec", "end", "comm")}
    from . import comms  # widgets created by remote code talk to the caller's notebook

    # Agg-based and shows plt.show() figures as display data; must be chosen before pyplot loads
    os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)
    return {"exec": Operation(run_exec, main_thread=True), "end": Operation(run_end), **comms.OPERATIONS}
