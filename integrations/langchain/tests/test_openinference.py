"""Beside OpenInference's LangChain instrumentation: one tool span per call, ours on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.tools import tool
from openinference.instrumentation.langchain import LangChainInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import cra_agents as cra
from cra_agents import semconv as sc
from cra_agents.examples import atlas_path
from cra_agents_langchain import guard_tool

GITHUB_OPS = atlas_path("github-ops")


@tool
def read_file(repo: str, path: str) -> str:
    """Read a file of a repository."""
    return f"contents of {path}"


@tool
def delete_repo(repo: str, confirm_name: str) -> str:
    """Delete a repository."""
    raise AssertionError("never runs")


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    instrumentor = LangChainInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    cra.configure(atlases=[GITHUB_OPS], store="memory://", otel=provider)
    yield memory
    cra.shutdown()
    instrumentor.uninstrument()


def test_guarded_tools_get_one_span_per_call(exporter):
    """OpenInference's TOOL span carries the cra.* attributes; no execute_tool span of ours."""
    reader = guard_tool(read_file, action_id="github.file.read")
    deleter = guard_tool(delete_repo, action_id="github.repo.delete")
    with cra.session(agent_id="gh-agent", goal="Read") as active:
        assert reader.invoke({"repo": "acme/app", "path": "a.md"}) == "contents of a.md"
        assert reader.invoke({"repo": "acme/app", "path": "b.md"}) == "contents of b.md"
        denied = deleter.invoke({"repo": "acme/app", "confirm_name": "acme/app"})
        assert "denied" in str(denied).lower()
    cra.get_runtime().flush()
    spans = exporter.get_finished_spans()
    tools = [s for s in spans if (s.attributes or {}).get(sc.OPENINFERENCE_SPAN_KIND) == "TOOL"]
    assert sorted(s.name for s in tools) == ["delete_repo", "read_file", "read_file"]
    assert not [s for s in spans if s.name.startswith("execute_tool")]
    for span in tools:
        attrs = span.attributes or {}
        assert attrs[sc.CRA_SESSION_ID] == active.session_id
        assert attrs[sc.GEN_AI_AGENT_NAME] == "gh-agent"
        assert attrs[sc.CRA_EXECUTION_ID]
    telemetry = cra.get_runtime().telemetry
    assert telemetry is not None
    assert telemetry.stats.spans_adopted == 3
    assert telemetry.stats.errors == 0
