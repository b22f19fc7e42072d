"""One span tree beside the application's: session spans, conversation ids, adopted spans, env."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import cra_agents as cra
from cra_agents import semconv as sc
from cra_agents.examples import atlas_path
from cra_agents.otel import (
    OTelConfig,
    otlp_json,
    read_otlp_json,
    telemetry_from,
    verify_spans,
)
from cra_agents.otel._config import _environment_endpoint
from tests.harness.spans import exported

GITHUB_OPS = atlas_path("github-ops")
ACTIONS = {"read_file": "github.file.read", "delete_repo": "github.repo.delete"}


@pytest.fixture
def provider() -> TracerProvider:
    return TracerProvider()


@pytest.fixture
def exporter(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    cra.shutdown()


def _call(runtime: cra.Runtime, session_id: str, tool: str, **arguments: Any) -> None:
    """A call made the way CRAMiddleware makes it: an explicit session, no cra.session block."""
    call = runtime.call(tool, arguments, actions=ACTIONS, session_id=session_id)
    try:
        runtime.gate_sync(call)
    except cra.ActionDenied:
        return
    with call:
        call.result = "ok"


def _spans(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    return by_name


class TestSessionSpans:
    def test_a_created_session_is_a_span_and_the_parent_of_its_calls(self, provider, exporter):
        """create_session: invoke_agent under the current span; calls under it; the thread."""
        runtime = cra.configure(atlases=[GITHUB_OPS], store="memory://", otel=provider)
        app = provider.get_tracer("app")
        with app.start_as_current_span("request") as request:
            info = runtime.create_session(
                "gh-agent", "Read", metadata={sc.LANGGRAPH_THREAD_ID: "thread-7"}
            )
        _call(runtime, info.session_id, "read_file", repo="acme/app", path="README.md")
        _call(runtime, info.session_id, "delete_repo", repo="acme/app", confirm_name="acme/app")
        runtime.end_session(info.session_id)
        runtime.flush()
        spans = _spans(exporter)
        (session,) = spans["invoke_agent gh-agent"]
        assert session.parent is not None
        assert session.parent.span_id == request.get_span_context().span_id
        attrs = session.attributes or {}
        assert attrs[sc.GEN_AI_OPERATION_NAME] == "invoke_agent"
        assert attrs[sc.GEN_AI_PROVIDER_NAME] == sc.PROVIDER
        assert attrs[sc.GEN_AI_AGENT_NAME] == "gh-agent"
        assert sc.GEN_AI_AGENT_ID not in attrs  # the conventions keep it for unique ids
        assert attrs[sc.GEN_AI_CONVERSATION_ID] == "thread-7"
        assert attrs[sc.CRA_SESSION_ID] == info.session_id
        tools = spans["execute_tool read_file"] + spans["execute_tool delete_repo"]
        assert len(tools) == 2
        for tool in tools:
            assert tool.parent is not None
            assert tool.parent.span_id == session.context.span_id
            tool_attrs = tool.attributes or {}
            assert tool_attrs[sc.GEN_AI_CONVERSATION_ID] == "thread-7"
            assert tool_attrs[sc.GEN_AI_AGENT_NAME] == "gh-agent"
            assert tool_attrs[sc.CRA_SESSION_ID] == info.session_id
        report = verify_spans([exported(s) for s in exporter.get_finished_spans()], runtime)
        assert report.valid
        assert report.checked_links == 4  # two decisions, one outcome, session.ended

    def test_a_current_span_stays_the_parent_of_a_call(self, provider, exporter):
        """The application's span around a call is its parent, not the session's span."""
        runtime = cra.configure(atlases=[GITHUB_OPS], store="memory://", otel=provider)
        info = runtime.create_session("gh-agent", "Read")
        with provider.get_tracer("app").start_as_current_span("tools node") as node:
            _call(runtime, info.session_id, "read_file", repo="acme/app", path="a.md")
        runtime.end_session(info.session_id)
        runtime.flush()
        (tool,) = _spans(exporter)["execute_tool read_file"]
        assert tool.parent is not None
        assert tool.parent.span_id == node.get_span_context().span_id
        assert (tool.attributes or {})[sc.GEN_AI_CONVERSATION_ID] == info.session_id

    def test_calls_of_the_implicit_session_stay_roots(self, provider, exporter):
        """The implicit session lives as long as the process: it parents nothing."""
        runtime = cra.configure(atlases=[GITHUB_OPS], store="memory://", otel=provider)
        session_id = runtime.implicit_session_id()
        _call(runtime, session_id, "read_file", repo="acme/app", path="a.md")
        runtime.flush()
        (tool,) = _spans(exporter)["execute_tool read_file"]
        assert tool.parent is None
        assert (tool.attributes or {})[sc.GEN_AI_AGENT_NAME] == "cra-implicit"

    def test_the_offline_export_says_the_same(self, provider, exporter, tmp_path):
        """otlp_json: the live spans' conversation id, agent and provider; links verify."""
        runtime = cra.configure(atlases=[GITHUB_OPS], store="memory://", otel=provider)
        info = runtime.create_session(
            "gh-agent", "Read", metadata={sc.LANGGRAPH_THREAD_ID: "thread-9"}
        )
        _call(runtime, info.session_id, "read_file", repo="acme/app", path="a.md")
        runtime.end_session(info.session_id)
        runtime.flush()
        # Keyed by operation: the stored events do not name the tool (its action names it).
        live = {
            str((s.attributes or {})[sc.GEN_AI_OPERATION_NAME]): dict(s.attributes or {})
            for s in exporter.get_finished_spans()
        }
        path = tmp_path / "spans.json"
        document = otlp_json([runtime.trace_events(info.session_id)])
        import orjson

        path.write_bytes(orjson.dumps(document))
        offline = {
            str(s.attributes[sc.GEN_AI_OPERATION_NAME]): dict(s.attributes)
            for s in read_otlp_json(path)
        }
        assert set(offline) == set(live)
        keys = (sc.GEN_AI_CONVERSATION_ID, sc.GEN_AI_AGENT_NAME, sc.GEN_AI_PROVIDER_NAME)
        for name, attrs in live.items():
            for key in keys:
                assert offline[name].get(key) == attrs.get(key), (name, key)
        assert offline["execute_tool"][sc.GEN_AI_CONVERSATION_ID] == "thread-9"
        assert verify_spans(read_otlp_json(path), runtime).valid


class TestAdoptedToolSpans:
    def test_the_current_foreign_tool_span_gets_our_attributes(self, provider, exporter):
        """An application's own execute_tool span around a call: no second span."""
        runtime = cra.configure(atlases=[GITHUB_OPS], store="memory://", otel=provider)
        info = runtime.create_session("gh-agent", "Read")
        app = provider.get_tracer("app")
        with app.start_as_current_span(
            "my tool", attributes={sc.GEN_AI_OPERATION_NAME: "execute_tool"}
        ):
            _call(runtime, info.session_id, "read_file", repo="acme/app", path="a.md")
            runtime.flush()  # stored while the span is open: its link lands on it
        runtime.end_session(info.session_id)
        runtime.flush()
        spans = _spans(exporter)
        assert "execute_tool read_file" not in spans
        (mine,) = spans["my tool"]
        attrs = mine.attributes or {}
        assert attrs[sc.CRA_SESSION_ID] == info.session_id
        assert attrs[sc.CRA_DECISION] == "allow"
        assert attrs[sc.CRA_TRACE_EVENT_TYPE] == "action.approved"
        assert attrs[sc.GEN_AI_AGENT_NAME] == "gh-agent"
        telemetry = runtime.telemetry
        assert telemetry is not None and telemetry.stats.spans_adopted == 1
        assert verify_spans([exported(mine)], runtime).valid

    def test_an_ended_foreign_span_keeps_what_the_caller_knew(self, provider, exporter):
        """Ended before the events were stored: identity attributes, no link, no error."""
        runtime = cra.configure(atlases=[GITHUB_OPS], store="memory://", otel=provider)
        info = runtime.create_session("gh-agent", "Read")
        with provider.get_tracer("app").start_as_current_span(
            "openinference tool", attributes={sc.OPENINFERENCE_SPAN_KIND: "TOOL"}
        ):
            _call(runtime, info.session_id, "read_file", repo="acme/app", path="a.md")
        runtime.end_session(info.session_id)
        runtime.flush()
        (mine,) = _spans(exporter)["openinference tool"]
        attrs = mine.attributes or {}
        assert attrs[sc.CRA_SESSION_ID] == info.session_id
        assert attrs[sc.CRA_ACTION_ID] == "github.file.read"
        assert "execute_tool read_file" not in _spans(exporter)
        telemetry = runtime.telemetry
        assert telemetry is not None and telemetry.stats.errors == 0

    def test_adoption_can_be_turned_off(self, provider, exporter):
        """adopt_tool_spans=False: our own span, child of the foreign one."""
        config = OTelConfig(tracer_provider=provider, adopt_tool_spans=False)
        runtime = cra.configure(atlases=[GITHUB_OPS], store="memory://", otel=config)
        info = runtime.create_session("gh-agent", "Read")
        with provider.get_tracer("app").start_as_current_span(
            "their tool", attributes={sc.GEN_AI_OPERATION_NAME: "execute_tool"}
        ) as theirs:
            _call(runtime, info.session_id, "read_file", repo="acme/app", path="a.md")
        runtime.end_session(info.session_id)
        runtime.flush()
        (ours,) = _spans(exporter)["execute_tool read_file"]
        assert ours.parent is not None
        assert ours.parent.span_id == theirs.get_span_context().span_id
        assert sc.CRA_SESSION_ID not in (_spans(exporter)["their tool"][0].attributes or {})


class TestEnvironment:
    def test_endpoint_protocol_and_headers(self, monkeypatch):
        for name in ("ENDPOINT", "PROTOCOL", "HEADERS"):
            monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{name}", raising=False)
            monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_TRACES_{name}", raising=False)
        assert _environment_endpoint() is None
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
        assert _environment_endpoint() == "http://collector:4318/v1/traces"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        assert _environment_endpoint() == "grpc://collector:4318"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317")
        assert _environment_endpoint() == "grpcs://collector:4317"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://other:4318/custom")
        assert _environment_endpoint() == "http://other:4318/custom"
        # An explicit provider wins over the environment.
        provider = TracerProvider()
        telemetry = telemetry_from(OTelConfig(tracer_provider=provider))
        assert telemetry is not None and telemetry.provider is provider

    def test_service_name_and_resource_attributes(self, monkeypatch):
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci,team=agents")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "triage")
        telemetry = telemetry_from("http://127.0.0.1:9")
        assert telemetry is not None
        resource = telemetry.provider.resource.attributes
        assert resource["service.name"] == "triage"
        assert resource["team"] == "agents"
        telemetry.shutdown()
        explicit = telemetry_from(OTelConfig(endpoint="http://127.0.0.1:9", service_name="x"))
        assert explicit is not None
        assert explicit.provider.resource.attributes["service.name"] == "x"
        explicit.shutdown()
        monkeypatch.delenv("OTEL_SERVICE_NAME")
        monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES")
        default = telemetry_from("http://127.0.0.1:9")
        assert default is not None
        assert default.provider.resource.attributes["service.name"] == "cra-agents"
        default.shutdown()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_the_environment_names_a_real_collector(otel_collector, protocol, monkeypatch):
    """OTelConfig() with OTEL_EXPORTER_OTLP_ENDPOINT / _PROTOCOL / _HEADERS exports to rotel."""
    port = otel_collector.grpc_port if protocol == "grpc" else otel_collector.http_port
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=secret")
    otel_collector.mark()
    runtime = cra.configure(atlases=[GITHUB_OPS], store="memory://", otel=OTelConfig())
    info = runtime.create_session("env-agent", "Export", metadata={sc.LANGGRAPH_THREAD_ID: "t-env"})
    _call(runtime, info.session_id, "read_file", repo="acme/app", path="a.md")
    runtime.end_session(info.session_id)
    telemetry = runtime.telemetry
    assert telemetry is not None
    cra.shutdown()
    spans = [
        s
        for s in otel_collector.wait_for(2)
        if s.attributes.get(sc.CRA_SESSION_ID) == info.session_id
    ]
    assert sorted(s.name for s in spans) == ["execute_tool read_file", "invoke_agent env-agent"]
    assert {s.attributes[sc.GEN_AI_CONVERSATION_ID] for s in spans} == {"t-env"}
    assert telemetry.stats.spans_exported == 2


def test_no_current_span_means_no_foreign_span():
    """The API's invalid span is never adopted."""
    from cra_agents.otel._foreign import foreign_tool_span

    assert foreign_tool_span(trace.INVALID_SPAN, "cra_agents") is None
