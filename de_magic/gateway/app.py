"""The HTTP side of the gateway: Tornado routes over :class:`~de_magic.gateway.calls.Calls`.

Tornado, because de-magic depends on it already (through jupyter_server): no new server stack
to install, patch and audit; its HTTP/1.1 server is mature, has TLS options of its own, and
streams request bodies (so an oversized one is refused before it is read) and responses (SSE).
Calls block on de-magic client sockets, so handlers run them in a thread pool and the event
loop stays free for other requests and event streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import tornado.httpserver
import tornado.iostream
import tornado.web

from ..wire.security import Security
from . import jobs
from .calls import Calls
from .config import GatewayConfig
from .openapi import Documents
from .problems import MEDIA_TYPE, Problem

log = logging.getLogger("de_magic.gateway")

THREADS = 32  # calls waiting on backends at once; more wait for a thread


class Base(tornado.web.RequestHandler):
    """Authentication, problem+json errors, and running blocking work off the event loop."""

    calls: Calls
    pool: ThreadPoolExecutor
    grant = None

    def initialize(self, calls: Calls, pool: ThreadPoolExecutor, documents: Documents) -> None:
        self.calls, self.pool, self.documents = calls, pool, documents

    def prepare(self):
        self.grant = self.calls.config.tokens.check(self.request.headers.get("Authorization"))

    async def run(self, func, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: func(*args, **kwargs))

    def send_json(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":")))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, Problem):
            problem = exc
        elif isinstance(exc, tornado.web.HTTPError) and status_code < 500:
            problem = Problem({404: "not_found", 405: "method"}.get(status_code, "bad_request"),
                              exc.log_message or self._reason, status=status_code)
        else:
            log.error("gateway error on %s %s", self.request.method, self.request.path, exc_info=kwargs.get("exc_info"))
            problem = Problem("error", f"the gateway failed: {exc!r}; see its log", status=500)
        self.set_status(problem.status)
        if problem.status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="de-magic"')
        self.set_header("Content-Type", MEDIA_TYPE)
        self.finish(json.dumps(problem.document()))

    def log_exception(self, typ, value, tb) -> None:
        if not isinstance(value, Problem):  # a problem is an answer, not a fault of the gateway
            super().log_exception(typ, value, tb)

    def timeout(self) -> float | None:
        text = self.get_query_argument("timeout", None)
        if text is None:
            return None
        try:
            value = float(text)
        except ValueError:
            value = 0.0
        if not value > 0:
            raise Problem("bad_request", f"timeout must be a positive number of seconds, not {text!r}", field="timeout")
        return value


class BackendsHandler(Base):
    async def get(self):
        self.send_json(await self.run(self.calls.catalog.listing, True))


class OpenAPIHandler(Base):
    async def get(self):
        listing = await self.run(self.calls.catalog.listing)
        self.send_json(self.documents.of(listing))


class DocsHandler(tornado.web.RequestHandler):
    """The page that renders /openapi.json: its script and style are in the page itself, nothing from a CDN."""

    def get(self):
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; "
                                                   "style-src 'unsafe-inline'; connect-src 'self'")
        self.finish(resources.files(__package__).joinpath("docs.html").read_bytes())


@tornado.web.stream_request_body
class CallHandler(Base):
    """``POST /backends/{backend}/{member}[/{method}][/jobs]``: a call, or a job started."""

    def prepare(self):
        super().prepare()
        self.limit = self.calls.max_body()
        self.chunks: list[bytes] = []
        self.size = 0
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            raise self._too_large(int(length))

    def _too_large(self, size: int) -> Problem:
        return Problem("too_large", f"the body has {size} bytes, over the limit of {self.limit} bytes (the broker's "
                                    "maximum message size): send less, or keep large data where the backend is")

    def data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size <= self.limit:
            self.chunks.append(chunk)

    async def post(self, backend: str, rest: str):
        if self.size > self.limit:
            raise self._too_large(self.size)
        timeout = self.timeout()
        body = b"".join(self.chunks)
        as_job, result = await self.run(self._post, backend, rest.split("/"), body, timeout)
        if as_job:
            self.set_header("Location", f"/jobs/{result['id']}")
            self.send_json(result, 202)
        else:
            self.send_json(result)

    def _post(self, backend: str, parts: list[str], body: bytes, timeout) -> tuple[bool, object]:
        target, as_job = self._route(backend, parts)
        payload = self.calls.prepare(target, body)
        if as_job:
            return True, {**jobs.document(self.calls.start(self.grant, target, payload)), "backend": backend}
        return False, self.calls.call(self.grant, target, payload, timeout)

    def _route(self, backend: str, parts: list[str]):
        """The member (or method) a path names, and whether it is to start as a job."""
        if not all(parts) or len(parts) > 3 or (len(parts) == 3 and parts[2] != "jobs"):
            raise Problem("not_found", f"no route {self.request.path!r}: calls are POST /backends/BACKEND/MEMBER, "
                                       "or /backends/BACKEND/CLASS/METHOD, with /jobs after either for a job")
        catalog, member = self.calls.catalog, parts[0]
        if len(parts) == 1:
            return catalog.target(backend, member, None), False
        if len(parts) == 3:
            return catalog.target(backend, member, parts[1]), True
        # /backends/b/f/jobs is a job of f, unless f is a class (then "jobs" would be its method)
        if parts[1] == "jobs" and not catalog.is_class(backend, member):
            return catalog.target(backend, member, None), True
        return catalog.target(backend, member, parts[1]), False


class JobHandler(Base):
    async def get(self, job_id: str):
        self.send_json(await self.run(jobs.status, self.calls, self.grant, job_id))

    async def delete(self, job_id: str):
        cancelled = await self.run(self.calls.job, self.grant, job_id, "job.cancel")
        self.send_json({"id": job_id, "cancelled": bool(cancelled)})


class JobEventsHandler(Base):
    async def get(self, job_id: str):
        follower = jobs.Follower(self.calls, self.grant, job_id)
        first = await self.run(follower.poll)  # a job that does not exist is a 404, before the stream starts
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        events = first
        while True:
            for item in events:
                self.write(item)
            try:
                await self.flush()
            except tornado.iostream.StreamClosedError:
                return  # the client went away; the job goes on
            if follower.ended:
                break
            await asyncio.sleep(jobs.POLL_INTERVAL)
            try:
                events = await self.run(follower.poll)
            except Problem as problem:  # e.g. the backend was lost: the stream ends saying so
                self.write(jobs.event("error", problem.document()))
                break
        self.finish()


class NotFound(Base):
    def prepare(self):
        super().prepare()
        raise Problem("not_found", f"no route {self.request.method} {self.request.path}; see /docs or /openapi.json")


def make_app(calls: Calls, pool: ThreadPoolExecutor) -> tornado.web.Application:
    args = {"calls": calls, "pool": pool, "documents": Documents(bool(calls.config.tokens))}
    return tornado.web.Application([
        (r"/backends", BackendsHandler, args),
        (r"/openapi\.json", OpenAPIHandler, args),
        (r"/docs", DocsHandler),
        (r"/backends/([^/]+)/(.+)", CallHandler, args),
        (r"/jobs/([^/]+)/events", JobEventsHandler, args),
        (r"/jobs/([^/]+)", JobHandler, args),
    ], default_handler_class=NotFound, default_handler_args=args, compress_response=False)


def serve(config: GatewayConfig, security: Security | None = None) -> None:
    """Run the gateway until SIGTERM or Ctrl-C."""
    calls = Calls(config, security)
    pool = ThreadPoolExecutor(THREADS, thread_name_prefix="de-magic-gateway")
    ssl_options = None
    if config.certfile:
        ssl_options = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_options.load_cert_chain(config.certfile, config.keyfile)

    async def main():
        server = tornado.httpserver.HTTPServer(make_app(calls, pool), ssl_options=ssl_options,
                                               max_body_size=1 << 40)  # the handlers enforce the real limit
        server.listen(config.port, config.host)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"de-magic: gateway on {config.base_url} for the broker at {calls.url} "
              f"({'tokens required' if config.tokens else 'no tokens: this machine only'}); "
              f"API at {config.base_url}/docs", flush=True)
        await stop.wait()
        server.stop()

    try:
        asyncio.run(main())
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        calls.close()
