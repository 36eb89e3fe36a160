"""Bearer tokens: kept only as hashes, compared in constant time, each mapped to a CURVE identity.

A token is 256 random bits (:func:`new_token`), so a plain SHA-256 of it is as hard to reverse
as the token is to guess: a slow password hash would only protect weak secrets, and these are not.
The gateway compares the presented token's hash with every configured one, each comparison in
constant time and without stopping at a match, so the time taken tells nothing about which
hash, or how much of one, matched.

Each token names the key pair the gateway presents to the broker for that token's calls, so the
broker's allowed keys and each backend's ``allow_clients`` decide exactly as they do for a Python caller.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from .problems import Problem

PREFIX = "sha256:"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return PREFIX + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Grant:
    """One configured token: its name (for logs and job ownership), its hash, the key its calls use."""

    name: str
    digest: bytes
    key: Path | None = None  #: the CURVE secret key presented to the broker; None: the gateway's own


def grant(name: str, hashed: str, key: Path | None = None) -> Grant:
    """A :class:`Grant` from a configured ``sha256:HEX`` hash; a one-line error for anything else."""
    text = str(hashed)
    try:
        digest = bytes.fromhex(text.removeprefix(PREFIX)) if text.startswith(PREFIX) else b""
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise ValueError(f"token {name!r}: hash must be 'sha256:' and 64 hex digits (make one with "
                         "`de-magic gateway --new-token NAME`), never the token itself")
    return Grant(name, digest, key)


class Tokens:
    """The configured grants; empty means no authentication (and then the gateway stays on loopback)."""

    def __init__(self, grants: list[Grant] = ()):
        self.grants = list(grants)

    def __bool__(self) -> bool:
        return bool(self.grants)

    def check(self, authorization: str | None) -> Grant | None:
        """The grant of an ``Authorization: Bearer ...`` header (None when no tokens are configured)."""
        if not self.grants:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem("unauthorized", "this gateway needs a token: send 'Authorization: Bearer TOKEN'")
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for candidate in self.grants:  # every one, no early exit: the time says nothing about a match
            if hmac.compare_digest(candidate.digest, digest):
                found = candidate
        if found is None:
            raise Problem("unauthorized", "the token is not one this gateway knows; ask its operator for one")
        return found
