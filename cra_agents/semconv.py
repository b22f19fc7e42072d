"""Span attribute names: the GenAI semantic conventions we follow, and our ``cra.*`` namespace.

Every span cra-agents emits uses these names and only these; dashboards and the span
verifier (:func:`cra_agents.otel.verify_spans`) read them from here too.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CRA_ACTION_ID",
    "CRA_AGENT_ID",
    "CRA_APPROVER",
    "CRA_ATLAS_ID",
    "CRA_ATLAS_VERSION",
    "CRA_DECISION",
    "CRA_EXECUTION_ID",
    "CRA_OUTCOME",
    "CRA_OUTCOME_EVENT_HASH",
    "CRA_OUTCOME_SEQUENCE",
    "CRA_POLICY_ID",
    "CRA_REASON",
    "CRA_RISK_TIER",
    "CRA_SESSION_ID",
    "CRA_SHADOW",
    "CRA_TRACE_EVENT_HASH",
    "CRA_TRACE_EVENT_TYPE",
    "CRA_TRACE_ID",
    "CRA_TRACE_PREVIOUS_HASH",
    "CRA_TRACE_SEQUENCE",
    "CRA_TRACE_UNAVAILABLE",
    "ERROR_TYPE",
    "GEN_AI_AGENT_ID",
    "GEN_AI_AGENT_NAME",
    "GEN_AI_CONVERSATION_ID",
    "GEN_AI_OPERATION_NAME",
    "GEN_AI_PROVIDER_NAME",
    "GEN_AI_TOOL_CALL_ARGUMENTS",
    "GEN_AI_TOOL_CALL_ID",
    "GEN_AI_TOOL_CALL_RESULT",
    "GEN_AI_TOOL_DESCRIPTION",
    "GEN_AI_TOOL_NAME",
    "GEN_AI_TOOL_TYPE",
    "LANGGRAPH_THREAD_ID",
    "OPENINFERENCE_SPAN_KIND",
    "POLICY_DENIED",
    "PROVIDER",
]

# -- OpenTelemetry GenAI semantic conventions ---------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"  # "execute_tool" / "invoke_agent"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
GEN_AI_TOOL_DESCRIPTION: Final = "gen_ai.tool.description"
GEN_AI_TOOL_TYPE: Final = "gen_ai.tool.type"  # "function"
#: Opt-in (``capture_content``): the frozen arguments the tool ran with, as JSON.
GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
#: Opt-in (``capture_content``): the tool's result, as JSON (or its repr).
GEN_AI_TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"
#: The agent's name (the session's ``agent_id``): on ``invoke_agent`` and ``execute_tool`` spans.
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
#: Not emitted: the conventions reserve it for an agent's unique id, not its name.
GEN_AI_AGENT_ID: Final = "gen_ai.agent.id"
#: The session's LangGraph thread (session metadata ``langgraph_thread_id``) or else its id: an
#: interrupted run and its resume (two traces) share it.
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
#: Required on ``invoke_agent`` spans; cra-agents says :data:`PROVIDER` (it knows no model).
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
#: The ``gen_ai.provider.name`` of cra-agents' ``invoke_agent`` spans.
PROVIDER: Final = "cra_agents"
#: Session metadata key of the LangGraph thread a session records (``CRAMiddleware`` sets it).
LANGGRAPH_THREAD_ID: Final = "langgraph_thread_id"
ERROR_TYPE: Final = "error.type"
#: ``error.type`` of a call the runtime refused (policy, approver, parameters).
POLICY_DENIED: Final = "policy_denied"
# -- OpenInference (Phoenix, Arize) -------------------------------------------------------
OPENINFERENCE_SPAN_KIND: Final = "openinference.span.kind"  # "TOOL" / "AGENT"

# -- cra-agents -----------------------------------------------------------------------------
CRA_SESSION_ID: Final = "cra.session.id"
CRA_AGENT_ID: Final = "cra.agent.id"
CRA_ACTION_ID: Final = "cra.action.id"
CRA_EXECUTION_ID: Final = "cra.execution.id"
CRA_ATLAS_ID: Final = "cra.atlas.id"
CRA_ATLAS_VERSION: Final = "cra.atlas.version"
CRA_RISK_TIER: Final = "cra.risk_tier"
#: ``allow`` or ``deny``: what the runtime decided for the call.
CRA_DECISION: Final = "cra.decision"
#: Why a call was denied (the policy's reason, ``approval_denied``, ``invalid_parameters``...).
CRA_REASON: Final = "cra.reason"
CRA_POLICY_ID: Final = "cra.policy.id"
CRA_APPROVER: Final = "cra.approval.approver"
#: True on every span of a runtime in shadow mode (denials recorded, calls still run).
CRA_SHADOW: Final = "cra.shadow"
#: ``executed``, ``failed`` or ``denied``.
CRA_OUTCOME: Final = "cra.outcome"
# The chain link of the deciding TRACE event (``action.approved`` / ``action.denied``, or
# ``session.ended`` on a session span): checkable against the stored chain.
CRA_TRACE_ID: Final = "cra.trace.id"
CRA_TRACE_SEQUENCE: Final = "cra.trace.sequence"
CRA_TRACE_EVENT_TYPE: Final = "cra.trace.event_type"
CRA_TRACE_EVENT_HASH: Final = "cra.trace.event_hash"
CRA_TRACE_PREVIOUS_HASH: Final = "cra.trace.previous_event_hash"
#: True when the trace failed before the span's event was stored: the span has no link.
CRA_TRACE_UNAVAILABLE: Final = "cra.trace.unavailable"
# The ``action.executed`` / ``action.failed`` event of an allowed call.
CRA_OUTCOME_SEQUENCE: Final = "cra.trace.outcome.sequence"
CRA_OUTCOME_EVENT_HASH: Final = "cra.trace.outcome.event_hash"
