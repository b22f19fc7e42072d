"""RSS of one runtime over many short sessions (issue 14: ended sessions are released).

Each session is a ``cra.session`` block with one allowed guarded call, so every session has
started, decided, executed and ended. Prints the RSS every tenth of the run and the growth from
the first tenth (caches and allocator arenas are warm by then) to the end, per 20,000
sessions. Before the fix every ended session stayed in memory: +28 MiB per 20,000 sessions.

Environment: ``CRA_BENCH_SESSIONS`` (default 100,000), ``CRA_BENCH_STORE`` (``sqlite``,
default, or ``jsonl``: one file per session), ``CRA_BENCH_WRITER`` (``thread`` or ``process``,
default: the runtime's). Target: growth <= 2 MiB per 20,000 sessions.

    uv run python benchmarks/session_memory_bench.py
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time

import cra_agents as cra
from cra_agents.examples import atlas_path

ATLAS = atlas_path("github-ops")
TARGET_MIB_PER_20K = 2.0


def rss_mib() -> float:
    """This process's resident set, from /proc (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - not Linux


def main() -> int:
    sessions = int(os.environ.get("CRA_BENCH_SESSIONS", "100000"))
    kind = os.environ.get("CRA_BENCH_STORE", "sqlite")
    writer = os.environ.get("CRA_BENCH_WRITER")
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite://{directory}/t.db" if kind == "sqlite" else f"jsonl://{directory}/j"
        options = {"writer": writer} if writer else {}
        cra.configure([ATLAS], store=url, **options)  # type: ignore[call-overload]

        @cra.guarded("github.issue.list")
        def list_issues(repo: str) -> list[str]:
            return [repo]

        step = max(sessions // 10, 1)
        marks: list[tuple[int, float]] = [(0, rss_mib())]
        started = time.perf_counter()
        for index in range(1, sessions + 1):
            with cra.session(agent_id="bot", goal="One call"):
                list_issues("acme/app")
            if index % step == 0:
                cra.get_runtime().flush()
                gc.collect()
                marks.append((index, rss_mib()))
        elapsed = time.perf_counter() - started
        runtime = cra.get_runtime()
        kept = len(runtime._ended) + len(runtime._sessions)
        stats = runtime.trace_stats()
        cra.shutdown()
    print(f"sessions: {sessions:,} ({kind}, writer {writer or 'default'}), {elapsed:.1f} s")
    for index, rss in marks:
        print(f"  after {index:>7,} sessions: RSS {rss:7.1f} MiB")
    base_index, base = marks[1] if len(marks) > 2 else marks[0]
    end_index, end = marks[-1]
    per_20k = (end - base) / max(end_index - base_index, 1) * 20_000
    verdict = "PASS" if per_20k <= TARGET_MIB_PER_20K else "MISS"
    print(
        f"RSS growth from {base_index:,} to {end_index:,} sessions: {end - base:+.1f} MiB "
        f"= {per_20k:+.2f} MiB per 20,000 sessions (target <= {TARGET_MIB_PER_20K}) {verdict}; "
        f"session states in memory at the end: {kept}; events written {stats.written:,}, "
        f"unrecorded {stats.unrecorded}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
