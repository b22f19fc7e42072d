"""CARP/1.0 messages: request, resolution and execution (PROTOCOL_NOTES §2.1-2.3)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from cra_agents.protocol._common import (
    ActionId,
    AtlasId,
    RiskTier,
    Timestamp,
    Uuid,
    WireModel,
)

__all__ = [
    "AllowedAction",
    "CARPRequest",
    "CARPResolution",
    "Constraint",
    "ContextBlock",
    "Decision",
    "DecisionType",
    "DeniedAction",
    "ExecuteError",
    "ExecuteResponse",
    "Execution",
    "RateLimit",
    "Requester",
    "Task",
]

DecisionType = Literal["allow", "deny", "partial", "requires_approval"]


def _absent(value: object) -> bool:
    return value is None


class Requester(WireModel):
    """Who is asking: the agent and its session."""

    agent_id: str = Field(min_length=1, max_length=255)
    session_id: Uuid
    parent_session_id: Uuid | None = Field(default=None, exclude_if=_absent)


class Task(WireModel):
    """What the agent is trying to do."""

    goal: str = Field(min_length=1, max_length=10_000)
    risk_tier: RiskTier = "low"
    context_hints: list[str] = Field(default_factory=list)
    required_capabilities: list[str] = Field(default_factory=list)


class Execution(WireModel):
    """The action an execute request wants to run, under which resolution."""

    resolution_id: Uuid
    action_id: ActionId
    parameters: dict[str, Any]
    idempotency_key: str | None = Field(default=None, max_length=255, exclude_if=_absent)


class CARPRequest(WireModel):
    """A CARP/1.0 request (``resolve``, ``execute`` or ``validate``)."""

    # The schema states the rule the model validator enforces: execute needs execution.
    model_config = WireModel.model_config | {
        "json_schema_extra": {
            "allOf": [
                {
                    "if": {"properties": {"operation": {"const": "execute"}}},
                    "then": {"required": ["execution"]},
                }
            ]
        }
    }

    carp_version: Literal["1.0"] = "1.0"
    request_id: Uuid
    timestamp: Timestamp
    operation: Literal["resolve", "execute", "validate"]
    requester: Requester
    task: Task
    execution: Execution | None = Field(default=None, exclude_if=_absent)
    atlas_ids: list[AtlasId] | None = Field(default=None, exclude_if=_absent)
    context: dict[str, Any] | None = Field(default=None, exclude_if=_absent)

    @model_validator(mode="after")
    def _execute_needs_execution(self) -> CARPRequest:
        if self.operation == "execute" and self.execution is None:
            raise ValueError("operation 'execute' requires an 'execution' object")
        return self


class Decision(WireModel):
    """The overall outcome of a resolution."""

    type: DecisionType
    reason: str | None = None
    approval_id: str | None = None
    expires_at: Timestamp | None = None


class ContextBlock(WireModel):
    """A piece of context the agent should see (schema form; the name lives in metadata)."""

    block_id: str
    source: str
    content_type: Literal["text/markdown", "text/plain", "application/json"]
    content: str
    priority: int = Field(ge=0, le=1000)
    token_estimate: int | None = Field(default=None, ge=0, exclude_if=_absent)
    metadata: dict[str, Any] | None = Field(default=None, exclude_if=_absent)

    @property
    def name(self) -> str:
        """The block's human-readable name (``metadata.name``), else its id."""
        if self.metadata and isinstance(self.metadata.get("name"), str):
            return str(self.metadata["name"])
        return self.block_id


class RateLimit(WireModel):
    """At most ``max_calls`` executions per ``window_seconds``."""

    max_calls: int = Field(ge=1)
    window_seconds: int = Field(ge=1)


class AllowedAction(WireModel):
    """An action the agent may execute under this resolution."""

    action_id: ActionId
    name: str
    description: str
    parameters_schema: dict[str, Any] | None = Field(default=None, exclude_if=_absent)
    returns_schema: dict[str, Any] | None = Field(default=None, exclude_if=_absent)
    risk_tier: RiskTier = "low"
    requires_confirmation: bool = False
    idempotent: bool = False
    rate_limit: RateLimit | None = Field(default=None, exclude_if=_absent)


class DeniedAction(WireModel):
    """An action the agent may not execute, and why."""

    action_id: str
    reason: str
    policy_id: str | None = Field(default=None, exclude_if=_absent)


class Constraint(WireModel):
    """A condition attached to the allowed actions (rate limit, approval...)."""

    constraint_id: str
    type: Literal["rate_limit", "budget", "time_window", "require_approval", "scope"]
    parameters: dict[str, Any] | None = Field(default=None, exclude_if=_absent)


class CARPResolution(WireModel):
    """The runtime's answer to a resolve request."""

    carp_version: Literal["1.0"] = "1.0"
    resolution_id: Uuid
    request_id: Uuid
    timestamp: Timestamp
    decision: Decision
    context_blocks: list[ContextBlock]
    allowed_actions: list[AllowedAction]
    denied_actions: list[DeniedAction]
    constraints: list[Constraint]
    ttl_seconds: int = Field(ge=0, le=86_400)
    trace_id: Uuid

    def allowed(self, action_id: str) -> AllowedAction | None:
        """The allowed entry for ``action_id``, or ``None`` if it is not allowed."""
        for action in self.allowed_actions:
            if action.action_id == action_id:
                return action
        return None

    def denied(self, action_id: str) -> DeniedAction | None:
        """The denied entry for ``action_id``, or ``None`` if it is not denied."""
        for action in self.denied_actions:
            if action.action_id == action_id:
                return action
        return None


class ExecuteError(WireModel):
    """Why an execution did not succeed."""

    code: str
    message: str
    details: dict[str, Any] | None = Field(default=None, exclude_if=_absent)


class ExecuteResponse(WireModel):
    """The runtime's answer to an execute request."""

    carp_version: Literal["1.0"] = "1.0"
    execution_id: Uuid
    request_id: Uuid
    resolution_id: Uuid
    timestamp: Timestamp
    status: Literal["success", "error", "denied", "pending_approval"]
    result: dict[str, Any] | None = Field(default=None, exclude_if=_absent)
    error: ExecuteError | None = Field(default=None, exclude_if=_absent)
    trace_id: Uuid | None = Field(default=None, exclude_if=_absent)
