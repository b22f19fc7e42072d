"""`make bench` (part 2): TRACE recording costs.

- caller-side cost of recording one event in ``async`` mode (append + commit, writer running);
- writer throughput: hashing and writing queued events to a JSONL store, events/s;
- ``group`` mode throughput: 8 threads, each call waiting for its fsynced batch, events/s;
- verification speed, events/s;
- SQLite append + commit cost per event, the store's layout against the first one (kept below
  for the comparison only);
- resident memory while 1,000,000 events are written through a JSONL store.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cra_agents._frozen import FrozenDict
from cra_agents.protocol import TraceEvent
from cra_agents.trace import (
    JsonlStore,
    SessionChain,
    SqliteStore,
    TraceCollector,
    TraceStore,
    verify_chain,
)
from cra_agents.trace._jsonl import event_line
from cra_agents.trace._sqlite import V0_LAYOUT

PAYLOAD = {"policy_id": "allow-read", "result": "allow", "action_id": "github.issue.list"}


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _chain(index: int) -> SessionChain:
    return SessionChain(
        f"00000000-0000-7000-8000-{index:012d}", f"11111111-1111-7000-8000-{index:012d}"
    )


def caller_cost(directory: Path, n: int = 100_000) -> tuple[float, float]:
    collector = TraceCollector(JsonlStore(directory), durability="async")
    chain = _chain(1)
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        collector.committed(chain, chain.append("policy.evaluated", PAYLOAD))
        samples.append(clock() - t0)
    collector.close()
    samples = samples[1000:]
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def writer_throughput(directory: Path, n: int = 200_000) -> float:
    collector = TraceCollector(
        JsonlStore(directory), durability="async", flush_interval=3600, max_backlog=10**9
    )
    chains = [_chain(i) for i in range(8)]
    for i in range(n):
        chains[i % 8].append("policy.evaluated", PAYLOAD)
    t0 = time.perf_counter()
    for chain in chains:
        collector.committed(chain, len(chain) - 1)
    collector.flush()
    elapsed = time.perf_counter() - t0
    collector.close()
    return n / elapsed


def writer_throughput_batched(directory: Path, n: int = 200_000) -> float:
    """Writer throughput on resolve-shaped traffic: batches of 20 events whose payloads are
    the frozen, shared payloads of a cached resolve plan."""
    collector = TraceCollector(
        JsonlStore(directory), durability="async", flush_interval=3600, max_backlog=10**9
    )
    chains = [_chain(i) for i in range(8)]
    payloads = [
        FrozenDict(policy_id=f"policy-{k}", result="allow", action_id=f"github.a{k}.list")
        for k in range(20)
    ]
    batch = [("policy.evaluated", p) for p in payloads]
    for i in range(n // 20):
        chains[i % 8].extend(batch)
    t0 = time.perf_counter()
    for chain in chains:
        collector.committed(chain, len(chain) - 1)
    collector.flush()
    elapsed = time.perf_counter() - t0
    collector.close()
    return n / elapsed


def group_throughput(
    store: TraceStore, threads: int = 8, commits: int = 400, events_per_commit: int = 1
) -> float:
    """Events/s when ``threads`` callers each wait for their commits to be synced."""
    collector = TraceCollector(store, durability="group")
    chains = [_chain(i) for i in range(threads)]
    batch = [("policy.evaluated", PAYLOAD)] * events_per_commit

    def work(chain: SessionChain) -> None:
        for _ in range(commits):
            first = chain.extend(batch)
            collector.committed(chain, first + events_per_commit - 1)

    workers = [threading.Thread(target=work, args=(c,)) for c in chains]
    t0 = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - t0
    collector.close()
    return threads * commits * events_per_commit / elapsed


def verify_speed(directory: Path, n: int = 100_000) -> float:
    chain = _chain(9)
    for _ in range(n):
        chain.append("policy.evaluated", PAYLOAD)
    events = [e.__dict__ for e in chain.flush()]
    t0 = time.perf_counter()
    result = verify_chain(events)
    elapsed = time.perf_counter() - t0
    if not result.valid:
        raise RuntimeError(f"benchmark chain does not verify: {result.error_message}")
    return n / elapsed


class FirstLayoutStore:
    """The first layout's append and sync, as SqliteStore wrote them (for comparison)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(V0_LAYOUT)

    def append(self, events: Sequence[TraceEvent]) -> None:
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
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self._db.execute(
            "INSERT INTO sessions VALUES (?, ?, ?, ?, ?) ON CONFLICT(session_id) DO "
            "UPDATE SET event_count = event_count + excluded.event_count, "
            "head_hash = excluded.head_hash",
            (last.session_id, last.trace_id, events[0].timestamp, len(events), last.event_hash),
        )

    def sync(self) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT")

    def close(self) -> None:
        self.sync()
        self._db.close()


def sqlite_chains(sessions: int = 8, events: int = 5000) -> list[list[TraceEvent]]:
    """Hashed events of ``sessions`` sessions, ready to store."""
    chains = [_chain(200 + i) for i in range(sessions)]
    for chain in chains:
        for _ in range(events):
            chain.append("policy.evaluated", PAYLOAD)
    return [chain.flush() for chain in chains]


def sqlite_append_cost(
    make: Callable[[Path], FirstLayoutStore | SqliteStore],
    path: Path,
    chains: list[list[TraceEvent]],
    batch: int = 20,
) -> tuple[float, float, float, float]:
    """µs per event to append (``batch`` events per append, every session in turn) and to
    commit (once per round of appends, as the group writer does; closing, which checkpoints
    the WAL, counts as a commit), the CPU µs per event of both (what waiting for the disk
    does not inflate), and the database's bytes per event."""
    cpu = time.process_time()
    store = make(path)
    clock = time.perf_counter
    appending = committing = 0.0
    for start in range(0, len(chains[0]), batch):
        t0 = clock()
        for events in chains:
            store.append(events[start : start + batch])
        t1 = clock()
        store.sync()
        appending += t1 - t0
        committing += clock() - t1
    t1 = clock()
    store.close()
    committing += clock() - t1
    cpu = time.process_time() - cpu
    total = sum(map(len, chains))
    return (
        appending / total * 1e6,
        committing / total * 1e6,
        cpu / total * 1e6,
        path.stat().st_size / total,
    )


def sqlite_layouts(root: Path, reps: int = 5) -> dict[str, list[tuple[float, float, float, float]]]:
    """Both layouts, ``reps`` interleaved runs each, each into a new database."""
    chains = sqlite_chains()
    makers: dict[str, Callable[[Path], FirstLayoutStore | SqliteStore]] = {
        "first layout": FirstLayoutStore,
        "current layout": SqliteStore,
    }
    runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in makers}
    for rep in range(reps):
        for index, (name, make) in enumerate(makers.items()):
            runs[name].append(sqlite_append_cost(make, root / f"{rep}-{index}.db", chains))
    return runs


def rss_flat(directory: Path, total: int = 1_000_000) -> list[tuple[int, float]]:
    collector = TraceCollector(JsonlStore(directory), durability="async")
    chains = [_chain(100 + i) for i in range(10)]
    marks = []
    for i in range(total):
        chain = chains[i % 10]
        collector.committed(chain, chain.append("policy.evaluated", PAYLOAD))
        if (i + 1) % 200_000 == 0:
            collector.flush()
            marks.append((i + 1, _rss_mib()))
    collector.close()
    return marks


def main() -> int:
    load = os.getloadavg()
    print(f"TRACE recording, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        median, p99 = caller_cost(root / "caller")
        print(
            f"caller cost per event (async, writer running): median {median:.2f} µs, "
            f"p99 {p99:.2f} µs"
        )
        writer = writer_throughput(root / "w")
        print(f"writer throughput (hash + JSONL write), single events: {writer:,.0f} events/s")
        batched = writer_throughput_batched(root / "wb")
        print(f"writer throughput (hash + JSONL write), resolve batches: {batched:,.0f} events/s")
        stores: list[tuple[str, Callable[[Path], TraceStore]]] = [
            ("JSONL", JsonlStore),
            ("SQLite", lambda d: SqliteStore(d / "t.db")),
        ]
        for name, make in stores:
            for size in (1, 20):
                rate = group_throughput(make(root / f"g-{name}-{size}"), events_per_commit=size)
                print(
                    f"group mode, {name}, 8 threads, {size:>2} events per commit: "
                    f"{rate:,.0f} events/s"
                )
        print(f"verification: {verify_speed(root / 'v'):,.0f} events/s")
        for name, runs in sqlite_layouts(root / "layouts").items():
            append = statistics.median(r[0] for r in runs)
            commit = statistics.median(r[1] for r in runs)
            total = statistics.median(r[0] + r[1] for r in runs)
            cpu = statistics.median(r[2] for r in runs)
            disk = statistics.median(r[3] for r in runs)
            print(
                f"SQLite append + commit, {name} (8 sessions x 20 events per append, a commit "
                f"per 160, synchronous=FULL): {total:.2f} µs/event (append {append:.2f} + "
                f"commit {commit:.2f}; CPU {cpu:.2f}), {disk:.0f} B/event on disk, "
                f"median of {len(runs)}"
            )
        marks = rss_flat(root / "rss")
        print(
            "RSS while writing 1,000,000 events: "
            + ", ".join(f"{n // 1000}k: {mib:.0f} MiB" for n, mib in marks)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
