"""Jupyter helpers: approvals answered in the notebook, traces shown inline.

Install with ``pip install "cra-agents[notebook]"`` (ipywidgets and IPython; ipykernel, nbclient
and nbformat to run notebooks). Nothing here imports IPython or ipywidgets before it is used,
and ``import cra_agents`` never imports this module.

Approvals in a notebook
-----------------------
A kernel receives widget clicks (comm messages) on the same queue as cells, so a cell that
*blocks* waiting for a click never gets it. What works, and what this module does:

* **LangChain / LangGraph agents** (``CRAMiddleware``): a call that needs approval pauses the
  graph with ``interrupt()`` and the cell ends. :func:`approval_prompt` shows the interrupt's
  payload with Approve / Reject buttons and an approver name; the click builds the resume value
  (:func:`resume_value`) and calls ``on_answer(value)`` — typically
  ``agent.invoke(Command(resume=value), config)``. Nothing blocks; works on every kernel.
* **Guarded functions** (``cra.configure(approvals=NotebookApprover())``): the runtime asks the
  handler while the call waits.

  - A synchronous call waits on a blocked cell, so a click could not arrive: the request is
    shown and the answer read with ``input()``, which Jupyter forwards to the front end as a
    text box. A client that does not offer stdin makes ``input()`` raise
    ``StdinNotImplementedError``: nobody can be asked, so the call is denied at once, saying
    why (fail closed).
  - An ``async`` guarded function awaited in a cell leaves the kernel's event loop free. Kernels
    that dispatch comm messages while an async cell awaits (ipykernel >= 7.4, detected by
    feature) deliver the click, so the request gets Approve / Reject buttons there; elsewhere
    it falls back to ``input()`` on a worker thread.

Runs nobody can answer
----------------------
``jupyter nbconvert --execute``, ``jupyter execute``, papermill and nbclient itself run a
notebook with nobody to click or type, and the kernel can tell: ipykernel keeps the
``allow_stdin`` flag of the execute request it is running on the kernel object
(``kernel._allow_stdin``, set for every request in ``do_execute``); nbclient, which the other
three are built on, sends ``allow_stdin=False``, while interactive front ends (JupyterLab,
Jupyter Notebook, VS Code) send ``True``. :func:`nobody_can_answer` reads it. There, every
approval gets an immediate outcome instead of a wait: it is **rejected**, with the reason
``approval_denied: nobody can answer here ...`` recorded and shown under the cell together with
how to approve instead (run the cell in an interactive front end, or approve from code). No
environment variable is involved. (Voilà executes notebooks through nbclient too, so approvals
asked while Voilà runs a notebook are rejected the same way.)

An unattended run that *should* approve says so in code: ``on_prompt`` (of
:func:`approval_prompt` and :class:`NotebookApprover`) gets the prompt before anything else and
may answer it, e.g. ``prompt.approve_button.click()``, which runs the very handlers a human
click runs. The example notebooks do this when their papermill parameter ``AUTO_APPROVE`` is
true (``papermill -p AUTO_APPROVE True``).

Display helpers: :func:`events_table` (a trace as a compact table) and :func:`decisions_plot`
(decisions over time as inline SVG, optionally with a replay's changed decisions).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import html
import importlib
import inspect
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from cra_agents._exceptions import CRAError, MissingDependencyError
from cra_agents.protocol import TraceEvent
from cra_agents.protocol import events as ev
from cra_agents.replay import ReplayReport, load_events
from cra_agents.runtime import ApprovalDecision, ApprovalRequest, current_user

__all__ = [
    "ApprovalPrompt",
    "NotebookApprover",
    "Rendered",
    "approval_prompt",
    "decisions_plot",
    "events_table",
    "kernel_takes_clicks_while_awaiting",
    "nobody_can_answer",
    "resume_value",
    "widgets_available",
]

Events = Iterable[TraceEvent | Mapping[str, Any]] | str | os.PathLike[str]
OnAnswer = Callable[[dict[str, Any]], Any]

_MAX_ARGUMENTS = 4000
_NO_STDIN = (
    "approval_denied: nobody can be asked here: this front end does not accept input() "
    "(no stdin, e.g. nbclient or Voilà) and no approval widget is shown"
)
_NO_TERMINAL = "approval_denied: no notebook front end or terminal to ask for approval"
#: The approver recorded on a request rejected because nobody could answer it.
_NOBODY_APPROVER = "nobody (run without an interactive front end)"
_NOBODY = (
    "approval_denied: nobody can answer here: this notebook is being run without an "
    "interactive front end (nbclient, nbconvert --execute, jupyter execute or papermill), "
    "so nobody can click or type"
)
_HOW_TO_APPROVE = (
    "To decide yourself, open the notebook in JupyterLab, Jupyter Notebook or VS Code and run "
    "the cell there. An unattended run that should approve must say so in code: answer the "
    "prompt in on_prompt (the example notebooks do with the parameter AUTO_APPROVE = True, "
    "e.g. papermill -p AUTO_APPROVE True)."
)


@dataclass(frozen=True, slots=True)
class Rendered:
    """HTML (or SVG) for ``display()``, with a plain-text form for consoles."""

    html: str
    text: str

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text


# -- environment --------------------------------------------------------------------------------


def _kernel() -> Any:
    """The running IPython kernel, or None (never imports IPython itself)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    shell = ipython.get_ipython()
    return getattr(shell, "kernel", None)


def _widgets_module() -> Any:
    """``ipywidgets``, imported on first use.

    Raises:
        MissingDependencyError: ipywidgets is not installed (an ``ImportError``).
    """
    try:
        return importlib.import_module("ipywidgets")
    except ImportError as exc:
        raise MissingDependencyError(
            "approval widgets", package="ipywidgets", extra="notebook"
        ) from exc


def widgets_available() -> bool:
    """Whether approval widgets can be shown: in a Jupyter kernel, with ipywidgets installed."""
    if _kernel() is None:
        return False
    try:
        _widgets_module()
    except ImportError:
        return False
    return True


def kernel_takes_clicks_while_awaiting() -> bool:
    """Whether the running kernel delivers widget clicks while an async cell awaits.

    ipykernel 7.4 added this (comm messages are dispatched concurrently with a running async
    cell, ``dispatch_shell(..., concurrent=True)``); older kernels queue them behind the cell.
    """
    kernel = _kernel()
    dispatch = getattr(kernel, "dispatch_shell", None)
    if dispatch is None:
        return False
    try:
        return "concurrent" in inspect.signature(dispatch).parameters
    except (TypeError, ValueError):
        return False


def nobody_can_answer() -> bool:
    """Whether the running cell was sent by an executor nobody watches (nbclient and co.).

    ipykernel keeps the ``allow_stdin`` flag of the execute request being run on the kernel
    (``kernel._allow_stdin``, set for every request). Interactive front ends (JupyterLab,
    Jupyter Notebook, VS Code, consoles) send ``allow_stdin=True``; nbclient sends ``False``,
    and so do the tools built on it: ``jupyter nbconvert --execute``, ``jupyter execute``,
    papermill. Outside a kernel, or in a kernel without that attribute, this is ``False``.
    """
    return getattr(_kernel(), "_allow_stdin", None) is False


def _display(obj: Any) -> None:
    """Show ``obj`` in the notebook (plain ``print`` of its text outside IPython)."""
    if _kernel() is None:
        print(obj)  # noqa: T201 - the text fallback of a display helper
        return
    importlib.import_module("IPython.display").display(obj)


def _default_approver() -> str:
    return f"notebook:{current_user()}"


# -- approval requests --------------------------------------------------------------------------


def _normalise(request: Mapping[str, Any] | ApprovalRequest) -> dict[str, Any]:
    """An interrupt payload or an :class:`ApprovalRequest` as one plain dict."""
    if isinstance(request, ApprovalRequest):
        return {
            "session_id": request.session_id,
            "agent_id": request.agent_id,
            "action_id": request.action_id,
            "arguments": dict(request.arguments),
            "digest": request.digest,
            "risk_tier": request.risk_tier,
            "policy_id": request.policy_id,
            "reason": request.reason,
        }
    langchain = "action_requests" in request or request.get("type") == "tool_approval"
    data = _from_langchain(request) if langchain else dict(request)
    if not data.get("agent_id") and data.get("session_id"):
        data["agent_id"] = _agent_of(str(data["session_id"]))
    data.setdefault("arguments", {})
    data.setdefault("reason", "Requires human approval")
    return data


def _from_langchain(request: Mapping[str, Any]) -> dict[str, Any]:
    """An ``HITLRequest`` or ``ToolApprovalRequest`` (with our ``cra`` facts) as one dict.

    ``answers`` says how many decisions the resume value carries (``None``: one decision, the
    per-call form). Several calls of one turn are shown together and answered alike.
    """
    if "action_requests" in request:
        calls = [dict(r) for r in request.get("action_requests") or []]
        facts = [dict(f) for f in request.get("cra") or [{} for _ in calls]]
        answers: int | None = len(calls)
    else:
        calls, facts, answers = [dict(request)], [dict(request.get("cra") or {})], None
    first = facts[0] if facts else {}
    data: dict[str, Any] = {
        key: first[key]
        for key in ("session_id", "agent_id", "tool_call_id", "risk_tier", "policy_id", "reason")
        if key in first
    }
    if request.get("agent_id"):
        data["agent_id"] = request["agent_id"]
    data["action_id"] = ", ".join(
        str(f.get("action_id", c.get("name"))) for c, f in zip(calls, facts, strict=False)
    )
    data["tool"] = ", ".join(str(c.get("name")) for c in calls)
    data["arguments"] = (
        calls[0].get("args", {}) if len(calls) == 1 else [c.get("args") for c in calls]
    )
    data["answers"] = answers
    return data


def _agent_of(session_id: str) -> str | None:
    """The agent of a session of the configured runtime (LangGraph payloads do not carry it)."""
    from cra_agents.guard import get_runtime

    try:
        return get_runtime().session(session_id).agent_id
    except CRAError:
        return None


def _arguments_text(arguments: Any) -> str:
    text = orjson.dumps(
        arguments, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=repr
    ).decode()
    if len(text) > _MAX_ARGUMENTS:
        text = text[:_MAX_ARGUMENTS] + "\n  ... (truncated)"
    return text


def _request_text(request: Mapping[str, Any]) -> str:
    """The request as the console approver prints it."""
    tool = f" (tool {request['tool']})" if request.get("tool") else ""
    digest = f" (sha256 {str(request['digest'])[:16]}...)" if request.get("digest") else ""
    return (
        "-- approval needed ------------------------------------------\n"
        f"agent    {request.get('agent_id') or '?'} (session {request.get('session_id', '?')})\n"
        f"action   {request.get('action_id')}{tool}   risk {request.get('risk_tier', '?')}\n"
        f"policy   {request.get('policy_id')}: {request.get('reason')}\n"
        f"arguments{digest}\n{_arguments_text(request.get('arguments'))}"
    )


_RISK_COLOURS = {"low": "#2e7d32", "medium": "#b26a00", "high": "#c62828", "critical": "#6a1b9a"}


def _request_html(request: Mapping[str, Any]) -> str:
    """The request as an HTML card (every value escaped: arguments come from a model)."""
    e = html.escape
    risk = str(request.get("risk_tier", "?"))
    colour = _RISK_COLOURS.get(risk, "#555")
    rows = [
        ("agent", e(str(request.get("agent_id") or "?"))),
        (
            "action",
            f"<code>{e(str(request.get('action_id')))}</code>"
            + (f" (tool <code>{e(str(request['tool']))}</code>)" if request.get("tool") else ""),
        ),
        (
            "risk",
            f'<span style="color:#fff;background:{colour};padding:0 6px;'
            f'border-radius:3px">{e(risk)}</span>',
        ),
        (
            "policy",
            f"<code>{e(str(request.get('policy_id')))}</code>: {e(str(request.get('reason')))}",
        ),
        (
            "arguments",
            f'<pre style="margin:0;max-height:16em;overflow:auto">'
            f"{e(_arguments_text(request.get('arguments')))}</pre>",
        ),
        ("session", f"<code>{e(str(request.get('session_id', '?')))}</code>"),
    ]
    body = "".join(
        f'<tr><th style="text-align:left;padding-right:1em;vertical-align:top">{name}</th>'
        f'<td style="text-align:left">{value}</td></tr>'
        for name, value in rows
    )
    return (
        '<div style="border-left:4px solid #b26a00;padding:4px 10px">'
        "<b>Approval needed</b><table>" + body + "</table></div>"
    )


def resume_value(
    approved: bool, *, approver: str, reason: str | None = None, answers: int | None = None
) -> dict[str, Any]:
    """The ``Command(resume=...)`` value ``CRAMiddleware`` reads: approve or reject, by whom.

    LangChain's form: one decision (``{"type": "approve"}`` or ``{"type": "reject",
    "message": reason}``), or with ``answers=N`` an ``HITLResponse`` of N such decisions (a
    batched review); ``approver`` rides along and is recorded.
    """
    decision: dict[str, Any] = {"type": "approve" if approved else "reject"}
    if reason:
        decision["message"] = reason
    if answers is None:
        return {**decision, "approver": approver}
    return {"decisions": [dict(decision) for _ in range(answers)], "approver": approver}


def _show_nobody(request: Mapping[str, Any]) -> None:
    """Show the request and why it is denied without asking: nobody can answer here."""
    explanation = f"{_NOBODY}.\n{_HOW_TO_APPROVE}"
    _display(
        Rendered(
            _request_html(request)
            + '<p style="border-left:4px solid #c62828;padding:4px 10px"><b>Rejected without '
            + f"asking</b>: {html.escape(_NOBODY)}.<br>{html.escape(_HOW_TO_APPROVE)}</p>",
            f"{_request_text(request)}\n{explanation}",
        )
    )


def _stdin_error() -> type[BaseException] | None:
    """IPython's ``StdinNotImplementedError`` when IPython is loaded (a kernel raises it)."""
    if sys.modules.get("IPython") is None:
        return None
    error: type[BaseException] = importlib.import_module(
        "IPython.core.error"
    ).StdinNotImplementedError
    return error


def _ask_text(
    request: Mapping[str, Any], ask: Callable[[str], str] | None
) -> tuple[bool, str | None]:
    """Show the request and read y/N. Returns ``(approved, why_denied_without_asking)``."""
    in_kernel = _kernel() is not None
    if ask is None:
        if not in_kernel and not (sys.stdin and sys.stdin.isatty()):
            return False, _NO_TERMINAL
        ask = builtins.input  # looked up now: a kernel forwards it to the front end
    if in_kernel:
        _display(Rendered(_request_html(request), _request_text(request)))
    else:
        print(_request_text(request), flush=True)  # noqa: T201 - the approval question
    no_stdin = _stdin_error()
    try:
        answer = ask("Approve this call? [y/N] ").strip().lower()
    except EOFError:
        return False, None
    except Exception as exc:
        if no_stdin is not None and isinstance(exc, no_stdin):
            return False, _NO_STDIN
        raise
    return answer in ("y", "yes"), None


class ApprovalPrompt:
    """One approval request shown in the notebook, and its answer once given.

    Built by :func:`approval_prompt`. With widgets it shows the request with an approver name,
    an optional note and **Approve** / **Reject** buttons; a click (a human's, or
    ``approve_button.click()`` in an unattended run: the same handlers) answers it once.
    Without widgets it is answered at once through ``input()``.

    Answering sets :attr:`answer` (the resume value, see :func:`resume_value`) and
    :attr:`decision`, then calls ``on_answer(answer)`` and keeps its return value in
    :attr:`result` (its exception in :attr:`error`, and re-raises it). Later answers are
    ignored.
    """

    def __init__(
        self,
        request: Mapping[str, Any] | ApprovalRequest,
        on_answer: OnAnswer | None = None,
        *,
        approver: str | None = None,
    ) -> None:
        self.request = _normalise(request)
        self.on_answer = on_answer
        self.approver = approver or _default_approver()
        self.answer: dict[str, Any] | None = None
        self.decision: ApprovalDecision | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.closed = False
        self.widget: Any = None
        self.approve_button: Any = None
        self.reject_button: Any = None
        self.approver_field: Any = None
        self.reason_field: Any = None
        self.status: Any = None
        self.output: Any = None
        self._future: asyncio.Future[ApprovalDecision] | None = None
        self._lock = threading.Lock()

    @property
    def answered(self) -> bool:
        """Whether an answer was given."""
        return self.answer is not None

    # -- widgets ---------------------------------------------------------------------------

    def build_widgets(self) -> Any:
        """Create the widget (once) and return it.

        Raises:
            ImportError: ipywidgets is not installed.
        """
        if self.widget is not None:
            return self.widget
        w = _widgets_module()
        self.approver_field = w.Text(
            value=self.approver, description="Approver", layout=w.Layout(width="24em")
        )
        self.reason_field = w.Text(
            value="", description="Note", placeholder="optional", layout=w.Layout(width="24em")
        )
        self.approve_button = w.Button(
            description="Approve", button_style="success", icon="check", tooltip="Approve"
        )
        self.reject_button = w.Button(
            description="Reject", button_style="danger", icon="times", tooltip="Reject"
        )
        self.approve_button.on_click(lambda _button: self._clicked(True))
        self.reject_button.on_click(lambda _button: self._clicked(False))
        self.status = w.HTML(value="<i>waiting for an answer</i>")
        self.output = w.Output()
        self.widget = w.VBox(
            [
                w.HTML(value=_request_html(self.request)),
                w.HBox([self.approver_field, self.reason_field]),
                w.HBox([self.approve_button, self.reject_button, self.status]),
                self.output,
            ]
        )
        return self.widget

    def _clicked(self, approved: bool) -> None:
        if self.answered or self.closed:
            return
        self.respond(
            approved,
            approver=str(self.approver_field.value),
            reason=str(self.reason_field.value),
        )

    def _set_status(self, text: str) -> None:
        if self.widget is None:
            return
        for control in (
            self.approve_button,
            self.reject_button,
            self.approver_field,
            self.reason_field,
        ):
            control.disabled = True
        self.status.value = html.escape(text)

    # -- answers ---------------------------------------------------------------------------

    def respond(
        self, approved: bool, *, approver: str | None = None, reason: str | None = None
    ) -> dict[str, Any] | None:
        """Answer the request (the buttons and the text fallback call this).

        Returns the resume value, or the first answer when already answered (``None`` when the
        request expired unanswered).
        """
        with self._lock:
            if self.answer is not None or self.closed:
                return self.answer
            who = (approver or "").strip() or self.approver
            note = (reason or "").strip() or None
            answers = self.request.get("answers")
            self.answer = resume_value(
                approved,
                approver=who,
                reason=note,
                answers=answers if isinstance(answers, int) else None,
            )
            if approved:
                self.decision = ApprovalDecision(True, who, note or "approved in the notebook")
            else:
                why = note if note and note.startswith("approval_") else None
                why = why or (f"approval_denied: {note}" if note else "approval_denied")
                self.decision = ApprovalDecision(False, who, why)
            answer, decision = self.answer, self.decision
        self._set_status(f"{'approved' if approved else 'rejected'} by {who}")
        self._settle(decision)
        if self.on_answer is not None:
            self._call_back(answer)
        return answer

    def _settle(self, decision: ApprovalDecision) -> None:
        future = self._future
        if future is None or future.done():
            return
        loop = future.get_loop()
        if _running_loop() is loop:
            future.set_result(decision)
        else:  # answered from another thread
            loop.call_soon_threadsafe(_set_if_pending, future, decision)

    def _call_back(self, answer: dict[str, Any]) -> None:
        assert self.on_answer is not None  # noqa: S101 - checked by the caller
        error: BaseException | None = None
        # What on_answer prints or displays shows under the prompt (in its Output widget).
        with self.output if self.output is not None else contextlib.nullcontext():
            try:
                self.result = self.on_answer(answer)
            except Exception as exc:  # noqa: BLE001 - kept, shown and re-raised below
                error = exc
        if error is not None:
            self.error = error
            if self.status is not None:
                self.status.value += html.escape(
                    f" — on_answer failed: {type(error).__name__}: {error}"
                )
            raise error

    async def wait(self) -> ApprovalDecision:
        """Wait for the answer (for async callers; the kernel must deliver clicks meanwhile).

        Cancelled (for example by the runtime's approval timeout), the prompt closes unanswered
        and later clicks are ignored.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.decision is not None:
                return self.decision
            if self._future is None:
                self._future = loop.create_future()
            future = self._future
        try:
            return await future
        except asyncio.CancelledError:
            self.close("no answer in time: the call was denied")
            raise

    def close(self, status: str = "closed") -> None:
        """Stop accepting answers (an unanswered request stays unanswered)."""
        with self._lock:
            if self.answer is not None:
                return
            self.closed = True
        self._set_status(status)

    # -- text ------------------------------------------------------------------------------

    def ask_text(self, ask: Callable[[str], str] | None = None) -> dict[str, Any] | None:
        """Answer through ``input()`` (or ``ask``): the fallback without widgets.

        A front end without stdin, or a run nobody can answer (:func:`nobody_can_answer`),
        cannot answer: the request is rejected at once, saying why.
        """
        if ask is None and nobody_can_answer():
            return self.deny_unanswerable()
        approved, why = _ask_text(self.request, ask)
        return self.respond(approved, reason=why)

    def deny_unanswerable(self) -> dict[str, Any] | None:
        """Reject at once because nobody can answer here, showing why and how to approve."""
        if not self.answered:
            _show_nobody(self.request)
        return self.respond(False, approver=_NOBODY_APPROVER, reason=_NOBODY)

    # -- display ---------------------------------------------------------------------------

    def _state_text(self) -> str:
        if self.answer is None:
            return "closed, unanswered" if self.closed else "waiting for an answer"
        verb = "approved" if self.decision is not None and self.decision.approved else "rejected"
        return f"{verb} by {self.answer['approver']}"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        text = f"{_request_text(self.request)}\n[{self._state_text()}]"
        if self.widget is not None:
            bundle: dict[str, Any] = dict(self.widget._repr_mimebundle_(**kwargs))
            bundle["text/plain"] = text  # what renderers without widgets show
            return bundle
        state = f"<p><i>{html.escape(self._state_text())}</i></p>"
        return {"text/html": _request_html(self.request) + state, "text/plain": text}

    def __repr__(self) -> str:
        return f"<ApprovalPrompt {self.request.get('action_id')}: {self._state_text()}>"


def _set_if_pending(future: asyncio.Future[ApprovalDecision], decision: ApprovalDecision) -> None:
    if not future.done():
        future.set_result(decision)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def approval_prompt(
    request: Mapping[str, Any] | ApprovalRequest,
    on_answer: OnAnswer | None = None,
    *,
    approver: str | None = None,
    widgets: bool | None = None,
    ask: Callable[[str], str] | None = None,
    show: bool = True,
    on_prompt: Callable[[ApprovalPrompt], Any] | None = None,
) -> ApprovalPrompt:
    """Ask for an approval in the notebook: buttons when widgets work, else ``input()``.

    Where nobody can answer (:func:`nobody_can_answer`: the notebook is run by nbclient,
    ``nbconvert --execute``, ``jupyter execute`` or papermill), the request is rejected at once
    with the reason ``approval_denied: nobody can answer here ...``, shown under the cell with
    how to approve instead, and ``on_answer`` gets the rejection. An unattended run that should
    approve answers in ``on_prompt`` (``lambda p: p.approve_button.click()``).

    For a LangGraph interrupt of ``CRAMiddleware``::

        result = agent.invoke(inputs, config)
        for pending in result.get("__interrupt__", []):
            approval_prompt(
                pending.value,
                lambda value: agent.invoke(Command(resume=value), config),
            )

    Args:
        request: The interrupt value (LangChain's ``HITLRequest`` or ``ToolApprovalRequest``
            with our ``cra`` facts) or an :class:`ApprovalRequest`.
        on_answer: Called with the resume value once answered; its return value is kept in
            :attr:`ApprovalPrompt.result`.
        approver: The approver name filled in (default ``notebook:<user>``).
        widgets: Force buttons (``True``) or ``input()`` (``False``); default: buttons when
            :func:`widgets_available`.
        ask: The text reader of the fallback (default :func:`input`).
        show: Display the widget now.
        on_prompt: Called with the prompt once built and shown, before anything else; it may
            answer it (an unattended run presses a button here). A prompt still unanswered when
            it returns, in a run nobody can answer, is rejected.

    Returns:
        The prompt; without widgets, or where nobody can answer, it is already answered
        (rejected when nobody could be asked).

    Raises:
        ImportError: ``widgets=True`` without ipywidgets.
    """
    prompt = ApprovalPrompt(request, on_answer, approver=approver)
    use_widgets = widgets if widgets is not None else widgets_available()
    # A custom ``ask`` reads answers without the front end; buttons need someone to click.
    unattended = (use_widgets or ask is None) and nobody_can_answer()
    if unattended and on_prompt is None:  # no buttons that nobody can press
        prompt.deny_unanswerable()
        return prompt
    if use_widgets:
        prompt.build_widgets()
        if show:
            _display(prompt)
    if on_prompt is not None:
        on_prompt(prompt)
    if prompt.answered:
        return prompt
    if unattended:
        prompt.deny_unanswerable()
    elif not use_widgets:
        prompt.ask_text(ask)
    return prompt


class NotebookApprover:
    """An approval handler for ``cra.configure(approvals=NotebookApprover())`` in a notebook.

    Shows agent, action, risk, policy, reason and arguments (as the console approver does) and
    asks:

    - from a synchronous guarded call: with ``input()``, which Jupyter forwards to the front
      end. The cell is blocked meanwhile, so widget clicks could not arrive; a client without
      stdin means nobody can be asked, and the call is denied at once with the reason
      ``approval_denied: nobody can be asked here ...``;
    - from an awaited async guarded call, on a kernel that delivers clicks while an async cell
      awaits (:func:`kernel_takes_clicks_while_awaiting`): with Approve / Reject buttons
      (:class:`ApprovalPrompt`); otherwise with ``input()`` on a worker thread.

    Where the notebook is run by nbclient, ``nbconvert --execute``, ``jupyter execute`` or
    papermill (:func:`nobody_can_answer`), nobody is asked: the call is denied at once with the
    reason ``approval_denied: nobody can answer here ...``, and the output says how to approve
    instead. Only ``on_prompt`` can answer there (async calls), and it must answer before it
    returns. The runtime's ``approval_timeout`` still applies: no answer in time denies.

    Args:
        approver: Identity recorded in ``action.approved`` (default ``notebook:<user>``; the
            buttons let the person type their name).
        ask: Reads the text answer (default :func:`input`).
        widgets: ``False`` never shows buttons; ``True`` shows them for async calls even when
            the kernel is not known to deliver clicks meanwhile; default: detect.
        on_prompt: Called with each :class:`ApprovalPrompt` shown with buttons (async calls);
            an unattended run presses a button here (``lambda p: p.approve_button.click()``).
    """

    def __init__(
        self,
        *,
        approver: str | None = None,
        ask: Callable[[str], str] | None = None,
        widgets: bool | None = None,
        on_prompt: Callable[[ApprovalPrompt], Any] | None = None,
    ) -> None:
        self.approver = approver or _default_approver()
        self.ask = ask
        self.widgets = widgets
        self.on_prompt = on_prompt
        self.prompts: list[ApprovalPrompt] = []

    def _buttons(self) -> bool:
        if self.widgets is not None:
            return self.widgets
        return widgets_available() and kernel_takes_clicks_while_awaiting()

    def __call__(self, request: ApprovalRequest) -> ApprovalDecision | Awaitable[ApprovalDecision]:
        """Answer ``request``: a decision, or an awaitable of one on the async path."""
        if _running_loop() is None:  # the runtime's worker thread: a synchronous call
            return self._text(request)
        if self._buttons():
            return self._prompt(request).wait()
        return asyncio.to_thread(self._text, request)

    async def acall(self, request: ApprovalRequest) -> ApprovalDecision:
        """Answer ``request`` from an awaited async call (on the event loop: buttons work).

        The runtime awaits this, when a handler has it, instead of running the handler on a
        worker thread.
        """
        if self._buttons():
            return await self._prompt(request).wait()
        return await asyncio.to_thread(self._text, request)

    def _prompt(self, request: ApprovalRequest) -> ApprovalPrompt:
        prompt = approval_prompt(
            request, approver=self.approver, widgets=True, on_prompt=self.on_prompt
        )
        self.prompts.append(prompt)
        return prompt

    def _text(self, request: ApprovalRequest) -> ApprovalDecision:
        prompt = ApprovalPrompt(request, approver=self.approver)
        prompt.ask_text(self.ask)
        self.prompts.append(prompt)
        assert prompt.decision is not None  # noqa: S101 - ask_text always answers
        return prompt.decision


# -- display helpers ----------------------------------------------------------------------------


_ROW_COLOURS = {
    ev.ACTION_DENIED: "#fdecea",
    ev.POLICY_VIOLATED: "#fff4e5",
    ev.ACTION_FAILED: "#fdecea",
    ev.ACTION_APPROVED: "#edf7ed",
    ev.ACTION_EXECUTED: "#e8f4fd",
}
_DETAIL_KEYS = (
    "result",
    "reason",
    "approver",
    "duration_ms",
    "tool_call_id",
    "agent_id",
    "goal",
    "error",
)


def _clock(timestamp: str) -> str:
    try:
        return datetime.fromisoformat(timestamp).strftime("%H:%M:%S.%f")[:-3]
    except ValueError:
        return timestamp


def _detail(payload: Mapping[str, Any]) -> str:
    parts = [f"{key}={payload[key]}" for key in _DETAIL_KEYS if key in payload]
    if payload.get("shadow"):
        parts.append("shadow")
    return " ".join(parts)


def events_table(events: Events, *, max_rows: int = 200) -> Rendered:
    """A trace as a compact table: sequence, time, event, action, policy, detail, hash.

    ``events``: one session's events (models or dicts) or a ``.trace.jsonl`` path.
    """
    records = load_events(events)
    rows = [
        (
            str(event["sequence"]),
            _clock(str(event["timestamp"])),
            str(event["event_type"]),
            str(event["payload"].get("action_id", "")),
            str(event["payload"].get("policy_id", "")),
            _detail(event["payload"]),
            str(event["event_hash"])[:12],
        )
        for event in records[:max_rows]
    ]
    more = len(records) - len(rows)
    headers = ("#", "time", "event", "action", "policy", "detail", "hash")
    e = html.escape
    cells = "".join(
        f'<tr style="background:{_ROW_COLOURS.get(row[2], "transparent")}">'
        + "".join(
            f'<td style="text-align:left;font-family:monospace;white-space:nowrap">{e(c)}</td>'
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    tail = f"<tr><td colspan=7><i>… {more} more</i></td></tr>" if more > 0 else ""
    head = "".join(f'<th style="text-align:left">{h}</th>' for h in headers)
    table = f'<table style="font-size:90%"><tr>{head}</tr>{cells}{tail}</table>'
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if more > 0:
        lines.append(f"... {more} more")
    return Rendered(table, "\n".join(lines))


_REPLAY_COLOURS = {"allow": "#2e7d32", "requires_approval": "#b26a00", "deny": "#c62828"}


def decisions_plot(
    events: Events,
    *,
    replay: ReplayReport | None = None,
    width: int = 720,
    title: str | None = None,
) -> Rendered:
    """Decisions over time as inline SVG: one lane per action, one dot per tool call.

    Dots sit at the time of the decision and are coloured as in the timeline of
    :mod:`cra_agents.report` (allowed, approved, denied, failed, pending; a ring marks shadow
    calls). With ``replay`` (a :class:`~cra_agents.replay.ReplayReport` of the same session),
    each call whose decision the candidate atlases would change gets a ring in the
    candidate's colour and a label (``→ deny``).
    """
    from cra_agents._clock import parse_timestamp_ns
    from cra_agents.report import DECISION_COLORS, timeline

    tl = timeline(load_events(events))
    changed: dict[tuple[int, str], str] = {}
    if replay is not None:
        for change in replay.changed:
            if change.kind == "execute" and change.after is not None and change.action_id:
                changed[(change.sequence, change.action_id)] = change.after[0]
    start = parse_timestamp_ns(tl.started_at) if tl.started_at else 0
    points = [
        (call, (parse_timestamp_ns(call.decided_at or call.started_at) - start) / 1e9)
        for call in tl.calls
    ]
    lanes = list(dict.fromkeys(call.action_id for call in tl.calls))
    left, right, lane_h = 190, 90, 26
    top = 34 if title else 14
    height = top + lane_h * max(len(lanes), 1) + 46
    span = max((seconds for _, seconds in points), default=0.0) or 1.0
    plot_w = max(width - left - right, 100)

    def x(seconds: float) -> str:
        return f"{left + plot_w * seconds / span:.1f}"

    e = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" '
        f'role="img" aria-label="Decisions over time">'
    ]
    if title:
        parts.append(f'<text x="{left}" y="18" font-size="13" font-weight="bold">{e(title)}</text>')
    for index, lane in enumerate(lanes):
        y = top + lane_h * index + lane_h / 2
        parts.append(
            f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{e(lane)}</text>'
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
        )
    lines = []
    for call, seconds in points:
        y = top + lane_h * lanes.index(call.action_id) + lane_h / 2
        why = call.approver or call.reason or call.policy_id or ""
        parts.append(
            f'<circle cx="{x(seconds)}" cy="{y:.1f}" r="5" fill="{DECISION_COLORS[call.status]}">'
            f"<title>#{call.sequence} {e(call.action_id)}: {call.status} ({e(why)})</title>"
            "</circle>"
        )
        if call.shadow:
            parts.append(
                f'<circle cx="{x(seconds)}" cy="{y:.1f}" r="7" fill="none" stroke="#555" '
                'stroke-dasharray="2 2"/>'
            )
        after = changed.get((call.sequence, call.action_id))
        if after is not None:
            ring = _REPLAY_COLOURS.get(after, "#555")
            parts.append(
                f'<circle cx="{x(seconds)}" cy="{y:.1f}" r="9" fill="none" stroke="{ring}" '
                f'stroke-width="2"/><text x="{float(x(seconds)) + 12:.1f}" y="{y + 4:.1f}" '
                f'fill="{ring}">→ {e(after)}</text>'
            )
        lines.append(
            f"{seconds:8.3f}s  #{call.sequence:<4} {call.action_id:<24} {call.status}"
            + (" (shadow)" if call.shadow else "")
            + (f"  -> {after}" if after is not None else "")
        )
    axis_y = top + lane_h * max(len(lanes), 1) + 4
    parts.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{axis_y}" y2="{axis_y}" stroke="#888"/>'
        f'<text x="{left}" y="{axis_y + 14}">0 s</text>'
        f'<text x="{left + plot_w}" y="{axis_y + 14}" text-anchor="end">'
        f"{span if points else 0:.3f} s</text>"
    )
    legend_x = left - 150
    for name, colour in DECISION_COLORS.items():
        parts.append(
            f'<circle cx="{legend_x}" cy="{axis_y + 30}" r="5" fill="{colour}"/>'
            f'<text x="{legend_x + 8}" y="{axis_y + 34}">{e(name)}</text>'
        )
        legend_x += 75
    if replay is not None:
        parts.append(
            f'<circle cx="{legend_x}" cy="{axis_y + 30}" r="7" fill="none" stroke="#555" '
            f'stroke-width="2"/><text x="{legend_x + 10}" y="{axis_y + 34}">'
            f"would change ({len(changed)})</text>"
        )
    parts.append("</svg>")
    return Rendered("".join(parts), "\n".join(lines) or "(no tool calls)")
