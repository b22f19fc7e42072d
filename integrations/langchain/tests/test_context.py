"""The atlas reaches the model: context blocks, hidden tools, unmapped tools (real agent loops)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.protocol import ContextBlock
from cra_agents.report import render_report, timeline
from cra_agents_langchain import CRAMiddleware
from cra_agents_langchain._context import (
    AtlasContext,
    closest_actions,
    latest_human_turn,
    render_context,
    with_context,
)
from cra_agents_langchain.testing import ScriptedChatModel

GITHUB_OPS = atlas_path("github-ops")
OPS = "com.example.github-ops"
ACTIONS = {"read_file": "github.file.read", "delete_repo": "github.repo.delete"}
MARK = "--- Context from atlas "


@tool
def read_file(repo: str, path: str) -> str:
    """Read a file of a repository."""
    return f"contents of {path}"


@tool
def delete_repo(repo: str, confirm_name: str) -> str:
    """Delete a repository."""
    return "deleted"


@tool
def merge_pull_request(repo: str, pr_number: int, expected_head_sha: str) -> str:
    """Merge a pull request (maps by the action's executor name; needs approval)."""
    return "merged"


@tool
def close_the_issue(repo: str, issue_number: int) -> str:
    """Close an issue (maps to no action)."""
    return "closed"


TOOLS = [read_file, delete_repo, merge_pull_request]


@pytest.fixture(autouse=True)
def runtime() -> Iterator[cra.Runtime]:
    yield cra.configure(atlases=[GITHUB_OPS], store="memory://")
    cra.shutdown()


class Seen(AgentMiddleware[Any, Any, Any]):
    """An inner middleware's view of each model request (after CRAMiddleware shaped it)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[ModelRequest[Any]] = []

    def wrap_model_call(self, request: ModelRequest[Any], handler: Callable[..., Any]) -> Any:
        self.requests.append(request)
        return handler(request)

    async def awrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[..., Awaitable[Any]]
    ) -> Any:
        self.requests.append(request)
        return await handler(request)

    def system(self, index: int) -> str:
        message = self.requests[index].system_message
        return "" if message is None else message.text

    def offered(self, index: int) -> list[str]:
        return sorted(getattr(t, "name", "?") for t in self.requests[index].tools)


def build(
    *script: Any, tools: list[Any] | None = None, system_prompt: str | None = None, **options: Any
) -> tuple[Any, ScriptedChatModel, Seen, CRAMiddleware]:
    model = ScriptedChatModel(script=list(script))
    seen = Seen()
    middleware = CRAMiddleware(agent_id="triage-bot", actions=ACTIONS, **options)
    agent = create_agent(
        model,
        TOOLS if tools is None else tools,
        system_prompt=system_prompt,
        middleware=[middleware, seen],
        checkpointer=InMemorySaver(),
    )
    return agent, model, seen, middleware


def config(thread: str = "t1") -> Any:
    return {"configurable": {"thread_id": thread}}


def read(call_id: str, path: str = "README.md") -> AIMessage:
    args = {"repo": "acme/app", "path": path}
    return AIMessage("", tool_calls=[{"name": "read_file", "args": args, "id": call_id}])


def injected(runtime: cra.Runtime, session_id: str) -> list[str]:
    return [
        e.payload["block_id"]
        for e in runtime.trace_events(session_id)
        if e.event_type == "context.injected"
    ]


def requests(runtime: cra.Runtime, session_id: str) -> list[str]:
    return [
        e.payload["goal"]
        for e in runtime.trace_events(session_id)
        if e.event_type == "carp.request.received"
    ]


def blocks_in(text: str) -> list[str]:
    """Block ids of the delimited sections of a system message, in order."""
    return [line.rsplit("(", 1)[1].rstrip(") -") for line in text.splitlines() if MARK in line]


class TestContextInjection:
    def test_the_turn_is_resolved_once_and_its_blocks_reach_the_model(self, runtime):
        """One resolution per turn; every model call of it carries the same delimited blocks."""
        agent, model, seen, _ = build(
            read("c1"), AIMessage("Done."), system_prompt="You triage GitHub issues."
        )
        agent.invoke({"messages": [HumanMessage("Triage new issues")]}, config())
        (info,) = runtime.sessions()
        assert requests(runtime, info.session_id) == ["Triage new issues"]
        recorded = injected(runtime, info.session_id)
        assert recorded == ["org-conventions", "label-taxonomy", "issue-triage"]
        assert len(seen.requests) == 2
        first, second = seen.system(0), seen.system(1)
        assert first == second
        # Shaped once for the turn: the same message object for both calls.
        assert seen.requests[0].system_message is seen.requests[1].system_message
        assert first.startswith("You triage GitHub issues.\n\n")
        assert blocks_in(first) == recorded
        assert f"{MARK}{OPS}: Example Org Conventions (org-conventions) ---" in first
        assert "--- End of context org-conventions ---" in first
        # What the model itself received: the system message first.
        sent = model.calls[0][0]
        assert isinstance(sent, SystemMessage)
        assert sent.text == first

    def test_later_turns_resolve_their_own_message_and_keep_earlier_blocks_once(self, runtime):
        """Turn 2 resolves its latest human message; blocks held are re-sent, not re-recorded."""
        agent, _, seen, _ = build(AIMessage("Triaged."), AIMessage("Notes written."))
        agent.invoke({"messages": [HumanMessage("Triage new issues")]}, config())
        agent.invoke({"messages": [HumanMessage("Write the release changelog")]}, config())
        first, second = runtime.sessions()
        assert requests(runtime, first.session_id) == ["Triage new issues"]
        assert requests(runtime, second.session_id) == ["Write the release changelog"]
        assert injected(runtime, second.session_id) == ["release-notes"]
        held = injected(runtime, first.session_id)
        # Earlier blocks first (the system message grows only at its end), each once.
        assert blocks_in(seen.system(1)) == [*held, "release-notes"]
        assert seen.system(1).startswith(seen.system(0))

    def test_an_approval_interrupt_and_its_resume_are_one_turn(self, runtime):
        """Resuming after an approval interrupt does not resolve the turn again."""
        merge = {"repo": "acme/app", "pr_number": 7, "expected_head_sha": "a" * 40}
        agent, _, seen, _ = build(
            AIMessage("", tool_calls=[{"name": "merge_pull_request", "args": merge, "id": "m1"}]),
            AIMessage("Merged."),
        )
        agent.invoke({"messages": [HumanMessage("Merge PR 7")]}, config())
        assert agent.get_state(config()).interrupts
        out = agent.invoke(Command(resume={"decision": "approve"}), config())
        assert out["messages"][-1].content == "Merged."
        (info,) = runtime.sessions()
        assert requests(runtime, info.session_id) == ["Merge PR 7"]
        assert seen.system(0) == seen.system(1)
        assert "action.executed" in [e.event_type for e in runtime.trace_events(info.session_id)]

    def test_a_turn_of_text_parts_is_resolved_for_its_text(self, runtime):
        """A human message of content blocks: its text is the goal."""
        agent, _, _, _ = build(AIMessage("ok"))
        parts: list[str | dict[Any, Any]] = [
            {"type": "text", "text": "Triage"},
            {"type": "text", "text": "new issues"},
        ]
        agent.invoke({"messages": [HumanMessage(content=parts)]}, config())
        (info,) = runtime.sessions()
        assert requests(runtime, info.session_id) == ["Triage\nnew issues"]

    def test_another_thread_starts_afresh(self, runtime):
        """Blocks are held per thread: a second thread gets (and records) its own."""
        agent, _, seen, _ = build(AIMessage("one"), AIMessage("two"))
        agent.invoke({"messages": [HumanMessage("Triage new issues")]}, config("a"))
        agent.invoke({"messages": [HumanMessage("Triage new issues")]}, config("b"))
        first, second = runtime.sessions()
        assert injected(runtime, first.session_id) == injected(runtime, second.session_id)
        assert seen.system(0) == seen.system(1)

    def test_the_budget_holds_for_the_thread_and_the_trace_says_what_was_given(self, runtime):
        """Blocks over the budget are neither shown nor recorded; later turns get what is left."""
        # org-conventions (92) and label-taxonomy (97) fit; issue-triage (672) does not.
        agent, _, seen, _ = build(
            AIMessage("one"), AIMessage("two"), AIMessage("three"), context_budget_tokens=280
        )
        agent.invoke({"messages": [HumanMessage("Triage new issues")]}, config())
        agent.invoke({"messages": [HumanMessage("Write the release changelog")]}, config())
        agent.invoke({"messages": [HumanMessage("Any security problems?")]}, config())
        first, second, third = runtime.sessions()
        assert injected(runtime, first.session_id) == ["org-conventions", "label-taxonomy"]
        # release-notes (98) would pass the 280 alone, not with the 189 held.
        assert injected(runtime, second.session_id) == []
        assert injected(runtime, third.session_id) == []
        for index in range(3):
            assert blocks_in(seen.system(index)) == ["org-conventions", "label-taxonomy"]
        completed = [
            e.payload
            for e in runtime.trace_events(second.session_id)
            if e.event_type == "carp.resolution.completed"
        ]
        assert completed[0]["context_block_count"] == 0

    def test_a_zero_budget_injects_nothing_but_still_resolves_to_hide_tools(self, runtime):
        """context_budget_tokens=0: the system message is untouched; the turn is resolved."""
        agent, _, seen, _ = build(AIMessage("ok"), context_budget_tokens=0, system_prompt="Base.")
        agent.invoke({"messages": [HumanMessage("Triage new issues")]}, config())
        (info,) = runtime.sessions()
        assert requests(runtime, info.session_id) == ["Triage new issues"]
        assert injected(runtime, info.session_id) == []
        assert seen.system(0) == "Base."
        assert "delete_repo" not in seen.offered(0)

    def test_async_runs_get_the_same_context(self, runtime):
        """ainvoke: resolved, injected and recorded alike."""
        agent, _, seen, _ = build(read("c1"), AIMessage("Done."))
        asyncio.run(agent.ainvoke({"messages": [HumanMessage("Triage new issues")]}, config()))
        (info,) = runtime.sessions()
        assert len(requests(runtime, info.session_id)) == 1
        assert blocks_in(seen.system(1)) == injected(runtime, info.session_id)
        assert not info.active

    def test_inside_a_cra_session_the_turn_resolves_there(self, runtime):
        """A caller's session (another agent id) takes the resolution; it stays open."""
        agent, _, seen, _ = build(AIMessage("ok"))
        with cra.session(agent_id="outer-agent", goal="outer"):
            agent.invoke({"messages": [HumanMessage("Triage new issues")]}, config())
        (info,) = runtime.sessions()
        assert info.agent_id == "outer-agent"
        assert requests(runtime, info.session_id) == ["Triage new issues"]
        assert blocks_in(seen.system(0)) == injected(runtime, info.session_id)

    def test_resolutions_and_injected_context_show_in_the_report(self, runtime):
        """cra_agents.report: the run's resolution and its blocks, in the timeline and HTML."""
        agent, _, _, _ = build(read("c1"), AIMessage("Done."))
        agent.invoke({"messages": [HumanMessage("Triage new issues")]}, config())
        (info,) = runtime.sessions()
        events = runtime.trace_events(info.session_id)
        tl = timeline(events)
        (resolution,) = tl.resolutions
        assert resolution["goal"] == "Triage new issues"
        assert resolution["decision_type"] == "requires_approval"
        assert resolution["context_block_ids"] == [
            "org-conventions",
            "label-taxonomy",
            "issue-triage",
        ]
        assert [b["block_id"] for b in tl.context_blocks] == resolution["context_block_ids"]
        assert {b["resolution_id"] for b in tl.context_blocks} == {resolution["resolution_id"]}
        assert [c.action_id for c in tl.calls] == ["github.file.read"]
        html = render_report(events)
        assert "<h2>Resolutions</h2>" in html
        assert "<h2>Injected context</h2>" in html
        assert "label-taxonomy" in html
        assert "issue-triage" in html


class TestHiddenTools:
    def test_denied_tools_are_hidden_and_still_refused(self, runtime):
        """delete_repo is denied: not offered; called anyway, the gate refuses and records it."""
        agent, _, seen, _ = build(
            AIMessage(
                "",
                tool_calls=[
                    {
                        "name": "delete_repo",
                        "args": {"repo": "acme/app", "confirm_name": "acme/app"},
                        "id": "d1",
                    }
                ],
            ),
            AIMessage("Could not."),
        )
        out = agent.invoke({"messages": [HumanMessage("Clean up acme/app")]}, config())
        # merge_pull_request needs approval: offered.
        assert seen.offered(0) == ["merge_pull_request", "read_file"]
        assert seen.offered(1) == ["merge_pull_request", "read_file"]
        refusal = out["messages"][2]
        assert refusal.status == "error"
        assert "deny-repo-delete" in refusal.content
        (info,) = runtime.sessions()
        denied = [
            e.payload
            for e in runtime.trace_events(info.session_id)
            if e.event_type == "action.denied"
        ]
        assert [d["action_id"] for d in denied] == ["github.repo.delete"]

    def test_hiding_can_be_turned_off(self, runtime):
        """hide_denied_tools=False: the model is offered every tool."""
        agent, _, seen, _ = build(AIMessage("ok"), hide_denied_tools=False)
        agent.invoke({"messages": [HumanMessage("Clean up acme/app")]}, config())
        assert seen.offered(0) == ["delete_repo", "merge_pull_request", "read_file"]

    def test_hiding_follows_the_agent_policies(self, runtime):
        """A policy conditioned on the agent: triage-* agents may not delete branches."""

        @tool
        def delete_branch(repo: str, branch: str) -> str:
            """Delete a branch."""
            return "deleted"

        for agent_id, offered in (("triage-bot", False), ("release-bot", True)):
            seen = Seen()
            agent = create_agent(
                ScriptedChatModel(script=[AIMessage("ok")]),
                [delete_branch, read_file],
                middleware=[
                    CRAMiddleware(agent_id=agent_id, actions=ACTIONS),
                    seen,
                ],
            )
            agent.invoke({"messages": [HumanMessage("Tidy branches")]})
            assert ("delete_branch" in seen.offered(0)) is offered


class TestUnmappedTools:
    def test_reported_with_the_closest_actions_and_hidden(self, runtime, caplog):
        """A tool that maps to nothing: a warning, the property, and it is not offered."""
        agent, _, seen, middleware = build(
            AIMessage("ok"), AIMessage("ok"), tools=[*TOOLS, close_the_issue]
        )
        assert middleware.unmapped_tools == {}
        with caplog.at_level(logging.WARNING, logger="cra_agents_langchain"):
            agent.invoke({"messages": [HumanMessage("Close stale issues")]}, config())
            agent.invoke({"messages": [HumanMessage("And again")]}, config())
        (closest,) = middleware.unmapped_tools.values()
        assert list(middleware.unmapped_tools) == ["close_the_issue"]
        assert closest[0] == "github.issue.close"
        assert len(closest) <= 3
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1  # once, not per model call
        assert "'close_the_issue'" in warnings[0]
        assert "github.issue.close" in warnings[0]
        assert "close_the_issue" not in seen.offered(0)

    def test_strict_refuses_to_run(self, runtime):
        """strict=True: a ConfigurationError with a stable code; nothing is recorded."""
        agent, model, _, _ = build(AIMessage("ok"), tools=[*TOOLS, close_the_issue], strict=True)
        with pytest.raises(cra.ConfigurationError, match="close_the_issue") as caught:
            agent.invoke({"messages": [HumanMessage("Close stale issues")]}, config())
        assert caught.value.code == "CONFIGURATION_ERROR"
        assert caught.value.details["reason"] == "unmapped_tools"
        assert caught.value.details["tools"]["close_the_issue"][0] == "github.issue.close"
        assert runtime.sessions() == []
        assert model.calls == []

    def test_an_actions_entry_naming_an_undeclared_action_is_unmapped(self, runtime):
        """actions={"read_file": "github.file.reed"}: suggestions for the id it names."""
        agent = create_agent(
            ScriptedChatModel(script=[AIMessage("ok")]),
            [read_file],
            middleware=[(middleware := CRAMiddleware(actions={"read_file": "github.file.reed"}))],
        )
        agent.invoke({"messages": [HumanMessage("Read it")]})
        assert middleware.unmapped_tools["read_file"][0] == "github.file.read"

    def test_checked_when_the_agent_is_built(self, runtime):
        """check_tools: the same report before any model call; strict raises there."""
        tools = [*TOOLS, close_the_issue]
        lenient = CRAMiddleware(actions=ACTIONS)
        assert list(lenient.check_tools(tools)) == ["close_the_issue"]
        assert lenient.unmapped_tools["close_the_issue"][0] == "github.issue.close"
        with pytest.raises(cra.ConfigurationError, match="close_the_issue"):
            CRAMiddleware(actions=ACTIONS, strict=True).check_tools(tools)
        assert CRAMiddleware(actions=ACTIONS, strict=True).check_tools(TOOLS) == {}

    def test_a_bad_budget_is_a_configuration_error(self):
        """A negative budget is refused when the middleware is built."""
        with pytest.raises(cra.ConfigurationError, match="context_budget_tokens"):
            CRAMiddleware(context_budget_tokens=-1)


class TestPieces:
    def test_latest_human_turn(self):
        """The latest human message is the turn, keyed by its id (else position and text)."""
        messages: list[BaseMessage] = [
            HumanMessage("first", id="h1"),
            AIMessage("answer"),
            HumanMessage("  second  ", id="h2"),
            AIMessage("answer"),
        ]
        assert latest_human_turn(messages) == ("h2", messages[2])
        alone = HumanMessage("no id")
        assert latest_human_turn([alone]) == ("0:no id", alone)
        assert latest_human_turn([AIMessage("x")]) == ("", None)

    def test_with_context_keeps_the_base_message(self):
        """Appended to a text system message, added as a block to a list one, else alone."""
        assert with_context(None, "S").text == "S"
        assert with_context(SystemMessage("Base"), "S").text == "Base\n\nS"
        listed = with_context(SystemMessage(content=[{"type": "text", "text": "Base"}]), "S")
        assert listed.content == [{"type": "text", "text": "Base"}, {"type": "text", "text": "S"}]
        original = SystemMessage("Base")
        with_context(original, "S")
        assert original.text == "Base"

    def test_render_context(self):
        """Each block delimited, named and attributed to its atlas; nothing for no blocks."""
        block = ContextBlock(
            block_id="b1",
            source="com.example.x",
            content_type="text/plain",
            content="Be kind.\n",
            priority=1,
            metadata={"name": "Manners"},
        )
        text = render_context([block])
        assert text is not None
        assert "--- Context from atlas com.example.x: Manners (b1) ---\nBe kind.\n" in text
        assert text.endswith("--- End of context b1 ---")
        assert render_context([]) is None

    def test_closest_actions(self, runtime):
        """Compared with ids, executors and names, as sorted words."""
        atlases = runtime.atlases
        assert closest_actions("delete_repo", atlases)[0] == "github.repo.delete"
        assert closest_actions("github.issue.lable", atlases)[0] == "github.issue.label"
        assert closest_actions("zzz", atlases) == []
        assert len(closest_actions("issue", atlases, n=2)) <= 2

    def test_threads_are_bounded(self, runtime):
        """At most max_threads threads are held; the oldest is resolved afresh."""
        context = AtlasContext(budget=None, hide_denied_tools=True, strict=False)
        context.max_threads = 2
        sessions = [runtime.create_session("triage-bot", f"run {i}") for i in range(3)]

        def prepare(session: cra.SessionInfo) -> None:
            request: ModelRequest[Any] = ModelRequest(
                model=ScriptedChatModel(script=[]),
                messages=[HumanMessage("Triage new issues", id="h")],
                state=cast("Any", {"messages": [], "cra_session_id": session.session_id}),
            )
            context.prepare(runtime, request, session.session_id, {})

        for session in sessions:
            prepare(session)
        prepare(sessions[2])  # held: no new resolution
        prepare(sessions[0])  # dropped: resolved again
        counts = [len(requests(runtime, s.session_id)) for s in sessions]
        assert counts == [2, 1, 1]
