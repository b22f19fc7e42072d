"""`make bench`: speed of resolve, single-action decisions and atlas loading.

Prints medians and p99 over at least 20,000 calls after warm-up, the ratio to a plain Python
call, and a drift check (latency of the first vs the last 10,000 of 100,000 resolves). Numbers
are wall-clock on whatever machine runs it: read them with the load average printed above them.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _timing import Timing, load_average, samples
from import_bench import STATEMENT, import_costs

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.policy import ConditionContext, PolicyEngine

ROOT = Path(__file__).resolve().parents[1]
GITHUB_OPS = atlas_path("github-ops")


def _stats(samples_ns: list[int]) -> tuple[float, float]:
    timing = Timing.of(samples_ns)
    return timing.median, timing.p99


def generated_atlas(actions: int = 200, policies: int = 100) -> dict[str, object]:
    """A synthetic atlas: ``actions`` actions in 20 domains, ``policies`` mixed policies."""
    ids = [f"svc{d}.res{r}.op{o}" for d in range(20) for r in range(5) for o in range(2)][:actions]
    kinds = ["allow", "deny", "require_approval", "rate_limit"]
    pols: list[dict[str, object]] = []
    for i in range(policies):
        kind = kinds[i % 4]
        pattern = f"svc{i % 20}.res{(i // 20) % 5}.*" if i % 3 else ids[(i * 7) % len(ids)]
        pol: dict[str, object] = {
            "policy_id": f"p{i}",
            "type": kind,
            "actions": [pattern],
            "priority": i % 5,
        }
        if kind == "rate_limit":
            pol["parameters"] = {"max_calls": 1000, "window_seconds": 60}
        if i % 10 == 0:
            pol["conditions"] = {"risk_tiers": ["high", "critical"]}
        pols.append(pol)
    return {
        "atlas_version": "1.0",
        "atlas_id": "com.example.generated",
        "version": "1.0.0",
        "name": "Generated",
        "description": "benchmark atlas",
        "actions": [
            {"action_id": a, "name": a, "description": a, "parameters_schema": {"type": "object"}}
            for a in ids
        ],
        "policies": pols,
    }


def main() -> int:
    print(
        f"python {sys.version.split()[0]}, cra-agents {cra.__version__}, {os.cpu_count()} cores, "
        f"{load_average()}"
    )
    rows: list[tuple[str, int, float, float]] = []

    def plain() -> int:
        return 1

    rows.append(("plain Python call (baseline)", 20000, *_stats(samples(plain, 20000))))

    # The writer is held back while timing (a long flush interval, a large backlog) and runs
    # between sessions: this row is the caller's cost; writing is measured in trace_bench.py.
    runtime = cra.Runtime(
        atlases=[GITHUB_OPS],
        store=cra.MemoryStore(max_sessions=8),
        flush_interval=3600,
        max_backlog=10**7,
    )
    sessions = 0

    def resolve_batch(count: int) -> list[int]:
        nonlocal sessions
        out: list[int] = []
        while len(out) < count:
            session = runtime.create_session("triage-bot", "Triage new bug reports and label them")
            requests = [cra.resolve_request(session) for _ in range(1000)]
            clock = time.perf_counter_ns
            for request in requests:
                t0 = clock()
                runtime.resolve(request)
                out.append(clock() - t0)
            runtime.end_session(session.session_id)
            runtime.flush()
            sessions += 1
        return out

    resolve_batch(3000)  # warm-up
    resolved = resolve_batch(100_000)
    rows.append(
        ("resolve, github-ops (15 actions, events queued)", len(resolved), *_stats(resolved))
    )
    first, last = _stats(resolved[:10_000]), _stats(resolved[-10_000:])

    # Sustained: default settings, the writer running beside the caller (sharing the GIL) and
    # writing a JSONL store; callers are held back whenever 2048 events wait.
    with tempfile.TemporaryDirectory() as tmp:
        live = cra.Runtime(atlases=[GITHUB_OPS], store=f"jsonl://{tmp}")
        session = live.create_session("triage-bot", "Triage new bug reports and label them")
        requests = [cra.resolve_request(session) for _ in range(5000)]
        sustained: list[int] = []
        t0 = time.perf_counter()
        for request in requests:
            t1 = time.perf_counter_ns()
            live.resolve(request)
            sustained.append(time.perf_counter_ns() - t1)
        live.close()
        hashed = time.perf_counter() - t0
        queued = len(cra.open_store(f"jsonl://{tmp}").read(session.session_id))
    rows.append(("resolve, sustained, writer running (JSONL)", len(sustained), *_stats(sustained)))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "atlas.json"
        path.write_text(json.dumps(generated_atlas()), encoding="utf-8")
        atlas = cra.load_atlas(path)
        engine = PolicyEngine([atlas])
        ctx = ConditionContext(agent_id="bench-agent", risk_tier="low")
        action_ids = [a.action_id for a in atlas.actions]
        index = 0

        def decide_one() -> object:
            nonlocal index
            index = (index + 1) % len(action_ids)
            return engine.decide(action_ids[index], ctx)

        rows.append(
            (
                "decide one action (200 actions, 100 policies)",
                20000,
                *_stats(samples(decide_one, 20000)),
            )
        )
        load_samples = samples(lambda: cra.load_atlas(path), 300, warmup=20)
        rows.append(("load_atlas, generated 200/100 atlas (file)", 300, *_stats(load_samples)))

    base = rows[0][2]
    print()
    print(f"{'benchmark':52} {'calls':>8} {'median µs':>10} {'p99 µs':>10} {'x plain':>9}")
    print("-" * 93)
    for name, n, median, p99 in rows:
        print(f"{name:52} {n:>8} {median:>10.2f} {p99:>10.2f} {median / base:>9.0f}")
    print()
    print(
        f"resolve drift: first 10k median {first[0]:.2f} µs p99 {first[1]:.2f} µs; "
        f"last 10k median {last[0]:.2f} µs p99 {last[1]:.2f} µs"
    )
    print(
        f"sustained: 5,000 resolves written as {queued} events in {hashed:.2f} s "
        f"({queued / hashed:,.0f} events/s incl. resolve)"
    )
    bare, pydantic, ours = import_costs()
    print(
        f"{STATEMENT}: {ours * 1000:.0f} ms beyond a bare interpreter ({bare * 1000:.0f} ms); "
        f"pydantic's BaseModel alone: {pydantic * 1000:.0f} ms (details: import_bench.py)"
    )
    gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
