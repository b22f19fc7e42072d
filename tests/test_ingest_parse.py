"""parse_batch's fast paths accept and refuse exactly what the strict reader and the rule do."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

import cra_agents as cra
from cra_agents._safejson import JSONInputError, loads_strict
from cra_agents.examples import atlas_path
from cra_agents.protocol import TraceEvent
from cra_agents.trace import BATCH_INVALID, parse_batch
from cra_agents.trace._hash import compute_event_hash, spec_event_hash
from cra_agents.trace._ingest import _hashes, _loads_line
from cra_agents.trace._jsonl import event_line
from cra_agents.trace._read import MAX_LINE_BYTES
from cra_agents.trace._verify import _rule


@pytest.fixture(scope="module")
def chain() -> Iterator[list[TraceEvent]]:
    """One recorded session's events."""
    with cra.Runtime(atlases=[atlas_path("github-ops")], store="memory://") as runtime:
        session = runtime.create_session("bot", "Triage new bug reports")
        resolution = runtime.resolve(cra.resolve_request(session))
        runtime.execute(
            cra.execute_request(
                session, resolution.resolution_id, "github.issue.list", {"repo": "acme/app"}
            )
        )
        runtime.end_session(session.session_id)
        yield runtime.trace_events(session.session_id)


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


LINES = [
    b'{"a":1,"a":2}',
    b'{"a":{"b":1,"b":1}}',
    b'{"a":18446744073709551616}',
    b'{"a":18446744073709551615}',
    b'{"a":-9223372036854775809}',
    b'{"a":-9223372036854775808}',
    b'{"a":123456789012345678901234567890}',
    b'{"a":NaN}',
    b'{"a":Infinity}',
    b'{"a":-Infinity}',
    b'{"a":1e400}',
    b'{"a":1.5}',
    b'{"a":1e16}',
    b'{"a":1.0e+16}',
    b'{"a":-0.0}',
    b'{"a":-0}',
    '{"a":"é"}'.encode(),
    b'{"a":"\\u00e9"}',
    b'{"a":"\\ud800"}',
    b'{"a":"\xff"}',
    b'\xef\xbb\xbf{"a":1}',
    b'{"a":1}\n',
    b'{"a":1}\r\n',
    b'{"a":1} ',
    b'{"a":1}x',
    b'{"a":1',
    b"[1]",
    b"1",
    b"null",
    b"   ",
    _deep(64),
    _deep(65),
    b'{"a":"' + b"[" * 80 + b'"}',
    b'{"a":[' + _deep(62) + b"]}",
    b'{"a":[' + _deep(63) + b"]}",
]


def _outcome(read: Any, line: bytes) -> tuple[str, Any]:
    try:
        value = read(line)
    except JSONInputError as exc:
        return "refused", (exc.reason, exc.path, str(exc))
    # repr tells 1 from 1.0 and True from 1, which == does not
    return "read", repr(value)


@pytest.mark.parametrize("line", LINES)
def test_a_line_reads_as_the_strict_reader_reads_it(line: bytes) -> None:
    strict = _outcome(lambda data: loads_strict(data, max_bytes=MAX_LINE_BYTES), line)
    assert _outcome(_loads_line, line) == strict


def test_stored_lines_take_the_fast_path(chain: list[TraceEvent]) -> None:
    """An event's stored line is read without the strict reader, to the same value."""
    for event in chain:
        line = event_line(event)[:-1]
        assert orjson.dumps(orjson.loads(line)) == line  # the fast path's condition
        assert _loads_line(line) == loads_strict(line, max_bytes=MAX_LINE_BYTES)
        assert _loads_line(line + b"\n") == loads_strict(line, max_bytes=MAX_LINE_BYTES)


class TestBatch:
    def test_any_layout_of_an_event_is_read_alike(self, chain: list[TraceEvent]) -> None:
        """Compact, spaced, reordered, LF-terminated lines and lines of a file all parse."""
        compact = b"".join(event_line(e) for e in chain)
        spaced = b"".join(
            orjson.dumps(e.model_dump(mode="json"), option=orjson.OPT_INDENT_2).replace(b"\n", b"")
            + b"\n"
            for e in chain
        )
        reordered = b"".join(
            orjson.dumps(e.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS) + b"\n"
            for e in chain
        )
        assert parse_batch(compact) == chain
        assert parse_batch(spaced) == chain
        assert parse_batch(reordered) == chain
        assert parse_batch(iter(compact.splitlines(keepends=True))) == chain
        assert parse_batch(iter(compact.replace(b"\n", b"\r\n").splitlines(True))) == chain

    def test_a_repeated_key_is_refused_on_every_path(self, chain: list[TraceEvent]) -> None:
        """A compact line whose last ``event_hash`` is the real one is still refused."""
        line = event_line(chain[1])[:-1]
        fake = b'"event_hash":"' + b"0" * 64 + b'",'
        repeated = line.replace(b'"event_hash":', fake + b'"event_hash":', 1)
        assert orjson.loads(repeated) == orjson.loads(line)  # what last-wins would accept
        with pytest.raises(cra.TraceError) as caught:
            parse_batch(event_line(chain[0]) + repeated + b"\n")
        assert caught.value.code == BATCH_INVALID
        assert caught.value.details == {"reason": "not_json", "line": 2}
        assert "duplicate key 'event_hash'" in str(caught.value)

    def test_a_big_integer_in_a_payload_is_refused(self, chain: list[TraceEvent]) -> None:
        line = event_line(chain[0])[:-1].replace(
            b'"payload":{', b'"payload":{"n":2' + b"0" * 20 + b","
        )
        with pytest.raises(cra.TraceError) as caught:
            parse_batch(line)
        assert caught.value.details == {"reason": "not_json", "line": 1}
        assert "out of the 64-bit range" in str(caught.value)


def _variant(event: TraceEvent, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {**event.model_dump(mode="json"), **changes}
    return fields


class TestHashRules:
    def test_either_rule_is_accepted_as_the_verifier_accepts_it(
        self, chain: list[TraceEvent]
    ) -> None:
        """The written rule's shortcut decides as ``_rule`` does, for either upstream rule."""
        event = chain[1]
        written = datetime.fromisoformat(event.timestamp).astimezone(UTC)
        zulu = written.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # normalised differently
        rust = _variant(event, timestamp=zulu)
        rust["event_hash"] = compute_event_hash(rust)
        spec = _variant(event, timestamp=zulu)
        spec["event_hash"] = spec_event_hash(spec)
        assert rust["event_hash"] != spec["event_hash"]
        floats = _variant(event, payload={"x": 1e-05, "y": "\x7f"})
        floats["event_hash"] = spec_event_hash(floats)
        changed = _variant(event, payload={**event.payload, "injected": True})
        unreadable = _variant(event, timestamp="not a time")
        cases = [_variant(event), rust, spec, floats, changed, unreadable]
        assert [_hashes(case) for case in cases] == [True, True, True, True, False, False]
        assert [_hashes(case) for case in cases] == [_rule(case) is not None for case in cases]
        for case in (rust, spec, floats):
            line = orjson.dumps(case)
            assert parse_batch(line)[0].event_hash == case["event_hash"]
        with pytest.raises(cra.TraceError) as caught:
            parse_batch(orjson.dumps(changed))
        assert caught.value.details["reason"] == "hash_mismatch"
