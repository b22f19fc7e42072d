"""The SQLite trace store: every session in one WAL database."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cra_agents.protocol import TraceEvent
from cra_agents.trace._jsonl import event_line, parse_line

__all__ = ["SqliteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    trace_id TEXT NOT NULL,
    first_timestamp TEXT NOT NULL,
    event_count INTEGER NOT NULL,
    head_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    event_hash TEXT NOT NULL,
    previous_event_hash TEXT NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (session_id, sequence)
) WITHOUT ROWID;
"""


class SqliteStore:
    """Events in one SQLite database (WAL).

    One table of events keyed by (session, sequence), one of sessions with size and head hash.
    No secondary index: reading one type of event scans the session's rows, which is cheaper
    than maintaining an index on every append.

    Args:
        path: The database file (created with its directory).
        durable: ``synchronous=FULL`` (every commit survives power loss) instead of
            ``NORMAL`` (survives a process crash). The runtime asks for it in ``group`` and
            ``sync`` modes.
    """

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        self._closed = False

    def append(self, events: Sequence[TraceEvent]) -> None:
        """Insert ``events`` (one session's) in one transaction."""
        if not events:
            return
        rows = [
            (
                e.session_id,
                e.sequence,
                e.event_id,
                e.event_type,
                e.timestamp,
                e.event_hash,
                e.previous_event_hash,
                event_line(e)[:-1].decode("utf-8"),
            )
            for e in events
        ]
        last = events[-1]
        with self._lock:
            if self._closed:
                raise ValueError("store is closed")
            if not self._db.in_transaction:
                self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self._db.execute(
                    "INSERT INTO sessions VALUES (?, ?, ?, ?, ?) ON CONFLICT(session_id) DO "
                    "UPDATE SET event_count = event_count + excluded.event_count, "
                    "head_hash = excluded.head_hash",
                    (
                        last.session_id,
                        last.trace_id,
                        events[0].timestamp,
                        len(events),
                        last.event_hash,
                    ),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def sync(self) -> None:
        """Commit everything appended since the last sync.

        One transaction (and, when ``durable``, one WAL fsync) covers a whole batch of
        sessions: the group commit of the ``group`` durability mode.
        """
        with self._lock:
            if self._db.in_transaction:
                self._db.execute("COMMIT")

    def read(
        self,
        session_id: str,
        *,
        event_type: str | None = None,
        since_sequence: int | None = None,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        """Events of a session in sequence order, optionally filtered."""
        query = "SELECT event FROM events WHERE session_id = ?"
        args: list[Any] = [session_id]
        if event_type is not None:
            query += " AND event_type = ?"
            args.append(event_type)
        if since_sequence is not None:
            query += " AND sequence > ?"
            args.append(since_sequence)
        query += " ORDER BY sequence"
        if limit is not None:
            query += " LIMIT ?"
            args.append(limit)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [parse_line(row[0]) for row in rows]

    def last_sequence(self, session_id: str) -> int:
        """The sequence of the session's last stored event (-1: none), from the index."""
        with self._lock:
            row = self._db.execute(
                "SELECT MAX(sequence) FROM events WHERE session_id = ?", (session_id,)
            ).fetchone()
        return -1 if row is None or row[0] is None else int(row[0])

    def sessions(self) -> list[str]:
        """Session ids, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT session_id FROM sessions ORDER BY first_timestamp, rowid"
            ).fetchall()
        return [row[0] for row in rows]

    def close(self) -> None:
        """Commit and close the database."""
        if not self._closed:
            self.sync()
        with self._lock:
            if not self._closed:
                self._db.close()
                self._closed = True
