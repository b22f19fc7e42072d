from __future__ import annotations

from typing import Any

import pytest

from cra_agents._safejson import DEFAULT_MAX_DEPTH, JSONInputError, loads_strict

MAX = 1 << 20


def refused(data: bytes | str, **kwargs: Any) -> JSONInputError:
    kwargs.setdefault("max_bytes", MAX)
    with pytest.raises(JSONInputError) as info:
        loads_strict(data, **kwargs)
    return info.value


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


class TestAccepted:
    def test_plain_document(self):
        """An ordinary document parses to the same value as json.loads would give."""
        assert loads_strict(b'{"a": [1, 2.5, "x", true, null]}', max_bytes=MAX) == {
            "a": [1, 2.5, "x", True, None]
        }

    def test_str_input(self):
        """A str is accepted and non-ASCII text survives."""
        assert loads_strict('{"name": "café ✓"}', max_bytes=MAX) == {"name": "café ✓"}

    def test_scalar_document(self):
        """A top-level scalar is a valid document."""
        assert loads_strict(b" 42 ", max_bytes=MAX) == 42

    def test_utf8_bytes(self):
        """Raw UTF-8 bytes decode to the right text."""
        assert loads_strict('["é"]'.encode(), max_bytes=MAX) == ["é"]

    def test_default_max_depth_is_64(self):
        """The default depth limit is 64 levels of containers."""
        assert DEFAULT_MAX_DEPTH == 64


class TestDuplicateKeys:
    def test_top_level_duplicate(self):
        """A key repeated in one object is refused instead of last-wins."""
        err = refused(b'{"effect": "deny", "effect": "allow"}')
        assert err.reason == "duplicate_key"
        assert "'effect'" in str(err)

    def test_nested_duplicate(self):
        """Duplicates are found in nested objects too."""
        assert refused(b'{"a": [{"b": 1, "b": 1}]}').reason == "duplicate_key"

    def test_duplicate_through_escape(self):
        """A key spelled with a unicode escape is the same key."""
        assert refused(b'{"a": 1, "\\u0061": 2}').reason == "duplicate_key"

    def test_same_key_in_sibling_objects_is_fine(self):
        """The same key in two different objects is not a duplicate."""
        assert loads_strict(b'[{"a": 1}, {"a": 2}]', max_bytes=MAX) == [{"a": 1}, {"a": 2}]


class TestNumbers:
    @pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"[1, NaN]"])
    def test_non_finite_constants(self, literal):
        """NaN and the infinities are not JSON numbers."""
        assert refused(literal).reason == "non_finite_number"

    @pytest.mark.parametrize("value", [2**64 - 1, -(2**63), 0, -1])
    def test_64_bit_bounds_accepted(self, value):
        """Integers from -2**63 to 2**64-1 are accepted exactly."""
        assert loads_strict(str(value), max_bytes=MAX) == value

    @pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 2**100])
    def test_outside_64_bit_refused(self, value):
        """Integers just outside the 64-bit range are refused."""
        assert refused(str(value)).reason == "integer_range"

    @pytest.mark.parametrize("sign", ["", "-"])
    def test_5000_digit_integer(self, sign):
        """A 5000-digit integer is refused cleanly, before int() hits its digit limit."""
        err = refused(f"[{sign}{'7' * 5000}]")
        assert err.reason == "integer_range"
        assert len(str(err)) < 200

    def test_floats_kept(self):
        """Finite floats, exponents included, parse normally."""
        assert loads_strict(b"[1.5, -0.0, 1e16, 1e-7]", max_bytes=MAX) == [1.5, -0.0, 1e16, 1e-7]

    @pytest.mark.parametrize("literal", [b"1e400", b"[-1e400]", b'{"x": 1e309}'])
    def test_overflowing_float_refused(self, literal):
        """A float literal too large for a double is refused like Infinity."""
        assert refused(literal).reason == "non_finite_number"


class TestEncoding:
    @pytest.mark.parametrize(
        "data",
        [
            b"\xef\xbb\xbf{}",
            "{}".encode("utf-16"),
            b"\xfe\xff" + "{}".encode("utf-16-be"),
        ],
        ids=["utf8-bom", "utf16-native-bom", "utf16-be-bom"],
    )
    def test_byte_order_marks(self, data):
        """A byte-order mark (UTF-8 or UTF-16) is refused with an encoding hint."""
        err = refused(data)
        assert err.reason == "invalid_encoding"
        assert "byte-order mark" in str(err)

    def test_invalid_utf8(self):
        """Bytes that are not UTF-8 are refused and the offset is named."""
        err = refused(b'{"a": "\xff"}')
        assert err.reason == "invalid_encoding"
        assert "byte 7" in str(err)

    def test_lone_surrogate_in_str(self):
        """A str holding a lone surrogate cannot be UTF-8 and is refused."""
        assert refused('"\ud800"').reason == "invalid_encoding"

    @pytest.mark.parametrize("data", [b"", b"   \n\t ", ""])
    def test_empty_document(self, data):
        """An empty or whitespace-only document is refused as empty."""
        assert refused(data).reason == "empty"


class TestDepth:
    def test_depth_bomb_arrays(self):
        """10**5 nested arrays are refused as too_deep, never a RecursionError."""
        err = refused(nested_arrays(10**5))
        assert err.reason == "too_deep"

    def test_depth_bomb_objects(self):
        """10**5 nested objects are refused as too_deep."""
        depth = 10**5
        assert refused(b'{"a":' * depth + b"1" + b"}" * depth).reason == "too_deep"

    def test_default_limit_boundary(self):
        """64 nested containers parse; 65 are refused at the innermost pointer."""
        assert loads_strict(nested_arrays(64), max_bytes=MAX) is not None
        err = refused(nested_arrays(65))
        assert err.reason == "too_deep"
        assert err.path == "/0" * 64

    def test_custom_max_depth(self):
        """max_depth counts containers only, and the pointer names the offending one."""
        assert loads_strict(b'{"a": [1]}', max_bytes=MAX, max_depth=2) == {"a": [1]}
        err = refused(b'{"a": {"b": [1]}}', max_depth=2)
        assert err.reason == "too_deep"
        assert err.path == "/a/b"

    def test_scalars_do_not_count(self):
        """A scalar document has depth 0 and passes even max_depth=1."""
        assert loads_strict(b'"x"', max_bytes=MAX, max_depth=1) == "x"

    def test_depth_beyond_recursion_limit_is_refused_after_parse(self):
        """A document deeper than max_depth but shallow enough to parse is still refused."""
        assert refused(nested_arrays(500)).reason == "too_deep"

    def test_pointer_escapes_keys(self):
        """A key holding '/' or '~' is escaped in the pointer."""
        assert refused(b'{"a/b": {"c~d": [[1]]}}', max_depth=3).path == "/a~1b/c~0d/0"


class TestSize:
    def test_too_large(self):
        """A document over max_bytes is refused before parsing."""
        err = refused(b"[" + b"1," * 100 + b"1]", max_bytes=100)
        assert err.reason == "too_large"
        assert "100-byte limit" in str(err)

    def test_exactly_max_bytes(self):
        """A document of exactly max_bytes is accepted."""
        assert loads_strict(b"[1, 2]", max_bytes=6) == [1, 2]

    def test_str_counted_in_utf8_bytes(self):
        """The size of a str is its UTF-8 length, not its character count."""
        assert refused('"éé"', max_bytes=5).reason == "too_large"

    def test_size_checked_before_parse(self):
        """An oversized document is refused even when it is also malformed."""
        assert refused(b"\xff" * 50, max_bytes=10).reason == "too_large"


class TestInvalidJSON:
    def test_message_has_line_and_column(self):
        """A syntax error names its line and column."""
        err = refused(b'{\n  "a": 1,\n}')
        assert err.reason == "invalid_json"
        assert "line 3, column 1" in str(err)

    @pytest.mark.parametrize("data", [b"{", b"[1,]", b"{'a': 1}", b"[1] [2]", b"tru"])
    def test_malformed(self, data):
        """Malformed documents are refused as invalid_json."""
        assert refused(data).reason == "invalid_json"

    def test_is_value_error(self):
        """JSONInputError is a ValueError with an empty default path."""
        err = refused(b"{")
        assert isinstance(err, ValueError)
        assert err.path == ""
