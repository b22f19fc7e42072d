"""The runtime: wiring of atlases, policy, the call gate, sessions, observers and the trace."""

from __future__ import annotations

import copy
import logging
import os
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cra_agents._canonical import digest
from cra_agents._exceptions import (
    ActionNotFoundError,
    AtlasConflictError,
    AtlasNotFoundError,
    CRAError,
    InvalidRequestError,
    SessionEndedError,
    SessionNotFoundError,
    TraceError,
)
from cra_agents._ids import new_id
from cra_agents.atlas import Atlas, AtlasSource, load_atlas
from cra_agents.policy import ConditionContext, PolicyEngine, RateLimiter
from cra_agents.protocol import (
    EVENT_TYPES,
    TraceEvent,
)
from cra_agents.protocol import events as ev
from cra_agents.runtime._approvals import (
    Approval,
    ApprovalDecision,
    ApprovalHandler,
    ApprovalStore,
    Approvers,
    ConsoleApprover,
)
from cra_agents.runtime._carp import CarpMixin
from cra_agents.runtime._gate import (
    Call,
    Gate,
    Precheck,
    Record,
    compile_parameter_checks,
    higher_risk,
    internal_denial,
)
from cra_agents.runtime._mapping import ToolMap
from cra_agents.runtime._observers import ObserverSet, RuntimeObserver, load_observer
from cra_agents.runtime._resolve import Resolver
from cra_agents.runtime._sessions import (
    OpenScopes,
    SessionState,
    check_recordable,
    is_session_id,
    session_for_call,
)
from cra_agents.trace import (
    ChainVerification,
    Checkpoint,
    CommitListener,
    Durability,
    TraceCollector,
    TraceStats,
    TraceStore,
    Writer,
    open_store,
    sign_checkpoint,
    stored_events,
    verify_chain,
    writer_url,
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
_EXTENSION_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


class Runtime(CarpMixin):
    """Resolves CARP requests against loaded atlases and gates tool calls.

    Every step is appended to the session's TRACE hash chain. Every adapter's calls go through
    one gate (:mod:`cra_agents.runtime._gate`): :meth:`call` / :meth:`acall` are the whole
    life of a call as a context manager; :meth:`authorize` / :meth:`record_outcome` are its
    two halves; :meth:`execute` is CARP's execute over the same gate.

    Args:
        atlases: Atlases to load, in order (anything :func:`load_atlas` accepts).
        store: A store or a store URL: ``memory://``, ``jsonl://DIR``, ``sqlite://FILE``,
            ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE`` (the ``postgres`` extra)
            (default: SQLite at ``./.cra/traces.db``, or ``$CRA_AGENTS_STORE``).
        durability: ``async`` (default; the caller never waits for the store), ``group``
            (calls return once their events are synced, sharing syncs) or ``sync``.
        writer: Who hashes and writes events: ``process`` (a writer process: the default for
            ``jsonl://`` and ``sqlite://`` stores, unless ``$CRA_AGENTS_WRITER`` says
            ``thread``), ``thread`` (a thread of this process: always for ``memory://``,
            ``postgresql://`` and store objects of your own) or ``auto``.
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
        >>> rt = Runtime(atlases=[cra_agents.examples.atlas_path("github-ops")])  # doctest: +SKIP
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
        writer: Writer = "auto",
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
        # Serialises load_atlas / unload_atlas (readers use the attributes they swap).
        self._atlas_lock = threading.Lock()
        # Parameter validators are compiled now, not on each action's first call (which would
        # otherwise pay for importing jsonschema and compiling the schema: ~40 ms).
        compile_parameter_checks(
            action.parameters_schema
            for atlas in loaded
            for action in atlas.actions
            if action.parameters_schema is not None
        )
        self.durability: Durability = durability
        # Probed now: a store that cannot be written is refused here, not found out (in
        # async mode, after the calls it should have recorded have run).
        self.store: TraceStore = open_store(store, durable=durability != "async", writable=True)
        try:
            self._collector = TraceCollector(
                self.store,
                durability=durability,
                flush_interval=flush_interval,
                max_backlog=max_backlog,
                process_url=writer_url(self.store, writer),
            )
        except BaseException:
            self.store.close()  # the store is ours until a collector owns it
            raise
        #: The OpenTelemetry observer built from ``otel=`` (see :mod:`cra_agents.otel`), or None.
        self.telemetry: Any = None
        if otel is not None and otel is not False:
            self.telemetry = load_observer("otel", otel)
        everyone = [*observers, *([self.telemetry] if self.telemetry is not None else [])]
        self.observers = ObserverSet(everyone)
        # Checked on every call: a plain bool is cheaper than ObserverSet.__bool__.
        self._observed = bool(everyone)
        # Drains and stops the writer when the runtime is dropped or the interpreter exits.
        self._finalizer = weakref.finalize(self, _shut, self._collector, self.observers)
        self.ttl_seconds = ttl_seconds
        self.clock_skew_seconds = clock_skew_seconds
        self.approval_ttl_seconds = approval_ttl_seconds
        self._approvers = Approvers(approval_handler, approval_timeout)
        #: Shadow mode: record what would be denied (``policy.violated``) but allow the call.
        self.shadow = shadow
        self.implicit_sessions = implicit_sessions
        self._sessions: dict[str, SessionState] = {}
        # Ended sessions, the last ``ended_sessions_kept`` (see SessionsMixin).
        self._ended: OrderedDict[str, SessionState] = OrderedDict()
        self._lock = threading.Lock()
        #: ``cra.session`` blocks open on this runtime and its implicit session.
        self._scopes = OpenScopes()

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

    # -- approvals ------------------------------------------------------------------------

    @property
    def approval_handler(self) -> ApprovalHandler:
        """Who answers approval requests (see the class docstring); may be replaced."""
        return self._approvers.handler

    @approval_handler.setter
    def approval_handler(self, handler: ApprovalHandler) -> None:
        self._approvers.handler = ConsoleApprover() if handler == "console" else handler

    @property
    def approval_timeout(self) -> float:
        """Seconds an approver may take before the call is denied (``approval_timeout``)."""
        return self._approvers.timeout

    @approval_timeout.setter
    def approval_timeout(self, seconds: float) -> None:
        self._approvers.timeout = seconds

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

    def load_atlas(self, source: AtlasSource) -> Atlas:
        """Load one more atlas into the running runtime (thread-safe).

        Its policies, actions and context are in force for every later resolution and call;
        the decisions already made and recorded stand.

        Raises:
            AtlasError: the source is not a valid atlas.
            AtlasConflictError: an atlas of that id is loaded, or one of its action ids is
                declared by a loaded atlas.
        """
        atlas = load_atlas(source)
        compile_parameter_checks(
            action.parameters_schema
            for action in atlas.actions
            if action.parameters_schema is not None
        )
        with self._atlas_lock:
            loaded = [*self._atlases, atlas]
            self._check_conflicts(loaded)
            self._install(loaded)
        return atlas

    def unload_atlas(self, atlas_id: str) -> Atlas:
        """Unload the atlas ``atlas_id`` (thread-safe); returns it.

        Later calls of its actions are refused as undeclared and later resolutions no longer
        offer them; what was already decided and recorded stands.

        Raises:
            AtlasNotFoundError: it is not loaded.
        """
        with self._atlas_lock:
            atlas = self.atlas(atlas_id)
            self._install([a for a in self._atlases if a.atlas_id != atlas_id])
        return atlas

    def _install(self, loaded: list[Atlas]) -> None:
        """Rebuild the engine, resolver and gate over ``loaded`` (fresh caches), then swap."""
        old = self.engine
        engine = PolicyEngine(
            loaded, default_deny=old.default_deny, clock=old.clock, limiter=old.limiter
        )
        resolver = Resolver(
            loaded,
            engine,
            ttl_seconds=self._resolver.ttl_seconds,
            approval_ttl_seconds=self._resolver.approval_ttl_seconds,
        )
        gate = Gate(
            engine,
            ToolMap(loaded),
            self._approvals,
            {atlas.atlas_id: (atlas.version, atlas.digest) for atlas in loaded},
            shadow=self._gate.shadow,
        )
        # The gate first: a call that sees the new gate decides on the new engine.
        self._gate = gate
        self._resolver = resolver
        self.engine = engine
        self._by_id = {atlas.atlas_id: atlas for atlas in loaded}
        self._atlases = tuple(loaded)

    # -- trace ----------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Write every queued event to the store; False if ``timeout`` passed first.

        Raises:
            TraceUnavailableError: recording failed (now or earlier): events were lost.
        """
        done = self._collector.flush(timeout)
        self._collector.raise_failure()
        return done

    def close(self, timeout: float = 10.0) -> None:
        """Drain queued events (bounded wait), stop the writer and close the store.

        Idempotent; also runs at interpreter exit. A closed runtime refuses new work with
        ``TraceUnavailableError``.

        Raises:
            TraceUnavailableError: recording failed while the runtime ran, so events were
                lost (raised by the close that closes, after everything is closed).
        """
        closing = not self._collector.closed
        self._collector.close(timeout)
        self._finalizer.detach()
        self.observers.shutdown()  # after the drain: the last events reached them
        self._approvers.close()
        if closing:
            self._collector.raise_failure()

    def trace_stats(self) -> TraceStats:
        """Events recorded, events lost and calls refused since the runtime started.

        .. versionadded:: 0.2
        """
        return self._collector.stats()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def trace_failure(self) -> BaseException | None:
        """Why events can no longer be recorded, if they cannot (the runtime fails closed)."""
        return self._collector.failure

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run (the runtime refuses new work)."""
        return self._collector.closed

    def trace_events(
        self,
        session_id: str,
        *,
        event_type: str | None = None,
        since_sequence: int | None = None,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        """The session's events in sequence order (queued events are flushed first)."""
        known = session_id in self._sessions or session_id in self._ended
        if not known and (
            not is_session_id(session_id) or self.store.last_sequence(session_id) < 0
        ):
            raise SessionNotFoundError(f"no session {session_id}")
        self._collector.flush()  # an ended session no longer kept may still have events queued
        return self.store.read(
            session_id, event_type=event_type, since_sequence=since_sequence, limit=limit
        )

    def watch_commits(self, session_id: str, listener: CommitListener) -> Callable[[], None]:
        """Call ``listener(sequence)`` whenever events of ``session_id`` are stored.

        Events up to ``sequence`` can then be read (:meth:`trace_events`, or the store by
        sequence). Returns a function that unsubscribes. ``listener`` runs on the trace
        writer's thread and must only hand the news over; ``listener(None)`` means recording
        stopped (trace failure or close). Subscribe, then read what is stored: nothing is
        missed in between (see ``cra_agents.trace._feed``).
        """
        return self._collector.feed.subscribe(session_id, listener)

    def verify(
        self,
        session_id: str,
        *,
        checkpoints: Checkpoint | Iterable[Checkpoint] | None = None,
        verify_key: Ed25519PublicKey | None = None,
    ) -> ChainVerification:
        """Verify the session's chain as stored (and its checkpoints, when given).

        Read with :func:`~cra_agents.trace.stored_events`: a store that streams (the
        PostgreSQL store) a page at a time; a store whose index disagrees with its events is
        reported ``index_mismatch``, not raised.
        """
        self.trace_events(session_id, limit=1)  # an unknown session raises; flushes
        return verify_chain(
            stored_events(self.store, session_id), checkpoints=checkpoints, verify_key=verify_key
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

        ``async with runtime.acall(...)`` (the same method) is the same for async code (async
        approvers are awaited; sync ones run off the event loop).

        Raises:
            ActionDeniedError, ActionNotFoundError, InvalidParametersError,
            SessionEndedError, TraceUnavailableError, InvalidRequestError: on entry.
        """
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
        if self._observed:
            call._states = self.observers.call_start(call)
        try:
            self._collector.check()
        except BaseException as exc:  # noqa: BLE001 - a trace that cannot record refuses
            raise self._refused(call, exc) from None
        return call

    #: :meth:`call` for ``async with``: the same call object, entered with ``async with``.
    acall = call

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
        call = self.call(
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
        call = self.call(
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
            watch = self._outcome_watcher(call) if self._observed else None
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
        if not check_parameters:  # the policy's answer alone: no call is built
            return self._gate.policy_answer(session.agent_id, action_id)
        call = self._gate.new_call(session, action_id, arguments, action_id=action_id)
        return self._gate.precheck(call)

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

    def gate_sync(self, call: Call, *, ask: bool = True) -> Call:
        """Drive the gate for ``call`` on this thread (approvers asked with a timeout)."""
        try:
            if self._gate.allowed(call, self._record_step):
                return call
            flow = self._gate.flow(call, ask=ask)
            step = next(flow)
            while True:
                if isinstance(step, list):
                    reply: Any = self._record_step(call, step)
                else:
                    reply = self._approvers.ask_sync(step)
                step = flow.send(reply)
        except StopIteration:
            return call
        except BaseException as exc:  # noqa: BLE001 - every failure refuses the call
            raise self._refused(call, exc) from None

    async def gate_async(self, call: Call, *, ask: bool = True) -> Call:
        """Drive the gate for ``call`` from async code (async approvers awaited)."""
        try:
            if self._gate.allowed(call, self._record_step):
                return call
            flow = self._gate.flow(call, ask=ask)
            step = next(flow)
            while True:
                if isinstance(step, list):
                    reply: Any = self._record_step(call, step)
                else:
                    reply = await self._approvers.ask_async(step)
                step = flow.send(reply)
        except StopIteration:
            return call
        except BaseException as exc:  # noqa: BLE001 - every failure refuses the call
            raise self._refused(call, exc) from None

    def call_running(self, call: Call) -> None:
        """The tool is about to run: observers make the call current (its span, say)."""
        if self._observed:
            call._tokens = self.observers.activate(call._states)

    def call_returned(self, call: Call) -> None:
        """The tool returned or raised: undo :meth:`call_running`."""
        if self._observed and call._tokens:
            self.observers.deactivate(call._states, call._tokens)
            call._tokens = ()

    def _record_step(self, call: Call, events: Record) -> bool:
        session = call.session
        final = call.refusing or not call.runs_tool
        watch = self._decision_watcher(call, final) if self._observed else None
        with session.lock:
            if session.ended_ns is not None:
                # Ended while this call was being decided (an approver was asked): refused,
                # and nothing is written, since session.ended must be the session's last event.
                return False
            last = session.chain.extend(events, watch) + len(events) - 1
            call.end_watched = final
        self._collector.committed(session.chain, last)
        if final and not call.refusing:
            self._call_done(call)  # CARP execute: no outcome follows the decision
        return True

    def _refused(self, call: Call, exc: BaseException) -> BaseException:
        """The error a refused call raises; the call is over (fail closed on anything else)."""
        try:
            if not isinstance(exc, CRAError) and isinstance(exc, Exception):
                event, error = internal_denial(call, exc)
                try:
                    session = call.session
                    watch = self._decision_watcher(call, True) if self._observed else None
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
            if self._observed and not call.end_watched and not call.done:
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
        record = copy.deepcopy(dict(payload))
        check_recordable(record)
        return self._append(session_id, event_type, record)

    def record_approval_request(
        self,
        session_id: str,
        precheck: Precheck,
        arguments: Mapping[str, Any],
        *,
        tool_call_id: str | None = None,
    ) -> int:
        """Record ``approval.requested``: a person is asked about this call, outside it.

        For adapters whose approval waits outside the call (a LangGraph interrupt: the call
        is made, and decided, after the answer): the trace shows the pending question, and
        the call's ``action.approved`` / ``action.denied`` later records the answer (by
        ``tool_call_id``, else action and arguments digest). ``precheck`` is the one that
        said the call needs approval (:meth:`precheck`). Returns the sequence.
        """
        try:
            parameters_hash = digest(dict(arguments))
        except (CRAError, TypeError, ValueError, RecursionError):
            parameters_hash = ""  # not recordable: the gate refuses the call itself
        payload = ev.approval_requested(
            precheck.action_id,
            parameters_hash,
            precheck.policy_id,
            precheck.reason or "Requires human approval",
            precheck.risk_tier,
            tool_call_id=tool_call_id,
        )
        return self._append(session_id, ev.APPROVAL_REQUESTED, payload)

    def _append(self, session_id: str, event_type: str, record: Mapping[str, Any]) -> int:
        session = self._active(session_id)
        self._collector.check()
        with session.lock:
            if session.ended_ns is not None:
                raise SessionEndedError(f"session {session_id} has ended")
            sequence = session.chain.append(event_type, record)
        self._collector.committed(session.chain, sequence)
        return sequence


def _shut(collector: TraceCollector, observers: ObserverSet) -> None:
    collector.close()
    observers.shutdown()
