"""Replay, diff and state reconstruction of stored TRACE sessions.

* :func:`replay_session` re-runs every resolve and execute decision of a stored session
  against a set of atlases — the same ones (a determinism check) or a *candidate* version
  (which decisions would change if it were deployed?). Rate limits and time windows are
  evaluated on the recorded clock, so they replay as they happened.
* :func:`diff_traces` compares two traces event by event, ignoring ids, hashes and times, and
  classifies each difference as minor (timings) or major.
* :func:`reconstruct_session` rebuilds a session's state (resolutions, allowed and denied
  actions, executions, approvals) from its events alone.

Replay sits above the runtime: it drives a real :class:`~cra_agents.Runtime` in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from cra_agents._clock import parse_timestamp_ns
from cra_agents._requests import resolve_request
from cra_agents.atlas import AtlasSource
from cra_agents.policy import ConditionContext, RateLimiter
from cra_agents.protocol import TraceEvent
from cra_agents.protocol import events as ev
from cra_agents.runtime import Runtime
from cra_agents.trace import (
    CallRecord,
    ResolutionRecord,
    event_field,
    event_payload,
    fold_session,
    read_events,
    verify_chain,
)

__all__ = [
    "DecisionReplay",
    "ExecutionState",
    "ReplayReport",
    "ResolutionState",
    "SessionState",
    "TraceDiff",
    "TraceDifference",
    "diff_traces",
    "load_events",
    "reconstruct_session",
    "replay_session",
]

EventsSource = Iterable[TraceEvent | Mapping[str, Any]] | str | os.PathLike[str]
_RESULTS = frozenset({"allow", "deny", "requires_approval"})
_RUNTIME_REASONS = frozenset(
    {
        "duplicate_request_id",
        "clock_skew",
        "agent_mismatch",
        "resolution_not_found",
        "resolution_expired",
        "invalid_parameters",
        "invalid_request",
    }
)


def load_events(source: EventsSource) -> list[dict[str, Any]]:
    """Events as plain dicts from models, dicts or a ``.trace.jsonl`` file.

    A file is read by the one strict reader, :func:`~cra_agents.trace.read_events`:
    duplicate keys, NaN, bad UTF-8 and torn lines are refused exactly as
    :func:`~cra_agents.verify_chain` refuses them, and nothing is coerced.

    Raises:
        ValueError: a line of the file is not a valid event (:class:`~cra_agents.trace.TornTail`
            when the last line is incomplete).
    """
    if isinstance(source, str | os.PathLike):
        return read_events(source)
    return [e.model_dump(mode="json") if isinstance(e, TraceEvent) else dict(e) for e in source]


# -- replay -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecisionReplay:
    """One decision of the trace, as recorded and as replayed.

    ``kind`` is ``resolve`` (the overall decision of a resolution), ``action`` (one action
    within a resolution) or ``execute``. ``before`` / ``after`` are ``(result, policy_id)``
    pairs; ``None`` when the action did not exist on that side.
    """

    kind: Literal["resolve", "action", "execute"]
    sequence: int
    action_id: str | None
    before: tuple[str, str | None] | None
    after: tuple[str, str | None] | None
    note: str = ""

    @property
    def identical(self) -> bool:
        """Whether the outcome (result and deciding policy) is the same."""
        return self.before == self.after

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": self.kind,
            "sequence": self.sequence,
            "action_id": self.action_id,
            "before": list(self.before) if self.before else None,
            "after": list(self.after) if self.after else None,
            "identical": self.identical,
            "note": self.note,
        }


@dataclass(frozen=True)
class ReplayReport:
    """Every replayed decision of one session."""

    session_id: str
    decisions: list[DecisionReplay] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def changed(self) -> list[DecisionReplay]:
        """Decisions whose outcome would differ."""
        return [d for d in self.decisions if not d.identical]

    @property
    def identical(self) -> bool:
        """True when no decision changes."""
        return not self.changed

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "session_id": self.session_id,
            "decisions": len(self.decisions),
            "changed": [d.as_dict() for d in self.changed],
            "skipped": [{"sequence": s, "reason": r} for s, r in self.skipped],
        }


class _ReplayClock:
    """Wall and monotonic time as recorded, advanced event by event."""

    def __init__(self) -> None:
        self.ns = 0

    def monotonic(self) -> float:
        return self.ns / 1e9

    def wall(self) -> datetime:
        return datetime.fromtimestamp(self.ns / 1e9, UTC)


def replay_session(
    events: EventsSource,
    atlases: Iterable[AtlasSource],
    *,
    default_deny: bool = False,
    progress: Callable[[int], object] | None = None,
) -> ReplayReport:
    """Re-decide every resolve and execute of one stored session against ``atlases``.

    Args:
        events: The session's events (models, dicts or a ``.trace.jsonl`` path).
        atlases: The atlases to decide with: the recorded ones, or a candidate version.
        default_deny: Replay with declared actions default-denied.
        progress: Called with the number of events consumed, as the replay advances (for a
            progress bar); the calls add up to the number of events.

    Returns:
        A :class:`ReplayReport`; ``report.changed`` lists the decisions that would differ.
        Refusals by runtime rules rather than policy (clock skew, unknown resolution,
        invalid parameters...) are listed in ``report.skipped``: they do not depend on atlases.

    Raises:
        ValueError: the events do not verify, or do not start with ``session.started``.
    """
    records = load_events(events)
    check = verify_chain(records)
    if not check.valid:
        raise ValueError(f"the trace does not verify ({check.error_type}): {check.error_message}")
    if not records or records[0]["event_type"] != ev.SESSION_STARTED:
        raise ValueError("a replay needs a whole session, starting with session.started")
    folded = fold_session(records)
    # What each request and each call start is: decisions replay in the order they began.
    starts: dict[int, ResolutionRecord | CallRecord] = {
        id(resolution.received): resolution
        for resolution in folded.resolutions
        if resolution.received is not None
    }
    starts.update((id(call.requested), call) for call in folded.calls if call.has_request)
    clock = _ReplayClock()
    runtime = Runtime(
        atlases,
        store="memory://",
        default_deny=default_deny,
        clock_skew_seconds=float("inf"),
        clock=clock.wall,
        rate_limiter=RateLimiter(clock=clock.monotonic),
    )
    start = records[0]
    agent_id = start["payload"]["agent_id"]
    session = runtime.create_session(agent_id, start["payload"]["goal"])
    report = ReplayReport(session_id=str(start["session_id"]))
    contexts: dict[str, ConditionContext] = {}
    done = 0
    try:
        for index, event in enumerate(records):
            begun = starts.get(id(event))
            if begun is None:
                continue
            if progress is not None:
                progress(index - done)
                done = index
            clock.ns = parse_timestamp_ns(event["timestamp"])
            if isinstance(begun, ResolutionRecord):
                _replay_resolve(runtime, session, event, begun, report, contexts)
            else:
                _replay_execute(runtime, begun, report, contexts, session.session_id)
    finally:
        runtime.close()
    if progress is not None:
        progress(len(records) - done)
    return report


def _replay_resolve(
    runtime: Runtime,
    session: Any,
    requested: Mapping[str, Any],
    record: ResolutionRecord,
    report: ReplayReport,
    contexts: dict[str, ConditionContext],
) -> None:
    request = requested["payload"]
    before: dict[str, tuple[str, str | None]] = {}
    for recorded in record.evaluated:
        payload = event_payload(recorded)
        before[str(payload.get("action_id"))] = (str(payload["result"]), payload["policy_id"])
    completed: Mapping[str, Any] | None = None
    if record.completed is not None and record.decision_type is not None:
        completed = event_payload(record.completed)
    loaded = {atlas.atlas_id for atlas in runtime.atlases}
    wanted = [a for a in request.get("atlas_ids") or [] if a in loaded]
    last = runtime.session(session.session_id).event_count - 1
    resolution = runtime.resolve(
        resolve_request(
            session,
            request["goal"],
            risk_tier=request.get("risk_tier", "low"),
            context_hints=request.get("context_hints", ()),
            required_capabilities=request.get("required_capabilities", ()),
            atlas_ids=wanted or None,
            context=request.get("context"),
        )
    )
    after: dict[str, tuple[str, str | None]] = {}
    for replayed in runtime.trace_events(
        session.session_id, event_type=ev.POLICY_EVALUATED, since_sequence=last
    ):
        evaluated = replayed.payload
        after[evaluated["action_id"]] = (evaluated["result"], evaluated["policy_id"])
    sequence = int(requested["sequence"])
    for action_id in list(before) + [a for a in after if a not in before]:
        report.decisions.append(
            DecisionReplay(
                "action", sequence, action_id, before.get(action_id), after.get(action_id)
            )
        )
    if completed is not None:
        report.decisions.append(
            DecisionReplay(
                "resolve",
                sequence,
                None,
                (str(completed["decision_type"]), None),
                (resolution.decision.type, None),
            )
        )
        contexts[str(completed["resolution_id"])] = ConditionContext(
            agent_id=session.agent_id,
            risk_tier=request.get("risk_tier", "low"),
            capabilities=frozenset(request.get("required_capabilities", ())),
            context=request.get("context"),
        )


def _replay_execute(
    runtime: Runtime,
    call: CallRecord,
    report: ReplayReport,
    contexts: dict[str, ConditionContext],
    session_id: str,
) -> None:
    payload = event_payload(call.requested)
    sequence = int(event_field(call.requested, "sequence"))
    action_id = str(payload["action_id"])
    # The gate (guarded calls, middleware) records the policy's answer between the request and
    # its decision; CARP execute records none.
    evaluated = None if call.evaluated is None else event_payload(call.evaluated)
    outcome = None if call.decided is None else event_payload(call.decided)
    if outcome is None:
        report.skipped.append((sequence, "no recorded outcome"))
        return
    reason = str(outcome.get("reason", ""))
    if call.decision == "deny" and (
        reason in _RUNTIME_REASONS or outcome.get("policy_id") == "carp-runtime"
    ):
        report.skipped.append((sequence, f"runtime rule: {reason}"))
        return
    # Through the gate's own decision (phases, risk rule, rate limits on the recorded clock):
    # a resolution's execute call on that resolution's context, a gate call on its own.
    decision = runtime.decide(
        session_id,
        action_id,
        risk_tier=payload.get("risk_tier"),
        context=contexts.get(str(payload.get("resolution_id"))),
    )
    if evaluated is not None and evaluated.get("result") in _RESULTS:
        before: tuple[str, str | None] = (str(evaluated["result"]), evaluated.get("policy_id"))
    elif call.decision == "allow":
        before = ("allow", outcome.get("policy_id"))
    elif reason == "approval_required":
        before = ("requires_approval", outcome.get("policy_id"))
    else:
        before = ("deny", outcome.get("policy_id"))
    after_result = decision.result
    after: tuple[str, str | None] = (after_result, decision.policy_id)
    if before[1] is None:  # older traces did not record the allowing policy
        after = (after_result, None) if after_result == "allow" else after
    report.decisions.append(
        DecisionReplay("execute", sequence, action_id, before, after, note=decision.reason or "")
    )


# -- diff ---------------------------------------------------------------------------------------

_IGNORED = frozenset(
    {
        "event_id",
        "trace_id",
        "span_id",
        "parent_span_id",
        "session_id",
        "timestamp",
        "event_hash",
        "previous_event_hash",
    }
)
_IGNORED_PAYLOAD = frozenset({"request_id", "resolution_id", "execution_id", "approval_id"})
_MINOR = frozenset({"duration_ms", "evaluation_ms", "token_count", "token_estimate"})


@dataclass(frozen=True, slots=True)
class TraceDifference:
    """One difference between two traces."""

    path: str
    type: Literal["value_changed", "added", "removed"]
    significance: Literal["minor", "major"]
    before: Any = None
    after: Any = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "path": self.path,
            "type": self.type,
            "significance": self.significance,
            "before": self.before,
            "after": self.after,
        }


@dataclass(frozen=True)
class TraceDiff:
    """The semantic difference of two traces."""

    differences: list[TraceDifference]

    @property
    def compatibility(self) -> Literal["identical", "semantically_equivalent", "different"]:
        """``identical``, ``semantically_equivalent`` (minor differences only) or ``different``."""
        if not self.differences:
            return "identical"
        if all(d.significance == "minor" for d in self.differences):
            return "semantically_equivalent"
        return "different"

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "compatibility": self.compatibility,
            "differences": [d.as_dict() for d in self.differences],
        }


def _compare(before: Any, after: Any, path: str, out: list[TraceDifference], minor: bool) -> None:
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        for key in sorted(set(before) | set(after)):
            if path.count("/") == 2 and path.endswith("/payload") and key in _IGNORED_PAYLOAD:
                continue
            sub = f"{path}/{key}"
            is_minor = minor or key in _MINOR
            if key not in after:
                out.append(
                    TraceDifference(
                        sub, "removed", "minor" if is_minor else "major", before[key], None
                    )
                )
            elif key not in before:
                out.append(
                    TraceDifference(
                        sub, "added", "minor" if is_minor else "major", None, after[key]
                    )
                )
            else:
                _compare(before[key], after[key], sub, out, is_minor)
    elif before != after:
        out.append(
            TraceDifference(path, "value_changed", "minor" if minor else "major", before, after)
        )


def diff_traces(first: EventsSource, second: EventsSource) -> TraceDiff:
    """Compare two traces event by event (ids, hashes and times ignored).

    Events are aligned by position; extra events on either side are ``added`` / ``removed``.
    Timing fields (``duration_ms``, ``evaluation_ms``) are minor, everything else major.
    """
    a, b = load_events(first), load_events(second)
    out: list[TraceDifference] = []
    for index in range(max(len(a), len(b))):
        if index >= len(a):
            out.append(TraceDifference(f"/{index}", "added", "major", None, b[index]))
        elif index >= len(b):
            out.append(TraceDifference(f"/{index}", "removed", "major", a[index], None))
        else:
            left = {k: v for k, v in a[index].items() if k not in _IGNORED}
            right = {k: v for k, v in b[index].items() if k not in _IGNORED}
            _compare(left, right, f"/{index}", out, minor=False)
    return TraceDiff(out)


# -- state --------------------------------------------------------------------------------------

_STATUS: dict[str, Literal["requested", "approved", "denied", "executed", "failed"]] = {
    "pending": "requested",
    "approved": "approved",
    "denied": "denied",
    "executed": "executed",
    "failed": "failed",
}


@dataclass
class ResolutionState:
    """A resolution as its events describe it."""

    resolution_id: str
    request_id: str
    goal: str
    decision_type: str
    allowed: list[str] = field(default_factory=list)
    denied: dict[str, str] = field(default_factory=dict)
    needs_approval: list[str] = field(default_factory=list)
    context_blocks: list[str] = field(default_factory=list)


@dataclass
class ExecutionState:
    """An execution as its events describe it."""

    execution_id: str
    action_id: str
    resolution_id: str | None
    status: Literal["requested", "approved", "denied", "executed", "failed"]
    policy_id: str | None = None
    reason: str | None = None
    duration_ms: int | None = None


@dataclass
class SessionState:
    """A session rebuilt from its events."""

    session_id: str
    agent_id: str
    goal: str
    started_at: str
    ended_at: str | None = None
    end_reason: str | None = None
    resolutions: list[ResolutionState] = field(default_factory=list)
    executions: list[ExecutionState] = field(default_factory=list)

    @property
    def approvals_pending(self) -> list[str]:
        """Actions the latest resolution left waiting for approval."""
        return list(self.resolutions[-1].needs_approval) if self.resolutions else []


def reconstruct_session(events: EventsSource) -> SessionState:
    """Rebuild a session's state from its events alone.

    Raises:
        ValueError: the events do not start with ``session.started``.
    """
    records = load_events(events)
    if not records or records[0]["event_type"] != ev.SESSION_STARTED:
        raise ValueError("a session's events start with session.started")
    first = records[0]
    state = SessionState(
        session_id=str(first["session_id"]),
        agent_id=str(first["payload"].get("agent_id")),
        goal=str(first["payload"].get("goal")),
        started_at=str(first["timestamp"]),
    )
    folded = fold_session(records)
    for resolution in folded.resolutions:
        if resolution.received is None or resolution.decision_type is None:
            continue  # only completed resolutions of a request count
        request = event_payload(resolution.received)
        completed = event_payload(resolution.completed) if resolution.completed else {}
        rebuilt = ResolutionState(
            resolution_id=str(completed["resolution_id"]),
            request_id=str(request.get("request_id")),
            goal=str(request.get("goal")),
            decision_type=str(completed["decision_type"]),
            context_blocks=[str(event_payload(e).get("block_id")) for e in resolution.injected],
        )
        for evaluated in resolution.evaluated:
            payload = event_payload(evaluated)
            action_id = str(payload.get("action_id"))
            if payload["result"] == "deny":
                rebuilt.denied[action_id] = str(payload["policy_id"])
            else:
                rebuilt.allowed.append(action_id)
                if payload["result"] == "requires_approval":
                    rebuilt.needs_approval.append(action_id)
        state.resolutions.append(rebuilt)
    for call in folded.calls:
        failed = call.outcome_kind == "failed"
        reason = call.error_message if failed else call.reason if call.decision == "deny" else None
        outcome = None if call.outcome is None else event_payload(call.outcome)
        decided = None if call.decided is None else event_payload(call.decided)
        state.executions.append(
            ExecutionState(
                execution_id=call.execution_id,
                action_id=str(event_payload(call.requested)["action_id"]),
                resolution_id=event_payload(call.requested).get("resolution_id"),
                status=_STATUS[call.outcome_kind],
                policy_id=None if decided is None else decided.get("policy_id"),
                reason=reason,
                duration_ms=None if outcome is None else outcome.get("duration_ms"),
            )
        )
    if folded.ended is not None:
        state.ended_at = str(event_field(folded.ended, "timestamp"))
        state.end_reason = str(event_payload(folded.ended).get("reason"))
    return state
