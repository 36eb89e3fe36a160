"""A light backend for the offline tests: it writes down every call it runs, so a test can count them."""

from __future__ import annotations

import os


def record(tag: str) -> list[str]:
    """Append ``tag`` to the file $OFFLINE_LOG names; return every tag written there so far."""
    with open(os.environ["OFFLINE_LOG"], "a") as log:
        log.write(tag + "\n")
    with open(os.environ["OFFLINE_LOG"]) as log:
        return log.read().split()
