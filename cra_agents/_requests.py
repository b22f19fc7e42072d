"""Helpers that build well-formed CARP requests, so callers need not write the envelope."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cra_agents._clock import format_timestamp
from cra_agents._ids import new_id
from cra_agents.protocol import CARPRequest, Execution, Requester, RiskTier, Task

if TYPE_CHECKING:
    from cra_agents.runtime import SessionInfo

__all__ = ["execute_request", "resolve_request"]


def _requester(session: SessionInfo) -> Requester:
    return Requester(
        agent_id=session.agent_id,
        session_id=session.session_id,
        parent_session_id=session.parent_session_id,
    )


def resolve_request(
    session: SessionInfo,
    goal: str | None = None,
    *,
    risk_tier: RiskTier = "low",
    context_hints: Sequence[str] = (),
    required_capabilities: Sequence[str] = (),
    atlas_ids: Sequence[str] | None = None,
    context: Mapping[str, Any] | None = None,
) -> CARPRequest:
    """A ``resolve`` request for ``session`` (goal defaults to the session's goal)."""
    return CARPRequest(
        request_id=new_id(),
        timestamp=format_timestamp(time.time_ns()),
        operation="resolve",
        requester=_requester(session),
        task=Task(
            goal=goal or session.goal,
            risk_tier=risk_tier,
            context_hints=list(context_hints),
            required_capabilities=list(required_capabilities),
        ),
        atlas_ids=list(atlas_ids) if atlas_ids is not None else None,
        context=dict(context) if context is not None else None,
    )


def execute_request(
    session: SessionInfo,
    resolution_id: str,
    action_id: str,
    parameters: Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
    risk_tier: RiskTier = "low",
    context: Mapping[str, Any] | None = None,
) -> CARPRequest:
    """An ``execute`` request for ``action_id`` under ``resolution_id``."""
    return CARPRequest(
        request_id=new_id(),
        timestamp=format_timestamp(time.time_ns()),
        operation="execute",
        requester=_requester(session),
        task=Task(goal=session.goal, risk_tier=risk_tier),
        execution=Execution(
            resolution_id=resolution_id,
            action_id=action_id,
            parameters=dict(parameters),
            idempotency_key=idempotency_key,
        ),
        context=dict(context) if context is not None else None,
    )
