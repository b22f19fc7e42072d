"""`make bench` (part 5): operator tools on a long session.

Records one session of CRA_BENCH_SESSION_CALLS guarded calls (default 20,000: 80,002 events,
about 55 MB of JSONL), then times, as medians of five runs after one warm-up:

- ``verify_chain`` of the file, events/s;
- ``timeline()`` (the model behind ``cra trace show`` and the report);
- ``render_report`` (the HTML page) and its size;
- ``replay_session`` against the same atlas;
- the ``cra`` process end to end for ``trace verify`` and ``trace report`` (start-up included).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.replay import load_events, replay_session
from cra_agents.report import render_report, timeline

ATLAS = atlas_path("github-ops")


def record(directory: Path, calls: int) -> Path:
    runtime = cra.Runtime(atlases=[ATLAS], store=f"jsonl://{directory}")
    session = runtime.create_session("bulk-bot", "a long session")
    for index in range(calls):
        action = "github.issue.list" if index % 3 else "github.pr.list"
        runtime.record_outcome(
            runtime.authorize(session.session_id, action, {"repo": "acme/app"}), result=index
        )
    runtime.end_session(session.session_id)
    runtime.close()
    return directory / f"{session.session_id}.trace.jsonl"


def timed(work: Callable[[], object], runs: int = 5) -> tuple[float, float]:
    work()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        work()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), max(samples)


def main() -> None:
    calls = int(os.environ.get("CRA_BENCH_SESSION_CALLS", "20000"))
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = record(Path(tmp), calls)
        events = load_events(path)
        size_mb = path.stat().st_size / 1e6
        cra_bin = str(Path(sys.executable).with_name("cra"))
        html = render_report(events)
        rows: list[tuple[str, float, float, str]] = []
        median, worst = timed(lambda: cra.verify_chain(path))
        rows.append(("verify_chain (file)", median, worst, f"{len(events) / median:,.0f} events/s"))
        median, worst = timed(lambda: timeline(events))
        rows.append(("timeline()", median, worst, f"{calls / median:,.0f} calls/s"))
        median, worst = timed(lambda: render_report(events))
        rows.append(("render_report", median, worst, f"{len(html) / 1e6:.1f} MB of HTML"))
        median, worst = timed(lambda: replay_session(events, [ATLAS]), runs=3)
        rows.append(
            ("replay_session (same atlas)", median, worst, f"{calls / median:,.0f} calls/s")
        )
        for argv in (["trace", "verify", str(path)], ["trace", "report", str(path), "-o"]):
            args = [cra_bin, *argv] + ([str(Path(tmp) / "r.html")] if argv[-1] == "-o" else [])

            def command(args: list[str] = args) -> None:
                subprocess.run(args, check=True, capture_output=True)  # noqa: S603 - our own cra

            median, worst = timed(command, runs=3)
            rows.append((f"cra {' '.join(argv[:2])} (process)", median, worst, ""))
    print(
        f"\nOperator tools on one session of {calls:,} calls ({len(events):,} events, "
        f"{size_mb:.0f} MB JSONL); load {load:.2f} → {os.getloadavg()[0]:.2f}"
    )
    print(f"{'measure':<34} {'median s':>9} {'max s':>8}  note")
    for name, median, worst, note in rows:
        print(f"{name:<34} {median:>9.3f} {worst:>8.3f}  {note}")


if __name__ == "__main__":
    main()
