"""Span attributes from one call record, in ONE function for live spans and the offline export.

Live spans (:class:`~cra_agents.otel.Telemetry`, fed the stored events of a call by the
runtime) and the OTLP/JSON export of stored sessions (:func:`~cra_agents.otel.otlp_json`) both
fold a call's events with :func:`cra_agents.trace.fold_calls` and call :func:`call_attributes`,
so a span means the same whichever way it was made. Names come from :mod:`cra_agents.semconv`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from cra_agents import semconv as sc
from cra_agents.protocol import events as ev
from cra_agents.trace import CallRecord, EventLike, event_field

__all__ = [
    "CallFacts",
    "SpanStatus",
    "call_attributes",
    "conversation_id",
    "link_attributes",
    "session_attributes",
    "tool_span_name",
]

#: ``(description)`` of an ERROR status, or None for UNSET.
SpanStatus = str | None


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What the events of a call do not carry, known only while it runs."""

    tool: str
    action_id: str
    session_id: str
    execution_id: str
    tool_call_id: str | None = None
    atlas_id: str | None = None
    atlas_version: str | None = None
    risk_tier: str | None = None
    description: str | None = None
    shadow: bool = False
    #: ``(arguments, result)`` to put on the span (``capture_content``), else None.
    content: tuple[Any, Any] | None = None


def conversation_id(session_id: str, metadata: Mapping[str, Any] | None) -> str:
    """``gen_ai.conversation.id`` of a session: its LangGraph thread if it has one, else its id.

    A LangGraph run that is interrupted and resumed makes two traces; both carry the thread.
    """
    if metadata:
        thread = metadata.get(sc.LANGGRAPH_THREAD_ID)
        if thread is not None and thread != "":
            return str(thread)
    return session_id


def tool_span_name(tool: str) -> str:
    """``execute_tool {tool}`` (GenAI semantic conventions)."""
    return f"execute_tool {tool}"


def link_attributes(event: EventLike) -> dict[str, Any]:
    """The chain link of a span: the TRACE event it points at."""
    return {
        sc.CRA_TRACE_ID: event_field(event, "trace_id"),
        sc.CRA_TRACE_SEQUENCE: event_field(event, "sequence"),
        sc.CRA_TRACE_EVENT_TYPE: event_field(event, "event_type"),
        sc.CRA_TRACE_EVENT_HASH: event_field(event, "event_hash"),
        sc.CRA_TRACE_PREVIOUS_HASH: event_field(event, "previous_event_hash"),
    }


def call_attributes(
    record: CallRecord | None,
    facts: CallFacts | None = None,
    *,
    agent_name: str | None = None,
    conversation: str | None = None,
) -> tuple[dict[str, Any], SpanStatus]:
    """Every attribute of a call's ``execute_tool`` span, and its status.

    ``record`` is the call folded from its stored events (None when the trace failed and they
    were never stored: the span then says ``cra.trace.unavailable``); ``facts`` what only the
    live call knows (its tool's name, atlas, risk tier, description, content). ``agent_name``
    and ``conversation`` come from the call's session (see :func:`conversation_id`; the
    session id when not given).
    """
    if record is not None:
        action_id, execution_id = record.action_id, record.execution_id
        session_id = record.session_id
    elif facts is not None:
        action_id, execution_id, session_id = facts.action_id, facts.execution_id, facts.session_id
    else:
        raise ValueError("call_attributes needs a record or facts")
    tool = (facts.tool if facts is not None else None) or (
        record.tool_name if record is not None else None
    )
    attrs: dict[str, Any] = {
        sc.GEN_AI_OPERATION_NAME: "execute_tool",
        sc.GEN_AI_TOOL_NAME: tool or action_id,
        sc.GEN_AI_TOOL_TYPE: "function",
        sc.OPENINFERENCE_SPAN_KIND: "TOOL",
        sc.CRA_SESSION_ID: session_id,
        sc.CRA_ACTION_ID: action_id,
        sc.CRA_EXECUTION_ID: execution_id,
        sc.GEN_AI_CONVERSATION_ID: conversation or session_id,
    }
    if agent_name:
        attrs[sc.GEN_AI_AGENT_NAME] = agent_name
    call_id = (record.tool_call_id if record is not None else None) or (
        facts.tool_call_id if facts is not None else None
    )
    attrs[sc.GEN_AI_TOOL_CALL_ID] = call_id or execution_id
    if facts is not None:
        if facts.atlas_id is not None:
            attrs[sc.CRA_ATLAS_ID] = facts.atlas_id
            attrs[sc.CRA_ATLAS_VERSION] = facts.atlas_version or ""
        if facts.risk_tier is not None:
            attrs[sc.CRA_RISK_TIER] = facts.risk_tier
        if facts.description:
            attrs[sc.GEN_AI_TOOL_DESCRIPTION] = facts.description
    status: SpanStatus = None
    if record is None or record.decided is None:
        attrs[sc.CRA_TRACE_UNAVAILABLE] = True
    else:
        attrs.update(link_attributes(record.decided))
        if record.policy_id:
            attrs[sc.CRA_POLICY_ID] = record.policy_id
        if record.decision == "deny":
            reason = record.reason or ""
            attrs[sc.CRA_DECISION] = "deny"
            attrs[sc.CRA_OUTCOME] = "denied"
            attrs[sc.CRA_REASON] = reason
            attrs[sc.ERROR_TYPE] = sc.POLICY_DENIED
            status = reason
        else:
            attrs[sc.CRA_DECISION] = "allow"
            if record.approver:
                attrs[sc.CRA_APPROVER] = record.approver
        outcome = record.outcome
        if outcome is not None:
            attrs[sc.CRA_OUTCOME_SEQUENCE] = event_field(outcome, "sequence")
            attrs[sc.CRA_OUTCOME_EVENT_HASH] = event_field(outcome, "event_hash")
            if event_field(outcome, "event_type") == ev.ACTION_EXECUTED:
                attrs[sc.CRA_OUTCOME] = "executed"
            else:
                attrs[sc.CRA_OUTCOME] = "failed"
                attrs[sc.ERROR_TYPE] = record.error_code or "error"
                status = record.error_message or ""
    if (record is not None and record.shadow) or (facts is not None and facts.shadow):
        attrs[sc.CRA_SHADOW] = True
    if facts is not None and facts.content is not None:
        arguments, result = facts.content
        attrs[sc.GEN_AI_TOOL_CALL_ARGUMENTS] = _json(arguments)
        if attrs.get(sc.CRA_OUTCOME) == "executed":
            attrs[sc.GEN_AI_TOOL_CALL_RESULT] = _json(result)
    return attrs, status


def session_attributes(
    session_id: str,
    agent_id: str,
    trace_id: str,
    *,
    conversation: str | None = None,
    shadow: bool = False,
    ended: EventLike | None = None,
    error: BaseException | None = None,
) -> tuple[dict[str, Any], SpanStatus]:
    """Every attribute of a session's ``invoke_agent`` span, and its status.

    ``conversation`` is the session's ``gen_ai.conversation.id`` (see :func:`conversation_id`;
    the session id when not given).
    """
    attrs: dict[str, Any] = {
        sc.GEN_AI_OPERATION_NAME: "invoke_agent",
        sc.GEN_AI_PROVIDER_NAME: sc.PROVIDER,
        sc.GEN_AI_AGENT_NAME: agent_id,
        sc.GEN_AI_CONVERSATION_ID: conversation or session_id,
        sc.OPENINFERENCE_SPAN_KIND: "AGENT",
        sc.CRA_SESSION_ID: session_id,
        sc.CRA_AGENT_ID: agent_id,
        sc.CRA_TRACE_ID: trace_id,
    }
    if shadow:
        attrs[sc.CRA_SHADOW] = True
    if ended is not None:
        attrs.update(link_attributes(ended))
    status: SpanStatus = None
    if error is not None:
        attrs[sc.ERROR_TYPE] = type(error).__qualname__
        status = _text(error)[:500]
    return attrs, status


def _text(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # noqa: BLE001 - a hostile __str__ costs the message only
        return f"<unprintable {type(error).__name__}>"


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value, default=repr).decode()[:8192]
    except Exception:  # noqa: BLE001 - content is best effort
        return repr(value)[:8192]
