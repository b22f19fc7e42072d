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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from cra_agents._clock import parse_timestamp_ns
from cra_agents._requests import resolve_request
from cra_agents.atlas import AtlasSource
from cra_agents.policy import ConditionContext, Effect, RateLimiter
from cra_agents.protocol import TraceEvent
from cra_agents.runtime import Runtime
from cra_agents.trace import read_events, verify_chain

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
    if not records or records[0]["event_type"] != "session.started":
        raise ValueError("a replay needs a whole session, starting with session.started")
    clock = _ReplayClock()
    runtime = Runtime(
        atlases, store="memory://", default_deny=default_deny, clock_skew_seconds=float("inf")
    )
    runtime.engine.limiter = RateLimiter(clock=clock.monotonic)
    runtime.engine.clock = clock.wall
    start = records[0]
    session = runtime.create_session(start["payload"]["agent_id"], start["payload"]["goal"])
    report = ReplayReport(session_id=str(start["session_id"]))
    contexts: dict[str, ConditionContext] = {}
    done = 0
    index = 1
    try:
        while index < len(records):
            if progress is not None:
                progress(index - done)
                done = index
            event = records[index]
            clock.ns = parse_timestamp_ns(event["timestamp"])
            kind = event["event_type"]
            if kind == "carp.request.received":
                index = _replay_resolve(runtime, session, records, index, report, contexts)
                continue
            if kind == "action.requested":
                index = _replay_execute(
                    runtime, records, index, report, contexts, start["payload"]["agent_id"]
                )
                continue
            index += 1
    finally:
        runtime.close()
    if progress is not None:
        progress(len(records) - done)
    return report


def _replay_resolve(
    runtime: Runtime,
    session: Any,
    records: Sequence[Mapping[str, Any]],
    index: int,
    report: ReplayReport,
    contexts: dict[str, ConditionContext],
) -> int:
    request = records[index]["payload"]
    before: dict[str, tuple[str, str | None]] = {}
    completed: Mapping[str, Any] | None = None
    end = index + 1
    while end < len(records):
        event = records[end]
        if event["event_type"] == "policy.evaluated":
            payload = event["payload"]
            before[str(payload.get("action_id"))] = (str(payload["result"]), payload["policy_id"])
        elif event["event_type"] == "carp.resolution.completed":
            completed = event["payload"]
            break
        elif event["event_type"] == "carp.request.received":
            break
        end += 1
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
        session.session_id, event_type="policy.evaluated", since_sequence=last
    ):
        evaluated = replayed.payload
        after[evaluated["action_id"]] = (evaluated["result"], evaluated["policy_id"])
    sequence = int(records[index]["sequence"])
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
    return end + 1 if completed is not None else end


def _replay_execute(
    runtime: Runtime,
    records: Sequence[Mapping[str, Any]],
    index: int,
    report: ReplayReport,
    contexts: dict[str, ConditionContext],
    agent_id: str,
) -> int:
    requested = records[index]
    payload = requested["payload"]
    action_id = str(payload["action_id"])
    # The gate (guarded calls, middleware) records the policy's answer between the request and
    # its outcome; shadow mode adds policy.violated there too.
    evaluated: Mapping[str, Any] | None = None
    position = index + 1
    while position < len(records) and records[position]["event_type"] in (
        "policy.evaluated",
        "policy.violated",
    ):
        between = records[position]
        if (
            between["event_type"] == "policy.evaluated"
            and between["payload"].get("action_id") == action_id
        ):
            evaluated = between["payload"]
        position += 1
    outcome = records[position] if position < len(records) else None
    end = position + 1
    if outcome is None or outcome["event_type"] not in ("action.approved", "action.denied"):
        report.skipped.append((int(requested["sequence"]), "no recorded outcome"))
        return index + 1
    reason = str(outcome["payload"].get("reason", ""))
    if outcome["event_type"] == "action.denied" and (
        reason in _RUNTIME_REASONS or outcome["payload"].get("policy_id") == "carp-runtime"
    ):
        report.skipped.append((int(requested["sequence"]), f"runtime rule: {reason}"))
        return end
    ctx = contexts.get(str(payload.get("resolution_id")))
    if ctx is None:  # a gate call: decided on the action's own risk tier, as the runtime does
        found = runtime.engine.action(action_id)
        ctx = ConditionContext(
            agent_id=agent_id, risk_tier=found[1].risk_tier if found is not None else "low"
        )
    decision = runtime.engine.decide(action_id, ctx, consume=True)
    if evaluated is not None and evaluated.get("result") in _RESULTS:
        before: tuple[str, str | None] = (str(evaluated["result"]), evaluated.get("policy_id"))
    elif outcome["event_type"] == "action.approved":
        before = ("allow", outcome["payload"].get("policy_id"))
    elif reason == "approval_required":
        before = ("requires_approval", outcome["payload"].get("policy_id"))
    else:
        before = ("deny", outcome["payload"].get("policy_id"))
    after_result = {
        Effect.ALLOW: "allow",
        Effect.DENY: "deny",
        Effect.REQUIRE_APPROVAL: "requires_approval",
    }[decision.effect]
    after: tuple[str, str | None] = (after_result, decision.policy_id)
    if before[1] is None:  # older traces did not record the allowing policy
        after = (after_result, None) if after_result == "allow" else after
    report.decisions.append(
        DecisionReplay(
            "execute",
            int(requested["sequence"]),
            action_id,
            before,
            after,
            note=decision.reason or "",
        )
    )
    return end


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
    "action.requested": "requested",
    "action.approved": "approved",
    "action.denied": "denied",
    "action.executed": "executed",
    "action.failed": "failed",
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
    if not records or records[0]["event_type"] != "session.started":
        raise ValueError("a session's events start with session.started")
    first = records[0]
    state = SessionState(
        session_id=str(first["session_id"]),
        agent_id=str(first["payload"].get("agent_id")),
        goal=str(first["payload"].get("goal")),
        started_at=str(first["timestamp"]),
    )
    pending: dict[str, Any] = {}
    executions: dict[str, ExecutionState] = {}
    for event in records[1:]:
        kind, payload = event["event_type"], event["payload"]
        if kind == "carp.request.received":
            pending = {
                "request": payload,
                "allowed": [],
                "denied": {},
                "approval": [],
                "blocks": [],
            }
        elif kind == "policy.evaluated" and pending:
            action_id = str(payload.get("action_id"))
            if payload["result"] == "deny":
                pending["denied"][action_id] = str(payload["policy_id"])
            else:
                pending["allowed"].append(action_id)
                if payload["result"] == "requires_approval":
                    pending["approval"].append(action_id)
        elif kind == "context.injected" and pending:
            pending["blocks"].append(str(payload.get("block_id")))
        elif kind == "carp.resolution.completed" and pending:
            state.resolutions.append(
                ResolutionState(
                    resolution_id=str(payload["resolution_id"]),
                    request_id=str(pending["request"].get("request_id")),
                    goal=str(pending["request"].get("goal")),
                    decision_type=str(payload["decision_type"]),
                    allowed=pending["allowed"],
                    denied=pending["denied"],
                    needs_approval=pending["approval"],
                    context_blocks=pending["blocks"],
                )
            )
            pending = {}
        elif kind in (
            "action.requested",
            "action.approved",
            "action.denied",
            "action.executed",
            "action.failed",
        ):
            execution_id = str(payload.get("execution_id"))
            current = executions.get(execution_id)
            if current is None:
                current = executions[execution_id] = ExecutionState(
                    execution_id,
                    str(payload["action_id"]),
                    payload.get("resolution_id"),
                    "requested",
                )
                state.executions.append(current)
            current.status = _STATUS[kind]
            current.policy_id = payload.get("policy_id", current.policy_id)
            current.reason = payload.get("reason", payload.get("error_message", current.reason))
            current.duration_ms = payload.get("duration_ms", current.duration_ms)
        elif kind == "session.ended":
            state.ended_at = str(event["timestamp"])
            state.end_reason = str(payload.get("reason"))
    return state
