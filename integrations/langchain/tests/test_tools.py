"""guard_tool / guard_tools: plain LangChain tools gated by cra-agents."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import (
    InjectedToolArg,
    InjectedToolCallId,
    StructuredTool,
    ToolException,
    tool,
)
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import InjectedState, ToolNode
from langgraph.prebuilt.tool_node import ToolRuntime

import cra_agents as cra
import cra_agents_langchain
from cra_agents.examples import atlas_path
from cra_agents_langchain import GuardedTool, ToolDeniedError, guard_tool, guard_tools
from cra_agents_langchain._tools import DROPPED_EVENT
from cra_agents_langchain.testing import ScriptedChatModel

GITHUB_OPS = atlas_path("github-ops")
SEEN: list[Any] = []


@pytest.fixture(autouse=True)
def runtime() -> Iterator[cra.Runtime]:
    SEEN.clear()
    yield cra.configure(atlases=[GITHUB_OPS], store="memory://")
    cra.shutdown()


@tool
def read_file(repo: str, path: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> str:
    """Read a file of a repository."""
    SEEN.append((repo, path, tool_call_id))
    return f"contents of {path}"


@tool
def delete_repo(repo: str, confirm_name: str) -> str:
    """Delete a repository."""
    SEEN.append(("deleted", repo))
    return "deleted"


@tool
def comment(repo: str, issue_number: int, body: str) -> str:
    """Comment on an issue."""
    raise ToolException("the issue is locked")


def _call(name: str, call_id: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


def test_same_face_and_injected_arguments():
    """Name, description and schema stay; the injected call id reaches the tool only."""
    guarded = guard_tool(read_file, action_id="github.file.read")
    assert isinstance(guarded, GuardedTool)
    assert guarded.name == "read_file"
    assert guarded.description == read_file.description
    assert guarded.args == read_file.args  # the model-visible arguments; injected ones hidden
    with cra.session(agent_id="triage-bot", goal="Read") as active:
        message = guarded.invoke(_call("read_file", "call-1", repo="acme/app", path="README.md"))
    assert isinstance(message, ToolMessage)
    assert message.content == "contents of README.md"
    assert SEEN == [("acme/app", "README.md", "call-1")]
    events = cra.get_runtime().trace_events(active.session_id)
    requested = [e for e in events if e.event_type == "action.requested"]
    assert requested[0].payload["tool_call_id"] == "call-1"
    assert [e.event_type for e in events].count("action.executed") == 1


def test_denial_is_a_tool_error_the_model_reads():
    guarded = guard_tool(delete_repo, actions={"delete_repo": "github.repo.delete"})
    message = guarded.invoke(_call("delete_repo", "d1", repo="acme/app", confirm_name="acme/app"))
    assert message.status == "error"
    assert "deny-repo-delete" in message.content
    assert SEEN == []
    plain = guarded.invoke({"repo": "acme/app", "confirm_name": "acme/app"})
    assert "Denied" in plain
    assert issubclass(ToolDeniedError, ToolException)


def test_invalid_arguments_and_failures():
    guarded = guard_tool(read_file, action_id="github.file.read")
    refused = guarded.invoke(_call("read_file", "r1", repo="not a repo", path="x"))
    assert refused.status == "error"
    assert "invalid" in refused.content
    failing = guard_tool(comment, action_id="github.issue.comment")
    with pytest.raises(ToolException, match="locked"):  # the tool's own error, unchanged
        failing.invoke({"repo": "acme/app", "issue_number": 1, "body": "hi"})
    session = cra.get_runtime().sessions()[-1]
    kinds = [e.event_type for e in cra.get_runtime().trace_events(session.session_id)]
    assert "action.failed" in kinds


def test_async_structured_tool_and_explicit_runtime():
    async def fetch(repo: str, path: str) -> str:
        SEEN.append(("async", path))
        return "async contents"

    structured = StructuredTool.from_function(
        coroutine=fetch, name="fetch", description="Fetch a file."
    )
    other = cra.Runtime([GITHUB_OPS], store="memory://")
    guarded = guard_tool(structured, action_id="github.file.read", runtime=other)

    async def run() -> Any:
        return await guarded.ainvoke({"repo": "acme/app", "path": "A.md"})

    try:
        assert asyncio.run(run()) == "async contents"
        (session,) = other.sessions()
        assert session.agent_id == "cra-implicit"
        kinds = [e.event_type for e in other.trace_events(session.session_id)]
        assert kinds.count("action.executed") == 1
    finally:
        other.close()


def test_guarded_tools_in_an_agent_without_middleware():
    tools = guard_tools(
        [read_file, delete_repo],
        actions={"read_file": "github.file.read", "delete_repo": "github.repo.delete"},
    )
    model = ScriptedChatModel(
        script=[
            AIMessage(
                "",
                tool_calls=[
                    {"name": "read_file", "args": {"repo": "acme/app", "path": "R"}, "id": "t1"},
                    {
                        "name": "delete_repo",
                        "args": {"repo": "acme/app", "confirm_name": "acme/app"},
                        "id": "t2",
                    },
                ],
            ),
            AIMessage("done"),
        ]
    )
    agent = create_agent(model, tools)
    with cra.session(agent_id="triage-bot", goal="Tools only") as active:
        agent.invoke({"messages": [HumanMessage("go")]})
    results = {m.tool_call_id: m for m in model.calls[1] if isinstance(m, ToolMessage)}
    assert results["t1"].content == "contents of R"
    assert results["t2"].status == "error"
    assert SEEN == [("acme/app", "R", "t1")]
    assert cra.get_runtime().verify(active.session_id).valid


def test_public_names():
    assert sorted(cra_agents_langchain.__all__) == cra_agents_langchain.__all__
    for name in cra_agents_langchain.__all__:
        assert hasattr(cra_agents_langchain, name)


@tool
def read_with_runtime(repo: str, path: str, runtime: ToolRuntime) -> str:
    """Read a file, knowing the conversation so far."""
    SEEN.append((path, runtime.tool_call_id, len(runtime.state["messages"])))
    return "ok"


def test_tool_runtime_still_reaches_the_tool():
    guarded = guard_tool(read_with_runtime, action_id="github.file.read")
    assert "runtime" not in guarded.args
    model = ScriptedChatModel(
        script=[
            AIMessage(
                "",
                tool_calls=[
                    {"name": "read_with_runtime", "args": {"repo": "a/b", "path": "P"}, "id": "rt1"}
                ],
            ),
            AIMessage("done"),
        ]
    )
    agent = create_agent(model, [guarded])
    with cra.session(agent_id="triage-bot", goal="Runtime") as active:
        agent.invoke({"messages": [HumanMessage("go")]})
    assert SEEN == [("P", "rt1", 2)]
    assert cra.get_runtime().verify(active.session_id).valid


@tool
def read_as(
    repo: str,
    path: str,
    user: Annotated[str, InjectedToolArg] = "nobody",
    tool_call_id: Annotated[str, InjectedToolCallId] = "",
) -> str:
    """Read a file as a user."""
    SEEN.append((path, user, tool_call_id))
    return f"{user} read {path}"


@tool
def read_as_user(repo: str, path: str, user: Annotated[str, InjectedToolArg] = "nobody") -> str:
    """Read a file as a user (no call id)."""
    SEEN.append((path, user))
    return f"{user} read {path}"


@tool
def read_for_state(repo: str, path: str, state: Annotated[dict[str, Any], InjectedState]) -> str:
    """Read a file, knowing the state."""
    SEEN.append((path, sorted(state)))
    return "ok"


def _dropped(runtime: cra.Runtime) -> list[dict[str, Any]]:
    return [
        e.payload
        for s in runtime.sessions()
        for e in runtime.trace_events(s.session_id)
        if e.event_type == DROPPED_EVENT
    ]


class TestInjectedArguments:
    """A model's value for an injected argument never reaches the tool: LangChain's is used."""

    def test_direct_tool_call_drops_the_models_values(self, runtime):
        """A ToolCall forging user and tool_call_id: both dropped, recorded; defaults and id."""
        guarded = guard_tool(read_as, action_id="github.file.read")
        forged = _call("read_as", "real-id", repo="a/b", path="P", user="root", tool_call_id="x")
        message = guarded.invoke(forged)
        assert message.content == "nobody read P"
        assert SEEN == [("P", "nobody", "real-id")]
        (payload,) = _dropped(runtime)
        assert payload == {
            "tool": "read_as",
            "arguments": ["tool_call_id", "user"],
            "tool_call_id": "real-id",
        }

    def test_async_direct_tool_call_drops_them_too(self, runtime):
        """ainvoke: the same."""
        guarded = guard_tool(read_as, action_id="github.file.read")
        forged = _call("read_as", "a-id", repo="a/b", path="P", user="root")
        message = asyncio.run(guarded.ainvoke(forged))
        assert message.content == "nobody read P"
        assert [p["arguments"] for p in _dropped(runtime)] == [["user"]]

    def test_a_plain_dict_is_the_callers_own(self, runtime):
        """Outside a ToolCall the caller supplies injected values on purpose: kept."""
        guarded = guard_tool(read_as_user, action_id="github.file.read")
        assert guarded.invoke({"repo": "a/b", "path": "P", "user": "alice"}) == "alice read P"
        assert SEEN == [("P", "alice")]
        assert _dropped(runtime) == []

    def test_tool_node_injects_the_real_state(self, runtime):
        """Through a real ToolNode: the model's forged state is replaced by the graph's."""
        guarded = guard_tool(read_for_state, action_id="github.file.read")
        forged = AIMessage(
            "",
            tool_calls=[
                {
                    "name": "read_for_state",
                    "args": {"repo": "a/b", "path": "S", "state": {"admin": True}},
                    "id": "s1",
                }
            ],
        )
        graph = StateGraph(MessagesState)
        graph.add_node("tools", ToolNode([guarded]))
        graph.add_edge(START, "tools")
        with cra.session(agent_id="triage-bot", goal="State") as active:
            out = graph.compile().invoke({"messages": [HumanMessage("go"), forged]})
        assert out["messages"][-1].content == "ok"
        assert SEEN == [("S", ["messages"])]  # the graph's state, not {"admin": True}
        assert _dropped(runtime) == []  # ToolNode had already replaced it
        assert runtime.verify(active.session_id).valid

    def test_create_agent_forged_call_id_and_arg(self, runtime):
        """In create_agent: the forged user never arrives, the real call id does."""
        guarded = guard_tool(read_as, action_id="github.file.read")
        model = ScriptedChatModel(
            script=[
                AIMessage(
                    "",
                    tool_calls=[
                        {
                            "name": "read_as",
                            "args": {"repo": "a/b", "path": "C", "user": "root"},
                            "id": "c9",
                        }
                    ],
                ),
                AIMessage("done"),
            ]
        )
        agent = create_agent(model, [guarded])
        agent.invoke({"messages": [HumanMessage("go")]})
        assert SEEN == [("C", "nobody", "c9")]
