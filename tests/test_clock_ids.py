from __future__ import annotations

import os
import re
import time
import uuid
import warnings
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cra_agents._clock import (
    format_timestamp,
    normalize_timestamp,
    now_timestamp,
    parse_timestamp_ns,
)
from cra_agents._ids import new_id, uuid7_from_ns

NOON = 1_735_387_200_000_000_000  # 2024-12-28T12:00:00Z in epoch nanoseconds
WRITTEN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3}|\.\d{6})?\+00:00")
# 1970 .. 9999, the range both chrono and datetime render with four-digit years.
EPOCH_NS = st.integers(min_value=0, max_value=253_402_300_799_999_999_999)


class TestFormatTimestamp:
    @pytest.mark.parametrize(
        ("time_ns", "expected"),
        [
            (0, "1970-01-01T00:00:00+00:00"),
            (NOON, "2024-12-28T12:00:00+00:00"),
            (NOON + 500_000_000, "2024-12-28T12:00:00.500+00:00"),
            (NOON + 123_000_000, "2024-12-28T12:00:00.123+00:00"),
            (NOON + 123_456_000, "2024-12-28T12:00:00.123456+00:00"),
            (NOON + 1_000, "2024-12-28T12:00:00.000001+00:00"),
        ],
    )
    def test_shortest_exact_form(self, time_ns, expected):
        """0, 3 or 6 fraction digits, whichever is exact, always with +00:00."""
        assert format_timestamp(time_ns) == expected

    def test_sub_microsecond_truncated(self):
        """Nanoseconds below a microsecond are dropped (microsecond precision)."""
        assert format_timestamp(NOON + 123_456_789) == "2024-12-28T12:00:00.123456+00:00"
        assert format_timestamp(NOON + 999) == "2024-12-28T12:00:00+00:00"

    def test_now(self):
        """now_timestamp() is in the written form and close to the wall clock."""
        stamp = now_timestamp()
        assert WRITTEN.fullmatch(stamp)
        assert abs(parse_timestamp_ns(stamp) - time.time_ns()) < 5 * 10**9

    @given(EPOCH_NS)
    @settings(max_examples=200, deadline=None, database=None)
    def test_written_form_is_already_normalised(self, time_ns):
        """What we write parses back to the microsecond and normalises to itself."""
        stamp = format_timestamp(time_ns)
        assert WRITTEN.fullmatch(stamp)
        assert parse_timestamp_ns(stamp) == time_ns // 1000 * 1000
        assert normalize_timestamp(stamp) == stamp

    @given(EPOCH_NS)
    @settings(max_examples=100, deadline=None, database=None)
    def test_agrees_with_datetime(self, time_ns):
        """The seconds part matches datetime's UTC rendering."""
        expected = datetime.fromtimestamp(time_ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert format_timestamp(time_ns).startswith(expected)


class TestNormalizeTimestamp:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("2024-12-28T12:00:00Z", "2024-12-28T12:00:00+00:00"),
            ("2024-12-28t12:00:00z", "2024-12-28T12:00:00+00:00"),
            ("2024-12-28 12:00:00+00:00", "2024-12-28T12:00:00+00:00"),
            ("2024-12-28T12:00:00.000000Z", "2024-12-28T12:00:00+00:00"),
            ("2024-12-28T12:00:00.000Z", "2024-12-28T12:00:00+00:00"),
            ("2024-12-28T12:00:00.120Z", "2024-12-28T12:00:00.120+00:00"),
            ("2024-12-28T12:00:00.5Z", "2024-12-28T12:00:00.500+00:00"),
            ("2024-12-28T12:00:00.1234Z", "2024-12-28T12:00:00.123400+00:00"),
            ("2024-12-28T12:00:00.123456Z", "2024-12-28T12:00:00.123456+00:00"),
            ("2024-12-28T12:00:00.1234567Z", "2024-12-28T12:00:00.123456700+00:00"),
            ("2024-12-28T12:00:00.123456789Z", "2024-12-28T12:00:00.123456789+00:00"),
            ("2024-12-28T14:00:00+02:00", "2024-12-28T12:00:00+00:00"),
            ("2024-12-28T07:30:00.250-04:30", "2024-12-28T12:00:00.250+00:00"),
            ("2024-12-31T23:30:00-01:00", "2025-01-01T00:30:00+00:00"),
            ("2024-02-29T00:30:00+01:00", "2024-02-28T23:30:00+00:00"),
        ],
    )
    def test_chrono_form(self, value, expected):
        """Any offset becomes UTC +00:00 with 0, 3, 6 or 9 fraction digits."""
        assert normalize_timestamp(value) == expected

    def test_equal_instants_normalise_equally(self):
        """The same instant written with different offsets normalises identically."""
        forms = [
            "2024-12-28T12:00:00.5Z",
            "2024-12-28T13:00:00.500+01:00",
            "2024-12-28T11:00:00.500000000-01:00",
        ]
        assert len({normalize_timestamp(form) for form in forms}) == 1

    def test_four_digit_year_before_1000(self):
        """Years before 1000 keep four digits, as chrono renders them."""
        assert normalize_timestamp("0999-01-01T00:00:00Z") == "0999-01-01T00:00:00+00:00"


class TestParseTimestamp:
    def test_nanoseconds(self):
        """Nine fraction digits are kept to the nanosecond."""
        assert parse_timestamp_ns("2024-12-28T12:00:00.123456789Z") == NOON + 123_456_789

    def test_offset_applied(self):
        """A positive offset is subtracted to reach UTC."""
        assert parse_timestamp_ns("2024-12-28T17:30:00+05:30") == NOON

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "nope",
            "2024-12-28T12:00:00",
            "2024-12-28",
            "2024-12-28T12:00Z",
            "2024-12-28T12:00:00.Z",
            "2024-12-28T12:00:00.1234567890Z",
            "2024-12-28T12:00:00+2:00",
            "2024-12-28T12:00:00+0200",
            " 2024-12-28T12:00:00Z",
            "2024-12-28T12:00:00Z ",
            "2024-12-28T12:00:00Z\n",
        ],
    )
    def test_not_rfc3339(self, value):
        """Strings that are not RFC 3339 with an offset are refused."""
        with pytest.raises(ValueError, match="not an RFC 3339 timestamp"):
            parse_timestamp_ns(value)

    @pytest.mark.parametrize(
        "value",
        [
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-12-28T24:00:00Z",
            "2024-12-28T12:60:00Z",
            "2024-12-28T12:00:61Z",
            "0000-01-01T00:00:00Z",
        ],
    )
    def test_impossible_dates(self, value):
        """Well-formed strings naming no real instant are refused as ValueError."""
        with pytest.raises(ValueError, match="invalid timestamp"):
            parse_timestamp_ns(value)

    @pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
    def test_out_of_range_after_offset(self, value):
        """An instant before year 1 or after 9999 in UTC is refused as ValueError."""
        with pytest.raises(ValueError):
            parse_timestamp_ns(value)


def random_prefix(value: str) -> int:
    """The 42-bit per-process prefix: the top of the 74 bits after version and variant."""
    number = uuid.UUID(value).int
    low74 = ((number >> 64) & 0xFFF) << 62 | (number & ((1 << 62) - 1))
    return low74 >> 32


def uuid_fields(value: str) -> uuid.UUID:
    parsed = uuid.UUID(value)
    assert str(parsed) == value, "ids are canonical lower-case hyphenated UUIDs"
    return parsed


class TestNewId:
    def test_is_uuid_version_7(self):
        """new_id() is a UUID version 7 with the RFC 9562 variant."""
        parsed = uuid_fields(new_id())
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122

    def test_timestamp_is_current_millisecond(self):
        """The top 48 bits are the current Unix time in milliseconds."""
        before = time.time_ns() // 1_000_000
        ms = uuid.UUID(new_id()).int >> 80
        after = time.time_ns() // 1_000_000
        assert before <= ms <= after

    def test_uuid7_from_ns_timestamp(self):
        """uuid7_from_ns() embeds the millisecond of the given time."""
        parsed = uuid_fields(uuid7_from_ns(NOON + 123_999_999))
        assert parsed.int >> 80 == NOON // 1_000_000 + 123
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122

    def test_ten_thousand_unique(self):
        """10k ids in a row are all distinct."""
        ids = [new_id() for _ in range(10_000)]
        assert len(set(ids)) == len(ids)

    def test_increasing_within_one_millisecond(self):
        """Ids for the same instant strictly increase, as strings and as integers."""
        ids = [uuid7_from_ns(NOON) for _ in range(10_000)]
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)
        assert all(uuid.UUID(i).version == 7 for i in ids[::997])

    def test_same_process_shares_prefix(self):
        """Ids from one process share the random prefix; only the counter moves."""
        first, second = uuid7_from_ns(NOON), uuid7_from_ns(NOON)
        assert random_prefix(first) == random_prefix(second)
        assert uuid.UUID(second).int - uuid.UUID(first).int in (1, 1 - 2**32)

    def test_later_millisecond_sorts_after(self):
        """An id of a later millisecond sorts after one of an earlier millisecond."""
        assert uuid7_from_ns(NOON) < uuid7_from_ns(NOON + 1_000_000)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is not available")
class TestFork:
    def test_child_ids_differ_from_parent(self):
        """After fork the child re-draws its random prefix, so its ids differ from the parent's."""
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() in a multi-threaded process; the child only
            # computes an id and exits, so no lock can be held across the fork.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                os.close(read_end)
                os.write(write_end, uuid7_from_ns(NOON).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        parent_id = uuid7_from_ns(NOON)
        with os.fdopen(read_end, "rb") as pipe:
            child_id = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert uuid_fields(child_id).version == 7
        assert child_id != parent_id
        # Not just the counter: the child drew a new 42-bit random prefix.
        assert random_prefix(child_id) != random_prefix(parent_id)
