"""Retry timing shared by the HTTP client and the HTTP trace sink: backoff, jitter, Retry-After."""

from __future__ import annotations

import math
import random
from typing import Literal

__all__ = ["backoff_delay", "retry_after_seconds"]


def backoff_delay(
    attempt: int,
    base: float,
    maximum: float = math.inf,
    *,
    jitter: Literal["full", "half"] = "full",
) -> float:
    """Seconds to wait before retry number ``attempt + 1``: exponential, with jitter.

    Args:
        attempt: Retries already made (0 for the first retry).
        base: The delay of the first retry before jitter, in seconds.
        maximum: The cap of the exponential delay (before jitter), in seconds.
        jitter: ``full``: uniform in ``[0, delay]`` (AWS's "full jitter": clients that failed
            together do not retry together); ``half``: ``delay`` times a factor uniform in
            ``[0.5, 1.5)``.
    """
    delay = min(base * (2.0 ** min(attempt, 62)), maximum)
    if jitter == "full":
        return random.uniform(0.0, delay)  # noqa: S311 - jitter, not a secret
    return delay * (0.5 + random.random())  # noqa: S311 - jitter, not a secret


def retry_after_seconds(value: object, default: float = 1.0) -> float:
    """A ``Retry-After`` value (seconds, as a header string or a number), never negative.

    An HTTP-date or anything else unreadable gives ``default``.
    """
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return max(seconds, 0.0) if math.isfinite(seconds) else default
