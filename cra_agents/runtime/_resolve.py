"""CARP resolution: which actions a request may use, under which constraints, with what context.

The per-action decisions of a request (its *plan*) and its context blocks are memoised while
their inputs are unchanged; rate limits are looked at live on every resolve, and
time-dependent atlases are decided afresh each time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cra_agents._canonical import canonical_json
from cra_agents._clock import format_timestamp
from cra_agents._exceptions import AtlasNotFoundError, CRAError
from cra_agents._frozen import FrozenDict, freeze
from cra_agents._ids import new_id
from cra_agents.atlas import Atlas
from cra_agents.policy import ConditionContext, Effect, PolicyEngine, RateRule
from cra_agents.protocol import (
    AllowedAction,
    CARPRequest,
    CARPResolution,
    Constraint,
    ContextBlock,
    Decision,
    DeniedAction,
    RateLimit,
    Task,
    trusted,
)
from cra_agents.protocol import events as ev
from cra_agents.runtime._context import ContextCandidate, compile_context, select_context

if TYPE_CHECKING:
    from cra_agents.protocol import Action

__all__ = ["Resolver", "StoredResolution"]

_MEMO_SIZE = 1024


@dataclass(slots=True)
class StoredResolution:
    """A resolution a session may execute against until it expires."""

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


class Resolver:
    """Resolves CARP requests against a fixed set of atlases (plans and context memoised)."""

    def __init__(
        self,
        atlases: Sequence[Atlas],
        engine: PolicyEngine,
        *,
        ttl_seconds: int,
        approval_ttl_seconds: int,
    ) -> None:
        self.engine = engine
        self.ttl_seconds = ttl_seconds
        self.approval_ttl_seconds = approval_ttl_seconds
        self._views = tuple(_AtlasView(atlas, i, engine) for i, atlas in enumerate(atlases))
        self._by_id = {view.atlas.atlas_id: view for view in self._views}
        self._all_atlas_ids = [atlas.atlas_id for atlas in atlases]
        # Bounded memo tables (oldest entry evicted first); plain dicts keep lookups cheap.
        self._plans: dict[Any, _Plan] = {}
        self._contexts: dict[Any, Any] = {}
        self._variants: _Variants = {}
        self._lock = threading.Lock()

    def views_for(self, atlas_ids: Sequence[str]) -> tuple[list[_AtlasView], list[str]]:
        """The atlases a request names (all when it names none), and their ids.

        Raises:
            AtlasNotFoundError: a named atlas is not loaded.
        """
        if not atlas_ids:
            return list(self._views), self._all_atlas_ids
        views = []
        for atlas_id in atlas_ids:
            view = self._by_id.get(atlas_id)
            if view is None:
                raise AtlasNotFoundError(
                    f"atlas {atlas_id!r} is not loaded", details={"atlas_id": atlas_id}
                )
            views.append(view)
        return views, list(atlas_ids)

    def resolve(
        self,
        req: CARPRequest,
        trace_id: str,
        views: list[_AtlasView],
        atlas_ids: Sequence[str],
        *,
        context_budget_tokens: int | None = None,
        exclude_context: Collection[tuple[str, str]] = (),
    ) -> tuple[CARPResolution, list[tuple[str, Mapping[str, Any]]], StoredResolution]:
        """The resolution of ``req``, the events that record it, and what execute keeps.

        ``exclude_context`` (``(source, block_id)`` pairs the caller already holds) and
        ``context_budget_tokens`` narrow the selected blocks (see :func:`_fit`).
        """
        task = req.task
        ctx = ConditionContext(
            agent_id=req.requester.agent_id,
            risk_tier=task.risk_tier,
            capabilities=frozenset(task.required_capabilities),
            context=req.context,
        )
        context_key = None if req.context is None else _context_key(req.context)
        views_key = None if not req.atlas_ids else tuple(v.position for v in views)
        plan = self._plan(views, views_key, ctx, context_key)
        blocks, block_events = self._context(views, views_key, task, ctx, context_key)
        if context_budget_tokens is not None or exclude_context:
            blocks, block_events = _fit(
                blocks, block_events, context_budget_tokens, exclude_context
            )
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
                "trace_id": trace_id,
            },
        )
        batch: list[tuple[str, Mapping[str, Any]]] = [
            (
                ev.REQUEST_RECEIVED,
                ev.request_received(
                    req.request_id,
                    req.operation,
                    task.goal,
                    atlas_ids,
                    risk_tier=task.risk_tier,
                    context_hints=task.context_hints,
                    required_capabilities=task.required_capabilities,
                    context=req.context,
                ),
            ),
            *plan.events,
            *block_events,
            (
                ev.RESOLUTION_COMPLETED,
                ev.resolution_completed(
                    resolution_id,
                    req.request_id,
                    kind,
                    len(allowed),
                    len(denied),
                    len(blocks),
                    self.ttl_seconds,
                ),
            ),
        ]
        stored = StoredResolution(resolution, time.monotonic() + self.ttl_seconds, plan.by_id, ctx)
        return resolution, batch, stored

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
                        ev.POLICY_EVALUATED,
                        # Frozen: the plan reuses this payload in every resolve it serves,
                        # and the writer reuses its canonical JSON.
                        FrozenDict(
                            ev.policy_evaluated(decision.policy_id, decision.result, action_id)
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
                tuple((ev.CONTEXT_INJECTED, freeze(_injected_payload(b))) for b in blocks),
            )
            if cacheable:
                _remember(self._contexts, key, hit, self._lock)
        return list(hit[0]), hit[1]


def _fit(
    blocks: list[ContextBlock],
    events: tuple[tuple[str, dict[str, Any]], ...],
    budget: int | None,
    exclude: Collection[tuple[str, str]],
) -> tuple[list[ContextBlock], tuple[tuple[str, dict[str, Any]], ...]]:
    """The blocks (and their events) not excluded that fit the token budget.

    In priority order, a block that does not fit what is left of the budget is skipped and
    smaller ones after it may still fit. Only what is kept is recorded as injected.
    """
    kept: list[ContextBlock] = []
    kept_events: list[tuple[str, dict[str, Any]]] = []
    left = budget
    for block, event in zip(blocks, events, strict=True):
        if (block.source, block.block_id) in exclude:
            continue
        if left is not None:
            tokens = block.token_estimate or 0
            if tokens > left:
                continue
            left -= tokens
        kept.append(block)
        kept_events.append(event)
    return kept, tuple(kept_events)


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
    return ev.context_injected(
        block.block_id, block.source, block.content_type, block.priority, block.token_estimate or 0
    )
