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

from cra_agents import semconv as sc
from cra_agents._clock import parse_timestamp_ns
from cra_agents.otel._attributes import (
    CallFacts,
    call_attributes,
    conversation_id,
    session_attributes,
    tool_span_name,
)
from cra_agents.otel._foreign import foreign_tool_span
from cra_agents.runtime import Observer
from cra_agents.trace import fold_calls

if TYPE_CHECKING:
    from cra_agents.otel._replay import SpanReplay
    from cra_agents.protocol import TraceEvent
    from cra_agents.runtime import Call, SessionInfo

__all__ = ["Telemetry", "TelemetryStats"]

logger = logging.getLogger(__name__)

_SCOPE = "cra_agents"
#: The runtime's implicit session (calls outside every session): its span is nobody's parent.
_IMPLICIT_AGENT = "cra-implicit"


@dataclass(slots=True)
class _Session:
    """A session span's state, and what its calls' spans repeat."""

    state: Any
    agent: str
    conversation: str
    #: Parent of its calls begun without a current span (False: the implicit session).
    parent: bool


class _Adopted:
    """The state of a call whose tool span is another instrumentation's (not ours to end)."""

    __slots__ = ("span",)

    def __init__(self, span: Any) -> None:
        self.span = span


@dataclass
class TelemetryStats:
    """Counts since the telemetry started (exported/dropped only for ``endpoint`` exports)."""

    spans_started: int = 0
    spans_ended: int = 0
    #: Calls whose attributes went onto another instrumentation's tool span, not a span of ours.
    spans_adopted: int = 0
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
        adopt_tool_spans: bool = True,
        owned_processor: Any = None,
        shutdown_timeout: float = 2.0,
        stats: TelemetryStats | None = None,
    ) -> None:
        self.tracer = tracer_provider.get_tracer(_SCOPE)
        self.provider = tracer_provider
        self.capture_content = capture_content
        #: Put a call's attributes on another instrumentation's current tool span, if any.
        self.adopt_tool_spans = adopt_tool_spans
        self.stats = stats or TelemetryStats()
        self._processor = owned_processor
        self._shutdown_timeout = shutdown_timeout
        self._lock = threading.Lock()
        #: Begins SDK spans on the caller, starts them on the writer (None: not an SDK tracer).
        self._replay = _span_replay(self.tracer)
        #: Open sessions by id (dict operations are atomic: no lock on the hot path).
        self._sessions: dict[str, _Session] = {}

    def _failed(self, what: str) -> None:
        self.stats.errors += 1
        # Called from exception handlers only.
        logger.warning("telemetry: %s failed (ignored)", what, exc_info=True)  # noqa: LOG014

    def _begin(
        self,
        name: str,
        attributes: dict[str, Any] | None = None,
        context: otel_context.Context | None = None,
    ) -> Any:
        """A span begun here and made by the writer (SDK), or started here (other tracers).

        Its parent is the span of ``context``, by default the current one.
        """
        replay = self._replay
        if replay is not None:
            deferred = replay.begin(name, attributes, context)
            if deferred is not None:
                return deferred
        return self.tracer.start_span(
            name, context=context, kind=SpanKind.INTERNAL, attributes=attributes
        )

    def _span(self, state: Any) -> Any:
        """The span to finish (a span begun by :meth:`_begin` for the SDK is started now)."""
        return self._replay.span(state) if self._replay is not None else state

    # -- sessions ---------------------------------------------------------------------------

    def on_session_start(self, session: SessionInfo) -> Any:
        """Begin the ``invoke_agent`` span (current context as parent).

        Every session gets one, however it was created (``cra.session``,
        ``Runtime.create_session``, an adapter such as ``CRAMiddleware``).
        """
        try:
            conversation = conversation_id(session.session_id, session.metadata)
            attributes, _ = session_attributes(
                session.session_id,
                session.agent_id,
                session.trace_id,
                conversation=conversation,
                shadow=session.shadow,
            )
            state = self._begin(f"invoke_agent {session.agent_id}", attributes)
            self.stats.spans_started += 1
            self._sessions[session.session_id] = _Session(
                state, session.agent_id, conversation, session.agent_id != _IMPLICIT_AGENT
            )
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
        known = self._sessions.pop(session.session_id, None)
        if state is None:
            return
        try:
            attributes, status = session_attributes(
                session.session_id,
                session.agent_id,
                session.trace_id,
                conversation=known.conversation if known is not None else None,
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
        """Begin the ``execute_tool`` span, or adopt another instrumentation's tool span.

        The parent is the current span (a ``cra.session`` block's, or the application's);
        without one, the span of the call's session (``CRAMiddleware`` runs, sessions made
        with ``create_session``). When the current span is another instrumentation's tool span
        (OpenInference, LangSmith, an application's own ``execute_tool`` span), the call's
        attributes go onto it instead (``adopt_tool_spans``): one span per tool call.
        """
        try:
            current = otel_trace.get_current_span()
            if self.adopt_tool_spans:
                foreign = foreign_tool_span(current, _SCOPE)
                if foreign is not None:
                    return self._adopt(call, foreign)
            context = None
            if not current.get_span_context().is_valid:
                session = self._sessions.get(call.session_id)
                if session is not None and session.parent and session.state is not None:
                    context = otel_trace.set_span_in_context(session.state)
            state = self._begin(tool_span_name(call.tool), context=context)
            self.stats.spans_started += 1
            return state
        except Exception:  # noqa: BLE001 - telemetry never raises into the host
            self._failed("starting a tool span")
            return None

    def _adopt(self, call: Call, span: Any) -> _Adopted:
        """Put what the caller knows on the foreign span now, while it is surely open."""
        attributes, _ = call_attributes(None, self._facts(call), **self._session_of(call))
        del attributes[sc.CRA_TRACE_UNAVAILABLE]  # not yet: the writer adds the links
        _set_foreign(span, attributes)
        self.stats.spans_adopted += 1
        return _Adopted(span)

    def _session_of(self, call: Call) -> dict[str, Any]:
        session = self._sessions.get(call.session_id)
        if session is None:
            return {}
        return {"agent_name": session.agent, "conversation": session.conversation}

    def _facts(self, call: Call) -> CallFacts:
        return CallFacts(
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

    def _fill_adopted(self, call: Call, state: _Adopted, events: Sequence[TraceEvent]) -> None:
        """The decision and its chain link, on the foreign span if it is still open.

        The foreign instrumentation ends its span when the tool returns, maybe before the
        writer stored the call's events: then the span keeps what :meth:`_adopt` put on it.
        """
        span = state.span
        if not span.is_recording():
            return
        record = next((r for r in fold_calls(events) if r.execution_id == call.execution_id), None)
        if record is None:
            return
        attributes, _ = call_attributes(record, self._facts(call), **self._session_of(call))
        _set_foreign(span, attributes)

    def on_call_decided(self, call: Call, state: Any, events: Sequence[TraceEvent] | None) -> None:
        """On an adopted span: the decision's link, as soon as it is stored."""
        if isinstance(state, _Adopted) and events:
            try:
                self._fill_adopted(call, state, events)
            except Exception:  # noqa: BLE001 - telemetry never raises into the host
                self._failed("filling an adopted tool span")

    def activate(self, state: Any) -> Any:
        """Make the span current while the tool runs (its own spans nest under it)."""
        if state is None or isinstance(state, _Adopted):
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
            if isinstance(state, _Adopted):
                if events:
                    self._fill_adopted(call, state, events)
                return
            span = self._span(state)
            if not span.is_recording():  # not sampled: nothing to fill in
                self._end(span, None)
                return
            records = fold_calls(events) if events else []
            record = next((r for r in records if r.execution_id == call.execution_id), None)
            attributes, status = call_attributes(
                record, self._facts(call), **self._session_of(call)
            )
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


def _set_foreign(span: Any, attributes: dict[str, Any]) -> None:
    """Our ``cra.*`` attributes on another instrumentation's span; its own ``gen_ai.*`` stay."""
    existing = getattr(span, "attributes", None) or {}
    span.set_attributes(
        {
            key: value
            for key, value in attributes.items()
            if key.startswith("cra.") or key not in existing
        }
    )


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
