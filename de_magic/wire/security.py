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
``$XDG_CONFIG_HOME/de-magic/config.toml`` (``~/.config/...``).  Like SSH's known
hosts, its ``[brokers."tcp://HOST:PORT"]`` tables say which public key each
broker has (``broker_key``: a key file or Z85 text) and, where it differs,
which own key to present to it (``key``); they win over the file's top-level
settings, flags and environment variables win over both.  ``--insecure``
has no variable or config key on purpose: serving in the clear beyond this
machine must be visible on the command line that does it.
"""

from __future__ import annotations

import asyncio
import functools
import getpass
import ipaddress
import json
import logging
import os
import shlex
import tomllib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

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
    broker_key: Path | str | None = None  #: the broker's public key: a file, or Z85 text (clients, backends)
    allowed_keys: Path | None = None  #: directory of public keys the broker lets in
    insecure: bool = False  #: let a broker serve without CURVE beyond loopback

    @classmethod
    def resolve(cls, key=None, broker_key=None, allowed_keys=None, insecure: bool = False,
                url: str | None = None) -> "Security":
        """Explicit values win over environment variables, which win over the config file.

        ``url``: the broker a client or backend connects to; its ``[brokers."URL"]`` table in the
        config file, if any, wins over the file's top-level settings.
        """
        given = {"key": key, "broker_key": broker_key, "allowed_keys": allowed_keys}
        config = _read_config(url)
        values = {}
        for name, value in given.items():
            value = value or os.environ.get(ENV[name]) or config.get(name)
            values[name] = key_ref(value) if value else None
        if url is not None and values["broker_key"] is None and not (key or os.environ.get(ENV["key"])):
            # the config file's own key is for brokers whose key is known: presented to another broker it
            # would only fail; in the clear, a CURVE broker's refusal says which table to add instead
            values["key"] = None
        return cls(**values, insecure=insecure)

    @property
    def curve(self) -> bool:
        return self.key is not None

    @cached_property
    def key_pair(self) -> tuple[bytes, bytes]:
        return _load(self.key, secret=True)

    @cached_property
    def broker_public(self) -> bytes:
        return public_key(self.broker_key)

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

    def refresh(self) -> None:
        """Re-read the directory if it changed, between handshakes too: the broker calls this each beat, so a
        key deleted from it is refused on open connections (and at direct endpoints) within a beat or two."""
        self._reload()

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


@functools.cache
def local_user() -> str:
    """The account name a caller claims: whose jobs and references are whose on a plaintext broker."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # an account without a name (some containers)
        return f"uid {os.getuid()}"


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
    path = _key_file(path, secret)
    try:
        public, private = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise Refused(f"cannot read key file {path}: {exc}") from None
    if secret and private is None:
        raise Refused(f"{path} holds only a public key; give the .key_secret file of the pair")
    return public, private


def _key_file(path: Path, secret: bool) -> Path:
    """The key file ``path`` names: as given, else (a bare name, as ``de-magic keys`` prints) in the keys
    directory; "alice" stands for alice.key_secret where a secret key is wanted."""
    places = [path]
    if path.parent == Path("."):  # a bare name: where `de-magic keys NAME` wrote it
        places.append(config_dir() / "keys" / path)
    for place in places:
        for candidate in (place, place.with_name(place.name + ".key_secret")) if secret else (place,):
            if candidate.exists():
                return candidate
    where = f" (nor in {config_dir() / 'keys'})" if len(places) > 1 else ""
    raise Refused(f"no key file {path}{where}: create a key pair with `de-magic keys NAME`, or give its path")


def _read_toml() -> dict:
    """The config file's contents, {} without one."""
    path = config_file()
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise Refused(f"cannot read the de-magic config file {path}: {exc}") from None


SETTINGS = ("key", "broker_key", "allowed_keys")
BROKER = "broker"  # the default broker address(es), after $DE_MAGIC_BROKER (see defaults.py)
BROKERS = "brokers"
BROKER_SETTINGS = ("url", "key", "broker_key")


def _read_config(url: str | None = None) -> dict[str, str]:
    """The config file's settings for the broker at ``url`` (its table over the top level); paths made absolute."""
    data = _read_toml()
    path = config_file()
    # a typo here would silently turn encryption off
    _check_names(data, {*SETTINGS, BROKER, OWNERS, BROKERS, DASK, DIRECT, ADVERTISE, JOB_DIR, STATE_DIR, GATEWAY,
                        LAUNCH}, path, "")
    tables = data.get(BROKERS, {})
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise Refused(f'[{BROKERS}] in {path}: "{name}" must be a table, e.g. [{BROKERS}."{name}"]')
        _check_names(table, set(BROKER_SETTINGS), path, f'[{BROKERS}."{name}"]')
    settings = {k: data[k] for k in SETTINGS if k in data}
    if url is not None:
        settings.update(broker_table(url, tables))
    # relative paths are relative to the config file
    return {k: _absolute(v, path.parent) for k, v in settings.items() if k != "url"}


def broker_table(url: str, tables: dict) -> dict:
    """The ``[brokers.X]`` table for ``url``: named by the address itself, or by a name with ``url = ...``."""
    return tables.get(url) or next((t for t in tables.values() if t.get("url") == url), {})


def _check_names(table: dict, known: set[str], path: Path, where: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise Refused(f"unknown setting(s) {', '.join(sorted(unknown))} {'in ' + where + ' ' if where else ''}"
                      f"in {path}; known: {', '.join(sorted(known))}")


def _absolute(value: str, base: Path) -> str:
    return value if _is_z85_key(value) else str((base / Path(value).expanduser()).resolve())


def _is_z85_key(text: str) -> bool:
    """Whether ``text`` is a public key as Z85 text (40 characters), not a key file's path."""
    if len(text) != 40 or Path(text).exists():
        return False
    try:
        return len(z85.decode(text)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def key_ref(value) -> Path | str:
    """A key setting as given: Z85 text stays text (it may hold a "/"), anything else is a file path."""
    value = os.fspath(value)
    return value if _is_z85_key(value) else Path(value).expanduser()


def public_key(value: Path | str | None) -> bytes:
    """The Z85 public key of ``value``: Z85 text, or a key file (public, or a pair)."""
    if isinstance(value, str) and _is_z85_key(value):
        return value.encode("ascii")
    return _load(Path(value) if value is not None else None, secret=False)[0]


OWNERS = "owners"
DASK = "dask"  #: the Dask cluster backends run their calls on (see daskpool.py)
DIRECT = "direct"  #: where backends listen for direct calls (see backend/direct.py)
ADVERTISE = "advertise"  #: the host backends tell callers to reach their direct endpoint at (backend/direct.py)
JOB_DIR = "job_dir"  #: where backends keep job results (see backend/jobs.py)
STATE_DIR = "state_dir"  #: where a broker remembers the backends it served (see broker/state.py)
LAUNCH = "launch"  #: per backend name, the command a broker runs to bring it up (see broker/launch.py)
GATEWAY = "gateway"  #: the HTTP gateway's table: bind, tokens... (see gateway/config.py)


def config_table(name: str) -> tuple[dict, Path]:
    """The config file's table ``name`` ({} without one) and the file, whose folder relative paths start from."""
    _read_config()  # unknown top-level settings are reported first
    table = _read_toml().get(name, {})
    if not isinstance(table, dict):
        raise Refused(f"{name} in {config_file()} must be a table, e.g. [{name}]")
    return table, config_file()


def setting(value: str | None, env: str, name: str) -> str | None:
    """A setting: ``value`` (a flag or main() option), else the environment variable ``env``, else the config
    file's ``name``; None where none gives it."""
    if value or os.environ.get(env):
        return value or os.environ[env]
    configured = _read_toml().get(name)
    if configured is not None and not isinstance(configured, str):
        raise Refused(f'{name} in {config_file()} must be text, e.g. {name} = "..."')
    return configured or None


def job_directory(value: str | None) -> str | None:
    """Where a backend keeps job results: ``value`` (a flag or main() option), else $DE_MAGIC_JOB_DIR, else
    the config file's ``job_dir`` (relative to the file); None keeps them in memory only."""
    return value or os.environ.get("DE_MAGIC_JOB_DIR") or _configured_directory(JOB_DIR)


def state_directory(value: str | None) -> str | None:
    """Where a broker keeps its state: ``value`` (--state-dir), else the config file's ``state_dir`` (relative to
    the file); None: it remembers nothing across restarts."""
    return value or _configured_directory(STATE_DIR)


def _configured_directory(name: str) -> str | None:
    """The config file's directory ``name``: relative to the file, ``~`` being the home directory."""
    configured = _read_toml().get(name)
    if configured is not None and not isinstance(configured, str):
        raise Refused(f"{name} in {config_file()} must be a directory's path")
    return str(config_file().parent / Path(configured).expanduser()) if configured else None


def configured_broker() -> str | None:
    """The config file's ``broker``: an address, or a consortium's addresses (a list, or separated by commas)."""
    value = _read_toml().get(BROKER)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(url, str) for url in value):
        return ",".join(value)
    raise Refused(f"{BROKER} in {config_file()} must be an address or a list of addresses")


def launch_commands() -> tuple[dict[str, tuple[list[str], float | None]], Path]:
    """The config file's ``[launch."NAME"]`` tables: backend name -> (the command's words, its ``launch_interval``
    or None), and the folder the commands run in (the file's)."""
    path = config_file()
    launches = {}
    for name, table in _read_toml().get(LAUNCH, {}).items():
        where = f'[{LAUNCH}."{name}"] in {path}'
        if not isinstance(table, dict):
            raise Refused(f'{where} must be a table, e.g. command = "sbatch serve.sh"')
        _check_names(table, {"command", "launch_interval"}, path, f'[{LAUNCH}."{name}"]')
        command, interval = table.get("command"), table.get("launch_interval")
        words = shlex.split(command) if isinstance(command, str) else command
        if not (isinstance(words, list) and words and all(isinstance(w, str) for w in words)):
            raise Refused(f"{where}: command must be a command line or a list of its words")
        if interval is not None and not (isinstance(interval, (int, float)) and interval > 0):
            raise Refused(f"{where}: launch_interval must be a number of seconds")
        launches[name] = (words, None if interval is None else float(interval))
    return launches, path.parent


def owners() -> dict[str, list[str]]:
    """The config file's ``[owners]`` table: backend name -> the keys (Z85, or key file names in the
    allowed-keys directory) that alone may register it at a broker using this file."""
    path = config_file()
    table = _read_toml().get(OWNERS, {})
    if not (isinstance(table, dict) and all(isinstance(v, list) and all(isinstance(k, str) for k in v)
                                            for v in table.values())):
        raise Refused(f"[{OWNERS}] in {path} must map backend names to lists of keys or key names")
    return table


def remember_broker(url: str, broker_key: str) -> Path:
    """Write the public key of the broker at ``url`` (Z85 text or a key file) into its
    ``[brokers."URL"]`` table of the config file, which is created if need be; returns the file.

    The rest of the file is kept as it is (comments too): only the table's ``broker_key`` line changes.
    """
    if not broker_key.strip():
        raise Refused(f"no public key given for {url}: give its .key file or its public key as Z85 text (40 characters)")
    ref = key_ref(broker_key.strip())
    try:
        public_key(ref)  # refuses what is not a public key, before anything is written
    except Refused as exc:
        raise Refused(f"{broker_key.strip()[:60]!r} is neither a public key in Z85 text (40 characters) "
                      f"nor a readable key file ({exc})") from None
    value = ref if isinstance(ref, str) else str(ref.resolve())
    path = config_file()
    _read_config()  # a broken file is reported, not made worse
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    header, setting = f"[{BROKERS}.{json.dumps(url)}]", f"broker_key = {json.dumps(value)}"
    if header in (line.strip() for line in lines):
        start = [line.strip() for line in lines].index(header) + 1
        end = next((i for i in range(start, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        lines[start:end] = [setting] + [line for line in lines[start:end]
                                        if line.split("=")[0].strip() != "broker_key"]
    else:
        lines += ["", header, setting]
    path.parent.mkdir(parents=True, exist_ok=True)
    new = path.with_name(path.name + ".new")
    new.write_text("\n".join(lines).lstrip("\n") + "\n", encoding="utf-8")
    new.replace(path)  # whole or not at all: a half-written file would stop every client
    if public_key(Security.resolve(url=url).broker_key) != public_key(ref):
        raise Refused(f"{path} defines the broker {url} in a way this cannot edit; set its broker_key by hand")
    return path


def broker_table_hint(url: str) -> str:
    """Where the config file keeps what is known about the broker at ``url``, for messages."""
    return f'[{BROKERS}.{json.dumps(url)}] in {config_file()}'
