"""Start-up time of the ``cra`` command: what ``cra --help`` and ``cra atlas validate`` add to
interpreter start.

Runs fresh interpreters, interleaved so that machine noise hits every contender alike: in each
of N rounds ``python -c pass``, ``python -m cra_agents.cli --help`` and ``python -m
cra_agents.cli atlas validate ATLAS`` once each (output discarded, as when piped), and, for
reference, ``validate_atlas(ATLAS)`` from Python without the command. Bytecode is
compiled first, as an installed package has it. Prints the median, p90 and mean wall time of
each, the median beyond a bare interpreter, and whether that meets the 150 ms target, with the
1-minute load average before and after. The median CPU time (user + system) of each process is
printed beside it: on a busy machine wall time also counts waiting for a CPU, CPU time does not.

    python benchmarks/cli_start_bench.py [--runs N] [--atlas PATH]
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from cra_agents.examples import atlas_path

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 150.0


def contenders(atlas: str) -> dict[str, list[str]]:
    """Label to argv of each timed command."""
    cli = [sys.executable, "-m", "cra_agents.cli"]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "cra --help": [*cli, "--help"],
        "cra atlas validate": [*cli, "atlas", "validate", atlas],
        # The same work without the command: the floor the CLI adds its own start-up to.
        "validate_atlas()": [
            sys.executable,
            "-c",
            f"from cra_agents.atlas import validate_atlas; validate_atlas({atlas!r}, strict=False)",
        ],
    }


def compile_bytecode() -> None:
    """Compile the package and the environment's site-packages (a no-op when up to date)."""
    compileall.compile_dir(str(ROOT / "cra_agents"), quiet=1, workers=0)
    compileall.compile_dir(sysconfig.get_paths()["purelib"], quiet=1, workers=0)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU milliseconds of one fresh process running ``argv``."""
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    elapsed = (time.perf_counter() - t0) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}")
    return elapsed, (_cpu_seconds() - cpu0) * 1000


def measure(
    commands: dict[str, list[str]], runs: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU samples of ``runs`` rounds, each running every command once, after one
    untimed warm-up round."""
    wall: dict[str, list[float]] = {label: [] for label in commands}
    cpu: dict[str, list[float]] = {label: [] for label in commands}
    for argv in commands.values():
        run_once(argv)
    for _ in range(runs):
        for label, argv in commands.items():
            elapsed, used = run_once(argv)
            wall[label].append(elapsed)
            cpu[label].append(used)
    return wall, cpu


def p90(values: list[float]) -> float:
    """The 90th percentile (the sample at index ``n * 0.9``)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="rounds (default 30)")
    parser.add_argument("--atlas", default=str(atlas_path("github-ops")), help="atlas to validate")
    args = parser.parse_args()
    compile_bytecode()
    load_before = os.getloadavg()[0]
    samples, cpu = measure(contenders(args.atlas), args.runs)
    load_after = os.getloadavg()[0]
    base = statistics.median(samples["python -c pass"])
    cpu_base = statistics.median(cpu["python -c pass"])
    print(
        f"cra start-up, {args.runs} interleaved runs each, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average (1 min) {load_before:.2f} before, "
        f"{load_after:.2f} after"
    )
    print(
        f"{'command':<20} {'median ms':>10} {'p90 ms':>8} {'mean ms':>8} "
        f"{'beyond python':>14}  {'target ' + format(TARGET_MS, '.0f') + ' ms':<14}"
        f"{'CPU ms':>7} {'CPU beyond':>11}"
    )
    for label, values in samples.items():
        median = statistics.median(values)
        cpu_median = statistics.median(cpu[label])
        bare = label == "python -c pass"
        gated = label.startswith("cra ")
        verdict = "" if not gated else "PASS" if median - base <= TARGET_MS else "FAIL"
        beyond = "" if bare else f"{median - base:.1f}"
        cpu_beyond = "" if bare else f"{cpu_median - cpu_base:.1f}"
        print(
            f"{label:<20} {median:>10.1f} {p90(values):>8.1f} {statistics.fmean(values):>8.1f} "
            f"{beyond:>14}  {verdict:<14}{cpu_median:>7.1f} {cpu_beyond:>11}"
        )


if __name__ == "__main__":
    main()
