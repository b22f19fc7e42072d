"""Timing loops shared by the benchmark scripts (not a test helper: nothing here asserts).

- :func:`samples` / :func:`time_calls`: warm up, then time each call with ``perf_counter_ns``,
  optionally pacing the calls with a sleep between them;
- :class:`Timing`: median, p99, mean and worst call of one loop, in microseconds;
- :func:`interleave`: repetitions of several contenders in one process, each rep timing every
  contender in turn, so machine noise hits them alike; :class:`Interleaved` gives per-rep
  ratios and differences;
- :func:`machine` and :func:`load_average` for the header above a table, :func:`rss_bytes`.

Import it as a sibling module (``from _timing import time_calls``): running
``python benchmarks/x.py`` puts ``benchmarks/`` on ``sys.path``, in any venv.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

WARMUP = 2000

Stat = Literal["median", "p99", "mean", "max"]
#: Sets up a contender for one rep and yields the call to time; torn down after the rep.
Contender = Callable[[], AbstractContextManager[Callable[[], object]]]


@dataclass(frozen=True)
class Timing:
    """Latency statistics of one timed loop, in microseconds."""

    n: int
    median: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, samples_ns: Sequence[int]) -> Timing:
        """Statistics of ``perf_counter_ns`` samples (p99: the sample at index ``n * 0.99``)."""
        ordered = sorted(samples_ns)
        return cls(
            n=len(ordered),
            median=statistics.median(ordered) / 1000,
            p99=ordered[int(len(ordered) * 0.99)] / 1000,
            mean=statistics.fmean(ordered) / 1000,
            max=ordered[-1] / 1000,
        )

    def stat(self, name: Stat) -> float:
        """One statistic by name."""
        values = {"median": self.median, "p99": self.p99, "mean": self.mean, "max": self.max}
        return values[name]


def samples(
    fn: Callable[[], object], n: int, *, warmup: int = WARMUP, pace: float = 0.0
) -> list[int]:
    """Nanoseconds of each of ``n`` calls of ``fn`` after ``warmup`` untimed calls.

    With ``pace`` (seconds), sleep that long after each timed call (outside the timing): the
    latency of a call when background work can catch up between calls.
    """
    for _ in range(warmup):
        fn()
    out: list[int] = []
    clock = time.perf_counter_ns
    if pace:
        for _ in range(n):
            t0 = clock()
            fn()
            out.append(clock() - t0)
            time.sleep(pace)
    else:
        for _ in range(n):
            t0 = clock()
            fn()
            out.append(clock() - t0)
    return out


def time_calls(
    fn: Callable[[], object], n: int, *, warmup: int = WARMUP, pace: float = 0.0
) -> Timing:
    """:class:`Timing` of ``n`` calls of ``fn`` (see :func:`samples`)."""
    return Timing.of(samples(fn, n, warmup=warmup, pace=pace))


def static(fn: Callable[[], object]) -> Contender:
    """A contender that needs no set-up: the same call in every rep."""
    return lambda: contextlib.nullcontext(fn)


@dataclass(frozen=True)
class Interleaved:
    """Per-rep timings of each contender, in the order the contenders were given."""

    reps: dict[str, list[Timing]]

    def median(self, name: str, stat: Stat = "median") -> float:
        """Median over the reps of one statistic of one contender."""
        return statistics.median(t.stat(stat) for t in self.reps[name])

    def worst(self, name: str) -> float:
        """The slowest single call of a contender over all reps, µs."""
        return max(t.max for t in self.reps[name])

    def ratios(
        self, name: str, other: str, *, baseline: str | None = None, stat: Stat = "median"
    ) -> list[float]:
        """Per rep, ``name`` ÷ ``other``; with ``baseline``, each minus the baseline first."""
        base = self.reps[baseline] if baseline else [None] * len(self.reps[name])
        out = []
        for mine, theirs, zero in zip(self.reps[name], self.reps[other], base, strict=True):
            offset = zero.stat(stat) if zero else 0.0
            out.append((mine.stat(stat) - offset) / (theirs.stat(stat) - offset))
        return out

    def differences(self, name: str, other: str, *, stat: Stat = "median") -> list[float]:
        """Per rep, ``name`` minus ``other``, µs."""
        return [
            mine.stat(stat) - theirs.stat(stat)
            for mine, theirs in zip(self.reps[name], self.reps[other], strict=True)
        ]


def interleave(
    contenders: Mapping[str, Contender],
    n: int,
    reps: int,
    *,
    warmup: int = WARMUP,
    alternate: bool = True,
) -> Interleaved:
    """Time every contender once per rep, ``reps`` times, in one process.

    Each contender is set up for its turn (``with contender() as call``), warmed up and timed
    over ``n`` calls. With ``alternate``, odd reps run the contenders in reverse order, so no
    contender always follows the same one.
    """
    results: dict[str, list[Timing]] = {name: [] for name in contenders}
    for rep in range(reps):
        order = list(contenders)
        if alternate and rep % 2:
            order.reverse()
        for name in order:
            with contenders[name]() as call:
                results[name].append(time_calls(call, n, warmup=warmup))
    return Interleaved(results)


def load_average() -> str:
    """``load average 1m 5m 15m`` of the machine, for the header above a table."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``unknown`` where there is none)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    return "unknown"


def machine() -> str:
    """CPUs usable by this process (as ``nproc`` counts), their model, and Python's version."""
    return f"{len(os.sched_getaffinity(0))} CPUs ({cpu_model()}), Python {sys.version.split()[0]}"


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc/self/statm``."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()
