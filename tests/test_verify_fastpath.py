"""The verifier's shortcuts agree with the reference hash functions on any event."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from cra_agents._clock import _normalize_slow, format_timestamp, normalize_timestamp
from cra_agents.protocol import GENESIS_HASH
from cra_agents.trace import compute_event_hash, spec_event_hash
from cra_agents.trace._verify import _rule

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=12)
)
_payloads = st.dictionaries(
    st.text(
        st.characters(min_codepoint=0x20, exclude_characters='"\\', codec="utf-8"),
        max_size=6,
    ),
    st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6),
    max_size=4,
)
_times = st.integers(min_value=0, max_value=4_102_444_800 * 10**9)


def _stamp(ns: int, style: int) -> str:
    seconds, nanos = divmod(ns, 10**9)
    base = format_timestamp(seconds * 10**9)[:19]
    if style == 0:
        return format_timestamp(ns)  # what we write
    if style == 1:
        return f"{base}.{nanos:09d}Z"  # what the Rust core writes
    return f"{base}.{nanos // 1000:06d}+00:00"  # a spec writer's fixed six digits


class TestNormalizeFastPath:
    @settings(max_examples=500, deadline=None, database=None)
    @given(ns=_times, style=st.integers(0, 2))
    def test_fast_path_equals_full_parse(self, ns, style):
        """Already-normal timestamps are returned unchanged only when parsing agrees."""
        stamp = _stamp(ns, style)
        assert normalize_timestamp(stamp) == _normalize_slow(stamp)


class TestRuleShortcut:
    @settings(max_examples=500, deadline=None, database=None)
    @given(
        payload=_payloads,
        ns=_times,
        style=st.integers(0, 2),
        rule=st.sampled_from(["rust", "spec"]),
    )
    def test_rules_found_equal_reference(self, payload, ns, style, rule):
        """_rule reports exactly the rules whose reference function reproduces the hash."""
        event = {
            "trace_version": "1.0",
            "event_id": "01234567-89ab-7def-8123-456789abcdef",
            "trace_id": "11111111-1111-7111-8111-111111111111",
            "span_id": "22222222-2222-7222-8222-222222222222",
            "parent_span_id": None,
            "session_id": "33333333-3333-7333-8333-333333333333",
            "sequence": 0,
            "timestamp": _stamp(ns, style),
            "event_type": "error.occurred",
            "payload": payload,
            "previous_event_hash": GENESIS_HASH,
        }
        event["event_hash"] = (compute_event_hash if rule == "rust" else spec_event_hash)(event)
        expected = set()
        if compute_event_hash(event) == event["event_hash"]:
            expected.add("normalized")
        if spec_event_hash(event) == event["event_hash"]:
            expected.add("as_written")
        assert _rule(event) == expected

    def test_garbage_hash_matches_nothing(self):
        """A hash neither rule produces is reported as no match."""
        event = {
            "event_id": "e",
            "trace_id": "t",
            "span_id": "s",
            "session_id": "x",
            "sequence": 0,
            "timestamp": "2024-12-28T12:00:00+00:00",
            "event_type": "a.b",
            "payload": {},
            "previous_event_hash": GENESIS_HASH,
            "event_hash": hashlib.sha256(b"x").hexdigest(),
        }
        assert _rule(event) is None


def test_del_character_takes_the_full_comparison():
    """DEL is ASCII but json.dumps escapes it: the shortcut must not assume equal bytes."""
    event = {
        "trace_version": "1.0",
        "event_id": "01234567-89ab-7def-8123-456789abcdef",
        "trace_id": "11111111-1111-7111-8111-111111111111",
        "span_id": "22222222-2222-7222-8222-222222222222",
        "parent_span_id": None,
        "session_id": "33333333-3333-7333-8333-333333333333",
        "sequence": 0,
        "timestamp": "2024-12-28T12:00:00+00:00",
        "event_type": "error.occurred",
        "payload": {"text": "a\x7fb"},
        "previous_event_hash": GENESIS_HASH,
    }
    event["event_hash"] = compute_event_hash(event)
    assert _rule(event) == {"normalized"}
    event["event_hash"] = spec_event_hash(event)
    assert _rule(event) == {"as_written"}


def test_floats_inside_tuples_still_take_the_spec_rule_check():
    """A payload held in memory may carry tuples; a float inside one changes the spec rule."""
    import cra_agents as cra
    from cra_agents.trace import spec_event_hash

    with cra.Runtime(store="memory://") as runtime:
        session = runtime.create_session("agent", "goal")
        runtime.resolve(cra.resolve_request(session, context={"scores": (1e-05, 2.5e-7)}))
        events = runtime.trace_events(session.session_id)
    received = next(e for e in events if e.event_type == "carp.request.received")
    spec_matches = spec_event_hash(received.model_dump(mode="json")) == received.event_hash
    result = cra.verify_chain(events)
    assert result.valid
    assert result.hash_rule == ("both" if spec_matches else "normalized")
    assert not spec_matches  # 1e-05 is written differently by json.dumps
