"""UUIDv7 identifiers (RFC 9562), generated fast and unique within a process.

Layout: 48-bit Unix milliseconds, version 7, then 74 bits that are a per-process random prefix
(42 bits, re-drawn after ``fork``) followed by a 32-bit counter. Ids from one process are unique
and increase within a millisecond; ids from different processes collide only if their random
prefixes do (2**-42 per pair). Ids are identifiers, not secrets.
"""

from __future__ import annotations

import functools
import itertools
import os
import secrets
import time

__all__ = ["new_id", "uuid7_batch", "uuid7_from_ns"]

_prefix = 0
_counter = itertools.count()
_low_base = 0


def _reseed() -> None:
    global _prefix, _counter, _low_base
    _prefix = secrets.randbits(42)
    _counter = itertools.count(secrets.randbits(16))
    # variant bits 10, then the low 30 bits of the prefix; the counter fills the last 32 bits
    _low_base = (0b10 << 62) | ((_prefix & 0x3FFFFFFF) << 32)
    _head.cache_clear()


@functools.lru_cache(maxsize=64)
def _head(millis: int) -> str:
    """Everything but the counter for one millisecond: ``xxxxxxxx-xxxx-7xxx-xxxx-xxxx``.

    Time, version, the prefix's top 12 bits, then the variant and the prefix's low 30 bits
    (the fixed upper half of the last 64 bits); the 32-bit counter supplies 8 more hex digits.
    """
    h = "%012x" % millis  # noqa: UP031 - fixed-width hex
    fixed = "%08x" % (_low_base >> 32)
    return f"{h[:8]}-{h[8:12]}-7{_prefix >> 30:03x}-{fixed[:4]}-{fixed[4:]}"


_reseed()
os.register_at_fork(after_in_child=_reseed)


def uuid7_from_ns(time_ns: int) -> str:
    """Return a UUIDv7 string whose timestamp is the millisecond of ``time_ns``."""
    return f"{_head(time_ns // 1_000_000)}{next(_counter) & 0xFFFFFFFF:08x}"


def uuid7_batch(time_ns: int, count: int) -> list[str]:
    """``count`` UUIDv7 strings for the same millisecond (one cache lookup for all)."""
    head = _head(time_ns // 1_000_000)
    counter = _counter
    return [f"{head}{next(counter) & 0xFFFFFFFF:08x}" for _ in range(count)]


def new_id() -> str:
    """Return a new UUIDv7 string for the current time."""
    return uuid7_from_ns(time.time_ns())
