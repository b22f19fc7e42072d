"""The notebooks in ``notebooks/`` run top to bottom in a real kernel, unattended.

Each notebook is executed with nbclient in a Jupyter kernel started from this interpreter (a
kernelspec written to a temporary directory, so no globally installed kernel is used), with
``notebooks/`` as working directory and ``CRA_NOTEBOOK_UNATTENDED=1``. The tests check that no
cell errs, look for the outputs that show each notebook did its job, print the wall time (not
asserted), and check that the repository is left as it was.

The approval paths of :class:`cra_agents.notebook.NotebookApprover` are also driven here through
a real kernel: a click sent by a "front end" (a comm message, as JupyterLab sends it) while an
async cell awaits, an ``input()`` answered over the stdin channel, and a front end without stdin.
"""

from __future__ import annotations

import json
import os
import queue
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager, KernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = ("01_quickstart.ipynb", "02_langchain_agent.ipynb", "03_audit_and_replay.ipynb")
CELL_TIMEOUT = 90  # below pytest's 120 s per test, so a stuck cell is named
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    """A ``python3`` kernelspec that starts this very interpreter (the project's venv)."""
    root = tmp_path_factory.mktemp("kernels")
    spec_dir = root / "python3"
    spec_dir.mkdir()
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (cra-agents venv)",
                "language": "python",
            }
        )
    )
    return KernelSpecManager(kernel_dirs=[str(root)], ensure_native_kernel=False)


def _kernel_env(tmp: Path) -> dict[str, str]:
    """The kernel's environment: ours without test, coverage and CRA settings, unattended."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRA_", "COV_", "PYTEST_"))}
    env["CRA_NOTEBOOK_UNATTENDED"] = "1"
    # No CRA_AGENTS_STORE: a notebook that forgot its store would write ./.cra, which fails.
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # the debugger's frozen-modules note on stderr
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env["IPYTHONDIR"] = str(tmp / "ipython")  # no user profile, startup files or history here
    return env


def _read(path: Path) -> Any:
    return nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]


def _repo_state() -> list[tuple[str, int, int]]:
    """Files under notebooks/ (with size and mtime), and any ``.cra`` store a run could create."""
    paths = [*NOTEBOOKS.rglob("*"), REPO / ".cra", NOTEBOOKS / ".cra"]
    return sorted(
        (str(p.relative_to(REPO)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in paths
        if p.exists()
    )


def _text(cell: Any) -> str:
    parts: list[str] = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif output["output_type"] in ("display_data", "execute_result"):
            data = output.get("data", {})
            parts.append(str(data.get("text/plain", "")))
            parts.append(str(data.get("text/html", "")))
            parts.append(str(data.get("image/svg+xml", "")))
    return "".join(parts)


def execute(name: str, kernel_specs: KernelSpecManager, tmp: Path) -> tuple[Any, str, float]:
    """Run one notebook; returns the executed notebook, all its output text, and wall time."""
    notebook = _read(NOTEBOOKS / name)
    manager = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=kernel_specs)
    assert manager.kernel_spec is not None
    assert manager.kernel_spec.argv[0] == sys.executable
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    started = time.perf_counter()
    client.execute(env=_kernel_env(tmp), cleanup_kc=True)  # and shut the kernel down
    elapsed = time.perf_counter() - started
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", (name, cell["source"], output)
            if output["output_type"] == "stream":
                assert output["name"] != "stderr" or "Traceback" not in output["text"], output
    text = "\n".join(_text(cell) for cell in notebook.cells)
    print(f"\n{name}: {elapsed:.1f} s wall time under nbclient")
    return notebook, text, elapsed


# -- committed notebooks --------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_stripped(name: str) -> None:
    notebook = _read(NOTEBOOKS / name)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], (name, cell.source)
            assert cell.execution_count is None, (name, cell.source)
        assert "widgets" not in cell.get("metadata", {})
    assert "widgets" not in notebook.metadata
    assert (NOTEBOOKS / name).stat().st_size < 40_000


# -- executed notebooks ---------------------------------------------------------------------


def test_quickstart(kernel_specs: KernelSpecManager, tmp_path: Path) -> None:
    before = _repo_state()
    notebook, text, _ = execute(NAMES[0], kernel_specs, tmp_path)
    assert "com.example.github-ops 1.2.0: 15 actions" in text
    assert "allowed: {'posted': True" in text
    assert (
        "denied:  github.repo.delete by deny-repo-delete: Deleting repositories is never "
        "automated" in text
    )
    # the approval card was shown, and answered through its Approve button
    assert any(
        WIDGET_MIME in output.get("data", {})
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )
    assert "merged acme/app#42" in text
    assert "approver=ci-reviewer (unattended run)" in text
    assert text.count("VALID: ") == 2 and "INVALID" not in text
    assert _repo_state() == before


def test_langchain_agent(kernel_specs: KernelSpecManager, tmp_path: Path) -> None:
    before = _repo_state()
    notebook, text, _ = execute(NAMES[1], kernel_specs, tmp_path)
    # the interrupt payload, shown as an approval card (text form for renderers without widgets)
    assert "'policy_id': 'approve-merge'" in text
    assert "-- approval needed --" in text and "agent    github-ops-agent" in text
    assert any(
        WIDGET_MIME in output.get("data", {})
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )
    # answered by the Approve button, the graph resumed and finished
    assert (
        "answer: {'decisions': [{'type': 'approve'}], 'approver': 'ci-reviewer (unattended run)'}"
        in text
    )
    assert "tool DENIED delete_repo: Denied: github.repo.delete is not permitted" in text
    assert "tool ran    merge_pr: merged acme/app#42" in text
    assert "model: PR #42 is merged; the repository stays." in text
    # the timeline, inline
    assert 'class="cra-timeline-view"' in text and "<svg" in text
    assert "github.pr.merge      approved  executed  approve-merge     ci-reviewer" in text
    assert "github.repo.delete   denied" in text
    # the turn's resolution, the question to the person and the calls: one valid chain
    assert re.search(r"chain VALID: \d+ events", text)
    assert _repo_state() == before


def test_audit_and_replay(kernel_specs: KernelSpecManager, tmp_path: Path) -> None:
    before = _repo_state()
    _, text, _ = execute(NAMES[2], kernel_specs, tmp_path)
    assert "denied: github.branch.delete by deny-triage-branch-delete" in text
    assert ".trace.jsonl: 21 events" in text
    assert "original: VALID" in text
    assert "tampered: INVALID at index 15 (hash_mismatch)" in text
    assert "truncated, chain alone:      VALID (18 events)" in text
    assert "truncated, with checkpoint:  INVALID (truncated)" in text
    assert "original, with checkpoint:   VALID" in text
    assert "5 decisions replayed, 2 would change:" in text
    assert (
        "#9 github.issue.close: allow (allow-issue-triage) -> deny (deny-bot-issue-close)" in text
    )
    assert (
        "#16 github.issue.comment: allow (allow-issue-triage) -> deny (rate-limit-bot-comments)"
        in text
    )
    assert 'aria-label="Decisions over time"' in text and "would change (2)" in text
    assert _repo_state() == before


# -- the approval paths of NotebookApprover, through a real kernel --------------------------

SETUP = """
import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.notebook import NotebookApprover
runtime = cra.configure(
    atlases=[atlas_path("github-ops")],
    store="memory://",
    approvals=NotebookApprover(approver="kernel-test"),
)
SHA = "3f786850e387550fdab836ed7e6dc881de23001b"

@cra.guarded("github.pr.merge")
def merge(repo: str, pr_number: int, expected_head_sha: str) -> str:
    return f"merged {repo}#{pr_number}"

@cra.guarded("github.pr.merge")
async def amerge(repo: str, pr_number: int, expected_head_sha: str) -> str:
    return f"merged {repo}#{pr_number} (async)"

def attempt(call):
    try:
        print(call())
    except cra.ActionDenied as denied:
        print(f"denied: {denied.reason}")

async def attempt_async(call):
    try:
        print(await call())
    except cra.ActionDenied as denied:
        print(f"denied: {denied.reason}")
"""


@pytest.fixture
def kernel(
    kernel_specs: KernelSpecManager, tmp_path: Path
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=kernel_specs)
    manager.start_kernel(cwd=str(tmp_path), env=_kernel_env(tmp_path))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
        manager.cleanup_resources()


class _Run:
    """What one executed cell produced."""

    def __init__(self) -> None:
        self.text = ""
        self.errors: list[dict[str, Any]] = []
        self.comms: dict[str, dict[str, Any]] = {}  # model id -> widget state
        self.prompts: list[str] = []


def run_cell(
    client: BlockingKernelClient,
    code: str,
    *,
    allow_stdin: bool = False,
    answer: str | None = None,
    on_widget: Any = None,
    timeout: float = 60.0,
) -> _Run:
    """Execute ``code`` and play the front end: answer ``input()``, react to widgets."""
    run = _Run()
    msg_id = client.execute(code, allow_stdin=allow_stdin)
    deadline = time.monotonic() + timeout
    idle = False
    while not idle:
        assert time.monotonic() < deadline, f"cell did not finish: {run.text}"
        if allow_stdin:
            try:
                request = client.get_stdin_msg(timeout=0.01)
            except queue.Empty:
                pass
            else:
                run.prompts.append(request["content"]["prompt"])
                assert answer is not None
                client.input(answer)
        try:
            msg = client.get_iopub_msg(timeout=0.05)
        except queue.Empty:
            continue
        content = msg["content"]
        kind = msg["msg_type"]
        if kind == "comm_open":
            run.comms[content["comm_id"]] = content["data"]["state"]
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if kind == "stream":
            run.text += content["text"]
        elif kind in ("display_data", "execute_result"):
            run.text += content["data"].get("text/plain", "")
            if WIDGET_MIME in content["data"] and on_widget is not None:
                on_widget(run)
        elif kind == "error":
            run.errors.append(content)
        elif kind == "status" and content["execution_state"] == "idle":
            idle = True
    return run


def _comm(client: BlockingKernelClient, comm_id: str, data: dict[str, Any]) -> None:
    """Send a comm message as JupyterLab does when a person uses a widget."""
    client.shell_channel.send(client.session.msg("comm_msg", {"comm_id": comm_id, "data": data}))


def _model(run: _Run, model: str, description: str) -> str:
    (comm_id,) = [
        cid
        for cid, state in run.comms.items()
        if state.get("_model_name") == model and state.get("description") == description
    ]
    return comm_id


def test_approver_async_call_gets_a_click_from_the_front_end(
    kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    """An awaited guarded call shows buttons; a person's click (a comm message) answers it."""
    _, client = kernel
    assert not run_cell(client, SETUP).errors

    def person_clicks(run: _Run) -> None:
        name = _model(run, "TextModel", "Approver")
        _comm(client, name, {"method": "update", "state": {"value": "maria"}, "buffer_paths": []})
        _comm(
            client,
            _model(run, "ButtonModel", "Approve"),
            {"method": "custom", "content": {"event": "click"}},
        )

    # top-level await: the cell waits on the kernel's event loop, which stays free for comms
    run = run_cell(
        client,
        "await attempt_async(lambda: amerge('acme/app', 42, expected_head_sha=SHA))",
        on_widget=person_clicks,
    )
    assert not run.errors, run.errors
    assert "-- approval needed --" in run.text and "action   github.pr.merge" in run.text
    assert "merged acme/app#42 (async)" in run.text
    check = run_cell(
        client,
        "(s,) = runtime.sessions()\n"
        "print([e.payload.get('approver') for e in runtime.trace_events(s.session_id)"
        " if e.event_type == 'action.approved'])",
    )
    assert "['maria']" in check.text


def test_approver_sync_call_asks_with_input(
    kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    """A synchronous guarded call is asked with input(), which the front end answers."""
    _, client = kernel
    assert not run_cell(client, SETUP).errors
    yes = run_cell(
        client,
        "attempt(lambda: merge('acme/app', 42, expected_head_sha=SHA))",
        allow_stdin=True,
        answer="y",
    )
    assert not yes.errors, yes.errors
    assert yes.prompts == ["Approve this call? [y/N] "]
    assert "action   github.pr.merge" in yes.text and "merged acme/app#42" in yes.text
    no = run_cell(
        client,
        "attempt(lambda: merge('acme/app', 43, expected_head_sha=SHA))",
        allow_stdin=True,
        answer="n",
    )
    assert "denied: approval_denied" in no.text


def test_approver_without_stdin_denies_at_once(
    kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    """A front end without stdin (nbclient, Voilà): nobody can be asked, the call is denied."""
    _, client = kernel
    assert not run_cell(client, SETUP).errors
    started = time.monotonic()
    run = run_cell(client, "attempt(lambda: merge('acme/app', 42, expected_head_sha=SHA))")
    assert not run.errors, run.errors
    assert "denied: approval_denied: nobody can be asked here" in run.text
    assert time.monotonic() - started < 30  # not the 300 s approval timeout
