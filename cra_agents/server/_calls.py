"""The call routes of HTTP mode: a guarded call decided by the server, run by the client.

Upstream's ``execute`` only records; a tool that runs in the client's process needs the
decision before it runs and the outcome after. These routes are that, over the runtime's one
gate (:meth:`Runtime.call` + :meth:`Runtime.gate_sync`), so a decision is the same whichever
mode made it:

- ``POST /v1/calls`` ``{session_id, tool, arguments, action_id?, actions?, tool_call_id?,
  risk_tier?, approval?}`` decides the call (``action.requested``, ``policy.evaluated``,
  ``action.approved`` | ``action.denied``) and keeps an allowed one pending: 200
  ``{call_id, execution_id, session_id, action_id, arguments, policy_id, reason, risk_tier,
  approver}`` — run the tool with these ``arguments`` (the frozen ones decided on). A refusal
  is its error: 403 ``ACTION_DENIED`` (``details``: action_id, policy_id, reason), 400
  ``INVALID_PARAMETERS``, 404 ``ACTION_NOT_FOUND`` / ``SESSION_NOT_FOUND``, 409
  ``SESSION_ALREADY_ENDED``. A call that needs a person's approval and carries none is 423
  ``ACTION_REQUIRES_APPROVAL`` with what the approver needs in ``details`` (session_id,
  agent_id, tool, action_id, arguments, digest, risk_tier, policy_id, reason, and the
  ``sequence`` of its ``approval.requested``), recorded as
  ``approval.requested`` (as the LangChain middleware records a question asked outside the
  call); send the same call again with ``approval: {approved, approver, reason?,
  original_arguments?, responded?}`` and it is decided with that answer.
- ``POST /v1/calls/{call_id}/outcome`` ``{status: executed | failed, result?, error?:
  {type, message}}`` records ``action.executed`` / ``action.failed``: 200 ``{call_id,
  status}``; 404 ``CALL_NOT_FOUND`` for an unknown or expired call, 409
  ``OUTCOME_ALREADY_RECORDED`` for a second outcome.
- ``POST /v1/calls/precheck`` ``{session_id, action_id, arguments, check_parameters?}``: what
  the gate would decide (:meth:`Runtime.precheck`), recording nothing.

Pending calls are kept in a bounded table (:class:`PendingCalls`, ``app.state.cra_calls``,
made on first use): a call whose outcome does not come within its timeout is recorded failed
(``OutcomeNotReported``, reason ``outcome_not_reported``) so its session can end.

Every route needs the ``write`` scope for the session's agent, and the session must belong to
the caller (else 404, as if it did not exist).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from cra_agents._canonical import digest
from cra_agents._exceptions import (
    ApprovalRequiredError,
    CRAError,
    ServiceUnavailableError,
    SessionNotFoundError,
)
from cra_agents.runtime import ApprovalDecision, Call, Runtime
from cra_agents.server._principal import Principal, owns
from cra_agents.server._routes import Caller

__all__ = [
    "CallAllowed",
    "CallApproval",
    "CallNotFoundError",
    "CallRequest",
    "OutcomeConflictError",
    "OutcomeNotReported",
    "OutcomeRequest",
    "PendingCalls",
    "PrecheckRequest",
    "router",
]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["calls"])

DEFAULT_CALL_TIMEOUT = 300.0
DEFAULT_MAX_PENDING = 10_000


class CallApproval(BaseModel):
    """A person's answer to a call that needs approval (given by the client's approver)."""

    approved: bool
    approver: str = Field("unknown", min_length=1, max_length=255)
    reason: str | None = Field(None, max_length=4000)
    original_arguments: dict[str, Any] | None = None
    responded: bool = False


class CallRequest(BaseModel):
    """``POST /v1/calls``: one tool call to decide."""

    session_id: str
    tool: str = Field(min_length=1, max_length=255)
    arguments: dict[str, Any] = Field(default_factory=dict)
    action_id: str | None = Field(None, max_length=255)
    actions: dict[str, str] | None = None
    tool_call_id: str | None = Field(None, max_length=255)
    risk_tier: str | None = Field(None, max_length=32)
    approval: CallApproval | None = None


class CallAllowed(BaseModel):
    """The answer to an allowed call: run the tool with ``arguments``, then report."""

    call_id: str
    execution_id: str
    session_id: str
    action_id: str
    arguments: dict[str, Any]
    policy_id: str
    reason: str | None = None
    risk_tier: str
    approver: str | None = None


class OutcomeError(BaseModel):
    """What the tool raised."""

    type: str = Field("Exception", max_length=200)
    message: str = Field("", max_length=20_000)


class OutcomeRequest(BaseModel):
    """``POST /v1/calls/{call_id}/outcome``: how the tool ended."""

    status: Literal["executed", "failed"]
    result: Any = None
    error: OutcomeError | None = None


class OutcomeRecorded(BaseModel):
    """The outcome was recorded."""

    call_id: str
    status: Literal["executed", "failed"]


class PrecheckRequest(BaseModel):
    """``POST /v1/calls/precheck``: what the gate would decide, recording nothing."""

    session_id: str
    action_id: str = Field(min_length=1, max_length=255)
    arguments: dict[str, Any] = Field(default_factory=dict)
    check_parameters: bool = True


class PrecheckAnswer(BaseModel):
    """:class:`~cra_agents.Precheck` as JSON."""

    action_id: str
    result: str
    policy_id: str
    reason: str | None
    risk_tier: str
    parameters_problem: str | None


class CallNotFoundError(CRAError, LookupError):
    """No pending call with that id: unknown, another caller's, or its outcome timed out."""

    default_code = "CALL_NOT_FOUND"
    status = 404
    category = "not_found"


class OutcomeConflictError(CRAError):
    """The call's outcome is already recorded."""

    default_code = "OUTCOME_ALREADY_RECORDED"
    status = 409
    category = "conflict"


class OutcomeNotReported(Exception):  # noqa: N818 - recorded as the failure's type
    """A pending call's outcome did not come in time (recorded as its failure)."""


@dataclass(slots=True)
class _Pending:
    call: Call
    owner: str
    deadline: float


class PendingCalls:
    """Allowed calls waiting for their outcome: bounded, each with a deadline.

    A call past its deadline, or pushed out by a full table, is recorded failed
    (:class:`OutcomeNotReported`). A sweeper thread records the expired ones even when no
    request comes; it runs only while calls are pending.

    Args:
        timeout: Seconds a client has to report a call's outcome.
        max_pending: Calls kept at once; a new call past it is refused (503) before deciding.
    """

    def __init__(
        self, timeout: float = DEFAULT_CALL_TIMEOUT, max_pending: int = DEFAULT_MAX_PENDING
    ) -> None:
        self.timeout = timeout
        self.max_pending = max_pending
        self._calls: OrderedDict[str, _Pending] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()  # reported ids (409 on a repeat)
        self._cond = threading.Condition()
        self._sweeper: threading.Thread | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._calls)

    def check_room(self) -> None:
        """Refuse a new call while the table is full (before it is decided).

        Raises:
            ServiceUnavailableError: too many calls wait for their outcome.
        """
        if len(self._calls) >= self.max_pending:
            raise ServiceUnavailableError(
                f"{len(self._calls)} calls are waiting for their outcome; retry later",
                details={"reason": "too_many_pending_calls"},
            )

    def add(self, call: Call, owner: str) -> str:
        """Keep ``call`` until its outcome; returns its id (its execution id)."""
        call_id = call.execution_id
        overflow: list[_Pending] = []
        with self._cond:
            self._calls[call_id] = _Pending(call, owner, time.monotonic() + self.timeout)
            while len(self._calls) > self.max_pending:
                overflow.append(self._calls.popitem(last=False)[1])
            if self._sweeper is None or not self._sweeper.is_alive():
                self._sweeper = threading.Thread(
                    target=self._sweep, name="cra-pending-calls", daemon=True
                )
                self._sweeper.start()
            self._cond.notify_all()
        for pending in overflow:
            _fail(pending.call, "the pending-call table was full")
        return call_id

    def take(self, call_id: str, owner: str) -> Call:
        """The pending call ``call_id`` of ``owner``, removed from the table.

        Raises:
            CRAError: 404 ``CALL_NOT_FOUND`` (unknown, expired, or another principal's), 409
                ``OUTCOME_ALREADY_RECORDED``.
        """
        with self._cond:
            pending = self._calls.get(call_id)
            if pending is not None and pending.owner == owner:
                del self._calls[call_id]
                self._remember(call_id)
                if not self._calls:
                    self._cond.notify_all()  # the sweeper stops: nothing left to expire
                return pending.call
            reported = call_id in self._done
        if reported and pending is None:
            raise OutcomeConflictError(
                f"the outcome of call {call_id} is already recorded", details={"call_id": call_id}
            )
        raise CallNotFoundError(
            f"no pending call {call_id} (unknown, or its outcome timed out)",
            details={"call_id": call_id},
        )

    def _remember(self, call_id: str) -> None:
        self._done[call_id] = None
        while len(self._done) > self.max_pending:
            self._done.popitem(last=False)

    def expire(self) -> int:
        """Record every call past its deadline as failed; returns how many."""
        now = time.monotonic()
        expired: list[_Pending] = []
        with self._cond:
            while self._calls:
                first = next(iter(self._calls.values()))
                if first.deadline > now:
                    break
                expired.append(self._calls.popitem(last=False)[1])
        for pending in expired:
            _fail(pending.call, f"no outcome reported within {self.timeout:g} s")
        return len(expired)

    def close(self) -> None:
        """Record every pending call failed and stop the sweeper (the server stops)."""
        with self._cond:
            self._closed = True
            left = list(self._calls.values())
            self._calls.clear()
            self._cond.notify_all()
        for pending in left:
            _fail(pending.call, "the server stopped before the outcome was reported")

    def _sweep(self) -> None:
        while True:
            with self._cond:
                if self._closed or not self._calls:
                    self._sweeper = None
                    return
                first = next(iter(self._calls.values()))
                wait = first.deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
            self.expire()


def _fail(call: Call, why: str) -> None:
    runtime = call._runtime
    if runtime is None or call.done:  # pragma: no cover - every pending call has a runtime
        return
    try:
        runtime.record_outcome(call, error=OutcomeNotReported(f"outcome_not_reported: {why}"))
    except CRAError:
        logger.exception("recording the missing outcome of %s failed", call.action_id)


# -- dependencies -------------------------------------------------------------------------


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


_TABLE_LOCK = threading.Lock()


def pending_calls(request: Request) -> PendingCalls:
    """The app's table of pending calls (``app.state.cra_calls``, made on first use)."""
    state = request.app.state
    table: PendingCalls | None = getattr(state, "cra_calls", None)
    if table is None:
        with _TABLE_LOCK:
            table = getattr(state, "cra_calls", None)
            if table is None:
                table = state.cra_calls = PendingCalls(
                    timeout=float(getattr(state, "call_timeout", DEFAULT_CALL_TIMEOUT))
                )
    return table


def _owned_session(runtime: Runtime, principal: Principal, session_id: str) -> str:
    """The session's agent id, once the caller may write as it and owns the session."""
    principal.require("write")
    try:
        info = runtime.session(session_id)
    except SessionNotFoundError:
        raise SessionNotFoundError(f"no session {session_id}") from None
    if not owns(principal, info.metadata):
        raise SessionNotFoundError(f"no session {session_id}")
    principal.require("write", agent_id=info.agent_id)
    return info.agent_id


# -- routes -------------------------------------------------------------------------------

#: Errors every call route may answer (the error body of PROTOCOL_NOTES §6).
_COMMON: dict[int | str, dict[str, Any]] = {
    400: {"description": "A malformed request"},
    401: {"description": "UNAUTHORIZED: no valid credential"},
    403: {"description": "FORBIDDEN: no write scope, or not this agent"},
}


@router.post(
    "/v1/calls",
    response_model=CallAllowed,
    summary="Decide a tool call that runs in the client (extension of HTTP mode)",
    responses={
        **_COMMON,
        400: {"description": "INVALID_PARAMETERS, or a malformed request"},
        403: {"description": "ACTION_DENIED (details: action_id, policy_id, reason) or FORBIDDEN"},
        404: {"description": "SESSION_NOT_FOUND or ACTION_NOT_FOUND"},
        409: {"description": "SESSION_ALREADY_ENDED"},
        423: {"description": "ACTION_REQUIRES_APPROVAL: ask a person, send again with approval"},
        503: {"description": "SERVICE_UNAVAILABLE: too many calls wait for their outcome"},
    },
)
def decide_call(body: CallRequest, request: Request, principal: Caller) -> CallAllowed:
    """Decide the call through the runtime's gate; an allowed call waits for its outcome."""
    runtime = _runtime(request)
    agent_id = _owned_session(runtime, principal, body.session_id)
    table = pending_calls(request)
    table.check_room()
    if body.approval is None:
        _ask_first(runtime, agent_id, body)
    approval = None
    if body.approval is not None:
        given = body.approval
        approval = ApprovalDecision(
            given.approved,
            given.approver,
            given.reason,
            original_arguments=given.original_arguments,
            responded=given.responded,
        )
    call = runtime.call(
        body.tool,
        body.arguments,
        action_id=body.action_id,
        actions=body.actions,
        session_id=body.session_id,
        tool_call_id=body.tool_call_id,
        risk_tier=body.risk_tier,
        approval=approval,
    )
    # ask=False: nobody at the server can answer; a call that turns out to need approval
    # (a stated risk tier above the declared one) is refused, recorded (fail closed).
    runtime.gate_sync(call, ask=False)
    call_id = table.add(call, principal.id)
    return CallAllowed(
        call_id=call_id,
        execution_id=call.execution_id,
        session_id=call.session_id,
        action_id=call.action_id,
        arguments=call.arguments,
        policy_id=call.policy_id,
        reason=call.reason,
        risk_tier=call.risk_tier,
        approver=call.approver,
    )


def _ask_first(runtime: Runtime, agent_id: str, body: CallRequest) -> None:
    """423 (``approval.requested`` recorded) when the policy wants a person's approval."""
    try:
        action_id = runtime.map_tool(body.tool, action_id=body.action_id, actions=body.actions)
    except CRAError:
        return  # the gate refuses it, recorded
    # Arguments checked too: a call the gate refuses for its arguments is refused without
    # asking anyone, as in embedded mode.
    precheck = runtime.precheck(body.session_id, action_id, body.arguments)
    if not precheck.needs_approval:
        return
    sequence = runtime.record_approval_request(
        body.session_id, precheck, body.arguments, tool_call_id=body.tool_call_id
    )
    try:
        arguments_digest = digest(dict(body.arguments))
    except (CRAError, TypeError, ValueError, RecursionError):
        arguments_digest = ""
    reason = precheck.reason or "Requires human approval"
    raise ApprovalRequiredError(
        f"{action_id} requires approval: {reason}",
        details={
            "session_id": body.session_id,
            "agent_id": agent_id,
            "tool": body.tool,
            "action_id": action_id,
            "arguments": body.arguments,
            "digest": arguments_digest,
            "risk_tier": precheck.risk_tier,
            "policy_id": precheck.policy_id,
            "reason": reason,
            "tool_call_id": body.tool_call_id,
            "sequence": sequence,
        },
    )


@router.post(
    "/v1/calls/{call_id}/outcome",
    response_model=OutcomeRecorded,
    summary="Record how a decided call ended (extension of HTTP mode)",
    responses={
        **_COMMON,
        404: {"description": "CALL_NOT_FOUND: unknown, or its outcome timed out"},
        409: {"description": "OUTCOME_ALREADY_RECORDED"},
    },
)
def record_outcome(
    call_id: str, body: OutcomeRequest, request: Request, principal: Caller
) -> OutcomeRecorded:
    """Record ``action.executed`` or ``action.failed`` for a pending call."""
    principal.require("write")
    table = pending_calls(request)
    table.expire()
    call = table.take(call_id, principal.id)
    runtime = _runtime(request)
    if body.status == "executed":
        runtime.record_outcome(call, result=body.result)
    else:
        error = body.error or OutcomeError()
        runtime.record_outcome(call, error=_error_class(error.type)(error.message))
    return OutcomeRecorded(call_id=call_id, status=body.status)


@router.post(
    "/v1/calls/precheck",
    response_model=PrecheckAnswer,
    summary="What the gate would decide for a call, recording nothing (extension)",
    responses={**_COMMON, 404: {"description": "SESSION_NOT_FOUND"}},
)
def precheck(body: PrecheckRequest, request: Request, principal: Caller) -> PrecheckAnswer:
    """:meth:`Runtime.precheck` for a session of the caller."""
    runtime = _runtime(request)
    _owned_session(runtime, principal, body.session_id)
    answer = runtime.precheck(
        body.session_id, body.action_id, body.arguments, check_parameters=body.check_parameters
    )
    return PrecheckAnswer(
        action_id=answer.action_id,
        result=answer.result,
        policy_id=answer.policy_id,
        reason=answer.reason,
        risk_tier=answer.risk_tier,
        parameters_problem=answer.parameters_problem,
    )


@functools.lru_cache(maxsize=256)
def _error_class(name: str) -> type[Exception]:
    """An exception class named as the client's, so ``action.failed`` records its type."""
    if not name.isidentifier():
        name = "Exception"
    return type(name, (Exception,), {"__module__": "cra_agents.remote"})
