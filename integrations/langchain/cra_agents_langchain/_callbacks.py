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

Which session: the handler's ``session_id``, else the active ``cra.session``, else, inside a
``create_agent`` run with ``CRAMiddleware``, the middleware's session for that run (the
middleware announces it to the handlers of the run at each model call, and per LangGraph
``thread_id`` for nodes no model call of this process announced, e.g. a resume into the
tools node), else the runtime's implicit session (or, with an explicit ``runtime``, one of
the handler's own). Chain events of a run wait for its first model or tool event (or its
end) to learn which, so no session is opened for them alone.

Errors inside the handler are logged and never raised into the host (``raise_error`` is
False). With ``enforce=True`` only a refused tool raises: a model call, a message or an
output the trace cannot carry as it is is recorded as a digest, never aborts the run.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar, cast
from uuid import UUID

import orjson
from langchain_core.callbacks import BaseCallbackHandler, BaseCallbackManager
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult
from langchain_core.runnables.config import var_child_runnable_config

import cra_agents as cra
from cra_agents import Call, InvalidRequestError, Runtime, SessionEndedError
from cra_agents.guard import call_session
from cra_agents_langchain._common import THREAD_SESSIONS, runtime_or_default

__all__ = ["CRACallbackHandler", "announce_session"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., None])

#: Runs whose parent or session the handler keeps at once (a bound on leaked runs).
_RUNS_MAX = 10_000
#: How far up the run tree to look (a guard against a malformed tree).
_DEPTH_MAX = 256


class _Target(NamedTuple):
    runtime: Runtime
    session_id: str
    #: A middleware's session: it may end before the run's last events (which are dropped).
    announced: bool = False


def announce_session(runtime: Runtime, session_id: str) -> None:
    """Tell the callback handlers of the current LangGraph node which session records it.

    Called by ``CRAMiddleware`` inside ``wrap_model_call``: the run's ``CRACallbackHandler``
    instances bind the model node's run (and the graph run above it, whose tools node runs
    too) to ``session_id``, and the thread's entry in ``THREAD_SESSIONS`` is refreshed.
    Does nothing outside a runnable context.
    """
    config = var_child_runnable_config.get()
    if not config:
        return
    thread = (config.get("configurable") or {}).get("thread_id")
    if thread is not None:
        THREAD_SESSIONS.put(str(thread), runtime, session_id)
    manager = config.get("callbacks")
    if not isinstance(manager, BaseCallbackManager) or manager.parent_run_id is None:
        return
    for handler in manager.handlers:
        if isinstance(handler, CRACallbackHandler):
            handler._bind(manager.parent_run_id, _Target(runtime, session_id, announced=True))


def _observes(method: F) -> F:
    """Guard an observing callback: whatever goes wrong is logged, never raised.

    With ``enforce=True`` LangChain re-raises handler errors into the run (``raise_error``),
    so every callback but the tool decision itself must not raise.
    """

    @functools.wraps(method)
    def guarded(self: CRACallbackHandler, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception:
            self.errors += 1
            logger.warning("CRACallbackHandler.%s failed (ignored)", method.__name__, exc_info=True)

    return cast("F", guarded)


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
        # Chain and tool runs -> their parent; runs -> the target their start went to; runs
        # a middleware announced its session for; root run -> chain events waiting for one.
        self._parents: dict[UUID, UUID | None] = {}
        self._targets: dict[UUID, _Target] = {}
        self._bound: dict[UUID, _Target] = {}
        self._held: dict[UUID, list[tuple[str, dict[str, Any]]]] = {}
        self._lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------

    def _fixed(self) -> _Target | None:
        """The handler's own session, or the active ``cra.session`` of its runtime."""
        runtime = runtime_or_default(self._runtime)
        if self._session_id is not None:
            return _Target(runtime, self._session_id)
        active = cra.current_session()
        if active is not None and active.runtime is runtime:
            return _Target(runtime, active.session_id)
        return None

    def _fallback(self) -> _Target:
        """No session was named or announced: the implicit one, or the handler's own."""
        if self._runtime is None:
            return _Target(*call_session())
        runtime = self._runtime
        if self._session_id is None:
            info = runtime.create_session("langchain-callbacks", "LangChain run events")
            self._session_id = info.session_id
        return _Target(runtime, self._session_id)

    def _bind(self, node_run_id: UUID, target: _Target) -> None:
        """A middleware's session records ``node_run_id`` and the graph run above it."""
        with self._lock:
            self._bound[node_run_id] = target
            graph = self._parents.get(node_run_id)
            if graph is not None:
                self._bound[graph] = target
            _trim(self._bound)

    def _announced(self, run_id: UUID, parent_run_id: UUID | None) -> tuple[_Target | None, UUID]:
        """The nearest announced session above the run (or of it), and the run's root."""
        bound, parents = self._bound, self._parents
        found: _Target | None = None
        node: UUID | None = run_id
        root = run_id
        for _ in range(_DEPTH_MAX):  # up to the root: held chain events wait under it
            if node is None:
                break
            if found is None:
                found = bound.get(node)
            root = node
            node = parents.get(node, parent_run_id if node == run_id else None)
        return found, root

    def _resolve(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: Mapping[str, Any] | None,
        *,
        chain: bool,
        ends: bool,
    ) -> tuple[_Target | None, UUID]:
        """Where the run's event goes (None: a chain event that waits), and its root run."""
        with self._lock:
            target = self._targets.get(run_id)
            announced, root = self._announced(run_id, parent_run_id)
        if target is not None:
            return target, root
        fixed = self._fixed()
        if fixed is not None:
            return fixed, root
        if announced is not None:
            return announced, root
        runtime = runtime_or_default(self._runtime)
        thread = (metadata or {}).get("thread_id")
        if thread is not None:
            session_id = THREAD_SESSIONS.get(str(thread), runtime)
            if session_id is not None:
                return _Target(runtime, session_id, announced=True), root
        if chain and not (ends and root == run_id):
            return None, root  # a chain event of a run whose session is not known yet
        return self._fallback(), root

    def _record(
        self,
        event_type: str,
        run_id: UUID,
        parent_run_id: UUID | None,
        *,
        metadata: Mapping[str, Any] | None = None,
        starts: bool = False,
        ends: bool = False,
        **data: Any,
    ) -> _Target | None:
        """Record the event; ``starts``: a chain or tool run (children may follow)."""
        try:
            chain = event_type.startswith("langchain.chain.")
            if starts:
                with self._lock:
                    self._parents[run_id] = parent_run_id
                    _trim(self._parents)
            payload = {"run_id": str(run_id), **{k: v for k, v in data.items() if v is not None}}
            if parent_run_id is not None:
                payload["parent_run_id"] = str(parent_run_id)
            target, root = self._resolve(run_id, parent_run_id, metadata, chain=chain, ends=ends)
            with self._lock:
                if ends:
                    self._parents.pop(run_id, None)
                    self._targets.pop(run_id, None)
                    self._bound.pop(run_id, None)
                if target is None:
                    self._held.setdefault(root, []).append((event_type, payload))
                    return None
                held = self._held.pop(root, [])
                if not ends and event_type.endswith(".started"):
                    self._targets[run_id] = target
                    _trim(self._targets)
            for waiting in held:
                self._write(target, *waiting)
            self._write(target, event_type, payload)
            return target
        except Exception:
            self.errors += 1
            logger.warning(
                "CRACallbackHandler could not record %s (ignored)", event_type, exc_info=True
            )
            return None

    def _write(self, target: _Target, event_type: str, payload: dict[str, Any]) -> None:
        runtime, session_id, announced = target
        try:
            runtime.record_event(session_id, event_type, payload)
        except SessionEndedError:
            if not announced:
                raise
            # The middleware ended its session with the run's last reply: the graph's own
            # closing events (node and graph ends) come after it and have nowhere to go.
            logger.debug("CRACallbackHandler: %s after its session ended", event_type)
        except InvalidRequestError as error:
            if (error.details or {}).get("reason") == "reserved_event_type":
                raise
            # A value the trace cannot carry exactly (an object in token usage, a NaN): its
            # digest instead, and which fields were digested.
            digested = sorted(k for k, v in payload.items() if not _plain_scalar(v))
            safe = {k: v if k not in digested else self._content(v) for k, v in payload.items()}
            runtime.record_event(session_id, event_type, {**safe, "digested": digested})

    def _content(self, value: Any) -> dict[str, Any]:
        try:
            data = orjson.dumps(
                value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=_text
            )
        except (TypeError, orjson.JSONEncodeError):
            data = _text(value).encode("utf-8", "replace")
        out: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest()}
        if self.capture_content:
            out["content"] = data.decode()[:8192]
        return out

    # -- model ----------------------------------------------------------------------------

    @_observes
    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """``langchain.llm.started`` (model, message count, digest of the conversation)."""
        flat = [_dump(m) for batch in messages for m in batch]
        self._record(
            "langchain.llm.started",
            run_id,
            parent_run_id,
            metadata=metadata,
            model=_name(serialized, kwargs),
            message_count=len(flat),
            messages=self._content(flat),
        )

    @_observes
    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """``langchain.llm.started`` for text models."""
        self._record(
            "langchain.llm.started",
            run_id,
            parent_run_id,
            metadata=metadata,
            model=_name(serialized, kwargs),
            message_count=len(prompts),
            messages=self._content(prompts),
        )

    @_observes
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
            ends=True,
            tool_calls=calls,
            token_usage=usage if isinstance(usage, dict) else None,
        )

    @_observes
    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """``langchain.llm.failed``."""
        self._record("langchain.llm.failed", run_id, parent_run_id, ends=True, **_error(error))

    # -- tools ----------------------------------------------------------------------------

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        inputs: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """``langchain.tool.started``; with ``enforce``, refuse what the runtime would deny."""
        name = str(serialized.get("name") or kwargs.get("name") or "tool")
        call_id = kwargs.get("tool_call_id")
        target = self._record(
            "langchain.tool.started",
            run_id,
            parent_run_id,
            metadata=metadata,
            starts=True,
            tool=name,
            tool_call_id=call_id,
            input=self._content(inputs if inputs is not None else input_str),
        )
        if self.enforce:
            # Not guarded: deciding the tool is what enforce is for, and it fails closed.
            runtime, session_id, _ = target or self._fixed() or self._fallback()
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

    @_observes
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
            ends=True,
            tool_call_id=getattr(output, "tool_call_id", None),
            status=getattr(output, "status", None),
            output=self._content(getattr(output, "content", output)),
        )

    @_observes
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
            ends=True,
            tool_call_id=kwargs.get("tool_call_id"),
            **_error(error),
        )

    # -- chains ---------------------------------------------------------------------------

    @_observes
    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: dict[str, Any] | Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """``langchain.chain.started`` (with ``chains=True``)."""
        if self.chains:
            self._record(
                "langchain.chain.started",
                run_id,
                parent_run_id,
                metadata=metadata,
                starts=True,
                name=_name(serialized or {}, kwargs),
            )
        else:  # the run tree only: where a middleware's session is announced
            with self._lock:
                self._parents[run_id] = parent_run_id
                _trim(self._parents)

    @_observes
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
            self._record("langchain.chain.ended", run_id, parent_run_id, ends=True)
        else:
            self._forget(run_id)

    @_observes
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
            self._record(
                "langchain.chain.failed", run_id, parent_run_id, ends=True, **_error(error)
            )
        else:
            self._forget(run_id)

    def _forget(self, run_id: UUID) -> None:
        with self._lock:
            self._parents.pop(run_id, None)
            self._bound.pop(run_id, None)


def _name(serialized: Mapping[str, Any], kwargs: Mapping[str, Any]) -> str:
    name = kwargs.get("name") or serialized.get("name")
    if not name:
        ids: Sequence[Any] = serialized.get("id") or []
        name = ids[-1] if ids else "unknown"
    return str(name)


def _error(error: BaseException) -> dict[str, Any]:
    return {"error_type": type(error).__name__, "error_message": str(error)[:2000]}


def _dump(message: BaseMessage) -> Any:
    """The message as JSON data; one holding what JSON cannot carry, as Python data."""
    try:
        return message.model_dump(mode="json")
    except Exception:  # noqa: BLE001 - an object in content or kwargs: _content uses its repr
        return message.model_dump()


def _text(value: Any) -> str:
    """``repr(value)``, or its type's name when even that raises."""
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__
        return f"<{type(value).__qualname__}>"


def _plain_scalar(value: Any) -> bool:
    return isinstance(value, str | bool) or (isinstance(value, int) and abs(value) < 2**53)


def _trim(runs: dict[UUID, Any]) -> None:
    """Drop the oldest entries of a run map beyond ``_RUNS_MAX`` (runs that never ended)."""
    while len(runs) > _RUNS_MAX:
        del runs[next(iter(runs))]


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | list | dict) else repr(value)
