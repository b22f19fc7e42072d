"""The gate's rules hold alike for @guarded, CRAMiddleware, guard_tool and CARP execute.

Every adapter is a shell over ``Runtime.call``; each rule below runs through each adapter that
can exercise it, the way its users call it (a real ``create_agent`` loop for the middleware,
``tool.invoke`` for guarded LangChain tools, ``Runtime.execute`` for CARP).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import StructuredTool, ToolException
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

import cra_agents as cra
from cra_agents_langchain import CRAMiddleware, ToolDeniedError, guard_tool
from cra_agents_langchain.testing import ScriptedChatModel

_STRING = {"type": "string"}
RULES_ATLAS: dict[str, Any] = {
    "atlas_version": "1.0",
    "atlas_id": "com.example.rules",
    "version": "1.0.0",
    "name": "Gate rules",
    "description": "Actions that exercise every rule of the call gate.",
    "actions": [
        {
            "action_id": "ops.deploy.run",
            "name": "Deploy",
            "description": "Deploy a service (approval and a rate limit).",
            "parameters_schema": {
                "type": "object",
                "properties": {"service": _STRING},
                "required": ["service"],
            },
            "risk_tier": "low",
        },
        {
            "action_id": "ops.db.drop",
            "name": "Drop database",
            "description": "Drop a database (declared high risk).",
            "parameters_schema": {"type": "object", "properties": {"name": _STRING}},
            "risk_tier": "high",
        },
        {
            "action_id": "ops.note.write",
            "name": "Write note",
            "description": "Write a note, optionally on a ref.",
            "parameters_schema": {
                "type": "object",
                "properties": {"text": _STRING, "ref": _STRING, "tags": {"type": "array"}},
                "required": ["text"],
            },
            "risk_tier": "low",
        },
        {
            "action_id": "ops.stats.read",
            "name": "Read stats",
            "description": "Read statistics (rate limited, no approval).",
            "parameters_schema": {"type": "object", "properties": {"day": _STRING}},
            "risk_tier": "low",
        },
    ],
    "policies": [
        {
            "policy_id": "approve-deploy",
            "name": "Approve deploys",
            "type": "require_approval",
            "actions": ["ops.deploy.run"],
        },
        {
            "policy_id": "approve-high-risk",
            "name": "Approve high-risk work",
            "type": "require_approval",
            "actions": ["ops.*"],
            "conditions": {"risk_tiers": ["high", "critical"]},
        },
        {
            "policy_id": "deploy-once-an-hour",
            "name": "One deploy an hour",
            "type": "rate_limit",
            "actions": ["ops.deploy.run", "ops.stats.read"],
            "parameters": {"max_calls": 1, "window_seconds": 3600},
        },
    ],
}
RAN: list[tuple[str, Any]] = []


def _approve(request: cra.ApprovalRequest) -> cra.ApprovalDecision:
    return cra.ApprovalDecision(True, "alice", "looks fine")


@pytest.fixture
def runtime() -> Iterator[cra.Runtime]:
    RAN.clear()
    yield cra.configure(atlases=[RULES_ATLAS], store="memory://", approvals=_approve)
    cra.shutdown()


# -- the tools, as each adapter's users write them ---------------------------------------------


def deploy(service: str) -> str:
    """Deploy a service."""
    RAN.append(("deploy", service))
    return f"deployed {service}"


def drop(name: str) -> str:
    """Drop a database."""
    RAN.append(("drop", name))
    return f"dropped {name}"


def write_note(text: str, ref: str | None = None, tags: Any = None) -> str:
    """Write a note."""
    RAN.append(("note", {"text": text, "ref": ref, "tags": tags}))
    return "noted"


def read_stats(day: str) -> str:
    """Read statistics."""
    RAN.append(("stats", day))
    return "42"


TOOLS: dict[str, Callable[..., Any]] = {
    "deploy": deploy,
    "drop": drop,
    "write_note": write_note,
    "read_stats": read_stats,
}
ACTIONS = {
    "deploy": "ops.deploy.run",
    "drop": "ops.db.drop",
    "write_note": "ops.note.write",
    "read_stats": "ops.stats.read",
}


def _events(runtime: cra.Runtime, session_id: str) -> list[str]:
    return [e.event_type for e in runtime.trace_events(session_id)]


def _denials(runtime: cra.Runtime, session_id: str) -> list[tuple[str, str]]:
    return [
        (e.payload["policy_id"], e.payload["reason"])
        for e in runtime.trace_events(session_id)
        if e.event_type == "action.denied"
    ]


class Outcome:
    """What one call through an adapter came to."""

    def __init__(self, ran: bool, refused: str | None = None) -> None:
        self.ran = ran
        #: The refusal's policy/reason text, when refused.
        self.refused = refused


def via_guarded(runtime: cra.Runtime, tool: str, args: dict[str, Any]) -> Outcome:
    guarded = cra.guarded(ACTIONS[tool])(TOOLS[tool])
    try:
        guarded(**args)
    except (cra.ActionDeniedError, cra.InvalidParametersError) as exc:
        details = exc.details
        return Outcome(False, f"{details.get('policy_id')}: {details.get('reason')} {exc}")
    return Outcome(True)


def via_guard_tool(runtime: cra.Runtime, tool: str, args: dict[str, Any]) -> Outcome:
    wrapped = guard_tool(StructuredTool.from_function(TOOLS[tool]), actions=ACTIONS)
    before = len(RAN)
    try:
        # A refusal is a ToolDeniedError that handle_tool_error turns into the output.
        output = wrapped.invoke(args)
    except ToolDeniedError as exc:  # pragma: no cover - handle_tool_error answers instead
        return Outcome(False, str(exc))
    if len(RAN) == before:
        return Outcome(False, str(output))
    return Outcome(True)


def via_middleware(runtime: cra.Runtime, tool: str, args: dict[str, Any]) -> Outcome:
    """A create_agent run whose model asks for the tool once; interrupts are approved."""
    model = ScriptedChatModel(
        script=[
            AIMessage("", tool_calls=[{"name": tool, "args": args, "id": "call-1"}]),
            AIMessage("done"),
        ]
    )
    agent = create_agent(
        model,
        [StructuredTool.from_function(f) for f in TOOLS.values()],
        middleware=[CRAMiddleware(agent_id="ops-agent", actions=ACTIONS)],
        checkpointer=InMemorySaver(),
    )
    config: RunnableConfig = {"configurable": {"thread_id": f"t-{time.monotonic_ns()}"}}
    out = agent.invoke({"messages": [HumanMessage("go")]}, config)
    while out.get("__interrupt__"):
        out = agent.invoke(Command(resume={"decision": "approve", "approver": "alice"}), config)
    answer = next(m for m in model.calls[-1] if isinstance(m, ToolMessage))
    if answer.status == "error":
        return Outcome(False, str(answer.content))
    return Outcome(True)


def via_execute(runtime: cra.Runtime, tool: str, args: dict[str, Any]) -> Outcome:
    """CARP: resolve (stated risk low), then execute the action."""
    session = cra.current_session()
    assert session is not None
    info = session.info
    resolution = runtime.resolve(cra.resolve_request(info, "operate"))
    request = cra.execute_request(info, resolution.resolution_id, ACTIONS[tool], args)
    try:
        runtime.execute(request)
    except (cra.ActionDeniedError, cra.ApprovalRequiredError, cra.InvalidParametersError) as exc:
        return Outcome(False, f"{exc.details.get('policy_id')}: {exc.code} {exc.message}")
    RAN.append((tool, "executed"))
    return Outcome(True)


Adapter = Callable[[cra.Runtime, str, dict[str, Any]], Outcome]
ADAPTERS: dict[str, Adapter] = {
    "guarded": via_guarded,
    "guard_tool": via_guard_tool,
    "middleware": via_middleware,
    "execute": via_execute,
}


def _session_of_last_call(runtime: cra.Runtime) -> str:
    return runtime.sessions()[-1].session_id


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_approval_does_not_skip_later_phases(runtime, adapter):
    """An approved call still takes a rate-limit slot; the next one is refused."""
    run = ADAPTERS[adapter]
    with cra.session(agent_id="ops-bot", goal="Deploy twice"):
        tool = "read_stats" if adapter == "execute" else "deploy"  # execute cannot be approved
        args = {"day": "mon"} if tool == "read_stats" else {"service": "api"}
        first = run(runtime, tool, args)
        second = run(runtime, tool, args)
    assert first.ran, first.refused
    assert not second.ran
    assert "deploy-once-an-hour" in (second.refused or "")
    session_id = _session_of_last_call(runtime)
    if adapter == "middleware":  # each agent run is a session of its own: check the last one
        assert ("deploy-once-an-hour", "rate_limit_exceeded") in _denials(runtime, session_id)
    assert len(RAN) == 1


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_risk_tier_is_the_higher_of_stated_and_declared(runtime, adapter):
    """A high-risk action needs approval even when the requester states low risk."""
    seen: list[str] = []

    def record(request: cra.ApprovalRequest) -> cra.ApprovalDecision:
        seen.append(request.risk_tier)
        return cra.ApprovalDecision(False, "bob", "approval_denied")

    runtime.approval_handler = record
    with cra.session(agent_id="ops-bot", goal="Drop a database"):
        outcome = ADAPTERS[adapter](runtime, "drop", {"name": "scratch"})
    if adapter == "middleware":  # the person was asked through the interrupt, and approved
        assert outcome.ran
        events = runtime.trace_events(_session_of_last_call(runtime))
        approved = next(e for e in events if e.event_type == "action.approved")
        assert (approved.payload["policy_id"], approved.payload["approver"]) == (
            "approve-high-risk",
            "alice",
        )
    elif adapter == "execute":  # the resolution said low; execute decides on high
        assert not outcome.ran
        assert "approve-high-risk" in (outcome.refused or "")
        assert "ACTION_REQUIRES_APPROVAL" in (outcome.refused or "")
    else:
        assert not outcome.ran
        assert seen == ["high"]
        assert "approve-high-risk" in (outcome.refused or "")


@pytest.mark.parametrize("adapter", ["guarded", "guard_tool", "middleware"])
def test_none_defaults_are_not_sent(runtime, adapter):
    """``ref: str | None = None`` left out is not decided on as ``None`` (schema: string)."""
    with cra.session(agent_id="ops-bot", goal="Write a note"):
        outcome = ADAPTERS[adapter](runtime, "write_note", {"text": "hello"})
    assert outcome.ran, outcome.refused
    assert RAN == [("note", {"text": "hello", "ref": None, "tags": None})]


@pytest.mark.parametrize("adapter", ["guarded", "guard_tool", "middleware"])
def test_tool_gets_arguments_rebuilt_from_the_decided_json(runtime, adapter):
    """Whatever was passed, the tool gets plain JSON values: tuples arrive as lists."""

    class Sneaky(list[Any]):
        def __deepcopy__(self, memo: Any) -> Any:
            return ["swapped"]

        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = None

    args: dict[str, Any] = {"text": "hi", "tags": ("a", "b")}
    if adapter == "guarded":
        args["tags"] = Sneaky(["a", "b"])
    with cra.session(agent_id="ops-bot", goal="Write a note"):
        outcome = ADAPTERS[adapter](runtime, "write_note", args)
    assert outcome.ran, outcome.refused
    ((_, got),) = RAN
    assert type(got["tags"]) is list
    assert list.__eq__(got["tags"], ["a", "b"])


@pytest.mark.parametrize("adapter", ["guarded", "guard_tool"])
def test_arguments_that_are_not_json_are_refused(runtime, adapter):
    """An object canonical JSON cannot carry is refused with a clear error; nothing runs."""
    with cra.session(agent_id="ops-bot", goal="Write a note") as active:
        outcome = ADAPTERS[adapter](runtime, "write_note", {"text": "x", "tags": object()})
    assert not outcome.ran
    assert "invalid_parameters" in (outcome.refused or "") or "cannot be guarded" in (
        outcome.refused or ""
    )
    assert RAN == []
    assert ("carp-runtime", "invalid_parameters") in _denials(runtime, active.session_id)


@pytest.mark.parametrize("adapter", ["guarded", "guard_tool"])
def test_session_ending_while_waiting_for_approval_refuses(runtime, adapter):
    """The approver answers after the session ended: refused, never run, nothing recorded."""
    asked, release = threading.Event(), threading.Event()

    def slow(request: cra.ApprovalRequest) -> cra.ApprovalDecision:
        asked.set()
        release.wait(5)
        return cra.ApprovalDecision(True, "alice")

    runtime.approval_handler = slow
    active = cra.session(agent_id="ops-bot", goal="Deploy").__enter__()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            if adapter == "guarded":
                cra.guarded("ops.deploy.run")(deploy)(service="api")
            else:
                guard_tool(StructuredTool.from_function(deploy), actions=ACTIONS).invoke(
                    {"service": "api"}
                )
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    worker = threading.Thread(target=cra.propagate(work))
    worker.start()
    assert asked.wait(5)
    runtime.end_session(active.session_id)
    release.set()
    worker.join(5)
    from cra_agents.runtime import _sessions

    _sessions._current.set(None)
    runtime.scope_closed(active.session_id)
    assert RAN == []
    assert len(errors) == 1 and isinstance(errors[0], cra.SessionEndedError | ToolException)
    kinds = _events(runtime, active.session_id)
    assert kinds[-1] == "session.ended"
    assert "action.requested" not in kinds


@pytest.mark.parametrize("adapter", ["guarded", "guard_tool"])
def test_approval_timeout_holds_for_sync_approvers_on_async_calls(runtime, adapter):
    """A blocking sync approver cannot stall an async call past approval_timeout."""
    late: list[bool] = []

    def blocking(request: cra.ApprovalRequest) -> cra.ApprovalDecision:
        time.sleep(1.0)
        late.append(True)
        return cra.ApprovalDecision(True, "too-late")

    runtime.approval_handler = blocking
    runtime.approval_timeout = 0.1

    async def adeploy(service: str) -> str:
        RAN.append(("deploy", service))
        return "deployed"

    async def main() -> tuple[float, str]:
        start = time.monotonic()
        try:
            if adapter == "guarded":
                await cra.guarded("ops.deploy.run")(adeploy)(service="api")
                return time.monotonic() - start, "ran"
            tool = StructuredTool.from_function(
                coroutine=adeploy, name="deploy", description="Deploy a service."
            )
            # handle_tool_error hands the refusal to the model as the tool's output
            output = await guard_tool(tool, actions=ACTIONS).ainvoke({"service": "api"})
            return time.monotonic() - start, str(output)
        except cra.ActionDeniedError as exc:
            return time.monotonic() - start, str(exc)

    with cra.session(agent_id="ops-bot", goal="Deploy") as active:
        took, said = asyncio.run(main())
    assert "approval_timeout" in said
    assert took < 0.9
    assert RAN == []
    assert ("approve-deploy", "approval_timeout") in _denials(runtime, active.session_id)
    time.sleep(1.1)  # the approver's late answer arrives and is ignored
    assert late == [True]
    assert "action.approved" not in _events(runtime, active.session_id)


class HostileError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class HostileResult:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize("adapter", ["guarded", "guard_tool"])
def test_hostile_results_and_exceptions_are_recorded(runtime, adapter):
    """A failing __str__/__repr__ never loses the outcome; the caller gets the tool's own."""
    boom = HostileError()

    def explode(text: str) -> str:
        raise boom

    def weird(text: str) -> Any:
        return HostileResult()

    with cra.session(agent_id="ops-bot", goal="Chaos") as active:
        if adapter == "guarded":
            with pytest.raises(HostileError) as info:
                cra.guarded("ops.note.write")(explode)(text="x")
            assert info.value is boom
            result = cra.guarded("ops.note.write")(weird)(text="y")
            assert isinstance(result, HostileResult)
        else:
            wrapped = guard_tool(
                StructuredTool.from_function(explode, name="write_note", description="Explode."),
                actions=ACTIONS,
            )
            with pytest.raises(HostileError) as info:
                wrapped.invoke({"text": "x"})
            assert info.value is boom
    events = runtime.trace_events(active.session_id)
    failed = [e for e in events if e.event_type == "action.failed"]
    assert failed and failed[0].payload["error_code"] == "HostileError"
    assert failed[0].payload["error_message"] == "<unprintable HostileError>"
    if adapter == "guarded":
        assert any(e.event_type == "action.executed" for e in events)
    assert runtime.verify(active.session_id).valid


def test_an_approval_granted_for_zero_seconds_is_expired(runtime):
    """grant_approval(ttl_seconds=0) is expired at once, not the default lifetime."""
    runtime.approval_handler = "auto_deny"
    with cra.session(agent_id="ops-bot", goal="Deploy") as active:
        token = runtime.grant_approval(
            active.session_id, "ops.deploy.run", {"service": "api"}, approver="alice", ttl_seconds=0
        )
        with pytest.raises(cra.ActionDeniedError) as info:
            runtime.authorize(
                active.session_id,
                "ops.deploy.run",
                {"service": "api"},
                approval_id=token.approval_id,
            )
    assert info.value.reason == "approval_expired"


def test_a_call_escaping_its_session_is_refused(runtime):
    """A thread started inside a session without propagate() is refused, not run implicitly."""
    guarded = cra.guarded("ops.stats.read")(read_stats)
    errors: list[cra.CRAError] = []

    def bare() -> None:
        try:
            guarded(day="mon")
        except cra.CRAError as exc:
            errors.append(exc)

    with cra.session(agent_id="ops-bot", goal="Stats") as active:
        thread = threading.Thread(target=bare)
        thread.start()
        thread.join(5)

        def tuesday() -> None:
            guarded(day="tue")

        propagated = threading.Thread(target=cra.propagate(tuesday))
        propagated.start()
        propagated.join(5)
    assert len(errors) == 1
    assert errors[0].details["reason"] == "session_not_propagated"
    assert "cra.propagate" in str(errors[0])
    assert RAN == [("stats", "tue")]
    assert [s.agent_id for s in runtime.sessions()] == ["ops-bot"]
    assert "action.executed" in _events(runtime, active.session_id)


def test_pools_and_to_thread_keep_the_session(runtime):
    """asyncio.to_thread carries the session by itself; executors do with cra.propagate."""
    import concurrent.futures

    guarded = cra.guarded("ops.note.write")(write_note)

    async def main() -> None:
        await asyncio.to_thread(guarded, text="thread")
        loop = asyncio.get_running_loop()

        def executor() -> None:
            guarded(text="executor")

        await loop.run_in_executor(None, cra.propagate(executor))

    with cra.session(agent_id="ops-bot", goal="Notes") as active:
        asyncio.run(main())
        with concurrent.futures.ThreadPoolExecutor(2) as pool:

            def note(text: str) -> None:
                guarded(text=text)

            list(pool.map(cra.propagate(note), ["a", "b"]))
    kinds = _events(runtime, active.session_id)
    assert kinds.count("action.executed") == 4
    assert len(runtime.sessions()) == 1
