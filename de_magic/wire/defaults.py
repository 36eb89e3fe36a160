"""Every default and environment variable of de-magic, in one place.

Client, backend, broker and the notebook layer read their defaults here, so none of
them imports another for a constant (as Pyro5's ``configure`` module does).
"""

from __future__ import annotations

import os

#: The broker everyone uses unless told otherwise: ``$DE_MAGIC_BROKER``, else this.
DEFAULT_URL = "tcp://127.0.0.1:5555"
BROKER_ENV = "DE_MAGIC_BROKER"
#: Seconds between heartbeats; a peer silent for ``liveness`` intervals is counted as gone.
DEFAULT_HEARTBEAT = 1.0
DEFAULT_LIVENESS = 3
#: Largest message (call arguments, a result, an event) in bytes.
DEFAULT_MAX_MESSAGE = 1 << 30
#: Bytes of calls a broker holds in its queues, over all backends, before it answers Busy.
DEFAULT_MAX_QUEUED_BYTES = 1 << 30
#: Seconds after a broker binds during which calls to unknown backends wait for them to register.
STARTUP_GRACE = 2.0


def default_url() -> str:
    """``$DE_MAGIC_BROKER`` if set, else ``tcp://127.0.0.1:5555``."""
    return os.environ.get(BROKER_ENV) or DEFAULT_URL
