"""The one fold from a session's events to call and resolution records."""

from __future__ import annotations

import time
from typing import Any

import pytest

import cra_agents as cra
from cra_agents._clock import parse_timestamp_ns
from cra_agents.examples import atlas_path
from cra_agents.trace import (
    CallRecord,
    ResolutionRecord,
    event_field,
    event_payload,
    fold_calls,
    fold_session,
)
from tests.test_report import chain, dicts

GITHUB_OPS = atlas_path("github-ops")
MERGE_ARGS = {"repo": "acme/app", "pr_number": 7, "expected_head_sha": "a" * 40}
_PROPERTIES = (
    "session_id",
    "execution_id",
    "action_id",
    "has_request",
    "decision",
    "result",
    "policy_id",
    "reason",
    "approver",
    "approval_reason",
    "outcome_kind",
    "tool_call_id",
    "resolution_id",
    "tool_name",
    "shadow",
    "duration_ms",
    "error_code",
    "error_message",
    "start_ns",
    "end_ns",
)


def plain(event: Any) -> Any:
    """An event (either form) as its JSON dict, for comparing records across forms."""
    if event is None:
        return None
    return event.model_dump(mode="json") if isinstance(event, cra.TraceEvent) else dict(event)


def call_view(call: CallRecord) -> dict[str, Any]:
    view = {name: getattr(call, name) for name in _PROPERTIES}
    for slot in ("requested", "evaluated", "violated", "decided", "outcome"):
        view[slot] = plain(getattr(call, slot))
    view["events"] = [plain(e) for e in call.events]
    return view


def resolution_view(resolution: ResolutionRecord) -> dict[str, Any]:
    return {
        "session_id": resolution.session_id,
        "received": plain(resolution.received),
        "completed": plain(resolution.completed),
        "evaluated": [plain(e) for e in resolution.evaluated],
        "injected": [plain(e) for e in resolution.injected],
        "request_id": resolution.request_id,
        "resolution_id": resolution.resolution_id,
        "decision_type": resolution.decision_type,
        "cached": resolution.cached,
        "goal": resolution.goal,
    }


def approve(request: cra.ApprovalRequest) -> cra.ApprovalDecision:
    return cra.ApprovalDecision(True, "alice@example.com", "reviewed the diff")


def guarded_session(*, shadow: bool = False) -> list[cra.TraceEvent]:
    """One call of each kind through the gate: allowed, denied, approved, failed."""
    with cra.Runtime(
        [GITHUB_OPS], store="memory://", approval_handler=approve, shadow=shadow
    ) as runtime:
        sid = runtime.create_session("triage-bot", "Triage bug reports").session_id

        def call(action: str, arguments: dict[str, Any], error: Exception | None = None) -> None:
            try:
                auth = runtime.authorize(sid, action, arguments, tool_call_id=f"tc-{action}")
            except cra.ActionDeniedError:
                return
            time.sleep(0.002)
            runtime.record_outcome(auth, result={"ok": True}, error=error)

        call("github.issue.list", {"repo": "acme/app"})
        call("github.repo.delete", {"repo": "acme/app", "confirm_name": "acme/app"})
        call("github.pr.merge", MERGE_ARGS)
        call("github.issue.create", {"repo": "acme/app", "title": "x"}, RuntimeError("API 502"))
        runtime.end_session(sid)
        return runtime.trace_events(sid)


@pytest.fixture(scope="module")
def guarded() -> list[cra.TraceEvent]:
    return guarded_session()


@pytest.fixture(scope="module")
def shadowed() -> list[cra.TraceEvent]:
    return guarded_session(shadow=True)


@pytest.fixture(scope="module")
def carp() -> list[cra.TraceEvent]:
    """A resolve (policies, context) and two CARP executes, one refused for approval."""
    with cra.Runtime([GITHUB_OPS], store="memory://") as runtime:
        session = runtime.create_session("triage-bot", "Triage bug reports, write release notes")
        resolution = runtime.resolve(cra.resolve_request(session))
        rid = resolution.resolution_id
        runtime.execute(cra.execute_request(session, rid, "github.issue.list", {"repo": "a/b"}))
        with pytest.raises(cra.ApprovalRequiredError):
            runtime.execute(cra.execute_request(session, rid, "github.pr.merge", MERGE_ARGS))
        runtime.end_session(session.session_id)
        return runtime.trace_events(session.session_id)


class TestGuardedCalls:
    def test_one_call_of_each_kind(self, guarded):
        """Each gate call pairs its request, evaluation, decision and outcome."""
        listed, deleted, merged, created = fold_calls(guarded)
        assert (listed.action_id, listed.decision, listed.result, listed.outcome_kind) == (
            "github.issue.list",
            "allow",
            "allow",
            "executed",
        )
        assert listed.policy_id == "allow-read"
        assert isinstance(listed.duration_ms, int) and listed.duration_ms >= 2
        assert (deleted.decision, deleted.outcome_kind, deleted.outcome) == ("deny", "denied", None)
        assert deleted.reason == "Deleting repositories is never automated"
        assert (merged.result, merged.decision, merged.approver, merged.approval_reason) == (
            "requires_approval",
            "allow",
            "alice@example.com",
            "reviewed the diff",
        )
        assert (created.outcome_kind, created.error_code, created.error_message) == (
            "failed",
            "RuntimeError",
            "API 502",
        )
        assert listed.error_code is None and listed.error_message is None
        for call in (listed, deleted, merged, created):
            assert call.has_request and not call.shadow and call.violated is None
            assert call.session_id == guarded[0].session_id
            assert call.tool_call_id == f"tc-{call.action_id}"
            assert call.tool_name is None and call.resolution_id is None
            assert call.execution_id == event_payload(call.requested)["execution_id"]
            assert call.evaluated is not None
            assert event_field(call.evaluated, "event_type") == "policy.evaluated"

    def test_times_of_a_call(self, guarded):
        """start_ns is the request's timestamp, end_ns the call's last event's."""
        listed = fold_calls(guarded)[0]
        assert listed.start_ns == parse_timestamp_ns(event_field(listed.requested, "timestamp"))
        assert listed.outcome is not None
        assert listed.end_ns == parse_timestamp_ns(event_field(listed.outcome, "timestamp"))
        assert listed.end_ns > listed.start_ns
        assert listed.events[0] is listed.requested and listed.events[-1] is listed.outcome

    def test_both_event_forms_give_equal_records(self, guarded, shadowed, carp):
        """Models and JSON dicts fold to the same records, each keeping its own form."""
        for events in (guarded, shadowed, carp):
            from_models = fold_session(events)
            from_dicts = fold_session(dicts(events))
            assert [call_view(c) for c in from_models.calls] == [
                call_view(c) for c in from_dicts.calls
            ]
            assert [resolution_view(r) for r in from_models.resolutions] == [
                resolution_view(r) for r in from_dicts.resolutions
            ]
            assert any(e is from_models.calls[0].requested for e in events)
            assert isinstance(from_dicts.calls[0].requested, dict)
            assert (from_models.agent_id, from_models.goal, from_models.end_reason) == (
                from_dicts.agent_id,
                from_dicts.goal,
                from_dicts.end_reason,
            )


class TestShadow:
    def test_shadow_calls(self, shadowed):
        """Shadow mode: every call runs; the violation says what would have been refused."""
        session = fold_session(shadowed)
        assert session.shadow
        listed, deleted, merged, created = session.calls
        assert all(call.shadow for call in session.calls)
        assert listed.violated is None
        assert deleted.violated is not None and merged.violated is not None
        assert (deleted.decision, deleted.result, deleted.outcome_kind) == (
            "allow",
            "deny",
            "executed",
        )
        assert deleted.reason == "Deleting repositories is never automated"
        assert deleted.policy_id == "deny-repo-delete"
        assert merged.result == "requires_approval" and merged.approver is None
        assert created.outcome_kind == "failed"

    def test_shadow_flag_of_a_violation_alone(self):
        """policy.violated says shadow under details; that counts for the call."""
        events = chain(
            ("action.requested", {"action_id": "a.b", "execution_id": "e"}),
            (
                "policy.violated",
                {"action_id": "a.b", "policy_id": "p", "details": {"shadow": True}},
            ),
            ("action.approved", {"action_id": "a.b", "execution_id": "e"}),
        )
        (call,) = fold_calls(events)
        assert call.shadow and call.reason is None
        assert not fold_session(events).shadow  # no event says shadow at top level


class TestCarp:
    def test_resolution_and_execute_calls(self, carp):
        """A resolution keeps its policies and context; execute calls carry its id."""
        session = fold_session(carp)
        (resolution,) = session.resolutions
        completed = next(e for e in carp if e.event_type == "carp.resolution.completed")
        assert resolution.resolution_id == completed.payload["resolution_id"]
        assert resolution.request_id == carp[1].payload["request_id"]
        assert resolution.decision_type == completed.payload["decision_type"]
        assert resolution.completed is completed
        assert resolution.received is carp[1]
        assert not resolution.cached
        assert resolution.goal == "Triage bug reports, write release notes"
        assert resolution.session_id == carp[0].session_id
        # Every policy.evaluated belongs to the resolution or to exactly one execute call.
        in_calls = sum(c.evaluated is not None for c in session.calls)
        total = sum(e.event_type == "policy.evaluated" for e in carp)
        assert len(resolution.evaluated) + in_calls == total
        assert len(resolution.injected) == len(session.context) > 0
        assert all(c.resolution is resolution for c in session.context)
        listed, merged = session.calls
        assert (listed.decision, listed.outcome_kind, listed.result) == (
            "allow",
            "approved",
            "allow",
        )
        assert listed.resolution_id == resolution.resolution_id
        assert (merged.decision, merged.outcome_kind, merged.reason) == (
            "deny",
            "denied",
            "approval_required",
        )

    def test_cached_and_mid_resolution(self):
        """A completion without a request is a resolution of its own; cached is flagged."""
        events = chain(
            ("carp.resolution.cached", {"resolution_id": "r0", "request_id": "q0"}),
            ("context.injected", {"block_id": "outside"}),
            ("carp.request.received", {"request_id": "q1", "goal": "g"}),
            ("carp.request.received", {"request_id": "q2", "goal": "g2"}),
            ("carp.resolution.completed", {"resolution_id": "r2", "decision_type": "deny"}),
        )
        cached, unfinished, finished = fold_session(events).resolutions
        assert (cached.received, cached.request_id, cached.resolution_id) == (None, "q0", "r0")
        assert cached.cached and cached.decision_type is None and cached.goal is None
        assert unfinished.completed is None and unfinished.resolution_id is None
        assert (finished.request_id, finished.decision_type) == ("q2", "deny")
        (stray,) = fold_session(events).context
        assert stray.resolution is None


class TestGrouping:
    def test_interleaved_calls_group_by_execution_id(self):
        """Concurrent calls interleave in the chain; their events pair by execution id."""
        events = chain(
            ("action.requested", {"action_id": "x.get", "execution_id": "e1"}),
            ("action.requested", {"action_id": "x.get", "execution_id": "e2"}),
            ("action.requested", {"action_id": "x.put", "execution_id": "e3"}),
            ("action.denied", {"action_id": "x.get", "execution_id": "e2", "reason": "no"}),
            ("action.approved", {"action_id": "x.put", "execution_id": "e3"}),
            ("action.approved", {"action_id": "x.get", "execution_id": "e1"}),
            ("action.failed", {"action_id": "x.put", "execution_id": "e3", "error_code": "E"}),
            ("action.executed", {"action_id": "x.get", "execution_id": "e1", "duration_ms": 5}),
        )
        first, second, third = fold_calls(events)
        assert [c.execution_id for c in (first, second, third)] == ["e1", "e2", "e3"]
        assert (first.outcome_kind, first.duration_ms, first.decided) == (
            "executed",
            5,
            events[5],
        )
        assert (second.outcome_kind, second.reason) == ("denied", "no")
        assert (third.outcome_kind, third.error_code) == ("failed", "E")
        assert third.events == (events[2], events[4], events[6])

    def test_interleaved_gate_batches_take_their_own_evaluation(self):
        """Each gate batch's policy.evaluated goes to its own call, not a neighbour's."""
        events = chain(
            ("action.requested", {"action_id": "a", "execution_id": "e1"}),
            ("policy.evaluated", {"action_id": "a", "policy_id": "p1", "result": "allow"}),
            ("action.approved", {"action_id": "a", "execution_id": "e1", "policy_id": "p1"}),
            ("action.requested", {"action_id": "a", "execution_id": "e2"}),
            ("policy.evaluated", {"action_id": "a", "policy_id": "p2", "result": "deny"}),
            ("action.denied", {"action_id": "a", "execution_id": "e2", "policy_id": "p2"}),
            ("action.executed", {"action_id": "a", "execution_id": "e1", "duration_ms": 1}),
        )
        first, second = fold_calls(events)
        assert (first.result, first.outcome_kind, first.end_ns) == (
            "allow",
            "executed",
            parse_timestamp_ns(events[6].timestamp),
        )
        assert (second.result, second.policy_id, second.outcome_kind) == ("deny", "p2", "denied")

    def test_pending_and_approved_calls(self):
        """Requested with nothing after is pending; approved without outcome is approved."""
        events = chain(
            ("action.requested", {"action_id": "a", "execution_id": "e1", "tool": "search"}),
            ("action.requested", {"action_id": "b", "execution_id": "e2"}),
            ("action.approved", {"action_id": "b", "execution_id": "e2", "approver": 42}),
        )
        pending, approved = fold_calls(events)
        assert (pending.outcome_kind, pending.decision, pending.result) == ("pending", None, None)
        assert pending.tool_name == "search"
        assert pending.end_ns == pending.start_ns
        assert (approved.outcome_kind, approved.approver) == ("approved", "42")

    def test_denial_without_execution_id_pairs_with_its_request(self):
        """A denial with no execution id pairs with the undecided request of its action."""
        events = chain(
            ("action.requested", {"action_id": "a", "execution_id": "e1"}),
            ("action.denied", {"action_id": "a", "reason": "internal_error", "policy_id": "r"}),
        )
        (call,) = fold_calls(events)
        assert (call.execution_id, call.outcome_kind, call.reason) == (
            "e1",
            "denied",
            "internal_error",
        )

    def test_denial_without_execution_id_after_a_decided_request(self):
        """With no undecided request of its action, such a denial is a record of its own."""
        events = chain(
            ("action.requested", {"action_id": "a", "execution_id": "e1"}),
            ("action.approved", {"action_id": "a", "execution_id": "e1"}),
            ("action.denied", {"action_id": "a", "reason": "internal_error", "policy_id": "r"}),
        )
        call, own = fold_calls(events)
        assert call.outcome_kind == "approved"
        assert (own.execution_id, own.requested, own.decided, own.has_request) == (
            "",
            events[2],
            events[2],
            False,
        )
        assert own.outcome_kind == "denied" and own.tool_name is None

    def test_rust_core_decisions_and_outcomes_pair_by_action(self):
        """Without execution ids: latest undecided call, latest call without outcome."""
        events = chain(
            ("action.requested", {"action_id": "x.get", "execution_id": "e1"}),
            ("action.requested", {"action_id": "x.put", "execution_id": "e2"}),
            ("action.requested", {"action_id": "x.put", "execution_id": "e3"}),
            ("action.approved", {"action_id": "x.get"}),
            ("action.approved", {"action_id": "x.put"}),
            ("action.denied", {"action_id": "x.put", "reason": "no"}),
            ("action.executed", {"action_id": "x.get", "duration_ms": 12.5}),
        )
        got, put, put_again = fold_calls(events)
        assert (put_again.decision, put.decision) == ("allow", "deny")
        assert (got.outcome_kind, got.duration_ms) == ("executed", None)  # 12.5 is no int ms

    def test_events_from_mid_call(self):
        """An outcome of an unknown execution starts a record that later events join."""
        events = chain(
            ("action.executed", {"action_id": "a", "execution_id": "e9", "duration_ms": 3}),
            ("action.failed", {"action_id": "a", "execution_id": "e9", "error_code": "X"}),
            ("action.executed", {"action_id": "b", "duration_ms": 3}),
        )
        orphan, unpaired = fold_calls(events)
        assert (orphan.execution_id, orphan.has_request, orphan.outcome) == ("e9", False, events[0])
        assert orphan.events == (events[0], events[1])  # the second outcome is kept, not used
        assert orphan.outcome_kind == "executed" and orphan.error_code is None
        assert (unpaired.execution_id, unpaired.action_id) == ("", "b")

    def test_policy_events_of_resolutions_and_of_calls(self):
        """Inside a resolution policy.evaluated is the resolution's; a later call's is its own."""
        events = chain(
            ("action.requested", {"action_id": "a", "execution_id": "e0"}),
            ("carp.request.received", {"request_id": "q"}),
            ("policy.evaluated", {"action_id": "a", "policy_id": "p", "result": "allow"}),
            ("action.requested", {"action_id": "a", "execution_id": "e1"}),
            ("policy.evaluated", {"action_id": "a", "policy_id": "g", "result": "deny"}),
            ("policy.violated", {"action_id": "a", "policy_id": "g", "violation_type": "x"}),
            ("policy.violated", {"action_id": "zzz", "policy_id": "g"}),
            ("policy.evaluated", {"action_id": "b", "policy_id": "p", "result": "deny"}),
        )
        session = fold_session(events)
        (resolution,) = session.resolutions
        assert resolution.evaluated == (events[2], events[7])
        before, gate = session.calls
        assert before.evaluated is None
        assert (gate.evaluated, gate.violated, gate.reason) == (events[4], events[5], "x")
        assert gate.policy_id == "g"

    def test_evaluations_without_a_home(self):
        """Each undecided call takes one evaluation, latest first; a spare one is dropped."""
        events = chain(
            ("policy.evaluated", {"action_id": "a", "result": "allow"}),
            ("action.requested", {"action_id": "a", "execution_id": "e1"}),
            ("action.requested", {"action_id": "a", "execution_id": "e2"}),
            ("policy.evaluated", {"action_id": "a", "result": "deny"}),
            ("policy.evaluated", {"action_id": "a", "result": "requires_approval"}),
            ("policy.evaluated", {"action_id": "a", "result": "allow"}),
        )
        session = fold_session(events)
        first, second = session.calls
        assert (first.result, second.result) == ("requires_approval", "deny")
        assert session.resolutions == ()

    def test_odd_events_are_tolerated(self):
        """Payloads that are not objects, unknown and missing types are skipped safely."""
        raw = dicts(
            chain(
                ("session.started", {"agent_id": "bot", "goal": "g"}),
                ("action.requested", {"action_id": "a", "execution_id": "e"}),
                ("myapp.step.done", {"n": 1}),
                ("session.ended", {"reason": "cancelled"}),
            )
        )
        raw[1]["payload"] = "not an object"
        raw[2].pop("event_type")
        session = fold_session(raw)
        assert event_payload(raw[1]) == {}
        (call,) = session.calls
        assert (call.action_id, call.execution_id, call.outcome_kind) == ("", "", "pending")
        assert (session.agent_id, session.goal, session.end_reason) == ("bot", "g", "cancelled")
        assert session.session_id == raw[0]["session_id"]
        assert len(session.events) == 4

    def test_empty(self):
        """No events: an empty session record."""
        session = fold_session([])
        assert (session.session_id, session.started, session.calls) == (None, None, ())
        assert fold_calls(iter([])) == []
