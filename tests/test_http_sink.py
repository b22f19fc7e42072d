"""The HTTP trace sink against a real ingest server on 127.0.0.1: spool, order, retries, bounds."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.protocol import TraceEvent
from cra_agents.server import ServerConfig, create_app
from cra_agents.server._config import ApiKey
from cra_agents.trace import HttpSink, SqliteStore, open_store, verify_store, writer_url
from tests.harness.http_server import free_port

GITHUB_OPS = atlas_path("github-ops")
KEY = "ingest-key-0123456789abcdef"
READ = {"repo": "acme/app", "path": "README.md"}


class Ingest:
    """An ingest server (real uvicorn, a thread) on a fixed port; can stop and start again."""

    def __init__(self, db: Path, port: int | None = None, **config: Any) -> None:
        self.db = db
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = ServerConfig(
            api_keys=(ApiKey.plain("collector", KEY, frozenset({"ingest"})),),
            rate_limit_per_second=0,
        ).with_options(**config)
        #: Status codes to answer ingest requests with first (fault injection).
        self.faults: list[int | tuple[int, dict[str, str]]] = []
        self.requests = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.runtime: cra.Runtime | None = None

    def app(self) -> FastAPI:
        assert self.runtime is not None
        app = create_app(self.runtime, self.config)

        @app.middleware("http")
        async def faults(request: Request, call_next: Any) -> Any:
            if request.url.path == "/v1/ingest/batch":
                self.requests += 1
                if self.faults:
                    fault = self.faults.pop(0)
                    status, headers = fault if isinstance(fault, tuple) else (fault, {})
                    body = {"error": {"code": "INJECTED", "message": f"injected {status}"}}
                    return JSONResponse(body, status_code=status, headers=headers)
            return await call_next(request)

        return app

    def start(self) -> None:
        self.runtime = cra.Runtime(store=f"sqlite://{self.db}", writer="thread")
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app(),
                host="127.0.0.1",
                port=self.port,
                lifespan="off",
                access_log=False,
                log_level="warning",
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
        if self.runtime is not None:
            self.runtime.close()
        self._server = self._thread = self.runtime = None

    def stored(self) -> SqliteStore:
        store = open_store(f"sqlite://{self.db}")
        assert isinstance(store, SqliteStore)
        return store


@contextlib.contextmanager
def ingest(db: Path, **config: Any) -> Iterator[Ingest]:
    server = Ingest(db, **config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRA_INGEST_API_KEY", KEY)


def _url(server_url: str, spool: Path, **options: object) -> str:
    query = {"spool": str(spool), "linger": 0, "backoff": 0.02, "max_backoff": 0.2, **options}
    return server_url + "?" + "&".join(f"{k}={v}" for k, v in query.items())


def _work(runtime: cra.Runtime, sessions: int = 2, calls: int = 3) -> list[str]:
    """Sessions with guarded calls; their ids."""
    ids = []
    for index in range(sessions):
        session = runtime.create_session(f"bot-{index}", "Read the docs")
        for _ in range(calls):
            with runtime.call("read_file_contents", READ, session_id=session.session_id) as call:
                call.result = "ok"
        runtime.end_session(session.session_id)
        ids.append(session.session_id)
    return ids


def _check_delivered(server: Ingest, expected: dict[str, list[TraceEvent]]) -> None:
    store = server.stored()
    try:
        for sid, events in expected.items():
            assert [e.event_hash for e in store.read(sid)] == [e.event_hash for e in events]
        assert all(r.valid for r in verify_store(store))
    finally:
        store.close()


def _sink(runtime: cra.Runtime) -> HttpSink:
    assert isinstance(runtime.store, HttpSink)
    return runtime.store


def test_runtime_records_through_the_sink(tmp_path: Path) -> None:
    with ingest(tmp_path / "server.db") as server:
        runtime = cra.Runtime(
            [GITHUB_OPS], store=_url(server.url, tmp_path / "spool"), durability="group"
        )
        sink = _sink(runtime)
        ids = _work(runtime)
        expected = {sid: runtime.trace_events(sid) for sid in ids}
        assert sink.sessions() == ids
        assert sink.last_sequence(ids[0]) == expected[ids[0]][-1].sequence
        assert sink.read(ids[0], event_type="session.started")[0].sequence == 0
        assert sink.wait_delivered(20)
        runtime.close()
        _check_delivered(server, expected)
        stats = sink.stats()
        assert stats.events_sent == sum(len(v) for v in expected.values())
        assert stats.spool_bytes == 0
        assert stats.duplicates == 0
        assert stats.last_success_ts is not None
        assert stats.wire_bytes < stats.raw_bytes  # zstd
        assert stats.latency_p99_ms is not None
        assert sink.health()["status"] == "pass"
        assert list((tmp_path / "spool").glob("*.jsonl")) == []


def test_server_down_at_start_then_up(tmp_path: Path) -> None:
    server = Ingest(tmp_path / "server.db")
    runtime = cra.Runtime(
        [GITHUB_OPS],
        store=_url(server.url, tmp_path / "spool", segment_mb=0.001),
        durability="group",
    )
    sink = _sink(runtime)
    try:
        ids = _work(runtime, sessions=3, calls=5)  # each call returned: on local disk
        expected = {sid: runtime.trace_events(sid) for sid in ids}
        deadline = time.monotonic() + 10
        while sink.stats().failing_since is None and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = sink.stats()
        assert stats.failing_since is not None
        assert stats.spool_bytes > 0
        assert stats.segments > 1  # several segments, sent in order below
        assert "ConnectError" in (stats.last_error or "")
        assert sink.health()["status"] == "warn"
        server.start()
        assert sink.wait_delivered(30)
        _check_delivered(server, expected)
        assert sink.stats().failing_since is None
        assert sink.stats().retries > 0
    finally:
        runtime.close()
        server.stop()


def test_5xx_and_429_are_retried_after_retry_after(tmp_path: Path) -> None:
    with ingest(tmp_path / "server.db") as server:
        server.faults = [503, 500, (429, {"Retry-After": "1"})]
        runtime = cra.Runtime(
            [GITHUB_OPS], store=_url(server.url, tmp_path / "spool"), durability="group"
        )
        sink = _sink(runtime)
        ids = _work(runtime, sessions=1, calls=1)
        started = time.monotonic()
        assert sink.wait_delivered(20)
        assert time.monotonic() - started >= 0.9  # Retry-After honoured
        expected = {sid: runtime.trace_events(sid) for sid in ids}
        runtime.close()
        _check_delivered(server, expected)
        assert sink.stats().retries >= 3
        assert sink.stats().rejected_segments == 0


def test_spool_full_refuses_calls_with_a_clear_error(tmp_path: Path) -> None:
    port = free_port()  # nobody listens
    runtime = cra.Runtime(
        [GITHUB_OPS],
        store=_url(f"http://127.0.0.1:{port}", tmp_path / "spool", max_spool_mb=0.02),
        durability="group",
    )
    ran = 0
    try:
        session = runtime.create_session("bot", "Read the docs")
        with pytest.raises(cra.TraceUnavailableError) as caught:  # noqa: PT012
            for _ in range(200):
                with runtime.call("read_file_contents", READ, session_id=session.session_id) as c:
                    ran += 1
                    c.result = "ok"
        assert 0 < ran < 200
        ran_before = ran
        with (
            pytest.raises(cra.TraceUnavailableError),
            runtime.call("read_file_contents", READ, session_id=session.session_id),
        ):
            ran += 1  # never: refused on entry
        assert ran == ran_before
        failure = runtime.trace_failure
        assert isinstance(failure, cra.TraceUnavailableError)
        message = str(failure)
        assert f"127.0.0.1:{port}" in message
        assert "unreachable since" in message
        assert "is full" in message
        assert "max_spool_mb" in message
        assert failure.details["reason"] == "spool_full"
        assert caught.value.details["reason"] == "trace_unavailable"
        sink = _sink(runtime)
        assert sink.stats().spool_bytes <= 0.02 * 1024 * 1024
        assert sink.health()["status"] in ("fail", "warn")
    finally:
        with pytest.raises(cra.TraceUnavailableError):
            runtime.close()  # reports the loss: the refused events were never recorded


def _recorded(tmp_path: Path) -> dict[str, list[TraceEvent]]:
    with cra.Runtime([GITHUB_OPS], store="memory://") as runtime:
        ids = _work(runtime, sessions=2, calls=2)
        runtime.flush()
        return {sid: runtime.trace_events(sid) for sid in ids}


def _lines(events: list[TraceEvent]) -> bytes:
    return b"".join(orjson.dumps(e.__dict__) + b"\n" for e in events)


def test_restart_drains_an_earlier_spool_and_cuts_a_torn_line(tmp_path: Path) -> None:
    """Segments an earlier process left (its last line torn by a kill -9) are sent first."""
    recorded = _recorded(tmp_path)
    first, second = recorded.values()
    spool = tmp_path / "spool"
    (spool / "rejected").mkdir(parents=True)
    (spool / "000000000001.jsonl").write_bytes(_lines(first))
    torn = _lines(second)
    (spool / "000000000002.jsonl").write_bytes(torn + b'{"trace_version":"1.0","ev')
    with ingest(tmp_path / "server.db") as server:
        sink = HttpSink(server.url, spool=spool, api_key=KEY, linger=0)
        try:
            assert sink.wait_delivered(20)
            assert sink.stats().torn_bytes == len(b'{"trace_version":"1.0","ev')
            assert sink.stats().events_sent == len(first) + len(second)
        finally:
            sink.close()
        _check_delivered(server, recorded)


def test_conflict_is_dead_lettered_and_later_segments_still_go(tmp_path: Path) -> None:
    recorded = _recorded(tmp_path)
    first, second = recorded.values()
    spool = tmp_path / "spool"
    (spool / "rejected").mkdir(parents=True)
    (spool / "000000000001.jsonl").write_bytes(_lines(first[2:]))  # a gap: 409 for good
    (spool / "000000000002.jsonl").write_bytes(_lines(second))
    with ingest(tmp_path / "server.db") as server:
        sink = HttpSink(server.url, spool=spool, api_key=KEY, linger=0)
        try:
            assert sink.wait_delivered(20)
            stats = sink.stats()
            assert stats.rejected_segments == 1
            assert "rejected" in (stats.last_error or "")
            assert sink.health()["status"] == "warn"
        finally:
            sink.close()
        rejected = spool / "rejected" / "000000000001.jsonl"
        assert rejected.read_bytes() == _lines(first[2:])  # kept as it was, never deleted
        error = orjson.loads(rejected.with_suffix(".error.json").read_bytes())
        assert error["status"] == 409
        assert error["body"]["error"]["details"]["reason"] == "gap"
        _check_delivered(server, {second[0].session_id: second})


def test_413_halves_the_batch_and_a_lone_oversize_event_is_rejected(tmp_path: Path) -> None:
    recorded = _recorded(tmp_path)
    first, _ = recorded.values()
    spool = tmp_path / "spool"
    (spool / "rejected").mkdir(parents=True)
    data = _lines(first)
    (spool / "000000000001.jsonl").write_bytes(data)
    biggest = max(len(orjson.dumps(e.__dict__)) for e in first)
    with ingest(tmp_path / "server.db", max_body_bytes=biggest + 10) as server:
        sink = HttpSink(server.url, spool=spool, api_key=KEY, linger=0, compression="identity")
        try:
            assert sink.wait_delivered(20)
            assert sink.stats().batches_sent == len(first)  # halved down to single events
        finally:
            sink.close()
        _check_delivered(server, {first[0].session_id: first})
    (spool / "000000000009.jsonl").write_bytes(data)
    with ingest(tmp_path / "server2.db", max_body_bytes=100) as server:
        sink = HttpSink(server.url, spool=spool, api_key=KEY, linger=0, compression="identity")
        try:
            assert sink.wait_delivered(20)
            assert sink.stats().rejected_segments == 1
        finally:
            sink.close()


def test_a_missing_credential_is_kept_and_retried(tmp_path: Path) -> None:
    with ingest(tmp_path / "server.db") as server:
        sink = HttpSink(
            server.url, spool=tmp_path / "spool", api_key=None, linger=0, max_backoff=0.05
        )
        try:
            sink.append(next(iter(_recorded(tmp_path).values())))
            sink.sync()
            deadline = time.monotonic() + 10
            while sink.stats().retries < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            stats = sink.stats()
            assert stats.retries >= 2
            assert "HTTP 401" in (stats.last_error or "")
            assert stats.rejected_segments == 0
            assert stats.spool_bytes > 0
        finally:
            sink.close()


def test_one_process_per_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    sink = HttpSink("http://127.0.0.1:9", spool=spool, linger=0)
    try:
        with pytest.raises(cra.ConfigurationError) as caught:
            HttpSink("http://127.0.0.1:9", spool=spool)
        assert caught.value.details["reason"] == "spool_locked"
        code = (
            "import cra_agents as cra\n"
            "try:\n"
            f"    cra.Runtime(store='http://127.0.0.1:9?spool={spool}')\n"
            "except cra.ConfigurationError as exc:\n"
            "    print(exc.details['reason'], exc)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        assert out.stdout.startswith("spool_locked")
        assert "in use by another process" in out.stdout
        assert "?spool=" in out.stdout
    finally:
        sink.close()
    HttpSink("http://127.0.0.1:9", spool=spool).close()  # released on close


def test_close_is_bounded_when_the_ingest_is_down(tmp_path: Path) -> None:
    sink = HttpSink(f"http://127.0.0.1:{free_port()}", spool=tmp_path / "spool", drain_timeout=0.5)
    sink.append(next(iter(_recorded(tmp_path).values())))
    sink.sync()
    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < 3
    assert list((tmp_path / "spool").glob("*.jsonl"))  # left for the next process
    with pytest.raises(ValueError, match="closed"):
        sink.append(next(iter(_recorded(tmp_path).values())))


def test_reads_keep_the_most_recent_sessions(tmp_path: Path) -> None:
    recorded = _recorded(tmp_path)
    first, second = recorded.values()
    sink = HttpSink(
        "http://127.0.0.1:9", spool=tmp_path / "spool", mirror_events=len(second), linger=0
    )
    try:
        sink.append(first)
        sink.append([])
        sink.append(second)
        assert sink.read(first[0].session_id) == []  # evicted: read it on the ingest's store
        assert sink.last_sequence(first[0].session_id) == first[-1].sequence
        assert sink.read(second[0].session_id, since_sequence=0, limit=2) == second[1:3]
        assert sink.sessions() == [first[0].session_id, second[0].session_id]
        assert sink.last_sequence("nobody") == -1
        sink.check_writable()
    finally:
        sink.close()


class TestUrl:
    def test_options(self, tmp_path: Path) -> None:
        store = open_store(
            f"http://127.0.0.1:9/prefix/?spool={tmp_path / 's'}&max_spool_mb=1&segment_mb=0.5"
            "&batch_mb=1&batch_events=10&compression=identity&timeout=1&connect_timeout=1"
            "&backoff=0.1&max_backoff=1&drain=0.1&linger=0&mirror_events=5"
        )
        try:
            assert isinstance(store, HttpSink)
            assert store.url == "http://127.0.0.1:9/prefix"
            assert store.batch_events == 10
            assert store.compression == "identity"
            assert store.stats().max_spool_bytes == 1024 * 1024
            assert writer_url(store) is None  # the writer thread
            with pytest.raises(cra.ConfigurationError, match="needs a jsonl"):
                writer_url(store, "process")
        finally:
            store.close()

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("http://u:p@127.0.0.1:9", "credentials_in_url"),
            ("http://127.0.0.1:9?colour=red", "bad_store_option"),
            ("http://127.0.0.1:9?timeout=soon", "bad_store_option"),
            ("http://127.0.0.1:9?timeout=-1", "bad_store_option"),
            ("http://127.0.0.1:9?compression=gzip", "bad_store_option"),
            ("http://:9", "store_url_without_path"),
        ],
    )
    def test_bad_urls(self, url: str, reason: str) -> None:
        with pytest.raises(cra.ConfigurationError) as caught:
            open_store(url)
        assert caught.value.details["reason"] == reason

    def test_zstd_needs_the_sink_extra(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, "zstandard", None)
        with pytest.raises(cra.MissingDependencyError) as caught:
            HttpSink("http://127.0.0.1:9", spool=tmp_path / "s")
        assert caught.value.extra == "sink"
        HttpSink("http://127.0.0.1:9", spool=tmp_path / "s", compression="identity").close()

    def test_unwritable_spool(self, tmp_path: Path) -> None:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(cra.ConfigurationError) as caught:
            HttpSink("http://127.0.0.1:9", spool=blocker / "spool")
        assert caught.value.details["reason"] == "spool_not_writable"
