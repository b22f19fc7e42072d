"""``guard_session``: every tool call an agent makes through an ``mcp.ClientSession``, decided."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import mcp.types as types
from mcp.client.session import ClientSession

from cra_agents import CRAError, Runtime
from cra_agents.guard import call_session
from cra_agents.runtime import refusal_text
from cra_agents_mcp._common import (
    REFUSALS,
    MCPToolError,
    error_result,
    recordable,
    result_text,
)

__all__ = ["GuardedSession", "ToolDeniedError", "guard_session"]


class ToolDeniedError(CRAError, PermissionError):
    """cra-agents refused an MCP tool call (``denied="raise"``): the tool did not run.

    ``error`` is the refusal the gate recorded; the message is what a model would read.
    """

    default_code = "ACTION_DENIED"

    def __init__(self, error: CRAError) -> None:
        super().__init__(refusal_text(error), code=error.code, details=dict(error.details or {}))
        self.error = error


class GuardedSession:
    """An ``mcp.ClientSession`` whose ``call_tool`` is decided and recorded first.

    Everything else is the wrapped session's (attribute access passes through), so it can
    stand wherever the session is used: ``langchain-mcp-adapters``' ``load_mcp_tools``, an
    agent loop of your own. Build it with :func:`guard_session`.
    """

    def __init__(
        self,
        session: ClientSession,
        *,
        runtime: Runtime | None = None,
        actions: Mapping[str, str] | None = None,
        denied: Literal["result", "raise"] = "result",
    ) -> None:
        self.session = session
        self._runtime = runtime
        self._actions = dict(actions) if actions else None
        self._denied = denied

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        read_timeout_seconds: float | None = None,
        progress_callback: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Decide the call (CARP), record it (TRACE), then call the tool; record its outcome.

        A refused call does not reach the server: it returns an error ``CallToolResult``
        naming the policy and reason (or raises :class:`ToolDeniedError` with
        ``denied="raise"``). A result with ``is_error``, or an exception, is recorded as failed.
        """
        runtime = self._runtime if self._runtime is not None else call_session()[0]
        try:
            call = runtime.call(name, dict(arguments or {}), actions=self._actions)
            await runtime.gate_async(call)  # the runtime's approval handler answers
        except REFUSALS as error:
            if self._denied == "raise":
                raise ToolDeniedError(error) from error
            return error_result(refusal_text(error))
        async with call:
            result = await self.session.call_tool(
                name,
                dict(call.arguments),
                read_timeout_seconds,
                progress_callback,
                **kwargs,
            )
            if isinstance(result, types.CallToolResult):
                if result.is_error:
                    call.fail(MCPToolError(result_text(result)))
                else:
                    call.result = recordable(result)
            else:
                call.result = repr(result)
            return result


def guard_session(
    session: ClientSession,
    *,
    runtime: Runtime | None = None,
    actions: Mapping[str, str] | None = None,
    denied: Literal["result", "raise"] = "result",
) -> GuardedSession:
    """Wrap ``session`` so every ``call_tool`` goes through cra-agents first.

    The tool name maps to an action by the runtime's one rule (``actions``, else the action
    whose id, name or executor is the tool's name; undeclared tools are refused); the call
    belongs to the active ``cra.session`` (the runtime's one session rule); approvals go to
    the runtime's approval handler.

    Args:
        session: An initialized ``mcp.ClientSession``.
        runtime: The runtime (default: the one ``cra.configure`` set up).
        actions: Tool name → action id, for tools the one rule does not map.
        denied: ``"result"`` (default): a refusal is an error result the model reads;
            ``"raise"``: :class:`ToolDeniedError`.
    """
    return GuardedSession(session, runtime=runtime, actions=actions, denied=denied)
