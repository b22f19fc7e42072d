"""The routes of the upstream CRA Runtime API (``openapi.yaml``, PROTOCOL_NOTES §6).

Every route but health needs a credential (see :mod:`cra_agents.server._auth`); ``read`` scope
for gets, lists, traces and verification, ``write`` for everything that changes state. A
session belongs to the principal that created it: any other gets 404 ``SESSION_NOT_FOUND``.
Runtime work that may wait on the trace store runs off the event loop.

The ``audit`` scope reads every session the trace store holds, whoever wrote it (sessions an
ingest server received from other processes have no owner here): ``GET /v1/stored-sessions``
lists them, and ``GET /v1/sessions/{id}``, ``GET /v1/traces/{id}`` and
``POST /v1/traces/{id}/verify`` fall back to the store for them. A stored session is described
from two of its events only, whatever its length (:func:`stored_session`). Only the store
interface is used (``read``, ``last_sequence``, ``sessions``), so any store serves.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from cra_agents._clock import format_timestamp
from cra_agents._exceptions import (
    CRAError,
    InvalidRequestError,
    SessionNotFoundError,
    TraceUnavailableError,
)
from cra_agents._version import __version__
from cra_agents.atlas import Atlas
from cra_agents.protocol import UUID_PATTERN, CARPRequest, TraceEvent
from cra_agents.protocol import events as ev
from cra_agents.runtime import Runtime, SessionInfo
from cra_agents.server._limits import current_request
from cra_agents.server._principal import OWNER_KEY, Principal, owns
from cra_agents.trace import (
    INDEX_MISMATCH,
    ChainVerification,
    TraceStore,
    event_payload,
    fold_session,
    read_session_ends,
)

__all__ = [
    "ATLAS_KEY",
    "REQUEST_ID_KEY",
    "TRACE_ID_KEY",
    "Caller",
    "CreateSessionRequest",
    "audits",
    "authenticated",
    "health_router",
    "is_session_id",
    "not_found",
    "owned",
    "router",
    "stored_session",
    "wire",
]

#: Session metadata keys the server sets (beside :data:`OWNER_KEY`).
ATLAS_KEY = "cra.atlas_id"
REQUEST_ID_KEY = "cra.request_id"
TRACE_ID_KEY = "cra.trace_id"

T = TypeVar("T")
_MAX_SEQUENCE = 2**62
#: Events read at a time when the traces route filters a session by type.
_SCAN_PAGE = 1000
# Stores are asked only about well-formed ids (a JSONL store names a file after the id).
_SESSION_ID = re.compile(UUID_PATTERN.removeprefix("^").removesuffix("$"))

router = APIRouter()
health_router = APIRouter()


class CreateSessionRequest(BaseModel):
    """Body of ``POST /v1/sessions``."""

    model_config = ConfigDict(extra="allow")

    agent_id: str = Field(min_length=1, max_length=255)
    goal: str = Field(min_length=1)
    atlas_id: str | None = None
    metadata: dict[str, Any] | None = None
    #: Extension: a sub-session of one of the caller's sessions (nested ``cra.session`` blocks).
    parent_session_id: str | None = None


async def authenticated(request: Request) -> Principal:
    """The caller, as ``app.state.authenticate`` proves it (401 otherwise).

    ``async`` so that FastAPI calls it on the loop: hashing a key or checking a token's
    signature is quicker than a hop to the thread pool.
    """
    principal: Principal = request.app.state.authenticate(request.headers)
    return principal


Caller = Annotated[Principal, Depends(authenticated)]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def _call(runtime: Runtime, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn``: inline when the runtime never waits for the store, else off the loop."""
    if runtime.durability == "async":
        return fn(*args, **kwargs)
    return await run_in_threadpool(fn, *args, **kwargs)


def _json(body: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


def wire(value: Any, *, nulls: bool = False) -> Any:
    """A wire model as JSON-ready data, quickly (``model_dump`` walks every schema's dicts).

    The upstream schemas type optional fields as non-null, so ``None`` fields of models are
    left out (unless ``nulls``: TRACE events keep ``parent_span_id: null``); dicts (schemas,
    payloads) are passed as they are. Equal to ``model_dump_json(exclude_none=True)``.
    """
    if isinstance(value, BaseModel):
        return {
            k: wire(v, nulls=nulls) for k, v in value.__dict__.items() if v is not None or nulls
        }
    if isinstance(value, list | tuple):
        return [wire(v, nulls=nulls) for v in value]
    return value


# -- health ---------------------------------------------------------------------------------


@health_router.get("/v1/health")
@health_router.get("/health", include_in_schema=False)
async def health(request: Request) -> Response:
    """Component checks: the trace store records, the atlases are loaded; no credential."""
    runtime = _runtime(request)
    checks: dict[str, dict[str, str]] = {}
    failure = runtime.trace_failure
    if failure is not None:
        checks["trace_store"] = {"status": "fail", "message": f"not recording: {failure!r}"}
    elif runtime.closed:
        checks["trace_store"] = {"status": "fail", "message": "the runtime is closed"}
    else:
        stats = runtime.trace_stats()
        checks["trace_store"] = {
            "status": "pass",
            "message": f"recording; {stats.written} events written",
        }
    count = len(runtime.atlases)
    checks["atlases"] = {
        "status": "pass" if count else "warn",
        "message": f"{count} atlas(es) loaded"
        if count
        else "no atlas loaded: every call is denied",
    }
    states = {c["status"] for c in checks.values()}
    status = "unhealthy" if "fail" in states else "degraded" if "warn" in states else "healthy"
    body = {
        "status": status,
        "version": __version__,
        "uptime_seconds": int(time.monotonic() - request.app.state.started),
        "checks": checks,
    }
    return _json(body, 503 if status == "unhealthy" else 200)


# -- sessions -------------------------------------------------------------------------------


def _session_json(info: SessionInfo) -> dict[str, Any]:
    metadata = dict(info.metadata or {})
    body: dict[str, Any] = {
        "session_id": info.session_id,
        "agent_id": info.agent_id,
        "goal": info.goal,
        "status": "active" if info.active else "ended",
        "created_at": info.created_at,
        "trace_id": info.trace_id,
        "resolution_count": info.resolution_count,
        "action_count": info.action_count,
    }
    atlas_id = metadata.get(ATLAS_KEY)
    if isinstance(atlas_id, str):
        body["atlas_id"] = atlas_id
    if info.ended_at is not None:
        body["ended_at"] = info.ended_at
    if info.parent_session_id is not None:
        body["parent_session_id"] = info.parent_session_id
    if metadata:
        body["metadata"] = metadata
    return body


def is_session_id(value: str) -> bool:
    """Whether ``value`` is a session id a store may be asked about (a UUID)."""
    return _SESSION_ID.fullmatch(value) is not None


def not_found(session_id: str) -> SessionNotFoundError:
    """The 404 of a session the caller may not see: the same whether it exists or not."""
    return SessionNotFoundError(f"no session {session_id}", details={"session_id": session_id})


def owned(runtime: Runtime, principal: Principal, session_id: str) -> SessionInfo:
    """The session, if the caller created it; 404 ``SESSION_NOT_FOUND`` otherwise."""
    try:
        info = runtime.session(session_id)
    except SessionNotFoundError:
        info = None
    if info is None or not owns(principal, info.metadata):
        raise not_found(session_id)
    return info


def audits(principal: Principal) -> bool:
    """Whether the caller reads every stored session (``audit``); else it must have ``read``.

    Raises:
        ForbiddenError: it has neither scope.
    """
    if "audit" in principal.scopes:
        return True
    principal.require("read")
    return False


def _flush(runtime: Runtime) -> None:
    """Write what the runtime has queued, so its own sessions read as they were decided."""
    # A failed trace is the health route's news: what is stored can still be read.
    with contextlib.suppress(TraceUnavailableError):
        runtime.flush()


def _code(exc: Exception) -> str:
    """The code of a failure to read a session: its own, else ``MALFORMED_EVENT``."""
    return exc.code if isinstance(exc, CRAError) else "MALFORMED_EVENT"


def stored_session(store: TraceStore, session_id: str) -> dict[str, Any]:
    """A session's Session body from its stored events (404 when the store has none).

    Cheap whatever the session's length: :func:`~cra_agents.trace.read_session_ends` (three
    indexed reads), never the events in between. ``session.started`` gives the
    agent, goal, metadata and start; the runtime writes ``session.ended`` after every other
    event of its session, so the last event says whether (and how) it ended. The counts of
    resolutions and actions come from ``session.ended``: a session still going (e.g. one an
    ingest server still receives) has none yet; ``event_count`` is always given.

    Raises:
        SessionNotFoundError: the store has no event of ``session_id``.
        ValueError: the store cannot read the session: :class:`~cra_agents.TraceError` when its
            index disagrees with its events, pydantic's ``ValidationError`` for a malformed one.
    """
    events = read_session_ends(store, session_id) if is_session_id(session_id) else ()
    if not events:
        raise not_found(session_id)
    first = events[:1]
    last_sequence = events[-1].sequence
    record = fold_session(events)
    ended = events[-1] if events[-1].event_type == ev.SESSION_ENDED else None
    body: dict[str, Any] = {
        "session_id": session_id,
        "agent_id": record.agent_id or "",
        "goal": record.goal or "",
        "status": "active" if ended is None else "ended",
        "created_at": first[0].timestamp,
        "trace_id": first[0].trace_id,
    }
    metadata = dict(record.metadata or {})
    atlas_id = metadata.get(ATLAS_KEY)
    if isinstance(atlas_id, str):
        body["atlas_id"] = atlas_id
    if ended is not None:
        body["ended_at"] = ended.timestamp
        body["end_reason"] = record.end_reason
        body["resolution_count"] = ended.payload.get("resolution_count")
        body["action_count"] = ended.payload.get("action_count")
    parent = (
        None if record.started is None else event_payload(record.started).get("parent_session_id")
    )
    if isinstance(parent, str):
        body["parent_session_id"] = parent
    if metadata:
        body["metadata"] = metadata
    body["event_count"] = last_sequence + 1
    return body


def _audited(runtime: Runtime, principal: Principal, session_id: str) -> dict[str, Any]:
    """Any session, for an ``audit`` caller: as its owner sees it, else from the store."""
    _flush(runtime)
    try:
        stored = stored_session(runtime.store, session_id)
    except SessionNotFoundError:
        stored = None  # unknown, or not in the store yet (just created, events queued)
    if stored is not None and not owns(principal, stored.get("metadata")):
        return stored
    # The caller's own (described as today), or one the runtime holds and has not stored yet.
    try:
        return _session_json(runtime.session(session_id))
    except SessionNotFoundError:
        raise not_found(session_id) from None


@router.post("/v1/sessions", status_code=201)
async def create_session(
    request: Request, principal: Caller, body: Annotated[CreateSessionRequest, Body()]
) -> Response:
    """Start a session owned by the caller (201 Session)."""
    principal.require("write", agent_id=body.agent_id)
    runtime = _runtime(request)
    metadata: dict[str, Any] = dict(body.metadata or {})
    if body.atlas_id is not None:
        runtime.atlas(body.atlas_id)  # 404 ATLAS_NOT_FOUND unless loaded
        metadata[ATLAS_KEY] = body.atlas_id
    if body.parent_session_id is not None:  # 404 unless the parent is the caller's too
        await run_in_threadpool(owned, runtime, principal, body.parent_session_id)
    metadata[OWNER_KEY] = principal.id
    info_ = current_request()
    if info_ is not None:
        metadata[REQUEST_ID_KEY] = info_.request_id
        if info_.trace_id is not None:
            metadata[TRACE_ID_KEY] = info_.trace_id
    info = await _call(
        runtime,
        runtime.create_session,
        body.agent_id,
        body.goal,
        metadata=metadata,
        parent_session_id=body.parent_session_id,
    )
    return _json(_session_json(info), 201)


@router.get("/v1/sessions")
async def list_sessions(
    request: Request,
    principal: Caller,
    status: Literal["active", "ended", "all"] = "active",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    """The caller's sessions (SessionList)."""
    principal.require("read")
    runtime = _runtime(request)
    mine = [
        s
        for s in runtime.sessions()
        if owns(principal, s.metadata) and (status == "all" or (status == "active") == s.active)
    ]
    offset = min(offset, len(mine))  # any offset is valid; past the end is an empty page
    page = mine[offset : offset + limit]
    return _json(
        {
            "items": [_session_json(s) for s in page],
            "total": len(mine),
            "limit": limit,
            "offset": offset,
        }
    )


@router.get("/v1/stored-sessions")
async def list_stored_sessions(
    request: Request,
    principal: Caller,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    order: Literal["oldest", "newest"] = "oldest",
) -> Response:
    """Every session the trace store holds, whoever wrote it (``audit``; StoredSessionList).

    Extension. The page's sessions are described by :func:`stored_session` (three indexed reads
    each, whatever their length); the store's session ids are listed once per request. A
    session the store refuses to read is listed under ``unreadable`` instead of ``items``.
    """
    principal.require("audit")
    runtime = _runtime(request)

    def page() -> dict[str, Any]:
        _flush(runtime)
        ids = runtime.store.sessions()
        if order == "newest":
            ids.reverse()
        start = min(offset, len(ids))
        items: list[dict[str, Any]] = []
        unreadable: list[dict[str, Any]] = []
        for session_id in ids[start : start + limit]:
            try:
                items.append(stored_session(runtime.store, session_id))
            # One bad session must not hide the others (nor one that vanished meanwhile).
            except (ValueError, SessionNotFoundError) as exc:
                unreadable.append(
                    {"session_id": session_id, "error": _code(exc), "details": str(exc)[:500]}
                )
        answer: dict[str, Any] = {
            "items": items,
            "total": len(ids),
            "limit": limit,
            "offset": start,
        }
        if unreadable:
            answer["unreadable"] = unreadable
        return answer

    return _json(await run_in_threadpool(page))


@router.get("/v1/sessions/{session_id}")
async def get_session(request: Request, principal: Caller, session_id: str) -> Response:
    """One of the caller's sessions (Session); for ``audit`` callers, any stored session."""
    runtime = _runtime(request)
    if audits(principal):
        return _json(await run_in_threadpool(_audited, runtime, principal, session_id))
    info = await run_in_threadpool(owned, runtime, principal, session_id)
    return _json(_session_json(info))


@router.delete("/v1/sessions/{session_id}", status_code=204)
async def end_session(
    request: Request,
    principal: Caller,
    session_id: str,
    reason: Literal["completed", "timeout", "error", "cancelled"] = "completed",
    error: Annotated[str | None, Query(max_length=4096)] = None,
) -> Response:
    """End one of the caller's sessions (204); ``reason`` and ``error`` are extensions."""
    principal.require("write")
    runtime = _runtime(request)
    info = await run_in_threadpool(owned, runtime, principal, session_id)
    principal.require("write", agent_id=info.agent_id)
    await _call(runtime, runtime.end_session, session_id, reason, error=error)
    return Response(status_code=204)


# -- CARP -----------------------------------------------------------------------------------


def _carp(body: bytes) -> CARPRequest:
    try:
        return CARPRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = [
            {
                "path": "/" + "/".join(str(p) for p in e["loc"]),
                "message": e["msg"],
            }
            for e in exc.errors(include_url=False, include_input=False)
        ][:50]
        raise InvalidRequestError(
            f"invalid CARP request: {errors[0]['message']} at {errors[0]['path']}",
            details={"reason": "schema", "path": errors[0]["path"], "errors": errors},
        ) from exc


def _admitted(request: Request, principal: Principal, body: bytes) -> CARPRequest:
    carp = _carp(body)
    principal.require("write", agent_id=carp.requester.agent_id)
    owned(_runtime(request), principal, carp.requester.session_id)
    return carp


@router.post("/v1/resolve")
async def resolve(request: Request, principal: Caller) -> Response:
    """Resolve a CARP request in one of the caller's sessions (CARPResolution)."""
    runtime = _runtime(request)
    carp = _admitted(request, principal, await request.body())
    resolution = await _call(runtime, runtime.resolve, carp)
    return _json(wire(resolution))


@router.post("/v1/execute")
async def execute(request: Request, principal: Caller) -> Response:
    """Gate an execution through the runtime's call gate (ExecuteResponse; 403 when denied)."""
    runtime = _runtime(request)
    carp = _admitted(request, principal, await request.body())
    response = await _call(runtime, runtime.execute, carp)
    return _json(wire(response))


# -- traces ---------------------------------------------------------------------------------


def _session_events(
    runtime: Runtime,
    session_id: str,
    event_type: str | None,
    since_sequence: int | None,
    limit: int,
) -> list[TraceEvent]:
    """The first ``limit`` events after ``since_sequence`` (of ``event_type``), or 404.

    A type filter is applied here, over pages of :data:`_SCAN_PAGE` events: a store may read
    a whole session to filter it by type (the index is not trusted to skip rows), and a long
    session must not be loaded whole for one request.
    """
    page = limit if event_type is None else _SCAN_PAGE
    try:  # the runtime's read: it flushes what it has queued and knows the 404
        events = runtime.trace_events(session_id, since_sequence=since_sequence, limit=page)
    except SessionNotFoundError:
        raise not_found(session_id) from None
    if event_type is None:
        return events
    found: list[TraceEvent] = []
    while True:
        found += [e for e in events if e.event_type == event_type][: limit - len(found)]
        if len(found) >= limit or len(events) < page:
            return found
        events = runtime.store.read(session_id, since_sequence=events[-1].sequence, limit=page)


def _wants_ndjson(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/x-ndjson" in accept


@router.get("/v1/traces/{session_id}")
async def get_traces(
    request: Request,
    principal: Caller,
    session_id: str,
    event_type: str | None = None,
    since_sequence: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """The session's TRACE events (TraceEventList, or NDJSON by ``Accept``).

    ``audit`` callers read any stored session. At most ``limit`` events per request: page on
    with ``since_sequence`` (the answer's ``last_sequence``).
    """
    audit = audits(principal)
    runtime = _runtime(request)
    if since_sequence is not None:
        since_sequence = min(since_sequence, _MAX_SEQUENCE)  # stores index 64-bit integers

    def read() -> tuple[list[dict[str, Any]], int]:
        if not audit:
            owned(runtime, principal, session_id)
        events = _session_events(runtime, session_id, event_type, since_sequence, limit)
        total = runtime.store.last_sequence(session_id) + 1
        return [wire(e, nulls=True) for e in events], total

    events, total = await run_in_threadpool(read)
    if _wants_ndjson(request):
        text = b"".join(orjson.dumps(e) + b"\n" for e in events)
        return Response(text, media_type="application/x-ndjson")
    body: dict[str, Any] = {"events": events, "session_id": session_id, "total": total}
    if events:
        body["last_sequence"] = events[-1]["sequence"]
    return _json(body)


@router.post("/v1/traces/{session_id}/verify")
async def verify_trace(request: Request, principal: Caller, session_id: str) -> Response:
    """Verify the session's hash chain as stored (TraceVerification).

    ``audit`` callers verify any stored session. :meth:`Runtime.verify` does the work (the one
    verifier; it streams a session from a store that can, e.g. PostgreSQL, and reads it whole
    from the others). A session whose stored index disagrees with its events, or holds an
    unreadable event, is reported invalid (``index_mismatch``, ``malformed_event``), as
    ``cra trace verify`` reports it.
    """
    audit = audits(principal)
    runtime = _runtime(request)

    def check() -> ChainVerification:
        if not audit:
            owned(runtime, principal, session_id)
        try:
            return runtime.verify(session_id)
        except SessionNotFoundError:
            raise not_found(session_id) from None
        except ValueError as exc:  # unreadable: reported as verify_logs (cra trace verify) does
            return ChainVerification(
                False,
                0,
                0,
                "index_mismatch" if _code(exc) == INDEX_MISMATCH else "malformed_event",
                f"the session cannot be read: {exc}",
            )

    result = await run_in_threadpool(check)
    body: dict[str, Any] = {
        "valid": result.valid,
        "event_count": result.event_count,
        "last_valid_hash": result.last_valid_hash,
    }
    if result.hash_rule is not None:
        body["hash_rule"] = result.hash_rule
    if not result.valid:
        body["errors"] = [
            {
                "sequence": result.first_invalid_index or 0,
                "error": result.error_type or "invalid",
                "details": result.error_message or "",
            }
        ]
    return _json(body)


# -- atlases --------------------------------------------------------------------------------


def _summary(request: Request, atlas: Atlas) -> dict[str, Any]:
    manifest = atlas.manifest
    body: dict[str, Any] = {
        "atlas_id": atlas.atlas_id,
        "version": atlas.version,
        "name": manifest.name,
        "description": manifest.description,
        "domains": list(manifest.domains),
        "action_count": len(manifest.actions),
        "digest": atlas.digest,
    }
    loaded_at = request.app.state.atlas_loaded_at.get(atlas.atlas_id)
    if loaded_at is not None:
        body["loaded_at"] = loaded_at
    return body


@router.get("/v1/atlases")
async def list_atlases(request: Request, principal: Caller) -> Response:
    """The loaded atlases (AtlasList)."""
    principal.require("read")
    atlases = _runtime(request).atlases
    return _json({"items": [_summary(request, a) for a in atlases], "total": len(atlases)})


@router.post("/v1/atlases", status_code=201)
async def load_atlas(
    request: Request, principal: Caller, body: Annotated[dict[str, Any], Body()]
) -> Response:
    """Load a posted Atlas 1.0 manifest (201 AtlasSummary; 409 if loaded)."""
    principal.require("write")
    runtime = _runtime(request)
    atlas = await run_in_threadpool(runtime.load_atlas, body)
    request.app.state.atlas_loaded_at[atlas.atlas_id] = _now()
    return _json(_summary(request, atlas), 201)


@router.get("/v1/atlases/{atlas_id}")
async def get_atlas(request: Request, principal: Caller, atlas_id: str) -> Response:
    """A loaded atlas's manifest (AtlasManifest)."""
    principal.require("read")
    atlas = _runtime(request).atlas(atlas_id)
    return _json(atlas.manifest.model_dump(mode="json", exclude_none=True))


@router.delete("/v1/atlases/{atlas_id}", status_code=204)
async def unload_atlas(request: Request, principal: Caller, atlas_id: str) -> Response:
    """Unload an atlas (204); later calls of its actions are refused as undeclared."""
    principal.require("write")
    await run_in_threadpool(_runtime(request).unload_atlas, atlas_id)
    request.app.state.atlas_loaded_at.pop(atlas_id, None)
    return Response(status_code=204)


def _now() -> str:
    return format_timestamp(time.time_ns())
