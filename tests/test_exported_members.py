"""The public API, pinned: every public module's ``__all__`` is exactly its public names."""

from __future__ import annotations

import importlib
import inspect
import re
from types import ModuleType

import pytest

import cra_agents

#: Packages whose ``__init__`` only re-exports: every public name in them is API.
FACADES = (
    "cra_agents",
    "cra_agents.atlas",
    "cra_agents.cli",
    "cra_agents.conformance",
    "cra_agents.policy",
    "cra_agents.protocol",
    "cra_agents.runtime",
    "cra_agents.server",
    "cra_agents.tools",
    "cra_agents.trace",
)
#: Topic modules imported by path: they also hold the names they import for their own use.
TOPIC_MODULES = (
    "cra_agents.client",
    "cra_agents.examples",
    "cra_agents.guard",
    "cra_agents.notebook",
    "cra_agents.otel",
    "cra_agents.replay",
    "cra_agents.report",
    "cra_agents.semconv",
)
#: Names every module gets from ``from __future__ import annotations``.
NOT_API = {"annotations"}
#: Public-looking definitions a topic module does not list yet (its owner decides: list them in
#: ``__all__`` or make them private), so that this test stays exact everywhere else.
UNLISTED: dict[str, set[str]] = {}


def _isort_key(name: str) -> tuple[int, list[int | str]]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, Classes, then the rest."""
    group = 0 if name.isupper() and len(name) > 1 else 1 if name[:1].isupper() else 2
    natural: list[int | str] = [
        int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)
    ]
    return group, natural


def _public(module: ModuleType) -> set[str]:
    return {
        name
        for name in dir(module)
        if (not name.startswith("_") or name == "__version__")
        and name not in NOT_API
        and not inspect.ismodule(getattr(module, name))
    }


@pytest.mark.parametrize("name", FACADES)
def test_facade_all_is_its_public_names(name):
    """A facade's ``__all__`` lists every public name it has, once, in RUF022 order."""
    module = importlib.import_module(name)
    assert module.__all__ == sorted(_public(module), key=_isort_key)


@pytest.mark.parametrize("name", TOPIC_MODULES)
def test_topic_module_all_is_its_public_definitions(name):
    """A topic module's ``__all__`` resolves, is sorted, and lists every class and function
    it defines publicly."""
    module = importlib.import_module(name)
    assert module.__all__ == sorted(set(module.__all__), key=_isort_key)
    for exported in module.__all__:
        assert hasattr(module, exported), f"{name}.{exported}"
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == name
    }
    assert defined - UNLISTED.get(name, set()) <= set(module.__all__)


def test_new_public_names():
    """The names this release adds are where callers look for them."""
    assert {"ConfigurationError", "MissingDependencyError", "lint_atlas"} <= set(cra_agents.__all__)
    atlas = importlib.import_module("cra_agents.atlas")
    assert {"json_pointer", "read_document", "read_context_file", "Severity"} <= set(atlas.__all__)
    tools = importlib.import_module("cra_agents.tools")
    assert tools.__all__ == ["AtlasConversion", "convert_legacy_atlas", "lint_atlas"]
    assert "POLICY_PHASES" in importlib.import_module("cra_agents.policy").__all__
    assert {"ACTION_ID_PATTERN", "ATLAS_ID_PATTERN", "SEMVER_PATTERN"} <= set(
        importlib.import_module("cra_agents.protocol").__all__
    )
    assert {"timeline", "render_report", "write_report"} <= set(
        importlib.import_module("cra_agents.report").__all__
    )
    assert "otlp_json" in importlib.import_module("cra_agents.otel").__all__


class TestMovedNames:
    def test_tools_names_resolve_from_their_old_homes(self):
        """lint_atlas and the conversion still import from cra_agents and cra_agents.atlas."""
        tools = importlib.import_module("cra_agents.tools")
        atlas = importlib.import_module("cra_agents.atlas")
        assert cra_agents.lint_atlas is tools.lint_atlas
        assert atlas.lint_atlas is tools.lint_atlas
        assert atlas.convert_legacy_atlas is tools.convert_legacy_atlas
        assert atlas.AtlasConversion is tools.AtlasConversion
        from cra_agents import lint_atlas
        from cra_agents.atlas import convert_legacy_atlas

        assert (lint_atlas, convert_legacy_atlas) == (tools.lint_atlas, tools.convert_legacy_atlas)

    def test_unknown_names_still_raise(self):
        """The lazy hooks raise AttributeError for anything else."""
        with pytest.raises(AttributeError, match="no_such_name"):
            _ = cra_agents.no_such_name
        with pytest.raises(AttributeError, match="no_such_name"):
            _ = importlib.import_module("cra_agents.atlas").no_such_name
