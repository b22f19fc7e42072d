"""Ingest: batches of hashed events from elsewhere, added only where they continue a chain."""

from __future__ import annotations

import threading
from pathlib import Path

import orjson
import pytest

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.protocol import TraceEvent
from cra_agents.trace import (
    BATCH_INVALID,
    IngestResult,
    IngestStore,
    MemoryStore,
    SqliteStore,
    StoredHead,
    parse_batch,
    plan_session,
    split_batch,
    verify_store,
)

GITHUB_OPS = atlas_path("github-ops")


def _line(event: TraceEvent) -> bytes:
    return orjson.dumps(event.model_dump(mode="json")) + b"\n"


def _batch(events: list[TraceEvent]) -> bytes:
    return b"".join(_line(e) for e in events)


@pytest.fixture(scope="module")
def recorded() -> dict[str, list[TraceEvent]]:
    """Real events of three sessions, recorded by a runtime."""
    runtime = cra.Runtime(atlases=[GITHUB_OPS], store="memory://")
    try:
        ids = []
        for index in range(3):
            session = runtime.create_session(f"bot-{index}", "Triage new bug reports")
            resolution = runtime.resolve(cra.resolve_request(session))
            for repo in ("acme/app", "acme/lib"):
                runtime.execute(
                    cra.execute_request(
                        session, resolution.resolution_id, "github.issue.list", {"repo": repo}
                    )
                )
            runtime.end_session(session.session_id)
            ids.append(session.session_id)
        runtime.flush()
        return {sid: runtime.store.read(sid) for sid in ids}
    finally:
        runtime.close()


def _stores(tmp_path: Path) -> list[IngestStore]:
    return [MemoryStore(), SqliteStore(tmp_path / "ingest.db")]


class TestParse:
    def test_reads_every_line(self, recorded: dict[str, list[TraceEvent]]) -> None:
        events = [e for chain in recorded.values() for e in chain]
        parsed = parse_batch(_batch(events))
        assert [e.event_id for e in parsed] == [e.event_id for e in events]
        assert parse_batch(_batch(events).decode()) == parsed  # text too
        assert parse_batch(_batch(events[:2]).rstrip(b"\n") + b"\n\n") == events[:2]

    @pytest.mark.parametrize(
        ("data", "reason", "line"),
        [
            (b"", "empty", None),
            (b"\n \n", "empty", None),
            (b"{not json\n", "not_json", 1),
            (b"[1]\n", "not_an_object", 1),
            (b'{"a": 1, "a": 2}\n', "not_json", 1),
            (b'{"event_id": "x"}\n', "not_an_event", 1),
        ],
    )
    def test_refuses_what_is_not_a_batch(self, data: bytes, reason: str, line: int | None) -> None:
        with pytest.raises(cra.TraceError) as caught:
            parse_batch(data)
        assert caught.value.code == BATCH_INVALID
        assert caught.value.details["reason"] == reason
        assert caught.value.details.get("line") == line

    def test_refuses_an_event_changed_after_hashing(
        self, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        chain = next(iter(recorded.values()))
        changed = chain[2].model_dump(mode="json")
        changed["payload"] = {**changed["payload"], "injected": True}
        data = _line(chain[0]) + _line(chain[1]) + orjson.dumps(changed) + b"\n"
        with pytest.raises(cra.TraceError) as caught:
            parse_batch(data)
        assert caught.value.details["reason"] == "hash_mismatch"
        assert caught.value.details["line"] == 3
        assert "does not hash to its event_hash" in str(caught.value)

    def test_bounds_the_number_of_events(self, recorded: dict[str, list[TraceEvent]]) -> None:
        chain = next(iter(recorded.values()))
        with pytest.raises(cra.TraceError) as caught:
            parse_batch(_batch(chain), max_events=2)
        assert caught.value.details["reason"] == "too_many_events"


class TestRule:
    def test_split_groups_sessions_in_order(self, recorded: dict[str, list[TraceEvent]]) -> None:
        a, b = list(recorded.values())[:2]
        runs = split_batch([a[0], b[0], a[1], b[1]])
        assert list(runs) == [a[0].session_id, b[0].session_id]
        assert runs[a[0].session_id] == a[:2]

    def test_split_refuses_a_gap_or_a_broken_link(
        self, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        a = next(iter(recorded.values()))
        with pytest.raises(cra.ChainConflictError) as caught:
            split_batch([a[0], a[2]])
        assert caught.value.details["reason"] == "gap"
        assert caught.value.details["expected_sequence"] == 1
        forged = a[1].model_copy(update={"previous_event_hash": "0" * 64})
        with pytest.raises(cra.ChainConflictError) as caught:
            split_batch([a[0], forged])
        assert caught.value.details["reason"] == "link"
        assert caught.value.status == 409
        assert caught.value.code == "TRACE_CHAIN_CONFLICT"

    def test_plan_counts_duplicates_and_keeps_the_rest(
        self, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        chain = next(iter(recorded.values()))
        head = StoredHead(chain[2].sequence, chain[2].event_hash)
        asked: list[tuple[int, int]] = []

        def stored(lo: int, hi: int) -> list[object]:
            asked.append((lo, hi))
            from cra_agents.trace._ingest import stored_events_of

            return list(stored_events_of(chain[lo : hi + 1]))

        new, duplicates = plan_session(chain[1:], head, stored)  # type: ignore[arg-type]
        assert (new, duplicates) == (chain[3:], 2)
        assert asked == [(1, 2)]
        new, duplicates = plan_session(chain[:3], head, stored)  # type: ignore[arg-type]
        assert (new, duplicates) == ([], 3)

    def test_plan_refuses_a_fork(self, recorded: dict[str, list[TraceEvent]]) -> None:
        a, b = list(recorded.values())[:2]
        head = StoredHead(a[-1].sequence, a[-1].event_hash)
        from cra_agents.trace._ingest import stored_events_of

        other = b[0].model_copy(update={"session_id": a[0].session_id})
        with pytest.raises(cra.ChainConflictError) as caught:
            plan_session([other], head, lambda lo, hi: stored_events_of(a[lo : hi + 1]))
        assert caught.value.details["reason"] == "fork"
        assert caught.value.details["stored_event_id"] == a[0].event_id
        with pytest.raises(cra.ChainConflictError) as caught:
            plan_session([a[0]], head, lambda lo, hi: [])
        assert caught.value.details["reason"] == "fork"
        assert caught.value.details["stored_event_id"] is None

    def test_plan_refuses_what_does_not_continue_the_head(
        self, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        chain = next(iter(recorded.values()))
        head = StoredHead(chain[1].sequence, chain[1].event_hash)
        with pytest.raises(cra.ChainConflictError) as caught:
            plan_session(chain[3:], head, lambda lo, hi: [])
        assert caught.value.details["reason"] == "gap"
        wrong = StoredHead(chain[1].sequence, "f" * 64)
        with pytest.raises(cra.ChainConflictError) as caught:
            plan_session(chain[2:], wrong, lambda lo, hi: [])
        assert caught.value.details["reason"] == "link"
        assert "nothing of the batch was stored" in str(caught.value)


class TestStores:
    def test_ingest_is_idempotent(
        self, tmp_path: Path, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        events = [e for chain in recorded.values() for e in chain]
        for store in _stores(tmp_path):
            try:
                first = store.ingest(parse_batch(_batch(events)))
                assert first == IngestResult(len(events), 0, tuple(recorded))
                again = store.ingest(parse_batch(_batch(events)))
                assert again == IngestResult(0, len(events), tuple(recorded))
                assert first + again == IngestResult(len(events), len(events), tuple(recorded))
                assert first.as_dict()["inserted"] == len(events)
                assert all(verify_store(store))  # type: ignore[arg-type]
                for sid, chain in recorded.items():
                    assert store.read(sid) == chain  # type: ignore[attr-defined]
            finally:
                store.close()  # type: ignore[attr-defined]

    def test_retry_of_an_overlapping_batch(
        self, tmp_path: Path, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        chain = next(iter(recorded.values()))
        for store in _stores(tmp_path):
            try:
                assert store.ingest(chain[:3]).inserted == 3
                result = store.ingest(chain[1:])
                assert (result.inserted, result.duplicates) == (len(chain) - 3, 2)
                assert store.read(chain[0].session_id) == chain  # type: ignore[attr-defined]
            finally:
                store.close()  # type: ignore[attr-defined]

    def test_a_conflict_stores_nothing_of_the_batch(
        self, tmp_path: Path, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        a, b, _ = recorded.values()
        for store in _stores(tmp_path):
            try:
                store.ingest(a[:2])
                with pytest.raises(cra.ChainConflictError) as caught:
                    store.ingest([*b, *a[3:]])  # b is fine, a skips sequence 2
                assert caught.value.details["reason"] == "gap"
                assert store.read(b[0].session_id) == []  # type: ignore[attr-defined]
                assert store.read(a[0].session_id) == a[:2]  # type: ignore[attr-defined]
            finally:
                store.close()  # type: ignore[attr-defined]

    def test_concurrent_ingests_of_one_chain(
        self, tmp_path: Path, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        """Eight threads send overlapping slices of one chain: every event stored once."""
        chain = next(iter(recorded.values()))
        for store in _stores(tmp_path):
            errors: list[BaseException] = []
            totals: list[IngestResult] = []

            def send(
                start: int,
                store: IngestStore,
                totals: list[IngestResult],
                errors: list[BaseException],
            ) -> None:
                for end in range(start + 1, len(chain) + 1):
                    try:
                        totals.append(store.ingest(chain[:end]))
                    except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                        errors.append(exc)

            threads = [
                threading.Thread(target=send, args=(i % 3, store, totals, errors)) for i in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            try:
                assert errors == []
                assert sum(t.inserted for t in totals) == len(chain)
                assert store.read(chain[0].session_id) == chain  # type: ignore[attr-defined]
            finally:
                store.close()  # type: ignore[attr-defined]

    def test_sqlite_ingest_beside_the_runtime_writer(self, tmp_path: Path) -> None:
        """The server's runtime writes its own sessions while batches are ingested."""
        source = cra.Runtime(atlases=[GITHUB_OPS], store="memory://")
        runtime = cra.Runtime(atlases=[GITHUB_OPS], store=f"sqlite://{tmp_path}/t.db")
        try:
            sessions = []
            for index in range(4):
                for rt in (source, runtime):
                    session = rt.create_session(f"bot-{index}", "Triage new bug reports")
                    rt.end_session(session.session_id)
                    if rt is source:
                        sessions.append(session.session_id)
            source.flush()
            ingest = SqliteStore(tmp_path / "t.db")
            try:
                for sid in sessions:
                    assert ingest.ingest(source.store.read(sid)).duplicates == 0
            finally:
                ingest.close()
            runtime.flush()
            assert len(runtime.store.sessions()) == 8
            assert all(verify_store(runtime.store))
        finally:
            source.close()
            runtime.close()

    def test_closed_sqlite_store_refuses(
        self, tmp_path: Path, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        store = SqliteStore(tmp_path / "x.db")
        store.close()
        with pytest.raises(ValueError, match="closed"):
            store.ingest(next(iter(recorded.values())))
