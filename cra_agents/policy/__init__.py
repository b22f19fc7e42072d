"""The policy engine: compiled phases, globs, conditions and rate limits."""

from __future__ import annotations

from cra_agents.policy._conditions import (
    CompiledConditions,
    ConditionContext,
    Unevaluable,
    compile_globs,
)
from cra_agents.policy._engine import (
    DEFAULT_ALLOW,
    DEFAULT_DENY,
    POLICY_PHASES,
    UNDECLARED_ACTION,
    CompiledPolicy,
    Effect,
    PolicyDecision,
    PolicyEngine,
    compile_atlas_policies,
    compile_policy,
)
from cra_agents.policy._ratelimit import RateLimiter, RateRule

__all__ = [
    "DEFAULT_ALLOW",
    "DEFAULT_DENY",
    "POLICY_PHASES",
    "UNDECLARED_ACTION",
    "CompiledConditions",
    "CompiledPolicy",
    "ConditionContext",
    "Effect",
    "PolicyDecision",
    "PolicyEngine",
    "RateLimiter",
    "RateRule",
    "Unevaluable",
    "compile_atlas_policies",
    "compile_globs",
    "compile_policy",
]
