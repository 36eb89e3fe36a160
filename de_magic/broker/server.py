"""The broker: where backends register and clients find and call them.

One ROUTER socket serves both sides: backends connect *out* to it (so they
work from behind an institute's firewall), register their name and API, and
heartbeat; clients send calls naming a backend, and the broker forwards each
to a free slot of the least busy worker of that name.  The design follows
ZeroMQ's Majordomo pattern (RFC 7/18) with an MMI-like listing (RFC 8).

Every decision is made by :class:`~de_magic.broker.routing.Router`, which has no
sockets; this module is the loop around it: it receives, asks the router,
and sends what the router says, reading only the small routing frames.
Headers and payloads are forwarded as the zmq frames they arrived in.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
import time
from urllib.parse import urlsplit

import zmq

from ..wire.defaults import (DEFAULT_HEARTBEAT, DEFAULT_LIVENESS, DEFAULT_MAX_MESSAGE, DEFAULT_MAX_QUEUED_BYTES,
                       check_url, default_url)
from .routing import Config, Router, no_key
from .state import StateStore
from .launch import Launch
from .waiting import Bounds
from ..wire import protocol as P
from ..wire import routingids
from ..wire.security import Security, peer_key
from ..wire.framing import readable, recv_frames, send_frames

log = logging.getLogger("de_magic.broker")

#: Messages handled per wake-up before timers get their turn, so a flood cannot starve heartbeats.
BATCH = 1000


class Broker:
    """A de-magic broker bound to ``url``.

    ``run()`` serves in the calling thread until ``stop()`` (from any thread) or
    Ctrl-C; ``start()`` runs it in a thread of its own for embedding (tests, the
    notebook's embedded default).  ``owners`` maps backend names to the keys
    that may register them (the config file's ``[owners]``).  With ``state_dir`` the
    broker remembers the backends it served across restarts (:mod:`.state`), and jobs started for one that is
    offline wait there for it, each caller's within ``waiting`` (:mod:`.waiting`).  ``launch`` maps backend
    names to the commands that bring a worker of them up while jobs wait (:mod:`.launch`), run in
    ``launch_dir`` (the config file's folder).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        heartbeat: float = DEFAULT_HEARTBEAT,
        liveness: int = DEFAULT_LIVENESS,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        owners: dict[str, list[str]] | None = None,
        context: zmq.Context | None = None,
        security: Security | None = None,
        state_dir: str | None = None,
        waiting: Bounds | None = None,
        launch: dict[str, Launch] | None = None,
        launch_dir: str | None = None,
    ):
        self.url = check_url(url, "the broker's address") if url else default_url()
        self.security = security or Security.resolve()
        self._auth = None  # the ZAP authenticator thread, with CURVE
        self.config = Config(heartbeat=heartbeat, liveness=liveness, max_message_size=max_message_size,
                             max_queued_bytes=max_queued_bytes,
                             owners={name: frozenset(keys) for name, keys in (owners or {}).items()},
                             waiting=waiting or Bounds(), launch=dict(launch or {}))
        self._launch_dir = launch_dir
        self.router: Router | None = None
        self._ctx = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._stop_url = f"inproc://de-magic-broker-stop-{id(self)}"
        self._stopper = self._ctx.socket(zmq.PAIR)
        self._stopper.bind(self._stop_url)
        self._thread: threading.Thread | None = None
        self._store = StateStore(state_dir) if state_dir else None

    @property
    def id(self) -> str:
        return self.router.id if self.router else ""

    # -- life cycle --------------------------------------------------------

    def bind(self) -> str:
        """Bind the socket; returns the URL (with the real port if ``:0``/``*`` was asked)."""
        sock = routingids.router(self._ctx)  # no peer can take another's name, or make libzmq abort
        sock.linger = 0
        # A send to a routing id without a connection fails (EHOSTUNREACH) instead of vanishing: that is how
        # a silent worker's connection is asked after (see _connected).
        sock.router_mandatory = True
        # libzmq's own heartbeats (ZMTP PING/PONG, answered by the peer's libzmq I/O thread, whatever its
        # Python does) close a connection whose peer is frozen or unreachable within liveness intervals.
        sock.heartbeat_ivl = int(self.config.heartbeat * 1000)
        sock.heartbeat_timeout = int(self.config.heartbeat * self.config.liveness * 1000)
        # A frame larger than this is cut off by libzmq before it reaches Python; the
        # configured limit itself is checked per message by the router, with an answer.
        sock.maxmsgsize = self.config.max_message_size + (1 << 20)
        try:
            self._auth = self.security.serve(sock, self.url)
            sock.bind(self.url)
        except BaseException:  # e.g. the address is taken: leave no socket or ZAP thread behind
            sock.close()
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
            raise
        self.url = sock.last_endpoint.decode().replace("0.0.0.0", "127.0.0.1")
        self._socket = sock
        self.config.url, self.config.curve = self.url, self._auth is not None
        # without CURVE no frame carries a key: asking each one would cost an exception per message
        self.router = Router(self.config, now=time.monotonic(), key_of=peer_key if self._auth is not None else no_key,
                             key_names=self._key_names, connected=self._connected, state=self._store,
                             launch=self._launch)
        return self.url

    def _key_names(self) -> dict[str, str]:
        return self._auth.names if self._auth is not None else {}

    def start(self) -> "Broker":
        """Serve in a daemon thread; returns once bound."""
        if self._socket is None:
            self.bind()
        self._thread = threading.Thread(target=self.run, name=f"de-magic-broker-{self.id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving (thread-safe) and wait for the serving thread, if any."""
        poke = self._ctx.socket(zmq.PAIR)
        poke.linger = 0
        poke.connect(self._stop_url)
        poke.send(b"stop")
        poke.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        if self._socket is None:
            self.bind()
        sock, router = self._socket, self.router
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._stopper, zmq.POLLIN)
        log.info("broker %s listening on %s", self.id, self.url)
        try:
            while True:
                events = dict(poller.poll(max(0.0, router.wake_at - time.monotonic()) * 1000))
                if self._stopper in events:
                    break
                ready = sock in events  # (asking libzmq again costs each message a few µs)
                for _ in range(BATCH):
                    if not (ready or readable(sock)):
                        break
                    ready = False
                    try:
                        frames = recv_frames(sock, zmq.NOBLOCK)
                    except zmq.Again:  # (the loop never blocks on the poll's word alone)
                        break
                    self._send_all(router.handle(frames[0].bytes, frames[1:], time.monotonic()))
                now = time.monotonic()
                if now >= router.wake_at:
                    if self._auth is not None:
                        self._auth.refresh()  # a key deleted from the allowed directory stops working within a beat
                    self._send_all(router.tick(now))
        finally:
            self._shutdown()

    def _send_all(self, messages: list[list]) -> None:
        # never blocks: a message to a gone peer, or past a peer's high-water mark, is dropped
        for frames in messages:
            try:
                send_frames(self._socket, frames, zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                    raise

    def _launch(self, name: str, launch: Launch) -> str:
        """Run ``name``'s launch command (it tells its backend where we are: $DE_MAGIC_BROKER); why it could not
        run, or "". A thread of its own waits for it, so it leaves no zombie, and logs how it ended."""
        env = {**os.environ, "DE_MAGIC_BROKER": self.url, "DE_MAGIC_BACKEND": name}
        try:
            proc = subprocess.Popen(launch.command, cwd=self._launch_dir, env=env, stdin=subprocess.DEVNULL,
                                    start_new_session=True)  # a Ctrl-C of the broker is not the backend's
        except OSError as exc:
            return f"{' '.join(launch.command)}: {exc.strerror or exc}"

        def wait() -> None:
            status = proc.wait()
            (log.warning if status else log.info)("launch command of backend %r ended with status %s", name, status)

        threading.Thread(target=wait, name=f"de-magic-launch-{name}", daemon=True).start()
        return ""

    def _connected(self, address: bytes) -> bool:
        """Whether the peer at ``address`` still has a connection: libzmq keeps it while the peer answers
        its heartbeats. The question is a HEARTBEAT, which a worker takes as one."""
        try:
            send_frames(self._socket, P.heartbeat_to(address), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            return exc.errno != zmq.EHOSTUNREACH  # EAGAIN: connected, its queue full
        return True

    def _shutdown(self) -> None:
        if self.router is not None:
            self._send_all(self.router.shutdown())
        self._socket.close(linger=200)  # let the DISCONNECTs go out: backends then re-register at once
        self._stopper.close()
        if self._store is not None:
            self._store.close()
        if self._auth is not None:
            self._auth.stop()
        _wait_until_free(self.url)
        log.info("broker %s stopped", self.id)


def _wait_until_free(url: str, timeout: float = 2.0) -> None:
    """Return once a TCP address can be bound again: libzmq closes its listener in its own thread, a
    moment after close(), and a caller that starts a broker there again right away must not fail."""
    parts = urlsplit(url)
    if parts.scheme != "tcp" or parts.port is None:
        return
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_INET6 if ":" in (parts.hostname or "") else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libzmq binds
            try:
                probe.bind((parts.hostname or "127.0.0.1", parts.port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
        time.sleep(0.01)
