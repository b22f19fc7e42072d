"""CRACallbackHandler: LangChain run events in the session chain, correlated with decisions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents_langchain import CRACallbackHandler, CRAMiddleware
from cra_agents_langchain._common import THREAD_SESSIONS
from cra_agents_langchain.testing import ScriptedChatModel

GITHUB_OPS = atlas_path("github-ops")
ACTIONS = {
    "read_file": "github.file.read",
    "delete_repo": "github.repo.delete",
    "merge_pr": "github.pr.merge",
}
SHA = "a" * 40
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


@tool
def merge_pr(repo: str, pr_number: int, expected_head_sha: str) -> str:
    """Merge a pull request."""
    RAN.append(f"merged #{pr_number}")
    return f"merged #{pr_number}"


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


class _Opaque:
    """Neither JSON nor pydantic can encode it."""


class TestUnserialisableMessages:
    def test_enforce_records_an_unserialisable_message_and_lets_the_run_go_on(self, runtime):
        """enforce=True refuses tools only: a message orjson cannot encode is digested."""
        model = _model({"name": "read_file", "args": {"repo": "acme/app", "path": "O"}, "id": "o1"})
        agent = create_agent(model, [read_file])
        handler = CRACallbackHandler(enforce=True, actions=ACTIONS)
        message = HumanMessage("read O", additional_kwargs={"blob": _Opaque()})
        with cra.session(agent_id="gh", goal="Opaque") as active:
            out = agent.invoke({"messages": [message]}, {"callbacks": [handler]})
        assert out["messages"][-1].content == "done"
        assert RAN == ["O"]
        events = runtime.trace_events(active.session_id)
        started = [e for e in events if e.event_type == "langchain.llm.started"]
        assert len(started) == 2
        assert all(len(e.payload["messages"]["sha256"]) == 64 for e in started)
        assert handler.errors == 0

    def test_unrecordable_usage_becomes_a_digest(self, runtime):
        """A payload field the trace cannot carry is recorded as its digest, not lost."""
        handler = CRACallbackHandler()
        with cra.session(agent_id="gh", goal="Usage") as active:
            run_id = uuid4()
            handler.on_llm_end(
                LLMResult(generations=[], llm_output={"token_usage": {"odd": _Opaque()}}),
                run_id=run_id,
            )
        (ended,) = [
            e
            for e in runtime.trace_events(active.session_id)
            if e.event_type == "langchain.llm.ended"
        ]
        assert ended.payload["run_id"] == str(run_id)
        assert len(ended.payload["token_usage"]["sha256"]) == 64
        assert handler.errors == 0


#: No turn resolution (context or tool hiding): only the callback events and the calls.
NO_RESOLUTION: dict[str, Any] = {"context_budget_tokens": 0, "hide_denied_tools": False}


def _kinds(runtime: cra.Runtime, session_id: str) -> list[str]:
    return [e.event_type for e in runtime.trace_events(session_id)]


class TestWithMiddleware:
    """With CRAMiddleware, the handler records into the middleware's session for the run."""

    def test_a_run_without_a_checkpointer_records_in_the_middleware_session(self, runtime):
        """No thread_id: the session is announced through the run tree; nothing stray opens."""
        model = _model({"name": "read_file", "args": {"repo": "acme/app", "path": "M"}, "id": "m1"})
        middleware = CRAMiddleware(agent_id="gh", actions=ACTIONS, **NO_RESOLUTION)
        agent = create_agent(model, [read_file], middleware=[middleware])
        handler = CRACallbackHandler(chains=True)
        agent.invoke({"messages": [HumanMessage("read M")]}, {"callbacks": [handler]})
        (info,) = runtime.sessions()  # no implicit session
        assert info.agent_id == "gh"
        assert not info.active
        kinds = _kinds(runtime, info.session_id)
        assert kinds[0] == "session.started"
        assert kinds[-1] == "session.ended"
        # The graph's and the model node's starts waited for the session, then came first.
        assert kinds[1:3] == ["langchain.chain.started", "langchain.chain.started"]
        assert kinds.count("langchain.llm.started") == kinds.count("langchain.llm.ended") == 2
        assert kinds.count("langchain.tool.started") == kinds.count("langchain.tool.ended") == 1
        assert kinds.index("langchain.tool.started") < kinds.index("action.executed")
        assert runtime.verify(info.session_id).valid
        assert handler.errors == 0

    def test_async_run_records_in_the_middleware_session(self, runtime):
        """ainvoke: the same, the sync handler being run by LangChain's executor."""
        model = _model({"name": "read_file", "args": {"repo": "acme/app", "path": "N"}, "id": "n1"})
        middleware = CRAMiddleware(agent_id="gh", actions=ACTIONS, **NO_RESOLUTION)
        agent = create_agent(model, [read_file], middleware=[middleware])
        handler = CRACallbackHandler()
        asyncio.run(agent.ainvoke({"messages": [HumanMessage("read N")]}, {"callbacks": [handler]}))
        (info,) = runtime.sessions()
        kinds = _kinds(runtime, info.session_id)
        assert kinds.count("langchain.llm.started") == 2
        assert kinds.count("langchain.tool.ended") == 1
        assert handler.errors == 0

    def test_a_resume_into_the_tools_node_finds_the_session_by_thread(self, runtime):
        """After an approval interrupt no model call announces the session: the thread does."""
        model = _model(
            {
                "name": "merge_pr",
                "args": {"repo": "acme/app", "pr_number": 7, "expected_head_sha": SHA},
                "id": "p1",
            }
        )
        middleware = CRAMiddleware(agent_id="gh", actions=ACTIONS)
        agent = create_agent(
            model, [merge_pr], middleware=[middleware], checkpointer=InMemorySaver()
        )
        thread = {"thread_id": "resume-thread"}
        first = agent.invoke(
            {"messages": [HumanMessage("merge")]},
            RunnableConfig(configurable=thread, callbacks=[CRACallbackHandler()]),
        )
        assert first["__interrupt__"]
        handler = CRACallbackHandler()  # a new handler: it knows nothing of the first run
        agent.invoke(Command(resume=True), RunnableConfig(configurable=thread, callbacks=[handler]))
        (info,) = runtime.sessions()
        assert RAN == ["merged #7"]
        kinds = _kinds(runtime, info.session_id)
        assert kinds.count("langchain.tool.started") == 1
        assert kinds.count("langchain.llm.started") == 2
        assert kinds[-1] == "session.ended"
        assert handler.errors == 0
        assert THREAD_SESSIONS.get("resume-thread", runtime) is None  # forgotten at the end

    def test_a_failed_first_model_call_is_recorded_in_the_session_it_ended(self, runtime):
        """The session opens before the model call, so even its failure is in it."""

        def fail(messages: Any) -> AIMessage:
            raise RuntimeError("model down")

        agent = create_agent(
            ScriptedChatModel(script=[fail]),
            [read_file],
            middleware=[CRAMiddleware(agent_id="gh", actions=ACTIONS, **NO_RESOLUTION)],
        )
        handler = CRACallbackHandler()
        with pytest.raises(RuntimeError, match="model down"):
            agent.invoke({"messages": [HumanMessage("hi")]}, {"callbacks": [handler]})
        (info,) = runtime.sessions()
        kinds = _kinds(runtime, info.session_id)
        assert kinds == [
            "session.started",
            "langchain.llm.started",
            "langchain.llm.failed",
            "session.ended",
        ]

    def test_outside_langgraph_the_implicit_session_as_before(self, runtime):
        """A tool invoked on its own: the runtime's implicit session, as without middleware."""
        handler = CRACallbackHandler(chains=True)
        read_file.invoke({"repo": "acme/app", "path": "Q"}, {"callbacks": [handler]})
        (info,) = runtime.sessions()
        assert info.agent_id == "cra-implicit"
        assert _kinds(runtime, info.session_id).count("langchain.tool.ended") == 1
