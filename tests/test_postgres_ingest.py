"""PostgreSQL ingest of many sessions at once: one lock statement, one head read, one COPY.

Every test gets a new database (``pg_url``, see tests/harness/postgres.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import cra_agents as cra
from cra_agents.protocol import TraceEvent
from cra_agents.trace import IngestResult, PostgresStore, SessionChain, verify_store

TRACE = "00000000-0000-7000-8000-0000000000ff"


def session(number: int) -> str:
    return f"00000000-0000-7000-8000-{number:012d}"


def chained(count: int, session_id: str) -> list[TraceEvent]:
    """``count`` hashed events of one session, from sequence 0."""
    chain = SessionChain(session_id, TRACE)
    for index in range(count):
        chain.append("policy.evaluated", {"i": index})
    return chain.flush()


def sql(url: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on ``url`` (autocommit), behind the store's back."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, args or None)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(pg_url)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def chains() -> list[list[TraceEvent]]:
    """40 sessions of 6 events, in an order that is not the sessions' sorted order."""
    return [chained(6, session(n)) for n in (*range(40, 20, -1), *range(20))]


class TestManySessions:
    def test_new_continuing_overlapping_and_duplicate_runs_in_one_batch(
        self, store: PostgresStore, pg_url: str, chains: list[list[TraceEvent]]
    ) -> None:
        """Each session's part is planned against its own head, as one session at a time was."""
        store.ingest([e for chain in chains[:30] for e in chain[:3]])
        batch = [
            *(e for chain in chains[:10] for e in chain[3:]),  # continue the head
            *(e for chain in chains[10:20] for e in chain[1:]),  # overlap, then continue
            *(e for chain in chains[20:30] for e in chain[:3]),  # duplicates only
            *(e for chain in chains[30:] for e in chain),  # new sessions
        ]
        result = store.ingest(batch)
        assert result.inserted == 10 * 3 + 10 * 3 + 0 + 10 * 6
        assert result.duplicates == 10 * 2 + 10 * 3
        assert result.sessions == tuple(chain[0].session_id for chain in chains)
        for index, chain in enumerate(chains):
            assert store.read(chain[0].session_id) == (chain[:3] if 20 <= index < 30 else chain)
        assert all(verify_store(store))
        rows = sql(
            pg_url, "SELECT session_id, event_count, head_sequence, head_hash FROM cra_sessions"
        )
        heads = {row[0]: row[1:] for row in rows}
        for index, chain in enumerate(chains):
            last = chain[2] if 20 <= index < 30 else chain[-1]
            assert heads[chain[0].session_id] == (last.sequence + 1, last.sequence, last.event_hash)

    def test_a_conflict_in_one_session_keeps_nothing_of_any(
        self, store: PostgresStore, pg_url: str, chains: list[list[TraceEvent]]
    ) -> None:
        store.ingest(chains[0][:2])
        batch = [*chains[1], *chains[0][3:], *chains[2]]  # chains[0] skips sequence 2
        with pytest.raises(cra.ChainConflictError) as caught:
            store.ingest(batch)
        assert caught.value.details["reason"] == "gap"
        assert caught.value.details["session_id"] == chains[0][0].session_id
        assert sql(pg_url, "SELECT count(*) FROM cra_sessions") == [(1,)]
        assert sql(pg_url, "SELECT count(*) FROM cra_events") == [(2,)]

    def test_a_reused_event_id_names_the_event(
        self, store: PostgresStore, chains: list[list[TraceEvent]]
    ) -> None:
        """COPY of many sessions fails on one event: the conflict names that event."""
        store.ingest(chains[0])
        taken = chains[0][4].event_id
        other = SessionChain(session(99), TRACE)
        for index in range(40):
            other.append("policy.evaluated", {"i": index})
        events = other.flush()
        reused = TraceEvent.model_validate({**events[0].model_dump(), "event_id": taken})
        with pytest.raises(cra.ChainConflictError) as caught:
            store.ingest([*chains[1], reused])
        assert caught.value.details["reason"] == "event_id_reused"
        assert caught.value.details["event_id"] == taken
        assert caught.value.details["session_id"] == session(99)
        assert store.read(chains[1][0].session_id) == []

    def test_a_changed_row_in_an_overlap_is_refused(
        self, store: PostgresStore, pg_url: str, chains: list[list[TraceEvent]]
    ) -> None:
        """Rows read for an overlap are checked against their columns, as the head is."""
        store.ingest([*chains[0][:4], *chains[1][:4]])
        sql(pg_url, "UPDATE cra_events SET event_type = 'x.y' WHERE sequence = 1")
        with pytest.raises(cra.TraceError) as caught:
            store.ingest([*chains[0], *chains[1]])
        assert caught.value.code == "TRACE_INDEX_MISMATCH"

    def test_in_a_schema(self, pg_url: str, chains: list[list[TraceEvent]]) -> None:
        opened = PostgresStore(f"{pg_url}?schema=traces")
        try:
            opened.ingest([*chains[0][:2], *chains[1]])
            result = opened.ingest([*chains[0], *chains[1]])
            assert result == IngestResult(4, 8, (chains[0][0].session_id, chains[1][0].session_id))
            assert opened.read(chains[0][0].session_id) == chains[0]
        finally:
            opened.close()
        assert sql(pg_url, "SELECT count(*) FROM traces.cra_events") == [(12,)]


class TestLocking:
    def test_heads_are_read_after_the_lock_is_granted(
        self, pg_url: str, chains: list[list[TraceEvent]]
    ) -> None:
        """An ingest that waited for a session's lock sees what its holder committed."""
        a, b = chains[0], chains[1]
        writer, ingesting = PostgresStore(pg_url), PostgresStore(pg_url)
        try:
            writer.append(a[:2])
            writer.sync()
            writer.append(a[2:4])  # holds a's row, uncommitted
            outcome: list[IngestResult | BaseException] = []

            def ingest() -> None:
                try:
                    outcome.append(ingesting.ingest([*b, *a[:5]]))
                except BaseException as exc:  # noqa: BLE001 - asserted below
                    outcome.append(exc)

            thread = threading.Thread(target=ingest)
            thread.start()
            time.sleep(0.3)  # the ingest waits for a's row
            assert outcome == []
            writer.sync()
            thread.join(30)
            assert outcome == [IngestResult(6 + 1, 4, (b[0].session_id, a[0].session_id))]
            assert writer.read(a[0].session_id) == a[:5]
        finally:
            writer.close()
            ingesting.close()

    def test_sessions_are_locked_in_sorted_order(
        self, pg_url: str, chains: list[list[TraceEvent]]
    ) -> None:
        """Two ingests of the same sessions in opposite orders never deadlock."""
        stores = [PostgresStore(pg_url) for _ in range(2)]
        runs = chains[:12]
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def send(opened: PostgresStore, order: list[list[TraceEvent]]) -> None:
            barrier.wait()
            try:
                for end in range(1, 7):
                    opened.ingest([e for chain in order for e in chain[:end]])
            except BaseException as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        threads = [
            threading.Thread(target=send, args=(stores[0], runs)),
            threading.Thread(target=send, args=(stores[1], runs[::-1])),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        try:
            assert errors == []
            assert sum(opened.retried for opened in stores) == 0  # no deadlock to retry
            for chain in runs:
                assert stores[0].read(chain[0].session_id) == chain
        finally:
            for opened in stores:
                opened.close()
