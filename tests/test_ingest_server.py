"""``POST /v1/ingest/batch`` on a real uvicorn server: auth, codings, caps, the chain rule."""

from __future__ import annotations

import io
import resource
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import zstandard

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.protocol import TraceEvent
from cra_agents.server import ServerConfig
from cra_agents.server._config import ApiKey
from cra_agents.server._errors import PayloadTooLargeError
from cra_agents.server._ingest import decompress_capped
from cra_agents.trace import open_store, verify_store
from tests.harness.live_server import LiveServer, live_server

GITHUB_OPS = atlas_path("github-ops")
INGEST_KEY = "ingest-key-0123456789abcdef"
AGENT_KEY = "agent-key-0123456789abcdef"
NDJSON = {"content-type": "application/x-ndjson"}


def _batch(events: list[TraceEvent]) -> bytes:
    return b"".join(orjson.dumps(e.model_dump(mode="json")) + b"\n" for e in events)


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


@pytest.fixture(scope="module")
def recorded() -> dict[str, list[TraceEvent]]:
    """Real events of two sessions, recorded by a runtime in memory."""
    runtime = cra.Runtime(atlases=[GITHUB_OPS], store="memory://")
    try:
        ids = []
        for index in range(2):
            session = runtime.create_session(f"bot-{index}", "Triage new bug reports")
            resolution = runtime.resolve(cra.resolve_request(session))
            runtime.execute(
                cra.execute_request(
                    session, resolution.resolution_id, "github.issue.list", {"repo": "acme/app"}
                )
            )
            runtime.end_session(session.session_id)
            ids.append(session.session_id)
        runtime.flush()
        return {sid: runtime.store.read(sid) for sid in ids}
    finally:
        runtime.close()


def _config(**changes: object) -> ServerConfig:
    base = ServerConfig(
        api_keys=(
            ApiKey.plain("collector", INGEST_KEY, frozenset({"ingest"})),
            ApiKey.plain("agent", AGENT_KEY),
        ),
        rate_limit_per_second=0,
    )
    return base.with_options(**changes)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    store = f"sqlite://{tmp_path / 'server.db'}"
    with (
        cra.Runtime([GITHUB_OPS], store=store, writer="thread") as runtime,
        live_server(runtime, _config()) as live,
    ):
        yield live


def _post(
    live: LiveServer, body: bytes, *, key: str | None = INGEST_KEY, **headers: str
) -> httpx.Response:
    sent = dict(NDJSON)
    if key is not None:
        sent["x-api-key"] = key
    sent.update({k.replace("_", "-"): v for k, v in headers.items()})
    return httpx.post(f"{live.url}/v1/ingest/batch", content=body, headers=sent, timeout=30)


def _stored(live: LiveServer, session_id: str) -> list[TraceEvent]:
    return live.runtime.store.read(session_id)


class TestAccepted:
    def test_jsonl_batch_is_stored_and_verifies(
        self, server: LiveServer, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        events = [e for chain in recorded.values() for e in chain]
        response = _post(server, _batch(events))
        assert response.status_code == 200, response.text
        assert response.json() == {
            "inserted": len(events),
            "duplicates": 0,
            "sessions": list(recorded),
        }
        for sid, chain in recorded.items():
            assert [e.event_hash for e in _stored(server, sid)] == [e.event_hash for e in chain]
        assert all(r.valid for r in verify_store(server.runtime.store))

    def test_zstd_batch_and_idempotent_retry(
        self, server: LiveServer, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        chain = next(iter(recorded.values()))
        body = _zstd(_batch(chain))
        first = _post(server, body, content_encoding="zstd")
        assert first.status_code == 200, first.text
        assert first.json()["inserted"] == len(chain)
        again = _post(server, body, content_encoding="zstd")
        assert again.status_code == 200
        assert again.json() == {
            "inserted": 0,
            "duplicates": len(chain),
            "sessions": [chain[0].session_id],
        }
        assert len(_stored(server, chain[0].session_id)) == len(chain)

    def test_application_jsonl_and_a_continuing_batch(
        self, server: LiveServer, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        chain = next(iter(recorded.values()))
        head = _post(server, _batch(chain[:2]), content_type="application/jsonl; charset=utf-8")
        assert head.json()["inserted"] == 2
        # Overlapping and continuing: two duplicates, the rest new.
        rest = _post(server, _batch(chain), content_encoding="identity")
        assert rest.json() == {
            "inserted": len(chain) - 2,
            "duplicates": 2,
            "sessions": [chain[0].session_id],
        }

    def test_several_zstd_frames_without_content_size(
        self, server: LiveServer, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        chain = next(iter(recorded.values()))
        out = io.BytesIO()
        for part in (chain[:2], chain[2:]):
            compressor = zstandard.ZstdCompressor(write_content_size=False)
            with compressor.stream_writer(out, closefd=False) as writer:
                writer.write(_batch(part))
        response = _post(server, out.getvalue(), content_encoding="zstd")
        assert response.status_code == 200, response.text
        assert response.json()["inserted"] == len(chain)


class TestRefused:
    def test_chain_break_is_409_and_nothing_is_stored(
        self, server: LiveServer, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        first, second = recorded.values()
        batch = _batch(first) + _batch(second[:1] + second[2:])  # a gap in the second session
        response = _post(server, batch)
        assert response.status_code == 409
        error = response.json()["error"]
        assert error["code"] == "TRACE_CHAIN_CONFLICT"
        assert error["details"]["reason"] == "gap"
        assert error["details"]["session_id"] == second[0].session_id
        assert error["details"]["sequence"] == second[2].sequence
        assert _stored(server, first[0].session_id) == []  # all or none

    def test_malformed_line_is_400_with_the_line(
        self, server: LiveServer, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        chain = next(iter(recorded.values()))
        response = _post(server, _batch(chain[:2]) + b"{not json\n")
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "TRACE_BATCH_INVALID"
        assert error["details"] == {"line": 3, "reason": "not_json"}
        assert _stored(server, chain[0].session_id) == []

    def test_zstd_bomb_is_413(self, server: LiveServer) -> None:
        server.app.state.ingest_max_bytes = 1024 * 1024
        bomb = _zstd(b"\n" * (64 * 1024 * 1024))
        assert len(bomb) < 64 * 1024
        response = _post(server, bomb, content_encoding="zstd")
        assert response.status_code == 413
        error = response.json()["error"]
        assert error["code"] == "PAYLOAD_TOO_LARGE"
        assert error["details"]["max_decompressed_bytes"] == 1024 * 1024

    def test_bad_zstd_and_other_codings_are_415(self, server: LiveServer) -> None:
        bad = _post(server, b"not zstd at all", content_encoding="zstd")
        assert bad.status_code == 415
        assert bad.json()["error"]["details"]["reason"] == "bad_zstd"
        gzip = _post(server, b"x", content_encoding="gzip")
        assert gzip.status_code == 415
        assert "gzip" in gzip.json()["error"]["message"]
        text = _post(server, b"x", content_type="text/plain")
        assert text.status_code == 415
        assert text.json()["error"]["details"]["reason"] == "content_type"

    def test_compressed_body_over_the_body_cap_is_413(self, tmp_path: Path) -> None:
        with (
            cra.Runtime(store=f"sqlite://{tmp_path / 's.db'}", writer="thread") as runtime,
            live_server(runtime, _config(max_body_bytes=1000)) as live,
        ):
            response = _post(live, b"x" * 5000)
            assert response.status_code == 413

    def test_credentials_and_scope(self, server: LiveServer) -> None:
        missing = _post(server, b"{}\n", key=None)
        assert missing.status_code == 401
        agent = _post(server, b"{}\n", key=AGENT_KEY)
        assert agent.status_code == 403
        assert agent.json()["error"]["details"] == {"reason": "scope", "required": "ingest"}

    def test_rate_limit_is_429(self, tmp_path: Path) -> None:
        config = _config(rate_limit_per_second=0.01, rate_limit_burst=1)
        with (
            cra.Runtime(store=f"sqlite://{tmp_path / 's.db'}", writer="thread") as runtime,
            live_server(runtime, config) as live,
        ):
            assert _post(live, b"{}\n").status_code == 400  # the one token
            limited = _post(live, b"{}\n")
            assert limited.status_code == 429
            assert int(limited.headers["retry-after"]) >= 1

    def test_a_store_that_cannot_ingest_is_501(
        self, tmp_path: Path, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        chain = next(iter(recorded.values()))
        with (
            cra.Runtime(store=f"jsonl://{tmp_path / 'j'}", writer="thread") as runtime,
            live_server(runtime, _config()) as live,
        ):
            response = _post(live, _batch(chain))
            assert response.status_code == 501
            assert "sqlite://" in response.json()["error"]["message"]

    def test_a_failing_store_is_503(
        self, tmp_path: Path, recorded: dict[str, list[TraceEvent]]
    ) -> None:
        chain = next(iter(recorded.values()))
        path = tmp_path / "s.db"
        with (
            cra.Runtime(store=f"sqlite://{path}", writer="thread") as runtime,
            live_server(runtime, _config()) as live,
        ):
            runtime.store.close()  # the store is gone: ingest fails, recoverably
            response = _post(live, _batch(chain))
            assert response.status_code == 503
            assert response.json()["error"]["recoverable"] is True


def test_route_is_documented_as_an_extension(server: LiveServer) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    operation = document["paths"]["/v1/ingest/batch"]["post"]
    assert operation["x-cra-extension"] is True
    assert operation["operationId"] == "ingestBatch"
    assert "application/x-ndjson" in operation["requestBody"]["content"]
    assert {"200", "409", "413", "415"} <= set(operation["responses"])


def test_ingested_events_verify_on_the_store(
    tmp_path: Path, recorded: dict[str, list[TraceEvent]]
) -> None:
    """What the server stored reads back from a store opened by URL, and its chains verify."""
    path = tmp_path / "server.db"
    with (
        cra.Runtime(store=f"sqlite://{path}") as runtime,  # the process writer, as served
        live_server(runtime, _config()) as live,
    ):
        events = [e for chain in recorded.values() for e in chain]
        assert _post(live, _zstd(_batch(events)), content_encoding="zstd").status_code == 200
        # The runtime's own writer keeps working beside the ingest.
        session = runtime.create_session("bot", "Triage")
        runtime.end_session(session.session_id)
    store = open_store(f"sqlite://{path}")
    try:
        assert set(recorded) <= set(store.sessions())
        results = verify_store(store)
        assert all(r.valid for r in results)
        assert sum(r.event_count for r in results) == len(events) + 2
    finally:
        store.close()


class TestDecompressCapped:
    def test_bomb_stays_within_the_cap_in_memory(self) -> None:
        """256 MiB of zeros in a few KiB: refused having used about the cap, not 256 MiB."""
        out = io.BytesIO()
        with zstandard.ZstdCompressor(write_content_size=False).stream_writer(
            out, closefd=False
        ) as writer:
            chunk = b"\0" * (1 << 20)
            for _ in range(256):
                writer.write(chunk)
        bomb = out.getvalue()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(PayloadTooLargeError):
            decompress_capped(bomb, 4 * 1024 * 1024)
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grown_mib < 64

    def test_exact_cap_passes(self) -> None:
        data = b"a" * 1000
        assert decompress_capped(_zstd(data), 1000) == data
        with pytest.raises(PayloadTooLargeError):
            decompress_capped(_zstd(data), 999)


class TestCli:
    def test_send_files_twice_is_idempotent(
        self,
        server: LiveServer,
        recorded: dict[str, list[TraceEvent]],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        from cra_agents.cli import main

        monkeypatch.setenv("CRA_INGEST_API_KEY", INGEST_KEY)
        files = []
        for index, chain in enumerate(recorded.values()):
            path = tmp_path / f"{index}.jsonl"
            path.write_bytes(_batch(chain).rstrip(b"\n") + b"\n\n")
            files.append(str(path))
        total = sum(len(chain) for chain in recorded.values())
        assert main(["ingest", "send", *files, "--url", server.url, "--batch", "3"]) == 0
        assert f"{total} event(s) inserted, 0 already stored" in capsys.readouterr().out
        assert main(["ingest", "send", *files, "--url", server.url, "--json"]) == 0
        answer = orjson.loads(capsys.readouterr().out)
        assert answer == {"files": 2, "batches": 2, "inserted": 0, "duplicates": total}

    def test_send_reports_a_refused_batch(
        self,
        server: LiveServer,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        from cra_agents.cli import main

        monkeypatch.setenv("CRA_INGEST_API_KEY", INGEST_KEY)
        bad = tmp_path / "bad.jsonl"
        bad.write_text("{not json\n")
        assert main(["ingest", "send", str(bad), "--url", server.url]) == 1
        err = capsys.readouterr().err
        assert "HTTP 400" in err
        assert "line 1" in err
        monkeypatch.delenv("CRA_INGEST_URL", raising=False)
        assert main(["ingest", "send", str(bad)]) == 2
        assert main(["ingest", "send", str(tmp_path / "nope"), "--url", server.url]) == 2
        unreachable = f"http://127.0.0.1:{_free_port()}"
        monkeypatch.setattr("cra_agents.cli._ingest._RETRIES", 1)
        assert main(["ingest", "send", str(bad), "--url", unreachable]) == 1
        assert "ConnectError" in capsys.readouterr().err

    def test_serve_refuses_a_store_that_cannot_ingest(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from cra_agents.cli import main

        code = main(["ingest", "serve", "--store", f"jsonl://{tmp_path / 'j'}", "--port", "0"])
        assert code == 2
        assert "cannot ingest" in capsys.readouterr().err


def _free_port() -> int:
    from tests.harness.http_server import free_port

    return free_port()
