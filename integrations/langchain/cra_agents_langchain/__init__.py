"""LangChain integration of cra-agents: middleware, guarded tools and a callback handler.

``CRAMiddleware`` enforces (for ``langchain.agents.create_agent``); ``guard_tool`` wraps plain
tools; callbacks only observe. ``cra_agents_langchain.testing.ScriptedChatModel`` runs agents
offline.
"""

from __future__ import annotations

from cra_agents_langchain._callbacks import CRACallbackHandler
from cra_agents_langchain._hitl import ApprovalAnswerError
from cra_agents_langchain._middleware import CRAMiddleware, CRAState, InterruptMode, ToolFailedError
from cra_agents_langchain._tools import GuardedTool, ToolDeniedError, guard_tool, guard_tools

__all__ = [
    "ApprovalAnswerError",
    "CRACallbackHandler",
    "CRAMiddleware",
    "CRAState",
    "GuardedTool",
    "InterruptMode",
    "ToolDeniedError",
    "ToolFailedError",
    "guard_tool",
    "guard_tools",
]
