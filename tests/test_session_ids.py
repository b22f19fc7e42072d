"""Session ids given by callers are validated; a bad id already in a store harms no other.

A session id names a file in a JSONL store and is carried by every TRACE event, which
requires a UUID. Before issue 14 any string was accepted: ``my-session`` was recorded but could
not be read back, and made ``cra trace list`` and ``verify --all`` crash for the whole store;
``../x`` killed the JSONL writer for every session of the runtime.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cra_agents as cra
from cra_agents.cli import main
from cra_agents.examples import atlas_path
from cra_agents.runtime._sessions import is_session_id
from cra_agents.trace import SessionChain, open_store

GITHUB_OPS = atlas_path("github-ops")

HOSTILE = [
    "my-session",
    "../x",
    "../../etc/passwd",
    "/abs/path",
    ".hidden",
    "..",
    "",
    "a\x00b",
    "a\\b",
    "3f1c2a9e-0000-4000-8000-00000000000\n",  # a UUID but for the newline
    "3f1c2a9e-0000-4000-8000-000000000001\n",
    "3f1c2a9e-0000-4000-8000-0000000000011",
    " 3f1c2a9e-0000-4000-8000-000000000001",
    "x" * 10_000,
]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class TestTheBoundary:
    @pytest.mark.parametrize("bad", HOSTILE)
    @pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
    def test_hostile_ids_are_refused_and_harm_no_one(self, tmp_path, kind, bad):
        """Refused with a stable reason; the writer keeps recording every other session."""
        url = f"jsonl://{tmp_path}" if kind == "jsonl" else f"sqlite://{tmp_path / 't.db'}"
        with cra.Runtime([GITHUB_OPS], store=url, writer="thread") as runtime:
            good = runtime.create_session("bot", "Triage")
            with pytest.raises(cra.InvalidRequestError) as info:
                runtime.create_session("bot", "Triage", session_id=bad)
            assert info.value.code == "INVALID_CARP_REQUEST"
            assert info.value.details["reason"] == "invalid_session_id"
            runtime.end_session(good.session_id)
            assert runtime.flush()
            assert runtime.trace_failure is None
            assert runtime.verify(good.session_id).valid
        assert not list(tmp_path.parent.glob("x.trace.jsonl"))

    def test_a_parent_session_id_is_checked_too(self):
        """parent_session_id is recorded in session.started: the same rule."""
        runtime = cra.Runtime([GITHUB_OPS], store="memory://")
        with pytest.raises(cra.InvalidRequestError, match="parent_session_id must be a UUID"):
            runtime.create_session("bot", "Triage", parent_session_id="../x")
        runtime.close()

    def test_a_uuid_given_by_the_caller_is_kept(self, tmp_path):
        """A valid id (any case) is used as it is and reads back."""
        wanted = str(uuid.uuid4()).upper()
        with cra.Runtime([GITHUB_OPS], store=f"jsonl://{tmp_path}", writer="thread") as runtime:
            info = runtime.create_session("bot", "Triage", session_id=wanted)
            assert info.session_id == wanted
            runtime.end_session(wanted)
            assert runtime.verify(wanted).valid

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        candidate=st.one_of(
            st.text(st.characters(codec=None, exclude_categories=()), max_size=60),
            st.uuids().map(str),
            st.uuids().map(lambda u: str(u) + "\n"),
            st.from_regex(r"[A-Za-z0-9._/\\-]{0,40}", fullmatch=True),
        )
    )
    def test_property_accepted_iff_uuid_and_always_readable(self, candidate, tmp_path_factory):
        """Any string: refused unless it is a UUID; what is accepted reads back and verifies."""
        runtime = _shared_runtime(tmp_path_factory)
        expected = _is_uuid(candidate)
        assert is_session_id(candidate) == expected
        if not expected:
            with pytest.raises(cra.InvalidRequestError) as refused:
                runtime.create_session("bot", "Fuzz", session_id=candidate)
            assert refused.value.details["reason"] == "invalid_session_id"
            return
        if candidate in _SEEN:  # the same UUID drawn twice
            return
        _SEEN.add(candidate)
        info = runtime.create_session("bot", "Fuzz", session_id=candidate)
        runtime.end_session(info.session_id)
        assert runtime.trace_failure is None
        assert runtime.verify(info.session_id).valid


_RUNTIMES: dict[str, cra.Runtime] = {}
_SEEN: set[str] = set()


def _shared_runtime(factory: pytest.TempPathFactory) -> cra.Runtime:
    """One JSONL runtime for all hypothesis examples (closed at exit by the runtime itself)."""
    if "jsonl" not in _RUNTIMES:
        place = factory.mktemp("fuzz-ids")
        _RUNTIMES["jsonl"] = cra.Runtime([GITHUB_OPS], store=f"jsonl://{place}", writer="thread")
    return _RUNTIMES["jsonl"]


def _is_uuid(value: str) -> bool:
    if len(value) != 36 or value.strip() != value:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return (
        all(c in "0123456789abcdefABCDEF-" for c in value)
        and value.count("-") == 4
        and [len(part) for part in value.split("-")] == [8, 4, 4, 4, 12]
    )


def _store_with_a_bad_session(tmp_path: Path, kind: str) -> tuple[str, str]:
    """A store as an older version left it: one good session, one with a non-UUID id."""
    url = f"jsonl://{tmp_path / 'j'}" if kind == "jsonl" else f"sqlite://{tmp_path / 't.db'}"
    with cra.Runtime([GITHUB_OPS], store=url, writer="thread") as runtime:
        good = runtime.create_session("triage-bot", "Triage").session_id
        runtime.end_session(good)
    store = open_store(url)
    chain = SessionChain("my-session", str(uuid.uuid4()))
    chain.append("session.started", {"agent_id": "old-bot", "goal": "Before validation"})
    store.append(chain.flush())
    store.close()
    return url, good


class TestReadersSurviveABadIdInTheStore:
    @pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
    def test_list(self, capsys, tmp_path, kind):
        """cra trace list shows every session; the unreadable one is flagged, exit 1."""
        url, good = _store_with_a_bad_session(tmp_path, kind)
        code, out, err = _run(capsys, "trace", "list", "--store", url, "--json")
        document: dict[str, Any] = json.loads(out)
        assert code == 1
        assert document["total"] == 2
        assert document["unreadable"] == 1
        by_id = {row["session_id"]: row for row in document["sessions"]}
        assert by_id[good]["events"] == 2
        assert by_id["my-session"]["error"] == "unreadable_session"
        assert "my-session" in err
        code, out, _ = _run(capsys, "trace", "list", "--store", url)
        assert code == 1
        assert "unreadable" in out

    @pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
    def test_verify_all(self, capsys, tmp_path, kind):
        """verify --all verifies every good session and reports the bad one as invalid."""
        url, good = _store_with_a_bad_session(tmp_path, kind)
        code, out, _ = _run(capsys, "trace", "verify", "--all", "--store", url, "--json")
        assert code == 1
        results = {r["target"]: r for r in json.loads(out)["traces"]}
        assert results[good]["valid"] is True
        assert results["my-session"]["valid"] is False
        assert results["my-session"]["error_type"] == "malformed_event"

    def test_tail_and_show(self, capsys, tmp_path):
        """tail reads around it (warning once); show names the session it cannot read."""
        url, good = _store_with_a_bad_session(tmp_path, "sqlite")
        code, out, err = _run(capsys, "trace", "tail", "--store", url, "-n", "5")
        assert code == 0
        assert "session.ended" in out
        assert err.count("warning") == 1
        code, out, err = _run(capsys, "trace", "tail", "--store", url, "-f", "--max-seconds", "0.3")
        assert code == 0
        code, _, err = _run(capsys, "trace", "show", "my-session", "--store", url)
        assert code == 2
        assert "unreadable_session" in err
        assert good
