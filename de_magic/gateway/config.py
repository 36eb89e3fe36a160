"""The gateway's settings: flags win over the config file's ``[gateway]`` table, which wins over defaults.

::

    [gateway]
    bind = "127.0.0.1:8080"          # HOST:PORT; beyond loopback only with tokens
    broker = "tcp://127.0.0.1:5555"  # else the client default ($DE_MAGIC_BROKER, the file's broker)
    timeout = 60                     # seconds a call may take, unless ?timeout= says otherwise
    max_body = 104857600             # bytes; default: the broker's maximum message size
    certfile = "gateway.pem"         # HTTPS by the gateway itself (else put a TLS proxy in front)
    keyfile = "gateway-key.pem"

    [gateway.tokens.alice]
    hash = "sha256:..."              # `de-magic gateway --new-token alice` prints a token and its hash
    key = "keys/alice.key_secret"    # the CURVE identity this token's calls present to the broker

Relative paths are relative to the config file.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ..wire.defaults import check_doors
from ..wire.errors import Refused
from ..wire.security import GATEWAY, config_table
from .tokens import Tokens, grant

DEFAULT_BIND = "127.0.0.1:8080"
DEFAULT_TIMEOUT = 60.0
SETTINGS = {"bind", "broker", "timeout", "max_body", "certfile", "keyfile", "tokens"}
TOKEN_SETTINGS = {"hash", "key"}


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    broker: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_body: int | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    tokens: Tokens = field(default_factory=Tokens)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.certfile else 'http'}://{host}:{self.port}"


def load(bind: str | None = None, broker: str | None = None, timeout: float | None = None) -> GatewayConfig:
    """The settings from flags (given here) over the config file's ``[gateway]`` table; ValueError says what is wrong."""
    table, path = config_table(GATEWAY)
    _check(table, SETTINGS, f"[{GATEWAY}] in {path}")
    base = path.parent
    grants = []
    for name, entry in table.get("tokens", {}).items():
        if not isinstance(entry, dict):
            raise ValueError(f'[{GATEWAY}.tokens] in {path}: "{name}" must be a table with hash = "sha256:..."')
        _check(entry, TOKEN_SETTINGS, f'[{GATEWAY}.tokens."{name}"] in {path}')
        key = entry.get("key")
        grants.append(grant(name, entry.get("hash", ""), (base / Path(key).expanduser()).resolve() if key else None))
    host, port = parse_bind(bind or table.get("bind") or DEFAULT_BIND)
    config = GatewayConfig(host, port, broker or table.get("broker"), float(timeout or table.get("timeout", DEFAULT_TIMEOUT)),
                           table.get("max_body"), _path(base, table.get("certfile")), _path(base, table.get("keyfile")),
                           Tokens(grants))
    check_exposure(config.host, config.tokens)
    if bool(config.certfile) != bool(config.keyfile):
        raise ValueError(f"[{GATEWAY}] in {path}: HTTPS needs both certfile and keyfile")
    return config


def advertised(broker: str) -> dict | None:
    """Where the config file's gateway serves ``broker``'s backends, for the sidebar's curl lines:
    ``{"url": ..., "tokens": bool}``; None without a ``[gateway]`` table, or when it serves another broker."""
    try:
        table, _ = config_table(GATEWAY)
        served = table.get("broker")
        if not table or (served and broker not in check_doors(served)):
            return None
        host, port = parse_bind(table.get("bind") or DEFAULT_BIND)
    except (Refused, ValueError):  # a broken table is for the gateway to report when it starts, not the sidebar
        return None
    if host in ("0.0.0.0", "::"):  # every interface: this machine reaches it on loopback
        host = "127.0.0.1"
    config = GatewayConfig(host, port, certfile=Path("tls") if table.get("certfile") else None)
    return {"url": config.base_url, "tokens": bool(table.get("tokens"))}


def parse_bind(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--bind must be HOST:PORT, e.g. {DEFAULT_BIND}, not {text!r}")
    return host, int(port)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name or a wildcard: reachable from elsewhere
        return False


def check_exposure(host: str, tokens: Tokens) -> None:
    """Secure by default: without tokens anyone who reaches the port could call every backend as the gateway."""
    if not tokens and not is_loopback_host(host):
        raise ValueError(f"refusing to serve HTTP on {host}, beyond this machine, without tokens: anyone reaching it "
                         f"could call every backend as this gateway. Add [{GATEWAY}.tokens] to the config file "
                         "(`de-magic gateway --new-token NAME`), or bind to 127.0.0.1")


def _check(table: dict, known: set[str], where: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(sorted(unknown))} in {where}; known: {', '.join(sorted(known))}")


def _path(base: Path, value: str | None) -> Path | None:
    return (base / Path(value).expanduser()).resolve() if value else None

