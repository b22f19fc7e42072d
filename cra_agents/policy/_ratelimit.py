"""Fixed-window rate limits, shared by every session of a runtime."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["RateLimiter", "RateRule"]


@dataclass(frozen=True, slots=True)
class RateRule:
    """At most ``max_calls`` per ``window_seconds`` for each action, counted per rule."""

    policy_id: str
    max_calls: int
    window_seconds: int


class RateLimiter:
    """Counts executions per (rule, action) in fixed windows that start at the first call.

    Only consuming checks (execution) take a slot; resolution only looks. Thread-safe: a
    check of several rules and the consumption of a slot in each is one atomic step.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], list[float]] = {}

    def acquire(
        self, rules: Sequence[RateRule], action_id: str, *, consume: bool
    ) -> tuple[RateRule, float] | None:
        """Check ``rules`` for ``action_id``; return ``(rule, retry_after)`` of one exhausted.

        When none is exhausted and ``consume`` is true, one slot of each rule is taken.
        """
        if not rules:
            return None
        now = self._clock()
        with self._lock:
            live: list[list[float]] = []
            for rule in rules:
                key = (rule.policy_id, action_id)
                window = self._windows.get(key)
                if window is None or now - window[0] >= rule.window_seconds:
                    window = [now, 0.0]
                    if consume:
                        self._windows[key] = window
                if window[1] >= rule.max_calls:
                    return rule, max(0.0, rule.window_seconds - (now - window[0]))
                live.append(window)
            if consume:
                for window in live:
                    window[1] += 1
        return None

    def reset(self) -> None:
        """Forget every window (tests, or an operator clearing limits)."""
        with self._lock:
            self._windows.clear()
