"""The PostgreSQL trace store: insert rate by batch size (``executemany`` vs ``COPY``), bytes
per event on disk beside SQLite and JSONL, and streaming verification.

Uses ``CRA_TEST_PG_DSN`` (a server where the user may create databases) or starts a
throwaway cluster with the test harness (PostgreSQL's binaries must be installed; fsync on,
as a production server runs). Each batch size appends ``COMMITS`` batches to one chain, one
commit each, alternating the two insert methods commit by commit so that load from other
work falls on both alike.

    python benchmarks/postgres_bench.py [COMMITS]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from _timing import load_average, machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cra_agents as cra  # noqa: E402
from cra_agents.examples import atlas_path  # noqa: E402
from cra_agents.protocol import TraceEvent  # noqa: E402
from cra_agents.trace import (  # noqa: E402
    JsonlStore,
    PostgresStore,
    SessionChain,
    SqliteStore,
    verify_store,
)
from tests.harness.postgres import Cluster, Server, pg_bindir, start_cluster  # noqa: E402

SESSION = "00000000-0000-7000-8000-000000000001"
TRACE = "00000000-0000-7000-8000-000000000002"


def chain(count: int) -> list[TraceEvent]:
    """``count`` events of one session with a typical policy payload."""
    built = SessionChain(SESSION, TRACE)
    for index in range(count):
        built.append(
            "policy.evaluated",
            {"i": index, "rule": "allow-read", "action_id": "github.issue.list", "x": "y" * 120},
        )
    return built.flush()


def insert_rates(server: Server, commits: int) -> None:
    print("| events per commit | executemany (events/s) | COPY (events/s) | COPY / executemany |")
    print("|---:|---:|---:|---:|")
    for batch in (1, 4, 8, 20, 64, 200):
        url = server.create_database()
        store = PostgresStore(url)
        events = chain(batch * commits)
        spent = {False: 0.0, True: 0.0}
        for index in range(commits):
            part = events[index * batch : (index + 1) * batch]
            copy = bool(index % 2)
            started = time.perf_counter()
            with store._lock:
                conn = store._write_conn()
                locked = store._lock_head(conn, SESSION, part[0])
                if locked is None:
                    raise RuntimeError("the session was not created")
                store._insert(conn, locked[0], (locked[1], locked[2]), part, copy=copy)
            store.sync()
            spent[copy] += time.perf_counter() - started
        half = batch * commits / 2
        print(
            f"| {batch} | {half / spent[False]:,.0f} | {half / spent[True]:,.0f} "
            f"| {spent[False] / spent[True]:.2f} |"
        )
        store.close()
        server.drop_database(url)


def sizes(server: Server) -> None:
    with cra.Runtime([atlas_path("github-ops")], store="memory://") as runtime:
        ids = []
        for index in range(200):
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
        streams = [runtime.trace_events(i) for i in ids]
    count = sum(len(s) for s in streams)
    url = server.create_database()
    store = PostgresStore(url)
    folder = Path(tempfile.mkdtemp())
    sqlite, jsonl = SqliteStore(folder / "t.db"), JsonlStore(folder / "j")
    for stream in streams:
        for sink in (store, sqlite, jsonl):
            sink.append(stream)
    for sink in (store, sqlite, jsonl):
        sink.sync()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        row = conn.execute(
            "SELECT pg_total_relation_size('cra_events') + pg_total_relation_size('cra_sessions')"
        ).fetchone()
    if row is None:
        raise RuntimeError("no size")
    sqlite.close()
    jsonl.close()
    sqlite_bytes = sum(p.stat().st_size for p in folder.glob("t.db*"))
    jsonl_bytes = sum(p.stat().st_size for p in (folder / "j").iterdir())
    print(
        f"\n{count:,} runtime events ({len(ids)} sessions), bytes per event: PostgreSQL "
        f"{row[0] / count:,.0f} (tables and indexes), SQLite {sqlite_bytes / count:,.0f}, "
        f"JSONL {jsonl_bytes / count:,.0f}"
    )
    started = time.perf_counter()
    results = verify_store(store)
    elapsed = time.perf_counter() - started
    if not all(results):
        raise RuntimeError("the store does not verify")
    print(f"verify_store (streamed): {count / elapsed:,.0f} events/s")
    store.close()
    server.drop_database(url)


def main() -> None:
    commits = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    cluster: Cluster | None = None
    dsn = os.environ.get("CRA_TEST_PG_DSN")
    if not dsn:
        bindir = pg_bindir()
        if bindir is None:
            sys.exit("PostgreSQL is not installed and CRA_TEST_PG_DSN is not set")
        cluster = start_cluster(bindir, fsync=True)
        dsn = cluster.dsn
    print(f"# PostgreSQL trace store ({machine()}, {load_average()})\n")
    try:
        server = Server(dsn)
        insert_rates(server, commits)
        sizes(server)
    finally:
        if cluster is not None:
            cluster.destroy()
    print(f"\nafter: {load_average()}")


if __name__ == "__main__":
    main()
