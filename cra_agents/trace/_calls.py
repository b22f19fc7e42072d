"""One fold from a session's events to call and resolution records, used by every reader.

The report, replay, notebooks, ``cra trace show`` and the OTLP/JSON export all read a session
through :func:`fold_session` (or :func:`fold_calls`), so an event means the same thing to each
of them. The fold keeps the events it was given: :class:`~cra_agents.TraceEvent` models stay
models and JSON dicts stay dicts; :func:`event_field` and :func:`event_payload` read either.

How events are grouped:

* **Calls** are grouped by the ``execution_id`` in their payloads, never by adjacency:
  concurrent calls interleave in one chain. A call starts with its ``action.requested``; the
  gate then records ``policy.evaluated`` (and, in shadow mode, ``policy.violated``), then
  ``action.approved`` or ``action.denied``, and later ``action.executed`` or ``action.failed``.
  CARP ``execute`` records ``action.requested`` (with a ``resolution_id``) and the decision,
  without ``policy.evaluated``.
* ``policy.evaluated`` and ``policy.violated`` carry no ``execution_id``: each belongs to the
  latest undecided call of its ``action_id`` that has none yet (the gate writes a call's
  events as one batch). A ``policy.evaluated`` inside a resolution (between
  ``carp.request.received`` and its ``carp.resolution.completed``) belongs to the resolution,
  unless such a call was requested after the resolution began.
* **Fallback for events without an** ``execution_id`` (an ``action.denied`` written after an
  internal failure, or a Rust-core trace): a decision pairs with the latest undecided call of
  the same ``action_id``, an outcome with the latest call of that action that has no outcome.
  When there is none, the event becomes a call record of its own, with ``execution_id ""``
  and ``requested`` set to that event (:attr:`CallRecord.has_request` is then false). An
  event whose ``execution_id`` matches no ``action.requested`` (a trace that starts mid-call)
  likewise starts a record of its own, which later events of that id join.
* A call keeps its first decision and its first outcome; any further action event of the
  same ``execution_id`` is kept in :attr:`CallRecord.events` only.
* ``approval.requested`` (a person asked about a call that waits outside it, e.g. a LangGraph
  interrupt) belongs to the next ``action.requested`` with the same ``tool_call_id`` (or,
  without one, the same action and ``parameters_hash``): :attr:`CallRecord.asked`. A question
  no call followed yet (a paused run) becomes a pending call record of its own, whose
  ``requested`` is the question.

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from cra_agents._clock import parse_timestamp_ns
from cra_agents.protocol import TraceEvent
from cra_agents.protocol import events as ev

__all__ = [
    "CallRecord",
    "ContextRecord",
    "EventLike",
    "OutcomeKind",
    "ResolutionRecord",
    "SessionRecord",
    "event_field",
    "event_payload",
    "fold_calls",
    "fold_session",
]

#: A TRACE event: a :class:`~cra_agents.TraceEvent` model or its JSON dict form.
EventLike: TypeAlias = TraceEvent | Mapping[str, Any]
#: How a call ended, as far as its events tell.
OutcomeKind = Literal["executed", "failed", "denied", "pending", "approved"]

_EMPTY: Mapping[str, Any] = {}


def event_field(event: EventLike, name: str) -> Any:
    """A top-level field of an event (``None`` when absent), whichever form it is."""
    if isinstance(event, TraceEvent):
        return getattr(event, name, None)
    return event.get(name)


def event_payload(event: EventLike) -> Mapping[str, Any]:
    """The payload of an event; an empty mapping when it has none or it is not an object."""
    payload = event.payload if isinstance(event, TraceEvent) else event.get("payload")
    return payload if isinstance(payload, Mapping) else _EMPTY


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _kind(event: EventLike | None) -> str | None:
    return None if event is None else _text(event_field(event, "event_type"))


def _get(event: EventLike | None, key: str) -> str | None:
    """A payload value as text (``None`` when the event or the key is missing)."""
    return None if event is None else _text(event_payload(event).get(key))


def _shadow(event: EventLike) -> bool:
    payload = event_payload(event)
    if payload.get("shadow"):
        return True
    details = payload.get("details")  # policy.violated says it under details
    return isinstance(details, Mapping) and bool(details.get("shadow"))


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One governed call: its ``action.requested`` and what followed it.

    ``requested`` is the ``action.requested`` event, except for a record that the fold
    started from a decision or outcome with no request before it (see the module docstring;
    :attr:`has_request` is false then). Properties read the events whichever form they are.
    """

    session_id: str
    execution_id: str
    action_id: str
    requested: EventLike
    #: The ``policy.evaluated`` of this call (gate calls; CARP ``execute`` records none).
    evaluated: EventLike | None = None
    #: The ``policy.violated`` of this call (shadow mode: what would have been refused).
    violated: EventLike | None = None
    #: ``action.approved`` or ``action.denied``.
    decided: EventLike | None = None
    #: ``action.executed`` or ``action.failed``.
    outcome: EventLike | None = None
    #: Every event of the call, in chain order (``requested`` first).
    events: tuple[EventLike, ...] = ()
    #: The ``approval.requested`` that asked a person about the call before it was made.
    asked: EventLike | None = None

    @property
    def approval_wait_ms(self) -> float | None:
        """How long the person took: from ``approval.requested`` to the decision."""
        if self.asked is None or self.decided is None:
            return None
        try:
            asked = parse_timestamp_ns(str(event_field(self.asked, "timestamp")))
            decided = parse_timestamp_ns(str(event_field(self.decided, "timestamp")))
        except ValueError:
            return None
        return max(decided - asked, 0) / 1e6

    @property
    def has_request(self) -> bool:
        """Whether ``requested`` is an ``action.requested`` event."""
        return _kind(self.requested) == ev.ACTION_REQUESTED

    @property
    def decision(self) -> Literal["allow", "deny"] | None:
        """``allow`` (approved), ``deny`` (denied) or ``None`` (no decision recorded)."""
        kind = _kind(self.decided)
        if kind == ev.ACTION_APPROVED:
            return "allow"
        if kind == ev.ACTION_DENIED:
            return "deny"
        return None

    @property
    def result(self) -> str | None:
        """The policy's answer: ``allow``, ``deny`` or ``requires_approval`` (gate calls)."""
        return _get(self.evaluated, "result")

    @property
    def policy_id(self) -> str | None:
        """The deciding policy: of the decision, else of the violation, else evaluated."""
        return (
            _get(self.decided, "policy_id")
            or _get(self.violated, "policy_id")
            or _get(self.evaluated, "policy_id")
        )

    @property
    def reason(self) -> str | None:
        """Why the call was denied, else why shadow mode would have refused it."""
        if self.decision == "deny":
            return _get(self.decided, "reason")
        if self.violated is None:
            return None
        details = event_payload(self.violated).get("details")
        reason = details.get("reason") if isinstance(details, Mapping) else None
        return _text(reason) or _get(self.violated, "violation_type")

    @property
    def approver(self) -> str | None:
        """Who approved or refused the call, when a person (or handler) did."""
        return _get(self.decided, "approver")

    @property
    def approval_reason(self) -> str | None:
        """What the approver said (approving, refusing, or answering in the tool's place)."""
        return _get(self.decided, "approval_reason")

    @property
    def edited(self) -> bool:
        """Whether the approver edited the call's arguments before it ran."""
        return _get(self.decided, "original_parameters_hash") is not None

    @property
    def outcome_kind(self) -> OutcomeKind:
        """``executed``/``failed`` (ran), ``denied``, ``approved`` (not run yet) or ``pending``."""
        kind = _kind(self.outcome)
        if kind == ev.ACTION_EXECUTED:
            return "executed"
        if kind == ev.ACTION_FAILED:
            return "failed"
        decision = self.decision
        if decision == "deny":
            return "denied"
        if decision == "allow":
            return "approved"
        return "pending"

    @property
    def tool_call_id(self) -> str | None:
        """The framework's tool call id, when the adapter passed one."""
        return _get(self.requested, "tool_call_id")

    @property
    def resolution_id(self) -> str | None:
        """The CARP resolution a ``execute`` call ran under."""
        return _get(self.requested, "resolution_id")

    @property
    def tool_name(self) -> str | None:
        """The tool's name (payload key ``tool`` of ``action.requested``), when recorded."""
        return _get(self.requested, "tool") if self.has_request else None

    @property
    def shadow(self) -> bool:
        """Whether the call was recorded in shadow mode (any of its events says so)."""
        return any(_shadow(event) for event in self.events or (self.requested,))

    @property
    def duration_ms(self) -> int | None:
        """The tool's recorded run time (an integer number of ms), else ``None``."""
        value = None if self.outcome is None else event_payload(self.outcome).get("duration_ms")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def error_code(self) -> str | None:
        """The exception type of a failed call."""
        return _get(self.outcome, "error_code") if _kind(self.outcome) == ev.ACTION_FAILED else None

    @property
    def error_message(self) -> str | None:
        """The exception message of a failed call."""
        if _kind(self.outcome) != ev.ACTION_FAILED:
            return None
        return _get(self.outcome, "error_message")

    @property
    def start_ns(self) -> int:
        """Timestamp of ``requested`` (ns since the epoch).

        Raises:
            ValueError: the timestamp is not RFC 3339.
        """
        return parse_timestamp_ns(str(event_field(self.requested, "timestamp")))

    @property
    def end_ns(self) -> int:
        """Timestamp of the call's last event (ns since the epoch).

        Raises:
            ValueError: the timestamp is not RFC 3339.
        """
        last = self.events[-1] if self.events else self.requested
        return parse_timestamp_ns(str(event_field(last, "timestamp")))


@dataclass(frozen=True, slots=True)
class ResolutionRecord:
    """One CARP resolution: ``carp.request.received`` to ``carp.resolution.completed``.

    ``received`` is ``None`` for a completion (or a cached answer) with no request before it.
    """

    session_id: str
    received: EventLike | None
    #: ``carp.resolution.completed`` or ``carp.resolution.cached``; None while open.
    completed: EventLike | None = None
    #: The ``policy.evaluated`` events of the resolution, one per action considered.
    evaluated: tuple[EventLike, ...] = ()
    #: Its ``context.injected`` events.
    injected: tuple[EventLike, ...] = ()

    @property
    def request_id(self) -> str | None:
        """The request's id (from the request, else from the completion)."""
        if self.received is not None:
            return _get(self.received, "request_id")
        return _get(self.completed, "request_id")

    @property
    def resolution_id(self) -> str | None:
        """The id the completion gave the resolution."""
        return _get(self.completed, "resolution_id")

    @property
    def decision_type(self) -> str | None:
        """The overall decision (``allow``, ``deny``, ``partial``, ``requires_approval``)."""
        if _kind(self.completed) != ev.RESOLUTION_COMPLETED:
            return None
        return _get(self.completed, "decision_type")

    @property
    def cached(self) -> bool:
        """Whether the answer came from the cache (``carp.resolution.cached``)."""
        if self.completed is None or _kind(self.completed) != ev.RESOLUTION_CACHED:
            return False
        return bool(event_payload(self.completed).get("cache_hit", True))

    @property
    def goal(self) -> str | None:
        """The goal of the request."""
        return _get(self.received, "goal")


@dataclass(frozen=True, slots=True)
class ContextRecord:
    """One ``context.injected`` event and the resolution it was injected in (if any)."""

    event: EventLike
    resolution: ResolutionRecord | None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session's events folded: its start and end, resolutions, context and calls."""

    session_id: str | None
    #: The first ``session.started`` event.
    started: EventLike | None
    #: The last ``session.ended`` event.
    ended: EventLike | None
    resolutions: tuple[ResolutionRecord, ...]
    #: Every ``context.injected`` event, in chain order.
    context: tuple[ContextRecord, ...]
    #: Calls in order of their ``action.requested``.
    calls: tuple[CallRecord, ...]
    #: The events as given.
    events: tuple[EventLike, ...]

    @property
    def agent_id(self) -> str | None:
        """The agent of ``session.started``."""
        return _get(self.started, "agent_id")

    @property
    def goal(self) -> str | None:
        """The goal of ``session.started``."""
        return _get(self.started, "goal")

    @property
    def metadata(self) -> Mapping[str, Any] | None:
        """The metadata of ``session.started``, if any."""
        value = None if self.started is None else event_payload(self.started).get("metadata")
        return value if isinstance(value, Mapping) else None

    @property
    def end_reason(self) -> str | None:
        """Why the session ended (``session.ended`` reason)."""
        return _get(self.ended, "reason")

    @property
    def shadow(self) -> bool:
        """Whether any event of the session was recorded in shadow mode."""
        return any(event_payload(event).get("shadow") for event in self.events)


# -- the fold -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Call:
    position: int
    execution_id: str
    action_id: str
    requested: EventLike
    has_request: bool
    evaluated: EventLike | None = None
    violated: EventLike | None = None
    decided: EventLike | None = None
    outcome: EventLike | None = None
    events: list[EventLike] = field(default_factory=list)
    asked: EventLike | None = None

    def freeze(self) -> CallRecord:
        return CallRecord(
            session_id=_text(event_field(self.requested, "session_id")) or "",
            execution_id=self.execution_id,
            action_id=self.action_id,
            requested=self.requested,
            evaluated=self.evaluated,
            violated=self.violated,
            decided=self.decided,
            outcome=self.outcome,
            events=tuple(self.events),
            asked=self.asked,
        )


@dataclass(slots=True)
class _Resolution:
    position: int
    received: EventLike | None
    completed: EventLike | None = None
    evaluated: list[EventLike] = field(default_factory=list)
    injected: list[EventLike] = field(default_factory=list)

    def freeze(self) -> ResolutionRecord:
        first = self.received if self.received is not None else self.completed
        session_id = None if first is None else _text(event_field(first, "session_id"))
        return ResolutionRecord(
            session_id=session_id or "",
            received=self.received,
            completed=self.completed,
            evaluated=tuple(self.evaluated),
            injected=tuple(self.injected),
        )


class _Fold:
    """Walks one session's events once, in chain order."""

    def __init__(self) -> None:
        self.events: list[EventLike] = []
        self.calls: list[_Call] = []
        self.by_execution: dict[str, _Call] = {}
        # Per action: calls that may still take a decision / an outcome (the fallbacks and
        # policy.* look here, latest first; settled calls are dropped from the end lazily).
        self.undecided: dict[str, list[_Call]] = {}
        self.running: dict[str, list[_Call]] = {}
        self.resolutions: list[_Resolution] = []
        self.open: _Resolution | None = None
        self.context: list[tuple[EventLike, _Resolution | None]] = []
        self.started: EventLike | None = None
        self.ended: EventLike | None = None
        # approval.requested events no call has taken yet: (key, position, event).
        self.questions: list[tuple[tuple[str, ...], int, EventLike]] = []

    def feed(self, event: EventLike) -> None:
        position = len(self.events)
        self.events.append(event)
        kind = _kind(event)
        if kind == ev.SESSION_STARTED:
            self.started = self.started if self.started is not None else event
        elif kind == ev.SESSION_ENDED:
            self.ended = event
        elif kind == ev.REQUEST_RECEIVED:
            self.open = _Resolution(position, event)
            self.resolutions.append(self.open)
        elif kind in (ev.RESOLUTION_COMPLETED, ev.RESOLUTION_CACHED):
            resolution = self.open
            if resolution is None:  # a cached answer, or a trace that starts mid-resolution
                resolution = _Resolution(position, None)
                self.resolutions.append(resolution)
            resolution.completed = event
            self.open = None
        elif kind == ev.CONTEXT_INJECTED:
            if self.open is not None:
                self.open.injected.append(event)
            self.context.append((event, self.open))
        elif kind == ev.POLICY_EVALUATED:
            call = self._gate_call(event, "evaluated")
            if call is not None:
                call.evaluated = event
                call.events.append(event)
            elif self.open is not None:
                self.open.evaluated.append(event)
        elif kind == ev.POLICY_VIOLATED:
            call = self._gate_call(event, "violated")
            if call is not None:
                call.violated = event
                call.events.append(event)
        elif kind == ev.ACTION_REQUESTED:
            call = self._start(position, event, has_request=True)
            if self.questions:
                self._answer(call, event)
        elif kind == ev.APPROVAL_REQUESTED:
            self.questions.append((_question_key(event), position, event))
        elif kind in ev.DECISION_EVENTS or kind in ev.OUTCOME_EVENTS:
            self._settle(position, event, decision=kind in ev.DECISION_EVENTS)

    def _answer(self, call: _Call, requested: EventLike) -> None:
        """Give ``call`` the oldest open question about it."""
        tool_call_id = _get(requested, "tool_call_id")
        key = (
            ("tool_call", tool_call_id)
            if tool_call_id
            else ("digest", call.action_id, _get(requested, "parameters_hash") or "")
        )
        for index, (asked_key, _, question) in enumerate(self.questions):
            if asked_key == key:
                call.asked = question
                del self.questions[index]
                return

    def _start(self, position: int, event: EventLike, *, has_request: bool) -> _Call:
        execution_id = _get(event, "execution_id") or ""
        action_id = _get(event, "action_id") or ""
        call = _Call(position, execution_id, action_id, event, has_request, events=[event])
        self.calls.append(call)
        if execution_id:
            self.by_execution[execution_id] = call
        if has_request:
            self.undecided.setdefault(action_id, []).append(call)
        self.running.setdefault(action_id, []).append(call)
        return call

    @staticmethod
    def _latest(calls: list[_Call] | None, settled: str, skip: str | None = None) -> _Call | None:
        """The latest call whose ``settled`` slot is empty (and ``skip`` slot, if given)."""
        if not calls:
            return None
        while calls and getattr(calls[-1], settled) is not None:
            calls.pop()  # settled for good: never a candidate again
        for call in reversed(calls):
            if getattr(call, settled) is None and (skip is None or getattr(call, skip) is None):
                return call
        return None

    def _gate_call(self, event: EventLike, slot: str) -> _Call | None:
        call = self._latest(self.undecided.get(_get(event, "action_id") or ""), "decided", slot)
        if call is None or not call.has_request:
            return None
        if slot == "evaluated" and self.open is not None and call.position < self.open.position:
            return None  # a resolution's own policy.evaluated
        return call

    def _settle(self, position: int, event: EventLike, *, decision: bool) -> None:
        execution_id = _get(event, "execution_id")
        call: _Call | None
        if execution_id:
            call = self.by_execution.get(execution_id)
        else:
            action_id = _get(event, "action_id") or ""
            if decision:
                call = self._latest(self.undecided.get(action_id), "decided")
            else:
                call = self._latest(self.running.get(action_id), "outcome")
        if call is None:
            call = self._start(position, event, has_request=False)
        else:
            call.events.append(event)
        if decision and call.decided is None:
            call.decided = event
        elif not decision and call.outcome is None:
            call.outcome = event

    def session(self) -> SessionRecord:
        frozen = {id(r): r.freeze() for r in self.resolutions}
        calls = self.calls
        if self.questions:  # asked, never made (yet): pending, in chain order
            for _, position, question in self.questions:
                action_id = _get(question, "action_id") or ""
                calls.append(
                    _Call(
                        position, "", action_id, question, False, events=[question], asked=question
                    )
                )
            calls.sort(key=lambda call: call.position)
        first = self.events[0] if self.events else None
        return SessionRecord(
            session_id=None if first is None else _text(event_field(first, "session_id")),
            started=self.started,
            ended=self.ended,
            resolutions=tuple(frozen.values()),
            context=tuple(
                ContextRecord(event, None if owner is None else frozen[id(owner)])
                for event, owner in self.context
            ),
            calls=tuple(call.freeze() for call in calls),
            events=tuple(self.events),
        )


def _question_key(event: EventLike) -> tuple[str, ...]:
    tool_call_id = _get(event, "tool_call_id")
    if tool_call_id:
        return ("tool_call", tool_call_id)
    return ("digest", _get(event, "action_id") or "", _get(event, "parameters_hash") or "")


def fold_session(events: Iterable[EventLike]) -> SessionRecord:
    """Fold one session's events (in chain order) into a :class:`SessionRecord`.

    Events of types the fold does not know are kept in ``events`` only. The events are not
    verified: run :func:`~cra_agents.trace.verify_chain` for that.

    Example::

        session = fold_session(runtime.trace_events(session_id))
        [(c.action_id, c.outcome_kind) for c in session.calls]
    """
    fold = _Fold()
    for event in events:
        fold.feed(event)
    return fold.session()


def fold_calls(events: Iterable[EventLike]) -> list[CallRecord]:
    """The calls of one session's events, in order of their ``action.requested``."""
    return list(fold_session(events).calls)
