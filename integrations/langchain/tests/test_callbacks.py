"""CRACallbackHandler: LangChain run events in the session chain, correlated with decisions."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool

import cra_agents as cra
from cra_agents_langchain import CRACallbackHandler, CRAMiddleware
from cra_agents_langchain.testing import ScriptedChatModel

GITHUB_OPS = Path(__file__).resolve().parents[3] / "examples" / "atlases" / "github-ops"
ACTIONS = {"read_file": "github.file.read", "delete_repo": "github.repo.delete"}
RAN: list[str] = []


@pytest.fixture(autouse=True)
def runtime() -> Iterator[cra.Runtime]:
    RAN.clear()
    yield cra.configure(atlases=[GITHUB_OPS], store="memory://")
    cra.shutdown()


@tool
def read_file(repo: str, path: str) -> str:
    """Read a file of a repository."""
    RAN.append(path)
    return f"contents of {path}"


@tool
def delete_repo(repo: str, confirm_name: str) -> str:
    """Delete a repository."""
    RAN.append("deleted")
    return "deleted"


def _model(*calls: dict[str, Any]) -> ScriptedChatModel:
    return ScriptedChatModel(script=[AIMessage("", tool_calls=list(calls)), AIMessage("done")])


def test_run_events_share_the_session_and_correlate_by_tool_call_id(runtime):
    """Inside cra.session, middleware decisions and callback events land in one chain."""
    model = _model({"name": "read_file", "args": {"repo": "acme/app", "path": "R"}, "id": "c1"})
    agent = create_agent(
        model, [read_file], middleware=[CRAMiddleware(agent_id="gh", actions=ACTIONS)]
    )
    handler = CRACallbackHandler(chains=True, capture_content=True)
    with cra.session(agent_id="gh", goal="Observe a run") as active:
        agent.invoke({"messages": [HumanMessage("read R")]}, {"callbacks": [handler]})
    events = runtime.trace_events(active.session_id)
    kinds = [e.event_type for e in events]
    assert kinds.count("langchain.llm.started") == 2
    assert kinds.count("langchain.llm.ended") == 2
    assert "langchain.chain.started" in kinds
    started = next(e for e in events if e.event_type == "langchain.tool.started")
    requested = next(e for e in events if e.event_type == "action.requested")
    assert started.payload["tool_call_id"] == requested.payload["tool_call_id"] == "c1"
    ended = next(e for e in events if e.event_type == "langchain.tool.ended")
    assert ended.payload["tool_call_id"] == "c1"
    assert "contents of R" in ended.payload["output"]["content"]
    llm_end = next(e for e in events if e.event_type == "langchain.llm.ended")
    assert llm_end.payload["tool_calls"] == [{"name": "read_file", "tool_call_id": "c1"}]
    assert kinds[-1] == "session.ended"  # the caller's session, ended by the caller
    assert runtime.verify(active.session_id).valid
    assert handler.errors == 0


def test_contents_are_digests_unless_captured(runtime):
    model = _model({"name": "read_file", "args": {"repo": "acme/app", "path": "S"}, "id": "c2"})
    agent = create_agent(model, [read_file])
    with cra.session(agent_id="gh", goal="Digests") as active:
        agent.invoke(
            {"messages": [HumanMessage("secret prompt")]}, {"callbacks": [CRACallbackHandler()]}
        )
    events = runtime.trace_events(active.session_id)
    started = next(e for e in events if e.event_type == "langchain.llm.started")
    assert set(started.payload["messages"]) == {"sha256"}
    assert "secret prompt" not in str([e.payload for e in events])
    assert "langchain.chain.started" not in [e.event_type for e in events]


def test_enforce_refuses_before_the_tool_runs(runtime):
    """enforce=True raises out of the run from on_tool_start: the tool never runs."""
    model = _model(
        {"name": "delete_repo", "args": {"repo": "acme/app", "confirm_name": "acme/app"}, "id": "d"}
    )
    agent = create_agent(model, [delete_repo])
    handler = CRACallbackHandler(enforce=True, actions=ACTIONS)
    assert handler.raise_error
    with cra.session(agent_id="gh", goal="Enforce"), pytest.raises(cra.ActionDenied):
        agent.invoke({"messages": [HumanMessage("delete it")]}, {"callbacks": [handler]})
    assert RAN == []


def test_recording_problems_never_reach_the_host(runtime, caplog):
    """A handler that cannot record logs it and lets the run go on."""
    model = _model({"name": "read_file", "args": {"repo": "acme/app", "path": "T"}, "id": "c3"})
    agent = create_agent(model, [read_file])
    handler = CRACallbackHandler(session_id="no-such-session")
    with caplog.at_level(logging.WARNING):
        out = agent.invoke({"messages": [HumanMessage("read T")]}, {"callbacks": [handler]})
    assert out["messages"][-1].content == "done"
    assert RAN == ["T"]
    assert handler.errors > 0
    assert "could not record" in caplog.text


def test_explicit_runtime_gets_its_own_session():
    other = cra.Runtime([GITHUB_OPS], store="memory://")
    try:
        model = _model({"name": "read_file", "args": {"repo": "acme/app", "path": "U"}, "id": "c4"})
        agent = create_agent(model, [read_file])
        agent.invoke(
            {"messages": [HumanMessage("read U")]}, {"callbacks": [CRACallbackHandler(other)]}
        )
        (session,) = other.sessions()
        assert session.agent_id == "langchain-callbacks"
        kinds = [e.event_type for e in other.trace_events(session.session_id)]
        assert "langchain.tool.failed" not in kinds
        assert kinds.count("langchain.tool.ended") == 1
    finally:
        other.close()
