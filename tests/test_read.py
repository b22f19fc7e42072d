"""The one strict reader of trace files: objects line by line, torn tails told apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cra_agents as cra
from cra_agents._safejson import JSONInputError
from cra_agents.examples import atlas_path
from cra_agents.replay import load_events
from cra_agents.trace import TornTail, iter_jsonl, read_events, verify_chain

GITHUB_OPS = atlas_path("github-ops")


@pytest.fixture(scope="module")
def lines() -> list[str]:
    with cra.Runtime([GITHUB_OPS], store="memory://") as runtime:
        session = runtime.create_session("bot", "Triage")
        auth = runtime.authorize(session.session_id, "github.issue.list", {"repo": "a/b"})
        runtime.record_outcome(auth, result=[])
        runtime.end_session(session.session_id)
        events = runtime.trace_events(session.session_id)
    return [json.dumps(e.model_dump(mode="json")) for e in events]


def write(path: Path, text: str) -> Path:
    path.write_text(text, "utf-8")
    return path


class TestIterJsonl:
    def test_whole_file(self, tmp_path, lines):
        """Every line comes back as a dict, in order."""
        path = write(tmp_path / "s.trace.jsonl", "\n".join(lines) + "\n")
        items = list(iter_jsonl(path))
        assert [i["sequence"] for i in items if isinstance(i, dict)] == list(range(len(lines)))

    def test_empty_file(self, tmp_path):
        """An empty file has no lines."""
        assert list(iter_jsonl(write(tmp_path / "e.jsonl", ""))) == []

    def test_torn_last_line(self, tmp_path, lines):
        """A cut last line without newline is a TornTail, after the complete lines."""
        path = write(tmp_path / "t.jsonl", "\n".join(lines[:-1]) + "\n" + lines[-1][:30])
        *good, last = iter_jsonl(path)
        assert len(good) == len(lines) - 1
        assert isinstance(last, TornTail) and isinstance(last, ValueError)

    def test_bad_middle_line_is_not_torn(self, tmp_path, lines):
        """An unreadable line with more after it is malformed, and reading stops there."""
        path = write(tmp_path / "m.jsonl", "\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
        items = list(iter_jsonl(path))
        assert len(items) == 2
        assert isinstance(items[1], JSONInputError) and not isinstance(items[1], TornTail)

    def test_duplicate_keys_and_non_objects(self, tmp_path):
        """Duplicate keys are refused (not last-wins); a JSON array is not an event."""
        (dup,) = iter_jsonl(write(tmp_path / "d.jsonl", '{"a": 1, "a": 2}\n'))
        assert isinstance(dup, JSONInputError)
        (array,) = iter_jsonl(write(tmp_path / "a.jsonl", "[1, 2]\n"))
        assert str(array) == "line 1 is not a JSON object"


class TestReadEvents:
    def test_valid_file(self, tmp_path, lines):
        """Valid events come back as dicts; load_events delegates to it."""
        path = write(tmp_path / "s.trace.jsonl", "\n".join(lines) + "\n")
        events = read_events(path)
        assert len(events) == len(lines)
        assert load_events(path) == events == load_events(str(path))

    def test_torn_file_raises_torn_tail(self, tmp_path, lines):
        """A torn last line raises TornTail naming the file and the line."""
        path = write(tmp_path / "t.jsonl", "\n".join(lines[:-1]) + "\n" + lines[-1][:30])
        with pytest.raises(TornTail, match=rf"t\.jsonl: line {len(lines)}: "):
            read_events(path)

    def test_malformed_and_invalid_lines(self, tmp_path, lines):
        """A malformed line and a JSON object that is no TRACE event are refused."""
        path = write(tmp_path / "m.jsonl", "{oops\n")
        with pytest.raises(ValueError, match=r"m\.jsonl: line 1: ") as info:
            read_events(path)
        assert not isinstance(info.value, TornTail)
        path = write(tmp_path / "x.jsonl", '{"sequence": 0}\n')
        with pytest.raises(ValueError, match=r"line 1 is not a TRACE event"):
            read_events(path)

    def test_verifier_reports_the_same_signal(self, tmp_path, lines):
        """verify_chain on the path says torn_tail for the same file."""
        path = write(tmp_path / "t.jsonl", "\n".join(lines[:-1]) + "\n" + lines[-1][:30])
        result = verify_chain(path)
        assert result.error_type == "torn_tail"
        assert result.event_count == len(lines) - 1
