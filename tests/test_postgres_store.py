"""The PostgreSQL trace store on a real server: contract, migrations, locking, faults, CLI.

Every test gets a new database (``pg_url``, see tests/harness/postgres.py); the fault tests
stop and restart a cluster of their own (``pg_cluster``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import cra_agents as cra
from cra_agents._canonical import canonical_json
from cra_agents.cli import main
from cra_agents.examples import atlas_path
from cra_agents.protocol import TraceEvent
from cra_agents.trace import (
    Durability,
    IngestResult,
    JsonlStore,
    PostgresStore,
    SessionChain,
    SqliteStore,
    open_store,
    redact_store_url,
    verify_chain,
    verify_store,
    writer_url,
)
from cra_agents.trace._chain import seal
from cra_agents.trace._postgres import SCHEMA_VERSION
from tests.harness.postgres import Cluster, Server, with_database
from tests.harness.processes import run_bounded

GITHUB_OPS = atlas_path("github-ops")
SESSION = "00000000-0000-7000-8000-000000000001"
TRACE = "00000000-0000-7000-8000-000000000002"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(pg_url)
    yield opened
    opened.close()


def chained(count: int, session_id: str = SESSION, payload_pad: int = 0) -> list[TraceEvent]:
    """``count`` hashed events of one session, from sequence 0."""
    chain = SessionChain(session_id, TRACE)
    for index in range(count):
        chain.append("policy.evaluated", {"i": index, "pad": "x" * payload_pad})
    return chain.flush()


def following(sequence: int, head: str, count: int = 1, session_id: str = SESSION) -> list[Any]:
    """``count`` hashed events continuing a chain whose head is ``(sequence, head)``."""
    out: list[Any] = []
    batch = [("action.executed", canonical_json({"n": sequence + 1 + i})) for i in range(count)]
    seal(session_id, TRACE, head, None, [(sequence + 1, time.time_ns(), batch)], out)
    return out


def sql(url: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on ``url`` (autocommit), behind the store's back."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, args or None)
        return cursor.fetchall() if cursor.description else []


def workload(runtime: cra.Runtime, sessions: int = 2) -> list[str]:
    ids = []
    for index in range(sessions):
        session = runtime.create_session(f"bot-{index}", "Triage new bug reports")
        resolution = runtime.resolve(cra.resolve_request(session))
        runtime.execute(
            cra.execute_request(
                session, resolution.resolution_id, "github.issue.list", {"repo": "acme/app"}
            )
        )
        runtime.end_session(session.session_id)
        ids.append(session.session_id)
    return ids


class TestContract:
    def test_urls_open_a_postgres_store(self, pg_url: str) -> None:
        """postgresql:// and postgres:// URLs open the store; the runtime writes it in a thread."""
        for url in (pg_url, pg_url.replace("postgresql://", "postgres://", 1)):
            opened = open_store(url, writable=True)
            assert isinstance(opened, PostgresStore)
            assert isinstance(opened, cra.TraceStore)
            assert writer_url(opened) is None
            with pytest.raises(cra.ConfigurationError, match="in a thread"):
                writer_url(opened, "process")
            opened.close()
            opened.close()  # idempotent

    def test_append_read_query_last_sequence(self, store: PostgresStore) -> None:
        """Reads by session, type, sequence range and limit, from the hashed events."""
        assert store.sessions() == []
        assert store.read(SESSION) == []
        assert store.last_sequence(SESSION) == -1
        events = chained(30)
        store.append([])
        store.append(events[:10])
        store.append(events[10:])  # two appends of one batch: one transaction
        store.sync()
        assert store.sessions() == [SESSION]
        assert store.read(SESSION) == events
        assert store.last_sequence(SESSION) == 29
        assert [e.sequence for e in store.read(SESSION, since_sequence=3, limit=4)] == [4, 5, 6, 7]
        assert store.read(SESSION, event_type="session.started") == []
        typed = store.read(SESSION, event_type="policy.evaluated", limit=3, since_sequence=20)
        assert [e.sequence for e in typed] == [21, 22, 23]
        assert store.read(SESSION, limit=0) == []
        assert [e.sequence for e in store.iter_events(SESSION, batch=7)] == list(range(30))
        assert verify_chain(store.read(SESSION)).valid

    def test_sessions_oldest_first_and_reopened(self, pg_url: str) -> None:
        """Sessions list oldest first; a new store object reads what another committed."""
        ids = [f"00000000-0000-7000-8000-00000000000{i}" for i in range(1, 4)]
        first = PostgresStore(pg_url)
        for session_id in ids:
            first.append(chained(3, session_id))
        first.sync()
        first.close()
        with pytest.raises(ValueError, match="closed"):
            first.append(chained(1))
        with pytest.raises(ValueError, match="closed"):
            first.read(SESSION)
        second = PostgresStore(pg_url)
        assert second.sessions() == ids
        assert all(len(second.read(i)) == 3 for i in ids)
        second.close()

    def test_uncommitted_batch_is_invisible_and_a_failed_one_leaves_nothing(
        self, store: PostgresStore
    ) -> None:
        """Readers see committed batches only; a batch that fails is rolled back whole."""
        events = chained(6)
        store.append(events[:3])
        assert store.read(SESSION) == []  # the reading connection sees commits only
        store.sync()
        store.append(events[3:5])
        with pytest.raises(cra.TraceError) as caught:
            store.append(events[4:])  # sequence 4 again: not the head's successor
        assert caught.value.code == "TRACE_CHAIN_CONFLICT"
        assert caught.value.details["reason"] == "gap"
        store.sync()
        assert [e.sequence for e in store.read(SESSION)] == [0, 1, 2]
        store.append(events[3:])
        store.sync()
        assert store.read(SESSION) == events

    def test_a_writer_that_does_not_continue_the_head_is_refused(
        self, store: PostgresStore
    ) -> None:
        """A fork (right sequence, wrong link) or a gap is an error, never stored."""
        events = chained(3)
        store.append(events)
        store.sync()
        fork = following(2, "f" * 64)
        with pytest.raises(cra.TraceError) as caught:
            store.append(fork)
        assert caught.value.details["reason"] == "link"
        with pytest.raises(cra.TraceError) as caught:
            store.append(following(3, events[-1].event_hash))
        assert caught.value.details["reason"] == "gap"
        with pytest.raises(cra.TraceError) as caught:
            store.append(chained(2, "00000000-0000-7000-8000-000000000009")[1:])
        assert caught.value.details["reason"] == "gap"  # a new session starts at 0
        assert store.read(SESSION) == events
        assert store.sessions() == [SESSION]

    def test_event_id_reused_is_a_conflict(self, store: PostgresStore) -> None:
        """An event id stored already (in another session) is refused: ids are unique."""
        events = chained(2)
        store.append(events)
        store.sync()
        other = chained(1, "00000000-0000-7000-8000-000000000005")[0]
        reused = TraceEvent.model_validate({**other.model_dump(), "event_id": events[0].event_id})
        with pytest.raises(cra.TraceError) as caught:
            store.append([reused])
        assert caught.value.details["reason"] == "event_id_reused"
        assert store.sessions() == [SESSION]

    def test_durable_off_and_schema_option(self, pg_url: str) -> None:
        """durable=False sets synchronous_commit=off; ?schema= keeps the tables apart."""
        fast = PostgresStore(f"{pg_url}?schema=traces_a", durable=False)
        fast.append(chained(2))
        fast.sync()
        assert fast._c.writer is not None
        setting = fast._c.writer.execute("SHOW synchronous_commit").fetchone()
        assert setting == ("off",)
        other = PostgresStore(f"{pg_url}?schema=traces_b")
        assert other.sessions() == []
        assert fast.sessions() == [SESSION]
        tables = sql(
            pg_url,
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'cra_events' "
            "ORDER BY 1",
        )
        assert tables == [("traces_a",), ("traces_b",)]
        fast.close()
        other.close()

    def test_bad_urls_and_unreachable_servers(self, pg_server: Server) -> None:
        """Refused with a ConfigurationError that names the problem and never the password."""
        with pytest.raises(cra.ConfigurationError, match="plain SQL name") as caught:
            open_store("postgresql://u:s3cret@127.0.0.1/db?schema=x;drop")
        assert "s3cret" not in str(caught.value)
        for bad in (
            "postgresql://u:s3cret@127.0.0.1/db?nosuchparam=1",
            "postgresql://u:s3cret@[::1/db",
            "postgresql://h/db?password=s3cret&nosuchparam=1",
        ):
            with pytest.raises(cra.ConfigurationError, match="not a PostgreSQL URL") as caught:
                open_store(bad)
            assert caught.value.details["reason"] == "store_url_invalid"
            assert "s3cret" not in str(caught.value)
        free = with_database(pg_server.dsn, "postgres").rsplit("@", 1)[1].split("/")[0]
        host = free.rsplit(":", 1)[0]
        url = f"postgresql://cra:s3cret@{host}:1/traces?connect_timeout=2"
        with pytest.raises(cra.ConfigurationError) as caught:
            cra.Runtime([GITHUB_OPS], store=url)
        assert caught.value.details["reason"] == "store_not_openable"
        assert "s3cret" not in str(caught.value)
        assert "s3cret" not in repr(caught.value.details)
        assert "cra:***@" in str(caught.value)

    def test_redact_store_url(self) -> None:
        """Passwords in the user info or the query are replaced, the rest kept."""
        assert redact_store_url("postgresql://u:pw@h:5/d?x=1") == "postgresql://u:***@h:5/d?x=1"
        assert redact_store_url("postgresql://u@h/d") == "postgresql://u@h/d"
        assert redact_store_url("postgresql://h/d?password=pw&a=b") == (
            "postgresql://h/d?password=***&a=b"
        )
        assert "pw" not in redact_store_url("postgresql://u:pw@[::1/d")  # malformed: still hidden

    def test_password_login(self, pg_cluster: Cluster) -> None:
        """With password authentication: the right one logs in, a wrong one is not shown."""
        admin = Server(pg_cluster.dsn)
        url = admin.create_database()
        sql(url, "CREATE ROLE cra_pw LOGIN PASSWORD 'Right-pw1'")
        hba = pg_cluster.data / "pg_hba.conf"
        hba.write_text(
            "host all cra_pw 127.0.0.1/32 scram-sha-256\n" + hba.read_text(encoding="utf-8"),
            encoding="utf-8",
        )
        pg_cluster.reload()
        sql(url, "GRANT CREATE ON SCHEMA public TO cra_pw")
        good = url.replace("postgresql://postgres@", "postgresql://cra_pw:Right-pw1@", 1)
        opened = open_store(good, writable=True)
        assert isinstance(opened, PostgresStore)
        assert "Right-pw1" not in opened.url
        opened.close()
        bad = good.replace("Right-pw1", "wr0ngpass")
        with pytest.raises(cra.ConfigurationError, match="password authentication") as caught:
            open_store(bad)
        assert "wr0ngpass" not in str(caught.value)
        assert "wr0ngpass" not in repr(caught.value.details)
        assert caught.value.__cause__ is None

    def test_read_only_database_is_refused_at_configure_time(self, pg_url: str) -> None:
        """A database that cannot be written is refused when the runtime is configured."""
        PostgresStore(pg_url).close()  # the tables exist
        name = pg_url.rsplit("/", 1)[1]
        sql(pg_url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        with pytest.raises(cra.ConfigurationError) as caught:
            cra.Runtime([GITHUB_OPS], store=pg_url)
        assert caught.value.details["reason"] == "store_not_writable"
        reader = open_store(pg_url)  # reading it is fine
        assert reader.sessions() == []
        reader.close()


class TestMigrations:
    def test_fresh_then_idempotent(self, pg_url: str) -> None:
        """A new database gets the layout once; opening again changes nothing."""
        PostgresStore(pg_url).close()
        applied = sql(pg_url, "SELECT version FROM cra_schema_migrations")
        assert applied == [(SCHEMA_VERSION,)]
        store = PostgresStore(pg_url)
        store.append(chained(2))
        store.close()
        PostgresStore(pg_url).close()
        assert sql(pg_url, "SELECT version FROM cra_schema_migrations") == applied
        assert sql(pg_url, "SELECT count(*) FROM cra_events") == [(2,)]

    def test_concurrent_openers(self, pg_url: str) -> None:
        """Eight stores opening a new database at once: one creates it, none fails."""
        errors: list[BaseException] = []
        stores: list[PostgresStore] = []
        barrier = threading.Barrier(8)

        def open_one() -> None:
            barrier.wait()
            try:
                stores.append(PostgresStore(pg_url))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=open_one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert len(stores) == 8
        assert sql(pg_url, "SELECT version FROM cra_schema_migrations") == [(SCHEMA_VERSION,)]
        for opened in stores:
            opened.close()

    def test_newer_version_refused(self, pg_url: str) -> None:
        """A database migrated by a newer cra-agents is refused, and left alone."""
        PostgresStore(pg_url).close()
        sql(pg_url, "INSERT INTO cra_schema_migrations (version) VALUES (%s)", SCHEMA_VERSION + 1)
        with pytest.raises(cra.ConfigurationError, match="upgrade cra-agents") as caught:
            PostgresStore(pg_url)
        assert caught.value.details["reason"] == "store_version_unsupported"

    def test_foreign_tables_refused(self, pg_url: str) -> None:
        """Tables named like ours but not made by us are not taken over."""
        sql(pg_url, "CREATE TABLE cra_events (x int)")
        with pytest.raises(cra.ConfigurationError) as caught:
            PostgresStore(pg_url)
        assert caught.value.details["reason"] == "store_layout_unknown"
        assert sql(pg_url, "SELECT to_regclass('cra_schema_migrations') IS NULL") == [(True,)]

    def test_user_without_create_rights(self, pg_url: str) -> None:
        """A user who may not create the tables gets a clear error at open."""
        sql(pg_url, "CREATE ROLE cra_ro LOGIN")
        sql(pg_url, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        url = pg_url.replace("postgresql://postgres@", "postgresql://cra_ro@", 1)
        with pytest.raises(cra.ConfigurationError, match="create tables") as caught:
            PostgresStore(url)
        assert caught.value.details["reason"] == "store_not_openable"


class TestIndexAndTamper:
    def test_changed_type_column_is_refused(self, store: PostgresStore, pg_url: str) -> None:
        """A type or sequence column that disagrees with the hashed event: TRACE_INDEX_MISMATCH."""
        store.append(chained(5))
        store.sync()
        sql(pg_url, "UPDATE cra_events SET event_type = 'action.approved' WHERE sequence = 2")
        with pytest.raises(cra.TraceError) as caught:
            store.read(SESSION)
        assert caught.value.code == "TRACE_INDEX_MISMATCH"
        (result,) = verify_store(store)
        assert not result.valid
        assert result.error_type == "index_mismatch"
        assert result.first_invalid_index == 2
        sql(pg_url, "UPDATE cra_events SET event_type = 'policy.evaluated'")
        sql(pg_url, "UPDATE cra_events SET sequence = 9 WHERE sequence = 4")
        with pytest.raises(cra.TraceError, match="sequence"):
            store.last_sequence(SESSION)

    def test_changed_event_text_fails_verification(self, store: PostgresStore, pg_url: str) -> None:
        """Editing the stored event bytes breaks its hash: verify reports hash_mismatch."""
        store.append(chained(5))
        store.sync()
        sql(
            pg_url,
            "UPDATE cra_events SET event = convert_to(replace(convert_from(event, 'UTF8'), "
            "'\"i\":3', '\"i\":4'), 'UTF8') WHERE sequence = 3",
        )
        (result,) = verify_store(store)
        assert not result.valid
        assert result.error_type == "hash_mismatch"
        assert result.first_invalid_index == 3

    def test_streaming_verify_memory_is_bounded(self, store: PostgresStore) -> None:
        """Verifying 50,000 events streams them: the peak stays far below the session's size."""
        events = chained(50_000)
        for start in range(0, len(events), 5000):
            store.append(events[start : start + 5000])
        store.sync()
        size = sum(len(e.model_dump_json()) for e in events[:1000]) * 50
        del events
        tracemalloc.start()
        try:
            (result,) = verify_store(store)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result.valid
        assert result.event_count == 50_000
        print(
            f"verify 50k events: peak {peak / 2**20:.1f} MiB, stored lines {size / 2**20:.1f} MiB"
        )
        assert peak < 8 * 2**20  # the whole session parsed would take over 100 MiB


class TestConcurrentAppenders:
    def test_eight_connections_one_chain(self, pg_url: str) -> None:
        """8 connections append 40 events each to one chain: no gap, no duplicate, no error."""
        stores = [PostgresStore(pg_url) for _ in range(8)]
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def append_many(opened: PostgresStore) -> None:
            barrier.wait()
            try:
                for _ in range(40):
                    opened.append_next(SESSION, lambda seq, head: following(seq, head))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=append_many, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        events = stores[0].read(SESSION)
        assert [e.sequence for e in events] == list(range(320))
        assert len({e.event_id for e in events}) == 320
        assert verify_chain(events).valid
        (count,) = sql(pg_url, "SELECT count(*), count(DISTINCT sequence) FROM cra_events")
        assert count == (320, 320)
        print(f"8 appenders: retried {sum(s.retried for s in stores)} conflicts")
        for opened in stores:
            opened.close()

    def test_a_racing_first_append_is_retried_not_surfaced(self, pg_url: str) -> None:
        """Two writers create one session: the loser's unique violation is absorbed."""
        first, second = PostgresStore(pg_url), PostgresStore(pg_url)
        events = chained(2)
        first.append(events)  # holds the new session's row, uncommitted
        done: list[list[Any]] = []
        racer = threading.Thread(
            target=lambda: done.append(
                second.append_next(SESSION, lambda seq, head: following(seq, head, 2))
            )
        )
        racer.start()
        time.sleep(0.5)  # the racer waits on the row's unique key
        assert done == []
        first.sync()
        racer.join(30)
        assert [e.sequence for e in done[0]] == [2, 3]
        assert second.retried >= 1
        assert verify_chain(first.read(SESSION)).valid
        assert second.append_next(SESSION, lambda seq, head: []) == []
        first.close()
        second.close()

    def test_a_writer_that_skips_the_lock_is_met_by_the_key(
        self, store: PostgresStore, pg_url: str
    ) -> None:
        """A row written behind the store at the next sequence: the primary key refuses the
        store's own insert; append reports a fork, append_next retries and then gives up."""
        events = chained(2)
        store.append(events)
        store.sync()
        intruder = following(1, events[-1].event_hash)[0]
        sql(
            pg_url,
            "INSERT INTO cra_events SELECT session_key, 2, 'x', 'policy.evaluated', '{}' "
            "FROM cra_sessions",
        )
        with pytest.raises(cra.ChainConflictError) as caught:
            store.append([intruder])
        assert caught.value.details["reason"] == "fork"
        calls: list[int] = []

        def make(sequence: int, head: str) -> list[Any]:
            calls.append(sequence)
            return following(sequence, head)

        with pytest.raises(cra.TraceError) as failed:
            store.append_next(SESSION, make)
        assert failed.value.details["reason"] == "retries_exhausted"
        assert not isinstance(failed.value, psycopg.Error)
        assert len(calls) == 50  # every attempt retried after its unique violation
        assert store.retried == 50

    def test_append_next_commits_an_open_batch_first(self, store: PostgresStore) -> None:
        """What append() left uncommitted is committed before append_next's own transaction."""
        events = chained(2)
        store.append(events)
        (added,) = store.append_next(SESSION, lambda seq, head: following(seq, head))
        assert added.sequence == 2
        assert [e.sequence for e in store.read(SESSION)] == [0, 1, 2]

    def test_append_next_checks_what_make_returns(self, store: PostgresStore) -> None:
        """make() must build the given session's continuation."""
        store.append_next(SESSION, lambda seq, head: following(seq, head))
        other = "00000000-0000-7000-8000-000000000007"
        with pytest.raises(ValueError, match="another session"):
            store.append_next(SESSION, lambda seq, head: following(seq, head, session_id=other))
        with pytest.raises(cra.TraceError) as caught:
            store.append_next(SESSION, lambda seq, head: following(seq + 1, head))
        assert caught.value.details["reason"] == "gap"
        assert len(store.read(SESSION)) == 1
        assert store.append_next(other, lambda seq, head: []) == []


class TestRuntimeAndCli:
    def test_cross_sink_agreement(self, pg_url: str, tmp_path: Path) -> None:
        """T3: one event stream in JSONL, SQLite and PostgreSQL: same (size, head), all verify."""
        sinks: dict[str, Any] = {
            "jsonl": JsonlStore(tmp_path / "j"),
            "sqlite": SqliteStore(tmp_path / "t.db"),
            "postgres": PostgresStore(pg_url),
        }
        with cra.Runtime([GITHUB_OPS], store="memory://") as runtime:
            ids = workload(runtime, 3)
            streams = [runtime.trace_events(i) for i in ids]
        for sink in sinks.values():
            for events in streams:
                sink.append(events)
            sink.sync()
        heads = {
            name: [(r.event_count, r.last_valid_hash, r.valid) for r in verify_store(sink)]
            for name, sink in sinks.items()
        }
        assert heads["jsonl"] == heads["sqlite"] == heads["postgres"]
        assert all(valid for _, _, valid in heads["postgres"])
        assert [sinks["postgres"].read(i) for i in ids] == streams
        for sink in sinks.values():
            sink.close()

    @pytest.mark.parametrize("durability", ["async", "group", "sync"])
    def test_runtime_round_trip(self, pg_url: str, durability: Durability) -> None:
        """Runtime(store=postgresql://...) records calls that read back and verify."""
        with cra.Runtime([GITHUB_OPS], store=pg_url, durability=durability) as runtime:
            session = runtime.create_session("bot", "Triage")
            runtime.resolve(cra.resolve_request(session))
            with runtime.call(
                "list_issues",
                {"repo": "acme/app"},
                action_id="github.issue.list",
                session_id=session.session_id,
            ) as call:
                call.result = {"issues": []}
            runtime.end_session(session.session_id)
            assert runtime.verify(session.session_id).valid
        reader = open_store(pg_url)
        types = [e.event_type for e in reader.read(session.session_id)]
        assert "action.executed" in types
        assert types[-1] == "session.ended"
        reader.close()

    def test_configure_and_env_take_the_url(
        self, pg_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """cra.configure(store=...) and CRA_AGENTS_STORE accept a postgresql:// URL."""
        runtime = cra.configure([GITHUB_OPS], store=pg_url)
        try:
            assert isinstance(runtime.store, PostgresStore)
        finally:
            runtime.close()
        monkeypatch.setenv("CRA_AGENTS_STORE", pg_url)
        from_env = open_store(None)
        assert isinstance(from_env, PostgresStore)
        from_env.close()

    def test_cli_list_show_verify(
        self, pg_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """cra trace list / show / tail / export / verify --store postgresql://... and doctor."""
        with cra.Runtime([GITHUB_OPS], store=pg_url) as runtime:
            ids = workload(runtime, 2)
        assert main(["trace", "list", "--store", pg_url, "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [row["session_id"] for row in listed["sessions"]] == ids
        assert listed["store"] == pg_url  # no password in it to hide
        assert main(["doctor", "--store", pg_url, "--json"]) in (0, 1)
        doctor = capsys.readouterr().out
        assert "2 sessions" in doctor
        unreachable = "postgresql://cra:s3cret@127.0.0.1:1/x?connect_timeout=2"
        assert main(["doctor", "--store", unreachable, "--json"]) == 1
        doctor = capsys.readouterr().out
        assert "cra:***@127.0.0.1:1" in doctor
        assert "s3cret" not in doctor
        assert main(["trace", "verify", "--all", "--store", pg_url, "--json"]) == 0
        verdicts = json.loads(capsys.readouterr().out)
        assert [v["valid"] for v in verdicts["traces"]] == [True, True]
        assert main(["trace", "show", ids[0], "--store", pg_url]) == 0
        assert "chain VALID" in capsys.readouterr().out
        assert main(["trace", "tail", ids[1], "-n", "3", "--store", pg_url, "--json"]) == 0
        tail = capsys.readouterr().out
        assert "session.ended" in tail
        exported = tmp_path / "all.jsonl"
        assert main(["trace", "export", "--all", "-o", str(exported), "--store", pg_url]) == 0
        capsys.readouterr()
        assert main(["trace", "verify", str(exported), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["valid"] is True
        sql(pg_url, "UPDATE cra_events SET event_type = 'session.ended' WHERE sequence = 1")
        assert main(["trace", "verify", "--all", "--store", pg_url, "--json"]) == 1
        verdicts = json.loads(capsys.readouterr().out)
        assert {v["error_type"] for v in verdicts["traces"]} == {"index_mismatch"}

    def test_cli_process_hides_the_password(self, pg_url: str) -> None:
        """The real ``cra`` on a server it cannot reach: an error without the password."""
        with cra.Runtime([GITHUB_OPS], store=pg_url) as runtime:
            workload(runtime, 1)
        cra_bin = str(Path(sys.executable).parent / "cra")
        env = {**os.environ, "NO_COLOR": "1"}
        done = run_bounded(
            [cra_bin, "trace", "verify", "--all", "--store", pg_url], timeout=60, env=env
        )
        assert done.returncode == 0, done.stderr
        bad = "postgresql://cra:s3cret@127.0.0.1:1/x?connect_timeout=2"
        done = run_bounded([cra_bin, "trace", "list", "--store", bad], timeout=60, env=env)
        assert done.returncode != 0
        assert "s3cret" not in done.stdout + done.stderr
        assert "cra:***@" in done.stderr


class TestServe:
    def test_cra_serve_records_into_postgres(self, pg_url: str, github_ops: Path) -> None:
        """``cra serve --store postgresql://...``: sessions made over HTTP are in the database."""
        import httpx

        key = "serve-key-0123456789abcdef"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "CRA_API_KEYS": f"ops:{key}"}
        env.pop("CRA_AGENTS_STORE", None)
        argv = [sys.executable, "-m", "cra_agents.cli", "serve", "--atlas", str(github_ops)]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--store", pg_url]
        process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "cra serve did not become healthy"
                try:
                    if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            made = httpx.post(
                url + "/v1/sessions",
                json={"agent_id": "bot", "goal": "over HTTP"},
                headers={"X-API-Key": key},
                timeout=10,
            )
            assert made.status_code == 201, made.text
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        reader = open_store(pg_url)
        events = reader.read(made.json()["session_id"])
        assert [e.event_type for e in events] == ["session.started"]
        reader.close()


class TestServerStopped:
    @pytest.mark.parametrize("durability", ["group", "sync"])
    def test_runtime_fails_closed_then_a_new_one_resumes(
        self, pg_cluster: Cluster, durability: Durability
    ) -> None:
        """D3: the server stops mid-run: 0 executions while down; after restart, no gaps."""
        url = Server(pg_cluster.dsn).create_database()
        runtime = cra.Runtime([GITHUB_OPS], store=url, durability=durability)
        session = runtime.create_session("bot", "Triage").session_id
        executed = 0

        def call() -> None:
            nonlocal executed
            with runtime.call(
                "list_issues",
                {"repo": "acme/app"},
                action_id="github.issue.list",
                session_id=session,
            ) as handle:
                executed += 1
                handle.result = {"issues": []}

        call()
        assert executed == 1
        pg_cluster.stop()
        for _ in range(5):
            with pytest.raises(cra.TraceUnavailableError) as caught:
                call()
            assert caught.value.code == "TRACE_UNAVAILABLE"
        assert executed == 1
        with pytest.raises(cra.TraceUnavailableError):
            runtime.close()
        pg_cluster.start()
        reader = open_store(url)
        (result,) = verify_store(reader)
        assert result.valid  # what was committed is a whole chain
        stored = reader.read(session)
        assert [e.sequence for e in stored] == list(range(len(stored)))
        with cra.Runtime([GITHUB_OPS], store=url, durability="sync") as again:
            fresh = again.create_session("bot", "Again").session_id
            with again.call(
                "list_issues", {"repo": "acme/app"}, action_id="github.issue.list", session_id=fresh
            ) as handle:
                handle.result = {"issues": []}
        assert all(r.valid for r in verify_store(reader))
        reader.close()

    def test_store_reconnects_and_continues_the_chain(self, pg_cluster: Cluster) -> None:
        """One store object: appends fail while the server is down, then resume without gaps."""
        url = Server(pg_cluster.dsn).create_database()
        store = PostgresStore(url)
        events = chained(9)
        store.append(events[:3])
        store.sync()
        assert store.read(SESSION) == events[:3]
        pg_cluster.stop()
        with pytest.raises(psycopg.OperationalError):
            store.append(events[3:6])
        with pytest.raises(psycopg.OperationalError):
            store.read(SESSION)
        with pytest.raises(psycopg.OperationalError):
            store.append(events[3:6])  # reconnecting fails too while it is down
        store.sync()  # nothing open: nothing to commit
        pg_cluster.start()
        store.append(events[3:6])  # the writer sends again what was not committed
        store.sync()
        store.append(events[6:])
        store.sync()
        assert store.read(SESSION) == events
        assert store.last_sequence(SESSION) == 8
        assert all(r.valid for r in verify_store(store))
        store.close()

    def test_sessions_list_survives_a_restart(self, pg_cluster: Cluster) -> None:
        """The reading connection reconnects too."""
        url = Server(pg_cluster.dsn).create_database()
        store = PostgresStore(url)
        store.append(chained(1))
        store.sync()
        assert store.sessions() == [SESSION]
        pg_cluster.stop()
        pg_cluster.start()
        with pytest.raises(psycopg.OperationalError):
            store.sessions()  # the broken connection is found out by this call
        assert store.sessions() == [SESSION]
        assert store.last_sequence(SESSION) == 0
        store.close()


class TestWithoutPsycopg:
    @pytest.fixture
    def no_psycopg(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "psycopg", None)

    @pytest.mark.usefixtures("no_psycopg")
    def test_url_names_the_extra(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A postgresql:// URL without psycopg: MissingDependencyError naming the extra."""
        with pytest.raises(cra.MissingDependencyError) as caught:
            open_store("postgresql://u:pw@127.0.0.1/db")
        assert caught.value.extra == "postgres"
        assert "pip install 'cra-agents[postgres]'" in str(caught.value)
        assert main(["trace", "list", "--store", "postgresql://u:pw@127.0.0.1/db"]) != 0
        assert "cra-agents[postgres]" in capsys.readouterr().err

    def test_import_does_not_load_psycopg(self) -> None:
        """``import cra_agents.trace`` leaves psycopg alone; PostgresStore loads it on use."""
        code = (
            "import sys, cra_agents.trace as t\n"
            "assert 'psycopg' not in sys.modules\n"
            "assert 'PostgresStore' in dir(t)\n"
            "t.PostgresStore\n"
            "assert 'psycopg' not in sys.modules\n"
            "print('ok')\n"
        )
        done = run_bounded([sys.executable, "-c", code], timeout=60, cwd=ROOT)
        assert done.stdout.strip() == "ok", done.stderr


@pytest.fixture(scope="module")
def recorded() -> dict[str, list[TraceEvent]]:
    """Real events of three sessions, recorded by a runtime."""
    with cra.Runtime([GITHUB_OPS], store="memory://") as runtime:
        ids = workload(runtime, 3)
        return {sid: runtime.trace_events(sid) for sid in ids}


class TestIngest:
    def test_idempotent_and_overlapping(
        self, store: PostgresStore, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        """A batch sent twice is stored once; an overlapping retry adds only the rest."""
        a, b, c = recorded.values()
        first = store.ingest([*a, *b[:3]])
        assert first == IngestResult(len(a) + 3, 0, (a[0].session_id, b[0].session_id))
        again = store.ingest([*a, *b])
        assert (again.inserted, again.duplicates) == (len(b) - 3, len(a) + 3)
        assert store.ingest(c).inserted == len(c)
        for chain in (a, b, c):
            assert store.read(chain[0].session_id) == chain
        assert all(verify_store(store))
        assert store.sessions() == list(recorded)

    def test_a_conflict_stores_nothing_of_the_batch(
        self, store: PostgresStore, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        """Gap, fork and reused event id: refused, and nothing of the batch is kept."""
        a, b, c = recorded.values()
        store.ingest(a[:2])
        with pytest.raises(cra.ChainConflictError) as caught:
            store.ingest([*b, *a[3:]])  # b is fine, a skips sequence 2
        assert caught.value.details["reason"] == "gap"
        assert store.read(b[0].session_id) == []
        forked = following(0, a[0].event_hash, 1, a[0].session_id)
        with pytest.raises(cra.ChainConflictError) as caught:
            store.ingest([*c, *forked])
        assert caught.value.details["reason"] == "fork"
        reused = TraceEvent.model_validate({**c[0].model_dump(), "event_id": a[1].event_id})
        with pytest.raises(cra.ChainConflictError) as caught:
            store.ingest([reused])
        assert caught.value.details["reason"] == "event_id_reused"
        assert store.sessions() == [a[0].session_id]
        assert store.read(a[0].session_id) == a[:2]

    def test_concurrent_ingests_and_appenders(
        self, pg_url: str, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        """Eight connections send overlapping slices of two chains: each event stored once."""
        a, b, _ = recorded.values()
        stores = [PostgresStore(pg_url) for _ in range(8)]
        errors: list[BaseException] = []
        totals: list[IngestResult] = []
        barrier = threading.Barrier(8)

        def send(index: int, opened: PostgresStore) -> None:
            barrier.wait()
            try:
                for end in range(1 + index % 3, len(a) + 1, 2):
                    # both sessions in one batch, in an order that differs between threads
                    runs = [a[:end], b[:end]] if index % 2 else [b[:end], a[:end]]
                    totals.append(opened.ingest([*runs[0], *runs[1]]))
            except BaseException as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(i, s)) for i, s in enumerate(stores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        stores[0].ingest([*a, *b])  # whatever the slices left out
        assert stores[0].read(a[0].session_id) == a
        assert stores[0].read(b[0].session_id) == b
        assert sum(t.inserted for t in totals) <= len(a) + len(b)
        for opened in stores:
            opened.close()

    def test_a_deadlock_with_the_writer_is_retried(
        self, pg_url: str, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        """The writer holds session 2 and wants 1; ingest holds 1 and wants 2: PostgreSQL
        aborts the ingest (it waited longest), which retries after the writer commits."""
        first, second = sorted(list(recorded.values())[:2], key=lambda c: c[0].session_id)
        writer, ingesting = PostgresStore(pg_url), PostgresStore(pg_url)
        writer.append(second[:3])  # holds session 2
        outcome: list[IngestResult | BaseException] = []

        def ingest() -> None:
            try:
                outcome.append(ingesting.ingest([*first[:5], *second[:5]]))
            except BaseException as exc:  # noqa: BLE001 - asserted below
                outcome.append(exc)

        thread = threading.Thread(target=ingest)
        thread.start()
        time.sleep(0.3)  # the ingest holds session 1 and waits for session 2
        writer.append(first[:3])  # waits for session 1: a deadlock, found after 1 s
        writer.sync()
        thread.join(30)
        assert outcome == [IngestResult(4, 6, (first[0].session_id, second[0].session_id))]
        assert ingesting.retried >= 1
        assert writer.read(first[0].session_id) == first[:5]
        assert writer.read(second[0].session_id) == second[:5]
        writer.close()
        ingesting.close()

    def test_ingest_beside_the_runtime_writer(self, pg_url: str) -> None:
        """The runtime records its sessions while another connection ingests others."""
        with cra.Runtime([GITHUB_OPS], store="memory://") as source:
            sent = workload(source, 2)
            batches = [source.trace_events(sid) for sid in sent]
        with cra.Runtime([GITHUB_OPS], store=pg_url) as runtime:
            own = runtime.create_session("bot", "Triage").session_id
            ingesting = PostgresStore(pg_url)
            for batch in batches:
                assert ingesting.ingest(batch).duplicates == 0
            runtime.end_session(own)
            runtime.flush()
            assert sorted(runtime.store.sessions()) == sorted([own, *sent])
            assert all(verify_store(runtime.store))
            ingesting.close()
        with pytest.raises(ValueError, match="closed"):
            ingesting.ingest(batches[0])

    def test_index_mismatch_is_refused(
        self, store: PostgresStore, pg_url: str, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        """A stored row whose columns were changed is not trusted by the rule either."""
        a = next(iter(recorded.values()))
        store.ingest(a[:3])
        sql(pg_url, "UPDATE cra_events SET event_type = 'x.y' WHERE sequence = 2")
        with pytest.raises(cra.TraceError) as caught:
            store.ingest(a)
        assert caught.value.code == "TRACE_INDEX_MISMATCH"
