"""Which way a call goes: straight to a worker's direct endpoint when it can, else through the broker.

Listings tell which workers listen for direct calls, and the key the broker
authenticated for each (a caller trusts a worker's endpoint by that key and by
nothing else).  Whether this client can reach an endpoint is learnt once per
worker, by one short connection attempt, and cached: a worker that cannot be
reached, or refuses us, costs that attempt and then its calls go through the
broker.  Direct sockets are opened with ZMQ_IMMEDIATE, so a call to an endpoint
that has gone away fails to send at once (and goes through the broker) instead
of waiting for a connection; once sent, it ends like any call, with
``BackendLost`` if the worker stops answering.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import NamedTuple

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..wire import localsocket, routingids
from ..wire.framing import Sockets, send_frames
from ..wire.handshake import WatchedSocket, open_monitor
from ..wire.security import Security, is_loopback

_loopback = lru_cache(maxsize=1024)(is_loopback)  # asked at every call's pick: parsing the address cost 20 µs

PROBE_TIMEOUT = 0.5  #: seconds one attempt to reach a direct endpoint may take
CONNECTING = 0.2  #: seconds a connected direct socket may take to take a message
RELEARN = 30.0  #: seconds after which a backend's direct endpoints are looked up again
_PROBE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                 | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class Endpoint(NamedTuple):
    """A worker's direct endpoint as a listing vouched for it (a named tuple: it keys the core's books on every
    call, and a tuple's hash is C's where a frozen dataclass's is Python's)."""

    worker: bytes
    url: str
    #: the endpoint's public key (Z85): the worker's as a CURVE broker authenticated it, else the key the worker
    #: told the broker its endpoint has (None from a worker that tells none)
    key: str | None
    #: its Unix socket for callers of its machine and user (without CURVE), used where it is this user's own
    local: str | None = None


def endpoints(entry: dict) -> list[Endpoint]:
    """The direct endpoints of a backend's listing entry that may be used: CURVE-keyed, or on loopback."""
    found = []
    for worker in entry.get("workers", []):
        direct = worker.get("direct")
        if isinstance(direct, dict) and isinstance(direct.get("url"), str):
            if direct.get("key") or is_loopback(direct["url"]):
                local = direct.get("local")
                found.append(Endpoint(bytes.fromhex(worker["id"]), direct["url"], direct.get("key"),
                                      local if isinstance(local, str) else None))
    return found


class Routes(Sockets):
    """What a client knows of direct endpoints, and its sockets to them (one per endpoint, the I/O loop's)."""

    def __init__(self, context: zmq.Context):
        super().__init__()
        self._ctx = context
        self._known: dict[str, tuple[float, list[Endpoint]]] = {}  # backend -> (learnt at, endpoints)
        self._reached: set[bytes] = set()  # workers a direct connection worked with
        self._unreachable: dict[bytes, float] = {}  # worker id -> until when its calls go via the broker
        self._socks: dict[str, WatchedSocket] = {}  # endpoint url -> the client's I/O loop's socket there
        self._own_pair: tuple[bytes, bytes] | None = None  # a key pair for endpoints of plaintext brokers

    def learn(self, backend: str, entry: dict | None) -> None:
        """A listing's entry for ``backend`` (None: it is not live)."""
        self._known[backend] = (time.monotonic(), endpoints(entry) if entry else [])

    def stale(self, backend: str) -> bool:
        known = self._known.get(backend)
        return known is None or time.monotonic() - known[0] > RELEARN

    def pick(self, backend: str, worker: bytes, security: Security, inflight: dict[bytes, int]) -> Endpoint | None:
        """The endpoint to call ``backend`` (pinned to ``worker`` if given) at directly, if there is one: the one
        with the fewest of this client's calls in flight (``inflight``: worker id -> calls)."""
        now = time.monotonic()
        candidates = [e for e in self._known.get(backend, (0, []))[1]
                      if (not worker or e.worker == worker) and self._unreachable.get(e.worker, 0) < now
                      and (e.key is None or security.curve or _loopback(e.url))]
        if len(candidates) < 2:
            return candidates[0] if candidates else None
        return min(candidates, key=lambda e: inflight.get(e.worker, 0))

    def socket(self, endpoint: Endpoint, security: Security) -> WatchedSocket | None:
        """The socket to ``endpoint``, or None if it cannot be reached (then never tried again). One per endpoint,
        used by the thread driving the client's I/O loop (mux.py): a call and its QUERY and CANCEL go on one
        connection, whichever thread sends them."""
        sock = self._socks.get(endpoint.url)
        if sock is not None and not sock.closed:
            return sock
        if self.closed:
            raise RuntimeError("these sockets are closed")
        sock = routingids.declare(self._ctx.socket(zmq.DEALER, socket_class=WatchedSocket))
        sock.name(endpoint.url)
        sock.linger = 0
        sock.immediate = True  # nothing is queued for an endpoint that is not connected: it goes via the broker
        sock.sndhwm = sock.rcvhwm = 0  # a client's thousands of calls in flight (mux.py)
        sock.reconnect_ivl_max = 10_000  # a worker that went away is tried again ever more rarely, not 10 times a second
        # this user's own Unix socket proves the endpoint as CURVE would, without encrypting (wire/localsocket.py)
        url = endpoint.local if endpoint.local is not None and localsocket.trusted(endpoint.local) else endpoint.url
        if url == endpoint.url and endpoint.key is not None:
            # the handshake proves the endpoint is the worker the listing named: a process that took its port
            # after it went cannot answer in its place
            if security.curve:
                sock.curve_publickey, sock.curve_secretkey = security.key_pair
            else:
                self._own_pair = self._own_pair or zmq.curve_keypair()
                sock.curve_publickey, sock.curve_secretkey = self._own_pair
            sock.curve_serverkey = endpoint.key.encode()
        if endpoint.worker in self._reached:
            sock.connect(url)
        elif self._probe(sock, url):
            self._reached.add(endpoint.worker)
        else:
            sock.close(linger=0)
            self.lost(endpoint)
            return None
        self._socks[endpoint.url] = self.add(sock)
        return sock

    def _probe(self, sock: zmq.Socket, url: str) -> bool:
        """Connect ``sock`` to ``url`` and wait, briefly, for the handshake: whether it succeeded."""
        monitor = open_monitor(sock, _PROBE_EVENTS)
        try:
            sock.connect(url)
            deadline = time.monotonic() + PROBE_TIMEOUT
            while (left := deadline - time.monotonic()) > 0 and monitor.poll(left * 1000):
                # a failed handshake is a refusal (its caller keys are the broker's: the broker will say why)
                return recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
            return False
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)

    @staticmethod
    def send(sock: zmq.Socket, frames: list) -> bool:
        """Send on a direct socket; False if it could not be sent (nothing was: see ZMQ_IMMEDIATE).

        A connection just made may take a moment to take messages after its handshake.
        """
        for wait in (0, CONNECTING):
            if wait and not sock.poll(wait * 1000, zmq.POLLOUT):
                return False
            try:
                send_frames(sock, frames, zmq.NOBLOCK)
                return True
            except zmq.Again:
                continue
        return False

    def lost(self, endpoint: Endpoint) -> None:
        """It cannot be reached, or a call there got no answer: go through the broker for a while."""
        self._reached.discard(endpoint.worker)
        self._unreachable[endpoint.worker] = time.monotonic() + RELEARN
        for backend, (_, found) in list(self._known.items()):
            if endpoint in found:  # its backend may have restarted elsewhere: look again at the next call
                self._known[backend] = (-RELEARN, found)
