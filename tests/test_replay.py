"""Replay against the same and a candidate atlas, semantic diff, state reconstruction."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import cra_agents as cra
from cra_agents._ids import new_id
from cra_agents.examples import atlas_path
from cra_agents.replay import (
    diff_traces,
    load_events,
    reconstruct_session,
    replay_session,
)
from cra_agents.trace import JsonlStore, SessionChain

GITHUB_OPS = atlas_path("github-ops")
ISSUE = {"repo": "acme/app", "issue_number": 1, "body": "Thanks, looking into it."}


def _session(runtime: cra.Runtime, agent: str = "triage-bot") -> tuple[Any, list[Any]]:
    """A realistic session: two resolves, comments up to the rate limit, a denied action."""
    session = runtime.create_session(agent, "Triage new bug reports")
    resolution = runtime.resolve(cra.resolve_request(session, risk_tier="high"))
    for _ in range(7):
        with contextlib.suppress(cra.RateLimitExceededError):
            runtime.execute(
                cra.execute_request(
                    session, resolution.resolution_id, "github.issue.comment", ISSUE
                )
            )
    with pytest.raises(cra.ActionDeniedError):
        runtime.execute(
            cra.execute_request(
                session, resolution.resolution_id, "github.repo.delete", {"repo": "acme/app"}
            )
        )
    with pytest.raises(cra.InvalidParametersError):
        runtime.execute(
            cra.execute_request(session, resolution.resolution_id, "github.issue.list", {})
        )
    runtime.resolve(cra.resolve_request(session, required_capabilities=["pulls.write"]))
    runtime.end_session(session.session_id)
    return session, runtime.trace_events(session.session_id)


def _candidate(tmp_path: Path, **policy: Any) -> Path:
    target = tmp_path / "candidate"
    shutil.copytree(GITHUB_OPS, target)
    manifest = json.loads((target / "atlas.json").read_text("utf-8"))
    manifest["version"] = "1.3.0"
    manifest["policies"].append(policy)
    (target / "atlas.json").write_text(json.dumps(manifest), "utf-8")
    return target


@pytest.fixture
def recorded():
    with cra.Runtime([GITHUB_OPS], store="memory://") as runtime:
        return _session(runtime)


class TestReplay:
    def test_same_atlas_replays_identically(self, recorded):
        """Every resolve and execute decision comes out the same, rate limits included."""
        _, events = recorded
        report = replay_session(events, [GITHUB_OPS])
        assert report.identical
        kinds = {d.kind for d in report.decisions}
        assert kinds == {"resolve", "action", "execute"}
        executes = [d for d in report.decisions if d.kind == "execute"]
        assert [d.before[0] for d in executes if d.before] == ["allow"] * 5 + ["deny"] * 3
        assert [reason for _, reason in report.skipped] == ["runtime rule: invalid_parameters"]
        print(f"\nreplay, same atlas: {len(report.decisions)} decisions, 0 changed")

    def test_candidate_atlas_shows_what_would_change(self, recorded, tmp_path):
        """A stricter candidate lists exactly the decisions it would change."""
        _, events = recorded
        candidate = _candidate(
            tmp_path,
            policy_id="freeze-comments",
            type="deny",
            actions=["github.issue.comment"],
            priority=5,
            parameters={"reason": "Freeze"},
        )
        report = replay_session(events, [candidate])
        changed = report.changed
        assert changed
        assert {d.action_id for d in changed} == {"github.issue.comment"}
        assert all(d.after == ("deny", "freeze-comments") for d in changed)
        before = [d.before for d in changed if d.kind == "execute"]
        assert ("allow", "allow-issue-triage") in before
        assert report.as_dict()["changed"][0]["identical"] is False
        print(f"\nreplay, candidate: {len(report.decisions)} decisions, {len(changed)} change")

    def test_candidate_that_adds_and_removes_actions(self, recorded, tmp_path):
        """Actions only one side has are reported as appearing or disappearing."""
        _, events = recorded
        target = tmp_path / "smaller"
        shutil.copytree(GITHUB_OPS, target)
        manifest = json.loads((target / "atlas.json").read_text("utf-8"))
        manifest["actions"] = [
            a for a in manifest["actions"] if a["action_id"] != "github.workflow.rerun"
        ]
        manifest["actions"].append(
            {"action_id": "github.gist.create", "name": "Gist", "description": "Create a gist"}
        )
        (target / "atlas.json").write_text(json.dumps(manifest), "utf-8")
        report = replay_session(events, [target])
        gone = [d for d in report.changed if d.action_id == "github.workflow.rerun"]
        new = [d for d in report.changed if d.action_id == "github.gist.create"]
        assert gone
        assert gone[0].after is None
        assert new
        assert new[0].before is None

    def test_replay_from_a_jsonl_file(self, tmp_path):
        """A stored .trace.jsonl file replays like the events themselves."""
        store = JsonlStore(tmp_path / "t")
        with cra.Runtime([GITHUB_OPS], store=store) as runtime:
            session, _ = _session(runtime)
        report = replay_session(store.path(session.session_id), [GITHUB_OPS])
        assert report.identical
        assert len(load_events(store.path(session.session_id))) > 10

    def test_tampered_or_partial_traces_are_refused(self, recorded):
        """A trace that does not verify, or lacks its start, is not replayed."""
        _, events = recorded
        dumped = [e.model_dump(mode="json") for e in events]
        dumped[3]["payload"]["result"] = "tampered"
        with pytest.raises(ValueError, match="does not verify"):
            replay_session(dumped, [GITHUB_OPS])
        with pytest.raises(ValueError, match=r"session\.started"):
            replay_session([], [GITHUB_OPS])


class TestDiff:
    def test_identical_traces(self, recorded):
        """A trace compared with itself is identical."""
        _, events = recorded
        assert diff_traces(events, events).compatibility == "identical"

    def test_two_runs_of_the_same_work_differ_only_in_ids_and_times(self):
        """Ids, hashes, times and request ids are not differences."""
        with cra.Runtime([GITHUB_OPS], store="memory://") as first:
            _, a = _session(first)
        with cra.Runtime([GITHUB_OPS], store="memory://") as second:
            _, b = _session(second)
        diff = diff_traces(a, b)
        assert diff.compatibility in ("identical", "semantically_equivalent")

    def test_major_and_minor_differences(self, recorded):
        """Decisions are major, timings minor; extra or missing events are major."""
        _, events = recorded
        a = [e.model_dump(mode="json") for e in events]
        b = json.loads(json.dumps(a))
        b[2]["payload"]["result"] = "deny"
        b[-1]["payload"]["duration_ms"] += 5
        b.append(dict(b[-1]))
        diff = diff_traces(a, b)
        kinds = {(d.path, d.type, d.significance) for d in diff.differences}
        assert ("/2/payload/result", "value_changed", "major") in kinds
        assert (f"/{len(a) - 1}/payload/duration_ms", "value_changed", "minor") in kinds
        assert (f"/{len(a)}", "added", "major") in kinds
        assert diff.compatibility == "different"
        assert diff_traces(b, a).differences[-1].type == "removed"
        del b[2]["payload"]["action_id"]
        b[3]["payload"]["extra"] = 1
        types = {d.type for d in diff_traces(a, b).differences}
        assert {"removed", "added", "value_changed"} <= types
        assert diff.as_dict()["compatibility"] == "different"


class TestReconstruct:
    def test_state_from_events(self, recorded):
        """Resolutions, executions and the end of the session are rebuilt from events."""
        session, events = recorded
        state = reconstruct_session(events)
        assert (state.session_id, state.agent_id) == (session.session_id, "triage-bot")
        assert state.end_reason == "completed"
        first = state.resolutions[0]
        assert first.decision_type == "requires_approval"
        assert "github.pr.merge" in first.needs_approval
        assert first.denied["github.repo.delete"] == "deny-repo-delete"
        assert "github.issue.comment" in first.allowed
        assert first.context_blocks
        statuses = [e.status for e in state.executions]
        assert statuses.count("approved") == 5
        assert statuses.count("denied") == 4
        limited = [e for e in state.executions if e.reason == "rate_limit_exceeded"]
        assert len(limited) == 2
        assert state.approvals_pending == state.resolutions[-1].needs_approval

    def test_needs_a_session_start(self):
        """Events that do not begin a session are refused."""
        with pytest.raises(ValueError, match=r"session\.started"):
            reconstruct_session([])


class TestUnfinished:
    def test_open_request_and_undecided_call(self):
        """A request without completion replays its actions; a call without decision is skipped."""
        chain = SessionChain(new_id(), new_id())
        chain.append("session.started", {"agent_id": "triage-bot", "goal": "Triage"})
        chain.append(
            "carp.request.received",
            {"request_id": "q", "operation": "resolve", "goal": "Triage", "atlas_ids": []},
        )
        chain.append(
            "action.requested",
            {"action_id": "github.issue.list", "execution_id": "e", "parameters_hash": ""},
        )
        chain.append(
            "action.failed",
            {"action_id": "github.issue.list", "execution_id": "e", "error_message": "boom"},
        )
        events = chain.flush()
        report = replay_session(events, [GITHUB_OPS])
        assert report.skipped == [(2, "no recorded outcome")]
        assert report.decisions and {d.kind for d in report.decisions} == {"action"}
        state = reconstruct_session(events)
        assert state.resolutions == [] and state.ended_at is None
        (execution,) = state.executions
        assert (execution.execution_id, execution.status, execution.reason) == (
            "e",
            "failed",
            "boom",
        )
