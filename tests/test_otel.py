"""OpenTelemetry spans: attributes, parentage, chain links, best effort, and a real collector."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import cra_agents as cra
from cra_agents import semconv as sc
from cra_agents.examples import atlas_path
from cra_agents.otel import (
    ExportedSpan,
    OTelConfig,
    Telemetry,
    read_otlp_json,
    telemetry_from,
    verify_spans,
)
from cra_agents.trace import open_store
from tests.harness.collector import Collector
from tests.harness.spans import exported

GITHUB_OPS = atlas_path("github-ops")


@pytest.fixture
def memory_spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    cra.configure(atlases=[GITHUB_OPS], store="memory://", otel=provider)
    yield exporter
    cra.shutdown()


@cra.guarded("github.file.read")
def read_file(repo: str, path: str) -> str:
    return f"{repo}:{path}"


@cra.guarded("github.repo.delete")
def delete_repo(repo: str, confirm_name: str) -> None:
    raise AssertionError("never runs")


@cra.guarded("github.issue.comment")
def comment(repo: str, issue_number: int, body: str) -> None:
    raise RuntimeError("GitHub is down")


def _by_name(spans: list[ExportedSpan], name: str) -> list[ExportedSpan]:
    return [s for s in spans if s.name == name]


class TestSpans:
    def test_calls_and_sessions_become_linked_spans(self, memory_spans):
        """Tool spans under the session span, GenAI and cra.* attributes, links that verify."""
        with cra.session(agent_id="triage-bot", goal="Read and clean up") as active:
            assert read_file("acme/app", "README.md") == "acme/app:README.md"
            with pytest.raises(cra.ActionDenied):
                delete_repo("acme/app", "acme/app")
            with pytest.raises(RuntimeError, match="GitHub is down"):
                comment("acme/app", 1, "hi")
        runtime = cra.get_runtime()
        runtime.flush()
        spans = [exported(s) for s in memory_spans.get_finished_spans()]
        assert sorted(s.name for s in spans) == [
            "execute_tool comment",
            "execute_tool delete_repo",
            "execute_tool read_file",
            "invoke_agent triage-bot",
        ]
        (session,) = _by_name(spans, "invoke_agent triage-bot")
        assert session.parent_span_id is None
        assert session.attributes[sc.GEN_AI_CONVERSATION_ID] == active.session_id
        assert session.attributes[sc.GEN_AI_OPERATION_NAME] == "invoke_agent"
        assert session.attributes[sc.CRA_TRACE_EVENT_TYPE] == "session.ended"
        tools = [s for s in spans if s.name.startswith("execute_tool")]
        assert {s.parent_span_id for s in tools} == {session.span_id}
        assert {s.trace_id for s in spans} == {session.trace_id}
        (read,) = _by_name(spans, "execute_tool read_file")
        attrs = read.attributes
        assert attrs[sc.GEN_AI_OPERATION_NAME] == "execute_tool"
        assert attrs[sc.GEN_AI_TOOL_NAME] == "read_file"
        assert attrs[sc.GEN_AI_TOOL_TYPE] == "function"
        assert attrs[sc.GEN_AI_TOOL_CALL_ID] == attrs[sc.CRA_EXECUTION_ID]
        assert attrs[sc.GEN_AI_TOOL_DESCRIPTION]
        assert attrs[sc.OPENINFERENCE_SPAN_KIND] == "TOOL"
        assert attrs[sc.CRA_DECISION] == "allow"
        assert attrs[sc.CRA_OUTCOME] == "executed"
        assert attrs[sc.CRA_ATLAS_ID] == "com.example.github-ops"
        assert attrs[sc.CRA_ATLAS_VERSION]
        assert attrs[sc.CRA_SESSION_ID] == active.session_id
        assert attrs[sc.CRA_TRACE_EVENT_TYPE] == "action.approved"
        assert len(str(attrs[sc.CRA_TRACE_EVENT_HASH])) == 64
        assert sc.GEN_AI_TOOL_CALL_ARGUMENTS not in attrs  # content is opt-in
        assert read.status_code == "UNSET"
        (denied,) = _by_name(spans, "execute_tool delete_repo")
        assert denied.status_code == "ERROR"
        assert denied.attributes[sc.ERROR_TYPE] == sc.POLICY_DENIED
        assert denied.attributes[sc.CRA_DECISION] == "deny"
        assert denied.attributes[sc.CRA_POLICY_ID]
        assert denied.attributes[sc.CRA_TRACE_EVENT_TYPE] == "action.denied"
        (failed,) = _by_name(spans, "execute_tool comment")
        assert failed.status_code == "ERROR"
        assert failed.attributes[sc.CRA_OUTCOME] == "failed"
        assert failed.attributes[sc.ERROR_TYPE] == "RuntimeError"
        report = verify_spans(spans, runtime)
        assert report.valid
        assert report.checked_links == 6  # 4 deciding/ending events + 2 outcome events
        assert runtime.telemetry is not None
        assert runtime.telemetry.stats.spans_ended == 4

    def test_tampered_chain_or_span_is_caught(self, memory_spans):
        """A span link that disagrees with the stored chain is reported with its sequence."""
        with cra.session(agent_id="triage-bot", goal="Read"):
            read_file("acme/app", "README.md")
        runtime = cra.get_runtime()
        runtime.flush()
        spans = [exported(s) for s in memory_spans.get_finished_spans()]
        (read,) = _by_name(spans, "execute_tool read_file")
        forged = ExportedSpan(
            read.name,
            read.trace_id,
            read.span_id,
            read.parent_span_id,
            {**read.attributes, sc.CRA_TRACE_EVENT_HASH: "0" * 64},
        )
        report = verify_spans([forged], runtime)
        assert not report
        assert [p.problem for p in report.problems] == ["hash_mismatch"]
        moved = ExportedSpan("x", "t", "s", None, {**read.attributes, sc.CRA_TRACE_SEQUENCE: 999})
        assert [p.problem for p in verify_spans([moved], runtime).problems] == ["missing_event"]
        prev = ExportedSpan(
            "x", "t", "s", None, {**read.attributes, sc.CRA_TRACE_PREVIOUS_HASH: "f" * 64}
        )
        assert [p.problem for p in verify_spans([prev], runtime).problems] == [
            "previous_hash_mismatch"
        ]
        bad = ExportedSpan("x", "t", "s", None, {**read.attributes, sc.CRA_TRACE_SEQUENCE: "1"})
        assert [p.problem for p in verify_spans([bad], runtime).problems] == ["bad_link"]
        plain = ExportedSpan("x", "t", "s", None, {})
        assert verify_spans([plain], runtime).spans_without_link == 1

    def test_content_capture_shadow_and_async(self):
        """Arguments/results only when opted in; shadow runs are flagged on every span."""
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        cra.configure(
            atlases=[GITHUB_OPS],
            store="memory://",
            shadow=True,
            otel=OTelConfig(tracer_provider=provider, capture_content=True),
        )

        @cra.guarded("github.repo.delete")
        async def delete(repo: str, confirm_name: str) -> str:
            return "deleted (shadow)"

        async def run() -> str:
            async with cra.session(agent_id="triage-bot", goal="Shadow rollout"):
                return await delete("acme/app", "acme/app")

        try:
            assert asyncio.run(run()) == "deleted (shadow)"
            cra.get_runtime().flush()
        finally:
            cra.shutdown()
        spans = {s.name: exported(s) for s in exporter.get_finished_spans()}
        tool = spans["execute_tool delete"].attributes
        assert tool[sc.CRA_SHADOW] is True
        assert spans["invoke_agent triage-bot"].attributes[sc.CRA_SHADOW] is True
        assert orjson.loads(str(tool[sc.GEN_AI_TOOL_CALL_ARGUMENTS])) == {
            "repo": "acme/app",
            "confirm_name": "acme/app",
        }
        assert tool[sc.GEN_AI_TOOL_CALL_RESULT] == '"deleted (shadow)"'

    def test_invalid_parameters_and_errors_in_the_block(self, memory_spans):
        def block() -> None:
            with cra.session(agent_id="bot", goal="Fail"):
                with pytest.raises(cra.InvalidParametersError):
                    read_file("not a repo", "x")
                raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            block()
        cra.get_runtime().flush()
        spans = {s.name: exported(s) for s in memory_spans.get_finished_spans()}
        tool = spans["execute_tool read_file"]
        assert tool.attributes[sc.CRA_REASON] == "invalid_parameters"
        assert tool.attributes[sc.CRA_TRACE_EVENT_TYPE] == "action.denied"
        session = spans["invoke_agent bot"]
        assert session.status_code == "ERROR"
        assert session.attributes[sc.ERROR_TYPE] == "ValueError"

    def test_telemetry_failures_never_reach_the_caller(self, caplog):
        """A broken tracer provider costs spans, never calls."""

        class Broken:
            def get_tracer(self, name: str) -> Any:
                return self

            def start_span(self, *args: Any, **kwargs: Any) -> Any:
                raise RuntimeError("exporter on fire")

        broken: Any = Broken()  # duck-typed like a TracerProvider
        cra.configure(atlases=[GITHUB_OPS], store="memory://", otel=broken)
        try:
            with cra.session(agent_id="triage-bot", goal="Read") as active:
                assert read_file("acme/app", "README.md") == "acme/app:README.md"
            runtime = cra.get_runtime()
            assert runtime.telemetry is not None
            assert runtime.telemetry.stats.errors == 2
            assert runtime.verify(active.session_id).valid
        finally:
            cra.shutdown()
        assert "telemetry: starting a tool span failed" in caplog.text


class TestConfiguration:
    def test_specs(self):
        assert telemetry_from(None) is None
        assert telemetry_from(False) is None
        assert isinstance(telemetry_from(True), Telemetry)
        assert isinstance(telemetry_from(OTelConfig()), Telemetry)
        with pytest.raises(cra.ConfigurationError, match="grpc://host:port"):
            telemetry_from("ftp://collector:21")
        exporting = telemetry_from("http://127.0.0.1:9")
        assert exporting is not None
        exporting.shutdown()
        exporting.shutdown()  # idempotent

    def test_unreachable_collector_counts_drops_and_never_blocks(self):
        """Export failures are counted; the calls and the chain are unaffected."""
        cra.configure(
            atlases=[GITHUB_OPS],
            store="memory://",
            otel=OTelConfig(endpoint="http://127.0.0.1:9", export_timeout=0.5),
        )
        runtime = cra.get_runtime()
        with cra.session(agent_id="triage-bot", goal="Read") as active:
            for _ in range(5):
                read_file("acme/app", "README.md")
        runtime.flush()
        telemetry = runtime.telemetry
        assert telemetry is not None
        assert telemetry.force_flush(timeout=5)
        assert telemetry.stats.spans_dropped == 6  # 5 tool spans and the session span
        assert telemetry.stats.spans_exported == 0
        assert telemetry.stats.export_failures >= 1
        assert runtime.verify(active.session_id).valid
        cra.shutdown()

    def test_read_otlp_json(self, tmp_path):
        """The collector file exporter's OTLP/JSON (one request per line) reads back."""

        def request(name: str, value: dict[str, Any]) -> dict[str, Any]:
            return {
                "resourceSpans": [
                    {
                        "scopeSpans": [
                            {
                                "spans": [
                                    {
                                        "traceId": "AB" * 16,
                                        "spanId": "cd" * 8,
                                        "parentSpanId": "",
                                        "name": name,
                                        "status": {"code": 2},
                                        "attributes": [{"key": "k", "value": value}],
                                    }
                                ]
                            }
                        ]
                    }
                ]
            }

        lines = [
            request("a", {"stringValue": "s"}),
            request("b", {"intValue": "5"}),
            request("c", {"boolValue": True}),
            request("d", {"doubleValue": 0.5}),
            request("e", {"arrayValue": {"values": [{"intValue": "1"}]}}),
            request("f", {}),
        ]
        path = tmp_path / "spans.jsonl"
        path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
        spans = read_otlp_json(path)
        assert [s.attributes["k"] for s in spans] == ["s", 5, True, 0.5, [1], None]
        assert spans[0].trace_id == "ab" * 16
        assert spans[0].parent_span_id is None
        assert spans[0].status_code == "ERROR"
        single = tmp_path / "one.json"
        single.write_bytes(orjson.dumps(lines[0], option=orjson.OPT_INDENT_2))
        assert len(read_otlp_json(single)) == 1
        broken = tmp_path / "broken.jsonl"
        broken.write_text('{"resourceSpans": []}\nnot json\n')
        with pytest.raises(cra.InvalidRequestError, match=r"broken\.jsonl:2"):
            read_otlp_json(broken)
        wrong = tmp_path / "wrong.json"
        wrong.write_text('{"spans": []}')
        with pytest.raises(cra.InvalidRequestError, match="resourceSpans"):
            read_otlp_json(wrong)


# -- a real collector ---------------------------------------------------------------------


@pytest.fixture
def collector(otel_collector: Collector) -> Collector:
    return otel_collector


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_spans_reach_a_real_collector(collector, transport, tmp_path):
    """Over OTLP/HTTP and gRPC: one span per call, parented, with links that verify."""
    collector.mark()
    endpoint = collector.http_endpoint if transport == "http" else collector.grpc_endpoint
    store = f"sqlite://{tmp_path}/trace.db"
    cra.configure(atlases=[GITHUB_OPS], store=store, otel=endpoint)
    calls = 0
    with cra.session(agent_id="triage-bot", goal=f"Export over {transport}") as active:
        for index in range(20):
            read_file("acme/app", f"docs/{index}.md")
            calls += 1
        for _ in range(3):
            with pytest.raises(cra.ActionDenied):
                delete_repo("acme/app", "acme/app")
            calls += 1
        with pytest.raises(RuntimeError):
            comment("acme/app", 1, "hi")
        calls += 1
    telemetry = cra.get_runtime().telemetry
    assert telemetry is not None
    cra.shutdown()  # drains the chain, ends the last spans, exports (bounded)
    spans = [s for s in collector.wait_for(calls + 1) if s.attributes.get(sc.CRA_SESSION_ID)]
    mine = [s for s in spans if s.attributes[sc.CRA_SESSION_ID] == active.session_id]
    tools = [s for s in mine if s.name.startswith("execute_tool ")]
    sessions = [s for s in mine if s.name == "invoke_agent triage-bot"]
    assert len(tools) == calls
    assert len(sessions) == 1
    assert {s.parent_span_id for s in tools} == {sessions[0].span_id}
    assert sessions[0].attributes[sc.GEN_AI_CONVERSATION_ID] == active.session_id
    assert sum(s.name == "execute_tool read_file" for s in tools) == 20
    denied = [s for s in tools if s.name == "execute_tool delete_repo"]
    assert len(denied) == 3
    assert all(s.status_code == "ERROR" for s in denied)
    assert {s.attributes[sc.ERROR_TYPE] for s in denied} == {sc.POLICY_DENIED}
    assert all(s.attributes[sc.OPENINFERENCE_SPAN_KIND] == "TOOL" for s in tools)
    assert telemetry.stats.spans_dropped == 0
    assert telemetry.stats.spans_exported == calls + 1
    reopened = open_store(store)
    try:
        report = verify_spans(mine, reopened)
    finally:
        reopened.close()
    assert report.valid, report.problems
    assert report.checked_links == calls + 1 + 20 + 1  # decision links + outcome links
    print(
        f"\n{transport}: {len(mine)} spans at the collector for {calls} calls, "
        f"{report.checked_links} chain links verified"
    )


class _Exploding:
    """A tracer provider whose spans fail on every call but creation."""

    def get_tracer(self, name: str) -> Any:
        return self

    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        return self

    def __getattr__(self, name: str) -> Any:
        def explode(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError(f"{name} exploded")

        return explode

    def get_span_context(self) -> Any:
        raise RuntimeError("no context")


def test_spans_that_fail_everywhere_cost_nothing_but_spans():
    """Every span operation raising leaves allowed, denied and failing calls as they were."""
    exploding: Any = _Exploding()
    cra.configure(
        atlases=[GITHUB_OPS],
        store="memory://",
        otel=OTelConfig(tracer_provider=exploding, capture_content=True),
    )

    @cra.guarded("github.issue.close")
    async def close(repo: str, issue_number: int) -> None:
        raise LookupError("no such issue")

    async def closing() -> None:
        with pytest.raises(LookupError):
            await close("acme/app", 1)

    try:
        with cra.session(agent_id="triage-bot", goal="Chaos") as active:
            assert read_file("acme/app", "README.md") == "acme/app:README.md"
            with pytest.raises(cra.ActionDenied):
                delete_repo("acme/app", "acme/app")
            with pytest.raises(RuntimeError, match="GitHub is down"):
                comment("acme/app", 1, "hi")
            asyncio.run(closing())
        runtime = cra.get_runtime()
        runtime.flush()
        assert runtime.verify(active.session_id).valid
        assert runtime.telemetry is not None
        assert runtime.telemetry.stats.errors >= 5  # at least one per span: 4 calls, 1 session
    finally:
        cra.shutdown()


def test_trace_failure_ends_open_spans(memory_spans, monkeypatch):
    """When the trace store fails, calls are refused and their spans still end."""
    runtime = cra.get_runtime()

    def broken(events: Any) -> None:
        raise OSError("disk full")

    def calls() -> None:
        with cra.session(agent_id="bot", goal="Fail"):
            read_file("acme/app", "README.md")
            runtime.flush()
            monkeypatch.setattr(runtime.store, "append", broken)
            read_file("acme/app", "again.md")  # queued, then the writer fails
            with pytest.raises(cra.TraceUnavailableError):
                runtime.flush()  # the flush that meets the failure reports the loss
            read_file("acme/app", "refused.md")

    with pytest.raises(cra.TraceUnavailableError):
        calls()
    with pytest.raises(cra.TraceUnavailableError):
        runtime.flush()  # the writer gives up on what it cannot store: open spans end
    with pytest.raises(cra.TraceUnavailableError):
        cra.shutdown()  # and the close reports the loss once more
    names = [s.name for s in memory_spans.get_finished_spans()]
    assert names.count("execute_tool read_file") == 3
    assert "invoke_agent bot" in names
    unlinked = [
        s
        for s in memory_spans.get_finished_spans()
        if (s.attributes or {}).get(sc.CRA_TRACE_UNAVAILABLE)
    ]
    # The call queued when the store failed, the call refused because of it, and the session.
    assert len(unlinked) == 3


def test_otlp_json_pairs_a_denial_without_execution_id():
    """The export reads calls through fold_session: an id-less denial ends its call's span."""
    from cra_agents._ids import new_id
    from cra_agents.otel import otlp_json
    from cra_agents.trace import SessionChain

    chain = SessionChain(new_id(), new_id())
    chain.append("session.started", {"agent_id": "bot", "goal": "g"})
    chain.append("action.requested", {"action_id": "a.b", "execution_id": "e1"})
    chain.append("action.denied", {"action_id": "a.b", "reason": "internal", "policy_id": "p"})
    chain.append("action.denied", {"action_id": "a.b", "reason": "alone", "policy_id": "p"})
    chain.append("action.requested", {"action_id": "a.c", "execution_id": "e2", "shadow": True})
    document = otlp_json([chain.flush()])
    root, call, pending = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    shadow = {"key": sc.CRA_SHADOW, "value": {"boolValue": True}}
    assert shadow in root["attributes"] and shadow in pending["attributes"]
    assert pending["status"] == {"code": 0}
    assert pending["startTimeUnixNano"] == pending["endTimeUnixNano"]
    attrs = {a["key"]: next(iter(a["value"].values())) for a in call["attributes"]}
    assert (attrs[sc.CRA_EXECUTION_ID], attrs[sc.CRA_DECISION], attrs[sc.CRA_REASON]) == (
        "e1",
        "deny",
        "internal",
    )
    assert call["status"] == {"code": 2, "message": "internal"}
    assert "parentSpanId" not in root and call["parentSpanId"] == root["spanId"]
