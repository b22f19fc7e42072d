"""``CRACallbackHandler``: LangChain run events into the session's TRACE chain.

Callbacks observe; they cannot reliably stop a tool (``CRAMiddleware`` and ``guard_tool``
enforce). What this handler records, as extension events of the session chain:

``langchain.llm.started`` / ``.ended`` / ``.failed``, ``langchain.tool.started`` / ``.ended``
/ ``.failed``, ``langchain.chain.started`` / ``.ended`` / ``.failed`` (chains only with
``chains=True``: a LangGraph run has one per node).

Each payload carries ``run_id`` and ``parent_run_id``; tool events carry ``tool_call_id``, the
same id the guarded call's ``action.requested`` records, which correlates the two. Contents
(prompts, tool inputs and outputs) are recorded as SHA-256 digests only, unless
``capture_content=True``.

Errors inside the handler are logged and never raised into the host (``raise_error`` is
False), except in ``enforce=True`` mode, see :class:`CRACallbackHandler`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import orjson
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

import cra_agents as cra
from cra_agents import Call, Runtime
from cra_agents.guard import call_session
from cra_agents_langchain._common import runtime_or_default

__all__ = ["CRACallbackHandler"]

logger = logging.getLogger(__name__)


class CRACallbackHandler(BaseCallbackHandler):
    """Record LangChain run events in a CRA session; optionally refuse tools (``enforce``).

    Args:
        runtime: The runtime (default: the configured one).
        session_id: The session to record into (default: the active ``cra.session``, else the
            implicit session).
        capture_content: Record prompts, inputs and outputs themselves, not only digests.
        chains: Also record chain (graph node) start and end.
        enforce: Decide every tool call through the runtime's gate (``Runtime.call``) from
            ``on_tool_start``: the decision is recorded as for any guarded call, the approver is
            asked when a policy says so, and ``on_tool_end`` / ``on_tool_error`` record the
            outcome. This sets ``raise_error = True``; a refusal then raises
            :class:`cra_agents.ActionDenied` (or ``InvalidParametersError`` /
            ``ActionNotFoundError``) out of the whole run (not as a message the model reads),
            and the tool does not run. The tool runs with its own arguments (a callback cannot
            replace them), so prefer ``CRAMiddleware`` or ``guard_tool``, which run it with the
            decided ones. It can block only when LangChain runs this handler synchronously: it
            is a sync handler, so it blocks in ``invoke``/``stream`` and in
            ``ainvoke``/``astream`` alike. It cannot block a tool that is called without
            callbacks, and an *async* copy of this logic would fail open on the sync path
            (LangChain swallows those errors).
    """

    def __init__(
        self,
        runtime: Runtime | None = None,
        *,
        session_id: str | None = None,
        capture_content: bool = False,
        chains: bool = False,
        enforce: bool = False,
        actions: Mapping[str, str] | None = None,
    ) -> None:
        self._runtime = runtime
        self._session_id = session_id
        self.capture_content = capture_content
        self.chains = chains
        self.enforce = enforce
        self.actions = dict(actions or {})
        self.raise_error = enforce
        #: Events that could not be recorded (logged).
        self.errors = 0
        # run_id -> the enforced call awaiting its outcome (handlers may run in threads).
        self._calls: dict[UUID, Call] = {}
        self._lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------

    def _target(self) -> tuple[Runtime, str]:
        runtime = runtime_or_default(self._runtime)
        if self._session_id is not None:
            return runtime, self._session_id
        active = cra.current_session()
        if active is not None and active.runtime is runtime:
            return runtime, active.session_id
        if self._runtime is None:
            return call_session()
        info = runtime.create_session("langchain-callbacks", "LangChain run events")
        self._session_id = info.session_id
        return runtime, info.session_id

    def _record(
        self, event_type: str, run_id: UUID, parent_run_id: UUID | None, **data: Any
    ) -> None:
        try:
            runtime, session_id = self._target()
            payload = {"run_id": str(run_id), **{k: v for k, v in data.items() if v is not None}}
            if parent_run_id is not None:
                payload["parent_run_id"] = str(parent_run_id)
            runtime.record_event(session_id, event_type, payload)
        except Exception:
            self.errors += 1
            logger.warning(
                "CRACallbackHandler could not record %s (ignored)", event_type, exc_info=True
            )

    def _content(self, value: Any) -> dict[str, Any]:
        try:
            data = orjson.dumps(
                value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=repr
            )
        except (TypeError, orjson.JSONEncodeError):
            data = repr(value).encode("utf-8", "replace")
        out: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest()}
        if self.capture_content:
            out["content"] = data.decode()[:8192]
        return out

    # -- model ----------------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """``langchain.llm.started`` (model, message count, digest of the conversation)."""
        flat = [m.model_dump(mode="json") for batch in messages for m in batch]
        self._record(
            "langchain.llm.started",
            run_id,
            parent_run_id,
            model=_name(serialized, kwargs),
            message_count=len(flat),
            messages=self._content(flat),
        )

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """``langchain.llm.started`` for text models."""
        self._record(
            "langchain.llm.started",
            run_id,
            parent_run_id,
            model=_name(serialized, kwargs),
            message_count=len(prompts),
            messages=self._content(prompts),
        )

    def on_llm_end(
        self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """``langchain.llm.ended`` (the tool calls the model asked for, token usage)."""
        calls: list[dict[str, Any]] = []
        for generation in (g for batch in response.generations for g in batch):
            message = getattr(generation, "message", None)
            for call in getattr(message, "tool_calls", None) or []:
                calls.append({"name": call.get("name"), "tool_call_id": call.get("id")})
        usage = (response.llm_output or {}).get("token_usage")
        self._record(
            "langchain.llm.ended",
            run_id,
            parent_run_id,
            tool_calls=calls,
            token_usage=usage if isinstance(usage, dict) else None,
        )

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """``langchain.llm.failed``."""
        self._record("langchain.llm.failed", run_id, parent_run_id, **_error(error))

    # -- tools ----------------------------------------------------------------------------

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """``langchain.tool.started``; with ``enforce``, refuse what the runtime would deny."""
        name = str(serialized.get("name") or kwargs.get("name") or "tool")
        call_id = kwargs.get("tool_call_id")
        self._record(
            "langchain.tool.started",
            run_id,
            parent_run_id,
            tool=name,
            tool_call_id=call_id,
            input=self._content(inputs if inputs is not None else input_str),
        )
        if self.enforce:
            runtime, session_id = self._target()
            call = runtime.call(
                name,
                dict(inputs or {}),
                actions=self.actions,
                session_id=session_id,
                tool_call_id=call_id,
            )
            runtime.gate_sync(call)  # a refusal raises, recorded; the tool does not run
            with self._lock:
                self._calls[run_id] = call

    def _finish(
        self, run_id: UUID, *, result: Any = None, error: BaseException | None = None
    ) -> None:
        """Record the outcome of an enforced call (``on_tool_end`` / ``on_tool_error``)."""
        with self._lock:
            call = self._calls.pop(run_id, None)
        if call is None:
            return
        try:
            runtime = runtime_or_default(self._runtime)
            runtime.record_outcome(call, result=result, error=error)
        except Exception:
            self.errors += 1
            logger.warning("CRACallbackHandler could not record a tool outcome", exc_info=True)

    def on_tool_end(
        self, output: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """``langchain.tool.ended`` (and, with ``enforce``, the call's ``action.executed``)."""
        if self.enforce:
            self._finish(run_id, result=_plain(getattr(output, "content", output)))
        self._record(
            "langchain.tool.ended",
            run_id,
            parent_run_id,
            tool_call_id=getattr(output, "tool_call_id", None),
            status=getattr(output, "status", None),
            output=self._content(getattr(output, "content", output)),
        )

    def on_tool_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """``langchain.tool.failed`` (and, with ``enforce``, the call's ``action.failed``)."""
        if self.enforce:
            self._finish(run_id, error=error)
        self._record(
            "langchain.tool.failed",
            run_id,
            parent_run_id,
            tool_call_id=kwargs.get("tool_call_id"),
            **_error(error),
        )

    # -- chains ---------------------------------------------------------------------------

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: dict[str, Any] | Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """``langchain.chain.started`` (with ``chains=True``)."""
        if self.chains:
            self._record(
                "langchain.chain.started",
                run_id,
                parent_run_id,
                name=_name(serialized or {}, kwargs),
            )

    def on_chain_end(
        self,
        outputs: dict[str, Any] | Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """``langchain.chain.ended`` (with ``chains=True``)."""
        if self.chains:
            self._record("langchain.chain.ended", run_id, parent_run_id)

    def on_chain_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """``langchain.chain.failed`` (with ``chains=True``)."""
        if self.chains:
            self._record("langchain.chain.failed", run_id, parent_run_id, **_error(error))


def _name(serialized: Mapping[str, Any], kwargs: Mapping[str, Any]) -> str:
    name = kwargs.get("name") or serialized.get("name")
    if not name:
        ids: Sequence[Any] = serialized.get("id") or []
        name = ids[-1] if ids else "unknown"
    return str(name)


def _error(error: BaseException) -> dict[str, Any]:
    return {"error_type": type(error).__name__, "error_message": str(error)[:2000]}


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | list | dict) else repr(value)
