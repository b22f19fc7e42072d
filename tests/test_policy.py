from __future__ import annotations

import copy
import fnmatch
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cra_agents as cra
from cra_agents.policy import (
    DEFAULT_ALLOW,
    DEFAULT_DENY,
    UNDECLARED_ACTION,
    ConditionContext,
    Effect,
    PolicyEngine,
    RateLimiter,
    RateRule,
    compile_atlas_policies,
)

# -- helpers ------------------------------------------------------------------------------


def _manifest(
    actions: list[str] | None = None,
    policies: list[dict[str, Any]] | None = None,
    *,
    atlas_id: str = "com.example.test",
    **extra: Any,
) -> dict[str, Any]:
    """A minimal valid Atlas 1.0 manifest with the given action ids and policies."""
    manifest: dict[str, Any] = {
        "atlas_version": "1.0",
        "atlas_id": atlas_id,
        "version": "1.0.0",
        "name": "Test atlas",
        "description": "An atlas built by a test.",
        "actions": [
            {"action_id": a, "name": a, "description": f"The {a} action."}
            for a in (actions if actions is not None else ["a.b"])
        ],
        "policies": policies or [],
    }
    manifest.update(extra)
    return manifest


def _engine(
    actions: list[str] | None = None,
    policies: list[dict[str, Any]] | None = None,
    **kwargs: Any,
) -> PolicyEngine:
    return PolicyEngine([cra.load_atlas(_manifest(actions, policies))], **kwargs)


def _ctx(agent: str = "bot", risk: str = "low", **kwargs: Any) -> ConditionContext:
    return ConditionContext(agent_id=agent, risk_tier=risk, **kwargs)


def _at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> ConditionContext:
    """A context whose clock is fixed at that UTC moment."""
    moment = datetime(year, month, day, hour, minute, tzinfo=UTC)
    return ConditionContext(agent_id="bot", clock=lambda: moment)


def _exhausted(result: tuple[RateRule, float] | None) -> RateRule:
    assert result is not None, "expected an exhausted rule"
    return result[0]


class _Clock:
    """A settable monotonic clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- phase order, priority, declaration order ------------------------------------------------


class TestPhaseOrder:
    def test_deny_beats_higher_priority_approval_and_allow(self):
        """A deny policy wins over approval and allow, whatever their priority."""
        engine = _engine(
            ["a.b"],
            [
                {"policy_id": "allow", "type": "allow", "priority": 1000},
                {"policy_id": "approve", "type": "require_approval", "priority": 999},
                {"policy_id": "deny", "type": "deny", "priority": 0},
            ],
        )
        decision = engine.decide("a.b", _ctx())
        assert (decision.effect, decision.policy_id) == (Effect.DENY, "deny")
        assert decision.result == "deny"

    def test_approval_beats_allow(self):
        """require_approval comes before allow."""
        engine = _engine(
            ["a.b"],
            [
                {"policy_id": "allow", "type": "allow", "priority": 1000},
                {"policy_id": "approve", "type": "require_approval"},
            ],
        )
        decision = engine.decide("a.b", _ctx())
        assert (decision.effect, decision.policy_id) == (Effect.REQUIRE_APPROVAL, "approve")
        assert decision.result == "requires_approval"
        assert decision.reason == "Requires human approval"

    def test_requires_approval_spelling_is_accepted(self):
        """The Rust/atlas spelling ``requires_approval`` means the same phase."""
        engine = _engine(["a.b"], [{"policy_id": "approve", "type": "requires_approval"}])
        assert engine.decide("a.b", _ctx()).effect is Effect.REQUIRE_APPROVAL

    def test_approval_beats_exhausted_rate_limit(self):
        """An approval rule is reported before an exhausted rate limit."""
        engine = _engine(
            ["a.b"],
            [
                {
                    "policy_id": "rl",
                    "type": "rate_limit",
                    "parameters": {"max_calls": 1, "window_seconds": 60},
                },
                {"policy_id": "approve", "type": "require_approval"},
            ],
            limiter=RateLimiter(clock=_Clock()),
        )
        assert engine.decide("a.b", _ctx(), consume=True, approved=True).effect is Effect.ALLOW
        assert engine.decide("a.b", _ctx()).policy_id == "approve"
        assert engine.decide("a.b", _ctx(), approved=True).policy_id == "rl"

    def test_exhausted_rate_limit_beats_allow(self):
        """An exhausted rate limit denies even an explicitly allowed action."""
        engine = _engine(
            ["a.b"],
            [
                {"policy_id": "allow", "type": "allow", "priority": 1000},
                {
                    "policy_id": "rl",
                    "type": "rate_limit",
                    "parameters": {"max_calls": 1, "window_seconds": 60},
                },
            ],
            limiter=RateLimiter(clock=_Clock()),
        )
        first = engine.decide("a.b", _ctx(), consume=True)
        assert (first.effect, first.policy_id) == (Effect.ALLOW, "allow")
        second = engine.decide("a.b", _ctx(), consume=True)
        assert (second.effect, second.policy_id) == (Effect.DENY, "rl")

    def test_allow_policy_reported(self):
        """A matching allow policy is named in the decision."""
        engine = _engine(["a.b"], [{"policy_id": "allow-ab", "type": "allow", "actions": ["a.b"]}])
        decision = engine.decide("a.b", _ctx())
        assert (decision.effect, decision.policy_id, decision.reason) == (
            Effect.ALLOW,
            "allow-ab",
            None,
        )

    def test_no_policy_default_allow(self):
        """A declared action no policy matches is allowed as default-allow."""
        decision = _engine(["a.b"], []).decide("a.b", _ctx())
        assert (decision.effect, decision.policy_id) == (Effect.ALLOW, DEFAULT_ALLOW)
        assert DEFAULT_ALLOW == "default-allow"

    def test_default_deny_mode(self):
        """default_deny=True denies unmatched declared actions as default-deny."""
        engine = _engine(
            ["a.b", "a.c"],
            [{"policy_id": "ok", "type": "allow", "actions": ["a.c"]}],
            default_deny=True,
        )
        denied = engine.decide("a.b", _ctx())
        assert (denied.effect, denied.policy_id) == (Effect.DENY, DEFAULT_DENY)
        assert DEFAULT_DENY == "default-deny"
        assert engine.decide("a.c", _ctx()).effect is Effect.ALLOW

    @pytest.mark.parametrize("default_deny", [False, True])
    def test_undeclared_action_denied(self, default_deny):
        """An action no atlas declares is denied as undeclared-action in both modes."""
        engine = _engine(
            ["a.b"], [{"policy_id": "all", "type": "allow"}], default_deny=default_deny
        )
        decision = engine.decide("zz.top", _ctx())
        assert (decision.effect, decision.policy_id) == (Effect.DENY, UNDECLARED_ACTION)
        assert UNDECLARED_ACTION == "undeclared-action"
        assert not engine.is_declared("zz.top")
        assert engine.is_declared("a.b")


class TestPriority:
    def test_higher_priority_first_within_phase(self):
        """Within a phase the higher priority wins, even when declared later."""
        engine = _engine(
            ["a.b"],
            [
                {"policy_id": "low", "type": "deny", "priority": 1},
                {"policy_id": "high", "type": "deny", "priority": 5},
            ],
        )
        assert engine.decide("a.b", _ctx()).policy_id == "high"

    def test_declaration_order_breaks_ties(self):
        """Equal priority: the policy declared first wins."""
        engine = _engine(
            ["a.b"],
            [
                {"policy_id": "first", "type": "allow", "priority": 3},
                {"policy_id": "second", "type": "allow", "priority": 3},
            ],
        )
        assert engine.decide("a.b", _ctx()).policy_id == "first"

    def test_atlas_load_order_breaks_ties(self):
        """Equal priority across atlases: the atlas loaded first wins."""
        first = cra.load_atlas(_manifest(["a.b"], [{"policy_id": "p-first", "type": "deny"}]))
        second = cra.load_atlas(
            _manifest([], [{"policy_id": "p-second", "type": "deny"}], atlas_id="com.example.guard")
        )
        assert PolicyEngine([first, second]).decide("a.b", _ctx()).policy_id == "p-first"
        assert PolicyEngine([second, first]).decide("a.b", _ctx()).policy_id == "p-second"

    def test_policy_only_atlas_governs_other_atlas(self):
        """A policy-only atlas's rules apply to actions declared elsewhere."""
        actions = cra.load_atlas(_manifest(["a.b"], []))
        guard = cra.load_atlas(
            _manifest(
                [],
                [{"policy_id": "guard", "type": "deny", "actions": ["a.*"]}],
                atlas_id="com.example.guard",
            )
        )
        decision = PolicyEngine([actions, guard]).decide("a.b", _ctx())
        assert (decision.effect, decision.policy_id) == (Effect.DENY, "guard")

    def test_sorted_policies_tuple(self):
        """engine.policies is sorted by phase, then priority descending, then order."""
        engine = _engine(
            ["a.b"],
            [
                {"policy_id": "allow", "type": "allow", "priority": 9},
                {"policy_id": "deny-1", "type": "deny", "priority": 1},
                {"policy_id": "approve", "type": "require_approval"},
                {"policy_id": "deny-2", "type": "deny", "priority": 2},
            ],
        )
        assert [p.policy_id for p in engine.policies] == ["deny-2", "deny-1", "approve", "allow"]


class TestGlobs:
    @pytest.mark.parametrize(
        ("pattern", "action", "hit"),
        [
            ("github.issue.*", "github.issue.close", True),
            ("github.issue.*", "github.pr.merge", False),
            ("github.issue.*", "github.issues.close", False),
            ("*.delete", "x.delete", True),
            ("*.delete", "github.repo.delete", True),
            ("*.delete", "x.deleted", False),
            ("trace.edit_*", "trace.edit_event", True),
            ("trace.edit_*", "trace.editor", False),
            ("a.b", "a.b", True),
            ("a.b", "a.bc", False),
            ("a.?", "a.c", True),
            ("A.B", "a.b", False),
        ],
    )
    def test_fnmatch_patterns(self, pattern, action, hit):
        """Policy patterns are case-sensitive fnmatch globs over the whole id."""
        engine = _engine([action], [{"policy_id": "d", "type": "deny", "actions": [pattern]}])
        assert (engine.decide(action, _ctx()).effect is Effect.DENY) is hit
        assert fnmatch.fnmatchcase(action, pattern) is hit

    def test_policy_without_actions_covers_all(self):
        """A policy with no ``actions`` applies to every declared action."""
        engine = _engine(
            ["a.b", "x.delete", "trace.edit_event"], [{"policy_id": "all", "type": "deny"}]
        )
        for action in ("a.b", "x.delete", "trace.edit_event"):
            assert engine.decide(action, _ctx()).policy_id == "all"

    def test_mixed_exact_and_wild_patterns(self):
        """Exact ids and globs in one list both match."""
        engine = _engine(
            ["a.b", "x.delete", "x.get"],
            [{"policy_id": "d", "type": "deny", "actions": ["a.b", "*.delete"]}],
        )
        assert engine.decide("a.b", _ctx()).effect is Effect.DENY
        assert engine.decide("x.delete", _ctx()).effect is Effect.DENY
        assert engine.decide("x.get", _ctx()).effect is Effect.ALLOW


# -- conditions ------------------------------------------------------------------------------


class TestConditions:
    def test_risk_tiers(self):
        """risk_tiers limits a policy to the listed request tiers."""
        engine = _engine(
            ["a.b"],
            [
                {
                    "policy_id": "d",
                    "type": "deny",
                    "conditions": {"risk_tiers": ["high", "critical"]},
                }
            ],
        )
        assert engine.decide("a.b", _ctx(risk="high")).effect is Effect.DENY
        assert engine.decide("a.b", _ctx(risk="critical")).effect is Effect.DENY
        assert engine.decide("a.b", _ctx(risk="low")).effect is Effect.ALLOW
        assert engine.decide("a.b", _ctx(risk="medium")).effect is Effect.ALLOW

    def test_agents_globs(self):
        """agents is a list of globs over the requesting agent id."""
        engine = _engine(
            ["a.b"],
            [
                {
                    "policy_id": "d",
                    "type": "deny",
                    "conditions": {"agents": ["triage-*", "exact-bot"]},
                }
            ],
        )
        assert engine.decide("a.b", _ctx("triage-bot")).effect is Effect.DENY
        assert engine.decide("a.b", _ctx("exact-bot")).effect is Effect.DENY
        assert engine.decide("a.b", _ctx("release-bot")).effect is Effect.ALLOW
        assert engine.decide("a.b", _ctx("exact-bot-2")).effect is Effect.ALLOW

    def test_capabilities_from_request(self):
        """A capabilities condition matches a capability the request names."""
        engine = _engine(
            ["a.b"], [{"policy_id": "d", "type": "deny", "conditions": {"capabilities": ["admin"]}}]
        )
        assert engine.decide("a.b", _ctx(capabilities=frozenset({"admin"}))).effect is Effect.DENY
        assert engine.decide("a.b", _ctx(capabilities=frozenset({"read"}))).effect is Effect.ALLOW
        assert engine.decide("a.b", _ctx()).effect is Effect.ALLOW

    def test_capabilities_from_action_membership(self):
        """A capabilities condition matches an action that belongs to the capability."""
        manifest = _manifest(
            ["a.b", "a.c"],
            [{"policy_id": "d", "type": "deny", "conditions": {"capabilities": ["admin"]}}],
        )
        manifest["capabilities"] = [{"capability_id": "admin", "name": "Admin", "actions": ["a.b"]}]
        engine = PolicyEngine([cra.load_atlas(manifest)])
        assert engine.decide("a.b", _ctx()).effect is Effect.DENY
        assert engine.decide("a.c", _ctx()).effect is Effect.ALLOW

    def test_context_matches_string_equal(self):
        """context_matches compares string values for equality."""
        engine = _engine(
            ["a.b"],
            [
                {
                    "policy_id": "d",
                    "type": "deny",
                    "conditions": {"context_matches": {"env": "prod"}},
                }
            ],
        )
        assert engine.decide("a.b", _ctx(context={"env": "prod"})).effect is Effect.DENY
        assert engine.decide("a.b", _ctx(context={"env": "dev"})).effect is Effect.ALLOW
        assert engine.decide("a.b", _ctx(context={"env": "PROD"})).effect is Effect.ALLOW

    def test_context_matches_missing_key_is_no_match(self):
        """A missing context key (or no context at all) does not match."""
        engine = _engine(
            ["a.b"],
            [
                {
                    "policy_id": "d",
                    "type": "deny",
                    "conditions": {"context_matches": {"env": "prod"}},
                }
            ],
        )
        assert engine.decide("a.b", _ctx(context={"other": "prod"})).effect is Effect.ALLOW
        assert engine.decide("a.b", _ctx(context=None)).effect is Effect.ALLOW

    @pytest.mark.parametrize("value", [1, None, ["prod"], {"v": "prod"}, True])
    def test_context_non_string_fails_closed(self, value):
        """A non-string context value is unevaluable: deny and approval match, allow does not."""
        conditions = {"context_matches": {"env": "prod"}}
        ctx = _ctx(context={"env": value})
        deny = _engine(["a.b"], [{"policy_id": "d", "type": "deny", "conditions": conditions}])
        assert deny.decide("a.b", ctx).effect is Effect.DENY
        approve = _engine(
            ["a.b"], [{"policy_id": "r", "type": "require_approval", "conditions": conditions}]
        )
        assert approve.decide("a.b", ctx).effect is Effect.REQUIRE_APPROVAL
        allow = _engine(
            ["a.b"],
            [{"policy_id": "ok", "type": "allow", "conditions": conditions}],
            default_deny=True,
        )
        decision = allow.decide("a.b", ctx)
        assert (decision.effect, decision.policy_id) == (Effect.DENY, DEFAULT_DENY)
        allow_default = _engine(
            ["a.b"], [{"policy_id": "ok", "type": "allow", "conditions": conditions}]
        )
        assert allow_default.decide("a.b", ctx).policy_id == DEFAULT_ALLOW

    def test_all_conditions_must_hold(self):
        """Several condition keys are combined with AND."""
        engine = _engine(
            ["a.b"],
            [
                {
                    "policy_id": "d",
                    "type": "deny",
                    "conditions": {"risk_tiers": ["high"], "agents": ["triage-*"]},
                }
            ],
        )
        assert engine.decide("a.b", _ctx("triage-1", "high")).effect is Effect.DENY
        assert engine.decide("a.b", _ctx("triage-1", "low")).effect is Effect.ALLOW
        assert engine.decide("a.b", _ctx("other", "high")).effect is Effect.ALLOW


class TestTimeWindow:
    @staticmethod
    def _deny_in(window: dict[str, Any], **kwargs: Any) -> PolicyEngine:
        return _engine(
            ["a.b"],
            [{"policy_id": "w", "type": "deny", "conditions": {"time_window": window}}],
            **kwargs,
        )

    def test_inside_and_outside(self):
        """A plain window matches from start to end inclusive (UTC without timezone)."""
        engine = self._deny_in({"start": "09:00", "end": "17:00"})
        assert engine.decide("a.b", _at(2024, 1, 1, 9, 0)).effect is Effect.DENY
        assert engine.decide("a.b", _at(2024, 1, 1, 12, 30)).effect is Effect.DENY
        assert engine.decide("a.b", _at(2024, 1, 1, 17, 0)).effect is Effect.DENY
        assert engine.decide("a.b", _at(2024, 1, 1, 8, 59)).effect is Effect.ALLOW
        assert engine.decide("a.b", _at(2024, 1, 1, 17, 1)).effect is Effect.ALLOW

    def test_days(self):
        """days limits the window to the listed weekdays (2024-01-01 is a Monday)."""
        engine = self._deny_in({"days": ["mon", "tue"]})
        assert engine.decide("a.b", _at(2024, 1, 1, 12)).effect is Effect.DENY
        assert engine.decide("a.b", _at(2024, 1, 2, 12)).effect is Effect.DENY
        assert engine.decide("a.b", _at(2024, 1, 3, 12)).effect is Effect.ALLOW
        assert engine.decide("a.b", _at(2024, 1, 7, 12)).effect is Effect.ALLOW

    def test_window_wrapping_midnight(self):
        """start > end wraps midnight."""
        engine = self._deny_in({"start": "22:00", "end": "06:00"})
        assert engine.decide("a.b", _at(2024, 1, 1, 23, 0)).effect is Effect.DENY
        assert engine.decide("a.b", _at(2024, 1, 1, 0, 0)).effect is Effect.DENY
        assert engine.decide("a.b", _at(2024, 1, 1, 5, 59)).effect is Effect.DENY
        assert engine.decide("a.b", _at(2024, 1, 1, 12, 0)).effect is Effect.ALLOW
        assert engine.decide("a.b", _at(2024, 1, 1, 21, 59)).effect is Effect.ALLOW

    def test_timezone(self):
        """The window is read in its timezone (Paris is UTC+1 in January)."""
        engine = self._deny_in({"start": "09:00", "end": "17:00", "timezone": "Europe/Paris"})
        assert engine.decide("a.b", _at(2024, 1, 1, 7, 30)).effect is Effect.ALLOW
        assert engine.decide("a.b", _at(2024, 1, 1, 8, 30)).effect is Effect.DENY
        assert engine.decide("a.b", _at(2024, 1, 1, 16, 30)).effect is Effect.ALLOW

    def test_bad_timezone_is_unevaluable(self):
        """An unknown timezone fails closed: deny matches, allow does not."""
        window = {"start": "00:00", "end": "23:59", "timezone": "Mars/Olympus_Mons"}
        deny = self._deny_in(window)
        assert deny.decide("a.b", _at(2024, 1, 1, 12)).effect is Effect.DENY
        allow = _engine(
            ["a.b"],
            [{"policy_id": "ok", "type": "allow", "conditions": {"time_window": window}}],
            default_deny=True,
        )
        assert allow.decide("a.b", _at(2024, 1, 1, 12)).policy_id == DEFAULT_DENY

    def test_time_dependence_reported(self):
        """Actions under a time-window policy are reported as time dependent."""
        engine = _engine(
            ["a.b", "a.c"],
            [
                {
                    "policy_id": "w",
                    "type": "deny",
                    "actions": ["a.b"],
                    "conditions": {"time_window": {"days": ["mon"]}},
                }
            ],
        )
        assert engine.is_time_dependent("a.b")
        assert not engine.is_time_dependent("a.c")
        assert not engine.is_time_dependent("zz.top")

    def test_offset_in_window_times_is_honoured(self):
        """'09:00+02:00'-'10:00+02:00' covers 07:00-08:00 UTC."""
        engine = self._deny_in({"start": "09:00+02:00", "end": "10:00+02:00"})
        assert engine.decide("a.b", _at(2024, 1, 1, 7, 30)).effect is Effect.DENY
        assert engine.decide("a.b", _at(2024, 1, 1, 9, 30)).effect is Effect.ALLOW

    def test_engine_clock_is_used(self):
        """PolicyEngine(clock=...) drives time-window conditions when the context has none."""
        today = datetime.now(UTC).weekday()
        # A weekday that is neither today nor tomorrow, so the real clock can never match.
        target = (today + 3) % 7
        fixed = datetime(2024, 1, 1 + target, 12, tzinfo=UTC)  # 2024-01-01 is a Monday
        day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[target]
        engine = _engine(
            ["a.b"],
            [{"policy_id": "w", "type": "deny", "conditions": {"time_window": {"days": [day]}}}],
            clock=lambda: fixed,
        )
        assert engine.decide("a.b", _ctx()).effect is Effect.DENY


class TestReasons:
    def test_top_level_reason_first(self):
        """A policy's top-level reason is preferred over parameters.reason."""
        engine = _engine(
            ["a.b"],
            [
                {
                    "policy_id": "d",
                    "type": "deny",
                    "reason": "top",
                    "parameters": {"reason": "param"},
                }
            ],
        )
        assert engine.decide("a.b", _ctx()).reason == "top"

    def test_parameters_reason(self):
        """Without a top-level reason, parameters.reason is used."""
        engine = _engine(
            ["a.b"], [{"policy_id": "d", "type": "deny", "parameters": {"reason": "param"}}]
        )
        assert engine.decide("a.b", _ctx()).reason == "param"

    @pytest.mark.parametrize("parameters", [{}, {"reason": ""}, {"reason": 7}])
    def test_default_reason(self, parameters):
        """No usable reason: "Denied by policy"."""
        engine = _engine(["a.b"], [{"policy_id": "d", "type": "deny", "parameters": parameters}])
        assert engine.decide("a.b", _ctx()).reason == "Denied by policy"

    def test_approval_reason_from_parameters(self):
        """An approval decision carries the policy's reason."""
        engine = _engine(
            ["a.b"],
            [
                {
                    "policy_id": "r",
                    "type": "require_approval",
                    "parameters": {"reason": "ask a human"},
                }
            ],
        )
        assert engine.decide("a.b", _ctx()).reason == "ask a human"


class TestApproved:
    def test_approved_skips_approval_phase(self):
        """approved=True skips require_approval and falls through to allow/default."""
        engine = _engine(
            ["a.b"],
            [{"policy_id": "r", "type": "require_approval"}, {"policy_id": "ok", "type": "allow"}],
        )
        assert engine.decide("a.b", _ctx()).effect is Effect.REQUIRE_APPROVAL
        decision = engine.decide("a.b", _ctx(), approved=True)
        assert (decision.effect, decision.policy_id) == (Effect.ALLOW, "ok")

    def test_approved_does_not_skip_deny(self):
        """An approval never lifts a deny."""
        engine = _engine(
            ["a.b"],
            [{"policy_id": "r", "type": "require_approval"}, {"policy_id": "d", "type": "deny"}],
        )
        assert engine.decide("a.b", _ctx(), approved=True).effect is Effect.DENY


# -- rate limits -------------------------------------------------------------------------------


def _rate_engine(
    max_calls: Any = 2,
    window: Any = 60,
    *,
    clock: _Clock | None = None,
    extra: dict[str, Any] | None = None,
) -> PolicyEngine:
    parameters = {"max_calls": max_calls, "window_seconds": window}
    if extra is not None:
        parameters = extra
    return _engine(
        ["api.call", "api.other", "x.get"],
        [
            {
                "policy_id": "api-limit",
                "type": "rate_limit",
                "actions": ["api.*"],
                "parameters": parameters,
            },
        ],
        limiter=RateLimiter(clock=clock or _Clock()),
    )


class TestRateLimits:
    def test_resolve_style_decide_never_consumes(self):
        """consume=False looks at the window but takes no slot."""
        engine = _rate_engine(2)
        for _ in range(20):
            assert engine.decide("api.call", _ctx()).effect is Effect.ALLOW
        assert engine.decide("api.call", _ctx(), consume=True).effect is Effect.ALLOW
        assert engine.decide("api.call", _ctx(), consume=True).effect is Effect.ALLOW

    def test_third_call_denied(self):
        """With max_calls 2, the third consuming call is denied with rate_limit_exceeded."""
        engine = _rate_engine(2)
        assert engine.decide("api.call", _ctx(), consume=True).effect is Effect.ALLOW
        assert engine.decide("api.call", _ctx(), consume=True).effect is Effect.ALLOW
        third = engine.decide("api.call", _ctx(), consume=True)
        assert (third.effect, third.policy_id, third.reason) == (
            Effect.DENY,
            "api-limit",
            "rate_limit_exceeded",
        )
        assert third.retry_after is not None
        assert third.retry_after > 0
        looked = engine.decide("api.call", _ctx())
        assert (looked.effect, looked.reason) == (Effect.DENY, "rate_limit_exceeded")

    def test_counted_per_action(self):
        """Each action has its own window under one rule."""
        engine = _rate_engine(1)
        assert engine.decide("api.call", _ctx(), consume=True).effect is Effect.ALLOW
        assert engine.decide("api.call", _ctx(), consume=True).effect is Effect.DENY
        assert engine.decide("api.other", _ctx(), consume=True).effect is Effect.ALLOW
        assert engine.decide("x.get", _ctx(), consume=True).effect is Effect.ALLOW

    def test_allowed_decision_lists_rules(self):
        """An allowed, rate-limited decision carries its rules."""
        decision = _rate_engine(2).decide("api.call", _ctx())
        assert decision.rate_limits == (RateRule("api-limit", 2, 60),)
        assert _rate_engine(2).decide("x.get", _ctx()).rate_limits == ()

    def test_window_resets(self):
        """After window_seconds the window starts over; retry_after counts down."""
        clock = _Clock(500.0)
        engine = _rate_engine(2, 60, clock=clock)
        for _ in range(2):
            assert engine.decide("api.call", _ctx(), consume=True).effect is Effect.ALLOW
        clock.now += 20
        denied = engine.decide("api.call", _ctx(), consume=True)
        assert denied.effect is Effect.DENY
        assert denied.retry_after == pytest.approx(40.0)
        clock.now += 40
        assert engine.decide("api.call", _ctx()).effect is Effect.ALLOW
        assert engine.decide("api.call", _ctx(), consume=True).effect is Effect.ALLOW
        assert engine.decide("api.call", _ctx(), consume=True).effect is Effect.ALLOW
        assert engine.decide("api.call", _ctx(), consume=True).effect is Effect.DENY

    def test_check_rates_false_skips_state(self):
        """check_rates=False returns allow with the rules, even when exhausted."""
        engine = _rate_engine(1)
        engine.decide("api.call", _ctx(), consume=True)
        decision = engine.decide("api.call", _ctx(), check_rates=False)
        assert decision.effect is Effect.ALLOW
        assert decision.rate_limits == (RateRule("api-limit", 1, 60),)

    @pytest.mark.parametrize(
        "parameters",
        [
            {"max_calls": 0, "window_seconds": 60},
            {"max_calls": -1, "window_seconds": 60},
            {"max_calls": "2", "window_seconds": 60},
            {"max_calls": 2.0, "window_seconds": 60},
            {"max_calls": True, "window_seconds": 60},
            {"max_calls": 2, "window_seconds": 0},
            {"max_calls": 2},
            {},
        ],
    )
    def test_bad_parameters_allow_nothing(self, parameters):
        """A rate_limit policy with unusable parameters denies every call it covers."""
        engine = _rate_engine(extra=parameters)
        decision = engine.decide("api.call", _ctx())
        assert (decision.effect, decision.policy_id) == (Effect.DENY, "api-limit")
        assert engine.decide("api.call", _ctx(), consume=True).effect is Effect.DENY
        assert engine.decide("x.get", _ctx(), consume=True).effect is Effect.ALLOW

    def test_rate_limit_conditions(self):
        """A rate_limit policy's conditions limit whom it counts."""
        engine = _engine(
            ["api.call"],
            [
                {
                    "policy_id": "rl",
                    "type": "rate_limit",
                    "conditions": {"agents": ["bot-*"]},
                    "parameters": {"max_calls": 1, "window_seconds": 60},
                },
            ],
            limiter=RateLimiter(clock=_Clock()),
        )
        assert engine.decide("api.call", _ctx("bot-1"), consume=True).effect is Effect.ALLOW
        assert engine.decide("api.call", _ctx("bot-1"), consume=True).effect is Effect.DENY
        for _ in range(3):
            assert engine.decide("api.call", _ctx("human"), consume=True).effect is Effect.ALLOW

    def test_action_level_rate_limit(self):
        """An action's own rate_limit field is enforced like a policy."""
        manifest = _manifest(["a.b"], [])
        manifest["actions"][0]["rate_limit"] = {"max_calls": 1, "window_seconds": 30}
        engine = PolicyEngine([cra.load_atlas(manifest)], limiter=RateLimiter(clock=_Clock()))
        first = engine.decide("a.b", _ctx(), consume=True)
        assert first.effect is Effect.ALLOW
        assert first.rate_limits == (RateRule("a.b#rate_limit", 1, 30),)
        second = engine.decide("a.b", _ctx(), consume=True)
        assert (second.effect, second.policy_id, second.reason) == (
            Effect.DENY,
            "a.b#rate_limit",
            "rate_limit_exceeded",
        )

    def test_multiple_rules_consume_atomically(self):
        """When one rule is exhausted, no slot is taken from the others."""
        limiter = RateLimiter(clock=_Clock())
        tight, loose = RateRule("tight", 1, 60), RateRule("loose", 3, 60)
        assert limiter.acquire([tight, loose], "a.b", consume=True) is None
        assert _exhausted(limiter.acquire([tight, loose], "a.b", consume=True)) == tight
        assert limiter.acquire([loose], "a.b", consume=True) is None
        assert limiter.acquire([loose], "a.b", consume=True) is None
        assert _exhausted(limiter.acquire([loose], "a.b", consume=True)) == loose

    def test_reset(self):
        """reset() forgets every window."""
        limiter = RateLimiter(clock=_Clock())
        rule = RateRule("r", 1, 60)
        assert limiter.acquire([rule], "a.b", consume=True) is None
        assert limiter.acquire([rule], "a.b", consume=True) is not None
        limiter.reset()
        assert limiter.acquire([rule], "a.b", consume=True) is None

    def test_no_rules_is_free(self):
        """acquire with no rules never refuses."""
        assert RateLimiter().acquire([], "a.b", consume=True) is None

    def test_thread_safety(self):
        """8 threads x 100 consuming acquires on max_calls=50 take exactly 50 slots."""
        limiter = RateLimiter(clock=lambda: 0.0)
        rule = RateRule("shared", 50, 60)
        successes: list[int] = []
        lock = threading.Lock()
        barrier = threading.Barrier(8)

        def worker() -> None:
            barrier.wait()
            ok = sum(limiter.acquire([rule], "a.b", consume=True) is None for _ in range(100))
            with lock:
                successes.append(ok)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(successes) == 50

    def test_engine_thread_safety(self):
        """Concurrent consuming decides through the engine also take exactly max_calls."""
        engine = _engine(
            ["api.call"],
            [
                {
                    "policy_id": "rl",
                    "type": "rate_limit",
                    "parameters": {"max_calls": 50, "window_seconds": 60},
                },
            ],
            limiter=RateLimiter(clock=lambda: 0.0),
        )
        allowed: list[int] = []
        lock = threading.Lock()

        def worker() -> None:
            ok = sum(
                engine.decide("api.call", _ctx(), consume=True).effect is Effect.ALLOW
                for _ in range(100)
            )
            with lock:
                allowed.append(ok)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(allowed) == 50


# -- upstream CONFORMANCE cases ---------------------------------------------------------------


class TestConformancePorts:
    def test_policy_order_deny_precedence(self):
        """policy.order.deny_precedence: deny *.delete (100) beats allow * (0)."""
        engine = _engine(
            ["resource.get", "resource.delete"],
            [
                {"policy_id": "allow-all", "type": "allow", "priority": 0, "actions": ["*"]},
                {
                    "policy_id": "deny-delete",
                    "type": "deny",
                    "priority": 100,
                    "actions": ["*.delete"],
                },
            ],
        )
        decision = engine.decide("resource.delete", _ctx("test-agent"))
        assert (decision.effect, decision.policy_id) == (Effect.DENY, "deny-delete")
        assert decision.result == "deny"
        get = engine.decide("resource.get", _ctx("test-agent"))
        assert (get.effect, get.policy_id) == (Effect.ALLOW, "allow-all")

    def test_policy_rate_limit_enforced(self):
        """policy.rate_limit.enforced: api.* max 2/60 s → allow, allow, deny."""
        engine = _engine(
            ["api.call"],
            [
                {
                    "policy_id": "api-rate-limit",
                    "type": "rate_limit",
                    "actions": ["api.*"],
                    "parameters": {"max_calls": 2, "window_seconds": 60},
                },
            ],
            limiter=RateLimiter(clock=_Clock()),
        )
        results = [engine.decide("api.call", _ctx("test-agent"), consume=True) for _ in range(3)]
        assert [r.result for r in results] == ["allow", "allow", "deny"]
        assert results[2].reason == "rate_limit_exceeded"

    def test_policy_risk_tier_escalation(self):
        """policy.risk_tier.escalation: high risk needs approval, low risk is allowed."""
        engine = _engine(
            ["resource.update"],
            [
                {
                    "policy_id": "high-risk-approval",
                    "type": "require_approval",
                    "conditions": {"risk_tiers": ["high", "critical"]},
                },
            ],
        )
        high = engine.decide("resource.update", _ctx("test-agent", "high"))
        assert (high.effect, high.policy_id) == (Effect.REQUIRE_APPROVAL, "high-risk-approval")
        assert high.result == "requires_approval"
        low = engine.decide("resource.update", _ctx("test-agent", "low"))
        assert (low.effect, low.policy_id) == (Effect.ALLOW, DEFAULT_ALLOW)


class TestCompileCache:
    def test_same_atlas_same_object(self):
        """compile_atlas_policies returns the cached tuple for the same atlas."""
        atlas = cra.load_atlas(_manifest(["a.b"], [{"policy_id": "d", "type": "deny"}]))
        first = compile_atlas_policies(atlas)
        assert compile_atlas_policies(atlas) is first
        assert [p.policy_id for p in first] == ["d"]

    def test_equal_content_shares_cache(self):
        """Two loads of identical content share the compiled policies."""
        manifest = _manifest(["a.b"], [{"policy_id": "d", "type": "deny"}])
        a1 = cra.load_atlas(copy.deepcopy(manifest))
        a2 = cra.load_atlas(copy.deepcopy(manifest))
        assert compile_atlas_policies(a1) is compile_atlas_policies(a2)

    def test_different_content_not_shared(self):
        """Changing a policy changes the digest and the compiled policies."""
        a1 = cra.load_atlas(_manifest(["a.b"], [{"policy_id": "d", "type": "deny"}]))
        a2 = cra.load_atlas(_manifest(["a.b"], [{"policy_id": "d", "type": "allow"}]))
        assert compile_atlas_policies(a1) is not compile_atlas_policies(a2)
        assert PolicyEngine([a1]).decide("a.b", _ctx()).effect is Effect.DENY
        assert PolicyEngine([a2]).decide("a.b", _ctx()).effect is Effect.ALLOW


# -- differential and metamorphic properties -------------------------------------------------

_VOCAB = ["a.b", "a.c", "x.delete", "x.get"]
_PATTERNS = ["*", "a.*", "*.delete", *_VOCAB]
_AGENTS = ["bot-1", "admin", "triage-x"]
_AGENT_GLOBS = ["bot-*", "admin", "*", "triage-?"]
_TIERS = ["low", "medium", "high", "critical"]
_RESULT = {"deny": "deny", "require_approval": "requires_approval", "allow": "allow"}


def reference_decide(
    manifest: dict[str, Any], action_id: str, agent: str, risk: str
) -> tuple[str, str]:
    """Obviously-correct resolver: scan every policy, keep matches, pick the best."""
    declared = {a["action_id"] for a in manifest["actions"]}
    if action_id not in declared:
        return "deny", "undeclared-action"
    phase_of = {"deny": 0, "require_approval": 1, "allow": 2}
    matches = []
    for order, policy in enumerate(manifest["policies"]):
        patterns = policy.get("actions")
        if patterns is None:
            patterns = ["*"]
        if not any(fnmatch.fnmatchcase(action_id, p) for p in patterns):
            continue
        conditions = policy.get("conditions") or {}
        if "risk_tiers" in conditions and risk not in conditions["risk_tiers"]:
            continue
        if "agents" in conditions and not any(
            fnmatch.fnmatchcase(agent, g) for g in conditions["agents"]
        ):
            continue
        phase = phase_of[policy["type"]]
        matches.append((phase, -policy.get("priority", 0), order, policy))
    if not matches:
        return "allow", "default-allow"
    best = min(matches, key=lambda m: m[:3])[3]
    return _RESULT[best["type"]], best["policy_id"]


@st.composite
def _policy(draw: st.DrawFn, policy_id: str, types: list[str] | None = None) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "policy_id": policy_id,
        "type": draw(st.sampled_from(types or ["allow", "deny", "require_approval"])),
        "priority": draw(st.integers(0, 3)),
    }
    if draw(st.booleans()):
        policy["actions"] = draw(st.lists(st.sampled_from(_PATTERNS), min_size=1, max_size=2))
    conditions: dict[str, Any] = {}
    if draw(st.booleans()):
        conditions["risk_tiers"] = draw(st.lists(st.sampled_from(_TIERS), max_size=3, unique=True))
    if draw(st.booleans()):
        conditions["agents"] = draw(
            st.lists(st.sampled_from(_AGENT_GLOBS), min_size=1, max_size=2, unique=True)
        )
    if conditions:
        policy["conditions"] = conditions
    return policy


@st.composite
def _atlas_case(draw: st.DrawFn) -> dict[str, Any]:
    actions = draw(st.lists(st.sampled_from(_VOCAB), min_size=1, max_size=4, unique=True))
    count = draw(st.integers(0, 6))
    policies = [draw(_policy(f"p{i}")) for i in range(count)]
    return _manifest(actions, policies)


_disagreements: list[tuple[Any, ...]] = []


class TestDifferential:
    @settings(max_examples=300, deadline=None, database=None)
    @given(
        manifest=_atlas_case(),
        action=st.sampled_from(_VOCAB),
        agent=st.sampled_from(_AGENTS),
        risk=st.sampled_from(_TIERS),
    )
    def test_engine_matches_reference(self, manifest, action, agent, risk):
        """PolicyEngine.decide agrees with the reference resolver on effect and policy_id."""
        engine = PolicyEngine([cra.load_atlas(manifest)])
        decision = engine.decide(action, _ctx(agent, risk))
        expected = reference_decide(manifest, action, agent, risk)
        got = (decision.result, decision.policy_id)
        if got != expected:
            _disagreements.append((manifest, action, agent, risk, got, expected))
        assert got == expected

    def test_zero_disagreements(self):
        """The differential run above recorded 0 disagreements."""
        assert _disagreements == []

    @settings(max_examples=120, deadline=None, database=None)
    @given(
        manifest=_atlas_case(),
        extra=_policy("extra-deny", ["deny"]),
        position=st.integers(0, 6),
        agent=st.sampled_from(_AGENTS),
        risk=st.sampled_from(_TIERS),
    )
    def test_adding_deny_never_loosens(self, manifest, extra, position, agent, risk):
        """Adding a deny policy never turns a DENY (or an approval) into ALLOW."""
        before = PolicyEngine([cra.load_atlas(manifest)])
        widened = copy.deepcopy(manifest)
        widened["policies"].insert(min(position, len(widened["policies"])), extra)
        after = PolicyEngine([cra.load_atlas(widened)])
        for action in _VOCAB:
            old = before.decide(action, _ctx(agent, risk)).effect
            new = after.decide(action, _ctx(agent, risk)).effect
            if old is not Effect.ALLOW:
                assert new is not Effect.ALLOW
            if old is Effect.DENY:
                assert new is Effect.DENY
