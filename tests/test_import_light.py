"""``import cra_agents`` stays light: no framework, SDK, server, CLI or tools module at import."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Top-level distributions the core must not import.
HEAVY = (
    "langchain",
    "langchain_core",
    "langgraph",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "jsonschema",
    "rich",
    "re2",
    "fastjsonschema",
    "psycopg",
)
#: Modules (and everything under them) the core must not import.
HEAVY_MODULES = (
    "opentelemetry.sdk",
    "cra_agents.tools",
    "cra_agents.atlas._convert",
    "cra_agents.atlas._lint",
    "cra_agents.cli",
)

STATEMENTS = (
    "import cra_agents",
    "from cra_agents import Runtime, load_atlas, verify_chain, configure, guarded, session",
)


def _loaded_heavy(statement: str) -> list[str]:
    code = (
        f"import sys\n{statement}\n"
        f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}"
        f" or any(m == h or m.startswith(h + '.') for h in {HEAVY_MODULES!r})]\n"
        "print(','.join(sorted(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [name for name in out.stdout.strip().split(",") if name]


@pytest.mark.parametrize("statement", STATEMENTS)
def test_import_loads_no_heavy_modules(statement):
    """The import and the main names load no framework, OTel SDK, server, rich or tools."""
    assert _loaded_heavy(statement) == []


def test_lazy_names_load_the_tools_on_first_use():
    """``cra_agents.lint_atlas`` imports cra_agents.tools then, and only then."""
    assert _loaded_heavy("import cra_agents; cra_agents.lint_atlas") == [
        "cra_agents.tools",
        "cra_agents.tools._convert",
        "cra_agents.tools._lint",
    ]


def test_import_builds_no_atlas_models():
    """The Atlas models (a third of the import cost) are built only when an atlas is read."""
    code = (
        "import sys\n"
        "from cra_agents import Runtime, load_atlas, verify_chain, configure, guarded, session\n"
        "print('cra_agents.protocol._atlas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
