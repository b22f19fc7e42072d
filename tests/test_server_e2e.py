"""The HTTP server end to end: a real uvicorn server on 127.0.0.1, driven with httpx."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cra_agents import Runtime
from cra_agents._requests import execute_request, resolve_request
from cra_agents.server import ServerConfig
from cra_agents.server._config import ApiKey, JWTConfig
from cra_agents.server._principal import OWNER_KEY
from tests.harness.live_server import LiveServer, live_server

ADMIN = "admin-key-0123456789abcdef"
OTHER = "other-key-0123456789abcdef"
READER = "reader-key-0123456789abcdef"
BOT = "bot-key-0123456789abcdef0123"
AUDIENCE = "cra-test"
ISSUER = "https://idp.test"

_PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = (
    _PRIVATE.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
PRIVATE_PEM = _PRIVATE.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
).decode()


def _config(**changes: Any) -> ServerConfig:
    base = ServerConfig(
        api_keys=(
            ApiKey.plain("admin", ADMIN),
            ApiKey.plain("other", OTHER),
            ApiKey.plain("reader", READER, frozenset({"read"})),
            ApiKey.plain("bot", BOT, agent_ids=frozenset({"triage-bot"})),
        ),
        jwt=JWTConfig(("RS256",), PUBLIC_PEM, audience=AUDIENCE, issuer=ISSUER),
        rate_limit_per_second=1000,
        rate_limit_burst=1000,
    )
    return base.with_options(**changes)


@pytest.fixture
def runtime(github_ops: Path) -> Iterator[Runtime]:
    with Runtime([github_ops], store="memory://") as rt:
        yield rt


@pytest.fixture
def server(runtime: Runtime) -> Iterator[LiveServer]:
    with live_server(runtime, _config()) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN}, timeout=10) as c:
        yield c


def _session(client: httpx.Client, agent_id: str = "triage-bot", **body: Any) -> dict[str, Any]:
    response = client.post("/v1/sessions", json={"agent_id": agent_id, "goal": "triage", **body})
    assert response.status_code == 201, response.text
    session: dict[str, Any] = response.json()
    return session


def _resolve_body(runtime: Runtime, session_id: str) -> dict[str, Any]:
    request = resolve_request(runtime.session(session_id))
    return request.model_dump(mode="json", exclude_none=True)


def _execute_body(
    runtime: Runtime, session_id: str, resolution_id: str, action_id: str, parameters: Any
) -> dict[str, Any]:
    request = execute_request(runtime.session(session_id), resolution_id, action_id, parameters)
    return request.model_dump(mode="json", exclude_none=True)


def _token(**claims: Any) -> str:
    payload = {
        "sub": "alice",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "exp": int(time.time()) + 300,
        "scope": "read write",
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, PRIVATE_PEM, algorithm="RS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(alg: str, key: bytes | None) -> str:
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = _b64(
        json.dumps(
            {"sub": "mallory", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 300}
        ).encode()
    )
    signing_input = f"{header}.{body}".encode()
    signature = "" if key is None else _b64(hmac.new(key, signing_input, hashlib.sha256).digest())
    return f"{header}.{body}.{signature}"


# -- health ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/health", "/health"])
def test_health_needs_no_credentials(server, path):
    response = httpx.get(server.url + path)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["checks"]["trace_store"]["status"] == "pass"
    assert body["checks"]["atlases"]["status"] == "pass"
    assert response.headers["x-request-id"]


def test_health_reports_no_atlas_and_a_closed_runtime():
    rt = Runtime([], store="memory://")
    with live_server(rt, _config()) as live:
        body = httpx.get(live.url + "/v1/health").json()
        assert body["status"] == "degraded"
        assert body["checks"]["atlases"]["status"] == "warn"
        rt.close()
        response = httpx.get(live.url + "/v1/health")
        assert response.status_code == 503
        assert response.json()["status"] == "unhealthy"


# -- sessions -------------------------------------------------------------------------------


def test_session_lifecycle(client, runtime):
    created = _session(client, metadata={"ticket": 7, OWNER_KEY: "key:someone-else"})
    sid = created["session_id"]
    assert created["status"] == "active"
    assert created["metadata"]["ticket"] == 7
    assert created["metadata"][OWNER_KEY] == "key:admin"  # never the caller's say
    assert runtime.session(sid).metadata[OWNER_KEY] == "key:admin"

    got = client.get(f"/v1/sessions/{sid}").json()
    assert got["session_id"] == sid and got["agent_id"] == "triage-bot"

    second = _session(client, atlas_id="com.example.github-ops")["session_id"]
    assert client.get(f"/v1/sessions/{second}").json()["atlas_id"] == "com.example.github-ops"
    listed = client.get("/v1/sessions", params={"limit": 1}).json()
    assert listed["total"] == 2 and len(listed["items"]) == 1 and listed["limit"] == 1
    assert client.get("/v1/sessions", params={"offset": 1}).json()["items"][0]["session_id"] == (
        second
    )

    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    again = client.delete(f"/v1/sessions/{sid}")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "SESSION_ALREADY_ENDED"
    assert client.get(f"/v1/sessions/{sid}").json()["status"] == "ended"
    ended = client.get("/v1/sessions", params={"status": "ended"}).json()
    assert [s["session_id"] for s in ended["items"]] == [sid]
    assert "ended_at" in ended["items"][0]
    assert client.get("/v1/sessions", params={"status": "all"}).json()["total"] == 2
    assert client.get("/v1/sessions").json()["total"] == 1


def test_create_session_errors(client):
    missing = client.post("/v1/sessions", json={"agent_id": "a"})
    assert missing.status_code == 400
    error = missing.json()["error"]
    assert error["code"] == "SCHEMA_VALIDATION_ERROR"
    assert error["details"]["errors"][0]["path"] == "body/goal"
    assert client.post("/v1/sessions", content=b"not json").status_code == 400
    unknown = client.post(
        "/v1/sessions", json={"agent_id": "a", "goal": "g", "atlas_id": "com.example.none"}
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "ATLAS_NOT_FOUND"
    assert client.get("/v1/sessions", params={"limit": 101}).status_code == 400
    assert client.get("/v1/sessions", params={"status": "gone"}).status_code == 400


def test_another_principal_gets_404(client, server, runtime):
    sid = _session(client)["session_id"]
    resolution = client.post("/v1/resolve", json=_resolve_body(runtime, sid)).json()
    with httpx.Client(base_url=server.url, headers={"X-API-Key": OTHER}) as other:
        for method, path in [
            ("GET", f"/v1/sessions/{sid}"),
            ("DELETE", f"/v1/sessions/{sid}"),
            ("GET", f"/v1/traces/{sid}"),
            ("POST", f"/v1/traces/{sid}/verify"),
        ]:
            response = other.request(method, path)
            assert response.status_code == 404, (method, path)
            assert response.json()["error"]["code"] == "SESSION_NOT_FOUND"
        assert other.post("/v1/resolve", json=_resolve_body(runtime, sid)).status_code == 404
        body = _execute_body(
            runtime, sid, resolution["resolution_id"], "github.issue.list", {"repo": "a/b"}
        )
        assert other.post("/v1/execute", json=body).status_code == 404
        assert other.get("/v1/sessions").json()["total"] == 0
    assert client.get(f"/v1/sessions/{sid}").status_code == 200


def test_unknown_session_is_404(client):
    for path in [f"/v1/sessions/{uuid.uuid4()}", "/v1/sessions/not-a-uuid"]:
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "SESSION_NOT_FOUND"


# -- scopes, agent ids ----------------------------------------------------------------------


def test_read_only_key_cannot_write(server, client):
    sid = _session(client)["session_id"]
    with httpx.Client(base_url=server.url, headers={"X-API-Key": READER}) as reader:
        refused = reader.post("/v1/sessions", json={"agent_id": "a", "goal": "g"})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "FORBIDDEN"
        assert refused.json()["error"]["details"]["reason"] == "scope"
        assert reader.get("/v1/sessions").status_code == 200
        assert reader.get("/v1/atlases").status_code == 200
        assert reader.delete("/v1/atlases/com.example.github-ops").status_code == 403
        assert reader.post("/v1/atlases", json={}).status_code == 403
        assert reader.get(f"/v1/sessions/{sid}").status_code == 404  # not its session


def test_agent_restricted_key(server):
    with httpx.Client(base_url=server.url, headers={"X-API-Key": BOT}) as bot:
        assert bot.post("/v1/sessions", json={"agent_id": "triage-bot", "goal": "g"}).is_success
        refused = bot.post("/v1/sessions", json={"agent_id": "release-bot", "goal": "g"})
        assert refused.status_code == 403
        assert refused.json()["error"]["details"] == {
            "reason": "agent_id",
            "agent_id": "release-bot",
        }


# -- credentials ----------------------------------------------------------------------------


def test_missing_and_wrong_api_keys_are_401(server):
    assert httpx.get(server.url + "/v1/sessions").status_code == 401
    wrong = httpx.get(server.url + "/v1/sessions", headers={"X-API-Key": "nope" * 8})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["details"]["reason"] == "invalid_api_key"


def test_jwt_bearer_tokens(server, runtime):
    def call(token: str) -> httpx.Response:
        return httpx.post(
            server.url + "/v1/sessions",
            json={"agent_id": "a", "goal": "g"},
            headers={"Authorization": f"Bearer {token}"},
        )

    good = call(_token())
    assert good.status_code == 201
    assert runtime.session(good.json()["session_id"]).metadata[OWNER_KEY] == "jwt:alice"
    assert call(_token(scope="read")).status_code == 403
    assert call(_token(scope=None, scopes=["read", "write"])).status_code == 201
    refused = {
        "expired": _token(exp=int(time.time()) - 60),
        "no exp": _token(exp=None),
        "wrong audience": _token(aud="someone-else"),
        "wrong issuer": _token(iss="https://evil.test"),
        "alg none": _forged("none", None),
        "alg confusion": _forged("HS256", PUBLIC_PEM.encode()),
        "garbage": "a.b.c",
    }
    for name, token in refused.items():
        response = call(token)
        assert response.status_code == 401, name
        assert response.json()["error"]["code"] == "UNAUTHORIZED", name
    assert call(_token(exp=int(time.time()) - 60)).json()["error"]["details"] == {
        "reason": "token_expired"
    }
    other = _token(sub="bob")
    sid = good.json()["session_id"]
    response = httpx.get(
        f"{server.url}/v1/sessions/{sid}", headers={"Authorization": f"Bearer {other}"}
    )
    assert response.status_code == 404


def test_bearer_tokens_refused_without_jwt_config(runtime):
    with live_server(runtime, _config(jwt=None)) as live:
        config = ServerConfig(api_keys=live.config.api_keys)
        assert config.jwt is None
    with live_server(runtime, ServerConfig(api_keys=(ApiKey.plain("a", ADMIN),))) as live:
        response = httpx.get(live.url + "/v1/sessions", headers={"Authorization": "Bearer x.y.z"})
        assert response.status_code == 401
        assert response.json()["error"]["details"]["reason"] == "jwt_disabled"


# -- CARP -----------------------------------------------------------------------------------


def test_resolve_execute_and_policy_denial(client, runtime):
    sid = _session(client)["session_id"]
    resolved = client.post("/v1/resolve", json=_resolve_body(runtime, sid))
    assert resolved.status_code == 200, resolved.text
    resolution = resolved.json()
    assert resolution["decision"]["type"] in {"partial", "requires_approval"}
    assert all(v is not None for v in resolution["decision"].values())
    rid = resolution["resolution_id"]

    body = _execute_body(runtime, sid, rid, "github.issue.list", {"repo": "acme/app"})
    executed = client.post("/v1/execute", json=body)
    assert executed.status_code == 200, executed.text
    assert executed.json()["status"] == "success"
    assert "result" not in executed.json()

    body = _execute_body(runtime, sid, rid, "github.repo.delete", {"repo": "acme/app"})
    denied = client.post("/v1/execute", json=body)
    assert denied.status_code == 403
    error = denied.json()["error"]
    assert error["code"] == "ACTION_DENIED"
    assert error["request_id"] == denied.headers["x-request-id"]

    body = _execute_body(runtime, sid, rid, "github.issue.list", {"repo": 5})
    assert client.post("/v1/execute", json=body).json()["error"]["code"] == "INVALID_PARAMETERS"
    bad = client.post("/v1/resolve", json={"carp_version": "1.0"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "INVALID_CARP_REQUEST"
    assert {"path": "/request_id", "message": "Field required"} in bad.json()["error"]["details"][
        "errors"
    ]
    not_object = client.post("/v1/resolve", json=[1, 2])
    assert not_object.status_code == 400
    assert not_object.json()["error"]["code"] == "INVALID_CARP_REQUEST"


def test_resolve_as_an_agent_the_key_may_not_act_as(server, client, runtime):
    sid = _session(client, agent_id="release-bot")["session_id"]
    with httpx.Client(base_url=server.url, headers={"X-API-Key": BOT}) as bot:
        response = bot.post("/v1/resolve", json=_resolve_body(runtime, sid))
        assert response.status_code == 403


# -- traces ---------------------------------------------------------------------------------


def test_traces_json_ndjson_filters_and_verify(client, runtime):
    sid = _session(client)["session_id"]
    client.post("/v1/resolve", json=_resolve_body(runtime, sid))
    listed = client.get(f"/v1/traces/{sid}").json()
    events = listed["events"]
    assert listed["session_id"] == sid
    assert [e["sequence"] for e in events] == list(range(len(events)))
    assert listed["total"] == len(events) and listed["last_sequence"] == len(events) - 1
    assert events[0]["event_type"] == "session.started"
    assert events[0]["parent_span_id"] is None

    only = client.get(f"/v1/traces/{sid}", params={"event_type": "policy.evaluated"}).json()
    assert {e["event_type"] for e in only["events"]} == {"policy.evaluated"}
    later = client.get(f"/v1/traces/{sid}", params={"since_sequence": 2, "limit": 3}).json()
    assert [e["sequence"] for e in later["events"]] == [3, 4, 5]
    empty = client.get(f"/v1/traces/{sid}", params={"since_sequence": 10_000}).json()
    assert empty["events"] == [] and "last_sequence" not in empty
    assert client.get(f"/v1/traces/{sid}", params={"limit": 0}).status_code == 400

    ndjson = client.get(f"/v1/traces/{sid}", headers={"Accept": "application/x-ndjson"})
    assert ndjson.headers["content-type"].startswith("application/x-ndjson")
    lines = ndjson.text.splitlines()
    assert [json.loads(line) for line in lines] == events

    verified = client.post(f"/v1/traces/{sid}/verify").json()
    assert verified["valid"] is True and verified["event_count"] == len(events)
    assert "errors" not in verified


def test_verify_reports_a_broken_chain(client, runtime, monkeypatch):
    sid = _session(client)["session_id"]
    real = runtime.store.read

    def tampered(session_id: str, **kwargs: Any) -> Any:
        """The store hands back an event whose payload was edited after it was hashed."""
        events = real(session_id, **kwargs)
        return [events[0].model_copy(update={"payload": {"agent_id": "mallory"}}), *events[1:]]

    monkeypatch.setattr(runtime.store, "read", tampered)
    verified = client.post(f"/v1/traces/{sid}/verify").json()
    assert verified["valid"] is False
    assert verified["errors"][0]["sequence"] == 0
    assert verified["errors"][0]["error"]


# -- atlases --------------------------------------------------------------------------------


def _manifest(atlas_id: str = "com.example.extra") -> dict[str, Any]:
    return {
        "atlas_version": "1.0",
        "atlas_id": atlas_id,
        "version": "1.0.0",
        "name": "Extra",
        "description": "Loaded over HTTP.",
        "domains": ["extra"],
        "actions": [
            {"action_id": "extra.thing.do", "name": "Do", "description": "Does the thing."}
        ],
    }


def test_atlases_list_get_load_unload(client, runtime):
    listed = client.get("/v1/atlases").json()
    assert listed["total"] == 1
    assert listed["items"][0]["atlas_id"] == "com.example.github-ops"
    assert listed["items"][0]["action_count"] == 15
    manifest = client.get("/v1/atlases/com.example.github-ops").json()
    assert manifest["atlas_id"] == "com.example.github-ops" and manifest["actions"]
    assert client.get("/v1/atlases/com.example.none").status_code == 404

    loaded = client.post("/v1/atlases", json=_manifest())
    assert loaded.status_code == 201, loaded.text
    assert loaded.json()["atlas_id"] == "com.example.extra"
    assert loaded.json()["loaded_at"]
    again = client.post("/v1/atlases", json=_manifest())
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "ATLAS_ALREADY_LOADED"
    invalid = client.post("/v1/atlases", json={"atlas_version": "1.0"})
    assert invalid.status_code == 400
    assert invalid.json()["error"]["code"] == "INVALID_ATLAS_MANIFEST"

    sid = _session(client)["session_id"]
    resolution = client.post("/v1/resolve", json=_resolve_body(runtime, sid)).json()
    assert "extra.thing.do" in {a["action_id"] for a in resolution["allowed_actions"]}
    assert client.delete("/v1/atlases/com.example.extra").status_code == 204
    assert client.delete("/v1/atlases/com.example.extra").status_code == 404
    body = _execute_body(runtime, sid, resolution["resolution_id"], "extra.thing.do", {})
    refused = client.post("/v1/execute", json=body)
    assert refused.status_code == 403
    assert refused.json()["error"]["details"]["policy_id"] == "undeclared-action"
    assert client.get("/v1/atlases").json()["total"] == 1


def test_posted_manifest_cannot_read_server_files(client, runtime, tmp_path):
    secret = tmp_path / "secret.md"
    secret.write_text("TOP SECRET")
    manifest = _manifest("com.example.packs")
    manifest["context_packs"] = [
        {"pack_id": "p", "name": "p", "files": [str(secret)], "priority": 1}
    ]
    response = client.post("/v1/atlases", json=manifest)
    assert response.status_code == 201
    assert dict(runtime.atlas("com.example.packs").context_files) == {}


# -- limits, ids, logs, failures -------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(runtime):
    with live_server(runtime, _config(rate_limit_per_second=0.5, rate_limit_burst=2)) as live:
        headers = {"X-API-Key": ADMIN}
        statuses = [httpx.get(live.url + "/v1/atlases", headers=headers) for _ in range(3)]
        assert [r.status_code for r in statuses] == [200, 200, 429]
        limited = statuses[2]
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == "TOO_MANY_REQUESTS"
        assert limited.json()["error"]["recoverable"] is True
        # Per principal: another key has its own bucket; health is never limited.
        assert httpx.get(live.url + "/v1/atlases", headers={"X-API-Key": OTHER}).is_success
        assert httpx.get(live.url + "/v1/health").is_success


def test_body_too_large_is_413(runtime):
    with live_server(runtime, _config(max_body_bytes=1000)) as live:
        headers = {"X-API-Key": ADMIN}
        big = {"agent_id": "a", "goal": "x" * 2000}
        response = httpx.post(live.url + "/v1/sessions", json=big, headers=headers)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"

        def chunks() -> Iterator[bytes]:
            for _ in range(20):
                yield b" " * 100

        streamed = httpx.post(live.url + "/v1/sessions", content=chunks(), headers=headers)
        assert streamed.status_code == 413
        small = httpx.post(
            live.url + "/v1/sessions", json={"agent_id": "a", "goal": "g"}, headers=headers
        )
        assert small.status_code == 201


def test_request_timeout_is_504(runtime):
    with live_server(runtime, _config(request_timeout=0.3)) as live:

        def slow() -> Iterator[bytes]:
            yield b'{"agent_id": "a",'
            time.sleep(1.0)
            yield b'"goal": "g"}'

        response = httpx.post(
            live.url + "/v1/sessions", content=slow(), headers={"X-API-Key": ADMIN}
        )
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "REQUEST_TIMEOUT"


def test_request_ids_and_traceparent(client, runtime):
    rid = "req-123.abc"
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = client.post(
        "/v1/sessions",
        json={"agent_id": "a", "goal": "g"},
        headers={"X-Request-ID": rid, "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    )
    assert response.headers["x-request-id"] == rid
    metadata = runtime.session(response.json()["session_id"]).metadata
    assert metadata["cra.request_id"] == rid
    assert metadata["cra.trace_id"] == trace
    started = runtime.trace_events(response.json()["session_id"])[0].payload
    assert started["metadata"]["cra.request_id"] == rid

    error = client.get(f"/v1/sessions/{uuid.uuid4()}", headers={"X-Request-ID": "bad id!"})
    generated = error.headers["x-request-id"]
    assert generated != "bad id!" and error.json()["error"]["request_id"] == generated


def test_access_log_has_one_json_line_per_request(client, caplog):
    with caplog.at_level(logging.INFO, logger="cra_agents.server.access"):
        sid = _session(client)["session_id"]
        client.get(f"/v1/sessions/{sid}", headers={"X-Request-ID": "log-me"})
        deadline = time.monotonic() + 5  # the line is written once the response is sent
        while True:
            lines = [
                json.loads(r.getMessage())
                for r in caplog.records
                if r.name == "cra_agents.server.access"
            ]
            found = [e for e in lines if e["request_id"] == "log-me"]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    entry = found[0]
    assert entry["method"] == "GET"
    assert entry["path"] == "/v1/sessions/{session_id}"
    assert entry["status"] == 200
    assert entry["principal"] == "key:admin"
    assert entry["duration_ms"] >= 0


def test_unknown_failures_are_500_without_internals(client, runtime, monkeypatch, caplog):
    def broken() -> Any:
        raise RuntimeError("database password is hunter2")

    monkeypatch.setattr(runtime, "sessions", broken)
    with caplog.at_level(logging.ERROR, logger="cra_agents.server"):
        response = client.get("/v1/sessions")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "INTERNAL_ERROR"
    assert "hunter2" not in response.text
    assert any("hunter2" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_unknown_route_and_method(client):
    assert client.get("/v1/nothing").json()["error"]["code"] == "NOT_FOUND"
    response = client.put("/v1/sessions")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_served_openapi_is_the_upstream_contract(server):
    served = httpx.get(server.url + "/openapi.json").json()
    assert served["info"]["title"] == "CRA Runtime API"
    for path in [
        "/v1/health",
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/resolve",
        "/v1/execute",
        "/v1/traces/{session_id}",
        "/v1/traces/{session_id}/verify",
        "/v1/atlases",
        "/v1/atlases/{atlas_id}",
    ]:
        assert path in served["paths"]
    assert served["paths"]["/health"]["get"]["security"] == []
