from __future__ import annotations

import hashlib
import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cra_agents import TraceError
from cra_agents._canonical import canonical_json, digest, sha256_hex

# Keys Rust writes verbatim: no quote, backslash or control character (they would need escaping).
SAFE_KEYS = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters='"\\', min_codepoint=0x20),
    max_size=8,
)
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=16)
INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
FINITE_FLOATS = st.floats(allow_nan=False, allow_infinity=False)


def json_values(scalars: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(SAFE_KEYS, children, max_size=4)
        ),
        max_leaves=20,
    )


WITHOUT_FLOATS = json_values(st.none() | st.booleans() | INTS | TEXT)
WITH_FLOATS = json_values(st.none() | st.booleans() | INTS | FINITE_FLOATS | TEXT)
PROPERTY = settings(max_examples=150, deadline=None, database=None)
JSON_NUMBER = re.compile(rb"-?(0|[1-9]\d*)(\.\d+)?(e-?\d+)?")


def python_canonical(value: object) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


class TestLayout:
    def test_sorted_keys_no_whitespace(self):
        """Keys are sorted at every level and no whitespace is written."""
        value = {"b": 1, "a": [1, {"d": None, "c": True}], "C": False}
        assert canonical_json(value) == b'{"C":false,"a":[1,{"c":true,"d":null}],"b":1}'

    def test_keys_sorted_by_code_point(self):
        """Key order is code point order, astral characters last."""
        value = {"z": 1, "é": 2, "a": 3, "Z": 4, "\U0001f600": 5, "\uffff": 6}
        keys = list(json.loads(canonical_json(value)))
        assert keys == sorted(value)
        assert keys == ["Z", "a", "z", "é", "\uffff", "\U0001f600"]

    def test_raw_utf8(self):
        """Non-ASCII text is written as raw UTF-8, never as \\u escapes."""
        assert canonical_json({"k": "é"}) == b'{"k":"\xc3\xa9"}'
        assert canonical_json({"é": "\U0001f600"}) == '{"é":"\U0001f600"}'.encode()

    def test_control_characters_escaped_like_serde(self):
        """Control characters use serde's escapes: short forms, else lower-case \\u00xx."""
        assert canonical_json("\x1f\x00\n\t\r\b\f") == b'"\\u001f\\u0000\\n\\t\\r\\b\\f"'

    def test_quote_and_backslash_escaped(self):
        """Only the quote and backslash are escaped among printable characters."""
        assert canonical_json('a"b\\c/\x7f\u2028') == '"a\\"b\\\\c/\x7f\u2028"'.encode()

    def test_tuples_are_arrays(self):
        """Tuples are written as JSON arrays, also on the slow path."""
        assert canonical_json((1, (2, "x"))) == b'[1,[2,"x"]]'
        assert canonical_json({"t": (1e16,)}) == b'{"t":[1e16]}'

    def test_nested(self):
        """Nested structures mixing every JSON type are written canonically."""
        value = {"z": {"y": [1, 2.5, None], "x": {"w": False}}, "a": "s"}
        assert canonical_json(value) == b'{"a":"s","z":{"x":{"w":false},"y":[1,2.5,null]}}'

    @pytest.mark.parametrize("value", [2**64 - 1, -(2**63), 0])
    def test_64_bit_integers(self, value):
        """Integers at the ends of the 64-bit range are written exactly."""
        assert canonical_json(value) == str(value).encode()


class TestFloats:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (1e16, b"1e16"),
            (1e17, b"1e17"),
            (1e-7, b"1e-7"),
            (0.00001, b"0.00001"),
            (1000000000000000.0, b"1000000000000000.0"),
            (1.5e300, b"1.5e300"),
            (1.0, b"1.0"),
            (0.1, b"0.1"),
            (-0.0, b"-0.0"),
            (5e-324, b"5e-324"),
            (1.7976931348623157e308, b"1.7976931348623157e308"),
        ],
    )
    def test_ryu_layout(self, value, expected):
        """Floats are laid out the way ryu (serde_json) writes them."""
        assert canonical_json(value) == expected

    def test_exponent_in_string_preserved(self):
        """An 'e+' inside a string survives the slow path that rewrites float exponents."""
        value = {"note": "1e+16 and e+ stay", "n": 1e16, "s": "null \\ e+"}
        out = canonical_json(value)
        assert out == b'{"n":1e16,"note":"1e+16 and e+ stay","s":"null \\\\ e+"}'
        assert json.loads(out) == value

    def test_string_alone_with_markers_unchanged(self):
        """A string holding every slow-path marker is written exactly as orjson would."""
        assert canonical_json(["e+", "null", "\\"]) == b'["e+","null","\\\\"]'

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    def test_non_finite_refused(self, value):
        """NaN and infinities have no serde_json form and are refused."""
        with pytest.raises(TraceError) as info:
            canonical_json({"a": [1, value]})
        assert info.value.details == {"reason": "non_finite_float", "path": "/a/1"}

    @given(FINITE_FLOATS)
    @PROPERTY
    def test_every_finite_float_round_trips(self, value):
        """Every finite float is a valid JSON number without '+' that reads back exactly."""
        out = canonical_json(value)
        assert JSON_NUMBER.fullmatch(out), out
        assert float(out) == value


class TestRefused:
    @pytest.mark.parametrize("value", ["\ud800", {"a": ["\udfff"]}, {"\ud800": 1}])
    def test_lone_surrogate(self, value):
        """Lone surrogates cannot be UTF-8 and are refused."""
        with pytest.raises(TraceError) as info:
            canonical_json(value)
        assert info.value.details["reason"] == "not_json"

    @pytest.mark.parametrize("value", [2**64, -(2**63) - 1, [1e16, 2**64]])
    def test_integer_out_of_range(self, value):
        """Integers outside the 64-bit range are refused."""
        with pytest.raises(TraceError):
            canonical_json(value)

    @pytest.mark.parametrize("key", [1, 1.5, None, True, ("a",)])
    def test_non_string_key(self, key):
        """Non-string keys are refused rather than stringified."""
        with pytest.raises(TraceError):
            canonical_json({key: 1})

    @pytest.mark.parametrize("key", ['a"b', "a\\b", "a\nb", "a\x1fb"])
    def test_key_needing_escape(self, key):
        """Keys that would need escaping are refused (Rust writes keys verbatim)."""
        with pytest.raises(TraceError) as info:
            canonical_json({"ok": {key: 1}})
        assert info.value.details == {"reason": "unsafe_key", "path": "/ok"}

    @pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", complex(1, 2)])
    def test_non_json_types(self, value):
        """Values with no JSON form are refused as TraceError (a ValueError)."""
        with pytest.raises(TraceError) as info:
            canonical_json({"v": value})
        assert isinstance(info.value, ValueError)


class TestDigest:
    def test_digest_is_sha256_of_canonical_json(self):
        """digest() is the hex SHA-256 of the canonical JSON."""
        value = {"b": [1e16, "é"], "a": None}
        assert digest(value) == hashlib.sha256(canonical_json(value)).hexdigest()
        assert digest(value) == sha256_hex(canonical_json(value))

    def test_key_order_does_not_matter(self):
        """Dicts with the same items in another order have the same digest."""
        assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})

    def test_known_vector(self):
        """A fixed value hashes to a fixed, lower-case hex digest."""
        assert digest({}) == hashlib.sha256(b"{}").hexdigest()
        assert re.fullmatch(r"[0-9a-f]{64}", digest([1, "x"]))


class TestProperties:
    @given(WITHOUT_FLOATS)
    @PROPERTY
    def test_matches_python_canonical_form_without_floats(self, value):
        """Without floats, the output equals json.dumps(sort_keys, compact, ensure_ascii=False)."""
        assert canonical_json(value) == python_canonical(value)

    @given(WITH_FLOATS)
    @PROPERTY
    def test_round_trips_with_floats(self, value):
        """With floats, the output parses back to an equal value."""
        assert json.loads(canonical_json(value)) == value

    @given(WITH_FLOATS)
    @PROPERTY
    def test_slow_path_agrees_with_fast_path(self, value):
        """Forcing the slow path (a float exponent next to it) writes the value identically."""
        assert canonical_json([value, 1e16]) == b"[" + canonical_json(value) + b",1e16]"


# Anything a payload may hold, hostile keys and non-finite floats included.
ANY_KEYS = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
ANYTHING = st.recursive(
    st.none() | st.booleans() | INTS | st.floats() | TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(ANY_KEYS, children, max_size=4)
    ),
    max_leaves=20,
)


class TestFastPathDecision:
    """The fast path is taken only when orjson's output is already canonical."""

    @given(ANYTHING)
    @settings(max_examples=400, deadline=None, database=None)
    def test_fast_and_slow_paths_agree_or_both_refuse(self, value):
        """Whatever the value, canonical_json equals the slow writer's output or refuses."""
        from cra_agents._canonical import _slow

        try:
            slow: bytes | None = _slow(value)
        except TraceError:
            slow = None
        try:
            fast: bytes | None = canonical_json(value)
        except TraceError:
            fast = None
        assert fast == slow

    def test_markers_inside_strings_stay_on_the_fast_path(self, monkeypatch):
        """None values, escapes and "e+" in text do not send a value down the slow path."""
        import cra_agents._canonical as canonical

        def fail(value: object) -> bytes:
            raise AssertionError("slow path taken")

        monkeypatch.setattr(canonical, "_slow", fail)
        value = {"ref": None, "body": 'say "hi"\n', "note": "1e+5", "list": [None, "a\\b"]}
        assert json.loads(canonical_json(value)) == value


# -- templates: the runtime's payloads filled in, byte-identical to the builders' dicts ------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=20)


@given(
    action_id=_TEXT,
    execution_id=_TEXT,
    parameters_hash=_TEXT,
    tool_call_id=st.none() | _TEXT,
    resolution_id=st.none() | _TEXT,
    risk_tier=st.sampled_from([None, "low", "high", "critical"]),
    shadow=st.booleans(),
)
def test_template_fill_is_the_builders_canonical_json(
    action_id, execution_id, parameters_hash, tool_call_id, resolution_id, risk_tier, shadow
):
    from cra_agents._canonical import Template
    from cra_agents.protocol import events as ev

    open_names = ["execution_id", "parameters_hash"]
    values: list[str] = [execution_id, parameters_hash]
    fixed = {"action_id": action_id, "risk_tier": risk_tier, "shadow": shadow}
    for name, value in (("resolution_id", resolution_id), ("tool_call_id", tool_call_id)):
        if value is None:
            fixed[name] = None
        else:
            open_names.append(name)
            values.append(value)
    template = Template(ev.action_requested, open_names, **fixed)
    expected = ev.action_requested(
        action_id,
        execution_id,
        parameters_hash,
        resolution_id=resolution_id,
        tool_call_id=tool_call_id,
        risk_tier=risk_tier,
        shadow=shadow,
    )
    assert template.fill(*values) == canonical_json(expected)


@given(duration=st.integers(0, 2**53), name=_TEXT)
def test_template_integers_and_percent_signs(duration, name):
    from cra_agents._canonical import Template
    from cra_agents.protocol import events as ev

    template = Template(
        ev.action_executed,
        ["execution_id", "duration_ms"],
        action_id=f"%s%%{name}",
        result_hash="%",
    )
    assert template.fill("e-1", duration) == canonical_json(
        ev.action_executed(f"%s%%{name}", "e-1", duration, "%")
    )


def test_a_template_value_must_appear_once():
    from cra_agents._canonical import Template

    with pytest.raises(ValueError, match="exactly once"):
        Template(lambda a, b: {"a": a, "b": a}, ["a"], b=1)
    with pytest.raises(ValueError, match="exactly once"):
        Template(lambda a: {"x": 1}, ["a"])
