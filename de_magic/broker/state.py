"""What a broker with a state directory remembers across restarts: the last API of every backend name it served,
and the jobs waiting for a backend.

:class:`Remembered` is one backend name as the routing core knows it while no worker of it is up (socket-free,
plain data), :class:`~de_magic.broker.waiting.WaitingJob` one waiting job; :class:`StateStore` keeps them in
SQLite in the state directory, one transaction per change, so a broker killed with ``kill -9`` loses nothing it
had written.  The directory is its owner's alone: it holds the names and APIs of every backend served, which key
owns each, and the arguments of waiting jobs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import time
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from ..wire.errors import Refused
from .waiting import WaitingJob

#: The database's file name in the state directory.
DATABASE = "broker.sqlite3"


@dataclass
class Remembered:
    """A backend name the broker has served: whose it is, what it offered, and when a worker of it was last up."""

    name: str
    owner: str | None  #: the key that registered it (None on a plaintext broker)
    info: dict  #: the API and rules its workers registered with: api, codec, allow_code, allow_clients
    last_seen: float | None = None  #: time.time() its last worker left; None while one is up


#: The parts of a worker's READY info that a remembered backend keeps (what listings and contracts need).
REMEMBERED_INFO = ("api", "codec", "allow_code", "allow_clients")


def remembered_info(info: dict) -> dict:
    return {k: info[k] for k in REMEMBERED_INFO if k in info}


class StateStore:
    """The SQLite database in a broker's state directory (created, readable by its owner only)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser()
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)  # also when it existed: it names every backend and its owner key
            # the broker's loop thread writes; it is created in the thread that binds (isolation_level=None:
            # each change is its own explicit transaction below)
            self._db = sqlite3.connect(self.directory / DATABASE, check_same_thread=False, isolation_level=None)
            os.chmod(self.directory / DATABASE, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a change is on disk when remember() returns
            self._db.execute("CREATE TABLE IF NOT EXISTS backends (name TEXT PRIMARY KEY, owner TEXT, info TEXT NOT "
                             "NULL, last_seen REAL)")
            # a job's arguments (its frames as sent) stay here only, until it is handed to a worker
            self._db.execute(f"CREATE TABLE IF NOT EXISTS jobs ({', '.join(JOB_COLUMNS)}, frames BLOB)")
        except (OSError, sqlite3.Error) as exc:
            raise Refused(f"cannot use the broker's state directory {self.directory}: {exc}; give a directory this "
                          "user can create and write (--state-dir)") from None

    def backends(self) -> dict[str, Remembered]:
        """Every remembered backend; one that was up when the broker stopped counts as last seen now."""
        now = time.time()
        rows = self._db.execute("SELECT name, owner, info, last_seen FROM backends").fetchall()
        return {name: Remembered(name, owner, json.loads(info), now if seen is None else seen)
                for name, owner, info, seen in rows}

    def remember(self, entry: Remembered) -> None:
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO backends VALUES (?, ?, ?, ?)",
                             (entry.name, entry.owner, json.dumps(entry.info), entry.last_seen))

    def jobs(self) -> list[WaitingJob]:
        """Every job the broker holds or held (records of ended ones included), oldest first."""
        rows = self._db.execute(f"SELECT {', '.join(JOB_FIELDS)} FROM jobs ORDER BY seq").fetchall()
        return [WaitingJob(*row) for row in rows]

    def add_job(self, job: WaitingJob, frames: list) -> None:
        """A new waiting job with its frames as sent: on disk when this returns (``job.seq`` is set)."""
        row = astuple(job)[1:]
        with self._transaction():
            cursor = self._db.execute(f"INSERT INTO jobs ({', '.join(JOB_FIELDS[1:])}, frames) VALUES "
                                      f"({', '.join('?' * len(row))}, ?)", (*row, _pack(frames)))
        job.seq = cursor.lastrowid

    def update_job(self, job: WaitingJob) -> None:
        """A job's new state; once it is no longer waiting its frames are dropped (handed over, or ended)."""
        keep = job.state == "waiting"
        with self._transaction():
            self._db.execute(f"UPDATE jobs SET {', '.join(f + ' = ?' for f in JOB_FIELDS[1:])}"
                             f"{'' if keep else ', frames = NULL'} WHERE seq = ?", (*astuple(job)[1:], job.seq))

    def job_frames(self, job: WaitingJob) -> list[bytes]:
        row = self._db.execute("SELECT frames FROM jobs WHERE seq = ?", (job.seq,)).fetchone()
        return _unpack(row[0]) if row and row[0] is not None else []

    def forget_jobs(self, jobs: list[WaitingJob]) -> None:
        with self._transaction():
            self._db.executemany("DELETE FROM jobs WHERE seq = ?", [(job.seq,) for job in jobs])

    def _transaction(self):
        return _Transaction(self._db)

    def close(self) -> None:
        self._db.close()


#: The columns of the jobs table: a :class:`WaitingJob`'s fields (``seq`` first: the order jobs arrived in).
JOB_FIELDS = tuple(f.name for f in fields(WaitingJob))
JOB_COLUMNS = ("seq INTEGER PRIMARY KEY AUTOINCREMENT", *JOB_FIELDS[1:])


def _pack(frames: list) -> bytes:
    """Frames as one blob: each after its length."""
    parts = [struct.pack("!I", len(frames))]
    for frame in frames:
        view = memoryview(frame if isinstance(frame, (bytes, bytearray, memoryview)) else frame.buffer).cast("B")
        parts += [struct.pack("!Q", view.nbytes), view.tobytes()]
    return b"".join(parts)


def _unpack(blob: bytes) -> list[bytes]:
    (count,), at, frames = struct.unpack_from("!I", blob), 4, []
    for _ in range(count):
        (size,) = struct.unpack_from("!Q", blob, at)
        frames.append(blob[at + 8:at + 8 + size])
        at += 8 + size
    return frames


class _Transaction:
    """BEGIN ... COMMIT, or ROLLBACK when the body raised (sqlite3's own context manager does not BEGIN in
    autocommit mode)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, exc, tb):
        self.db.execute("ROLLBACK" if kind else "COMMIT")
        return False
