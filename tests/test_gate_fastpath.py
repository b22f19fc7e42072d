"""The gate's fused path for memoised allows (``Gate.allowed``) against the generic flow.

Both must record the same bytes for the same calls: event types, payloads (canonical JSON),
order, a chain that verifies; and an exception inside the fused path must refuse the call.
"""

from __future__ import annotations

import asyncio
import itertools
import types
from collections.abc import Callable
from typing import Any

import pytest

import cra_agents as cra
from cra_agents._canonical import canonical_json
from cra_agents.examples import atlas_path
from cra_agents.protocol import TraceEvent
from cra_agents.protocol import events as ev
from cra_agents.runtime import Observer, _gate

GITHUB_OPS = atlas_path("github-ops")
READ = "github.file.read"
CLOCK_NS = 5_000_000_000


@pytest.fixture(scope="module")
def ops_atlas() -> cra.Atlas:
    """The github-ops example atlas, loaded once."""
    return cra.load_atlas(GITHUB_OPS)


@pytest.fixture
def deterministic(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Execution ids and the gate's clock made repeatable; call it again to restart the ids."""

    def restart() -> None:
        counter = itertools.count(1)
        monkeypatch.setattr(
            _gate, "new_id", lambda: f"00000000-0000-7000-8000-{next(counter):012x}"
        )

    restart()
    # Every call takes 0 ms: its action.executed / action.failed payloads are repeatable.
    monkeypatch.setattr(_gate, "time", types.SimpleNamespace(monotonic_ns=lambda: CLOCK_NS))
    return restart


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The actions of the calls the generic flow decided (the fused path decided the rest)."""
    seen: list[str] = []
    generic = _gate.Gate.flow

    def counted(self: _gate.Gate, call: _gate.Call, *, ask: bool = True) -> _gate.Flow:
        seen.append(call.action_id)
        return generic(self, call, ask=ask)

    monkeypatch.setattr(_gate.Gate, "flow", counted)
    return seen


class Decisions(Observer):
    """Records the events each call was decided and ended with, as observers hear them."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, list[str]]] = []

    def _note(self, hook: str, events: Any) -> None:
        self.heard.append((hook, [e.event_type for e in events or ()]))

    def on_call_decided(self, call: Any, state: Any, events: Any) -> None:
        self._note("decided", events)

    def on_call_end(self, call: Any, state: Any, events: Any) -> None:
        self._note("end", events)


def _run(rt: cra.Runtime, sid: str, tool: str, args: Any, **kwargs: Any) -> str:
    """One call through ``Runtime.call``; what happened, as a word."""

    def body(arguments: dict[str, Any]) -> Any:
        if arguments.get("path") == "boom":
            raise OSError("disk on fire")
        if arguments.get("path") == "object":
            return object()  # no JSON: digested through its repr (made repeatable below)
        return {"content": arguments.get("path")}

    try:
        with rt.call(tool, args, action_id=tool, session_id=sid, **kwargs) as call:
            call.result = body(call.arguments)
    except cra.CRAError as exc:
        return type(exc).__name__
    except OSError:
        return "failed"
    return "ran"


async def _arun(rt: cra.Runtime, sid: str, args: dict[str, Any]) -> str:
    async with rt.acall(READ, args, action_id=READ, session_id=sid) as call:
        call.result = {"content": call.arguments["path"]}
    return "ran"


CALLS: list[tuple[str, Any, dict[str, Any]]] = [
    (READ, {"repo": "a/b", "path": "R"}, {}),  # decided by the flow: memoises the allow
    (READ, {"repo": "a/b", "path": "R"}, {}),
    (READ, {"repo": "a/b", "path": "docs/é ü.md", "ref": "main"}, {}),
    (READ, {"path": "R", "repo": "a/b"}, {"tool_call_id": "call_1"}),
    (READ, {"repo": "a/b", "path": "/etc/passwd"}, {}),  # fails the schema's pattern
    (READ, {"repo": "a/b", "path": float("nan")}, {}),  # no canonical JSON
    (READ, ["a/b", "R"], {}),  # not a mapping
    (READ, {"repo": "a/b", "path": "boom"}, {}),  # the tool raises
    (READ, {"repo": "a/b", "path": "x", "extra": 1}, {}),  # additionalProperties
    (READ, {"repo": "a/b", "path": "R"}, {"risk_tier": "high"}),  # a stated tier
    (READ, {"repo": "a/b", "path": "R"}, {"risk_tier": "high"}),
    ("github.issue.list", {"repo": "a/b"}, {}),
    ("github.issue.list", {"repo": "a/b", "state": "open"}, {}),
    ("github.repo.delete", {"repo": "a/b"}, {}),  # denied by policy
    ("github.repo.delete", {"repo": "a/b"}, {}),
    ("github.issue.create", {"repo": "a/b", "title": "t"}, {}),  # rate limited: never fused
    ("github.issue.create", {"repo": "a/b", "title": "t"}, {}),
    ("no.such.action", {"repo": "a/b"}, {}),  # undeclared
]


def _script(rt: cra.Runtime) -> tuple[str, list[str]]:
    """Run every call of ``CALLS`` (and two async ones) in one session; its id and outcomes."""
    sid = rt.create_session("bench-bot", "compare the paths").session_id
    outcomes = [_run(rt, sid, tool, args, **kwargs) for tool, args, kwargs in CALLS]
    outcomes += [
        asyncio.run(_arun(rt, sid, {"repo": "a/b", "path": "async"})),
        asyncio.run(_arun(rt, sid, {"repo": "a/b", "path": "async"})),
    ]
    outcomes.append(_run(rt, sid, READ, {"repo": "a/b", "path": "object"}))
    rt.end_session(sid)
    return sid, outcomes


def _recorded(rt: cra.Runtime, sid: str) -> list[tuple[str, bytes]]:
    """``(event type, payload canonical JSON)`` of every event of the session, in order."""
    events: list[TraceEvent] = rt.trace_events(sid)
    assert rt.verify(sid).valid
    assert [e.sequence for e in events] == list(range(len(events)))
    out = [(e.event_type, canonical_json(e.payload)) for e in events]
    # session.ended carries the session's wall-clock duration: only its type is compared.
    return [(kind, b"" if kind == ev.SESSION_ENDED else payload) for kind, payload in out]


@pytest.fixture
def repeatable_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """A result that is not JSON is digested through its repr: make that repr repeatable."""
    monkeypatch.setattr(_gate, "_safe_text", lambda value, render: type(value).__name__)


@pytest.mark.usefixtures("repeatable_repr")
class TestSameRecord:
    """The fused path records exactly what the generic flow records."""

    def _both(
        self,
        ops_atlas: cra.Atlas,
        deterministic: Callable[[], None],
        monkeypatch: pytest.MonkeyPatch,
        **options: Any,
    ) -> tuple[
        tuple[list[tuple[str, bytes]], list[str]], tuple[list[tuple[str, bytes]], list[str]]
    ]:
        results = []
        for fast in (False, True):
            monkeypatch.setattr(_gate, "_FAST_PATH", fast)
            deterministic()
            rt = cra.Runtime(atlases=[ops_atlas], **options)
            try:
                sid, outcomes = _script(rt)
                results.append((_recorded(rt, sid), outcomes))
            finally:
                rt.close()
        return results[0], results[1]

    def test_byte_identical_events(self, ops_atlas, deterministic, flows, monkeypatch):
        """Same event types, payload bytes, order and outcomes; both chains verify."""
        (generic, generic_outcomes), (fused, fused_outcomes) = self._both(
            ops_atlas, deterministic, monkeypatch
        )
        assert fused_outcomes == generic_outcomes
        assert generic_outcomes[:4] == ["ran"] * 4
        assert "InvalidParametersError" in generic_outcomes
        assert "failed" in generic_outcomes
        assert fused == generic
        # Every call went through the flow in the generic run; in the fused run, the 9
        # allowed calls after the first of their kind did not.
        calls = len(CALLS) + 3
        assert len(flows) == calls + calls - 9
        kinds = [kind for kind, _ in fused]
        assert kinds.count(ev.ACTION_EXECUTED) == generic_outcomes.count("ran")

    def test_fused_path_taken_for_allowed_calls(self, ops_atlas, deterministic, flows):
        """After the first call of an action, allowed calls skip the flow; others do not."""
        rt = cra.Runtime(atlases=[ops_atlas])
        try:
            _script(rt)
        finally:
            rt.close()
        # The flow decided: the first read, the 4 refusals of a read, the first read with a
        # stated tier, the first issue.list, and every call that is no memoised allow.
        assert flows.count(READ) == 1 + 4 + 1
        assert flows.count("github.issue.list") == 1
        assert flows.count("github.repo.delete") == 2
        assert flows.count("github.issue.create") == 2

    def test_observers_hear_the_same(self, ops_atlas, deterministic, monkeypatch):
        """Observers get the same decided / ended events from either path."""
        heard = []
        for fast in (False, True):
            monkeypatch.setattr(_gate, "_FAST_PATH", fast)
            deterministic()
            decisions = Decisions()
            rt = cra.Runtime(atlases=[ops_atlas], observers=[decisions])
            try:
                _script(rt)
                rt.flush()
            finally:
                rt.close()
            heard.append(decisions.heard)
        assert heard[0] == heard[1]
        decided = [ev.ACTION_REQUESTED, ev.POLICY_EVALUATED, ev.ACTION_APPROVED]
        assert ("decided", decided) in heard[1]

    def test_process_writer_jsonl(self, ops_atlas, deterministic, monkeypatch, tmp_path):
        """The same with the writer process and a JSONL store (the default for files)."""
        generic, fused = self._both(
            ops_atlas, deterministic, monkeypatch, store=f"jsonl://{tmp_path}/trace"
        )
        assert fused == generic


class TestFailClosed:
    """An exception inside the fused path refuses the call, as one inside the flow does."""

    def test_exception_refuses_and_records_internal_denial(self, ops_atlas, flows, monkeypatch):
        """The tool does not run; action.denied (internal_error) is recorded; chain valid."""
        rt = cra.Runtime(atlases=[ops_atlas])
        ran: list[str] = []
        try:
            sid = rt.create_session("bot", "fail closed").session_id
            assert _run(rt, sid, READ, {"repo": "a/b", "path": "R"}) == "ran"  # memoised

            def broken(data: bytes) -> str:
                raise RuntimeError("digest exploded")

            monkeypatch.setattr(_gate, "sha256_hex", broken)
            before = len(flows)
            call = rt.call(READ, {"repo": "a/b", "path": "R"}, action_id=READ, session_id=sid)
            with pytest.raises(cra.ActionDeniedError) as caught, call:
                ran.append("tool")
            assert len(flows) == before  # it was the fused path that failed
            assert caught.value.policy_id == _gate.INTERNAL_POLICY
            assert caught.value.reason == "internal_error"
            assert ran == []
            events = rt.trace_events(sid)
            assert rt.verify(sid).valid
            last = events[-1]
            assert last.event_type == ev.ACTION_DENIED
            assert last.payload["reason"] == "internal_error"
            assert "digest exploded" in last.payload["error"]
            # Nothing of the refused call but its denial: no action.requested / approved.
            assert [e.event_type for e in events[-2:]] == [ev.ACTION_EXECUTED, ev.ACTION_DENIED]
            monkeypatch.undo()
            assert _run(rt, sid, READ, {"repo": "a/b", "path": "R"}) == "ran"  # still serves
        finally:
            rt.close()

    def test_failing_record_refuses(self, ops_atlas, monkeypatch):
        """A recorder that raises (the trace failed) refuses the call before the tool runs."""
        rt = cra.Runtime(atlases=[ops_atlas])
        try:
            sid = rt.create_session("bot", "fail closed").session_id
            assert _run(rt, sid, READ, {"repo": "a/b", "path": "R"}) == "ran"

            def unavailable(chain: Any, sequence: int) -> None:
                raise cra.TraceUnavailableError("store gone")

            monkeypatch.setattr(rt._collector, "committed", unavailable)
            ran: list[str] = []
            call = rt.call(READ, {"repo": "a/b", "path": "R"}, action_id=READ, session_id=sid)
            with pytest.raises(cra.TraceUnavailableError), call:
                ran.append("tool")
            assert ran == []
        finally:
            monkeypatch.undo()
            rt.close()

    def test_session_ended_meanwhile_refuses(self, ops_atlas):
        """A recorder that finds the session ended refuses with SessionEndedError."""
        rt = cra.Runtime(atlases=[ops_atlas])
        try:
            sid = rt.create_session("bot", "ended").session_id
            assert _run(rt, sid, READ, {"repo": "a/b", "path": "R"}) == "ran"
            call = rt.call(READ, {"repo": "a/b", "path": "R"}, action_id=READ, session_id=sid)
            rt._session(sid).ended_ns = 1  # ended between building the call and deciding it
            with pytest.raises(cra.SessionEndedError), call:
                pytest.fail("the tool ran")
            assert call.done
        finally:
            rt.close()
