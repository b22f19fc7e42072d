"""Spans begun on the caller's thread and made by the SDK on the trace writer's.

Starting an SDK span costs the caller about ten microseconds (span object, attribute
containers, locks, every processor's ``on_start``), and nothing of it is needed before the
call's events are stored, except the span context that the tool's own spans nest under. So, for
a tracer of the OpenTelemetry SDK, :meth:`SpanReplay.begin` only notes, on the caller, the
current context (the parent) and the start time, in a :class:`Deferred` span that the observer
makes current while the tool runs. Its span context is chosen as ``Tracer.start_span`` would
choose it — the parent's trace id or a new one from the provider's id generator, the provider's
sampler asked with the caller's context, a new span id — when it is first asked for: by the
tool's own spans (or a log handler) on the caller, or else by the writer. :meth:`SpanReplay.start`
then starts the real span with the provider's own tracer, on whatever thread stores the events:
a copy of that tracer whose id generator and sampler hand back what was chosen, with the
caller's start time and context. The span is the SDK's own — processors, resource, span limits,
scope and tracer configuration are the provider's — with the ids the tool saw.

What it relies on: ``opentelemetry.sdk.trace.Tracer.start_span`` taking its ids from the
tracer's ``id_generator`` and its decision from the tracer's ``sampler`` (public attributes, and
so since the SDK's first releases). :meth:`SpanReplay.start` checks that the span it got has the
chosen ids; should a future SDK pick them another way, spans go back to starting on the caller.
A sampler may be asked on the writer's thread, later than the span's start: it is handed the
caller's context, as the SDK's samplers expect.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import Tracer
from opentelemetry.sdk.trace import sampling as stock_sampling
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

__all__ = ["Deferred", "SpanReplay"]

logger = logging.getLogger(__name__)

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_RECORD_AND_SAMPLE = Decision.RECORD_AND_SAMPLE
#: The SDK's stock samplers that decide from the parent's span context alone (and echo the
#: attributes they are shown): their answer for one parent holds for all its children. The calls
#: of a session share a parent, so asking once per parent spares each call most of its cost.
_STOCK = tuple(
    getattr(stock_sampling, name)
    for name in ("ALWAYS_ON", "ALWAYS_OFF", "DEFAULT_ON", "DEFAULT_OFF")
    if hasattr(stock_sampling, name)
)
#: The W3C "random trace id" flag (API 1.39+; 0 before, when the SDK never set it).
_RANDOM: int = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)


class Deferred(NonRecordingSpan):
    """A span begun on the caller: current while the tool runs, recorded later.

    Like any :class:`~opentelemetry.trace.NonRecordingSpan` it records nothing (the SDK span is
    made, with its ids, by :meth:`SpanReplay.start`). Its span context is chosen when first
    asked for: by the tool's own spans or logs on the caller's thread, or else by the writer.
    """

    __slots__ = ("_chosen", "_replay", "attributes", "context", "name", "start_ns")

    def __init__(
        self,
        replay: SpanReplay,
        name: str,
        context: otel_context.Context,
        attributes: Attributes,
        start_ns: int,
    ) -> None:
        # No NonRecordingSpan.__init__: it takes the span context, chosen on first use here.
        self._replay = replay
        self.name = name
        #: The caller's context when the span began: its span is the parent.
        self.context = context
        #: The attributes the span starts with (what the sampler is shown).
        self.attributes = attributes
        self.start_ns = start_ns
        #: The span context and the sampler's answer, once chosen.
        self._chosen: tuple[SpanContext, SamplingResult] | None = None

    def get_span_context(self) -> SpanContext:
        """The span context, chosen now if nobody asked before (once: every thread sees it)."""
        chosen = self._chosen
        return (chosen if chosen is not None else self._replay.choose(self))[0]

    def __repr__(self) -> str:
        chosen = self._chosen
        return f"Deferred({self.name!r}, {chosen[0] if chosen is not None else None!r})"


class SpanReplay:
    """Begins spans of an SDK tracer on the caller and starts them for real later."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        #: Whether :meth:`begin` defers spans (False once the SDK did not keep the ids).
        self.active = True
        # Tracer configurators (SDK 1.36+) can disable a tracer; it then starts no span at
        # all, which begin() leaves to the tracer itself.
        self._enabled = getattr(tracer, "_is_enabled", None)
        #: The last answer of a stock sampler for a parent: (parent, sampler, answer, flags).
        self._last: tuple[SpanContext, Sampler, SamplingResult, TraceFlags] | None = None
        self._choosing = threading.Lock()

    def begin(
        self,
        name: str,
        attributes: Attributes = None,
        context: otel_context.Context | None = None,
    ) -> Deferred | None:
        """Begin a span as ``tracer.start_span(name)`` would, parented by ``context``.

        ``context`` defaults to the current one.

        None when the tracer is disabled, or the SDK did not keep chosen ids before: start the
        span the ordinary way then.
        """
        enabled = self._enabled
        if not self.active or (enabled is not None and not enabled()):
            return None
        if context is None:
            context = otel_context.get_current()
        return Deferred(self, name, context, attributes, time.time_ns())

    def choose(self, deferred: Deferred) -> tuple[SpanContext, SamplingResult]:
        """Choose a deferred span's context as ``start_span`` does, on whatever thread asks.

        Returns the span context and the sampler's answer.
        """
        context, attributes = deferred.context, deferred.attributes
        parent = otel_trace.get_current_span(context).get_span_context()
        tracer = self.tracer
        ids, sampler, last = tracer.id_generator, tracer.sampler, self._last
        if last is not None and last[0] is parent and last[1] is sampler and attributes is None:
            trace_id, sampling, flags = parent.trace_id, last[2], last[3]
        else:
            if parent.is_valid:
                trace_id = parent.trace_id
                random_id = bool(parent.trace_flags & _RANDOM)
            else:
                trace_id = ids.generate_trace_id()
                random_id = bool(_RANDOM) and ids.is_trace_id_random()
            # As start_span asks it: the (caller's) context the span starts in, no links.
            sampling = sampler.should_sample(
                context, trace_id, deferred.name, SpanKind.INTERNAL, attributes, ()
            )
            flags = _SAMPLED if sampling.decision is _RECORD_AND_SAMPLE else _NOT_SAMPLED
            if random_id:
                flags = TraceFlags(flags | _RANDOM)
            if parent.is_valid and attributes is None and any(sampler is s for s in _STOCK):
                self._last = (parent, sampler, sampling, flags)
        span_context = SpanContext(
            trace_id, ids.generate_span_id(), False, flags, sampling.trace_state
        )
        with self._choosing:  # two threads asking at once: the first answer stands
            if deferred._chosen is None:
                deferred._chosen = (span_context, sampling)
            return deferred._chosen

    def span(self, state: Any) -> Any:
        """The span of a state: a deferred span is started now, on this thread."""
        return self.start(state) if isinstance(state, Deferred) else state

    def start(self, deferred: Deferred) -> otel_trace.Span:
        """Start the span begun by :meth:`begin` with the provider's tracer, on this thread.

        Should the SDK not have used the chosen ids (or the tracer not let itself be copied),
        the span is still returned (the tool's own spans then point at a parent that was never
        exported), a warning is logged, and :attr:`active` turns False: later spans start on
        the caller, the ordinary way.
        """
        chosen, sampling = deferred._chosen or self.choose(deferred)
        try:
            tracer = copy.copy(self.tracer)  # fresh: the provider's current resource, config
            tracer.id_generator = _Chosen(chosen)
            tracer.sampler = _Decided(sampling)
        except Exception:  # noqa: BLE001 - a tracer that will not be copied: see below
            tracer = self.tracer  # a span all the same, with ids of its own
        span = tracer.start_span(
            deferred.name,
            context=deferred.context,
            kind=SpanKind.INTERNAL,
            attributes=deferred.attributes,
            start_time=deferred.start_ns,
        )
        made = span.get_span_context()
        if self.active and (made.trace_id, made.span_id, made.trace_flags) != (
            chosen.trace_id,
            chosen.span_id,
            chosen.trace_flags,
        ):
            self.active = False
            logger.warning(
                "telemetry: tracer %s did not start %r with the ids chosen for it; spans "
                "start on the caller's thread from now on",
                type(self.tracer).__qualname__,
                deferred.name,
            )
        return span


class _Chosen(IdGenerator):
    """Hands out the ids chosen on the caller."""

    def __init__(self, span_context: SpanContext) -> None:
        self._span_context = span_context

    def generate_span_id(self) -> int:
        return self._span_context.span_id

    def generate_trace_id(self) -> int:
        return self._span_context.trace_id

    def is_trace_id_random(self) -> bool:
        return bool(self._span_context.trace_flags & _RANDOM)


class _Decided(Sampler):
    """Hands back the decision the provider's sampler made on the caller."""

    def __init__(self, result: SamplingResult) -> None:
        self._result = result

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        return self._result

    def get_description(self) -> str:
        return "decided on the caller"
