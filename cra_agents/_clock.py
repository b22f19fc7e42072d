"""Timestamps in the one form every TRACE verifier hashes identically.

We write UTC with a ``+00:00`` suffix and 0, 3 or 6 fraction digits, the shortest exact form
(chrono's ``to_rfc3339`` "AutoSi" layout at microsecond precision). Reading accepts any RFC 3339
timestamp with an offset and up to 9 fraction digits, which Python's ``datetime`` cannot hold,
so the nanosecond part is carried separately.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, datetime, timedelta

__all__ = [
    "format_timestamp",
    "normalize_timestamp",
    "now_timestamp",
    "parse_timestamp_ns",
]

_EPOCH = datetime(1970, 1, 1)  # naive, like the parsed wall time it is subtracted from
_SECOND = timedelta(seconds=1)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})\Z"
)


def _render(moment: datetime) -> str:
    # Not strftime: "%Y" drops the zero padding of years before 1000 on glibc.
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )


@functools.lru_cache(maxsize=256)
def _second(seconds: int) -> str:
    return _render(datetime.fromtimestamp(seconds, UTC))


def format_timestamp(time_ns: int) -> str:
    """Format nanoseconds since the epoch as ``YYYY-MM-DDTHH:MM:SS[.fff[fff]]+00:00``."""
    seconds, rem = divmod(time_ns, 1_000_000_000)
    prefix = _second(seconds)
    micros = rem // 1000
    if micros == 0:
        return prefix + "+00:00"
    if micros % 1000 == 0:
        return f"{prefix}.{micros // 1000:03d}+00:00"
    return f"{prefix}.{micros:06d}+00:00"


def now_timestamp() -> str:
    """The current time, formatted by :func:`format_timestamp`."""
    return format_timestamp(time.time_ns())


def parse_timestamp_ns(value: str) -> int:
    """Parse an RFC 3339 timestamp (offset required, up to 9 fraction digits) to epoch ns.

    Raises:
        ValueError: ``value`` is not such a timestamp.
    """
    match = _RFC3339.match(value)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp with an offset: {value!r}")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        base = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError as exc:
        raise ValueError(f"invalid timestamp {value!r}: {exc}") from exc
    if offset in ("Z", "z"):
        delta = timedelta(0)
    else:
        sign = 1 if offset[0] == "+" else -1
        delta = sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
    try:
        epoch = (base - delta - _EPOCH) // _SECOND
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"timestamp {value!r} is out of range") from exc
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return epoch * 1_000_000_000 + nanos


_NORMALIZED = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"
    r"(?:\.(?:(?!000)\d{3}|\d{3}(?!000)\d{3}|\d{6}(?!000)\d{3}))?\+00:00"
)


def normalize_timestamp(value: str) -> str:
    """Render ``value`` the way the Rust core hashes it: UTC, ``+00:00``, 0/3/6/9 digits."""
    if _NORMALIZED.fullmatch(value) is not None:
        return value  # already in that form (what we write): nothing to re-render
    return _normalize_slow(value)


def _normalize_slow(value: str) -> str:
    total = parse_timestamp_ns(value)
    seconds, nanos = divmod(total, 1_000_000_000)
    prefix = _render(datetime.fromtimestamp(seconds, UTC))
    if nanos == 0:
        return prefix + "+00:00"
    if nanos % 1_000_000 == 0:
        return f"{prefix}.{nanos // 1_000_000:03d}+00:00"
    if nanos % 1000 == 0:
        return f"{prefix}.{nanos // 1000:06d}+00:00"
    return f"{prefix}.{nanos:09d}+00:00"
