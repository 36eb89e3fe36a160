"""Where a direct endpoint listens for callers of its own machine and user: a Unix socket in a private directory.

A direct endpoint always runs CURVE on TCP, so that a process that takes its port after the worker died
cannot answer in its place (docs/security.md).  On one machine that costs what encryption costs: an 80 MB
result travels at a quarter of loopback's speed (benchmarks/README.md).  A Unix socket proves the same thing
through the file system instead: it lives in a directory only its user may write to, so no other user can
put a socket in its place, and a caller uses it only if that directory is its own.  Callers of other users,
and of other machines, use the CURVE endpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import tempfile

log = logging.getLogger("de_magic.wire.localsocket")

SCHEME = "ipc://"
#: The longest path a Unix socket address holds (sun_path is 108 bytes on Linux, with its NUL).
MAX_PATH = 107


def directory() -> str:
    """The private directory of this user's local endpoints: in $XDG_RUNTIME_DIR, else in the temp directory."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "de-magic")
    return os.path.join(tempfile.gettempdir(), f"de-magic-{os.getuid()}")


def private(path: str) -> bool:
    """Whether ``path`` is a directory of this user's that no one else may write to or look into (not a link)."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def address(name: str) -> str | None:
    """The ``ipc://`` address to bind for ``name`` (a worker id in hex), its directory made if need be; None
    where the directory is not private (someone else's, or open to others: then there is no local endpoint)."""
    folder = directory()
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as exc:
        log.warning("no local direct endpoint: cannot make %s (%s)", folder, exc.strerror)
        return None
    if not private(folder):
        log.warning("no local direct endpoint: %s is not a directory of this user's that only it may use", folder)
        return None
    _sweep(folder)
    path = os.path.join(folder, f"{name}.sock")
    return SCHEME + path if len(path.encode()) <= MAX_PATH else None


def remove(url: str) -> None:
    """Remove the socket file of a local endpoint that closed."""
    try:
        os.unlink(url[len(SCHEME):])
    except OSError:
        pass


def _sweep(folder: str, most: int = 1000) -> None:
    """Remove the sockets of endpoints whose process died without removing them (nothing listens there)."""
    with os.scandir(folder) as entries:
        for entry in list(entries)[:most]:
            if not entry.name.endswith(".sock"):
                continue
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(entry.path)
            except ConnectionRefusedError:
                remove(SCHEME + entry.path)
            except OSError:
                pass
            finally:
                probe.close()


def trusted(url: str) -> bool:
    """Whether a caller may use the local endpoint ``url``: a socket in a private directory of the caller's own
    user (only that user, who could anyway, can have put it there)."""
    if not url.startswith(SCHEME):
        return False
    path = url[len(SCHEME):]
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode) and private(os.path.dirname(path))
    except OSError:
        return False
