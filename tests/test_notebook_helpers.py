"""Unit tests of ``cra_agents.notebook`` (approval prompts, the notebook approver, displays).

These run in the test process, without a kernel: "in a kernel" is simulated by replacing
``cra_agents.notebook._kernel``, and "ipywidgets not installed" by ``sys.modules``. The same
paths run in a real kernel in ``tests/test_notebooks.py``.
"""

from __future__ import annotations

import asyncio
import builtins
import importlib
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import StdinNotImplementedError

import cra_agents as cra
from cra_agents import notebook
from cra_agents.notebook import (
    ApprovalPrompt,
    NotebookApprover,
    Rendered,
    approval_prompt,
    decisions_plot,
    events_table,
    kernel_takes_clicks_while_awaiting,
    nobody_can_answer,
    resume_value,
    widgets_available,
)
from cra_agents.replay import DecisionReplay, ReplayReport
from cra_agents.runtime._approvals import ApprovalDecision, ApprovalRequest

SHA = "3f786850e387550fdab836ed7e6dc881de23001b"

#: What CRAMiddleware(interrupt_mode="per_call") raises: LangChain's ToolApprovalRequest.
PAYLOAD: dict[str, Any] = {
    "type": "tool_approval",
    "tool_call_id": "call_merge",
    "name": "merge_pr",
    "args": {"repo": "acme/app", "pr_number": 42, "expected_head_sha": SHA},
    "description": "Tool execution requires approval",
    "cra": {
        "session_id": "s-1",
        "tool_call_id": "call_merge",
        "tool": "merge_pr",
        "action_id": "github.pr.merge",
        "risk_tier": "high",
        "policy_id": "approve-merge",
        "reason": "Merging requires a maintainer's approval",
        "allowed_decisions": ["approve", "edit", "reject", "respond"],
    },
}
#: What CRAMiddleware raises by default: LangChain's HITLRequest for the turn's calls.
BATCHED: dict[str, Any] = {
    "action_requests": [
        {"name": PAYLOAD["name"], "args": PAYLOAD["args"], "description": "..."},
        {"name": "merge_pr", "args": {"repo": "acme/app", "pr_number": 43}, "description": ""},
    ],
    "review_configs": [{"action_name": "merge_pr", "allowed_decisions": ["approve", "reject"]}] * 2,
    "cra": [PAYLOAD["cra"], {**PAYLOAD["cra"], "tool_call_id": "call_other"}],
}


def _payload(**facts: Any) -> dict[str, Any]:
    return {**PAYLOAD, "cra": {**PAYLOAD["cra"], **facts}}


def _request(**changes: Any) -> ApprovalRequest:
    fields: dict[str, Any] = {
        "session_id": "s-1",
        "agent_id": "github-ops-agent",
        "action_id": "github.pr.merge",
        "arguments": {"repo": "acme/app", "pr_number": 42},
        "digest": "ab" * 32,
        "risk_tier": "high",
        "reason": "Merging requires a maintainer's approval",
        "policy_id": "approve-merge",
    }
    fields.update(changes)
    return ApprovalRequest(**fields)


class FakeKernel:
    """Stands in for an ipykernel kernel object."""

    async def dispatch_shell(
        self, msg: Any, /, subshell_id: Any = None, *, concurrent: bool = False
    ) -> None:
        """The signature of ipykernel >= 7.4."""


class OldKernel:
    async def dispatch_shell(self, msg: Any) -> None:
        """The signature of older kernels: comms wait for the running cell."""


@pytest.fixture
def in_kernel(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Pretend to run in a kernel; returns what was displayed."""
    shown: list[Any] = []
    monkeypatch.setattr(notebook, "_kernel", FakeKernel)
    monkeypatch.setattr(importlib.import_module("IPython.display"), "display", shown.append)
    return shown


class NoFrontEndKernel(FakeKernel):
    """A kernel running a cell sent with ``allow_stdin=False`` (nbclient and the tools on it)."""

    _allow_stdin = False


class FrontEndKernel(FakeKernel):
    """A kernel running a cell sent by JupyterLab, Notebook or VS Code (``allow_stdin=True``)."""

    _allow_stdin = True


@pytest.fixture
def unattended(monkeypatch: pytest.MonkeyPatch, in_kernel: list[Any]) -> list[Any]:
    """Run by nbclient, nbconvert, jupyter execute or papermill; returns what was displayed."""
    monkeypatch.setattr(notebook, "_kernel", NoFrontEndKernel)
    return in_kernel


@pytest.fixture
def no_ipywidgets(monkeypatch: pytest.MonkeyPatch) -> None:
    """ipywidgets is not installed (an import of it fails)."""
    monkeypatch.setitem(sys.modules, "ipywidgets", None)


@pytest.fixture
def configured(github_ops: Path) -> Any:
    runtime = cra.configure(atlases=[github_ops], store="memory://")
    yield runtime
    cra.shutdown()


# -- environment ----------------------------------------------------------------------------


def test_import_loads_neither_ipython_nor_ipywidgets() -> None:
    code = (
        "import sys, cra_agents\n"
        "assert 'cra_agents.notebook' not in sys.modules\n"
        "import cra_agents.notebook\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('IPython', 'ipywidgets',"
        " 'ipykernel', 'cra_agents_langchain', 'langchain')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_kernel_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert notebook._kernel() is None
    kernel = FakeKernel()
    shell = types.SimpleNamespace(kernel=kernel)
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert notebook._kernel() is kernel
    fake.get_ipython = lambda: None  # type: ignore[attr-defined]
    assert notebook._kernel() is None


def test_widgets_available(monkeypatch: pytest.MonkeyPatch, in_kernel: list[Any]) -> None:
    assert widgets_available()
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    assert not widgets_available()
    with pytest.raises(ImportError, match=r"cra-agents\[notebook\]"):
        notebook._widgets_module()


def test_widgets_unavailable_outside_a_kernel() -> None:
    assert not widgets_available()
    assert not kernel_takes_clicks_while_awaiting()


def test_kernel_takes_clicks_while_awaiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notebook, "_kernel", FakeKernel)
    assert kernel_takes_clicks_while_awaiting()
    monkeypatch.setattr(notebook, "_kernel", OldKernel)
    assert not kernel_takes_clicks_while_awaiting()

    class Odd:
        def dispatch_shell(self) -> None:
            """A kernel whose method has no readable signature."""

    Odd.dispatch_shell.__signature__ = "not a signature"  # type: ignore[attr-defined]
    monkeypatch.setattr(notebook, "_kernel", Odd)
    assert not kernel_takes_clicks_while_awaiting()


def test_nobody_can_answer_reads_the_requests_allow_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not nobody_can_answer()  # no kernel: not a notebook run
    monkeypatch.setattr(notebook, "_kernel", FakeKernel)
    assert not nobody_can_answer()  # a kernel that does not say: ask as before
    monkeypatch.setattr(notebook, "_kernel", FrontEndKernel)
    assert not nobody_can_answer()
    monkeypatch.setattr(notebook, "_kernel", NoFrontEndKernel)
    assert nobody_can_answer()


def test_display_outside_a_kernel_prints(capsys: pytest.CaptureFixture[str]) -> None:
    notebook._display(Rendered("<b>x</b>", "plain x"))
    assert capsys.readouterr().out == "plain x\n"


# -- requests and resume values -------------------------------------------------------------


def test_resume_value_is_what_the_middleware_reads() -> None:
    assert resume_value(True, approver="alice") == {"type": "approve", "approver": "alice"}
    assert resume_value(False, approver="bob", reason="not now", answers=2) == {
        "decisions": [{"type": "reject", "message": "not now"}] * 2,
        "approver": "bob",
    }


def test_normalise_approval_request_and_payload() -> None:
    data = notebook._normalise(_request())
    assert data["agent_id"] == "github-ops-agent" and data["digest"] == "ab" * 32
    assert notebook._normalise({"action_id": "x"}) == {
        "action_id": "x",
        "arguments": {},
        "reason": "Requires human approval",
    }
    assert notebook._normalise({**PAYLOAD, "agent_id": "given"})["agent_id"] == "given"
    batched = notebook._normalise(BATCHED)
    assert batched["action_id"] == "github.pr.merge, github.pr.merge"
    assert batched["answers"] == 2 and len(batched["arguments"]) == 2


def test_a_batched_request_is_answered_for_every_call() -> None:
    prompt = approval_prompt(BATCHED, approver="alice", ask=lambda p: "y")
    assert prompt.answer == {"decisions": [{"type": "approve"}] * 2, "approver": "alice"}


def test_payload_agent_is_looked_up_in_the_configured_runtime(configured: Any) -> None:
    info = configured.create_session("github-ops-agent", "Tidy up")
    assert notebook._normalise(_payload(session_id=info.session_id))["agent_id"] == (
        "github-ops-agent"
    )
    assert notebook._normalise(PAYLOAD)["agent_id"] is None  # unknown session


def test_payload_agent_without_a_configured_runtime() -> None:
    cra.shutdown()
    assert notebook._normalise(PAYLOAD)["agent_id"] is None


def test_request_text_and_html_escape_arguments() -> None:
    request = notebook._normalise({**PAYLOAD, "args": {"body": "<script>alert(1)</script>"}})
    text = notebook._request_text(request)
    assert "action   github.pr.merge (tool merge_pr)   risk high" in text
    assert "policy   approve-merge: Merging requires a maintainer's approval" in text
    page = notebook._request_html(request)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "#c62828" in page  # high risk colour
    plain = notebook._normalise(_request(risk_tier="unheard-of"))
    assert "(sha256 abababababababab...)" in notebook._request_text(plain)
    assert "(tool" not in notebook._request_html(plain) and "#555" in notebook._request_html(plain)


def test_long_arguments_are_truncated() -> None:
    text = notebook._arguments_text({"body": "x" * 10_000})
    assert len(text) < 4100 and text.endswith("... (truncated)")


# -- text answers ---------------------------------------------------------------------------


def test_text_without_terminal_or_kernel_denies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", None)
    approved, why = notebook._ask_text(PAYLOAD, None)
    assert not approved and why is not None and why.startswith("approval_denied: no notebook")


def test_text_at_a_terminal_uses_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(isatty=lambda: True))
    monkeypatch.setattr(builtins, "input", lambda prompt: "yes")
    assert notebook._ask_text(PAYLOAD, None) == (True, None)
    assert "-- approval needed --" in capsys.readouterr().out


def test_text_in_a_kernel_shows_html_and_forwards_input(
    monkeypatch: pytest.MonkeyPatch, in_kernel: list[Any]
) -> None:
    asked: list[str] = []

    def kernel_input(prompt: str) -> str:
        asked.append(prompt)
        return " Y "

    monkeypatch.setattr(builtins, "input", kernel_input)  # a kernel replaces input() so
    assert notebook._ask_text(PAYLOAD, None) == (True, None)
    assert asked == ["Approve this call? [y/N] "]
    (shown,) = in_kernel
    assert "Approval needed" in shown._repr_html_() and "-- approval needed" in repr(shown)


def test_text_without_stdin_denies_saying_why(in_kernel: list[Any]) -> None:
    def no_stdin(prompt: str) -> str:
        raise StdinNotImplementedError("raw_input was called, but this frontend does not support")

    approved, why = notebook._ask_text(PAYLOAD, no_stdin)
    assert not approved and why is not None
    assert why.startswith("approval_denied: nobody can be asked here")


def test_text_eof_denies() -> None:
    def eof(prompt: str) -> str:
        raise EOFError

    assert notebook._ask_text(PAYLOAD, eof) == (False, None)


def test_text_other_errors_propagate(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(prompt: str) -> str:
        raise RuntimeError("reader broke")

    with pytest.raises(RuntimeError, match="reader broke"):
        notebook._ask_text(PAYLOAD, broken)
    monkeypatch.delitem(sys.modules, "IPython")  # IPython never loaded: no stdin error class
    assert notebook._stdin_error() is None
    with pytest.raises(RuntimeError, match="reader broke"):
        notebook._ask_text(PAYLOAD, broken)


# -- prompts --------------------------------------------------------------------------------


def test_click_approve_resumes_with_the_answer() -> None:
    resumed: list[dict[str, Any]] = []

    def resume(value: dict[str, Any]) -> str:
        resumed.append(value)
        return "graph resumed"

    prompt = approval_prompt(PAYLOAD, resume, approver="alice", widgets=True, show=False)
    assert not prompt.answered and "waiting" in repr(prompt)
    assert prompt.build_widgets() is prompt.widget  # built once
    prompt.approve_button.click()
    assert resumed == [{"type": "approve", "approver": "alice"}]
    assert prompt.answer == resumed[0] and prompt.result == "graph resumed"
    assert prompt.decision == ApprovalDecision(True, "alice", "approved in the notebook")
    assert prompt.approve_button.disabled and prompt.reject_button.disabled
    assert "approved by alice" in prompt.status.value
    prompt.reject_button.click()  # a second click changes nothing
    assert resumed == [{"type": "approve", "approver": "alice"}]
    assert prompt.respond(False) == resumed[0]


def test_click_reject_with_approver_name_and_note() -> None:
    prompt = approval_prompt(PAYLOAD, widgets=True, show=False)
    assert prompt.approver.startswith("notebook:")
    prompt.approver_field.value = "  bob "
    prompt.reason_field.value = "CI is red"
    prompt.reject_button.click()
    assert prompt.answer == {"type": "reject", "message": "CI is red", "approver": "bob"}
    assert prompt.decision == ApprovalDecision(False, "bob", "approval_denied: CI is red")
    assert "rejected by bob" in repr(prompt)


def test_reject_reasons_keep_the_approval_prefix() -> None:
    prompt = ApprovalPrompt(PAYLOAD, approver="carol")
    prompt.respond(False, reason="approval_denied: out of hours")
    assert prompt.decision == ApprovalDecision(False, "carol", "approval_denied: out of hours")
    plain = ApprovalPrompt(PAYLOAD, approver="carol")
    plain.respond(False, approver=" ")
    assert plain.decision == ApprovalDecision(False, "carol", "approval_denied")


def test_failing_on_answer_is_kept_shown_and_raised() -> None:
    def resume(value: dict[str, Any]) -> None:
        raise ValueError("graph is gone")

    prompt = approval_prompt(PAYLOAD, resume, approver="alice", widgets=True, show=False)
    with pytest.raises(ValueError, match="graph is gone"):
        prompt.respond(True)
    assert isinstance(prompt.error, ValueError) and prompt.answered
    assert "on_answer failed: ValueError: graph is gone" in prompt.status.value

    text = ApprovalPrompt(PAYLOAD, resume)
    with pytest.raises(ValueError, match="graph is gone"):
        text.respond(False)
    assert isinstance(text.error, ValueError)


def test_prompt_without_widgets_answers_through_input(capsys: pytest.CaptureFixture[str]) -> None:
    resumed: list[dict[str, Any]] = []
    prompt = approval_prompt(PAYLOAD, resumed.append, approver="dave", ask=lambda p: "n")
    assert prompt.widget is None and prompt.approve_button is None
    assert resumed == [{"type": "reject", "approver": "dave"}]
    bundle = prompt._repr_mimebundle_()
    assert "rejected by dave" in bundle["text/html"] and "rejected by dave" in bundle["text/plain"]
    assert "-- approval needed --" in capsys.readouterr().out


def test_no_ipywidgets_falls_back_to_input(in_kernel: list[Any], no_ipywidgets: None) -> None:
    prompt = approval_prompt(PAYLOAD, approver="erin", ask=lambda p: "y")
    assert prompt.widget is None
    assert prompt.answer == {"type": "approve", "approver": "erin"}
    with pytest.raises(ImportError, match="ipywidgets"):
        approval_prompt(PAYLOAD, widgets=True)


def test_no_way_to_ask_rejects_and_still_resumes(in_kernel: list[Any], no_ipywidgets: None) -> None:
    def no_stdin(prompt: str) -> str:
        raise StdinNotImplementedError("no stdin")

    resumed: list[dict[str, Any]] = []
    prompt = approval_prompt(PAYLOAD, resumed.append, approver="erin", ask=no_stdin)
    assert prompt.answered and resumed[0]["type"] == "reject"
    assert resumed[0]["message"].startswith("approval_denied: nobody can be asked here")


def test_prompt_displays_itself_in_a_kernel(in_kernel: list[Any]) -> None:
    prompt = approval_prompt(PAYLOAD)
    assert in_kernel == [prompt] and prompt.widget is not None
    bundle = prompt._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith("-- approval needed")
    assert bundle["text/plain"].endswith("[waiting for an answer]")


# -- runs nobody can answer ----------------------------------------------------------------

NOBODY = (
    "approval_denied: nobody can answer here: this notebook is being run without an "
    "interactive front end (nbclient, nbconvert --execute, jupyter execute or papermill), "
    "so nobody can click or type"
)
NOBODY_APPROVER = "nobody (run without an interactive front end)"


def _explained(shown: list[Any]) -> None:
    """The one thing displayed: the request, why it was rejected and how to approve."""
    (card,) = shown
    assert isinstance(card, Rendered)
    assert card.text.startswith("-- approval needed --") and NOBODY in card.text
    assert "open the notebook in JupyterLab, Jupyter Notebook or VS Code" in card.text
    assert "Rejected without asking" in card.html and "Approval needed" in card.html


def test_unattended_prompt_is_rejected_at_once_saying_why(unattended: list[Any]) -> None:
    resumed: list[dict[str, Any]] = []
    prompt = approval_prompt(BATCHED, resumed.append, approver="alice")
    assert prompt.widget is None  # no buttons nobody can press
    assert resumed == [
        {
            "decisions": [{"type": "reject", "message": NOBODY}] * 2,
            "approver": NOBODY_APPROVER,
        }
    ]
    assert prompt.decision == ApprovalDecision(False, NOBODY_APPROVER, NOBODY)
    _explained(unattended)
    assert prompt.deny_unanswerable() == resumed[0]  # answered once, shown once
    assert len(unattended) == 1


@pytest.mark.parametrize("widgets", [None, False])
def test_unattended_prompt_approved_in_on_prompt(
    unattended: list[Any], widgets: bool | None
) -> None:
    def press(prompt: ApprovalPrompt) -> None:
        if prompt.approve_button is not None:
            prompt.approver_field.value = "robot"
            prompt.approve_button.click()
        else:
            prompt.respond(True, approver="robot")

    resumed: list[dict[str, Any]] = []
    prompt = approval_prompt(PAYLOAD, resumed.append, widgets=widgets, on_prompt=press)
    assert resumed == [{"type": "approve", "approver": "robot"}]
    assert (prompt.widget is not None) is (widgets is None)
    assert "nobody can answer" not in repr(unattended)


def test_unattended_prompt_unanswered_by_on_prompt_is_rejected(unattended: list[Any]) -> None:
    seen: list[ApprovalPrompt] = []
    prompt = approval_prompt(PAYLOAD, on_prompt=seen.append)
    assert seen == [prompt] and prompt.widget is not None
    assert prompt.answer == {"type": "reject", "message": NOBODY, "approver": NOBODY_APPROVER}
    prompt.approve_button.click()  # too late: answered
    assert prompt.answer["type"] == "reject"
    assert unattended[0] is prompt
    _explained(unattended[1:])


def test_unattended_prompt_with_a_reader_of_its_own_asks_it(unattended: list[Any]) -> None:
    prompt = approval_prompt(PAYLOAD, widgets=False, ask=lambda p: "y", approver="ops")
    assert prompt.answer == {"type": "approve", "approver": "ops"}
    # buttons still need someone to click: a reader does not change that
    assert approval_prompt(PAYLOAD, widgets=True, ask=lambda p: "y").answer == {
        "type": "reject",
        "message": NOBODY,
        "approver": NOBODY_APPROVER,
    }


def test_attended_on_prompt_may_leave_the_answer_to_input(in_kernel: list[Any]) -> None:
    seen: list[ApprovalPrompt] = []
    prompt = approval_prompt(PAYLOAD, widgets=False, ask=lambda p: "y", on_prompt=seen.append)
    assert seen == [prompt] and prompt.answer is not None and prompt.answer["type"] == "approve"


def test_unattended_ask_text_does_not_call_input(
    monkeypatch: pytest.MonkeyPatch, unattended: list[Any]
) -> None:
    def no_input(prompt: str) -> str:
        raise AssertionError("input() called")

    monkeypatch.setattr(builtins, "input", no_input)
    prompt = ApprovalPrompt(_request(), approver="you")
    prompt.ask_text()
    assert prompt.decision == ApprovalDecision(False, NOBODY_APPROVER, NOBODY)
    _explained(unattended)


def test_unattended_approver_denies_sync_and_async_calls_at_once(unattended: list[Any]) -> None:
    approver = NotebookApprover(approver="you")
    denied = ApprovalDecision(False, NOBODY_APPROVER, NOBODY)
    assert approver(_request()) == denied  # a synchronous call (no running loop)

    async def scenario(handler: NotebookApprover) -> list[ApprovalDecision]:
        answer = handler(_request())
        assert not isinstance(answer, ApprovalDecision)
        return [await answer, await handler.acall(_request())]

    assert asyncio.run(scenario(approver)) == [denied, denied]
    assert all(p.answered and p.widget is None for p in approver.prompts)

    def press(prompt: ApprovalPrompt) -> None:
        prompt.approver_field.value = "unattended run"
        prompt.approve_button.click()

    auto = NotebookApprover(approver="you", on_prompt=press)
    approved = ApprovalDecision(True, "unattended run", "approved in the notebook")
    assert asyncio.run(scenario(auto)) == [approved, approved]
    assert auto(_request()) == denied  # on_prompt answers buttons: a sync call has none


def test_close_stops_answers() -> None:
    prompt = approval_prompt(PAYLOAD, widgets=True, show=False)
    prompt.close("expired")
    prompt.approve_button.click()
    assert prompt.answer is None and prompt.respond(True) is None
    assert "closed, unanswered" in repr(prompt) and prompt.status.value == "expired"
    answered = ApprovalPrompt(PAYLOAD)
    answered.respond(True)
    answered.close()
    assert not answered.closed
    ApprovalPrompt(PAYLOAD).close()  # no widget: nothing to update


def test_wait_returns_the_clicked_decision() -> None:
    async def scenario() -> tuple[ApprovalDecision, ApprovalDecision]:
        prompt = approval_prompt(PAYLOAD, approver="fay", widgets=True, show=False)
        asyncio.get_running_loop().call_later(0.01, prompt.approve_button.click)
        first, second = await asyncio.gather(prompt.wait(), prompt.wait())
        assert first is second
        return first, await prompt.wait()  # answered: at once

    first, again = asyncio.run(scenario())
    assert first == again == ApprovalDecision(True, "fay", "approved in the notebook")


def test_wait_gets_answers_from_other_threads() -> None:
    async def scenario() -> ApprovalDecision:
        prompt = ApprovalPrompt(PAYLOAD, approver="gus")
        waiting = asyncio.ensure_future(prompt.wait())
        await asyncio.sleep(0)
        thread = threading.Thread(target=prompt.respond, args=(False,))
        thread.start()
        thread.join()
        return await waiting

    assert asyncio.run(scenario()) == ApprovalDecision(False, "gus", "approval_denied")


def test_settle_after_the_future_was_resolved_is_harmless() -> None:
    async def scenario() -> None:
        prompt = ApprovalPrompt(PAYLOAD)
        waiting = asyncio.ensure_future(prompt.wait())
        await asyncio.sleep(0)
        assert prompt._future is not None
        prompt._future.set_result(ApprovalDecision(True, "x"))
        prompt.respond(False)  # the future is done: left alone
        assert (await waiting).approved
        notebook._set_if_pending(prompt._future, ApprovalDecision(False, "y"))

    asyncio.run(scenario())


def test_cancelled_wait_closes_the_prompt() -> None:
    async def scenario() -> ApprovalPrompt:
        prompt = approval_prompt(PAYLOAD, widgets=True, show=False)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(prompt.wait(), 0.01)
        return prompt

    prompt = asyncio.run(scenario())
    assert prompt.closed and "no answer in time" in prompt.status.value
    prompt.approve_button.click()
    assert prompt.answer is None


# -- the approver ---------------------------------------------------------------------------


def test_approver_sync_path_asks_with_text() -> None:
    approver = NotebookApprover(approver="hal", ask=lambda p: "y")
    assert approver(_request()) == ApprovalDecision(True, "hal", "approved in the notebook")
    assert NotebookApprover(ask=lambda p: "").__call__(_request()) == ApprovalDecision(
        False, NotebookApprover().approver, "approval_denied"
    )
    assert len(approver.prompts) == 1 and approver.prompts[0].answered


def test_approver_async_path_shows_buttons() -> None:
    def click(prompt: ApprovalPrompt) -> None:
        prompt.approver_field.value = "ivy"
        asyncio.get_running_loop().call_soon(prompt.approve_button.click)

    approver = NotebookApprover(widgets=True, on_prompt=click)

    async def scenario() -> Any:
        answer = approver(_request())
        assert not isinstance(answer, ApprovalDecision)
        return await answer

    assert asyncio.run(scenario()) == ApprovalDecision(True, "ivy", "approved in the notebook")
    assert approver.prompts[0].widget is not None

    quiet = NotebookApprover(approver="ivy", widgets=True)  # a person will click

    async def person() -> Any:
        answer = quiet(_request())
        assert not isinstance(answer, ApprovalDecision)
        waiting = asyncio.ensure_future(answer)
        await asyncio.sleep(0.01)
        quiet.prompts[0].reject_button.click()
        return await waiting

    assert asyncio.run(person()) == ApprovalDecision(False, "ivy", "approval_denied")


def test_approver_async_path_without_buttons_asks_on_a_thread() -> None:
    threads: list[str] = []

    def ask(prompt: str) -> str:
        threads.append(threading.current_thread().name)
        return "y"

    approver = NotebookApprover(approver="jo", ask=ask)  # no kernel: no buttons

    async def scenario() -> Any:
        answer = approver(_request())
        assert not isinstance(answer, ApprovalDecision)
        return await answer

    assert asyncio.run(scenario()).approved
    assert threads and threads[0] != threading.main_thread().name


def test_approver_acall_without_buttons_asks_on_a_thread() -> None:
    approver = NotebookApprover(approver="jo", widgets=False, ask=lambda p: "y")
    assert asyncio.run(approver.acall(_request())) == ApprovalDecision(
        True, "jo", "approved in the notebook"
    )


def test_approver_detects_buttons(monkeypatch: pytest.MonkeyPatch, in_kernel: list[Any]) -> None:
    assert NotebookApprover()._buttons()
    assert not NotebookApprover(widgets=False)._buttons()
    monkeypatch.setattr(notebook, "_kernel", OldKernel)
    assert not NotebookApprover()._buttons()


def test_guarded_calls_through_the_approver(github_ops: Path) -> None:
    """The runtime asks the approver and records its answer (sync and async, approve/deny)."""
    answers = iter(["y", "n"])
    cra.configure(
        atlases=[github_ops],
        store="memory://",
        approvals=NotebookApprover(approver="kim", ask=lambda p: next(answers)),
    )

    @cra.guarded("github.pr.merge")
    def merge(repo: str, pr_number: int, expected_head_sha: str) -> str:
        return f"merged {repo}#{pr_number}"

    try:
        with cra.session(agent_id="maintainer", goal="merge") as session:
            assert merge("acme/app", 1, expected_head_sha=SHA) == "merged acme/app#1"
            with pytest.raises(cra.ActionDenied, match="approval_denied"):
                merge("acme/app", 2, expected_head_sha=SHA)
        events = cra.get_runtime().trace_events(session.session_id)
        approved = [e.payload for e in events if e.event_type == "action.approved"]
        assert approved[0]["approver"] == "kim"
    finally:
        cra.shutdown()


def test_guarded_call_without_stdin_is_denied_with_the_reason(github_ops: Path) -> None:
    def no_stdin(prompt: str) -> str:
        raise StdinNotImplementedError("no stdin")

    cra.configure(atlases=[github_ops], store="memory://", approvals=NotebookApprover(ask=no_stdin))

    @cra.guarded("github.pr.merge")
    def merge(repo: str, pr_number: int, expected_head_sha: str) -> str:
        return "merged"

    try:
        with (
            cra.session(agent_id="maintainer", goal="merge") as session,
            pytest.raises(cra.ActionDenied) as denied,
        ):
            merge("acme/app", 1, expected_head_sha=SHA)
        assert denied.value.reason.startswith("approval_denied: nobody can be asked here")
        events = cra.get_runtime().trace_events(session.session_id)
        (recorded,) = [e.payload for e in events if e.event_type == "action.denied"]
        assert recorded["reason"] == denied.value.reason
    finally:
        cra.shutdown()


def test_async_guarded_call_answered_by_button_or_timeout(github_ops: Path) -> None:
    clicks: list[str] = []

    def press(prompt: ApprovalPrompt) -> None:
        if clicks:
            asyncio.get_running_loop().call_soon(getattr(prompt, clicks.pop()).click)

    approver = NotebookApprover(approver="lee", widgets=True, on_prompt=press)
    cra.configure(atlases=[github_ops], store="memory://", approvals=approver, approval_timeout=0.2)

    @cra.guarded("github.pr.merge")
    async def merge(repo: str, pr_number: int, expected_head_sha: str) -> str:
        return "merged"

    async def attempt() -> str:
        try:
            return await merge("acme/app", 1, expected_head_sha=SHA)
        except cra.ActionDenied as denied:
            return f"denied: {denied.reason}"

    try:
        clicks.append("approve_button")
        assert asyncio.run(attempt()) == "merged"
        clicks.append("reject_button")
        assert asyncio.run(attempt()) == "denied: approval_denied"
        assert asyncio.run(attempt()) == "denied: approval_timeout"  # nobody clicks
        assert approver.prompts[-1].closed
    finally:
        cra.shutdown()


# -- display helpers ------------------------------------------------------------------------


def _events(github_ops: Path, *, shadow: bool = False) -> list[Any]:
    runtime = cra.Runtime(atlases=[github_ops], store="memory://", shadow=shadow)
    try:
        info = runtime.create_session("triage-bot", "triage")
        for action, arguments in (
            ("github.issue.comment", {"repo": "acme/app", "issue_number": 7, "body": "hi"}),
            ("github.repo.delete", {"repo": "acme/app", "confirm_name": "acme/app"}),
        ):
            try:
                auth = runtime.authorize(info.session_id, action, arguments)
            except cra.ActionDenied:
                continue
            runtime.record_outcome(auth, result={"ok": True})
        runtime.end_session(info.session_id)
        return runtime.trace_events(info.session_id)
    finally:
        runtime.close()


def test_rendered() -> None:
    shown = Rendered("<b>x</b>", "x")
    assert shown._repr_html_() == "<b>x</b>" and str(shown) == repr(shown) == "x"


def test_events_table(github_ops: Path) -> None:
    events = _events(github_ops)
    table = events_table(events)
    assert "<table" in table.html and "deny-repo-delete" in table.html
    assert "reason=Deleting repositories is never automated" in table.text
    assert table.text.splitlines()[0].split() == [
        "#",
        "time",
        "event",
        "action",
        "policy",
        "detail",
        "hash",
    ]
    short = events_table(events, max_rows=3)
    assert "… 6 more" in short.html and short.text.endswith("... 6 more")


def test_events_table_odd_events(tmp_path: Path) -> None:
    odd = {
        "sequence": 0,
        "timestamp": "yesterday",
        "event_type": "action.approved",
        "payload": {"action_id": "a.b", "shadow": True, "note": "<b>"},
        "event_hash": "f" * 64,
    }
    table = events_table([odd])
    assert "yesterday" in table.text and "shadow" in table.text


def test_events_table_reads_a_trace_file(github_ops: Path, tmp_path: Path) -> None:
    runtime = cra.Runtime(atlases=[github_ops], store=f"jsonl://{tmp_path}")
    info = runtime.create_session("triage-bot", "triage")
    runtime.end_session(info.session_id)
    runtime.close()
    table = events_table(tmp_path / f"{info.session_id}.trace.jsonl")
    assert "session.started" in table.text and "session.ended" in table.text


def test_decisions_plot(github_ops: Path) -> None:
    events = _events(github_ops)
    plot = decisions_plot(events, title="<triage>")
    assert plot.html.startswith("<svg") and "&lt;triage&gt;" in plot.html
    assert "github.issue.comment     allowed" in plot.text
    assert "github.repo.delete       denied" in plot.text
    assert "would change" not in plot.html
    comment = next(e for e in events if e.event_type == "action.requested")
    report = ReplayReport(
        session_id=str(events[0].session_id),
        decisions=[
            DecisionReplay(
                "execute",
                comment.sequence,
                "github.issue.comment",
                ("allow", "allow-issue-triage"),
                ("deny", "freeze"),
            ),
            DecisionReplay("action", 0, "github.issue.comment", ("allow", None), None),
            DecisionReplay("execute", 99, "github.pr.merge", ("allow", None), None),
        ],
    )
    replayed = decisions_plot(events, replay=report)
    assert "would change (1)" in replayed.html and "→ deny" in replayed.html
    assert "allowed  -> deny" in replayed.text


def test_decisions_plot_shadow_and_empty(github_ops: Path) -> None:
    shadowed = decisions_plot(_events(github_ops, shadow=True))
    assert "stroke-dasharray" in shadowed.html and "(shadow)" in shadowed.text
    empty = decisions_plot([])
    assert empty.text == "(no tool calls)" and "0.000 s" in empty.html
