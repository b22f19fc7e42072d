"""OTLP/JSON from stored sessions: the same spans the runtime emits live, made offline."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cra_agents._clock import parse_timestamp_ns
from cra_agents.otel._attributes import (
    call_attributes,
    conversation_id,
    session_attributes,
    tool_span_name,
)
from cra_agents.protocol import TraceEvent
from cra_agents.trace import event_field, fold_session

__all__ = ["otlp_json"]

_SCOPE = "cra_agents"


def _span_id(text: str) -> str:
    """A stable 8-byte span id (hex) derived from an event's span id."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _otlp_attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": str(value)}}


def _status(status: str | None) -> dict[str, Any]:
    return {"code": 0} if status is None else {"code": 2, "message": status}


def _session_spans(events: Sequence[TraceEvent | Mapping[str, Any]]) -> list[dict[str, Any]]:
    record = fold_session(events)
    first, last = events[0], events[-1]
    session_id = str(event_field(first, "session_id"))
    raw_trace_id = str(event_field(first, "trace_id"))
    trace_id = raw_trace_id.replace("-", "")[:32].rjust(32, "0")
    root_id = _span_id(str(event_field(first, "span_id")))
    agent = record.agent_id or "agent"
    conversation = conversation_id(session_id, record.metadata)
    attrs, _ = session_attributes(
        session_id,
        agent,
        raw_trace_id,
        conversation=conversation,
        shadow=any(call.shadow for call in record.calls),
    )
    spans = [
        {
            "traceId": trace_id,
            "spanId": root_id,
            "name": f"invoke_agent {agent}",
            "kind": 1,
            "startTimeUnixNano": str(parse_timestamp_ns(str(event_field(first, "timestamp")))),
            "endTimeUnixNano": str(parse_timestamp_ns(str(event_field(last, "timestamp")))),
            "attributes": [_otlp_attr(k, v) for k, v in attrs.items()],
            "status": {"code": 0},
        }
    ]
    for call in record.calls:
        if not call.has_request or not call.execution_id:
            continue
        attrs, status = call_attributes(call, agent_name=agent, conversation=conversation)
        if call.decided is None:  # not "unavailable": the export just has no decision yet
            attrs.pop("cra.trace.unavailable", None)
        spans.append(
            {
                "traceId": trace_id,
                "spanId": _span_id(str(event_field(call.requested, "span_id"))),
                "parentSpanId": root_id,
                "name": tool_span_name(call.tool_name or call.action_id),
                "kind": 1,
                "startTimeUnixNano": str(call.start_ns),
                "endTimeUnixNano": str(call.end_ns),
                "attributes": [_otlp_attr(k, v) for k, v in attrs.items()],
                "status": _status(status),
            }
        )
    return spans


def otlp_json(
    sessions: Iterable[Sequence[TraceEvent | Mapping[str, Any]]],
    *,
    service_name: str = "cra-agents",
) -> dict[str, Any]:
    """Stored sessions as one OTLP/JSON ``ExportTraceServiceRequest``.

    Each session becomes an ``invoke_agent`` span with one ``execute_tool`` child per guarded
    call, carrying the same GenAI and ``cra.*`` attributes (chain links included) as the spans
    the runtime emits live — both come from :func:`~cra_agents.otel.call_attributes` — so
    :func:`read_otlp_json` and :func:`verify_spans` check them against the store. Span ids are
    derived from the events' span ids, so an export is reproducible. Arguments and results are
    never exported (the chain holds digests only).
    """
    spans: list[dict[str, Any]] = []
    for session in sessions:
        events = list(session)
        if events:
            spans.extend(_session_spans(events))
    from cra_agents._version import __version__

    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [_otlp_attr("service.name", service_name)]},
                "scopeSpans": [{"scope": {"name": _SCOPE, "version": __version__}, "spans": spans}],
            }
        ]
    }
