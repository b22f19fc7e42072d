"""guard_tool keeps a refusal readable whatever ``handle_tool_error`` the wrapped tool has.

langchain-mcp-adapters builds its tools with a handler that re-raises every ``ToolException``
it did not raise itself; a refusal must still reach the model as the tool's output, and the
wrapped tool's own errors still go to its own handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import StructuredTool, ToolException

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents_langchain import guard_tools
from cra_agents_langchain.testing import ScriptedChatModel

RAN: list[str] = []


class OwnError(ToolException):
    """An error the wrapped tool's own handler knows."""


def reraise_unknown(error: ToolException) -> str:
    """The shape of langchain-mcp-adapters' handler: its own errors answered, others raised."""
    if isinstance(error, OwnError):
        return f"handled: {error}"
    raise error


@pytest.fixture(autouse=True)
def runtime() -> Iterator[cra.Runtime]:
    RAN.clear()
    yield cra.configure(atlases=[atlas_path("github-ops")], store="memory://")
    cra.shutdown()


def tools(handler: bool | str | Callable[[ToolException], str]) -> list[StructuredTool]:
    def comment(repo: str, issue_number: int, body: str) -> str:
        """Comment on an issue."""
        RAN.append("comment")
        raise OwnError("the issue is locked")

    def delete(repo: str, confirm_name: str) -> str:
        """Delete a repository."""
        RAN.append("delete")
        return "deleted"

    return [
        StructuredTool.from_function(
            comment, name="github.issue.comment", handle_tool_error=handler
        ),
        StructuredTool.from_function(delete, name="github.repo.delete", handle_tool_error=handler),
    ]


@pytest.mark.parametrize(
    ("handler", "own"),
    [
        (reraise_unknown, "handled: the issue is locked"),
        ("the tool failed", "the tool failed"),
        (True, "the issue is locked"),
    ],
    ids=["reraising-callable", "string", "true"],
)
def test_a_refusal_is_output_and_own_errors_go_to_the_own_handler(
    handler: bool | str | Callable[[ToolException], str], own: str
) -> None:
    comment, delete = guard_tools(tools(handler))
    with cra.session(agent_id="bot", goal="handlers"):
        denied = delete.invoke({"repo": "acme/app", "confirm_name": "acme/app"})
        failed = comment.invoke({"repo": "acme/app", "issue_number": 1, "body": "hi"})
    assert str(denied).startswith("Denied: github.repo.delete is not permitted")
    assert failed == own
    assert RAN == ["comment"]  # the refused tool never ran


def test_an_agent_with_such_tools_reads_the_refusal_and_goes_on() -> None:
    """Before: the refusal escaped the tool, ended the run, and cancelled the parallel call."""
    model = ScriptedChatModel(
        script=[
            AIMessage(
                "",
                tool_calls=[
                    {
                        "name": "github.issue.comment",
                        "args": {"repo": "acme/app", "issue_number": 1, "body": "hi"},
                        "id": "c1",
                    },
                    {
                        "name": "github.repo.delete",
                        "args": {"repo": "acme/app", "confirm_name": "acme/app"},
                        "id": "c2",
                    },
                ],
            ),
            AIMessage("done"),
        ]
    )
    agent = create_agent(model, guard_tools(tools(reraise_unknown)))

    async def run() -> dict[str, Any]:
        with cra.session(agent_id="bot", goal="agent with handlers"):
            state: dict[str, Any] = await agent.ainvoke({"messages": [HumanMessage("go")]})
            return state

    state = asyncio.run(run())
    replies = {m.tool_call_id: m for m in state["messages"] if isinstance(m, ToolMessage)}
    assert replies["c1"].content == "handled: the issue is locked"
    assert replies["c2"].status == "error"
    assert str(replies["c2"].content).startswith("Denied: github.repo.delete")
    assert state["messages"][-1].content == "done"
    assert RAN == ["comment"]
