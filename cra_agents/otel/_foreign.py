"""Another instrumentation's tool span, open around a guarded call: found, never imported.

With OpenInference, LangSmith's OpenTelemetry export or an application's own ``execute_tool``
spans, a guarded tool already has a span when its call reaches the runtime. Telemetry then
puts the call's attributes on that span instead of emitting a second one
(:attr:`~cra_agents.otel.OTelConfig.adopt_tool_spans`). Two ways to find it:

- the current span (OpenTelemetry context) records, is another scope's, and says it is a tool
  span: ``openinference.span.kind`` = ``TOOL`` or ``gen_ai.operation.name`` = ``execute_tool``;
- OpenInference's LangChain instrumentor never makes its spans current (its tracer is a
  LangChain callback handler), so, when that instrumentor is already imported, the span of
  the current LangChain run, if that run is a tool's. The kind attribute is only set when
  OpenInference ends the span, so the run's type says it.

Nothing here imports a framework: modules are looked up in :data:`sys.modules`, and any
failure means "no foreign span" (a span of our own is made then).
"""

from __future__ import annotations

import sys
from typing import Any

from cra_agents import semconv as sc

__all__ = ["foreign_tool_span"]

_OPENINFERENCE_LANGCHAIN = "openinference.instrumentation.langchain"


def foreign_tool_span(current: Any, own_scope: str) -> Any | None:
    """The tool span of another instrumentation open around this call, or None."""
    if _is_tool_span(current, own_scope):
        return current
    if _OPENINFERENCE_LANGCHAIN in sys.modules:
        return _openinference_langchain_tool_span()
    return None


def _is_tool_span(span: Any, own_scope: str) -> bool:
    if not span.is_recording():
        return False
    attributes = getattr(span, "attributes", None)
    if not attributes:
        return False
    if (
        attributes.get(sc.OPENINFERENCE_SPAN_KIND) != "TOOL"
        and attributes.get(sc.GEN_AI_OPERATION_NAME) != "execute_tool"
    ):
        return False
    scope = getattr(span, "instrumentation_scope", None)
    return getattr(scope, "name", None) != own_scope


def _openinference_langchain_tool_span() -> Any | None:
    """The OpenInference span of the LangChain tool run this call is made in, if any.

    Follows ``openinference.instrumentation.langchain.get_current_span``: the run is the
    ``parent_run_id`` of the callback manager in LangChain's child runnable config.
    """
    try:
        instrumentation = sys.modules[_OPENINFERENCE_LANGCHAIN]
        config_module = sys.modules.get("langchain_core.runnables.config")
        callbacks = sys.modules.get("langchain_core.callbacks")
        if config_module is None or callbacks is None:
            return None
        config = config_module.var_child_runnable_config.get()
        if not isinstance(config, dict):
            return None
        run_id = None
        for value in config.values():
            if isinstance(value, callbacks.BaseCallbackManager) and value.parent_run_id:
                run_id = value.parent_run_id
                break
        if run_id is None:
            return None
        tracer = getattr(instrumentation.LangChainInstrumentor(), "_tracer", None)
        if tracer is None:
            return None
        run = tracer.run_map.get(str(run_id))
        if run is None or getattr(run, "run_type", None) != "tool":
            return None
        span = tracer.get_span(run_id)
        return span if span is not None and span.is_recording() else None
    except Exception:  # noqa: BLE001 - a layout we do not know: no foreign span
        return None
