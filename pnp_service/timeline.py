"""A device's timeline: what happened to it, in order, for ``pnp-service status SERIAL``.

Owns the timeline database (SQLite, one file beside the state: ``DATASTORE.timeline.db`` without a controller,
``timeline.db`` in ``--state-dir`` with one) and the writer that fills it behind the answers.  An entry is what the
listener logged about a declared device: each request sent and its answer, retries and faults with their reason,
reloads, SUDI proofs and refusals, downloads with their size and duration, the hand-off, resets.  Polls that change
nothing are not entries, and strangers have none (their sightings are in ``/pnp/unclaimed``): nobody outside can grow
the file.  Bounded: the newest :data:`PER_DEVICE` entries of a device, none older than :data:`KEEP_DAYS` days.

The timeline is an account, not the state: the writer drops entries when :data:`QUEUE_CAPACITY` wait (counted), and
a crash loses the last moment's entries; what a device's state is comes from the store alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import sqlite3
import threading
import time
from typing import Callable, Iterable

from . import model
from .behind import WriteBehind

log = logging.getLogger(__name__)

PER_DEVICE = 200
KEEP_DAYS = 30
QUEUE_CAPACITY = 10_000
#: Entries are written this long after the first of a batch waits (one transaction for a busy moment's entries).
LINGER_SECONDS = 0.25
#: How often a writer forgets entries older than KEEP_DAYS (seconds).
EXPIRY_EVERY = 3600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS timeline (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    serial TEXT NOT NULL,
    at TEXT NOT NULL,
    event TEXT NOT NULL,
    address TEXT NOT NULL DEFAULT '',
    step TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    repeats INTEGER NOT NULL DEFAULT 1,
    last_at TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS timeline_serial ON timeline (serial, seq);
CREATE INDEX IF NOT EXISTS timeline_at ON timeline (at);
"""


@dataclasses.dataclass(frozen=True)
class Entry:
    at: dt.datetime
    event: str
    address: str = ""
    step: str = ""
    state: str = ""
    detail: str = ""
    #: How many times in a row it happened, and when last (None: once).
    repeats: int = 1
    last_at: dt.datetime | None = None

    def same_as(self, other: "Entry") -> bool:
        return (self.event, self.address, self.step, self.state, self.detail) == \
            (other.event, other.address, other.step, other.state, other.detail)

    def as_dict(self) -> dict[str, str | int]:
        return {"at": model.format_time(self.at), "event": self.event, "address": self.address, "step": self.step,
                "state": self.state, "detail": self.detail, "repeats": self.repeats,
                "last-at": model.format_time(self.last_at)}


def default_path(state_path: str) -> str:
    """``pnp-datastore.state.db`` -> ``pnp-datastore.timeline.db``; ``journal`` in a folder -> ``timeline.db``."""
    folder, name = os.path.split(os.path.abspath(state_path))
    stem = name[: -len(".state.db")] if name.endswith(".state.db") else ""
    return os.path.join(folder, f"{stem}.timeline.db" if stem else "timeline.db")


class TimelineDb:
    """The timeline file.  Safe for several processes (WAL, a busy timeout); one connection per thread."""

    def __init__(self, path: str, read_only: bool = False, clock: Callable[[], float] = time.time):
        self.path = path
        self.read_only = read_only
        self.clock = clock
        self._local = threading.local()
        self._expired_at = float("-inf")
        if not read_only:
            old = os.umask(0o077)  # details may name addresses and hostnames: the operator's eyes only
            try:
                with self._connection() as connection:
                    connection.executescript(SCHEMA)
            finally:
                os.umask(old)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self.read_only:
                connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)
            else:
                connection = sqlite3.connect(self.path, timeout=5.0)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")  # an account: a power cut may cost its last lines
                connection.execute("PRAGMA cache_size=-256")  # appends and one device's reads: 256 KiB is plenty
            self._local.connection = connection
        return connection

    def add(self, entries: dict[str, list[Entry]]) -> None:
        """Append each serial's entries in order, keep its newest PER_DEVICE, and now and then forget old ones."""
        connection = self._connection()
        with connection:
            for serial, listed in entries.items():
                row = connection.execute("SELECT seq, event, address, step, state, detail FROM timeline WHERE serial = ? "
                                         "ORDER BY seq DESC LIMIT 1", (serial,)).fetchone()
                last = (row[0], Entry(dt.datetime.min, *row[1:])) if row else None
                for entry in listed:
                    if last is not None and entry.same_as(last[1]):
                        connection.execute("UPDATE timeline SET repeats = repeats + 1, last_at = ? WHERE seq = ?",
                                           (model.format_time(entry.at), last[0]))
                        continue
                    cursor = connection.execute(
                        "INSERT INTO timeline (serial, at, event, address, step, state, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (serial, model.format_time(entry.at), entry.event, entry.address, entry.step, entry.state,
                         entry.detail))
                    last = (cursor.lastrowid or 0, entry)
                connection.execute(
                    "DELETE FROM timeline WHERE serial = ? AND seq <= (SELECT seq FROM timeline WHERE serial = ? "
                    "ORDER BY seq DESC LIMIT 1 OFFSET ?)", (serial, serial, PER_DEVICE))
            now = self.clock()
            if now - self._expired_at >= EXPIRY_EVERY:
                self._expired_at = now
                cutoff = dt.datetime.fromtimestamp(now, dt.timezone.utc) - dt.timedelta(days=KEEP_DAYS)
                connection.execute("DELETE FROM timeline WHERE at < ?", (model.format_time(cutoff),))

    def of(self, serial: str) -> list[Entry]:
        """``serial``'s entries, oldest first (none when the file does not exist yet)."""
        if self.read_only and not os.path.exists(self.path):
            return []
        rows = self._connection().execute(
            "SELECT at, event, address, step, state, detail, repeats, last_at FROM timeline WHERE serial = ? ORDER BY seq",
            (serial,))
        return [Entry(model.parse_time(at) or dt.datetime.min, event, address, step, state, detail, repeats,
                      model.parse_time(last_at))
                for at, event, address, step, state, detail, repeats, last_at in rows]

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


class TimelineWriter:
    """Entries queued by the listener and written behind its answers, in batches (behind.py)."""

    def __init__(self, db: TimelineDb, capacity: int = QUEUE_CAPACITY, on_dropped: Callable[[], None] = lambda: None):
        self.db = db
        self._queue: WriteBehind[str, Entry] = WriteBehind(self._write, capacity=capacity, on_dropped=on_dropped,
                                                           name="pnp-timeline", linger=LINGER_SECONDS)

    def record(self, serial: str, entry: Entry) -> bool:
        return self._queue.put(serial, entry)

    def note(self, serial: str, what: str, detail: str = "") -> bool:
        """An entry at the time it happens, for writers that are not the listener (the hand-off)."""
        return self.record(serial, Entry(dt.datetime.fromtimestamp(int(time.time()), dt.timezone.utc), what,
                                         detail=detail))

    def flush(self, timeout: float = 10.0) -> bool:
        return self._queue.flush(timeout)

    def waiting(self) -> int:
        return self._queue.waiting()

    def _write(self, batch: dict[str, list[Entry]]) -> None:
        try:
            self.db.add(batch)
        except sqlite3.Error as exc:  # an account: the listener goes on without it
            log.warning("timeline: %d entries not written: %s", sum(len(v) for v in batch.values()), exc)


def text(serial: str, entries: Iterable[Entry]) -> str:
    """The timeline as ``status SERIAL`` prints it: a line per entry."""
    lines = []
    for entry in entries:
        fields = [model.format_time(entry.at), f"{entry.event:<20}"]
        fields += [f"{name}={value}" for name, value in (("step", entry.step), ("state", entry.state),
                                                          ("address", entry.address)) if value]
        line = "  ".join(fields)
        again = f" ({entry.repeats} times, last at {model.format_time(entry.last_at)})" if entry.repeats > 1 else ""
        lines.append(f"{line}  {entry.detail}{again}".rstrip())
    return "\n".join(lines) if lines else f"(no timeline entries for {serial})"
