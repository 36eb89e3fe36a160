"""Connections of a long-running server (the sidebar's) to the brokers it is asked about.

Anyone with the panel can ask about any address, and a browser polls; so the
connections must stay few, must not live for ever, and one broker must never
delay another:

* at most ``size`` brokers are known; asking about one more forgets the least recently used;
* a broker not asked about for ``idle`` seconds is forgotten (looked for at each request);
* a failed query closes its client (a ZeroMQ socket to a dead address reconnects about ten times
  a second, for ever); for ``cooldown`` seconds after, queries get the same error at once;
* each broker's queries run on a thread of its own, and queries that arrive while one runs share
  its answer; no lock is held while a query waits for the network.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..caller.client import Client


class _Broker:
    """One broker's client (while it answers), its query thread, and its last failure."""

    def __init__(self, url: str, now: float):
        self.url = url
        self.used = now
        self.client: Client | None = None
        self.running: Future | None = None  # the query in flight, shared by whoever asks meanwhile
        self.error: Exception | None = None
        self.failed_at = 0.0
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="de-magic-broker")

    def close(self) -> None:
        """Close the client (a query in flight ends with an error) and let the thread end."""
        if self.client is not None:
            self.client.close()
            self.client = None
        self.thread.shutdown(wait=False)


class BrokerPool:
    """Listings of many brokers, with bounded, expiring connections (see the module's doc)."""

    def __init__(self, size: int = 16, idle: float = 60.0, cooldown: float = 3.0):
        self.size, self.idle, self.cooldown = size, idle, cooldown
        self._brokers: OrderedDict[str, _Broker] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._brokers)

    def clients(self) -> int:
        """How many brokers have a client (open sockets) now."""
        with self._lock:
            return sum(b.client is not None for b in self._brokers.values())

    async def listing(self, url: str, timeout: float) -> dict[str, Any]:
        """The broker's listing; raises what the query raised (the last failure, during a cool-down)."""
        return await asyncio.wrap_future(self.query(url, timeout))

    def query(self, url: str, timeout: float) -> Future:
        """A future of the listing of the broker at ``url``."""
        with self._lock:
            now = time.monotonic()
            self._forget(lambda b: now - b.used > self.idle)
            broker = self._brokers.pop(url, None) or _Broker(url, now)
            self._brokers[url] = broker  # now the most recently used
            while len(self._brokers) > self.size:
                self._brokers.popitem(last=False)[1].close()
            broker.used = now
            if broker.running is None:
                if broker.error is not None and now - broker.failed_at < self.cooldown:
                    done: Future = Future()
                    done.set_exception(broker.error)
                    return done
                broker.running = broker.thread.submit(self._fetch, broker, timeout)
            return broker.running

    def close(self) -> None:
        with self._lock:
            self._forget(lambda b: True)

    def forget(self, url: str) -> None:
        """Drop the broker's client and last failure, e.g. because its key is now known."""
        with self._lock:
            self._forget(lambda b: b.url == url)

    def _forget(self, which) -> None:
        for url in [url for url, b in self._brokers.items() if which(b)]:
            self._brokers.pop(url).close()

    def _fetch(self, broker: _Broker, timeout: float) -> dict[str, Any]:
        """Runs on the broker's own thread."""
        try:
            with self._lock:
                if broker.client is None:
                    # one client per broker: it keeps the APIs it has seen, so polls fetch only what changed
                    broker.client = Client(broker.url)
                client = broker.client
            listing = client.listing(timeout=timeout)
        except Exception as exc:
            with self._lock:
                if broker.client is not None:
                    broker.client.close()
                    broker.client = None
                broker.error, broker.failed_at = exc, time.monotonic()
            raise
        else:
            with self._lock:
                broker.error = None
            return listing
        finally:
            with self._lock:
                broker.running = None
