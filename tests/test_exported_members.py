from __future__ import annotations

import cra_agents
import cra_agents.atlas
import cra_agents.otel
import cra_agents.policy
import cra_agents.protocol
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
    ):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
