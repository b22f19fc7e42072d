from __future__ import annotations

import cra_agents
import cra_agents.atlas
import cra_agents.cli
import cra_agents.notebook
import cra_agents.otel
import cra_agents.policy
import cra_agents.protocol
import cra_agents.replay
import cra_agents.report
import cra_agents.runtime
import cra_agents.semconv
import cra_agents.trace


def test_all_is_complete():
    """``__all__`` lists every public name of the package, once."""
    public = {n for n in dir(cra_agents) if not n.startswith("_") or n == "__version__"}
    modules = {
        "atlas",
        "policy",
        "protocol",
        "runtime",
        "trace",
        "conformance",
        "replay",
        "annotations",
        "guard",
        "otel",
        "semconv",
        "cli",
        "report",
        "notebook",
    }
    assert len(set(cra_agents.__all__)) == len(cra_agents.__all__)
    assert public - modules == set(cra_agents.__all__)


def test_subpackage_all_resolvable():
    """Every name in a subpackage's ``__all__`` resolves (ruff RUF022 keeps them sorted)."""
    for module in (
        cra_agents.atlas,
        cra_agents.policy,
        cra_agents.protocol,
        cra_agents.runtime,
        cra_agents.trace,
        cra_agents.otel,
        cra_agents.semconv,
        cra_agents.cli,
        cra_agents.replay,
        cra_agents.report,
        cra_agents.notebook,
    ):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_atlas_tools_are_exported():
    assert {"AtlasConversion", "convert_legacy_atlas", "lint_atlas"} <= set(
        cra_agents.atlas.__all__
    )
    assert "lint_atlas" in cra_agents.__all__
    assert cra_agents.cli.__all__ == ["main"]
    assert {"timeline", "render_report", "write_report"} <= set(cra_agents.report.__all__)
    assert "otlp_json" in cra_agents.otel.__all__
