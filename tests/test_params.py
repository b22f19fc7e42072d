"""Parameter validation: the fastjsonschema fast path never accepts what jsonschema rejects."""

from __future__ import annotations

from typing import Any

import fastjsonschema
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cra_agents._schema_rules import _walk, linear_validator
from cra_agents.runtime._params import (
    FAST_KEYWORDS,
    _validators,
    fast_path_applies,
    fast_validator,
    first_error,
)

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-1000, 1000)
    | st.floats(-1e6, 1e6, allow_nan=False)
    | st.sampled_from([0, 1, 1.0, 0.0, -1, 2.5, True, False])
    | st.text(max_size=6)
    | st.sampled_from(["a/b", "x", "", "Aé", "../x", "aaaaaaaa"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from("abcd"), inner),
    max_leaves=10,
)
_types = st.sampled_from(["string", "integer", "number", "boolean", "null", "array", "object"])


def _schema(depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    sub = _schema(depth - 1) if depth > 0 else st.just({"type": "string"})
    keyword = st.one_of(
        st.tuples(st.just("type"), _types | st.lists(_types, min_size=1, max_size=3, unique=True)),
        st.tuples(st.just("enum"), st.lists(_json, min_size=1, max_size=4)),
        st.tuples(st.just("const"), _json),
        st.tuples(st.sampled_from(["minLength", "maxLength"]), st.integers(0, 5)),
        st.tuples(st.just("pattern"), st.sampled_from(["^a", "b$", "^[a-z]+/[a-z]+$", "é", "^$"])),
        st.tuples(st.just("format"), st.sampled_from(["date-time", "uri", "email", "ipv4"])),
        st.tuples(
            st.sampled_from(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]),
            st.integers(-3, 3) | st.sampled_from([0.5, -1.5, 1.0]),
        ),
        st.tuples(
            st.sampled_from(["minItems", "maxItems", "minProperties", "maxProperties"]),
            st.integers(0, 3),
        ),
        st.tuples(st.just("required"), st.lists(st.sampled_from("abcd"), unique=True)),
        st.tuples(st.just("additionalProperties"), st.booleans() | sub),
        st.tuples(st.just("items"), sub),
        st.tuples(st.just("properties"), st.dictionaries(st.sampled_from("abcd"), sub)),
        st.tuples(st.just("description"), st.text(max_size=5)),
    )
    return st.lists(keyword, max_size=4).map(dict)


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=_schema(), instance=_json)
def test_fast_path_agrees_with_jsonschema(schema: dict[str, Any], instance: Any) -> None:
    # format (checked by jsonschema's checkers only) keeps a schema off the fast path; every
    # other keyword here is on it, pattern too (its compiled regexes are swapped for RE2's).
    slow = {keyword for _, keyword, _ in _walk(schema, "") if keyword == "format"}
    assert fast_path_applies(schema) == (not slow)
    judge = linear_validator(jsonschema.Draft202012Validator)
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    expected = judge(schema, format_checker=checker).is_valid(instance)
    _, fast = _validators(schema)
    if fast is not None:  # None: fastjsonschema refused to compile it; jsonschema decides
        try:
            fast(instance)
            fast_valid = True
        except Exception:  # noqa: BLE001 - any rejection counts
            fast_valid = False
        assert fast_valid == expected, (schema, instance)
    wrapped = {"p": instance}
    outer = {"type": "object", "properties": {"p": schema}}
    assert (first_error(outer, wrapped) is None) == expected


def test_other_keywords_take_the_jsonschema_path() -> None:
    schema: object
    for schema in (
        {"type": "string", "format": "email"},
        {"$ref": "#/$defs/x", "$defs": {"x": {"type": "string"}}},
        {"type": "array", "uniqueItems": True},
        {"properties": {"a": {"format": "date"}}},
        {"type": 3},
        {"properties": []},
        "not a schema",
    ):
        assert not fast_path_applies(schema)
    assert fast_path_applies(True)
    assert "format" not in FAST_KEYWORDS
    assert "pattern" in FAST_KEYWORDS  # on RE2: the check's compiled regexes are swapped
    check = fast_validator({"type": "string", "pattern": "^(a+)+$"})
    assert check is not None
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        check("a" * 41 + "!")  # decided at once: RE2, not a backtracking re
    _, fast = _validators({"type": "array", "uniqueItems": True})
    assert fast is None
    assert first_error({"type": "array", "uniqueItems": True}, {"x": 1}) is not None
    assert first_error({"properties": {"a": {"uniqueItems": True}}}, {"a": [1, True]}) is None


def test_errors_are_worded_by_jsonschema() -> None:
    schema = {
        "type": "object",
        "properties": {"repo": {"type": "string", "pattern": "^[a-z]+/[a-z]+$"}},
        "required": ["repo"],
    }
    assert first_error(schema, {"repo": "acme/app"}) is None
    path, message = first_error(schema, {"repo": "nope"}) or ("", "")
    assert path == "/repo"
    assert "does not match" in message
    assert first_error({"type": "object", "required": ["x"]}, {}) == (
        "",
        "'x' is a required property",
    )


def test_invalid_schema_is_a_violation() -> None:
    problem = first_error({"type": "no-such-type"}, {})
    assert problem is not None
    assert "itself invalid" in problem[1]


def test_defaults_are_never_written_into_the_arguments() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "default": "x"}}}
    arguments: dict[str, Any] = {}
    assert first_error(schema, arguments) is None
    assert arguments == {}


def test_the_cache_stays_bounded() -> None:
    from cra_agents.runtime import _params

    schemas = [{"type": "object", "maxProperties": n} for n in range(_params._CACHE_SIZE + 10)]
    for schema in schemas:
        assert first_error(schema, {}) is None
    assert len(_params._cache) <= _params._CACHE_SIZE
    assert first_error(schemas[0], {}) is None  # evicted, compiled again


class TestCompiledAhead:
    def test_a_runtime_compiles_its_validators_before_the_first_call(self):
        """Runtime() compiles every action's validator; a call only looks its own up."""
        from pathlib import Path

        import cra_agents as cra
        from cra_agents.runtime import _params

        atlas = (
            Path(__file__).resolve().parents[1]
            / "cra_agents"
            / "examples"
            / "atlases"
            / "github-ops"
        )
        with cra.Runtime([atlas], store="memory://") as runtime:
            schemas = [
                action.parameters_schema
                for loaded in runtime.atlases
                for action in loaded.actions
                if action.parameters_schema is not None
            ]
            assert schemas
            assert all(_params._cache[id(schema)][0] is schema for schema in schemas)

    def test_a_schema_that_does_not_compile_is_refused_at_its_call(self):
        """compile_validators skips a broken schema; its call is refused with the reason."""
        from cra_agents.runtime._params import compile_validators, first_error

        broken = {"type": "object", "properties": {"n": {"type": 12}}}
        compile_validators([broken])  # no exception
        problem = first_error(broken, {"n": 1})
        assert problem is not None
        assert "parameters_schema is itself invalid" in problem[1]

    def test_the_same_schema_loaded_twice_is_compiled_once(self):
        """Equal schemas (another runtime, a reloaded atlas) share one compiled validator."""
        from cra_agents.runtime import _params

        one = {"type": "object", "properties": {"q": {"type": "string", "maxLength": 7}}}
        two = {"properties": {"q": {"maxLength": 7, "type": "string"}}, "type": "object"}
        assert _params._validators(one) == _params._validators(two)
