"""IPython magics: ``%remote_connect``, ``%remote_list``, ``%%remote``, ``%remote``, ``%remote_result``, ``%remote_ui``.

Thin wrappers: each magic is a few lines over :class:`~de_magic.caller.client.Client`,
:class:`~de_magic.caller.session.RemoteSession` and :mod:`de_magic.embedded`, so
everything a magic does can be done from plain Python.  Load them with
``%load_ext de_magic``.
"""

from __future__ import annotations

import atexit
import html
import math
import re
import uuid

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from ..caller.client import Client, no_broker_hint
from ..caller.tables import BackendTable, age
from ..caller.jobs import Job, is_job_id, start_cell
from ..caller.session import CellError, RemoteSession, render
from ..embedded import LocalCluster, answers, is_local, start_local
from ..wire.defaults import default_url
from ..wire.errors import DeMagicError, Interrupted, RemoteError


#: Seconds between looks at a followed job's new output (its polls bring it every half second).
FOLLOW_INTERVAL = 0.1
#: Jobs offered by ``%remote_result`` without an id in a kernel that started none.
LATEST_JOBS = 5


def _names(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def _argument(line: str) -> str:
    """A line magic's argument without a trailing ``# comment`` (IPython passes it along; no URL has a ``#``)."""
    return line.partition("#")[0].strip()


def show_error(shell, etype, value, tb, tb_offset=None) -> list[str]:
    """IPython's handler of :class:`DeMagicError` and :class:`Interrupted`: one line, as IPython shows its
    own UsageError.

    The frames of de-magic's client say nothing to a user; a remote error shows the remote traceback.
    """
    render = getattr(value, "_render_traceback_", None)  # a %%remote cell's error: the remote IPython traceback
    if render:
        lines = render()
    elif isinstance(value, RemoteError):
        lines = remote_lines(value)
    elif isinstance(value, Interrupted):
        lines = [str(value)]
    else:
        lines = [f"{etype.__name__}: {value}"]
    shell._showtraceback(etype, value, lines)  # what IPython shows its own errors with: an error output in a kernel
    return lines


def remote_lines(error: RemoteError) -> list[str]:
    """A remote error as Python shows a local one: its traceback, which ends with the error's line, once."""
    message = str(error.args[0]).rstrip() if error.args else ""
    trace = error.remote_traceback.rstrip()
    lines = [re.sub(r"^Traceback \(", "Remote traceback (", trace, count=1)] if trace else []
    if not trace.endswith(message or error.remote_type.rpartition(".")[2]):
        lines.append(f"{error.remote_type}: {message}" if message else error.remote_type)
    return lines


def show_errors_short(shell) -> None:
    """Make ``shell`` show de-magic's errors and interrupts with :func:`show_error`."""
    shell.set_custom_exc((DeMagicError, Interrupted), show_error)


class BackendListing(BackendTable):
    """The live backends with every member's signature and summary: HTML in a notebook, text elsewhere."""

    def _repr_html_(self) -> str:
        url = html.escape(self.broker.get("url", "?"))
        rows = []
        for name, entry in sorted(self.items()):
            members = entry.get("api", {}).get("members", {}) or {"": {}}
            workers = entry.get("workers", [])
            lead = (f"<td rowspan='{len(members)}'><b>{html.escape(name)}</b></td>"
                    f"<td rowspan='{len(members)}'>{len(workers)}</td>"
                    f"<td rowspan='{len(members)}'>{'yes' if entry.get('allow_code') else 'no'}</td>")
            for member, info in members.items():
                signature = html.escape(member + info.get("signature", ""))
                rows.append(f"<tr>{lead}<td style='text-align:left'><code>{signature}</code></td>"
                            f"<td style='text-align:left'>{html.escape(info.get('summary', ''))}</td></tr>")
                lead = ""
        if not rows:
            rows.append("<tr><td colspan='5'>no live backends</td></tr>")
        return (f"<table><caption>de-magic backends at <code>{url}</code></caption>"
                "<tr><th>backend</th><th>workers</th><th>runs code</th><th>member</th><th>summary</th></tr>"
                f"{''.join(rows)}</table>")


@magics_class
class RemoteMagics(Magics):
    """Run code and call methods on de-magic backends from a notebook."""

    def __init__(self, shell):
        super().__init__(shell)
        #: Names this kernel's namespaces on every backend (unless ``--session`` says otherwise).
        self.key = uuid.uuid4().hex
        self._client: Client | None = None
        self.local: LocalCluster | None = None
        self.sessions: dict[tuple[str, str, str], RemoteSession] = {}
        self.last: Job | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self.connect()
        return self._client

    def connect(self, url: str | None = None) -> Client:
        """Use the broker at ``url``; with no URL, the default one, started here if nothing answers."""
        client = Client.shared(url or default_url())
        if not answers(client):
            if url or not is_local(client.url):
                raise UsageError(f"no de-magic broker answers at {client.url}. {no_broker_hint(client.url)}")
            print(f"de-magic: no broker at {client.url}; starting one in this kernel with the demo "
                  "backends hello_world (runs code) and ocean_model. They stop when the kernel does.")
            self.local = start_local(client)
        self._client = client
        return client

    def session(self, backend: str, key: str | None = None) -> RemoteSession:
        """This kernel's session on ``backend`` (or the one named ``key``)."""
        key = key or self.key
        index = (self.client.url, backend, key)
        if index not in self.sessions:
            if not self.sessions:
                atexit.register(self.close_sessions)
            self.sessions[index] = RemoteSession(self.client, backend, key)
        return self.sessions[index]

    def close_sessions(self) -> None:
        """Free this kernel's namespaces on the backends (at kernel exit); unreachable ones are skipped."""
        for session in self.sessions.values():
            try:
                session.close(timeout=2.0)
            except DeMagicError:
                pass
        self.sessions.clear()

    @line_magic
    def remote_connect(self, line: str) -> Client:
        """Connect to a broker: ``%remote_connect [URL]``.

        Without URL: ``$DE_MAGIC_BROKER``, else tcp://127.0.0.1:5555; when nothing answers at
        that local address, a broker and the demo backends are started in this kernel.
        """
        client = self.connect(_argument(line) or None)
        print(f"de-magic: connected to {client.url}")
        return client

    @line_magic
    def remote_list(self, line: str) -> None:
        """Show the live backends and their members: ``%remote_list``."""
        display(BackendListing(self.client.listing()))

    @magic_arguments()
    @argument("name", help="backend name (it must be started with --allow-code)")
    @argument("--push", help="comma-separated local variables to send first")
    @argument("--pull", help="comma-separated remote variables to bring back after")
    @argument("--timeout", type=float,
              help="seconds before the execution is cancelled (default: none; a --noblock job runs to its end)")
    @argument("--noblock", action="store_true",
              help="run it as a job and return at once; %%remote_result [ID] fetches it, also after a kernel restart")
    @argument("--session", help="namespace key on the backend (default: one per kernel)")
    @cell_magic
    def remote(self, line: str, cell: str):
        """Run the cell on a backend, in this kernel's namespace there.

        Output streams in while the cell runs; a remote exception fails the cell with
        the remote traceback; the stop button interrupts the remote execution.
        """
        args = parse_argstring(self.remote, line)
        session = self.session(args.name, args.session)
        missing = [name for name in _names(args.push) if name not in self.shell.user_ns]
        if missing:
            raise UsageError(f"--push: no local variable {', '.join(missing)}")
        push = {name: self.shell.user_ns[name] for name in _names(args.push)}
        if args.noblock:
            self.last = start_cell(session, cell, push, _names(args.pull))
            where = ("waits for offline backend" if self.last.status == "waiting" else "still running on")
            print(f"de-magic: {where} {args.name!r} as job {self.last.id}; `%remote_result` (or "
                  f"`%remote_result {self.last.id}`, also after a kernel restart) fetches it")
            return self.last
        timeout = math.inf if args.timeout is None else args.timeout
        try:
            execution = session.execute(cell, push, _names(args.pull), timeout=timeout)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted; the execution on {args.name!r} was stopped") from None
        self.shell.user_ns.update(execution.result())
        return None

    @line_magic("remote")
    def remote_eval(self, line: str):
        """Evaluate an expression in this kernel's namespace on a backend: ``x = %remote NAME expression``."""
        name, _, expression = line.strip().partition(" ")
        if not expression.strip():
            raise UsageError("usage: %remote NAME expression   (or %%remote NAME for a cell)")
        return self.session(name).eval(expression, timeout=math.inf)

    @line_magic
    def remote_result(self, line: str) -> None:
        """Show a ``%%remote --noblock`` job's output as it comes, then pull: ``%remote_result [ID or handle]``.

        Without an argument the last job of this kernel; an id works from any later kernel of the same
        caller, and what the job printed before is shown first.  Stopping the wait leaves the job running.
        """
        job = self._job(_argument(line))
        shown = 0
        try:
            while True:
                done = job.done()  # before the outputs: the last poll's outputs are in before its answer
                for output in job.outputs[shown:]:
                    render(output)
                    shown += 1
                if done:
                    break
                job.wait(FOLLOW_INTERVAL)
        except KeyboardInterrupt:
            raise Interrupted(f"stopped showing job {job.id}; it goes on on {job.backend!r} "
                              f"(%remote_result {job.id} comes back to it)") from None
        reply = job.result()
        if reply["status"] == "error":
            raise CellError(reply["error"], job.backend)
        self.shell.user_ns.update(reply.get("pulled", {}))

    def _job(self, argument: str) -> Job:
        """The job ``%remote_result`` names: a job id, a variable holding a Job, or this kernel's last."""
        if not argument:
            job = self.last
        elif is_job_id(argument):  # ids are no Python expressions: `backend:worker:token`
            job = self.client.job(argument)
        else:
            job = self.shell.ev(argument)
        if argument and not isinstance(job, Job):
            raise UsageError(f"{argument!r} is no job: give a job's id (%remote_result ID) or a variable holding one")
        if job is None:
            raise UsageError(self._no_last_job())
        return job

    def _no_last_job(self) -> str:
        """What to say when this kernel started no job: this caller's latest ``%%remote`` jobs, to pick from."""
        latest = [job for job in self.client.jobs() if job["what"] == "%%remote"][-LATEST_JOBS:]
        if not latest:
            return f"no %%remote --noblock job of yours at {self.client.url}"
        lines = [f"%remote_result {job['id']}   # {job['status']}, started {age(job['created'])} ago"
                 for job in reversed(latest)]
        return ("this kernel started no %%remote --noblock job; your latest there, newest first:\n"
                + "\n".join(lines))

    @line_magic
    def remote_ui(self, line: str):
        """A form to call a backend member: ``%remote_ui NAME.member`` (or ``NAME.Class.method``)."""
        from .forms import call_form

        backend, _, member = _argument(line).partition(".")
        if not member:
            raise UsageError("usage: %remote_ui NAME.member")
        return call_form(self.client, backend, member)
