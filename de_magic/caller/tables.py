"""Listings as tables: text in a terminal, HTML in a notebook (the live backends, a caller's jobs)."""

from __future__ import annotations

import html
import time

from .progress import Progress, text_line


def text_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Columns padded to their widest cell, a rule under the head."""
    rows = [head, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    text.insert(1, "  ".join("-" * w for w in widths))
    return text


def html_table(caption: str, head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """``caption`` is HTML already; the cells are text."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><caption>{caption}</caption><tr>{th}</tr>{body}</table>"


class BackendTable(dict):
    """The live backends at a broker: a dict by name that prints as a table."""

    def __init__(self, listing: dict):
        super().__init__(listing.get("backends", {}))
        self.broker = listing.get("broker", {})

    @property
    def _head(self) -> tuple[str, ...]:
        # the listing of several brokers says through which each backend is reachable
        return self._HEAD + ("brokers",) if any("brokers" in e for e in self.values()) else self._HEAD

    def rows(self) -> list[tuple[str, ...]]:
        out = []
        for name, entry in sorted(self.items()):
            workers = entry.get("workers", [])
            busy = sum(w.get("busy", 0) for w in workers)
            slots = sum(w.get("capacity", 0) for w in workers)
            members = ", ".join(entry.get("api", {}).get("members", {}))
            # a Dask backend's one worker is a front door: its calls run on the cluster's workers
            count = str(len(workers)) + "".join(f" (Dask: {w['dask']['workers']} workers, {w['dask']['threads']} "
                                                f"threads)" for w in workers if w.get("dask"))
            direct = sum(1 for w in workers if w.get("direct"))
            count += f" ({direct} direct)" if direct else ""  # they take calls without the broker in between
            if entry.get("offline") is not None:  # a broker with a state directory remembers it
                count = f"offline since {offline_since(entry['offline'])}"
            if entry.get("waiting"):  # jobs the broker holds until a worker registers
                count += f", {entry['waiting']} job{'s' * (entry['waiting'] != 1)} waiting"
            launch = entry.get("launch")
            if launch:  # the broker ran the backend's launch command; no worker of it registered yet
                count += f", launch failed: {launch['error']}" if launch.get("error") else ", launch pending"
            row = (name, count, f"{busy}/{slots}", "yes" if entry.get("allow_code") else "no",
                   _held(workers, "sessions"), _held(workers, "refs"), members)
            out.append(row + (", ".join(entry["brokers"]),) if "brokers" in entry else row)
        return out

    _HEAD = ("backend", "workers", "busy", "code", "sessions", "refs", "members")

    def __repr__(self) -> str:
        text = text_table(self._head, self.rows())
        if not self:
            text.append(f"(no live backends at {self.broker.get('url', '?')})")
        text += [f"(the broker at {url} is down: not answering)" for url in self.broker.get("down", [])]
        return "\n".join(text)

    def _repr_html_(self) -> str:
        url = html.escape(self.broker.get("url", "?"))
        down = "".join(f"; <b>down</b>: <code>{html.escape(url)}</code>" for url in self.broker.get("down", []))
        return html_table(f"de-magic backends at <code>{url}</code>{down}", self._head, self.rows())


def _held(workers: list[dict], kind: str) -> str:
    """How many ``%%remote`` sessions or references (``kind``) the workers hold, and their memory."""
    count = sum(w.get(kind, {}).get("count", 0) for w in workers)
    held = sum(w.get(kind, {}).get("bytes", 0) for w in workers)
    return f"{count} ({format_bytes(held)})" if count else "0"


def format_bytes(n: float) -> str:
    """``n`` bytes for people: 512 B, 3 kB, 210 MB, 1.5 GB."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if n >= 10 or unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class JobTable(list):
    """A caller's jobs at a broker (summaries, each with its ``backend``), oldest first, as a table."""

    HEAD = ("job", "backend", "what", "status", "progress", "age")

    def __init__(self, jobs: list[dict], broker: str, silent: list[str] = ()):
        super().__init__(sorted(jobs, key=lambda job: job["created"]))
        self.broker = broker
        #: Backends that did not answer (busy, or too old to keep jobs).
        self.silent = list(silent)

    def rows(self) -> list[tuple[str, ...]]:
        return [(job["id"], job["backend"], job["what"], job["status"], progress_text(job.get("progress")),
                 age(job["created"])) for job in self]

    def _notes(self) -> list[str]:
        notes = [] if self else [f"(no jobs of yours at {self.broker})"]
        if self.silent:
            notes.append(f"(no answer from {', '.join(self.silent)})")
        return notes

    def __repr__(self) -> str:
        return "\n".join(text_table(self.HEAD, self.rows()) + self._notes())

    def _repr_html_(self) -> str:
        notes = "".join(f"<div>{html.escape(note)}</div>" for note in self._notes())
        return html_table(f"your de-magic jobs at <code>{html.escape(self.broker)}</code>", self.HEAD,
                          self.rows()) + notes


def progress_text(event: dict | None) -> str:
    """A job's latest progress report (a ``progress`` event's fields) as ``desc: n/total unit``."""
    return text_line(Progress.from_event(event)) if event else ""


def offline_since(seen: float) -> str:
    """When a backend was last up: the local clock time, and how long ago."""
    return f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(seen))} ({age(seen)} ago)"


def age(since: float) -> str:
    """How long ago ``since`` (a ``time.time()``) was, in the largest fitting unit."""
    seconds = max(0.0, time.time() - since)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"
