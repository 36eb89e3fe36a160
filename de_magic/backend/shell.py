"""Per-session IPython shells on a backend: the namespaces ``%%remote`` cells run in.

Each session has its own :class:`RemoteShell`, so variables, ``In``/``Out``
and the execution count of two notebooks never mix; cells run with IPython
semantics (magics, the last expression displayed, ``display()``, rich reprs,
matplotlib figures shown at the end of the cell) and IPython-formatted
tracebacks.  IPython is imported only when the first session starts.
"""

from __future__ import annotations

import atexit
import functools
import sys
import threading
import time
from types import ModuleType

from . import capture

_sessions: dict[str, "Session"] = {}
_sessions_lock = threading.Lock()
_changes = 0  # counts what changed the sessions' contents: the usage report is sent again when it moves
#: Names every new session starts with (e.g. ``dask_client`` on a Dask backend, see daskpool.py).
SESSION_NAMES: dict[str, object] = {}

@functools.cache
def _shell_class():
    """:class:`RemoteShell`, built on first use so that backends without code never import IPython."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    class RemotePublisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs) -> None:
            sink = capture.active()
            if sink is not None:
                sink.display(data, metadata, transient, update)

        def clear_output(self, wait=False) -> None:
            sink = capture.active()
            if sink is not None:
                sink.emit("clear_output", {"wait": wait})

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
        self.seen = time.monotonic()  # the caller's last request: a session not renewed within its lease ends
        self.since = time.time()  # for listings: how old the session is

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


def note_change() -> None:
    """Something in the sessions changed (one started, ran a cell, ended): report usage again."""
    global _changes
    _changes += 1


def changes() -> int:
    """A number that moves whenever a session starts, runs a cell or ends."""
    return _changes


def sessions() -> list[Session]:
    """The live sessions."""
    with _sessions_lock:
        return list(_sessions.values())


def session_for(key: str, colors: str = "NoColor") -> Session:
    """The session named ``key``, created on first use; it is about to run code (its contents change)."""
    with _sessions_lock:
        note_change()
        session = _sessions.get(key)
        if session is None:
            session = _sessions[key] = Session(key, colors)
        session.seen = time.monotonic()
        return session


def renew(key: str) -> bool:
    """The caller of session ``key`` is still there; False if the session is gone (ended or expired)."""
    with _sessions_lock:
        session = _sessions.get(key)
        if session is not None:
            session.seen = time.monotonic()
        return session is not None


def expire(lease: float) -> list[str]:
    """End the sessions whose caller has not been heard from for ``lease`` seconds (a killed kernel, a
    laptop that never came back): their namespaces, and the data in them, would stay for months."""
    now = time.monotonic()
    with _sessions_lock:
        idle = [key for key, session in _sessions.items() if now - session.seen > lease]
    ended = []
    for key in idle:
        with _sessions_lock:
            session = _sessions.get(key)
            if session is None or now - session.seen <= lease or not session.lock.acquire(blocking=False):
                continue  # renewed meanwhile, or running a cell: not idle after all
            del _sessions[key]
            note_change()
        try:
            _release(session.shell)
        finally:
            session.lock.release()
        ended.append(key)
    return ended


def end_session(key: str) -> bool:
    """Forget a session's namespace; False if there was none."""
    with _sessions_lock:
        session = _sessions.pop(key, None)
        note_change()
    if session is None:
        return False
    with session.lock:  # not while one of its cells still runs
        _release(session.shell)
    return True


def _release(shell) -> None:
    """Free a shell now, not at exit: IPython registers each shell's clean-up (and its %%script magics')
    with ``atexit``, which keeps every shell ever made alive. A backend serves months of sessions."""
    script = shell.magics_manager.registry.get("ScriptMagics")
    if script is not None:
        script.kill_bg_processes()  # %%script --bg processes of this session end with it
        atexit.unregister(script.kill_bg_processes)
    shell.reset(new_session=False)
    atexit.unregister(shell.atexit_operations)
