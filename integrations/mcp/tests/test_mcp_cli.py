"""`cra mcp proxy`: the command cra-agents-mcp adds to cra."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp_support import ATLAS

from cra_agents.cli import main
from cra_agents_mcp._cli import _handler, _tool_map


def test_mcp_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """`cra mcp` alone: exit 2, naming the subcommand."""
    assert main(["mcp"]) == 2
    assert "proxy" in capsys.readouterr().err


def test_proxy_needs_an_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    """No command after -- and no --upstream: exit 2 saying how to give one."""
    assert main(["mcp", "proxy", "--atlas", str(ATLAS), "--store", "memory://"]) == 2
    assert "--upstream URL" in capsys.readouterr().err


def test_map_file(tmp_path: Path) -> None:
    """--map: a JSON object of strings, else a configuration error."""
    good = tmp_path / "map.json"
    good.write_text(json.dumps({"read": "fs.read"}))
    assert _tool_map(str(good)) == {"read": "fs.read"}
    assert _tool_map(None) is None
    for text in ("[1]", "{not json"):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        argv = ["mcp", "proxy", "--atlas", str(ATLAS), "--store", "memory://", "--map", str(bad)]
        assert main([*argv, "--", "x"]) == 2


def test_approval_handler_option() -> None:
    """--approval-handler MODULE:NAME imports a callable; default deny; bad ones refused."""
    assert _handler(None) == "auto_deny"
    assert callable(_handler("cra_agents.runtime._approvals:auto_deny"))
    for spec in ("no.such.module:x", "cra_agents:__version__"):
        argv = ["mcp", "proxy", "--atlas", str(ATLAS), "--store", "memory://"]
        assert main([*argv, "--approval-handler", spec, "--", "x"]) == 2


def test_the_file_system_example_runs() -> None:
    """examples/fs_proxy: reads allowed, a write approved, a delete outside scratch refused."""
    import subprocess
    import sys

    demo = Path(__file__).parents[1] / "examples" / "fs_proxy" / "fs_proxy_demo.py"
    done = subprocess.run(  # noqa: S603 - our own example
        [sys.executable, str(demo)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "[asked] Approval needed: tool write_file" in done.stdout
    assert "action.denied        files.delete invalid_parameters" in done.stdout
    assert "chain valid: True" in done.stdout
