"""What is at a broker's address, asked with a plain TCP connection: for errors that say the right thing.

A ZeroMQ connection that fails tells little: a host that does not resolve, a port nobody
listens on, a program that accepts the connection and closes it (a web server, the wrong
port) and a CURVE broker whose key is not known here all end in "no answer", or in
handshakes failing without detail.  :func:`probe` tells them apart in at most ``timeout``
seconds: it resolves the host, connects, and sends a ZMTP 3 greeting (ZeroMQ's first 64
bytes, see https://rfc.zeromq.org/spec/23/).  A ZeroMQ peer answers with its own greeting,
which names its security mechanism (``CURVE`` or ``NULL``) before any key is checked; the probe
sends no more than the greeting's first 11 bytes, and closes.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

#: What a peer is, by :attr:`Probe.kind`.
UNRESOLVABLE, REFUSED, UNREACHABLE, NOT_ZEROMQ, CURVE, PLAIN = (
    "unresolvable", "refused", "unreachable", "not_zeromq", "curve", "plain")

# signature (0xFF, 8 bytes of padding, 0x7F), version 3.0, mechanism NULL (20 bytes), as-server 0, filler
GREETING = b"\xff" + b"\0" * 7 + b"\x01\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" + b"\0" * 31
GREETING_SIZE = 64


@dataclass(frozen=True)
class Probe:
    """What answers at an address: ``kind`` (one of the constants above) and a sentence saying so."""

    kind: str
    message: str


def probe(url: str, timeout: float = 1.0) -> Probe | None:
    """What is at ``url`` (``tcp://host:port``); None for other transports, which have no host to ask."""
    parts = urlsplit(url)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        return None
    host, port, where = parts.hostname, parts.port, f"{parts.hostname}:{parts.port}"
    deadline = time.monotonic() + timeout
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return Probe(UNRESOLVABLE, f"the host {host!r} of {url} does not resolve: a typo in the name, or a name "
                                   "only another network (a VPN) knows")
    family, kind, proto, _, address = addresses[0]  # the address libzmq would use too
    with socket.socket(family, kind, proto) as sock:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            sock.connect(address)
        except ConnectionRefusedError:
            return Probe(REFUSED, f"nothing listens at {where}: is the broker running there, on that port?")
        except (TimeoutError, socket.timeout):
            return Probe(UNREACHABLE, f"{where} does not answer within {timeout:g} s: the machine is down, or "
                                      "a firewall drops connections to that port")
        except OSError as exc:
            return Probe(UNREACHABLE, f"{where} cannot be reached: {exc.strerror or exc}")
        return _greet(sock, url, deadline)


def _greet(sock: socket.socket, url: str, deadline: float) -> Probe:
    """Send a ZeroMQ greeting on a connected ``sock`` and read what comes back."""
    not_broker = f"the program at {url} is not a de-magic broker"
    received = b""
    try:
        # the signature and major version only: a peer that read a whole greeting of the wrong mechanism would
        # close at once, and its own greeting could be lost with the connection's reset
        sock.sendall(GREETING[:11])
        while len(received) < GREETING_SIZE:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            chunk = sock.recv(GREETING_SIZE - len(received))
            if not chunk:
                break
            received += chunk
    except (TimeoutError, socket.timeout):
        if not received:
            return Probe(NOT_ZEROMQ, f"{not_broker}: it accepts connections but does not answer ZeroMQ's "
                                     "greeting (the wrong port?)")
    except OSError:  # reset by the peer
        pass
    if not received:
        return Probe(NOT_ZEROMQ, f"{not_broker}: it accepts connections and closes them at once (the wrong port?)")
    if received[:1] != b"\xff" or (len(received) >= 10 and received[9:10] != b"\x7f"):
        return Probe(NOT_ZEROMQ, f"{not_broker}: it does not speak ZeroMQ (it answered {received[:16]!r}; the "
                                 "wrong port?)")
    mechanism = received[12:32].rstrip(b"\0").decode("ascii", "replace")
    if mechanism == "CURVE":
        return Probe(CURVE, f"the broker at {url} uses CURVE")
    if mechanism == "NULL":
        return Probe(PLAIN, f"the peer at {url} speaks ZeroMQ without CURVE")
    return Probe(NOT_ZEROMQ, f"{not_broker}: it speaks ZeroMQ, with the {mechanism or 'unknown'} mechanism, which "
                             "de-magic does not use")
