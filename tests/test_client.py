"""HTTP mode end to end: cra_agents.Client against a real uvicorn server on 127.0.0.1.

The server is ``cra_agents.server.create_app`` over a real Runtime on the github-ops atlas
(``tests/harness/http_server.py``: its API keys, request counts and injected faults).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest

import cra_agents as cra
from cra_agents import (
    ActionDeniedError,
    ActionNotFoundError,
    ApprovalDecision,
    ApprovalRequest,
    AtlasError,
    Client,
    ConfigurationError,
    CRAError,
    ForbiddenError,
    InvalidParametersError,
    InvalidRequestError,
    RateLimitExceededError,
    Runtime,
    ServiceUnavailableError,
    SessionEndedError,
    SessionNotFoundError,
    TooManyRequestsError,
)
from cra_agents.client import RemoteCall, error_from_response
from cra_agents.examples import atlas_path
from cra_agents.server._calls import PendingCalls
from tests.harness.http_server import free_port, serve, server_app

GITHUB_OPS = atlas_path("github-ops")
SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
READ = {"repo": "acme/app", "path": "README.md"}
MERGE = {"repo": "acme/app", "pr_number": 42, "expected_head_sha": SHA}


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime([GITHUB_OPS], store="memory://")
    yield rt
    rt.close()


@pytest.fixture
def app(runtime: Runtime) -> Any:
    return server_app(runtime)


@pytest.fixture
def url(app: Any) -> Iterator[str]:
    with serve(app) as base:
        yield base


@pytest.fixture
def client(url: str) -> Iterator[Client]:
    with Client(url, api_key="key-a", backoff=0.001) as c:
        yield c


def _types(client: Client, session_id: str) -> list[str]:
    return [e.event_type for e in client.trace_events(session_id)]


# -- guarded calls through the client ------------------------------------------------------


def test_allowed_call_runs_with_frozen_arguments_and_is_recorded(client: Client) -> None:
    session = client.create_session("triage-bot", "Read the README")
    with client.call(
        "read_file_contents",
        {"repo": "acme/app", "path": "README.md"},
        session_id=session.session_id,
    ) as call:
        assert call.arguments == READ
        assert call.action_id == "github.file.read"
        assert call.policy_id == "allow-read"
        call.result = {"text": "hello"}
    assert call.done and call.decided
    assert "RemoteCall(action_id='github.file.read'" in repr(call)
    assert _types(client, session.session_id) == [
        "session.started",
        "action.requested",
        "policy.evaluated",
        "action.approved",
        "action.executed",
    ]
    assert client.verify(session.session_id).valid


def test_denied_call_raises_action_denied_with_policy_and_never_runs(client: Client) -> None:
    session = client.create_session("triage-bot", "Clean up")
    ran = []
    with (
        pytest.raises(ActionDeniedError) as denied,
        client.call(
            "delete_repository",
            {"repo": "acme/app", "confirm_name": "acme/app"},
            session_id=session.session_id,
        ),
    ):
        ran.append(True)
    assert ran == []
    assert denied.value.policy_id == "deny-repo-delete"
    assert denied.value.action_id == "github.repo.delete"
    assert denied.value.code == "ACTION_DENIED"
    assert _types(client, session.session_id)[-1] == "action.denied"


def test_invalid_parameters_and_unknown_tools_are_refused(client: Client) -> None:
    sid = client.create_session("triage-bot", "Read").session_id
    with (
        pytest.raises(InvalidParametersError),
        client.call("read_file_contents", {}, session_id=sid),
    ):
        pytest.fail("ran")
    with pytest.raises(ActionNotFoundError), client.call("launch_rockets", {}, session_id=sid):
        pytest.fail("ran")
    with (
        pytest.raises(SessionNotFoundError),
        client.call("read_file_contents", READ, session_id="00000000-0000-4000-8000-000000000000"),
    ):
        pytest.fail("ran")


def test_failed_tool_is_recorded_failed_and_its_exception_propagates(client: Client) -> None:
    sid = client.create_session("triage-bot", "Read").session_id
    with pytest.raises(KeyError), client.call("read_file_contents", READ, session_id=sid):
        raise KeyError("gone")
    failed = client.trace_events(sid, event_type="action.failed")
    assert failed[0].payload["error_code"] == "KeyError"
    call = client.call("read_file_contents", READ, session_id=sid)
    with call:
        call.fail(RuntimeError("reported in the result"))
    assert client.trace_events(sid)[-1].payload["error_code"] == "RuntimeError"
    assert client.verify(sid).valid


def test_unrecordable_result_is_described(client: Client) -> None:
    sid = client.create_session("triage-bot", "Read").session_id
    with client.call("read_file_contents", READ, session_id=sid) as call:
        call.result = object()
    assert _types(client, sid)[-1] == "action.executed"


@pytest.mark.parametrize("approve", [True, False])
def test_approval_is_asked_locally_and_decided_by_the_server(url: str, approve: bool) -> None:
    asked: list[ApprovalRequest] = []

    def approver(request: ApprovalRequest) -> ApprovalDecision:
        asked.append(request)
        return ApprovalDecision(approve, "alice", "looks right" if approve else "not today")

    with Client(url, api_key="key-a", approvals=approver) as client:
        sid = client.create_session("release-bot", "Merge PR 42").session_id
        ran: list[Any] = []
        if approve:
            with client.call("merge_pull_request", MERGE, session_id=sid) as call:
                ran.append(call.arguments)
            assert call.approver == "alice"
        else:
            with (
                pytest.raises(ActionDeniedError) as denied,
                client.call("merge_pull_request", MERGE, session_id=sid),
            ):
                ran.append(True)
            assert denied.value.reason == "approval_denied"
            assert denied.value.policy_id == "approve-merge"
        (request,) = asked
        assert request.action_id == "github.pr.merge"
        assert request.policy_id == "approve-merge"
        assert request.risk_tier == "high"
        assert request.agent_id == "release-bot"
        assert dict(request.arguments) == MERGE
        assert request.digest
        types = _types(client, sid)
        assert types[1] == "approval.requested"
        assert types[2:5] == ["action.requested", "policy.evaluated"] + (
            ["action.approved"] if approve else ["action.denied"]
        )
        assert ran == ([MERGE] if approve else [])
        approved = client.trace_events(sid, event_type="action.approved")
        if approve:
            assert approved[0].payload["approver"] == "alice"


def test_default_approver_denies(client: Client) -> None:
    sid = client.create_session("release-bot", "Merge").session_id
    with pytest.raises(ActionDeniedError), client.call("merge_pull_request", MERGE, session_id=sid):
        pytest.fail("ran")
    call = client.call("merge_pull_request", MERGE, session_id=sid)
    with pytest.raises(CRAError) as needed:
        client.gate_sync(call, ask=False)
    assert needed.value.code == "ACTION_REQUIRES_APPROVAL"
    assert needed.value.details["sequence"] > 0
    assert needed.value.details["policy_id"] == "approve-merge"


def test_approval_given_up_front(client: Client) -> None:
    sid = client.create_session("release-bot", "Merge").session_id
    yes = ApprovalDecision(True, "bob", "reviewed in the UI")
    with client.call("merge_pull_request", MERGE, session_id=sid, approval=yes) as call:
        call.result = "merged"
    assert _types(client, sid)[1:] == [
        "action.requested",
        "policy.evaluated",
        "action.approved",
        "action.executed",
    ]
    auth = client.authorize(sid, "github.pr.merge", MERGE, approval=yes)
    client.record_outcome(auth, result="merged")
    with pytest.raises(InvalidRequestError):
        client.record_outcome(auth, result="again")
    with pytest.raises(InvalidRequestError):
        client.call("merge_pull_request", MERGE, session_id=sid, approval_id="x")


def test_async_calls(url: str) -> None:
    async def approver(request: ApprovalRequest) -> bool:
        return True

    async def main(client: Client) -> list[str]:
        sid = client.create_session("release-bot", "Merge").session_id
        async with client.acall("read_file_contents", READ, session_id=sid) as call:
            call.result = "ok"
        async with client.acall("merge_pull_request", MERGE, session_id=sid) as call:
            call.result = "merged"
        with pytest.raises(ActionDeniedError):
            async with client.acall(
                "delete_repository", {"repo": "a/b", "confirm_name": "a/b"}, session_id=sid
            ):
                pytest.fail("ran")
        with pytest.raises(KeyError):
            async with client.acall("read_file_contents", READ, session_id=sid):
                raise KeyError("x")
        return _types(client, sid)

    with Client(url, api_key="key-a", approvals=approver) as client:
        types = asyncio.run(main(client))
    assert types.count("action.executed") == 2
    assert types.count("action.failed") == 1
    assert types.count("approval.requested") == 1


def test_async_gate_without_asking(client: Client) -> None:
    sid = client.create_session("release-bot", "Merge").session_id
    call = client.call("merge_pull_request", MERGE, session_id=sid)
    with pytest.raises(CRAError) as needed:
        asyncio.run(client.gate_async(call, ask=False))
    assert needed.value.code == "ACTION_REQUIRES_APPROVAL"
    call = client.call("merge_pull_request", MERGE, session_id=sid)
    client.approval_handler = lambda request: ApprovalDecision(False, "carol", "no")
    with pytest.raises(ActionDeniedError):
        asyncio.run(client.gate_async(call))
    assert call.done
    with pytest.raises(RuntimeError):
        asyncio.run(call.__aenter__())
    with pytest.raises(RuntimeError):
        call.__enter__()


# -- fail closed ---------------------------------------------------------------------------


def test_server_down_refuses_the_call() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", api_key="k", retries=1, backoff=0.001) as c:
        ran = []
        with (
            pytest.raises(ServiceUnavailableError) as down,
            c.call("read_file_contents", READ, session_id="s"),
        ):
            ran.append(True)
        assert ran == []
        assert down.value.details["reason"] == "unreachable"
        with pytest.raises(ServiceUnavailableError):
            c.session("00000000-0000-4000-8000-000000000000")


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_refuses_the_call_and_calls_are_never_retried(
    client: Client, app: Any, status: int
) -> None:
    sid = client.create_session("triage-bot", "Read").session_id
    app.state.faults["/v1/calls"] = [status]
    ran = []
    with (
        pytest.raises(ServiceUnavailableError) as failed,
        client.call("read_file_contents", READ, session_id=sid),
    ):
        ran.append(True)
    assert ran == []
    assert failed.value.details["status"] == status
    assert app.state.counts[("POST", "/v1/calls")] == 1


def test_timeout_refuses_the_call(url: str, app: Any) -> None:
    with Client(url, api_key="key-a", timeout=0.3) as client:
        sid = client.create_session("triage-bot", "Read").session_id
        app.state.faults["/v1/calls"] = ["slow"]
        with (
            pytest.raises(ServiceUnavailableError) as slow,
            client.call("read_file_contents", READ, session_id=sid),
        ):
            pytest.fail("ran")
        assert slow.value.details["reason"] == "timeout"
        assert app.state.counts[("POST", "/v1/calls")] == 1


def test_unreadable_answer_refuses_the_call() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="not json")

    with (
        Client("http://cra.test", transport=httpx.MockTransport(handler)) as c,
        pytest.raises(ServiceUnavailableError),
        c.call("t", {}, session_id="s"),
    ):
        pytest.fail("ran")


def test_outcome_that_cannot_be_posted_is_logged(
    client: Client, app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sid = client.create_session("triage-bot", "Read").session_id
    with client.call("read_file_contents", READ, session_id=sid) as call:
        app.state.faults["/v1/calls/"] = [503]
        call.result = "x"
    assert "reporting the outcome" in caplog.text

    async def run() -> None:
        async with client.acall("read_file_contents", READ, session_id=sid) as call:
            app.state.faults["/v1/calls/"] = [503]
            call.result = "x"

    asyncio.run(run())


# -- retries: idempotent requests only -----------------------------------------------------


def test_idempotent_requests_are_retried_others_never(client: Client, app: Any) -> None:
    counts = app.state.counts
    sid = client.create_session("triage-bot", "Read").session_id
    app.state.faults[f"/v1/sessions/{sid}"] = [503, 502]
    assert client.session(sid).session_id == sid
    assert counts[("GET", f"/v1/sessions/{sid}")] == 3
    app.state.faults[f"/v1/traces/{sid}/verify"] = [504]
    assert client.verify(sid).valid
    assert counts[("POST", f"/v1/traces/{sid}/verify")] == 2
    app.state.faults["/v1/sessions"] = [503]
    with pytest.raises(ServiceUnavailableError):
        client.create_session("triage-bot", "Again")
    assert counts[("POST", "/v1/sessions")] == 2  # the first session, then one try
    app.state.faults["/v1/resolve"] = [503]
    with pytest.raises(ServiceUnavailableError):
        client.resolve(cra.resolve_request(client.session(sid)))
    assert counts[("POST", "/v1/resolve")] == 1
    app.state.faults[f"/v1/sessions/{sid}"] = [503, 503, 503]
    with pytest.raises(ServiceUnavailableError):
        client.session(sid)  # retries exhausted
    app.state.faults[f"/v1/sessions/{sid}"] = [429]
    started = time.monotonic()
    assert client.session(sid).active
    assert time.monotonic() - started < 5


def test_connection_errors_are_retried_for_idempotent_requests() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if len(seen) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"status": "healthy", "version": "x"})

    with Client("http://cra.test", transport=httpx.MockTransport(handler), backoff=0) as c:
        assert c.health()["status"] == "healthy"
    assert seen == ["GET", "GET"]


# -- errors --------------------------------------------------------------------------------


def _response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    if isinstance(body, str):
        return httpx.Response(status, text=body, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


def test_error_table() -> None:
    def err(status: int, code: str, **details: Any) -> CRAError:
        body = {"error": {"code": code, "message": "m", "details": details}}
        return error_from_response(_response(status, body, {"retry-after": "3"}))

    limited = err(429, "RATE_LIMIT_EXCEEDED", action_id="a.b", policy_id="p", retry_after=2)
    assert isinstance(limited, RateLimitExceededError)
    assert (limited.retry_after, limited.policy_id) == (2.0, "p")
    too_many = err(429, "TOO_MANY_REQUESTS")
    assert isinstance(too_many, TooManyRequestsError) and too_many.retry_after == 3.0
    atlas = err(400, "ATLAS_VERSION_MISMATCH", reason="version")
    assert isinstance(atlas, AtlasError) and atlas.reason == "version"
    assert isinstance(err(403, "FORBIDDEN"), ForbiddenError)
    assert isinstance(err(409, "SESSION_ALREADY_ENDED"), SessionEndedError)
    unknown = err(418, "TEAPOT")
    assert type(unknown) is CRAError and unknown.code == "TEAPOT"
    bare = error_from_response(_response(404, "nope"))
    assert type(bare) is CRAError and "HTTP 404" in bare.message
    listed = error_from_response(_response(400, ["not", "an", "object"]))
    assert type(listed) is CRAError
    assert isinstance(error_from_response(_response(500, "boom")), ServiceUnavailableError)
    odd = error_from_response(_response(429, {"error": {"code": "TOO_MANY_REQUESTS"}}))
    assert isinstance(odd, TooManyRequestsError) and odd.retry_after == 1.0


# -- ownership and scopes ------------------------------------------------------------------


def test_another_principals_session_is_not_found(url: str, client: Client) -> None:
    sid = client.create_session("triage-bot", "Read").session_id
    with Client(url, api_key="key-b") as other:
        with (
            pytest.raises(SessionNotFoundError),
            other.call("read_file_contents", READ, session_id=sid),
        ):
            pytest.fail("ran")
        with pytest.raises(SessionNotFoundError):
            other.precheck(sid, "github.file.read", READ)
    with (
        Client(url, api_key="key-ro") as reader,
        pytest.raises(ForbiddenError),
        reader.call("read_file_contents", READ, session_id=sid),
    ):
        pytest.fail("ran")
    with Client(url, api_key="key-bot") as bot:
        with pytest.raises(ForbiddenError):
            bot.create_session("triage-bot", "not me")
        mine = bot.create_session("bot", "me").session_id
        with bot.call("read_file_contents", READ, session_id=mine) as call:
            call.result = "ok"
    with Client(url, api_key="wrong") as nobody, pytest.raises(CRAError) as unauthorized:
        nobody.create_session("triage-bot", "x")
    assert unauthorized.value.code == "UNAUTHORIZED"


def test_outcome_routes_unknown_twice_and_expired(url: str, app: Any, client: Client) -> None:
    sid = client.create_session("triage-bot", "Read").session_id
    raw = httpx.Client(base_url=url, headers={"x-api-key": "key-a"})
    with raw:
        missing = raw.post("/v1/calls/nope/outcome", json={"status": "executed"})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "CALL_NOT_FOUND"
        body = {"session_id": sid, "tool": "read_file_contents", "arguments": READ}
        call_id = raw.post("/v1/calls", json=body).json()["call_id"]
        stranger = httpx.post(
            f"{url}/v1/calls/{call_id}/outcome",
            json={"status": "executed"},
            headers={"x-api-key": "key-b"},
        )
        assert stranger.status_code == 404
        first = raw.post(f"/v1/calls/{call_id}/outcome", json={"status": "failed"})
        assert first.json() == {"call_id": call_id, "status": "failed"}
        again = raw.post(f"/v1/calls/{call_id}/outcome", json={"status": "executed"})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "OUTCOME_ALREADY_RECORDED"
        failed = client.trace_events(sid, event_type="action.failed")
        assert failed[0].payload["error_code"] == "Exception"
        # A pending call whose outcome never comes is recorded failed after the timeout.
        app.state.cra_calls = PendingCalls(timeout=0.2)
        late = raw.post("/v1/calls", json=body).json()["call_id"]
        deadline = time.monotonic() + 10
        while not client.trace_events(sid, event_type="action.failed")[1:]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        expired = client.trace_events(sid, event_type="action.failed")[-1].payload
        assert expired["error_code"] == "OutcomeNotReported"
        assert "outcome_not_reported" in expired["error_message"]
        gone = raw.post(f"/v1/calls/{late}/outcome", json={"status": "executed"})
        assert gone.status_code == 404
        weird = raw.post(
            "/v1/calls",
            json=body,
        ).json()["call_id"]
        odd = raw.post(
            f"/v1/calls/{weird}/outcome",
            json={"status": "failed", "error": {"type": "not an identifier", "message": "m"}},
        )
        assert odd.status_code == 200
    assert client.trace_events(sid)[-1].payload["error_code"] == "Exception"
    client.end_session(sid)
    assert client.verify(sid).valid


def test_pending_table_is_bounded(runtime: Runtime) -> None:
    table = PendingCalls(timeout=60, max_pending=1)
    sid = runtime.create_session("triage-bot", "Read").session_id
    first = runtime.authorize(sid, "github.file.read", READ)
    table.add(first, "p")
    with pytest.raises(ServiceUnavailableError):
        table.check_room()
    second = runtime.authorize(sid, "github.file.read", READ)
    table.add(second, "p")  # pushes the first out: recorded failed
    assert len(table) == 1 and first.done
    table.close()
    assert second.done and len(table) == 0
    types = [e.event_type for e in runtime.trace_events(sid)]
    assert types.count("action.failed") == 2


def test_session_ended_before_the_outcome_waits_for_it(client: Client) -> None:
    sid = client.create_session("triage-bot", "Read").session_id
    with client.call("read_file_contents", READ, session_id=sid) as call:
        client.end_session(sid)
        call.result = "ok"
    types = _types(client, sid)
    assert types[-2:] == ["action.executed", "session.ended"]
    with pytest.raises(SessionEndedError), client.call("read_file_contents", READ, session_id=sid):
        pytest.fail("ran")


# -- the rest of the runtime's surface -----------------------------------------------------


def test_sessions_traces_resolve_execute_atlases(client: Client) -> None:
    info = client.create_session("triage-bot", "Triage issues", metadata={"team": "a"})
    sid = info.session_id
    assert info.active and info.agent_id == "triage-bot"
    assert info.metadata is not None and info.metadata["team"] == "a"
    resolution = client.resolve(cra.resolve_request(info), context_budget_tokens=10)
    assert resolution.trace_id == info.trace_id
    executed = client.execute(
        cra.execute_request(
            info, resolution.resolution_id, "github.issue.list", {"repo": "acme/app"}
        )
    )
    assert executed.status == "success"
    child = client.create_session("triage-bot", "Sub task", parent_session_id=sid)
    assert child.parent_session_id == sid
    assert [s.session_id for s in client.sessions()] == [sid, child.session_id]
    ended = client.end_session(child.session_id, "cancelled", error="stopped")
    assert not ended.active
    assert [s.session_id for s in client.sessions(status="active")] == [sid]
    events = client.trace_events(sid)
    assert events[0].event_type == "session.started"
    assert client.trace_events(sid, limit=2) == events[:2]
    assert client.trace_events(sid, since_sequence=1) == events[2:]
    assert [a.atlas_id for a in client.atlases] == [a.atlas_id for a in client.atlases]
    (atlas,) = client.atlases
    assert client.atlas(atlas.atlas_id).atlas_id == atlas.atlas_id
    assert client.map_tool("read_file_contents") == "github.file.read"
    assert client.map_tool("read_file", actions={"read_file": "github.file.read"}) == (
        "github.file.read"
    )
    with pytest.raises(ActionNotFoundError):
        client.map_tool("launch_rockets")
    precheck = client.precheck(sid, "github.pr.merge", MERGE)
    assert precheck.needs_approval and precheck.policy_id == "approve-merge"
    bad = client.precheck(sid, "github.file.read", {}, check_parameters=True)
    assert bad.result == "deny" and bad.parameters_problem
    seq = client.record_approval_request(sid, precheck, MERGE, tool_call_id="tc-1")
    assert client.trace_events(sid)[seq].event_type == "approval.requested"
    allowed = client.precheck(sid, "github.file.read", READ)
    assert client.record_approval_request(sid, allowed, READ) == -1  # allowed: not run
    assert client.trace_events(sid)[-1].event_type == "action.failed"
    with pytest.raises(InvalidRequestError):
        client.record_event(sid, "myapp.step", {})
    assert client.flush() and client.trace_failure is None
    assert client.approval_timeout == 300.0
    client.approval_timeout = 5.0
    assert client.approval_timeout == 5.0
    client.approval_handler = "console"
    assert callable(client.approval_handler)
    assert client.activate_session(sid) == ()
    client.deactivate_session(sid, ())
    with client.session_scope("triage-bot", "scoped") as active:
        assert client.session(active.session_id).active


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.delenv("CRA_URL", raising=False)
    with pytest.raises(ConfigurationError):
        Client()
    monkeypatch.setenv("CRA_URL", url + "/")
    monkeypatch.setenv("CRA_API_KEY", "key-a")
    with Client() as client:
        assert client.base_url == url
        assert client.create_session("triage-bot", "env").active
    token = "a.b.c"  # noqa: S105 - not a token the double knows
    with Client(token=token) as bearer, pytest.raises(CRAError) as refused:
        bearer.create_session("triage-bot", "jwt")  # the double knows no tokens
    assert refused.value.code == "UNAUTHORIZED"


# -- the guard in HTTP mode ----------------------------------------------------------------


@pytest.fixture
def http_mode(url: str) -> Iterator[Client]:
    client = cra.configure(mode="http", url=url, api_key="key-a", approvals=lambda r: True)
    assert isinstance(client, Client)
    yield client
    cra.shutdown()


@cra.guarded
def read_file_contents(repo: str, path: str) -> str:
    return f"{repo}:{path}"


@cra.guarded("github.repo.delete")
def delete_repository(repo: str, confirm_name: str) -> str:
    raise AssertionError("never runs")


@cra.guarded("github.pr.merge")
async def merge(repo: str, pr_number: int, expected_head_sha: str) -> str:
    return f"merged {repo}#{pr_number}"


def test_guard_in_http_mode(http_mode: Client) -> None:
    assert cra.get_runtime() is cast("Runtime", http_mode)
    with cra.session(agent_id="triage-bot", goal="Read and merge") as active:
        assert read_file_contents("acme/app", "README.md") == "acme/app:README.md"
        with pytest.raises(ActionDeniedError) as denied:
            delete_repository("acme/app", "acme/app")
        assert denied.value.policy_id == "deny-repo-delete"
        assert asyncio.run(merge("acme/app", 42, SHA)) == "merged acme/app#42"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            assert pool.submit(cra.propagate(read_file_contents), "a/b", "x").result() == "a/b:x"
            escaped = pool.submit(read_file_contents, "a/b", "x")
            with pytest.raises(InvalidRequestError):
                escaped.result()
        sid = active.session_id
    info = http_mode.session(sid)
    assert not info.active
    types = _types(http_mode, sid)
    assert types.count("action.executed") == 3
    assert types[-1] == "session.ended"
    # Outside every session: the client's implicit server session.
    assert read_file_contents("acme/app", "x") == "acme/app:x"
    implicit = http_mode.implicit_session_id()
    assert http_mode.session(implicit).agent_id == "cra-implicit"
    http_mode.end_session(implicit)
    assert read_file_contents("acme/app", "y") == "acme/app:y"
    assert http_mode.implicit_session_id() != implicit
    http_mode.implicit_sessions = False
    with pytest.raises(InvalidRequestError):
        read_file_contents("acme/app", "z")


def test_session_block_fails_closed_when_the_server_is_down() -> None:
    cra.configure(mode="http", url=f"http://127.0.0.1:{free_port()}", api_key="k")
    try:
        with pytest.raises(ServiceUnavailableError), cra.session("bot", "x"):
            pytest.fail("ran")
        with pytest.raises(ServiceUnavailableError):
            read_file_contents("a/b", "c")
    finally:
        cra.shutdown()


def test_configure_modes(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.delenv("CRA_URL", raising=False)
    try:
        embedded = cra.configure([GITHUB_OPS], mode="auto", store="memory://")
        assert isinstance(embedded, Runtime)
        monkeypatch.setenv("CRA_URL", url)
        remote = cra.configure([GITHUB_OPS], mode="auto", store="memory://")
        assert isinstance(remote, Client) and remote.base_url == url
        with pytest.raises(ConfigurationError):
            cra.configure(mode="remote")  # type: ignore[call-overload]
        monkeypatch.delenv("CRA_URL")
        with pytest.raises(ConfigurationError):
            cra.configure(mode="http")
    finally:
        cra.shutdown()


SCRIPT: list[tuple[str, dict[str, Any]]] = [
    ("read_file_contents", READ),
    ("delete_repository", {"repo": "acme/app", "confirm_name": "acme/app"}),
    ("read_file_contents", {"repo": "acme/app"}),
    ("merge_pull_request", MERGE),
    ("merge_pull_request", {"repo": "acme/app", "pr_number": 44}),
    ("merge_pull_request", {**MERGE, "pr_number": 43}),
    ("launch_rockets", {}),
    ("create_issue", {"repo": "acme/app", "title": "Crash"}),
    ("read_file_contents", {**READ, "path": "boom"}),
]


def _run_script(runtime: Any) -> tuple[list[str], list[str]]:
    """Run SCRIPT through ``runtime.call``; the decisions and the session's event types."""
    answers = iter([True, False])
    runtime.approval_handler = lambda request: next(answers)
    outcomes: list[str] = []
    sid = runtime.create_session("triage-bot", "Scripted").session_id
    for tool, arguments in SCRIPT:
        try:
            with runtime.call(tool, arguments, session_id=sid) as call:
                if arguments.get("path") == "boom":
                    raise OSError("boom")
                call.result = "ok"
            outcomes.append(f"ran {call.action_id} {call.policy_id}")
        except CRAError as exc:
            outcomes.append(f"{exc.code} {exc.details.get('policy_id')}")
        except OSError:
            outcomes.append("failed")
    runtime.end_session(sid)
    types = [e.event_type for e in runtime.trace_events(sid)]
    assert runtime.verify(sid).valid
    return outcomes, types


def test_same_decisions_as_embedded_mode(client: Client) -> None:
    embedded = Runtime([GITHUB_OPS], store="memory://")
    try:
        local = _run_script(embedded)
    finally:
        embedded.close()
    remote = _run_script(client)
    assert remote[0] == local[0]
    assert "ACTION_DENIED deny-repo-delete" in local[0]
    # HTTP mode records the question put to the client's approver (approval.requested).
    assert [t for t in remote[1] if t != "approval.requested"] == local[1]
    assert remote[1].count("approval.requested") == 2


def test_remote_call_body(client: Client) -> None:
    call = RemoteCall(
        client,
        "sid",
        "tool",
        {"a": 1},
        action_id="x.y",
        actions={"tool": "x.y"},
        tool_call_id="tc",
        risk_tier="high",
        approval=ApprovalDecision(True, "me", original_arguments={"a": 0}),
    )
    body = call._body()
    assert body["approval"]["original_arguments"] == {"a": 0}
    assert body["risk_tier"] == "high" and body["actions"] == {"tool": "x.y"}
