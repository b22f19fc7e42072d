"""The ingest path in one process: ``parse_batch`` and each store's ``ingest``, per event.

    python benchmarks/ingest_bench.py [--rounds 7] [--sessions 200] [--stores sqlite,postgres]
                                      [--dsn URL] [--tree DIR]

A batch of real runtime events (``--sessions`` sessions of 31 events: a resolve, three
executes, the session's start and end) is parsed, then ingested into a fresh store each round
in three steps: **new** (the first half of every session: every session is new to the store),
**continue** (the rest: every session continues its stored head) and **retry** (the whole
batch again: every event is a duplicate, found in the stored ranges), after a warm-up batch of
another session that opens the store's ingest connection. Each figure is the
median over the rounds of the step's time divided by its events; PostgreSQL steps also count
the round trips to the server (a proxy between the store and the server counts the answers
the client waits for: one per query or per pipeline's Sync, two per COPY; psycopg sends its
BEGIN with a Sync of its own).

PostgreSQL: ``--dsn`` or ``CRA_TEST_PG_DSN`` (a server where the user may create databases),
else a throwaway cluster with fsync on (the test harness; PostgreSQL's binaries installed).

Before and after: ``--tree DIR`` imports ``cra_agents`` from another source tree (e.g. ``git
worktree add /tmp/base <commit>``), so two versions run the same script; alternate the two a
few times and compare medians. A benchmark reports; it never fails on timing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import load_average, machine  # noqa: E402

STEPS = ("new", "continue", "retry")


class RoundTrips:
    """A TCP proxy to a PostgreSQL server that counts the round trips of its clients.

    A round trip is an answer the client must wait for before it goes on: a ``ReadyForQuery``
    (one per simple query or per ``Sync``, so a pipeline of statements is one) or a
    ``CopyInResponse`` (a COPY waits for it before streaming its rows, and for the
    ``ReadyForQuery`` after them). The proxy reads the server's side of the protocol; clients
    must not ask for TLS (see :func:`through`).
    """

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self.turns = 0
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self._upstream, timeout=30)
            for sock in (client, server):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, server]
            for source, target, count in ((client, server, False), (server, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, target, count), daemon=True
                ).start()

    def _pump(self, source: socket.socket, target: socket.socket, count: bool) -> None:
        pending = b""  # the server's bytes not yet split into messages
        while True:
            try:
                data = source.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                for sock in (source, target):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                return
            if count:
                pending += data
                waits = 0
                while len(pending) >= 5:  # a type byte and a length that counts itself
                    size = 1 + int.from_bytes(pending[1:5], "big")
                    if len(pending) < size:
                        break
                    waits += pending[0] in b"ZG"
                    pending = pending[size:]
                with self._lock:
                    self.turns += waits
            try:
                target.sendall(data)
            except OSError:
                return

    def reset(self) -> None:
        """Count from zero."""
        with self._lock:
            self.turns = 0

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closed = True
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(2)


def through(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's, without TLS (on loopback)."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    query = "&".join(q for q in (parts.query, "sslmode=disable&gssencmode=disable") if q)
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}", query=query))


def batch_lines(sessions: int) -> tuple[list[bytes], list[list[bytes]]]:
    """The stored lines of ``sessions`` recorded sessions: all, and by session."""
    import cra_agents as cra
    from cra_agents.examples import atlas_path
    from cra_agents.trace._jsonl import event_line

    with cra.Runtime(atlases=[atlas_path("github-ops")], store="memory://") as runtime:
        ids = []
        for index in range(sessions):
            session = runtime.create_session(f"bot-{index}", "Triage new bug reports")
            resolution = runtime.resolve(cra.resolve_request(session))
            for _ in range(3):
                runtime.execute(
                    cra.execute_request(
                        session, resolution.resolution_id, "github.issue.list", {"repo": "acme/app"}
                    )
                )
            runtime.end_session(session.session_id)
            ids.append(session.session_id)
        runtime.flush()
        chains = [[event_line(e) for e in runtime.trace_events(sid)] for sid in ids]
    return [line for chain in chains for line in chain], chains


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


@contextmanager
def postgres(dsn: str | None) -> Iterator[str]:
    """A server DSN: the one given, else a throwaway cluster (fsync on) destroyed afterwards."""
    if dsn:
        yield dsn
        return
    from tests.harness.postgres import pg_bindir, start_cluster

    bindir = pg_bindir()
    if bindir is None:
        sys.exit("PostgreSQL is not installed and neither --dsn nor CRA_TEST_PG_DSN is set")
    cluster = start_cluster(bindir, fsync=True)
    try:
        yield cluster.dsn
    finally:
        cluster.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--dsn", default=os.environ.get("CRA_TEST_PG_DSN"))
    parser.add_argument("--tree", default=str(ROOT), help="import cra_agents from this tree")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # the test harness
    sys.path.insert(0, str(Path(args.tree).resolve()))
    import cra_agents
    from cra_agents.trace import parse_batch

    stores = [s for s in args.stores.split(",") if s]
    lines, chains = batch_lines(args.sessions)
    half = len(chains[0]) // 2
    data = {
        "new": b"".join(line for chain in chains for line in chain[:half]),
        "continue": b"".join(line for chain in chains for line in chain[half:]),
        "retry": b"".join(lines),
    }
    parsed = {step: parse_batch(body) for step, body in data.items()}
    parsed["warm-up"] = parse_batch(b"".join(batch_lines(1)[0]))
    counts = {step: len(events) for step, events in parsed.items()}
    print(
        f"# Ingest, per event ({machine()}, {load_average()})\n\n"
        f"cra_agents from {Path(cra_agents.__file__).parent.parent}; {len(lines):,} events of "
        f"{args.sessions} sessions ({sum(map(len, lines)) / len(lines):.0f} bytes a line); "
        f"steps: new {counts['new']:,}, continue {counts['continue']:,}, retry "
        f"{counts['retry']:,} events; {args.rounds} rounds\n"
    )
    results: dict[str, list[float]] = {"parse_batch": []}
    trips: dict[str, int] = {}
    servers = postgres(args.dsn) if "postgres" in stores else contextlib.nullcontext(None)
    with servers as dsn:
        proxy = None
        server = None
        if dsn is not None:
            from tests.harness.postgres import Server

            server = Server(dsn)
            parts = urlsplit(dsn)
            proxy = RoundTrips(parts.hostname or "127.0.0.1", parts.port or 5432)
        try:
            for _ in range(args.rounds):
                spent = timed(lambda: parse_batch(data["retry"]))
                results["parse_batch"].append(spent / counts["retry"] * 1e6)
                for kind in stores:
                    run_round(kind, parsed, counts, results, trips, server, proxy)
        finally:
            if proxy is not None:
                proxy.close()
    print("| measure | µs/event (median) | min | max | round trips per batch |")
    print("|---|---:|---:|---:|---:|")
    for name, values in results.items():
        trip = f"{trips[name]:,}" if name in trips else ""
        print(
            f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | "
            f"{max(values):.1f} | {trip} |"
        )
    print(f"\nafter: {load_average()}")


def run_round(
    kind: str,
    parsed: dict[str, Any],
    counts: dict[str, int],
    results: dict[str, list[float]],
    trips: dict[str, int],
    server: Any,
    proxy: RoundTrips | None,
) -> None:
    """One round of the three steps on a fresh store of ``kind``."""
    import tempfile

    from cra_agents.trace import open_store

    done: Callable[[], object]
    if kind == "sqlite":
        folder = tempfile.mkdtemp(prefix="cra-ingest-bench-")
        url, done = f"sqlite://{folder}/ingest.db", lambda: shutil.rmtree(folder)
    elif kind == "postgres" and server is not None and proxy is not None:
        created = server.create_database()
        url, done = through(created, proxy.port), lambda: server.drop_database(created)
    else:
        sys.exit(f"unknown store {kind!r}: sqlite or postgres")
    store: Any = open_store(url)
    try:
        store.ingest(parsed["warm-up"])  # opens the store's ingest connection
        for step in STEPS:
            if proxy is not None and kind == "postgres":
                proxy.reset()
            spent = timed(lambda: store.ingest(parsed[step]))  # noqa: B023 - called at once
            results.setdefault(f"{kind} ingest, {step}", []).append(spent / counts[step] * 1e6)
            if proxy is not None and kind == "postgres":
                trips[f"{kind} ingest, {step}"] = proxy.turns
    finally:
        store.close()
        done()


if __name__ == "__main__":
    main()
