"""The SQLite store's layout and its versions."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import cra_agents as cra
from cra_agents.cli import main
from cra_agents.protocol import TraceEvent
from cra_agents.trace import MemoryStore, SessionChain, SqliteStore, open_store, verify_chain
from cra_agents.trace._jsonl import event_line
from cra_agents.trace._sqlite import SCHEMA_VERSION

GITHUB_OPS = Path(__file__).resolve().parents[1] / "examples" / "atlases" / "github-ops"
ROOT = Path(__file__).resolve().parents[1]


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
        """A version 0 database with an events table of another layout is not touched."""
        path = tmp_path / "other.db"
        with raw(path) as db:
            db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT)")
        before = dump(path)
        with pytest.raises(cra.ConfigurationError, match="another layout") as caught:
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
    store = SqliteStore(path)
    assert len(store.sessions()) == 2
    for child, (out, err), index in zip(children, outputs, (1, 2), strict=True):
        assert child.returncode == 0, err
        session_id = f"00000000-0000-7000-8000-{index:012d}"
        events = store.read(session_id)
        assert len(events) == int(out) == sum(1 + b % 5 for b in range(300))
        assert [e.sequence for e in events] == list(range(len(events)))
        assert {e.payload["from"] for e in events} == {index}
        assert verify_chain(events).valid
        assert store.last_sequence(session_id) == len(events) - 1
    store.close()
