"""LangChain tools from langchain-mcp-adapters (mcp 1.x), governed by cra-agents-langchain.

Run by ``test_langchain_mcp_adapters.py`` inside a venv where ``cra-agents``,
``cra-agents-langchain`` and ``langchain-mcp-adapters`` are pip-installed (no
``cra-agents-mcp``, which needs mcp 2.x)::

    python adapters_agent.py ATLAS SERVER WORKDIR

``MultiServerMCPClient`` starts ``SERVER`` (a FastMCP server over stdio) and turns its tools
into LangChain tools; they are used (a) wrapped by ``guard_tools`` and invoked directly and
(b) unchanged by a ``create_agent`` agent with ``CRAMiddleware`` and a scripted model. Prints
one JSON object: what each call returned, which tools reached the server, the trace.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool
from langchain_mcp_adapters.client import (  # type: ignore[import-not-found]  # mcp<2 only
    MultiServerMCPClient,
)

import cra_agents as cra
from cra_agents_langchain import CRAMiddleware, guard_tools
from cra_agents_langchain.testing import ScriptedChatModel

OUTCOMES = ("action.executed", "action.failed", "action.denied")


def text_of(content: Any) -> str:
    """A tool's output as text (the adapters return content blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(text_of(block) for block in content)
    if isinstance(content, dict):
        return str(content.get("text", content))
    return str(content)


async def attempt(tool: BaseTool, arguments: dict[str, Any]) -> dict[str, Any]:
    """Invoke ``tool``; what it returned, or what it raised."""
    try:
        return {"output": text_of(await tool.ainvoke(arguments))}
    except Exception as exc:  # noqa: BLE001 - the summary says what was raised
        return {"raised": type(exc).__name__, "message": str(exc)}


def ran(markers: Path) -> list[str]:
    """The tools that reached the server (and cleared for the next part)."""
    found = sorted(path.name.removeprefix("ran-") for path in markers.glob("ran-*"))
    for path in markers.glob("ran-*"):
        path.unlink()
    return found


def trace(runtime: cra.Runtime, session_id: str) -> dict[str, Any]:
    """The session's outcomes (in order), the model's call ids, and whether the chain verifies."""
    events = runtime.trace_events(session_id)
    return {
        "outcomes": [
            [e.event_type, e.payload["action_id"]] for e in events if e.event_type in OUTCOMES
        ],
        "call_ids": sorted(
            str(e.payload["tool_call_id"])
            for e in events
            if e.event_type == "action.requested" and e.payload.get("tool_call_id")
        ),
        "valid": runtime.verify(session_id).valid,
    }


def script() -> ScriptedChatModel:
    """A model that calls the three tools at once, then says it is done."""
    return ScriptedChatModel(
        script=[
            AIMessage(
                "",
                tool_calls=[
                    {"name": "echo", "args": {"text": "agent"}, "id": "c1"},
                    {"name": "delete_all", "args": {}, "id": "c2"},
                    {"name": "undeclared", "args": {}, "id": "c3"},
                ],
            ),
            AIMessage("done"),
        ]
    )


async def run_agent(
    runtime: cra.Runtime, agent: Any, agent_id: str, markers: Path
) -> dict[str, Any]:
    """One agent run in its own session: the tool replies, what ran, the trace."""
    with runtime.session_scope(agent_id, "MCP tools in an agent") as scope:
        state = await agent.ainvoke({"messages": [HumanMessage("go")]})
    return {
        "replies": {
            str(m.tool_call_id): {"status": m.status, "text": text_of(m.content)}
            for m in state["messages"]
            if isinstance(m, ToolMessage)
        },
        "final": text_of(state["messages"][-1].content),
        "ran": ran(markers),
        "trace": trace(runtime, scope.session_id),
    }


async def main(atlas: Path, server: Path, work: Path) -> dict[str, Any]:
    markers = work / "markers"
    markers.mkdir(parents=True, exist_ok=True)
    client = MultiServerMCPClient(
        {
            "notes": {
                "transport": "stdio",
                "command": sys.executable,
                "args": [str(server), str(markers)],
            }
        }
    )
    tools = await client.get_tools()
    summary: dict[str, Any] = {
        "versions": {
            name: importlib.metadata.version(name)
            for name in ("mcp", "langchain-mcp-adapters", "langchain", "cra-agents-langchain")
        },
        "tools": sorted(tool.name for tool in tools),
    }
    by_name = {tool.name: tool for tool in tools}
    runtime = cra.Runtime([atlas], store=f"sqlite://{work / 'traces.db'}")
    try:
        # (a) guard_tools, invoked directly.
        with runtime.session_scope("adapters-guard-tools", "MCP tools under guard_tools") as scope:
            guarded = {tool.name: tool for tool in guard_tools(tools, runtime=runtime)}
            summary["guard_tools"] = {
                "echo": await attempt(guarded["echo"], {"text": "direct"}),
                "delete_all": await attempt(guarded["delete_all"], {}),
                "undeclared": await attempt(guarded["undeclared"], {}),
                "unguarded_echo": await attempt(by_name["echo"], {"text": "plain"}),
            }
        summary["guard_tools"]["ran"] = ran(markers)
        summary["guard_tools"]["trace"] = trace(runtime, scope.session_id)

        # (b) the same tools, unchanged, in an agent with CRAMiddleware.
        agent = create_agent(script(), tools, middleware=[CRAMiddleware(runtime=runtime)])
        summary["agent"] = await run_agent(runtime, agent, "adapters-middleware", markers)

        # (c) an agent given the guard_tools wrappers (no middleware).
        agent = create_agent(script(), guard_tools(tools, runtime=runtime))
        summary["agent_guard_tools"] = await run_agent(runtime, agent, "adapters-guarded", markers)
    finally:
        runtime.close()
    return summary


if __name__ == "__main__":
    atlas, server, work = (Path(arg) for arg in sys.argv[1:4])
    print(json.dumps(asyncio.run(main(atlas, server, work))))
