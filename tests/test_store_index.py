"""Index columns and file names outside the hash never decide what readers see: filters are
answered from the hashed events, and an index that disagrees with them is tampering."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import cra_agents as cra
from cra_agents.cli import main
from cra_agents.protocol import events as ev
from cra_agents.trace import JsonlStore, SqliteStore, verify_store


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out else captured.err


def record(runtime: cra.Runtime, agent: str) -> str:
    """A session with an allowed call and a denied one."""
    session = runtime.create_session(agent, "Triage new issues")
    sid = session.session_id
    runtime.resolve(cra.resolve_request(session))
    runtime.record_outcome(
        runtime.authorize(sid, "github.issue.create", {"repo": "a/b", "title": "Bug"}),
        result={"number": 7},
    )
    with pytest.raises(cra.ActionDenied):
        runtime.authorize(sid, "github.repo.delete", {"repo": "a/b", "confirm_name": "a/b"})
    runtime.end_session(sid)
    return sid


@pytest.fixture
def sqlite_store(tmp_path: Path, github_ops: Path) -> tuple[Path, list[str]]:
    path = tmp_path / "t.db"
    with cra.Runtime([github_ops], store=f"sqlite://{path}") as runtime:
        ids = [record(runtime, "bot-a"), record(runtime, "bot-b")]
    return path, ids


def _key(path: Path, sid: str) -> int:
    with sqlite3.connect(path) as db:
        (key,) = db.execute(
            "SELECT session_key FROM sessions WHERE session_id = ?", (sid,)
        ).fetchone()
    return int(key)


def _tamper(path: Path, sql: str, *args: Any) -> None:
    with sqlite3.connect(path) as db:
        db.execute(sql, args)


class TestSqliteColumns:
    def test_relabelled_type_column_never_hides_an_event(self, sqlite_store):
        """Relabelling a denial's ``event_type`` column does not make filters miss it: every
        read refuses the store instead of answering from the column."""
        path, (sid, _) = sqlite_store
        before = SqliteStore(path).read(sid, event_type=ev.ACTION_DENIED)
        assert len(before) == 1
        _tamper(
            path,
            "UPDATE events SET event_type = 'policy.evaluated' WHERE event_type = ?",
            ev.ACTION_DENIED,
        )
        store = SqliteStore(path)
        with pytest.raises(cra.TraceError) as info:
            store.read(sid, event_type=ev.ACTION_DENIED)
        assert info.value.code == "TRACE_INDEX_MISMATCH"
        with cra.Runtime(store=store) as runtime, pytest.raises(cra.TraceError):
            runtime.trace_events(sid, event_type=ev.ACTION_DENIED)
        print(f"\nsqlite event_type relabelled: read refused ({info.value.code}), 0 denials hidden")
        store.close()

    def test_verifier_reports_a_relabelled_type_column(self, capsys, sqlite_store):
        """``verify --all`` and ``verify_store`` report the column as ``index_mismatch``."""
        path, (sid, other) = sqlite_store
        _tamper(
            path,
            "UPDATE events SET event_type = 'policy.evaluated' WHERE event_type = ?",
            ev.ACTION_DENIED,
        )
        code, document = run_json(capsys, "trace", "verify", "--all", "--store", f"sqlite://{path}")
        assert code == 1
        verdicts = {t["target"]: t["error_type"] for t in document["traces"]}
        assert verdicts == {sid: "index_mismatch", other: "index_mismatch"}
        store = SqliteStore(path)
        results = verify_store(store)
        store.close()
        assert [r.error_type for r in results] == ["index_mismatch", "index_mismatch"]

    def test_renamed_session_row_is_not_read_as_another_session(self, capsys, sqlite_store):
        """Pointing another session id at a session's events is refused by every reader."""
        path, (sid, other) = sqlite_store
        _tamper(path, "UPDATE sessions SET session_id = 'renamed' WHERE session_id = ?", sid)
        store = SqliteStore(path)
        with pytest.raises(cra.TraceError) as info:
            store.read("renamed")
        assert info.value.code == "TRACE_INDEX_MISMATCH"
        with pytest.raises(cra.TraceError):
            store.last_sequence("renamed")
        store.close()
        url = f"sqlite://{path}"
        code, document = run_json(capsys, "trace", "verify", "--all", "--store", url)
        assert code == 1
        verdicts = {t["target"]: (t["valid"], t["error_type"]) for t in document["traces"]}
        with capsys.disabled():
            print(f"\nsqlite session row renamed: verify --all -> {verdicts}")
        assert verdicts == {"renamed": (False, "index_mismatch"), other: (True, None)}
        for argv in (["show", "renamed"], ["tail", "renamed"], ["list"]):
            code, err = run_json(capsys, "trace", *argv, "--store", url)
            assert code == 2, argv
            assert "TRACE_INDEX_MISMATCH" in str(err)

    def test_moved_row_is_not_read_as_a_later_event(self, sqlite_store):
        """An event moved to another sequence (its rowid) is refused, not followed."""
        path, (sid, _) = sqlite_store
        key = _key(path, sid)
        store = SqliteStore(path)
        last = store.last_sequence(sid)
        store.close()
        _tamper(path, "UPDATE events SET id = ? WHERE id = ?", (key << 32) + 500, (key << 32) + 2)
        store = SqliteStore(path)
        with pytest.raises(cra.TraceError, match="sequence"):
            store.last_sequence(sid)
        with pytest.raises(cra.TraceError, match="sequence"):
            store.read(sid, since_sequence=last)
        store.close()

    def test_clean_store_reads_as_before(self, sqlite_store):
        """No index problem on an untouched store: filters, limits and verify agree."""
        path, (sid, _) = sqlite_store
        store = SqliteStore(path)
        everything = store.read(sid)
        assert store.read(sid, since_sequence=2, limit=2) == everything[3:5]
        assert store.read(sid, event_type=ev.SESSION_ENDED) == everything[-1:]
        assert store.last_sequence(sid) == everything[-1].sequence
        assert all(r.valid for r in verify_store(store))
        store.close()

    def test_session_row_without_events(self, capsys, sqlite_store):
        """A session whose rows were all deleted reads empty and does not verify."""
        path, (sid, _) = sqlite_store
        _tamper(path, "DELETE FROM events WHERE id >> 32 = ?", _key(path, sid))
        store = SqliteStore(path)
        assert (store.read(sid), store.last_sequence(sid)) == ([], -1)
        store.close()
        code, document = run_json(capsys, "trace", "verify", "--all", "--store", f"sqlite://{path}")
        assert code == 1
        assert document["traces"][0]["error_type"] == "empty_trace"


class TestJsonlFileNames:
    def test_renamed_file_is_not_read_as_another_session(self, capsys, tmp_path, github_ops):
        """A file renamed to another session id does not pass as that session."""
        directory = tmp_path / "j"
        with cra.Runtime([github_ops], store=f"jsonl://{directory}") as runtime:
            sid, other = record(runtime, "bot-a"), record(runtime, "bot-b")
        (directory / f"{sid}.trace.jsonl").rename(directory / "renamed.trace.jsonl")
        store = JsonlStore(directory)
        with pytest.raises(cra.TraceError) as info:
            store.read("renamed")
        assert info.value.code == "TRACE_INDEX_MISMATCH"
        with pytest.raises(cra.TraceError):
            store.last_sequence("renamed")
        code, document = run_json(
            capsys, "trace", "verify", "--all", "--store", f"jsonl://{directory}"
        )
        verdicts = {t["target"]: (t["valid"], t["error_type"]) for t in document["traces"]}
        with capsys.disabled():
            print(f"\njsonl file renamed: verify --all -> {verdicts}")
        assert code == 1
        assert verdicts == {"renamed": (False, "index_mismatch"), other: (True, None)}
        # The file itself, verified by path, is the session its events name.
        code, document = run_json(capsys, "trace", "verify", str(directory / "renamed.trace.jsonl"))
        assert code == 0
        assert document["traces"][0]["log_id"] == sid
