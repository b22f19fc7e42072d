from __future__ import annotations

import time

import pytest

import cra_agents as cra
from cra_agents.examples import atlas_path

GITHUB_OPS = atlas_path("github-ops")


@pytest.fixture
def runtime() -> cra.Runtime:
    return cra.Runtime([GITHUB_OPS])


class TestBoundedSessionState:
    def test_long_sessions_forget_what_can_no_longer_be_used(self, runtime, monkeypatch):
        """Expired resolutions and request ids past the skew horizon are pruned."""
        session = runtime.create_session("triage-bot", "Triage")
        for _ in range(1023):
            runtime.resolve(cra.resolve_request(session))
        state = runtime._sessions[session.session_id]
        assert len(state.resolutions) == 1023
        later = time.monotonic() + 10 * runtime.ttl_seconds
        monkeypatch.setattr(time, "monotonic", lambda: later)
        runtime.resolve(cra.resolve_request(session))
        runtime.resolve(cra.resolve_request(session))
        assert len(state.request_ids) <= 2
        assert len(state.resolutions) <= 2

    def test_a_pruned_request_id_is_still_refused_by_the_skew_rule(self, runtime):
        """Replaying an old request fails on its timestamp even once its id is forgotten."""
        session = runtime.create_session("triage-bot", "Triage")
        request = cra.resolve_request(session)
        runtime.resolve(request)
        runtime._sessions[session.session_id].request_ids.clear()
        stale = request.model_copy(update={"timestamp": "2020-01-01T00:00:00+00:00"})
        with pytest.raises(cra.InvalidRequestError, match="clock"):
            runtime.resolve(stale)

    def test_ending_a_session_drops_its_working_state(self, runtime):
        """After session.ended, resolutions, idempotency keys and request ids are released."""
        session = runtime.create_session("triage-bot", "Triage")
        resolution = runtime.resolve(cra.resolve_request(session))
        runtime.execute(
            cra.execute_request(
                session,
                resolution.resolution_id,
                "github.issue.list",
                {"repo": "acme/app"},
                idempotency_key="k1",
            )
        )
        state = runtime._sessions[session.session_id]
        runtime.end_session(session.session_id)
        assert (state.resolutions, state.idempotency, state.request_ids) == ({}, {}, {})
        assert runtime.session(session.session_id).resolution_count == 1


class TestUndeclaredActions:
    def test_denial_names_the_action_and_the_loaded_atlases(self, runtime):
        """An action no atlas declares is denied, naming the action and what is loaded."""
        from cra_agents.policy import ConditionContext

        decision = runtime.engine.decide("github.gist.create", ConditionContext(agent_id="a"))
        assert decision.policy_id == "undeclared-action"
        assert "github.gist.create" in (decision.reason or "")
        assert "com.example.github-ops" in (decision.reason or "")


def test_record_event_takes_extensions_and_refuses_reserved_types(github_ops):
    """Integrations may add their own event types; the runtime's own cannot be forged."""
    import pytest

    from cra_agents import InvalidRequestError, Runtime
    from cra_agents.replay import replay_session

    runtime = Runtime([github_ops], store="memory://")
    info = runtime.create_session("bot", "Observe")
    sequence = runtime.record_event(
        info.session_id, "langchain.llm.started", {"run_id": "r1", "messages": 2}
    )
    assert sequence == 1
    for bad in (
        "action.approved",
        "policy.evaluated",
        "session.ended",
        "checkpoint.passed",
        "error.custom",
        "NoDots",
        "x",
        "langchain..x",
    ):
        with pytest.raises(InvalidRequestError, match="reserved or malformed"):
            runtime.record_event(info.session_id, bad, {})
    with pytest.raises(InvalidRequestError, match="cannot be recorded"):
        runtime.record_event(info.session_id, "langchain.llm.ended", {"x": float("nan")})
    runtime.end_session(info.session_id)
    runtime.flush()
    events = runtime.trace_events(info.session_id)
    assert [e.event_type for e in events] == [
        "session.started",
        "langchain.llm.started",
        "session.ended",
    ]
    assert runtime.verify(info.session_id).valid
    report = replay_session(events, [github_ops])
    assert report.identical
    runtime.close()
