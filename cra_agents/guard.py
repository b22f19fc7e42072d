"""The two-line integration: ``cra.configure(...)`` and ``@cra.guarded``.

::

    import cra_agents as cra

    cra.configure(atlases=["examples/atlases/github-ops"])

    @cra.guarded("github.issue.create")
    def create_issue(repo: str, title: str) -> dict: ...

    with cra.session(agent_id="triage-bot", goal="Triage new issues"):
        create_issue("acme/app", "Crash on start")   # decided, run with frozen args, traced

A call outside any ``cra.session`` block runs in one implicit session per process (agent id
``cra-implicit``), unless ``configure(implicit_sessions=False)``, which makes such calls raise.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from cra_agents._exceptions import (
    ActionDeniedError,
    ActionNotFoundError,
    CRAError,
    InvalidParametersError,
    InvalidRequestError,
)
from cra_agents.atlas import AtlasSource
from cra_agents.runtime import Authorization, Runtime, SessionInfo
from cra_agents.runtime._approvals import ApprovalHandler
from cra_agents.trace import TraceStore
from cra_agents.trace._collector import Durability

if TYPE_CHECKING:
    from cra_agents.otel import OTelSpec, SessionSpan, ToolSpan

__all__ = [
    "ActiveSession",
    "call_session",
    "configure",
    "current_session",
    "get_runtime",
    "guarded",
    "session",
    "shutdown",
]

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_runtime: Runtime | None = None
_implicit: SessionInfo | None = None
_implicit_allowed = True
_current: contextvars.ContextVar[ActiveSession | None] = contextvars.ContextVar(
    "cra_session", default=None
)


@dataclass(frozen=True, slots=True)
class ActiveSession:
    """The session a ``cra.session`` block opened."""

    info: SessionInfo
    runtime: Runtime

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self.info.session_id


def configure(
    atlases: Iterable[AtlasSource],
    *,
    store: TraceStore | str | os.PathLike[str] | None = None,
    durability: Durability = "async",
    approvals: ApprovalHandler = "auto_deny",
    approval_timeout: float = 300.0,
    shadow: bool = False,
    default_deny: bool = False,
    implicit_sessions: bool = True,
    otel: OTelSpec = None,
) -> Runtime:
    """Set up the default runtime used by :func:`guarded` and :func:`session`.

    ``otel`` turns on spans: an OTLP endpoint (``"http://127.0.0.1:4318"``,
    ``"grpc://127.0.0.1:4317"``), ``True`` for the application's global tracer provider, a
    ``TracerProvider``, or an :class:`cra_agents.otel.OTelConfig` (see :mod:`cra_agents.otel`).

    Replaces (and closes) a previously configured runtime. The runtime is closed at exit.
    """
    global _runtime, _implicit, _implicit_allowed
    runtime = Runtime(
        atlases,
        store=store,
        durability=durability,
        approval_handler=approvals,
        approval_timeout=approval_timeout,
        shadow=shadow,
        default_deny=default_deny,
        otel=otel,
    )
    with _lock:
        previous, _runtime, _implicit = _runtime, runtime, None
        _implicit_allowed = implicit_sessions
    if previous is not None:
        previous.close()
    return runtime


def get_runtime() -> Runtime:
    """The configured runtime.

    Raises:
        InvalidRequestError: :func:`configure` was not called.
    """
    runtime = _runtime
    if runtime is None:
        raise InvalidRequestError(
            "cra_agents is not configured: call cra.configure(atlases=[...]) first",
            details={"reason": "not_configured"},
        )
    return runtime


@atexit.register
def shutdown() -> None:
    """Flush and close the configured runtime (also runs at interpreter exit)."""
    global _runtime, _implicit
    with _lock:
        runtime, _runtime, _implicit = _runtime, None, None
    if runtime is not None:
        runtime.close()


def current_session() -> ActiveSession | None:
    """The innermost active ``cra.session`` of this thread or task, if any."""
    return _current.get()


class _SessionScope:
    """``cra.session(...)``: a context manager for ``with`` and ``async with``."""

    def __init__(self, agent_id: str, goal: str, metadata: dict[str, Any] | None) -> None:
        self._args = (agent_id, goal, metadata)
        self._active: ActiveSession | None = None
        self._token: contextvars.Token[ActiveSession | None] | None = None
        self._span: SessionSpan | None = None
        self._span_token: object = None

    def _enter(self) -> ActiveSession:
        agent_id, goal, metadata = self._args
        runtime = get_runtime()
        parent = _current.get()
        info = runtime.create_session(
            agent_id,
            goal,
            metadata=metadata,
            parent_session_id=parent.session_id if parent is not None else None,
        )
        self._active = ActiveSession(info, runtime)
        self._token = _current.set(self._active)
        if runtime.telemetry is not None:
            self._span = runtime.telemetry.session_span(info, shadow=runtime.shadow)
            if self._span is not None:
                self._span_token = self._span.activate()
        return self._active

    def _exit(self, exc: BaseException | None) -> None:
        active = self._active
        if self._token is not None:
            _current.reset(self._token)
        if active is None:
            return
        span = self._span
        if span is not None:
            span.deactivate(self._span_token)
            if exc is not None:
                span.errored(exc)
        try:
            active.runtime.end_session(
                active.session_id,
                "error" if exc is not None else "completed",
                error=f"{type(exc).__name__}: {exc}" if exc is not None else None,
                watch=span.end_watcher() if span is not None else None,
            )
        except CRAError:
            if span is not None:
                span.finish(abandon_watchers=True)
            if exc is None:
                raise
        else:
            if span is not None:
                span.finish()

    def __enter__(self) -> ActiveSession:
        return self._enter()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._exit(exc)

    async def __aenter__(self) -> ActiveSession:
        return self._enter()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._exit(exc)


def session(agent_id: str, goal: str, *, metadata: dict[str, Any] | None = None) -> _SessionScope:
    """Open a session for the block (``with`` or ``async with``).

    Starts with ``session.started`` and ends with ``session.ended`` (reason ``completed``, or
    ``error`` with the exception when the block raised). A session opened inside another
    records the outer one as ``parent_session_id``.
    """
    return _SessionScope(agent_id, goal, metadata)


def _session_for_call() -> tuple[Runtime, str]:
    global _implicit
    active = _current.get()
    if active is not None:
        return active.runtime, active.session_id
    runtime = get_runtime()
    if not _implicit_allowed:
        raise InvalidRequestError(
            "a guarded call outside any cra.session(...) block, and implicit sessions are off",
            details={"reason": "no_session"},
        )
    with _lock:
        if _implicit is None or _runtime is not runtime:
            _implicit = runtime.create_session(
                "cra-implicit", f"implicit session of process {os.getpid()}"
            )
        return runtime, _implicit.session_id


def call_session() -> tuple[Runtime, str]:
    """The runtime and session a guarded call made now would use.

    The innermost ``cra.session`` of this thread or task, else the implicit session of the
    configured runtime. For integrations that gate calls themselves (e.g. LangChain tools).

    Raises:
        InvalidRequestError: not configured, or outside a session with implicit sessions off.
    """
    return _session_for_call()


def _resolve_action(runtime: Runtime, explicit: str | None, func: Callable[..., Any]) -> str:
    if explicit is not None:
        return explicit
    name = func.__name__
    matches = [
        action.action_id
        for atlas in runtime.atlases
        for action in atlas.actions
        if name in (action.executor, action.name)
    ]
    if len(matches) == 1:
        return matches[0]
    atlases = ", ".join(a.atlas_id for a in runtime.atlases) or "none"
    if not matches:
        raise ActionNotFoundError(
            f"no action of the loaded atlases ({atlases}) has executor or name {name!r}; "
            f"pass the id: @cra.guarded('<action.id>')",
            details={"tool": name},
        )
    raise ActionNotFoundError(
        f"{name!r} matches several actions ({', '.join(matches)}); pass the id explicitly",
        details={"tool": name, "candidates": matches},
    )


def _fail_closed(runtime: Runtime, session_id: str, action_id: str, exc: Exception) -> CRAError:
    """Any unexpected failure while deciding denies; the denial is recorded if possible."""
    if isinstance(exc, CRAError):
        return exc
    try:
        chain = runtime._session(session_id).chain
        runtime._collector.committed(
            chain,
            chain.append(
                "action.denied",
                {
                    "action_id": action_id,
                    "reason": "internal_error",
                    "policy_id": "cra-internal",
                    "error": f"{type(exc).__name__}: {exc}"[:500],
                },
            ),
        )
    except Exception:  # noqa: BLE001, S110 - recording is best effort here; we deny anyway
        pass
    error = ActionDeniedError(
        f"{action_id} denied: the decision failed ({type(exc).__name__}: {exc})",
        action_id=action_id,
        policy_id="cra-internal",
        reason="internal_error",
    )
    error.__cause__ = exc
    return error


def _flatten(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Bind a call to named tool arguments: ``**kwargs`` spread out, ``*args`` as a list.

    Raises:
        TypeError: the call does not fit the signature, as the plain call would.
    """
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    arguments: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            extra = value
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                arguments[name] = list(value)
        else:
            arguments[name] = value
    clash = arguments.keys() & extra.keys()
    if clash:
        raise TypeError(
            f"keyword argument(s) {', '.join(sorted(clash))} clash with parameter names of "
            f"the guarded function; rename them"
        )
    arguments.update(extra)
    return arguments


def _unflatten(
    signature: inspect.Signature, values: dict[str, Any], receiver: Any, has_receiver: bool
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call :func:`_flatten` describes, rebuilt from the frozen arguments."""
    args: list[Any] = []
    kwargs = dict(values)
    parameters = list(signature.parameters.values())
    if has_receiver:
        args.append(receiver)
        parameters = parameters[1:]
    for parameter in parameters:
        kind = parameter.kind
        if kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            args.append(kwargs.pop(parameter.name))
        elif kind is parameter.VAR_POSITIONAL:
            args.extend(kwargs.pop(parameter.name, ()))
    return tuple(args), kwargs


def _refused(
    runtime: Runtime, session_id: str, action_id: str, exc: Exception, span: ToolSpan | None
) -> CRAError:
    """The error a refused call raises; its span (if any) is marked denied and ended."""
    error = _fail_closed(runtime, session_id, action_id, exc)
    if span is not None:
        span.denied(error)
        # Refusals the runtime recorded end the span once the action.denied event is stored;
        # anything else (trace unavailable, session ended...) may never be stored: end now.
        span.finish(
            abandon_watchers=not isinstance(exc, ActionDeniedError | InvalidParametersError)
        )
    return error


def _record(
    runtime: Runtime,
    auth: Authorization,
    span: ToolSpan,
    *,
    result: Any = None,
    error: BaseException | None = None,
) -> None:
    try:
        runtime.record_outcome(auth, result=result, error=error, watch=span.outcome_watcher())
    except BaseException:
        span.finish(abandon_watchers=True)
        raise
    span.finish()


@overload
def guarded(action: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def guarded(
    action: str | None = None, /, *, tool_call_id: str | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def guarded(
    action: str | Callable[P, R] | None = None, /, *, tool_call_id: str | None = None
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Gate every call of a function through CARP and record it in TRACE.

    ``@cra.guarded("action.id")`` names the action; bare ``@cra.guarded`` maps the function to
    the action whose ``executor`` or ``name`` equals the function's name. Works on functions,
    async functions and methods; keeps the signature and ``__wrapped__``.

    Per call: the arguments are bound and deep-copied, their digest is decided on, and the
    function runs with that copy (later changes to the caller's objects never reach it).
    Allowed → ``action.executed`` (duration, result hash) or ``action.failed`` and the
    function's exception re-raised unchanged. Denied → :class:`ActionDeniedError` (action,
    policy, reason) and the function does not run. Any internal failure denies (fail closed).
    """
    if callable(action):
        return guarded()(action)
    explicit = action

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(func)
        cache: dict[int, str] = {}
        names = list(signature.parameters)
        # Plain parameters (no *args, **kwargs or positional-only): the frozen arguments can be
        # passed back by keyword without re-binding.
        by_keyword = all(
            p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            for p in signature.parameters.values()
        )

        def action_id_for(runtime: Runtime) -> str:
            key = id(runtime)
            hit = cache.get(key)
            if hit is None:
                hit = cache[key] = _resolve_action(runtime, explicit, func)
            return hit

        positional = [
            p.name for p in signature.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD
        ]
        defaults = {
            p.name: p.default
            for p in signature.parameters.values()
            if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        known = frozenset(names)
        has_receiver = bool(names) and names[0] in ("self", "cls")

        def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
            arguments: dict[str, Any] | None = None
            if by_keyword and len(args) <= len(positional):
                # The common case without inspect: names for the positional values, the
                # keywords, then the defaults; anything unusual goes to Signature.bind.
                candidate = dict(zip(positional, args, strict=False))
                if not kwargs or candidate.keys().isdisjoint(kwargs):
                    candidate.update(kwargs)
                    for name, default in defaults.items():
                        candidate.setdefault(name, default)
                    if len(candidate) == len(known) and candidate.keys() <= known:
                        arguments = candidate
            if arguments is None:
                arguments = _flatten(signature, args, kwargs)
            # "self"/"cls" are the receiver, not tool input: kept out of the decision.
            receiver = arguments.pop(names[0]) if has_receiver else None
            return arguments, receiver

        def call_with(auth: Authorization, receiver: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if by_keyword:
                return ((receiver,) if has_receiver else ()), auth.arguments
            return _unflatten(signature, auth.arguments, receiver, has_receiver)

        def start(
            runtime: Runtime, session_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[str, dict[str, Any], Any, ToolSpan | None]:
            arguments, receiver = bind(args, kwargs)  # a TypeError, as the plain call would
            try:
                action_id = action_id_for(runtime)
            except Exception as exc:  # noqa: BLE001 - fail closed, see _fail_closed
                raise _fail_closed(runtime, session_id, explicit or "unmapped", exc) from None
            telemetry = runtime.telemetry
            span = None
            if telemetry is not None:
                span = telemetry.tool_span(
                    runtime, session_id, action_id, func.__name__, tool_call_id=tool_call_id
                )
            return action_id, arguments, receiver, span

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                runtime, session_id = _session_for_call()
                action_id, arguments, receiver, span = start(runtime, session_id, args, kwargs)
                try:
                    auth = await runtime.aauthorize(
                        session_id,
                        action_id,
                        arguments,
                        tool_call_id=tool_call_id,
                        watch=span.decision_watcher() if span is not None else None,
                    )
                    call_args, call_kwargs = call_with(auth, receiver)
                except Exception as exc:  # noqa: BLE001 - fail closed, see _fail_closed
                    raise _refused(runtime, session_id, action_id, exc, span) from None
                if span is None:
                    try:
                        result = await func(*call_args, **call_kwargs)
                    except BaseException as error:
                        runtime.record_outcome(auth, error=error)
                        raise
                    runtime.record_outcome(auth, result=result)
                    return result
                span.allowed(auth)
                token = span.activate()
                try:
                    result = await func(*call_args, **call_kwargs)
                except BaseException as error:
                    span.deactivate(token)
                    span.failed(error)
                    _record(runtime, auth, span, error=error)
                    raise
                span.deactivate(token)
                span.executed(result)
                _record(runtime, auth, span, result=result)
                return result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            runtime, session_id = _session_for_call()
            action_id, arguments, receiver, span = start(runtime, session_id, args, kwargs)
            try:
                auth = runtime.authorize(
                    session_id,
                    action_id,
                    arguments,
                    tool_call_id=tool_call_id,
                    watch=span.decision_watcher() if span is not None else None,
                )
                call_args, call_kwargs = call_with(auth, receiver)
            except Exception as exc:  # noqa: BLE001 - fail closed, see _fail_closed
                raise _refused(runtime, session_id, action_id, exc, span) from None
            if span is None:
                try:
                    result = func(*call_args, **call_kwargs)
                except BaseException as error:
                    runtime.record_outcome(auth, error=error)
                    raise
                runtime.record_outcome(auth, result=result)
                return result
            span.allowed(auth)
            token = span.activate()
            try:
                result = func(*call_args, **call_kwargs)
            except BaseException as error:
                span.deactivate(token)
                span.failed(error)
                _record(runtime, auth, span, error=error)
                raise
            span.deactivate(token)
            span.executed(result)
            _record(runtime, auth, span, result=result)
            return result

        return wrapper

    return decorate
