"""CRAMiddleware speaks LangChain's human-in-the-loop protocol, and records every decision.

The interrupt values are checked against LangChain's own types (``HITLRequest``,
``ToolApprovalRequest``), the answers are LangChain's (``HITLResponse`` and its decisions), on
a real ``create_agent`` loop with LangGraph's ``InMemorySaver`` and ``Command(resume=...)``.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain.agents.middleware.human_in_the_loop import (
    HITLRequest,
    HITLResponse,
    ToolApprovalRequest,
)
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import is_invalid_resume
from langgraph.types import Command
from pydantic import TypeAdapter, ValidationError

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.report import timeline
from cra_agents_langchain import CRAMiddleware
from cra_agents_langchain.testing import ScriptedChatModel

GITHUB_OPS = atlas_path("github-ops")
SHA = "b" * 40
ACTIONS = {"read_file": "github.file.read", "merge_pr": "github.pr.merge"}
RAN: list[tuple[str, Any]] = []


@tool
def read_file(repo: str, path: str) -> str:
    """Read a file of a repository."""
    RAN.append(("read_file", path))
    return f"contents of {path}"


@tool
def merge_pr(repo: str, pr_number: int, expected_head_sha: str) -> str:
    """Merge a pull request."""
    RAN.append(("merge_pr", pr_number))
    return f"merged #{pr_number}"


def merge(call_id: str, number: int) -> dict[str, Any]:
    args = {"repo": "acme/app", "pr_number": number, "expected_head_sha": SHA}
    return {"name": "merge_pr", "args": args, "id": call_id}


def read(call_id: str, path: str) -> dict[str, Any]:
    return {"name": "read_file", "args": {"repo": "acme/app", "path": path}, "id": call_id}


def turn(*calls: dict[str, Any]) -> AIMessage:
    return AIMessage("", tool_calls=list(calls))


CONFIG: Any = {"configurable": {"thread_id": "hitl"}}


@pytest.fixture(autouse=True)
def runtime() -> Iterator[cra.Runtime]:
    RAN.clear()
    yield cra.configure(atlases=[GITHUB_OPS], store="memory://")
    cra.shutdown()


def agent_with(*script: Any, **options: Any) -> tuple[Any, ScriptedChatModel]:
    model = ScriptedChatModel(script=list(script))
    middleware = CRAMiddleware(agent_id="gh-agent", actions=ACTIONS, **options)
    agent = create_agent(
        model, [read_file, merge_pr], middleware=[middleware], checkpointer=InMemorySaver()
    )
    return agent, model


def events_of(runtime: cra.Runtime) -> list[cra.TraceEvent]:
    (info,) = runtime.sessions()
    return list(runtime.trace_events(info.session_id))


def of_type(events: list[cra.TraceEvent], kind: str) -> list[dict[str, Any]]:
    return [dict(e.payload) for e in events if e.event_type == kind]


class TestBatched:
    """One interrupt per model turn carrying every gated call, answered by one resume."""

    def test_one_interrupt_for_the_turn_in_langchains_shape(self, runtime):
        agent, _ = agent_with(
            turn(read("r1", "A.md"), merge("m1", 7), merge("m2", 8)), AIMessage("Done.")
        )
        result = agent.invoke({"messages": [HumanMessage("Merge 7 and 8")]}, CONFIG)
        (pending,) = result["__interrupt__"]
        value = pending.value
        TypeAdapter(HITLRequest).validate_python(value)  # what LangChain's front ends read
        assert [r["name"] for r in value["action_requests"]] == ["merge_pr", "merge_pr"]
        assert [r["args"]["pr_number"] for r in value["action_requests"]] == [7, 8]
        assert "approve-merge" in value["action_requests"][0]["description"]
        assert value["review_configs"][0] == {
            "action_name": "merge_pr",
            "allowed_decisions": ["approve", "edit", "reject", "respond"],
        }
        assert [f["tool_call_id"] for f in value["cra"]] == ["m1", "m2"]
        assert {f["action_id"] for f in value["cra"]} == {"github.pr.merge"}
        assert value["cra"][0]["session_id"] == runtime.sessions()[0].session_id
        # The pending questions are in the trace while the run waits.
        asked = of_type(events_of(runtime), "approval.requested")
        assert [a["tool_call_id"] for a in asked] == ["m1", "m2"]
        assert asked[0]["policy_id"] == "approve-merge"
        assert asked[0]["risk_tier"] == "high"
        pending_calls = timeline(events_of(runtime)).calls
        assert [c.decision for c in pending_calls] == ["pending", "pending"]

        answer: HITLResponse = {
            "decisions": [{"type": "approve"}, {"type": "reject", "message": "Not before QA."}]
        }
        result = agent.invoke(Command(resume=answer), CONFIG)
        assert sorted(RAN) == [("merge_pr", 7), ("read_file", "A.md")]
        replies = {m.tool_call_id: m for m in result["messages"] if isinstance(m, ToolMessage)}
        assert replies["m2"].status == "error"
        assert "Not before QA." in str(replies["m2"].content)  # the model reads the reason
        events = events_of(runtime)
        (denied,) = of_type(events, "action.denied")
        assert denied["reason"] == "approval_denied"
        assert denied["approver"] == "human"
        assert denied["approval_reason"] == "Not before QA."
        merged = [c for c in timeline(events).calls if c.action_id == "github.pr.merge"]
        # The refusal is recorded at the review, before the approved call runs.
        assert [c.decision for c in merged] == ["denied", "approved"]
        assert all(c.approval_wait_ms is not None and c.approval_wait_ms >= 0 for c in merged)
        assert of_type(events, "approval.requested") == asked  # not asked twice
        assert runtime.verify(runtime.sessions()[0].session_id).valid

    def test_edit_runs_the_persons_call_and_tells_the_model(self, runtime):
        agent, _ = agent_with(turn(merge("m1", 7)), AIMessage("Done."))
        agent.invoke({"messages": [HumanMessage("Merge 7")]}, CONFIG)
        edited = {"repo": "acme/app", "pr_number": 9, "expected_head_sha": SHA}
        answer = {
            "decisions": [{"type": "edit", "edited_action": {"name": "merge_pr", "args": edited}}],
            "approver": "alice",
        }
        result = agent.invoke(Command(resume=answer), CONFIG)
        assert RAN == [("merge_pr", 9)]
        (reply,) = [m for m in result["messages"] if isinstance(m, ToolMessage)]
        assert "changed its arguments" in str(reply.content)
        assert '"pr_number": 9' in str(reply.content)
        assert "merged #9" in str(reply.content)
        events = events_of(runtime)
        (requested,) = of_type(events, "action.requested")
        (approved,) = of_type(events, "action.approved")
        (asked,) = of_type(events, "approval.requested")
        assert approved["approver"] == "alice"
        # The original arguments and the edited ones are both in the record (as digests).
        assert approved["original_parameters_hash"] == asked["parameters_hash"]
        assert requested["parameters_hash"] != asked["parameters_hash"]
        (call,) = timeline(events).calls
        assert call.edited and call.decision == "approved"

    def test_respond_answers_in_the_tools_place(self, runtime):
        agent, _ = agent_with(turn(merge("m1", 7)), AIMessage("Done."))
        agent.invoke({"messages": [HumanMessage("Merge 7")]}, CONFIG)
        answer = {"decisions": [{"type": "respond", "message": "Merged it by hand already."}]}
        result = agent.invoke(Command(resume=answer), CONFIG)
        assert RAN == []
        (reply,) = [m for m in result["messages"] if isinstance(m, ToolMessage)]
        assert reply.status == "success"
        assert reply.content == "Merged it by hand already."
        (denied,) = of_type(events_of(runtime), "action.denied")
        assert denied["reason"] == "approval_responded"
        assert denied["approval_reason"] == "Merged it by hand already."

    @pytest.mark.parametrize(
        "answer",
        [
            "yes please",
            {"decisions": [{"type": "approve"}, {"type": "approve"}]},  # one call asked about
            {"decisions": [{"type": "maybe"}]},
            {"decisions": [{"type": "edit", "edited_action": {"name": "read_file", "args": {}}}]},
            {"decisions": [{"type": "respond"}]},
            {"something": "else"},
        ],
    )
    def test_an_unreadable_answer_raises_and_nothing_runs(self, runtime, answer):
        agent, _ = agent_with(turn(merge("m1", 7)), AIMessage("Done."))
        agent.invoke({"messages": [HumanMessage("Merge 7")]}, CONFIG)
        with pytest.raises(ValidationError, match="INVALID_APPROVAL_ANSWER") as raised:
            agent.invoke(Command(resume=answer), CONFIG)
        assert is_invalid_resume(raised.value)  # LangGraph saved nothing
        assert RAN == []
        assert of_type(events_of(runtime), "action.requested") == []  # nothing decided
        # The run still waits for an answer: a readable one goes on.
        agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), CONFIG)
        assert RAN == [("merge_pr", 7)]

    def test_a_decision_the_review_config_does_not_allow(self, runtime):
        agent, _ = agent_with(
            turn(merge("m1", 7)), AIMessage("Done."), allowed_decisions=["approve", "reject"]
        )
        result = agent.invoke({"messages": [HumanMessage("Merge 7")]}, CONFIG)
        config = result["__interrupt__"][0].value["review_configs"][0]
        assert config["allowed_decisions"] == ["approve", "reject"]
        with pytest.raises(ValidationError, match="not allowed"):
            agent.invoke(
                Command(resume={"decisions": [{"type": "respond", "message": "x"}]}), CONFIG
            )
        assert RAN == []

    def test_async_agent(self, runtime):
        agent, _ = agent_with(turn(merge("m1", 7), merge("m2", 8)), AIMessage("Done."))

        async def run() -> None:
            first = await agent.ainvoke({"messages": [HumanMessage("Merge")]}, CONFIG)
            assert len(first["__interrupt__"][0].value["action_requests"]) == 2
            answer = {"decisions": [{"type": "approve"}, {"type": "approve"}]}
            await agent.ainvoke(Command(resume=answer), CONFIG)

        asyncio.run(run())
        assert sorted(RAN) == [("merge_pr", 7), ("merge_pr", 8)]


class TestPerCall:
    """``interrupt_mode="per_call"``: LangChain's ToolApprovalRequest, one per call."""

    def test_one_interrupt_per_call_resumed_by_id(self, runtime):
        agent, _ = agent_with(
            turn(read("r1", "A.md"), merge("m1", 7), merge("m2", 8)),
            AIMessage("Done."),
            interrupt_mode="per_call",
        )
        result = agent.invoke({"messages": [HumanMessage("Merge 7 and 8")]}, CONFIG)
        pending = result["__interrupt__"]
        assert len(pending) == 2
        for item in pending:
            TypeAdapter(ToolApprovalRequest).validate_python(item.value)
            assert item.value["type"] == "tool_approval"
            assert item.value["cra"]["policy_id"] == "approve-merge"
        assert RAN == [("read_file", "A.md")]  # a call needing no approval ran already
        answers = {
            item.id: (
                {"type": "approve"}
                if item.value["tool_call_id"] == "m1"
                else {"type": "reject", "message": "no"}
            )
            for item in pending
        }
        agent.invoke(Command(resume=answers), CONFIG)
        assert sorted(RAN) == [("merge_pr", 7), ("read_file", "A.md")]
        events = events_of(runtime)
        assert len(of_type(events, "approval.requested")) == 2
        assert len(of_type(events, "action.requested")) == 3
        assert [d["approval_reason"] for d in of_type(events, "action.denied")] == ["no"]


def test_a_reused_tool_call_id_is_a_new_call(runtime):
    """A model that reuses an id for a different call gets it decided and run like any other."""
    agent, _ = agent_with(
        turn(read("c1", "A.md")), turn(read("c1", "B.md")), AIMessage("Read both.")
    )
    agent.invoke({"messages": [HumanMessage("Read A then B")]}, CONFIG)
    assert RAN == [("read_file", "A.md"), ("read_file", "B.md")]
    assert len(of_type(events_of(runtime), "action.executed")) == 2


def test_trace_show_tells_who_answered_and_how_long_it_took(runtime, tmp_path):
    """``cra trace show`` of a LangChain run: the pending call, then the answer and the wait."""
    from cra_agents.cli import main

    store = f"sqlite://{tmp_path}/t.db"
    cra.configure(atlases=[GITHUB_OPS], store=store)
    agent, _ = agent_with(turn(merge("m1", 7)), AIMessage("Done."))
    agent.invoke({"messages": [HumanMessage("Merge 7")]}, CONFIG)
    cra.get_runtime().flush()

    def show() -> str:
        out = io.StringIO()
        import contextlib

        with contextlib.redirect_stdout(out):
            assert main(["trace", "show", "last", "--store", store, "--no-color"]) == 0
        return out.getvalue()

    assert "waiting for a person" in show()
    answer = {"decisions": [{"type": "reject", "message": "QA first"}], "approver": "bob"}
    agent.invoke(Command(resume=answer), CONFIG)
    cra.get_runtime().flush()
    text = show()
    assert "by bob" in text
    assert "QA first" in text
    assert " s" in text.split("by bob", 1)[1]  # "after N.N s"


def test_per_call_unreadable_answer_is_not_swallowed_by_the_tool_node(runtime):
    """In a tool task, LangGraph's ToolNode re-raises an invalid resume: nothing runs."""
    agent, _ = agent_with(turn(merge("m1", 7)), AIMessage("Done."), interrupt_mode="per_call")
    agent.invoke({"messages": [HumanMessage("Merge 7")]}, CONFIG)
    with pytest.raises(ValidationError, match="INVALID_APPROVAL_ANSWER"):
        agent.invoke(Command(resume={"type": "perhaps"}), CONFIG)
    assert RAN == []
    agent.invoke(Command(resume={"type": "approve", "approver": "carol"}), CONFIG)
    assert RAN == [("merge_pr", 7)]
    (approved,) = of_type(events_of(runtime), "action.approved")
    assert approved["approver"] == "carol"


class TestBesideHumanInTheLoopMiddleware:
    """With ``reviewed_by=`` the person answers LangChain's middleware once, not ours again."""

    @staticmethod
    def agent(order: str, mode: Literal["batched", "per_call"] = "batched") -> Any:
        hitl = HumanInTheLoopMiddleware(interrupt_on={"merge_pr": True}, interrupt_mode=mode)
        cra_middleware = CRAMiddleware(agent_id="gh-agent", actions=ACTIONS, reviewed_by=hitl)
        middleware: list[Any] = (
            [hitl, cra_middleware] if order == "hitl-first" else [cra_middleware, hitl]
        )
        model = ScriptedChatModel(
            script=[turn(read("r1", "A.md"), merge("m1", 7)), AIMessage("ok")]
        )
        return create_agent(
            model, [read_file, merge_pr], middleware=middleware, checkpointer=InMemorySaver()
        )

    @pytest.mark.parametrize("order", ["hitl-first", "cra-first"])
    def test_approved_there_is_not_asked_again(self, runtime, order):
        agent = self.agent(order)
        first = agent.invoke({"messages": [HumanMessage("Merge 7")]}, CONFIG)
        (pending,) = first["__interrupt__"]
        assert "cra" not in pending.value  # LangChain's own request, not ours
        result = agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), CONFIG)
        assert "__interrupt__" not in result  # not asked a second time
        assert sorted(RAN) == [("merge_pr", 7), ("read_file", "A.md")]
        events = events_of(runtime)
        assert of_type(events, "approval.requested") == []
        merged = [a for a in of_type(events, "action.approved") if "approver" in a]
        assert [(a["approver"], a["approval_reason"]) for a in merged] == [
            ("human", "reviewed in HumanInTheLoopMiddleware")
        ]

    @pytest.mark.parametrize("order", ["hitl-first", "cra-first"])
    def test_an_edit_there_is_decided_as_it_runs(self, runtime, order):
        agent = self.agent(order)
        agent.invoke({"messages": [HumanMessage("Merge 7")]}, CONFIG)
        edited = {"repo": "acme/app", "pr_number": 9, "expected_head_sha": SHA}
        decision = {"type": "edit", "edited_action": {"name": "merge_pr", "args": edited}}
        agent.invoke(Command(resume={"decisions": [decision]}), CONFIG)
        assert ("merge_pr", 9) in RAN
        events = events_of(runtime)
        (approved,) = [a for a in of_type(events, "action.approved") if "approver" in a]
        assert "original_parameters_hash" in approved
        merge_requested = [
            r for r in of_type(events, "action.requested") if r["action_id"] == "github.pr.merge"
        ]
        assert merge_requested[0]["parameters_hash"] != approved["original_parameters_hash"]

    @pytest.mark.parametrize("order", ["hitl-first", "cra-first"])
    def test_a_rejection_there_is_recorded(self, runtime, order):
        agent = self.agent(order)
        agent.invoke({"messages": [HumanMessage("Merge 7")]}, CONFIG)
        answer = {"decisions": [{"type": "reject", "message": "after the freeze"}]}
        agent.invoke(Command(resume=answer), CONFIG)
        assert RAN == [("read_file", "A.md")]
        (denied,) = of_type(events_of(runtime), "action.denied")
        assert denied["reason"] == "approval_denied"
        assert "after the freeze" in denied["approval_reason"]

    def test_per_call_with_langchains_middleware_first(self, runtime):
        agent = self.agent("hitl-first", mode="per_call")
        first = agent.invoke({"messages": [HumanMessage("Merge 7")]}, CONFIG)
        (pending,) = first["__interrupt__"]
        assert pending.value["type"] == "tool_approval" and "cra" not in pending.value
        result = agent.invoke(Command(resume={pending.id: {"type": "approve"}}), CONFIG)
        assert "__interrupt__" not in result
        assert sorted(RAN) == [("merge_pr", 7), ("read_file", "A.md")]

    def test_without_reviewed_by_both_ask(self, runtime):
        """The default: each middleware asks for what it gates (documented)."""
        hitl: Any = HumanInTheLoopMiddleware(interrupt_on={"merge_pr": True})
        model = ScriptedChatModel(script=[turn(merge("m1", 7)), AIMessage("ok")])
        agent = create_agent(
            model,
            [read_file, merge_pr],
            middleware=[CRAMiddleware(agent_id="gh-agent", actions=ACTIONS), hitl],
            checkpointer=InMemorySaver(),
        )
        first = agent.invoke({"messages": [HumanMessage("Merge 7")]}, CONFIG)
        second = agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), CONFIG)
        assert "__interrupt__" in first and "__interrupt__" in second
