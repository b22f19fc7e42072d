"""How spans are produced and where they go: ``otel=`` in, a :class:`Telemetry` observer out."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace as otel_trace

from cra_agents._exceptions import ConfigurationError, MissingDependencyError
from cra_agents.otel._observer import Telemetry, TelemetryStats

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["OTelConfig", "OTelSpec", "telemetry_from"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OTelConfig:
    """How spans are produced and where they go.

    Attributes:
        endpoint: A collector to export to: ``http(s)://host:port`` (OTLP/HTTP; ``/v1/traces``
            is added when no path is given) or ``grpc://host:port`` (OTLP/gRPC, plaintext;
            ``grpcs://`` for TLS; extra ``otel-grpc``). None: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
            or ``OTEL_EXPORTER_OTLP_ENDPOINT`` when set and no ``tracer_provider`` is given
            (``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` ``grpc`` picks gRPC), else
            ``tracer_provider`` or the global provider.
        tracer_provider: The provider to create spans with (ignored with ``endpoint``).
        capture_content: Put the frozen arguments and the result on tool spans.
        adopt_tool_spans: When another instrumentation's tool span (OpenInference, LangSmith,
            the application's) is open around a call, put the call's attributes on it instead
            of emitting a second span.
        service_name: ``service.name`` of the provider cra-agents creates for ``endpoint``
            (None: ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, else ``cra-agents``);
            the resource also takes ``OTEL_RESOURCE_ATTRIBUTES``.
        headers: Extra export headers (e.g. an API key for a hosted backend); None:
            ``OTEL_EXPORTER_OTLP_[TRACES_]HEADERS``.
        max_queue_size: Spans held for export; more are dropped (and counted).
        max_export_batch_size: Spans per export request.
        schedule_delay: Seconds between exports.
        export_timeout: Seconds an export request may take.
        shutdown_timeout: Longest :meth:`Telemetry.shutdown` waits for the last export.
    """

    endpoint: str | None = None
    tracer_provider: Any = None
    capture_content: bool = False
    adopt_tool_spans: bool = True
    service_name: str | None = None
    headers: Mapping[str, str] | None = None
    max_queue_size: int = 16_384
    max_export_batch_size: int = 512
    schedule_delay: float = 0.5
    export_timeout: float = 2.0
    shutdown_timeout: float = 2.0


#: What ``otel=`` accepts.
OTelSpec = bool | str | OTelConfig | otel_trace.TracerProvider | None


def telemetry_from(spec: OTelSpec) -> Telemetry | None:
    """A :class:`Telemetry` for an ``otel=`` argument (None when off).

    Raises:
        ConfigurationError: an unknown endpoint scheme.
        MissingDependencyError: exporting needs the ``otel`` extra, which is not installed.
    """
    if spec is None or spec is False:
        return None
    if spec is True:
        return Telemetry(otel_trace.get_tracer_provider())
    if isinstance(spec, str):
        spec = OTelConfig(endpoint=spec)
    if not isinstance(spec, OTelConfig):
        return Telemetry(spec)
    if spec.endpoint is None:
        endpoint = _environment_endpoint() if spec.tracer_provider is None else None
        if endpoint is None:
            provider = spec.tracer_provider or otel_trace.get_tracer_provider()
            return Telemetry(
                provider,
                capture_content=spec.capture_content,
                adopt_tool_spans=spec.adopt_tool_spans,
            )
        spec = dataclasses.replace(spec, endpoint=endpoint)
    return _exporting(spec)


def _env(name: str) -> str | None:
    """``OTEL_EXPORTER_OTLP_TRACES_{name}``, else ``OTEL_EXPORTER_OTLP_{name}`` (None: unset)."""
    for key in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        value = os.environ.get(key, "").strip()
        if value:
            return value
    return None


def _environment_endpoint() -> str | None:
    """The endpoint the ``OTEL_EXPORTER_OTLP_*`` variables name, as ``otel=`` spells it.

    ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL=grpc`` turns ``http(s)://`` into ``grpc(s)://``;
    a base ``OTEL_EXPORTER_OTLP_ENDPOINT`` for OTLP/HTTP gets ``/v1/traces`` appended.
    """
    endpoint = _env("ENDPOINT")
    if endpoint is None:
        return None
    protocol = (_env("PROTOCOL") or "http/protobuf").lower()
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        scheme, rest = "http", endpoint
    if protocol == "grpc" and scheme.lower() in ("http", "https"):
        return ("grpcs" if scheme.lower() == "https" else "grpc") + "://" + rest.rstrip("/")
    if protocol != "grpc" and "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" not in os.environ:
        # The generic variable is a base URL: the signal's path is appended (OTLP exporter spec).
        return f"{scheme}://{rest.rstrip('/')}/v1/traces"
    return f"{scheme}://{rest}"


def _exporting(config: OTelConfig) -> Telemetry:
    endpoint = config.endpoint or ""
    scheme = endpoint.split("://", 1)[0].lower() if "://" in endpoint else ""
    if scheme not in ("http", "https", "grpc", "grpcs"):
        raise ConfigurationError(
            f"otel endpoint {endpoint!r}: use http(s)://host:port for OTLP/HTTP or "
            "grpc://host:port for OTLP/gRPC",
            details={"reason": "bad_otel_endpoint"},
        )
    # None: the exporter reads OTEL_EXPORTER_OTLP_[TRACES_]HEADERS itself.
    headers = dict(config.headers) if config.headers else None
    grpc = scheme.startswith("grpc")
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        if grpc:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            exporter: SpanExporter = GrpcExporter(
                endpoint=endpoint.split("://", 1)[1],
                insecure=scheme == "grpc",
                headers=headers,
                timeout=config.export_timeout,
            )
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            url = endpoint
            if url.count("/") <= 2:
                url = url.rstrip("/") + "/v1/traces"
            exporter = HttpExporter(endpoint=url, headers=headers, timeout=config.export_timeout)
    except ImportError as exc:
        package = "opentelemetry-exporter-otlp-proto-grpc" if grpc else "opentelemetry-sdk"
        raise MissingDependencyError(
            f"exporting spans ({exc})", package=package, extra="otel-grpc" if grpc else "otel"
        ) from exc
    stats = TelemetryStats()
    processor = _batch_processor(_CountingExporter(exporter, stats), config, stats)
    provider = TracerProvider(resource=_resource(Resource, config.service_name))
    provider.add_span_processor(processor)
    return Telemetry(
        provider,
        capture_content=config.capture_content,
        adopt_tool_spans=config.adopt_tool_spans,
        owned_processor=processor,
        shutdown_timeout=config.shutdown_timeout,
        stats=stats,
    )


def _resource(resource_class: Any, service_name: str | None) -> Any:
    """The exporting provider's resource.

    ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` (read by ``Resource.create``), an
    explicit ``service_name`` over both, ``cra-agents`` when nothing names the service.
    """
    if service_name is not None:
        return resource_class.create({"service.name": service_name})
    resource = resource_class.create()
    # Without either variable the SDK says "unknown_service:<executable>".
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        return resource_class.create({"service.name": "cra-agents"})
    return resource


def _batch_processor(exporter: Any, config: OTelConfig, stats: TelemetryStats) -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    class _Counting(BatchSpanProcessor):
        """Counts the spans the SDK drops because its queue is full."""

        def on_end(self, span: ReadableSpan) -> None:
            queue = getattr(getattr(self, "_batch_processor", None), "_queue", None)
            if queue is not None and len(queue) >= config.max_queue_size:
                stats.spans_dropped += 1
            super().on_end(span)

    return _Counting(
        exporter,
        max_queue_size=config.max_queue_size,
        max_export_batch_size=config.max_export_batch_size,
        schedule_delay_millis=config.schedule_delay * 1000,
        export_timeout_millis=config.export_timeout * 1000,
    )


class _CountingExporter:
    """Wraps an exporter: counts exported and failed spans; never raises."""

    def __init__(self, exporter: SpanExporter, stats: TelemetryStats) -> None:
        self._exporter = exporter
        self._stats = stats

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            result = self._exporter.export(spans)
        except Exception:
            logger.warning("exporting %d spans failed (dropped)", len(spans), exc_info=True)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self._stats.spans_exported += len(spans)
        else:
            self._stats.export_failures += 1
            self._stats.spans_dropped += len(spans)
        return result

    def shutdown(self) -> None:
        try:
            self._exporter.shutdown()
        except Exception:
            logger.warning("shutting down the span exporter failed", exc_info=True)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self._exporter.force_flush(timeout_millis))
