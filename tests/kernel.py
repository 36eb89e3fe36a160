"""A real IPython kernel for tests, shared by the magics, widget and README tests.

Every iopub message read is kept in ``log`` with its arrival time, so a test can
wait for one message and later look at those that came before it.
"""

from __future__ import annotations

import os
import queue
import time

from jupyter_client.manager import start_new_kernel

from conftest import ROOT


def parent(msg: dict) -> str | None:
    return msg.get("parent_header", {}).get("msg_id")


OUTPUT_TYPES = ("stream", "display_data", "execute_result", "error")


class Kernel:
    """A kernel started in ``cwd`` with ``env`` added; ``run`` collects a cell's reply and outputs."""

    def __init__(self, env: dict | None = None, cwd=ROOT):
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.manager, self.client = start_new_kernel(kernel_name="python3", cwd=str(cwd),
                                                     env={**os.environ, "PYTHONPATH": path, **(env or {})})
        self.log: list[dict] = []

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)

    def send(self, code: str) -> str:
        return self.client.execute(code)

    def wait_for(self, predicate, timeout: float = 30, what: str = "a message") -> dict:
        """The first message (already read or still to come) that satisfies ``predicate``."""
        for msg in self.log:
            if predicate(msg):
                return msg
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {what} within {timeout} s") from None
            msg["time"] = time.monotonic()
            self.log.append(msg)
            if predicate(msg):
                return msg

    def collect(self, msg_id: str, timeout: float = 30.0) -> tuple[dict, list[dict]]:
        """The execute_reply of ``msg_id`` and its output messages (with arrival ``time``), once idle."""
        self.wait_for(lambda m: parent(m) == msg_id and m["msg_type"] == "status"
                      and m["content"]["execution_state"] == "idle", timeout, f"the end of cell {msg_id}")
        reply = self.client.get_shell_msg(timeout=timeout)
        while parent(reply) != msg_id:  # a reply to an earlier cell that was not waited for
            reply = self.client.get_shell_msg(timeout=timeout)
        return reply, [m for m in self.log if parent(m) == msg_id and m["msg_type"] in OUTPUT_TYPES]

    def run(self, code: str, timeout: float = 30.0) -> tuple[dict, list[dict]]:
        return self.collect(self.send(code), timeout)

    def execute(self, code: str, timeout: float = 30) -> list[dict]:
        """Run ``code``; every iopub message it caused, once the kernel is idle again; fail if it raised."""
        reply, _ = self.run(code, timeout)
        assert reply["content"]["status"] == "ok", "\n".join(reply["content"].get("traceback", []))
        return [m for m in self.log if parent(m) == parent(reply)]

    def send_comm_msg(self, comm_id: str, data: dict) -> str:
        """Send a comm message as the frontend does; returns its msg_id."""
        msg = self.client.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.client.shell_channel.send(msg)
        return msg["header"]["msg_id"]
