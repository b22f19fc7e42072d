"""CARP over the runtime: request admission, ``resolve`` and ``execute`` (a shell of the gate).

Runtime rules of PROTOCOL §3.6 (unique request id, clock skew, live session, live resolution,
allowed action, parameters) are checked here; the decision itself is the gate's, so a CARP
``execute`` and a guarded call of the same action are decided alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from cra_agents._canonical import digest
from cra_agents._clock import format_timestamp, parse_timestamp_ns
from cra_agents._exceptions import (
    ActionDeniedError,
    ApprovalRequiredError,
    CRAError,
    IdempotencyConflictError,
    InvalidParametersError,
    InvalidRequestError,
    ResolutionExpiredError,
    ResolutionNotFoundError,
    SessionEndedError,
)
from cra_agents._ids import new_id
from cra_agents.atlas import json_pointer
from cra_agents.protocol import CARPRequest, CARPResolution, ExecuteResponse, trusted
from cra_agents.runtime._gate import RUNTIME_POLICY, Call, higher_risk
from cra_agents.runtime._resolve import Resolver, StoredResolution
from cra_agents.runtime._sessions import SessionsMixin, SessionState, check_recordable

__all__ = ["CarpMixin"]

_PRUNE_EVERY = 1024


class CarpMixin(SessionsMixin):
    """``resolve`` and ``execute`` of :class:`~cra_agents.Runtime`."""

    _resolver: Resolver
    clock_skew_seconds: float

    # Defined by Runtime (the call shells); declared here for the type checker only.
    call: Callable[..., Call]
    gate_sync: Callable[..., Call]

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

    def resolve(
        self,
        request: CARPRequest | Mapping[str, Any],
        *,
        context_budget_tokens: int | None = None,
        exclude_context: Collection[tuple[str, str]] = (),
    ) -> CARPResolution:
        """Resolve a CARP request: allowed, denied and approval-bound actions, and context.

        Events: ``carp.request.received``, one ``policy.evaluated`` per considered action,
        one ``context.injected`` per block, ``carp.resolution.completed``.

        Args:
            request: The CARP request (operation ``resolve`` or ``validate``).
            context_budget_tokens: At most this many tokens of context (the blocks'
                ``token_estimate``): in priority order, a block that does not fit what is
                left is left out, and smaller ones after it may still fit.
            exclude_context: ``(source, block_id)`` pairs of blocks the caller already holds
                (e.g. injected on an earlier turn of a conversation): left out.

        The resolution's ``context_blocks`` and its ``context.injected`` events are the
        blocks left after both, so the trace records what the caller was given.

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
            check_recordable({"goal": req.task.goal})
        if context_budget_tokens is not None and context_budget_tokens < 0:
            raise InvalidRequestError(
                "context_budget_tokens must be 0 or more",
                details={"reason": "invalid_context_budget"},
            )
        resolution, batch, stored = self._resolver.resolve(
            req,
            session.trace_id,
            views,
            atlas_ids,
            context_budget_tokens=context_budget_tokens,
            exclude_context=frozenset(exclude_context),
        )
        with session.lock:
            if session.ended_ns is not None:
                raise SessionEndedError(f"session {session.session_id} has ended")
            last = session.chain.extend(batch) + len(batch) - 1
        self._collector.committed(session.chain, last)
        with session.lock:
            session.resolutions[resolution.resolution_id] = stored
            session.resolution_count += 1
        return resolution

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
        call = self.call(
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
