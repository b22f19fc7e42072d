"""What the middleware, the tool wrapper and the callback handler share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cra_agents as cra
from cra_agents import CRAError, Runtime

__all__ = ["action_for", "denial_text", "runtime_or_default"]


def runtime_or_default(runtime: Runtime | None) -> Runtime:
    """``runtime``, or the one ``cra.configure`` set up."""
    return runtime if runtime is not None else cra.get_runtime()


def action_for(runtime: Runtime, tool_name: str, mapping: Mapping[str, str] | None) -> str:
    """The atlas action a tool maps to.

    An explicit ``mapping`` entry wins; then an action whose id, ``name`` or ``executor``
    equals the tool's name. An unmapped tool maps to its own name, which no atlas declares,
    so the runtime denies it (``undeclared-action``) and records that.
    """
    if mapping and tool_name in mapping:
        return mapping[tool_name]
    matches = [
        action.action_id
        for atlas in runtime.atlases
        for action in atlas.actions
        if tool_name in (action.action_id, action.name, action.executor)
    ]
    return matches[0] if len(matches) == 1 else tool_name


def denial_text(error: CRAError) -> str:
    """What the model reads when a call is refused: action, policy and reason."""
    details: Mapping[str, Any] = error.details or {}
    action = details.get("action_id", "this action")
    policy = details.get("policy_id", "carp-runtime")
    reason = details.get("reason") or error.message
    if error.code == "INVALID_PARAMETERS":
        return f"Refused: the arguments for {action} are invalid ({error.message}). Fix them."
    return (
        f"Denied: {action} is not permitted (policy {policy}: {reason}). "
        f"Do not retry it; choose another way or ask the user."
    )
