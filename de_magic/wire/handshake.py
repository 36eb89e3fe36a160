"""Why a connection to the broker fails its handshake, in words a person can act on.

A refused CURVE handshake is silent at the socket: messages queue, nothing
answers, and a refused key looked exactly like a broker that is not running.
libzmq does report the failure on the socket's monitor; what it reports was
measured (libzmq 4.3.5) for a DEALER connecting to the broker:

=====================================  =============================================
case                                   monitor events, in order
=====================================  =============================================
key not in the broker's allowed keys   ``HANDSHAKE_FAILED_AUTH`` (value: ZAP status 400),
                                       ``DISCONNECTED``; no reconnect
wrong broker public key configured     ``HANDSHAKE_FAILED_NO_DETAIL`` (EPIPE: the broker
                                       drops what it cannot decrypt), reconnect, again
no key, broker uses CURVE (or the      ``HANDSHAKE_FAILED_PROTOCOL`` (value:
other way round)                       ``PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH``); no reconnect.
                                       As often (one try in three here, loaded or not), the
                                       broker drops the connection first: then
                                       ``HANDSHAKE_FAILED_NO_DETAIL`` (EPIPE), reconnect, again
no broker at all                       no handshake event, only ``CONNECT_RETRIED``
=====================================  =============================================

After the first and third, sends block for ever (a DEALER without a peer), so
clients and backends check :meth:`WatchedSocket.handshake_failure` whenever an
answer is late or a send would block.  Only failures that say something are
reported: a single failure without detail, or any on a plain connection, may
be a broker stopping mid-handshake and is treated like a broker that is away.
"""

from __future__ import annotations

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import probe
from .probe import Probe
from .security import Security, broker_table_hint

#: How a refusal by a CURVE broker whose key this side lacks begins (after the address), for who offers a way to add it.
UNKNOWN_KEY = "requires CURVE and its public key is not known here"

_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CLOSED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_FINE = (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_CLOSED)  # connected, or nothing listens there: no refusal


class WatchedSocket(zmq.Socket):
    """A socket that can say why its last handshake failed (after :meth:`watch`); closes its monitor with it."""

    # declared here: pyzmq takes attributes it does not know of a class for socket options
    _handshake_monitor: zmq.Socket | None = None
    _handshake_failure: str | None = None
    _handshake_failures = 0  # in a row
    _dropped = False  # the connection broke and no handshake succeeded since
    _handshake_url: str
    _handshake_who: str
    _handshake_security: Security
    _probed: Probe | None = None  # what a probe found at the address, while handshakes keep failing

    def watch(self, url: str, who: str, security: Security, drops: bool = False) -> None:
        """Report handshake failures with ``url`` as ``who`` ("client", "backend"); call before connecting.

        ``drops``: also follow whether the connection broke (:attr:`dropped`). Only where it is acted on: with
        disconnections watched, libzmq reports a refused mechanism less directly (more failures without detail).
        """
        self._handshake_monitor = open_monitor(self, _EVENTS | (zmq.EVENT_DISCONNECTED if drops else 0))
        self._handshake_url, self._handshake_who, self._handshake_security = url, who, security

    def handshake_failure(self) -> str | None:
        """Why the broker refuses this connection, in one line, or None if it does not (or cannot tell).

        Never blocks: reads the monitor events that arrived since the last look.
        """
        monitor = self._handshake_monitor
        while monitor is not None and monitor.poll(0):
            event = recv_monitor_message(monitor)
            if event["event"] == zmq.EVENT_DISCONNECTED:  # no refusal: the peer went away (or will say why)
                self._dropped = True
                continue
            self._dropped = self._dropped and event["event"] != zmq.EVENT_HANDSHAKE_SUCCEEDED
            if event["event"] in _FINE:
                self._handshake_failure, self._handshake_failures, self._probed = None, 0, None
            else:
                self._handshake_failures += 1
                described = self._describe(event["event"], event["value"])
                # a precise reason (a mechanism mismatch) is not overwritten by a vaguer one that follows it
                if not (self._handshake_failure and "does not use CURVE, but" in self._handshake_failure):
                    self._handshake_failure = described
        return self._handshake_failure

    def name(self, url: str) -> None:
        """Say, for messages, that this socket connects to ``url`` (when it is not watched)."""
        self._handshake_url = url

    @property
    def watched_url(self) -> str:
        """The address this socket was told to :meth:`watch` (the one it connects to)."""
        return self._handshake_url

    @property
    def dropped(self) -> bool:
        """Whether, at the last look at the monitor, the connection had broken and not come back: a peer
        that died (its machine still up) is seen so at once, long before heartbeats would tell."""
        return self._dropped

    @property
    def failed_before(self) -> bool:
        """Whether the last look at the monitor saw a failure (cheap: reads no events)."""
        return self._handshake_failure is not None

    def _describe(self, event: int, value: int) -> str | None:
        url, who, security = self._handshake_url, self._handshake_who, self._handshake_security
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            key = security.key_pair[0].decode()[:8] if security.curve else "?"
            return (f"the broker at {url} refused this {who}'s key {key}... (not in its allowed keys): "
                    f"ask its operator to add {security.key.with_suffix('.key')}")
        mismatch = event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
        # one failure without detail may be a broker going down mid-handshake; every attempt failing is a wrong
        # key, a CURVE broker met without one, or a program that is no broker: a probe of the address tells which
        repeated = event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and self._handshake_failures > 1 + (not security.curve)
        if not (mismatch or repeated):
            return None  # nothing a person could act on: treated like a broker that does not answer
        found = None if mismatch else self._probe()
        if found is not None and found.kind not in (probe.CURVE, probe.PLAIN):
            return found.message  # no key would help
        uses_curve = not security.curve if mismatch else found is None or found.kind == probe.CURVE
        if security.curve and uses_curve:
            maybe = "" if found else ", or that broker does not use CURVE"  # unless the probe could tell
            return (f"the broker's public key configured here ({security.broker_key}) does not match the "
                    f"broker at {url}{maybe}: check {broker_table_hint(url)}, or --broker-key / DE_MAGIC_BROKER_KEY")
        if security.curve:
            return (f"the broker at {url} does not use CURVE, but this {who} has a key: "
                    "drop --key / DE_MAGIC_KEY for this broker")
        if uses_curve:
            return (f"the broker at {url} {UNKNOWN_KEY}: add it as "
                    f'broker_key = "FILE or Z85 text" to {broker_table_hint(url)} (with key = your .key_secret '
                    "if the file has none), or set --broker-key / DE_MAGIC_BROKER_KEY and --key / DE_MAGIC_KEY")
        return (f"{found.message}, but drops this {who}'s connections: is it a de-magic broker (not a backend's "
                "direct endpoint, nor another ZeroMQ program)?")

    def _probe(self) -> Probe | None:
        """What is at the address (once while its handshakes keep failing: a probe may take a second)."""
        if self._probed is None:
            self._probed = probe.probe(self._handshake_url.split(",")[0], timeout=1.0)
        return self._probed

    def close(self, linger: int | None = None) -> None:
        monitor, self._handshake_monitor = self._handshake_monitor, None
        if monitor is not None:
            if not self.closed:
                self.disable_monitor()
            monitor.close()
        super().close(linger)


def open_monitor(sock: zmq.Socket, events: int) -> zmq.Socket:
    """A PAIR socket that receives ``sock``'s ``events``: ``get_monitor_socket``, on a pipe without a limit.

    libzmq's I/O thread hands monitor events over with a blocking send. With pyzmq's default limit of 1,000
    events, a monitor nobody reads for a while stops that thread, and with it every socket of the context,
    for good: a port where nothing listens refuses 10 reconnects a second, each one an ``EVENT_CLOSED``, so a
    client idle for two minutes after its broker went away froze every connection in its process. With the
    receiving side's limit 0, libzmq makes the inproc pipe unbounded (``socket_base_t::connect_internal``);
    its readers drain it (a client's I/O thread four times a second, a backend every heartbeat).
    """
    address = f"inproc://monitor.s-{sock.FD}"
    sock.monitor(address, events)
    monitor = sock.context.socket(zmq.PAIR)
    monitor.rcvhwm = 0
    monitor.linger = 0
    monitor.connect(address)
    return monitor

