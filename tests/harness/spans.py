"""SDK spans as ``verify_spans`` reads them (what an OTLP exporter would send)."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan

from cra_agents.otel import ExportedSpan


def exported(span: ReadableSpan) -> ExportedSpan:
    """A finished SDK span as an :class:`~cra_agents.otel.ExportedSpan`."""
    context = span.get_span_context()
    assert context is not None
    return ExportedSpan(
        name=span.name,
        trace_id=f"{context.trace_id:032x}",
        span_id=f"{context.span_id:016x}",
        parent_span_id=f"{span.parent.span_id:016x}" if span.parent else None,
        attributes=dict(span.attributes or {}),
        status_code=span.status.status_code.name,
    )
