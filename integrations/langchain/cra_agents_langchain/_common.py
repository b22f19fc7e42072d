"""What the middleware, the tool wrapper and the callback handler share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cra_agents as cra
from cra_agents import (
    ActionDeniedError,
    ActionNotFoundError,
    CRAError,
    InvalidParametersError,
    Runtime,
)

__all__ = ["REFUSALS", "denial_text", "runtime_or_default"]

#: What the gate raises for a call it refused and recorded: the model reads why.
REFUSALS = (ActionDeniedError, ActionNotFoundError, InvalidParametersError)


def runtime_or_default(runtime: Runtime | None) -> Runtime:
    """``runtime``, or the one ``cra.configure`` set up."""
    return runtime if runtime is not None else cra.get_runtime()


def denial_text(error: CRAError) -> str:
    """What the model reads when a call is refused: action, policy and reason."""
    details: Mapping[str, Any] = error.details or {}
    action = details.get("action_id", "this action")
    policy = details.get("policy_id", "carp-runtime")
    reason = details.get("reason") or error.message
    if error.code == "INVALID_PARAMETERS":
        return f"Refused: the arguments for {action} are invalid ({error.message}). Fix them."
    if error.code == "ACTION_NOT_FOUND":
        return (
            f"Denied: {details.get('tool', action)} is not an action any loaded atlas declares "
            f"(policy {policy}: {error.message}). Do not retry it; choose another way or ask "
            "the user."
        )
    return (
        f"Denied: {action} is not permitted (policy {policy}: {reason}). "
        f"Do not retry it; choose another way or ask the user."
    )
