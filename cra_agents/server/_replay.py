"""``POST /v1/traces/{session_id}/replay``: what a candidate atlas would have decided (extension).

A stored session's resolve and execute decisions are re-decided by
:func:`cra_agents.replay.replay_session` against the server's loaded atlases, with a posted
candidate manifest in place of the loaded atlas of its id (or beside them, when none has it).
The answer lists every decision as recorded and as the candidate decides it, the changed ones
flagged, and counts. It is what ``cra trace replay`` does offline, for sessions the server
stores, including those an ingest server received from other processes.

Who may: an ``audit`` caller for any stored session; a ``read`` caller for its own sessions
(any other is 404, as everywhere).

Bounds: a replay reads the whole session (it verifies the chain and folds it before deciding
anything), so a session of more than :data:`MAX_REPLAY_EVENTS` events is refused with 413
``PAYLOAD_TOO_LARGE`` (``details.reason``: ``replay_too_large``) before any event is read;
``cra trace replay`` replays it offline. The events are read a page at a time and kept as plain
dicts (one copy). Replays run in worker threads, :data:`REPLAY_CONCURRENCY` at a time (others
wait their turn, within the request timeout). The replay decides on a runtime of its own, in
memory: the server's loaded atlases and its trace are never touched.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import anyio
import anyio.to_thread
import orjson
from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from cra_agents._exceptions import CRAError, TraceUnavailableError
from cra_agents.atlas import Atlas, load_atlas
from cra_agents.replay import replay_session
from cra_agents.runtime import Runtime
from cra_agents.server._errors import PayloadTooLargeError
from cra_agents.server._principal import Principal
from cra_agents.server._routes import Caller, audits, is_session_id, not_found, owned

__all__ = [
    "MAX_REPLAY_EVENTS",
    "REPLAY_CONCURRENCY",
    "ReplayError",
    "ReplayRequest",
    "router",
]

#: The longest session the server replays (events); ``app.state.replay_max_events`` overrides.
MAX_REPLAY_EVENTS = 50_000
#: Replays that may run at once (each holds one session's events and a runtime of its own).
REPLAY_CONCURRENCY = 2
_PAGE = 1000

router = APIRouter()


class ReplayError(CRAError):
    """The stored session cannot be replayed: its chain does not verify, or it is not whole."""

    default_code = "REPLAY_ERROR"
    status = 422
    category = "integrity"


class ReplayRequest(BaseModel):
    """Body of ``POST /v1/traces/{session_id}/replay``."""

    model_config = ConfigDict(extra="forbid")

    #: The candidate: an Atlas 1.0 manifest, as ``POST /v1/atlases`` takes it. It replaces the
    #: loaded atlas of its ``atlas_id`` for this replay (or joins the loaded ones).
    atlas: dict[str, Any] | None = None
    #: The loaded atlases to replay with (default: every loaded atlas).
    atlas_ids: Annotated[list[str] | None, Field(max_length=100)] = None
    #: Replay with declared actions default-denied (default: as the server runs).
    default_deny: bool | None = None
    #: Answer only the decisions that change.
    changed_only: bool = False


def _atlases(runtime: Runtime, body: ReplayRequest) -> tuple[list[Atlas], Atlas | None]:
    """The atlases to replay with, and the candidate among them (400/404 as the atlas routes)."""
    # Parsed and validated exactly as POST /v1/atlases does it; never loaded into the runtime.
    candidate = None if body.atlas is None else load_atlas(body.atlas)
    if body.atlas_ids is None:
        chosen = list(runtime.atlases)
    else:
        chosen = [runtime.atlas(atlas_id) for atlas_id in dict.fromkeys(body.atlas_ids)]
    if candidate is not None:
        chosen = [a for a in chosen if a.atlas_id != candidate.atlas_id] + [candidate]
    return chosen, candidate


def _events(runtime: Runtime, session_id: str, cap: int) -> list[dict[str, Any]]:
    """The session's events as dicts, read a page at a time (413 beyond ``cap``, 404 if none)."""
    store = runtime.store
    last = store.last_sequence(session_id) if is_session_id(session_id) else -1
    if last < 0:
        raise not_found(session_id)
    if last + 1 > cap:
        raise PayloadTooLargeError(
            f"session {session_id} has {last + 1} events; the server replays at most {cap}: "
            f"replay it offline with 'cra trace replay {session_id} --store URL --atlas PATH'",
            details={"reason": "replay_too_large", "event_count": last + 1, "limit": cap},
        )
    records: list[dict[str, Any]] = []
    after = -1
    while True:  # up to the last event seen when the replay began: a live session grows
        page = store.read(session_id, since_sequence=after, limit=min(_PAGE, last - after))
        records.extend(event.model_dump(mode="json") for event in page)
        if not page or page[-1].sequence >= last:
            return records
        after = page[-1].sequence


def _replay(
    runtime: Runtime, principal: Principal, session_id: str, body: ReplayRequest, cap: int
) -> dict[str, Any]:
    atlases, candidate = _atlases(runtime, body)
    if not audits(principal):
        owned(runtime, principal, session_id)
    # The server's own sessions: what it decided is stored. A failed trace still replays.
    with contextlib.suppress(TraceUnavailableError):
        runtime.flush()
    records = _events(runtime, session_id, cap)
    default_deny = runtime.engine.default_deny if body.default_deny is None else body.default_deny
    try:
        report = replay_session(records, atlases, default_deny=default_deny)
    except ValueError as exc:  # the chain does not verify, or is not a whole session
        raise ReplayError(
            f"session {session_id} cannot be replayed: {exc}",
            details={"session_id": session_id, "reason": str(exc)},
        ) from exc
    decisions = [
        {**decision.as_dict(), "changed": not decision.identical}
        for decision in report.decisions
        if not (body.changed_only and decision.identical)
    ]
    changed = len(report.changed)
    return {
        "session_id": session_id,
        "event_count": len(records),
        "atlases": [
            {
                "atlas_id": atlas.atlas_id,
                "version": atlas.version,
                "digest": atlas.digest,
                "candidate": atlas is candidate,
            }
            for atlas in atlases
        ],
        "default_deny": default_deny,
        "identical": changed == 0,
        "counts": {
            "decisions": len(report.decisions),
            "changed": changed,
            "identical": len(report.decisions) - changed,
            "skipped": len(report.skipped),
        },
        "decisions": decisions,
        "skipped": [{"sequence": s, "reason": r} for s, r in report.skipped],
    }


def _limiter(request: Request) -> anyio.CapacityLimiter:
    limiter: anyio.CapacityLimiter | None = getattr(request.app.state, "replay_limiter", None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(REPLAY_CONCURRENCY)
        request.app.state.replay_limiter = limiter
    return limiter


@router.post("/v1/traces/{session_id}/replay")
async def replay_trace(
    request: Request,
    principal: Caller,
    session_id: str,
    body: Annotated[ReplayRequest, Body()],
) -> Response:
    """Re-decide a stored session against a candidate atlas (ReplayReport).

    ``audit`` callers replay any stored session, ``read`` callers their own. 400 for an invalid
    candidate (as ``POST /v1/atlases``), 404 for an unknown session or atlas id, 413 for a
    session longer than the server replays, 422 for a session whose chain does not verify.
    """
    audits(principal)  # 403 before anything is read
    runtime: Runtime = request.app.state.runtime
    cap = int(getattr(request.app.state, "replay_max_events", MAX_REPLAY_EVENTS))
    answer = await anyio.to_thread.run_sync(
        _replay, runtime, principal, session_id, body, cap, limiter=_limiter(request)
    )
    return Response(orjson.dumps(answer), media_type="application/json")
