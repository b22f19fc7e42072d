"""Partitions between agents and a real ingest server (RELIABILITY §3.11 N1, N3).

``cra ingest serve`` runs as a subprocess (its own process group) on 127.0.0.1; agents are
subprocesses too (:mod:`tests.harness.sink_agent`), recording guarded calls with
``durability="group"`` through ``store="http://...?spool=DIR"`` and writing down, after every
call that returned, the last sequence it acknowledged. Mid-run the server is frozen (SIGSTOP:
connections are accepted by the kernel, never answered) and thawed, later killed (SIGKILL) and
restarted on the same port and store; an agent is killed (SIGKILL) while the ingest is down
and a new one drains its spool. At the end every acknowledged event is stored exactly once and
every stored chain verifies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cra_agents.trace import open_store, verify_store
from tests.harness.http_server import free_port

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
    pytest.mark.timeout(120),
]

KEY = "partition-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[1]


class IngestProcess:
    """``cra ingest serve`` in a process group of its own, restartable on the same port."""

    def __init__(self, store: str, tmp: Path) -> None:
        self.store = store
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "ingest.toml"
        self.config.write_text(
            "access_log = false\n[rate_limit]\nper_second = 0\n"
            f'[[api_keys]]\nname = "collector"\nkey = "{KEY}"\nscopes = ["ingest"]\n'
        )
        self.log = tmp / "ingest.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRA_")}
        with self.log.open("ab") as log:
            argv = ["--port", str(self.port), "--store", self.store, "--config", str(self.config)]
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cra_agents.cli", "ingest", "serve", *argv],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text(errors="replace")[-3000:]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError("cra ingest serve did not become healthy")

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None


def _agent(
    url: str, spool: Path, acks: Path, *, sessions: int, calls: int, pause: float
) -> subprocess.Popen[str]:
    store = f"{url}?spool={spool}&timeout=1&connect_timeout=1&backoff=0.05&max_backoff=0.5"
    store += "&linger=0.01&drain=20"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRA_")}
    env["CRA_INGEST_API_KEY"] = KEY
    options = ["--sessions", str(sessions), "--calls", str(calls), "--pause", str(pause)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.harness.sink_agent", store, str(acks), *options],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def _acked(acks: Path) -> dict[str, int]:
    """Session → the last sequence an agent saw acknowledged."""
    last: dict[str, int] = {}
    if not acks.exists():
        return last
    for line in acks.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            last[parts[0]] = max(last.get(parts[0], -1), int(parts[1]))
    return last


def _wait_acks(acks: Path, count: int, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if acks.exists() and len(acks.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the agent did not acknowledge {count} calls")


def _finish(agent: subprocess.Popen[str], timeout: float = 60) -> str:
    try:
        out, err = agent.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(agent.pid, signal.SIGKILL)
        out, err = agent.communicate()
        raise AssertionError(f"the agent did not finish: {err[-3000:]}") from None
    assert agent.returncode == 0, err[-3000:]
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'ingest.db'}"
    try:  # the PostgreSQL fixtures (tests/harness/postgres.py) skip or fail for themselves
        url: str = request.getfixturevalue("pg_url")
    except pytest.FixtureLookupError:
        pytest.skip("the PostgreSQL store and its test fixtures are not on this branch yet")
    return url


@pytest.fixture
def server(store_url: str, tmp_path: Path) -> Iterator[IngestProcess]:
    ingest = IngestProcess(store_url, tmp_path)
    ingest.start()
    try:
        yield ingest
    finally:
        ingest.kill()


def test_stop_kill_restart_and_a_killed_agent_lose_nothing(
    server: IngestProcess, tmp_path: Path
) -> None:
    spool_a, acks_a = tmp_path / "spool-a", tmp_path / "acks-a"
    spool_b, acks_b = tmp_path / "spool-b", tmp_path / "acks-b"
    # Agent A runs through a SIGSTOP of the server and a kill -9 + restart.
    agent_a = _agent(server.url, spool_a, acks_a, sessions=3, calls=60, pause=0.03)
    try:
        _wait_acks(acks_a, 10)
        server.signal(signal.SIGSTOP)  # connects, never answers: read timeouts
        time.sleep(3)
        server.signal(signal.SIGCONT)
        _wait_acks(acks_a, 50)
        server.kill()  # kill -9 mid-run: refused connections
        # Agent B starts while the ingest is down and is killed -9 with a spool full of events.
        agent_b = _agent(server.url, spool_b, acks_b, sessions=2, calls=200, pause=0.0)
        _wait_acks(acks_b, 20)
        os.killpg(agent_b.pid, signal.SIGKILL)
        agent_b.communicate(timeout=10)
        assert list(spool_b.glob("*.jsonl")), "B's events should wait in its spool"
        time.sleep(1)
        server.start()  # same port, same store
        stats_a = _finish(agent_a)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent_a.pid, signal.SIGKILL)
    # A new agent on B's spool drains what the killed one left, then records its own calls.
    agent_b2 = _agent(server.url, spool_b, acks_b, sessions=1, calls=2, pause=0.0)
    stats_b2 = _finish(agent_b2)
    server.stop()
    for stats in (json.loads(stats_a), json.loads(stats_b2)):
        assert stats["spool_bytes"] == 0, stats  # everything delivered
        assert stats["rejected_segments"] == 0, stats
    assert json.loads(stats_a)["retries"] > 0  # it did meet the partitions
    acked = _acked(acks_a) | _acked(acks_b)
    assert len(acked) >= 3 + 1 + 1  # A's three, B's first (maybe second), B2's one
    store = open_store(server.store)
    try:
        for session_id, last in acked.items():
            events = store.read(session_id)
            sequences = [e.sequence for e in events]
            # every acknowledged event, exactly once, no gap
            assert sequences == list(range(len(events))), session_id
            assert len(events) >= last + 1, session_id
            assert len({e.event_id for e in events}) == len(events)
        results = verify_store(store)
        assert results and all(r.valid for r in results), [r for r in results if not r.valid]
        assert {r.log_id for r in results} >= set(acked)
    finally:
        store.close()
