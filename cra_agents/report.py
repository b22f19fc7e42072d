"""Visual trace reports: a session's tool calls as a timeline, and a self-contained HTML page.

Usage::

    import cra_agents as cra
    from cra_agents.report import timeline, write_report

    events = cra.open_store("sqlite:///.cra/trace.db").read(session_id)
    tl = timeline(events)            # a notebook shows ``tl`` inline as an SVG timeline
    [(c.action_id, c.decision, c.outcome) for c in tl.calls]
    write_report(events, "report.html")

:func:`render_report` writes one HTML5 document with everything inline (CSS, SVG and a small
script that sorts and filters the decision table); it loads nothing from anywhere, and its
Content-Security-Policy forbids it to. Every string that comes from the trace is escaped: a
trace is untrusted input, and an action id or a denial reason may carry markup.

Built on the standard library only (no template engine, no IPython), and not imported by
``cra_agents`` itself.

.. versionadded:: 0.1
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from cra_agents._clock import parse_timestamp_ns
from cra_agents._text import visible
from cra_agents._version import __version__
from cra_agents.protocol import TraceEvent
from cra_agents.protocol import events as ev
from cra_agents.trace import (
    CallRecord,
    ChainVerification,
    EventLike,
    ResolutionRecord,
    event_field,
    event_payload,
    fold_session,
    iter_jsonl,
    verify_chain,
)

if TYPE_CHECKING:
    from cra_agents.trace import Checkpoint

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "DECISION_COLORS",
    "LANES_FROM",
    "MAX_RAW_EVENTS",
    "MAX_TABLE_ROWS",
    "Decision",
    "EventsSource",
    "Outcome",
    "Status",
    "Timeline",
    "ToolCall",
    "notable_calls",
    "render_report",
    "timeline",
    "write_report",
]

Decision = Literal["allowed", "approved", "denied", "pending"]
Outcome = Literal["executed", "failed"]
#: What a bar's colour shows: the decision, except that a call whose tool raised is ``failed``.
Status = Literal["allowed", "approved", "denied", "failed", "pending"]
EventsSource = Iterable[TraceEvent | Mapping[str, Any]] | str | os.PathLike[str]

#: Bar and badge colour per :data:`Status` (also used by the report's CSS).
DECISION_COLORS: Final[Mapping[str, str]] = {
    "allowed": "#2e7d32",
    "approved": "#1565c0",
    "denied": "#c62828",
    "failed": "#e65100",
    "pending": "#9e9e9e",
}
_STATUS_LABELS: Final[Mapping[str, str]] = {
    "allowed": "allowed",
    "approved": "approved by a person",
    "denied": "denied",
    "failed": "failed (tool raised)",
    "pending": "pending (no decision recorded)",
}
_STATUSES: Final = ("allowed", "approved", "denied", "failed", "pending")
_FONT: Final = (
    "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, 'Noto Sans', "
    "'Liberation Sans', sans-serif"
)
_MONO: Final = "ui-monospace, 'SFMono-Regular', Menlo, Consolas, 'Liberation Mono', monospace"
_SVG_NS: Final = "http://www.w3.org/2000/svg"
_RESOLVE: Final = "#6f42c1"


# -- model ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One governed tool call, from its ``action.requested`` event to its outcome.

    ``decision`` is ``allowed`` (a policy allowed it), ``approved`` (it needed approval and a
    person or handler gave it), ``denied`` or ``pending`` (requested, no decision recorded).
    ``outcome`` is ``executed``, ``failed`` or ``None`` (not run, or run outside the runtime's
    view, e.g. after :meth:`~cra_agents.Runtime.execute`). ``duration_ms`` is the recorded
    tool run time when there is one, else the time from request to the last event of the call.
    ``shadow`` calls were recorded in shadow mode, where the runtime lets every call run and
    only records what it would have refused (``policy.violated``, whose reason becomes
    ``reason``). ``started_at`` is the ``action.requested`` timestamp; the runtime writes a
    call's request and decision together, so for an approved call it is the time of the
    approval, not of the question.
    """

    execution_id: str | None
    action_id: str
    decision: Decision
    outcome: Outcome | None
    policy_id: str | None
    reason: str | None
    approver: str | None
    started_at: str
    ended_at: str | None
    duration_ms: float | None
    error_code: str | None
    error_message: str | None
    sequence: int
    shadow: bool = False
    #: Timestamp of the ``action.approved`` / ``action.denied`` event.
    decided_at: str | None = None
    resolution_id: str | None = None
    approval_reason: str | None = None
    #: When a person was asked (``approval.requested``), for calls that waited outside.
    approval_requested_at: str | None = None
    #: How long the person took to answer (ms), when both moments are recorded.
    approval_wait_ms: float | None = None
    #: The approver edited the arguments before the call ran.
    edited: bool = False

    @property
    def status(self) -> Status:
        """The decision, or ``failed`` when the tool raised."""
        return "failed" if self.outcome == "failed" else self.decision

    def as_dict(self) -> dict[str, Any]:
        """JSON form (with ``status``)."""
        return {**asdict(self), "status": self.status}


@dataclass
class Timeline:
    """A session's tool calls, resolutions and injected context, in trace order.

    Build it with :func:`timeline`. In a notebook it renders itself as an SVG timeline.
    ``resolutions`` holds one dict per ``carp.request.received`` (its request, the
    ``carp.resolution.completed`` outcome and the policies evaluated for each action);
    ``context_blocks`` one dict per ``context.injected`` event; ``events`` the events as dicts.
    """

    session_id: str | None
    agent_id: str | None
    goal: str | None
    started_at: str | None
    ended_at: str | None
    end_reason: str | None
    calls: list[ToolCall] = field(default_factory=list)
    resolutions: list[dict[str, Any]] = field(default_factory=list)
    context_blocks: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: Recorded ``session.ended`` duration (ms), else None.
    recorded_duration_ms: float | None = None

    @property
    def duration_ms(self) -> float | None:
        """Session duration: recorded by ``session.ended``, else from the timestamps."""
        if self.recorded_duration_ms is not None:
            return self.recorded_duration_ms
        start, end = _ns(self.started_at), _ns(self.ended_at)
        if start is None or end is None:
            return None
        return (end - start) / 1e6

    @property
    def approvals(self) -> list[ToolCall]:
        """Calls a person (or approval handler) approved, or was asked about."""
        return [
            call
            for call in self.calls
            if call.decision == "approved" or call.approval_requested_at is not None
        ]

    @property
    def errors(self) -> list[dict[str, Any]]:
        """``error.occurred`` events (e.g. a payload the chain could not record)."""
        return [e for e in self.events if e.get("event_type") == ev.ERROR_OCCURRED]

    def counts(self) -> dict[str, int]:
        """Calls per :data:`Status`, plus ``calls`` and ``executed``."""
        out = dict.fromkeys(_STATUSES, 0)
        for call in self.calls:
            out[call.status] += 1
        out["calls"] = len(self.calls)
        out["executed"] = sum(call.outcome == "executed" for call in self.calls)
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "session_id": self.session_id,
            "agent_id": self.agent_id,
            "goal": self.goal,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "duration_ms": self.duration_ms,
            "counts": self.counts(),
            "calls": [call.as_dict() for call in self.calls],
            "resolutions": [dict(r) for r in self.resolutions],
            "context_blocks": [dict(b) for b in self.context_blocks],
            "events": [dict(e) for e in self.events],
        }

    def svg(self, width: int = 960, *, xmlns: bool = True) -> str:
        """The timeline as SVG: one row per call, a bar from its request to its last event.

        Bars are scaled to the session's duration and coloured by :data:`Status`; every bar
        is at least 4 px wide, so instantaneous calls stay visible. Hovering a bar shows its
        policy and reason. ``xmlns=False`` leaves out the namespace declaration, which inline
        SVG in HTML does not need.
        """
        return _TimelineSvg(self, max(width, 320)).render(xmlns=xmlns)

    def legend_svg(self, *, xmlns: bool = True) -> str:
        """A one-line SVG legend of the bar colours, with the count of calls for each."""
        counts = self.counts()
        parts: list[str] = []
        x = 0
        for status in _STATUSES:
            label = f"{_STATUS_LABELS[status]} ({counts[status]})"
            parts.append(
                f'<g class="legend-item legend-{status}"><rect x="{x}" y="3" width="12" '
                f'height="12" rx="2" fill="{DECISION_COLORS[status]}"/>'
                f'<text x="{x + 17}" y="13.5">{_e(label)}</text></g>'
            )
            x += 17 + int(len(label) * 6.6) + 18
        if self.resolutions:
            label = f"CARP resolution ({len(self.resolutions)})"
            parts.append(
                f'<g class="legend-item legend-resolution"><path d="M{x} 4L{x + 12} 4L{x + 6} 14Z" '
                f'fill="{_RESOLVE}"/><text x="{x + 17}" y="13.5">{_e(label)}</text></g>'
            )
            x += 17 + int(len(label) * 6.6) + 18
        ns = f' xmlns="{_SVG_NS}"' if xmlns else ""
        return (
            f'<svg{ns} class="cra-legend" width="{x}" height="18" viewBox="0 0 {x} 18" '
            f'role="img" aria-label="Legend" font-family="{_e(_FONT)}" font-size="12" '
            f'fill="#333">{"".join(parts)}</svg>'
        )

    def __repr__(self) -> str:
        return (
            f"Timeline(session_id={self.session_id!r}, agent_id={self.agent_id!r}, "
            f"calls={len(self.calls)}, resolutions={len(self.resolutions)}, "
            f"events={len(self.events)})"
        )

    def _repr_html_(self) -> str:
        who = " · ".join(
            _e(part) for part in (self.agent_id, self.session_id) if part is not None and part != ""
        )
        return (
            '<div class="cra-timeline-view">'
            f"<div><strong>CRA trace</strong> {who} · {len(self.calls)} tool call"
            f"{'' if len(self.calls) == 1 else 's'}</div>"
            f"{self.svg(xmlns=False)}<div>{self.legend_svg(xmlns=False)}</div></div>"
        )


def notable_calls(calls: Sequence[ToolCall], limit: int) -> list[ToolCall]:
    """Calls in order: every one not simply allowed, then allowed ones up to ``limit`` in all.

    Denied, approved, failed and pending calls are always kept (they are what an audit looks
    for), so more than ``limit`` come back when there are more of those. ``limit <= 0``: all.
    """
    if limit <= 0 or len(calls) <= limit:
        return list(calls)
    notable = sum(call.status != "allowed" for call in calls)
    room = max(limit - notable, 0)
    out: list[ToolCall] = []
    for call in calls:
        if call.status != "allowed":
            out.append(call)
        elif room:
            out.append(call)
            room -= 1
    return out


def _answer(call: ToolCall) -> str:
    """What the person answered, in a word (the approvals table)."""
    if call.decision == "pending":
        return "waiting"
    if call.decision == "denied":
        return "refused"
    return "edited" if call.edited else "approved"


# -- building a timeline -------------------------------------------------------------------


def _text_at(event: EventLike | None) -> str | None:
    """An event's timestamp as text (``None`` without an event, ``""`` without a time)."""
    return None if event is None else _str(event_field(event, "timestamp")) or ""


def _tool_call(call: CallRecord) -> ToolCall:
    """A call record as the report shows it."""
    decided = call.decision
    if decided == "deny":
        decision: Decision = "denied"
    elif decided == "allow":
        needed_approval = call.result == "requires_approval" and not call.shadow
        decision = "approved" if call.approver or needed_approval else "allowed"
    else:  # a call first seen by its outcome ran, so something allowed it
        decision = "allowed" if call.outcome is not None and not call.has_request else "pending"
    kind = call.outcome_kind
    outcome: Outcome | None = kind if kind == "executed" or kind == "failed" else None
    started_at = _text_at(call.requested) or ""
    ended_at: str | None = None
    for event in call.events:  # the call's latest decision or outcome
        if event_field(event, "event_type") in _SETTLING:
            ended_at = _text_at(event) or ended_at
    duration = None if call.outcome is None else _ms(event_payload(call.outcome).get("duration_ms"))
    if duration is None:
        start, end = _ns(started_at), _ns(ended_at)
        if start is not None and end is not None:
            duration = max(end - start, 0) / 1e6
    approved = decided == "allow"
    asked = call.asked is not None
    return ToolCall(
        execution_id=call.execution_id or None,
        action_id=call.action_id or "?",
        decision=decision,
        outcome=outcome,
        policy_id=call.policy_id,
        reason=call.reason,
        approver=call.approver if approved or asked else None,
        started_at=started_at,
        ended_at=ended_at,
        duration_ms=duration,
        error_code=call.error_code,
        error_message=call.error_message,
        sequence=_int(event_field(call.requested, "sequence")),
        shadow=call.shadow,
        decided_at=_text_at(call.decided),
        resolution_id=call.resolution_id,
        approval_reason=call.approval_reason if approved or asked else None,
        approval_requested_at=_text_at(call.asked),
        approval_wait_ms=call.approval_wait_ms,
        edited=call.edited,
    )


_SETTLING: Final = ev.DECISION_EVENTS | ev.OUTCOME_EVENTS


def _resolution(record: ResolutionRecord) -> dict[str, Any]:
    """A resolution record as the report shows it (policies; context ids are added later)."""
    resolution: dict[str, Any]
    if record.received is not None:
        payload = event_payload(record.received)
        atlas_ids = payload.get("atlas_ids")
        resolution = {
            "sequence": _int(event_field(record.received, "sequence")),
            "requested_at": _text_at(record.received),
            "request_id": _str(payload.get("request_id")),
            "operation": _str(payload.get("operation")),
            "goal": _str(payload.get("goal")),
            "risk_tier": _str(payload.get("risk_tier")) or "low",
            "atlas_ids": [str(a) for a in atlas_ids] if isinstance(atlas_ids, list) else [],
            "resolution_id": None,
            "completed_at": None,
            "decision_type": None,
            "allowed_count": None,
            "denied_count": None,
            "context_block_count": None,
            "ttl_seconds": None,
            "cached": False,
            "policies": [
                {
                    "action_id": _str(event_payload(e).get("action_id")),
                    "policy_id": _str(event_payload(e).get("policy_id")),
                    "result": _str(event_payload(e).get("result")),
                }
                for e in record.evaluated
            ],
            "context_block_ids": [],
        }
    else:  # a cached answer, or a trace that starts mid-resolution
        resolution = {
            "sequence": _int(
                None if record.completed is None else event_field(record.completed, "sequence")
            ),
            "requested_at": None,
            "request_id": record.request_id,
            "policies": [],
            "context_block_ids": [],
            "cached": False,
        }
    if record.completed is not None:
        payload = event_payload(record.completed)
        resolution["resolution_id"] = record.resolution_id
        resolution["completed_at"] = _text_at(record.completed)
        if event_field(record.completed, "event_type") == ev.RESOLUTION_CACHED:
            resolution["cached"] = record.cached
        else:
            resolution["decision_type"] = record.decision_type
            for key in ("allowed_count", "denied_count", "ttl_seconds"):
                resolution[key] = _number(payload.get(key))
            count = payload.get("context_block_count", payload.get("context_count"))
            resolution["context_block_count"] = _number(count)
    return resolution


def _build(session_id: str | None, events: list[dict[str, Any]]) -> Timeline:
    folded = fold_session(events)
    started_at = next((t for e in events if (t := _str(e.get("timestamp")))), None)
    if folded.started is not None:
        started_at = _text_at(folded.started) or started_at
    resolutions = {id(record): _resolution(record) for record in folded.resolutions}
    blocks = []
    for context in folded.context:
        block = _block(
            event_payload(context.event),
            _text_at(context.event) or "",
            _int(event_field(context.event, "sequence")),
        )
        if context.resolution is not None:
            resolution = resolutions[id(context.resolution)]
            block["resolution_id"] = resolution.get("resolution_id")
            block["request_id"] = resolution.get("request_id")
            resolution["context_block_ids"].append(block["block_id"])
        blocks.append(block)
    ended = folded.ended
    return Timeline(
        session_id=session_id,
        agent_id=folded.agent_id,
        goal=folded.goal,
        started_at=started_at,
        ended_at=_text_at(ended) or None,
        end_reason=folded.end_reason,
        calls=[_tool_call(call) for call in folded.calls],
        resolutions=list(resolutions.values()),
        context_blocks=blocks,
        events=events,
        recorded_duration_ms=None
        if ended is None
        else _ms(event_payload(ended).get("duration_ms")),
    )


def _block(payload: Mapping[str, Any], timestamp: str, sequence: int) -> dict[str, Any]:
    metadata = payload.get("metadata")
    name = payload.get("name")
    if name is None and isinstance(metadata, Mapping):
        name = metadata.get("name")
    tokens = payload.get("token_count", payload.get("token_estimate"))
    return {
        "block_id": _str(payload.get("block_id", payload.get("context_id"))) or "?",
        "name": _str(name),
        "source": _str(payload.get("source", payload.get("source_atlas"))),
        "priority": _number(payload.get("priority")),
        "token_count": _number(tokens),
        "content_type": _str(payload.get("content_type")),
        "sequence": sequence,
        "injected_at": timestamp,
        "resolution_id": None,
        "request_id": None,
    }


def timeline(events: EventsSource) -> Timeline:
    """Build the :class:`Timeline` of one session.

    Args:
        events: The session's events in stored order: :class:`~cra_agents.TraceEvent`
            models, dicts, or a ``.trace.jsonl`` path (read up to its first unreadable line;
            :func:`~cra_agents.verify_chain` reports that line).

    Raises:
        ValueError: the events belong to more than one session.
        TypeError: an item is neither a ``TraceEvent`` nor a mapping.

    Example::

        tl = timeline(runtime.trace_events(session.session_id))
        tl.counts()   # {'allowed': 3, 'approved': 1, 'denied': 1, 'failed': 0, ...}
    """
    loaded, _ = _load(events)
    return _timeline(loaded)


def _timeline(events: list[dict[str, Any]]) -> Timeline:
    sessions = {str(e.get("session_id")) for e in events}
    if len(sessions) > 1:
        raise ValueError(
            f"a timeline shows one session; these events belong to {len(sessions)}: "
            f"{', '.join(sorted(sessions)[:5])}"
        )
    return _build(next(iter(sessions)) if sessions else None, events)


def _load(source: EventsSource | Timeline) -> tuple[list[dict[str, Any]], Path | None]:
    if isinstance(source, Timeline):
        return source.events, None
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        read: list[dict[str, Any]] = []
        # Up to the first unreadable line, which the verifier reports (torn or not).
        for line in iter_jsonl(path):
            if not isinstance(line, dict):
                break
            read.append(line)
        return read, path
    out: list[dict[str, Any]] = []
    for item in source:
        if isinstance(item, TraceEvent):
            out.append(item.model_dump(mode="json"))
        elif isinstance(item, Mapping):
            out.append(dict(item))
        else:
            raise TypeError(f"expected TraceEvent or mapping, got {type(item).__name__}")
    return out, None


# -- SVG timeline ---------------------------------------------------------------------------

#: More calls than this: the timeline draws one lane per action instead of one row per call.
LANES_FROM: Final = 60
#: The decision table lists every call that was not simply allowed, and allowed calls up to
#: this many rows in all; the raw event list keeps this many events (first and last half).
MAX_TABLE_ROWS: Final = 5000
MAX_RAW_EVENTS: Final = 2000
_ROW: Final = 22
_BAR: Final = 14
_AXIS: Final = 30
_MIN_BAR: Final = 4


class _TimelineSvg:
    def __init__(self, tl: Timeline, width: int) -> None:
        self.tl = tl
        self.width = width
        self.label_w = min(260, width * 3 // 10)
        self.x0 = self.label_w + 8
        self.x1 = width - 16
        times = [t for t in (_ns(e.get("timestamp")) for e in tl.events) if t is not None]
        for call in tl.calls:
            times.extend(t for t in (_ns(call.started_at), _ns(call.ended_at)) if t is not None)
        self.t0 = min(times) if times else 0
        start = _ns(tl.started_at)
        if start is not None:
            self.t0 = min(self.t0, start)
        self.t_end = max(times) if times else 0
        # At least 1 ms, so a session whose events share one instant still has an axis.
        self.span = max(self.t_end - self.t0, 1_000_000)

    def x(self, ns: int) -> float:
        return self.x0 + (ns - self.t0) / self.span * (self.x1 - self.x0)

    def render(self, *, xmlns: bool) -> str:
        calls = self.tl.calls
        # Up to LANES_FROM calls: one row each. More: one row (lane) per action, every call a
        # bar on its action's lane, so a long session stays a readable picture.
        lanes: dict[str, int] | None = None
        if len(calls) > LANES_FROM:
            lanes = {}
            for call in calls:
                lanes.setdefault(call.action_id, len(lanes))
        rows = len(lanes) if lanes is not None else len(calls)
        height = _AXIS + max(rows, 1) * _ROW + 10
        ns = f' xmlns="{_SVG_NS}"' if xmlns else ""
        parts = [
            f'<svg{ns} class="cra-timeline" width="{self.width}" height="{height}" '
            f'viewBox="0 0 {self.width} {height}" role="img" '
            f'aria-label="{_e(self._aria())}" font-family="{_e(_FONT)}" font-size="12">',
            f'<rect class="timeline-bg" x="0" y="0" width="{self.width}" height="{height}" '
            'fill="#ffffff"/>',
        ]
        parts.extend(self._axis(height))
        if not calls:
            parts.append(
                f'<text class="empty" x="{self.x0}" y="{_AXIS + 15}" fill="#666">'
                "No tool calls recorded</text>"
            )
        if lanes is None:
            for index, call in enumerate(calls):
                parts.append(self._lane(index, call.action_id))
                parts.append(self._bar(index, call))
        else:
            for action_id, index in lanes.items():
                parts.append(self._lane(index, action_id))
            for call in calls:
                parts.append(self._bar(lanes[call.action_id], call))
        parts.extend(self._resolutions(height))
        parts.append("</svg>")
        return "".join(parts)

    def _resolutions(self, height: int) -> list[str]:
        """A marker on the axis and a dashed line where each CARP resolution happened."""
        out = []
        for resolution in self.tl.resolutions:
            moment = _ns(resolution.get("requested_at") or resolution.get("completed_at"))
            if moment is None:
                continue
            x = round(self.x(moment), 1)
            decision = resolution.get("decision_type") or "cached"
            tip = (
                f"CARP resolution (seq {resolution.get('sequence')}): {decision}, "
                f"{_count(resolution.get('allowed_count'))} allowed, "
                f"{_count(resolution.get('denied_count'))} denied, "
                f"{len(resolution.get('context_block_ids') or [])} context blocks"
            )
            out.append(
                f'<g class="resolution-marker"><title>{_e(tip)}</title>'
                f'<line x1="{x}" y1="{_AXIS - 6}" x2="{x}" y2="{height - 8}" stroke="{_RESOLVE}" '
                'stroke-width="1" stroke-dasharray="2 3"/>'
                f'<path d="M{x - 5} {_AXIS - 13}L{x + 5} {_AXIS - 13}L{x} {_AXIS - 5}Z" '
                f'fill="{_RESOLVE}"/></g>'
            )
        return out

    def _aria(self) -> str:
        counts = self.tl.counts()
        summary = ", ".join(f"{counts[s]} {s}" for s in _STATUSES if counts[s])
        return f"Timeline of {len(self.tl.calls)} tool calls" + (f": {summary}" if summary else "")

    def _axis(self, height: int) -> list[str]:
        span_ms = self.span / 1e6
        step = _nice_step(span_ms / max((self.x1 - self.x0) / 90, 1))
        out = [
            f'<line class="axis" x1="{self.x0}" y1="{_AXIS - 6}" x2="{self.x1}" '
            f'y2="{_AXIS - 6}" stroke="#888" stroke-width="1"/>'
        ]
        tick = 0.0
        while tick <= span_ms + 1e-9:
            x = round(self.x(int(self.t0 + tick * 1e6)), 1)
            out.append(
                f'<line class="tick" x1="{x}" y1="{_AXIS - 10}" x2="{x}" y2="{height - 8}" '
                f'stroke="#e3e3e3" stroke-width="1"/>'
                f'<text class="tick-label" x="{x}" y="{_AXIS - 13}" text-anchor="middle" '
                f'fill="#555" font-size="11">{_e(_fmt_offset(tick, step))}</text>'
            )
            tick += step
        return out

    def _lane(self, index: int, action_id: str) -> str:
        y = _AXIS + index * _ROW
        stripe = "#f6f8fa" if index % 2 else "#ffffff"
        max_chars = max(int((self.label_w - 8) / 6.6), 6)
        label = action_id
        if len(label) > max_chars:
            label = label[: max_chars - 1] + "…"
        return (
            f'<rect class="row-bg" x="0" y="{y}" width="{self.width}" height="{_ROW}" '
            f'fill="{stripe}"/>'
            f'<text class="label" x="{self.label_w}" y="{y + 15}" text-anchor="end" '
            f'fill="#24292f">{_e(label)}</text>'
        )

    def _bar(self, index: int, call: ToolCall) -> str:
        y = _AXIS + index * _ROW
        status = call.status
        color = DECISION_COLORS[status]
        start = _ns(call.started_at)
        start = self.t0 if start is None else start
        end = self.t_end if call.decision == "pending" else _ns(call.ended_at)
        end = start if end is None else max(end, start)
        left = round(self.x(start))
        bar_w = max(round(self.x(end)) - left, _MIN_BAR)
        left = min(left, self.x1 - bar_w)
        dash = ' stroke="#212121" stroke-width="1.5" stroke-dasharray="3 2"' if call.shadow else ""
        return (
            f'<g class="call call-{status}" data-status="{status}" data-sequence="{call.sequence}">'
            f"<title>{_e(_tooltip(call, start - self.t0))}</title>"
            f'<rect class="bar bar-{status}" x="{left}" y="{y + (_ROW - _BAR) // 2}" '
            f'width="{bar_w}" height="{_BAR}" rx="2" fill="{color}" '
            f'shape-rendering="crispEdges"{dash}/></g>'
        )


def _tooltip(call: ToolCall, offset_ns: int) -> str:
    shadow = " (shadow mode)" if call.shadow else ""
    lines = [f"{call.action_id}: {_STATUS_LABELS[call.status]}{shadow}"]
    lines.append(f"policy: {call.policy_id or '-'}")
    if call.reason:
        lines.append(f"reason: {call.reason}")
    if call.approver:
        lines.append(f"approver: {call.approver}")
    if call.error_code or call.error_message:
        lines.append(f"error: {call.error_code or ''} {call.error_message or ''}".rstrip())
    timing = f"at +{_fmt_ms(offset_ns / 1e6)}"
    if call.duration_ms is not None:
        timing += f", took {_fmt_ms(call.duration_ms)}"
    lines.append(timing)
    lines.append(f"seq {call.sequence}, execution {call.execution_id or '-'}")
    return "\n".join(lines)


def _nice_step(raw_ms: float) -> float:
    """The smallest step of 1, 2 or 5 times a power of ten (ms) at least ``raw_ms``."""
    raw_ms = max(raw_ms, 1e-3)
    power = 10 ** math.floor(math.log10(raw_ms))
    for factor in (1, 2, 5):
        if factor * power >= raw_ms * (1 - 1e-9):
            return float(factor * power)
    return float(10 * power)


def _fmt_offset(ms: float, step: float) -> str:
    if step >= 1000:  # steps of a second or more are whole seconds
        return f"{ms / 1000:.0f} s"
    digits = 0 if step >= 1 or ms == 0 else max(-math.floor(math.log10(step)), 1)
    return f"{ms:.{digits}f} ms"


# -- HTML report ----------------------------------------------------------------------------

_CSS: Final = """
:root{color-scheme:light;--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#ffffff;
--panel:#f6f8fa;--allowed:#2e7d32;--approved:#1565c0;--denied:#c62828;--failed:#e65100;
--pending:#9e9e9e}
*{box-sizing:border-box}
html{font-family:FONT;font-size:15px;line-height:1.5;color:var(--fg);background:var(--bg)}
body{margin:0}
header{padding:20px 32px 12px;border-bottom:1px solid var(--line);background:var(--panel)}
header h1{margin:0 0 4px;font-size:1.5rem;font-weight:600}
header .subtitle{margin:0;color:var(--muted);font-size:.9rem}
nav{margin-top:10px;display:flex;flex-wrap:wrap;gap:4px 14px;font-size:.9rem}
nav a{color:var(--approved);text-decoration:none}
nav a:hover{text-decoration:underline}
main{padding:8px 32px 32px;max-width:1400px}
section{margin-top:26px}
h2{font-size:1.15rem;font-weight:600;margin:0 0 10px;padding-bottom:4px;
border-bottom:1px solid var(--line)}
h3{font-size:1rem;font-weight:600;margin:16px 0 6px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 12px;background:var(--bg)}
.card dt{font-size:.75rem;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.card dd{margin:2px 0 0;font-weight:500;overflow-wrap:anywhere}
.card.wide{grid-column:1/-1}
.counts{display:flex;flex-wrap:wrap;gap:8px;margin-top:12px}
.count{border:1px solid var(--line);border-radius:6px;padding:6px 12px;min-width:110px}
.count b{display:block;font-size:1.4rem;line-height:1.2}
.count span{font-size:.8rem;color:var(--muted)}
.count.allowed{border-left:5px solid var(--allowed)}
.count.approved{border-left:5px solid var(--approved)}
.count.denied{border-left:5px solid var(--denied)}
.count.failed{border-left:5px solid var(--failed)}
.count.pending{border-left:5px solid var(--pending)}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.8rem;font-weight:600;
color:#fff;white-space:nowrap;background:var(--muted)}
.badge-allowed{background:var(--allowed)}.badge-approved{background:var(--approved)}
.badge-denied{background:var(--denied)}.badge-failed{background:var(--failed)}
.badge-pending{background:var(--pending)}.badge-executed{background:#57606a}
.badge-shadow{background:#fff;color:var(--fg);border:1px dashed var(--fg)}
.badge-valid{background:var(--allowed);font-size:1rem;padding:3px 14px}
.badge-invalid{background:var(--denied);font-size:1rem;padding:3px 14px}
.scroll{overflow-x:auto;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%;font-size:.88rem}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{background:var(--panel);font-weight:600;white-space:nowrap;position:sticky;top:0}
tbody tr:nth-child(even){background:#fbfcfd}
tbody tr:hover{background:#eef4fb}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td code{white-space:nowrap}
code,.mono{font-family:MONO;font-size:.85em}
.hash{font-family:MONO;font-size:.82em;overflow-wrap:anywhere}
.muted{color:var(--muted)}
.reason{max-width:380px;overflow-wrap:anywhere}
.status-row{display:flex;align-items:center;gap:14px;flex-wrap:wrap;margin-bottom:10px}
.note{border-left:4px solid var(--pending);background:var(--panel);padding:6px 12px;
margin:10px 0}
.note.warn{border-left-color:var(--failed)}
.note.bad{border-left-color:var(--denied)}
.figure{overflow-x:auto;border:1px solid var(--line);border-radius:6px;padding:8px;
background:#fff}
.legend{margin-top:6px}
.filters{border:0;margin:0 0 8px;padding:0;display:flex;gap:14px;flex-wrap:wrap;
font-size:.88rem}
.filters legend{float:left;margin-right:8px;color:var(--muted)}
.filters label{display:inline-flex;align-items:center;gap:4px;cursor:pointer}
th.sortable{cursor:pointer;user-select:none}
th.sortable:focus{outline:2px solid var(--approved);outline-offset:-2px}
th[aria-sort=ascending]::after{content:" \\25B2";font-size:.7em}
th[aria-sort=descending]::after{content:" \\25BC";font-size:.7em}
details{border:1px solid var(--line);border-radius:6px;padding:6px 12px}
details summary{cursor:pointer;font-weight:600}
pre{margin:0;white-space:pre-wrap;overflow-wrap:anywhere;font-family:MONO;font-size:.8rem}
footer{padding:16px 32px;color:var(--muted);font-size:.8rem;border-top:1px solid var(--line)}
@media print{nav,.filters{display:none}details{border:0}}
""".replace("FONT", _FONT).replace("MONO", _MONO)

# Sorting and filtering of the decision table; the table is complete without it.
_JS: Final = """
(function () {
  "use strict";
  var table = document.getElementById("decision-table");
  if (!table) { return; }
  var body = table.tBodies[0];
  var headers = table.tHead.rows[0].cells;
  function key(row, index, numeric) {
    var cell = row.cells[index];
    var value = cell.getAttribute("data-value");
    if (value === null) { value = cell.textContent; }
    if (numeric) {
      var number = parseFloat(value);
      return isNaN(number) ? -Infinity : number;
    }
    return value.toLowerCase();
  }
  Array.prototype.forEach.call(headers, function (th, index) {
    var numeric = th.getAttribute("data-type") === "number";
    th.classList.add("sortable");
    th.tabIndex = 0;
    function sort() {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a, index, numeric), y = key(b, index, numeric);
        var order = x < y ? -1 : x > y ? 1 : 0;
        if (order === 0) {
          order = parseFloat(a.getAttribute("data-sequence")) -
            parseFloat(b.getAttribute("data-sequence"));
        }
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sort(); }
    });
  });
  var filters = document.getElementById("decision-filters");
  if (!filters) { return; }
  filters.hidden = false;
  filters.addEventListener("change", function () {
    var shown = {};
    Array.prototype.forEach.call(filters.querySelectorAll("input"), function (box) {
      shown[box.value] = box.checked;
    });
    Array.prototype.forEach.call(body.rows, function (row) {
      row.hidden = shown[row.getAttribute("data-status")] === false;
    });
  });
})();
"""


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


#: Nothing may be fetched; only this module's own <style> and <script> may run.
CONTENT_SECURITY_POLICY: Final = (
    f"default-src 'none'; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}; "
    "base-uri 'none'; form-action 'none'"
)


def render_report(
    events: EventsSource | Timeline,
    *,
    verification: ChainVerification | None = None,
    checkpoint: Checkpoint | None = None,
    title: str | None = None,
) -> str:
    """One self-contained HTML5 page about one session.

    Sections (each with a stable id): ``summary``, ``timeline``, ``decisions``,
    ``approvals``, ``chain`` (verification), ``resolutions``, ``context`` and ``events`` (the
    raw events, collapsed).

    Args:
        events: The session's events (models, dicts, a ``.trace.jsonl`` path, or a
            :class:`Timeline`).
        verification: The result of :func:`~cra_agents.verify_chain` to show (pass one
            made with ``checkpoints=`` and ``verify_key=`` to show a checked signature);
            default: the chain is verified here, without checkpoints.
        checkpoint: A signed checkpoint of this log to show (size, head, time, key id).
        title: The page title; default: ``Trace report: <agent id>``.

    Returns:
        The HTML document. It loads nothing: no fonts, scripts, styles or images from
        anywhere, and its Content-Security-Policy says so.

    Example::

        html = render_report(events, checkpoint=cp, verification=verify_chain(
            events, checkpoints=[cp], verify_key=key.public_key()))
    """
    loaded, path = _load(events)
    tl = events if isinstance(events, Timeline) else _timeline(loaded)
    if verification is None:
        verification = verify_chain(path if path is not None else loaded)
    heading = title if title is not None else f"Trace report: {tl.agent_id or 'unknown agent'}"
    report = _Report(tl, verification, checkpoint)
    body = "\n".join(
        [
            report.summary(),
            report.timeline(),
            report.decisions(),
            report.approvals(),
            report.chain(),
            report.resolutions(),
            report.context(),
            report.raw_events(),
        ]
    )
    nav = "".join(
        f'<a href="#{anchor}">{label}</a>'
        for anchor, label in (
            ("summary", "Summary"),
            ("timeline", "Timeline"),
            ("decisions", "Decisions"),
            ("approvals", "Approvals"),
            ("chain", "Chain"),
            ("resolutions", "Resolutions"),
            ("context", "Context"),
            ("events", "Events"),
        )
    )
    session = _e(tl.session_id or "no events")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="cra-agents {_e(__version__)}">\n'
        f"<title>{_e(heading)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f'<header><h1>{_e(heading)}</h1><p class="subtitle">Session <code>{session}</code> '
        f"· TRACE/1.0 audit log · {len(tl.events)} events</p><nav>{nav}</nav></header>\n"
        f"<main>\n{body}\n</main>\n"
        f"<footer>Generated by cra-agents {_e(__version__)}. Everything on this page comes "
        "from the trace and is shown as text; the page loads nothing from anywhere.</footer>\n"
        f"<script>{_JS}</script>\n</body>\n</html>\n"
    )


def write_report(
    events: EventsSource | Timeline, path: str | os.PathLike[str], **kwargs: Any
) -> Path:
    """Write :func:`render_report` to ``path`` (UTF-8) and return the path.

    Keyword arguments go to :func:`render_report`.
    """
    target = Path(path)
    target.write_text(render_report(events, **kwargs), encoding="utf-8")
    return target


_NUM: Final = ' class="num"'


class _Report:
    def __init__(
        self, tl: Timeline, verification: ChainVerification, checkpoint: Checkpoint | None
    ) -> None:
        self.tl = tl
        self.verification = verification
        self.checkpoint = checkpoint
        self.t0 = _ns(tl.started_at)

    def offset(self, timestamp: str | None) -> tuple[str, str]:
        """(text, sort value) of a timestamp relative to the session start."""
        moment = _ns(timestamp)
        if moment is None or self.t0 is None:
            return "—", ""
        ms = (moment - self.t0) / 1e6
        return f"+{_fmt_ms(ms)}", f"{ms:.6f}"

    def summary(self) -> str:
        tl = self.tl
        counts = tl.counts()
        cards = [
            ("Agent", _e(tl.agent_id or "—"), ""),
            ("Session", f'<span class="hash">{_e(tl.session_id or "—")}</span>', ""),
            ("Started", _when(tl.started_at), ""),
            ("Ended", _when(tl.ended_at) if tl.ended_at else "not ended in this log", ""),
            ("Duration", _e(_fmt_ms(tl.duration_ms)), ""),
            ("End reason", _e(tl.end_reason or "—"), ""),
            ("Events", str(len(tl.events)), ""),
            ("Resolutions", str(len(tl.resolutions)), ""),
            ("Goal", _e(tl.goal or "—"), " wide"),
        ]
        items = "".join(
            f'<div class="card{extra}"><dt>{name}</dt><dd>{value}</dd></div>'
            for name, value, extra in cards
        )
        tiles = [("calls", "tool calls"), ("executed", "executed")] + [
            (status, _STATUS_LABELS[status]) for status in _STATUSES
        ]
        count_html = "".join(
            f'<div class="count {key}" data-count="{key}"><b>{counts[key]}</b>'
            f"<span>{_e(label)}</span></div>"
            for key, label in tiles
        )
        errors = ""
        if tl.errors:
            errors = (
                f'<p class="note warn">{len(tl.errors)} <code>error.occurred</code> event(s) '
                "in this session; see the raw events.</p>"
            )
        return (
            '<section id="summary"><h2>Summary</h2>'
            f'<dl class="cards">{items}</dl><div class="counts">{count_html}</div>{errors}'
            "</section>"
        )

    def timeline(self) -> str:
        rows = (
            f"One row per action ({len(self.tl.calls):,} calls)"
            if len(self.tl.calls) > LANES_FROM
            else "One row per tool call"
        )
        return (
            '<section id="timeline"><h2>Timeline</h2>'
            f'<p class="muted">{rows}, each bar a tool call from its request to its last '
            "event, scaled to the session. Hover a bar for its policy and reason.</p>"
            f'<div class="figure">{self.tl.svg(width=1160, xmlns=False)}'
            f'<div class="legend">{self.tl.legend_svg(xmlns=False)}</div></div></section>'
        )

    def decisions(self) -> str:
        calls = self.tl.calls
        if not calls:
            return (
                '<section id="decisions"><h2>Decisions</h2>'
                '<p class="muted">No tool calls in this session.</p></section>'
            )
        present = [s for s in _STATUSES if any(c.status == s for c in calls)]
        boxes = "".join(
            f'<label><input type="checkbox" value="{status}" checked> '
            f'<span class="badge badge-{status}">{status}</span></label>'
            for status in present
        )
        header = "".join(
            f'<th{css} data-type="{kind}">{name}</th>'
            for name, kind, css in (
                ("Seq", "number", _NUM),
                ("Time", "number", _NUM),
                ("Action", "text", ""),
                ("Decision", "text", ""),
                ("Policy", "text", ""),
                ("Reason", "text", ""),
                ("Duration", "number", _NUM),
                ("Outcome", "text", ""),
            )
        )
        shown = notable_calls(calls, MAX_TABLE_ROWS)
        note = ""
        if len(shown) < len(calls):
            note = (
                f'<p class="muted omitted">{len(calls) - len(shown):,} allowed calls are not '
                f"listed (the table keeps every denied, approved, failed and pending call and "
                f"the first allowed ones, {len(shown):,} rows); <code>cra trace export</code> "
                "has them all.</p>"
            )
        rows = "".join(self._decision_row(call) for call in shown)
        return (
            '<section id="decisions"><h2>Decisions</h2>'
            f'<fieldset id="decision-filters" class="filters" hidden><legend>Show</legend>'
            f"{boxes}</fieldset>{note}"
            f'<div class="scroll"><table id="decision-table"><thead><tr>{header}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div></section>"
        )

    def _decision_row(self, call: ToolCall) -> str:
        when, when_value = self.offset(call.started_at)
        decision = f'<span class="badge badge-{call.decision}">{call.decision}</span>'
        if call.shadow:
            decision += ' <span class="badge badge-shadow" title="shadow mode">shadow</span>'
        if call.outcome == "failed":
            outcome = '<span class="badge badge-failed">failed</span>'
            detail = " ".join(p for p in (call.error_code, call.error_message) if p)
            if detail:
                outcome += f' <span class="muted">{_e(detail)}</span>'
        elif call.outcome == "executed":
            outcome = '<span class="badge badge-executed">executed</span>'
        else:
            outcome = '<span class="muted">—</span>'
        reason = call.reason or ""
        if call.decision == "approved":
            reason = reason or f"approved by {call.approver or 'an approver'}"
        duration = "" if call.duration_ms is None else f"{call.duration_ms:.6f}"
        return (
            f'<tr class="row-{call.status}" data-status="{call.status}" '
            f'data-sequence="{call.sequence}">'
            f'<td class="num">{call.sequence}</td>'
            f'<td class="num" data-value="{when_value}" title="{_e(call.started_at)}">'
            f"{_e(when)}</td>"
            f"<td><code>{_e(call.action_id)}</code></td>"
            f"<td>{decision}</td>"
            f"<td><code>{_e(call.policy_id or '—')}</code></td>"
            f'<td class="reason">{_e(reason)}</td>'
            f'<td class="num" data-value="{duration}">{_e(_fmt_ms(call.duration_ms))}</td>'
            f"<td>{outcome}</td></tr>"
        )

    def approvals(self) -> str:
        approved = self.tl.approvals
        if not approved:
            return (
                '<section id="approvals"><h2>Approvals</h2>'
                '<p class="muted">No call in this session needed a person\'s approval.</p>'
                "</section>"
            )
        rows = "".join(
            f'<tr data-sequence="{call.sequence}"><td>{_e(call.approver or "—")}</td>'
            f"<td><code>{_e(call.action_id)}</code></td>"
            f"<td>{_e(_answer(call))}</td>"
            f"<td><code>{_e(call.policy_id or '—')}</code></td>"
            f"<td>{_when(call.approval_requested_at) if call.approval_requested_at else '—'}</td>"
            f"<td>{_when(call.decided_at) if call.decided_at else '—'}</td>"
            f'<td class="num">{_e(_fmt_ms(call.approval_wait_ms))}</td>'
            f"<td>{_e(call.approval_reason or '')}</td></tr>"
            for call in approved
        )
        return (
            '<section id="approvals"><h2>Approvals</h2><div class="scroll"><table>'
            "<thead><tr><th>Approver</th><th>Action</th><th>Answer</th><th>Policy</th>"
            "<th>Asked at</th><th>Answered at</th><th>Waited</th>"
            f"<th>Note</th></tr></thead><tbody>{rows}</tbody></table></div></section>"
        )

    def chain(self) -> str:
        v = self.verification
        events = self.tl.events
        badge = (
            '<span class="badge badge-valid">VALID</span>'
            if v.valid
            else '<span class="badge badge-invalid">INVALID</span>'
        )
        verdict = (
            "Every event links to its predecessor, follows its sequence and hashes to its "
            "stored hash."
            if v.valid
            else f"{_e(v.error_type or 'invalid')}: {_e(v.error_message or '')}"
        )
        head = _str(events[-1].get("event_hash")) if events else None
        rows: list[tuple[str, str]] = [
            ("Status", "valid" if v.valid else "invalid"),
            ("Events verified", str(v.event_count)),
            ("Events in this report", str(len(events))),
        ]
        if not v.valid:
            rows += [
                ("Error type", f"<code>{_e(v.error_type or '—')}</code>"),
                (
                    "First invalid index",
                    "—" if v.first_invalid_index is None else str(v.first_invalid_index),
                ),
                ("Last valid hash", f'<span class="hash">{_e(v.last_valid_hash)}</span>'),
            ]
        rows += [
            (
                "Hash rule",
                "SHA-256 over the 11 event fields (TRACE/1.0); rule matched: "
                f"<code>{_e(v.hash_rule or '—')}</code>",
            ),
            (
                "Head hash",
                f'<span class="hash">{_e(head)}</span>' if head else "— (empty log)",
            ),
        ]
        notes = ""
        if v.unverifiable_tail:
            notes += (
                f'<p class="note warn">{v.unverifiable_tail} event(s) after the latest '
                "checkpoint are consistent but not protected against truncation "
                "(unverifiable tail).</p>"
            )
        checkpoint = self._checkpoint_rows(head)
        table = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
        return (
            '<section id="chain"><h2>Chain verification</h2>'
            f'<div class="status-row">{badge}<span>{verdict}</span></div>'
            f'<div class="scroll"><table class="kv"><tbody>{table}</tbody></table></div>'
            f"{checkpoint}{notes}</section>"
        )

    def _checkpoint_rows(self, head: str | None) -> str:
        v = self.verification
        cp = self.checkpoint
        tail = "—" if v.unverifiable_tail is None else str(v.unverifiable_tail)
        if cp is None:
            if v.checkpoint_size is None:
                return (
                    '<p class="muted" id="checkpoint-none">No signed checkpoint given: '
                    "truncation of the log's tail cannot be detected.</p>"
                )
            rows = [
                ("Checkpoint size", str(v.checkpoint_size)),
                ("Unverifiable tail", tail),
            ]
        else:
            events = self.tl.events
            if 0 < cp.size <= len(events):
                at_size = _str(events[cp.size - 1].get("event_hash"))
                matches = "yes" if at_size == cp.head_hash else "NO: the log differs at its size"
            elif cp.size == 0:
                matches = "yes (empty prefix)"
            else:
                matches = f"NO: the log has only {len(events)} events"
            signature = (
                "checked by the verifier"
                if v.checkpoint_size is not None
                else "not checked here (pass a verification made with the verify key)"
            )
            if v.unverifiable_tail is None and cp.size <= len(events):
                tail = f"{len(events) - cp.size} (from the sizes; signature not checked)"
            rows = [
                ("Log id", f'<span class="hash">{_e(cp.log_id)}</span>'),
                ("Size", str(cp.size)),
                ("Head hash", f'<span class="hash">{_e(cp.head_hash)}</span>'),
                ("Timestamp", _when(cp.timestamp)),
                ("Key id", f"<code>{_e(cp.key_id)}</code>"),
                ("Signature", signature),
                ("Matches this log", matches),
                ("Unverifiable tail", tail),
            ]
        table = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
        return (
            '<h3>Signed checkpoint</h3><div class="scroll" id="checkpoint">'
            f'<table class="kv"><tbody>{table}</tbody></table></div>'
        )

    def resolutions(self) -> str:
        resolutions = self.tl.resolutions
        if not resolutions:
            return (
                '<section id="resolutions"><h2>Resolutions</h2>'
                '<p class="muted">No CARP resolution in this session.</p></section>'
            )
        rows = []
        for r in resolutions:
            when, _ = self.offset(r.get("requested_at") or r.get("completed_at"))
            decision = r.get("decision_type") or ("cached" if r.get("cached") else "—")
            policies = r.get("policies") or []
            detail = ""
            if policies:
                items = "".join(
                    f"<tr><td><code>{_e(p.get('action_id') or '—')}</code></td>"
                    f"<td><code>{_e(p.get('policy_id') or '—')}</code></td>"
                    f"<td>{_e(p.get('result') or '—')}</td></tr>"
                    for p in policies
                )
                detail = (
                    f"<details><summary>{len(policies)} policy evaluations</summary><table>"
                    "<thead><tr><th>Action</th><th>Policy</th><th>Result</th></tr></thead>"
                    f"<tbody>{items}</tbody></table></details>"
                )
            rows.append(
                f'<tr data-sequence="{_e(r.get("sequence"))}">'
                f'<td class="num">{_e(r.get("sequence"))}</td>'
                f'<td class="num">{_e(when)}</td>'
                f"<td>{_e(r.get('goal') or '—')}</td>"
                f"<td>{_e(r.get('risk_tier') or '—')}</td>"
                f"<td><code>{_e(decision)}</code></td>"
                f'<td class="num">{_e(_count(r.get("allowed_count")))}</td>'
                f'<td class="num">{_e(_count(r.get("denied_count")))}</td>'
                f'<td class="num">{_e(_count(r.get("context_block_count")))}</td>'
                f'<td class="hash">{_e(r.get("resolution_id") or "—")}</td>'
                f"<td>{detail}</td></tr>"
            )
        return (
            '<section id="resolutions"><h2>Resolutions</h2><div class="scroll"><table>'
            '<thead><tr><th class="num">Seq</th><th class="num">Time</th><th>Goal</th>'
            '<th>Risk</th><th>Decision</th><th class="num">Allowed</th>'
            '<th class="num">Denied</th><th class="num">Context</th><th>Resolution id</th>'
            f"<th>Policies</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
            "</section>"
        )

    def context(self) -> str:
        blocks = self.tl.context_blocks
        if not blocks:
            return (
                '<section id="context"><h2>Injected context</h2>'
                '<p class="muted">No context block was injected in this session.</p></section>'
            )
        rows = "".join(
            f'<tr data-sequence="{b["sequence"]}"><td><code>{_e(b["block_id"])}</code></td>'
            f"<td>{_e(b.get('name') or '—')}</td>"
            f"<td><code>{_e(b.get('source') or '—')}</code></td>"
            f'<td class="num">{_e(_count(b.get("priority")))}</td>'
            f'<td class="num">{_e(_count(b.get("token_count")))}</td>'
            f"<td>{_e(b.get('content_type') or '—')}</td>"
            f'<td class="hash">{_e(b.get("resolution_id") or "—")}</td></tr>'
            for b in blocks
        )
        return (
            '<section id="context"><h2>Injected context</h2><div class="scroll"><table>'
            "<thead><tr><th>Block</th><th>Name</th><th>Source</th>"
            '<th class="num">Priority</th><th class="num">Tokens</th><th>Type</th>'
            f"<th>Resolution</th></tr></thead><tbody>{rows}</tbody></table></div></section>"
        )

    def raw_events(self) -> str:
        def row(e: Mapping[str, Any]) -> str:
            return (
                f'<tr><td class="num">{_e(e.get("sequence"))}</td>'
                f"<td>{_e(e.get('timestamp'))}</td>"
                f"<td><code>{_e(e.get('event_type'))}</code></td>"
                f"<td><pre>{_e(_json(e.get('payload')))}</pre></td>"
                f'<td class="hash">{_e(e.get("event_hash"))}</td></tr>'
            )

        events = self.tl.events
        if len(events) <= MAX_RAW_EVENTS:
            rows = "".join(row(e) for e in events)
        else:
            half = MAX_RAW_EVENTS // 2
            omitted = len(events) - 2 * half
            rows = (
                "".join(row(e) for e in events[:half])
                + f'<tr class="omitted"><td colspan="5">… {omitted:,} events omitted here; '
                "<code>cra trace export</code> writes them all …</td></tr>"
                + "".join(row(e) for e in events[-half:])
            )
        return (
            '<section id="events"><h2>Events</h2>'
            f'<details id="raw-events"><summary>Raw events ({len(self.tl.events)})</summary>'
            '<div class="scroll"><table><thead><tr><th class="num">Seq</th><th>Timestamp</th>'
            "<th>Type</th><th>Payload</th><th>Event hash</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div></details></section>"
        )


# -- helpers -------------------------------------------------------------------------------


def _e(value: object) -> str:
    r"""Escape anything for HTML text and attribute values (the trace is untrusted).

    Controls and invisible format characters (bidirectional overrides, zero-width spaces...)
    are shown as escapes such as ``\u202e``, by the same rule as the ``cra`` command; line
    feeds and tabs are kept for the page to lay out.
    """
    return html.escape(visible("" if value is None else str(value), keep="\n\t"), quote=True)


def _str(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _int(value: object) -> int:
    if isinstance(value, int):
        return int(value)
    try:
        return int(str(value))
    except ValueError:
        return -1


def _number(value: object) -> int | float | None:
    """A JSON number as recorded (ints stay ints); anything else is None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _ms(value: object) -> float | None:
    number = _number(value)
    return None if number is None else float(number)


def _ns(timestamp: object) -> int | None:
    if not isinstance(timestamp, str):
        return None
    try:
        return parse_timestamp_ns(timestamp)
    except ValueError:
        return None


def _when(timestamp: str | None) -> str:
    """HTML for a recorded timestamp: UTC, readable, the recorded text as its tooltip."""
    moment = _ns(timestamp)
    if moment is None:
        return _e(timestamp or "—")
    seconds, nanos = divmod(moment, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    if nanos:
        text += f".{nanos // 1000:06d}" if nanos % 1000 == 0 else f".{nanos:09d}"
    raw = _e(timestamp)
    return f'<time datetime="{raw}" title="{raw}">{text} UTC</time>'


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms" if ms == int(ms) else f"{ms:.1f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, seconds = divmod(ms / 1000, 60)
    return f"{int(minutes)} min {seconds:.0f} s"


def _count(value: object) -> str:
    return "—" if value is None else str(value)


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, indent=None, default=str)
