"""``approval.requested``: a person asked outside the call, and how the readers fold it."""

from __future__ import annotations

import pytest

import cra_agents as cra
from cra_agents import ApprovalDecision, InvalidRequestError
from cra_agents.examples import atlas_path
from cra_agents.report import timeline
from cra_agents.trace import fold_session

ATLAS = atlas_path("github-ops")
SHA = "c" * 40
ARGS = {"repo": "acme/app", "pr_number": 3, "expected_head_sha": SHA}


@pytest.fixture
def runtime():
    rt = cra.Runtime([ATLAS], store="memory://")
    yield rt
    rt.close()


def test_asked_then_decided_without_a_tool_call_id(runtime):
    """Matched by action and arguments digest; the wait is the time between the two."""
    session = runtime.create_session("bot", "merge").session_id
    precheck = runtime.precheck(session, "github.pr.merge", ARGS)
    assert precheck.needs_approval
    runtime.record_approval_request(session, precheck, ARGS)
    pending = fold_session(runtime.trace_events(session))
    (question,) = pending.calls
    assert question.outcome_kind == "pending" and not question.has_request
    assert question.asked is question.requested
    with runtime.call(
        "merge_pr",
        ARGS,
        action_id="github.pr.merge",
        session_id=session,
        approval=ApprovalDecision(True, "alice", "looks fine"),
    ) as call:
        call.result = "merged"
    (done,) = fold_session(runtime.trace_events(session)).calls
    assert done.asked is not None and done.approval_wait_ms is not None
    assert done.approver == "alice" and done.approval_reason == "looks fine"
    (shown,) = timeline(runtime.trace_events(session)).calls
    assert shown.approval_requested_at and shown.decision == "approved"


def test_refusal_codes_and_human_words_are_kept_apart(runtime):
    session = runtime.create_session("bot", "merge").session_id
    for decision, reason, said in [
        (ApprovalDecision(False, "bob", "CI is red"), "approval_denied", "CI is red"),
        (ApprovalDecision(False, "runtime", "approval_timeout"), "approval_timeout", None),
        (
            ApprovalDecision(False, "eve", "done by hand", responded=True),
            "approval_responded",
            "done by hand",
        ),
    ]:
        with pytest.raises(cra.ActionDeniedError):
            runtime.call(
                "merge_pr", ARGS, action_id="github.pr.merge", session_id=session, approval=decision
            ).__enter__()
        denied = [e for e in runtime.trace_events(session) if e.event_type == "action.denied"][-1]
        assert denied.payload["reason"] == reason
        assert denied.payload.get("approval_reason") == said


def test_an_unrecordable_argument_is_asked_about_with_an_empty_digest(runtime):
    session = runtime.create_session("bot", "merge").session_id
    precheck = runtime.precheck(session, "github.pr.merge", ARGS)
    runtime.record_approval_request(session, precheck, {"x": float("nan")}, tool_call_id="t1")
    (event,) = [e for e in runtime.trace_events(session) if e.event_type == "approval.requested"]
    assert event.payload["parameters_hash"] == "" and event.payload["tool_call_id"] == "t1"


def test_approval_events_cannot_be_forged_as_extensions(runtime):
    session = runtime.create_session("bot", "merge").session_id
    with pytest.raises(InvalidRequestError, match="reserved"):
        runtime.record_event(session, "approval.requested", {"action_id": "x"})
