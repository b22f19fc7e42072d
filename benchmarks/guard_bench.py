"""`make bench` (part 3): overhead of @cra.guarded over the plain function.

Allow path and denial path, SQLite store in ``async`` mode, no OpenTelemetry. The writer
thread runs, so its share of the GIL is part of the figure.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cra_agents as cra

ATLAS = Path(__file__).resolve().parents[1] / "examples" / "atlases" / "github-ops"


def _time(fn: Callable[[], object], n: int) -> tuple[float, float]:
    for _ in range(2000):
        fn()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(n * 0.99)] / 1000


def read_file_contents(repo: str, path: str) -> str:
    return path


def main() -> int:
    load = os.getloadavg()
    print(f"@cra.guarded overhead, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        cra.configure(atlases=[ATLAS], store=f"sqlite://{tmp}/t.db", durability="async")
        guarded = cra.guarded("github.file.read")(read_file_contents)

        @cra.guarded("github.repo.delete")
        def delete(repo: str, confirm_name: str) -> None:
            raise AssertionError("never runs")

        def denied() -> None:
            with contextlib.suppress(cra.ActionDenied):
                delete("acme/app", "acme/app")

        with cra.session(agent_id="bench-bot", goal="benchmark"):
            plain = _time(lambda: read_file_contents("acme/app", "README.md"), 20_000)
            allow = _time(lambda: guarded("acme/app", "README.md"), 20_000)
            deny = _time(denied, 20_000)
        cra.shutdown()
    print(f"{'call':36} {'median µs':>10} {'p99 µs':>10}")
    for name, (median, p99) in (
        ("plain function", plain),
        ("guarded, allowed", allow),
        ("guarded, denied", deny),
    ):
        print(f"{name:36} {median:>10.2f} {p99:>10.2f}")
    print(f"overhead, allowed: {allow[0] - plain[0]:.2f} µs median")
    return 0


if __name__ == "__main__":
    sys.exit(main())
