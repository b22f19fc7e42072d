"""The PostgreSQL trace store (the ``postgres`` extra: psycopg 3).

Layout (schema version 1, recorded in ``cra_schema_migrations``)::

    cra_schema_migrations(version integer PRIMARY KEY, applied_at timestamptz)
    cra_sessions(session_key bigint IDENTITY PRIMARY KEY, session_id text UNIQUE, trace_id text,
                 first_timestamp text, event_count bigint, head_sequence bigint, head_hash text)
    cra_events(session_key bigint, sequence bigint, event_id text UNIQUE, event_type text,
               event bytea, PRIMARY KEY (session_key, sequence))

A session gets a small integer key when its first event is stored, so the session id is not
repeated in every row; ``(session_key, sequence)`` is the primary key, which orders a session's
events and answers every read (by session, sequence range, head). ``event`` holds the event's
stored line (:func:`event_line` without the LF: the bytes a JSONL store writes and the SQLite
store keeps), which reads hand to :func:`parse_line` as they are; the hash chain is checked over
exactly those bytes (``jsonb`` would reorder keys and is not used). ``event_id`` and
``event_type`` are copies: the first makes an event id unique in the store, the second serves SQL
outside the library. Reads filter on the hashed event and refuse a row whose sequence, session
or type column disagrees with it (``TRACE_INDEX_MISMATCH``), as the verifier reports it. The
tables live in the URL's ``?schema=NAME`` (created if missing), else in the ``search_path``.

Migrations: opening a store whose ``cra_schema_migrations`` holds :data:`SCHEMA_VERSION` changes
nothing. Otherwise the migrations it lacks run in one transaction under a transaction-level
advisory lock (one key per schema), so N processes opening a new database together create it
once and the others find it done; a database of a newer version is refused
(``store_version_unsupported``).

Appends: the writer calls :meth:`PostgresStore.append` for each session of a batch and then
:meth:`~PostgresStore.sync`, which commits: one transaction per batch. Each append locks the
session's row (``SELECT ... FOR UPDATE``; a new session's row is inserted first) until the
commit, and refuses events that do not continue the stored head (next sequence, linked to the
head's hash) with :class:`~cra_agents.ChainConflictError`: two writers of one session get an
error, never a fork. :meth:`~PostgresStore.append_next` is the retrying form for callers
that build the next events from the head: it retries, in a new transaction, after a unique
violation, a serialization failure or a deadlock (none reaches its caller). Rows are sent with
``COPY`` from :data:`COPY_FROM` events on, with ``executemany`` (pipeline mode) below: measured
on a 2-core machine (``benchmarks/postgres_bench.py``, the two alternating on one chain), they
are even within noise up to about 20 events a commit, and COPY is 5-30 % faster at 64 and 200
(text COPY; the binary COPY used since then sends an event's bytes as they are, not
hex-escaped, and costs 2-4 times less per row).

Connections: one for writing (autocommit off) and one for reading (autocommit), each under its
own lock; a broken connection (the server restarted, the network failed) fails the call that
met it (the runtime then fails closed), and the next call connects again. ``connect_timeout``,
``statement_timeout`` (30 s) and TCP keepalives (set unless the URL sets them) bound how long
a hung server or a lock held elsewhere can hold the writer. ``durable=False`` sets
``synchronous_commit=off``. Errors and messages never show the URL's password.

Writer: the runtime writes to this store in a thread (``writer="auto"`` picks ``thread``): a
writer process would get the URL, password included, on its command line.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cra_agents._exceptions import (
    ChainConflictError,
    ConfigurationError,
    MissingDependencyError,
    TraceError,
)
from cra_agents.protocol import GENESIS_HASH, TraceEvent
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
from cra_agents.trace._jsonl import event_line, parse_line
from cra_agents.trace._read import check_indexed
from cra_agents.trace._store import redact_store_url as redact_url

if TYPE_CHECKING:
    import psycopg

__all__ = ["COPY_FROM", "SCHEMA_VERSION", "PostgresStore"]

#: The layout version this module writes (``cra_schema_migrations.version``).
SCHEMA_VERSION: Final = 1

#: Batches of at least this many events are inserted with ``COPY``; smaller ones with
#: ``executemany`` (pipeline mode).
COPY_FROM: Final = 32

#: The columns of ``cra_events`` as COPY sends them.
_COPY_TYPES: Final = ("int8", "int8", "text", "text", "bytea")
_PAGE: Final = 1000  # rows per query when streaming a session
_RETRIES: Final = 50  # attempts of append_next before giving up

#: Connection settings used unless the URL sets them.
_DEFAULTS: Final = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
    "application_name": "cra-agents",
}
_STATEMENT_TIMEOUT_MS: Final = 30_000

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

# Migrations by the version they bring the schema to; each a list of statements ({s}: schema
# prefix). Only ever append: a database records the versions applied to it.
_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE {s}cra_sessions (
    session_key bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id text NOT NULL UNIQUE,
    trace_id text NOT NULL,
    first_timestamp text NOT NULL,
    event_count bigint NOT NULL,
    head_sequence bigint NOT NULL,
    head_hash text NOT NULL
)""",
        """CREATE TABLE {s}cra_events (
    session_key bigint NOT NULL,
    sequence bigint NOT NULL,
    event_id text NOT NULL UNIQUE,
    event_type text NOT NULL,
    event bytea NOT NULL,
    PRIMARY KEY (session_key, sequence)
)""",
    ),
}


def _psycopg() -> Any:
    """The psycopg module.

    Raises:
        MissingDependencyError: psycopg is not installed (the ``postgres`` extra).
    """
    try:
        import psycopg
    except ImportError as exc:
        raise MissingDependencyError(
            "the PostgreSQL trace store (postgresql:// URLs)", package="psycopg", extra="postgres"
        ) from exc
    return psycopg


def _split(url: str) -> tuple[dict[str, str], str | None]:
    """The libpq parameters of ``url`` and the ``schema`` it names.

    Raises:
        ConfigurationError: a malformed URL or schema name (reason ``store_url_invalid``).
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError as exc:
        raise ConfigurationError(
            f"store URL {redact_url(url)!r} is not a PostgreSQL URL: {exc}",
            details={"reason": "store_url_invalid"},
        ) from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for key, value in query if key == "schema"), None)
    rest = [(key, value) for key, value in query if key != "schema"]
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigurationError(
            f"store URL {redact_url(url)!r}: schema must be a plain SQL name (letters, digits, "
            f"underscores), not {schema!r}",
            details={"reason": "store_url_invalid"},
        )
    pg = _psycopg()
    plain = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest)))
    try:
        params = {
            k: str(v) for k, v in pg.conninfo.conninfo_to_dict(plain).items() if v is not None
        }
    except pg.Error as exc:
        raise ConfigurationError(
            f"store URL {redact_url(url)!r} is not a PostgreSQL URL: {_scrub(str(exc), password)}",
            details={"reason": "store_url_invalid"},
        ) from None
    for key, value in _DEFAULTS.items():
        params.setdefault(key, value)
    return params, schema


def _scrub(text: str, password: str | None) -> str:
    return text.replace(password, "***") if password else text


class PostgresStore:
    """Events in PostgreSQL tables; see the module docstring for the layout and locking.

    Several processes and hosts may share the database: each session's appends are serialised
    by a lock on its row, and migrations by an advisory lock.

    Args:
        url: ``postgresql://[user[:password]@][host][:port]/database[?param=value&...]`` (or
            ``postgres://``): libpq's URL, plus ``schema=NAME`` for the tables' schema.
        durable: Commits wait for the WAL flush (``synchronous_commit=on``, PostgreSQL's
            default); ``False`` sets ``synchronous_commit=off`` (a server crash may lose the
            last commits, never corrupt the chain).

    Raises:
        MissingDependencyError: psycopg is not installed (the ``postgres`` extra).
        ConfigurationError: a malformed URL (reason ``store_url_invalid``), a server that
            cannot be reached or refuses the login (``store_not_openable``), a database of a
            newer cra-agents (``store_version_unsupported``), or tables named ``cra_events`` or
            ``cra_sessions`` that this module did not make (``store_layout_unknown``).
    """

    def __init__(self, url: str, *, durable: bool = True) -> None:
        self._psycopg = _psycopg()
        self.url = redact_url(url)
        self._params, self.schema = _split(url)
        self._password = self._params.get("password")
        self.durable = durable
        prefix = "" if self.schema is None else f'"{self.schema}".'
        self._sessions = f"{prefix}cra_sessions"
        self._events = f"{prefix}cra_events"
        self._migrations = f"{prefix}cra_schema_migrations"
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._ingest_lock = threading.Lock()
        # The connections, closed (uncommitted work rolled back) if the store is dropped
        # without close(), as a dropped SQLite connection is.
        self._c = _Connections()
        weakref.finalize(self, self._c.close)
        self._keys: dict[str, int] = {}  # committed session keys (a key never changes)
        self._closed = False
        #: Conflicts absorbed: attempts of :meth:`append_next` and :meth:`ingest` retried, and
        #: new sessions another writer created first (for tests and metrics).
        self.retried = 0
        with self._lock:
            conn = self._connect(autocommit=False, opening=True)
            try:
                self._migrate(conn)
            except BaseException:
                conn.close()
                raise
            self._c.writer = conn

    # -- connections ---------------------------------------------------------------------

    def _connect(self, *, autocommit: bool, opening: bool = False) -> psycopg.Connection[Any]:
        """A new connection with the store's session settings.

        Raises:
            ConfigurationError: when ``opening``, the server cannot be reached or refuses the
                login (reason ``store_not_openable``).
            psycopg.OperationalError: otherwise, the same (the password scrubbed).
        """
        pg = self._psycopg
        options = f"-c statement_timeout={_STATEMENT_TIMEOUT_MS}"
        if not self.durable:
            options += " -c synchronous_commit=off"
        params = dict(self._params)
        params["options"] = f"{params.get('options', '')} {options}".strip()
        try:
            return pg.connect(autocommit=autocommit, **params)  # type: ignore[no-any-return]
        except pg.Error as exc:
            message = _scrub(str(exc).strip(), self._password)
            if opening:
                raise ConfigurationError(
                    f"cannot open the trace store {self.url!r}: {message}; check that the "
                    "server runs and the URL's host, port, database and credentials",
                    details={"reason": "store_not_openable", "cause": type(exc).__name__},
                ) from None
            raise pg.OperationalError(message) from None

    def _write_conn(self) -> psycopg.Connection[Any]:
        """The writing connection, reconnected if broken (call under ``_lock``)."""
        if self._closed:
            raise ValueError("store is closed")
        conn = self._c.writer
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._c.writer = None
            conn = self._c.writer = self._connect(autocommit=False)
        return conn

    def _read_conn(self) -> psycopg.Connection[Any]:
        """The reading connection, reconnected if broken (call under ``_read_lock``)."""
        if self._closed:
            raise ValueError("store is closed")
        conn = self._c.reader
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._c.reader = None
            conn = self._c.reader = self._connect(autocommit=True)
        return conn

    def _failed(self, conn: psycopg.Connection[Any], which: str = "writer") -> None:
        """After an error on a connection: roll back, and drop the connection if it broke."""
        with contextlib.suppress(self._psycopg.Error):
            conn.rollback()
        if conn.broken or conn.closed:
            conn.close()
            if getattr(self._c, which) is conn:
                setattr(self._c, which, None)

    # -- migrations ----------------------------------------------------------------------

    def _exists(self, conn: psycopg.Connection[Any], table: str) -> bool:
        """Whether the store's schema has ``table``.

        Read from the catalog tables with the statement's snapshot, not through ``to_regclass``
        (the backend's catalog cache, which an advisory lock does not refresh: a process that
        waited for another's migration would not see its new tables).
        """
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables "
            "WHERE schemaname = coalesce(%s, current_schema()) AND tablename = %s)",
            (self.schema, table),
        ).fetchone()
        return bool(row and row[0])

    def _version(self, conn: psycopg.Connection[Any]) -> int | None:
        """The schema version recorded (None: no migrations table)."""
        if not self._exists(conn, "cra_schema_migrations"):
            return None
        row = conn.execute(f"SELECT max(version) FROM {self._migrations}").fetchone()  # noqa: S608
        return int(row[0] or 0) if row else 0

    def _check_version(self, version: int | None) -> bool:
        if version is not None and version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"{self.url} holds a version {version} trace store; this cra-agents reads "
                f"version {SCHEMA_VERSION} and older: upgrade cra-agents to open it",
                details={"reason": "store_version_unsupported"},
            )
        return version == SCHEMA_VERSION

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION` (nothing to do when it is there)."""
        try:
            current = self._check_version(self._version(conn))
            conn.rollback()
            if current:
                return
            with conn.transaction():
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    (f"cra_agents.trace.migrate:{self.schema or ''}",),
                )
                if self.schema is not None:
                    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                version = self._version(conn)
                if self._check_version(version):
                    return  # another process did it while this one waited
                if version is None:
                    self._check_free(conn)
                    conn.execute(
                        f"CREATE TABLE {self._migrations} (version integer PRIMARY KEY, "
                        "applied_at timestamptz NOT NULL DEFAULT now())"
                    )
                for target in range((version or 0) + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[target]:
                        conn.execute(statement.format(s=self._prefix))
                    conn.execute(
                        f"INSERT INTO {self._migrations} (version) VALUES (%s)",  # noqa: S608
                        (target,),
                    )
        except self._psycopg.Error as exc:
            raise ConfigurationError(
                f"cannot prepare the trace store {self.url!r}: "
                f"{_scrub(str(exc).strip(), self._password)}; the URL's user needs the right "
                "to create tables in its database or schema (once), then to read and write them",
                details={"reason": "store_not_openable", "cause": type(exc).__name__},
            ) from None
        finally:
            if not conn.closed:
                conn.rollback()

    @property
    def _prefix(self) -> str:
        return "" if self.schema is None else f'"{self.schema}".'

    def _check_free(self, conn: psycopg.Connection[Any]) -> None:
        """Refuse a database whose ``cra_events`` / ``cra_sessions`` are someone else's."""
        taken = [name for name in ("cra_sessions", "cra_events") if self._exists(conn, name)]
        if taken:
            raise ConfigurationError(
                f"{self.url} has tables {', '.join(taken)} that are not a cra-agents trace "
                "store (no cra_schema_migrations table): use another database or ?schema=",
                details={"reason": "store_layout_unknown"},
            )

    def check_writable(self) -> None:
        """Write nothing, in a transaction that is rolled back, with the rights appends need.

        Raises:
            psycopg.Error: the database is read-only (a standby, ``default_transaction_read_only``)
                or the user may not insert events or update sessions.
        """
        with self._lock:
            conn = self._write_conn()
            try:
                conn.execute(
                    f"INSERT INTO {self._events} SELECT * FROM {self._events} WHERE false"  # noqa: S608
                )
                conn.execute(
                    f"UPDATE {self._sessions} SET head_hash = head_hash WHERE false"  # noqa: S608
                )
            finally:
                self._failed(conn)

    # -- writing -------------------------------------------------------------------------

    def _lock_head(
        self, conn: psycopg.Connection[Any], session_id: str, first: TraceEvent | None
    ) -> tuple[int, int, str] | None:
        """Lock the session's row until the commit: ``(key, head sequence, head hash)``.

        A new session's row is inserted from ``first`` (None: return None instead), in a
        savepoint: when a concurrent writer inserted it first, the unique violation is caught
        there and the row is locked as that writer left it.
        """
        select = (
            f"SELECT session_key, head_sequence, head_hash FROM {self._sessions} "  # noqa: S608
            "WHERE session_id = %s FOR UPDATE"
        )
        row = conn.execute(select, (session_id,)).fetchone()
        if row is None:
            if first is None:
                return None
            try:
                with conn.transaction():
                    row = conn.execute(
                        f"INSERT INTO {self._sessions} (session_id, trace_id, "  # noqa: S608
                        "first_timestamp, event_count, head_sequence, head_hash) "
                        "VALUES (%s, %s, %s, 0, -1, %s) "
                        "RETURNING session_key, head_sequence, head_hash",
                        (session_id, first.trace_id, first.timestamp, GENESIS_HASH),
                    ).fetchone()
            except self._psycopg.errors.UniqueViolation:
                self.retried += 1
                row = conn.execute(select, (session_id,)).fetchone()
        assert row is not None  # noqa: S101 - inserted or found
        return int(row[0]), int(row[1]), str(row[2])

    def _insert(
        self,
        conn: psycopg.Connection[Any],
        key: int,
        head: tuple[int, str],
        events: Sequence[TraceEvent],
        *,
        copy: bool | None = None,
    ) -> None:
        """Insert ``events`` after the locked head ``(sequence, hash)`` and move the head.

        Raises:
            ChainConflictError: they do not continue the head, or each other.
        """
        sequence, previous = _check_continues(head, events)
        rows = [(key, e.sequence, e.event_id, e.event_type, event_line(e)[:-1]) for e in events]
        try:
            self._send(conn, rows, copy)
        except self._psycopg.errors.UniqueViolation as exc:
            constraint = getattr(exc.diag, "constraint_name", None) or ""
            if "event_id" in constraint:  # a conflict no retry resolves
                raise self._unique(exc, events) from None
            raise
        conn.execute(
            f"UPDATE {self._sessions} SET event_count = event_count + %s, head_sequence = %s, "  # noqa: S608
            "head_hash = %s WHERE session_key = %s",
            (len(rows), sequence, previous, key),
        )

    def _send(
        self, conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]], copy: bool | None
    ) -> None:
        """Insert event rows: ``COPY`` for large batches, else ``executemany`` (pipelined)."""
        if copy if copy is not None else len(rows) >= COPY_FROM:
            with conn.cursor().copy(
                f"COPY {self._events} (session_key, sequence, event_id, event_type, event) "
                "FROM STDIN (FORMAT BINARY)"
            ) as copier:
                # Binary: the event's bytes as they are, not hex-escaped for the server to
                # decode (measured 2-4 times cheaper per row, client and server together).
                copier.set_types(_COPY_TYPES)
                for row in rows:
                    copier.write_row(row)
        else:
            conn.cursor().executemany(
                f"INSERT INTO {self._events} (session_key, sequence, event_id, event_type, "  # noqa: S608
                "event) VALUES (%s, %s, %s, %s, %s)",
                rows,
            )

    def _unique(self, exc: Exception, events: Sequence[TraceEvent]) -> ChainConflictError:
        """A unique violation on insert under the session's lock, as a chain conflict.

        The event id belongs to another stored event (``event_id_reused``), or a sequence is
        stored already: only a writer that does not take the session's lock gets there.
        """
        constraint = getattr(getattr(exc, "diag", None), "constraint_name", None)
        if constraint is not None and "event_id" in constraint:
            return _conflict(
                "event_id_reused",
                events[0],
                "carries an event id that another stored event has",
                constraint=constraint,
            )
        return _conflict(
            "fork", events[0], "is at a sequence stored meanwhile", constraint=constraint
        )

    def append(self, events: Sequence[TraceEvent]) -> None:
        """Insert ``events`` (one session's, continuing its head) in the open transaction.

        Raises:
            ValueError: the store is closed.
            ChainConflictError: the events do not continue the stored chain (another writer
                appended to the session), or an event id is already stored; the open
                transaction is rolled back.
            psycopg.Error: the server failed or went away; the open transaction is rolled back.
        """
        if not events:
            return
        with self._lock:
            conn = self._write_conn()
            try:
                locked = self._lock_head(conn, events[0].session_id, events[0])
                assert locked is not None  # noqa: S101 - a first event was given
                key, sequence, head = locked
                self._insert(conn, key, (sequence, head), events)
            except self._psycopg.errors.UniqueViolation as exc:
                self._failed(conn)
                raise self._unique(exc, events) from None
            except BaseException:
                self._failed(conn)
                raise

    def sync(self) -> None:
        """Commit everything appended since the last sync (one transaction per batch).

        Raises:
            psycopg.Error: the commit failed; nothing of the batch is stored.
        """
        with self._lock:
            conn = self._c.writer
            if conn is None or conn.closed:
                return
            try:
                conn.commit()
            except BaseException:
                self._failed(conn)
                raise

    def append_next(
        self,
        session_id: str,
        make: Callable[[int, str], Sequence[TraceEvent]],
    ) -> list[TraceEvent]:
        """Append the events ``make(head sequence, head hash)`` builds, and commit them.

        ``make`` is called with the session's stored head (``-1`` and the genesis hash for a
        new session) while its row is locked, so concurrent callers each continue the chain
        the one before them left. A unique violation, a serialization failure or a deadlock
        rolls the attempt back and starts another (``make`` is called again); none reaches
        the caller. Commits what :meth:`append` left open first.

        Returns:
            The events stored.

        Raises:
            ValueError: the store is closed, or ``make`` returned events of another session.
            ChainConflictError: ``make``'s events do not continue the head they were given.
            TraceError: 50 attempts conflicted (reason ``retries_exhausted``).
            psycopg.Error: the server failed or went away.
        """
        pg = self._psycopg
        retry = (pg.errors.UniqueViolation, pg.errors.SerializationFailure)
        pause = 0.001
        for _ in range(_RETRIES):
            with self._lock:
                conn = self._write_conn()
                if conn.info.transaction_status != pg.pq.TransactionStatus.IDLE:
                    conn.commit()
                try:
                    events = self._append_next(conn, session_id, make)
                    conn.commit()
                    return events
                except (*retry, pg.errors.DeadlockDetected):
                    self._failed(conn)
                    self.retried += 1
                except BaseException:
                    self._failed(conn)
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        raise TraceError(
            f"appending to session {session_id} conflicted {_RETRIES} times in a row; retry later",
            details={"reason": "retries_exhausted", "session_id": session_id},
        )

    def _append_next(
        self,
        conn: psycopg.Connection[Any],
        session_id: str,
        make: Callable[[int, str], Sequence[TraceEvent]],
    ) -> list[TraceEvent]:
        """One attempt of :meth:`append_next`, in the open transaction."""

        def build(sequence: int, head: str) -> list[TraceEvent]:
            events = list(make(sequence, head))
            if any(e.session_id != session_id for e in events):
                raise ValueError(f"make() built events of another session than {session_id}")
            return events

        locked = self._lock_head(conn, session_id, None)
        if locked is None:  # a new session: its row needs the first event's trace id and time
            events = build(-1, GENESIS_HASH)
            if not events:
                return events
            locked = self._lock_head(conn, session_id, events[0])
            assert locked is not None  # noqa: S101 - a first event was given
            if locked[1:] != (-1, GENESIS_HASH):  # another writer created it meanwhile
                events = build(locked[1], locked[2])
        else:
            events = build(locked[1], locked[2])
        if events:
            self._insert(conn, locked[0], (locked[1], locked[2]), events)
        return events

    def ingest(self, events: Sequence[TraceEvent]) -> IngestResult:
        """Add a checked batch's events that continue the stored chains, all or none.

        One transaction on a connection of its own (the writer's open batch is never mixed
        in): the rows of the batch's sessions are locked in sorted order (two ingests of
        overlapping sessions cannot deadlock), then the rule of :mod:`cra_agents.trace._ingest`
        compares each session's run with what is stored, and the new events are inserted. A
        serialization failure or deadlock (with the runtime's writer) retries the whole batch.

        Raises:
            ChainConflictError: a session's part does not continue its stored chain, or an
                event id belongs to another stored event (reason ``event_id_reused``); nothing
                of the batch is stored.
            TraceError: a stored row's columns disagree with its event (``TRACE_INDEX_MISMATCH``).
            ValueError: the store is closed.
            psycopg.Error: the server failed or went away; nothing of the batch is stored.
        """
        runs = split_batch(events)
        pg = self._psycopg
        pause = 0.001
        for _ in range(_RETRIES):
            with self._ingest_lock:
                if self._closed:
                    raise ValueError("store is closed")
                conn = self._c.ingest
                if conn is None or conn.closed or conn.broken:
                    if conn is not None:
                        conn.close()
                    self._c.ingest = None
                    conn = self._c.ingest = self._connect(autocommit=False)
                try:
                    result = self._ingest(conn, runs)
                    conn.commit()
                    return result
                except (pg.errors.SerializationFailure, pg.errors.DeadlockDetected):
                    self._failed(conn, "ingest")
                    self.retried += 1
                except BaseException:
                    self._failed(conn, "ingest")
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        raise TraceError(
            f"ingesting a batch conflicted {_RETRIES} times in a row; retry later",
            details={"reason": "retries_exhausted"},
        )

    def _ingest(
        self, conn: psycopg.Connection[Any], runs: dict[str, list[TraceEvent]]
    ) -> IngestResult:
        """One attempt of :meth:`ingest`, in the open transaction.

        A fixed number of round trips, however many sessions the batch holds (with psycopg's
        ``BEGIN`` and the ``COMMIT``: 6 for a batch of new events, 4 for one of duplicates
        only; ``benchmarks/ingest_bench.py`` counts them):

        1. Pipelined: lock every session's row in sorted order, inserting the new ones (one
           ``INSERT ... ON CONFLICT DO UPDATE ... WHERE false``, which locks a row it finds
           and changes nothing), then read each session's key and last stored event. The read
           is a statement of its own: under READ COMMITTED it sees what a lock waited for.
        2. Only when a run overlaps what is stored: the stored events of every overlap.
        3. The new events of every session: one ``COPY`` (``executemany`` below
           :data:`COPY_FROM` events).
        4. Every session's count and head moved: one ``UPDATE``.
        """
        order = sorted(runs)
        firsts = [runs[session_id][0] for session_id in order]
        with conn.pipeline():
            conn.execute(
                f"INSERT INTO {self._sessions} AS s (session_id, trace_id, "  # noqa: S608
                "first_timestamp, event_count, head_sequence, head_hash) "
                "SELECT n.id, n.trace, n.stamp, 0, -1, %s "
                "FROM unnest(%s::text[], %s::text[], %s::text[]) WITH ORDINALITY "
                "AS n(id, trace, stamp, i) ORDER BY n.i "
                "ON CONFLICT (session_id) DO UPDATE SET event_count = s.event_count WHERE false",
                (
                    GENESIS_HASH,
                    order,
                    [e.trace_id for e in firsts],
                    [e.timestamp for e in firsts],
                ),
            )
            found = conn.execute(
                f"SELECT s.session_id, s.session_key, e.sequence, e.event_type, e.event "  # noqa: S608
                f"FROM {self._sessions} AS s LEFT JOIN LATERAL (SELECT sequence, event_type, "
                f"event FROM {self._events} WHERE session_key = s.session_key "
                "ORDER BY sequence DESC LIMIT 1) AS e ON true WHERE s.session_id = ANY(%s)",
                (order,),
            )
        keys: dict[str, int] = {}
        heads: dict[str, StoredHead] = {}
        for session_id, key, sequence, column, line in found.fetchall():
            keys[session_id] = int(key)
            heads[session_id] = (
                EMPTY_HEAD
                if line is None
                else head_of([_checked(session_id, sequence, column, line)])
            )
        assert len(keys) == len(order)  # noqa: S101 - every row was inserted or locked
        kept = self._overlaps(conn, runs, keys, heads)

        def stored(session_id: str, lo: int, hi: int) -> list[StoredEvent]:
            return [e for e in kept.get(session_id, ()) if lo <= e.sequence <= hi]

        new, result = ingest_mapping(runs, heads.__getitem__, stored)
        if new:
            self._insert_runs(conn, {keys[s]: (heads[s], run) for s, run in new.items()})
        return result

    def _overlaps(
        self,
        conn: psycopg.Connection[Any],
        runs: dict[str, list[TraceEvent]],
        keys: dict[str, int],
        heads: dict[str, StoredHead],
    ) -> dict[str, list[StoredEvent]]:
        """The stored events at the sequences where a run overlaps its stored chain (one query).

        These are the ranges :func:`plan_session` asks for: from the run's first sequence to
        its last or the head's, whichever comes first.
        """
        wanted = [
            (session_id, run[0].sequence, min(run[-1].sequence, heads[session_id].sequence))
            for session_id, run in runs.items()
            if run[0].sequence <= heads[session_id].sequence
        ]
        kept: dict[str, list[StoredEvent]] = {}
        if not wanted:
            return kept
        rows = conn.execute(
            "SELECT n.id, e.sequence, e.event_type, e.event "  # noqa: S608
            "FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[]) "
            "AS n(id, key, lo, hi) "
            f"JOIN {self._events} AS e ON e.session_key = n.key "
            "AND e.sequence BETWEEN n.lo AND n.hi ORDER BY e.session_key, e.sequence",
            (
                [w[0] for w in wanted],
                [keys[w[0]] for w in wanted],
                [w[1] for w in wanted],
                [w[2] for w in wanted],
            ),
        ).fetchall()
        for session_id, sequence, column, line in rows:
            kept.setdefault(session_id, []).extend(
                stored_events_of([_checked(session_id, sequence, column, line)])
            )
        return kept

    def _insert_runs(
        self,
        conn: psycopg.Connection[Any],
        runs: dict[int, tuple[StoredHead, Sequence[TraceEvent]]],
    ) -> None:
        """Insert the runs of several locked sessions (by key) after their heads, move the heads.

        Raises:
            ChainConflictError: a run does not continue its head, or an event id belongs to
                another stored event (reason ``event_id_reused``).
        """
        rows: list[tuple[Any, ...]] = []
        moves: list[tuple[int, int, int, str]] = []
        for key, (head, run) in runs.items():
            _check_continues((head.sequence, head.event_hash), run)
            rows.extend(
                (key, e.sequence, e.event_id, e.event_type, event_line(e)[:-1]) for e in run
            )
            moves.append((key, len(run), run[-1].sequence, run[-1].event_hash))
        try:
            self._send(conn, rows, None)
        except self._psycopg.errors.UniqueViolation as exc:
            constraint = getattr(exc.diag, "constraint_name", None) or ""
            if "event_id" not in constraint:  # pragma: no cover - a writer that skips the lock
                raise
            detail = getattr(exc.diag, "message_detail", None) or ""
            events = [e for _, run in runs.values() for e in run]
            named = [e for e in events if f"=({e.event_id})" in detail]
            raise self._unique(exc, named or events) from None
        conn.execute(
            f"UPDATE {self._sessions} AS s SET event_count = s.event_count + n.count, "  # noqa: S608
            "head_sequence = n.sequence, head_hash = n.hash "
            "FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::text[]) "
            "AS n(key, count, sequence, hash) WHERE s.session_key = n.key",
            tuple(list(column) for column in zip(*moves, strict=True)),
        )

    # -- reading -------------------------------------------------------------------------

    def _key(self, conn: psycopg.Connection[Any], session_id: str) -> int | None:
        """The session's key, None if it has no events (call under ``_read_lock``)."""
        key = self._keys.get(session_id)
        if key is None:
            row = conn.execute(
                f"SELECT session_key FROM {self._sessions} WHERE session_id = %s "  # noqa: S608
                "AND event_count > 0",
                (session_id,),
            ).fetchone()
            if row is None:
                return None
            key = int(row[0])
            if len(self._keys) >= 4096:
                self._keys.clear()
            self._keys[session_id] = key
        return key

    def _page(self, session_id: str, after: int, limit: int) -> list[tuple[int, str, bytes]] | None:
        """Up to ``limit`` rows of the session after sequence ``after`` (None: no session)."""
        with self._read_lock:
            conn = self._read_conn()
            try:
                key = self._key(conn, session_id)
                if key is None:
                    return None
                rows = conn.execute(
                    f"SELECT sequence, event_type, event FROM {self._events} "  # noqa: S608
                    "WHERE session_key = %s AND sequence > %s ORDER BY sequence LIMIT %s",
                    (key, after, limit),
                ).fetchall()
            except self._psycopg.Error:
                if conn.broken:
                    conn.close()
                raise
        return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def iter_events(
        self, session_id: str, *, since_sequence: int | None = None, batch: int = _PAGE
    ) -> Iterator[TraceEvent]:
        """Events of a session in sequence order, fetched ``batch`` rows at a time.

        Memory stays bounded by one batch, however long the session (the verifier streams a
        session through this). Each batch is one query (keyset pagination on the primary key),
        so no connection is held between batches.

        Raises:
            TraceError: a row's columns disagree with its event (``TRACE_INDEX_MISMATCH``).
        """
        after = -1 if since_sequence is None else since_sequence
        while True:
            rows = self._page(session_id, after, batch)
            if not rows:
                return
            for sequence, column, line in rows:
                yield check_indexed(
                    parse_line(line), session_id, sequence=sequence, event_type=column
                )
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def read(
        self,
        session_id: str,
        *,
        event_type: str | None = None,
        since_sequence: int | None = None,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        """Events of a session in sequence order, optionally filtered.

        Filters are answered from the hashed events: the columns only locate rows, and a row
        they misdescribe is refused.

        Raises:
            TraceError: a row's sequence, session or type column disagrees with its event
                (code ``TRACE_INDEX_MISMATCH``): the table was changed behind the store.
        """
        if limit is not None and limit <= 0:
            return []
        batch = _PAGE if limit is None or event_type is not None else min(limit, _PAGE)
        out: list[TraceEvent] = []
        for event in self.iter_events(session_id, since_sequence=since_sequence, batch=batch):
            if event_type is None or event.event_type == event_type:
                out.append(event)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def last_sequence(self, session_id: str) -> int:
        """The sequence of the session's last stored event (-1: none), checked against it.

        Raises:
            TraceError: the row disagrees with its event (``TRACE_INDEX_MISMATCH``).
        """
        with self._read_lock:
            conn = self._read_conn()
            key = self._key(conn, session_id)
            if key is None:
                return -1
            row = conn.execute(
                f"SELECT sequence, event_type, event FROM {self._events} "  # noqa: S608
                "WHERE session_key = %s ORDER BY sequence DESC LIMIT 1",
                (key,),
            ).fetchone()
        if row is None:
            return -1
        check_indexed(
            parse_line(bytes(row[2])), session_id, sequence=int(row[0]), event_type=row[1]
        )
        return int(row[0])

    def sessions(self) -> list[str]:
        """Session ids with events, oldest first."""
        with self._read_lock:
            rows = (
                self._read_conn()
                .execute(
                    f"SELECT session_id FROM {self._sessions} WHERE event_count > 0 "  # noqa: S608
                    "ORDER BY first_timestamp, session_key"
                )
                .fetchall()
            )
        return [str(row[0]) for row in rows]

    def close(self) -> None:
        """Commit and close the connections (closed even when the last commit fails)."""
        try:
            if not self._closed:
                self.sync()
        finally:
            with self._ingest_lock, self._lock, self._read_lock:
                self._c.close()
                self._closed = True


class _Connections:
    """A store's connections (each None until used)."""

    __slots__ = ("ingest", "reader", "writer")

    def __init__(self) -> None:
        self.writer: psycopg.Connection[Any] | None = None
        self.reader: psycopg.Connection[Any] | None = None
        self.ingest: psycopg.Connection[Any] | None = None

    def close(self) -> None:
        for conn in (self.writer, self.reader, self.ingest):
            if conn is not None:
                conn.close()
        self.writer = self.reader = self.ingest = None


def _check_continues(head: tuple[int, str], events: Sequence[TraceEvent]) -> tuple[int, str]:
    """The head after ``events``, which must continue ``head`` ``(sequence, hash)`` and each other.

    Raises:
        ChainConflictError: an event does not (reason ``gap`` or ``link``).
    """
    sequence, previous = head
    for event in events:
        if event.sequence != sequence + 1 or event.previous_event_hash != previous:
            reason = "gap" if event.sequence != sequence + 1 else "link"
            raise _conflict(
                reason,
                event,
                f"does not continue the stored chain (head sequence {sequence})",
            )
        sequence, previous = event.sequence, event.event_hash
    return sequence, previous


def _checked(session_id: str, sequence: Any, column: Any, line: Any) -> TraceEvent:
    """The event of a stored row, refused when its columns disagree with it."""
    return check_indexed(
        parse_line(bytes(line)), session_id, sequence=int(sequence), event_type=column
    )


def _conflict(reason: str, event: TraceEvent, what: str, **details: Any) -> ChainConflictError:
    return ChainConflictError(
        f"session {event.session_id}: event {event.event_id} at sequence {event.sequence} "
        f"{what}; nothing of the batch was stored",
        details={
            "reason": reason,
            "session_id": event.session_id,
            "sequence": event.sequence,
            "event_id": event.event_id,
            **details,
        },
    )
