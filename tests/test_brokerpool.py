"""The sidebar server's broker connections: bounded, closed after failures, cooled down, independent."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from de_magic.lab.brokerpool import BrokerPool
from de_magic.wire.errors import DeMagicError

from conftest import free_port

TIMEOUT = 0.5


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _ask_all(pool: BrokerPool, urls: list[str]) -> list:
    return await asyncio.gather(*(pool.listing(url, TIMEOUT) for url in urls), return_exceptions=True)


def test_fifty_dead_brokers_leave_a_bounded_set_and_no_open_sockets():
    pool = BrokerPool(size=16, cooldown=30)
    try:
        asyncio.run(_ask_all(pool, [f"tcp://127.0.0.1:{free_port()}"]))  # zmq's context and threads start once
        before = _fds()
        answers = asyncio.run(_ask_all(pool, [f"tcp://127.0.0.1:{free_port()}" for _ in range(50)]))
        assert all(isinstance(a, DeMagicError) for a in answers)
        assert len(pool) <= 16 and pool.clients() == 0
        assert _fds() - before < 10  # every client of a failed query was closed, with its sockets
    finally:
        pool.close()


def test_a_failed_broker_is_not_asked_again_during_its_cool_down(hello):
    pool = BrokerPool(cooldown=30)
    dead = f"tcp://127.0.0.1:{free_port()}"
    try:
        with pytest.raises(DeMagicError) as first:
            pool.query(dead, TIMEOUT).result()
        start = time.monotonic()
        with pytest.raises(DeMagicError) as again:
            pool.query(dead, TIMEOUT).result()
        assert again.value is first.value and time.monotonic() - start < 0.05 and pool.clients() == 0
        # a live broker keeps its client, and concurrent questions share one query
        queries = [pool.query(hello.url, 5) for _ in range(3)]
        assert queries[0] is queries[1] is queries[2] and "hello_world" in queries[0].result()["backends"]
        assert pool.clients() == 1
    finally:
        pool.close()


def test_idle_brokers_are_forgotten(hello):
    pool = BrokerPool(idle=0.2)
    try:
        pool.query(hello.url, 5).result()
        assert pool.clients() == 1
        time.sleep(0.3)  # idle longer than allowed
        with pytest.raises(DeMagicError):
            pool.query(f"tcp://127.0.0.1:{free_port()}", TIMEOUT).result()
        assert len(pool) == 1 and pool.clients() == 0  # only the dead one, and its client closed
    finally:
        pool.close()
