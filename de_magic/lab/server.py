"""jupyter_server extension behind the JupyterLab "Remote backends" sidebar.

REST endpoints (all authenticated, all JSON, under ``{base_url}de-magic/``):

``GET brokers``
    The configured brokers: ``{"default": url, "brokers": [url, ...]}``. The default is
    ``DE_MAGIC_BROKER`` (else ``tcp://127.0.0.1:5555``); more can be configured with
    ``c.DeMagicLab.brokers = [...]``. The panel adds the ones the user keeps in its settings.
``POST brokers`` with ``{"url": URL, "broker_key": KEY}``
    Trust the broker at URL: its public key (Z85 text, or the path of a key file on the server)
    goes into its ``[brokers."URL"]`` table of the de-magic config file, which every client of
    this server (the panel's, the kernels') reads. Answers ``{"url", "public_key", "config"}``;
    400 with a message for a bad address or something that is not a public key.
``GET listing?broker=URL``
    Everything the broker offers: the core client's listing (broker, backends, workers,
    full API) plus liveness (``reachable``, ``latency_ms``, ``checked``), and ``gateway``
    (``{"url", "tokens"}``) when the config file's ``[gateway]`` serves this broker over HTTP, so
    the details show each member's HTTP route and a curl line (docs/gateway.md). An unreachable
    broker still answers 200, with ``{"broker": {"url": url}, "reachable": false, "error": "..."}``
    (so do the two below): being down is a state the panel shows, not a failed request.
    ``"needs_key": true`` says that the broker uses CURVE and its key is not known here (``POST brokers``).
``GET backends?broker=URL``
    The backends without their API (name, allow_code, since, workers): cheap to poll.
``GET backends/NAME?broker=URL``
    One backend with its full API; 404 when the broker does not have it.
``GET jobs?broker=URL``
    The jobs of this server's user (its key under CURVE) on the broker's backends:
    ``{"broker", "reachable", "jobs": [summary + "backend", ...], "silent": [backend, ...], "checked"}``
    (see docs/jobs.md); asked only of a broker whose listing answers.

The core client is blocking (ZeroMQ request/reply), so every query runs in a thread of its
broker's own with a short timeout (see :mod:`de_magic.lab.brokerpool`): a slow or dead broker
stalls neither the server's event loop nor the listings of other brokers.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from traitlets import Float, List, Unicode
from traitlets.config import Configurable

from ..gateway import config as gateway

if TYPE_CHECKING:
    from .brokerpool import BrokerPool


def default_broker() -> str:
    from ..caller.client import Client

    return Client.default_url()


class DeMagicLab(Configurable):
    """Server-side settings of the sidebar endpoints (``c.DeMagicLab.*``)."""

    brokers = List(
        Unicode(),
        default_value=[],
        help="Brokers listed for every user, besides the default one (DE_MAGIC_BROKER).",
    ).tag(config=True)

    timeout = Float(
        3.0,
        help="Seconds to wait for a broker's answer before reporting it unreachable.",
    ).tag(config=True)

    retry_interval = Float(
        3.0,
        help="Seconds after a failed query during which a broker is reported as it failed, not asked again.",
    ).tag(config=True)


class _BaseHandler(APIHandler):
    def initialize(self, demagic: DeMagicLab, brokers: BrokerPool) -> None:
        self.demagic = demagic
        self.brokers = brokers

    def _broker_arg(self) -> str:
        from ..wire.defaults import check_doors
        from ..wire.errors import BadAddress

        try:  # a broker, or a consortium's equivalent brokers separated by commas
            return ",".join(check_doors(self.get_query_argument("broker", None) or default_broker()))
        except BadAddress as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None

    async def _listing(self, url: str) -> dict[str, Any]:
        """The broker's listing plus liveness; ``reachable: False`` and an ``error`` when it is down.

        An unreachable broker is a state to show, not a failed request: the answer is 200, so
        the panel's polling shows the message without the browser logging a failed request.
        """
        start = time.monotonic()
        try:
            listing = await self.brokers.listing(url, self.demagic.timeout)
        except Exception as exc:  # DeMagicError subclasses, but also zmq errors on bad URLs
            from ..wire.handshake import UNKNOWN_KEY

            self.log.debug("de-magic: broker %s unreachable: %r", url, exc)
            error = await asyncio.to_thread(_describe, exc, url, self.demagic.timeout)
            return {
                "broker": {"url": url},
                "reachable": False,
                "error": error,
                "needs_key": UNKNOWN_KEY in error,
                "checked": time.time(),
            }
        listing = dict(listing)
        listing["gateway"] = gateway.advertised(url.split(",")[0])
        listing["reachable"] = True
        listing["latency_ms"] = round((time.monotonic() - start) * 1000, 1)
        listing["checked"] = time.time()
        return listing


def _describe(exc: Exception, url: str, timeout: float) -> str:
    """Why the broker at ``url`` gave no listing, in one line; silence is told apart by a probe of the address
    (nothing listening, a host that does not resolve, a program that is no broker, a CURVE broker)."""
    from ..wire import probe
    from ..wire.handshake import UNKNOWN_KEY
    from ..wire.security import Security

    name, door = type(exc).__name__, url.split(",")[0]
    unknown_key = f"The broker at {door} {UNKNOWN_KEY}."  # the panel offers to add it: no config file how-to
    if UNKNOWN_KEY in str(exc):
        return unknown_key
    if name not in ("CallTimeout", "BackendLost", "TimeoutError"):
        return f"Could not query the broker at {url}: {name}: {exc}"
    silent = f"No answer from the broker at {url} within {timeout:g} s"
    found = probe.probe(door, timeout)
    if found is None or found.kind == probe.PLAIN:
        return f"{silent}: is it running?"
    if found.kind != probe.CURVE:
        return f"{silent}: {found.message}"
    if Security.resolve(url=door).broker_key is None:
        return unknown_key
    return f"{silent}: it uses CURVE; is the public key configured for it here its key?"


class BrokersHandler(_BaseHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        default = default_broker()
        brokers = [default] + [b for b in self.demagic.brokers if b != default]
        self.finish(json.dumps({"default": default, "brokers": brokers}))

    @tornado.web.authenticated
    def post(self) -> None:
        from ..wire.defaults import check_url
        from ..wire.errors import DeMagicError
        from ..wire.security import key_ref, public_key, remember_broker

        body = self.get_json_body() or {}
        try:
            url, key = check_url(str(body.get("url", ""))), str(body.get("broker_key", "")).strip()
            config = remember_broker(url, key)
        except DeMagicError as exc:  # a bad address, not a key, a config file this cannot edit
            raise tornado.web.HTTPError(400, str(exc)) from None
        self.brokers.forget(url)  # its client was made without the key, and may be cooling down from a refusal
        self.log.info("de-magic: stored the public key of %s in %s", url, config)
        self.finish(json.dumps({"url": url, "public_key": public_key(key_ref(key)).decode(), "config": str(config)}))


class ListingHandler(_BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        self.finish(json.dumps(await self._listing(self._broker_arg())))


class BackendsHandler(_BaseHandler):
    @tornado.web.authenticated
    async def get(self, name: str | None = None) -> None:
        url = self._broker_arg()
        listing = await self._listing(url)
        if not listing["reachable"]:
            self.finish(json.dumps({k: listing[k] for k in ("broker", "reachable", "error", "needs_key", "checked")}))
            return
        backends = listing.get("backends", {})
        if name:
            if name not in backends:
                raise tornado.web.HTTPError(404, f"no backend {name!r} on {url}")
            self.finish(json.dumps(dict(backends[name], broker=listing["broker"], reachable=True)))
            return
        summary = {
            key: {k: v for k, v in backend.items() if k != "api"} for key, backend in backends.items()
        }
        self.finish(
            json.dumps(
                {
                    "broker": listing["broker"],
                    "reachable": True,
                    "backends": summary,
                    "checked": listing["checked"],
                }
            )
        )


class JobsHandler(_BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        url = self._broker_arg()
        listing = await self._listing(url)  # a dead broker is answered from the pool's cool-down, at once
        if not listing["reachable"]:
            self.finish(json.dumps({k: listing[k] for k in ("broker", "reachable", "error", "needs_key", "checked")}))
            return
        table = await asyncio.to_thread(_jobs, url, self.demagic.timeout)
        self.finish(json.dumps({"broker": listing["broker"], "reachable": True, "jobs": list(table),
                                "silent": table.silent, "checked": time.time()}))


def _jobs(url: str, timeout: float):
    """This server user's jobs at the broker, with a client of their own (jobs are asked for seldom)."""
    from ..caller.client import Client

    with Client(url, timeout=timeout) as client:
        return client.jobs()


def setup_handlers(serverapp: Any) -> None:
    base = url_path_join(serverapp.web_app.settings["base_url"], "de-magic")
    from .brokerpool import BrokerPool  # imports zmq: only once the extension is loaded

    demagic = DeMagicLab(parent=serverapp)
    kwargs = {"demagic": demagic, "brokers": BrokerPool(cooldown=demagic.retry_interval)}
    serverapp.web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "brokers"), BrokersHandler, kwargs),
            (url_path_join(base, "listing"), ListingHandler, kwargs),
            (url_path_join(base, "backends"), BackendsHandler, kwargs),
            (url_path_join(base, r"backends/([^/]+)"), BackendsHandler, kwargs),
            (url_path_join(base, "jobs"), JobsHandler, kwargs),
        ],
    )


def _load_jupyter_server_extension(serverapp: Any) -> None:
    setup_handlers(serverapp)
    serverapp.log.info("de-magic: sidebar endpoints at %sde-magic/", serverapp.base_url)
