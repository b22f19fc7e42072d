from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "langchain",
    "langgraph",
    "opentelemetry.sdk",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "jsonschema",
)


def test_import_loads_no_heavy_modules():
    """``import cra_agents`` and its main names load no framework, SDK, server or httpx."""
    code = (
        "import sys, cra_agents\n"
        "from cra_agents import Runtime, load_atlas, verify_chain\n"
        f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m in {HEAVY!r}]\n"
        "print(','.join(sorted(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
