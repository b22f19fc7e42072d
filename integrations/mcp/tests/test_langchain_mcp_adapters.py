"""langchain-mcp-adapters' tools under ``guard_tools`` and ``CRAMiddleware``, for real.

langchain-mcp-adapters (0.3.2, the latest) pins ``mcp<2`` and this workspace holds mcp 2.x
(cra-agents-mcp needs it), so they cannot share a venv. ``cra-agents-langchain`` does not need
mcp at all: a user of the adapters installs it beside them. This test does what that user
does: builds our wheels, pip-installs ``cra-agents`` and ``cra-agents-langchain`` with
``langchain-mcp-adapters`` (and so mcp 1.x) into a fresh venv, and runs
``adapters/adapters_agent.py`` there against a FastMCP (mcp 1.x) server over stdio.

Slow (a build and a pip install the first time): runs with ``CI=true`` or
``CRA_TEST_INSTALLED=1``, else skips; ``CRA_INSTALLED_DIR=DIR`` keeps the venv between runs.
It needs the package index for pip: unreachable, it skips (fails with ``CI=true``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness.installed import Build, Venv, make_venv, session_build, without
from tests.harness.processes import run_bounded

HERE = Path(__file__).parent
ATLAS = HERE / "atlas.json"
SCRIPT = HERE / "adapters" / "adapters_agent.py"
SERVER = HERE / "adapters" / "fastmcp1_server.py"
#: The versions tested (the latest on the index when written); mcp 1.x is what they pull.
ADAPTERS = "langchain-mcp-adapters==0.3.2"
MCP1 = "mcp==1.30.0"
CI = os.environ.get("CI") == "true"

pytestmark = [
    pytest.mark.skipif(
        not CI and os.environ.get("CRA_TEST_INSTALLED") != "1",
        reason="builds wheels and a venv (minutes): set CRA_TEST_INSTALLED=1 (CI always runs it)",
    ),
    pytest.mark.timeout(1200),
]


def _index_unreachable(python: Path, folder: Path) -> str | None:
    """Why pip cannot reach the package index (None: it can)."""
    try:
        done = run_bounded(
            [str(python), "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), ADAPTERS],
            timeout=180,
        )
    except TimeoutError as exc:
        return str(exc)
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """``pip install cra-agents cra-agents-langchain langchain-mcp-adapters`` (mcp 1.x)."""
    build: Build = session_build(tmp_path_factory)
    pins = without(
        build.constraints,
        ["mcp", "mcp-types"],  # the workspace's mcp 2.x: the adapters need mcp<2
        [ADAPTERS, MCP1],
        build.home / "constraints-mcp1.txt",
    )
    name = "venv-mcp-adapters"
    try:
        return make_venv(
            build, name, [str(build.core), str(build.langchain), "langchain-mcp-adapters"], pins
        )
    except AssertionError:
        if CI:
            raise
        made = build.home / name / "bin" / "python"
        python = made if made.exists() else Path(getattr(sys, "_base_executable", sys.executable))
        why = _index_unreachable(python, tmp_path_factory.mktemp("probe"))
        if why is None:
            raise
        pytest.skip(f"the package index is unreachable for pip ({why})")


def test_the_venv_holds_mcp_1_and_not_cra_agents_mcp(adapters: Venv) -> None:
    installed = adapters.installed()
    assert installed["mcp"].startswith("1.")
    assert installed["langchain-mcp-adapters"] == ADAPTERS.split("==")[1]
    assert "cra-agents-langchain" in installed and "cra-agents" in installed
    assert "cra-agents-mcp" not in installed


def test_adapter_tools_under_guard_tools_and_cra_middleware(adapters: Venv, tmp_path: Path) -> None:
    """Allowed runs and answers; denied and undeclared are refused and never reach the server."""
    for source in (ATLAS, SCRIPT, SERVER):
        shutil.copy(source, tmp_path / source.name)
    work = tmp_path / "work"
    done = adapters.run(
        str(adapters.python),
        str(tmp_path / SCRIPT.name),
        str(tmp_path / ATLAS.name),
        str(tmp_path / SERVER.name),
        str(work),
        cwd=tmp_path,
        timeout=240,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print("\n" + json.dumps(summary["versions"]))
    assert summary["versions"]["mcp"].startswith("1.")
    assert summary["tools"] == ["delete_all", "echo", "undeclared"]

    # (a) guard_tools, invoked directly: the refusals are the tools' outputs.
    direct = summary["guard_tools"]
    assert direct["echo"] == {"output": "echo: direct"}
    assert direct["delete_all"]["output"].startswith("Denied: notes.delete is not permitted")
    assert "deny-delete" in direct["delete_all"]["output"]
    assert "not an action any loaded atlas declares" in direct["undeclared"]["output"]
    assert direct["unguarded_echo"] == {"output": "echo: plain"}  # the adapters' tool, as is
    assert direct["ran"] == ["echo"]  # the refused calls never reached the server
    assert direct["trace"]["outcomes"] == [
        ["action.executed", "notes.echo"],
        ["action.denied", "notes.delete"],
        ["action.denied", "undeclared"],
    ]
    assert direct["trace"]["valid"]

    # (b) create_agent + CRAMiddleware with the tools unchanged; (c) with guard_tools' tools.
    for part in ("agent", "agent_guard_tools"):
        run = summary[part]
        replies = run["replies"]
        assert replies["c1"] == {"status": "success", "text": "echo: agent"}, part
        assert replies["c2"]["status"] == "error" and "deny-delete" in replies["c2"]["text"], part
        assert replies["c3"]["status"] == "error", part
        assert "not an action any loaded atlas declares" in replies["c3"]["text"], part
        assert run["final"] == "done", part
        assert run["ran"] == ["echo"], part
        assert sorted(run["trace"]["outcomes"]) == [
            ["action.denied", "notes.delete"],
            ["action.denied", "undeclared"],
            ["action.executed", "notes.echo"],
        ], part
        assert run["trace"]["call_ids"] == ["c1", "c2", "c3"], part
        assert run["trace"]["valid"], part

    # The store the script wrote verifies with the installed CLI.
    verify = adapters.run(
        "cra", "trace", "verify", "--all", "--store", f"sqlite://{work / 'traces.db'}", cwd=tmp_path
    )
    assert verify.returncode == 0, f"{verify.stdout}\n{verify.stderr}"
