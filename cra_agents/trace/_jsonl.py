"""Durable trace stores: JSONL files and SQLite."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from cra_agents._exceptions import TraceError
from cra_agents.protocol import TraceEvent
from cra_agents.trace._store import MemoryStore, TraceStore

__all__ = ["JsonlStore", "SqliteStore", "open_store", "repair_torn_tail"]

_SUFFIX = ".trace.jsonl"
_MAX_OPEN = 64


def _line(event: TraceEvent) -> bytes:
    # The instance dict holds exactly the fields in the spec's order (the order the Rust core
    # writes them); compact, UTF-8, LF.
    try:
        return orjson.dumps(event.__dict__) + b"\n"
    except TypeError as exc:  # pragma: no cover - payloads are canonicalised before this
        raise TraceError(f"event {event.event_id} cannot be written: {exc}") from exc


def _parse(line: bytes | str) -> TraceEvent:
    return TraceEvent.model_validate_json(line)


class JsonlStore:
    """One ``<session_id>.trace.jsonl`` file per session under ``directory`` (spec §6.2).

    Appends take an exclusive ``flock`` on the file, so several processes may write the same
    directory without interleaving lines. ``sync`` fsyncs every file written since the last
    sync (``durable=False`` leaves syncing to the operating system). At most 64 files stay
    open; older handles are closed (after a flush and sync) and reopened on demand.
    """

    def __init__(self, directory: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.durable = durable
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._files: OrderedDict[str, IO[bytes]] = OrderedDict()
        self._unsynced: set[str] = set()
        self._closed = False

    def path(self, session_id: str) -> Path:
        """The file of ``session_id``."""
        if "/" in session_id or session_id.startswith("."):
            raise ValueError(f"not a session id: {session_id!r}")
        return self.directory / f"{session_id}{_SUFFIX}"

    def _handle(self, session_id: str) -> IO[bytes]:
        handle = self._files.get(session_id)
        if handle is not None:
            self._files.move_to_end(session_id)
            return handle
        handle = self.path(session_id).open("ab")
        self._files[session_id] = handle
        while len(self._files) > _MAX_OPEN:
            old_id, old = self._files.popitem(last=False)
            old.flush()
            if old_id in self._unsynced and self.durable:
                os.fdatasync(old.fileno())
                self._unsynced.discard(old_id)
            old.close()
        return handle

    def append(self, events: Sequence[TraceEvent]) -> None:
        """Append ``events`` (one session's) as lines."""
        if not events:
            return
        data = b"".join(_line(e) for e in events)
        session_id = events[0].session_id
        with self._lock:
            if self._closed:
                raise ValueError("store is closed")
            handle = self._handle(session_id)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                handle.write(data)
                handle.flush()
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            self._unsynced.add(session_id)

    def sync(self) -> None:
        """Fdatasync every file written since the last sync (nothing if not ``durable``)."""
        with self._lock:
            if self.durable:
                for session_id in self._unsynced:
                    handle = self._files.get(session_id)
                    if handle is not None:
                        os.fdatasync(handle.fileno())
            self._unsynced.clear()

    def read(
        self,
        session_id: str,
        *,
        event_type: str | None = None,
        since_sequence: int | None = None,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        """Events of a session in file order, optionally filtered.

        Raises:
            ValueError: a line is not a valid event (use ``verify_chain(path)`` to diagnose).
        """
        path = self.path(session_id)
        with self._lock:
            handle = self._files.get(session_id)
            if handle is not None:
                handle.flush()
        if not path.exists():
            return []
        out: list[TraceEvent] = []
        with path.open("rb") as reader:
            for raw in reader:
                if not raw.endswith(b"\n"):
                    break  # a torn tail is not an event; verify_chain reports it
                event = _parse(raw)
                if since_sequence is not None and event.sequence <= since_sequence:
                    continue
                if event_type is not None and event.event_type != event_type:
                    continue
                out.append(event)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def last_sequence(self, session_id: str) -> int:
        """The sequence of the session's last complete line (-1: none), read from the end."""
        path = self.path(session_id)
        with self._lock:
            handle = self._files.get(session_id)
            if handle is not None:
                handle.flush()
        if not path.exists():
            return -1
        with path.open("rb") as reader:
            size = reader.seek(0, os.SEEK_END)
            block = b""
            position = size
            while position > 0:
                step = min(65536, position)
                position -= step
                reader.seek(position)
                block = reader.read(step) + block
                lines = block.split(b"\n")
                # The last piece is torn or empty; the first may be cut by the block edge.
                whole = lines[1:-1] if position > 0 else lines[:-1]
                complete = [line for line in whole if line.strip()]
                if complete:
                    return _parse(complete[-1]).sequence
        return -1

    def sessions(self) -> list[str]:
        """Session ids with a file, oldest file first."""
        files = sorted(self.directory.glob(f"*{_SUFFIX}"), key=lambda p: p.stat().st_mtime_ns)
        return [p.name[: -len(_SUFFIX)] for p in files]

    def close(self) -> None:
        """Sync and close every file."""
        self.sync()
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files.clear()
            self._closed = True


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
                _line(e)[:-1].decode("utf-8"),
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
        return [_parse(row[0]) for row in rows]

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


def open_store(
    store: TraceStore | str | os.PathLike[str] | None, *, durable: bool = True
) -> TraceStore:
    """A store object from a store or a URL.

    ``memory://``; ``jsonl:///absolute/dir`` or ``jsonl://relative/dir``;
    ``sqlite:///absolute/file.db`` or ``sqlite://relative/file.db``. ``None`` means the
    embedded default, SQLite at ``./.cra/traces.db``, unless ``CRA_AGENTS_STORE`` names
    another URL.

    Raises:
        ValueError: an unknown scheme or a URL without a path.
    """
    if store is None:
        store = os.environ.get("CRA_AGENTS_STORE") or "sqlite://.cra/traces.db"
    if not isinstance(store, str | os.PathLike):
        return store
    url = os.fspath(store)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"store {url!r} is not a URL; use memory://, jsonl://DIR or sqlite://FILE")
    if scheme == "memory":
        return MemoryStore()
    if not rest:
        raise ValueError(f"store URL {url!r} names no path")
    if scheme == "jsonl":
        return JsonlStore(rest, durable=durable)
    if scheme == "sqlite":
        return SqliteStore(rest, durable=durable)
    if scheme in ("postgresql", "postgres"):
        raise ValueError("the PostgreSQL store is not available yet; use sqlite:// or jsonl://")
    raise ValueError(f"unknown store scheme {scheme!r}; use memory://, jsonl:// or sqlite://")


def repair_torn_tail(path: str | os.PathLike[str]) -> int:
    """Cut a torn last line (a crash mid-write) off a ``.trace.jsonl`` file.

    Only a final line without its newline that is not a complete event is removed; a
    complete event missing only its newline gets the newline. Everything else is left alone:
    this never hides tampering, which ``verify_chain`` reports as such.

    Returns:
        The number of bytes removed (0 when there was nothing to repair).
    """
    target = Path(path)
    with target.open("r+b") as handle:
        data = handle.read()
        if not data or data.endswith(b"\n"):
            return 0
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        try:
            _parse(tail)
        except ValueError:
            handle.truncate(cut)
            handle.flush()
            os.fsync(handle.fileno())
            return len(tail)
        handle.write(b"\n")
        handle.flush()
        os.fsync(handle.fileno())
        return 0
