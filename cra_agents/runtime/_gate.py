"""The call gate: one state machine for the life of every tool call, free of I/O.

Every adapter — ``@cra.guarded``, ``Runtime.call``/``acall``, ``authorize``/``record_outcome``,
CARP ``execute``, ``CRAMiddleware``, ``guard_tool``, the callback handler's ``enforce`` mode —
rides :meth:`Gate.flow`. Like httpx's ``Auth.auth_flow``, the flow is a generator: it decides,
and *yields* the two things that need the outside world —

- an :class:`ApprovalRequest` (an ``Ask``): ask the approver; the shell sends back an
  :class:`ApprovalDecision`;
- a list of events (a ``Record``): append them to the session's chain; the shell sends back
  whether the session still accepted them (it may have ended while an approver was thinking);
  ``call.refusing`` says they are the call's last (it was refused);

and returns the authorized :class:`Call`, or raises the refusal after recording it. The sync
and async shells (:mod:`cra_agents.runtime._runtime`) only drive it.

Most calls are the common case: a memoised ``allow`` with nothing else asked of the call.
:meth:`Gate.allowed` decides those in one straight function, with no generator, and hands the
shell's recorder the same events the flow would yield, built by the same templates; it says
no to anything else, and the flow decides it. Which calls it takes is decided there alone.

The rules, fixed here once for every adapter:

1. Arguments are canonicalised to JSON, digested, and the tool runs with arguments **rebuilt
   from that canonical JSON** (plain dict, list, str, int, float, bool, None): nothing the tool
   gets can differ from what was decided. Arguments canonical JSON cannot carry exactly (objects,
   NaN, non-string keys, integers beyond 64 bits, lone surrogates) are refused with
   :class:`~cra_agents.InvalidParametersError`; tuples arrive as lists, enums and UUIDs as
   their JSON values.
2. Arguments are checked against the action's ``parameters_schema``.
3. The decision takes phases in order (deny → require approval → rate limit → budget → allow →
   default) with the higher of the stated and the declared risk tier. An approval does not skip
   later phases: an approved call still takes a rate-limit slot, and is refused when none is left.
4. A call waiting for approval when its session ends is refused and records nothing (no event
   of a session follows ``session.ended``).
5. Any unexpected failure while deciding denies the call (``internal_error``), recorded if the
   trace still works; the tool never runs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson

from cra_agents._canonical import Template, canonical_json, digest, sha256_hex
from cra_agents._exceptions import (
    ActionDeniedError,
    ActionNotFoundError,
    ApprovalRequiredError,
    CRAError,
    InvalidParametersError,
    RateLimitExceededError,
    SessionEndedError,
)
from cra_agents._ids import new_id
from cra_agents.policy import (
    UNDECLARED_ACTION,
    ConditionContext,
    Effect,
    PolicyDecision,
    PolicyEngine,
)
from cra_agents.protocol import events as ev
from cra_agents.runtime._approvals import Approval, ApprovalDecision, ApprovalRequest, ApprovalStore
from cra_agents.runtime._mapping import ToolMap

if TYPE_CHECKING:
    from cra_agents.protocol import TraceEvent
    from cra_agents.runtime._runtime import Runtime
    from cra_agents.runtime._sessions import SessionState

__all__ = [
    "INTERNAL_POLICY",
    "RISK_ORDER",
    "RUNTIME_POLICY",
    "Ask",
    "Authorization",
    "Call",
    "Gate",
    "Precheck",
    "Record",
    "higher_risk",
]

#: Policy id of refusals by runtime rules (invalid parameters, unknown resolution...).
logger = logging.getLogger(__name__)

RUNTIME_POLICY: Final = "carp-runtime"
#: Policy id of refusals because deciding itself failed (fail closed).
INTERNAL_POLICY: Final = "cra-internal"
RISK_ORDER: Final = {"low": 0, "medium": 1, "high": 2, "critical": 3}
_MEMO_SIZE = 1024
#: Whether :meth:`Gate.allowed` may decide the common case (False: every call takes
#: :meth:`Gate.flow`; for measuring one against the other).
_FAST_PATH = True
_TEMPLATES_MAX = 4096
# The open values of action.requested / action.approved, by which optional ids are present.
_REQUESTED_OPEN: Final = {
    (False, False): ("execution_id", "parameters_hash"),
    (True, False): ("execution_id", "parameters_hash", "resolution_id"),
    (False, True): ("execution_id", "parameters_hash", "tool_call_id"),
    (True, True): ("execution_id", "parameters_hash", "resolution_id", "tool_call_id"),
}
_APPROVED_OPEN: Final = {False: ("execution_id",), True: ("execution_id", "resolution_id")}


def higher_risk(stated: str | None, declared: str | None) -> str:
    """The higher of two risk tiers (unknown or None count as ``low``)."""
    if stated is None or stated == declared:
        return declared or "low"
    if declared is None:
        return stated
    return stated if RISK_ORDER.get(stated, 0) > RISK_ORDER.get(declared, 0) else declared


class Call:
    """One tool call through the gate: what was asked, decided, and how it ended.

    Returned by :meth:`Runtime.authorize` (as :data:`Authorization`) and by
    ``with runtime.call(...) as call`` once the call is allowed: run the tool with
    ``call.arguments`` (rebuilt from the canonical JSON that was decided on), set
    ``call.result`` to what it returned, and leave the block — ``action.executed`` (or
    ``action.failed`` with the exception that left it) is recorded on exit.
    """

    __slots__ = (
        "_events",
        "_failure",
        "_runtime",
        "_states",
        "_tokens",
        "action_id",
        "agent_id",
        "approval",
        "approval_id",
        "approver",
        "arguments",
        "atlas_digest",
        "atlas_id",
        "atlas_version",
        "context",
        "decision",
        "description",
        "digest",
        "done",
        "end_watched",
        "error",
        "execution_id",
        "mapping_error",
        "original_arguments",
        "policy_id",
        "reason",
        "refusal",
        "refusing",
        "resolution_id",
        "result",
        "risk_tier",
        "runs_tool",
        "schema",
        "session",
        "session_id",
        "shadow",
        "started_ns",
        "stated_risk",
        "tool",
        "tool_call_id",
    )

    def __init__(self, session: SessionState, tool: str, action_id: str) -> None:
        self.session = session
        self.session_id = session.session_id
        self.agent_id = session.agent_id
        #: The tool's own name (function, LangChain tool, MCP tool).
        self.tool = tool
        self.action_id = action_id
        self.execution_id = new_id()
        self.tool_call_id: str | None = None
        self.resolution_id: str | None = None
        #: Arguments as passed, until decided; then rebuilt from the decided canonical JSON.
        self.arguments: dict[str, Any] = {}
        self.digest = ""
        self.atlas_id: str | None = None
        self.atlas_version: str | None = None
        self.atlas_digest = ""
        self.description: str | None = None
        #: The action's ``parameters_schema`` (None: undeclared, or no schema).
        self.schema: Mapping[str, Any] | None = None
        self.stated_risk: str | None = None
        self.risk_tier = "low"
        self.context: ConditionContext | None = None
        self.decision: PolicyDecision | None = None
        self.policy_id = ""
        self.reason: str | None = None
        self.shadow = False
        self.approver: str | None = None
        self.approval: ApprovalDecision | None = None
        self.approval_id: str | None = None
        #: An approver edited the call: the arguments as first requested.
        self.original_arguments: Mapping[str, Any] | None = None
        #: Why the tool could not be mapped (refused by the flow, recorded).
        self.mapping_error: Exception | None = None
        #: A runtime rule's refusal decided before the policy (CARP execute's checks).
        self.refusal: tuple[CRAError, str, str] | None = None
        self.started_ns = 0
        #: What the tool returned (set it before leaving ``with runtime.call(...)``).
        self.result: Any = None
        self.error: BaseException | None = None
        self._runtime: Runtime | None = None
        self._states: tuple[Any, ...] = ()
        self._tokens: tuple[Any, ...] = ()
        self._events: list[TraceEvent] | None = None
        self._failure: BaseException | None = None
        #: Whether a tool runs after the decision (CARP execute decides only).
        self.runs_tool = True
        #: The call is over: refused, or its outcome recorded.
        self.done = False
        #: The gate is recording the call's refusal (its last events).
        self.refusing = False
        #: Its last event was handed to the trace with a watcher that reports its end.
        self.end_watched = False

    def __repr__(self) -> str:
        return (
            f"Call(action_id={self.action_id!r}, execution_id={self.execution_id!r}, "
            f"session_id={self.session_id!r}, policy_id={self.policy_id!r})"
        )

    # -- running the tool inside the call --------------------------------------------------

    def fail(self, error: BaseException) -> None:
        """Record the call as failed with ``error`` on exit, though no exception left the block.

        For tools that report failure in their result (a LangChain error ``ToolMessage``, an
        MCP result with ``is_error``).
        """
        self._failure = error

    def __enter__(self) -> Call:
        runtime = self._runtime
        if runtime is None or self.done:
            raise RuntimeError("enter a call returned by Runtime.call(...), once")
        if self.started_ns == 0:  # Runtime.call(): decide now
            runtime.gate_sync(self)
        runtime.call_running(self)
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        runtime = self._runtime
        if runtime is not None:
            runtime.call_returned(self)
            try:
                runtime.record_outcome(self, result=self.result, error=exc or self._failure)
            except CRAError:
                # The tool ran: its caller gets its result or exception, whatever the trace
                # does. A failed trace is sticky: every later call is refused
                # (TRACE_UNAVAILABLE), and Runtime.trace_failure says why.
                logger.exception("recording the outcome of %s failed", self.action_id)

    async def __aenter__(self) -> Call:
        runtime = self._runtime
        if runtime is None or self.done:
            raise RuntimeError("enter a call returned by Runtime.acall(...), once")
        if self.started_ns == 0:
            await runtime.gate_async(self)
        runtime.call_running(self)
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)


#: The name :meth:`Runtime.authorize` has always returned.
Authorization = Call


@dataclass(frozen=True, slots=True)
class Precheck:
    """What the gate would decide for a call (see :meth:`Runtime.precheck`)."""

    action_id: str
    #: ``allow``, ``deny`` or ``requires_approval``.
    result: str
    policy_id: str
    reason: str | None
    risk_tier: str
    #: Why the arguments are invalid, when they are.
    parameters_problem: str | None

    @property
    def needs_approval(self) -> bool:
        """Whether a person must approve the call before it may run."""
        return self.result == "requires_approval"


#: Step: ask the approver this; send back an :class:`ApprovalDecision`.
Ask = ApprovalRequest
#: Step: append these events to the call's session; send back whether it accepted them.
#: (Plain values, not step objects: the gate allocates nothing per call it need not.)
Record = list[tuple[str, Mapping[str, Any] | bytes]]
Step = Ask | Record
# Gate.allowed's cache entry: the decision, action.requested's template, policy.evaluated's
# bytes, action.approved's template, the action's parameters_schema and its fast check.
_Allowed = tuple[
    PolicyDecision, Template, bytes, Template, "Mapping[str, Any] | None", "_Accept | None"
]
Flow = Generator[Step, Any, "Call"]


class Gate:
    """Decides calls for one runtime: its engine, shadow mode, tools and approvals."""

    def __init__(
        self,
        engine: PolicyEngine,
        tools: ToolMap,
        approvals: ApprovalStore,
        atlas_info: Mapping[str, tuple[str, str]],
        *,
        shadow: bool = False,
    ) -> None:
        self.engine = engine
        self.tools = tools
        self.approvals = approvals
        #: atlas id -> (version, digest)
        self.atlas_info = dict(atlas_info)
        self.shadow = shadow
        # (action, agent, risk tier) -> decision, for decisions that are a pure function of
        # those (no rate limit, no time window): later calls skip the engine.
        self._memo: dict[tuple[str, str, str], PolicyDecision] = {}
        # The runtime's own payloads as canonical-JSON templates, per action, decision and
        # which optional fields are present: a call fills in its ids and digests.
        self._templates: dict[tuple[Any, ...], Template] = {}
        self._constants: dict[tuple[Any, ...], bytes] = {}  # payloads with nothing open
        # What allowed() needs of a memoised allow, per (action, agent, risk tier, stated
        # tier, tool call id given): the decision, its payloads' templates and constant.
        self._allowed: dict[tuple[Any, ...], _Allowed] = {}

    # -- building a call -------------------------------------------------------------------

    def new_call(
        self,
        session: SessionState,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        action_id: str | None = None,
        actions: Mapping[str, str] | None = None,
        tool_call_id: str | None = None,
        risk_tier: str | None = None,
        approval: ApprovalDecision | None = None,
        approval_id: str | None = None,
    ) -> Call:
        """A call of ``tool`` in ``session``, mapped to its action (nothing decided yet)."""
        mapping_error: Exception | None = None
        try:
            mapped = self.tools.map(tool, action_id=action_id, actions=actions)
        except Exception as exc:  # noqa: BLE001 - refused by flow(): recorded, fail closed
            mapped, mapping_error = action_id or tool, exc
        call = Call(session, tool, mapped)
        call.mapping_error = mapping_error
        call.arguments = arguments  # type: ignore[assignment]  # canonicalised by flow()
        call.tool_call_id = tool_call_id
        call.stated_risk = risk_tier
        call.approval = approval
        call.approval_id = approval_id
        call.shadow = self.shadow
        found = self.engine.action(mapped)
        declared = None
        if found is not None:
            atlas_id, action = found
            call.atlas_id = atlas_id
            call.atlas_version, call.atlas_digest = self.atlas_info.get(atlas_id, ("", ""))
            call.description = action.description or None
            call.schema = action.parameters_schema
            declared = action.risk_tier
        call.risk_tier = higher_risk(risk_tier, declared)
        return call

    # -- the state machine -----------------------------------------------------------------

    def flow(self, call: Call, *, ask: bool = True) -> Flow:
        """Decide ``call``: yields :class:`Ask` / :class:`Record` steps, returns the call.

        ``ask=False`` (CARP execute): a call needing approval without an approval given is
        refused with :class:`~cra_agents.ApprovalRequiredError` instead of asking.

        Raises:
            ActionDeniedError: denied by policy, approver, rate limit, or undeclared.
            ActionNotFoundError: the tool maps to no action, or to several.
            InvalidParametersError: the arguments cannot be recorded or fail the schema.
            ApprovalRequiredError: approval needed and ``ask`` is false.
            SessionEndedError: the session ended before the decision was recorded.
            CRAError: a runtime rule's refusal (``call.refusal``).
        """
        problem = self.prepare(call)
        requested = self._requested(call)
        if problem is not None:
            error, reason, policy_id = problem
            yield from self._refuse(call, [(ev.ACTION_REQUESTED, requested)], reason, policy_id)
            raise error
        decision = self.decide(call, consume=True)
        call.decision = decision
        events: Record = [
            (ev.ACTION_REQUESTED, requested),
            (
                ev.POLICY_EVALUATED,
                self._evaluated(call, decision),
            ),
        ]
        effect = decision.effect
        if effect is not Effect.ALLOW and call.shadow:
            events.append(
                (
                    ev.POLICY_VIOLATED,
                    ev.policy_violated(
                        decision.policy_id,
                        call.action_id,
                        decision.reason or decision.result,
                        decision.result,
                    ),
                )
            )
        elif effect is Effect.REQUIRE_APPROVAL:
            answer = yield from self._answer(call, decision, ask=ask)
            if answer is None:  # execute without an approval: refused
                yield from self._refuse(call, events, "approval_required", decision.policy_id)
                raise ApprovalRequiredError(
                    f"{call.action_id} requires approval: {decision.reason}",
                    details={
                        "action_id": call.action_id,
                        "policy_id": decision.policy_id,
                        "approval_id": None,
                    },
                )
            if not answer.approved:
                said = answer.reason
                coded = bool(said and said.startswith("approval_"))
                if answer.responded:
                    reason = "approval_responded"
                else:
                    reason = said if coded and said else "approval_denied"
                yield from self._refuse(
                    call,
                    events,
                    reason,
                    decision.policy_id,
                    approver=answer.approver,
                    approval_reason=None if coded else said,
                )
                raise ActionDeniedError(
                    f"{call.action_id} denied by {decision.policy_id}: {reason}",
                    action_id=call.action_id,
                    policy_id=decision.policy_id,
                    reason=reason,
                )
            # Approved: every later phase still applies (rate limits take their slot here).
            later = self.engine.decide(
                call.action_id, self._context(call), consume=True, approved=True
            )
            if later.effect is not Effect.ALLOW:
                yield from self._refuse(
                    call, events, later.reason or "Denied by policy", later.policy_id
                )
                raise _denial(call.action_id, later)
            call.approver = answer.approver
            call.reason = answer.reason
            call.original_arguments = answer.original_arguments
        elif effect is Effect.DENY:
            reason = decision.reason or "Denied by policy"
            yield from self._refuse(call, events, reason, decision.policy_id)
            raise _denial(call.action_id, decision)
        call.policy_id = decision.policy_id
        events.append((ev.ACTION_APPROVED, self._approved(call, decision.policy_id)))
        accepted = yield events
        if not accepted:
            raise _ended(call)
        call.started_ns = time.monotonic_ns()
        return call

    def allowed(self, call: Call, record: Callable[[Call, Record], bool]) -> bool:
        """Decide the common case in one go, as :meth:`flow` would; False when it is not it.

        The common case: a decision memoised as ``allow`` (so no approval, rate limit or time
        window), arguments that are recordable and pass the schema, and nothing else asked of
        the call (no resolution, approval, approval token, condition context, runtime refusal
        or shadow mode; a tool runs after the decision). The events are the ones :meth:`flow`
        records for such a call, from the same templates, handed to ``record`` (the shell's
        recorder, as a ``Record`` step); ``record`` returning False raises
        :class:`~cra_agents.SessionEndedError` as the flow does. On False nothing of the call
        was changed: drive :meth:`flow`, which decides (and refuses) everything else. An
        exception leaves like one from the flow: the shell refuses the call (fail closed).
        """
        if (
            call.resolution_id is not None
            or call.approval_id is not None
            or call.approval is not None
            or call.context is not None
            or call.refusal is not None
            or call.mapping_error is not None
            or call.shadow
            or not call.runs_tool
            or not _FAST_PATH
        ):
            return False
        tool_call_id = call.tool_call_id
        key = (
            call.action_id,
            call.agent_id,
            call.risk_tier,
            call.stated_risk,
            tool_call_id is None,
        )
        found = self._allowed.get(key)
        if found is None:
            decision = self._memo.get(key[:3])
            if decision is None or decision.effect is not Effect.ALLOW:
                return False  # undecided yet (the flow memoises it), or not an allow
            schema = call.schema
            found = (
                decision,
                self._requested_template(call),
                self._evaluated(call, decision),
                self._approved_template(call, decision.policy_id),
                schema,
                None if schema is None else _fast_validator(schema),
            )
            if len(self._allowed) >= _MEMO_SIZE:
                self._allowed.clear()
            self._allowed[key] = found
        decision, requested, evaluated, approved, schema, accept = found
        if call.schema is not schema:
            return False
        # prepare(), for arguments it accepts: anything else is the flow's to refuse.
        try:
            raw = canonical_json(call.arguments)
        except (CRAError, TypeError, ValueError, RecursionError):
            return False
        if not raw.startswith(b"{"):
            return False
        arguments = orjson.loads(raw)
        if accept is not None:
            try:
                accept(arguments)
            except Exception:  # noqa: BLE001 - not surely valid: the flow's first_error judges
                return False
        elif schema is not None and first_error(schema, arguments) is not None:
            return False
        call.arguments = arguments
        call.digest = parameters_hash = sha256_hex(raw)
        call.decision = decision
        call.policy_id = decision.policy_id
        execution_id = call.execution_id
        events: Record = [
            (
                ev.ACTION_REQUESTED,
                requested.fill(execution_id, parameters_hash)
                if tool_call_id is None
                else requested.fill(execution_id, parameters_hash, tool_call_id),
            ),
            (ev.POLICY_EVALUATED, evaluated),
            (ev.ACTION_APPROVED, approved.fill(execution_id)),
        ]
        if not record(call, events):
            raise _ended(call)
        call.started_ns = time.monotonic_ns()
        return True

    def prepare(self, call: Call) -> tuple[CRAError, str, str] | None:
        """Canonicalise the arguments and run the rules before the policy (no events).

        Returns the refusal ``(error, reason, policy_id)``, or None when the policy decides.
        """
        try:
            raw = canonical_json(call.arguments)
            if not raw.startswith(b"{"):
                raise TypeError(f"arguments must be a mapping, not {type(call.arguments).__name__}")
            call.arguments = orjson.loads(raw)
            call.digest = sha256_hex(raw)
        except (CRAError, TypeError, ValueError, RecursionError) as exc:
            call.digest = ""
            return (
                InvalidParametersError(
                    f"arguments of {call.action_id} cannot be guarded: {exc}. Guarded calls "
                    "take JSON values (dict, list, str, int, float, bool, None)",
                    details={"action_id": call.action_id, "reason": "unrecordable_arguments"},
                ),
                "invalid_parameters",
                RUNTIME_POLICY,
            )
        if call.mapping_error is not None:
            error = call.mapping_error
            if not isinstance(error, ActionNotFoundError):
                raise error  # the shell denies it as an internal failure
            error.details.setdefault("action_id", call.action_id)
            error.details.setdefault("policy_id", UNDECLARED_ACTION)
            return error, "unmapped_tool", UNDECLARED_ACTION
        if call.refusal is not None:
            return call.refusal
        schema = call.schema
        if schema is not None:
            problem = first_error(schema, call.arguments)
            if problem is not None:
                at = f" at {problem[0]}" if problem[0] else ""
                return (
                    InvalidParametersError(
                        f"arguments of {call.action_id} are invalid: {problem[1]}{at}",
                        details={"action_id": call.action_id, "path": problem[0]},
                    ),
                    "invalid_parameters",
                    RUNTIME_POLICY,
                )
        return None

    def decide(self, call: Call, *, consume: bool) -> PolicyDecision:
        """The policy's decision for ``call`` (memoised where it is a pure function)."""
        if call.context is not None:
            return self.engine.decide(call.action_id, self._context(call), consume=consume)
        key = (call.action_id, call.agent_id, call.risk_tier)
        decision = self._memo.get(key)
        if decision is None:
            decision = self.engine.decide(call.action_id, self._context(call), consume=consume)
            if (
                not decision.rate_limits
                and decision.retry_after is None
                and not self.engine.is_time_dependent(call.action_id)
            ):
                if len(self._memo) >= _MEMO_SIZE:
                    self._memo.pop(next(iter(self._memo)), None)
                self._memo[key] = decision
        return decision

    def policy_answer(self, agent_id: str, action_id: str) -> Precheck:
        """The policy's answer for ``agent_id`` calling ``action_id`` at its declared tier.

        What :meth:`precheck` says without checking arguments, from the same memo, without
        building a call (LangChain asks this before every tool call).
        """
        found = self.engine.action(action_id)
        risk = found[1].risk_tier if found is not None else "low"
        decision = self._memo.get((action_id, agent_id, risk))
        if decision is None:
            decision = self.engine.decide(
                action_id, ConditionContext(agent_id=agent_id, risk_tier=risk)
            )
        return Precheck(action_id, decision.result, decision.policy_id, decision.reason, risk, None)

    def precheck(self, call: Call) -> Precheck:
        """What :meth:`flow` would decide, with no event and no rate-limit slot taken."""
        problem = self.prepare(call)
        if problem is not None:
            error, reason, policy_id = problem
            if isinstance(error, InvalidParametersError):
                return Precheck(
                    call.action_id, "deny", policy_id, reason, call.risk_tier, error.message
                )
        decision = self.decide(call, consume=False)
        return Precheck(
            call.action_id,
            decision.result,
            decision.policy_id,
            decision.reason,
            call.risk_tier,
            None,
        )

    def approval_request(self, call: Call, decision: PolicyDecision) -> ApprovalRequest:
        """What the approver is shown."""
        return ApprovalRequest(
            session_id=call.session_id,
            agent_id=call.agent_id,
            action_id=call.action_id,
            arguments=orjson.loads(orjson.dumps(call.arguments)),  # the approver's own copy
            digest=call.digest,
            risk_tier=call.risk_tier,
            reason=decision.reason or "Requires human approval",
            policy_id=decision.policy_id,
        )

    def outcome(
        self, call: Call, result: Any, error: BaseException | None
    ) -> tuple[str, Mapping[str, Any] | bytes]:
        """The ``action.executed`` / ``action.failed`` event of a call that ran.

        Survives hostile values: a result canonical JSON cannot carry is digested through its
        ``repr``, and a ``repr``/``str`` that raises is replaced by a placeholder.
        """
        duration_ms = (time.monotonic_ns() - call.started_ns) // 1_000_000
        if error is None:
            return ev.ACTION_EXECUTED, self._executed(call, duration_ms, result)
        return ev.ACTION_FAILED, ev.action_failed(
            call.action_id,
            call.execution_id,
            duration_ms,
            type(error).__name__,
            _safe_text(error, str),
            shadow=call.shadow,
        )

    # -- payloads ----------------------------------------------------------------------------

    def _template(
        self,
        key: tuple[Any, ...],
        builder: Callable[..., Mapping[str, Any]],
        open_names: tuple[str, ...],
        fixed: dict[str, Any],
    ) -> Template:
        """Make (and keep) the template of ``builder``'s payload for ``key``.

        Called on a miss only: the callers look ``key`` up themselves, so a cached template
        costs one dict lookup and no allocation beyond the key.
        """
        if len(self._templates) >= _TEMPLATES_MAX:
            self._templates.clear()
        found = self._templates[key] = Template(builder, open_names, **fixed)
        return found

    def _evaluated(self, call: Call, decision: PolicyDecision) -> bytes:
        """``policy.evaluated``: the same bytes for every call of one action and decision."""
        policy_id, result, action_id = decision.policy_id, decision.result, call.action_id
        key = (policy_id, result, action_id, call.shadow)
        found = self._constants.get(key)
        if found is None:
            if len(self._constants) >= _TEMPLATES_MAX:
                self._constants.clear()
            found = self._constants[key] = canonical_json(
                ev.policy_evaluated(policy_id, result, action_id, shadow=call.shadow)
            )
        return found

    def _requested_template(self, call: Call) -> Template:
        """The ``action.requested`` template for the call's action and optional fields."""
        resolution_id, tool_call_id = call.resolution_id, call.tool_call_id
        names = _REQUESTED_OPEN[resolution_id is not None, tool_call_id is not None]
        # Which stated tiers the payload records is the builder's rule: the key is the raw tier.
        key = ("requested", call.action_id, names, call.stated_risk, call.shadow)
        found = self._templates.get(key)
        if found is None:
            fixed: dict[str, Any] = {
                "action_id": call.action_id,
                "risk_tier": call.stated_risk,
                "shadow": call.shadow,
            }
            if resolution_id is None:
                fixed["resolution_id"] = None
            if tool_call_id is None:
                fixed["tool_call_id"] = None
            found = self._template(key, ev.action_requested, names, fixed)
        return found

    def _requested(self, call: Call) -> bytes:
        """``action.requested``, from the template for the call's action and optional fields."""
        template = self._requested_template(call)
        resolution_id, tool_call_id = call.resolution_id, call.tool_call_id
        if resolution_id is None:
            if tool_call_id is None:
                return template.fill(call.execution_id, call.digest)
            return template.fill(call.execution_id, call.digest, tool_call_id)
        if tool_call_id is None:
            return template.fill(call.execution_id, call.digest, resolution_id)
        return template.fill(call.execution_id, call.digest, resolution_id, tool_call_id)

    def _approved_template(self, call: Call, policy_id: str) -> Template:
        """The ``action.approved`` template of a call no person approved."""
        resolution_id = call.resolution_id
        names = _APPROVED_OPEN[resolution_id is not None]
        key = ("approved", call.action_id, policy_id, names, call.shadow)
        found = self._templates.get(key)
        if found is None:
            fixed: dict[str, Any] = {
                "action_id": call.action_id,
                "policy_id": policy_id,
                "shadow": call.shadow,
            }
            if resolution_id is None:
                fixed["resolution_id"] = None
            found = self._template(key, ev.action_approved, names, fixed)
        return found

    def _approved(self, call: Call, policy_id: str) -> Mapping[str, Any] | bytes:
        """``action.approved``: a template unless a person approved (rare: built as a dict)."""
        if call.approver is not None:
            return ev.action_approved(
                call.action_id,
                call.execution_id,
                policy_id,
                resolution_id=call.resolution_id,
                approver=call.approver,
                approval_reason=call.reason,
                original_parameters_hash=(
                    None if call.original_arguments is None else digest(call.original_arguments)
                ),
                shadow=call.shadow,
            )
        template = self._approved_template(call, policy_id)
        if call.resolution_id is None:
            return template.fill(call.execution_id)
        return template.fill(call.execution_id, call.resolution_id)

    def _executed(self, call: Call, duration_ms: int, result: Any) -> bytes:
        """``action.executed``: the action's template with the call's id, time and digest."""
        key = ("executed", call.action_id, call.shadow)
        template = self._templates.get(key)
        if template is None:
            template = self._template(
                key,
                ev.action_executed,
                ("execution_id", "duration_ms", "result_hash"),
                {"action_id": call.action_id, "shadow": call.shadow},
            )
        return template.fill(call.execution_id, duration_ms, _result_digest(result))

    # -- helpers -----------------------------------------------------------------------------

    def _context(self, call: Call) -> ConditionContext:
        if call.context is not None:
            if call.context.risk_tier != call.risk_tier:
                call.context = dataclasses.replace(call.context, risk_tier=call.risk_tier)
            return call.context
        return ConditionContext(agent_id=call.agent_id, risk_tier=call.risk_tier)

    def _answer(
        self, call: Call, decision: PolicyDecision, *, ask: bool
    ) -> Generator[Step, Any, ApprovalDecision | None]:
        if call.approval_id is not None:
            approval, why_not = self.approvals.consume(
                call.approval_id,
                session_id=call.session_id,
                action_id=call.action_id,
                digest=call.digest,
                atlas_digest=call.atlas_digest,
            )
            if approval is None:
                return ApprovalDecision(False, "token", why_not)
            return _granted(approval)
        if call.approval is not None:
            return call.approval
        if not ask:
            return None
        answer = yield self.approval_request(call, decision)
        if not isinstance(answer, ApprovalDecision):
            answer = ApprovalDecision(
                answer is True, "handler", None if answer else "approval_denied"
            )
        if not call.session.active:  # the session ended while the approver was asked
            raise _ended(call)
        return answer

    def _refuse(
        self,
        call: Call,
        events: Record,
        reason: str,
        policy_id: str,
        *,
        approver: str | None = None,
        approval_reason: str | None = None,
    ) -> Generator[Step, Any, None]:
        call.policy_id = policy_id
        call.reason = reason
        events.append(
            (
                ev.ACTION_DENIED,
                ev.action_denied(
                    call.action_id,
                    call.execution_id,
                    reason,
                    policy_id,
                    approver=approver,
                    approval_reason=approval_reason,
                ),
            )
        )
        call.refusing = True
        accepted = yield events
        if not accepted:
            raise _ended(call)


_Checker = Callable[[Mapping[str, Any], Mapping[str, Any]], "tuple[str, str] | None"]
#: A schema's fast check: returns when the parameters are surely valid, raises otherwise.
_Accept = Callable[[Any], Any]
#: The parameter checker, imported on first use (``import cra_agents`` loads no jsonschema).
_check: _Checker | None = None


def compile_parameter_checks(schemas: Iterable[Mapping[str, Any]]) -> None:
    """Load the parameter checker and compile the validators of ``schemas`` ahead of calls."""
    global _check
    from cra_agents.runtime._params import compile_validators
    from cra_agents.runtime._params import first_error as loaded

    _check = loaded
    compile_validators(schemas)


def first_error(schema: Mapping[str, Any], parameters: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first way ``parameters`` fail ``schema`` (the validators load on first use)."""
    global _check
    if _check is None:
        from cra_agents.runtime._params import first_error as loaded

        _check = loaded
    return _check(schema, parameters)


def _fast_validator(schema: Mapping[str, Any]) -> _Accept | None:
    """The fast check of ``schema`` (see :func:`cra_agents.runtime._params.fast_validator`)."""
    from cra_agents.runtime._params import fast_validator

    return fast_validator(schema)


def _granted(approval: Approval) -> ApprovalDecision:
    return ApprovalDecision(True, approval.approver, approval.reason)


def _denial(action_id: str, decision: PolicyDecision) -> ActionDeniedError:
    if decision.retry_after is not None:
        return RateLimitExceededError(
            f"{action_id}: rate limit {decision.policy_id} exhausted, retry after "
            f"{decision.retry_after:.0f}s",
            action_id=action_id,
            policy_id=decision.policy_id,
            retry_after=decision.retry_after,
        )
    reason = decision.reason or "Denied by policy"
    return ActionDeniedError(
        f"{action_id} denied by {decision.policy_id}: {reason}",
        action_id=action_id,
        policy_id=decision.policy_id,
        reason=reason,
    )


def _ended(call: Call) -> SessionEndedError:
    return SessionEndedError(
        f"session {call.session_id} ended before {call.action_id} was decided; it did not run",
        details={"action_id": call.action_id, "reason": "session_ended"},
    )


def internal_denial(
    call: Call, exc: BaseException
) -> tuple[tuple[str, dict[str, Any]], ActionDeniedError]:
    """The ``action.denied`` event and the error of a call whose deciding failed (fail closed)."""
    text = _safe_text(exc, str)[:500]
    event = (
        ev.ACTION_DENIED,
        ev.action_denied(
            call.action_id,
            call.execution_id,
            "internal_error",
            INTERNAL_POLICY,
            error=f"{type(exc).__name__}: {text}",
        ),
    )
    error = ActionDeniedError(
        f"{call.action_id} denied: the decision failed ({type(exc).__name__}: {text})",
        action_id=call.action_id,
        policy_id=INTERNAL_POLICY,
        reason="internal_error",
    )
    error.__cause__ = exc
    return event, error


def _safe_text(value: object, render: Any) -> str:
    """``str``/``repr`` of ``value``, or a placeholder when it raises (hostile objects)."""
    try:
        text = render(value)
        if isinstance(text, str):
            return text
    except Exception:  # noqa: BLE001, S110 - a hostile __str__ must not lose the record
        pass
    try:
        return f"<unprintable {type(value).__name__}>"
    except Exception:  # noqa: BLE001 - not even the type name
        return "<unprintable>"


def _result_digest(result: Any) -> str:
    try:
        return digest(result)
    except Exception:  # noqa: BLE001 - not JSON (objects, cycles, NaN): digest what it shows
        return digest(_safe_text(result, repr))
