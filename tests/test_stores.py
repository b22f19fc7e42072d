"""Trace stores, the writer thread and durability modes."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.protocol import TraceEvent
from cra_agents.trace import (
    JsonlStore,
    MemoryStore,
    SessionChain,
    SqliteStore,
    TraceCollector,
    open_store,
    verify_chain,
)

GITHUB_OPS = atlas_path("github-ops")


def _stores(tmp_path: Path) -> dict[str, cra.TraceStore]:
    return {
        "memory": MemoryStore(),
        "jsonl": JsonlStore(tmp_path / "jsonl"),
        "sqlite": SqliteStore(tmp_path / "db" / "traces.db"),
    }


def _workload(runtime: cra.Runtime, sessions: int = 3) -> list[str]:
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


class FailingStore(MemoryStore):
    """A store whose disk fills up after ``ok`` appends."""

    def __init__(self, ok: int) -> None:
        super().__init__()
        self.ok = ok

    def append(self, events: Sequence[TraceEvent]) -> None:
        if self.ok <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.ok -= 1
        super().append(events)


class TestStoreUrls:
    def test_schemes(self, tmp_path, monkeypatch):
        """memory://, jsonl://DIR and sqlite://FILE open the matching store."""
        monkeypatch.chdir(tmp_path)
        assert isinstance(open_store("memory://"), MemoryStore)
        jsonl = open_store(f"jsonl://{tmp_path}/j")
        assert isinstance(jsonl, JsonlStore)
        assert jsonl.directory == tmp_path / "j"
        relative = open_store("jsonl://rel/dir")
        assert isinstance(relative, JsonlStore)
        assert (tmp_path / "rel" / "dir").is_dir()
        sqlite = open_store(f"sqlite://{tmp_path}/t.db")
        assert isinstance(sqlite, SqliteStore)
        sqlite.close()
        store = MemoryStore()
        assert open_store(store) is store

    def test_default_is_sqlite_under_dot_cra(self, tmp_path, monkeypatch):
        """Without a store or CRA_AGENTS_STORE, traces go to ./.cra/traces.db."""
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("CRA_AGENTS_STORE")
        with cra.Runtime([GITHUB_OPS]) as runtime:
            assert isinstance(runtime.store, SqliteStore)
            _workload(runtime, 1)
        assert (tmp_path / ".cra" / "traces.db").is_file()

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("nothing", "not a URL"),
            ("ftp://x", "unknown store scheme"),
            ("jsonl://", "names no path"),
            ("postgresql://u:pw@h/db?schema=a-b", "plain SQL name"),
        ],
    )
    def test_bad_urls(self, url, message):
        """Unknown or incomplete store URLs are refused with a hint, as configuration errors."""
        with pytest.raises(cra.ConfigurationError, match=message) as caught:
            open_store(url)
        assert isinstance(caught.value, ValueError)
        assert caught.value.code == "CONFIGURATION_ERROR"
        assert caught.value.details["reason"]

    def test_bad_durability(self):
        """An unknown durability mode is refused as a configuration error."""
        with pytest.raises(cra.ConfigurationError, match="durability") as caught:
            TraceCollector(MemoryStore(), durability="eventually")  # type: ignore[arg-type]
        assert caught.value.details == {"reason": "unknown_durability"}


class TestCrossStoreAgreement:
    @pytest.mark.parametrize("durability", ["async", "group", "sync"])
    def test_same_stream_same_size_and_head(self, tmp_path, durability):
        """One event stream written to memory, JSONL and SQLite gives identical chains."""
        chains = {}
        for name, store in _stores(tmp_path / durability).items():
            with cra.Runtime([GITHUB_OPS], store=store, durability=durability) as runtime:
                ids = _workload(runtime)
                chains[name] = [runtime.trace_events(i) for i in ids]
                for events in chains[name]:
                    assert verify_chain(events).valid
        shapes = {
            name: [(len(evs), [e.event_type for e in evs]) for evs in sessions]
            for name, sessions in chains.items()
        }
        assert shapes["memory"] == shapes["jsonl"] == shapes["sqlite"]

    def test_reopened_stores_read_back(self, tmp_path):
        """Closed and reopened, JSONL and SQLite stores return the same verified chains."""
        for name, store in _stores(tmp_path).items():
            if name == "memory":
                continue
            with cra.Runtime([GITHUB_OPS], store=store) as runtime:
                ids = _workload(runtime, 2)
                heads = [runtime.verify(i).last_valid_hash for i in ids]
            reopened = open_store(
                f"jsonl://{tmp_path}/jsonl"
                if name == "jsonl"
                else f"sqlite://{tmp_path}/db/traces.db"
            )
            assert reopened.sessions() == ids
            for session_id, head in zip(ids, heads, strict=True):
                result = verify_chain(reopened.read(session_id))
                assert result.valid
                assert result.hash_rule == "both"
                assert result.last_valid_hash == head
            reopened.close()

    def test_queries(self, tmp_path):
        """event_type, since_sequence and limit filter the same way on every store."""
        for store in _stores(tmp_path).values():
            with cra.Runtime([GITHUB_OPS], store=store) as runtime:
                (session_id,) = _workload(runtime, 1)
                everything = runtime.trace_events(session_id)
                evaluated = runtime.trace_events(session_id, event_type="policy.evaluated")
                assert evaluated
                assert all(e.event_type == "policy.evaluated" for e in evaluated)
                tail = runtime.trace_events(session_id, since_sequence=3, limit=4)
                assert [e.sequence for e in tail] == [4, 5, 6, 7]
                assert len(everything) == everything[-1].sequence + 1


class TestJsonlFiles:
    def test_one_file_per_session_lf_utf8(self, tmp_path):
        """Each session is one .trace.jsonl file of LF-terminated UTF-8 JSON objects."""
        store = JsonlStore(tmp_path)
        with cra.Runtime([GITHUB_OPS], store=store) as runtime:
            session = runtime.create_session("bot", "Résoudre les tickets ✓")
            runtime.resolve(cra.resolve_request(session))
        path = tmp_path / f"{session.session_id}.trace.jsonl"
        raw = path.read_bytes()
        assert raw.endswith(b"\n")
        assert b"\r" not in raw
        assert "✓".encode() in raw
        lines = raw.decode("utf-8").splitlines()
        assert list(json.loads(lines[0])) == list(TraceEvent.model_fields)
        assert verify_chain(path).valid

    def test_concurrent_processes_do_not_interleave(self, tmp_path):
        """Two stores (as two processes would) appending to one file keep whole lines."""
        chain = SessionChain(
            "00000000-0000-7000-8000-000000000000", "11111111-1111-7000-8000-111111111111"
        )
        for index in range(200):
            chain.append("error.occurred", {"index": index, "pad": "x" * 300})
        events = chain.flush()
        first, second = JsonlStore(tmp_path), JsonlStore(tmp_path)
        threads = [
            threading.Thread(target=first.append, args=(events[:100],)),
            threading.Thread(target=second.append, args=(events[100:],)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        first.close()
        second.close()
        lines = (tmp_path / f"{events[0].session_id}.trace.jsonl").read_bytes().splitlines()
        assert len(lines) == 200
        assert all(json.loads(line)["payload"]["pad"] == "x" * 300 for line in lines)

    def test_torn_tail_is_skipped_by_read_and_reported_by_verify(self, tmp_path):
        """A crash mid-line leaves a torn tail: read stops before it, verify names it."""
        store = JsonlStore(tmp_path)
        with cra.Runtime([GITHUB_OPS], store=store) as runtime:
            (session_id,) = _workload(runtime, 1)
        path = store.path(session_id)
        complete = len(path.read_bytes().splitlines())
        with path.open("ab") as handle:
            handle.write(b'{"trace_version":"1.0","event_id":')
        assert len(JsonlStore(tmp_path).read(session_id)) == complete
        result = verify_chain(path)
        assert result.error_type == "torn_tail"
        assert result.first_invalid_index == complete

    def test_many_sessions_recycle_file_handles(self, tmp_path):
        """More sessions than open-file slots still write every event."""
        store = JsonlStore(tmp_path)
        with cra.Runtime([GITHUB_OPS], store=store, durability="group") as runtime:
            ids = [runtime.create_session("bot", f"goal {i}").session_id for i in range(70)]
        assert len(store.sessions()) == 70
        for session_id in ids:
            assert len(open_store(f"jsonl://{tmp_path}").read(session_id)) == 1

    def test_bad_session_id(self, tmp_path):
        """A session id cannot name a path outside the directory."""
        with pytest.raises(ValueError, match="not a session id"):
            JsonlStore(tmp_path).path("../etc/passwd")
        assert JsonlStore(tmp_path).read("0" * 36) == []


class TestFailClosed:
    @pytest.mark.parametrize("durability", ["group", "sync"])
    def test_store_failure_denies_further_work(self, durability):
        """A full disk stops recording: the failing call and every later one are refused."""
        runtime = cra.Runtime([GITHUB_OPS], store=FailingStore(ok=1), durability=durability)
        session = runtime.create_session("bot", "Triage")
        with pytest.raises(cra.TraceUnavailableError) as info:
            runtime.resolve(cra.resolve_request(session))
        assert info.value.code == "TRACE_UNAVAILABLE"
        assert isinstance(runtime.trace_failure, OSError)
        with pytest.raises(cra.TraceUnavailableError):
            runtime.create_session("bot", "Again")
        with pytest.raises(cra.TraceUnavailableError):
            runtime.close()

    def test_async_failure_is_noticed_on_the_next_call(self):
        """In async mode the call after the failed write is refused, and it is logged."""
        runtime = cra.Runtime([GITHUB_OPS], store=FailingStore(ok=0), durability="async")
        session = runtime.create_session("bot", "Triage")
        with pytest.raises(cra.TraceUnavailableError):
            runtime.flush()  # the flush that found the loss reports it
        with pytest.raises(cra.TraceUnavailableError):
            runtime.resolve(cra.resolve_request(session))

    def test_failed_approval_record_refuses_the_execution(self):
        """If action.approved cannot be made durable, execute raises instead of allowing."""
        store = FailingStore(ok=2)  # session.started and the resolve batch, then full
        runtime = cra.Runtime([GITHUB_OPS], store=store, durability="sync")
        session = runtime.create_session("bot", "Triage")
        resolution = runtime.resolve(cra.resolve_request(session))
        with pytest.raises(cra.TraceUnavailableError):
            runtime.execute(
                cra.execute_request(
                    session, resolution.resolution_id, "github.issue.list", {"repo": "acme/app"}
                )
            )

    def test_writer_thread_death_fails_closed(self, monkeypatch, caplog):
        """A dead writer thread is detected and every call is refused with a logged reason."""
        runtime = cra.Runtime([GITHUB_OPS], store="memory://")
        collector = runtime._collector

        def die() -> list[SessionChain]:
            raise RuntimeError("writer killed by test")

        monkeypatch.setattr(collector, "_take", die)
        with caplog.at_level("ERROR"):
            runtime.create_session("bot", "Triage")
            assert collector._thread is not None
            collector._thread.join(5)
        assert not collector._thread.is_alive()
        with pytest.raises(cra.TraceUnavailableError):
            runtime.create_session("bot", "Again")
        assert "trace_unavailable" in caplog.text

    def test_closed_runtime_refuses_and_close_is_idempotent(self):
        """close() drains once; later calls are refused; closing again is harmless."""
        runtime = cra.Runtime([GITHUB_OPS], store="memory://")
        session = runtime.create_session("bot", "Triage")
        runtime.resolve(cra.resolve_request(session))
        runtime.close()
        runtime.close()
        assert len(runtime.store.read(session.session_id)) > 2
        with pytest.raises(cra.TraceUnavailableError, match="closed"):
            runtime.create_session("bot", "Again")

    def test_unrecordable_metadata_is_refused_to_the_caller(self):
        """A payload the trace cannot hold exactly is refused on the caller's thread."""
        runtime = cra.Runtime([GITHUB_OPS], store="memory://")
        with pytest.raises(cra.InvalidRequestError, match="cannot be recorded"):
            runtime.create_session("bot", "Triage", metadata={"x": float("nan")})
        session = runtime.create_session("bot", "Triage", metadata={"ok": 1})
        assert runtime.verify(session.session_id).valid


class TestConcurrency:
    @pytest.mark.parametrize("durability", ["async", "group"])
    def test_sixteen_threads_eight_sessions(self, tmp_path, durability):
        """16 threads resolving in 8 sessions leave 8 contiguous, valid chains."""
        store = SqliteStore(tmp_path / "t.db")
        with cra.Runtime([GITHUB_OPS], store=store, durability=durability) as runtime:
            sessions = [runtime.create_session(f"bot-{i}", "Triage") for i in range(8)]

            def work(index: int) -> None:
                session = sessions[index % 8]
                for _ in range(15):
                    runtime.resolve(cra.resolve_request(session))

            threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for session in sessions:
                events = runtime.trace_events(session.session_id)
                assert [e.sequence for e in events] == list(range(len(events)))
                assert verify_chain(events).valid
                assert sum(e.event_type == "carp.resolution.completed" for e in events) == 30

    def test_group_commit_waits_for_durability(self):
        """In group mode a returned call's events are already in the store."""
        store = MemoryStore()
        with cra.Runtime([GITHUB_OPS], store=store, durability="group") as runtime:
            session = runtime.create_session("bot", "Triage")
            runtime.resolve(cra.resolve_request(session))
            stored = store.read(session.session_id)
            assert stored[-1].event_type == "carp.resolution.completed"


class TestShutdown:
    def test_events_are_drained_at_interpreter_exit(self, tmp_path):
        """A process that never calls close() still writes its queued events on exit."""
        code = (
            "import cra_agents as cra\n"
            f"rt = cra.Runtime([{str(GITHUB_OPS)!r}], store='jsonl://{tmp_path}/t', "
            "durability='async')\n"
            "s = rt.create_session('bot', 'Triage')\n"
            "for _ in range(50):\n"
            "    rt.resolve(cra.resolve_request(s))\n"
            "print(rt.session(s.session_id).event_count)\n"
        )
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        expected = int(out.stdout.strip())
        store = JsonlStore(tmp_path / "t")
        (session_id,) = store.sessions()
        events = store.read(session_id)
        assert len(events) == expected
        assert verify_chain(events).valid

    def test_poison_metadata_is_refused_and_recording_goes_on(self):
        """Unserialisable or unrepresentable input is refused to its caller only."""
        with cra.Runtime([GITHUB_OPS], store="memory://") as runtime:
            for poison in (object(), float("inf"), {1: "non-string key"}):
                with pytest.raises(cra.InvalidRequestError, match="cannot be recorded"):
                    runtime.create_session("bot", "Triage", metadata={"x": poison})
            huge = runtime.create_session("bot", "Triage", metadata={"blob": "x" * 10_000_000})
            runtime.resolve(cra.resolve_request(huge))
            result = runtime.verify(huge.session_id)
            assert result.valid
            assert result.event_count > 2


@pytest.mark.parametrize("kind", ["memory", "jsonl", "sqlite"])
def test_last_sequence_without_reading_the_session(tmp_path, kind):
    """Every store answers last_sequence: -1 for no events, else the last one's sequence."""
    store = open_store(f"{kind}://{tmp_path}/s" + (".db" if kind == "sqlite" else ""))
    assert store.last_sequence("none") == -1
    chain = SessionChain(
        "00000000-0000-7000-8000-000000000001", "00000000-0000-7000-8000-000000000002"
    )
    for index in range(3000):  # JSONL: more than one 64 KiB block from the end
        chain.append("policy.evaluated", {"i": index, "pad": "x" * 40})
    store.append(chain.flush())
    store.sync()
    assert store.last_sequence(chain.session_id) == 2999
    store.close()
    if kind == "jsonl":
        path = tmp_path / "s" / f"{chain.session_id}.trace.jsonl"
        with path.open("ab") as handle:
            handle.write(b'{"torn": ')
        reopened = open_store(f"jsonl://{tmp_path}/s")
        assert reopened.last_sequence(chain.session_id) == 2999
        path.write_bytes(b"")
        assert reopened.last_sequence(chain.session_id) == -1


@pytest.mark.parametrize("kind", ["memory", "jsonl", "sqlite"])
def test_every_store_is_a_trace_store(tmp_path, kind):
    """Each shipped store implements every method of the TraceStore protocol."""
    store = _stores(tmp_path)[kind]
    assert isinstance(store, cra.TraceStore)
    store.close()


SESSION = "00000000-0000-7000-8000-000000000001"
TRACE = "00000000-0000-7000-8000-000000000002"


@pytest.mark.parametrize("kind", ["memory", "jsonl", "sqlite"])
def test_empty_append_is_a_no_op_and_closed_stores_refuse(tmp_path, kind):
    """Appending nothing writes nothing; a durable store refuses appends once closed."""
    store = _stores(tmp_path)[kind]
    store.append([])
    assert store.sessions() == []
    store.close()
    store.close()  # idempotent
    chain = SessionChain(SESSION, TRACE)
    chain.append("policy.evaluated", {"i": 0})
    if kind == "memory":
        return
    with pytest.raises(ValueError, match="closed"):
        store.append(chain.flush())


def test_sqlite_rolls_back_a_failed_batch(tmp_path):
    """A batch that breaks a constraint leaves nothing of itself behind."""
    store = SqliteStore(tmp_path / "t.db")
    chain = SessionChain(SESSION, TRACE)
    chain.append("policy.evaluated", {"i": 0})
    events = chain.flush()
    store.append(events)
    store.sync()
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        store.append(events)  # same (session, sequence) again
    store.sync()
    assert [e.sequence for e in store.read(SESSION)] == [e.sequence for e in events]
    store.close()


class TestWriterNeverNapsOnWaitingCallers:
    def test_the_nap_rule(self):
        """The writer may nap only when nobody waits for it and the backlog is short."""
        collector = TraceCollector(MemoryStore(), max_backlog=64)
        try:
            assert collector.should_nap()
            collector._held = 1
            assert not collector.should_nap()
            collector._held = 0
            collector._backlog = 32
            assert not collector.should_nap()
            collector._backlog = 0
        finally:
            collector.close()
        assert not collector.should_nap()

    def test_a_held_back_caller_is_released_under_a_long_flush_interval(self):
        """Backpressure wakes a napping writer: 4,000 events through a 64-event backlog with a
        10 s flush interval finish long before one interval passes."""
        import time

        collector = TraceCollector(MemoryStore(), max_backlog=64, flush_interval=10.0)
        chain = SessionChain("s", "t")
        started = time.monotonic()
        try:
            for index in range(4000):
                collector.committed(chain, chain.append("x.y", {"i": index}))
            assert collector.flush()
        finally:
            collector.close()
        assert len(chain) == 4000
        assert time.monotonic() - started < 10.0


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_flush_waits_for_events_the_writer_already_took(tmp_path, writer):
    """A flush() between the writer taking events and writing them waits for them."""
    import time

    store = JsonlStore(tmp_path / "j")
    collector = TraceCollector(
        store,
        flush_interval=0.01,
        process_url=f"jsonl://{tmp_path / 'j'}" if writer == "process" else None,
    )
    taken = threading.Event()
    take = collector._take

    def slow_take() -> list[SessionChain]:
        chains = take()
        if chains and threading.current_thread() is collector._thread:
            taken.set()
            time.sleep(0.3)  # the gap a flush() used to slip through
        return chains

    collector._take = slow_take  # type: ignore[method-assign]
    chain = SessionChain(SESSION, TRACE)
    for index in range(10):
        collector.committed(chain, chain.append("policy.evaluated", {"i": index}))
    assert taken.wait(5)
    assert collector.flush()
    assert chain.durable == 9 if writer == "process" else len(store.read(SESSION)) == 10
    assert len(store.read(SESSION)) == 10
    collector.close()
