"""The example atlases ship inside the package: found in place, copied to edit, from any folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import cra_agents as cra
from cra_agents.cli import main
from cra_agents.examples import atlas_names, atlas_path, copy_atlas


def test_the_example_is_found_where_the_package_is_installed():
    path = atlas_path("github-ops")
    assert path.is_absolute()
    assert path == Path(cra.__file__).parent / "examples" / "atlases" / "github-ops"
    assert atlas_names() == ["github-ops"]
    assert cra.validate_atlas(path, strict=True).valid


def test_an_unknown_example_names_the_ones_there_are():
    with pytest.raises(cra.AtlasError, match="github-ops") as err:
        atlas_path("nope")
    assert err.value.reason == "unknown_example"


def test_copy_atlas_makes_an_editable_copy_and_refuses_to_overwrite(tmp_path):
    target = copy_atlas("github-ops", tmp_path / "mine")
    assert json.loads((target / "atlas.json").read_text("utf-8"))["atlas_id"] == (
        "com.example.github-ops"
    )
    assert sorted(p.name for p in (target / "context").iterdir()) == [
        "issue-triage.md",
        "pull-request-guide.md",
        "repo-safety.md",
    ]
    (target / "atlas.json").write_text("{}", "utf-8")
    with pytest.raises(cra.AtlasError) as err:
        copy_atlas("github-ops", target)
    assert err.value.reason == "exists"
    assert (target / "atlas.json").read_text("utf-8") == "{}"  # nothing lost
    copy_atlas("github-ops", target, overwrite=True)
    assert cra.validate_atlas(target, strict=True).valid


def test_cra_atlas_init_example_writes_the_example(capsys, tmp_path):
    target = tmp_path / "ops"
    assert main(["atlas", "init", str(target), "--example", "github-ops", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["atlas_id"] == "com.example.github-ops"
    assert str(target / "context" / "repo-safety.md") in document["files"]
    assert main(["atlas", "validate", "--strict", str(target)]) == 0
    capsys.readouterr()
    # Unknown examples and --id with an example are usage errors that name what to do.
    assert main(["atlas", "init", str(tmp_path / "x"), "--example", "nope"]) == 2
    assert "github-ops" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    code = main(["atlas", "init", str(tmp_path / "y"), "--example", "github-ops", "--id", "a.b"])
    assert code == 2
    assert "--id" in capsys.readouterr().err
    # An existing atlas is not overwritten without --force.
    assert main(["atlas", "init", str(target), "--example", "github-ops"]) == 2
    assert main(["atlas", "init", str(target), "--example", "github-ops", "--force"]) == 0


def test_the_quickstart_runs_from_a_folder_outside_the_repository(tmp_path):
    script = tmp_path / "quickstart.py"
    script.write_text(
        "import cra_agents as cra\n"
        "from cra_agents.examples import atlas_path\n"
        "cra.configure(atlases=[atlas_path('github-ops')], store='memory://')\n"
        "@cra.guarded('github.issue.comment')\n"
        "def comment(repo: str, issue_number: int, body: str) -> dict:\n"
        "    return {'ok': True}\n"
        "with cra.session(agent_id='triage-bot', goal='Triage new issues'):\n"
        "    print(comment('acme/app', 7, 'Thanks'))\n",
        "utf-8",
    )
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'ok': True}"
