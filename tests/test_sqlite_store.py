"""The SQLite store's layout, its versions and the migration of first-layout databases."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import cra_agents as cra
from cra_agents.cli import main
from cra_agents.examples import atlas_path
from cra_agents.protocol import TraceEvent
from cra_agents.trace import MemoryStore, SessionChain, SqliteStore, open_store, verify_chain
from cra_agents.trace._jsonl import event_line
from cra_agents.trace._sqlite import SCHEMA_VERSION, V0_LAYOUT

GITHUB_OPS = atlas_path("github-ops")
ROOT = Path(__file__).resolve().parents[1]

# Databases of the first layout (V0_LAYOUT) may also have this index.
OLD_INDEX = (
    "CREATE INDEX IF NOT EXISTS events_by_type ON events (session_id, event_type, sequence);"
)


def old_append(db: sqlite3.Connection, events: Sequence[TraceEvent]) -> None:
    """What the first layout's ``SqliteStore.append`` wrote for one batch."""
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
    db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute(
        "INSERT INTO sessions VALUES (?, ?, ?, ?, ?) ON CONFLICT(session_id) DO "
        "UPDATE SET event_count = event_count + excluded.event_count, "
        "head_hash = excluded.head_hash",
        (last.session_id, last.trace_id, events[0].timestamp, len(events), last.event_hash),
    )


def recorded_sessions(count: int = 3) -> dict[str, list[TraceEvent]]:
    """Real chains from the runtime: resolve, an allowed call, a denied one, an end."""
    store = MemoryStore()
    with cra.Runtime([GITHUB_OPS], store=store) as runtime:
        for index in range(count):
            session = runtime.create_session(f"bot-{index}", "Résoudre les tickets ✓ 🚀")
            resolution = runtime.resolve(cra.resolve_request(session))
            runtime.execute(
                cra.execute_request(
                    session, resolution.resolution_id, "github.issue.list", {"repo": "acme/app"}
                )
            )
            with pytest.raises(cra.CRAError):
                runtime.authorize(
                    session.session_id,
                    "github.repo.delete",
                    {"repo": "acme/app", "confirm_name": "acme/app"},
                )
            runtime.end_session(session.session_id)
    return {session_id: store.read(session_id) for session_id in store.sessions()}


def make_old_store(
    path: Path,
    sessions: dict[str, list[TraceEvent]],
    *,
    index: bool = False,
    encoding: str | None = None,
    batch: int = 4,
) -> None:
    """A first-layout database holding ``sessions``, appended in interleaved batches."""
    db = sqlite3.connect(path, isolation_level=None)
    if encoding:
        db.execute(f"PRAGMA encoding = '{encoding}'")
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V0_LAYOUT + (OLD_INDEX if index else ""))
    db.execute("BEGIN")
    chains = list(sessions.values())
    for start in range(0, max(len(c) for c in chains), batch):
        for events in chains:
            if events[start : start + batch]:
                old_append(db, events[start : start + batch])
    db.execute("COMMIT")
    db.close()


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to ``path`` that commits and closes."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows and the schema, read without the store."""
    with raw(path) as db:
        tables = [
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        out = {t: sorted(db.execute(f"SELECT * FROM {t}")) for t in tables}  # noqa: S608
        out["schema"] = db.execute(
            "SELECT type, name, sql FROM sqlite_master ORDER BY 2"
        ).fetchall()
        out["user_version"] = db.execute("PRAGMA user_version").fetchall()
        return out


def columns(path: Path, table: str) -> list[str]:
    with raw(path) as db:
        return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def chain(session: int, count: int, start: int = 0) -> list[TraceEvent]:
    c = SessionChain(
        f"00000000-0000-7000-8000-{session:012d}", f"11111111-1111-7000-8000-{session:012d}"
    )
    for index in range(start + count):
        c.append("policy.evaluated" if index % 2 else "action.requested", {"i": index})
    return c.flush()[start:]


def verify_cli(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str]:
    code = main(["trace", "verify", "--all", "--store", f"sqlite://{path}"])
    return code, capsys.readouterr().out


@pytest.fixture(scope="module")
def recorded() -> dict[str, list[TraceEvent]]:
    return recorded_sessions()


class TestLayout:
    def test_new_database_is_the_current_layout(self, tmp_path):
        """A new file gets the integer-keyed layout at SCHEMA_VERSION, the event as its line."""
        path = tmp_path / "new.db"
        store = SqliteStore(path)
        events = chain(1, 5)
        store.append(events)
        store.close()
        assert columns(path, "events") == ["id", "event_type", "event"]
        assert columns(path, "sessions") == [
            "session_key",
            "session_id",
            "trace_id",
            "first_timestamp",
            "event_count",
            "head_hash",
        ]
        state = dump(path)
        assert state["user_version"] == [(SCHEMA_VERSION,)]
        assert state["events"] == [
            ((1 << 32) + e.sequence, e.event_type, event_line(e)[:-1]) for e in events
        ]
        (session,) = state["sessions"]
        assert session == (
            1,
            events[0].session_id,
            events[0].trace_id,
            events[0].timestamp,
            5,
            events[-1].event_hash,
        )

    def test_round_trip_of_runtime_chains(self, tmp_path, capsys, recorded):
        """Real chains read back equal, verify, and keep the order sessions were started in."""
        path = tmp_path / "t.db"
        store = SqliteStore(path)
        for events in recorded.values():
            store.append(events)
        store.sync()
        reopened = SqliteStore(path)
        assert reopened.sessions() == list(recorded)
        for session_id, events in recorded.items():
            back = reopened.read(session_id)
            assert [e.model_dump() for e in back] == [e.model_dump() for e in events]
            assert [event_line(e) for e in back] == [event_line(e) for e in events]
            assert verify_chain(back).valid
            assert reopened.last_sequence(session_id) == events[-1].sequence
        store.close()
        reopened.close()
        code, out = verify_cli(capsys, path)
        assert code == 0
        assert out.count("VALID") == len(recorded)

    def test_queries_stay_inside_their_session(self, tmp_path):
        """Filters and bounds never reach a neighbouring session's id range."""
        store = SqliteStore(tmp_path / "t.db")
        first, second, third = chain(1, 10), chain(2, 10), chain(3, 10)
        for events in (first, second, third):
            store.append(events)
        sid = second[0].session_id
        assert [e.sequence for e in store.read(sid)] == list(range(10))
        assert [e.sequence for e in store.read(sid, since_sequence=-5)] == list(range(10))
        assert [e.sequence for e in store.read(sid, since_sequence=7)] == [8, 9]
        assert store.read(sid, since_sequence=9) == []
        assert store.read(sid, since_sequence=2**40) == []
        assert store.read(sid, since_sequence=2**70) == []  # beyond SQLite's integers
        assert store.read(sid, since_sequence=-(2**40), limit=2)[-1].sequence == 1
        assert [e.sequence for e in store.read(sid, event_type="policy.evaluated")] == [
            1,
            3,
            5,
            7,
            9,
        ]
        assert store.read(sid, event_type="policy.evaluated", since_sequence=4, limit=2) == [
            second[5],
            second[7],
        ]
        assert store.read(sid, limit=0) == []
        assert store.read("nope") == []
        assert store.last_sequence(sid) == 9
        more = chain(2, 3, start=10)
        store.append(more)
        assert store.last_sequence(sid) == 12
        assert store.last_sequence(first[0].session_id) == 9
        assert store.last_sequence(third[0].session_id) == 9
        highest = first[-1].model_copy(update={"sequence": 2**32 - 1})
        store.append([highest])  # the last id of session 1's range, next to session 2's
        assert store.read(sid, since_sequence=-5) == second + more
        assert store.read(sid, since_sequence=-(2**70), limit=1) == second[:1]
        assert store.read(first[0].session_id, since_sequence=9) == [highest]
        assert store.last_sequence(first[0].session_id) == 2**32 - 1
        store.close()

    def test_a_rolled_back_session_key_is_not_reused(self, tmp_path):
        """A new session's key dies with its failed batch; the next session may take it."""
        store = SqliteStore(tmp_path / "t.db")
        a, b = chain(1, 4), chain(2, 4)
        with pytest.raises(sqlite3.IntegrityError):
            store.append([*a, a[-1]])  # a sequence twice: the batch, and its session, roll back
        store.append(b)
        store.sync()
        store.append(a)
        store.sync()
        for events in (a, b):
            assert store.read(events[0].session_id) == events
        assert store.sessions() == [a[0].session_id, b[0].session_id]
        store.close()

    def test_sequence_and_session_limits(self, tmp_path):
        """Sequences beyond 2**32 - 1 and keys beyond 2**31 - 1 are refused, nothing stored."""
        path = tmp_path / "t.db"
        store = SqliteStore(path)
        late = chain(1, 1)[0].model_copy(update={"sequence": 2**32})
        with pytest.raises(ValueError, match="beyond"):
            store.append([late])
        store.append(chain(2, 1))
        store.sync()
        with raw(path) as db:
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, 'x', '2020-01-01T00:00:00Z', 0, 'h')",
                (2**31 - 1, "last"),
            )
        with pytest.raises(ValueError, match="2\\*\\*31 sessions"):
            store.append(chain(3, 1))
        store.close()
        assert [row[1] for row in dump(path)["sessions"]] == [chain(2, 1)[0].session_id, "last"]


class TestMigration:
    @pytest.mark.parametrize("index", [False, True], ids=["no-index", "events_by_type"])
    def test_first_layout_is_migrated_byte_for_byte(self, tmp_path, capsys, recorded, index):
        """An old database becomes the current layout: same bytes, same order, still verifies."""
        path = tmp_path / "old.db"
        make_old_store(path, recorded, index=index)
        before = dump(path)
        with raw(path) as db:
            old_order = [
                row[0]
                for row in db.execute(
                    "SELECT session_id FROM sessions ORDER BY first_timestamp, rowid"
                )
            ]
        store = SqliteStore(path)
        after = dump(path)
        assert after["user_version"] == [(SCHEMA_VERSION,)]
        assert {name for _, name, _ in after["schema"]} == {
            "events",
            "sessions",
            "sqlite_autoindex_sessions_1",
        }
        keys = {row[1]: row[0] for row in after["sessions"]}
        old_rows = {(row[0], row[1]): row for row in before["events"]}
        assert len(after["events"]) == len(old_rows) == sum(map(len, recorded.values()))
        for event_id, event_type, blob in after["events"]:
            session_id = next(s for s, k in keys.items() if k == event_id >> 32)
            old = old_rows[(session_id, event_id & 0xFFFFFFFF)]
            assert blob == old[7].encode("utf-8")
            assert event_type == old[3]
        assert [row[1:] for row in sorted(after["sessions"])] == [
            row for s in old_order for row in before["sessions"] if row[0] == s
        ]
        assert store.sessions() == old_order
        for session_id, events in recorded.items():
            assert [event_line(e) for e in store.read(session_id)] == [
                event_line(e) for e in events
            ]
            assert verify_chain(store.read(session_id)).valid
        store.close()
        code, out = verify_cli(capsys, path)
        assert code == 0
        assert out.count("VALID") == len(recorded)

    def test_a_migrated_store_keeps_recording(self, tmp_path, recorded):
        """The runtime appends new sessions to a migrated store, listed after the old ones."""
        path = tmp_path / "old.db"
        make_old_store(path, recorded)
        with cra.Runtime([GITHUB_OPS], store=f"sqlite://{path}") as runtime:
            session = runtime.create_session("bot", "After the migration")
            runtime.resolve(cra.resolve_request(session))
            runtime.end_session(session.session_id)
        store = open_store(f"sqlite://{path}")
        assert store.sessions() == [*recorded, session.session_id]
        for session_id in store.sessions():
            assert verify_chain(store.read(session_id)).valid
        store.close()

    def test_reopening_is_idempotent(self, tmp_path, recorded):
        """Opening a migrated (or current) database again changes nothing."""
        path = tmp_path / "old.db"
        make_old_store(path, recorded)
        SqliteStore(path).close()
        migrated = dump(path)
        first, second = SqliteStore(path), SqliteStore(path)
        assert first.sessions() == second.sessions() == list(recorded)
        first.close()
        second.close()
        assert dump(path) == migrated

    def test_the_version_is_checked_again_under_the_write_lock(
        self, tmp_path, recorded, monkeypatch
    ):
        """A store that saw version 0 before another one migrated does not migrate again."""
        path = tmp_path / "old.db"
        make_old_store(path, recorded)
        SqliteStore(path).close()
        migrated = dump(path)
        seen: list[int] = []
        real = SqliteStore._user_version

        def stale_first(self: SqliteStore) -> int:
            version = real(self)
            seen.append(version)
            return 0 if len(seen) == 1 else version  # as read before the other one committed

        monkeypatch.setattr(SqliteStore, "_user_version", stale_first)
        store = SqliteStore(path)
        assert seen == [SCHEMA_VERSION, SCHEMA_VERSION]
        assert store.sessions() == list(recorded)
        store.close()
        assert dump(path) == migrated

    def test_two_processes_open_an_old_database_at_once(self, tmp_path, recorded):
        """Both processes open it; one migrates, the other waits and finds it done."""
        path = tmp_path / "old.db"
        many = {**recorded}
        for index in range(40):  # enough rows that the migration takes a while
            events = chain(100 + index, 200)
            many[events[0].session_id] = events
        make_old_store(path, many, batch=50)
        start = time.time() + 1.5
        code = (
            "import sys, time\n"
            "from cra_agents.trace import SqliteStore\n"
            f"while time.time() < {start}:\n"
            "    pass\n"
            "store = SqliteStore(sys.argv[1])\n"
            "print(sum(len(store.read(s)) for s in store.sessions()))\n"
            "store.close()\n"
        )
        children = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            for _ in range(2)
        ]
        outputs = [child.communicate(timeout=120) for child in children]
        total = sum(map(len, many.values()))
        for child, (out, err) in zip(children, outputs, strict=True):
            assert child.returncode == 0, err
            assert int(out) == total
        store = SqliteStore(path)
        assert store.sessions() == list(many)
        assert all(verify_chain(store.read(s)).valid for s in recorded)
        store.close()

    def test_a_utf16_database_keeps_utf8_event_bytes(self, tmp_path, recorded):
        """The event text of a UTF-16 database becomes the UTF-8 line it was written from."""
        path = tmp_path / "utf16.db"
        make_old_store(path, recorded, encoding="UTF-16le")
        store = SqliteStore(path)
        for session_id, events in recorded.items():
            assert [event_line(e) for e in store.read(session_id)] == [
                event_line(e) for e in events
            ]
        store.close()
        blobs = [row[2] for row in dump(path)["events"]]
        assert all(isinstance(b, bytes) and "✓".encode() in b for b in blobs[:1])

    def test_a_migration_that_would_lose_events_changes_nothing(self, tmp_path, recorded):
        """An event without a session row stops the migration; the old file stays as it was."""
        path = tmp_path / "old.db"
        make_old_store(path, recorded)
        with raw(path) as db:
            db.execute("DELETE FROM sessions WHERE session_id = ?", (next(iter(recorded)),))
        before = dump(path)
        with pytest.raises(cra.ConfigurationError, match="cannot be migrated") as caught:
            SqliteStore(path)
        assert caught.value.details == {"reason": "store_migration_failed"}
        assert dump(path) == before


class TestRefusals:
    def test_a_newer_version_is_refused_untouched(self, tmp_path):
        """A database of a later layout is refused with a stable reason, and left alone."""
        path = tmp_path / "future.db"
        with raw(path) as db:
            db.execute("CREATE TABLE events (anything)")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        before = path.read_bytes()
        with pytest.raises(cra.ConfigurationError, match="upgrade cra-agents") as caught:
            open_store(f"sqlite://{path}")
        assert caught.value.details == {"reason": "store_version_unsupported"}
        assert isinstance(caught.value, ValueError)
        assert path.read_bytes() == before
        assert not path.with_name("future.db-wal").exists()

    @pytest.mark.parametrize("content", [b"this is not sqlite" * 100, b"abc"])
    def test_a_file_that_is_not_sqlite(self, tmp_path, capsys, content):
        """Any other file is a configuration error naming the file, left as it was."""
        path = tmp_path / "t.db"
        path.write_bytes(content)
        with pytest.raises(cra.ConfigurationError, match="not a SQLite database") as caught:
            SqliteStore(path)
        assert caught.value.details == {"reason": "store_not_sqlite"}
        assert str(path) in str(caught.value)
        assert path.read_bytes() == content
        assert main(["trace", "show", "last", "--store", f"sqlite://{path}"]) == 2
        assert "not a SQLite database" in capsys.readouterr().err

    def test_other_tables_named_events_are_refused(self, tmp_path):
        """A version 0 database whose events table is not the first layout is not touched."""
        path = tmp_path / "other.db"
        with raw(path) as db:
            db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT)")
        before = dump(path)
        with pytest.raises(cra.ConfigurationError, match="not a cra-agents") as caught:
            SqliteStore(path)
        assert caught.value.details == {"reason": "store_layout_unknown"}
        assert dump(path) == before

    def test_an_empty_file_or_unrelated_tables_get_the_layout(self, tmp_path):
        """An empty file is an empty database; unrelated tables are kept beside the store's."""
        empty = tmp_path / "empty.db"
        empty.touch()
        SqliteStore(empty).close()
        assert dump(empty)["user_version"] == [(SCHEMA_VERSION,)]
        shared = tmp_path / "shared.db"
        with raw(shared) as db:
            db.execute("CREATE TABLE notes (text TEXT)")
            db.execute("INSERT INTO notes VALUES ('kept')")
        store = SqliteStore(shared)
        store.append(chain(1, 2))
        store.close()
        assert dump(shared)["notes"] == [("kept",)]


def test_two_processes_append_their_sessions_to_one_file(tmp_path):
    """Two processes appending one session each, a commit per batch, leave two whole chains."""
    path = tmp_path / "shared.db"
    start = time.time() + 1.5
    code = (
        "import sys, time\n"
        "from cra_agents.trace import SessionChain, SqliteStore\n"
        "index = int(sys.argv[2])\n"
        "chain = SessionChain(f'00000000-0000-7000-8000-{index:012d}', "
        "f'11111111-1111-7000-8000-{index:012d}')\n"
        f"while time.time() < {start}:\n"
        "    pass\n"
        "store = SqliteStore(sys.argv[1])\n"
        "for batch in range(300):\n"
        "    for _ in range(1 + batch % 5):\n"
        "        chain.append('policy.evaluated', {'batch': batch, 'from': index})\n"
        "    store.append(chain.flush())\n"
        "    store.sync()\n"
        "store.close()\n"
        "print(len(chain))\n"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path), str(index)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for index in (1, 2)
    ]
    outputs = [child.communicate(timeout=120) for child in children]
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    store = SqliteStore(path)
    assert len(store.sessions()) == 2
    for (out, _), index in zip(outputs, (1, 2), strict=True):
        session_id = f"00000000-0000-7000-8000-{index:012d}"
        events = store.read(session_id)
        assert len(events) == int(out) == sum(1 + b % 5 for b in range(300))
        assert [e.sequence for e in events] == list(range(len(events)))
        assert {e.payload["from"] for e in events} == {index}
        assert verify_chain(events).valid
        assert store.last_sequence(session_id) == len(events) - 1
    store.close()


OPENER = """
import sys, time
from cra_agents.trace import SqliteStore
start = float(sys.argv[2])
while time.time() < start:
    pass
SqliteStore(sys.argv[1]).close()
"""


def test_processes_opening_a_new_store_together_all_get_it(tmp_path):
    """Setting up WAL on a new file is retried while another process holds it (it used to
    fail at once with "database is locked": 8 to 22 of 90 opens)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_ in range(5):
        path = tmp_path / f"new-{round_}.db"
        start = time.time() + 0.6
        openers = [
            subprocess.Popen(
                [sys.executable, "-c", OPENER, str(path), str(start)],
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(3)
        ]
        for opener in openers:
            _, err = opener.communicate(timeout=60)
            assert opener.returncode == 0, err
