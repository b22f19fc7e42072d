"""The runtime: sessions, CARP resolution and the execution gate."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import inspect
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    RateLimitExceededError,
    ResolutionExpiredError,
    ResolutionNotFoundError,
    SessionEndedError,
    SessionNotFoundError,
    TraceError,
    TraceUnavailableError,
)
from cra_agents._frozen import FrozenDict, freeze
from cra_agents._ids import new_id
from cra_agents.atlas import Atlas, AtlasSource, load_atlas
from cra_agents.atlas._load import pointer
from cra_agents.policy import ConditionContext, Effect, PolicyDecision, PolicyEngine, RateRule
from cra_agents.protocol import (
    Action,
    AllowedAction,
    CARPRequest,
    CARPResolution,
    Constraint,
    ContextBlock,
    Decision,
    DeniedAction,
    ExecuteResponse,
    RateLimit,
    Task,
    TraceEvent,
)
from cra_agents.protocol._common import trusted
from cra_agents.protocol._trace import EVENT_TYPES
from cra_agents.runtime._approvals import (
    Approval,
    ApprovalDecision,
    ApprovalHandler,
    ApprovalRequest,
    ApprovalStore,
    ConsoleApprover,
    auto_deny,
)
from cra_agents.runtime._context import ContextCandidate, compile_context, select_context
from cra_agents.trace import ChainVerification, SessionChain, TraceStore, verify_chain
from cra_agents.trace._checkpoint import Checkpoint, sign_checkpoint
from cra_agents.trace._collector import Durability, TraceCollector
from cra_agents.trace._files import open_store

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from cra_agents.otel import OTelSpec, Telemetry

__all__ = ["DEFAULT_TTL_SECONDS", "Authorization", "Precheck", "Runtime", "SessionInfo"]

DEFAULT_TTL_SECONDS = 3600
DEFAULT_CLOCK_SKEW_SECONDS = 300
RUNTIME_POLICY = "carp-runtime"
_PRUNE_EVERY = 1024
_RISK_ORDER = {"low": 0, "medium": 1, "high": 2, "critical": 3}
EndReason = Literal["completed", "timeout", "error", "cancelled"]
#: Called with a stored, hashed TRACE event (on the writer's thread), or None when the trace
#: failed and the event will never be stored: see ``authorize``.
Watcher = Callable[[TraceEvent | None], None]


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


@dataclass(frozen=True, slots=True)
class Authorization:
    """A call that may run: with the frozen copy of its arguments it must run with."""

    session_id: str
    action_id: str
    execution_id: str
    arguments: dict[str, Any]
    digest: str
    policy_id: str
    shadow: bool
    approver: str | None
    started_ns: int


@dataclass(frozen=True, slots=True)
class Precheck:
    """What the gate would decide for a call (see :meth:`Runtime.precheck`)."""

    action_id: str
    #: ``allow``, ``deny`` or ``requires_approval``.
    result: str
    policy_id: str
    reason: str | None
    risk_tier: str
    #: Why the arguments are invalid, when they are.
    parameters_problem: str | None

    @property
    def needs_approval(self) -> bool:
        """Whether a person must approve the call before it may run."""
        return self.result == "requires_approval"


@dataclass(slots=True)
class _GateState:
    session: _Session
    execution_id: str
    action_id: str
    arguments: dict[str, Any]
    digest: str
    requested: dict[str, Any]
    decision: PolicyDecision
    risk: str
    atlas_digest: str
    started_ns: int
    watch: Watcher | None


@dataclass(slots=True)
class _Resolution:
    resolution: CARPResolution
    expires: float
    allowed: dict[str, AllowedAction]
    ctx: ConditionContext


@dataclass(frozen=True, slots=True)
class _Plan:
    allowed: tuple[AllowedAction, ...]
    denied: tuple[DeniedAction, ...]
    events: tuple[tuple[str, dict[str, Any]], ...]
    constraints: tuple[Constraint, ...]
    approvals: tuple[str, ...]
    rated: tuple[tuple[str, tuple[RateRule, ...]], ...]
    by_id: dict[str, AllowedAction]


_UNHASHABLE = b"\x00unhashable"


def _context_key(context: Mapping[str, Any]) -> bytes:
    try:
        return canonical_json(context)
    except CRAError:
        return _UNHASHABLE


@dataclass(slots=True)
class _Session:
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
    resolutions: dict[str, _Resolution] = field(default_factory=dict)
    idempotency: dict[str, tuple[str, str, ExecuteResponse]] = field(default_factory=dict)
    resolution_count: int = 0
    action_count: int = 0

    def info(self) -> SessionInfo:
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
        )


class _AtlasView:
    """What resolve needs of one atlas, prepared once."""

    __slots__ = (
        "actions",
        "atlas",
        "capabilities",
        "context",
        "context_time_dependent",
        "position",
        "time_dependent",
    )

    def __init__(self, atlas: Atlas, position: int, engine: PolicyEngine) -> None:
        self.atlas = atlas
        self.position = position
        self.actions: tuple[tuple[Action, AllowedAction], ...] = tuple(
            (action, _allowed_template(action)) for action in atlas.manifest.actions
        )
        self.capabilities: dict[str, frozenset[str]] = {}
        for capability in atlas.manifest.capabilities:
            self.capabilities[capability.capability_id] = frozenset(capability.actions)
        self.context: tuple[ContextCandidate, ...] = compile_context(atlas)
        self.time_dependent = any(
            engine.is_time_dependent(action.action_id) for action in atlas.manifest.actions
        )
        self.context_time_dependent = any(
            pack.conditions is not None and pack.conditions.time_window is not None
            for pack in atlas.manifest.context_packs
        )


def _allowed_template(action: Action) -> AllowedAction:
    # Read-only deep copies: resolutions share them through the plan cache, so a caller must
    # not be able to change another session's view, or the atlas execute() validates against.
    return trusted(
        AllowedAction,
        {
            "action_id": action.action_id,
            "name": action.name,
            "description": action.description,
            "parameters_schema": freeze(action.parameters_schema),
            "returns_schema": freeze(action.returns_schema),
            "risk_tier": action.risk_tier,
            "requires_confirmation": action.requires_confirmation,
            "idempotent": action.idempotent,
            "rate_limit": None,
        },
    )


class Runtime:
    """Resolves CARP requests against loaded atlases and gates executions.

    Every step is appended to the session's TRACE hash chain.

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
            (default) or a callable (sync or async) taking an :class:`ApprovalRequest` and
            returning ``True``/``False`` or an :class:`ApprovalDecision`.
        approval_timeout: Seconds an approver may take; then the call is denied
            (``approval_timeout``).
        shadow: Record what would have been denied as ``policy.violated`` but let guarded
            calls run (for rolling out a new atlas); every such event is flagged ``shadow``.

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
        otel: OTelSpec = None,
    ) -> None:
        loaded = [load_atlas(source) for source in atlases]
        self._check_conflicts(loaded)
        self._atlases: tuple[Atlas, ...] = tuple(loaded)
        self.engine = PolicyEngine(loaded, default_deny=default_deny)
        self._views = tuple(_AtlasView(atlas, i, self.engine) for i, atlas in enumerate(loaded))
        self._by_id = {view.atlas.atlas_id: view for view in self._views}
        # Bounded memo tables (oldest entry evicted first); plain dicts keep lookups cheap.
        self._plans: dict[Any, _Plan] = {}
        self._contexts: dict[Any, Any] = {}
        # (action, agent, risk tier) -> decision, for actions whose decision is a pure function
        # of those (no rate limit, no time window): the per-call gate skips the engine.
        self._gate_decisions: dict[tuple[str, str, str], PolicyDecision] = {}
        self.durability: Durability = durability
        self.store: TraceStore = open_store(store, durable=durability != "async")
        self._collector = TraceCollector(
            self.store,
            durability=durability,
            flush_interval=flush_interval,
            max_backlog=max_backlog,
        )
        #: Span producer (``otel=``), or None; see :mod:`cra_agents.otel`.
        self.telemetry: Telemetry | None = None
        if otel is not None and otel is not False:
            from cra_agents.otel import telemetry_from

            self.telemetry = telemetry_from(otel)
        # Drains and stops the writer when the runtime is dropped or the interpreter exits.
        self._finalizer = weakref.finalize(self, _shut, self._collector, self.telemetry)
        self.ttl_seconds = ttl_seconds
        self.clock_skew_seconds = clock_skew_seconds
        self.approval_ttl_seconds = approval_ttl_seconds
        self.approval_handler: ApprovalHandler = (
            ConsoleApprover() if approval_handler == "console" else approval_handler
        )
        self.approval_timeout = approval_timeout
        #: Shadow mode: record what would be denied (``policy.violated``) but allow the call.
        self.shadow = shadow
        self._approvals = ApprovalStore()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self._all_atlas_ids = [atlas.atlas_id for atlas in loaded]
        self._variants: _Variants = {}

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
        view = self._by_id.get(atlas_id)
        if view is None:
            raise AtlasNotFoundError(f"atlas {atlas_id!r} is not loaded")
        return view.atlas

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
        trace_id = new_id()
        payload: dict[str, Any] = {"agent_id": agent_id, "goal": goal}
        if parent_session_id is not None:
            payload["parent_session_id"] = parent_session_id
        if metadata:
            payload["metadata"] = copy.deepcopy(dict(metadata))
        _recordable(payload)
        self._collector.check()
        chain = SessionChain(session_id, trace_id)
        session = _Session(
            session_id, agent_id, goal, trace_id, parent_session_id, time.time_ns(), chain
        )
        with self._lock:
            if session_id in self._sessions:
                raise CRAError(
                    f"session {session_id} already exists", code="SESSION_ALREADY_EXISTS"
                )
            self._sessions[session_id] = session
        self._collector.committed(chain, chain.append("session.started", payload))
        return session.info()

    def session(self, session_id: str) -> SessionInfo:
        """The current state of a session."""
        return self._session(session_id).info()

    def sessions(self) -> list[SessionInfo]:
        """Every session this runtime knows, oldest first."""
        with self._lock:
            sessions = list(self._sessions.values())
        return [s.info() for s in sessions]

    def _session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFoundError(f"no session {session_id}")
        return session

    def _active(self, session_id: str) -> _Session:
        session = self._session(session_id)
        if session.ended_ns is not None:
            raise SessionEndedError(f"session {session_id} has ended")
        return session

    def end_session(
        self,
        session_id: str,
        reason: EndReason = "completed",
        *,
        error: str | None = None,
        watch: Watcher | None = None,
    ) -> SessionInfo:
        """End a session with ``session.ended``; later requests on it fail.

        ``watch`` is called with ``session.ended``, hashed, once it is stored.
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
        payload: dict[str, Any] = {
            "reason": reason,
            "duration_ms": (session.ended_ns - session.created_ns) // 1_000_000,
            "resolution_count": session.resolution_count,
            "action_count": session.action_count,
        }
        if error is not None:
            payload["error"] = error
        self._collector.committed(
            session.chain, session.chain.append("session.ended", payload, watch)
        )
        return session.info()

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
        if self.telemetry is not None:
            self.telemetry.shutdown()  # after the drain: its watchers end the last spans
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
                f"invalid CARP request: {first['msg']} at {pointer(first['loc']) or '/'}",
                details={"path": pointer(first["loc"]), "reason": "schema"},
            ) from exc

    def _admit(self, session: _Session, request: CARPRequest) -> None:
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

    def _prune(self, session: _Session) -> None:
        """Forget expired resolutions and request ids too old to pass the skew check.

        Called with ``session.lock`` held.
        """
        now = time.monotonic()
        horizon = now - 2 * self.clock_skew_seconds - 1
        session.request_ids = {k: t for k, t in session.request_ids.items() if t >= horizon}
        session.resolutions = {k: r for k, r in session.resolutions.items() if r.expires >= now}

    def _check_requester(self, session: _Session, request: CARPRequest) -> None:
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
        if req.atlas_ids:
            views = []
            for atlas_id in req.atlas_ids:
                view = self._by_id.get(atlas_id)
                if view is None:
                    raise AtlasNotFoundError(
                        f"atlas {atlas_id!r} is not loaded", details={"atlas_id": atlas_id}
                    )
                views.append(view)
            atlas_ids = list(req.atlas_ids)
        else:
            views = list(self._views)
            atlas_ids = self._all_atlas_ids
        self._admit(session, req)
        task = req.task
        if not task.goal.isascii():  # lone surrogates cannot be written as UTF-8
            _recordable({"goal": task.goal})
        required = frozenset(task.required_capabilities)
        ctx = ConditionContext(
            agent_id=req.requester.agent_id,
            risk_tier=task.risk_tier,
            capabilities=required,
            context=req.context,
        )
        context_key = None if req.context is None else _context_key(req.context)
        views_key = None if not req.atlas_ids else tuple(v.position for v in views)
        plan = self._plan(views, views_key, ctx, context_key)
        blocks, block_events = self._context(views, views_key, task, ctx, context_key)
        now_ns = time.time_ns()
        allowed = list(plan.allowed)
        denied = list(plan.denied)
        expires_at = None
        approval_id = None
        if plan.approvals:
            kind = "requires_approval"
            reason = "Approval required for: " + ", ".join(plan.approvals)
            approval_id = new_id()
            expires_at = format_timestamp(now_ns + self.approval_ttl_seconds * 1_000_000_000)
        elif allowed and denied:
            kind, reason = "partial", "Some actions are denied by policy"
        elif denied:
            kind, reason = "deny", "All actions are denied by policy"
        else:
            kind, reason = "allow", None
        resolution_id = new_id()
        resolution = trusted(
            CARPResolution,
            {
                "carp_version": "1.0",
                "resolution_id": resolution_id,
                "request_id": req.request_id,
                "timestamp": format_timestamp(now_ns),
                "decision": trusted(
                    Decision,
                    {
                        "type": kind,
                        "reason": reason,
                        "approval_id": approval_id,
                        "expires_at": expires_at,
                    },
                ),
                "context_blocks": blocks,
                "allowed_actions": allowed,
                "denied_actions": denied,
                "constraints": list(plan.constraints),
                "ttl_seconds": self.ttl_seconds,
                "trace_id": session.trace_id,
            },
        )
        chain = session.chain
        batch: list[tuple[str, Mapping[str, Any]]] = [
            (
                "carp.request.received",
                _request_payload(req, atlas_ids),
            ),
            *plan.events,
            *block_events,
            (
                "carp.resolution.completed",
                {
                    "resolution_id": resolution_id,
                    "request_id": req.request_id,
                    "decision_type": kind,
                    "allowed_count": len(allowed),
                    "denied_count": len(denied),
                    "context_block_count": len(blocks),
                    "ttl_seconds": self.ttl_seconds,
                },
            ),
        ]
        self._collector.committed(chain, chain.extend(batch) + len(batch) - 1)
        stored = _Resolution(resolution, time.monotonic() + self.ttl_seconds, plan.by_id, ctx)
        with session.lock:
            session.resolutions[resolution_id] = stored
            session.resolution_count += 1
        return resolution

    def _plan(
        self,
        views: list[_AtlasView],
        views_key: tuple[int, ...] | None,
        ctx: ConditionContext,
        context_key: bytes | None,
    ) -> _Plan:
        """The per-action decisions for this request, reused while their inputs are unchanged.

        Rate limits are looked at live on every call; time-dependent atlases are decided
        afresh each time.
        """
        cacheable = context_key is not _UNHASHABLE and not any(v.time_dependent for v in views)
        key = (views_key, ctx.agent_id, ctx.risk_tier, ctx.capabilities, context_key)
        plan = self._plans.get(key) if cacheable else None
        if plan is None:
            plan = self._build_plan(views, ctx, live=False)
            if cacheable:
                _remember(self._plans, key, plan, self._lock)
        for action_id, rules in plan.rated:
            if self.engine.limiter.acquire(rules, action_id, consume=False) is not None:
                return self._build_plan(views, ctx, live=True)
        return plan

    def _build_plan(self, views: list[_AtlasView], ctx: ConditionContext, *, live: bool) -> _Plan:
        allowed: list[AllowedAction] = []
        denied: list[DeniedAction] = []
        events: list[tuple[str, dict[str, Any]]] = []
        constraints: dict[str, Constraint] = {}
        approvals: list[str] = []
        rated: list[tuple[str, tuple[RateRule, ...]]] = []
        required = ctx.capabilities
        for view in views:
            members: frozenset[str] | None = None
            if required:
                members = frozenset().union(
                    *(view.capabilities.get(c, frozenset()) for c in required)
                )
            for action, template in view.actions:
                action_id = action.action_id
                if members is not None and action_id not in members:
                    continue
                decision = self.engine.decide(action_id, ctx, check_rates=live)
                events.append(
                    (
                        "policy.evaluated",
                        # Frozen: the plan reuses this payload in every resolve it serves,
                        # and the writer reuses its canonical JSON.
                        FrozenDict(
                            policy_id=decision.policy_id,
                            result=decision.result,
                            action_id=action_id,
                        ),
                    )
                )
                effect = decision.effect
                if effect is Effect.DENY:
                    denied.append(
                        trusted(
                            DeniedAction,
                            {
                                "action_id": action_id,
                                "reason": decision.reason or "Denied by policy",
                                "policy_id": decision.policy_id,
                            },
                        )
                    )
                    continue
                if effect is Effect.REQUIRE_APPROVAL:
                    approvals.append(action_id)
                    _add_constraint(
                        constraints,
                        decision.policy_id,
                        "require_approval",
                        action_id,
                        {"reason": decision.reason},
                    )
                    template = _variant(self._variants, template, confirm=True, rate=None)
                elif decision.rate_limits:
                    rated.append((action_id, decision.rate_limits))
                    for rule in decision.rate_limits:
                        _add_constraint(
                            constraints,
                            rule.policy_id,
                            "rate_limit",
                            action_id,
                            {
                                "max_calls": rule.max_calls,
                                "window_seconds": rule.window_seconds,
                            },
                        )
                    template = _variant(
                        self._variants,
                        template,
                        confirm=template.requires_confirmation,
                        rate=min(
                            decision.rate_limits, key=lambda r: r.max_calls / r.window_seconds
                        ),
                    )
                allowed.append(template)
        return _Plan(
            allowed=tuple(allowed),
            denied=tuple(denied),
            events=tuple(events),
            constraints=tuple(constraints.values()),
            approvals=tuple(approvals),
            rated=tuple(rated),
            by_id={a.action_id: a for a in allowed},
        )

    def _context(
        self,
        views: list[_AtlasView],
        views_key: tuple[int, ...] | None,
        task: Task,
        ctx: ConditionContext,
        context_key: bytes | None,
    ) -> tuple[list[ContextBlock], tuple[tuple[str, dict[str, Any]], ...]]:
        cacheable = context_key is not _UNHASHABLE and not any(
            v.context_time_dependent for v in views
        )
        key = (
            views_key,
            task.goal,
            tuple(task.context_hints),
            ctx.risk_tier,
            ctx.agent_id,
            ctx.capabilities,
            context_key,
        )
        hit = self._contexts.get(key) if cacheable else None
        if hit is None:
            candidates = [(v.position, c) for v in views for c in v.context]
            blocks = select_context(candidates, task.goal, task.context_hints, ctx)
            hit = (
                tuple(blocks),
                tuple(("context.injected", freeze(_injected_payload(b))) for b in blocks),
            )
            if cacheable:
                _remember(self._contexts, key, hit, self._lock)
        return list(hit[0]), hit[1]

    # -- per-call gate (guarded functions, framework middleware) ----------------------------

    def authorize(
        self,
        session_id: str,
        action_id: str,
        arguments: Mapping[str, Any],
        *,
        tool_call_id: str | None = None,
        approval_id: str | None = None,
        approval: ApprovalDecision | None = None,
        watch: Watcher | None = None,
    ) -> Authorization:
        """Decide one call of ``action_id`` with ``arguments`` before it runs.

        The arguments are deep-copied and digested first: the returned
        :class:`Authorization` carries the copy the tool must run with, so nothing can change
        them between decision and execution. Events: ``action.requested``,
        ``policy.evaluated``, then ``action.approved`` or ``action.denied`` (and, in shadow
        mode, ``policy.violated`` for what would have been denied). ``watch`` is called with
        the deciding event (``action.approved`` or ``action.denied``), hashed, once it is
        stored, on the writer's thread (telemetry uses it to carry the chain link).

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
        state = self._gate_start(session_id, action_id, arguments, tool_call_id, watch)
        if state.decision.effect is Effect.REQUIRE_APPROVAL and not self.shadow:
            if approval_id is not None:
                return self._gate_with_token(state, approval_id)
            if approval is not None:
                return self._gate_finish(state, approval)
            return self._gate_finish(state, self._ask_sync(state))
        return self._gate_finish(state, None)

    async def aauthorize(
        self,
        session_id: str,
        action_id: str,
        arguments: Mapping[str, Any],
        *,
        tool_call_id: str | None = None,
        approval_id: str | None = None,
        approval: ApprovalDecision | None = None,
        watch: Watcher | None = None,
    ) -> Authorization:
        """:meth:`authorize` for async callers; async approval handlers are awaited."""
        state = self._gate_start(session_id, action_id, arguments, tool_call_id, watch)
        if state.decision.effect is Effect.REQUIRE_APPROVAL and not self.shadow:
            if approval_id is not None:
                return self._gate_with_token(state, approval_id)
            if approval is not None:
                return self._gate_finish(state, approval)
            return self._gate_finish(state, await self._ask_async(state))
        return self._gate_finish(state, None)

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
            or event_type.startswith(_RESERVED_PREFIXES)
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
        chain = session.chain
        sequence = chain.append(event_type, record)
        self._collector.committed(chain, sequence)
        return sequence

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
        found = self.engine.action(action_id)
        risk = found[1].risk_tier if found is not None else "low"
        if not check_parameters:
            decision = self._gate_decisions.get((action_id, session.agent_id, risk))
            if decision is None:
                decision = self.engine.decide(
                    action_id, ConditionContext(agent_id=session.agent_id, risk_tier=risk)
                )
            return Precheck(
                action_id, decision.result, decision.policy_id, decision.reason, risk, None
            )
        try:
            digest(dict(arguments))
            problem = (
                _schema_problem(found[1].parameters_schema, dict(arguments))
                if found is not None and found[1].parameters_schema is not None
                else None
            )
        except (CRAError, TypeError, RecursionError) as exc:
            problem = ("", str(exc))
        if problem is not None:
            return Precheck(
                action_id, "deny", RUNTIME_POLICY, "invalid_parameters", risk, problem[1]
            )
        decision = self.engine.decide(
            action_id, ConditionContext(agent_id=session.agent_id, risk_tier=risk)
        )
        return Precheck(action_id, decision.result, decision.policy_id, decision.reason, risk, None)

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
        """Grant a single-use approval for exactly these arguments (e.g. from a UI)."""
        session = self._active(session_id)
        found = self.engine.action(action_id)
        if found is None:
            raise ActionNotFoundError(f"no loaded atlas declares {action_id!r}")
        approval = Approval(
            approval_id=new_id(),
            session_id=session.session_id,
            action_id=action_id,
            digest=digest(dict(arguments)),
            atlas_digest=self.atlas(found[0]).digest,
            approver=approver,
            expires_at=time.monotonic() + (ttl_seconds or self.approval_ttl_seconds),
            reason=reason,
        )
        self._approvals.add(approval)
        return approval

    def record_outcome(
        self,
        authorization: Authorization,
        *,
        result: Any = None,
        error: BaseException | None = None,
        watch: Watcher | None = None,
    ) -> None:
        """Record how an authorized call ended: ``action.executed`` or ``action.failed``.

        ``watch`` is called with that event, hashed, once it is stored.
        """
        session = self._session(authorization.session_id)
        duration_ms = (time.monotonic_ns() - authorization.started_ns) // 1_000_000
        payload: dict[str, Any] = {
            "action_id": authorization.action_id,
            "execution_id": authorization.execution_id,
            "duration_ms": duration_ms,
        }
        if error is None:
            kind = "action.executed"
            try:
                payload["result_hash"] = digest(result)
            except CRAError:
                payload["result_hash"] = digest(repr(result))
        else:
            kind = "action.failed"
            payload["error_code"] = type(error).__name__
            payload["error_message"] = str(error)[:2000]
        if authorization.shadow:
            payload["shadow"] = True
        chain = session.chain
        self._collector.committed(chain, chain.append(kind, payload, watch))
        if error is None:
            with session.lock:
                session.action_count += 1

    def _gate_start(
        self,
        session_id: str,
        action_id: str,
        arguments: Mapping[str, Any],
        tool_call_id: str | None,
        watch: Watcher | None,
    ) -> _GateState:
        session = self._active(session_id)
        self._collector.check()
        execution_id = new_id()
        chain = session.chain
        try:
            frozen = _frozen_copy(arguments)
            arguments_digest = digest(frozen)
        except (CRAError, TypeError, copy.Error, RecursionError) as exc:
            requested: dict[str, Any] = {
                "action_id": action_id,
                "execution_id": execution_id,
                "parameters_hash": "",
            }
            self._gate_events(
                chain,
                [
                    ("action.requested", requested),
                    _denied(action_id, execution_id, "invalid_parameters", RUNTIME_POLICY),
                ],
                watch,
            )
            raise InvalidParametersError(
                f"arguments of {action_id} cannot be recorded: {exc}",
                details={"action_id": action_id},
            ) from exc
        requested = {
            "action_id": action_id,
            "execution_id": execution_id,
            "parameters_hash": arguments_digest,
        }
        if tool_call_id is not None:
            requested["tool_call_id"] = tool_call_id
        if self.shadow:
            requested["shadow"] = True  # shadow mode is flagged on every event of the call
        found = self.engine.action(action_id)
        if found is not None and found[1].parameters_schema is not None:
            problem = _schema_problem(found[1].parameters_schema, frozen)
            if problem is not None:
                self._gate_events(
                    chain,
                    [
                        ("action.requested", requested),
                        _denied(action_id, execution_id, "invalid_parameters", RUNTIME_POLICY),
                    ],
                    watch,
                )
                raise InvalidParametersError(
                    f"arguments of {action_id} are invalid: {problem[1]}"
                    f"{' at ' + problem[0] if problem[0] else ''}",
                    details={"action_id": action_id, "path": problem[0]},
                )
        risk = found[1].risk_tier if found is not None else "low"
        key = (action_id, session.agent_id, risk)
        decision = self._gate_decisions.get(key)
        if decision is None:
            ctx = ConditionContext(agent_id=session.agent_id, risk_tier=risk)
            decision = self.engine.decide(action_id, ctx, consume=True)
            if (
                not decision.rate_limits
                and decision.retry_after is None
                and not self.engine.is_time_dependent(action_id)
            ):
                _remember(self._gate_decisions, key, decision, self._lock)
        atlas_digest = self.atlas(found[0]).digest if found is not None else ""
        return _GateState(
            session,
            execution_id,
            action_id,
            frozen,
            arguments_digest,
            requested,
            decision,
            risk,
            atlas_digest,
            time.monotonic_ns(),
            watch,
        )

    def _gate_events(
        self,
        chain: SessionChain,
        events: list[tuple[str, Mapping[str, Any]]],
        watch: Watcher | None,
    ) -> None:
        self._collector.committed(chain, chain.extend(events, watch) + len(events) - 1)

    def _gate_finish(self, state: _GateState, answer: ApprovalDecision | None) -> Authorization:
        decision = state.decision
        evaluated: dict[str, Any] = {
            "policy_id": decision.policy_id,
            "result": decision.result,
            "action_id": state.action_id,
        }
        if self.shadow:
            evaluated["shadow"] = True
        events: list[tuple[str, Mapping[str, Any]]] = [
            ("action.requested", state.requested),
            ("policy.evaluated", evaluated),
        ]
        approver: str | None = None
        shadow = False
        refused: ActionDeniedError | None = None
        if decision.effect is Effect.ALLOW:
            pass
        elif self.shadow:
            shadow = True
            events.append(
                (
                    "policy.violated",
                    {
                        "policy_id": decision.policy_id,
                        "violation_type": "denied_action",
                        "action_id": state.action_id,
                        "details": {
                            "reason": decision.reason or decision.result,
                            "shadow": True,
                            "would_be": decision.result,
                        },
                    },
                )
            )
        elif decision.effect is Effect.REQUIRE_APPROVAL and answer is not None and answer.approved:
            approver = answer.approver
        else:
            reason = decision.reason or "Denied by policy"
            if decision.effect is Effect.REQUIRE_APPROVAL:
                reason = (
                    answer.reason
                    if answer
                    and answer.reason
                    and not answer.approved
                    and answer.reason.startswith("approval_")
                    else "approval_denied"
                )
            events.append(_denied(state.action_id, state.execution_id, reason, decision.policy_id))
            if decision.retry_after is not None:
                refused = RateLimitExceededError(
                    f"{state.action_id}: rate limit {decision.policy_id} exhausted, retry "
                    f"after {decision.retry_after:.0f}s",
                    action_id=state.action_id,
                    policy_id=decision.policy_id,
                    retry_after=decision.retry_after,
                )
            else:
                refused = ActionDeniedError(
                    f"{state.action_id} denied by {decision.policy_id}: {reason}",
                    action_id=state.action_id,
                    policy_id=decision.policy_id,
                    reason=reason,
                )
        if refused is None:
            approved: dict[str, Any] = {
                "action_id": state.action_id,
                "execution_id": state.execution_id,
                "policy_id": decision.policy_id,
            }
            if approver is not None:
                approved["approver"] = approver
                if answer is not None and answer.reason:
                    approved["approval_reason"] = answer.reason
            if shadow:
                approved["shadow"] = True
            events.append(("action.approved", approved))
        self._gate_events(state.session.chain, events, state.watch)
        if refused is not None:
            raise refused
        return Authorization(
            session_id=state.session.session_id,
            action_id=state.action_id,
            execution_id=state.execution_id,
            arguments=state.arguments,
            digest=state.digest,
            policy_id=decision.policy_id,
            shadow=shadow,
            approver=approver,
            started_ns=time.monotonic_ns(),
        )

    def _gate_with_token(self, state: _GateState, approval_id: str) -> Authorization:
        approval, why_not = self._approvals.consume(
            approval_id,
            session_id=state.session.session_id,
            action_id=state.action_id,
            digest=state.digest,
            atlas_digest=state.atlas_digest,
        )
        if approval is None:
            return self._gate_finish(state, ApprovalDecision(False, "token", why_not))
        return self._gate_finish(state, ApprovalDecision(True, approval.approver, approval.reason))

    def _approval_request(self, state: _GateState) -> ApprovalRequest:
        return ApprovalRequest(
            session_id=state.session.session_id,
            agent_id=state.session.agent_id,
            action_id=state.action_id,
            arguments=copy.deepcopy(state.arguments),
            digest=state.digest,
            risk_tier=state.risk,
            reason=state.decision.reason or "Requires human approval",
            policy_id=state.decision.policy_id,
        )

    def _ask_sync(self, state: _GateState) -> ApprovalDecision:
        handler = self.approval_handler
        if isinstance(handler, str):  # "auto_deny" ("console" became a ConsoleApprover)
            return auto_deny(self._approval_request(state))
        if inspect.iscoroutinefunction(handler):
            return ApprovalDecision(
                False, "runtime", "approval_error: the handler is async; call the async API"
            )
        pool = self._approval_pool()
        future = pool.submit(handler, self._approval_request(state))
        try:
            answer = future.result(timeout=self.approval_timeout)
        except concurrent.futures.TimeoutError:
            return ApprovalDecision(False, "runtime", "approval_timeout")
        except Exception as exc:  # noqa: BLE001 - a failing approver approves nothing
            return ApprovalDecision(False, "runtime", f"approval_error: {exc!r}")
        return _as_decision(answer)

    async def _ask_async(self, state: _GateState) -> ApprovalDecision:
        handler = self.approval_handler
        if isinstance(handler, str):  # "auto_deny" ("console" became a ConsoleApprover)
            return auto_deny(self._approval_request(state))
        try:
            result = handler(self._approval_request(state))
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, timeout=self.approval_timeout)
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
        self, session: _Session, req: CARPRequest, parameters_hash: str, execution_id: str
    ) -> ExecuteResponse:
        execution = req.execution
        assert execution is not None  # noqa: S101 - checked by execute()
        action_id = execution.action_id
        chain = session.chain
        chain.append(
            "action.requested",
            {
                "action_id": action_id,
                "resolution_id": execution.resolution_id,
                "execution_id": execution_id,
                "parameters_hash": parameters_hash,
            },
        )

        def refuse(error: CRAError, reason: str, policy_id: str = RUNTIME_POLICY) -> CRAError:
            sequence = chain.append(
                "action.denied",
                {
                    "action_id": action_id,
                    "reason": reason,
                    "policy_id": policy_id,
                    "execution_id": execution_id,
                },
            )
            try:
                self._collector.committed(chain, sequence)
            except TraceUnavailableError as unavailable:
                unavailable.__cause__ = error
                return unavailable
            return error

        try:
            self._admit(session, req)
        except InvalidRequestError as exc:
            raise refuse(exc, str(exc.details.get("reason", "invalid_request"))) from None
        stored = session.resolutions.get(execution.resolution_id)
        if stored is None:
            raise refuse(
                ResolutionNotFoundError(
                    f"resolution {execution.resolution_id} does not exist in this session"
                ),
                "resolution_not_found",
            )
        if time.monotonic() > stored.expires:
            raise refuse(
                ResolutionExpiredError(
                    f"resolution {execution.resolution_id} has expired; resolve again"
                ),
                "resolution_expired",
            )
        if action_id not in stored.allowed:
            denied = stored.resolution.denied(action_id)
            reason = denied.reason if denied else "not among the resolution's allowed actions"
            policy_id = denied.policy_id if denied and denied.policy_id else RUNTIME_POLICY
            raise refuse(
                ActionDeniedError(
                    f"{action_id} is not allowed by resolution {execution.resolution_id}: {reason}",
                    action_id=action_id,
                    policy_id=policy_id,
                    reason=reason,
                ),
                reason,
                policy_id,
            )
        found = self.engine.action(action_id)
        assert found is not None  # noqa: S101 - allowed actions are declared
        schema = found[1].parameters_schema
        if schema is not None:
            problem = _schema_problem(schema, execution.parameters)
            if problem is not None:
                raise refuse(
                    InvalidParametersError(
                        f"parameters of {action_id} are invalid: {problem[1]}"
                        f"{' at ' + problem[0] if problem[0] else ''}",
                        details={"action_id": action_id, "path": problem[0]},
                    ),
                    "invalid_parameters",
                )
        # The resolution's request is authoritative: an execute request may raise the risk tier
        # but never lower it, and cannot swap the context its conditions were decided on.
        risk = max(stored.ctx.risk_tier, req.task.risk_tier, key=_RISK_ORDER.__getitem__)
        ctx = dataclasses.replace(stored.ctx, risk_tier=risk)
        decision = self.engine.decide(action_id, ctx, consume=True)
        if decision.effect is Effect.REQUIRE_APPROVAL:
            raise refuse(
                ApprovalRequiredError(
                    f"{action_id} requires approval: {decision.reason}",
                    details={
                        "action_id": action_id,
                        "policy_id": decision.policy_id,
                        "approval_id": stored.resolution.decision.approval_id,
                    },
                ),
                "approval_required",
                decision.policy_id,
            )
        if decision.effect is Effect.DENY:
            error: ActionDeniedError
            if decision.retry_after is not None:
                error = RateLimitExceededError(
                    f"{action_id}: rate limit {decision.policy_id} exhausted, retry after "
                    f"{decision.retry_after:.0f}s",
                    action_id=action_id,
                    policy_id=decision.policy_id,
                    retry_after=decision.retry_after,
                )
            else:
                error = ActionDeniedError(
                    f"{action_id} is denied by {decision.policy_id}: {decision.reason}",
                    action_id=action_id,
                    policy_id=decision.policy_id,
                    reason=decision.reason or "Denied by policy",
                )
            raise refuse(error, decision.reason or "Denied by policy", decision.policy_id)
        approved = chain.append(
            "action.approved",
            {
                "action_id": action_id,
                "resolution_id": execution.resolution_id,
                "execution_id": execution_id,
                "policy_id": decision.policy_id,
            },
        )
        # In group and sync modes this returns only once the approval is durable: no tool
        # runs on a decision the log might lose. A failed store raises TraceUnavailableError.
        self._collector.committed(chain, approved)
        response = trusted(
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
        with session.lock:
            session.action_count += 1
        return response


_MEMO_SIZE = 1024
_EXTENSION_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
_RESERVED_PREFIXES = (
    "session.",
    "carp.",
    "action.",
    "policy.",
    "context.",
    "error.",
    "checkpoint.",
)


def _request_payload(req: CARPRequest, atlas_ids: Sequence[str]) -> dict[str, Any]:
    """``carp.request.received``: the golden fields, plus what else decided the outcome.

    Extra keys appear only when not at their default, so the upstream golden payload is
    unchanged; with them a trace can be replayed against another atlas.
    """
    task = req.task
    payload: dict[str, Any] = {
        "request_id": req.request_id,
        "operation": req.operation,
        "goal": task.goal,
        "atlas_ids": list(atlas_ids),
    }
    if task.risk_tier != "low":
        payload["risk_tier"] = task.risk_tier
    if task.context_hints:
        payload["context_hints"] = list(task.context_hints)
    if task.required_capabilities:
        payload["required_capabilities"] = list(task.required_capabilities)
    if req.context:
        payload["context"] = req.context
    return payload


_IMMUTABLE = (str, int, float, bool, bytes, type(None))


def _shut(collector: TraceCollector, telemetry: Telemetry | None) -> None:
    collector.close()
    if telemetry is not None:
        telemetry.shutdown()


def _frozen_copy(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the arguments that later changes to the caller's objects cannot reach.

    Scalars are immutable already, so only containers are deep-copied.
    """
    values = dict(arguments)
    for value in values.values():
        if not isinstance(value, _IMMUTABLE):
            return copy.deepcopy(values)
    return values


def _denied(
    action_id: str, execution_id: str, reason: str, policy_id: str
) -> tuple[str, dict[str, Any]]:
    return (
        "action.denied",
        {
            "action_id": action_id,
            "reason": reason,
            "policy_id": policy_id,
            "execution_id": execution_id,
        },
    )


def _as_decision(answer: object) -> ApprovalDecision:
    if isinstance(answer, ApprovalDecision):
        return answer
    if answer is True:
        return ApprovalDecision(True, "handler")
    return ApprovalDecision(False, "handler", "approval_denied")


def _recordable(payload: Mapping[str, Any]) -> None:
    """Refuse, on the caller's thread, a payload the trace could not record exactly."""
    try:
        canonical_json(payload)
    except TraceError as exc:
        raise InvalidRequestError(
            f"cannot be recorded in the trace: {exc.message}",
            details={"reason": "unrecordable", **exc.details},
        ) from exc


def _remember(table: dict[Any, Any], key: Any, value: Any, lock: threading.Lock) -> None:
    with lock:
        if len(table) >= _MEMO_SIZE:
            table.pop(next(iter(table)))
        table[key] = value


def _add_constraint(
    constraints: dict[str, Constraint],
    constraint_id: str,
    kind: str,
    action_id: str,
    parameters: dict[str, Any],
) -> None:
    existing = constraints.get(constraint_id)
    if existing is not None and existing.parameters is not None:
        existing.parameters["action_ids"].append(action_id)
        return
    constraints[constraint_id] = trusted(
        Constraint,
        {
            "constraint_id": constraint_id,
            "type": kind,
            "parameters": {
                **{k: v for k, v in parameters.items() if v is not None},
                "action_ids": [action_id],
            },
        },
    )


_Variants = dict[tuple[str, bool, RateRule | None], AllowedAction]


def _variant(
    variants: _Variants, template: AllowedAction, *, confirm: bool, rate: RateRule | None
) -> AllowedAction:
    if confirm == template.requires_confirmation and rate is None:
        return template
    key = (template.action_id, confirm, rate)
    hit = variants.get(key)
    if hit is None:
        fields = dict(template.__dict__)
        fields["requires_confirmation"] = confirm
        if rate is not None:
            fields["rate_limit"] = trusted(
                RateLimit, {"max_calls": rate.max_calls, "window_seconds": rate.window_seconds}
            )
        hit = variants[key] = trusted(AllowedAction, fields)
    return hit


def _injected_payload(block: ContextBlock) -> dict[str, Any]:
    return {
        "block_id": block.block_id,
        "context_id": block.block_id,
        "source": block.source,
        "source_atlas": block.source,
        "content_type": block.content_type,
        "priority": block.priority,
        "token_count": block.token_estimate or 0,
    }


def _schema_problem(
    schema: Mapping[str, Any], parameters: Mapping[str, Any]
) -> tuple[str, str] | None:
    from cra_agents.runtime._params import first_error

    return first_error(schema, parameters)
