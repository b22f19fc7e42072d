"""The runtime: sessions, CARP resolution, context selection and the call gate.

One tool call's life lives in one place: :class:`Runtime` ``.call`` / ``.acall`` over the gate
(:mod:`cra_agents.runtime._gate`); observers (:class:`RuntimeObserver`) hear what happened.
"""

from __future__ import annotations

from cra_agents.runtime._approvals import (
    Approval,
    ApprovalDecision,
    ApprovalHandler,
    ApprovalRequest,
    Approvers,
    ConsoleApprover,
    current_user,
)
from cra_agents.runtime._gate import Authorization, Call, Precheck
from cra_agents.runtime._mapping import ToolMap
from cra_agents.runtime._observers import Observer, RuntimeObserver
from cra_agents.runtime._refusal import refusal_text
from cra_agents.runtime._runtime import DEFAULT_TTL_SECONDS, Runtime
from cra_agents.runtime._sessions import (
    ActiveSession,
    OpenScopes,
    SessionInfo,
    SessionScope,
    current_session,
    propagate,
    session_for_call,
)

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "ActiveSession",
    "Approval",
    "ApprovalDecision",
    "ApprovalHandler",
    "ApprovalRequest",
    "Approvers",
    "Authorization",
    "Call",
    "ConsoleApprover",
    "Observer",
    "OpenScopes",
    "Precheck",
    "Runtime",
    "RuntimeObserver",
    "SessionInfo",
    "SessionScope",
    "ToolMap",
    "current_session",
    "current_user",
    "propagate",
    "refusal_text",
    "session_for_call",
]
