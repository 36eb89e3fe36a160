"""Jobs over HTTP: their document (``GET /jobs/{id}``) and their events as Server-Sent Events.

The gateway follows a job as the Python ``Job`` does, with ``job.poll`` requests that bring
only what is new (progress reports and output, as events, then the answer), every
:data:`POLL_INTERVAL` seconds; each poll becomes SSE events:

``status``   ``{"status": ...}`` when it changes
``progress`` a progress report (de-magic's progress event: ``n``, ``total``, ``desc``...)
``output``   printed text or display data of the job
``end``      the job's document, with its ``result`` or ``error``: the last event
"""

from __future__ import annotations

import json

from .problems import from_header

POLL_INTERVAL = 0.2  # seconds between polls while a client follows a job's events
FINAL = frozenset({"done", "failed", "cancelled"})
UNSEEN = 1 << 62  # a poll that says it has seen everything: only status and answer come back


def document(summary: dict, answer: dict | None = None) -> dict:
    """A job's document: its summary and, once finished, its ``result`` or ``error`` (a problem)."""
    doc = {key: summary.get(key) for key in ("id", "what", "status", "created", "finished", "progress")}
    if answer is not None:
        doc["status"] = answer["status"]
        if "result" in answer:
            doc["result"] = answer["result"]
        if "error" in answer:
            doc["error"] = from_header(answer["error"]).document()
    return doc


def status(calls, grant, job_id: str) -> dict:
    """``GET /jobs/{id}``: the summary, and the answer once the job finished."""
    summary = calls.job(grant, job_id, "job.status")
    answer = None
    if summary["status"] in FINAL:
        answer = calls.job(grant, job_id, "job.poll", progress=UNSEEN, outputs=UNSEEN)
    return document(summary, answer)


def event(name: str, data) -> bytes:
    """One Server-Sent Event (``data`` as one line of JSON)."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Follower:
    """The state of one SSE stream: what it has seen of the job; :meth:`poll` returns the next events."""

    def __init__(self, calls, grant, job_id: str):
        self.calls, self.grant, self.id = calls, grant, job_id
        self.seen = self.shown = 0
        self.status: str | None = None
        self.ended = False

    def poll(self) -> list[bytes]:
        events: list[bytes] = []

        def on_event(header: dict, frames: list) -> None:
            kind = header.get("event")
            if kind == "progress":
                events.append(event("progress", {k: v for k, v in header.items() if k != "event"}))
                return
            self.shown += 1
            output = dict(header)
            if frames:  # display data travels as a JSON frame
                output.update(json.loads(bytes(frames[0])))
            events.append(event("output", output))

        reply = self.calls.job(self.grant, self.id, "job.poll", on_event, progress=self.seen, outputs=self.shown)
        self.seen = reply["progress"]
        if reply["status"] != self.status:  # after the reports the poll brought: it is the state at their end
            self.status = reply["status"]
            events.append(event("status", {"status": self.status}))
        if self.status in FINAL:
            summary = self.calls.job(self.grant, self.id, "job.status")
            events.append(event("end", document(summary, reply)))
            self.ended = True
        return events
