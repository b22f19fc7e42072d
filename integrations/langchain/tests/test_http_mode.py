"""CRAMiddleware, unchanged, against a CRA server: ``cra.configure(mode="http")``.

A real ``create_agent`` loop (scripted model) whose tool calls are decided by a real uvicorn
server on 127.0.0.1 (``cra_agents.server.create_app`` over a Runtime on the github-ops atlas).
The same run in embedded mode gives the same tool answers and the same trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents_langchain import CRAMiddleware, guard_tool
from cra_agents_langchain.testing import ScriptedChatModel
from tests.harness.http_server import serve, server_app

GITHUB_OPS = atlas_path("github-ops")
SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
ACTIONS = {
    "read_file": "github.file.read",
    "delete_repo": "github.repo.delete",
    "merge_pr": "github.pr.merge",
}
RAN: list[str] = []


@tool
def read_file(repo: str, path: str) -> str:
    """Read a file from a repository."""
    RAN.append("read_file")
    return f"# {repo}/{path}"


@tool
def delete_repo(repo: str, confirm_name: str) -> str:
    """Delete a repository (irreversible)."""
    RAN.append("delete_repo")
    return f"deleted {repo}"


@tool
def merge_pr(repo: str, pr_number: int, expected_head_sha: str) -> str:
    """Merge a pull request."""
    RAN.append("merge_pr")
    return f"merged {repo}#{pr_number}"


def _call(name: str, call_id: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id}


def _script() -> list[AIMessage]:
    return [
        AIMessage("", tool_calls=[_call("read_file", "c1", repo="acme/app", path="README.md")]),
        AIMessage(
            "", tool_calls=[_call("delete_repo", "c2", repo="acme/app", confirm_name="acme/app")]
        ),
        AIMessage(
            "",
            tool_calls=[
                _call("merge_pr", "c3", repo="acme/app", pr_number=42, expected_head_sha=SHA)
            ],
        ),
        AIMessage(
            "",
            tool_calls=[
                _call("merge_pr", "c4", repo="acme/app", pr_number=43, expected_head_sha=SHA)
            ],
        ),
        AIMessage("done"),
    ]


@pytest.fixture
def server() -> Iterator[tuple[cra.Runtime, str]]:
    runtime = cra.Runtime([GITHUB_OPS], store="memory://")
    with serve(server_app(runtime)) as url:
        yield runtime, url
    runtime.close()


def _run(thread: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Run the scripted agent with the configured runtime; approve c3, reject c4."""
    RAN.clear()
    agent = create_agent(
        ScriptedChatModel(script=_script()),
        [read_file, delete_repo, merge_pr],
        middleware=[CRAMiddleware(agent_id="github-ops-agent", actions=ACTIONS)],
        checkpointer=InMemorySaver(),
    )
    config: Any = {"configurable": {"thread_id": thread}}
    result = agent.invoke({"messages": [HumanMessage("Tidy up acme/app")]}, config)
    answers = iter(
        [
            {"decisions": [{"type": "approve"}], "approver": "alice"},
            {"decisions": [{"type": "reject", "message": "not this one"}], "approver": "bob"},
        ]
    )
    while result.get("__interrupt__"):
        result = agent.invoke(Command(resume=next(answers)), config)
    replies = [
        (str(m.name), str(m.status)) for m in result["messages"] if isinstance(m, ToolMessage)
    ]
    runtime = cra.get_runtime()
    runtime.flush()
    (session,) = [s for s in runtime.sessions() if s.agent_id == "github-ops-agent"]
    assert not session.active  # the middleware ended it with the run
    assert runtime.verify(session.session_id).valid
    types = [e.event_type for e in runtime.trace_events(session.session_id)]
    return replies, types


def test_middleware_unchanged_against_the_server(server: tuple[cra.Runtime, str]) -> None:
    runtime, url = server
    cra.configure([GITHUB_OPS], store="memory://")
    try:
        local = _run("embedded")
        local_ran = list(RAN)
    finally:
        cra.shutdown()
    client = cra.configure(mode="http", url=url, api_key="key-a")
    try:
        assert isinstance(client, cra.Client)
        remote = _run("http")
    finally:
        cra.shutdown()
    assert remote == local
    assert RAN == local_ran == ["read_file", "merge_pr"]
    replies, types = remote
    assert replies == [
        ("read_file", "success"),
        ("delete_repo", "error"),
        ("merge_pr", "success"),
        ("merge_pr", "error"),
    ]
    assert types.count("approval.requested") == 2
    assert types.count("action.executed") == 2
    # The server's own runtime recorded it: one authority.
    (session,) = [s for s in runtime.sessions() if s.agent_id == "github-ops-agent"]
    approved = runtime.trace_events(session.session_id, event_type="action.approved")
    assert [e.payload.get("approver") for e in approved][-1] == "alice"


def test_guarded_tool_against_the_server(server: tuple[cra.Runtime, str]) -> None:
    _, url = server
    cra.configure(mode="http", url=url, api_key="key-a")
    try:
        guarded = guard_tool(read_file, action_id="github.file.read")
        denied = guard_tool(delete_repo, action_id="github.repo.delete")
        with cra.session(agent_id="tool-bot", goal="read") as active:
            assert guarded.invoke({"repo": "acme/app", "path": "x"}) == "# acme/app/x"
            refused = denied.invoke({"repo": "acme/app", "confirm_name": "acme/app"})
            assert "deny-repo-delete" in refused
            assert asyncio.run(guarded.ainvoke({"repo": "acme/app", "path": "y"})) == (
                "# acme/app/y"
            )
        client = cra.get_runtime()
        types = [e.event_type for e in client.trace_events(active.session_id)]
        assert types.count("action.executed") == 2
        assert types.count("action.denied") == 1
    finally:
        cra.shutdown()
