"""``CRAMiddleware``: CARP enforcement, approvals and TRACE for ``create_agent``."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, NotRequired, cast

import orjson
from langchain.agents.middleware import (
    AgentMiddleware,
    AgentState,
    ExtendedModelResponse,
    HumanInTheLoopMiddleware,
    ModelRequest,
    ModelResponse,
    ToolCallRequest,
)
from langchain.agents.middleware.types import PrivateStateAttr
from langchain_core.messages import AIMessage, HumanMessage, ToolCall, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.config import get_config
from langgraph.errors import GraphBubbleUp
from langgraph.prebuilt.tool_node import ToolRuntime
from langgraph.runtime import Runtime as GraphRuntime
from langgraph.types import Command, interrupt

import cra_agents as cra
from cra_agents import ActionNotFoundError, ApprovalDecision, Call, CRAError, Runtime
from cra_agents.runtime import Precheck, refusal_text
from cra_agents_langchain._callbacks import announce_session
from cra_agents_langchain._common import (
    REFUSALS,
    THREAD_SESSIONS,
    runtime_or_default,
)
from cra_agents_langchain._context import AtlasContext
from cra_agents_langchain._hitl import (
    ALL_DECISIONS,
    Answer,
    DecisionType,
    answer_schema,
    answered_message,
    answers_schema,
    with_edit_notice,
)

__all__ = ["CRAMiddleware", "CRAState", "InterruptMode", "ToolFailedError"]

#: Answers remembered per tool call (LangGraph re-runs a node on resume), and other per-call
#: and per-thread memories: least recently used dropped first.
_DONE_MAX = 10_000
_THREADS_MAX = 10_000
#: The state key of the decisions of a batched review, by tool call id, until the calls run.
_ANSWERS = "cra_answers"

#: ``batched``: one interrupt per model turn for every call needing approval (LangChain's
#: ``HITLRequest``); ``per_call``: one per call as it starts (a ``ToolApprovalRequest``).
InterruptMode = Literal["batched", "per_call"]
#: A tool call's identity for idempotency: session, call id, tool and arguments (a model may
#: reuse an id for another call; that one is decided like any other).
_Key = tuple[str, str, str, bytes]


class CRAState(AgentState[Any]):
    """Agent state with the CRA session of the current run (kept out of input and output)."""

    cra_session_id: NotRequired[Annotated[str | None, PrivateStateAttr]]
    #: Whether the middleware opened the session (and so ends it when the run ends).
    cra_session_owned: NotRequired[Annotated[bool, PrivateStateAttr]]
    #: Approve and edit decisions of a batched review, by tool call id, until the calls run.
    cra_answers: NotRequired[Annotated[dict[str, dict[str, Any]], PrivateStateAttr]]


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
    open). The session opens before the run's first model call and ends (``session.ended``,
    reason ``completed``) with the reply that ends the agent loop, or after the tool calls
    that end it (``return_direct`` tools, a structured response); both are seen from
    ``wrap_model_call``, so the middleware adds no node to the graph. If the model call that
    opened it fails, it ends (reason ``error``); a run that fails later (an exception out of
    ``invoke``) leaves its session open; with a checkpointer, the next run on the thread goes
    on recording into it.

    Each tool call is mapped to an atlas action (``actions`` maps tool names to action ids;
    otherwise the action whose id, name or executor equals the tool name) and decided:

    - allowed: the tool runs with the frozen arguments the decision was made on; its result
      or failure is recorded (``action.executed`` / ``action.failed``);
    - denied: the tool does not run; the model gets an error ``ToolMessage`` naming the
      policy and reason, so it can adapt;
    - needs approval: a person is asked with LangChain's human-in-the-loop protocol (the one
      ``HumanInTheLoopMiddleware`` speaks, see :mod:`cra_agents_langchain._hitl`), through a
      LangGraph ``interrupt()``, so Agent Chat UI, LangGraph Studio and front ends built for
      LangChain's middleware render and answer it. ``interrupt_mode="batched"`` (the default,
      as LangChain's): after each model turn, one interrupt whose value is an ``HITLRequest``
      listing every call of the turn that needs approval, answered by one
      ``Command(resume={"decisions": [...]})``; ``"per_call"``: one ``ToolApprovalRequest``
      interrupt per call as it starts, answered by one decision each (keyed by interrupt id
      when several wait). Our facts (session, action, risk tier, policy, reason) travel
      alongside under the value's ``"cra"`` key. ``approve`` runs the call; ``edit`` runs it
      with the person's arguments, decided again, and tells the model its call was changed;
      ``reject`` refuses it with the person's message as the reason the model reads;
      ``respond`` gives the model the person's message in the tool's place. The question is
      recorded when asked (``approval.requested``) and the answer with the call
      (``action.approved`` / ``action.denied`` with approver, message and, for an edit, the
      digest of the arguments as first requested), so the trace shows a pending question and
      the time the person took. An answer the middleware cannot read raises
      :class:`~cra_agents_langchain.ApprovalAnswerError` naming the accepted shapes, and no
      tool runs (resume again with a readable one). Add ``"approver"`` to an answer to record
      who gave it (default ``approver``).

    Records are idempotent per tool call (session, ``tool_call_id``, tool and arguments):
    when LangGraph re-runs a node on resume, a call that was already decided or run is
    answered from memory, never recorded or run twice; a model that reuses an id for a
    different call gets that call decided like any other. Needs a checkpointer for approvals
    (as any interrupt does). Memory is bounded (the last 10,000 calls and threads).

    Args:
        runtime: The runtime to use (default: the one ``cra.configure`` set up).
        agent_id: The agent's id in the trace.
        goal: The session goal (default: the first human message of the run).
        actions: Tool name → action id, where names differ.
        approver: Identity recorded when an answer does not name one.
        interrupt_mode: ``"batched"`` or ``"per_call"`` (see above). ``per_call`` adds no
            node to the graph; ``batched`` adds one (``after_model``), as LangChain's does.
        allowed_decisions: The decisions a person may give (LangChain's ``review_configs``).
        description_prefix: First line of the description a reviewer is shown.
        edit_notice: Tell the model when a person edited its call (as LangChain does).
        reviewed_by: The agent's ``HumanInTheLoopMiddleware``: the calls it asks a person
            about (its ``interrupt_on``, with ``when``) are not asked again; the answer given
            there is recorded as the approval (approver ``approver``), its edits are decided
            as they will run, and its rejections and answers are recorded as refusals (at the
            next model call). With LangChain's middleware in its default batched mode the
            order of the two in ``middleware=[...]`` does not matter. In its ``per_call``
            mode list it first (``[HumanInTheLoopMiddleware(...), CRAMiddleware(...)]``), so
            its ``wrap_tool_call`` asks before ours decides.
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
    budget) and hides the tools it denies.
    """

    state_schema = CRAState

    def __new__(cls, *args: Any, **kwargs: Any) -> CRAMiddleware:
        if kwargs.get("interrupt_mode") == "per_call" and cls is CRAMiddleware:
            cls = _PerCallMiddleware
        return super().__new__(cls)

    def __init__(
        self,
        runtime: Runtime | None = None,
        *,
        agent_id: str = "langchain-agent",
        goal: str | None = None,
        actions: Mapping[str, str] | None = None,
        approver: str = "human",
        interrupt_mode: InterruptMode = "batched",
        allowed_decisions: Sequence[DecisionType] = ALL_DECISIONS,
        description_prefix: str = "Tool execution requires approval",
        edit_notice: bool = True,
        reviewed_by: HumanInTheLoopMiddleware[Any, Any, Any] | None = None,
        context_budget_tokens: int | None = 4000,
        hide_denied_tools: bool = True,
        strict: bool = False,
    ) -> None:
        super().__init__()
        if interrupt_mode not in ("batched", "per_call"):
            raise ValueError(
                f"interrupt_mode must be 'batched' or 'per_call', not {interrupt_mode!r}"
            )
        unknown = [d for d in allowed_decisions if d not in ALL_DECISIONS]
        if unknown or not allowed_decisions:
            raise ValueError(
                f"allowed_decisions must be a non-empty subset of {list(ALL_DECISIONS)}, "
                f"not {list(allowed_decisions)!r}"
            )
        self._runtime = runtime
        self.agent_id = agent_id
        self.goal = goal
        self.actions = dict(actions or {})
        self.approver = approver
        self.interrupt_mode: InterruptMode = interrupt_mode
        self.allowed_decisions: list[DecisionType] = list(dict.fromkeys(allowed_decisions))
        self.description_prefix = description_prefix
        self.edit_notice = edit_notice
        self.reviewed_by = reviewed_by
        # Tool call -> answer, least recently used first.
        self._done: OrderedDict[_Key, ToolMessage | Command[Any]] = OrderedDict()
        # Tool calls whose approval.requested is recorded (a resumed node asks again).
        self._asked: OrderedDict[_Key, None] = OrderedDict()
        self._threads: OrderedDict[str, str] = OrderedDict()
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
        """Give the model the turn's atlas context; end the run's session with its last reply.

        The session opens before the model call (its callback events and the turn's
        resolution are recorded in it); a model call that fails ends a session it opened.
        """
        shaped, session_id, owned, update = self._before_model(request)
        try:
            response = handler(shaped)
        except BaseException as error:
            self._model_failed(session_id, owned, update, error)
            raise
        return self._replied(request, response, session_id, owned, update)

    async def awrap_model_call(
        self, request: ModelRequest[Any], handler: _AsyncModelHandler
    ) -> _ModelResult:
        """Async :meth:`wrap_model_call`."""
        shaped, session_id, owned, update = self._before_model(request)
        try:
            response = await handler(shaped)
        except BaseException as error:
            self._model_failed(session_id, owned, update, error)
            raise
        return self._replied(request, response, session_id, owned, update)

    def _before_model(
        self, request: ModelRequest[Any]
    ) -> tuple[ModelRequest[Any], str, bool, dict[str, Any] | None]:
        """The run's session (opened if need be) and the request the model gets."""
        runtime = self.runtime
        if self._atlas.strict:  # refuse unmapped tools before anything is recorded
            self._atlas.check_tools(runtime, request.tools, self.actions)
        session_id, owned, update = self._open(runtime, request)
        try:
            if self.reviewed_by is not None:
                self._record_reviewed(runtime, session_id, request.state)
            shaped = self._atlas.prepare(runtime, request, session_id, self.actions)
        except BaseException as error:
            self._model_failed(session_id, owned, update, error)
            raise
        return shaped, session_id, owned, update

    def _model_failed(
        self, session_id: str, owned: bool, update: dict[str, Any] | None, error: BaseException
    ) -> None:
        if update is not None and owned:  # opened for this call: nothing will end it
            _end(self.runtime, session_id, error)

    def _replied(
        self,
        request: ModelRequest[Any],
        response: ModelResponse[Any],
        session_id: str,
        owned: bool,
        update: dict[str, Any] | None,
    ) -> _ModelResult:
        """End the session with the reply that ends the run; write a new one to the state."""
        runtime = self.runtime
        state = request.state
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

    def _open(
        self, runtime: Runtime, request: ModelRequest[Any]
    ) -> tuple[str, bool, dict[str, Any] | None]:
        """The run's session, opened if it has none yet (with the state update to write).

        Before the model is called, so the model call's own callback events (see
        ``CRACallbackHandler``) are recorded in it: the session is announced to them. A new
        session is the caller's ``cra.session`` when one is active (not ours to end).
        """
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
            active = cra.current_session()
            if active is not None and active.runtime is runtime:
                session_id, owned = active.session_id, False
            else:
                execution = getattr(request.runtime, "execution_info", None)
                thread = execution.thread_id if execution is not None else None
                info = runtime.create_session(
                    self.agent_id,
                    self._goal(state),
                    metadata={"langgraph_thread_id": str(thread)} if thread is not None else None,
                )
                session_id, owned = info.session_id, True
            update = {"cra_session_id": session_id, "cra_session_owned": owned}
        announce_session(runtime, session_id)
        return session_id, owned, update

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
        if known is not None and _usable(runtime, known):
            return known
        created = runtime.create_session(self.agent_id, self._goal(state)).session_id
        with self._lock:
            threads = self._threads
            session_id = threads.get(thread)
            if session_id is None or session_id == known:
                session_id = threads[thread] = created
            threads.move_to_end(thread)
            evicted = threads.popitem(last=False)[1] if len(threads) > _THREADS_MAX else None
        if session_id != created:  # another call of the thread made one first
            _end(runtime, created, reason="cancelled")
        if evicted is not None:  # the least recently used thread: its session is over
            _end(runtime, evicted, reason="timeout")
        return session_id

    # -- approvals: LangChain's human-in-the-loop protocol ----------------------------------

    def after_model(self, state: CRAState, runtime: GraphRuntime[Any]) -> dict[str, Any] | None:
        """Batched review: one interrupt for every call of the model's turn needing approval."""
        return self._review(state, runtime)

    async def aafter_model(
        self, state: CRAState, runtime: GraphRuntime[Any]
    ) -> dict[str, Any] | None:
        """Async :meth:`after_model`."""
        return self._review(state, runtime)

    def _review(self, state: Mapping[str, Any], graph: GraphRuntime[Any]) -> dict[str, Any] | None:
        messages = state.get("messages") or []
        stale: dict[str, Any] | None = {_ANSWERS: {}} if state.get(_ANSWERS) else None
        last = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
        session_id = state.get("cra_session_id")
        if last is None or not last.tool_calls or not session_id:
            return stale
        runtime = self.runtime
        if not _usable(runtime, session_id) or runtime.shadow:
            return stale
        answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
        gated: list[tuple[ToolCall, Precheck]] = []
        for call in last.tool_calls:
            call_id = str(call.get("id") or "")
            if call_id in answered or self._done.get(_key(session_id, call)) is not None:
                continue
            if self.reviewed_by is not None and self._hitl_asks(_tool_request(call, state, graph)):
                continue  # the person is asked there; their answer counts here
            precheck = self._precheck(runtime, session_id, call)
            if precheck is not None:
                gated.append((call, precheck))
        if not gated:
            return stale
        for call, precheck in gated:
            self._asking(runtime, session_id, call, precheck)
        value = {
            "action_requests": [self._action_request(call, p) for call, p in gated],
            "review_configs": [
                {"action_name": call["name"], "allowed_decisions": list(self.allowed_decisions)}
                for call, _ in gated
            ],
            "cra": [self._facts(session_id, call, p) for call, p in gated],
        }
        tools = [call["name"] for call, _ in gated]
        schema = answers_schema(tools, self.allowed_decisions, self.approver)
        answers: list[Answer] = interrupt(value, response_schema=schema)
        kept: dict[str, dict[str, Any]] = {}
        replies: list[ToolMessage] = []
        for (call, _), answer in zip(gated, answers, strict=True):
            if answer.type in ("approve", "edit"):
                kept[str(call.get("id") or "")] = answer.as_state()
            else:
                replies.append(self._answered(runtime, session_id, call, answer))
        update: dict[str, Any] = {_ANSWERS: kept}
        if replies:
            update["messages"] = replies
        return update

    def _precheck(self, runtime: Runtime, session_id: str, call: ToolCall) -> Precheck | None:
        """The policy's answer for ``call`` when a person must approve it, else None."""
        try:
            action_id = runtime.map_tool(call["name"], actions=self.actions)
        except ActionNotFoundError:
            return None  # the gate refuses it, recorded
        precheck = runtime.precheck(
            session_id, action_id, call.get("args") or {}, check_parameters=False
        )
        return precheck if precheck.needs_approval else None

    def _asking(
        self, runtime: Runtime, session_id: str, call: ToolCall, precheck: Precheck
    ) -> None:
        """Record ``approval.requested`` once per call (a resumed node asks again)."""
        key = _key(session_id, call)
        if key in self._asked:
            return
        runtime.record_approval_request(
            session_id,
            precheck,
            call.get("args") or {},
            tool_call_id=str(call.get("id") or "") or None,
        )
        with self._lock:
            self._asked[key] = None
            if len(self._asked) > _DONE_MAX:
                self._asked.popitem(last=False)

    def _action_request(self, call: ToolCall, precheck: Precheck) -> dict[str, Any]:
        """LangChain's ``ActionRequest``: name, args, and what the reviewer reads."""
        return {
            "name": call["name"],
            "args": dict(call.get("args") or {}),
            "description": self._description(call, precheck),
        }

    def _description(self, call: ToolCall, precheck: Precheck) -> str:
        return (
            f"{self.description_prefix}: {precheck.reason or 'Requires human approval'} "
            f"(policy {precheck.policy_id}, action {precheck.action_id}, risk "
            f"{precheck.risk_tier}).\n\nTool: {call['name']}\nArgs: {call.get('args') or {}}"
        )

    def _facts(self, session_id: str, call: ToolCall, precheck: Precheck) -> dict[str, Any]:
        """Our facts about a call waiting for review (beside LangChain's request)."""
        return {
            "session_id": session_id,
            "tool_call_id": call.get("id"),
            "tool": call["name"],
            "action_id": precheck.action_id,
            "risk_tier": precheck.risk_tier,
            "policy_id": precheck.policy_id,
            "reason": precheck.reason or "Requires human approval",
            "allowed_decisions": list(self.allowed_decisions),
        }

    def _ask_now(
        self, runtime: Runtime, session_id: str, call: ToolCall, precheck: Precheck
    ) -> Answer:
        """Per-call review: one ``ToolApprovalRequest`` interrupt for this call."""
        self._asking(runtime, session_id, call, precheck)
        value = {
            "type": "tool_approval",
            "tool_call_id": call.get("id"),
            "name": call["name"],
            "args": dict(call.get("args") or {}),
            "description": self._description(call, precheck),
            "cra": self._facts(session_id, call, precheck),
        }
        schema = answer_schema(call["name"], self.allowed_decisions, self.approver)
        answer: Answer = interrupt(value, response_schema=schema)
        return answer

    def _answered(
        self, runtime: Runtime, session_id: str, call: ToolCall, answer: Answer
    ) -> ToolMessage:
        """Record a call a person refused (or answered in its place); what the model reads."""
        call_id = str(call.get("id") or "")
        gate = runtime.call(
            call["name"],
            call.get("args") or {},
            actions=self.actions,
            session_id=session_id,
            tool_call_id=call_id or None,
            approval=_approval(answer, call.get("args") or {}),
        )
        try:
            runtime.gate_sync(gate)
        except REFUSALS:
            pass  # refused as the person said, recorded
        else:  # no approval was needed after all (the atlas changed): still not run
            with gate:
                gate.fail(ToolFailedError(f"{answer.type} by {answer.approver}: not run"))
        message = answered_message(call["name"], call_id, answer)
        self._remember(_key(session_id, call), message)
        return message

    # -- beside LangChain's HumanInTheLoopMiddleware ---------------------------------------

    def _hitl_asks(self, request: ToolCallRequest) -> bool:
        """Whether ``reviewed_by`` asks a person about this call (its ``interrupt_on``)."""
        hitl = self.reviewed_by
        config = None if hitl is None else hitl.interrupt_on.get(request.tool_call["name"])
        if config is None:
            return False
        when = config.get("when")
        return when is None or bool(when(request))

    def _hitl_answer(self, request: ToolCallRequest) -> tuple[Answer, Mapping[str, Any]]:
        """The answer a call reaching the tools got in ``reviewed_by``: approved, or edited.

        A call that middleware rejected or answered never reaches the tools (its
        ``ToolMessage`` answered it). An edit is its state's ``hitl_edited_tool_calls``
        entry (batched; applied here, so the call is decided as it will run, whatever the
        order of the two middleware) or a call that differs from the model's (per call).
        Returns the answer and the arguments as the model produced them.
        """
        tool_call = request.tool_call
        call_id = str(tool_call.get("id") or "")
        state = request.state if isinstance(request.state, Mapping) else {}
        produced = _model_call(state, call_id)
        original = produced.get("args") if produced is not None else None
        if not isinstance(original, Mapping):
            original = tool_call.get("args") or {}
        edits = state.get(_HITL_EDITS) or {}
        edited = edits.get(call_id) if isinstance(edits, Mapping) else None
        args = edited.get("args") if isinstance(edited, Mapping) else tool_call.get("args")
        note = "reviewed in HumanInTheLoopMiddleware"
        if isinstance(args, Mapping) and dict(args) != dict(original):
            return Answer("edit", self.approver, note, dict(args), elsewhere=True), original
        return Answer("approve", self.approver, note, elsewhere=True), original

    def _record_reviewed(self, runtime: Runtime, session_id: str, state: Mapping[str, Any]) -> None:
        """Record the calls ``reviewed_by`` refused or answered since the last model call."""
        messages = state.get("messages") or []
        for message in reversed(messages):
            if isinstance(message, (HumanMessage, AIMessage)):
                break  # only the answers of the latest turn, once
            if not isinstance(message, ToolMessage):
                continue
            extra = message.additional_kwargs
            data = extra.get("lc_data")
            kind = data.get("decision") if isinstance(data, Mapping) else None
            if extra.get("lc_source") != _HITL_SOURCE or kind not in ("reject", "respond"):
                continue
            call = _model_call(state, message.tool_call_id)
            if call is None or self._done.get(_key(session_id, call)) is not None:
                continue
            text = message.content if isinstance(message.content, str) else str(message.content)
            self._answered(runtime, session_id, call, Answer(kind, self.approver, text))

    # -- tool calls -----------------------------------------------------------------------

    def _remember(
        self, key: _Key, outcome: ToolMessage | Command[Any]
    ) -> ToolMessage | Command[Any]:
        with self._lock:
            done = self._done
            done[key] = outcome
            if len(done) > _DONE_MAX:
                # OrderedDict, not dict: the oldest key of a dict is found by scanning the
                # holes earlier deletions left at its front (~7 µs per call at 10,000).
                done.popitem(last=False)
        if self._closing:
            self._tool_done(key[0], key[1])
        return outcome

    def _start(
        self, runtime: Runtime, request: ToolCallRequest
    ) -> tuple[Call, Answer | None] | ToolMessage | Command[Any]:
        """The call through the gate (not yet decided), or the answer already given."""
        session_id = self._session(runtime, request)
        tool_call = request.tool_call
        key = _key(session_id, tool_call)
        # Read without the lock: a dict lookup is atomic, and writers only add or drop.
        done = self._done.get(key)
        if done is not None:  # LangGraph re-ran the node on resume: answered already
            return done
        call_id = key[1]
        # The arguments as the model produced them (another middleware may have edited them).
        arguments: Mapping[str, Any] = tool_call.get("args") or {}
        produced = arguments
        answer: Answer | None = None
        state = request.state
        kept = state.get(_ANSWERS) if isinstance(state, Mapping) else None
        if kept and call_id in kept:  # decided in the batched review
            answer = Answer.from_state(kept[call_id])
        elif self.reviewed_by is not None and self._hitl_asks(request):
            answer, produced = self._hitl_answer(request)
        elif not runtime.shadow:
            precheck = self._precheck(runtime, session_id, tool_call)
            if precheck is not None:
                answer = self._ask_now(runtime, session_id, tool_call, precheck)
                if answer.type in ("reject", "respond"):
                    return self._answered(runtime, session_id, tool_call, answer)
        if answer is not None and answer.args is not None:
            arguments = answer.args
        call = runtime.call(
            tool_call["name"],
            arguments,
            actions=self.actions,
            session_id=session_id,
            tool_call_id=call_id or None,
            approval=None if answer is None else _approval(answer, produced),
        )
        return call, answer

    def _refusal(self, request: ToolCallRequest, call: Call, error: CRAError) -> ToolMessage:
        message = ToolMessage(
            content=refusal_text(error),
            tool_call_id=call.tool_call_id or "",
            name=request.tool_call["name"],
            status="error",
        )
        self._remember(_key(call.session_id, request.tool_call), message)
        return message

    def _run_in(
        self,
        request: ToolCallRequest,
        call: Call,
        answer: Answer | None,
        outcome: ToolMessage | Command[Any],
    ) -> ToolMessage | Command[Any]:
        """Classify what the handler returned (inside ``with call``) and remember it."""
        if isinstance(outcome, ToolMessage):
            if outcome.status == "error":
                call.fail(ToolFailedError(str(outcome.content)))
            else:
                call.result = outcome.content
            # (An edit made in HumanInTheLoopMiddleware gets that middleware's own notice.)
            edited = answer is not None and answer.args is not None and not answer.elsewhere
            if edited and self.edit_notice:
                outcome = with_edit_notice(outcome, request.tool_call["name"], call.arguments)
        else:
            call.result = repr(outcome)
        return self._remember(_key(call.session_id, request.tool_call), outcome)

    def wrap_tool_call(
        self, request: ToolCallRequest, handler: _Handler
    ) -> ToolMessage | Command[Any]:
        """Decide the call, ask for approval if needed, run it with the decided arguments."""
        runtime = self.runtime
        started = self._start(runtime, request)
        if not isinstance(started, tuple):
            return started
        call, answer = started
        try:
            runtime.gate_sync(call)
        except REFUSALS as error:
            return self._refusal(request, call, error)
        with call:
            return self._run_in(request, call, answer, handler(_frozen(request, call.arguments)))

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: _AsyncHandler
    ) -> ToolMessage | Command[Any]:
        """Async :meth:`wrap_tool_call` (async approval handlers are awaited)."""
        runtime = self.runtime
        started = self._start(runtime, request)
        if not isinstance(started, tuple):
            return started
        call, answer = started
        try:
            await runtime.gate_async(call)
        except REFUSALS as error:
            return self._refusal(request, call, error)
        async with call:
            outcome = await handler(_frozen(request, call.arguments))
            return self._run_in(request, call, answer, outcome)


class _PerCallMiddleware(CRAMiddleware):
    """``CRAMiddleware(interrupt_mode="per_call")``: without the batched review's node."""

    # LangChain adds a graph node for a middleware whose class overrides after_model.
    after_model = AgentMiddleware.after_model
    aafter_model = AgentMiddleware.aafter_model

    @property
    def name(self) -> str:
        """``CRAMiddleware``, as the batched one."""
        return "CRAMiddleware"


#: What LangChain's HumanInTheLoopMiddleware marks its answer messages with, and where it
#: keeps a batched review's edits (langchain 1.5, ``human_in_the_loop.py``).
_HITL_SOURCE = "hitl_interrupt_decision"
_HITL_EDITS = "hitl_edited_tool_calls"


def _model_call(state: Mapping[str, Any], call_id: str) -> ToolCall | None:
    """The tool call ``call_id`` as the model produced it (the latest AI message with it)."""
    for message in reversed(state.get("messages") or []):
        if isinstance(message, AIMessage):
            for call in message.tool_calls:
                if call.get("id") == call_id:
                    return call
    return None


def _tool_request(call: ToolCall, state: Any, graph: GraphRuntime[Any]) -> ToolCallRequest:
    """A ``ToolCallRequest`` for ``when`` predicates before the tools run.

    Built as LangChain's HumanInTheLoopMiddleware builds it in its ``after_model``.
    """
    try:
        config = get_config()
    except RuntimeError:
        config = {}
    tool_runtime = ToolRuntime(
        state=state,
        context=graph.context,
        config=config,
        stream_writer=graph.stream_writer,
        tool_call_id=call["id"],
        store=graph.store,
        execution_info=graph.execution_info,
        server_info=graph.server_info,
    )
    return ToolCallRequest(tool_call=call, tool=None, state=state, runtime=tool_runtime)


def _key(session_id: str, call: ToolCall) -> _Key:
    """The idempotency key of a tool call (see ``CRAMiddleware``)."""
    args = call.get("args") or {}
    try:
        shown = orjson.dumps(args, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        shown = repr(args).encode()
    return session_id, str(call.get("id") or ""), call["name"], shown


def _approval(answer: Answer, produced: Mapping[str, Any]) -> ApprovalDecision:
    """The gate's form of a person's answer (``produced``: the model's arguments)."""
    if answer.type in ("approve", "edit"):
        original = produced if answer.args is not None else None
        return ApprovalDecision(True, answer.approver, answer.message, original_arguments=original)
    return ApprovalDecision(
        False, answer.approver, answer.message, responded=answer.type == "respond"
    )


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


def _end(
    runtime: Runtime,
    session_id: str,
    error: BaseException | None = None,
    *,
    reason: Literal["completed", "timeout", "cancelled"] = "completed",
) -> None:
    """End the session: ``reason``, or ``error`` (``cancelled`` for an interrupt) after one."""
    THREAD_SESSIONS.forget(session_id)
    with contextlib.suppress(CRAError):  # already ended, or the runtime was closed
        if error is None:
            runtime.end_session(session_id, reason)
        elif isinstance(error, Exception) and not isinstance(error, GraphBubbleUp):
            runtime.end_session(session_id, "error", error=_describe(error), cause=error)
        else:  # an interrupt, a cancellation: the node runs again, or the run stops
            runtime.end_session(session_id, "cancelled", error=_describe(error))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]
