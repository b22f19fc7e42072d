"""Policy conditions compiled once: risk tiers, agents, capabilities, context, time window.

A condition that cannot be evaluated (an unknown time zone, a context value that is not a
string) raises :class:`Unevaluable`; the engine then treats deny and approval rules as matched
and allow rules as not matched, so an evaluation problem can only make a decision stricter.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cra_agents.protocol import Conditions

__all__ = ["CompiledConditions", "ConditionContext", "Unevaluable", "compile_globs"]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Unevaluable(Exception):  # noqa: N818 - a signal, not an error surfaced to users
    """A condition could not be evaluated for this request."""


def compile_globs(patterns: list[str]) -> Callable[[str], bool]:
    """Compile ``fnmatch.fnmatchcase`` patterns into one predicate (exact names via a set)."""
    exact = frozenset(p for p in patterns if not any(c in p for c in "*?["))
    wild = [p for p in patterns if p not in exact]
    if not wild:
        return exact.__contains__
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in wild))
    if not exact:
        return lambda name: regex.match(name) is not None
    return lambda name: name in exact or regex.match(name) is not None


@dataclass(frozen=True, slots=True)
class ConditionContext:
    """What conditions are evaluated against."""

    agent_id: str
    risk_tier: str = "low"
    capabilities: frozenset[str] = frozenset()
    context: Mapping[str, Any] | None = None
    clock: Callable[[], datetime] | None = None


def _parse_time(value: str) -> time:
    text = value.upper()
    return time.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


class CompiledConditions:
    """The conditions of one policy, ready to evaluate."""

    __slots__ = ("_agents", "_capabilities", "_context", "_risk", "_window")

    def __init__(self, conditions: Conditions) -> None:
        self._risk = frozenset(conditions.risk_tiers) if conditions.risk_tiers is not None else None
        self._agents = compile_globs(conditions.agents) if conditions.agents is not None else None
        self._capabilities = (
            frozenset(conditions.capabilities) if conditions.capabilities is not None else None
        )
        self._context = dict(conditions.context_matches) if conditions.context_matches else None
        self._window = conditions.time_window

    def matches(
        self, ctx: ConditionContext, action_capabilities: frozenset[str] = frozenset()
    ) -> bool:
        """Whether every given condition holds.

        Raises:
            Unevaluable: a condition cannot be decided for this request.
        """
        if self._risk is not None and ctx.risk_tier not in self._risk:
            return False
        if self._agents is not None and not self._agents(ctx.agent_id):
            return False
        if self._capabilities is not None and not (
            self._capabilities & ctx.capabilities or self._capabilities & action_capabilities
        ):
            return False
        if self._context is not None and not self._context_matches(ctx.context or {}):
            return False
        return self._window is None or self._in_window(ctx)

    def _context_matches(self, context: Mapping[str, Any]) -> bool:
        for key, expected in self._context.items() if self._context else ():
            if key not in context:
                return False
            actual = context[key]
            if not isinstance(actual, str):
                raise Unevaluable(f"context value {key!r} is {type(actual).__name__}, not a string")
            if actual != expected:
                return False
        return True

    def _in_window(self, ctx: ConditionContext) -> bool:
        window = self._window
        assert window is not None  # noqa: S101 - guarded by the caller
        try:
            now = ctx.clock() if ctx.clock else datetime.now(UTC)
            start = _parse_time(window.start) if window.start else None
            end = _parse_time(window.end) if window.end else None
            # An offset written on the times (RFC 3339 full-time) is the most specific zone;
            # else the window's IANA time zone; else UTC.
            offset = (start.tzinfo if start else None) or (end.tzinfo if end else None)
            if offset is not None:
                now = now.astimezone(offset)
            elif window.timezone:
                from zoneinfo import ZoneInfo

                now = now.astimezone(ZoneInfo(window.timezone))
            else:
                now = now.astimezone(UTC)
        except (ValueError, KeyError, OSError) as exc:
            raise Unevaluable(f"time window cannot be evaluated: {exc}") from exc
        if window.days is not None and _DAYS[now.weekday()] not in window.days:
            return False
        current = now.time().replace(tzinfo=None)
        start = start.replace(tzinfo=None) if start else time.min
        end = end.replace(tzinfo=None) if end else time.max
        if start <= end:
            return start <= current <= end
        return current >= start or current <= end  # wraps midnight
