"""OpenTelemetry spans for guarded calls and sessions.

Turn it on with ``cra.configure(..., otel=...)`` or ``Runtime(..., otel=...)``:

``otel="http://127.0.0.1:4318"`` / ``"grpc://127.0.0.1:4317"``
    cra-agents exports to that collector itself over OTLP/HTTP (extra ``cra-agents[otel]``) or
    gRPC (extra ``cra-agents[otel-grpc]``), through a batch processor with a large queue and a
    short export timeout; :attr:`Telemetry.stats` counts what was exported and what was dropped.
``otel=True`` or a ``TracerProvider``
    Spans go to the application's provider (the global one for ``True``), beside its own.
``otel=OTelConfig(...)``
    Everything above, plus ``capture_content`` (arguments and results on spans, off by default).
    ``OTelConfig()`` with no endpoint and no provider exports to ``OTEL_EXPORTER_OTLP_ENDPOINT``
    when it is set; exports honour ``OTEL_EXPORTER_OTLP_PROTOCOL`` / ``_HEADERS``,
    ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (the ``_TRACES_`` variants first).

Each guarded call becomes an ``execute_tool {tool}`` span (INTERNAL) with the GenAI attributes,
``openinference.span.kind=TOOL`` and the ``cra.*`` attributes of :mod:`cra_agents.semconv`,
including the hash link of the deciding TRACE event, ``gen_ai.agent.name`` and
``gen_ai.conversation.id``; a denial has status ERROR and ``error.type=policy_denied``. Every
session (a ``cra.session`` block, ``Runtime.create_session``, a ``CRAMiddleware`` run) becomes an
``invoke_agent {agent}`` span parented on the context current when it starts, with
``gen_ai.provider.name=cra_agents``; a call's span is a child of the current span, or of its
session's span when none is current. ``gen_ai.conversation.id`` is the session's LangGraph thread
(metadata ``langgraph_thread_id``) or else its id, so an interrupted run and its resume regroup.
When another instrumentation's tool span (OpenInference, LangSmith) is open around a call, the
call's attributes go onto that span instead of a second one (``OTelConfig.adopt_tool_spans``).

The chain is the record; spans are best effort. Nothing here raises into the caller or waits
on the network: a span is ended, with its hash attributes, by the trace writer once the TRACE
event it points at is stored. :func:`verify_spans` checks the links carried by exported spans
(read back with :func:`read_otlp_json`) against the stored chain.
"""

from __future__ import annotations

import typing

from cra_agents._lazy import lazy_exports as _lazy_exports
from cra_agents.otel._attributes import (
    CallFacts,
    call_attributes,
    conversation_id,
    link_attributes,
    session_attributes,
)
from cra_agents.otel._export import otlp_json
from cra_agents.otel._plugin import missing_otel as _missing_otel
from cra_agents.otel._plugin import observer_from
from cra_agents.otel._verify import (
    ExportedSpan,
    SpanLinkProblem,
    SpanVerification,
    read_otlp_json,
    verify_spans,
)

if typing.TYPE_CHECKING:
    from cra_agents.otel._config import OTelConfig, OTelSpec, telemetry_from
    from cra_agents.otel._observer import Telemetry, TelemetryStats

__all__ = [
    "CallFacts",
    "ExportedSpan",
    "OTelConfig",
    "OTelSpec",
    "SpanLinkProblem",
    "SpanVerification",
    "Telemetry",
    "TelemetryStats",
    "call_attributes",
    "conversation_id",
    "link_attributes",
    "observer_from",
    "otlp_json",
    "read_otlp_json",
    "session_attributes",
    "telemetry_from",
    "verify_spans",
]

# These need the OpenTelemetry API (the ``otel`` extra); exporting to JSON, reading exported
# spans back and checking their links (``cra trace export --format otlp``, ``cra trace verify
# --from-otlp``) do not, so they are imported on first use.
_getattr, __dir__ = _lazy_exports(
    __name__,
    {
        "OTelConfig": "cra_agents.otel._config",
        "OTelSpec": "cra_agents.otel._config",
        "telemetry_from": "cra_agents.otel._config",
        "Telemetry": "cra_agents.otel._observer",
        "TelemetryStats": "cra_agents.otel._observer",
    },
)


def __getattr__(name: str) -> object:
    try:
        return _getattr(name)
    except ModuleNotFoundError as exc:
        raise _missing_otel(exc) from exc
