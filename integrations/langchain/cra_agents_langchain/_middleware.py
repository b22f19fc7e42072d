"""``CRAMiddleware``: CARP enforcement, approvals and TRACE for ``create_agent``."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, NotRequired

from langchain.agents.middleware import AgentMiddleware, AgentState, ToolCallRequest
from langchain.agents.middleware.types import PrivateStateAttr
from langchain_core.messages import HumanMessage, ToolMessage
from langgraph.runtime import Runtime as GraphRuntime
from langgraph.types import Command, interrupt

import cra_agents as cra
from cra_agents import (
    ActionDeniedError,
    ApprovalDecision,
    Authorization,
    CRAError,
    InvalidParametersError,
    Runtime,
)
from cra_agents_langchain._common import action_for, denial_text, runtime_or_default

if TYPE_CHECKING:
    from cra_agents.otel import ToolSpan

__all__ = ["CRAMiddleware", "CRAState", "ToolFailedError"]

_DONE_MAX = 10_000


class CRAState(AgentState[Any]):
    """Agent state with the CRA session of the current run (kept out of input and output)."""

    cra_session_id: NotRequired[Annotated[str | None, PrivateStateAttr]]
    #: Whether the middleware opened the session (and so ends it when the run ends).
    cra_session_owned: NotRequired[Annotated[bool, PrivateStateAttr]]


class ToolFailedError(Exception):
    """A tool call that ended in an error ``ToolMessage`` (recorded as ``action.failed``)."""


_Handler = Callable[[ToolCallRequest], ToolMessage | Command[Any]]
_AsyncHandler = Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]]


class CRAMiddleware(AgentMiddleware[CRAState, Any, Any]):
    """Gate every tool call of a ``langchain.agents.create_agent`` agent through cra-agents.

    Each run of the agent is one CRA session (agent ``agent_id``, goal ``goal`` or the first
    human message), kept in the graph state, so it survives interrupts and resumes; a run
    started inside ``with cra.session(...)`` records into that session instead (and leaves it
    open). Each tool
    call is mapped to an atlas action (``actions`` maps tool names to action ids; otherwise
    the action whose id, name or executor equals the tool name) and decided:

    - allowed: the tool runs with the frozen arguments the decision was made on; its result
      or failure is recorded (``action.executed`` / ``action.failed``);
    - denied: the tool does not run; the model gets an error ``ToolMessage`` naming the
      policy and reason, so it can adapt;
    - needs approval: a LangGraph ``interrupt()`` with a payload a UI can render
      (``type="cra_approval"``, action, arguments, risk tier, policy, reason). Resume with
      ``Command(resume={"decision": "approve" | "reject" | "edit", "args": {...},
      "approver": "...", "reason": "..."})`` (or ``True`` / ``False``). Edited arguments are
      decided again; the answer is recorded with the approver's identity.

    Records are idempotent per ``tool_call_id``: when LangGraph re-runs the node on resume, a
    call that was already decided or run is answered from memory, never recorded or run twice.
    Needs a checkpointer for approvals (as any interrupt does).

    Args:
        runtime: The runtime to use (default: the one ``cra.configure`` set up).
        agent_id: The agent's id in the trace.
        goal: The session goal (default: the first human message of the run).
        actions: Tool name → action id, where names differ.
        approver: Identity recorded when a resume value does not name one.
    """

    state_schema = CRAState

    def __init__(
        self,
        runtime: Runtime | None = None,
        *,
        agent_id: str = "langchain-agent",
        goal: str | None = None,
        actions: Mapping[str, str] | None = None,
        approver: str = "human",
    ) -> None:
        super().__init__()
        self._runtime = runtime
        self.agent_id = agent_id
        self.goal = goal
        self.actions = dict(actions or {})
        self.approver = approver
        self._done: OrderedDict[tuple[str, str], ToolMessage | Command[Any]] = OrderedDict()
        self._threads: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def runtime(self) -> Runtime:
        """The runtime in use."""
        return runtime_or_default(self._runtime)

    # -- sessions -------------------------------------------------------------------------

    def before_agent(self, state: CRAState, runtime: GraphRuntime[Any]) -> dict[str, Any] | None:
        """Open the run's session (once: a resumed run keeps its session)."""
        if state.get("cra_session_id"):
            return None
        runtime_ = self.runtime
        active = cra.current_session()
        if active is not None and active.runtime is runtime_:
            # Inside the caller's own `with cra.session(...)`: record into it, leave it open.
            return {"cra_session_id": active.session_id, "cra_session_owned": False}
        thread = runtime.execution_info.thread_id if runtime.execution_info else None
        info = runtime_.create_session(
            self.agent_id,
            self._goal(state),
            metadata={"langgraph_thread_id": str(thread)} if thread is not None else None,
        )
        return {"cra_session_id": info.session_id, "cra_session_owned": True}

    async def abefore_agent(
        self, state: CRAState, runtime: GraphRuntime[Any]
    ) -> dict[str, Any] | None:
        """Async :meth:`before_agent`."""
        return self.before_agent(state, runtime)

    def after_agent(self, state: CRAState, runtime: GraphRuntime[Any]) -> dict[str, Any] | None:
        """End the run's session (``session.ended``, reason ``completed``)."""
        session_id = state.get("cra_session_id")
        if not session_id:
            return None
        if state.get("cra_session_owned", True):
            with contextlib.suppress(CRAError):  # already ended, or the runtime was closed
                self.runtime.end_session(session_id, "completed")
        return {"cra_session_id": None, "cra_session_owned": False}

    async def aafter_agent(
        self, state: CRAState, runtime: GraphRuntime[Any]
    ) -> dict[str, Any] | None:
        """Async :meth:`after_agent`."""
        return self.after_agent(state, runtime)

    def _goal(self, state: Mapping[str, Any]) -> str:
        if self.goal:
            return self.goal
        for message in state.get("messages") or []:
            if (
                isinstance(message, HumanMessage)
                and isinstance(message.content, str)
                and message.content.strip()
            ):
                return message.content.strip()[:1000]
        return f"{self.agent_id} run"

    def _session(self, request: ToolCallRequest) -> str:
        state = request.state if isinstance(request.state, Mapping) else {}
        session_id = state.get("cra_session_id")
        if session_id:
            return str(session_id)
        # Used outside create_agent (no before_agent hook, e.g. a bare ToolNode): one session
        # per LangGraph thread, kept here.
        config = getattr(request.runtime, "config", None) or {}
        thread = str((config.get("configurable") or {}).get("thread_id", ""))
        with self._lock:
            known = self._threads.get(thread)
        if known is not None:
            return known
        info = self.runtime.create_session(self.agent_id, self._goal(state))
        with self._lock:
            return self._threads.setdefault(thread, info.session_id)

    # -- tool calls -----------------------------------------------------------------------

    def _seen(self, session_id: str, call_id: str) -> ToolMessage | Command[Any] | None:
        with self._lock:
            return self._done.get((session_id, call_id))

    def _remember(
        self, session_id: str, call_id: str, outcome: ToolMessage | Command[Any]
    ) -> ToolMessage | Command[Any]:
        with self._lock:
            self._done[(session_id, call_id)] = outcome
            while len(self._done) > _DONE_MAX:
                self._done.popitem(last=False)
        return outcome

    def _prepare(
        self, request: ToolCallRequest, session_id: str, call_id: str
    ) -> tuple[str, dict[str, Any], ApprovalDecision | None]:
        """Action, arguments and (after an interrupt) the human's answer."""
        runtime = self.runtime
        call = request.tool_call
        action_id = action_for(runtime, call["name"], self.actions)
        arguments = dict(call.get("args") or {})
        approval = None
        precheck = runtime.precheck(session_id, action_id, arguments, check_parameters=False)
        if precheck.needs_approval and not runtime.shadow:
            answer = interrupt(
                {
                    "type": "cra_approval",
                    "session_id": session_id,
                    "tool_call_id": call_id,
                    "tool": call["name"],
                    "action_id": action_id,
                    "arguments": arguments,
                    "risk_tier": precheck.risk_tier,
                    "policy_id": precheck.policy_id,
                    "reason": precheck.reason or "Requires human approval",
                    "decisions": ["approve", "reject", "edit"],
                }
            )
            approval, edited = self._read_answer(answer)
            if edited is not None:
                arguments = edited
        return action_id, arguments, approval

    def _read_answer(self, answer: Any) -> tuple[ApprovalDecision, dict[str, Any] | None]:
        if isinstance(answer, bool):
            return ApprovalDecision(answer, self.approver), None
        if not isinstance(answer, Mapping):
            return ApprovalDecision(False, self.approver, "approval_denied"), None
        decision = str(answer.get("decision") or answer.get("type") or "reject").lower()
        approver = str(answer.get("approver") or self.approver)
        reason = answer.get("reason")
        if decision in ("approve", "approved", "accept"):
            return ApprovalDecision(True, approver, reason), None
        if decision == "edit":
            edited = answer.get("args") or answer.get("arguments")
            if isinstance(edited, Mapping):
                return ApprovalDecision(True, approver, reason or "edited"), dict(edited)
        return ApprovalDecision(False, approver, "approval_denied"), None

    def _refusal(
        self, request: ToolCallRequest, session_id: str, call_id: str, error: CRAError
    ) -> ToolMessage:
        message = ToolMessage(
            content=denial_text(error),
            tool_call_id=call_id,
            name=request.tool_call["name"],
            status="error",
        )
        self._remember(session_id, call_id, message)
        return message

    def _span(
        self, request: ToolCallRequest, session_id: str, action_id: str, call_id: str
    ) -> ToolSpan | None:
        telemetry = self.runtime.telemetry
        if telemetry is None:
            return None
        return telemetry.tool_span(
            self.runtime,
            session_id,
            action_id,
            request.tool_call["name"],
            tool_call_id=call_id or None,
        )

    @staticmethod
    def _refused(span: ToolSpan | None, error: BaseException) -> None:
        """End the span of a call that will not run."""
        if span is None:
            return
        if isinstance(error, ActionDeniedError | InvalidParametersError):
            span.denied(error)
            span.finish()  # ends once the recorded action.denied is stored
        else:
            span.finish(abandon_watchers=True)

    def _record(
        self,
        auth: Authorization,
        span: ToolSpan | None,
        *,
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        if span is not None:
            if error is None:
                span.executed(result)
            else:
                span.failed(error)
        try:
            self.runtime.record_outcome(
                auth,
                result=result,
                error=error,
                watch=span.outcome_watcher() if span is not None else None,
            )
        except BaseException:
            if span is not None:
                span.finish(abandon_watchers=True)
            raise
        if span is not None:
            span.finish()

    def _finish(
        self,
        auth: Authorization,
        span: ToolSpan | None,
        session_id: str,
        call_id: str,
        outcome: ToolMessage | Command[Any],
    ) -> ToolMessage | Command[Any]:
        if isinstance(outcome, ToolMessage) and outcome.status == "error":
            self._record(auth, span, error=ToolFailedError(str(outcome.content)))
        else:
            content = outcome.content if isinstance(outcome, ToolMessage) else repr(outcome)
            self._record(auth, span, result=content)
        return self._remember(session_id, call_id, outcome)

    def wrap_tool_call(
        self, request: ToolCallRequest, handler: _Handler
    ) -> ToolMessage | Command[Any]:
        """Decide the call, ask for approval if needed, run it with frozen arguments."""
        session_id = self._session(request)
        call_id = str(request.tool_call.get("id") or "")
        done = self._seen(session_id, call_id) if call_id else None
        if done is not None:  # LangGraph re-ran the node on resume: answered already
            return done
        action_id, arguments, approval = self._prepare(request, session_id, call_id)
        span = self._span(request, session_id, action_id, call_id)
        try:
            auth = self.runtime.authorize(
                session_id,
                action_id,
                arguments,
                tool_call_id=call_id or None,
                approval=approval,
                watch=span.decision_watcher() if span is not None else None,
            )
        except (ActionDeniedError, InvalidParametersError) as error:
            self._refused(span, error)
            return self._refusal(request, session_id, call_id, error)
        except BaseException as error:
            self._refused(span, error)
            raise
        frozen = request.override(tool_call={**request.tool_call, "args": auth.arguments})
        token = None
        if span is not None:
            span.allowed(auth)
            token = span.activate()
        try:
            outcome = handler(frozen)
        except BaseException as error:
            if span is not None:
                span.deactivate(token)
            self._record(auth, span, error=error)
            raise
        if span is not None:
            span.deactivate(token)
        return self._finish(auth, span, session_id, call_id, outcome)

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: _AsyncHandler
    ) -> ToolMessage | Command[Any]:
        """Async :meth:`wrap_tool_call` (async approval handlers are awaited)."""
        session_id = self._session(request)
        call_id = str(request.tool_call.get("id") or "")
        done = self._seen(session_id, call_id) if call_id else None
        if done is not None:  # LangGraph re-ran the node on resume: answered already
            return done
        action_id, arguments, approval = self._prepare(request, session_id, call_id)
        span = self._span(request, session_id, action_id, call_id)
        try:
            auth = await self.runtime.aauthorize(
                session_id,
                action_id,
                arguments,
                tool_call_id=call_id or None,
                approval=approval,
                watch=span.decision_watcher() if span is not None else None,
            )
        except (ActionDeniedError, InvalidParametersError) as error:
            self._refused(span, error)
            return self._refusal(request, session_id, call_id, error)
        except BaseException as error:
            self._refused(span, error)
            raise
        frozen = request.override(tool_call={**request.tool_call, "args": auth.arguments})
        token = None
        if span is not None:
            span.allowed(auth)
            token = span.activate()
        try:
            outcome = await handler(frozen)
        except BaseException as error:
            if span is not None:
                span.deactivate(token)
            self._record(auth, span, error=error)
            raise
        if span is not None:
            span.deactivate(token)
        return self._finish(auth, span, session_id, call_id, outcome)
