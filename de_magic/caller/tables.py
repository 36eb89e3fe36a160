"""The live backends at a broker as a table: text in a terminal, HTML in a notebook."""

from __future__ import annotations

import html


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
            row = (name, count, f"{busy}/{slots}", "yes" if entry.get("allow_code") else "no",
                   _held(workers, "sessions"), _held(workers, "refs"), members)
            out.append(row + (", ".join(entry["brokers"]),) if "brokers" in entry else row)
        return out

    _HEAD = ("backend", "workers", "busy", "code", "sessions", "refs", "members")

    def __repr__(self) -> str:
        rows = [self._head, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._head))]
        text = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        text.insert(1, "  ".join("-" * w for w in widths))
        if not self:
            text.append(f"(no live backends at {self.broker.get('url', '?')})")
        return "\n".join(text)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in self._head)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows())
        url = html.escape(self.broker.get("url", "?"))
        return f"<table><caption>de-magic backends at <code>{url}</code></caption><tr>{head}</tr>{body}</table>"


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
