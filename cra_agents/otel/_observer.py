"""Live spans: the OpenTelemetry observer of the runtime.

The runtime calls it at the moments of :mod:`cra_agents.runtime._observers`. On the caller's
thread it only begins a span (the current context's span is its parent) and makes it current
while the tool runs, so the tool's own spans nest under it. Every attribute is set on the trace
writer's thread, once the call's events are stored, by :func:`~cra_agents.otel.call_attributes`
— the same function the offline export uses — and the span ends at the timestamp of its last
event.

With a tracer of the OpenTelemetry SDK, the span the caller begins is a placeholder that holds
the parent context and the start time (its ids are chosen when first needed), and the writer
starts the SDK span with those ids, parent and start time (see :mod:`cra_agents.otel._replay`).
The placeholder does not record: what a tool sets on the current span itself (rather than on
spans of its own) is dropped. Any other tracer (API-only, no-op, a custom provider) starts its
span on the caller, as the API asks, and the writer finishes it.

Nothing here raises into the caller: failures are logged and counted in :attr:`Telemetry.stats`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from cra_agents._clock import parse_timestamp_ns
from cra_agents.otel._attributes import (
    CallFacts,
    call_attributes,
    session_attributes,
    tool_span_name,
)
from cra_agents.runtime import Observer
from cra_agents.trace import fold_calls

if TYPE_CHECKING:
    from cra_agents.otel._replay import SpanReplay
    from cra_agents.protocol import TraceEvent
    from cra_agents.runtime import Call, SessionInfo

__all__ = ["Telemetry", "TelemetryStats"]

logger = logging.getLogger(__name__)

_SCOPE = "cra_agents"


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


class Telemetry(Observer):
    """The spans of one runtime: an observer. Never raises into the caller."""

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
        #: Begins SDK spans on the caller, starts them on the writer (None: not an SDK tracer).
        self._replay = _span_replay(self.tracer)

    def _failed(self, what: str) -> None:
        self.stats.errors += 1
        # Called from exception handlers only.
        logger.warning("telemetry: %s failed (ignored)", what, exc_info=True)  # noqa: LOG014

    def _begin(self, name: str, attributes: dict[str, Any] | None = None) -> Any:
        """A span begun here and made by the writer (SDK), or started here (other tracers)."""
        replay = self._replay
        if replay is not None:
            deferred = replay.begin(name, attributes)
            if deferred is not None:
                return deferred
        return self.tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes)

    def _span(self, state: Any) -> Any:
        """The span to finish (a span begun by :meth:`_begin` for the SDK is started now)."""
        return self._replay.span(state) if self._replay is not None else state

    # -- sessions ---------------------------------------------------------------------------

    def on_session_start(self, session: SessionInfo) -> Any:
        """Begin the ``invoke_agent`` span (current context as parent)."""
        try:
            attributes, _ = session_attributes(
                session.session_id, session.agent_id, session.trace_id, shadow=session.shadow
            )
            state = self._begin(f"invoke_agent {session.agent_id}", attributes)
            self.stats.spans_started += 1
            return state
        except Exception:  # noqa: BLE001 - telemetry never raises into the host
            self._failed("starting a session span")
            return None

    def on_session_end(
        self,
        session: SessionInfo,
        state: Any,
        event: TraceEvent | None,
        error: BaseException | None,
    ) -> None:
        """Link ``session.ended`` and end the span at its timestamp."""
        if state is None:
            return
        try:
            attributes, status = session_attributes(
                session.session_id,
                session.agent_id,
                session.trace_id,
                shadow=session.shadow,
                ended=event,
                error=error,
            )
            if event is None:
                attributes["cra.trace.unavailable"] = True
            span = self._span(state)
            span.set_attributes(attributes)
            if status is not None:
                span.set_status(Status(StatusCode.ERROR, status))
            self._end(span, event)
        except Exception:  # noqa: BLE001 - telemetry never raises into the host
            self._failed("ending a session span")

    # -- calls ------------------------------------------------------------------------------

    def on_call_start(self, call: Call) -> Any:
        """Begin the ``execute_tool`` span (current context: the session's span or the app's)."""
        try:
            state = self._begin(tool_span_name(call.tool))
            self.stats.spans_started += 1
            return state
        except Exception:  # noqa: BLE001 - telemetry never raises into the host
            self._failed("starting a tool span")
            return None

    def activate(self, state: Any) -> Any:
        """Make the span current while the tool runs (its own spans nest under it)."""
        if state is None:
            return None
        try:
            return otel_context.attach(otel_trace.set_span_in_context(state))
        except Exception:  # noqa: BLE001 - telemetry never raises into the host
            self._failed("activating a span")
            return None

    def deactivate(self, state: Any, token: Any) -> None:
        """Undo :meth:`activate`."""
        if token is None:
            return
        try:
            otel_context.detach(token)
        except Exception:  # noqa: BLE001 - telemetry never raises into the host
            self._failed("deactivating a span")

    def on_call_end(self, call: Call, state: Any, events: Sequence[TraceEvent] | None) -> None:
        """Every attribute from the stored events, then end the span at the last one."""
        if state is None:
            return
        try:
            span = self._span(state)
            if not span.is_recording():  # not sampled: nothing to fill in
                self._end(span, None)
                return
            records = fold_calls(events) if events else []
            record = next((r for r in records if r.execution_id == call.execution_id), None)
            facts = CallFacts(
                tool=call.tool,
                action_id=call.action_id,
                session_id=call.session_id,
                execution_id=call.execution_id,
                tool_call_id=call.tool_call_id,
                atlas_id=call.atlas_id,
                atlas_version=call.atlas_version,
                risk_tier=call.risk_tier if call.atlas_id is not None else None,
                description=call.description,
                shadow=call.shadow,
                content=(call.arguments, call.result) if self.capture_content else None,
            )
            attributes, status = call_attributes(record, facts)
            span.set_attributes(attributes)
            if status is not None:
                span.set_status(Status(StatusCode.ERROR, status[:500]))
            self._end(span, events[-1] if events else None)
        except Exception:  # noqa: BLE001 - telemetry never raises into the host
            self._failed("ending a tool span")

    def _end(self, span: Any, last: TraceEvent | None) -> None:
        end_ns = parse_timestamp_ns(last.timestamp) if last is not None else time.time_ns()
        span.end(end_time=end_ns)
        self.stats.spans_ended += 1

    # -- lifecycle --------------------------------------------------------------------------

    def force_flush(self, timeout: float = 5.0) -> bool:
        """Export what is queued (only for exports cra-agents owns)."""
        if self._processor is None:
            return True
        try:
            return bool(self._processor.force_flush(int(timeout * 1000)))
        except Exception:  # noqa: BLE001 - telemetry never raises into the host
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
        except Exception:  # noqa: BLE001 - telemetry never raises into the host
            self._failed("shutting down the span exporter")


def _span_replay(tracer: Any) -> SpanReplay | None:
    """Spans made on the writer for an SDK tracer; None for others (API-only, no-op, custom).

    Only when the SDK is already imported: a provider of the SDK cannot exist otherwise, and
    telemetry for an API-only application must not import it.
    """
    sdk = sys.modules.get("opentelemetry.sdk.trace")
    if sdk is None or not isinstance(tracer, sdk.Tracer):
        return None
    from cra_agents.otel._replay import SpanReplay

    return SpanReplay(tracer)
