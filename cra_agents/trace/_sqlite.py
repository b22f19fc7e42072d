"""The SQLite trace store: every session in one WAL database.

Layout (``PRAGMA user_version = 1``)::

    sessions(session_key INTEGER PRIMARY KEY, session_id TEXT UNIQUE, trace_id,
             first_timestamp, event_count, head_hash)
    events(id INTEGER PRIMARY KEY, event_type TEXT, event BLOB)

A session gets a small integer key when its first event is stored. An event's ``id`` is
``session_key << 32 | sequence``, so the rowid itself orders a session's events and a session
is one contiguous range of the table's B-tree: no second index, no session id repeated in
every row. ``event`` holds the event's stored line (:func:`event_line` without the LF, the
bytes a JSONL store writes), which reads hand to :func:`parse_line` as they are; the hash
chain is checked over exactly those bytes. ``event_type`` is a copy for SQL outside the
library: reads filter on the hashed event, and refuse a row whose id or type column disagrees
with it (``TRACE_INDEX_MISMATCH``), as the verifier reports it. A session holds at most 2**32
events, and a database 2**31 sessions.

Versions: a new database gets the layout above at :data:`SCHEMA_VERSION`. A database of the
first layout (``user_version`` 0: ``events`` keyed by the session id text, the event as TEXT
beside copies of its id, timestamp and hashes) is migrated in place when it is opened: one
``BEGIN IMMEDIATE`` transaction, so a crash leaves the old layout whole and a second process
opening it at the same time waits and then finds it done. Every event keeps its bytes; the
pages of the old tables stay in the file as free pages that later appends reuse (``VACUUM``
returns them to the file system). A database of a newer version is refused.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from cra_agents._exceptions import ConfigurationError
from cra_agents.protocol import TraceEvent
from cra_agents.trace._ingest import (
    EMPTY_HEAD,
    IngestResult,
    StoredEvent,
    StoredHead,
    head_of,
    ingest_mapping,
    split_batch,
    stored_events_of,
)
from cra_agents.trace._jsonl import check_unreplaced, event_line, file_identity, parse_line
from cra_agents.trace._read import check_indexed

__all__ = ["SCHEMA_VERSION", "V0_LAYOUT", "SqliteStore"]

#: ``PRAGMA user_version`` of the layout this module writes (0 is the first layout).
SCHEMA_VERSION: Final = 1

_SPAN: Final = 1 << 32  # ids per session: event id = session_key * _SPAN + sequence
_MAX_SESSION_KEY: Final = (1 << 31) - 1  # the largest id still fits a signed 64-bit rowid

_TABLES: Final = (
    """CREATE TABLE sessions (
    session_key INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL UNIQUE,
    trace_id TEXT NOT NULL,
    first_timestamp TEXT NOT NULL,
    event_count INTEGER NOT NULL,
    head_hash TEXT NOT NULL
)""",
    """CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    event_type TEXT NOT NULL,
    event BLOB NOT NULL
)""",
)

#: The first layout (user_version 0), which the store migrates from: the session id text in
#: every row's key, the event as TEXT beside copies of its id, timestamp and hashes. Kept as
#: the one record of it (the migration tests and the layout benchmark create it from here).
V0_LAYOUT: Final = """
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
# The columns of the first layout's tables, in order: what a user_version 0 database must
# have to be migrated.
_V0_SESSIONS: Final = ("session_id", "trace_id", "first_timestamp", "event_count", "head_hash")
_V0_EVENTS: Final = (
    "session_id",
    "sequence",
    "event_id",
    "event_type",
    "timestamp",
    "event_hash",
    "previous_event_hash",
    "event",
)

# Pages in the WAL before a commit checkpoints it: SQLite's default, set explicitly. Measured
# with 8 sessions appending 20 events each per commit, 2,000-8,000 pages wrote 1-2 % fewer
# bytes for the same CPU and time, and a longer WAL slows readers and crash recovery. The WAL
# file is cut back to the size limit after a checkpoint, so one huge transaction (a migration)
# does not leave a huge file behind; the limit is above the steady-state WAL (about 4 MiB),
# which is then reused in place rather than regrown.
_WAL_AUTOCHECKPOINT: Final = 1000
_JOURNAL_SIZE_LIMIT: Final = 16 * 2**20

_INSERT_SESSION: Final = (
    "INSERT INTO sessions (session_id, trace_id, first_timestamp, event_count, head_hash) "
    "VALUES (?, ?, ?, ?, ?)"
)
_UPDATE_SESSION: Final = (
    "UPDATE sessions SET event_count = event_count + ?, head_hash = ? WHERE session_key = ?"
)
_SESSION_KEY: Final = "SELECT session_key FROM sessions WHERE session_id = ?"
_LAST_EVENT: Final = (
    "SELECT id, event_type, event FROM events WHERE id BETWEEN ? AND ? ORDER BY id DESC LIMIT 1"
)
_RANGE: Final = "SELECT id, event_type, event FROM events WHERE id BETWEEN ? AND ? ORDER BY id"
_KEYS_CACHED: Final = 4096  # committed session keys kept; more and the cache starts over


_OPEN_TIMEOUT: Final = 30.0  # seconds a store waits for other processes' locks


def _enable_wal(db: sqlite3.Connection, deadline: float) -> None:
    """Switch to WAL, retrying while another process holds the database.

    SQLite answers a journal-mode change with "database is locked" at once, without waiting
    for the busy timeout, when another connection is setting up the same new file; several
    agent processes opening one store together hit it (measured: 8 to 22 of 90 opens).
    """
    pause = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.2)


class SqliteStore:
    """Events in one SQLite database (WAL); see the module docstring for the layout.

    Several processes may share the file: appends take the write lock with
    ``BEGIN IMMEDIATE`` and wait up to 30 s for it. One process appends a given session.

    Args:
        path: The database file (created with its directory).
        durable: ``synchronous=FULL`` (every commit survives power loss) instead of
            ``NORMAL`` (survives a process crash). The runtime asks for it in ``group`` and
            ``sync`` modes.

    Raises:
        ConfigurationError: the file is not a SQLite database (reason ``store_not_sqlite``),
            was written by a newer version of cra-agents (``store_version_unsupported``),
            holds other tables named ``events`` or ``sessions`` (``store_layout_unknown``), or
            is of the first layout with events that have no session row or a sequence beyond
            2**32 - 1 (``store_migration_failed``; the file is left as it was).
    """

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._durable = durable
        self._ingest_lock = threading.Lock()
        self._ingest_db: sqlite3.Connection | None = None
        # Session keys by session id: committed ones, and those first used in the open
        # transaction (forgotten if it rolls back, since the key may then go to another).
        self._keys: dict[str, int] = {}
        self._new_keys: dict[str, int] = {}
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=_OPEN_TIMEOUT
        )
        try:
            # Read first: a file that is not a database, or a newer one, is left as it is.
            version = self._user_version()
            self._check_version(version)
            _enable_wal(self._db, time.monotonic() + _OPEN_TIMEOUT)
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT}")
            self._db.execute(f"PRAGMA journal_size_limit={_JOURNAL_SIZE_LIMIT}")
            if version != SCHEMA_VERSION:
                self._prepare()
        except BaseException as exc:
            self._db.close()
            if (
                isinstance(exc, sqlite3.DatabaseError)
                and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB
            ):
                raise ConfigurationError(
                    f"{self.path} is not a SQLite database; point the store at a new file or "
                    "at a cra-agents trace database",
                    details={"reason": "store_not_sqlite"},
                ) from exc
            raise
        self._identity = file_identity(self.path)
        self._closed = False

    def check_writable(self) -> None:
        """Take the write lock and write the header in a transaction that is rolled back.

        Raises:
            sqlite3.Error: the database cannot be written (a read-only file, say).
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            finally:
                self._db.rollback()  # a no-op when SQLite already ended the transaction

    def _user_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _prepare(self) -> None:
        """Create the layout, or migrate the first one, unless the database is current."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have created or migrated it while this one waited.
            if not self._check_version(self._user_version()):
                tables = {
                    row[0]
                    for row in self._db.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table' "
                        "AND name IN ('events', 'sessions')"
                    )
                }
                if tables and not self._is_v0():
                    raise ConfigurationError(
                        f"{self.path} has tables named events or sessions that are not a "
                        "cra-agents trace store",
                        details={"reason": "store_layout_unknown"},
                    )
                if tables:
                    self._migrate_v0()
                else:
                    for statement in _TABLES:
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite ends it itself after some errors
                self._db.execute("ROLLBACK")
            raise

    def _check_version(self, version: int) -> bool:
        """Whether ``version`` is the current layout; refuse a newer one."""
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"{self.path} is a version {version} trace store; this cra-agents reads "
                f"version {SCHEMA_VERSION} and older: upgrade cra-agents to open it",
                details={"reason": "store_version_unsupported"},
            )
        return version == SCHEMA_VERSION

    def _columns(self, table: str) -> tuple[str, ...]:
        return tuple(row[1] for row in self._db.execute(f"PRAGMA table_info({table})"))

    def _is_v0(self) -> bool:
        return self._columns("sessions") == _V0_SESSIONS and self._columns("events") == _V0_EVENTS

    def _migrate_v0(self) -> None:
        """Rewrite a first-layout database into the current one (in the caller's transaction).

        Sessions get their keys in the old listing order, so ``sessions()`` keeps its order;
        events are copied in id order, so their pages are written full.
        """
        db = self._db
        event = "CAST(e.event AS BLOB)"  # the TEXT's stored UTF-8 bytes, unchanged
        if db.execute("PRAGMA encoding").fetchone()[0] != "UTF-8":
            db.create_function("cra_utf8", 1, _utf8, deterministic=True)
            event = "cra_utf8(e.event)"
        db.execute("ALTER TABLE sessions RENAME TO sessions_v0")
        db.execute("ALTER TABLE events RENAME TO events_v0")
        for statement in _TABLES:
            db.execute(statement)
        db.execute(
            "INSERT INTO sessions (session_id, trace_id, first_timestamp, event_count, head_hash) "
            "SELECT session_id, trace_id, first_timestamp, event_count, head_hash "
            "FROM sessions_v0 ORDER BY first_timestamp, rowid"
        )
        copied = db.execute(
            f"INSERT INTO events (id, event_type, event) "  # noqa: S608 - constants only
            f"SELECT s.session_key * {_SPAN} + e.sequence, e.event_type, {event} "
            "FROM events_v0 AS e JOIN sessions AS s USING (session_id) "
            f"WHERE e.sequence BETWEEN 0 AND {_SPAN - 1} ORDER BY 1"
        ).rowcount
        (total,) = db.execute("SELECT count(*) FROM events_v0").fetchone()
        if copied != total:
            raise ConfigurationError(
                f"{self.path}: {total - copied} of {total} events cannot be migrated to the "
                f"version {SCHEMA_VERSION} layout (no session row, or a sequence beyond "
                f"{_SPAN - 1}); the file is left unchanged",
                details={"reason": "store_migration_failed"},
            )
        db.execute("DROP TABLE events_v0")
        db.execute("DROP TABLE sessions_v0")

    def _key(self, session_id: str) -> int | None:
        """The session's key, None if it has no events (call under the lock)."""
        key = self._keys.get(session_id)
        if key is None:
            key = self._new_keys.get(session_id)
        if key is None:
            row = self._db.execute(_SESSION_KEY, (session_id,)).fetchone()
            if row is None:
                return None
            key = int(row[0])
            if self._db.in_transaction:  # perhaps this transaction's own, not committed yet
                self._new_keys[session_id] = key
            else:
                self._remember(session_id, key)
        return key

    def _remember(self, session_id: str, key: int) -> None:
        """Cache a committed session key (a key, once committed, never changes)."""
        if len(self._keys) >= _KEYS_CACHED:
            self._keys.clear()
        self._keys[session_id] = key

    def append(self, events: Sequence[TraceEvent]) -> None:
        """Insert ``events`` (one session's) in the open transaction, which it starts.

        Raises:
            ValueError: the store is closed, or a sequence is beyond 2**32 - 1.
            sqlite3.Error: the insert failed (a sequence already stored, a full disk...);
                the whole open transaction is rolled back.
        """
        if not events:
            return
        last = events[-1]
        _check_span(last)
        with self._lock:
            if self._closed:
                raise ValueError("store is closed")
            db = self._db
            if not db.in_transaction:
                db.execute("BEGIN IMMEDIATE")
            try:
                key = self._key(last.session_id)
                inserted = _insert_run(db, key, events)
                if key is None:
                    self._new_keys[last.session_id] = inserted
            except BaseException:
                # SQLite ends the transaction itself after some errors (a full disk): the
                # original error is what the caller must see, not a failed ROLLBACK, and
                # rollback() does nothing when no transaction is open.
                db.rollback()
                self._new_keys.clear()
                raise

    def sync(self) -> None:
        """Commit everything appended since the last sync.

        One transaction (and, when ``durable``, one WAL fsync) covers a whole batch of
        sessions: the group commit of the ``group`` durability mode.
        """
        with self._lock:
            if not self._db.in_transaction:
                return
            try:
                self._db.execute("COMMIT")
            finally:
                # Committed: the keys are settled. Failed: SQLite may have rolled back, and a
                # key still valid is found again by _key.
                new_keys, self._new_keys = self._new_keys, {}
            for session_id, key in new_keys.items():
                self._remember(session_id, key)
            check_unreplaced(self.path, self._identity, "the trace database")

    def ingest(self, events: Sequence[TraceEvent]) -> IngestResult:
        """Add a checked batch's events that continue the stored chains, all or none.

        One ``BEGIN IMMEDIATE`` transaction on a connection of its own (the writer's open
        transaction is never mixed in), so the rule of :mod:`cra_agents.trace._ingest` sees
        what is stored while no other connection or process can append.

        Raises:
            ChainConflictError: a session's part does not continue its stored chain.
            TraceError: a stored row's index disagrees with its event (``TRACE_INDEX_MISMATCH``).
            ValueError: the store is closed, or a sequence is beyond 2**32 - 1.
            sqlite3.Error: the database failed; nothing of the batch is stored.
        """
        runs = split_batch(events)
        for run in runs.values():
            _check_span(run[-1])
        with self._ingest_lock:
            if self._closed:
                raise ValueError("store is closed")
            db = self._ingest_db
            if db is None:
                db = self._ingest_db = sqlite3.connect(
                    self.path, check_same_thread=False, isolation_level=None, timeout=_OPEN_TIMEOUT
                )
                db.execute(f"PRAGMA synchronous={'FULL' if self._durable else 'NORMAL'}")
            keys: dict[str, int] = {}

            def rows(session_id: str, key: int, query: str, lo: int, hi: int) -> list[TraceEvent]:
                base = key * _SPAN
                return [
                    check_indexed(
                        parse_line(line), session_id, sequence=row_id - base, event_type=column
                    )
                    for row_id, column, line in db.execute(query, (base + lo, base + hi))
                ]

            def head(session_id: str) -> StoredHead:
                row = db.execute(_SESSION_KEY, (session_id,)).fetchone()
                if row is None:
                    return EMPTY_HEAD
                key = keys[session_id] = int(row[0])
                return head_of(rows(session_id, key, _LAST_EVENT, 0, _SPAN - 1))

            def stored(session_id: str, lo: int, hi: int) -> list[StoredEvent]:
                return stored_events_of(rows(session_id, keys[session_id], _RANGE, lo, hi))

            db.execute("BEGIN IMMEDIATE")
            try:
                new, result = ingest_mapping(runs, head, stored)
                for session_id, run in new.items():
                    _insert_run(db, keys.get(session_id), run)
                db.execute("COMMIT")
            except BaseException:
                db.rollback()
                raise
        return result

    def read(
        self,
        session_id: str,
        *,
        event_type: str | None = None,
        since_sequence: int | None = None,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        """Events of a session in sequence order, optionally filtered.

        Filters are answered from the hashed events: the ``event_type`` column and the rowid
        only locate rows, and a row they misdescribe is refused.

        Raises:
            TraceError: a row's id or type column disagrees with its event (code
                ``TRACE_INDEX_MISMATCH``): the database was changed behind the store.
        """
        with self._lock:
            key = self._key(session_id)
            if key is None:
                return []
            base = key * _SPAN
            start = 0 if since_sequence is None else min(max(since_sequence + 1, 0), _SPAN)
            # Every row of the range is read when filtering by type: the column is not trusted
            # to say which rows to skip.
            query = "SELECT id, event_type, event FROM events WHERE id BETWEEN ? AND ? ORDER BY id"
            args: list[Any] = [base + start, base + _SPAN - 1]
            if limit is not None and event_type is None:
                query += " LIMIT ?"
                args.append(limit)
            rows = self._db.execute(query, args).fetchall()
        out: list[TraceEvent] = []
        for row_id, column, line in rows:
            event = check_indexed(
                parse_line(line), session_id, sequence=row_id - base, event_type=column
            )
            if event_type is None or event.event_type == event_type:
                out.append(event)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def last_sequence(self, session_id: str) -> int:
        """The sequence of the session's last stored event (-1: none), checked against it.

        Raises:
            TraceError: the row's id or type disagrees with its event (``TRACE_INDEX_MISMATCH``).
        """
        with self._lock:
            key = self._key(session_id)
            if key is None:
                return -1
            row = self._db.execute(
                "SELECT id, event_type, event FROM events WHERE id BETWEEN ? AND ? "
                "ORDER BY id DESC LIMIT 1",
                (key * _SPAN, key * _SPAN + _SPAN - 1),
            ).fetchone()
        if row is None:
            return -1
        sequence = int(row[0]) - key * _SPAN
        check_indexed(parse_line(row[2]), session_id, sequence=sequence, event_type=row[1])
        return sequence

    def sessions(self) -> list[str]:
        """Session ids, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT session_id FROM sessions ORDER BY first_timestamp, session_key"
            ).fetchall()
        return [row[0] for row in rows]

    def close(self) -> None:
        """Commit and close the database (closed even when the last commit fails)."""
        try:
            if not self._closed:
                self.sync()
        finally:
            with self._ingest_lock, self._lock:
                if not self._closed:
                    self._db.close()
                    if self._ingest_db is not None:
                        self._ingest_db.close()
                    self._closed = True


def _check_span(last: TraceEvent) -> None:
    if last.sequence >= _SPAN:
        raise ValueError(f"sequence {last.sequence} is beyond the SQLite store's {_SPAN - 1}")


def _insert_run(db: sqlite3.Connection, key: int | None, events: Sequence[TraceEvent]) -> int:
    """Insert one session's run in ``db``'s open transaction; the session key (new if None)."""
    first, last = events[0], events[-1]
    if key is None:
        key = db.execute(
            _INSERT_SESSION,
            (last.session_id, last.trace_id, first.timestamp, len(events), last.event_hash),
        ).lastrowid
        if key is None or key > _MAX_SESSION_KEY:
            raise ValueError("the SQLite store holds 2**31 sessions already")
    else:
        db.execute(_UPDATE_SESSION, (len(events), last.event_hash, key))
    base = key * _SPAN
    db.executemany(
        "INSERT INTO events VALUES (?, ?, ?)",
        [(base + e.sequence, e.event_type, event_line(e)[:-1]) for e in events],
    )
    return key


def _utf8(text: str) -> bytes:
    """A first-layout event's text as the UTF-8 bytes it was written from."""
    return text.encode("utf-8")
