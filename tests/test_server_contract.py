"""The served OpenAPI document is upstream's contract, and the server keeps it (schemathesis).

A real uvicorn server on 127.0.0.1 serves a runtime; schemathesis generates requests for every
operation of the served ``/openapi.json`` with a valid API key and checks: no server error, every
response (documented status) matches its schema and content type, and a request without
credentials is refused (``ignored_auth``). Separately, every route but health answers 401
without credentials.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_schema_conformance,
)

from cra_agents import Runtime
from cra_agents.server import ServerConfig
from cra_agents.server._config import ApiKey
from tests.harness.live_server import LiveServer, live_server

KEY = "contract-key-0123456789abcdef"
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, ignored_auth]


@pytest.fixture(scope="module")
def contract_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from cra_agents.examples import atlas_path

    store = tmp_path_factory.mktemp("contract") / "traces.db"
    with Runtime([atlas_path("github-ops")], store=f"sqlite://{store}", writer="thread") as rt:
        config = ServerConfig(
            # audit too: the audit routes answer what they document, not only 403.
            api_keys=(ApiKey.plain("contract", KEY, frozenset({"read", "write", "audit"})),),
            rate_limit_per_second=0,
        )
        with live_server(rt, config) as live:
            yield live


@pytest.fixture(scope="module")
def contract_schema(contract_server: LiveServer) -> Any:
    return schemathesis.openapi.from_url(contract_server.url + "/openapi.json")


def _operations() -> list[tuple[str, str]]:
    import json

    document = json.loads(
        (Path(__file__).resolve().parents[1] / "cra_agents/server/openapi.json").read_text()
    )
    return [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "delete"}
    ]


@pytest.mark.parametrize(("method", "path"), _operations())
def test_every_operation_keeps_the_contract(
    contract_schema: Any, contract_server: LiveServer, method: str, path: str
) -> None:
    operation = contract_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        if case.headers:
            # The bearerAuth alternative: a random token; every case uses the valid key instead
            # (two credentials are refused as ambiguous, see test_e2e).
            case.headers.pop("Authorization", None)
        case.call_and_validate(
            base_url=contract_server.url, headers={"X-API-Key": KEY}, checks=CHECKS
        )

    run()


def test_every_route_but_health_needs_credentials(contract_server: LiveServer) -> None:
    document = httpx.get(contract_server.url + "/openapi.json").json()
    checked = 0
    for path, item in document["paths"].items():
        concrete = path.replace("{session_id}", "0190e3a0-0000-7000-8000-000000000000").replace(
            "{atlas_id}", "com.example.github-ops"
        )
        for method, operation in item.items():
            if method not in {"get", "post", "delete", "put", "patch"}:
                continue
            response = httpx.request(method, contract_server.url + concrete, json={})
            if operation.get("security") == []:
                assert response.status_code == 200, path
                continue
            assert response.status_code == 401, (method, path)
            assert response.json()["error"]["code"] == "UNAUTHORIZED"
            checked += 1
    assert checked >= 12


def test_served_document_is_upstreams(contract_server: LiveServer) -> None:
    served = httpx.get(contract_server.url + "/openapi.json").json()
    upstream = Path(__file__).resolve().parents[1] / "cra_agents" / "server" / "openapi.json"
    import json

    original = json.loads(upstream.read_text())
    for path, item in original["paths"].items():
        for method, operation in item.items():
            mine = served["paths"][path][method]
            assert mine["operationId"] == operation["operationId"]
            assert set(mine["responses"]) == set(operation["responses"])
    assert served["security"] == original["security"]
    assert served["components"]["securitySchemes"] == original["components"]["securitySchemes"]


def _validator(document: dict[str, Any], name: str) -> Any:
    from jsonschema import Draft202012Validator, FormatChecker

    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return Draft202012Validator(schema, format_checker=FormatChecker())


def test_successful_responses_match_their_schemas(contract_server: LiveServer) -> None:
    """A real flow (which random requests never reach): every body validates."""
    from cra_agents._requests import execute_request, resolve_request

    document = httpx.get(contract_server.url + "/openapi.json").json()
    runtime = contract_server.runtime
    with httpx.Client(base_url=contract_server.url, headers={"X-API-Key": KEY}) as client:

        def check(response: httpx.Response, status: int, name: str) -> dict[str, Any]:
            assert response.status_code == status, response.text
            body: dict[str, Any] = response.json()
            errors = list(_validator(document, name).iter_errors(body))
            assert not errors, (name, [e.message for e in errors])
            return body

        session = check(
            client.post("/v1/sessions", json={"agent_id": "bot", "goal": "triage"}), 201, "Session"
        )
        sid = session["session_id"]
        check(client.get(f"/v1/sessions/{sid}"), 200, "Session")
        check(client.get("/v1/sessions"), 200, "SessionList")
        info = runtime.session(sid)
        wire = resolve_request(info).model_dump(mode="json", exclude_none=True)
        resolution = check(client.post("/v1/resolve", json=wire), 200, "CARPResolution")
        rid = resolution["resolution_id"]
        for action, status in [("github.issue.list", 200), ("github.repo.delete", 403)]:
            request = execute_request(info, rid, action, {"repo": "acme/app"})
            response = client.post("/v1/execute", json=request.model_dump(mode="json"))
            check(response, status, "ExecuteResponse" if status == 200 else "Error")
        check(client.get(f"/v1/traces/{sid}"), 200, "TraceEventList")
        check(client.post(f"/v1/traces/{sid}/verify"), 200, "TraceVerification")
        check(client.get("/v1/stored-sessions"), 200, "StoredSessionList")
        report = check(client.post(f"/v1/traces/{sid}/replay", json={}), 200, "ReplayReport")
        assert report["counts"]["decisions"] > 0
        check(client.get("/v1/atlases"), 200, "AtlasList")
        check(client.get("/v1/atlases/com.example.github-ops"), 200, "AtlasManifest")
        check(client.get("/v1/health"), 200, "HealthStatus")
        check(client.get(f"/v1/sessions/{sid}", headers={"X-API-Key": "x" * 20}), 401, "Error")
        assert client.delete(f"/v1/sessions/{sid}").status_code == 204
        check(client.get(f"/v1/sessions/{sid}"), 200, "Session")
        check(client.get(f"/v1/traces/{sid}"), 200, "TraceEventList")
