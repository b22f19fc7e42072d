"""Ended sessions are released from memory (issue 14); what they were is read from the store.

The RSS figure over 100,000 sessions is ``benchmarks/session_memory_bench.py``.
"""

from __future__ import annotations

import gc
import uuid

import pytest

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.runtime._sessions import SessionState

GITHUB_OPS = atlas_path("github-ops")


@pytest.fixture(params=["memory", "sqlite", "jsonl"])
def runtime(request, tmp_path):
    url = {
        "memory": "memory://",
        "sqlite": f"sqlite://{tmp_path / 't.db'}",
        "jsonl": f"jsonl://{tmp_path / 'j'}",
    }[request.param]
    rt = cra.Runtime([GITHUB_OPS], store=url)
    rt.ended_sessions_kept = 2
    yield rt
    rt.close()


def _states(session_id: str) -> int:
    """SessionState objects of ``session_id`` alive anywhere in the process (weakref-less)."""
    gc.collect()
    return sum(
        1 for o in gc.get_objects() if type(o) is SessionState and o.session_id == session_id
    )


def _one_call(rt: cra.Runtime, session_id: str) -> None:
    with rt.call("github.issue.list", {"repo": "acme/app"}, session_id=session_id) as call:
        call.result = ["#1"]


class TestEndedSessionsAreReleased:
    def test_the_state_is_dropped(self, runtime):
        """After end (and past the bound) nothing of the runtime holds the session state."""
        first = runtime.create_session("bot", "First", metadata={"ticket": 7})
        assert _states(first.session_id) == 1
        _one_call(runtime, first.session_id)
        runtime.end_session(first.session_id)
        assert first.session_id not in runtime._sessions
        for index in range(3):
            other = runtime.create_session("bot", f"Other {index}")
            runtime.end_session(other.session_id)
        assert runtime.flush()
        assert _states(first.session_id) == 0
        assert len(runtime._ended) == 2
        assert runtime._sessions == {}
        print(
            f"\n[memory] {type(runtime.store).__name__}: 4 ended sessions, "
            f"{len(runtime._ended)} states kept, the first one freed"
        )

    def test_an_evicted_session_is_answered_from_the_store(self, runtime):
        """session(id) reads started/ended back: the same answer as before eviction."""
        first = runtime.create_session("bot", "First", metadata={"ticket": 7})
        _one_call(runtime, first.session_id)
        before = runtime.end_session(first.session_id)
        for index in range(3):
            runtime.end_session(runtime.create_session("bot", f"Other {index}").session_id)
        runtime.flush()
        after = runtime.session(first.session_id)
        assert first.session_id not in runtime._ended
        assert (after.agent_id, after.goal, after.trace_id, after.active) == (
            "bot",
            "First",
            before.trace_id,
            False,
        )
        assert (after.action_count, after.resolution_count) == (1, 0)
        assert after.event_count == after.durable_count == before.event_count == 6
        assert after.ended_at is not None
        assert dict(after.metadata or {}) == {"ticket": 7}
        assert runtime.verify(first.session_id).valid
        assert [s.goal for s in runtime.sessions()] == ["Other 1", "Other 2"]

    def test_an_evicted_session_stays_ended(self, runtime):
        """Calls, events and a second end on it are refused as ended; its id is not reused."""
        first = runtime.create_session("bot", "First")
        runtime.end_session(first.session_id)
        for index in range(3):
            runtime.end_session(runtime.create_session("bot", f"Other {index}").session_id)
        runtime.flush()
        with pytest.raises(cra.SessionEndedError):
            _one_call(runtime, first.session_id)
        with pytest.raises(cra.SessionEndedError):
            runtime.end_session(first.session_id)
        with pytest.raises(cra.SessionEndedError):
            runtime.record_event(first.session_id, "myapp.step.done", {})
        with pytest.raises(cra.CRAError, match="already exists"):
            runtime.create_session("bot", "Again", session_id=first.session_id)
        unknown = str(uuid.uuid4())
        with pytest.raises(cra.SessionNotFoundError):
            runtime.session(unknown)
        with pytest.raises(cra.SessionNotFoundError):
            runtime.trace_events(unknown)
        with pytest.raises(cra.SessionNotFoundError):
            runtime.session("../not-an-id")

    def test_a_call_in_flight_finishes_after_the_end(self, runtime):
        """The call holds its session: its outcome and session.ended are still written."""
        session = runtime.create_session("bot", "Long call")
        call = runtime.authorize(session.session_id, "github.issue.list", {"repo": "acme/app"})
        runtime.end_session(session.session_id)
        assert session.session_id not in runtime._sessions
        runtime.record_outcome(call, result=["#1"])
        events = runtime.trace_events(session.session_id)
        assert [e.event_type for e in events][-2:] == ["action.executed", "session.ended"]
        assert runtime.session(session.session_id).action_count == 1

    def test_the_implicit_session_is_renewed_after_its_end(self, runtime):
        """Ending the implicit session lets the next implicit call open a fresh one."""
        first = runtime.implicit_session_id()
        runtime.end_session(first)
        assert runtime.implicit_session_id() != first

    def test_a_store_without_a_start_is_not_a_session(self, runtime):
        """A store session that does not begin with session.started is not answered."""
        from cra_agents.trace import SessionChain

        orphan = SessionChain(str(uuid.uuid4()), str(uuid.uuid4()))
        orphan.append("myapp.step.done", {})
        runtime.store.append(orphan.flush())
        runtime.store.sync()
        with pytest.raises(cra.SessionNotFoundError):
            runtime.session(orphan.session_id)
