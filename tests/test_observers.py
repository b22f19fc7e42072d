"""Observers hear every call and session, whichever shell made it, and never hurt the host."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.protocol import TraceEvent
from cra_agents.trace import fold_calls

GITHUB_OPS = atlas_path("github-ops")
REPO = {"repo": "acme/app"}


class Recorder(cra.Observer):
    """Records each hook with the thread it ran on."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()

    def _note(self, hook: str, detail: Any) -> None:
        with self.lock:
            self.seen.append((hook, threading.current_thread().name, detail))

    def on_session_start(self, session: cra.SessionInfo) -> Any:
        self._note("session_start", session.agent_id)
        return f"state:{session.session_id}"

    def on_session_end(
        self,
        session: cra.SessionInfo,
        state: Any,
        event: TraceEvent | None,
        error: BaseException | None,
    ) -> None:
        self._note("session_end", (state, event.event_type if event else None, repr(error)))

    def on_call_start(self, call: cra.Call) -> Any:
        self._note("call_start", (call.tool, call.action_id))
        return call.execution_id

    def activate(self, state: Any) -> Any:
        self._note("activate", state)
        return "token"

    def deactivate(self, state: Any, token: Any) -> None:
        self._note("deactivate", (state, token))

    def on_call_decided(
        self, call: cra.Call, state: Any, events: Sequence[TraceEvent] | None
    ) -> None:
        self._note("call_decided", [e.event_type for e in events or ()])

    def on_call_end(self, call: cra.Call, state: Any, events: Sequence[TraceEvent] | None) -> None:
        records = fold_calls(events or ())
        self._note("call_end", (state, records[0].outcome_kind if records else None))

    def hooks(self, name: str) -> list[tuple[str, Any]]:
        return [(thread, detail) for hook, thread, detail in self.seen if hook == name]


class Exploding(cra.Observer):
    def __getattribute__(self, name: str) -> Any:
        if name.startswith(("on_", "activate", "deactivate", "force_flush", "shutdown")):
            raise RuntimeError(f"{name} exploded")
        return super().__getattribute__(name)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def runtime(recorder: Recorder) -> Iterator[cra.Runtime]:
    rt = cra.Runtime([GITHUB_OPS], store="memory://", observers=[recorder])
    yield rt
    rt.close()


class TestCalls:
    def test_an_allowed_call_is_heard_at_every_moment(self, runtime, recorder):
        """start on the caller's thread; decided and end by whoever stores the events, after."""
        caller = threading.current_thread().name
        with (
            runtime.session_scope("triage-bot", "Triage") as active,
            runtime.call("list_issues", REPO) as call,
        ):
            assert call.arguments == REPO
            call.result = {"issues": []}
        runtime.flush()
        starts = recorder.hooks("call_start")
        assert starts == [(caller, ("list_issues", "github.issue.list"))]
        (decided,) = recorder.hooks("call_decided")
        assert decided[1] == ["action.requested", "policy.evaluated", "action.approved"]
        (ended,) = recorder.hooks("call_end")
        assert ended[1] == (call.execution_id, "executed")
        assert (caller, call.execution_id) in recorder.hooks("activate")
        assert (caller, (call.execution_id, "token")) in recorder.hooks("deactivate")
        (session_end,) = recorder.hooks("session_end")
        assert session_end[1] == (f"state:{active.session_id}", "session.ended", "None")

    def test_a_refused_call_ends_at_its_denial(self, runtime, recorder):
        """A denied call is decided and ended by its action.denied; it never activates."""
        session = runtime.create_session("triage-bot", "Delete")
        with pytest.raises(cra.ActionDenied):
            runtime.authorize(
                session.session_id,
                "github.repo.delete",
                {"repo": "acme/app", "confirm_name": "acme/app"},
            )
        runtime.flush()
        assert [d for _, d in recorder.hooks("call_decided")] == [
            ["action.requested", "policy.evaluated", "action.denied"]
        ]
        assert [d[1] for _, d in recorder.hooks("call_end")] == ["denied"]
        assert recorder.hooks("activate") == []

    def test_carp_execute_is_heard_like_any_call(self, runtime, recorder):
        """An execute is decided and ended by its decision (no tool runs in the runtime)."""
        session = runtime.create_session("maintainer-bot", "Triage")
        resolution = runtime.resolve(cra.resolve_request(session, "Triage"))
        runtime.execute(
            cra.execute_request(session, resolution.resolution_id, "github.issue.list", REPO)
        )
        runtime.flush()
        assert [d for _, d in recorder.hooks("call_start")] == [
            ("github.issue.list", "github.issue.list")
        ]
        assert [d[1] for _, d in recorder.hooks("call_end")] == ["approved"]

    def test_a_call_reporting_failure_in_its_result(self, runtime, recorder):
        """call.fail(error) records action.failed without an exception leaving the block."""
        session = runtime.create_session("triage-bot", "Triage")
        with runtime.call("list_issues", REPO, session_id=session.session_id) as call:
            call.fail(RuntimeError("the tool said: error"))
        events = runtime.trace_events(session.session_id)
        assert events[-1].event_type == "action.failed"
        assert events[-1].payload["error_message"] == "the tool said: error"
        with pytest.raises(RuntimeError, match="once"), call:
            pass

    def test_record_outcome_takes_an_authorized_call_once(self, runtime):
        """A second outcome for the same call is refused."""
        session = runtime.create_session("triage-bot", "Triage")
        auth = runtime.authorize(session.session_id, "github.issue.list", REPO)
        runtime.record_outcome(auth, result=[])
        with pytest.raises(cra.InvalidRequestError, match="once"):
            runtime.record_outcome(auth, result=[])


def _list_then_delete(rt: cra.Runtime) -> str:
    """In one session: an allowed call, then a denied authorization; the session's id."""
    with rt.session_scope("triage-bot", "Triage") as active:
        with rt.call("list_issues", REPO) as call:
            call.result = []
        with pytest.raises(cra.ActionDenied):
            rt.authorize(
                active.session_id,
                "github.repo.delete",
                {"repo": "acme/app", "confirm_name": "acme/app"},
            )
    rt.flush()
    return active.session_id


class TestBestEffort:
    def test_observers_that_raise_cost_nothing(self):
        """An observer raising in every hook leaves calls, sessions and the chain intact."""
        exploding = Exploding()
        with cra.Runtime([GITHUB_OPS], store="memory://", observers=[exploding]) as rt:
            session_id = _list_then_delete(rt)
            assert rt.verify(session_id).valid
            assert rt.observers.errors >= 8
            assert not rt.observers.force_flush()

    def test_one_observer_or_several_hear_the_same(self):
        """Alone (a short path) or beside others, one of them raising: the same hooks and states."""

        def errors(*observers: cra.RuntimeObserver) -> int:
            with cra.Runtime([GITHUB_OPS], store="memory://", observers=observers) as rt:
                _list_then_delete(rt)
                return rt.observers.errors

        alone, first, second = Recorder(), Recorder(), Recorder()
        assert errors(alone) == 0
        assert errors(first, Exploding(), second) >= 8
        heard = sorted(hook for hook, _, _ in alone.seen)
        for recorder in (first, second):
            assert sorted(hook for hook, _, _ in recorder.seen) == heard
            ends = [detail for _, detail in recorder.hooks("call_end")]
            starts = [detail for _, detail in recorder.hooks("activate")]
            assert [outcome for _, outcome in ends] == ["executed", "denied"]
            assert ends[0][0] in starts  # the state its own call_start returned
        assert first.hooks("call_end") == second.hooks("call_end")

    def test_otel_is_an_observer_built_by_name(self):
        """otel= builds the OpenTelemetry observer without the runtime importing it."""
        with cra.Runtime([GITHUB_OPS], store="memory://", otel=True) as rt:
            assert rt.telemetry is not None
            assert rt.telemetry in rt.observers.observers


class TestDecide:
    def test_decide_goes_through_the_gate_and_records_nothing(self):
        """Runtime.decide: the gate's phases and risk rule; rate limits take slots."""
        with cra.Runtime([GITHUB_OPS], store="memory://") as rt:
            session = rt.create_session("maintainer-bot", "Merge")
            merge = rt.decide(session.session_id, "github.pr.merge")
            assert (merge.result, merge.policy_id) == ("requires_approval", "approve-merge")
            answers = [rt.decide(session.session_id, "github.issue.comment") for _ in range(12)]
            assert "deny" in [a.result for a in answers]  # comments are rate limited
            assert [e.event_type for e in rt.trace_events(session.session_id)] == [
                "session.started"
            ]
