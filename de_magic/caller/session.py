"""Remote code sessions: a namespace on a backend that lives between calls.

A :class:`RemoteSession` runs code on a backend that allows it (``exec``
requests, served by :mod:`de_magic.backend.execute`) in a namespace of its own, kept
by the backend under the session's key.  The first reply names the worker that
holds the namespace, and every later request is pinned to it: another worker
of the same backend would not know the session's variables.

Output of the remote code (``stream``, ``display`` and ``clear_output``
events) is rendered as it arrives, in the calling thread, so in a kernel it
lands in the cell that runs it; other events go to :data:`EVENT_HANDLERS`
(progress bars here; the notebook layer adds mirrored widgets).  The ``%%remote``
magics are thin wrappers over this module.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from typing import TYPE_CHECKING, Callable

from ..wire import serialize
from ..wire.errors import BackendLost, DeMagicError, Refused, RemoteError
from ..wire.protocol import BROKER_HELD
from . import progress, ui
from .leases import LEASES

if TYPE_CHECKING:
    from .client import Client

#: Event kind (``header["event"]``) -> ``handler(header, frames, session)`` for the events of a
#: session's requests that are not output: progress bars and widget messages register here.
EVENT_HANDLERS: dict[str, Callable[[dict, list, "RemoteSession"], None]] = {**progress.EVENT_HANDLERS}

#: Events that are cell output; they are recorded on the :class:`Execution` and rendered.
OUTPUT_EVENTS = frozenset({"stream", "display", "clear_output"})

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class CellError(RemoteError):
    """Remote code raised: carries the traceback as the backend's IPython formatted it.

    IPython shows ``_render_traceback_()`` instead of the (useless) local traceback
    of the magic, so the notebook's error output is the remote traceback.
    """

    def __init__(self, error: dict, backend: str):
        stb = list(error.get("traceback") or [])
        plain = _ANSI.sub("", "\n".join(stb))
        super().__init__(error.get("evalue", ""), error.get("ename", "Exception"), plain, backend=backend)
        self.stb = stb

    def _render_traceback_(self) -> list[str]:
        return [*self.stb, f"(raised on backend {self.info['backend']!r})"]


def output_of(header: dict, frames: list) -> dict:
    """An output event as one dict: the header, plus the JSON mimebundle of ``display`` events."""
    output = dict(header)
    if frames:
        output.update(serialize.loads_json(frames))
    return output


def render(output: dict) -> None:
    """Show one output in the current cell, through the UI layer's hooks (or on stdout/stderr without one)."""
    kind = output["event"]
    if kind == "stream":
        stream = sys.stderr if output.get("name") == "stderr" else sys.stdout
        stream.write(output.get("text", ""))
        stream.flush()
    elif kind == "display":
        publish = ui.hook("publish")
        if publish is not None:
            publish(output.get("data", {}), output.get("metadata") or {}, output.get("transient"),
                    output.get("update", False))
        elif "text/plain" in output.get("data", {}):  # no UI layer: the text form, as a terminal shows it
            print(output["data"]["text/plain"], flush=True)
    elif kind == "clear_output":
        clear = ui.hook("clear_output")
        if clear is not None:
            clear(output.get("wait", False))


class Execution:
    """One remote execution: the outputs so far and, once done, its outcome.

    Returned at once by ``execute(..., block=False)``; ``wait()``/``result()`` block
    until the backend answers.  Displaying it (or :meth:`display`) replays the
    outputs, so a non-blocking cell can be shown later in any cell.
    """

    def __init__(self, session: "RemoteSession", code: str):
        self.session = session
        self.code = code
        self.outputs: list[dict] = []
        self._future: Future = Future()

    def done(self) -> bool:
        return self._future.done()

    def wait(self, timeout: float | None = None) -> "Execution":
        """Block until the execution ends (or ``timeout``); returns self."""
        try:
            self._future.exception(timeout)
        except TimeoutError:
            pass
        return self

    @property
    def reply(self) -> dict:
        """The backend's answer: ``status``, ``execution_count``, ``pulled``, ``error``."""
        return self._future.result()

    def result(self, timeout: float | None = None) -> dict:
        """The pulled variables (name -> value); raises :class:`CellError` if the code raised."""
        reply = self._future.result(timeout)
        if reply["status"] == "error":
            raise CellError(reply["error"], self.session.backend)
        return reply.get("pulled", {})

    def display(self) -> None:
        """Replay the outputs in the current cell; a remote error is shown as its traceback."""
        for output in list(self.outputs):
            render(output)
        if not self.done():
            print(f"(still running on {self.session.backend!r}: wait with .wait() or %remote_result)")
        elif self._future.exception() is None and self.reply["status"] == "error":
            sys.stderr.write("\n".join(CellError(self.reply["error"], self.session.backend)._render_traceback_()) + "\n")

    _ipython_display_ = display

    def __repr__(self) -> str:
        state = "running"
        if self.done():
            state = "failed" if self._future.exception() or self.reply["status"] == "error" else "done"
        return f"<Execution on {self.session.backend!r} ({state}, {len(self.outputs)} outputs)>"


class RemoteSession:
    """A namespace on ``backend`` (a backend started with ``--allow-code``), kept between calls.

    ``key`` names the namespace on the backend; two sessions with the same key
    share it, and a fresh ``uuid4`` makes a private one.
    """

    def __init__(self, client: Client, backend: str, key: str | None = None):
        self.client = client
        self.backend = backend
        self.key = key or uuid.uuid4().hex
        #: Routing id of the worker holding the namespace, learnt from the first reply.
        self.worker = b""
        self._pin_lock = threading.Lock()

    def __repr__(self) -> str:
        pinned = f", worker {self.worker.hex()}" if self.worker else ""
        return f"<RemoteSession {self.key[:8]} on {self.backend!r} at {self.client.url}{pinned}>"

    def request(self, header: dict, payload: list = (), *, timeout: float | None = None,
                on_output: Callable[[dict], None] | None = None) -> tuple[dict, list]:
        """Send a request in this session (to its worker) and wait for the reply.

        Output events go to ``on_output`` (default: :func:`render`), other events
        to :data:`EVENT_HANDLERS`; unknown events are ignored.
        """
        if self.client.codec == serialize.JSON:
            # code, pushed and pulled values travel as pickles, which such a client promises never to load
            raise Refused(f"sessions exchange pickles, and {self.client!r} unpickles nothing (codec='json')")
        show = on_output or render

        def on_event(event: dict, frames: list) -> None:
            kind = event.get("event")
            if kind in OUTPUT_EVENTS:
                show(output_of(event, frames))
            elif kind in EVENT_HANDLERS:
                EVENT_HANDLERS[kind](event, frames, self)

        header = {**header, "session": self.key}
        if self.worker:
            return self._request_pinned(header, list(payload), timeout, on_event)
        with self._pin_lock:  # the first request picks the worker: requests racing it wait, then follow it
            return self._request_pinned(header, list(payload), timeout, on_event)

    def _request_pinned(self, header: dict, payload: list, timeout: float | None, on_event) -> tuple[dict, list]:
        try:
            head, frames = self.client.request(self.backend, header, payload, timeout=timeout, on_event=on_event,
                                               worker=self.worker)
        except BackendLost as exc:
            if self.worker:
                raise BackendLost(f"{exc}; {self._fate()}") from None
            raise
        if not self.worker and head.get("worker") not in (None, BROKER_HELD.hex()):
            # (a job held for the offline backend names the broker: the namespace has no worker yet)
            self.worker = bytes.fromhex(head["worker"])
        return head, frames

    def _fate(self) -> str:
        """After a lost request: whether the namespace survived, which it did if its worker is registered again.

        A restarted broker loses the requests in flight, not the backends: they register again
        within a few heartbeats, and keep their namespaces.  A worker that died does not come back,
        and a broker up for longer than those heartbeats would list it if it were there: no wait then.
        """
        window = 2 * self.client.heartbeat * self.client.liveness
        deadline = time.monotonic() + window
        while True:
            try:
                listing = self.client.listing(self.backend, api=False, timeout=1.0)
            except DeMagicError:
                listing = None
            if listing is not None:
                entry = listing["backends"].get(self.backend)
                if entry and any(w["id"] == self.worker.hex() for w in entry["workers"]):
                    return (f"its worker is registered again, and the namespace of session {self.key[:8]} "
                            f"on {self.backend!r} survived: run the code again")
                if time.time() - listing.get("broker", {}).get("since", time.time()) > window:
                    break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        self.worker = b""
        return (f"the namespace of session {self.key[:8]} on {self.backend!r} went with its worker; "
                "the next request starts a fresh one")

    def execute(self, code: str, push: dict | None = None, pull=(), *, timeout: float | None = None,
                block: bool = True, on_output: Callable[[dict], None] | None = None) -> Execution:
        """Run ``code`` (a cell: IPython syntax, last expression displayed) in the session.

        ``push`` variables are set first, ``pull`` names are sent back (``result()``).
        Blocking executions render output live (or pass it to ``on_output``); with
        ``block=False`` the outputs are only recorded, for :meth:`Execution.display`.
        """
        execution = Execution(self, code)
        header = {"op": "exec", "code": code, "pull": list(pull), "colors": colors()}
        payload = serialize.dumps(dict(push or {}))
        show = (on_output or render) if block else None

        def record(output: dict) -> None:
            execution.outputs.append(output)
            if show is not None:
                show(output)

        def run() -> None:
            try:
                head, frames = self.request(header, payload, timeout=timeout, on_output=record)
                reply = serialize.loads(frames)
                if reply.get("lease"):  # the backend ends the namespace if this process stops renewing it
                    LEASES.keep(self, reply["lease"])
                execution._future.set_result(reply)
            except BaseException as exc:
                execution._future.set_exception(exc)
                if block:
                    raise

        if block:
            run()
        else:
            threading.Thread(target=run, name=f"de-magic-exec-{self.backend}", daemon=True).start()
        return execution

    def push(self, **variables) -> None:
        """Set variables in the remote namespace."""
        self.execute("", push=variables).result()

    def pull(self, *names: str):
        """Values of remote variables: one value for one name, else a tuple (names may come as one list)."""
        if len(names) == 1 and isinstance(names[0], (list, tuple)):
            names = tuple(names[0])
        wrong = [name for name in names if not isinstance(name, str)]
        if wrong or not names:
            raise TypeError(f"pull() takes the names of remote variables, e.g. pull('x', 'y'), not {wrong or 'none'}")
        pulled = self.execute("", pull=names).result()
        values = tuple(pulled[name] for name in names)
        return values[0] if len(values) == 1 else values

    def close(self, timeout: float = 5.0) -> bool:
        """Free the namespace on the backend; True if there was one to free."""
        if not self.worker:
            return False
        try:
            head, frames = self.request({"op": "end"}, timeout=timeout)
        finally:
            self.worker = b""
        return bool(serialize.loads(frames))

    def renew(self, timeout: float) -> bool:
        """Tell the backend this process still uses the namespace (see :mod:`.leases`); False if it is gone."""
        if not self.worker or self.client._closed:
            return False
        head, frames = self.request({"op": "renew"}, timeout=timeout)
        return bool(serialize.loads(frames))

    def eval(self, expression: str, *, timeout: float | None = None):
        """The value of ``expression`` evaluated in the remote namespace."""
        head, frames = self.request({"op": "exec", "code": expression, "eval": True, "colors": colors()},
                                    serialize.dumps({}), timeout=timeout)
        reply = serialize.loads(frames)
        if reply["status"] == "error":
            raise CellError(reply["error"], self.backend)
        return reply["value"]


def colors() -> str:
    """The local traceback colour scheme (a UI layer's), so remote tracebacks look like local ones."""
    scheme = ui.hook("colors")
    return scheme() if scheme is not None else "NoColor"


__all__ = ["EVENT_HANDLERS", "CellError", "Execution", "RemoteSession", "render", "output_of"]
