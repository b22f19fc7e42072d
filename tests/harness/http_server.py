"""A live CRA HTTP server for the client's tests: real uvicorn on 127.0.0.1, a real Runtime.

**Test double of the upstream contract**: until SERVER's ``cra_agents.server.create_app`` is
merged, :func:`double_app` implements just enough of the upstream routes of
``../shared/conformance/openapi.yaml`` (sessions, resolve, traces, verify, atlases) over a
real :class:`~cra_agents.Runtime` for the client to be tested against, plus the real call
routes (:mod:`cra_agents.server._calls`, mounted as SERVER's app mounts them). The call
routes are the code under test; the rest is this double. Once the server is merged, the
client's tests should run against ``create_app`` as well.

The app also counts requests per (method, path) and can inject faults
(``app.state.faults``: path prefix → list of status codes to answer first, or ``"slow"``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cra_agents import (
    AuthenticationError,
    CRAError,
    Runtime,
    SessionInfo,
    SessionNotFoundError,
)
from cra_agents.server._calls import router as calls_router
from cra_agents.server._principal import OWNER_KEY, Principal, owns

KEYS: dict[str, Principal] = {
    "key-a": Principal("key:a", frozenset({"read", "write"})),
    "key-b": Principal("key:b", frozenset({"read", "write"})),
    "key-ro": Principal("key:ro", frozenset({"read"})),
    "key-bot": Principal("key:bot", frozenset({"read", "write"}), frozenset({"bot"})),
}


def authenticate(headers: Mapping[str, str]) -> Principal:
    """API keys of :data:`KEYS` in ``x-api-key``."""
    principal = KEYS.get(headers.get("x-api-key", ""))
    if principal is None:
        raise AuthenticationError("missing or unknown API key")
    return principal


class _CreateSession(BaseModel):
    agent_id: str = Field(min_length=1, max_length=255)
    goal: str = Field(min_length=1)
    metadata: dict[str, Any] | None = None
    parent_session_id: str | None = None
    session_id: str | None = None


def _session_json(info: SessionInfo) -> dict[str, Any]:
    return {
        "session_id": info.session_id,
        "agent_id": info.agent_id,
        "goal": info.goal,
        "status": "active" if info.active else "ended",
        "created_at": info.created_at,
        "ended_at": info.ended_at,
        "metadata": dict(info.metadata) if info.metadata else None,
        "trace_id": info.trace_id,
        "parent_session_id": info.parent_session_id,
        "action_count": info.action_count,
        "resolution_count": info.resolution_count,
        "event_count": info.event_count,
    }


def double_app(runtime: Runtime) -> FastAPI:
    """The test double of SERVER's app (see the module docstring)."""
    app = FastAPI()
    app.state.runtime = runtime
    app.state.authenticate = authenticate
    app.state.counts = Counter()
    app.state.faults = {}

    @app.middleware("http")
    async def count_and_fault(request: Request, call_next: Any) -> Any:
        path = request.url.path
        app.state.counts[(request.method, path)] += 1
        for prefix, plan in app.state.faults.items():
            if path.startswith(prefix) and plan:
                fault = plan.pop(0)
                if fault == "slow":
                    import asyncio

                    await asyncio.sleep(1.0)
                    break
                return JSONResponse(
                    CRAError("injected fault").to_error_response(), status_code=int(fault)
                )
        return await call_next(request)

    @app.exception_handler(CRAError)
    async def cra_error(request: Request, exc: CRAError) -> JSONResponse:
        return JSONResponse(exc.to_error_response(None), status_code=exc.status)

    def principal(request: Request) -> Principal:
        return authenticate({k.lower(): v for k, v in request.headers.items()})

    def owned(request: Request, session_id: str) -> SessionInfo:
        who = principal(request)
        try:
            info = runtime.session(session_id)
        except SessionNotFoundError:
            info = None
        if info is None or not owns(who, info.metadata):
            raise SessionNotFoundError(f"no session {session_id}")
        return info

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"status": "healthy", "version": "test-double"}

    @app.post("/v1/sessions", status_code=201)
    def create_session(body: _CreateSession, request: Request) -> dict[str, Any]:
        who = principal(request)
        who.require("write", agent_id=body.agent_id)
        info = runtime.create_session(
            body.agent_id,
            body.goal,
            session_id=body.session_id,
            parent_session_id=body.parent_session_id,
            metadata={**(body.metadata or {}), OWNER_KEY: who.id},
        )
        return _session_json(info)

    @app.get("/v1/sessions")
    def list_sessions(
        request: Request, status: str = "active", limit: int = 20, offset: int = 0
    ) -> dict[str, Any]:
        who = principal(request)
        items = [
            s
            for s in runtime.sessions()
            if owns(who, s.metadata) and (status == "all" or (status == "active") == s.active)
        ]
        page = items[offset : offset + limit]
        return {"items": [_session_json(s) for s in page], "total": len(items)}

    @app.get("/v1/sessions/{session_id}")
    def get_session(session_id: str, request: Request) -> dict[str, Any]:
        return _session_json(owned(request, session_id))

    @app.delete("/v1/sessions/{session_id}", status_code=204)
    def end_session(
        session_id: str, request: Request, reason: str = "completed", error: str | None = None
    ) -> Response:
        owned(request, session_id)
        runtime.end_session(session_id, reason, error=error)  # type: ignore[arg-type]
        return Response(status_code=204)

    @app.post("/v1/resolve")
    def resolve(body: dict[str, Any], request: Request) -> Any:
        owned(request, str((body.get("requester") or {}).get("session_id")))
        return runtime.resolve(body).model_dump(mode="json", exclude_none=True)

    @app.post("/v1/execute")
    def execute(body: dict[str, Any], request: Request) -> Any:
        owned(request, str((body.get("requester") or {}).get("session_id")))
        return runtime.execute(body).model_dump(mode="json", exclude_none=True)

    @app.get("/v1/traces/{session_id}")
    def traces(
        session_id: str,
        request: Request,
        event_type: str | None = None,
        since_sequence: int | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        owned(request, session_id)
        events = runtime.trace_events(
            session_id, event_type=event_type, since_sequence=since_sequence, limit=limit
        )
        return {
            "session_id": session_id,
            "events": [e.model_dump(mode="json") for e in events],
        }

    @app.post("/v1/traces/{session_id}/verify")
    def verify(session_id: str, request: Request) -> dict[str, Any]:
        owned(request, session_id)
        result = runtime.verify(session_id)
        errors = []
        if not result.valid:
            errors.append(
                {
                    "sequence": result.first_invalid_index,
                    "error": result.error_type,
                    "details": result.error_message,
                }
            )
        return {"valid": result.valid, "event_count": result.event_count, "errors": errors}

    @app.get("/v1/atlases")
    def atlases(request: Request) -> dict[str, Any]:
        principal(request)
        items = [
            {"atlas_id": a.atlas_id, "version": a.version, "name": a.manifest.name}
            for a in runtime.atlases
        ]
        return {"items": items, "total": len(items)}

    @app.get("/v1/atlases/{atlas_id}")
    def atlas(atlas_id: str, request: Request) -> Any:
        principal(request)
        manifest = runtime.atlas(atlas_id).manifest
        return manifest.model_dump(mode="json", by_alias=True, exclude_none=True)

    app.include_router(calls_router)
    return app


def free_port() -> int:
    """A port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        table = getattr(app.state, "cra_calls", None)
        if table is not None:  # calls left pending: recorded failed, the sweeper stopped
            table.close()
