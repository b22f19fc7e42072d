"""OpenTelemetry spans for guarded calls and sessions.

Turn it on with ``cra.configure(..., otel=...)`` or ``Runtime(..., otel=...)``:

``otel="http://127.0.0.1:4318"`` / ``"grpc://127.0.0.1:4317"``
    cra-agents exports to that collector itself over OTLP/HTTP or gRPC (extra
    ``cra-agents[otel]``), through a batch processor with a large queue and a short export
    timeout; :attr:`Telemetry.stats` counts what was exported and what was dropped.
``otel=True`` or a ``TracerProvider``
    Spans go to the application's provider (the global one for ``True``), beside its own.
``otel=OTelConfig(...)``
    Everything above, plus ``capture_content`` (arguments and results on spans, off by default).

Each guarded call becomes an ``execute_tool {tool}`` span (INTERNAL) with the GenAI attributes,
``openinference.span.kind=TOOL`` and the ``cra.*`` attributes of :mod:`cra_agents.semconv`,
including the hash link of the deciding TRACE event; a denial has status ERROR and
``error.type=policy_denied``. A ``cra.session`` block becomes an ``invoke_agent {agent}`` span
with ``gen_ai.conversation.id`` = session id, parent of the calls made in it.

The chain is the record; spans are best effort. Nothing here raises into the caller or waits
on the network: a span is ended, with its hash attributes, by the trace writer once the TRACE
event it points at is stored. :func:`verify_spans` checks the links carried by exported spans
(read back with :func:`read_otlp_json`) against the stored chain.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from cra_agents import semconv as sc
from cra_agents._exceptions import CRAError, InvalidRequestError
from cra_agents.protocol import TraceEvent
from cra_agents.trace import ChainVerification, TraceStore, verify_chain

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from cra_agents.runtime import Authorization, Runtime, SessionInfo

__all__ = [
    "ExportedSpan",
    "OTelConfig",
    "OTelSpec",
    "SpanLinkProblem",
    "SpanVerification",
    "Telemetry",
    "TelemetryStats",
    "otlp_json",
    "read_otlp_json",
    "telemetry_from",
    "verify_spans",
]

logger = logging.getLogger(__name__)

_SCOPE = "cra_agents"


@dataclass(frozen=True)
class OTelConfig:
    """How spans are produced and where they go.

    Attributes:
        endpoint: A collector to export to: ``http(s)://host:port`` (OTLP/HTTP; ``/v1/traces``
            is added when no path is given) or ``grpc://host:port`` (OTLP/gRPC, plaintext;
            ``grpcs://`` for TLS). None: use ``tracer_provider`` or the global provider.
        tracer_provider: The provider to create spans with (ignored with ``endpoint``).
        capture_content: Put the frozen arguments and the result on tool spans.
        service_name: ``service.name`` of the provider cra-agents creates for ``endpoint``.
        headers: Extra export headers (e.g. an API key for a hosted backend).
        max_queue_size: Spans held for export; more are dropped (and counted).
        max_export_batch_size: Spans per export request.
        schedule_delay: Seconds between exports.
        export_timeout: Seconds an export request may take.
        shutdown_timeout: Longest :meth:`Telemetry.shutdown` waits for the last export.
    """

    endpoint: str | None = None
    tracer_provider: Any = None
    capture_content: bool = False
    service_name: str = "cra-agents"
    headers: Mapping[str, str] | None = None
    max_queue_size: int = 16_384
    max_export_batch_size: int = 512
    schedule_delay: float = 0.5
    export_timeout: float = 2.0
    shutdown_timeout: float = 2.0


#: What ``otel=`` accepts.
OTelSpec = bool | str | OTelConfig | otel_trace.TracerProvider | None


@dataclass
class TelemetryStats:
    """Counts since the telemetry started (exported/dropped only for ``endpoint`` exports)."""

    spans_started: int = 0
    spans_ended: int = 0
    spans_exported: int = 0
    #: Spans lost: the export queue was full or an export failed.
    spans_dropped: int = 0
    export_failures: int = 0
    #: Errors inside telemetry itself (logged, never raised).
    errors: int = 0


class Telemetry:
    """Creates the spans of one runtime. Never raises into the caller."""

    def __init__(
        self,
        tracer_provider: Any,
        *,
        capture_content: bool = False,
        owned_processor: Any = None,
        shutdown_timeout: float = 2.0,
        stats: TelemetryStats | None = None,
    ) -> None:
        self.tracer = tracer_provider.get_tracer(_SCOPE)
        self.provider = tracer_provider
        self.capture_content = capture_content
        self.stats = stats or TelemetryStats()
        self._processor = owned_processor
        self._shutdown_timeout = shutdown_timeout
        self._lock = threading.Lock()

    # -- spans ----------------------------------------------------------------------------

    def tool_span(
        self,
        runtime: Runtime,
        session_id: str,
        action_id: str,
        tool_name: str,
        *,
        tool_call_id: str | None = None,
    ) -> ToolSpan | None:
        """Start an ``execute_tool`` span for one call (current context as parent)."""
        try:
            attributes: dict[str, Any] = {
                sc.GEN_AI_OPERATION_NAME: "execute_tool",
                sc.GEN_AI_TOOL_NAME: tool_name,
                sc.GEN_AI_TOOL_TYPE: "function",
                sc.OPENINFERENCE_SPAN_KIND: "TOOL",
                sc.CRA_SESSION_ID: session_id,
                sc.CRA_ACTION_ID: action_id,
            }
            if tool_call_id is not None:
                attributes[sc.GEN_AI_TOOL_CALL_ID] = tool_call_id
            found = runtime.engine.action(action_id)
            if found is not None:
                atlas = runtime.atlas(found[0])
                attributes[sc.CRA_ATLAS_ID] = atlas.atlas_id
                attributes[sc.CRA_ATLAS_VERSION] = atlas.version
                attributes[sc.CRA_RISK_TIER] = found[1].risk_tier
                if found[1].description:
                    attributes[sc.GEN_AI_TOOL_DESCRIPTION] = found[1].description
            if runtime.shadow:
                attributes[sc.CRA_SHADOW] = True
            span = self.tracer.start_span(
                f"execute_tool {tool_name}", kind=SpanKind.INTERNAL, attributes=attributes
            )
            self.stats.spans_started += 1
            return ToolSpan(self, span, tool_call_id is None)
        except Exception:
            self._failed("starting a tool span")
            return None

    def session_span(self, info: SessionInfo, *, shadow: bool = False) -> SessionSpan | None:
        """Start an ``invoke_agent`` span for a session (current context as parent)."""
        try:
            attributes: dict[str, Any] = {
                sc.GEN_AI_OPERATION_NAME: "invoke_agent",
                sc.GEN_AI_AGENT_NAME: info.agent_id,
                sc.GEN_AI_AGENT_ID: info.agent_id,
                sc.GEN_AI_CONVERSATION_ID: info.session_id,
                sc.OPENINFERENCE_SPAN_KIND: "AGENT",
                sc.CRA_SESSION_ID: info.session_id,
                sc.CRA_AGENT_ID: info.agent_id,
                sc.CRA_TRACE_ID: info.trace_id,
            }
            if shadow:
                attributes[sc.CRA_SHADOW] = True
            span = self.tracer.start_span(
                f"invoke_agent {info.agent_id}", kind=SpanKind.INTERNAL, attributes=attributes
            )
            self.stats.spans_started += 1
            return SessionSpan(self, span)
        except Exception:
            self._failed("starting a session span")
            return None

    def _failed(self, what: str) -> None:
        self.stats.errors += 1
        # Called from exception handlers only.
        logger.warning("telemetry: %s failed (ignored)", what, exc_info=True)  # noqa: LOG014

    # -- lifecycle ------------------------------------------------------------------------

    def force_flush(self, timeout: float = 5.0) -> bool:
        """Export what is queued (only for exports cra-agents owns)."""
        if self._processor is None:
            return True
        try:
            return bool(self._processor.force_flush(int(timeout * 1000)))
        except Exception:
            self._failed("flushing spans")
            return False

    def shutdown(self) -> None:
        """Export what is queued (bounded by ``shutdown_timeout``) and stop. Idempotent."""
        with self._lock:
            processor, self._processor = self._processor, None
        if processor is None:
            return
        # The SDK's own shutdown waits up to 30 s on a dead collector; wait on it here only
        # as long as configured (the thread is a daemon: it cannot hold up the exit).
        worker = threading.Thread(
            target=self._stop, args=(processor,), name="cra-otel-shutdown", daemon=True
        )
        worker.start()
        worker.join(self._shutdown_timeout)

    def _stop(self, processor: Any) -> None:
        try:
            processor.shutdown()
        except Exception:
            self._failed("shutting down the span exporter")


class _Span:
    """A span ended once the caller is done *and* every TRACE event it waits for is stored."""

    __slots__ = ("_end_ns", "_lock", "_waiting", "span", "telemetry")

    def __init__(self, telemetry: Telemetry, span: Any) -> None:
        self.telemetry = telemetry
        self.span = span
        self._lock = threading.Lock()
        self._waiting = 1  # the caller
        self._end_ns: int | None = None

    def activate(self) -> object:
        """Make the span current (returns a token for :meth:`deactivate`)."""
        try:
            return otel_context.attach(otel_trace.set_span_in_context(self.span))
        except Exception:
            self.telemetry._failed("activating a span")
            return None

    def deactivate(self, token: object) -> None:
        """Undo :meth:`activate`."""
        if token is not None:
            try:
                otel_context.detach(token)  # type: ignore[arg-type]
            except Exception:
                self.telemetry._failed("deactivating a span")

    def _expect(self) -> None:
        with self._lock:
            self._waiting += 1

    def _arrive(self) -> None:
        with self._lock:
            self._waiting -= 1
            done = self._waiting == 0
        if done:
            self._end()

    def _end(self) -> None:
        try:
            self.span.end(end_time=self._end_ns)
            self.telemetry.stats.spans_ended += 1
        except Exception:
            self.telemetry._failed("ending a span")

    def finish(self, *, abandon_watchers: bool = False) -> None:
        """The caller is done. With ``abandon_watchers`` (the trace failed), end it now."""
        self._end_ns = time.time_ns()
        if abandon_watchers:
            with self._lock:
                self._waiting = 0
            self._end()
        else:
            self._arrive()

    def _link(self, event: TraceEvent | None) -> None:
        if event is None:  # the trace failed: this span has no chain link
            self.span.set_attribute(sc.CRA_TRACE_UNAVAILABLE, True)
            return
        self.span.set_attributes(
            {
                sc.CRA_TRACE_ID: event.trace_id,
                sc.CRA_TRACE_SEQUENCE: event.sequence,
                sc.CRA_TRACE_EVENT_TYPE: event.event_type,
                sc.CRA_TRACE_EVENT_HASH: event.event_hash,
                sc.CRA_TRACE_PREVIOUS_HASH: event.previous_event_hash,
            }
        )


class ToolSpan(_Span):
    """The ``execute_tool`` span of one guarded call."""

    __slots__ = ("_needs_call_id",)

    def __init__(self, telemetry: Telemetry, span: Any, needs_call_id: bool) -> None:
        super().__init__(telemetry, span)
        self._needs_call_id = needs_call_id

    def decision_watcher(self) -> Any:
        """The ``watch`` to pass to ``Runtime.authorize``: links the deciding event."""
        self._expect()
        return self._on_decision

    def outcome_watcher(self) -> Any:
        """The ``watch`` to pass to ``Runtime.record_outcome``."""
        self._expect()
        return self._on_outcome

    def _on_decision(self, event: TraceEvent | None) -> None:
        try:
            self._link(event)
            execution_id = event.payload.get("execution_id") if event is not None else None
            if execution_id:
                self.span.set_attribute(sc.CRA_EXECUTION_ID, execution_id)
                if self._needs_call_id:
                    self.span.set_attribute(sc.GEN_AI_TOOL_CALL_ID, execution_id)
        except Exception:
            self.telemetry._failed("linking a tool span")
        finally:
            self._arrive()

    def _on_outcome(self, event: TraceEvent | None) -> None:
        try:
            if event is None:
                self.span.set_attribute(sc.CRA_TRACE_UNAVAILABLE, True)
                return
            self.span.set_attributes(
                {
                    sc.CRA_OUTCOME_SEQUENCE: event.sequence,
                    sc.CRA_OUTCOME_EVENT_HASH: event.event_hash,
                }
            )
        except Exception:
            self.telemetry._failed("linking a tool span")
        finally:
            self._arrive()

    def allowed(self, authorization: Authorization) -> None:
        """The call may run."""
        try:
            attributes: dict[str, Any] = {
                sc.CRA_DECISION: "allow",
                sc.CRA_POLICY_ID: authorization.policy_id,
            }
            if authorization.approver is not None:
                attributes[sc.CRA_APPROVER] = authorization.approver
            if self.telemetry.capture_content:
                attributes[sc.GEN_AI_TOOL_CALL_ARGUMENTS] = _json(authorization.arguments)
            self.span.set_attributes(attributes)
        except Exception:
            self.telemetry._failed("annotating a tool span")

    def denied(self, error: CRAError) -> None:
        """The call was refused (it does not run)."""
        try:
            details = error.details or {}
            reason = str(details.get("reason") or error.code.lower())
            self.span.set_attributes(
                {
                    sc.CRA_DECISION: "deny",
                    sc.CRA_OUTCOME: "denied",
                    sc.CRA_REASON: reason,
                    sc.CRA_POLICY_ID: str(details.get("policy_id") or "carp-runtime"),
                    sc.ERROR_TYPE: sc.POLICY_DENIED,
                }
            )
            self.span.set_status(Status(StatusCode.ERROR, error.message[:500]))
        except Exception:
            self.telemetry._failed("annotating a tool span")

    def executed(self, result: Any) -> None:
        """The tool returned."""
        try:
            self.span.set_attribute(sc.CRA_OUTCOME, "executed")
            if self.telemetry.capture_content:
                self.span.set_attribute(sc.GEN_AI_TOOL_CALL_RESULT, _json(result))
        except Exception:
            self.telemetry._failed("annotating a tool span")

    def failed(self, error: BaseException) -> None:
        """The tool raised."""
        try:
            self.span.set_attributes(
                {sc.CRA_OUTCOME: "failed", sc.ERROR_TYPE: type(error).__qualname__}
            )
            self.span.set_status(Status(StatusCode.ERROR, str(error)[:500]))
        except Exception:
            self.telemetry._failed("annotating a tool span")


class SessionSpan(_Span):
    """The ``invoke_agent`` span of a session."""

    __slots__ = ()

    def end_watcher(self) -> Any:
        """The ``watch`` to pass to ``Runtime.end_session``: links ``session.ended``."""
        self._expect()
        return self._on_end

    def _on_end(self, event: TraceEvent | None) -> None:
        try:
            self._link(event)
        except Exception:
            self.telemetry._failed("linking a session span")
        finally:
            self._arrive()

    def errored(self, error: BaseException) -> None:
        """The session block raised."""
        try:
            self.span.set_attribute(sc.ERROR_TYPE, type(error).__qualname__)
            self.span.set_status(Status(StatusCode.ERROR, str(error)[:500]))
        except Exception:
            self.telemetry._failed("annotating a session span")


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value, default=repr).decode()[:8192]
    except Exception:
        return repr(value)[:8192]


# -- building -------------------------------------------------------------------------------


def telemetry_from(spec: OTelSpec) -> Telemetry | None:
    """A :class:`Telemetry` for an ``otel=`` argument (None when off).

    Raises:
        InvalidRequestError: an unknown endpoint scheme, or the ``otel`` extra is missing.
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
        provider = spec.tracer_provider or otel_trace.get_tracer_provider()
        return Telemetry(provider, capture_content=spec.capture_content)
    return _exporting(spec)


def _exporting(config: OTelConfig) -> Telemetry:
    endpoint = config.endpoint or ""
    scheme = endpoint.split("://", 1)[0].lower() if "://" in endpoint else ""
    if scheme not in ("http", "https", "grpc", "grpcs"):
        raise InvalidRequestError(
            f"otel endpoint {endpoint!r}: use http(s)://host:port for OTLP/HTTP or "
            "grpc://host:port for OTLP/gRPC",
            details={"reason": "bad_otel_endpoint"},
        )
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        if scheme.startswith("grpc"):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            exporter: SpanExporter = GrpcExporter(
                endpoint=endpoint.split("://", 1)[1],
                insecure=scheme == "grpc",
                headers=dict(config.headers or {}),
                timeout=config.export_timeout,
            )
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            url = endpoint
            if url.count("/") <= 2:
                url = url.rstrip("/") + "/v1/traces"
            exporter = HttpExporter(
                endpoint=url, headers=dict(config.headers or {}), timeout=config.export_timeout
            )
    except ImportError as exc:
        raise InvalidRequestError(
            f"exporting spans needs the otel extra: pip install 'cra-agents[otel]' ({exc})",
            details={"reason": "otel_extra_missing"},
        ) from exc
    stats = TelemetryStats()
    processor = _batch_processor(_CountingExporter(exporter, stats), config, stats)
    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}))
    provider.add_span_processor(processor)
    return Telemetry(
        provider,
        capture_content=config.capture_content,
        owned_processor=processor,
        shutdown_timeout=config.shutdown_timeout,
        stats=stats,
    )


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


# -- checking exported spans against the chain ---------------------------------------------


@dataclass(frozen=True)
class ExportedSpan:
    """A span as a collector recorded it (ids in lower-case hex)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    attributes: Mapping[str, Any]
    status_code: str = "UNSET"


def read_otlp_json(path: str | Path) -> list[ExportedSpan]:
    """Spans from an OTLP/JSON file (one ``ExportTraceServiceRequest`` per line or in total).

    The OpenTelemetry Collector's ``file`` exporter writes this format.

    Raises:
        InvalidRequestError: the file is not OTLP/JSON.
    """
    text = Path(path).read_bytes()
    spans: list[ExportedSpan] = []
    documents: list[Any]
    try:
        documents = [orjson.loads(text)]
    except orjson.JSONDecodeError:
        documents = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                documents.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise InvalidRequestError(
                    f"{path}:{number}: not OTLP/JSON ({exc})",
                    details={"reason": "not_otlp_json", "line": number},
                ) from exc
    for document in documents:
        spans.extend(_otlp_spans(document, path))
    return spans


_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _otlp_spans(document: Any, path: object) -> Iterator[ExportedSpan]:
    if not isinstance(document, dict) or "resourceSpans" not in document:
        raise InvalidRequestError(
            f"{path}: expected OTLP/JSON with resourceSpans",
            details={"reason": "not_otlp_json"},
        )
    for resource in document["resourceSpans"] or []:
        for scope in resource.get("scopeSpans") or []:
            for span in scope.get("spans") or []:
                status = (span.get("status") or {}).get("code", 0)
                yield ExportedSpan(
                    name=span.get("name", ""),
                    trace_id=str(span.get("traceId", "")).lower(),
                    span_id=str(span.get("spanId", "")).lower(),
                    parent_span_id=str(span.get("parentSpanId") or "").lower() or None,
                    attributes={
                        a["key"]: _otlp_value(a.get("value") or {})
                        for a in span.get("attributes") or []
                    },
                    status_code=_STATUS.get(status, str(status))
                    if isinstance(status, int)
                    else str(status).removeprefix("STATUS_CODE_"),
                )


def _otlp_value(value: Mapping[str, Any]) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [_otlp_value(v) for v in value["arrayValue"].get("values") or []]
    return None


@dataclass(frozen=True)
class SpanLinkProblem:
    """A span whose chain link does not match the stored chain."""

    span_name: str
    span_id: str
    session_id: str
    sequence: int
    problem: Literal["missing_event", "hash_mismatch", "previous_hash_mismatch", "bad_link"]
    detail: str


@dataclass
class SpanVerification:
    """The outcome of :func:`verify_spans`; truthy when every link matches a valid chain."""

    checked_links: int = 0
    spans_without_link: int = 0
    problems: list[SpanLinkProblem] = field(default_factory=list)
    chains: dict[str, ChainVerification] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        """Every link matches, and every chain the spans point into verifies."""
        return not self.problems and all(self.chains.values())

    def __bool__(self) -> bool:
        return self.valid

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "valid": self.valid,
            "checked_links": self.checked_links,
            "spans_without_link": self.spans_without_link,
            "problems": [asdict(p) for p in self.problems],
            "chains": {k: v.as_dict() for k, v in self.chains.items()},
        }


def verify_spans(
    spans: Iterable[ExportedSpan],
    store: TraceStore | Runtime,
    *,
    check_chains: bool = True,
) -> SpanVerification:
    """Check the TRACE links carried by exported spans against the stored chain.

    For every span with ``cra.trace.event_hash``: the stored event at its session and sequence
    must have that hash and previous hash (and the outcome link likewise); with
    ``check_chains`` every session referenced is verified end to end as well.
    """
    from cra_agents.runtime import Runtime

    source: TraceStore = store.store if isinstance(store, Runtime) else store
    report = SpanVerification()
    by_session: dict[str, dict[int, TraceEvent]] = {}

    def stored(session_id: str) -> dict[int, TraceEvent]:
        hit = by_session.get(session_id)
        if hit is None:
            events = list(source.read(session_id))
            hit = by_session[session_id] = {e.sequence: e for e in events}
            if check_chains:
                report.chains[session_id] = verify_chain(events)
        return hit

    def check(span: ExportedSpan, session_id: str, sequence: Any, expected: Any, prev: Any) -> None:
        if not isinstance(sequence, int) or not isinstance(expected, str):
            report.problems.append(
                SpanLinkProblem(
                    span.name, span.span_id, session_id, -1, "bad_link", "malformed attributes"
                )
            )
            return
        report.checked_links += 1
        event = stored(session_id).get(sequence)
        if event is None:
            problem = SpanLinkProblem(
                span.name, span.span_id, session_id, sequence, "missing_event", "not stored"
            )
        elif event.event_hash != expected:
            problem = SpanLinkProblem(
                span.name,
                span.span_id,
                session_id,
                sequence,
                "hash_mismatch",
                f"span {expected}, stored {event.event_hash}",
            )
        elif prev is not None and event.previous_event_hash != prev:
            problem = SpanLinkProblem(
                span.name,
                span.span_id,
                session_id,
                sequence,
                "previous_hash_mismatch",
                f"span {prev}, stored {event.previous_event_hash}",
            )
        else:
            return
        report.problems.append(problem)

    for span in spans:
        attrs = span.attributes
        session_id = attrs.get(sc.CRA_SESSION_ID)
        if sc.CRA_TRACE_EVENT_HASH not in attrs or not isinstance(session_id, str):
            report.spans_without_link += 1
            continue
        check(
            span,
            session_id,
            attrs.get(sc.CRA_TRACE_SEQUENCE),
            attrs.get(sc.CRA_TRACE_EVENT_HASH),
            attrs.get(sc.CRA_TRACE_PREVIOUS_HASH),
        )
        if sc.CRA_OUTCOME_EVENT_HASH in attrs:
            check(
                span,
                session_id,
                attrs.get(sc.CRA_OUTCOME_SEQUENCE),
                attrs.get(sc.CRA_OUTCOME_EVENT_HASH),
                None,
            )
    return report


# -- OTLP/JSON from stored events -----------------------------------------------------------------


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


def _ns(timestamp: str) -> str:
    from cra_agents._clock import parse_timestamp_ns

    return str(parse_timestamp_ns(timestamp))


def _link_attrs(event: Mapping[str, Any]) -> dict[str, Any]:
    return {
        sc.CRA_TRACE_ID: event["trace_id"],
        sc.CRA_TRACE_SEQUENCE: event["sequence"],
        sc.CRA_TRACE_EVENT_TYPE: event["event_type"],
        sc.CRA_TRACE_EVENT_HASH: event["event_hash"],
        sc.CRA_TRACE_PREVIOUS_HASH: event["previous_event_hash"],
    }


def _session_spans(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    from typing import cast

    from cra_agents.trace import fold_session

    folded = fold_session(events)  # the records keep the dicts they were given
    first, last = events[0], events[-1]
    session_id = str(first["session_id"])
    trace_id = str(first["trace_id"]).replace("-", "")[:32].rjust(32, "0")
    root_id = _span_id(str(first["span_id"]))
    agent = str((first.get("payload") or {}).get("agent_id", "agent"))
    shadow = folded.shadow
    root_attrs: dict[str, Any] = {
        sc.GEN_AI_OPERATION_NAME: "invoke_agent",
        sc.GEN_AI_AGENT_NAME: agent,
        sc.GEN_AI_AGENT_ID: agent,
        sc.GEN_AI_CONVERSATION_ID: session_id,
        sc.OPENINFERENCE_SPAN_KIND: "AGENT",
        sc.CRA_SESSION_ID: session_id,
        sc.CRA_AGENT_ID: agent,
        sc.CRA_TRACE_ID: first["trace_id"],
    }
    if shadow:
        root_attrs[sc.CRA_SHADOW] = True
    spans = [
        {
            "traceId": trace_id,
            "spanId": root_id,
            "name": f"invoke_agent {agent}",
            "kind": 1,
            "startTimeUnixNano": _ns(first["timestamp"]),
            "endTimeUnixNano": _ns(last["timestamp"]),
            "attributes": [_otlp_attr(k, v) for k, v in root_attrs.items()],
            "status": {"code": 0},
        }
    ]
    for call in folded.calls:
        execution_id = call.execution_id
        # Calls seen without their request (a trace that starts mid-call) have no span.
        if not execution_id or not call.has_request:
            continue
        requested = cast("Mapping[str, Any]", call.requested)
        action_id = call.action_id
        attrs: dict[str, Any] = {
            sc.GEN_AI_OPERATION_NAME: "execute_tool",
            sc.GEN_AI_TOOL_NAME: action_id,
            sc.GEN_AI_TOOL_TYPE: "function",
            sc.GEN_AI_TOOL_CALL_ID: execution_id,
            sc.OPENINFERENCE_SPAN_KIND: "TOOL",
            sc.CRA_SESSION_ID: session_id,
            sc.CRA_ACTION_ID: action_id,
            sc.CRA_EXECUTION_ID: execution_id,
        }
        status: dict[str, Any] = {"code": 0}
        end = requested
        decided = cast("Mapping[str, Any] | None", call.decided)
        if decided is not None:
            end = decided
            attrs.update(_link_attrs(decided))
            policy = decided["payload"].get("policy_id")
            if policy:
                attrs[sc.CRA_POLICY_ID] = policy
            if call.decision == "deny":
                attrs[sc.CRA_DECISION] = "deny"
                attrs[sc.CRA_OUTCOME] = "denied"
                attrs[sc.CRA_REASON] = str(decided["payload"].get("reason", ""))
                attrs[sc.ERROR_TYPE] = sc.POLICY_DENIED
                status = {"code": 2, "message": attrs[sc.CRA_REASON]}
            else:
                attrs[sc.CRA_DECISION] = "allow"
                if decided["payload"].get("approver"):
                    attrs[sc.CRA_APPROVER] = decided["payload"]["approver"]
        outcome = cast("Mapping[str, Any] | None", call.outcome)
        if outcome is not None:
            end = outcome
            attrs[sc.CRA_OUTCOME_SEQUENCE] = outcome["sequence"]
            attrs[sc.CRA_OUTCOME_EVENT_HASH] = outcome["event_hash"]
            if call.outcome_kind == "executed":
                attrs[sc.CRA_OUTCOME] = "executed"
            else:
                attrs[sc.CRA_OUTCOME] = "failed"
                attrs[sc.ERROR_TYPE] = str(outcome["payload"].get("error_code") or "error")
                status = {"code": 2, "message": str(outcome["payload"].get("error_message", ""))}
        if call.shadow:
            attrs[sc.CRA_SHADOW] = True
        spans.append(
            {
                "traceId": trace_id,
                "spanId": _span_id(str(requested["span_id"])),
                "parentSpanId": root_id,
                "name": f"execute_tool {action_id}",
                "kind": 1,
                "startTimeUnixNano": _ns(requested["timestamp"]),
                "endTimeUnixNano": _ns(end["timestamp"]),
                "attributes": [_otlp_attr(k, v) for k, v in attrs.items()],
                "status": status,
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
    the runtime emits live, so :func:`read_otlp_json` and :func:`verify_spans` check them
    against the store. Span ids are derived from the events' span ids, so an export is
    reproducible. Arguments and results are never exported (the chain holds digests only).
    """
    spans: list[dict[str, Any]] = []
    for session in sessions:
        events = [
            e.model_dump(mode="json") if isinstance(e, TraceEvent) else dict(e) for e in session
        ]
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
