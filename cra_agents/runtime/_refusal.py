"""What a model reads when one of its tool calls is refused: one text for every adapter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cra_agents._exceptions import ActionDeniedError, CRAError

__all__ = ["refusal_text"]


def refusal_text(error: CRAError) -> str:
    """The text an adapter hands the model instead of a refused call's result.

    Names the action, the policy and the reason, and says whether to fix the arguments
    (``INVALID_PARAMETERS``) or not to retry (a denial, an undeclared tool). The LangChain
    middleware and tools and the MCP proxy and ``guard_session`` all answer with it.
    """
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
    if isinstance(error, ActionDeniedError):
        return (
            f"Denied: {action} is not permitted (policy {policy}: {reason}). "
            "Do not retry it; choose another way or ask the user."
        )
    return f"Refused by cra-agents ({error.code}): {error.message}"
