"""Approvals: requests shown to a human (or a policy bot) and the answers they give.

An approval is bound to the session, the action, the digest of the exact arguments and the
atlas digest it was decided under; it is single use and expires. Replaying it for other
arguments, another session or action, after expiry, after a reload of the atlas, or twice is
refused.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import getpass
import inspect
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO, TypeAlias

import orjson

__all__ = [
    "Approval",
    "ApprovalDecision",
    "ApprovalHandler",
    "ApprovalRequest",
    "ApprovalStore",
    "Approvers",
    "ConsoleApprover",
    "auto_deny",
    "current_user",
]


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """What an approver is asked to decide."""

    session_id: str
    agent_id: str
    action_id: str
    arguments: Mapping[str, Any]
    digest: str
    risk_tier: str
    reason: str
    policy_id: str


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    """An approver's answer, with who gave it and why.

    ``reason``: what the approver said (recorded as ``approval_reason``), or a refusal code
    starting with ``approval_`` (``approval_timeout``...), recorded as the denial's reason.
    ``original_arguments``: the approver edited the call; the arguments as first requested
    (the call runs with the ones it was given). ``responded``: a refusal where the approver
    answered in the tool's place (LangChain's ``respond``); ``reason`` is that answer.
    """

    approved: bool
    approver: str = "unknown"
    reason: str | None = None
    original_arguments: Mapping[str, Any] | None = None
    responded: bool = False


@dataclass(frozen=True, slots=True)
class Approval:
    """A granted approval: single use, bound to session, action, arguments and atlas."""

    approval_id: str
    session_id: str
    action_id: str
    digest: str
    atlas_digest: str
    approver: str
    expires_at: float  # time.monotonic()
    reason: str | None = None


ApprovalAnswer: TypeAlias = "bool | ApprovalDecision"
ApprovalHandler: TypeAlias = (
    "Callable[[ApprovalRequest], ApprovalAnswer | Awaitable[ApprovalAnswer]]"
    " | Literal['auto_deny', 'console']"
)


def auto_deny(request: ApprovalRequest) -> ApprovalDecision:
    """The default handler: nobody is there to approve, so nothing is approved."""
    return ApprovalDecision(False, approver="auto_deny", reason="no approval handler configured")


class ConsoleApprover:
    """Asks a person at the terminal (``approvals="console"``).

    Prints the request (agent, action, risk, policy, reason, arguments) and reads ``y`` or
    ``n``; anything but ``y``/``yes`` denies. Prompts from parallel calls are asked one at a
    time. Without an interactive terminal nobody can answer, so it denies at once
    (``approval_denied``) rather than waiting for the timeout.

    Args:
        approver: Identity recorded in ``action.approved`` (default ``console:<user>``).
        ask: Reads the answer (default :func:`input`); any other reader is taken as interactive.
        output: Where the request is shown (default stderr).
    """

    def __init__(
        self,
        *,
        approver: str | None = None,
        ask: Callable[[str], str] | None = None,
        output: TextIO | None = None,
    ) -> None:
        self.approver = approver or f"console:{current_user()}"
        self._ask = ask
        self._output = output
        self._lock = threading.Lock()

    def __call__(self, request: ApprovalRequest) -> ApprovalDecision:
        ask = self._ask
        if ask is None:
            if not (sys.stdin and sys.stdin.isatty()):
                return ApprovalDecision(
                    False, self.approver, "approval_denied: no terminal to ask for approval"
                )
            ask = builtins.input
        out = self._output or sys.stderr
        arguments = orjson.dumps(
            request.arguments, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=repr
        ).decode()
        if len(arguments) > 4000:
            arguments = arguments[:4000] + "\n  ... (truncated)"
        with self._lock:
            print(
                f"\n-- approval needed ------------------------------------------\n"
                f"agent    {request.agent_id} (session {request.session_id})\n"
                f"action   {request.action_id}   risk {request.risk_tier}\n"
                f"policy   {request.policy_id}: {request.reason}\n"
                f"arguments (sha256 {request.digest[:16]}...)\n{arguments}",
                file=out,
                flush=True,
            )
            try:
                answer = ask("Approve this call? [y/N] ").strip().lower()
            except EOFError:
                answer = ""
        if answer in ("y", "yes"):
            return ApprovalDecision(True, self.approver, "approved at the console")
        return ApprovalDecision(False, self.approver, "approval_denied")


def current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name (containers): still an identity
        return "unknown"


@dataclass
class ApprovalStore:
    """Approvals granted and not yet used, and the ids of those already used."""

    _granted: dict[str, Approval] = field(default_factory=dict)
    _used: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, approval: Approval) -> None:
        """Keep a granted approval until it is used or expires."""
        with self._lock:
            self._granted[approval.approval_id] = approval

    def consume(
        self,
        approval_id: str,
        *,
        session_id: str,
        action_id: str,
        digest: str,
        atlas_digest: str,
    ) -> tuple[Approval | None, str]:
        """Use an approval once. Returns ``(approval, "")`` or ``(None, why_not)``."""
        with self._lock:
            if approval_id in self._used:
                return None, "approval_already_used"
            approval = self._granted.get(approval_id)
            if approval is None:
                return None, "approval_unknown"
            if approval.expires_at < time.monotonic():
                del self._granted[approval_id]
                return None, "approval_expired"
            for name, want, have in (
                ("session", approval.session_id, session_id),
                ("action", approval.action_id, action_id),
                ("arguments", approval.digest, digest),
                ("atlas", approval.atlas_digest, atlas_digest),
            ):
                if want != have:
                    return None, f"approval_for_other_{name}"
            del self._granted[approval_id]
            self._used.add(approval_id)
            return approval, ""


class Approvers:
    """Who answers approval requests, and how long they may take (``approval_timeout``).

    Sync handlers always run on a worker thread, so the timeout holds for synchronous and
    asynchronous callers alike; a timed-out handler's late answer is ignored. Async handlers
    (and handler objects with an ``async def acall(request)``) are awaited by async callers.
    """

    def __init__(self, handler: ApprovalHandler, timeout: float) -> None:
        self.handler: ApprovalHandler = ConsoleApprover() if handler == "console" else handler
        self.timeout = timeout
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def ask_sync(self, request: ApprovalRequest) -> ApprovalDecision:
        """Ask from synchronous code: the handler runs on a worker thread, with the timeout."""
        handler = self.handler
        if isinstance(handler, str):  # "auto_deny" ("console" became a ConsoleApprover)
            return auto_deny(request)
        if inspect.iscoroutinefunction(handler):
            return ApprovalDecision(
                False, "runtime", "approval_error: the handler is async; call the async API"
            )
        future = self._pool().submit(handler, request)
        try:
            answer = future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            return ApprovalDecision(False, "runtime", "approval_timeout")
        except Exception as exc:  # noqa: BLE001 - a failing approver approves nothing
            return ApprovalDecision(False, "runtime", f"approval_error: {exc!r}")
        if inspect.isawaitable(answer):
            _discard(answer)
            return ApprovalDecision(
                False, "runtime", "approval_error: the handler is async; call the async API"
            )
        return _as_decision(answer)

    async def ask_async(self, request: ApprovalRequest) -> ApprovalDecision:
        """Ask from async code: async handlers awaited, sync ones off the loop; timeout holds."""
        handler = self.handler
        if isinstance(handler, str):  # "auto_deny" ("console" became a ConsoleApprover)
            return auto_deny(request)
        import asyncio  # only async callers get here (import cra_agents stays light)

        deadline = time.monotonic() + self.timeout
        try:
            native = getattr(handler, "acall", None)  # a handler with an async face
            if inspect.iscoroutinefunction(handler):
                result: Any = handler(request)
            elif native is not None and inspect.iscoroutinefunction(native):
                result = native(request)
            else:
                # A sync approver (a console prompt, a blocking UI call) must not block the
                # event loop, and its timeout must hold: it runs in the approval pool.
                loop = asyncio.get_running_loop()
                result = await asyncio.wait_for(
                    loop.run_in_executor(self._pool(), handler, request),
                    timeout=self.timeout,
                )
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(
                    result, timeout=max(deadline - time.monotonic(), 0.0)
                )
        except TimeoutError:
            return ApprovalDecision(False, "runtime", "approval_timeout")
        except Exception as exc:  # noqa: BLE001 - a failing approver approves nothing
            return ApprovalDecision(False, "runtime", f"approval_error: {exc!r}")
        return _as_decision(result)

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=4, thread_name_prefix="cra-approval"
                )
            return self._executor

    def close(self) -> None:
        """Stop the worker threads (answers still pending are ignored)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def _as_decision(answer: object) -> ApprovalDecision:
    if isinstance(answer, ApprovalDecision):
        return answer
    if answer is True:
        return ApprovalDecision(True, "handler")
    return ApprovalDecision(False, "handler", "approval_denied")


def _discard(awaitable: object) -> None:
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()
