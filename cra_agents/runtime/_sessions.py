"""Sessions: their state, the ``cra.session`` scope, and the one rule for a call's session.

**Which session a call belongs to** (:func:`session_for_call`, used by every adapter):

1. the innermost ``cra.session(...)`` block of this runtime in the caller's context. Context
   follows ``asyncio`` tasks and ``asyncio.to_thread`` by itself; for threads and pools
   (``threading.Thread``, ``concurrent.futures`` executors, ``loop.run_in_executor``) wrap the
   function with :func:`propagate` — ``pool.submit(cra.propagate(work), ...)``;
2. otherwise, while any ``cra.session`` block of this runtime is open anywhere in the process,
   the call is **refused**: it escaped its session (a thread started without
   :func:`propagate`), and deciding it under another identity could be more permissive;
3. otherwise the runtime's implicit session (agent ``cra-implicit``), unless implicit sessions
   are off, in which case the call is refused.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast

from cra_agents._canonical import canonical_json
from cra_agents._clock import format_timestamp
from cra_agents._exceptions import (
    CRAError,
    InvalidRequestError,
    SessionEndedError,
    SessionNotFoundError,
    TraceError,
)
from cra_agents._ids import new_id
from cra_agents.protocol import UUID_PATTERN
from cra_agents.protocol import events as ev
from cra_agents.trace import SessionChain, TraceCollector, TraceStore, read_session_ends

if TYPE_CHECKING:
    from cra_agents.protocol import ExecuteResponse, TraceEvent
    from cra_agents.runtime._observers import ObserverSet
    from cra_agents.runtime._resolve import StoredResolution
    from cra_agents.runtime._runtime import Runtime

__all__ = [
    "ActiveSession",
    "EndReason",
    "SessionInfo",
    "SessionScope",
    "SessionState",
    "check_session_id",
    "current_session",
    "is_session_id",
    "propagate",
    "session_for_call",
]

# TRACE/1.0 events carry the session id as a UUID (``protocol.Uuid``); an id that is not one
# could be written but never read back, and names a file in a JSONL store. ``fullmatch``
# without the anchors: ``$`` would also match before a trailing newline.
_SESSION_ID = re.compile(UUID_PATTERN.removeprefix("^").removesuffix("$"))


def is_session_id(value: object) -> bool:
    """Whether ``value`` is a valid session id: a UUID in its 8-4-4-4-12 hex form."""
    return isinstance(value, str) and _SESSION_ID.fullmatch(value) is not None


def check_session_id(value: object, field: str = "session_id") -> str:
    """``value`` if it is a valid session id (see :func:`is_session_id`).

    Raises:
        InvalidRequestError: it is not (reason ``invalid_session_id``), before anything is
            recorded or any file is named after it.
    """
    if not is_session_id(value):
        shown = repr(value)
        raise InvalidRequestError(
            f"{field} must be a UUID (8-4-4-4-12 hex digits, as TRACE/1.0 requires), not "
            f"{shown[:80]}{'...' if len(shown) > 80 else ''}",
            details={"reason": "invalid_session_id", "field": field},
        )
    return cast("str", value)


P = ParamSpec("P")
EndReason = Literal["completed", "timeout", "error", "cancelled"]
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session as the caller sees it."""

    session_id: str
    agent_id: str
    goal: str
    trace_id: str
    parent_session_id: str | None
    created_at: str
    active: bool
    ended_at: str | None = None
    resolution_count: int = 0
    action_count: int = 0
    #: Events appended to the session's chain so far.
    event_count: int = 0
    #: Events known to be in the store (what a crash cannot take back in group/sync mode).
    durable_count: int = 0
    #: The runtime records this session in shadow mode.
    shadow: bool = False
    #: The ``metadata`` of ``session.started`` (read-only), if any.
    metadata: Mapping[str, Any] | None = None


@dataclass(slots=True)
class SessionState:
    """A session inside the runtime (its chain, counters and per-session CARP state)."""

    session_id: str
    agent_id: str
    goal: str
    trace_id: str
    parent_session_id: str | None
    created_ns: int
    chain: SessionChain
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Serialises executions that carry an idempotency key, so a key runs at most once.
    keyed: threading.Lock = field(default_factory=threading.Lock)
    ended_ns: int | None = None
    # request_id -> monotonic time first seen; pruned once the clock-skew rule alone would
    # refuse a replay, so a long session keeps bounded state.
    request_ids: dict[str, float] = field(default_factory=dict)
    resolutions: dict[str, StoredResolution] = field(default_factory=dict)
    idempotency: dict[str, tuple[str, str, ExecuteResponse]] = field(default_factory=dict)
    resolution_count: int = 0
    action_count: int = 0
    #: Calls between their start and their last event: session.ended waits for them.
    inflight: int = 0
    #: ``session.ended`` payload and watcher, while it waits for in-flight calls.
    ending: tuple[dict[str, Any], Any] | None = None
    #: What observers returned from ``on_session_start``.
    observed: tuple[Any, ...] = ()
    shadow: bool = False
    metadata: Mapping[str, Any] | None = None

    @property
    def active(self) -> bool:
        """Whether the session accepts new calls."""
        return self.ended_ns is None

    def info(self) -> SessionInfo:
        """The public view."""
        return SessionInfo(
            session_id=self.session_id,
            agent_id=self.agent_id,
            goal=self.goal,
            trace_id=self.trace_id,
            parent_session_id=self.parent_session_id,
            created_at=format_timestamp(self.created_ns),
            active=self.ended_ns is None,
            ended_at=None if self.ended_ns is None else format_timestamp(self.ended_ns),
            resolution_count=self.resolution_count,
            action_count=self.action_count,
            event_count=len(self.chain),
            durable_count=self.chain.durable + 1,
            shadow=self.shadow,
            metadata=self.metadata,
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


_current: contextvars.ContextVar[ActiveSession | None] = contextvars.ContextVar(
    "cra_session", default=None
)


def current_session() -> ActiveSession | None:
    """The innermost active ``cra.session`` of this thread or task, if any."""
    return _current.get()


def propagate(func: Callable[P, R]) -> Callable[P, R]:
    """``func``, made to run in the caller's ``cra.session`` wherever it is called.

    For threads and executors, which do not carry context by themselves::

        with cra.session(agent_id="bot", goal="..."):
            pool.submit(cra.propagate(create_issue), "acme/app", "Crash")
            await loop.run_in_executor(None, cra.propagate(work))

    Each call runs in its own copy of the context captured here, so the wrapper may run in
    several threads at once.
    """
    captured = contextvars.copy_context()

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return captured.copy().run(func, *args, **kwargs)

    return run


def session_for_call(runtime: Runtime) -> str:
    """The session a call made now through ``runtime`` belongs to (see the module docstring).

    Raises:
        InvalidRequestError: the call escaped an open ``cra.session`` (reason
            ``session_not_propagated``), or implicit sessions are off (``no_session``).
    """
    active = _current.get()
    if active is not None and active.runtime is runtime:
        return active.session_id
    return runtime.implicit_session_id()


def escaped_error(open_sessions: int) -> InvalidRequestError:
    """The refusal of a call made outside every open ``cra.session`` of its runtime."""
    return InvalidRequestError(
        f"this call is outside every cra.session block, while {open_sessions} "
        "session(s) of this runtime are open: it was probably started in a thread or pool "
        "that does not carry the session. Wrap the function with cra.propagate(func) "
        "(pool.submit(cra.propagate(func), ...), loop.run_in_executor(None, "
        "cra.propagate(func))), or run it with contextvars.copy_context().run(...); "
        "asyncio tasks and asyncio.to_thread carry it already",
        details={"reason": "session_not_propagated", "open_sessions": open_sessions},
    )


class OpenScopes:
    """The ``cra.session`` blocks open on one runtime (or client), and its implicit session.

    The one rule for a call made outside every block: refused while a block is open (the call
    escaped it, :func:`escaped_error`), else it belongs to one implicit session per runtime,
    created on first use. Used by :class:`~cra_agents.Runtime` and :class:`~cra_agents.Client`.
    """

    __slots__ = ("_counts", "_implicit", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._implicit: str | None = None

    def opened(self, session_id: str) -> None:
        """A ``cra.session`` block of ``session_id`` began."""
        with self._lock:
            self._counts[session_id] = self._counts.get(session_id, 0) + 1

    def closed(self, session_id: str) -> None:
        """A ``cra.session`` block of ``session_id`` ended."""
        with self._lock:
            left = self._counts.get(session_id, 0) - 1
            if left > 0:
                self._counts[session_id] = left
            else:
                self._counts.pop(session_id, None)

    def forget(self, session_id: str) -> None:
        """``session_id`` ended: if it was the implicit session, the next call opens another."""
        with self._lock:
            if self._implicit == session_id:
                self._implicit = None

    def implicit(
        self, *, enabled: bool, create: Callable[[], str], alive: Callable[[str], bool]
    ) -> str:
        """The session of a call outside every block: the implicit one, created when needed.

        Raises:
            InvalidRequestError: a block is open, so the call escaped it
                (``session_not_propagated``), or implicit sessions are off (``no_session``).
        """
        with self._lock:
            open_scopes = sum(self._counts.values())
            current = self._implicit
        if open_scopes:
            raise escaped_error(open_scopes)
        if not enabled:
            raise InvalidRequestError(
                "a guarded call outside any cra.session(...) block, and implicit sessions are off",
                details={"reason": "no_session"},
            )
        if current is not None and alive(current):
            return current
        created = create()
        with self._lock:
            if self._implicit is None or not alive(self._implicit):
                self._implicit = created
            return self._implicit


class SessionScope:
    """``with`` / ``async with`` block of one session: it is current inside, ended after.

    Ends with ``session.ended`` reason ``completed``, or ``error`` (with the exception) when the
    block raised. A block opened inside another of the same runtime records the outer one as
    ``parent_session_id``.
    """

    def __init__(
        self,
        runtime: Runtime | Callable[[], Runtime],
        agent_id: str,
        goal: str,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._runtime = runtime
        self._args = (agent_id, goal, metadata)
        self._active: ActiveSession | None = None
        self._token: contextvars.Token[ActiveSession | None] | None = None
        self._tokens: tuple[Any, ...] = ()

    def _enter(self) -> ActiveSession:
        from cra_agents.runtime._runtime import Runtime

        runtime = self._runtime if isinstance(self._runtime, Runtime) else self._runtime()
        agent_id, goal, metadata = self._args
        parent = _current.get()
        info = runtime.create_session(
            agent_id,
            goal,
            metadata=metadata,
            parent_session_id=(
                parent.session_id if parent is not None and parent.runtime is runtime else None
            ),
        )
        self._active = ActiveSession(info, runtime)
        self._token = _current.set(self._active)
        runtime.scope_opened(info.session_id)
        self._tokens = runtime.activate_session(info.session_id)
        return self._active

    def _exit(self, exc: BaseException | None) -> None:
        active = self._active
        if active is None:
            return
        runtime = active.runtime
        runtime.deactivate_session(active.session_id, self._tokens)
        if self._token is not None:
            _current.reset(self._token)
        runtime.scope_closed(active.session_id)
        try:
            runtime.end_session(
                active.session_id,
                "error" if exc is not None else "completed",
                error=f"{type(exc).__name__}: {exc}" if exc is not None else None,
                cause=exc,
            )
        except Exception:
            if exc is None:
                raise

    def __enter__(self) -> ActiveSession:
        return self._enter()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._exit(exc)

    async def __aenter__(self) -> ActiveSession:
        return self._enter()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._exit(exc)


def check_recordable(payload: Mapping[str, Any]) -> None:
    """Refuse, on the caller's thread, a payload the trace could not record exactly."""
    try:
        canonical_json(payload)
    except TraceError as exc:
        raise InvalidRequestError(
            f"cannot be recorded in the trace: {exc.message}",
            details={"reason": "unrecordable", **exc.details},
        ) from exc


class SessionsMixin:
    """Sessions of :class:`~cra_agents.Runtime`: create, end, the implicit one, scopes.

    Memory: an ended session leaves ``_sessions`` at once. The last
    :attr:`ended_sessions_kept` ended ones stay in a bounded map (for :meth:`session` and
    :meth:`sessions` while their last events are written); older ones are answered by
    :meth:`session` from the store, the record, so a long-running runtime's memory does not
    grow with the number of sessions it has served.
    """

    #: Ended sessions kept in memory, newest; older ones are read back from the store.
    ended_sessions_kept: int = 1024

    _collector: TraceCollector
    _lock: threading.Lock
    _sessions: dict[str, SessionState]
    _ended: OrderedDict[str, SessionState]
    store: TraceStore
    _scopes: OpenScopes
    observers: ObserverSet
    _observed: bool
    shadow: bool
    implicit_sessions: bool

    def create_session(
        self,
        agent_id: str,
        goal: str,
        *,
        session_id: str | None = None,
        parent_session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SessionInfo:
        """Start a session; its chain begins with ``session.started``.

        Raises:
            InvalidRequestError: an empty or too long ``agent_id``, an empty ``goal``, or a
                ``session_id`` / ``parent_session_id`` that is not a UUID (reason
                ``invalid_session_id``).
            TraceUnavailableError: the trace cannot record it.
        """
        if not agent_id or len(agent_id) > 255:
            raise InvalidRequestError("agent_id must be 1 to 255 characters")
        if not goal:
            raise InvalidRequestError("goal must not be empty")
        given = session_id
        session_id = new_id() if given is None else check_session_id(given)
        if parent_session_id is not None:
            check_session_id(parent_session_id, "parent_session_id")
        payload = ev.session_started(
            agent_id,
            goal,
            parent_session_id=parent_session_id,
            metadata=copy.deepcopy(dict(metadata)) if metadata else None,
        )
        check_recordable(payload)
        self._collector.check()
        chain = SessionChain(session_id, new_id())
        session = SessionState(
            session_id, agent_id, goal, chain.trace_id, parent_session_id, time.time_ns(), chain
        )
        session.shadow = self.shadow
        if payload.get("metadata"):
            session.metadata = MappingProxyType(payload["metadata"])
        if given is not None and self._stored_info(session_id) is not None:
            raise CRAError(f"session {session_id} already exists", code="SESSION_ALREADY_EXISTS")
        with self._lock:
            if session_id in self._sessions or session_id in self._ended:
                raise CRAError(
                    f"session {session_id} already exists", code="SESSION_ALREADY_EXISTS"
                )
            self._sessions[session_id] = session
        self._collector.committed(chain, chain.append(ev.SESSION_STARTED, payload))
        info = session.info()
        if self._observed:
            session.observed = self.observers.session_start(info)
        return info

    def session_scope(
        self, agent_id: str, goal: str, *, metadata: dict[str, Any] | None = None
    ) -> SessionScope:
        """A ``with`` / ``async with`` block that is one session (what ``cra.session`` opens)."""
        return SessionScope(cast("Runtime", self), agent_id, goal, metadata)

    def session(self, session_id: str) -> SessionInfo:
        """The current state of a session.

        An ended session no longer kept in memory (see :attr:`ended_sessions_kept`) is read
        back from the store: its ``session.started`` and ``session.ended`` events.

        Raises:
            SessionNotFoundError: neither this runtime nor its store knows it.
        """
        session = self._sessions.get(session_id) or self._ended.get(session_id)
        if session is not None:
            return session.info()
        stored = self._stored_info(session_id)
        if stored is None:
            raise SessionNotFoundError(f"no session {session_id}")
        return stored

    def sessions(self) -> list[SessionInfo]:
        """The active sessions and the last ``ended_sessions_kept`` ended ones, oldest first."""
        with self._lock:
            sessions = [*self._sessions.values(), *self._ended.values()]
        sessions.sort(key=lambda s: s.created_ns)
        return [s.info() for s in sessions]

    def _session(self, session_id: str) -> SessionState:
        session = self._sessions.get(session_id)
        if session is None:
            session = self._ended.get(session_id)
            if session is None:
                if self._stored_info(session_id) is not None:
                    raise SessionEndedError(f"session {session_id} has ended")
                raise SessionNotFoundError(f"no session {session_id}")
        return session

    def _stored_info(self, session_id: str) -> SessionInfo | None:
        """An ended session as its stored events tell it; None if the store has no start."""
        if not is_session_id(session_id):
            return None
        try:
            ends = read_session_ends(self.store, session_id)
        except (ValueError, OSError):  # unreadable: as good as unknown here
            return None
        if not ends or ends[0].event_type != ev.SESSION_STARTED:
            return None
        first, last = ends[0], ends[-1]
        ended = last if last.event_type == ev.SESSION_ENDED else None
        count = last.sequence + 1
        started = first.payload
        closing = ended.payload if ended is not None else {}
        metadata = started.get("metadata")
        return SessionInfo(
            session_id=session_id,
            agent_id=str(started.get("agent_id", "")),
            goal=str(started.get("goal", "")),
            trace_id=first.trace_id,
            parent_session_id=started.get("parent_session_id"),
            created_at=first.timestamp,
            active=False,
            ended_at=ended.timestamp if ended is not None else None,
            resolution_count=int(closing.get("resolution_count", 0)),
            action_count=int(closing.get("action_count", 0)),
            event_count=count,
            durable_count=count,
            shadow=self.shadow,
            metadata=MappingProxyType(dict(metadata)) if metadata else None,
        )

    def _forget(self, session: SessionState) -> None:
        """Move an ended session out of the live map into the bounded map of ended ones."""
        with self._lock:
            if self._sessions.get(session.session_id) is session:
                del self._sessions[session.session_id]
            self._ended[session.session_id] = session
            while len(self._ended) > max(self.ended_sessions_kept, 0):
                self._ended.popitem(last=False)

    def _active(self, session_id: str) -> SessionState:
        session = self._session(session_id)
        if session.ended_ns is not None:
            raise SessionEndedError(f"session {session_id} has ended")
        return session

    def implicit_session_id(self) -> str:
        """The session of a call made outside every ``cra.session`` block of this runtime.

        Raises:
            InvalidRequestError: a ``cra.session`` of this runtime is open, so the call escaped
                it (``session_not_propagated``), or implicit sessions are off (``no_session``).
        """
        return self._scopes.implicit(
            enabled=self.implicit_sessions,
            create=lambda: (
                self.create_session(
                    "cra-implicit", f"implicit session of process {os.getpid()}"
                ).session_id
            ),
            alive=lambda session_id: session_id in self._sessions,  # live: not ended
        )

    def scope_opened(self, session_id: str) -> None:
        """A ``cra.session`` block of this runtime began (see :func:`session_for_call`)."""
        self._scopes.opened(session_id)

    def scope_closed(self, session_id: str) -> None:
        """A ``cra.session`` block of this runtime ended."""
        self._scopes.closed(session_id)

    def activate_session(self, session_id: str) -> tuple[Any, ...]:
        """Make the session current for observers (a ``cra.session`` block began)."""
        session = self._session(session_id)
        return self.observers.activate(session.observed) if self._observed else ()

    def deactivate_session(self, session_id: str, tokens: tuple[Any, ...]) -> None:
        """Undo :meth:`activate_session`."""
        if self._observed:
            self.observers.deactivate(self._session(session_id).observed, tokens)

    def end_session(
        self,
        session_id: str,
        reason: EndReason = "completed",
        *,
        error: str | None = None,
        cause: BaseException | None = None,
    ) -> SessionInfo:
        """End a session with ``session.ended``; later requests and calls on it are refused.

        Calls already running finish and are recorded first: ``session.ended`` is written when
        the last of them ends, so no event of the session follows it. A call still waiting
        for its approver is refused and records nothing.

        Raises:
            SessionNotFoundError, SessionEndedError: unknown, or ended already.
            TraceUnavailableError: the trace failed while the runtime ran (in ``async`` mode
                no call waited for the write that failed): events were lost. The session is
                ended all the same.
        """
        session = self._session(session_id)
        with session.lock:
            if session.ended_ns is not None:
                raise SessionEndedError(f"session {session_id} has already ended")
            session.ended_ns = time.time_ns()
            # Nothing can use these any more; keep an ended session small.
            session.resolutions = {}
            session.idempotency = {}
            session.request_ids = {}
            session.ending = (
                {"reason": reason, "error": error},
                (lambda events: self._session_ended(session, events, cause))
                if self.observers
                else None,
            )
            ready = session.inflight == 0
        if ready:
            self._write_ended(session)
        # Calls still in flight hold the state themselves; the runtime lets go of it now.
        self._forget(session)
        self._collector.raise_failure()
        return session.info()

    def _write_ended(self, session: SessionState) -> None:
        """Append the waiting ``session.ended`` (once no call of the session is in flight)."""
        with session.lock:
            if session.ending is None or session.inflight:
                return
            (spec, watch), session.ending = session.ending, None
            ended_ns = session.ended_ns or time.time_ns()
            payload = ev.session_ended(
                spec["reason"],
                (ended_ns - session.created_ns) // 1_000_000,
                session.resolution_count,
                session.action_count,
                spec["error"],
            )
            sequence = session.chain.append(ev.SESSION_ENDED, payload, watch)
        self._collector.committed(session.chain, sequence)

    def _session_ended(
        self,
        session: SessionState,
        events: Sequence[TraceEvent] | None,
        cause: BaseException | None,
    ) -> None:
        self.observers.session_end(
            session.info(), session.observed, events[-1] if events else None, cause
        )
