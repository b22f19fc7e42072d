"""The ``cra`` command: global behaviour, atlas commands, resolve, conformance, doctor, serve."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cra_agents.cli import main
from cra_agents.cli._output import Output

REPO = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)


# -- global behaviour ---------------------------------------------------------------------------


def test_help_lists_commands_and_exit_codes(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for word in ("resolve", "atlas", "trace", "conformance", "doctor", "serve", "exit codes"):
        assert word in out


def test_version(capsys):
    from cra_agents import __version__

    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert __version__ in out


def test_no_command_prints_help_and_exits_2(capsys):
    code, out, _ = run(capsys)
    assert code == 2
    assert "usage: cra" in out


def test_usage_error_has_code_message_and_hint(capsys):
    code, _, err = run(capsys, "bogus")
    assert code == 2
    assert "error [usage]" in err
    assert "invalid choice" in err
    assert "hint: run 'cra --help'" in err


def test_group_without_command_says_what_to_run(capsys):
    code, _, err = run(capsys, "trace")
    assert code == 2
    assert "cra trace --help" in err


@pytest.mark.parametrize("where", ["before", "after"])
def test_json_flag_before_or_after_the_command(capsys, github_ops, where):
    args = ["atlas", "validate", str(github_ops)]
    argv = ["--json", *args] if where == "before" else [*args, "--json"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert json.loads(out)["valid"] is True


def test_json_usage_error_is_one_document(capsys):
    code, out, err = run(capsys, "--json", "atlas", "validate")
    assert code == 2
    document = json.loads(out)
    assert document["error"]["code"] == "usage"
    assert document["error"]["hint"]
    assert err == ""


def test_internal_error_exits_3_with_report_hint(capsys, monkeypatch):
    from cra_agents.cli import _misc

    def boom(args: Any, out: Output) -> int:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(_misc, "serve", boom)
    code, _, err = run(capsys, "serve")
    assert code == 3
    assert "RuntimeError: kaboom" in err
    assert "bug in cra-agents" in err


def test_keyboard_interrupt_exits_130(capsys, monkeypatch):
    from cra_agents.cli import _misc

    def interrupted(args: Any, out: Output) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(_misc, "serve", interrupted)
    code, _, _ = run(capsys, "serve")
    assert code == 130


def test_cra_error_maps_to_its_code(capsys, tmp_path):
    broken = tmp_path / "atlas.json"
    broken.write_text("{not json")
    code, _, err = run(capsys, "atlas", "show", str(broken))
    assert code == 2
    assert "INVALID_ATLAS_MANIFEST" in err
    assert "cra atlas validate" in err


def test_installed_console_script_runs():
    script = Path(sys.executable).with_name("cra")
    if not script.exists():
        pytest.skip("the cra console script is installed by `uv sync`")
    done = subprocess.run(
        [str(script), "atlas", "validate", str(REPO / "cra_agents/examples/atlases/github-ops")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "VALID" in done.stdout
    assert "\x1b[" not in done.stdout  # no colour codes when stdout is not a terminal


def test_terminal_output_has_colour_and_no_color_disables_it():
    class TTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = TTY()
    out = Output(stdout=stream)
    out.print(out.styled("denied", "DENIED"))
    assert "\x1b[" in stream.getvalue()
    plain = TTY()
    out = Output(stdout=plain, color=False)
    out.print(out.styled("denied", "DENIED"))
    assert "\x1b[" not in plain.getvalue()
    assert "DENIED" in plain.getvalue()


def test_no_color_environment_is_honoured(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")

    class TTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = TTY()
    out = Output(stdout=stream)
    out.print(out.styled("valid", "VALID"))
    assert "\x1b[" not in stream.getvalue()


def test_progress_is_silent_off_a_terminal():
    stream = io.StringIO()
    out = Output(stdout=stream, stderr=stream)
    with out.progress("work", 3) as advance:
        advance(3)
    assert stream.getvalue() == ""


def test_progress_draws_on_a_terminal():
    class TTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = TTY()
    out = Output(stdout=TTY(), stderr=err)
    with out.progress("verifying", 4) as advance:
        for _ in range(4):
            advance(1)
    assert "verifying" in err.getvalue()


# -- atlas --------------------------------------------------------------------------------------


def test_atlas_validate_valid_and_invalid(capsys, github_ops, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "atlas_version": "1.0",
                "atlas_id": "com.example.bad",
                "version": "1.0.0",
                "name": "Bad",
                "description": "Two actions with one id.",
                "actions": [
                    {"action_id": "a.b", "name": "A", "description": "x"},
                    {"action_id": "a.b", "name": "A", "description": "x"},
                ],
            }
        )
    )
    code, out, _ = run(capsys, "atlas", "validate", str(github_ops), str(bad))
    assert code == 1
    assert "VALID" in out
    assert "INVALID" in out
    assert "E005" in out
    code, document = run_json(capsys, "atlas", "validate", str(bad))
    assert code == 1
    assert document["valid"] is False
    finding = document["atlases"][0]["findings"][0]
    assert finding == {
        "code": "E005",
        "severity": "error",
        "path": finding["path"],
        "message": finding["message"],
    }


def test_atlas_validate_strict_flags_what_lenient_accepts(capsys, conformance_dir):
    atlas = conformance_dir / "atlases" / "cra-development.json"
    code, _ = run_json(capsys, "atlas", "validate", str(atlas))
    assert code == 0
    code, document = run_json(capsys, "atlas", "validate", "--strict", str(atlas))
    assert code == 1
    assert any(f["code"] == "E100" for f in document["atlases"][0]["findings"])


def test_atlas_validate_missing_path(capsys, tmp_path):
    code, _, err = run(capsys, "atlas", "validate", str(tmp_path / "nope"))
    assert code == 2
    assert "atlas_not_found" in err
    assert "cra atlas init" in err


def test_atlas_init_scaffolds_a_strictly_valid_atlas(capsys, tmp_path):
    target = tmp_path / "notes_bot"
    code, out, _ = run(capsys, "atlas", "init", str(target))
    assert code == 0
    assert "local.notes-bot" in out
    assert (target / "context" / "guide.md").exists()
    code, document = run_json(capsys, "atlas", "validate", "--strict", str(target))
    assert code == 0
    assert document["atlases"][0]["findings"] == []
    # Lint-clean too: not even a note to act on.
    code, document = run_json(capsys, "atlas", "lint", str(target))
    assert code == 0
    assert document["atlases"][0]["findings"] == []
    # It works: the scaffold's policies decide as their names say.
    code, document = run_json(capsys, "atlas", "show", str(target))
    decisions = {a["action_id"]: a["decision"] for a in document["actions"]}
    assert decisions == {
        "notesbot.note.read": "allow",
        "notesbot.note.write": "requires_approval",
        "notesbot.note.delete": "deny",
    }


def test_atlas_init_refuses_to_overwrite_and_checks_the_id(capsys, tmp_path):
    target = tmp_path / "x"
    assert run(capsys, "atlas", "init", str(target))[0] == 0
    code, _, err = run(capsys, "atlas", "init", str(target))
    assert code == 2
    assert "--force" in err
    assert run(capsys, "atlas", "init", str(target), "--force")[0] == 0
    code, document = run_json(capsys, "atlas", "init", str(tmp_path / "y"), "--id", "com.acme.y")
    assert code == 0
    assert document["atlas_id"] == "com.acme.y"
    code, _, err = run(capsys, "atlas", "init", str(tmp_path / "z"), "--id", "Not An Id")
    assert code == 2
    assert "reverse-DNS" in err


def test_atlas_show(capsys, github_ops):
    code, out, _ = run(capsys, "atlas", "show", str(github_ops))
    assert code == 0
    assert "com.example.github-ops" in out
    assert "deny-repo-delete" in out
    assert "github.pr.merge" in out
    code, document = run_json(capsys, "atlas", "show", str(github_ops))
    decisions = {a["action_id"]: (a["decision"], a["policy_id"]) for a in document["actions"]}
    assert decisions["github.repo.delete"] == ("deny", "deny-repo-delete")
    assert decisions["github.pr.merge"] == ("requires_approval", "approve-merge")
    assert document["digest"].startswith("sha256:")


def test_atlas_show_warns_about_missing_context_files(capsys, tmp_path):
    assert run(capsys, "atlas", "init", str(tmp_path / "a"))[0] == 0
    (tmp_path / "a" / "context" / "guide.md").unlink()
    code, _, err = run(capsys, "atlas", "show", str(tmp_path / "a"))
    assert code == 0
    assert "missing context files" in err


# -- resolve ------------------------------------------------------------------------------------


def test_resolve_table_and_exact_json(capsys, github_ops):
    argv = ["resolve", "--atlas", str(github_ops), "--goal", "Review and merge the open PRs"]
    argv += ["--risk", "medium", "--capability", "pulls.write", "--agent", "maintainer"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "REQUIRES_APPROVAL" in out
    assert "needs approval" in out
    assert "pull-request-guide" in out
    code, document = run_json(capsys, *argv)
    from cra_agents.protocol import CARPResolution

    resolution = CARPResolution.model_validate(document)
    assert resolution.decision.type == "requires_approval"
    assert {a.action_id for a in resolution.allowed_actions} >= {"github.pr.merge"}


def test_resolve_deny_exits_1(capsys, tmp_path, make_manifest):
    atlas = tmp_path / "deny.json"
    atlas.write_text(
        json.dumps(
            make_manifest(
                actions=[{"action_id": "a.b", "name": "A", "description": "x"}],
                policies=[{"policy_id": "no", "type": "deny", "actions": ["*"], "reason": "never"}],
            )
        )
    )
    code, out, _ = run(capsys, "resolve", "--atlas", str(atlas), "--goal", "anything")
    assert code == 1
    assert "DENY" in out
    assert "never" in out


def test_resolve_missing_atlas(capsys):
    code, _, err = run(capsys, "resolve", "--atlas", "nowhere", "--goal", "x")
    assert code == 2
    assert "there is no atlas at nowhere" in err


# -- conformance --------------------------------------------------------------------------------


def test_conformance_human_and_json(capsys, conformance_dir):
    code, out, _ = run(capsys, "conformance", "--suite", str(conformance_dir))
    assert code == 0
    assert "PASSED" in out
    assert "0 failed" in out
    code, document = run_json(capsys, "conformance", "--suite", str(conformance_dir))
    assert code == 0
    assert document["implementation"] == "cra-agents"
    assert document["test_run"]["failed"] == 0
    assert document["test_run"]["passed"] >= 20


def test_conformance_without_suite(capsys, tmp_path):
    code, _, err = run(capsys, "conformance", "--suite", str(tmp_path))
    assert code == 2
    assert "CRA_CONFORMANCE_DIR" in err


# -- doctor -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _checks(document: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in document["checks"]}


def test_doctor_reports_each_check_with_a_fix(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    store = f"sqlite://{tmp_path}/traces.db"
    code, document = run_json(capsys, "doctor", "--store", store)
    assert code == 0
    checks = _checks(document)
    assert checks["python"]["status"] == "pass"
    assert checks["dependencies"]["status"] == "pass"
    assert checks["extra otel"]["status"] == "pass"  # the test environment has the SDK
    assert checks["trace store"]["status"] == "warn"  # not created yet
    assert checks["trace store"]["fix"]
    assert checks["trace directory"]["status"] == "pass"
    assert checks["collector"]["status"] == "skip"
    assert checks["clock skew"]["status"] == "skip"
    code, out, _ = run(capsys, "doctor", "--store", store)
    assert "PASS" in out
    assert "passed" in out


def test_doctor_reads_a_real_store_and_its_clock(capsys, tmp_path):
    import cra_agents as cra

    runtime = cra.Runtime(store=f"sqlite://{tmp_path}/t.db")
    session = runtime.create_session("agent", "goal")
    runtime.end_session(session.session_id)
    runtime.close()
    code, document = run_json(capsys, "doctor", "--store", f"sqlite://{tmp_path}/t.db")
    checks = _checks(document)
    assert checks["trace store"]["status"] == "pass"
    assert "1 sessions" in checks["trace store"]["detail"]
    assert checks["clock skew"]["status"] == "pass"
    assert code == 0


def test_doctor_fails_on_an_unreachable_collector(capsys, tmp_path):
    port = _free_port()
    code, document = run_json(
        capsys,
        "doctor",
        "--store",
        f"sqlite://{tmp_path}/t.db",
        "--collector",
        f"http://127.0.0.1:{port}",
    )
    assert code == 1
    collector = _checks(document)["collector"]
    assert collector["status"] == "fail"
    assert "start the collector" in collector["fix"]


def test_doctor_fails_on_a_store_that_is_not_one(capsys, tmp_path):
    bogus = tmp_path / "t.db"
    bogus.write_text("this is not sqlite" * 100)
    code, document = run_json(capsys, "doctor", "--store", f"sqlite://{bogus}")
    assert code == 1
    assert _checks(document)["trace store"]["status"] == "fail"
    code, document = run_json(capsys, "doctor", "--store", "memory://")
    assert code == 1
    assert "can read" in _checks(document)["trace store"]["detail"]


def test_doctor_with_a_real_collector(capsys, tmp_path, otel_collector):
    code, document = run_json(
        capsys,
        "doctor",
        "--store",
        f"sqlite://{tmp_path}/t.db",
        "--collector",
        otel_collector.http_endpoint,
    )
    checks = _checks(document)
    assert checks["collector"]["status"] == "pass", checks["collector"]
    assert checks["clock skew"]["status"] in ("pass", "skip")
    print(f"doctor: collector {checks['collector']['detail']}; clock {checks['clock skew']}")
    assert code == 0


# -- serve --------------------------------------------------------------------------------------


def test_environment_is_untouched():
    assert os.environ.get("CRA_AGENTS_STORE") == "memory://"


# -- lint and convert ---------------------------------------------------------------------------


def test_atlas_lint(capsys, github_ops, tmp_path, make_manifest):
    code, out, _ = run(capsys, "atlas", "lint", str(github_ops))
    assert code == 0
    assert "L005" in out
    assert "github.workflow.rerun" in out
    code, _ = run_json(capsys, "atlas", "lint", str(github_ops), "--fail-on", "warning")
    assert code == 1
    risky = tmp_path / "risky.json"
    risky.write_text(
        json.dumps(
            make_manifest(
                actions=[
                    {
                        "action_id": "db.drop",
                        "name": "Drop",
                        "description": "Drops the production database.",
                        "risk_tier": "critical",
                    }
                ]
            )
        )
    )
    code, document = run_json(capsys, "atlas", "lint", str(risky))
    codes = {f["code"] for f in document["atlases"][0]["findings"]}
    assert {"L001", "L003"} <= codes
    assert code == 0  # warnings only; --fail-on warning makes them fail
    code, out, _ = run(capsys, "atlas", "lint", str(risky), "--fail-on", "warning")
    assert code == 1
    assert "--fail-on warning" in out


def test_atlas_convert_legacy_then_use_it(capsys, conformance_dir, tmp_path):
    legacy = conformance_dir / "atlases" / "github-ops-legacy"
    target = tmp_path / "github-ops-1.0"
    code, out, _ = run(capsys, "atlas", "convert", str(legacy), "-o", str(target))
    assert code == 0
    assert "strict validation: valid" in out
    assert "C007" in out  # the legacy rule named rate-limit-api is an allow
    code, document = run_json(capsys, "atlas", "validate", "--strict", str(target))
    assert code == 0
    code, document = run_json(capsys, "atlas", "show", str(target))
    decisions = {a["action_id"]: a["decision"] for a in document["actions"]}
    assert decisions["api.github.merge.pull.request"] == "requires_approval"
    assert decisions["api.github.create.issue"] == "allow"
    code, _, err = run(capsys, "atlas", "convert", str(legacy), "-o", str(target))
    assert code == 1
    assert "--force" in err
    code, document = run_json(capsys, "atlas", "convert", str(legacy), "-o", str(target), "--force")
    assert code == 0
    assert document["converted"][0]["valid"] is True
    assert document["converted"][0]["notes"]


def test_atlas_convert_many_beside_their_sources(capsys, conformance_dir, tmp_path, github_ops):
    import shutil

    first = tmp_path / "a"
    second = tmp_path / "b"
    shutil.copytree(conformance_dir / "atlases" / "github-ops-legacy", first)
    shutil.copytree(conformance_dir / "atlases" / "github-ops-legacy", second)
    code, document = run_json(capsys, "atlas", "convert", str(first), str(second / "atlas.json"))
    assert code == 0
    assert [Path(c["output"]).name for c in document["converted"]] == ["a-1.0", "b-1.0"]
    code, _, err = run(capsys, "atlas", "convert", str(first), str(second), "-o", "x")
    assert code == 2
    assert "one atlas per call" in err
    # An Atlas 1.0 input is refused with what to do instead.
    code, document = run_json(
        capsys, "atlas", "convert", str(github_ops), "-o", str(tmp_path / "c")
    )
    assert code == 1
    assert "validate" in document["converted"][0]["error"]


def test_python_dash_m_entry_points(monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", ["cra", "--version"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("cra_agents.cli", run_name="__main__")
    assert exited.value.code == 0
    assert "cra-agents" in capsys.readouterr().out


def test_resolve_json_is_valid_against_the_upstream_schema(capsys, github_ops, conformance_dir):
    import jsonschema

    schema = json.loads((conformance_dir / "schemas" / "carp-resolution.schema.json").read_text())
    code, document = run_json(
        capsys, "resolve", "--atlas", str(github_ops), "--goal", "Triage", "--hint", "labels"
    )
    assert code == 0
    jsonschema.Draft202012Validator(schema).validate(document)


def test_atlas_convert_from_inside_the_directory(capsys, conformance_dir, tmp_path, monkeypatch):
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(conformance_dir / "atlases" / "github-ops-legacy", legacy)
    monkeypatch.chdir(legacy)
    for target in ("atlas.json", "."):
        code, document = run_json(capsys, "atlas", "convert", target, "--force")
        assert code == 0, document
        assert Path(document["converted"][0]["output"]) == tmp_path / "legacy-1.0"
    code, _, err = run(capsys, "atlas", "convert", "https://example.com/atlas.json")
    assert code == 2
    assert "-o DIR" in err
