"""TRACE/1.0 events (PROTOCOL_NOTES §2.4) and the hash rule's constants."""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

from pydantic import Field

from cra_agents.protocol._common import Timestamp, Uuid, WireModel

__all__ = ["EVENT_TYPES", "GENESIS_HASH", "TRACE_VERSION", "EventType", "TraceEvent"]

TRACE_VERSION: Final = "1.0"
#: ``previous_event_hash`` of the first event of every chain.
GENESIS_HASH: Final = "0" * 64

EventType = Literal[
    "session.started",
    "session.ended",
    "carp.request.received",
    "carp.resolution.completed",
    "carp.resolution.cached",
    "action.requested",
    "action.approved",
    "action.denied",
    "action.executed",
    "action.failed",
    "policy.evaluated",
    "policy.violated",
    "context.injected",
    "context.redacted",
    "error.occurred",
]
EVENT_TYPES: Final[frozenset[str]] = frozenset(get_args(EventType))

_HASH = r"^[a-f0-9]{64}$"


class TraceEvent(WireModel):
    """One event of a session's hash chain.

    ``event_hash`` is SHA-256 over the other fields (PROTOCOL_NOTES §3.1). Events read from
    storage may carry event types this library does not emit (e.g. the Rust core's
    ``checkpoint.*``), so ``event_type`` is any dotted name here; the upstream schema's enum is
    checked by strict validation.
    """

    trace_version: Literal["1.0"] = TRACE_VERSION
    event_id: Uuid
    trace_id: Uuid
    span_id: Uuid
    parent_span_id: Uuid | None = None
    session_id: Uuid
    sequence: int = Field(ge=0)
    timestamp: Timestamp
    event_type: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
    payload: dict[str, Any]
    event_hash: str = Field(pattern=_HASH)
    previous_event_hash: str = Field(pattern=_HASH)
