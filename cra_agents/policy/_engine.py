"""The compiled policy engine.

Phases, first hit wins: deny → require_approval → rate_limit → budget → allow → default.
Within a phase, higher ``priority`` first, then declaration order (atlas load order, then
manifest order). Patterns are ``fnmatch.fnmatchcase`` globs; a policy without ``actions`` covers
every action. Policies of every loaded atlas apply to every declared action, so a policy-only
"guardrail" atlas governs the actions of the others.

Compilation builds, for each declared action id, the tuple of candidate policies of each phase,
already sorted: deciding one action never scans the policy list.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING

from cachetools import LRUCache

from cra_agents.atlas import Atlas
from cra_agents.policy._conditions import (
    CompiledConditions,
    ConditionContext,
    Unevaluable,
    compile_globs,
)
from cra_agents.policy._ratelimit import RateLimiter, RateRule

if TYPE_CHECKING:
    from cra_agents.protocol import Action, Policy

__all__ = [
    "DEFAULT_ALLOW",
    "DEFAULT_DENY",
    "POLICY_PHASES",
    "UNDECLARED_ACTION",
    "CompiledPolicy",
    "Effect",
    "PolicyDecision",
    "PolicyEngine",
    "compile_atlas_policies",
    "compile_policy",
]

DEFAULT_ALLOW = "default-allow"
DEFAULT_DENY = "default-deny"
UNDECLARED_ACTION = "undeclared-action"
#: Policy type -> phase; lower phases decide first (deny, approval, rate limit, budget, allow).
POLICY_PHASES: Mapping[str, int] = MappingProxyType(
    {"deny": 0, "require_approval": 1, "rate_limit": 2, "budget": 3, "scope": 3, "allow": 4}
)


class Effect(enum.Enum):
    """What a policy decision permits."""

    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "requires_approval"


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The decision for one action.

    Attributes:
        effect: Allow, deny or require approval.
        action_id: The action decided.
        policy_id: The deciding policy, or ``default-allow`` / ``default-deny`` /
            ``undeclared-action``.
        reason: Why, for denials and approvals.
        rate_limits: Rate-limit rules that apply to the action (allowed actions only).
        retry_after: Seconds until a rate limit frees a slot, for rate-limit denials.
    """

    effect: Effect
    action_id: str
    policy_id: str
    reason: str | None = None
    rate_limits: tuple[RateRule, ...] = ()
    retry_after: float | None = None

    @property
    def result(self) -> str:
        """The ``policy.evaluated`` result: ``allow``, ``deny`` or ``requires_approval``."""
        return self.effect.value


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A policy ready to evaluate."""

    policy: Policy
    phase: int
    order: int
    matches: Callable[[str], bool]
    conditions: CompiledConditions | None
    rate: RateRule | None = None

    @property
    def policy_id(self) -> str:
        """The policy's id."""
        return self.policy.policy_id

    def applies(
        self, ctx: ConditionContext, capabilities: frozenset[str], *, fail_closed: bool
    ) -> bool:
        """Whether the conditions hold; an unevaluable condition yields ``fail_closed``."""
        if self.conditions is None:
            return True
        try:
            return self.conditions.matches(ctx, capabilities)
        except Unevaluable:
            return fail_closed
        except Exception:  # noqa: BLE001 - any evaluation failure must not loosen a decision
            return fail_closed


def compile_policy(policy: Policy, order: int) -> CompiledPolicy:
    """Compile one policy (globs and conditions)."""
    rate = None
    if policy.type == "rate_limit":
        params = policy.parameters
        max_calls, window = params.get("max_calls"), params.get("window_seconds")
        if (
            isinstance(max_calls, int)
            and not isinstance(max_calls, bool)
            and max_calls >= 1
            and isinstance(window, int)
            and not isinstance(window, bool)
            and window >= 1
        ):
            rate = RateRule(policy.policy_id, max_calls, window)
        else:
            # An unusable limit must not disappear: it allows nothing (validate_atlas says why).
            rate = RateRule(policy.policy_id, 0, 1)
    return CompiledPolicy(
        policy=policy,
        phase=POLICY_PHASES[policy.type],
        order=order,
        matches=compile_globs(policy.patterns),
        conditions=CompiledConditions(policy.conditions) if policy.conditions else None,
        rate=rate,
    )


_cache: LRUCache[tuple[str, str, str], tuple[CompiledPolicy, ...]] = LRUCache(maxsize=128)
_cache_lock = threading.Lock()


def compile_atlas_policies(atlas: Atlas) -> tuple[CompiledPolicy, ...]:
    """The compiled policies of ``atlas``, cached by atlas id, version and content digest."""
    key = (atlas.atlas_id, atlas.version, atlas.digest)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is None:
        hit = tuple(compile_policy(p, i) for i, p in enumerate(atlas.manifest.policies))
        with _cache_lock:
            _cache[key] = hit
    return hit


@dataclass(frozen=True, slots=True)
class _Candidates:
    action: Action
    atlas_id: str
    capabilities: frozenset[str]
    deny: tuple[CompiledPolicy, ...]
    approval: tuple[CompiledPolicy, ...]
    rate: tuple[CompiledPolicy, ...]
    allow: tuple[CompiledPolicy, ...]
    own_rate: tuple[RateRule, ...] = field(default=())
    time_dependent: bool = False


class PolicyEngine:
    """Decides actions against the policies of a set of atlases.

    Args:
        atlases: The loaded atlases, in load order.
        default_deny: Deny declared actions that no policy matches (default: allow them, as
            upstream conformance requires; reported as ``default-allow``).
        clock: Wall clock for time-window conditions.
        limiter: Rate-limit state; shared with whoever else must count the same executions.
    """

    def __init__(
        self,
        atlases: Sequence[Atlas],
        *,
        default_deny: bool = False,
        clock: Callable[[], datetime] | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.default_deny = default_deny
        self.clock = clock
        self.limiter = limiter or RateLimiter(time.monotonic)
        self.atlas_ids: tuple[str, ...] = tuple(atlas.atlas_id for atlas in atlases)
        ranked: list[tuple[tuple[int, int, int, int], CompiledPolicy]] = []
        for position, atlas in enumerate(atlases):
            for policy in compile_atlas_policies(atlas):
                ranked.append(
                    ((policy.phase, -policy.policy.priority, position, policy.order), policy)
                )
        ranked.sort(key=lambda item: item[0])
        self.policies: tuple[CompiledPolicy, ...] = tuple(policy for _, policy in ranked)
        self._index: dict[str, _Candidates] = {}
        for atlas in atlases:
            membership: dict[str, set[str]] = {}
            for capability in atlas.manifest.capabilities:
                for action_id in capability.actions:
                    membership.setdefault(action_id, set()).add(capability.capability_id)
            for action in atlas.manifest.actions:
                if action.action_id in self._index:
                    continue  # first atlas wins; Runtime refuses such conflicts up front
                self._index[action.action_id] = self._candidates(
                    atlas.atlas_id, action, frozenset(membership.get(action.action_id, ()))
                )

    def _candidates(
        self, atlas_id: str, action: Action, capabilities: frozenset[str]
    ) -> _Candidates:
        hits = [p for p in self.policies if p.matches(action.action_id)]
        own: tuple[RateRule, ...] = ()
        limit = action.rate_limit
        if limit is not None and limit.max_calls and limit.window_seconds:
            own = (
                RateRule(f"{action.action_id}#rate_limit", limit.max_calls, limit.window_seconds),
            )
        return _Candidates(
            action=action,
            atlas_id=atlas_id,
            capabilities=capabilities,
            deny=tuple(p for p in hits if p.phase == 0),
            approval=tuple(p for p in hits if p.phase == 1),
            rate=tuple(p for p in hits if p.phase == 2),
            allow=tuple(p for p in hits if p.phase == 4),
            own_rate=own,
            time_dependent=any(
                p.policy.conditions is not None and p.policy.conditions.time_window is not None
                for p in hits
            ),
        )

    def is_declared(self, action_id: str) -> bool:
        """Whether a loaded atlas declares ``action_id``."""
        return action_id in self._index

    def is_time_dependent(self, action_id: str) -> bool:
        """Whether deciding ``action_id`` depends on the wall clock (time-window conditions).

        Every other decision is a pure function of the action and the condition context (rate
        limits aside), which lets the runtime reuse decisions.
        """
        entry = self._index.get(action_id)
        return entry is not None and entry.time_dependent

    def action(self, action_id: str) -> tuple[str, Action] | None:
        """``(atlas_id, action)`` for a declared action."""
        entry = self._index.get(action_id)
        return None if entry is None else (entry.atlas_id, entry.action)

    def decide(
        self,
        action_id: str,
        ctx: ConditionContext,
        *,
        consume: bool = False,
        approved: bool = False,
        check_rates: bool = True,
    ) -> PolicyDecision:
        """Decide one action.

        Args:
            action_id: The action to decide.
            ctx: The request's agent, risk tier, capabilities and context.
            consume: Take a rate-limit slot if the action is allowed (execution); resolution
                only looks.
            approved: An approval for this very call was granted; skip the approval phase.
            check_rates: Look at rate-limit state; when false, an allowed decision lists its
                rate rules without checking them (the caller checks them itself).
        """
        if self.clock is not None and ctx.clock is None:
            ctx = dataclasses.replace(ctx, clock=self.clock)
        entry = self._index.get(action_id)
        if entry is None:
            return PolicyDecision(
                Effect.DENY,
                action_id,
                UNDECLARED_ACTION,
                f"no loaded atlas declares the action {action_id!r} "
                f"(loaded: {', '.join(self.atlas_ids) or 'none'})",
            )
        caps = entry.capabilities
        for policy in entry.deny:
            if policy.applies(ctx, caps, fail_closed=True):
                reason = policy.policy.denial_reason or "Denied by policy"
                return PolicyDecision(Effect.DENY, action_id, policy.policy_id, reason)
        if not approved:
            for policy in entry.approval:
                if policy.applies(ctx, caps, fail_closed=True):
                    reason = policy.policy.denial_reason or "Requires human approval"
                    return PolicyDecision(
                        Effect.REQUIRE_APPROVAL, action_id, policy.policy_id, reason
                    )
        rules = list(entry.own_rate)
        for policy in entry.rate:
            if policy.rate is not None and policy.applies(ctx, caps, fail_closed=True):
                rules.append(policy.rate)
        allow_id: str | None = None
        for policy in entry.allow:
            if policy.applies(ctx, caps, fail_closed=False):
                allow_id = policy.policy_id
                break
        if allow_id is None:
            if self.default_deny:
                return PolicyDecision(
                    Effect.DENY, action_id, DEFAULT_DENY, "no policy allows this action"
                )
            allow_id = DEFAULT_ALLOW
        exhausted = self.limiter.acquire(rules, action_id, consume=consume) if check_rates else None
        if exhausted is not None:
            rule, retry_after = exhausted
            return PolicyDecision(
                Effect.DENY,
                action_id,
                rule.policy_id,
                "rate_limit_exceeded",
                retry_after=retry_after,
            )
        return PolicyDecision(Effect.ALLOW, action_id, allow_id, None, tuple(rules))
