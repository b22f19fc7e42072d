"""The call routes' own parts: the OpenAPI they document and the pending-call table."""

from __future__ import annotations

import time

from fastapi import FastAPI

from cra_agents import Runtime
from cra_agents.examples import atlas_path
from cra_agents.server._calls import PendingCalls, router

READ = {"repo": "acme/app", "path": "README.md"}


def test_openapi_documents_the_call_routes() -> None:
    app = FastAPI()
    app.include_router(router)
    paths = app.openapi()["paths"]
    assert set(paths) == {"/v1/calls", "/v1/calls/{call_id}/outcome", "/v1/calls/precheck"}
    decide = paths["/v1/calls"]["post"]
    assert {"200", "401", "403", "404", "409", "423", "503"} <= set(decide["responses"])
    assert {"404", "409"} <= set(paths["/v1/calls/{call_id}/outcome"]["post"]["responses"])


def test_the_sweeper_expires_calls_by_itself_and_never_raises() -> None:
    runtime = Runtime([atlas_path("github-ops")], store="memory://")
    sid = runtime.create_session("triage-bot", "Read").session_id
    call = runtime.authorize(sid, "github.file.read", READ)
    table = PendingCalls(timeout=0.0)
    table.add(call, "p")
    runtime.close()
    deadline = time.monotonic() + 10
    while len(table):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert table.expire() == 0
    table.close()
    assert call.done


def test_the_sweeper_stops_once_every_outcome_is_in() -> None:
    runtime = Runtime([atlas_path("github-ops")], store="memory://")
    try:
        sid = runtime.create_session("triage-bot", "Read").session_id
        table = PendingCalls(timeout=300)
        call = runtime.authorize(sid, "github.file.read", READ)
        table.add(call, "p")
        sweeper = table._sweeper
        assert sweeper is not None and sweeper.is_alive()
        assert table.take(call.execution_id, "p") is call
        sweeper.join(5)
        assert not sweeper.is_alive()
        runtime.record_outcome(call, result="ok")
    finally:
        runtime.close()
