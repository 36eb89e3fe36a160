"""Soak: several clients make thousands of calls while workers are killed and restarted at random.

Every request must get exactly one answer, a result or a clear error, and no
result may reach the wrong caller.  Raw DEALER clients keep several calls in
flight each and see every message the broker sends them, so a duplicate or a
stray answer cannot hide; one more thread uses the ordinary ``Client``.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import zmq

from de_magic import Client
from de_magic.wire import protocol as P
from de_magic.wire import serialize
from de_magic.wire.errors import BackendLost, Busy, UnknownBackend

from conftest import HEARTBEAT, wait_for

FAULT_BACKEND = str(Path(__file__).with_name("fault_backend.py"))
CLIENTS = 4
CALLS = 5000  # per raw client, at least
MIN_KILLS = 10  # clients go on calling until this many workers were killed
WINDOW = 8  # calls in flight per raw client
SOAK_SECONDS = 20  # bound: the clients stop sending after this, whatever their count
CLEAR_ERRORS = {BackendLost.kind, UnknownBackend.kind, Busy.kind}


class RawClient(threading.Thread):
    """Calls ``echo(token)`` with unique tokens and records every answer it receives."""

    def __init__(self, url: str, index: int, stop_at: float, more):
        super().__init__(daemon=True)
        self.url, self.index, self.stop_at, self.more = url, index, stop_at, more
        self.tokens: dict[bytes, str] = {}  # rid -> token sent
        self.answers: dict[bytes, list] = {}  # rid -> [(type, value)]
        self.strays: list = []

    def run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(self.url)
        pending = 0
        try:
            sent = 0
            quiet_until = None
            while True:
                now = time.monotonic()
                if (sent < CALLS or self.more()) and pending < WINDOW and now < self.stop_at:
                    rid = f"{self.index}:{sent}".encode()
                    token = f"client {self.index} call {sent} {random.random()}"
                    self.tokens[rid] = token
                    sock.send_multipart(P.call(rid, "soak", b"", P.dump_header({"member": "echo"}),
                                               serialize.dumps(((token,), {}))))
                    sent += 1
                    pending += 1
                    continue
                if pending == 0:
                    # all answered: listen a little longer for duplicates
                    quiet_until = quiet_until or now + 3 * HEARTBEAT
                    if now >= quiet_until:
                        return
                elif now > self.stop_at + 20:
                    return  # the unanswered ones are reported by the test
                if not sock.poll(50):
                    continue
                frames = sock.recv_multipart()
                msg = P.parse(frames, P.AT_CLIENT)
                if msg.rid not in self.tokens or isinstance(msg, (P.Event, P.Status)):
                    self.strays.append(frames[:3])
                    continue
                value = serialize.loads(msg.payload) if isinstance(msg, P.Reply) else msg.header.get("kind")
                if msg.rid not in self.answers:
                    pending -= 1
                self.answers.setdefault(msg.rid, []).append((P.REPLY if isinstance(msg, P.Reply) else P.ERROR, value))
        finally:
            sock.close()


def test_soak_exactly_one_answer_per_call_while_workers_die(cluster):
    workers = [cluster.start_backend(FAULT_BACKEND, "soak", "--max-workers", "3") for _ in range(3)]
    stop_at = time.monotonic() + SOAK_SECONDS
    kills = []
    clients = [RawClient(cluster.url, i, stop_at, lambda: len(kills) < MIN_KILLS) for i in range(CLIENTS)]
    done = threading.Event()
    user_calls = {"ok": 0, "lost": 0}

    def killer() -> None:
        rng = random.Random(11)
        while not done.wait(rng.uniform(0.2, 0.6)):
            alive = [p for p in workers if p.poll() is None]
            if alive:
                victim = rng.choice(alive)
                os.kill(victim.pid, signal.SIGKILL)
                kills.append(victim.pid)
            workers.append(cluster.procs.start("serve", FAULT_BACKEND, "--name", "soak", "--broker", cluster.url,
                                               "--heartbeat", str(HEARTBEAT), "--max-workers", "3"))

    def user() -> None:
        with Client(cluster.url, timeout=10, heartbeat=HEARTBEAT) as client:
            i = 0
            while not done.is_set():
                token = f"user call {i}"
                try:
                    assert client.call("soak", "echo", (token,)) == token
                    user_calls["ok"] += 1
                except (BackendLost, UnknownBackend):
                    user_calls["lost"] += 1
                i += 1

    helpers = [threading.Thread(target=killer, daemon=True), threading.Thread(target=user, daemon=True)]
    start = time.monotonic()
    for thread in clients + helpers:
        thread.start()
    for client in clients:
        client.join(SOAK_SECONDS + 30)
    done.set()
    for thread in helpers:
        thread.join(15)
    elapsed = time.monotonic() - start

    sent = sum(len(c.tokens) for c in clients)
    results = errors = 0
    for c in clients:
        assert not c.strays, f"client {c.index} got answers it never asked for: {c.strays[:3]}"
        missing = c.tokens.keys() - c.answers.keys()
        assert not missing, f"client {c.index}: {len(missing)} calls never answered"
        for rid, answers in c.answers.items():
            assert len(answers) == 1, f"client {c.index} call {rid!r} answered {len(answers)} times: {answers}"
            kind, value = answers[0]
            if kind == P.REPLY:
                assert value == c.tokens[rid], f"client {c.index} got someone else's result: {value!r}"
                results += 1
            else:
                assert value in CLEAR_ERRORS, f"unclear error {value!r}"
                errors += 1
    print(f"\nsoak: {sent} raw calls + {sum(user_calls.values())} Client calls in {elapsed:.1f} s, "
          f"{len(kills)} workers killed; every call answered exactly once: {results} results, {errors} clear errors "
          f"(Client: {user_calls['ok']} results, {user_calls['lost']} lost)")
    assert sent >= CLIENTS * CALLS and len(kills) >= MIN_KILLS
    assert results > sent / 2 and user_calls["ok"] > 0
    # and afterwards the pool serves again, once the killed workers are gone from it
    live = {p.pid for p in workers if p.poll() is None}
    wait_for(lambda: (listed := cluster.workers("soak")) and all(w["pid"] in live for w in listed),
             what="only live workers listed")
    assert cluster.client.call("soak", "echo", ("still here",)) == "still here"
