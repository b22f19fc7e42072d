"""CRAMiddleware in a real create_agent loop, offline (scripted model, in-memory checkpointer)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents_langchain import CRAMiddleware
from cra_agents_langchain.testing import ScriptedChatModel, ScriptError

GITHUB_OPS = atlas_path("github-ops")
SHA = "a" * 40
ACTIONS = {
    "read_file": "github.file.read",
    "delete_repo": "github.repo.delete",
    "merge_pr": "github.pr.merge",
    "comment": "github.issue.comment",
}
RAN: list[tuple[str, Any]] = []
THREADS: set[int] = set()


@tool
def read_file(repo: str, path: str) -> str:
    """Read a file of a repository."""
    RAN.append(("read_file", path))
    THREADS.add(threading.get_ident())
    return f"contents of {path}"


@tool
def delete_repo(repo: str, confirm_name: str) -> str:
    """Delete a repository."""
    RAN.append(("delete_repo", repo))
    return "deleted"


@tool
def merge_pr(repo: str, pr_number: int, expected_head_sha: str) -> str:
    """Merge a pull request."""
    RAN.append(("merge_pr", pr_number))
    return f"merged #{pr_number}"


@tool
def comment(repo: str, issue_number: int, body: str) -> str:
    """Comment on an issue."""
    raise RuntimeError("GitHub is down")


TOOLS = [read_file, delete_repo, merge_pr, comment]


def call(name: str, call_id: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id}


def turn(*calls: dict[str, Any]) -> AIMessage:
    return AIMessage("", tool_calls=list(calls))


@pytest.fixture(autouse=True)
def runtime() -> Iterator[cra.Runtime]:
    RAN.clear()
    THREADS.clear()
    yield cra.configure(atlases=[GITHUB_OPS], store="memory://")
    cra.shutdown()


def agent_with(*script: Any) -> tuple[Any, ScriptedChatModel]:
    model = ScriptedChatModel(script=list(script))
    middleware = CRAMiddleware(agent_id="gh-agent", actions=ACTIONS)
    return (
        create_agent(model, TOOLS, middleware=[middleware], checkpointer=InMemorySaver()),
        model,
    )


def only_session(runtime: cra.Runtime) -> cra.SessionInfo:
    (info,) = runtime.sessions()
    return info


def types(runtime: cra.Runtime, session_id: str) -> list[str]:
    return [e.event_type for e in runtime.trace_events(session_id)]


CONFIG = {"configurable": {"thread_id": "t1"}}


def test_allowed_runs_and_denied_never_runs(runtime):
    """The allowed result reaches the model; the denied tool never runs; the model is told why."""
    agent, model = agent_with(
        turn(
            call("read_file", "c1", repo="acme/app", path="README.md"),
            call("delete_repo", "c2", repo="acme/app", confirm_name="acme/app"),
        ),
        AIMessage("All done."),
    )
    out = agent.invoke({"messages": [HumanMessage("Tidy up acme/app")]}, CONFIG)
    assert RAN == [("read_file", "README.md")]
    tool_messages = {m.tool_call_id: m for m in model.calls[1] if isinstance(m, ToolMessage)}
    assert tool_messages["c1"].content == "contents of README.md"
    assert tool_messages["c2"].status == "error"
    assert "deny-repo-delete" in str(tool_messages["c2"].content)
    assert out["messages"][-1].content == "All done."
    info = only_session(runtime)
    started = runtime.trace_events(info.session_id)[0]
    assert started.payload["metadata"] == {"langgraph_thread_id": "t1"}
    assert info.goal == "Tidy up acme/app"
    assert info.agent_id == "gh-agent"
    assert not info.active
    events = types(runtime, info.session_id)
    assert events.count("action.executed") == 1
    assert events.count("action.denied") == 1
    assert events[-1] == "session.ended"
    requested = [
        e.payload.get("tool_call_id")
        for e in runtime.trace_events(info.session_id)
        if e.event_type == "action.requested"
    ]
    assert sorted(requested) == ["c1", "c2"]
    assert runtime.verify(info.session_id).valid


@pytest.mark.parametrize(
    ("answer", "ran", "outcome"),
    [
        ({"decisions": [{"type": "approve"}]}, [("merge_pr", 7)], "action.executed"),
        ({"decision": "approve", "approver": "alice"}, [("merge_pr", 7)], "action.executed"),
        (True, [("merge_pr", 7)], "action.executed"),
        ({"type": "reject", "message": "not now"}, [], "action.denied"),
        ({"decision": "reject", "reason": "not now"}, [], "action.denied"),
        (False, [], "action.denied"),
        (
            {
                "decisions": [
                    {
                        "type": "edit",
                        "edited_action": {
                            "name": "merge_pr",
                            "args": {"repo": "acme/app", "pr_number": 8, "expected_head_sha": SHA},
                        },
                    }
                ]
            },
            [("merge_pr", 8)],
            "action.executed",
        ),
        (
            {
                "decision": "edit",
                "args": {"repo": "acme/app", "pr_number": 8, "expected_head_sha": SHA},
            },
            [("merge_pr", 8)],
            "action.executed",
        ),
        (
            {
                "decision": "edit",
                "args": {"repo": "not a repo", "pr_number": 8, "expected_head_sha": SHA},
            },
            [],
            "action.denied",
        ),
    ],
)
def test_approval_interrupt_and_resume(runtime, answer, ran, outcome):
    """Needs approval → one interrupt for the turn; approve runs once, reject never, edit is
    decided again; LangChain's answers and this package's earlier ones are both read."""
    agent, _ = agent_with(
        turn(
            call("read_file", "c1", repo="acme/app", path="README.md"),
            call("merge_pr", "c2", repo="acme/app", pr_number=7, expected_head_sha=SHA),
        ),
        AIMessage("Finished."),
    )
    first = agent.invoke({"messages": [HumanMessage("Merge PR 7")]}, CONFIG)
    (pending,) = first["__interrupt__"]
    (request,) = pending.value["action_requests"]
    assert request["name"] == "merge_pr"
    assert request["args"]["pr_number"] == 7
    (facts,) = pending.value["cra"]
    assert facts["action_id"] == "github.pr.merge"
    assert facts["risk_tier"] == "high"
    assert facts["policy_id"] == "approve-merge"
    assert RAN == []  # the whole turn waits for the review, as with LangChain's middleware
    assert only_session(runtime).active  # the run waits: its session stays open
    agent.invoke(Command(resume=answer), CONFIG)
    assert sorted([("read_file", "README.md"), *ran]) == sorted(RAN)  # nothing ran twice
    info = only_session(runtime)
    events = runtime.trace_events(info.session_id)
    kinds = [e.event_type for e in events]
    assert kinds.count("approval.requested") == 1  # asked once, though the node ran twice
    assert kinds.count("action.requested") == 2  # the resume recorded nothing twice
    assert kinds.count("action.executed") == 1 + (outcome == "action.executed")
    last_merge = [e for e in events if e.payload.get("action_id") == "github.pr.merge"][-1]
    assert last_merge.event_type == outcome
    if answer == {"decision": "approve", "approver": "alice"}:
        (approved,) = [  # the two calls of the turn run in parallel: pick the merge's
            e
            for e in events
            if e.event_type == "action.approved" and e.payload.get("action_id") == "github.pr.merge"
        ]
        assert approved.payload["approver"] == "alice"
    assert kinds[-1] == "session.ended"  # the resumed run ended the session it kept
    assert not info.active
    assert runtime.verify(info.session_id).valid


def test_parallel_calls_and_a_failing_tool(runtime):
    """Parallel calls in one turn keep the chain valid; a crash is recorded as action.failed."""
    calls = [call("read_file", f"c{i}", repo="acme/app", path=f"f{i}.md") for i in range(6)]
    agent, _ = agent_with(
        turn(*calls, call("comment", "boom", repo="acme/app", issue_number=1, body="hi")),
        AIMessage("ok"),
    )
    with pytest.raises(RuntimeError, match="GitHub is down"):  # ToolNode re-raises it
        agent.invoke({"messages": [HumanMessage("Read everything")]}, CONFIG)
    assert sorted(p for _, p in RAN) == [f"f{i}.md" for i in range(6)]
    info = only_session(runtime)
    kinds = types(runtime, info.session_id)
    assert kinds.count("action.executed") == 6
    assert kinds.count("action.failed") == 1
    assert runtime.verify(info.session_id).valid


class TestSessionLifecycle:
    """One session per run, opened and ended from wrap_model_call: no graph node of its own."""

    def test_the_graph_has_no_session_node(self):
        """before_agent / after_agent would each add a node to every run; there is none.

        The batched review is one node (after_model), as LangChain's own middleware's;
        ``interrupt_mode="per_call"`` adds none.
        """
        agent, _ = agent_with()
        assert set(agent.nodes) == {"__start__", "model", "tools", "CRAMiddleware.after_model"}
        per_call = CRAMiddleware(agent_id="gh-agent", interrupt_mode="per_call")
        model = ScriptedChatModel(script=[])
        assert set(create_agent(model, TOOLS, middleware=[per_call]).nodes) == {
            "__start__",
            "model",
            "tools",
        }

    def test_each_run_of_a_thread_is_a_session_that_ends(self, runtime):
        """Two runs on one thread: two sessions, each ended, the state cleared between them."""
        agent, _ = agent_with(
            turn(call("read_file", "r1", repo="acme/app", path="A.md")),
            AIMessage("first"),
            turn(call("read_file", "r2", repo="acme/app", path="B.md")),
            AIMessage("second"),
        )
        agent.invoke({"messages": [HumanMessage("Read A")]}, CONFIG)
        assert agent.get_state(CONFIG).values.get("cra_session_id") is None
        agent.invoke({"messages": [HumanMessage("Read B")]}, CONFIG)
        first, second = runtime.sessions()
        for info in (first, second):
            events = types(runtime, info.session_id)
            assert events[0] == "session.started"
            assert events.count("action.executed") == 1
            assert events[-1] == "session.ended"
            assert not info.active

    def test_a_run_without_tool_calls_is_a_session_too(self, runtime):
        """A reply without tool calls at once: the session opens and ends with it."""
        agent, _ = agent_with(AIMessage("Nothing to do."))
        agent.invoke({"messages": [HumanMessage("Hello")]}, CONFIG)
        info = only_session(runtime)
        events = types(runtime, info.session_id)
        assert (events[0], events[-1]) == ("session.started", "session.ended")
        assert not [e for e in events if e.startswith("action.")]

    def test_a_failed_first_model_call_ends_the_session_it_opened(self, runtime):
        """The session opens before the first model call; if that call fails it ends (error)."""

        def fail(messages: Any) -> AIMessage:
            raise RuntimeError("model down")

        agent, _ = agent_with(fail)
        with pytest.raises(RuntimeError, match="model down"):
            agent.invoke({"messages": [HumanMessage("Hello")]}, CONFIG)
        info = only_session(runtime)
        assert not info.active
        events = runtime.trace_events(info.session_id)
        assert (events[0].event_type, events[-1].event_type) == ("session.started", "session.ended")
        assert not [e for e in events if e.event_type.startswith("action.")]
        assert events[-1].payload["reason"] == "error"
        assert "model down" in events[-1].payload["error"]

    def test_a_failed_later_model_call_leaves_the_run_session_open(self, runtime):
        """A model call that fails after the session was opened by an earlier one ends nothing.

        The run failed, not the session: with a checkpointer the next run on the thread goes
        on recording into it.
        """

        def fail(messages: Any) -> AIMessage:
            raise RuntimeError("model down")

        agent, _ = agent_with(turn(call("read_file", "f1", repo="acme/app", path="A.md")), fail)
        with pytest.raises(RuntimeError, match="model down"):
            agent.invoke({"messages": [HumanMessage("Read A")]}, CONFIG)
        info = only_session(runtime)
        assert info.active
        assert agent.get_state(CONFIG).values["cra_session_id"] == info.session_id

    def test_async_failed_first_model_call_ends_the_session_it_opened(self, runtime):
        """awrap_model_call: the same as the sync path."""

        def fail(messages: Any) -> AIMessage:
            raise RuntimeError("model down")

        agent, _ = agent_with(fail)
        with pytest.raises(RuntimeError, match="model down"):
            asyncio.run(agent.ainvoke({"messages": [HumanMessage("Hello")]}, CONFIG))
        info = only_session(runtime)
        assert not info.active
        assert runtime.trace_events(info.session_id)[-1].payload["reason"] == "error"

    def test_inside_a_cra_session_the_run_records_there_and_leaves_it_open(self, runtime):
        """The caller's session is used, not ended; the next run outside it gets its own."""
        agent, _ = agent_with(
            turn(call("read_file", "s1", repo="acme/app", path="A.md")),
            AIMessage("done"),
            AIMessage("done again"),
        )
        with cra.session(agent_id="caller", goal="Caller's work") as active:
            agent.invoke({"messages": [HumanMessage("Read A")]}, CONFIG)
            assert runtime.session(active.session_id).active
        events = types(runtime, active.session_id)
        assert events.count("action.executed") == 1
        assert events[-1] == "session.ended"  # ended by the caller's block
        agent.invoke({"messages": [HumanMessage("Again")]}, CONFIG)
        assert [s.agent_id for s in runtime.sessions()] == ["caller", "gh-agent"]

    def test_a_run_that_ends_with_return_direct_tools_ends_its_session(self, runtime):
        """No reply follows a return_direct tool: the session ends after the tool call."""

        @tool(return_direct=True)
        def read_file(repo: str, path: str) -> str:
            """Read a file of a repository."""
            return f"contents of {path}"

        model = ScriptedChatModel(
            script=[
                turn(call("read_file", "d1", repo="acme/app", path="A.md")),
                turn(call("read_file", "d2", repo="acme/app", path="B.md")),
            ]
        )
        middleware = CRAMiddleware(agent_id="gh-agent", actions=ACTIONS)
        agent: Any = create_agent(
            model, [read_file], middleware=[middleware], checkpointer=InMemorySaver()
        )
        out = agent.invoke({"messages": [HumanMessage("Read A")]}, CONFIG)
        assert out["messages"][-1].content == "contents of A.md"
        first = only_session(runtime)
        assert not first.active
        assert types(runtime, first.session_id)[-1] == "session.ended"
        # The state still names the ended session: the next run opens a new one.
        agent.invoke({"messages": [HumanMessage("Read B")]}, CONFIG)
        second = runtime.sessions()[-1]
        assert second.session_id != first.session_id
        assert types(runtime, second.session_id).count("action.executed") == 1
        assert not second.active


class TestRunEnd:
    """_run_end mirrors how create_agent's edges leave the loop after a model reply."""

    @staticmethod
    def request(*tools: Any) -> Any:
        from langchain.agents.middleware import ModelRequest

        return ModelRequest(
            model=ScriptedChatModel(script=[]),
            messages=[],
            system_message=None,
            tool_choice=None,
            tools=list(tools),
            response_format=None,
            state={"messages": []},
            runtime=None,
        )

    def test_replies(self):
        from langchain.agents.middleware import ModelResponse

        from cra_agents_langchain._middleware import _run_end

        @tool(return_direct=True)
        def direct(x: str) -> str:
            """Direct."""
            return x

        plain = self.request(read_file, direct)
        reply = turn(call("read_file", "a"), call("direct", "b"))
        assert _run_end(plain, ModelResponse(result=[AIMessage("bye")])) == frozenset()
        assert _run_end(plain, ModelResponse(result=[])) == frozenset()
        assert _run_end(plain, ModelResponse(result=[reply])) is None
        only_direct = turn(call("direct", "b"))
        assert _run_end(plain, ModelResponse(result=[only_direct])) == frozenset({"b"})
        structured = ModelResponse(
            result=[reply, ToolMessage("ok", tool_call_id="b")], structured_response={"x": 1}
        )
        assert _run_end(plain, structured) == frozenset({"a"})
        answered = ModelResponse(result=[reply, ToolMessage("ok", tool_call_id="a")])
        assert _run_end(plain, answered) is None  # back to the model (injected answers)


class TestFrozenRequest:
    """The request the tool gets is ToolCallRequest.override(...) with the decided arguments."""

    @staticmethod
    def request(cls: Any) -> Any:
        return cls(
            tool_call={"name": "read_file", "args": {"path": "A"}, "id": "f1", "type": "tool_call"},
            tool=read_file,
            state={"messages": [], "cra_session_id": "s"},
            runtime=None,
        )

    def test_same_as_override(self):
        from langchain.agents.middleware import ToolCallRequest

        from cra_agents_langchain._middleware import _frozen

        request = self.request(ToolCallRequest)
        decided = {"path": "A", "repo": "r"}
        frozen = _frozen(request, decided)
        assert frozen == request.override(tool_call={**request.tool_call, "args": decided})
        assert frozen.tool_call["args"] is decided
        assert request.tool_call["args"] == {"path": "A"}  # the model's request is untouched

    def test_a_subclass_takes_override(self):
        from langchain.agents.middleware import ToolCallRequest

        from cra_agents_langchain._middleware import _frozen

        class Custom(ToolCallRequest):
            pass

        frozen = _frozen(self.request(Custom), {"path": "B"})
        assert type(frozen) is Custom
        assert frozen.tool_call["args"] == {"path": "B"}


def test_async_invoke_and_stream(runtime):
    """ainvoke and astream go through awrap_tool_call with the same outcome."""

    async def run() -> list[Any]:
        agent, _ = agent_with(
            turn(call("read_file", "a1", repo="acme/app", path="A.md")),
            AIMessage("first done"),
            turn(call("delete_repo", "a2", repo="acme/app", confirm_name="acme/app")),
            AIMessage("second done"),
        )
        await agent.ainvoke(
            {"messages": [HumanMessage("one")]}, {"configurable": {"thread_id": "a"}}
        )
        chunks = [
            chunk
            async for chunk in agent.astream(
                {"messages": [HumanMessage("two")]},
                {"configurable": {"thread_id": "b"}},
                stream_mode="updates",
            )
        ]
        return chunks

    chunks = asyncio.run(run())
    assert chunks
    assert RAN == [("read_file", "A.md")]
    sessions = runtime.sessions()
    assert len(sessions) == 2
    assert all(runtime.verify(s.session_id).valid for s in sessions)
    assert [not s.active for s in sessions] == [True, True]


def test_scripted_model_runs_out():
    model = ScriptedChatModel(script=[AIMessage("only one")])
    assert model.invoke("hi").content == "only one"
    assert model.remaining == 0
    with pytest.raises(ScriptError, match="all were used"):
        model.invoke("again")


def test_scripted_model_streams_and_computes_replies():
    model = ScriptedChatModel(
        script=[
            lambda messages: AIMessage(f"you said {messages[-1].content}"),
            turn(call("read_file", "s1", repo="a/b", path="x")),
        ]
    )
    text = "".join(str(chunk.content) for chunk in model.stream("hello there"))
    assert text == "you said hello there"
    merged = None
    for chunk in model.stream("next"):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None
    assert merged.tool_calls[0]["args"] == {"repo": "a/b", "path": "x"}


def test_the_example_agent_runs(capsys):
    """examples/langchain_agent.py (part of `make demo`) ends with a valid chain."""
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "examples" / "langchain_agent.py"
    spec = importlib.util.spec_from_file_location("langchain_agent_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main() == 0
    out = capsys.readouterr().out
    assert "tool DENIED  delete_repo" in out
    assert "approver=alice" in out
    assert "chain VALID" in out


def test_tool_calls_become_spans_linked_to_the_chain():
    """With otel=..., middleware calls produce execute_tool spans whose links verify."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from cra_agents import semconv as sc
    from cra_agents.otel import ExportedSpan, verify_spans

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runtime = cra.configure(atlases=[GITHUB_OPS], store="memory://", otel=provider)
    agent, _ = agent_with(
        turn(
            call("read_file", "s1", repo="acme/app", path="README.md"),
            call("delete_repo", "s2", repo="acme/app", confirm_name="acme/app"),
        ),
        turn(call("comment", "s3", repo="acme/app", issue_number=1, body="hi")),
    )
    with pytest.raises(RuntimeError):
        agent.invoke({"messages": [HumanMessage("Spans")]}, CONFIG)
    runtime.flush()
    spans = {
        str(attributes[sc.GEN_AI_TOOL_CALL_ID]): attributes
        for attributes in (dict(s.attributes or {}) for s in exporter.get_finished_spans())
        if sc.GEN_AI_TOOL_CALL_ID in attributes
    }
    assert set(spans) == {"s1", "s2", "s3"}
    assert spans["s1"][sc.GEN_AI_TOOL_NAME] == "read_file"
    assert spans["s1"][sc.CRA_OUTCOME] == "executed"
    assert spans["s2"][sc.ERROR_TYPE] == sc.POLICY_DENIED
    assert spans["s3"][sc.CRA_OUTCOME] == "failed"
    exported = [ExportedSpan("execute_tool", "t", "s", None, a) for a in spans.values()]
    report = verify_spans(exported, runtime)
    assert report.valid
    assert report.checked_links == 5  # three decisions, two outcomes
