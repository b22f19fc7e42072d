"""The two-line integration: ``cra.configure(...)`` and ``@cra.guarded``.

::

    import cra_agents as cra
    from cra_agents.examples import atlas_path

    cra.configure(atlases=[atlas_path("github-ops")])

    @cra.guarded("github.issue.create")
    def create_issue(repo: str, title: str) -> dict: ...

    with cra.session(agent_id="triage-bot", goal="Triage new issues"):
        create_issue("acme/app", "Crash on start")   # decided, run with frozen args, traced

Every call goes through :meth:`Runtime.call` (the one gate). A call belongs to the innermost
``cra.session`` in its context; threads and executors get it through :func:`cra.propagate
<cra_agents.runtime.propagate>`. A call outside every session runs in one implicit session of the
runtime (agent ``cra-implicit``) — unless a ``cra.session`` block is open elsewhere in the
process (the call escaped it: refused), or ``configure(implicit_sessions=False)``.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast, overload

from cra_agents._exceptions import ConfigurationError, CRAError
from cra_agents.atlas import AtlasSource
from cra_agents.runtime import (
    ActiveSession,
    ApprovalHandler,
    Runtime,
    RuntimeObserver,
    SessionScope,
    current_session,
    propagate,
    session_for_call,
)
from cra_agents.trace import Durability, TraceStore, Writer

if TYPE_CHECKING:
    from cra_agents.client import Client

__all__ = [
    "ActiveSession",
    "call_session",
    "configure",
    "current_session",
    "get_runtime",
    "guarded",
    "propagate",
    "session",
    "shutdown",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_runtime: Runtime | None = None


Mode = Literal["embedded", "http", "auto"]


@overload
def configure(
    atlases: Iterable[AtlasSource] = (),
    *,
    mode: Literal["embedded"] = "embedded",
    url: str | None = None,
    api_key: str | None = None,
    token: str | None = None,
    store: TraceStore | str | os.PathLike[str] | None = None,
    durability: Durability = "async",
    writer: Writer = "auto",
    approvals: ApprovalHandler = "auto_deny",
    approval_timeout: float = 300.0,
    shadow: bool = False,
    default_deny: bool = False,
    implicit_sessions: bool = True,
    otel: Any = None,
    observers: Sequence[RuntimeObserver] = (),
) -> Runtime: ...


@overload
def configure(
    atlases: Iterable[AtlasSource] = (),
    *,
    mode: Literal["http", "auto"],
    url: str | None = None,
    api_key: str | None = None,
    token: str | None = None,
    store: TraceStore | str | os.PathLike[str] | None = None,
    durability: Durability = "async",
    writer: Writer = "auto",
    approvals: ApprovalHandler = "auto_deny",
    approval_timeout: float = 300.0,
    shadow: bool = False,
    default_deny: bool = False,
    implicit_sessions: bool = True,
    otel: Any = None,
    observers: Sequence[RuntimeObserver] = (),
) -> Runtime | Client: ...


def configure(
    atlases: Iterable[AtlasSource] = (),
    *,
    mode: Mode = "embedded",
    url: str | None = None,
    api_key: str | None = None,
    token: str | None = None,
    store: TraceStore | str | os.PathLike[str] | None = None,
    durability: Durability = "async",
    writer: Writer = "auto",
    approvals: ApprovalHandler = "auto_deny",
    approval_timeout: float = 300.0,
    shadow: bool = False,
    default_deny: bool = False,
    implicit_sessions: bool = True,
    otel: Any = None,
    observers: Sequence[RuntimeObserver] = (),
) -> Runtime | Client:
    """Set up the default runtime used by :func:`guarded` and :func:`session`.

    ``mode``: ``"embedded"`` (default) decides calls in this process with a
    :class:`~cra_agents.Runtime` over ``atlases``; ``"http"`` has a CRA server decide them,
    through a :class:`~cra_agents.Client` of ``url`` (default ``$CRA_URL``) with ``api_key``
    (default ``$CRA_API_KEY``) or ``token``; ``"auto"`` is ``"http"`` when ``url`` is given or
    ``$CRA_URL`` is set, else ``"embedded"``. In HTTP mode the server owns atlases, store and
    policy (``atlases`` and the embedded-only options are not used); ``approvals``,
    ``approval_timeout`` and ``implicit_sessions`` apply here: a call that needs approval is
    put to ``approvals`` in this process and its answer sent to the server, which decides.
    ``@cra.guarded``, ``cra.session``, ``cra.propagate`` and the LangChain middleware work
    unchanged in both modes; :func:`get_runtime` returns the client in HTTP mode.

    ``otel`` turns on spans: an OTLP endpoint (``"http://127.0.0.1:4318"``,
    ``"grpc://127.0.0.1:4317"``), ``True`` for the application's global tracer provider, a
    ``TracerProvider``, or an :class:`cra_agents.otel.OTelConfig` (see :mod:`cra_agents.otel`);
    ``observers`` adds your own :class:`~cra_agents.runtime.RuntimeObserver` s.

    Replaces (and closes) a previously configured runtime. The runtime is closed at exit.

    Raises:
        ConfigurationError: an unknown ``mode``, or ``"http"`` without a URL.
    """
    global _runtime
    if mode not in ("embedded", "http", "auto"):
        raise ConfigurationError(
            f"mode must be 'embedded', 'http' or 'auto', not {mode!r}",
            details={"reason": "unknown_mode"},
        )
    if mode == "auto":
        mode = "http" if url or os.environ.get("CRA_URL") else "embedded"
    runtime: Runtime | Client
    if mode == "http":
        from cra_agents.client import Client

        runtime = Client(
            url,
            api_key=api_key,
            token=token,
            approvals=approvals,
            approval_timeout=approval_timeout,
            implicit_sessions=implicit_sessions,
        )
    else:
        runtime = Runtime(
            atlases,
            store=store,
            durability=durability,
            writer=writer,
            approval_handler=approvals,
            approval_timeout=approval_timeout,
            shadow=shadow,
            default_deny=default_deny,
            otel=otel,
            observers=observers,
            implicit_sessions=implicit_sessions,
        )
    with _lock:
        # A client stands where the runtime stands: it has the methods guard, session and
        # the adapters call (its calls are decided by the server).
        previous, _runtime = _runtime, cast("Runtime", runtime)
    if previous is not None:
        try:
            previous.close()
        except CRAError as exc:  # the new runtime is in place; the old one's loss is logged
            logger.error("closing the previous cra_agents runtime: %s", exc)
    return runtime


def get_runtime() -> Runtime:
    """The configured runtime (in HTTP mode, the :class:`~cra_agents.Client`).

    Raises:
        ConfigurationError: :func:`configure` was not called.
    """
    runtime = _runtime
    if runtime is None:
        raise ConfigurationError(
            "cra_agents is not configured: call cra.configure(atlases=[...]) first",
            details={"reason": "not_configured"},
        )
    return runtime


def shutdown() -> None:
    """Flush and close the configured runtime (also runs at interpreter exit).

    Raises:
        TraceUnavailableError: the trace failed while the runtime ran: events were lost
            (at interpreter exit this is logged instead).
    """
    global _runtime
    with _lock:
        runtime, _runtime = _runtime, None
    if runtime is not None:
        runtime.close()


@atexit.register
def _shutdown_at_exit() -> None:
    try:
        shutdown()
    except CRAError as exc:  # nobody is left to catch it: the log is the report
        logger.error("cra_agents: %s", exc)


def session(agent_id: str, goal: str, *, metadata: dict[str, Any] | None = None) -> SessionScope:
    """Open a session of the configured runtime for the block (``with`` or ``async with``).

    Starts with ``session.started`` and ends with ``session.ended`` (reason ``completed``, or
    ``error`` with the exception when the block raised). A session opened inside another
    records the outer one as ``parent_session_id``. Calls in ``asyncio`` tasks and
    ``asyncio.to_thread`` belong to it by themselves; wrap functions handed to threads and
    executors with :func:`propagate`.
    """
    return SessionScope(get_runtime, agent_id, goal, metadata)


def _runtime_for_call() -> Runtime:
    active = current_session()
    return active.runtime if active is not None else get_runtime()


def call_session() -> tuple[Runtime, str]:
    """The runtime and session a guarded call made now would use (the one session rule).

    Raises:
        ConfigurationError: not configured.
        InvalidRequestError: the call escaped an open ``cra.session``
            (``session_not_propagated``), or implicit sessions are off (``no_session``).
    """
    runtime = _runtime_for_call()
    return runtime, session_for_call(runtime)


def _bind_slow(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Bind a call to named tool arguments: ``**kwargs`` spread out, ``*args`` as a list.

    Only what the caller passed, plus defaults that are not ``None``.

    Raises:
        TypeError: the call does not fit the signature, as the plain call would.
    """
    bound = signature.bind(*args, **kwargs)
    arguments: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, parameter in signature.parameters.items():
        kind = parameter.kind
        if name not in bound.arguments:
            if (
                parameter.default is not parameter.empty
                and parameter.default is not None
                and kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
            ):
                arguments[name] = parameter.default
            continue
        value = bound.arguments[name]
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
    """The call :func:`_bind_slow` describes, rebuilt from the decided arguments."""
    args: list[Any] = []
    kwargs = dict(values)
    parameters = list(signature.parameters.values())
    if has_receiver:
        args.append(receiver)
        parameters = parameters[1:]
    for parameter in parameters:
        kind = parameter.kind
        if kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            if parameter.name in kwargs:
                args.append(kwargs.pop(parameter.name))
            else:  # not passed (a None default): the plain call would have used it
                args.append(parameter.default)
        elif kind is parameter.VAR_POSITIONAL:
            args.extend(kwargs.pop(parameter.name, ()))
    return tuple(args), kwargs


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

    ``@cra.guarded("action.id")`` names the action; bare ``@cra.guarded`` maps the function by
    its name (the one mapping rule: the action whose id, ``executor`` or ``name`` it is). Works
    on functions, async functions and methods; keeps the signature and ``__wrapped__``.

    Per call (:meth:`Runtime.call`): the decided arguments are the ones the caller passed, plus
    defaults that are not ``None`` (a ``None`` default the caller left out is not sent, so
    ``ref: str | None = None`` never fails a schema typing ``ref`` as a string). They are
    canonicalised to JSON, digested, decided on, and the function runs with arguments rebuilt
    from that JSON (later changes to the caller's objects never reach it; tuples arrive as
    lists; objects that are not JSON values are refused with ``InvalidParametersError``).
    Allowed → ``action.executed`` (duration, result hash) or ``action.failed`` and the
    function's exception re-raised unchanged. Denied → :class:`ActionDeniedError` (action,
    policy, reason) and the function does not run. Any internal failure denies (fail closed).
    """
    if callable(action):
        return guarded()(action)
    explicit = action

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(func)
        tool = func.__name__
        names = list(signature.parameters)
        # Plain parameters (no *args, **kwargs or positional-only): the decided arguments can
        # be passed back by keyword without re-binding.
        by_keyword = all(
            p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            for p in signature.parameters.values()
        )
        positional = [
            p.name for p in signature.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD
        ]
        defaults = {
            p.name: p.default
            for p in signature.parameters.values()
            if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        sent_defaults = {k: v for k, v in defaults.items() if v is not None}
        required = frozenset(
            p.name
            for p in signature.parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )
        known = frozenset(names)
        has_receiver = bool(names) and names[0] in ("self", "cls")

        def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
            arguments: dict[str, Any] | None = None
            if by_keyword and len(args) <= len(positional):
                # The common case without inspect: names for the positional values, the
                # keywords, then the defaults that are not None; anything unusual (or wrong)
                # goes to Signature.bind, which raises TypeError as the plain call would.
                candidate = dict(zip(positional, args, strict=False))
                if (not kwargs or candidate.keys().isdisjoint(kwargs)) and kwargs.keys() <= known:
                    candidate.update(kwargs)
                    if required <= candidate.keys():
                        for name, default in sent_defaults.items():
                            candidate.setdefault(name, default)
                        arguments = candidate
            if arguments is None:
                arguments = _bind_slow(signature, args, kwargs)
            # "self"/"cls" are the receiver, not tool input: kept out of the decision.
            receiver = arguments.pop(names[0], None) if has_receiver else None
            return arguments, receiver

        def call_with(
            values: dict[str, Any], receiver: Any
        ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if by_keyword:
                return ((receiver,) if has_receiver else ()), values
            return _unflatten(signature, values, receiver, has_receiver)

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                arguments, receiver = bind(args, kwargs)  # a TypeError, as the plain call would
                runtime = _runtime_for_call()
                async with runtime.acall(
                    tool, arguments, action_id=explicit, tool_call_id=tool_call_id
                ) as call:
                    call_args, call_kwargs = call_with(call.arguments, receiver)
                    call.result = await func(*call_args, **call_kwargs)
                return call.result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            arguments, receiver = bind(args, kwargs)  # a TypeError, as the plain call would
            runtime = _runtime_for_call()
            with runtime.call(
                tool, arguments, action_id=explicit, tool_call_id=tool_call_id
            ) as call:
                call_args, call_kwargs = call_with(call.arguments, receiver)
                result = func(*call_args, **call_kwargs)
                call.result = result
            return result

        return wrapper

    return decorate
