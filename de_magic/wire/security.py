"""CURVE encryption, ZAP authentication and per-backend authorization.

Across institutional borders every connection must be encrypted and every
peer known, because backends run what arrives and callers unpickle what comes
back.  ZeroMQ's CurveZMQ does both: the broker is the CURVE server with a key
pair of its own and a directory of the public keys it lets in (clients and
backends alike); every other peer needs its own key pair and the broker's
public key.  ZAP (pyzmq's :mod:`zmq.auth`) checks each new connection against
that directory and hands the broker the peer's public key as the ``User-Id``
of every message, which is what per-backend authorization rests on.

All settings resolve in one place, :meth:`Security.resolve`, with the same
names everywhere (see ``docs/security.md``):

==============  ======================  ======================  ==============
setting         flag                    environment variable    config file
==============  ======================  ======================  ==============
own secret key  ``--key FILE``          ``DE_MAGIC_KEY``        ``key``
broker's key    ``--broker-key FILE``   ``DE_MAGIC_BROKER_KEY`` ``broker_key``
allowed keys    ``--allowed-keys DIR``  ``DE_MAGIC_ALLOWED_KEYS`` ``allowed_keys``
==============  ======================  ======================  ==============

The config file is ``$DE_MAGIC_CONFIG``, else
``$XDG_CONFIG_HOME/de-magic/config.toml`` (``~/.config/...``).  ``--insecure``
has no variable or config key on purpose: serving in the clear beyond this
machine must be visible on the command line that does it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import tomllib
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .badinput import BadInput
from .errors import Refused

log = logging.getLogger("de_magic.security")

ENV = {"key": "DE_MAGIC_KEY", "broker_key": "DE_MAGIC_BROKER_KEY", "allowed_keys": "DE_MAGIC_ALLOWED_KEYS"}
CONFIG_ENV = "DE_MAGIC_CONFIG"
ZAP_DOMAIN = "de-magic"


def config_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "de-magic"


def config_file() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or config_dir() / "config.toml")


def create_keys(name: str, directory: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, to hand out) and ``NAME.key_secret`` (keep it) into ``directory``.

    The files are in the format :func:`zmq.auth.load_certificate` reads.  The secret one is
    created readable by its owner only: narrowing it afterwards would leave a moment in which
    anyone could read it.
    """
    directory = Path(directory) if directory else config_dir() / "keys"
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    public_key, secret_key = zmq.curve_keypair()
    _write_key_file(secret, 0o600, public_key, secret_key)
    try:
        _write_key_file(public, 0o644, public_key)
    except Refused:
        secret.unlink()  # half a pair is no use, and would block the next attempt
        raise
    return public, secret


def _write_key_file(path: Path, mode: int, public_key: bytes, secret_key: bytes | None = None) -> None:
    """A new key file with ``mode`` from its first byte; never overwrites (that would lock its owner out)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    except FileExistsError:
        raise Refused(f"{path} exists; remove it first or choose another name") from None
    lines = ["#   ZeroMQ CURVE " + ("secret key: keep it private" if secret_key else "public key"),
             "#   written by de-magic keys", "metadata", "curve", f'    public-key = "{public_key.decode()}"']
    if secret_key:
        lines.append(f'    secret-key = "{secret_key.decode()}"')
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def is_loopback(url: str) -> bool:
    """Whether ``url`` is reachable only from this machine (loopback TCP, ipc, inproc)."""
    parts = urlsplit(url)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = parts.netloc.rpartition(":")[0].strip("[]")
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name, a host name: reachable from elsewhere
        return False


@dataclass(frozen=True)
class Security:
    """Who we are and whom we trust; all empty means plain TCP (loopback only for a broker)."""

    key: Path | None = None  #: own secret key file (``NAME.key_secret``)
    broker_key: Path | None = None  #: the broker's public key file (clients, backends)
    allowed_keys: Path | None = None  #: directory of public keys the broker lets in
    insecure: bool = False  #: let a broker serve without CURVE beyond loopback

    @classmethod
    def resolve(cls, key=None, broker_key=None, allowed_keys=None, insecure: bool = False) -> "Security":
        """Explicit values win over environment variables, which win over the config file."""
        given = {"key": key, "broker_key": broker_key, "allowed_keys": allowed_keys}
        config = _read_config()
        values = {}
        for name, value in given.items():
            value = value or os.environ.get(ENV[name]) or config.get(name)
            values[name] = Path(value).expanduser() if value else None
        return cls(**values, insecure=insecure)

    @property
    def curve(self) -> bool:
        return self.key is not None

    @cached_property
    def key_pair(self) -> tuple[bytes, bytes]:
        return _load(self.key, secret=True)

    @cached_property
    def broker_public(self) -> bytes:
        return _load(self.broker_key, secret=False)[0]

    # -- sockets ---------------------------------------------------------------

    def check_peer(self) -> "Security":
        """Load the key files of a client or backend now, so a mistake shows where it was made."""
        if self.key is None and self.broker_key is None:
            return self
        if self.key is None or self.broker_key is None:
            raise Refused("CURVE needs both this side's key pair (--key / DE_MAGIC_KEY) and the broker's "
                          "public key (--broker-key / DE_MAGIC_BROKER_KEY); only one was given")
        self.key_pair, self.broker_public  # noqa: B018 - loaded and cached
        return self

    def connect(self, sock: zmq.Socket) -> None:
        """Make a client or backend socket a CURVE client of the broker (before connecting)."""
        if self.check_peer().key is None:
            return
        sock.curve_publickey, sock.curve_secretkey = self.key_pair
        sock.curve_serverkey = self.broker_public

    def serve(self, sock: zmq.Socket, url: str) -> "Authenticator | None":
        """Make the broker's socket a CURVE server with ZAP (before binding).

        Returns the running authenticator, which the broker stops when it stops.
        Refuses, before anything is bound, to serve in the clear beyond loopback.
        """
        # CURVE is switched on by the allowed keys, not by a key alone: a user's own key in the config
        # file (as a caller) must not turn a local broker (the demo, a notebook's own) into a CURVE server
        if self.allowed_keys is None:
            if not is_loopback(url) and not self.insecure:
                raise Refused(
                    f"refusing to serve {url} without encryption: anyone who can reach it could register "
                    "backends, call them and read the traffic. Give the broker a key pair (--key) and a "
                    "directory of allowed public keys (--allowed-keys), or pass --insecure to do it anyway")
            return None
        if self.key is None:
            raise Refused("--allowed-keys needs the broker's own key pair (--key / DE_MAGIC_KEY)")
        if not self.allowed_keys.is_dir():
            raise Refused(f"the allowed keys directory {self.allowed_keys} does not exist")
        auth = Authenticator(sock.context, self.allowed_keys)
        auth.start()
        sock.curve_publickey, sock.curve_secretkey = self.key_pair
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN.encode()
        return auth


class Authenticator(ThreadAuthenticator):
    """ZAP handler that lets in the keys of a directory, re-read whenever it changes, and logs refusals.

    A refused peer reconnects ten times a second, and anyone may try keys: refusals are logged
    through a throttle, with the ones not logged one by one summed up every few seconds.
    """

    def __init__(self, context: zmq.Context, directory: Path):
        super().__init__(context, log=logging.getLogger("de_magic.security.zap"))
        self.directory = directory
        self.names: dict[str, str] = {}  # Z85 public key -> name of its key file
        self._stamp = None
        self._peer = "?"
        self._refusals = BadInput(log, per_interval=10, interval=2.0)
        self._flush_scheduled = False
        self.configure_curve_callback(ZAP_DOMAIN, self)

    def _reload(self) -> None:
        stamp = self.directory.stat().st_mtime_ns
        if stamp == self._stamp:
            return
        names = {}
        for path in sorted(self.directory.glob("*.key")):
            try:
                names[zmq.auth.load_certificate(path)[0].decode()] = path.stem
            except (OSError, ValueError) as exc:
                log.warning("ignoring %s: not a public key file (%s)", path, exc)
        self.names, self._stamp = names, stamp
        log.info("%d allowed key(s) in %s", len(names), self.directory)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # remember who asks, so a refusal can say so (the callback is not told)
        self._peer = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by :mod:`zmq.auth` with the Z85 public key of each new connection."""
        self._reload()
        name = self.names.get(key.decode("ascii", "replace"))
        if name is None:
            self._refusals.report("refused connection from %s: public key %s is not in %s",
                                  self._peer, key.decode("ascii", "replace"), self.directory)
            self._flush_later()
            return False
        log.info("accepted connection from %s with key %r", self._peer, name)
        return True


    def _flush_later(self) -> None:
        """Have the refusals not logged one by one summed up even if no further refusal comes."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # called from the ZAP handler, in the authenticator thread's event loop
            asyncio.get_running_loop().call_later(self._refusals.interval, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._refusals.flush()


def peer_key(frame) -> str | None:
    """The Z85 public key ZAP authenticated for the peer that sent ``frame``; None without CURVE."""
    try:
        return frame.get("User-Id") or None
    except (zmq.ZMQError, AttributeError):
        return None


def allowed_callers(entries) -> list[str] | None:
    """A backend's ``allow_clients`` setting for READY: public key files become Z85 keys, the rest stay."""
    if entries is None:
        return None
    out = []
    for entry in entries:
        path = Path(str(entry)).expanduser()
        out.append(_load(path, secret=False)[0].decode() if path.is_file() else str(entry))
    return out


def _load(path: Path | None, secret: bool) -> tuple[bytes, bytes]:
    if path is None:
        raise Refused("no key file given")
    if not path.exists() and secret and path.with_name(path.name + ".key_secret").exists():
        path = path.with_name(path.name + ".key_secret")  # "--key alice" for alice.key_secret
    try:
        public, private = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise Refused(f"cannot read key file {path}: {exc}") from None
    if secret and private is None:
        raise Refused(f"{path} holds only a public key; give the .key_secret file of the pair")
    return public, private


def _read_config() -> dict:
    path = config_file()
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise Refused(f"cannot read the de-magic config file {path}: {exc}") from None
    known = {f.name for f in fields(Security)} - {"insecure"} | {OWNERS, DASK}
    unknown = set(data) - known
    if unknown:  # a typo here would silently turn encryption off
        raise Refused(f"unknown setting(s) {', '.join(sorted(unknown))} in {path}; known: {', '.join(sorted(known))}")
    # relative paths are relative to the config file; the Dask cluster's address is no path
    return {k: v if k == DASK else str((path.parent / Path(v).expanduser()).resolve())
            for k, v in data.items() if k != OWNERS}


OWNERS = "owners"
DASK = "dask"  #: the Dask cluster backends run their calls on (see daskpool.py)


def owners() -> dict[str, list[str]]:
    """The config file's ``[owners]`` table: backend name -> the keys (Z85, or key file names in the
    allowed-keys directory) that alone may register it at a broker using this file."""
    path = config_file()
    if not path.is_file():
        return {}
    with path.open("rb") as f:
        table = tomllib.load(f).get(OWNERS, {})
    if not (isinstance(table, dict) and all(isinstance(v, list) and all(isinstance(k, str) for k in v)
                                            for v in table.values())):
        raise Refused(f"[{OWNERS}] in {path} must map backend names to lists of keys or key names")
    return table
