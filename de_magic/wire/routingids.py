"""Routing ids that no peer can turn against a process.

A ROUTER socket names each peer by its routing id: the one the peer declares, or for a peer that
declares none, one libzmq makes up, ``b"\\x00"`` and a 4-byte counter that counts up from a start
value taken from the C library's ``rand()`` (libzmq 4.3.5, ``router_t::identify_peer``).  Nobody
seeds ``rand()``, so the start value is the same in every process (``0x6b8b4567`` for the first
ROUTER).  A made-up name that a peer has already declared for itself breaks an assertion in
``routing_socket_base_t::add_out_pipe``, and libzmq aborts the whole process.  A peer that declared
the next few hundred made-up names could so kill a broker or a backend with the next peer that
declares none (measured: 300 such sockets, then one plain DEALER).

So every de-magic socket that connects to a ROUTER declares a random 16-byte routing id (never 5
bytes long, so never one libzmq makes up), and every ROUTER de-magic binds is made after seeding
``rand()`` from the operating system's randomness: peers of other programs that declare no id get
names no one can predict.  Callers' routing ids are never told to workers (the broker gives each call
an alias), so a hostile backend learns none to claim.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import zmq

#: Bytes of a routing id we declare: not 5, the length of the ids libzmq makes up.
ROUTING_ID_BYTES = 16


def declare(sock: zmq.Socket) -> zmq.Socket:
    """Give ``sock`` (a DEALER, before it connects) a random routing id of its own."""
    sock.routing_id = os.urandom(ROUTING_ID_BYTES)
    return sock


def router(ctx: zmq.Context) -> zmq.Socket:
    """A ROUTER whose made-up peer names start from an unpredictable value, and which keeps a peer that
    declares a name in use from taking that name's traffic (no handover)."""
    _seed_rand()
    sock = ctx.socket(zmq.ROUTER)
    sock.router_handover = False
    return sock


def _seed_rand() -> None:
    """Seed the C library's ``rand()``, which libzmq reads when it makes a ROUTER (see the module's doc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        libc.srand(ctypes.c_uint(int.from_bytes(os.urandom(4), "little")))
    except (OSError, AttributeError):  # no C library to reach (an unusual platform): ids stay declared ones
        pass
