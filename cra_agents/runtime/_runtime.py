"""The runtime: wiring of atlases, policy, the call gate, sessions, observers and the trace."""

from __future__ import annotations

import concurrent.futures
import copy
import inspect
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from cra_agents._canonical import canonical_json, digest
from cra_agents._clock import format_timestamp, parse_timestamp_ns
from cra_agents._exceptions import (
    ActionDeniedError,
    ActionNotFoundError,
    ApprovalRequiredError,
    AtlasConflictError,
    AtlasNotFoundError,
    CRAError,
    IdempotencyConflictError,
    InvalidParametersError,
    InvalidRequestError,
    ResolutionExpiredError,
    ResolutionNotFoundError,
    SessionEndedError,
    SessionNotFoundError,
    TraceError,
)
from cra_agents._ids import new_id
from cra_agents.atlas import Atlas, AtlasSource, json_pointer, load_atlas
from cra_agents.policy import ConditionContext, PolicyEngine, RateLimiter
from cra_agents.protocol import (
    EVENT_TYPES,
    CARPRequest,
    CARPResolution,
    ExecuteResponse,
    TraceEvent,
    trusted,
)
from cra_agents.protocol import events as ev
from cra_agents.runtime._approvals import (
    Approval,
    ApprovalDecision,
    ApprovalHandler,
    ApprovalRequest,
    ApprovalStore,
    ConsoleApprover,
    auto_deny,
)
from cra_agents.runtime._gate import (
    RUNTIME_POLICY,
    Call,
    Gate,
    Precheck,
    Record,
    higher_risk,
    internal_denial,
)
from cra_agents.runtime._mapping import ToolMap
from cra_agents.runtime._observers import ObserverSet, RuntimeObserver, load_observer
from cra_agents.runtime._resolve import Resolver, StoredResolution
from cra_agents.runtime._sessions import (
    SessionInfo,
    SessionScope,
    SessionState,
    escaped_error,
    session_for_call,
)
from cra_agents.trace import (
    ChainVerification,
    Checkpoint,
    Durability,
    SessionChain,
    TraceCollector,
    TraceStore,
    open_store,
    sign_checkpoint,
    verify_chain,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = ["DEFAULT_TTL_SECONDS", "Runtime"]

logger = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 3600
DEFAULT_CLOCK_SKEW_SECONDS = 300
_PRUNE_EVERY = 1024
EndReason = Literal["completed", "timeout", "error", "cancelled"]
_EXTENSION_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


class Runtime:
    """Resolves CARP requests against loaded atlases and gates tool calls.

    Every step is appended to the session's TRACE hash chain. Every adapter's calls go through
    one gate (:mod:`cra_agents.runtime._gate`): :meth:`call` / :meth:`acall` are the whole
    life of a call as a context manager; :meth:`authorize` / :meth:`record_outcome` are its
    two halves; :meth:`execute` is CARP's execute over the same gate.

    Args:
        atlases: Atlases to load, in order (anything :func:`load_atlas` accepts).
        store: A store or a store URL: ``memory://``, ``jsonl://DIR``, ``sqlite://FILE``
            (default: SQLite at ``./.cra/traces.db``, or ``$CRA_AGENTS_STORE``).
        durability: ``async`` (default; the caller never waits for the store), ``group``
            (calls return once their events are synced, sharing syncs) or ``sync``.
        flush_interval: In ``async`` mode, the longest an event waits for the writer (s).
        max_backlog: Events that may wait for the writer before callers are held back
            (backpressure); a crash in ``async`` mode loses fewer than twice this many.
        default_deny: Deny declared actions no policy matches (default: allow them).
        ttl_seconds: Lifetime of a resolution.
        clock_skew_seconds: How far a request's timestamp may be from now.
        approval_ttl_seconds: Lifetime of an approval request (``decision.expires_at``) and of
            granted approvals.
        approval_handler: Who answers approval requests of guarded calls: ``"auto_deny"``
            (default), ``"console"``, or a callable (sync or async) taking an
            :class:`ApprovalRequest` and returning ``True``/``False`` or an
            :class:`ApprovalDecision`. Sync handlers run off the caller's thread (and off the
            event loop for async calls), so ``approval_timeout`` always holds; a handler
            object with an ``async def acall(request)`` method is awaited on the loop by async
            calls instead.
        approval_timeout: Seconds an approver may take; then the call is denied
            (``approval_timeout``) and a late answer is ignored.
        shadow: Record what would have been denied as ``policy.violated`` but let guarded
            calls run (for rolling out a new atlas); every such event is flagged ``shadow``.
        otel: Spans for sessions and calls (see :mod:`cra_agents.otel`): an OTLP endpoint,
            ``True``, a ``TracerProvider`` or an ``OTelConfig``. Built as an observer.
        observers: More :class:`~cra_agents.runtime.RuntimeObserver` s (called in order).
        implicit_sessions: Calls outside any ``cra.session`` block use one implicit session of
            this runtime (agent ``cra-implicit``); ``False`` refuses them.
        clock: Wall clock for time-window conditions (default: the system clock).
        rate_limiter: Rate-limit state (default: a new one on the monotonic clock); pass one to
            share limits between runtimes or to replay with recorded time.

    Example:
        >>> rt = Runtime(atlases=["examples/atlases/github-ops"])  # doctest: +SKIP
        >>> s = rt.create_session("triage-bot", "Triage new issues")  # doctest: +SKIP
        >>> resolution = rt.resolve(resolve_request(s))  # doctest: +SKIP
        >>> resolution.decision.type  # doctest: +SKIP
        'partial'
    """

    def __init__(
        self,
        atlases: Iterable[AtlasSource] = (),
        *,
        store: TraceStore | str | os.PathLike[str] | None = None,
        durability: Durability = "async",
        flush_interval: float = 0.05,
        max_backlog: int = 2048,
        default_deny: bool = False,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        clock_skew_seconds: float = DEFAULT_CLOCK_SKEW_SECONDS,
        approval_ttl_seconds: int = 900,
        approval_handler: ApprovalHandler = "auto_deny",
        approval_timeout: float = 300.0,
        shadow: bool = False,
        otel: Any = None,
        observers: Sequence[RuntimeObserver] = (),
        implicit_sessions: bool = True,
        clock: Callable[[], datetime] | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        loaded = [load_atlas(source) for source in atlases]
        self._check_conflicts(loaded)
        self._atlases: tuple[Atlas, ...] = tuple(loaded)
        self._by_id = {atlas.atlas_id: atlas for atlas in loaded}
        self.engine = PolicyEngine(
            loaded, default_deny=default_deny, clock=clock, limiter=rate_limiter
        )
        self._resolver = Resolver(
            loaded,
            self.engine,
            ttl_seconds=ttl_seconds,
            approval_ttl_seconds=approval_ttl_seconds,
        )
        self._approvals = ApprovalStore()
        self._gate = Gate(
            self.engine,
            ToolMap(loaded),
            self._approvals,
            {atlas.atlas_id: (atlas.version, atlas.digest) for atlas in loaded},
            shadow=shadow,
        )
        self.durability: Durability = durability
        self.store: TraceStore = open_store(store, durable=durability != "async")
        self._collector = TraceCollector(
            self.store,
            durability=durability,
            flush_interval=flush_interval,
            max_backlog=max_backlog,
        )
        #: The OpenTelemetry observer built from ``otel=`` (see :mod:`cra_agents.otel`), or None.
        self.telemetry: Any = None
        if otel is not None and otel is not False:
            self.telemetry = load_observer("otel", otel)
        everyone = [*observers, *([self.telemetry] if self.telemetry is not None else [])]
        self.observers = ObserverSet(everyone)
        # Drains and stops the writer when the runtime is dropped or the interpreter exits.
        self._finalizer = weakref.finalize(self, _shut, self._collector, self.observers)
        self.ttl_seconds = ttl_seconds
        self.clock_skew_seconds = clock_skew_seconds
        self.approval_ttl_seconds = approval_ttl_seconds
        self.approval_handler: ApprovalHandler = (
            ConsoleApprover() if approval_handler == "console" else approval_handler
        )
        self.approval_timeout = approval_timeout
        #: Shadow mode: record what would be denied (``policy.violated``) but allow the call.
        self.shadow = shadow
        self.implicit_sessions = implicit_sessions
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._sessions: dict[str, SessionState] = {}
        self._lock = threading.Lock()
        self._implicit: str | None = None
        #: ``cra.session`` blocks open on this runtime, per session (see session_for_call).
        self._scopes: dict[str, int] = {}

    @staticmethod
    def _check_conflicts(atlases: list[Atlas]) -> None:
        seen: dict[str, str] = {}
        action_owner: dict[str, str] = {}
        for atlas in atlases:
            if atlas.atlas_id in seen:
                raise AtlasConflictError(
                    f"atlas {atlas.atlas_id!r} is loaded twice ({seen[atlas.atlas_id]} and "
                    f"{atlas.source})"
                )
            seen[atlas.atlas_id] = atlas.source
            for action in atlas.actions:
                owner = action_owner.get(action.action_id)
                if owner is not None:
                    raise AtlasConflictError(
                        f"action {action.action_id!r} is declared by both {owner!r} and "
                        f"{atlas.atlas_id!r}; an action must have one owner",
                        details={"action_id": action.action_id},
                    )
                action_owner[action.action_id] = atlas.atlas_id

    # -- atlases --------------------------------------------------------------------------

    @property
    def atlases(self) -> tuple[Atlas, ...]:
        """The loaded atlases, in load order."""
        return self._atlases

    def atlas(self, atlas_id: str) -> Atlas:
        """The loaded atlas ``atlas_id``.

        Raises:
            AtlasNotFoundError: it is not loaded.
        """
        atlas = self._by_id.get(atlas_id)
        if atlas is None:
            raise AtlasNotFoundError(f"atlas {atlas_id!r} is not loaded")
        return atlas

    # -- sessions -------------------------------------------------------------------------

    def create_session(
        self,
        agent_id: str,
        goal: str,
        *,
        session_id: str | None = None,
        parent_session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SessionInfo:
        """Start a session; its chain begins with ``session.started``."""
        if not agent_id or len(agent_id) > 255:
            raise InvalidRequestError("agent_id must be 1 to 255 characters")
        if not goal:
            raise InvalidRequestError("goal must not be empty")
        session_id = session_id or new_id()
        payload = ev.session_started(
            agent_id,
            goal,
            parent_session_id=parent_session_id,
            metadata=copy.deepcopy(dict(metadata)) if metadata else None,
        )
        _recordable(payload)
        self._collector.check()
        chain = SessionChain(session_id, new_id())
        session = SessionState(
            session_id, agent_id, goal, chain.trace_id, parent_session_id, time.time_ns(), chain
        )
        session.shadow = self.shadow
        with self._lock:
            if session_id in self._sessions:
                raise CRAError(
                    f"session {session_id} already exists", code="SESSION_ALREADY_EXISTS"
                )
            self._sessions[session_id] = session
        self._collector.committed(chain, chain.append(ev.SESSION_STARTED, payload))
        info = session.info()
        if self.observers:
            session.observed = self.observers.session_start(info)
        return info

    def session_scope(
        self, agent_id: str, goal: str, *, metadata: dict[str, Any] | None = None
    ) -> SessionScope:
        """A ``with`` / ``async with`` block that is one session (what ``cra.session`` opens)."""
        return SessionScope(self, agent_id, goal, metadata)

    def session(self, session_id: str) -> SessionInfo:
        """The current state of a session."""
        return self._session(session_id).info()

    def sessions(self) -> list[SessionInfo]:
        """Every session this runtime knows, oldest first."""
        with self._lock:
            sessions = list(self._sessions.values())
        return [s.info() for s in sessions]

    def _session(self, session_id: str) -> SessionState:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFoundError(f"no session {session_id}")
        return session

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
        with self._lock:
            open_scopes = sum(self._scopes.values())
        if open_scopes:
            raise escaped_error(open_scopes)
        if not self.implicit_sessions:
            raise InvalidRequestError(
                "a guarded call outside any cra.session(...) block, and implicit sessions are off",
                details={"reason": "no_session"},
            )
        with self._lock:
            current = self._implicit
            if current is not None and self._sessions[current].active:
                return current
        info = self.create_session("cra-implicit", f"implicit session of process {os.getpid()}")
        with self._lock:
            self._implicit = info.session_id
        return info.session_id

    def scope_opened(self, session_id: str) -> None:
        """A ``cra.session`` block of this runtime began (see :func:`session_for_call`)."""
        with self._lock:
            self._scopes[session_id] = self._scopes.get(session_id, 0) + 1

    def scope_closed(self, session_id: str) -> None:
        """A ``cra.session`` block of this runtime ended."""
        with self._lock:
            left = self._scopes.get(session_id, 0) - 1
            if left > 0:
                self._scopes[session_id] = left
            else:
                self._scopes.pop(session_id, None)

    def activate_session(self, session_id: str) -> tuple[Any, ...]:
        """Make the session current for observers (a ``cra.session`` block began)."""
        session = self._session(session_id)
        return self.observers.activate(session.observed) if self.observers else ()

    def deactivate_session(self, session_id: str, tokens: tuple[Any, ...]) -> None:
        """Undo :meth:`activate_session`."""
        if self.observers:
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

    # -- trace ----------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Write every queued event to the store; False if ``timeout`` passed first."""
        return self._collector.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Drain queued events (bounded wait), stop the writer and close the store.

        Idempotent; also runs at interpreter exit. A closed runtime refuses new work with
        ``TraceUnavailableError``.
        """
        self._collector.close(timeout)
        self._finalizer.detach()
        self.observers.shutdown()  # after the drain: the last events reached them
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def trace_failure(self) -> BaseException | None:
        """Why events can no longer be recorded, if they cannot (the runtime fails closed)."""
        return self._collector.failure

    def trace_events(
        self,
        session_id: str,
        *,
        event_type: str | None = None,
        since_sequence: int | None = None,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        """The session's events in sequence order (queued events are flushed first)."""
        session = self._sessions.get(session_id)
        if session is not None:
            self._collector.flush()
        elif session_id not in self.store.sessions():
            raise SessionNotFoundError(f"no session {session_id}")
        return self.store.read(
            session_id, event_type=event_type, since_sequence=since_sequence, limit=limit
        )

    def verify(
        self,
        session_id: str,
        *,
        checkpoints: Checkpoint | Iterable[Checkpoint] | None = None,
        verify_key: Ed25519PublicKey | None = None,
    ) -> ChainVerification:
        """Verify the session's chain as stored (and its checkpoints, when given)."""
        return verify_chain(
            self.trace_events(session_id), checkpoints=checkpoints, verify_key=verify_key
        )

    def checkpoint(self, session_id: str, signing_key: Ed25519PrivateKey) -> Checkpoint:
        """Sign a checkpoint of the session's chain as stored now.

        The chain is verified first; store the checkpoint outside the log (for example with
        :func:`~cra_agents.trace.append_checkpoint` in another location).

        Raises:
            TraceError: the stored chain does not verify, so there is nothing to vouch for.
        """
        events = self.trace_events(session_id)
        result = verify_chain(events)
        if not result.valid:
            raise TraceError(
                f"session {session_id} does not verify ({result.error_type}); not signing it",
                details={"reason": "chain_invalid", "error_type": result.error_type},
            )
        return sign_checkpoint(events, signing_key, log_id=session_id)

    # -- requests -------------------------------------------------------------------------

    @staticmethod
    def _parse(request: CARPRequest | Mapping[str, Any]) -> CARPRequest:
        if isinstance(request, CARPRequest):
            return request
        try:
            return CARPRequest.model_validate(request)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            raise InvalidRequestError(
                f"invalid CARP request: {first['msg']} at {json_pointer(first['loc']) or '/'}",
                details={"path": json_pointer(first["loc"]), "reason": "schema"},
            ) from exc

    def _admit(self, session: SessionState, request: CARPRequest) -> None:
        """Runtime rules 1 and 2, and the requester check."""
        self._check_requester(session, request)
        with session.lock:
            if len(session.request_ids) >= _PRUNE_EVERY and not (
                len(session.request_ids) % _PRUNE_EVERY
            ):
                self._prune(session)
            if request.request_id in session.request_ids:
                raise InvalidRequestError(
                    f"request_id {request.request_id} was already used in this session",
                    details={"reason": "duplicate_request_id"},
                )
            session.request_ids[request.request_id] = time.monotonic()

    def _prune(self, session: SessionState) -> None:
        """Forget expired resolutions and request ids too old to pass the skew check.

        Called with ``session.lock`` held.
        """
        now = time.monotonic()
        horizon = now - 2 * self.clock_skew_seconds - 1
        session.request_ids = {k: t for k, t in session.request_ids.items() if t >= horizon}
        session.resolutions = {k: r for k, r in session.resolutions.items() if r.expires >= now}

    def _check_requester(self, session: SessionState, request: CARPRequest) -> None:
        """The requester owns the session and the request is fresh (rule 2)."""
        if request.requester.agent_id != session.agent_id:
            raise InvalidRequestError(
                f"agent {request.requester.agent_id!r} does not own session {session.session_id}",
                details={"reason": "agent_mismatch"},
            )
        try:  # C-speed parse of the usual form; the exact parser for the rest
            sent = datetime.fromisoformat(request.timestamp).timestamp()
        except ValueError:
            sent = parse_timestamp_ns(request.timestamp) / 1e9
        skew = abs(time.time() - sent)
        if skew > self.clock_skew_seconds:
            raise InvalidRequestError(
                f"request timestamp is {skew:.0f}s away from the runtime's clock "
                f"(limit {self.clock_skew_seconds:g}s)",
                details={"reason": "clock_skew"},
            )

    def resolve(self, request: CARPRequest | Mapping[str, Any]) -> CARPResolution:
        """Resolve a CARP request: allowed, denied and approval-bound actions, and context.

        Events: ``carp.request.received``, one ``policy.evaluated`` per considered action,
        one ``context.injected`` per block, ``carp.resolution.completed``.

        Raises:
            InvalidRequestError: malformed request, agent mismatch, clock skew, reused id.
            SessionNotFoundError, SessionEndedError: the session is unknown or over.
            AtlasNotFoundError: ``atlas_ids`` names an atlas that is not loaded.
        """
        req = self._parse(request)
        if req.operation == "execute":
            raise InvalidRequestError(
                "use execute() for operation 'execute'", details={"reason": "wrong_operation"}
            )
        session = self._active(req.requester.session_id)
        self._collector.check()
        views, atlas_ids = self._resolver.views_for(req.atlas_ids or ())
        self._admit(session, req)
        if not req.task.goal.isascii():  # lone surrogates cannot be written as UTF-8
            _recordable({"goal": req.task.goal})
        resolution, batch, stored = self._resolver.resolve(req, session.trace_id, views, atlas_ids)
        with session.lock:
            if session.ended_ns is not None:
                raise SessionEndedError(f"session {session.session_id} has ended")
            last = session.chain.extend(batch) + len(batch) - 1
        self._collector.committed(session.chain, last)
        with session.lock:
            session.resolutions[resolution.resolution_id] = stored
            session.resolution_count += 1
        return resolution

    # -- calls: every adapter's tool call goes through the one gate -------------------------

    def call(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        action_id: str | None = None,
        actions: Mapping[str, str] | None = None,
        session_id: str | None = None,
        tool_call_id: str | None = None,
        risk_tier: str | None = None,
        approval: ApprovalDecision | None = None,
        approval_id: str | None = None,
    ) -> Call:
        """One tool call as a context manager: decided on entry, its outcome recorded on exit.

        ::

            with runtime.call("create_issue", {"repo": "acme/app", "title": "Crash"}) as call:
                call.result = create_issue(**call.arguments)

        Entering maps the tool to its action (:mod:`cra_agents.runtime._mapping`), binds the
        call to its session (the ``cra.session`` in context, see
        :func:`~cra_agents.runtime.session_for_call`, unless ``session_id`` is given),
        canonicalises the arguments, checks them, decides, asks the approver if needed and
        records the decision; a refusal raises there, after it is recorded, and the block does
        not run. Run the tool with ``call.arguments`` (rebuilt from the decided canonical
        JSON). Leaving records ``action.executed`` with ``call.result``, or ``action.failed``
        with the exception that left the block (which propagates unchanged).

        ``async with runtime.acall(...)`` is the same for async code (async approvers are
        awaited; sync ones run off the event loop).

        Raises:
            ActionDeniedError, ActionNotFoundError, InvalidParametersError,
            SessionEndedError, TraceUnavailableError, InvalidRequestError: on entry.
        """
        return self._new_call(
            tool,
            arguments,
            action_id=action_id,
            actions=actions,
            session_id=session_id,
            tool_call_id=tool_call_id,
            risk_tier=risk_tier,
            approval=approval,
            approval_id=approval_id,
        )

    def acall(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        action_id: str | None = None,
        actions: Mapping[str, str] | None = None,
        session_id: str | None = None,
        tool_call_id: str | None = None,
        risk_tier: str | None = None,
        approval: ApprovalDecision | None = None,
        approval_id: str | None = None,
    ) -> Call:
        """:meth:`call` for ``async with``."""
        return self.call(
            tool,
            arguments,
            action_id=action_id,
            actions=actions,
            session_id=session_id,
            tool_call_id=tool_call_id,
            risk_tier=risk_tier,
            approval=approval,
            approval_id=approval_id,
        )

    def authorize(
        self,
        session_id: str,
        action_id: str,
        arguments: Mapping[str, Any],
        *,
        tool_call_id: str | None = None,
        approval_id: str | None = None,
        approval: ApprovalDecision | None = None,
        risk_tier: str | None = None,
    ) -> Call:
        """Decide one call of ``action_id`` before it runs (the first half of :meth:`call`).

        The returned :class:`~cra_agents.Authorization` carries the arguments the tool must
        run with (rebuilt from the canonical JSON that was decided on); pass it to
        :meth:`record_outcome` when the tool returns. Events: ``action.requested``,
        ``policy.evaluated``, then ``action.approved`` or ``action.denied`` (and, in shadow
        mode, ``policy.violated`` for what would have been denied).

        A call that needs approval is answered by, in order: ``approval_id`` (a single-use
        approval from :meth:`grant_approval`), ``approval`` (an answer a person already gave
        for exactly this call, e.g. through a LangGraph interrupt), or the approval handler.

        Raises:
            ActionDeniedError: denied by policy, by an approver (``approval_denied``,
                ``approval_timeout``, ``approval_error``), or the action is undeclared.
            InvalidParametersError: the arguments fail the action's ``parameters_schema``
                or cannot be canonicalised.
            SessionNotFoundError, SessionEndedError, TraceUnavailableError.
        """
        call = self._new_call(
            action_id,
            arguments,
            action_id=action_id,
            session_id=session_id,
            tool_call_id=tool_call_id,
            risk_tier=risk_tier,
            approval=approval,
            approval_id=approval_id,
        )
        return self.gate_sync(call)

    async def aauthorize(
        self,
        session_id: str,
        action_id: str,
        arguments: Mapping[str, Any],
        *,
        tool_call_id: str | None = None,
        approval_id: str | None = None,
        approval: ApprovalDecision | None = None,
        risk_tier: str | None = None,
    ) -> Call:
        """:meth:`authorize` for async callers; async approval handlers are awaited."""
        call = self._new_call(
            action_id,
            arguments,
            action_id=action_id,
            session_id=session_id,
            tool_call_id=tool_call_id,
            risk_tier=risk_tier,
            approval=approval,
            approval_id=approval_id,
        )
        return await self.gate_async(call)

    def record_outcome(
        self,
        authorization: Call,
        *,
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        """Record how an authorized call ended: ``action.executed`` or ``action.failed``.

        Always records (a result or exception whose ``repr``/``str`` raises, or that canonical
        JSON cannot carry, is recorded through a placeholder); once per call.

        Raises:
            TraceUnavailableError: the event could not be made durable (group/sync modes).
        """
        call = authorization
        if call.started_ns == 0 or call.done:
            raise InvalidRequestError(
                "record_outcome takes an authorized call, once",
                details={"reason": "not_authorized"},
            )
        session = call.session
        call.result, call.error = result, error
        try:
            kind, payload = self._gate.outcome(call, result, error)
            watch = self._outcome_watcher(call) if self.observers else None
            with session.lock:
                sequence = session.chain.append(kind, payload, watch)
                if error is None:
                    session.action_count += 1
            self._collector.committed(session.chain, sequence)
        finally:
            self._call_done(call)

    def precheck(
        self,
        session_id: str,
        action_id: str,
        arguments: Mapping[str, Any],
        *,
        check_parameters: bool = True,
    ) -> Precheck:
        """What :meth:`authorize` would decide for this call, recording nothing.

        No event is written and no rate-limit slot is taken: for callers that must know in
        advance whether to ask a person (a LangGraph interrupt) before the recorded decision.
        Arguments that cannot be recorded or fail the schema come back as a denial with
        reason ``invalid_parameters`` (skipped with ``check_parameters=False``, for callers
        that only need the policy's answer: ``authorize`` checks them anyway).
        """
        session = self._active(session_id)
        call = self._gate.new_call(session, action_id, arguments, action_id=action_id)
        return self._gate.precheck(call, check_parameters=check_parameters)

    def decide(
        self,
        session_id: str,
        action_id: str,
        *,
        risk_tier: str | None = None,
        context: ConditionContext | None = None,
        consume: bool = True,
    ) -> Precheck:
        """The gate's policy decision for one call of ``action_id``, recording nothing.

        For replays and dry runs: the same phases, risk rule (the higher of ``risk_tier``,
        the context's and the declared tier) and memo as a real call; with ``consume`` an
        allowed decision takes its rate-limit slot, so a replayed sequence of calls meets
        the limits the recorded one met.
        """
        session = self._session(session_id)
        call = self._gate.new_call(session, action_id, {}, action_id=action_id, risk_tier=risk_tier)
        if context is not None:
            call.risk_tier = higher_risk(context.risk_tier, call.risk_tier)
            call.context = context
        decision = self._gate.decide(call, consume=consume)
        return Precheck(
            action_id, decision.result, decision.policy_id, decision.reason, call.risk_tier, None
        )

    def map_tool(
        self,
        tool: str,
        *,
        action_id: str | None = None,
        actions: Mapping[str, str] | None = None,
    ) -> str:
        """The action ``tool`` performs under the loaded atlases (the one mapping rule).

        Raises:
            ActionNotFoundError: no declared action matches, or several do.
        """
        return self._gate.tools.map(tool, action_id=action_id, actions=actions)

    def grant_approval(
        self,
        session_id: str,
        action_id: str,
        arguments: Mapping[str, Any],
        *,
        approver: str,
        reason: str | None = None,
        ttl_seconds: float | None = None,
    ) -> Approval:
        """Grant a single-use approval for exactly these arguments (e.g. from a UI).

        ``ttl_seconds`` defaults to ``approval_ttl_seconds``; 0 means already expired.
        """
        session = self._active(session_id)
        found = self.engine.action(action_id)
        if found is None:
            raise ActionNotFoundError(f"no loaded atlas declares {action_id!r}")
        ttl = self.approval_ttl_seconds if ttl_seconds is None else ttl_seconds
        approval = Approval(
            approval_id=new_id(),
            session_id=session.session_id,
            action_id=action_id,
            digest=digest(dict(arguments)),
            atlas_digest=self.atlas(found[0]).digest,
            approver=approver,
            # An approval whose lifetime is 0 is expired at once (consume() compares with <).
            expires_at=time.monotonic() + ttl if ttl > 0 else float("-inf"),
            reason=reason,
        )
        self._approvals.add(approval)
        return approval

    # -- the shells that drive the gate -----------------------------------------------------

    def _new_call(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        action_id: str | None = None,
        actions: Mapping[str, str] | None = None,
        session_id: str | None = None,
        tool_call_id: str | None = None,
        risk_tier: str | None = None,
        approval: ApprovalDecision | None = None,
        approval_id: str | None = None,
    ) -> Call:
        if session_id is None:
            session_id = session_for_call(self)
        session = self._session(session_id)
        call = self._gate.new_call(
            session,
            tool,
            arguments,
            action_id=action_id,
            actions=actions,
            tool_call_id=tool_call_id,
            risk_tier=risk_tier,
            approval=approval,
            approval_id=approval_id,
        )
        call._runtime = self
        with session.lock:
            if session.ended_ns is not None:
                raise SessionEndedError(f"session {session_id} has ended")
            session.inflight += 1
        if self.observers:
            call._states = self.observers.call_start(call)
        try:
            self._collector.check()
        except BaseException as exc:  # noqa: BLE001 - a trace that cannot record refuses
            raise self._refused(call, exc) from None
        return call

    def gate_sync(self, call: Call, *, ask: bool = True) -> Call:
        """Drive the gate for ``call`` on this thread (approvers asked with a timeout)."""
        flow = self._gate.flow(call, ask=ask)
        try:
            step = next(flow)
            while True:
                if isinstance(step, Record):
                    reply: Any = self._record_step(call, step)
                else:
                    reply = self._ask_sync(step.request)
                step = flow.send(reply)
        except StopIteration:
            return call
        except BaseException as exc:  # noqa: BLE001 - every failure refuses the call
            raise self._refused(call, exc) from None

    async def gate_async(self, call: Call, *, ask: bool = True) -> Call:
        """Drive the gate for ``call`` from async code (async approvers awaited)."""
        flow = self._gate.flow(call, ask=ask)
        try:
            step = next(flow)
            while True:
                if isinstance(step, Record):
                    reply: Any = self._record_step(call, step)
                else:
                    reply = await self._ask_async(step.request)
                step = flow.send(reply)
        except StopIteration:
            return call
        except BaseException as exc:  # noqa: BLE001 - every failure refuses the call
            raise self._refused(call, exc) from None

    def call_running(self, call: Call) -> None:
        """The tool is about to run: observers make the call current (its span, say)."""
        if self.observers:
            call._tokens = self.observers.activate(call._states)

    def call_returned(self, call: Call) -> None:
        """The tool returned or raised: undo :meth:`call_running`."""
        if self.observers and call._tokens:
            self.observers.deactivate(call._states, call._tokens)
            call._tokens = ()

    def _record_step(self, call: Call, step: Record) -> bool:
        session = call.session
        final = step.final or not call.runs_tool
        watch = self._decision_watcher(call, final) if self.observers else None
        with session.lock:
            if session.ended_ns is not None:
                # Ended while this call was being decided (an approver was asked): refused,
                # and nothing is written, since session.ended must be the session's last event.
                return False
            last = session.chain.extend(step.events, watch) + len(step.events) - 1
            call.end_watched = final
        self._collector.committed(session.chain, last)
        if final and not step.final:
            self._call_done(call)  # CARP execute: no outcome follows the decision
        return True

    def _refused(self, call: Call, exc: BaseException) -> BaseException:
        """The error a refused call raises; the call is over (fail closed on anything else)."""
        try:
            if not isinstance(exc, CRAError) and isinstance(exc, Exception):
                event, error = internal_denial(call, exc)
                try:
                    session = call.session
                    watch = self._decision_watcher(call, True) if self.observers else None
                    with session.lock:
                        accepted = session.ended_ns is None
                        if accepted:
                            sequence = session.chain.append(event[0], event[1], watch)
                            call.end_watched = True
                    if accepted:
                        self._collector.committed(session.chain, sequence)
                except Exception:
                    logger.warning("could not record the internal denial", exc_info=True)
                return error
            return exc
        finally:
            if self.observers and not call.end_watched and not call.done:
                self.observers.call_end(call, call._states, None)
            self._call_done(call)

    def _call_done(self, call: Call) -> None:
        """The call is over (refused, or its outcome recorded): release its session."""
        if call.done:
            return
        call.done = True
        session = call.session
        with session.lock:
            session.inflight -= 1
            waiting = session.ending is not None and session.inflight == 0
        if waiting:
            self._write_ended(session)

    def _decision_watcher(self, call: Call, final: bool) -> Callable[[Any], None]:
        observers = self.observers

        def decided(events: Sequence[TraceEvent] | None) -> None:
            call._events = list(events) if events is not None else None
            observers.call_decided(call, call._states, events)
            if final:
                observers.call_end(call, call._states, events)

        return decided

    def _outcome_watcher(self, call: Call) -> Callable[[Any], None]:
        observers = self.observers

        def ended(events: Sequence[TraceEvent] | None) -> None:
            seen = call._events
            everything = None if events is None or seen is None else [*seen, *events]
            observers.call_end(call, call._states, everything)

        return ended

    def _ask_sync(self, request: ApprovalRequest) -> ApprovalDecision:
        handler = self.approval_handler
        if isinstance(handler, str):  # "auto_deny" ("console" became a ConsoleApprover)
            return auto_deny(request)
        if inspect.iscoroutinefunction(handler):
            return ApprovalDecision(
                False, "runtime", "approval_error: the handler is async; call the async API"
            )
        future = self._approval_pool().submit(handler, request)
        try:
            answer = future.result(timeout=self.approval_timeout)
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

    async def _ask_async(self, request: ApprovalRequest) -> ApprovalDecision:
        handler = self.approval_handler
        if isinstance(handler, str):  # "auto_deny" ("console" became a ConsoleApprover)
            return auto_deny(request)
        import asyncio  # only async callers get here (import cra_agents stays light)

        deadline = time.monotonic() + self.approval_timeout
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
                    loop.run_in_executor(self._approval_pool(), handler, request),
                    timeout=self.approval_timeout,
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

    def _approval_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=4, thread_name_prefix="cra-approval"
                )
            return self._pool

    def record_event(self, session_id: str, event_type: str, payload: Mapping[str, Any]) -> int:
        """Append an extension event (e.g. ``langchain.llm.started``) to a session's chain.

        For integrations that observe what the runtime does not decide (model calls, chain
        steps). The standard TRACE types and the ``session.``, ``carp.``, ``action.``,
        ``policy.``, ``context.``, ``error.`` and ``checkpoint.`` namespaces are the runtime's
        own and are refused, so nothing can forge a decision. Upstream strict validators reject
        extension types; our verifier, replay and stores keep them. Returns the sequence.

        Raises:
            InvalidRequestError: a reserved or malformed type, or a payload the trace cannot
                record exactly.
        """
        if (
            not _EXTENSION_TYPE.fullmatch(event_type)
            or event_type in EVENT_TYPES
            or event_type.startswith(ev.RESERVED_PREFIXES)
        ):
            raise InvalidRequestError(
                f"event type {event_type!r} is reserved or malformed: use a dotted lower-case "
                "name in your own namespace, e.g. 'myapp.step.done'",
                details={"reason": "reserved_event_type", "event_type": event_type},
            )
        session = self._active(session_id)
        record = copy.deepcopy(dict(payload))
        _recordable(record)
        self._collector.check()
        with session.lock:
            if session.ended_ns is not None:
                raise SessionEndedError(f"session {session_id} has ended")
            sequence = session.chain.append(event_type, record)
        self._collector.committed(session.chain, sequence)
        return sequence

    def execute(self, request: CARPRequest | Mapping[str, Any]) -> ExecuteResponse:
        """Gate an execution: enforce the runtime rules and re-decide the action's policy.

        Appends ``action.requested``, then ``action.approved`` (the call may proceed) or
        ``action.denied`` (and raises). A repeated ``idempotency_key`` with the same action and
        parameters returns the first response and records nothing new.

        Raises:
            InvalidRequestError: malformed request, agent mismatch, clock skew, reused id.
            SessionNotFoundError, SessionEndedError: the session is unknown or over.
            ResolutionNotFoundError, ResolutionExpiredError: no live resolution of that id.
            ActionDeniedError: the action is not allowed (``RateLimitExceededError`` when a rate
                limit is exhausted).
            ApprovalRequiredError: the action needs an approval.
            InvalidParametersError: parameters fail the action's ``parameters_schema``.
            IdempotencyConflictError: the key was used for another action or parameters.
        """
        req = self._parse(request)
        if req.operation != "execute" or req.execution is None:
            raise InvalidRequestError(
                "execute() needs operation 'execute' with 'execution'",
                details={"reason": "wrong_operation"},
            )
        execution = req.execution
        session = self._active(req.requester.session_id)
        self._collector.check()
        action_id = execution.action_id
        execution_id = new_id()
        try:
            parameters_hash = digest(execution.parameters)
        except CRAError as exc:
            raise InvalidParametersError(
                f"parameters of {action_id} cannot be canonicalised: {exc.message}",
                details={"action_id": action_id},
            ) from exc
        key = execution.idempotency_key
        if key is None:
            return self._execute(session, req, parameters_hash, execution_id)
        with session.keyed:
            previous = session.idempotency.get(key)
            if previous is not None:
                # A replay must come from the session's agent, in time, like any request.
                self._check_requester(session, req)
                if previous[:2] != (action_id, parameters_hash):
                    raise IdempotencyConflictError(
                        f"idempotency key {key!r} was used for other parameters or action",
                        details={"idempotency_key": key},
                    )
                return previous[2]
            response = self._execute(session, req, parameters_hash, execution_id)
            session.idempotency[key] = (action_id, parameters_hash, response)
            return response

    def _execute(
        self, session: SessionState, req: CARPRequest, parameters_hash: str, execution_id: str
    ) -> ExecuteResponse:
        execution = req.execution
        assert execution is not None  # noqa: S101 - checked by execute()
        action_id = execution.action_id
        call = self._new_call(
            action_id,
            execution.parameters,
            action_id=action_id,
            session_id=session.session_id,
            risk_tier=req.task.risk_tier,
        )
        call.execution_id = execution_id
        call.resolution_id = execution.resolution_id
        call.runs_tool = False
        stored = None
        try:
            self._admit(session, req)
        except InvalidRequestError as exc:
            call.refusal = (exc, str(exc.details.get("reason", "invalid_request")), RUNTIME_POLICY)
        else:
            stored = session.resolutions.get(execution.resolution_id)
            call.refusal = self._resolution_refusal(call, stored)
        if stored is not None and call.refusal is None:
            # The resolution's request is authoritative: an execute request may raise the risk
            # tier but never lower it, and cannot swap the context its conditions were decided on.
            call.risk_tier = higher_risk(stored.ctx.risk_tier, call.risk_tier)
            call.context = stored.ctx
        try:
            self.gate_sync(call, ask=False)
        except ApprovalRequiredError as exc:
            if stored is not None:
                exc.details["approval_id"] = stored.resolution.decision.approval_id
            raise
        with session.lock:
            session.action_count += 1
        return trusted(
            ExecuteResponse,
            {
                "carp_version": "1.0",
                "execution_id": execution_id,
                "request_id": req.request_id,
                "resolution_id": execution.resolution_id,
                "timestamp": format_timestamp(time.time_ns()),
                "status": "success",
                "result": None,
                "error": None,
                "trace_id": session.trace_id,
            },
        )

    def _resolution_refusal(
        self, call: Call, stored: StoredResolution | None
    ) -> tuple[CRAError, str, str] | None:
        """Runtime rules 4 and 5: a live resolution that allowed the action."""
        resolution_id = call.resolution_id
        if stored is None:
            return (
                ResolutionNotFoundError(
                    f"resolution {resolution_id} does not exist in this session"
                ),
                "resolution_not_found",
                RUNTIME_POLICY,
            )
        if time.monotonic() > stored.expires:
            return (
                ResolutionExpiredError(f"resolution {resolution_id} has expired; resolve again"),
                "resolution_expired",
                RUNTIME_POLICY,
            )
        if call.action_id not in stored.allowed:
            denied = stored.resolution.denied(call.action_id)
            reason = denied.reason if denied else "not among the resolution's allowed actions"
            policy_id = denied.policy_id if denied and denied.policy_id else RUNTIME_POLICY
            return (
                ActionDeniedError(
                    f"{call.action_id} is not allowed by resolution {resolution_id}: {reason}",
                    action_id=call.action_id,
                    policy_id=policy_id,
                    reason=reason,
                ),
                reason,
                policy_id,
            )
        return None


def _shut(collector: TraceCollector, observers: ObserverSet) -> None:
    collector.close()
    observers.shutdown()


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


def _recordable(payload: Mapping[str, Any]) -> None:
    """Refuse, on the caller's thread, a payload the trace could not record exactly."""
    try:
        canonical_json(payload)
    except TraceError as exc:
        raise InvalidRequestError(
            f"cannot be recorded in the trace: {exc.message}",
            details={"reason": "unrecordable", **exc.details},
        ) from exc
