"""A backend's direct endpoint: callers that can reach it leave the broker out of the data path.

The broker stays where callers discover backends and where trust is decided;
this endpoint only carries calls.  It speaks the client's half of the protocol
(``CALL``, ``CANCEL``, ``QUERY``; answers as the broker would give them), so a
client uses the same code for both paths.

Who may call here, what waits and what is refused is decided by
:class:`~de_magic.backend.core.DirectCore` with the broker's own rules: under
CURVE a caller's key must be one a broker we are registered at lets in (each
tells us in ``WELCOME``, and again when its allowed keys change) and, if the
backend has ``allow_clients``, among those, checked at the handshake and on
every call.  Without CURVE the endpoint must be on loopback, as a plaintext
broker must, and a backend with ``allow_clients`` admits nobody here.

The endpoint is served by a thread of its own: calls go to free slot
threads over an in-process connection that a slot treats like one more
broker.  A direct call that runs for more than :data:`BUSY_AFTER` is reported
to the brokers (``BUSY`` for its slot, from the control connection, then
``SLOT`` when it ends), so their view of the load stays right; a shorter one
is over before anyone could act on the news, and costs the brokers nothing.
A broker's call to a slot that is busy meanwhile waits there and runs next.
Calls that find every slot busy wait here, up to the backend's ``max_queue``
and ``max_queued_bytes``.

Handing a call to a slot and its answer back costs two thread switches, as
much as the broker's hop it saves.  So a member whose last calls each took
under :data:`QUICK` runs *inline*, on the endpoint's own thread, like a plain
REQ/REP server.  In case such a call runs long after all, the endpoint's
socket is left free while it runs: after :data:`RELIEF_AFTER` another thread
(:meth:`.directloop.DirectThreads.relieve`) serves it meanwhile (queries, cancels, other calls
for the slots), so a mispredicted call delays nothing for more than that.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import Callable
from urllib.parse import urlsplit

import zmq
from zmq.auth.thread import ThreadAuthenticator

from ..wire import admission, localsocket, routingids
from ..wire import protocol as P
from ..wire.errors import Refused
from ..wire.framing import send_frames
from ..wire.security import Security, is_loopback, peer_key
from .core import DirectCore, Entry

log = logging.getLogger("de_magic.backend.direct")

ZAP_DOMAIN = "de-magic-direct"
DIRECT_ENV = "DE_MAGIC_DIRECT"
ADVERTISE_ENV = "DE_MAGIC_ADVERTISE"
BUSY_AFTER = 0.02  #: seconds a direct call runs before the brokers hear that its slot is busy
QUICK = 0.001  #: seconds under which a call counts as quick
QUICK_STREAK = 3  #: quick calls in a row after which a member's calls run inline
RELIEF_AFTER = 0.05  #: seconds an inline call may hold the endpoint before another thread serves it
#: The first byte of a caller's name in the core's books: which socket it came on (routing ids are the peers' own
#: choice, so the two sockets' may be alike)
REMOTE, LOCAL = b"r", b"l"


def direct_address(value: str | None) -> str | None:
    """Where to listen for direct calls: ``value`` (a flag or main() option), else $DE_MAGIC_DIRECT, else the
    config file's ``direct``; None: connect out only."""
    from ..wire.security import DIRECT, setting

    return setting(value, DIRECT_ENV, DIRECT)


def advertised_host(value: str | None) -> str | None:
    """The host callers are told to reach the direct endpoint at: ``value`` (a flag or main() option), else
    $DE_MAGIC_ADVERTISE, else the config file's ``advertise``; None: the bound one (see :func:`advertised`)."""
    from ..wire.security import ADVERTISE, setting

    host = setting(value, ADVERTISE_ENV, ADVERTISE)
    if host is not None and ("/" in host or host.count(":") == 1):
        raise ValueError(f"--advertise takes a host name or address, not {host!r}: callers are told "
                         "tcp://HOST:PORT with the port the endpoint is bound to")
    return host


class _GateKeeper(ThreadAuthenticator):
    """ZAP for the direct endpoint, in its own context: a broker's handler may serve this process's other one."""

    def __init__(self, context: zmq.Context, core: DirectCore):
        super().__init__(context, log=logging.getLogger("de_magic.backend.direct.zap"))
        self.core = core
        self.configure_curve_callback(ZAP_DOMAIN, self)

    def callback(self, domain: str, key: bytes) -> bool:
        admitted = self.core.admits(key.decode("ascii", "replace"))
        if not admitted:
            log.info("refused a direct connection: key %s is not a caller the broker vouches for",
                     key.decode("ascii", "replace"))
        return admitted


class DirectEndpoint:
    """The listening socket, the in-process link to the slots, and the calls that came this way.

    ``index`` is the door number slots know this endpoint by (after the brokers'). Driven by a thread
    of the backend's own (:meth:`.directloop.DirectThreads.loop`, or while it runs a call inline for
    long, :meth:`.directloop.DirectThreads.relieve`), whichever holds :attr:`lock`: :meth:`on_caller`, :meth:`on_slot`, :meth:`news`.
    """

    def __init__(self, backend, url: str, index: int, security: Security, context: zmq.Context,
                 host: str | None = None):
        self.backend, self.index = backend, index
        self.curve = security.curve
        self.core = DirectCore(backend.name, backend.id, backend.max_workers, max_queue=backend.max_queue,
                               max_message_size=backend.max_message_size, max_queued_bytes=backend.max_queued_bytes,
                               allow_clients=backend.allow_clients, curve=self.curve, inline=self._runs_inline,
                               lease=admission.caller_lease(backend.heartbeat, backend.liveness))
        self._ctx = zmq.Context()  # see _GateKeeper
        self._auth: _GateKeeper | None = None
        #: the public key callers check this endpoint by, where the broker does not vouch for it (no CURVE)
        self.key: str | None = None
        if not self.curve and not is_loopback(url):
            raise Refused(f"refusing to listen for direct calls at {url} without encryption: give the backend a "
                          "key pair (--key and --broker-key, as for a CURVE broker), or listen on 127.0.0.1")
        self.sock = self._bind(url, security)
        #: without CURVE, this user's callers on this machine may come through a Unix socket (wire/localsocket.py)
        self.local, self.local_url = (None, None) if self.curve else self._bind_local()
        bound = self.sock.last_endpoint.decode()
        self.url = advertised(bound, host)
        if not is_loopback(bound) and names_loopback(urlsplit(self.url).hostname or ""):
            log.warning("the direct endpoint listens at %s but is advertised as %s, which callers on other "
                        "machines cannot reach: give --advertise HOST, a name or address they reach this machine at",
                        bound, self.url)
        self.slots_url = f"inproc://de-magic-direct-{id(self)}"
        self.context = context  # the backend's: the slots connect to ``link`` in it (see connect_slot)
        self.link = context.socket(zmq.ROUTER)
        self.link.bind(self.slots_url)
        self.running: dict[bytes, float] = {}  # slot -> when its direct call started, until the brokers hear
        self.reported: set[bytes] = set()  # slots the brokers were told are busy with a direct call
        self.freed: list[bytes] = []  # reported slots whose call ended: the brokers are to hear they are free
        #: Held by the thread that uses the sockets: the endpoint's own, or (see RELIEF_AFTER) the relief thread.
        self.lock = threading.Lock()
        self.inline_since = 0.0  # when the inline call running now started (0: none runs)
        self.relieving = False  # the relief thread serves the sockets: nothing runs inline
        self.thread_id: int | None = None  # the endpoint's own thread (which runs quick calls inline)
        self.quick: dict[tuple, int] = {}  # member -> its quick calls in a row
        self.timing: dict[tuple[bytes, bytes], tuple[tuple, float]] = {}  # call -> (member, start)

    def _bind(self, url: str, security: Security) -> zmq.Socket:
        sock = routingids.router(self._ctx)  # no peer can take another's name, or make libzmq abort
        sock.linger = 0
        sock.maxmsgsize = self.backend.max_message_size + (1 << 20)
        if self.curve:
            self._auth = _GateKeeper(self._ctx, self.core)
            self._auth.start()
            sock.curve_publickey, sock.curve_secretkey = security.key_pair
            sock.zap_domain = ZAP_DOMAIN.encode()
        else:
            # A key pair of this endpoint's own, told to callers through the broker (READY's direct_key): a
            # process that takes the port after we are gone cannot complete a handshake as us, so its
            # answers never reach a caller. Any caller key is let in, as a plaintext loopback broker lets in all.
            public, secret = zmq.curve_keypair()
            sock.curve_publickey, sock.curve_secretkey = public, secret
            self.key = public.decode()
        sock.curve_server = True
        try:
            sock.bind(url)
        except zmq.ZMQError as exc:
            self.close(sock)
            raise Refused(f"cannot listen for direct calls at {url}: {exc.strerror}") from None
        return sock

    def _bind_local(self) -> tuple[zmq.Socket | None, str | None]:
        url = localsocket.address(self.backend.id.hex())
        if url is None:
            return None, None
        sock = routingids.router(self._ctx)
        sock.linger = 0
        sock.maxmsgsize = self.backend.max_message_size + (1 << 20)
        try:
            sock.bind(url)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            log.warning("no local direct endpoint: cannot listen at %s (%s)", url, exc.strerror)
            return None, None
        return sock, url

    def sources(self) -> list[tuple[zmq.Socket, Callable[[list], None]]]:
        """The sockets the endpoint's thread reads, each with what takes its messages."""
        found = [(self.link, self.on_slot), (self.sock, self.on_caller)]
        return found + [(self.local, self.on_local)] if self.local is not None else found

    def connect_slot(self, routing_id: bytes) -> zmq.Socket:
        """A slot's connection to this endpoint: one more door to it, like a broker's."""
        link = self.context.socket(zmq.DEALER)
        link.linger = 0
        link.routing_id = routing_id  # the slot's name at the brokers too: the I/O thread speaks for it
        link.connect(self.slots_url)
        return link

    def close(self, sock: zmq.Socket | None = None) -> None:
        for s in (sock or getattr(self, "sock", None), getattr(self, "local", None), getattr(self, "link", None)):
            if s is not None:
                s.close(linger=0)
        if getattr(self, "local_url", None) is not None:
            localsocket.remove(self.local_url)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    # -- from callers ---------------------------------------------------------------------------

    def on_caller(self, frames: list, side: bytes = REMOTE) -> None:
        try:
            self._on_caller(frames, side)
        except Exception as exc:  # noqa: BLE001 - whatever arrives, the endpoint must live on
            self.backend.bad.failed("a direct message", exc)

    def on_local(self, frames: list) -> None:
        self.on_caller(frames, LOCAL)

    def _on_caller(self, frames: list, side: bytes) -> None:
        caller, frames = side + frames[0].bytes, frames[1:]
        try:
            msg = P.parse(frames, P.AT_BROKER)
            if type(msg) is P.Cancel and self.core.started(caller, msg.rid):
                self.backend.cancel((self.index, caller, msg.rid))
            key = peer_key(frames[0]) if self.curve else None
            for answer in self.core.on_caller(caller, msg, key, time.monotonic()):
                self._to_caller(answer)
        except P.ProtocolError as exc:
            self.backend.bad.report("bad direct message from %s: %s", caller.hex(), exc)
            if exc.rid is not None:  # (a worker's message here, READY included, gets no answer)
                self._to_caller(P.protocol_error_to(caller, exc))
        self._dispatch()

    def _dispatch(self) -> None:
        """Start what the core says may start: on a free slot, or inline (see QUICK)."""
        while (entry := self.core.next(time.monotonic())) is not None:
            if not entry.slot:
                self._inline(entry)
                continue
            self.running[entry.slot] = now = time.monotonic()
            if entry.member is not None:
                self.timing[(entry.caller, entry.rid)] = (entry.member, now)
            send_frames(self.link, P.work(entry.slot, entry.caller, entry.rid, entry.key, entry.body))
        for answer in self.core.drain():  # calls of callers gone silent, dropped before they started
            self._to_caller(answer)

    # -- quick calls, inline ---------------------------------------------------------------------

    def _runs_inline(self, entry: Entry) -> bool:
        """Whether a call is of a member whose last calls were all quick (the core asks, for its queue's head)."""
        if entry.member is ...:
            entry.header, entry.member = self._member(entry.body)
        return entry.member is not None and self.quick.get(entry.member, 0) >= QUICK_STREAK and not self.relieving

    def _member(self, body: list) -> tuple[dict | None, tuple | None]:
        """A call's header, and the member it calls if it is a plain call of one of ours (what quickness is
        learnt for)."""
        try:
            header = P.load_header(body[0])
        except P.ProtocolError:
            return None, None  # the slot will answer it
        name, method = header.get("member"), header.get("method")
        if header.get("op", "call") != "call" or header.get("keep") or not isinstance(name, str) \
                or name not in self.backend.members:
            return header, None
        methods = self.backend.api["members"][name].get("methods", {})
        return header, (name, method if isinstance(method, str) and method in methods else None)

    def _learn(self, member: tuple, seconds: float) -> None:
        if seconds < QUICK:
            self.quick[member] = self.quick.get(member, 0) + 1
        else:
            self.quick.pop(member, None)

    def _inline(self, entry: Entry) -> None:
        """Run a quick member's call here (its answer goes out from here too: see :meth:`deliver`)."""
        start = self.inline_since = time.monotonic()
        self.lock.release()  # for the relief thread, should the call run long
        try:
            self.backend.run_inline(self.index, P.Work(entry.caller, entry.rid, entry.key or "", entry.header,
                                                       entry.body[1:]))
        finally:
            self.inline_since = 0.0
            self.lock.acquire()
        self._learn(entry.member, time.monotonic() - start)

    # -- from slots (and answers of work that ran in other threads, through the link) ------------

    def on_slot(self, frames: list) -> None:
        slot, frames = frames[0].bytes, frames[1:]
        msg = P.parse(frames, P.AT_BROKER)  # from our own threads: well-formed
        if type(msg) is P.Slot:
            self.core.slot_free(slot)
            self._dispatch()
        elif type(msg) is P.SlotBusy:
            self.core.slot_busy(slot)
        elif type(msg) is P.Answer:
            self.answer(msg)

    def deliver(self, msg: P.Answer) -> bool:
        """An inline call's answer or event, sent by the thread running it: out at once, unless the relief
        thread has the sockets now (False: send it through the link)."""
        if threading.get_ident() != self.thread_id or not self.lock.acquire(blocking=False):
            return False
        try:
            self.answer(msg, dispatch=False)  # not from inside a call: the loop dispatches when it is over
        finally:
            self.lock.release()
        return True

    def answer(self, msg: P.Answer, dispatch: bool = True) -> None:
        """A REPLY, EVENT or ERROR for a direct call: to its caller; a final one frees the call's slot."""
        entry = self.core.on_answer(msg.client, msg.rid, final=msg.type != P.EVENT)
        if entry is None:
            return  # cancelled while it waited, or a duplicate
        if msg.type != P.EVENT:
            if entry.slot:  # b"": it ran inline
                self._ended(entry.slot)
            timed = self.timing.pop((msg.client, msg.rid), None)
            if timed is not None:
                self._learn(timed[0], time.monotonic() - timed[1])
        self._to_caller(P.to_client(msg.client, msg.type, msg.rid, msg.body))
        if dispatch:
            self._dispatch()

    # -- what the brokers hear of the load -----------------------------------------------------

    def _ended(self, slot: bytes) -> None:
        if self.running.pop(slot, None) is None and slot in self.reported:
            self.reported.discard(slot)
            self.freed.append(slot)

    @property
    def report_at(self) -> float:
        """When the oldest unreported direct call becomes news for the brokers (inf: none runs)."""
        return next(iter(self.running.values()), float("inf")) + BUSY_AFTER

    def news(self, now: float) -> tuple[list[bytes], list[bytes]]:
        """Slots to report busy (their direct call runs long enough to matter), and reported ones now free."""
        busy = []
        for slot, started in self.running.items():  # oldest first
            if now - started < BUSY_AFTER:
                break
            busy.append(slot)
        for slot in busy:
            del self.running[slot]
        self.reported.update(busy)
        freed, self.freed = self.freed, []
        return busy, freed

    def _to_caller(self, frames: list) -> None:
        """Send to the caller named first in ``frames``, on the socket it came on."""
        name = frames[0]
        try:
            send_frames(self.local if name[:1] == LOCAL else self.sock, [name[1:], *frames[1:]], zmq.NOBLOCK)
        except zmq.Again:  # the caller is gone or not reading: as through a broker, the answer is lost
            log.debug("dropped an answer for a direct caller that takes none")


def advertised(endpoint: str, host: str | None = None) -> str:
    """The address callers elsewhere reach a bound ``endpoint`` at: on ``host`` if given, else on its own host,
    a wildcard one being this machine's fully qualified name."""
    parts = urlsplit(endpoint)
    bound, _, port = parts.netloc.rpartition(":")
    if host is None:
        host = socket.getfqdn() if bound in ("0.0.0.0", "*", "[::]", "::") else bound
    elif ":" in host and not host.startswith("["):  # an IPv6 address, as a URL holds it
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


def names_loopback(host: str) -> bool:
    """Whether ``host`` stands for this machine alone: a loopback address, or a name resolving only to such."""
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):  # unknown here: callers elsewhere may know it
        return False
    return bool(found) and all(ipaddress.ip_address(address.partition("%")[0]).is_loopback for address in found)
