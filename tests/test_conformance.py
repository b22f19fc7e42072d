from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cra_agents.conformance import main, run_conformance


def _suite() -> Path:
    env = os.environ.get("CRA_CONFORMANCE_DIR")
    suite = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "conformance"
    if not (suite / "schemas").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"upstream conformance material is missing at {suite} (CI=true)")
        pytest.skip(f"upstream conformance material not found at {suite}; set CRA_CONFORMANCE_DIR")
    return suite


def test_every_case_passes():
    """The upstream conformance run has no failure; only the data-less replay cases skip."""
    report = run_conformance(_suite())
    failed = [r for r in report["results"] if r["status"] == "failed"]
    assert failed == []
    skipped = {r["test_id"] for r in report["results"] if r["status"] == "skipped"}
    assert skipped == {"replay.deterministic"}
    assert report["test_run"]["passed"] >= 23


def test_golden_simple_resolve_is_run():
    """The golden directory is found and compared."""
    report = run_conformance(_suite())
    golden = [r for r in report["results"] if r["test_id"] == "golden.simple-resolve"]
    assert golden and golden[0]["status"] == "passed"
    assert golden[0]["details"]["events"] == 8


def test_cli_json_and_exit_status(capsys):
    """``--json`` prints the harness format and exits 0 when everything passes."""
    assert main([str(_suite()), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["implementation"] == "cra-agents"
    assert set(out["test_run"]) >= {"total", "passed", "failed", "skipped", "duration_ms"}


def test_cli_human_output(capsys):
    """The human report ends with a summary line."""
    assert main([str(_suite())]) == 0
    assert "0 failed" in capsys.readouterr().out


def test_missing_suite_exits_2(tmp_path, capsys):
    """A folder without the suite is a usage error, not a pass."""
    assert main([str(tmp_path)]) == 2
    assert "no conformance suite" in capsys.readouterr().err


def test_real_upstream_atlas_loads_and_resolves():
    """cra-development.json (Rust-core spellings) loads, resolves and keeps a valid chain."""
    import cra_agents as cra

    runtime = cra.Runtime([_suite() / "atlases" / "cra-development.json"])
    session = runtime.create_session("claude-code", "Fix the hash chain verification")
    resolution = runtime.resolve(cra.resolve_request(session, risk_tier="high"))
    assert resolution.decision.type == "requires_approval"
    edit = resolution.allowed("trace.edit_chain")
    assert edit is not None
    assert edit.requires_confirmation
    blocks = [b.block_id for b in resolution.context_blocks]
    assert "hash-computation-rule" in blocks
    assert "chain-invariants" in blocks
    assert runtime.verify(session.session_id).valid
