"""The proxy's calls become the same OpenTelemetry spans as every other adapter's calls."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from mcp_support import ATLAS, in_process, notes_upstream, texts
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cra_agents import Runtime
from cra_agents import semconv as sc
from cra_agents.otel import verify_spans
from cra_agents_mcp import MCPProxy
from tests.harness.spans import exported


@pytest.fixture
def traced() -> Iterator[tuple[Runtime, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runtime = Runtime([ATLAS], store="memory://", otel=provider)
    yield runtime, exporter
    runtime.close()
    provider.shutdown()


def tool_spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    """The tool spans, by tool call id."""
    return {
        str((span.attributes or {})[sc.GEN_AI_TOOL_CALL_ID]): span
        for span in exporter.get_finished_spans()
        if sc.GEN_AI_TOOL_CALL_ID in (span.attributes or {})
    }


def by_tool(spans: dict[str, ReadableSpan]) -> dict[str, ReadableSpan]:
    return {
        str((span.attributes or {})[sc.GEN_AI_TOOL_NAME]): span
        for call_id, span in spans.items()
        if call_id.startswith("mcp:")
    }


def test_proxy_calls_are_execute_tool_spans_linked_to_the_chain(
    traced: tuple[Runtime, InMemorySpanExporter],
) -> None:
    """Executed, denied and failed calls: one span each, under the session's agent span."""
    runtime, exporter = traced
    proxy = MCPProxy(runtime, [notes_upstream()])

    async def main() -> None:
        with anyio.fail_after(60):
            async with in_process(proxy, name="span-client") as session:
                assert texts(await session.call_tool("echo", {"text": "x"})) == "echo: x"
                assert (await session.call_tool("delete_all", {})).is_error
                assert (await session.call_tool("fails", {})).is_error

    anyio.run(main)
    runtime.flush()
    # The same call outside MCP, through the one pipeline every adapter uses (cra.guarded).
    with (
        runtime.session_scope("direct-agent", "the same call, no MCP"),
        runtime.call("echo", {"text": "x"}, tool_call_id="direct-1") as call,
    ):
        call.result = "echo: x"
    runtime.flush()

    spans = tool_spans(exporter)
    assert len(spans) == 4 and "direct-1" in spans, sorted(spans)  # MCP ids: mcp:<request id>
    proxied = by_tool(spans)
    echo, denied, failed = proxied["echo"], proxied["delete_all"], proxied["fails"]
    assert echo.name == "execute_tool echo" == spans["direct-1"].name
    assert dict(echo.attributes or {})[sc.CRA_OUTCOME] == "executed"
    assert dict(denied.attributes or {})[sc.ERROR_TYPE] == sc.POLICY_DENIED
    assert dict(failed.attributes or {})[sc.CRA_OUTCOME] == "failed"
    # The same attributes as the direct call's span (values differ: ids, times, hashes).
    assert set(dict(echo.attributes or {})) == set(dict(spans["direct-1"].attributes or {}))

    agents = [s for s in exporter.get_finished_spans() if s.name.startswith("invoke_agent")]
    proxy_agent = next(s for s in agents if s.name == "invoke_agent span-client")
    for span in (echo, denied, failed):
        assert span.parent is not None and span.parent.span_id == proxy_agent.context.span_id
    report = verify_spans([exported(span) for span in exporter.get_finished_spans()], runtime)
    assert report.valid, report
