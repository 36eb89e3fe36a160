"""Every default and environment variable of de-magic, in one place.

Client, backend, broker and the notebook layer read their defaults here, so none of
them imports another for a constant (as Pyro5's ``configure`` module does).
"""

from __future__ import annotations

import os
import re

from .errors import BadAddress

#: The broker everyone uses unless told otherwise: ``$DE_MAGIC_BROKER``, else this.
#: ``$DE_MAGIC_BROKER`` may list a consortium's equivalent brokers ("doors"), separated by commas;
#: without it, the config file's ``broker`` (an address or a list) is the default.
DEFAULT_URL = "tcp://127.0.0.1:5555"
BROKER_ENV = "DE_MAGIC_BROKER"
#: Seconds between heartbeats; a peer silent for ``liveness`` intervals is counted as gone.
DEFAULT_HEARTBEAT = 1.0
DEFAULT_LIVENESS = 3
#: Calls (and jobs) a backend lets wait for a free slot before it answers Busy.
DEFAULT_MAX_QUEUE = 1000
#: Seconds a listing may take, unless it is given a timeout of its own (a live broker answers at once).
DEFAULT_LISTING_TIMEOUT = 10.0
#: Largest message (call arguments, a result, an event) in bytes.
DEFAULT_MAX_MESSAGE = 1 << 30
#: Bytes of calls a broker holds in its queues, over all backends, before it answers Busy.
DEFAULT_MAX_QUEUED_BYTES = 1 << 30
#: Seconds a ``%%remote`` namespace outlives its caller's last sign of life (long enough for a lunch break).
DEFAULT_SESSION_LEASE = 2 * 3600.0
#: Bytes of values a backend worker keeps for remote references (``options(keep=True)``), over all callers.
DEFAULT_REF_BYTES = 4 << 30
#: How long a backend keeps a finished job's result, and how many bytes of results at most (oldest go first).
DEFAULT_JOB_TTL = 7 * 86400.0
DEFAULT_JOB_BYTES = 1 << 30
#: Finished jobs a backend keeps at most (their answers and records; the oldest finished go first).
DEFAULT_MAX_JOBS = 10_000
#: Seconds after a broker binds during which calls to unknown backends wait for them to register.
STARTUP_GRACE = 2.0


def default_url() -> str:
    """``$DE_MAGIC_BROKER`` if set, else the config file's ``broker``, else :data:`DEFAULT_URL`; checked by
    :func:`check_doors` (several addresses come back separated by commas)."""
    from .security import config_file, configured_broker  # here: it imports zmq, the constants above need not

    if os.environ.get(BROKER_ENV):
        return ",".join(check_doors(os.environ[BROKER_ENV], f"${BROKER_ENV}"))
    url = configured_broker()
    return ",".join(check_doors(url, f"broker in {config_file()}")) if url else DEFAULT_URL


def check_doors(urls, source: str = "") -> list[str]:
    """Equivalent addresses of one service (a list, or text separated by commas), each checked, in order."""
    items = urls.split(",") if isinstance(urls, str) else [str(url) for url in urls]
    doors = [check_url(url, source) for url in items if url.strip()]
    if not doors:
        raise BadAddress(f"no broker address given{f' (in {source})' if source else ''}: "
                         f"expected tcp://HOST:PORT, e.g. {DEFAULT_URL}")
    return list(dict.fromkeys(doors))


_URL = re.compile(r"tcp://(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(\d{1,5}|\*)|(ipc|inproc)://\S+")


def check_url(url: str, source: str = "", what: str = "broker") -> str:
    """``url`` if it is a ZeroMQ address a broker (or ``what``) can have; else BadAddress, saying which form is
    expected.

    The one place addresses are checked, so that a typo reads as one line, not as a ZMQError from deep inside.
    """
    match = _URL.fullmatch(url.strip())
    if match is None or (match[2] not in (None, "*") and int(match[2]) > 65535):
        given = f"{url!r} (from {source})" if source else repr(url)
        raise BadAddress(f"{given} is not a {what} address: expected tcp://HOST:PORT, e.g. {DEFAULT_URL}")
    return url.strip()
