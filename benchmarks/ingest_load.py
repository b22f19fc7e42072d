"""Load test of the ingest path (issue 17): N agent processes x M events into one ingest server.

    python benchmarks/ingest_load.py --agents 4 --events 5000 [--store URL] [--durability D]

One ``cra ingest serve`` subprocess (uvicorn, one worker, 127.0.0.1, access log off) over the
store (default: a SQLite file in a temporary directory; ``--store postgresql://...`` for
PostgreSQL); N agent subprocesses, each a :class:`~cra_agents.Runtime` recording through the HTTP
sink (``store="http://127.0.0.1:PORT?spool=..."``, zstd): sessions of 100 events (extension
events of about 150 bytes of payload, plus the session's start and end), M events in all per
agent. Each agent records as fast as it can, waits until its spool is delivered, and reports its
sink's stats.

Reported: events ingested per second (every agent's events, from the first agent's first event
to the last agent's last delivery), how fast the agents recorded into their spools, p50/p99
round-trip time of the batches (measured by the sinks: post to 200), bytes per event on the wire
(compressed) and in the store (file size / events; SQLite only), and whether every stored chain
verifies with exactly the events the agents recorded.

Bounded: ``--timeout`` (default 300 s) for the whole run; every process is killed at the end.
A benchmark reports; it never fails on timing (exit 1 only if the stored chains do not verify or
events are missing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import load_average, machine

KEY = "bench-ingest-key-0123456789abcdef"
SESSION_EVENTS = 100


def agent(url: str, spool: str, events: int, durability: str, timeout: float) -> int:
    """One agent process: record ``events`` events, wait for delivery, print stats as JSON."""
    import dataclasses

    import cra_agents as cra
    from cra_agents.trace import HttpSink

    os.environ["CRA_INGEST_API_KEY"] = KEY
    runtime = cra.Runtime(
        store=f"{url}?spool={spool}&linger=0.02&drain=5",
        durability=durability,  # type: ignore[arg-type]
    )
    sink = runtime.store
    if not isinstance(sink, HttpSink):
        raise TypeError(f"the store is {type(sink).__name__}, not the HTTP sink")
    text = "x" * 120
    started = time.time()
    left, sessions = events, 0
    while left > 0:
        session = runtime.create_session(f"load-{os.getpid()}", "load test")
        steps = max(min(SESSION_EVENTS, left) - 2, 1)
        for index in range(steps):
            runtime.record_event(session.session_id, "bench.step", {"i": index, "text": text})
        runtime.end_session(session.session_id)
        left -= steps + 2
        sessions += 1
    runtime.flush()
    recorded = time.time()
    delivered_ok = sink.wait_delivered(timeout)
    delivered = time.time()
    stats = dataclasses.asdict(sink.stats())
    runtime.close()
    stats.update(
        started=started,
        recorded=recorded,
        delivered=delivered,
        delivered_ok=delivered_ok,
        sessions=sessions,
        appended=runtime.trace_stats().appended,
    )
    print(json.dumps(stats), flush=True)
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server(store: str, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    config = tmp / "ingest.toml"
    config.write_text(
        "access_log = false\nmax_body_bytes = 8388608\n[rate_limit]\nper_second = 0\n"
        f'[[api_keys]]\nname = "bench"\nkey = "{KEY}"\nscopes = ["ingest"]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRA_")}
    argv = ["--port", str(port), "--store", store, "--config", str(config)]
    process = subprocess.Popen(  # noqa: S603 - this interpreter, our CLI
        [sys.executable, "-m", "cra_agents.cli", "ingest", "serve", *argv],
        env=env,
        stdout=(tmp / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError((tmp / "server.log").read_text(errors="replace")[-2000:])
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return process
        if time.monotonic() > deadline:
            raise RuntimeError("the ingest server did not start")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run(args: argparse.Namespace) -> int:
    from cra_agents.trace import open_store, verify_store

    tmp = Path(tempfile.mkdtemp(prefix="cra-ingest-load-"))
    store = args.store or f"sqlite://{tmp / 'ingest.db'}"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.timeout
    server = _server(store, port, tmp)
    agents: list[subprocess.Popen[str]] = []
    results: list[dict[str, Any]] = []
    try:
        for index in range(args.agents):
            argv = ["--agent", url, str(tmp / f"spool-{index}"), str(args.events)]
            argv += ["--durability", args.durability, "--timeout", str(args.timeout)]
            agents.append(
                subprocess.Popen(  # noqa: S603 - this script, this interpreter
                    [sys.executable, __file__, *argv],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
        for process in agents:
            out, err = process.communicate(timeout=max(deadline - time.monotonic(), 1))
            if process.returncode != 0:
                raise RuntimeError(f"an agent failed: {err[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in agents:
            if process.poll() is None:
                _stop(process, signal.SIGKILL)
        _stop(server)
    recorded_events = sum(r["appended"] for r in results)
    sent = sum(r["events_sent"] for r in results)
    duplicates = sum(r["duplicates"] for r in results)
    first = min(r["started"] for r in results)
    last = max(r["delivered"] for r in results)
    record_rate = sum(r["appended"] / max(r["recorded"] - r["started"], 1e-9) for r in results)
    wire = sum(r["wire_bytes"] for r in results)
    raw = sum(r["raw_bytes"] for r in results)
    p50 = max(r["latency_p50_ms"] or 0.0 for r in results)
    p99 = max(r["latency_p99_ms"] or 0.0 for r in results)
    batches = sum(r["batches_sent"] for r in results)
    opened = open_store(store)
    try:
        verdicts = verify_store(opened)
        stored = sum(v.event_count for v in verdicts)
        valid = all(v.valid for v in verdicts)
    finally:
        opened.close()
    db = Path(store.removeprefix("sqlite://")) if store.startswith("sqlite://") else None
    stored_bytes = (
        sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) if db is not None else None
    )
    ok = valid and stored == recorded_events and all(r["delivered_ok"] for r in results)
    print(f"# ingest load: {machine()}; {load_average()}")
    print(
        f"# {args.agents} agents x {args.events} events, durability={args.durability}, "
        f"store={store.split('://')[0]}"
    )
    rows = [
        ("events recorded by the agents", f"{recorded_events}"),
        ("events stored (verified chains)", f"{stored} in {len(verdicts)} sessions"),
        ("every stored chain verifies", "yes" if valid else "NO"),
        ("events sent (of which duplicates)", f"{sent} ({duplicates})"),
        ("events/s ingested (first event -> last delivery)", f"{stored / (last - first):,.0f}"),
        ("events/s recorded into the spools (sum of agents)", f"{record_rate:,.0f}"),
        ("batches sent", f"{batches} ({sent / max(batches, 1):.0f} events each)"),
        ("batch round trip p50 / p99 (worst agent)", f"{p50:.1f} / {p99:.1f} ms"),
        (
            "bytes per event on the wire (zstd) / before",
            f"{wire / max(sent, 1):.0f} / {raw / max(sent, 1):.0f}",
        ),
    ]
    if stored_bytes is not None:
        rows.append(
            ("bytes per event stored (SQLite files)", f"{stored_bytes / max(stored, 1):.0f}")
        )
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    if not ok:
        print("FAILED: missing events or invalid chains")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--events", type=int, default=5000, help="events per agent")
    parser.add_argument("--store", help="the ingest server's store URL (default: SQLite)")
    parser.add_argument("--durability", default="async", choices=["async", "group", "sync"])
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--agent", nargs=3, metavar=("URL", "SPOOL", "EVENTS"))
    args = parser.parse_args()
    if args.agent:
        url, spool, events = args.agent
        return agent(url, spool, int(events), args.durability, args.timeout)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
