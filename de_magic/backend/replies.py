"""What goes back to a caller: a call's answer and events, on the way its call came, within the size limit.

A slot thread sends on its own connection to the call's broker.  A call that came through the direct
endpoint is answered straight from the endpoint's thread when that thread runs it inline, else through
that thread, in order.  Any other thread (the main thread's calls, jobs) has the I/O thread send it
(:meth:`.brokerlink.BrokerLink.send`).  A message over the broker's size limit would be cut off in
transit, and its caller would wait for ever: an error goes instead (for an event, a note).
"""

from __future__ import annotations

import threading

import zmq

from ..wire import protocol as P
from ..wire import serialize
from ..wire.errors import PayloadTooLarge
from ..wire.framing import PerThread, send_frames
from .brokerlink import BrokerLink
from .callcontext import Call
from .direct import DirectEndpoint


class Replies:
    """Answers of the calls of a backend whose id is ``worker`` (hex), results encoded with ``codec``."""

    def __init__(self, worker: str, codec: str, max_message_size: int, link: BrokerLink):
        self.codec, self.link = codec, link
        #: The broker's limit, learnt at registration: a larger answer would be cut off in transit.
        self.limit = max_message_size
        #: A slot thread's sockets (``slots``: one per door), that its calls' answers go out on.
        self.thread_sockets = threading.local()
        self.direct: DirectEndpoint | None = None
        self._reply_header = P.dump_header({"codec": codec, "worker": worker})
        # a caller that sent JSON unpickles nothing (the HTTP gateway, other languages): it is answered in JSON
        self._json_reply_header = P.dump_header({"codec": serialize.JSON, "worker": worker})

    def open_direct(self, direct: DirectEndpoint) -> None:
        """Answer the direct endpoint's calls too (see :meth:`answer`)."""
        self.direct = direct
        self._direct_out = PerThread(self._new_direct_socket)

    def answer(self, mtype: bytes, door: int, client: bytes, rid: bytes, header: bytes, *payload) -> None:
        """Send a message for a call that came through ``door``: on this thread's slot connection to it,
        else via the direct endpoint's thread or the I/O thread."""
        size = len(header) + serialize.nbytes(payload)
        if size > self.limit:  # it would be cut off in transit, and the caller would wait for ever
            mtype, header, payload = self._too_large(mtype, size)
        slots = getattr(self.thread_sockets, "slots", None)
        if slots is not None:
            send_frames(slots[door], P.answer(mtype, client, rid, header, payload))
        elif self.direct is not None and door == self.direct.index:
            # a call run inline goes straight out; other threads' go through the direct thread, in order
            if not self.direct.deliver(P.Answer(mtype, client, rid, [header, *payload])):
                send_frames(self._direct_out.get(), P.answer(mtype, client, rid, header, payload))
        else:
            self.link.send(door, P.answer(mtype, client, rid, header, payload))

    def encode(self, call: Call, result) -> tuple[bytes, list]:
        """The header and frames that answer ``call`` with ``result``; PayloadTooLarge if over the limit."""
        in_json = self.codec == serialize.JSON or call.header.get("codec") == serialize.JSON
        frames = serialize.dumps_json(result) if in_json else serialize.dumps(result)
        size = serialize.nbytes(frames)
        if size > self.limit:
            raise PayloadTooLarge(f"the result is {size} bytes, over the maximum message size of {self.limit} bytes "
                                  "(the broker's or this backend's)")
        return (self._json_reply_header if in_json else self._reply_header), frames

    def close(self) -> None:
        """Close the sockets threads sent to the direct endpoint's thread on (once they are done)."""
        if self.direct is not None:
            self._direct_out.close()

    def _too_large(self, mtype: bytes, size: int) -> tuple[bytes, bytes, tuple]:
        """What to send instead of a message over the size limit: an error, or for an event a note."""
        limit = f"over the maximum message size of {self.limit} bytes"
        if mtype == P.EVENT:
            note = f"[de-magic: left out an output of {size} bytes, {limit}]\n"
            return P.EVENT, P.dump_header({"event": "stream", "name": "stderr", "text": note}), ()
        return P.ERROR, P.error_header(PayloadTooLarge.kind, f"the answer is {size} bytes, {limit}"), ()

    def _new_direct_socket(self) -> zmq.Socket:
        sock = self.direct.context.socket(zmq.DEALER)
        sock.linger = 1000
        sock.connect(self.direct.slots_url)
        return sock
