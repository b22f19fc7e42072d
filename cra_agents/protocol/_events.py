"""TRACE event type names and the payloads of the runtime's own events: the one place both live.

Every module that writes or reads an event of the runtime names its type through the constants
here, and every payload the runtime writes is built by one function here, so a field is spelled
once. Readers (replay, report, the OTLP export, the CLI, notebooks) use the same constants.

The payload shapes follow the upstream golden trace where it has one (PROTOCOL_NOTES §2.4) and
add only keys that are not at their default, so the golden payloads stay exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = [
    "ACTION_APPROVED",
    "ACTION_DENIED",
    "ACTION_EVENTS",
    "ACTION_EXECUTED",
    "ACTION_FAILED",
    "ACTION_REQUESTED",
    "APPROVAL_REQUESTED",
    "CONTEXT_INJECTED",
    "CONTEXT_REDACTED",
    "DECISION_EVENTS",
    "ERROR_OCCURRED",
    "OUTCOME_EVENTS",
    "POLICY_EVALUATED",
    "POLICY_VIOLATED",
    "REQUEST_RECEIVED",
    "RESERVED_PREFIXES",
    "RESOLUTION_CACHED",
    "RESOLUTION_COMPLETED",
    "SESSION_ENDED",
    "SESSION_STARTED",
    "action_approved",
    "action_denied",
    "action_executed",
    "action_failed",
    "action_requested",
    "approval_requested",
    "context_injected",
    "policy_evaluated",
    "policy_violated",
    "request_received",
    "resolution_completed",
    "session_ended",
    "session_started",
]

SESSION_STARTED: Final = "session.started"
SESSION_ENDED: Final = "session.ended"
REQUEST_RECEIVED: Final = "carp.request.received"
RESOLUTION_COMPLETED: Final = "carp.resolution.completed"
RESOLUTION_CACHED: Final = "carp.resolution.cached"
ACTION_REQUESTED: Final = "action.requested"
ACTION_APPROVED: Final = "action.approved"
ACTION_DENIED: Final = "action.denied"
ACTION_EXECUTED: Final = "action.executed"
ACTION_FAILED: Final = "action.failed"
POLICY_EVALUATED: Final = "policy.evaluated"
POLICY_VIOLATED: Final = "policy.violated"
CONTEXT_INJECTED: Final = "context.injected"
CONTEXT_REDACTED: Final = "context.redacted"
ERROR_OCCURRED: Final = "error.occurred"
#: Our extension (not in the upstream enum): a person was asked about a call that waits for
#: the answer outside the call (a LangGraph interrupt). The decision follows, later, as the
#: call's ``action.approved`` / ``action.denied`` with the approver; the time between the two
#: is the time the person took.
APPROVAL_REQUESTED: Final = "approval.requested"

#: The events that decide a call (the span of a call links the one that decided it).
DECISION_EVENTS: Final = frozenset({ACTION_APPROVED, ACTION_DENIED})
#: The events that end a call that ran.
OUTCOME_EVENTS: Final = frozenset({ACTION_EXECUTED, ACTION_FAILED})
#: Every event of one call's life.
ACTION_EVENTS: Final = frozenset({ACTION_REQUESTED, *DECISION_EVENTS, *OUTCOME_EVENTS})
#: Namespaces only the runtime writes: extension events (``record_event``) may not use them.
RESERVED_PREFIXES: Final = (
    "session.",
    "carp.",
    "action.",
    "policy.",
    "context.",
    "error.",
    "checkpoint.",
    "approval.",
)


def session_started(
    agent_id: str,
    goal: str,
    *,
    parent_session_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``session.started``: golden ``{agent_id, goal}``, plus parent and metadata when given."""
    payload: dict[str, Any] = {"agent_id": agent_id, "goal": goal}
    if parent_session_id is not None:
        payload["parent_session_id"] = parent_session_id
    if metadata:
        payload["metadata"] = dict(metadata)
    return payload


def session_ended(
    reason: str,
    duration_ms: int,
    resolution_count: int,
    action_count: int,
    error: str | None = None,
) -> dict[str, Any]:
    """``session.ended``."""
    payload: dict[str, Any] = {
        "reason": reason,
        "duration_ms": duration_ms,
        "resolution_count": resolution_count,
        "action_count": action_count,
    }
    if error is not None:
        payload["error"] = error
    return payload


def request_received(
    request_id: str,
    operation: str,
    goal: str,
    atlas_ids: Sequence[str],
    *,
    risk_tier: str = "low",
    context_hints: Sequence[str] = (),
    required_capabilities: Sequence[str] = (),
    context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``carp.request.received``: the golden fields, plus what else decided the outcome.

    Extra keys appear only when not at their default, so the upstream golden payload is
    unchanged; with them a trace can be replayed against another atlas.
    """
    payload: dict[str, Any] = {
        "request_id": request_id,
        "operation": operation,
        "goal": goal,
        "atlas_ids": list(atlas_ids),
    }
    if risk_tier != "low":
        payload["risk_tier"] = risk_tier
    if context_hints:
        payload["context_hints"] = list(context_hints)
    if required_capabilities:
        payload["required_capabilities"] = list(required_capabilities)
    if context:
        payload["context"] = context
    return payload


def policy_evaluated(
    policy_id: str, result: str, action_id: str, *, shadow: bool = False
) -> dict[str, Any]:
    """``policy.evaluated``: golden ``{policy_id, result, action_id}``."""
    payload: dict[str, Any] = {"policy_id": policy_id, "result": result, "action_id": action_id}
    if shadow:
        payload["shadow"] = True
    return payload


def resolution_completed(
    resolution_id: str,
    request_id: str,
    decision_type: str,
    allowed_count: int,
    denied_count: int,
    context_block_count: int,
    ttl_seconds: int,
) -> dict[str, Any]:
    """``carp.resolution.completed`` (golden shape)."""
    return {
        "resolution_id": resolution_id,
        "request_id": request_id,
        "decision_type": decision_type,
        "allowed_count": allowed_count,
        "denied_count": denied_count,
        "context_block_count": context_block_count,
        "ttl_seconds": ttl_seconds,
    }


def context_injected(
    block_id: str, source: str, content_type: str, priority: int, token_count: int
) -> dict[str, Any]:
    """``context.injected``: the union of the spec's and the Rust core's keys (§7 #18)."""
    return {
        "block_id": block_id,
        "context_id": block_id,
        "source": source,
        "source_atlas": source,
        "content_type": content_type,
        "priority": priority,
        "token_count": token_count,
    }


def action_requested(
    action_id: str,
    execution_id: str,
    parameters_hash: str,
    *,
    resolution_id: str | None = None,
    tool_call_id: str | None = None,
    risk_tier: str | None = None,
    shadow: bool = False,
) -> dict[str, Any]:
    """``action.requested``: one call asked to run (``parameters_hash`` empty if unrecordable).

    ``risk_tier`` is recorded only when the requester stated one above ``low`` (so replay
    decides alike). The tool's own name is not recorded (live spans get it from the call).
    """
    payload: dict[str, Any] = {"action_id": action_id}
    if resolution_id is not None:
        payload["resolution_id"] = resolution_id
    payload["execution_id"] = execution_id
    payload["parameters_hash"] = parameters_hash
    if tool_call_id is not None:
        payload["tool_call_id"] = tool_call_id
    if risk_tier is not None and risk_tier != "low":
        payload["risk_tier"] = risk_tier
    if shadow:
        payload["shadow"] = True
    return payload


def approval_requested(
    action_id: str,
    parameters_hash: str,
    policy_id: str,
    reason: str,
    risk_tier: str,
    *,
    tool_call_id: str | None = None,
) -> dict[str, Any]:
    """``approval.requested``: a person is asked about a call of ``action_id`` (by digest)."""
    payload: dict[str, Any] = {
        "action_id": action_id,
        "parameters_hash": parameters_hash,
        "policy_id": policy_id,
        "reason": reason,
        "risk_tier": risk_tier,
    }
    if tool_call_id is not None:
        payload["tool_call_id"] = tool_call_id
    return payload


def action_approved(
    action_id: str,
    execution_id: str,
    policy_id: str,
    *,
    resolution_id: str | None = None,
    approver: str | None = None,
    approval_reason: str | None = None,
    original_parameters_hash: str | None = None,
    shadow: bool = False,
) -> dict[str, Any]:
    """``action.approved``: the call may run (``approver`` when a person said so).

    ``original_parameters_hash``: the person edited the call; the digest of the arguments
    as requested before the edit (``action.requested`` records the edited ones).
    """
    payload: dict[str, Any] = {"action_id": action_id}
    if resolution_id is not None:
        payload["resolution_id"] = resolution_id
    payload["execution_id"] = execution_id
    payload["policy_id"] = policy_id
    if approver is not None:
        payload["approver"] = approver
        if approval_reason:
            payload["approval_reason"] = approval_reason
        if original_parameters_hash is not None:
            payload["original_parameters_hash"] = original_parameters_hash
    if shadow:
        payload["shadow"] = True
    return payload


def action_denied(
    action_id: str,
    execution_id: str | None,
    reason: str,
    policy_id: str,
    *,
    approver: str | None = None,
    approval_reason: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """``action.denied``: the call does not run.

    ``approval_reason``: what the person who refused it said (told to the model too).
    """
    payload: dict[str, Any] = {"action_id": action_id, "reason": reason, "policy_id": policy_id}
    if execution_id is not None:
        payload["execution_id"] = execution_id
    if approver is not None:
        payload["approver"] = approver
        if approval_reason:
            payload["approval_reason"] = approval_reason
    if error is not None:
        payload["error"] = error
    return payload


def policy_violated(
    policy_id: str, action_id: str, reason: str, would_be: str, *, shadow: bool = True
) -> dict[str, Any]:
    """``policy.violated``: what shadow mode let through (it would have been ``would_be``)."""
    return {
        "policy_id": policy_id,
        "violation_type": "denied_action",
        "action_id": action_id,
        "details": {"reason": reason, "shadow": shadow, "would_be": would_be},
    }


def action_executed(
    action_id: str, execution_id: str, duration_ms: int, result_hash: str, *, shadow: bool = False
) -> dict[str, Any]:
    """``action.executed``: the tool returned (its result as a digest)."""
    payload: dict[str, Any] = {
        "action_id": action_id,
        "execution_id": execution_id,
        "duration_ms": duration_ms,
        "result_hash": result_hash,
    }
    if shadow:
        payload["shadow"] = True
    return payload


def action_failed(
    action_id: str,
    execution_id: str,
    duration_ms: int,
    error_code: str,
    error_message: str,
    *,
    shadow: bool = False,
) -> dict[str, Any]:
    """``action.failed``: the tool raised (its exception's type and message, cut to 2,000)."""
    payload: dict[str, Any] = {
        "action_id": action_id,
        "execution_id": execution_id,
        "duration_ms": duration_ms,
        "error_code": error_code,
        "error_message": error_message[:2000],
    }
    if shadow:
        payload["shadow"] = True
    return payload
