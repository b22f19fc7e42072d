"""guard_session: the tool calls an agent makes through mcp.ClientSession, decided first."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import mcp.types as types
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_support import ATLAS, NOTES, client, texts

from cra_agents import ApprovalDecision, Runtime
from cra_agents_langchain import CRAMiddleware, guard_tools
from cra_agents_langchain.testing import ScriptedChatModel
from cra_agents_mcp import ToolDeniedError, guard_session


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime([ATLAS], store="memory://", approval_timeout=10)
    yield rt
    rt.close()


def kinds(runtime: Runtime, session_id: str) -> list[str]:
    wanted = ("action.executed", "action.failed", "action.denied")
    return [e.event_type for e in runtime.trace_events(session_id) if e.event_type in wanted]


async def with_notes(body: Any) -> Any:
    params = StdioServerParameters(command=sys.executable, args=[str(NOTES)])
    with anyio.fail_after(60), open(os.devnull, "w") as errlog:  # noqa: ASYNC230
        async with stdio_client(params, errlog=errlog) as streams, client(*streams) as session:
            return await body(session)


class TestGuardSession:
    def test_calls_are_decided_then_made(self, runtime: Runtime) -> None:
        """Allowed runs; denied and undeclared never reach the server; is_error is failed."""
        runtime.approval_handler = lambda request: ApprovalDecision(True, "ops")

        async def body(session: ClientSession) -> list[types.CallToolResult]:
            guarded = guard_session(session, runtime=runtime)
            assert guarded.server_info is not None  # everything else is the session's
            return [
                await guarded.call_tool("echo", {"text": "hi"}),
                await guarded.call_tool("delete_all", {}),
                await guarded.call_tool("undeclared"),
                await guarded.call_tool("write_note", {"name": "n", "text": "t"}),
                await guarded.call_tool("fails", {}),
            ]

        with runtime.session_scope("agent-1", "guard MCP calls") as scope:
            echo, delete, undeclared, write, fails = anyio.run(with_notes, body)
        assert texts(echo) == "echo: hi"
        assert delete.is_error and "deny-delete" in texts(delete)
        assert undeclared.is_error and "not an action" in texts(undeclared)
        assert texts(write) == "wrote n"
        assert fails.is_error
        assert kinds(runtime, scope.session_id) == [
            "action.executed",
            "action.denied",
            "action.denied",
            "action.executed",
            "action.failed",
        ]

    def test_denied_raise(self, runtime: Runtime) -> None:
        """denied="raise": ToolDeniedError with what the model would read."""

        async def body(session: ClientSession) -> None:
            guarded = guard_session(session, runtime=runtime, denied="raise")
            with pytest.raises(ToolDeniedError) as caught:
                await guarded.call_tool("delete_all", {})
            assert "deny-delete" in str(caught.value)
            assert caught.value.error.code == "ACTION_DENIED"

        with runtime.session_scope("agent-1", "guard MCP calls"):
            anyio.run(with_notes, body)


def mcp_tool(session: Any, name: str, description: str) -> BaseTool:
    """A LangChain tool over an MCP session, the way langchain-mcp-adapters builds one."""

    async def call(**arguments: Any) -> str:
        result = await session.call_tool(name, arguments)
        return texts(result)

    return StructuredTool(
        name=name,
        description=description,
        args_schema={"type": "object", "properties": {"text": {"type": "string"}}},
        coroutine=call,
    )


class TestLangChain:
    def test_mcp_tools_under_guard_tools_and_middleware(self, runtime: Runtime) -> None:
        """LangChain tools calling a ClientSession: guard_tools and CRAMiddleware decide them."""

        async def body(session: ClientSession) -> tuple[Any, Any]:
            tools = [mcp_tool(session, "echo", "Say it back"), mcp_tool(session, "delete_all", "")]
            guarded = guard_tools(tools, runtime=runtime)
            direct = await guarded[0].ainvoke({"text": "guarded"})
            model = ScriptedChatModel(
                script=[
                    AIMessage(
                        "",
                        tool_calls=[
                            {"name": "echo", "args": {"text": "agent"}, "id": "c1"},
                            {"name": "delete_all", "args": {}, "id": "c2"},
                        ],
                    ),
                    AIMessage("done"),
                ]
            )
            agent = create_agent(model, tools, middleware=[CRAMiddleware(runtime=runtime)])
            state = await agent.ainvoke({"messages": [HumanMessage("go")]})
            return direct, state

        with runtime.session_scope("agent-lc", "LangChain over MCP") as scope:
            direct, state = anyio.run(with_notes, body)
        assert direct == "echo: guarded"
        replies = {m.tool_call_id: m for m in state["messages"] if isinstance(m, ToolMessage)}
        assert replies["c1"].content == "echo: agent"
        assert replies["c2"].status == "error" and "deny-delete" in str(replies["c2"].content)
        assert "action.denied" in kinds(runtime, scope.session_id)
