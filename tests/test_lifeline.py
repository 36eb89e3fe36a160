"""Backends started on someone's behalf end when that someone is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from de_magic import Client
from de_magic.wire.errors import DeMagicError

from conftest import ROOT, free_port, wait_for


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaps has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_demo_backends_exit_when_the_demo_is_killed():
    url = f"tcp://127.0.0.1:{free_port()}"
    demo = subprocess.Popen([sys.executable, "-m", "de_magic", "demo", "--broker", url], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pids: list[int] = []
    try:
        with Client(url, timeout=5) as client:
            listing = wait_for(lambda: _listing_with_both(client), timeout=60, what="the demo backends to register")
        pids = [w["pid"] for entry in listing["backends"].values() for w in entry["workers"]]
        assert len(pids) == 2 and all(_running(pid) for pid in pids)
        demo.kill()  # SIGKILL: no clean-up of its own
        demo.wait()
        wait_for(lambda: not any(_running(pid) for pid in pids), timeout=5, what="the backends to exit")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _listing_with_both(client: Client) -> dict | None:
    try:
        listing = client.listing(api=False, timeout=1)
    except DeMagicError:  # not up yet
        return None
    return listing if {"hello_world", "ocean_model"} <= set(listing["backends"]) else None
