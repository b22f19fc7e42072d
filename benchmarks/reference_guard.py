"""The yardstick: a 60-line toy guard with a SHA-256 hash chain written to JSONL.

What a careful engineer writes in an afternoon: a dict lookup decides, the arguments are
digested, and one chained event per call is appended to a buffered JSONL file. No sessions,
approvals, schemas, rate limits, spans or durability modes. The benchmarks compare
``@cra.guarded`` with this guard in the same process, so a ratio shows what the rest costs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class Denied(Exception):  # noqa: N818 - the toy's own name
    """The toy refused the call."""


class ToyGuard:
    """Allow-list decisions and a hash-chained JSONL log."""

    def __init__(self, path: str | Path, allowed: set[str]) -> None:
        self.allowed = allowed
        self.head = "0" * 64
        self.sequence = 0
        self._file = open(path, "ab", buffering=1 << 16)  # noqa: SIM115 - closed by close()

    def _append(self, event: dict[str, Any]) -> None:
        event["sequence"] = self.sequence
        event["previous"] = self.head
        line = json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
        self.head = hashlib.sha256(line).hexdigest()
        self._file.write(line + b"\n")
        self.sequence += 1

    def guard(self, action: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decide and log every call of the decorated function."""

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            @functools.wraps(func)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                digest = hashlib.sha256(repr((args, kwargs)).encode()).hexdigest()
                allowed = action in self.allowed
                self._append(
                    {"action": action, "args": digest, "allowed": allowed, "t": time.time_ns()}
                )
                if not allowed:
                    raise Denied(action)
                return func(*args, **kwargs)

            return wrapper

        return decorate

    def close(self) -> None:
        """Flush and close the log."""
        self._file.close()
