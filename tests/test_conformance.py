from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cra_agents.cli import main as cli_main
from cra_agents.conformance import (
    UPSTREAM_REPOSITORY,
    SuiteNotFoundError,
    find_suite,
    main,
    run_conformance,
)


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


def test_missing_suite_exits_2_and_says_where_to_get_one(tmp_path, capsys, monkeypatch):
    """A folder without the suite is a usage error, not a pass, and the message says where."""
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no conformance suite" in err
    assert f"git clone --depth 1 {UPSTREAM_REPOSITORY}" in err
    assert "--suite CRA-Core/specs" in err
    # The cra command: the same, as its error line and hint, exit 2.
    monkeypatch.delenv("CRA_CONFORMANCE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["conformance"]) == 2
    err = capsys.readouterr().err
    assert "suite_not_found" in err and "(default)" in err
    assert UPSTREAM_REPOSITORY in err and "--suite" in err
    with pytest.raises(SuiteNotFoundError) as caught:
        run_conformance(tmp_path)
    assert caught.value.hint in str(caught.value)


@pytest.mark.parametrize("root", ["repository", "specs"])
def test_upstream_layout_is_accepted_as_it_is(tmp_path, root):
    """A clone of upstream (specs/schemas, specs/conformance/golden) runs without rearranging."""
    suite = _suite()
    clone = tmp_path / "CRA-Core"
    shutil.copytree(suite / "schemas", clone / "specs" / "schemas")
    shutil.copytree(suite / "golden", clone / "specs" / "conformance" / "golden")
    where = clone if root == "repository" else clone / "specs"
    found = find_suite(where)
    assert found.golden == clone / "specs" / "conformance" / "golden"
    report = run_conformance(where)
    assert report["test_run"]["failed"] == 0
    assert any(r["test_id"] == "golden.simple-resolve" for r in report["results"])


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
