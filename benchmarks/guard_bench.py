"""`make bench` (part 3): overhead of @cra.guarded over the plain function.

SQLite store in ``async`` mode. Rows:

- back to back: calls in a tight loop. The trace writer thread (hashing, SQLite) shares the GIL
  with the caller, so this is the sustained cost per call, writer included.
- paced: one call every 0.5 ms (2,000 calls/s, still far above any agent), so the writer
  catches up between calls: the latency a call adds.
- with an OpenTelemetry SDK span: a TracerProvider with a BatchSpanProcessor whose exporter
  discards (the SDK's own cost, no network).
- RSS over ``CRA_BENCH_CALLS`` (default 1,000,000) allowed calls in one session.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import cra_agents as cra
from cra_agents.examples import atlas_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Timing, interleave, load_average, rss_bytes, static, time_calls
from reference_guard import ToyGuard  # the yardstick, beside this file

ATLAS = atlas_path("github-ops")


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def read_file_contents(repo: str, path: str) -> str:
    return path


def main() -> int:
    print(f"@cra.guarded overhead, {load_average()}")
    rows: list[tuple[str, Timing]] = []
    total = int(os.environ.get("CRA_BENCH_CALLS", "1000000"))
    with tempfile.TemporaryDirectory() as tmp:
        cra.configure(atlases=[ATLAS], store=f"sqlite://{tmp}/t.db", durability="async")
        guarded = cra.guarded("github.file.read")(read_file_contents)

        @cra.guarded("github.repo.delete")
        def delete(repo: str, confirm_name: str) -> None:
            raise AssertionError("never runs")

        def denied() -> None:
            with contextlib.suppress(cra.ActionDenied):
                delete("acme/app", "acme/app")

        toy = ToyGuard(f"{tmp}/toy.jsonl", {"github.file.read"})
        toy_guarded = toy.guard("github.file.read")(read_file_contents)
        with cra.session(agent_id="bench-bot", goal="benchmark"):
            rows.append(
                ("plain function", time_calls(lambda: read_file_contents("a/b", "R"), 20_000))
            )
            # Three interleaved repetitions against the toy guard: the ratio is taken within
            # one process, so machine noise hits both alike.
            reps = interleave(
                {
                    "ours": static(lambda: guarded("a/b", "R")),
                    "theirs": static(lambda: toy_guarded("a/b", "R")),
                },
                20_000,
                3,
                alternate=False,
            )
            rows.append(
                (
                    "reference toy guard (JSONL chain)",
                    time_calls(lambda: toy_guarded("a/b", "R"), 20_000),
                )
            )
            rows.append(
                ("guarded, allowed, back to back", time_calls(lambda: guarded("a/b", "R"), 20_000))
            )
            rows.append(
                (
                    "guarded, allowed, paced 2k/s",
                    time_calls(lambda: guarded("a/b", "R"), 5_000, pace=0.0005),
                )
            )
            rows.append(("guarded, denied, back to back", time_calls(denied, 20_000)))
            rows.append(("guarded, denied, paced 2k/s", time_calls(denied, 5_000, pace=0.0005)))
        cra.shutdown()

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(_Discard(), max_queue_size=16_384))
        cra.configure(
            atlases=[ATLAS], store=f"sqlite://{tmp}/otel.db", durability="async", otel=provider
        )
        guarded = cra.guarded("github.file.read")(read_file_contents)
        with cra.session(agent_id="bench-bot", goal="benchmark with spans"):
            rows.append(
                (
                    "guarded + OTel SDK span, back to back",
                    time_calls(lambda: guarded("a/b", "R"), 20_000),
                )
            )
            rows.append(
                (
                    "guarded + OTel SDK span, paced 2k/s",
                    time_calls(lambda: guarded("a/b", "R"), 5_000, pace=0.0005),
                )
            )
        cra.shutdown()
        provider.shutdown()

        cra.configure(atlases=[ATLAS], store=f"sqlite://{tmp}/rss.db", durability="async")
        guarded = cra.guarded("github.file.read")(read_file_contents)
        marks: list[tuple[int, float]] = []
        started = time.perf_counter()
        with cra.session(agent_id="bench-bot", goal="one million calls"):
            for index in range(total):
                guarded("a/b", "R")
                if index % (total // 10 or 1) == 0:
                    marks.append((index, rss_bytes() / 2**20))
        elapsed = time.perf_counter() - started
        marks.append((total, rss_bytes() / 2**20))
        cra.shutdown()

    toy.close()
    plain = rows[0][1].median
    print(f"{'call':40} {'median µs':>10} {'p99 µs':>10} {'overhead µs':>12}")
    for name, timing in rows:
        print(
            f"{name:40} {timing.median:>10.2f} {timing.p99:>10.2f} {timing.median - plain:>12.2f}"
        )
    ours = [t.median for t in reps.reps["ours"]]
    theirs = [t.median for t in reps.reps["theirs"]]
    ratios = reps.ratios("ours", "theirs")
    print(
        "allowed guarded call vs the reference toy guard, 3 interleaved reps: "
        + ", ".join(
            f"{o:.2f}/{t:.2f} µs = {r:.2f}x" for o, t, r in zip(ours, theirs, ratios, strict=True)
        )
        + f" (median {statistics.median(ratios):.2f}x)"
    )
    print(
        f"RSS over {total:,} allowed calls ({elapsed:.0f} s, {elapsed / total * 1e6:.1f} µs/call): "
        + ", ".join(f"{index // 1000}k {rss:.0f} MiB" for index, rss in marks)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
