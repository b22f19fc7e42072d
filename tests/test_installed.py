"""The product as a user outside this repository gets it: wheels, pip, a fresh venv, any folder.

Builds the wheels of the workspace (``uv build``), installs them with ``pip`` into fresh
virtual environments in a temporary directory (versions held to ``uv.lock`` with a constraints
file, so CI is repeatable), and from a folder outside the repository:

- the core alone (no extra): ``import cra_agents``, a guarded call, ``cra --help`` and
  ``cra atlas validate`` work, none of the optional packages is installed, and what needs one
  says which extra installs it;
- everything (``cra-agents[all]``, ``cra-agents-langchain``, ``cra-agents-mcp`` and the
  Jupyter tools a user runs): every Python and shell snippet of README.md and
  ``integrations/*/README.md`` runs as ``tests/harness/snippets.py`` describes, and the three
  notebooks run with ``jupyter nbconvert --execute``, ``jupyter execute``, papermill and
  nbclient.

Slow (a few minutes for the first build and install): runs with ``CI=true`` or
``CRA_TEST_INSTALLED=1``, else skips. ``CRA_INSTALLED_DIR=DIR`` keeps the venvs in DIR and reuses
them between runs when the wheels have not changed.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.harness.installed import ROOT, Build, Venv, make_venv, session_build
from tests.harness.snippets import RUNNABLE, Snippet, parse_snippets, run_snippet

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "integrations").glob("*/README.md"))]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: Installed by a user who runs notebooks headless; not dependencies of ours.
JUPYTER_TOOLS = ["nbconvert", "papermill"]
#: Optional packages the core install must not pull.
NOT_IN_CORE = {
    "cryptography",
    "rich",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "grpcio",
    "ipywidgets",
    "ipython",
    "ipykernel",
    "langchain",
    "langchain-core",
    "fastapi",
    "mcp",
}

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("CI") != "true" and os.environ.get("CRA_TEST_INSTALLED") != "1",
        reason="builds wheels and venvs (minutes): set CRA_TEST_INSTALLED=1 (CI always runs it)",
    ),
    pytest.mark.timeout(1200),
]


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return session_build(tmp_path_factory)


def _venv(build: Build, name: str, requirements: list[str]) -> Venv:
    """A fresh venv with ``requirements`` pip-installed (reused when nothing changed)."""
    return make_venv(build, name, requirements)


@pytest.fixture(scope="session")
def core(build: Build) -> Venv:
    """``pip install cra-agents`` with no extra."""
    return _venv(build, "venv-core", [str(build.core)])


@pytest.fixture(scope="session")
def full(build: Build) -> Venv:
    """``pip install "cra-agents[all]" cra-agents-langchain cra-agents-mcp``, Jupyter tools."""
    extras = build.extras()
    wanted = "all" if "all" in extras else ",".join(extras)
    return _venv(
        build,
        "venv-full",
        [f"{build.core}[{wanted}]", str(build.langchain), str(build.mcp), *JUPYTER_TOOLS],
    )


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory outside the repository (and not below it)."""
    folder = tmp_path_factory.mktemp("user")
    assert ROOT not in folder.parents
    return folder


# -- the wheel ---------------------------------------------------------------------------------


def test_the_wheel_carries_the_examples_schemas_and_types(build: Build) -> None:
    with zipfile.ZipFile(build.core) as wheel:
        names = set(wheel.namelist())
    assert "cra_agents/examples/atlases/github-ops/atlas.json" in names
    assert "cra_agents/examples/atlases/github-ops/context/repo-safety.md" in names
    assert "cra_agents/py.typed" in names
    assert any(n.startswith("cra_agents/protocol/schemas/") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/", "notebooks/")) for n in names)
    assert not any("__pycache__" in n for n in names)


def test_the_extras_the_readme_names_are_the_extras_the_wheel_has(build: Build) -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    table = readme[readme.index("| extra | adds | for |") :].split("\n\n", 1)[0]
    named = {line.split("`")[1] for line in table.splitlines()[2:] if line.startswith("| `")}
    assert named == set(build.extras())


# -- the core alone ----------------------------------------------------------------------------


def test_the_core_install_is_lean_and_works(core: Venv, outside: Path) -> None:
    installed = core.installed()
    assert "cra-agents" in installed
    assert sorted(NOT_IN_CORE & installed.keys()) == []
    print(f"\ncore install: {len(installed)} distributions, {core.site_packages_mib():.1f} MiB")
    script = outside / "guarded.py"
    script.write_text(
        "import cra_agents as cra\n"
        "from cra_agents.examples import atlas_path\n"
        "cra.configure(atlases=[atlas_path('github-ops')])\n"
        "@cra.guarded('github.issue.comment')\n"
        "def comment(repo: str, issue_number: int, body: str) -> dict:\n"
        "    return {'ok': True}\n"
        "with cra.session(agent_id='triage-bot', goal='Triage new issues'):\n"
        "    assert comment('acme/app', 7, 'Thanks') == {'ok': True}\n"
        "    try:\n"
        "        delete = cra.guarded('github.repo.delete')(lambda repo, confirm_name: None)\n"
        "        delete('acme/app', 'acme/app')\n"
        "    except cra.ActionDenied as denied:\n"
        "        print('denied', denied.policy_id)\n"
        "# What needs an extra says which one.\n"
        "from cra_agents.trace import generate_signing_key\n"
        "for attempt, extra in [(generate_signing_key, 'signing'),\n"
        "        (lambda: cra.Runtime(store='memory://', otel='http://127.0.0.1:4318'), 'otel')]:\n"
        "    try:\n"
        "        attempt()\n"
        "    except cra.MissingDependencyError as missing:\n"
        "        assert missing.extra == extra, missing\n"
        "        assert f\"pip install 'cra-agents[{extra}]'\" in str(missing), missing\n"
        "    else:\n"
        "        raise AssertionError(f'{extra}: no MissingDependencyError')\n",
        "utf-8",
    )
    done = core.run(str(core.python), str(script), cwd=outside)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("denied ")
    assert (outside / ".cra" / "traces.db").is_file()  # the default store, in the user's folder
    for argv, want in [
        (["cra", "--help"], 0),
        (["cra", "atlas", "init", "ops", "--example", "github-ops"], 0),
        (["cra", "atlas", "validate", "--strict", "ops"], 0),
        (["cra", "atlas", "lint", "ops"], 0),
        (["cra", "trace", "list"], 0),
        (["cra", "trace", "verify", "last"], 0),
        (["cra", "trace", "show", "last"], 0),
        (["cra", "conformance"], 2),
    ]:
        done = core.run(*argv, cwd=outside)
        assert done.returncode == want, f"{argv}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "github.com" in done.stderr  # cra conformance says where to get a suite


# -- everything: README snippets and notebooks -------------------------------------------------


def _runnable(document: Path) -> list[Snippet]:
    return [s for s in parse_snippets(document) if s.language in RUNNABLE]


def test_every_snippet_is_run_or_says_why_not():
    """Snippets are Python or shell (others are listed here); a skipped one gives its reason."""
    seen: dict[str, int] = {}
    skipped = []
    for document in DOCUMENTS:
        for snippet in parse_snippets(document):
            seen[snippet.language] = seen.get(snippet.language, 0) + 1
            if snippet.skip is not None:
                skipped.append(f"{snippet.where}: {snippet.skip}")
    assert set(seen) <= RUNNABLE | {"yaml", "text", "json"}, seen
    print("\nsnippets:", seen, "skipped:", *skipped, sep="\n  ")
    assert len(skipped) <= 3  # only the setup commands that need a clone of the repository


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_readme_snippets_run_against_the_installed_wheels(
    full: Venv, outside: Path, document: Path
) -> None:
    failures: list[str] = []
    previous = ""
    ran = 0
    for snippet in _runnable(document):
        if snippet.skip is not None:
            continue
        failures += run_snippet(
            snippet, python=full.python, cwd=outside, env=full.env(), previous_python=previous
        )
        if snippet.language == "python":
            previous = (previous if snippet.continued else "") + snippet.code
        ran += 1
    print(f"\n{document.relative_to(ROOT)}: {ran} snippets run in {outside}")
    assert failures == [], "\n\n".join(failures)


def _notebook_ok(path: Path) -> str:
    notebook = json.loads(path.read_text("utf-8"))
    text = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", (path.name, output.get("evalue"))
            text.append(json.dumps(output))
    return "\n".join(text)


@pytest.mark.parametrize(
    "tool",
    ["nbconvert", "jupyter-execute", "papermill", "nbclient"],
)
def test_the_notebooks_run_headless_outside_the_repository(
    full: Venv, outside: Path, tool: str
) -> None:
    """Each notebook runs with each tool, no environment variable, and ends in time."""
    for notebook in NOTEBOOKS:
        source = outside / notebook.name
        shutil.copy(notebook, source)
        executed = outside / f"out-{notebook.name}"
        argv = {
            "nbconvert": [
                "jupyter",
                "nbconvert",
                "--to",
                "notebook",
                "--execute",
                str(source),
                "--output-dir",
                str(outside),
                "--output",
                executed.stem,
                "--ExecutePreprocessor.timeout=120",
            ],
            "jupyter-execute": [
                "jupyter",
                "execute",
                str(source),
                "--output",
                str(executed),
                "--timeout=120",
            ],
            "papermill": ["papermill", str(source), str(executed), "--execution-timeout", "120"],
            "nbclient": [
                "python",
                "-c",
                "import sys, nbformat; from nbclient import NotebookClient\n"
                "nb = nbformat.read(sys.argv[1], as_version=4)\n"
                "NotebookClient(nb, timeout=120).execute()\n"
                "nbformat.write(nb, sys.argv[2])",
                str(source),
                str(executed),
            ],
        }[tool]
        done = full.run(*argv, cwd=outside, timeout=400)
        assert done.returncode == 0, f"{tool} {notebook.name}:\n{done.stdout}\n{done.stderr}"
        text = _notebook_ok(executed)
        assert "VALID" in text, (tool, notebook.name)
        if notebook.name.startswith(("01", "02")):  # an approval nobody can answer: rejected
            assert "nobody can answer here" in text, (tool, notebook.name)
