"""``CRAMiddleware``: CARP enforcement, approvals and TRACE for ``create_agent``."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Annotated, Any, NotRequired, cast

from langchain.agents.middleware import (
    AgentMiddleware,
    AgentState,
    ExtendedModelResponse,
    ModelRequest,
    ModelResponse,
    ToolCallRequest,
)
from langchain.agents.middleware.types import PrivateStateAttr
from langchain_core.messages import AIMessage, HumanMessage, ToolCall, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.types import Command, interrupt

import cra_agents as cra
from cra_agents import ActionNotFoundError, ApprovalDecision, Call, CRAError, Runtime
from cra_agents_langchain._common import REFUSALS, denial_text, runtime_or_default
from cra_agents_langchain._context import AtlasContext

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
_ModelHandler = Callable[[ModelRequest[Any]], ModelResponse[Any]]
_AsyncModelHandler = Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]]
_ModelResult = ModelResponse[Any] | ExtendedModelResponse[Any]


def _run_end(request: ModelRequest[Any], response: ModelResponse[Any]) -> frozenset[str] | None:
    """When ``create_agent`` leaves its loop after this model reply.

    None: the loop goes on. An empty set: it ends with this reply (no AI message, or one
    without tool calls). Otherwise the ids of the tool calls after which it ends: a structured
    response came with tool calls, or every tool called returns directly (``return_direct``).
    The rules of the graph's model -> tools and tools -> model edges
    (``_make_model_to_tools_edge``, ``_make_tools_to_model_edge``:
    https://github.com/langchain-ai/langchain/blob/langchain%3D%3D1.5.2/libs/langchain_v1/langchain/agents/factory.py#L1991-L2111).
    """
    messages = response.result
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, AIMessage):
            break
    else:
        return frozenset()
    if not message.tool_calls:
        return frozenset()
    answered = {m.tool_call_id for m in messages[index + 1 :] if isinstance(m, ToolMessage)}
    pending = [call for call in message.tool_calls if call["id"] not in answered]
    ids = frozenset(str(call["id"] or "") for call in pending)
    if response.structured_response is not None:
        return ids
    # Every tool of the reply (answered in it or not) must return directly.
    direct = {t.name: t.return_direct for t in request.tools if isinstance(t, BaseTool)}
    known = [direct[call["name"]] for call in message.tool_calls if call["name"] in direct]
    if pending and known and all(known):
        return ids
    return None


class CRAMiddleware(AgentMiddleware[CRAState, Any, Any]):
    """Gate every tool call of a ``langchain.agents.create_agent`` agent through cra-agents.

    Each run of the agent is one CRA session (agent ``agent_id``, goal ``goal`` or the first
    human message), kept in the graph state, so it survives interrupts and resumes; a run
    started inside ``with cra.session(...)`` records into that session instead (and leaves it
    open). The session opens at the run's first model reply and ends (``session.ended``,
    reason ``completed``) with the reply that ends the agent loop, or after the tool calls
    that end it (``return_direct`` tools, a structured response); both are seen from
    ``wrap_model_call``, so the middleware adds no node to the graph. A run that fails (an
    exception out of ``invoke``) leaves its session open; with a checkpointer, the next run
    on the thread goes on recording into it.

    Each tool call is mapped to an atlas action (``actions`` maps tool names to action ids;
    otherwise the action whose id, name or executor equals the tool name) and decided:

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
        context_budget_tokens: Tokens of atlas context a thread's system message may carry
            (the blocks' ``token_estimate``); ``None``: no limit; ``0``: no context.
        hide_denied_tools: Leave tools the gate would refuse (denied by the turn's
            resolution, or mapped to no action) out of what the model is offered.
        strict: A tool that maps to no action raises
            :class:`~cra_agents.ConfigurationError` at the first model call, instead of a
            warning.

    The atlas reaches the model (see ``cra_agents_langchain._context``): at each human turn
    the middleware resolves the turn's latest human message in the run's session (recorded:
    ``carp.request.received``, ``policy.evaluated``, ``context.injected``,
    ``carp.resolution.completed``), puts the selected context blocks into the system message
    (delimited ``Context from atlas`` sections, each block once per thread, within the
    budget) and hides the tools it denies. The session then opens before the first model
    call, not at its reply; a model call that fails ends a session it opened (reason
    ``error``).
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
        context_budget_tokens: int | None = 4000,
        hide_denied_tools: bool = True,
        strict: bool = False,
    ) -> None:
        super().__init__()
        self._runtime = runtime
        self.agent_id = agent_id
        self.goal = goal
        self.actions = dict(actions or {})
        self.approver = approver
        # (session, tool_call_id) -> answer, oldest first.
        self._done: OrderedDict[tuple[str, str], ToolMessage | Command[Any]] = OrderedDict()
        self._threads: dict[str, str] = {}
        # Owned sessions whose run ends after these tool calls (return_direct, structured).
        self._closing: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._atlas = AtlasContext(
            budget=context_budget_tokens,
            hide_denied_tools=hide_denied_tools,
            strict=strict,
        )

    @property
    def runtime(self) -> Runtime:
        """The runtime in use."""
        return runtime_or_default(self._runtime)

    @property
    def unmapped_tools(self) -> dict[str, list[str]]:
        """Tools seen so far (from the first model call on) that map to no declared action.

        Tool name → the closest action ids. Also logged as a warning (an error when
        ``strict``).
        """
        return self._atlas.unmapped

    def check_tools(self, tools: Iterable[BaseTool | dict[str, Any]]) -> dict[str, list[str]]:
        """Map ``tools`` now (e.g. when building the agent), not at the first model call.

        Returns :attr:`unmapped_tools`; logs each new one as a warning.

        Raises:
            ConfigurationError: ``strict``, and a tool maps to no declared action.
        """
        self._atlas.check_tools(self.runtime, tools, self.actions)
        return self.unmapped_tools

    # -- sessions -------------------------------------------------------------------------
    #
    # Opened and ended in wrap_model_call, which is not a graph node: langchain's factory.py
    # turns before_agent and after_agent into a node each, and the two cost every run about
    # 200 µs more than wrap_model_call does (LangChain's tracing wrapper around the hook,
    # per model call). The session id travels in the graph state, in the model node's
    # update, so interrupts, resumes and checkpointers keep it.

    def wrap_model_call(self, request: ModelRequest[Any], handler: _ModelHandler) -> _ModelResult:
        """Give the model the turn's atlas context; end the run's session with its last reply."""
        shaped, opened = self._atlas.prepare(
            self.runtime, request, self._session_before_model, self.actions
        )
        try:
            response = handler(shaped)
        except BaseException as exc:
            self._abandon(opened, exc)
            raise
        return self._replied(request, response, opened)

    async def awrap_model_call(
        self, request: ModelRequest[Any], handler: _AsyncModelHandler
    ) -> _ModelResult:
        """Async :meth:`wrap_model_call`."""
        shaped, opened = self._atlas.prepare(
            self.runtime, request, self._session_before_model, self.actions
        )
        try:
            response = await handler(shaped)
        except BaseException as exc:
            self._abandon(opened, exc)
            raise
        return self._replied(request, response, opened)

    def _session_before_model(
        self, request: ModelRequest[Any]
    ) -> tuple[str, tuple[str, bool] | None]:
        """The run's session before its model call (to resolve the turn in), opened if need be.

        The state's session if it can still record, else a new one (or the caller's
        ``cra.session``): its id, and ``(id, owned)`` when opened here for ``_replied``.
        """
        runtime = self.runtime
        session_id = cast("str | None", request.state.get("cra_session_id"))
        if session_id and _usable(runtime, session_id):
            return session_id, None
        opened = self._open(runtime, request)
        return opened[0], opened

    def _abandon(self, opened: tuple[str, bool] | None, error: BaseException) -> None:
        """The model call failed: end the session opened for it (no reply will carry it)."""
        if opened is not None and opened[1]:
            with contextlib.suppress(CRAError):
                self.runtime.end_session(opened[0], "error", error=repr(error)[:1000])

    def _replied(
        self,
        request: ModelRequest[Any],
        response: ModelResponse[Any],
        opened: tuple[str, bool] | None = None,
    ) -> _ModelResult:
        # After the model answered, not before: a model call that fails (and is retried by
        # an outer middleware, or ends the run) opens nothing that would never end. A session
        # opened before the call to resolve the turn in comes as `opened` (and a failed call
        # ended it: _abandon).
        runtime = self.runtime
        state = request.state
        session_id = cast("str | None", state.get("cra_session_id"))
        owned = bool(state.get("cra_session_owned", True))
        if session_id and self._closing:
            # The model runs again: whatever tool step was to end the run is over (a tool
            # raised out of the run, or another middleware answered a call for it).
            with self._lock:
                self._closing.pop(session_id, None)
        if session_id and not _usable(runtime, session_id):
            # Ended meanwhile (a run that ended after return_direct tools; someone else), or
            # unknown to this runtime (a checkpoint from another process): a new session.
            session_id = None
        update: dict[str, Any] | None = None
        if not session_id:
            session_id, owned = opened or self._open(runtime, request)
            update = {"cra_session_id": session_id, "cra_session_owned": owned}
        ends = _run_end(request, response)
        if ends is not None and not ends:  # this reply ends the run
            if owned:
                _end(runtime, session_id)
            if update is not None and not state.get("cra_session_id"):
                return response  # opened and ended here: nothing in the state to clear
            update = {"cra_session_id": None, "cra_session_owned": False}
        elif ends and owned:  # it ends after these tool calls (see _tool_done)
            with self._lock:
                self._closing[session_id] = set(ends)
        if update is None:
            return response
        return ExtendedModelResponse(model_response=response, command=Command(update=update))

    def _open(self, runtime: Runtime, request: ModelRequest[Any]) -> tuple[str, bool]:
        """A new session for the run, or the caller's ``cra.session`` (not ours to end)."""
        active = cra.current_session()
        if active is not None and active.runtime is runtime:
            return active.session_id, False
        execution = getattr(request.runtime, "execution_info", None)
        thread = execution.thread_id if execution is not None else None
        info = runtime.create_session(
            self.agent_id,
            self._goal(request.state),
            metadata={"langgraph_thread_id": str(thread)} if thread is not None else None,
        )
        return info.session_id, True

    def _tool_done(self, session_id: str, call_id: str) -> None:
        """A tool call of a run that ends after its tool calls was answered."""
        with self._lock:
            waiting = self._closing.get(session_id)
            if waiting is None:
                return
            waiting.discard(call_id)
            if waiting:
                return
            del self._closing[session_id]
        _end(self.runtime, session_id)

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

    def _session(self, runtime: Runtime, request: ToolCallRequest) -> str:
        state = request.state
        if isinstance(state, (dict, Mapping)):  # dict first: no ABC check for dicts
            session_id = state.get("cra_session_id")
            if session_id:
                return str(session_id)
        else:
            state = {}
        # Used outside create_agent (no model call opened a session, e.g. a bare ToolNode):
        # one session per LangGraph thread, kept here.
        config = getattr(request.runtime, "config", None) or {}
        thread = str((config.get("configurable") or {}).get("thread_id", ""))
        known = self._threads.get(thread)
        if known is not None:
            return known
        info = runtime.create_session(self.agent_id, self._goal(state))
        with self._lock:
            return self._threads.setdefault(thread, info.session_id)

    # -- tool calls -----------------------------------------------------------------------

    def _remember(
        self, session_id: str, call_id: str, outcome: ToolMessage | Command[Any]
    ) -> ToolMessage | Command[Any]:
        with self._lock:
            done = self._done
            done[session_id, call_id] = outcome
            if len(done) > _DONE_MAX:
                # OrderedDict, not dict: the oldest key of a dict is found by scanning the
                # holes earlier deletions left at its front (~7 µs per call at 10,000).
                done.popitem(last=False)
        if self._closing:
            self._tool_done(session_id, call_id)
        return outcome

    def _prepare(
        self, runtime: Runtime, request: ToolCallRequest, session_id: str, call_id: str
    ) -> tuple[Mapping[str, Any], ApprovalDecision | None]:
        """Arguments and (after an interrupt) the human's answer."""
        call = request.tool_call
        # Not copied: the gate canonicalises them and the tool gets the rebuilt copy.
        arguments: Mapping[str, Any] = call.get("args") or {}
        try:
            action_id = runtime.map_tool(call["name"], actions=self.actions)
        except ActionNotFoundError:
            return arguments, None  # the gate refuses it, recorded
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
                    "arguments": dict(arguments),
                    "risk_tier": precheck.risk_tier,
                    "policy_id": precheck.policy_id,
                    "reason": precheck.reason or "Requires human approval",
                    "decisions": ["approve", "reject", "edit"],
                }
            )
            approval, edited = self._read_answer(answer)
            if edited is not None:
                arguments = edited
        return arguments, approval

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

    def _refusal(self, request: ToolCallRequest, call: Call, error: CRAError) -> ToolMessage:
        call_id = call.tool_call_id or ""
        message = ToolMessage(
            content=denial_text(error),
            tool_call_id=call_id,
            name=request.tool_call["name"],
            status="error",
        )
        self._remember(call.session_id, call_id, message)
        return message

    def _start(
        self, runtime: Runtime, request: ToolCallRequest
    ) -> Call | ToolMessage | Command[Any]:
        """The call through the gate (not yet decided), or the answer already given."""
        session_id = self._session(runtime, request)
        call_id = str(request.tool_call.get("id") or "")
        if call_id:
            # Read without the lock: a dict lookup is atomic, and writers only add or drop.
            done = self._done.get((session_id, call_id))
            if done is not None:  # LangGraph re-ran the node on resume: answered already
                return done
        arguments, approval = self._prepare(runtime, request, session_id, call_id)
        return runtime.call(
            request.tool_call["name"],
            arguments,
            actions=self.actions,
            session_id=session_id,
            tool_call_id=call_id or None,
            approval=approval,
        )

    def _run_in(
        self, call: Call, outcome: ToolMessage | Command[Any]
    ) -> ToolMessage | Command[Any]:
        """Classify what the handler returned (inside ``with call``) and remember it."""
        if isinstance(outcome, ToolMessage):
            if outcome.status == "error":
                call.fail(ToolFailedError(str(outcome.content)))
            else:
                call.result = outcome.content
        else:
            call.result = repr(outcome)
        return self._remember(call.session_id, call.tool_call_id or "", outcome)

    def wrap_tool_call(
        self, request: ToolCallRequest, handler: _Handler
    ) -> ToolMessage | Command[Any]:
        """Decide the call, ask for approval if needed, run it with the decided arguments."""
        runtime = self.runtime
        call = self._start(runtime, request)
        if not isinstance(call, Call):
            return call
        try:
            runtime.gate_sync(call)
        except REFUSALS as error:
            return self._refusal(request, call, error)
        with call:
            return self._run_in(call, handler(_frozen(request, call.arguments)))

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: _AsyncHandler
    ) -> ToolMessage | Command[Any]:
        """Async :meth:`wrap_tool_call` (async approval handlers are awaited)."""
        runtime = self.runtime
        call = self._start(runtime, request)
        if not isinstance(call, Call):
            return call
        try:
            await runtime.gate_async(call)
        except REFUSALS as error:
            return self._refusal(request, call, error)
        async with call:
            return self._run_in(call, await handler(_frozen(request, call.arguments)))


def _frozen(request: ToolCallRequest, arguments: dict[str, Any]) -> ToolCallRequest:
    """``request.override(tool_call=...)`` with the decided arguments, for a fifth of the cost.

    ``override`` is ``dataclasses.replace``, whose ``__init__`` goes through
    ``ToolCallRequest.__setattr__`` (a deprecation guard: an import and two ``hasattr`` per
    field), about 3 µs a call. Only ``tool_call`` changes, which ``override`` does nothing
    more for than set it, so a copy of the instance's fields is the same request. Anything
    but a plain ``ToolCallRequest`` (a subclass; slots in a later langgraph) takes
    ``override``.
    """
    tool_call: ToolCall = {**request.tool_call, "args": arguments}
    if type(request) is not ToolCallRequest or not hasattr(request, "__dict__"):
        return request.override(tool_call=tool_call)
    frozen = object.__new__(ToolCallRequest)
    fields = frozen.__dict__
    fields.update(request.__dict__)
    fields["tool_call"] = tool_call
    return frozen


def _usable(runtime: Runtime, session_id: str) -> bool:
    """Whether calls can still be recorded in the session."""
    try:
        return runtime.session(session_id).active
    except CRAError:  # not known to this runtime
        return False


def _end(runtime: Runtime, session_id: str) -> None:
    """End the session (``session.ended``, reason ``completed``)."""
    with contextlib.suppress(CRAError):  # already ended, or the runtime was closed
        runtime.end_session(session_id, "completed")
