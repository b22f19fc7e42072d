"""The notebooks in ``notebooks/`` run top to bottom, anywhere, with nobody to click.

Each notebook is copied to a fresh temporary directory outside the repository and executed
there, as a user would, by each of the four usual tools: nbclient (its Python API),
``jupyter nbconvert --to notebook --execute``, ``jupyter execute`` and papermill (its command
line). No ``CRA_*`` environment variable is set. The kernel is this interpreter (a kernelspec
written to a temporary ``JUPYTER_PATH``, so no globally installed kernel is used).

Nobody can click or type under those tools, and the kernel knows it (they send
``allow_stdin=False``): the approvals are rejected at once, with the reason shown. The tests
check that outcome, that no cell errs, that every run ends well within ``RUN_TIMEOUT`` (a hang
fails fast), that the chains verify, and that the repository is left as it was. The explicit
unattended approval (the papermill parameter ``AUTO_APPROVE``) is run too.

The approval paths of :class:`cra_agents.notebook.NotebookApprover` are also driven here through
a real kernel, playing the front end: a click sent as a comm message while an async cell awaits
(as JupyterLab sends it, with ``allow_stdin=True``), an ``input()`` answered over the stdin
channel, and a cell sent with ``allow_stdin=False`` as nbclient sends it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager, KernelManager
from nbclient import NotebookClient

from tests.harness.processes import run_bounded

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = ("01_quickstart.ipynb", "02_langchain_agent.ipynb", "03_audit_and_replay.ipynb")
TOOLS = ("nbclient", "nbconvert", "jupyter-execute", "papermill")
CELL_TIMEOUT = 60
RUN_TIMEOUT = 90  # a whole run, kernel start to shutdown; below pytest's 120 s per test
BIN = Path(sys.executable).parent  # the venv's jupyter, papermill
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
NOBODY = (
    "approval_denied: nobody can answer here: this notebook is being run without an "
    "interactive front end (nbclient, nbconvert --execute, jupyter execute or papermill)"
)
HOW = "open the notebook in JupyterLab, Jupyter Notebook or VS Code and run the cell there"
AUTO = "unattended run (AUTO_APPROVE)"


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``JUPYTER_PATH`` whose ``python3`` kernelspec starts this very interpreter."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (cra-agents venv)",
                "language": "python",
            }
        )
    )
    return root


@pytest.fixture(scope="module")
def kernel_specs(jupyter_path: Path) -> KernelSpecManager:
    return KernelSpecManager(
        kernel_dirs=[str(jupyter_path / "kernels")], ensure_native_kernel=False
    )


def _kernel_env(tmp: Path, jupyter_path: Path | None = None) -> dict[str, str]:
    """The environment of a run: ours without test, coverage and CRA settings, isolated."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRA_", "COV_", "PYTEST_"))}
    # No CRA_AGENTS_STORE: a notebook that forgot its store would write ./.cra, which fails.
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # the debugger's frozen-modules note on stderr
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env["IPYTHONDIR"] = str(tmp / "ipython")  # no user profile, startup files or history here
    env["JUPYTER_CONFIG_DIR"] = str(tmp / "jupyter-config")  # no user configuration either
    env["JUPYTER_DATA_DIR"] = str(tmp / "jupyter-data")
    if jupyter_path is not None:
        env["JUPYTER_PATH"] = str(jupyter_path)  # searched first: our python3 kernelspec
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


def _command(tool: str, name: str, out: Path, auto_approve: bool) -> list[str]:
    if tool == "nbconvert":
        return [
            str(BIN / "jupyter"),
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            name,
            "--output",
            out.name,
            "--output-dir",
            str(out.parent),
            f"--ExecutePreprocessor.timeout={CELL_TIMEOUT}",
        ]
    if tool == "jupyter-execute":
        return [
            str(BIN / "jupyter"),
            "execute",
            name,
            f"--output={out.stem}",
            f"--timeout={CELL_TIMEOUT}",
        ]
    assert tool == "papermill"
    parameters = ["-p", "AUTO_APPROVE", "True"] if auto_approve else []
    return [
        str(BIN / "papermill"),
        name,
        str(out),
        *parameters,
        "--execution-timeout",
        str(CELL_TIMEOUT),
        "--no-progress-bar",
    ]


def _run_cli(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Run a tool in its own process group; on a hang, kill it and its kernel, and fail."""
    try:
        done = run_bounded(command, cwd=cwd, env=env, timeout=RUN_TIMEOUT)
    except TimeoutError as exc:
        pytest.fail(str(exc))
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr


def execute(
    name: str,
    tool: str,
    tmp: Path,
    jupyter_path: Path,
    kernel_specs: KernelSpecManager,
    *,
    auto_approve: bool = False,
) -> tuple[Any, str]:
    """Run a copy of one notebook in ``tmp`` with ``tool``; the executed notebook and its text."""
    work = tmp / "work"
    work.mkdir()
    shutil.copy(NOTEBOOKS / name, work / name)
    out = work / f"executed-{name}"
    env = _kernel_env(tmp, jupyter_path)
    started = time.perf_counter()
    if tool == "nbclient":
        notebook = _read(work / name)
        if auto_approve:  # the parameters cell, edited as a person would
            (cell,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
            cell.source = cell.source.replace("AUTO_APPROVE = False", "AUTO_APPROVE = True")
        manager = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=kernel_specs)
        assert manager.kernel_spec is not None
        assert manager.kernel_spec.argv[0] == sys.executable
        client = NotebookClient(
            notebook,
            km=manager,
            timeout=CELL_TIMEOUT,
            kernel_name="python3",
            allow_errors=False,
            resources={"metadata": {"path": str(work)}},
        )
        client.execute(env=env, cleanup_kc=True)  # and shut the kernel down
        nbformat.write(notebook, out)  # type: ignore[no-untyped-call]
    else:
        _run_cli(_command(tool, name, out, auto_approve), work, env)
    elapsed = time.perf_counter() - started
    assert elapsed < RUN_TIMEOUT
    notebook = _read(out)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", (name, cell["source"], output)
            if output["output_type"] == "stream":
                assert output["name"] != "stderr" or "Traceback" not in output["text"], output
    print(f"\n{name}: {elapsed:.1f} s wall time under {tool}")
    return notebook, "\n".join(_text(cell) for cell in notebook.cells)


def _widgets_shown(notebook: Any) -> bool:
    return any(
        WIDGET_MIME in output.get("data", {})
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )


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
    text = json.dumps(notebook)
    assert "CRA_NOTEBOOK" not in text and "examples/atlases" not in text


@pytest.mark.parametrize("name", NAMES[:2])
def test_auto_approve_is_a_papermill_parameter(name: str) -> None:
    (cell,) = [
        c for c in _read(NOTEBOOKS / name).cells if "parameters" in c.metadata.get("tags", [])
    ]
    assert cell.source.startswith("AUTO_APPROVE = False  # papermill -p AUTO_APPROVE True")


# -- what each notebook shows ---------------------------------------------------------------


def check_quickstart(notebook: Any, text: str, *, approved: bool) -> None:
    assert "com.example.github-ops 1.2.0: 15 actions" in text
    assert "allowed: {'posted': True" in text
    assert (
        "denied:  github.repo.delete by deny-repo-delete: Deleting repositories is never "
        "automated" in text
    )
    if approved:  # the approval card was shown, and answered through its Approve button
        assert _widgets_shown(notebook)
        assert "merged acme/app#42" in text
        assert f"approver={AUTO}" in text
        assert "nobody can answer" not in text
    else:  # denied at once, saying why and how to approve, and recorded so
        assert not _widgets_shown(notebook)  # no buttons that nobody can press
        assert f"denied:  github.pr.merge by approve-merge: {NOBODY}" in text
        assert HOW in text and "papermill -p AUTO_APPROVE True" in text
        assert re.search(
            r"action\.denied +github\.pr\.merge +approve-merge +reason=approval_denied: nobody "
            r"can answer here.*approver=nobody \(run without an interactive front end\)",
            text,
        )
        assert "merged acme/app#42" not in text
    assert text.count("VALID: ") == 2 and "INVALID" not in text


def check_langchain_agent(notebook: Any, text: str, *, approved: bool) -> None:
    # the interrupt payload, shown as an approval card (text form for renderers without widgets)
    assert "'policy_id': 'approve-merge'" in text
    assert "-- approval needed --" in text and "agent    github-ops-agent" in text
    assert "tool DENIED delete_repo: Denied: github.repo.delete is not permitted" in text
    if approved:  # answered by the Approve button, the graph resumed and finished
        assert _widgets_shown(notebook)
        assert f"answer: {{'decisions': [{{'type': 'approve'}}], 'approver': '{AUTO}'}}" in text
        assert "tool ran    merge_pr: merged acme/app#42" in text
        assert "model: PR #42 is merged; the repository stays." in text
        assert f"github.pr.merge      approved  executed  approve-merge     {AUTO}" in text
    else:  # rejected at once; the agent heard the rejection and left the PR open
        assert not _widgets_shown(notebook)
        assert HOW in text
        assert f"answer: {{'decisions': [{{'type': 'reject', 'message': '{NOBODY}" in text
        assert (
            "tool DENIED merge_pr: User rejected the tool call for `merge_pr` with reason: "
            f"{NOBODY}" in text
        )
        assert (
            "model: The merge was rejected, so PR #42 stays open; the repository stays too." in text
        )
        assert (
            "github.pr.merge      denied    -         approve-merge     nobody (run without an "
            "interactive front end)" in text
        )
        assert "merged acme/app#42" not in text
    assert "waiting for your answer" not in text and "kept the runtime open" not in text
    # the timeline, inline
    assert 'class="cra-timeline-view"' in text and "<svg" in text
    assert "github.repo.delete   denied" in text
    # the turn's resolution, the question to the person and the calls: one valid chain
    assert re.search(r"chain VALID: \d+ events", text)


def check_audit_and_replay(notebook: Any, text: str, *, approved: bool) -> None:
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


CHECKS: dict[str, Callable[..., None]] = dict(
    zip(NAMES, (check_quickstart, check_langchain_agent, check_audit_and_replay), strict=True)
)


# -- executed notebooks ---------------------------------------------------------------------


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_unattended(
    name: str, tool: str, jupyter_path: Path, kernel_specs: KernelSpecManager, tmp_path: Path
) -> None:
    """Nobody to click: approvals are rejected at once, saying why; nothing hangs or errs."""
    before = _repo_state()
    notebook, text = execute(name, tool, tmp_path, jupyter_path, kernel_specs)
    CHECKS[name](notebook, text, approved=False)
    assert _repo_state() == before


@pytest.mark.parametrize(
    ("name", "tool"), [(NAMES[0], "papermill"), (NAMES[1], "papermill"), (NAMES[1], "nbclient")]
)
def test_notebook_auto_approve(
    name: str, tool: str, jupyter_path: Path, kernel_specs: KernelSpecManager, tmp_path: Path
) -> None:
    """``AUTO_APPROVE = True`` presses the Approve button from code: the call goes through."""
    notebook, text = execute(name, tool, tmp_path, jupyter_path, kernel_specs, auto_approve=True)
    CHECKS[name](notebook, text, approved=True)


# -- the approval paths of NotebookApprover, through a real kernel --------------------------

SETUP = """
import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.notebook import NotebookApprover, nobody_can_answer
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

    # top-level await: the cell waits on the kernel's event loop, which stays free for comms;
    # sent as JupyterLab sends cells (allow_stdin=True: someone is there)
    run = run_cell(
        client,
        "await attempt_async(lambda: amerge('acme/app', 42, expected_head_sha=SHA))",
        allow_stdin=True,
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


def test_kernel_knows_whether_anybody_can_answer(
    kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    """ipykernel keeps the request's allow_stdin: False as nbclient sends it, True as JupyterLab."""
    _, client = kernel
    assert not run_cell(client, SETUP).errors
    code = "print('nobody' if nobody_can_answer() else 'someone')"
    assert run_cell(client, code).text == "nobody\n"
    assert run_cell(client, code, allow_stdin=True, answer="").text == "someone\n"
    assert run_cell(client, code).text == "nobody\n"  # per request, not once per kernel


@pytest.mark.parametrize(
    "call",
    [
        "attempt(lambda: merge('acme/app', 42, expected_head_sha=SHA))",
        "await attempt_async(lambda: amerge('acme/app', 42, expected_head_sha=SHA))",
    ],
    ids=["sync", "async"],
)
def test_approver_in_a_run_nobody_can_answer_denies_at_once(
    call: str, kernel: tuple[KernelManager, BlockingKernelClient]
) -> None:
    """A cell sent as nbclient sends it (allow_stdin=False): denied at once, saying why."""
    _, client = kernel
    assert not run_cell(client, SETUP).errors
    started = time.monotonic()
    shown: list[str] = []
    run = run_cell(client, call, on_widget=lambda r: shown.append(r.text))
    assert not run.errors, run.errors
    assert f"denied: {NOBODY}" in run.text
    assert "action   github.pr.merge" in run.text and HOW in run.text
    assert not shown  # no buttons nobody can press
    assert time.monotonic() - started < 30  # not the 300 s approval timeout
