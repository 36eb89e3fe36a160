"""The gateway as a de-magic client: calls and job requests in JSON, one client per identity.

Each token's calls go through a :class:`Client` holding that token's key pair, so the broker
and each backend's ``allow_clients`` judge them as they judge any Python caller with that key.
Every request says ``"codec": "json"``: arguments leave as JSON and answers come back as JSON
frames, which go out as the HTTP body as they are.  Nothing is ever pickled or unpickled here;
an answer that is not JSON (a backend older than this gateway) is refused, not read.

These methods block (a :class:`Client` call waits on its thread's socket): the HTTP side runs
them in a thread pool.
"""

from __future__ import annotations

import json
from collections import deque

from ..caller.client import Client
from ..caller.jobs import parse_id
from ..wire.defaults import DEFAULT_MAX_MESSAGE, check_doors, default_url
from ..wire.errors import NO_SUCH_JOB, BackendLost, DeMagicError, JobUnavailable, UnknownBackend
from ..wire.protocol import BROKER_HELD
from ..wire.security import Security, local_user
from ..wire.serialize import JSON
from .catalog import Catalog, Target, check
from .config import GatewayConfig
from .problems import Problem, from_error
from .tokens import Grant

#: Seconds a job request (status, poll, cancel) may take: they are answered at once by a live worker.
JOB_REQUEST_TIMEOUT = 10.0


class Calls:
    """The clients of the gateway (its own, and one per token) and what is sent through them."""

    def __init__(self, config: GatewayConfig, security: Security | None = None):
        self.config = config
        self.url = check_doors(config.broker or default_url())[0]
        own = security or Security.resolve(url=self.url)
        self._clients: dict[str, Client] = {}
        for grant in config.tokens.grants:
            if grant.key is not None:
                keys = Security(key=grant.key, broker_key=own.broker_key)
                self._clients[grant.name] = Client(self.url, timeout=config.timeout, codec=JSON, security=keys)
        # the gateway's own identity, for tokens without a key of their own (and for all calls without tokens);
        # a CURVE broker's key alone, with a key per token, is no identity of its own
        needed = not config.tokens or len(self._clients) < len(config.tokens.grants)
        self._own = Client(self.url, timeout=config.timeout, codec=JSON, security=own) if needed else None
        # the listing is asked by the first token's identity when tokens have keys
        lister = next(iter(self._clients.values()), self._own)
        self.catalog = Catalog(lambda: lister.listing())

    def close(self) -> None:
        for client in (self._own, *self._clients.values()):
            if client is not None:
                client.close()

    def client(self, grant: Grant | None) -> Client:
        return self._clients.get(grant.name, self._own) if grant is not None else self._own

    @staticmethod
    def user(grant: Grant | None) -> str:
        """Whose jobs these are on a plaintext broker (under CURVE the key decides)."""
        return f"gateway:{grant.name}" if grant is not None else local_user()

    def max_body(self) -> int:
        """Bytes an HTTP body may have: the configured limit, else the broker's maximum message size."""
        if self.config.max_body:
            return int(self.config.max_body)
        return int(self.catalog.listing()["broker"].get("max_message_size") or DEFAULT_MAX_MESSAGE)

    # -- calls -------------------------------------------------------------------------------

    def prepare(self, target: Target, body: bytes) -> bytes:
        """The JSON payload of a call of ``target`` with this HTTP body, checked against its schema."""
        try:
            arguments = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            raise Problem("invalid", f"the body is not JSON: {exc}", field="") from None
        if not isinstance(arguments, dict):
            raise Problem("invalid", "the body must be a JSON object of arguments by name", field="")
        if target.method is None:
            check(target.args, arguments)
            return b"[[]," + body + b"]" if body.strip() else b"[[],{}]"
        unknown = set(arguments) - {"init", "args"}
        if unknown:
            raise Problem("invalid", f"a method's body is {{\"init\": {{...}}, \"args\": {{...}}}}, not "
                                     f"{', '.join(sorted(unknown))}", field=sorted(unknown)[0])
        init, args = arguments.get("init", {}), arguments.get("args", {})
        check(target.init, init, "init")
        check(target.args, args, "args")
        return json.dumps([[], args, [], init], separators=(",", ":")).encode()

    def call(self, grant: Grant | None, target: Target, payload: bytes, timeout: float | None) -> bytes:
        """The result of a call, as the JSON bytes the backend sent."""
        header = {"member": target.member, "codec": JSON}
        if target.method is not None:
            header["method"] = target.method
        head, frames = self._request(grant, target.backend, header, [payload], timeout)
        return bytes(frames[0])

    def _request(self, grant, backend: str, header: dict, payload: list, timeout: float | None = None,
                 worker: bytes = b"", on_event=None) -> tuple[dict, list]:
        try:
            head, frames = self.client(grant).request(backend, header, payload, timeout=timeout, worker=worker,
                                                      on_event=on_event)
        except DeMagicError as exc:
            raise from_error(exc) from None
        if head.get("codec") != JSON or len(frames) != 1:
            raise Problem("protocol", f"backend {backend!r} answered with a pickle; the gateway unpickles nothing "
                                      "(update de-magic on the backend: JSON calls are answered in JSON)")
        return head, frames

    # -- jobs ----------------------------------------------------------------------------------

    def start(self, grant: Grant | None, target: Target, payload: bytes) -> dict:
        header = {"op": "job.start", "run": "call", "member": target.member, "codec": JSON, "user": self.user(grant)}
        if target.method is not None:
            header["method"] = target.method
        head, frames = self._request(grant, target.backend, header, [payload], JOB_REQUEST_TIMEOUT)
        return {**json.loads(bytes(frames[0])), "backend": target.backend}

    def job(self, grant: Grant | None, job_id: str, op: str, on_event=None, **fields) -> dict:
        """A job request (``job.status``, ``job.poll``, ``job.cancel``) to the worker holding the job: the one
        its id names, else (the backend restarted) any other worker of its backend that knows it. A job started
        while its backend was offline names the broker, which holds it or says which worker it handed it to."""
        try:
            backend, named = parse_id(job_id)
        except JobUnavailable as exc:
            raise from_error(exc) from None
        header = {"op": op, "id": job_id, "codec": JSON, "user": self.user(grant), **fields}
        entry = self.catalog.listing(fresh=True)["backends"].get(backend) or {"workers": []}
        workers = deque([named] + [bytes.fromhex(w["id"]) for w in entry["workers"] if bytes.fromhex(w["id"]) != named])
        gone = Problem("job", f"{NO_SUCH_JOB} {job_id!r}: no live worker of backend {backend!r} has it (a job that "
                              "was running when its backend stopped is lost; finished ones outlive a restart only "
                              "with --job-dir)")
        while workers:
            worker = workers.popleft()
            try:
                head, frames = self._request(grant, backend, header, [], JOB_REQUEST_TIMEOUT, worker, on_event)
                reply = json.loads(bytes(frames[0]))
                if worker != BROKER_HELD or not isinstance(reply, dict) or "worker" not in reply:
                    return reply
                workers.appendleft(bytes.fromhex(reply["worker"]))  # the broker handed it over: ask that worker
                named = workers[0]
            except Problem as problem:
                if problem.kind in (BackendLost.kind, UnknownBackend.kind) or (
                        problem.kind == JobUnavailable.kind and problem.detail.startswith(NO_SUCH_JOB)
                        and worker != named):
                    continue  # that worker is gone, or is not the one holding the job
                raise
        raise gone
