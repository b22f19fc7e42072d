"""Spans of an SDK provider are begun on the caller and made by the trace writer.

What the caller's thread does is checked directly (no SDK span is started there); what the
writer makes is compared with what the tool saw (ids, nesting, sampling) and with the offline
export of the same calls (attributes, chain links, status, times).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Tracer, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceState
from opentelemetry.util.types import Attributes

import cra_agents as cra
from cra_agents import semconv as sc
from cra_agents._clock import parse_timestamp_ns
from cra_agents.examples import atlas_path
from cra_agents.otel import (
    otlp_json,
    read_otlp_json,
    verify_spans,
)
from tests.harness.spans import exported

GITHUB_OPS = atlas_path("github-ops")
MERGE: dict[str, Any] = {"repo": "acme/app", "pr_number": 7, "expected_head_sha": "a" * 40}
#: What only the live call knows (the offline export has no atlas, risk tier or description).
LIVE_ONLY = {sc.CRA_ATLAS_ID, sc.CRA_ATLAS_VERSION, sc.CRA_RISK_TIER, sc.GEN_AI_TOOL_DESCRIPTION}


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def _wait_for(exporter: InMemorySpanExporter, count: int, timeout: float = 5.0) -> None:
    """Until the trace writer (not this thread: no flush) has exported ``count`` spans."""
    deadline = time.monotonic() + timeout
    while len(exporter.get_finished_spans()) < count:
        assert time.monotonic() < deadline, exporter.get_finished_spans()
        time.sleep(0.01)


def _sdk(provider: TracerProvider) -> tuple[TracerProvider, InMemorySpanExporter]:
    """``provider`` exporting to memory, as each span ends."""
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def configure() -> Iterator[Callable[[Any], cra.Runtime]]:
    """``cra.configure(otel=...)`` with the example atlas, shut down after the test."""

    def configured(otel: Any) -> cra.Runtime:
        return cra.configure(atlases=[GITHUB_OPS], store="memory://", otel=otel)

    yield configured
    cra.shutdown()


@pytest.fixture
def sdk() -> tuple[TracerProvider, InMemorySpanExporter]:
    return _sdk(TracerProvider())


@pytest.fixture
def provider(sdk: tuple[TracerProvider, InMemorySpanExporter]) -> TracerProvider:
    return sdk[0]


@pytest.fixture
def exporter(sdk: tuple[TracerProvider, InMemorySpanExporter]) -> InMemorySpanExporter:
    return sdk[1]


@pytest.fixture
def runtime(configure: Callable[[Any], cra.Runtime], provider: TracerProvider) -> cra.Runtime:
    return configure(provider)


class Seen:
    """What a tool saw of the current span while it ran."""

    def __init__(self) -> None:
        self.contexts: list[SpanContext] = []
        self.recording: list[bool] = []

    def note(self) -> None:
        span = trace.get_current_span()
        self.recording.append(span.is_recording())
        self.contexts.append(span.get_span_context())

    def reader(self, then: Callable[[], object] = lambda: None) -> Callable[[str, str], str]:
        """A guarded ``github.file.read`` tool that notes its current span, then runs ``then``."""

        @cra.guarded("github.file.read")
        def read_file(repo: str, path: str) -> str:
            self.note()
            then()
            return path

        return read_file


@pytest.fixture
def seen() -> Seen:
    return Seen()


def _read_in_a_session(read_file: Callable[[str, str], str], *paths: str) -> None:
    """Each path read in one ``cra.session``; then the trace and the spans are written."""
    with cra.session(agent_id="bot", goal="Read"):
        for path in paths:
            read_file("acme/app", path)
    runtime = cra.get_runtime()
    runtime.flush()
    assert runtime.telemetry is not None
    assert runtime.telemetry.stats.errors == 0


class TestCallerThread:
    def test_the_caller_starts_no_sdk_span(self, runtime, exporter, seen, monkeypatch):
        """SDK spans start on the trace writer; the tool sees a non-recording span context."""
        starts: list[tuple[str, str]] = []
        start_span = Tracer.start_span

        def counting(self: Tracer, name: str, *args: Any, **kwargs: Any) -> trace.Span:
            starts.append((threading.current_thread().name, name))
            return start_span(self, name, *args, **kwargs)

        monkeypatch.setattr(Tracer, "start_span", counting)
        read_file = seen.reader()
        with cra.session(agent_id="bot", goal="Read"):
            for index in range(3):
                read_file("acme/app", f"{index}.md")
        _wait_for(exporter, 4)
        caller = threading.current_thread().name
        assert [name for thread, name in starts if thread == caller] == []
        assert sorted(name for _, name in starts) == [
            "execute_tool read_file",
            "execute_tool read_file",
            "execute_tool read_file",
            "invoke_agent bot",
        ]
        assert seen.recording == [False, False, False]
        assert all(c.is_valid and c.trace_flags.sampled for c in seen.contexts)
        exported = sorted(
            s.context.span_id for s in exporter.get_finished_spans() if s.name != "invoke_agent bot"
        )
        assert exported == sorted(c.span_id for c in seen.contexts)
        assert runtime.telemetry.stats.errors == 0

    def test_the_tools_own_spans_nest_under_the_call_span(self, runtime, provider, exporter, seen):
        """The tool's spans are children of the exported call span, itself the session's child."""
        tool_tracer = provider.get_tracer("the-tool")

        def fetch() -> None:
            with (
                tool_tracer.start_as_current_span("GET /contents"),
                tool_tracer.start_as_current_span("parse"),
            ):
                pass

        read_file = seen.reader(fetch)
        app_tracer = provider.get_tracer("the-app")
        with app_tracer.start_as_current_span("request") as request:
            with cra.session(agent_id="bot", goal="Read"):
                read_file("acme/app", "README.md")
            read_file("acme/app", "implicit.md")  # the implicit session: the app span parents
        runtime.flush()
        spans = exporter.get_finished_spans()
        calls = [s for s in spans if s.name == "execute_tool read_file"]
        gets = [s for s in spans if s.name == "GET /contents"]
        by_name = _by_name(exporter)
        session = by_name["invoke_agent bot"]
        request_id = request.get_span_context().span_id
        assert session.parent is not None and session.parent.span_id == request_id
        assert calls[0].parent is not None and calls[0].parent.span_id == session.context.span_id
        assert calls[1].parent is not None and calls[1].parent.span_id == request_id
        for call, get, context in zip(calls, gets, seen.contexts, strict=True):
            assert call.context.span_id == context.span_id
            assert get.parent is not None and get.parent.span_id == call.context.span_id
        parses = [s for s in spans if s.name == "parse"]
        assert [p.parent.span_id for p in parses if p.parent] == [g.context.span_id for g in gets]
        assert {s.context.trace_id for s in spans} == {request.get_span_context().trace_id}
        assert {
            s.instrumentation_scope.name for s in [session, *calls] if s.instrumentation_scope
        } == {"cra_agents"}
        assert calls[0].resource is provider.resource

    def test_threads_asking_at_once_see_one_span_context(self, runtime, exporter):
        """The span context is chosen once, whichever thread asks first."""
        contexts: list[SpanContext] = []
        ready = threading.Barrier(8)

        def ask_from_threads() -> None:
            span = trace.get_current_span()

            def ask() -> None:
                ready.wait()
                contexts.append(span.get_span_context())

            workers = [threading.Thread(target=ask) for _ in range(8)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()

        _read_in_a_session(Seen().reader(ask_from_threads), "README.md")
        call = _by_name(exporter)["execute_tool read_file"]
        assert {c.span_id for c in contexts} == {call.context.span_id}

    def test_an_unasked_span_context_is_chosen_by_the_writer(self, runtime, exporter):
        """A tool that never looks at its span still gets one, parented and timed."""

        @cra.guarded("github.file.read")
        def read_file(repo: str, path: str) -> str:
            return path

        before = time.time_ns()
        with cra.session(agent_id="bot", goal="Read") as active:
            read_file("acme/app", "README.md")
        runtime.flush()
        by_name = _by_name(exporter)
        call, session = by_name["execute_tool read_file"], by_name["invoke_agent bot"]
        assert call.parent is not None and call.parent.span_id == session.context.span_id
        events = runtime.trace_events(active.session_id)
        requested = next(e for e in events if e.event_type == "action.requested")
        executed = next(e for e in events if e.event_type == "action.executed")
        assert call.start_time is not None and session.start_time is not None
        # Started on the caller, before its first event (timestamps are whole microseconds).
        assert before <= session.start_time <= call.start_time
        assert call.start_time <= parse_timestamp_ns(requested.timestamp) + 1000
        assert call.end_time == parse_timestamp_ns(executed.timestamp)
        assert session.end_time == parse_timestamp_ns(events[-1].timestamp)


class TestSameSpansAsTheExport:
    def test_live_spans_match_the_offline_export(self, runtime, exporter, tmp_path):
        """Allowed, denied, failed, refused approval: the attributes, links and status agree."""

        @cra.guarded("github.file.read")
        def read_file(repo: str, path: str) -> str:
            return path

        @cra.guarded("github.repo.delete")
        def delete_repo(repo: str, confirm_name: str) -> None:
            raise AssertionError("never runs")

        @cra.guarded("github.issue.comment")
        def comment(repo: str, issue_number: int, body: str) -> None:
            raise RuntimeError("GitHub is down")

        @cra.guarded("github.pr.merge")
        def merge(repo: str, pr_number: int, expected_head_sha: str) -> None:
            raise AssertionError("never runs")

        with cra.session(agent_id="bot", goal="Everything") as active:
            read_file("acme/app", "README.md")
            with pytest.raises(cra.ActionDenied):
                delete_repo("acme/app", "acme/app")
            with pytest.raises(RuntimeError, match="GitHub is down"):
                comment("acme/app", 1, "hi")
            with pytest.raises(cra.ActionDenied) as refused:
                merge(**MERGE)
        assert refused.value.reason == "approval_denied"
        runtime.flush()
        live = {
            s.attributes[sc.CRA_EXECUTION_ID]: s
            for s in exporter.get_finished_spans()
            if s.attributes and sc.CRA_EXECUTION_ID in s.attributes
        }
        document = otlp_json([runtime.trace_events(active.session_id)])
        path = tmp_path / "export.json"
        path.write_bytes(orjson.dumps(document))
        offline = {
            s.attributes[sc.CRA_EXECUTION_ID]: s
            for s in read_otlp_json(path)
            if sc.CRA_EXECUTION_ID in s.attributes
        }
        assert live.keys() == offline.keys() and len(live) == 4
        times = {
            next(
                a["value"]["stringValue"]
                for a in span["attributes"]
                if a["key"] == sc.CRA_EXECUTION_ID
            ): (int(span["startTimeUnixNano"]), int(span["endTimeUnixNano"]), span["status"])
            for span in document["resourceSpans"][0]["scopeSpans"][0]["spans"]
            if span.get("parentSpanId")
        }
        for execution_id, span in live.items():
            got = exported(span)
            expected = offline[execution_id]
            assert got.status_code == expected.status_code
            # The events name the action, not the tool: the export names spans after the action.
            tool = got.attributes[sc.GEN_AI_TOOL_NAME]
            assert got.name == expected.name.replace(
                str(expected.attributes[sc.GEN_AI_TOOL_NAME]), str(tool)
            )
            assert expected.attributes[sc.GEN_AI_TOOL_NAME] == got.attributes[sc.CRA_ACTION_ID]
            shared = {k: v for k, v in got.attributes.items() if k not in LIVE_ONLY}
            assert shared == {**expected.attributes, sc.GEN_AI_TOOL_NAME: tool}, execution_id
            start, end, status = times[execution_id]
            assert span.end_time == end
            assert span.start_time is not None and span.start_time <= start + 1000
            assert (span.status.description or None) == status.get("message")
        outcomes = sorted(str(s.attributes.get(sc.CRA_OUTCOME)) for s in live.values())
        assert outcomes == ["denied", "denied", "executed", "failed"]
        report = verify_spans([exported(s) for s in exporter.get_finished_spans()], runtime)
        assert report.valid and report.checked_links == 4 + 1 + 2  # decisions, session, outcomes
        assert verify_spans(read_otlp_json(path), runtime).checked_links == 4 + 2
        stats = runtime.telemetry.stats
        assert (stats.spans_started, stats.spans_ended, stats.errors) == (5, 5, 0)


class RecordingSampler(Sampler):
    """Samples everything, tags the span and its trace state, and notes what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int | None]] = []

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        self.asked.append((name, parent.span_id if parent.is_valid else None))
        return SamplingResult(
            Decision.RECORD_AND_SAMPLE,
            {**(attributes or {}), "sampler.note": name},
            TraceState([("cra", "1")]),
        )

    def get_description(self) -> str:
        return "RecordingSampler"


class TestSampling:
    def test_a_sampler_is_asked_once_per_span_with_the_callers_parent(self, configure, seen):
        """The provider's sampler decides; its attributes and trace state reach the span."""
        sampler = RecordingSampler()
        provider, exporter = _sdk(TracerProvider(sampler=sampler))
        configure(provider)
        _read_in_a_session(seen.reader(), "a.md", "b.md")
        spans = exporter.get_finished_spans()
        session = next(s for s in spans if s.name == "invoke_agent bot")
        # The first call's context is chosen when the tool asks; its parent's just before.
        assert sampler.asked == [
            ("invoke_agent bot", None),
            ("execute_tool read_file", session.context.span_id),
            ("execute_tool read_file", session.context.span_id),
        ]
        for span in spans:
            assert span.attributes is not None and span.attributes["sampler.note"] == span.name
            assert span.context.trace_state == TraceState([("cra", "1")])
        assert session.attributes is not None and session.attributes[sc.CRA_AGENT_ID] == "bot"
        assert [c.trace_state for c in seen.contexts] == [TraceState([("cra", "1")])] * 2

    def test_spans_sampled_out_are_not_exported_and_their_children_neither(self, configure, seen):
        """ALWAYS_OFF: the tool runs under an unsampled context; nothing is exported."""
        provider, exporter = _sdk(TracerProvider(sampler=ALWAYS_OFF))
        configure(provider)
        tool_tracer = provider.get_tracer("the-tool")
        children: list[bool] = []

        def fetch() -> None:
            with tool_tracer.start_as_current_span("GET") as child:
                children.append(child.is_recording())

        _read_in_a_session(seen.reader(fetch), "a.md")
        assert exporter.get_finished_spans() == ()
        assert children == [False]
        assert [(c.is_valid, c.trace_flags.sampled) for c in seen.contexts] == [(True, False)]


class TestOtherTracers:
    def test_a_custom_provider_starts_spans_on_the_caller(self, configure, seen):
        """A provider that is not the SDK's: today's path, spans started on the caller."""
        inner, exporter = _sdk(TracerProvider())
        started: list[str] = []

        class Wrapped:
            def __init__(self, tracer: Any) -> None:
                self.tracer = tracer

            def start_span(self, name: str, *args: Any, **kwargs: Any) -> Any:
                started.append(threading.current_thread().name)
                return self.tracer.start_span(name, *args, **kwargs)

        class Provider:
            def get_tracer(self, name: str, *args: Any, **kwargs: Any) -> Any:
                return Wrapped(inner.get_tracer(name, *args, **kwargs))

        configure(Provider())
        _read_in_a_session(seen.reader(), "a.md")
        assert started == [threading.current_thread().name] * 2
        assert seen.recording == [True]
        by_name = _by_name(exporter)
        call = by_name["execute_tool read_file"]
        assert call.context.span_id == seen.contexts[0].span_id
        assert call.parent is not None
        assert call.parent.span_id == by_name["invoke_agent bot"].context.span_id
        assert call.attributes is not None and call.attributes[sc.CRA_OUTCOME] == "executed"

    def test_api_only_and_no_op_providers(self, configure, seen):
        """The API's no-op provider: calls run, nothing fails, the SDK is never imported."""
        code = (
            "import sys\n"
            "from opentelemetry import trace\n"
            "from cra_agents.otel import Telemetry\n"
            "telemetry = Telemetry(trace.NoOpTracerProvider())\n"
            "call = type('Call', (), {'tool': 't', 'session_id': 's'})()\n"
            "state = telemetry.on_call_start(call)\n"
            "telemetry.deactivate(state, telemetry.activate(state))\n"
            "assert telemetry.stats.errors == 0, telemetry.stats\n"
            "print(any(m.startswith('opentelemetry.sdk') for m in sys.modules))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert (out.returncode, out.stdout.strip()) == (0, "False"), out.stderr
        runtime = configure(trace.NoOpTracerProvider())
        _read_in_a_session(seen.reader(), "a.md")
        assert seen.contexts == [trace.INVALID_SPAN_CONTEXT]
        assert runtime.telemetry is not None
        assert runtime.telemetry.stats.spans_ended == 2

    @pytest.mark.parametrize("quirk", ["own ids", "no copies"])
    def test_an_sdk_tracer_that_ignores_the_chosen_ids_falls_back(
        self, configure, caplog, seen, quirk
    ):
        """Should an SDK pick ids its own way, spans start on the caller from then on."""

        class Stubborn(Tracer):
            def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
                if quirk == "own ids":
                    self.id_generator = RandomIdGenerator()
                return super().start_span(*args, **kwargs)

            def __copy__(self) -> Stubborn:
                if quirk == "no copies":
                    raise TypeError("not copyable")
                copied = Stubborn.__new__(Stubborn)
                copied.__dict__.update(self.__dict__)
                return copied

        class StubbornProvider(TracerProvider):
            def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
                tracer = super().get_tracer(*args, **kwargs)
                tracer.__class__ = Stubborn
                return tracer

        provider, exporter = _sdk(StubbornProvider())
        runtime = configure(provider)
        read_file = seen.reader()
        with cra.session(agent_id="bot", goal="Read"):
            read_file("acme/app", "a.md")
            runtime.flush()  # the writer finds the SDK did not keep the ids
            read_file("acme/app", "b.md")
        runtime.flush()
        assert runtime.telemetry is not None
        assert runtime.telemetry.stats.errors == 0
        assert "did not start 'execute_tool read_file' with the ids chosen" in caplog.text
        assert seen.recording == [False, True]
        calls = [s for s in exporter.get_finished_spans() if s.name == "execute_tool read_file"]
        assert calls[0].context.span_id != seen.contexts[0].span_id  # the lost one
        assert calls[1].context.span_id == seen.contexts[1].span_id
        assert all(s.attributes and s.attributes[sc.CRA_OUTCOME] == "executed" for s in calls)

    def test_a_disabled_tracer_starts_no_span(self, configure, seen):
        """A tracer turned off by the SDK's tracer configurator: no span, the parent stays."""
        from opentelemetry.sdk import trace as sdk_trace

        config = getattr(sdk_trace, "_TracerConfig", None)
        provider, exporter = _sdk(TracerProvider())
        configurator = getattr(provider, "_set_tracer_configurator", None)
        if config is None or configurator is None:
            pytest.skip("this SDK has no tracer configurator")
        configurator(tracer_configurator=lambda scope: config(scope.name != "cra_agents"))
        configure(provider)
        with provider.get_tracer("the-app").start_as_current_span("request") as request:
            _read_in_a_session(seen.reader(), "a.md")
        assert [s.name for s in exporter.get_finished_spans()] == ["request"]
        assert seen.contexts == [request.get_span_context()]
