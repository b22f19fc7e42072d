from __future__ import annotations

import copy
import json
import os
import pickle
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import cra_agents as cra
from cra_agents._clock import format_timestamp, parse_timestamp_ns
from cra_agents.examples import atlas_path
from cra_agents.protocol import AllowedAction, CARPResolution, TraceEvent
from cra_agents.runtime import _gate as gate_module

GITHUB_OPS = atlas_path("github-ops")
OPS_ID = "com.example.github-ops"
OPS_ACTIONS = [
    "github.issue.list",
    "github.issue.create",
    "github.issue.comment",
    "github.issue.label",
    "github.issue.close",
    "github.pr.list",
    "github.pr.open",
    "github.pr.review",
    "github.pr.merge",
    "github.branch.delete",
    "github.release.publish",
    "github.repo.settings",
    "github.repo.delete",
    "github.file.read",
    "github.workflow.rerun",
]
REPO = {"repo": "example-org/widgets"}
COMMENT = {"repo": "example-org/widgets", "issue_number": 7, "body": "Thanks!"}
MERGE = {"repo": "example-org/widgets", "pr_number": 3, "expected_head_sha": "a" * 40}
_PAYLOAD_DEFS = {
    "session.started": "SessionStartedPayload",
    "session.ended": "SessionEndedPayload",
    "carp.request.received": "CARPRequestPayload",
    "carp.resolution.completed": "CARPResolutionPayload",
    "action.requested": "ActionRequestedPayload",
    "action.denied": "ActionDeniedPayload",
    "policy.evaluated": "PolicyEvaluatedPayload",
    "context.injected": "ContextInjectedPayload",
}


# -- local fixtures and helpers ---------------------------------------------------------------


def _small_manifest(
    atlas_id: str = "com.example.test",
    actions: list[str] | None = None,
    policies: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "atlas_version": "1.0",
        "atlas_id": atlas_id,
        "version": "1.0.0",
        "name": "Test atlas",
        "description": "An atlas built by a test.",
        "actions": [
            {"action_id": a, "name": a, "description": f"The {a} action."} for a in actions or []
        ],
        "policies": policies or [],
    }


@pytest.fixture(scope="module")
def ops_atlas() -> cra.Atlas:
    """The github-ops example atlas, loaded once."""
    return cra.load_atlas(GITHUB_OPS)


@pytest.fixture
def rt(ops_atlas: cra.Atlas) -> cra.Runtime:
    """A fresh runtime over github-ops (fresh rate-limit state)."""
    return cra.Runtime(atlases=[ops_atlas])


@pytest.fixture(scope="module")
def upstream_schemas() -> dict[str, Any]:
    """The upstream CARP resolution and TRACE event schemas (skipped locally when absent)."""
    configured = os.environ.get("CRA_CONFORMANCE_DIR")
    base = Path(configured) if configured else Path("/work/shared/conformance")
    folder = base / "schemas"
    if not folder.is_dir():
        message = f"upstream schemas not found at {folder}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    schemas = {}
    for name in ("carp-resolution", "trace-event"):
        schema = json.loads((folder / f"{name}.schema.json").read_text(encoding="utf-8"))
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        schemas[name] = cls(schema, format_checker=cls.FORMAT_CHECKER)
        schemas[name + ":raw"] = schema
    return schemas


def _resolve(rt: cra.Runtime, session: cra.SessionInfo, **kwargs: Any) -> cra.CARPResolution:
    return rt.resolve(cra.resolve_request(session, **kwargs))


def _execute(
    rt: cra.Runtime,
    session: cra.SessionInfo,
    resolution: cra.CARPResolution,
    action_id: str,
    parameters: dict[str, Any],
    **kwargs: Any,
) -> cra.ExecuteResponse:
    return rt.execute(
        cra.execute_request(session, resolution.resolution_id, action_id, parameters, **kwargs)
    )


def _must(resolution: cra.CARPResolution, action_id: str) -> AllowedAction:
    """The allowed entry for ``action_id``; fails the test when it is not allowed."""
    entry = resolution.allowed(action_id)
    assert entry is not None, f"{action_id} is not allowed"
    return entry


def _types(events: list[TraceEvent]) -> list[str]:
    return [e.event_type for e in events]


def _denied(resolution: cra.CARPResolution) -> dict[str, tuple[str | None, str]]:
    return {d.action_id: (d.policy_id, d.reason) for d in resolution.denied_actions}


def _allowed_ids(resolution: cra.CARPResolution) -> list[str]:
    return [a.action_id for a in resolution.allowed_actions]


# -- sessions ---------------------------------------------------------------------------------


class TestSessions:
    def test_create_session_starts_chain(self, rt):
        """create_session appends session.started {agent_id, goal} at sequence 0."""
        session = rt.create_session("triage-bot", "Triage new issues")
        assert session.active
        assert session.agent_id == "triage-bot"
        events = rt.trace_events(session.session_id)
        assert _types(events) == ["session.started"]
        assert events[0].sequence == 0
        assert events[0].payload == {"agent_id": "triage-bot", "goal": "Triage new issues"}
        assert events[0].trace_id == session.trace_id
        assert events[0].parent_span_id is None

    def test_session_metadata_and_parent(self, rt):
        """Parent session and metadata are recorded in session.started."""
        parent = rt.create_session("boss", "Plan")
        child = rt.create_session(
            "worker", "Do", parent_session_id=parent.session_id, metadata={"k": "v"}
        )
        payload = rt.trace_events(child.session_id)[0].payload
        assert payload["parent_session_id"] == parent.session_id
        assert payload["metadata"] == {"k": "v"}
        assert child.parent_session_id == parent.session_id

    def test_end_session(self, rt):
        """end_session appends session.ended and marks the session inactive."""
        session = rt.create_session("bot", "Goal")
        _resolve(rt, session)
        info = rt.end_session(session.session_id)
        assert not info.active
        assert info.ended_at is not None
        ended = rt.trace_events(session.session_id)[-1]
        assert ended.event_type == "session.ended"
        assert ended.payload["reason"] == "completed"
        assert ended.payload["resolution_count"] == 1
        assert ended.payload["action_count"] == 0
        assert rt.verify(session.session_id).valid

    def test_end_twice(self, rt):
        """Ending a session twice raises SessionEndedError."""
        session = rt.create_session("bot", "Goal")
        rt.end_session(session.session_id)
        with pytest.raises(cra.SessionEndedError) as info:
            rt.end_session(session.session_id)
        assert info.value.code == "SESSION_ALREADY_ENDED"

    def test_resolve_after_end(self, rt):
        """Resolving on an ended session raises SessionEndedError."""
        session = rt.create_session("bot", "Goal")
        rt.end_session(session.session_id)
        with pytest.raises(cra.SessionEndedError):
            _resolve(rt, session)

    def test_execute_after_end(self, rt):
        """Executing on an ended session raises SessionEndedError."""
        session = rt.create_session("bot", "Goal")
        resolution = _resolve(rt, session)
        rt.end_session(session.session_id)
        with pytest.raises(cra.SessionEndedError):
            _execute(rt, session, resolution, "github.issue.list", REPO)

    def test_unknown_session(self, rt, ops_atlas):
        """A request for a session this runtime does not know raises SessionNotFoundError."""
        stranger = cra.Runtime(atlases=[ops_atlas]).create_session("bot", "Goal")
        with pytest.raises(cra.SessionNotFoundError) as info:
            _resolve(rt, stranger)
        assert info.value.code == "SESSION_NOT_FOUND"
        assert isinstance(info.value, LookupError)
        with pytest.raises(cra.SessionNotFoundError):
            rt.session(stranger.session_id)
        with pytest.raises(cra.SessionNotFoundError):
            rt.trace_events(stranger.session_id)

    @pytest.mark.parametrize(("agent", "goal"), [("", "Goal"), ("x" * 256, "Goal"), ("bot", "")])
    def test_create_session_validates(self, rt, agent, goal):
        """Empty or over-long agent ids and empty goals are refused."""
        with pytest.raises(cra.InvalidRequestError):
            rt.create_session(agent, goal)

    def test_duplicate_session_id(self, rt):
        """Reusing an explicit session id is refused."""
        sid = str(uuid.uuid4())
        rt.create_session("bot", "Goal", session_id=sid)
        with pytest.raises(cra.CRAError) as info:
            rt.create_session("bot", "Goal", session_id=sid)
        assert info.value.code == "SESSION_ALREADY_EXISTS"

    def test_sessions_listing(self, rt):
        """sessions() lists every session, oldest first, with counters."""
        first = rt.create_session("a", "Goal")
        second = rt.create_session("b", "Goal")
        _resolve(rt, second)
        listed = rt.sessions()
        assert [s.session_id for s in listed] == [first.session_id, second.session_id]
        assert listed[1].resolution_count == 1


# -- resolve on github-ops --------------------------------------------------------------------


class TestResolveGithubOps:
    def test_requires_approval_decision(self, rt):
        """merge/settings in scope → decision requires_approval with approval id and expiry."""
        session = rt.create_session("maintainer-bot", "Maintain the repository")
        before = time.time()
        resolution = _resolve(rt, session)
        decision = resolution.decision
        assert decision.type == "requires_approval"
        assert decision.approval_id is not None
        uuid.UUID(decision.approval_id)
        assert decision.expires_at is not None
        expires = parse_timestamp_ns(decision.expires_at) / 1e9
        assert before + 900 - 5 <= expires <= time.time() + 900 + 5
        assert decision.reason is not None
        assert "github.pr.merge" in decision.reason
        assert "github.repo.settings" in decision.reason
        assert resolution.ttl_seconds == 3600
        assert resolution.trace_id == session.trace_id

    def test_merge_allowed_with_confirmation(self, rt):
        """An approval-required action stays allowed with requires_confirmation True."""
        session = rt.create_session("maintainer-bot", "Maintain")
        resolution = _resolve(rt, session)
        merge = resolution.allowed("github.pr.merge")
        assert merge is not None
        assert merge.requires_confirmation is True
        assert _must(resolution, "github.issue.list").requires_confirmation is False
        kinds = {c.constraint_id: c.type for c in resolution.constraints}
        assert kinds["approve-merge"] == "require_approval"
        assert kinds["approve-repo-settings"] == "require_approval"

    def test_repo_delete_denied(self, rt):
        """github.repo.delete is denied by deny-repo-delete with the policy's reason."""
        session = rt.create_session("maintainer-bot", "Maintain")
        resolution = _resolve(rt, session)
        assert _denied(resolution)["github.repo.delete"] == (
            "deny-repo-delete",
            "Deleting repositories is never automated",
        )
        assert resolution.allowed("github.repo.delete") is None

    def test_actions_keep_atlas_order(self, rt):
        """Allowed and denied actions keep the atlas's action order and cover every action."""
        session = rt.create_session("maintainer-bot", "Maintain")
        resolution = _resolve(rt, session)
        allowed = _allowed_ids(resolution)
        denied = [d.action_id for d in resolution.denied_actions]
        assert allowed == [a for a in OPS_ACTIONS if a in allowed]
        assert denied == [a for a in OPS_ACTIONS if a in denied]
        assert sorted(allowed + denied) == sorted(OPS_ACTIONS)

    def test_rate_limited_actions_advertised(self, rt):
        """Rate-limited allowed actions carry rate_limit and a rate_limit constraint."""
        session = rt.create_session("maintainer-bot", "Maintain")
        resolution = _resolve(rt, session)
        comment = _must(resolution, "github.issue.comment")
        assert comment.rate_limit is not None
        assert (comment.rate_limit.max_calls, comment.rate_limit.window_seconds) == (5, 60)
        constraint = next(
            c for c in resolution.constraints if c.constraint_id == "rate-limit-comments"
        )
        assert constraint.type == "rate_limit"
        assert constraint.parameters == {
            "max_calls": 5,
            "window_seconds": 60,
            "action_ids": ["github.issue.comment"],
        }

    def test_triage_bot_branch_delete_denied(self, rt):
        """Agent triage-bot gets github.branch.delete denied by deny-triage-branch-delete."""
        session = rt.create_session("triage-bot", "Triage new issues")
        denied = _denied(_resolve(rt, session))
        assert denied["github.branch.delete"] == (
            "deny-triage-branch-delete",
            "Triage bots may not delete branches",
        )

    def test_release_bot_branch_delete_allowed(self, rt):
        """Agent release-bot may delete branches."""
        session = rt.create_session("release-bot", "Clean up merged branches")
        resolution = _resolve(rt, session)
        assert "github.branch.delete" not in _denied(resolution)
        assert resolution.allowed("github.branch.delete") is not None

    def test_required_capabilities_filter(self, rt):
        """required_capabilities restricts the considered actions to those capabilities."""
        session = rt.create_session("triage-bot", "Triage new issues")
        only_read = _resolve(rt, session, required_capabilities=["issues.read"])
        assert _allowed_ids(only_read) == ["github.issue.list"]
        assert only_read.denied_actions == []
        assert only_read.decision.type == "allow"
        assert only_read.decision.reason is None
        assert only_read.decision.approval_id is None
        assert only_read.decision.expires_at is None
        two = _resolve(rt, session, required_capabilities=["issues.read", "contents.read"])
        assert _allowed_ids(two) == ["github.issue.list", "github.file.read"]
        admin = _resolve(rt, session, required_capabilities=["repo.admin"])
        assert _allowed_ids(admin) == ["github.repo.settings"]
        assert list(_denied(admin)) == ["github.repo.delete"]
        assert admin.decision.type == "requires_approval"
        events = rt.trace_events(session.session_id, event_type="policy.evaluated")
        assert [e.payload["action_id"] for e in events[-2:]] == [
            "github.repo.settings",
            "github.repo.delete",
        ]

    def test_unknown_capability_considers_nothing(self, rt):
        """An unknown capability leaves nothing to decide: allow with empty lists."""
        session = rt.create_session("bot", "Goal")
        resolution = _resolve(rt, session, required_capabilities=["no.such"])
        assert resolution.allowed_actions == []
        assert resolution.denied_actions == []
        assert resolution.decision.type == "allow"

    def test_risk_based_approval(self, rt):
        """approve-high-risk-release applies at high risk only."""
        session = rt.create_session("release-bot", "Ship it")
        low = _resolve(rt, session, required_capabilities=["releases.write"])
        assert low.decision.type == "allow"
        assert _must(low, "github.release.publish").requires_confirmation is False
        high = _resolve(rt, session, required_capabilities=["releases.write"], risk_tier="high")
        assert high.decision.type == "requires_approval"
        assert _must(high, "github.release.publish").requires_confirmation is True

    def test_atlas_ids_filter(self, ops_atlas):
        """atlas_ids restricts resolution to the named atlases."""
        other = cra.load_atlas(_small_manifest(actions=["test.ping"]))
        rt = cra.Runtime(atlases=[ops_atlas, other])
        session = rt.create_session("bot", "Ping")
        only = _resolve(rt, session, atlas_ids=["com.example.test"])
        assert _allowed_ids(only) == ["test.ping"]
        assert only.context_blocks == []
        everything = _resolve(rt, session)
        assert _allowed_ids(everything)[-1] == "test.ping"
        assert len(everything.allowed_actions) + len(everything.denied_actions) == 16
        received = rt.trace_events(session.session_id, event_type="carp.request.received")
        assert received[0].payload["atlas_ids"] == ["com.example.test"]
        assert received[1].payload["atlas_ids"] == [OPS_ID, "com.example.test"]

    def test_unknown_atlas_id(self, rt):
        """An unknown atlas id raises AtlasNotFoundError and records nothing."""
        session = rt.create_session("bot", "Goal")
        with pytest.raises(cra.AtlasNotFoundError) as info:
            _resolve(rt, session, atlas_ids=["com.example.nope"])
        assert info.value.details == {"atlas_id": "com.example.nope"}
        assert _types(rt.trace_events(session.session_id)) == ["session.started"]
        with pytest.raises(cra.AtlasNotFoundError):
            rt.atlas("com.example.nope")
        assert rt.atlas(OPS_ID).atlas_id == OPS_ID

    def test_partial_and_deny_decisions(self):
        """allowed+denied → partial; only denied → deny; nothing → allow."""
        rt = cra.Runtime(
            atlases=[
                _small_manifest(
                    actions=["data.get", "data.delete"],
                    policies=[{"policy_id": "no-delete", "type": "deny", "actions": ["*.delete"]}],
                )
            ]
        )
        session = rt.create_session("bot", "Data work")
        partial = _resolve(rt, session)
        assert partial.decision.type == "partial"
        assert partial.decision.reason == "Some actions are denied by policy"
        rt_deny = cra.Runtime(
            atlases=[
                _small_manifest(
                    actions=["data.delete"], policies=[{"policy_id": "no", "type": "deny"}]
                )
            ]
        )
        s2 = rt_deny.create_session("bot", "Data work")
        assert _resolve(rt_deny, s2).decision.type == "deny"
        rt_empty = cra.Runtime(atlases=[_small_manifest()])
        s3 = rt_empty.create_session("bot", "Nothing")
        empty = _resolve(rt_empty, s3)
        assert empty.decision.type == "allow"
        assert empty.allowed_actions == []

    def test_resolution_round_trips_validated_model(self, rt):
        """The fast-built resolution equals its validated re-parse."""
        session = rt.create_session("triage-bot", "Triage new issues about a release")
        resolution = _resolve(rt, session, risk_tier="high", context_hints=["security"])
        dumped = resolution.model_dump(mode="json")
        assert CARPResolution.model_validate(dumped).model_dump(mode="json") == dumped


class TestContext:
    def test_default_blocks_ordered_by_priority(self, rt):
        """Blocks come highest priority first, ties in declaration order."""
        session = rt.create_session("triage-bot", "Triage new issues")
        blocks = _resolve(rt, session).context_blocks
        assert [(b.block_id, b.priority) for b in blocks] == [
            ("org-conventions", 500),
            ("label-taxonomy", 300),
            ("issue-triage", 300),
        ]
        assert all(b.source == OPS_ID for b in blocks)
        assert blocks[2].metadata is not None
        assert blocks[2].metadata["source_pack"] == "issue-triage"
        assert blocks[0].name == "Example Org Conventions"
        assert blocks[0].token_estimate == len(blocks[0].content.encode()) // 4

    def test_on_demand_block_needs_hint(self, rt):
        """security-disclosure (on_demand) appears only with a context hint, pulling its
        also_inject block."""
        session = rt.create_session("triage-bot", "Triage new issues")
        plain = [b.block_id for b in _resolve(rt, session).context_blocks]
        assert "security-disclosure" not in plain
        assert "incident-safety" not in plain
        hinted = _resolve(rt, session, context_hints=["security"]).context_blocks
        ids = [b.block_id for b in hinted]
        assert "security-disclosure" in ids
        assert "incident-safety" in ids
        by_id = _resolve(rt, session, context_hints=["security-disclosure"]).context_blocks
        assert "security-disclosure" in [b.block_id for b in by_id]
        priorities = [b.priority for b in hinted]
        assert priorities == sorted(priorities, reverse=True)

    @pytest.mark.parametrize(
        ("risk", "present"), [("low", False), ("medium", False), ("high", True), ("critical", True)]
    )
    def test_risk_based_only_at_high_risk(self, rt, risk, present):
        """incident-safety (risk_based) and the repo-safety pack need high/critical risk."""
        session = rt.create_session("triage-bot", "Triage new issues")
        ids = [b.block_id for b in _resolve(rt, session, risk_tier=risk).context_blocks]
        assert ("incident-safety" in ids) is present
        assert ("repo-safety" in ids) is present
        if present:
            assert ids[:2] == ["incident-safety", "repo-safety"]

    def test_keyword_block(self, rt):
        """An on_match block is injected when its keyword is in the goal."""
        session = rt.create_session("release-bot", "Write the CHANGELOG for v2")
        ids = [b.block_id for b in _resolve(rt, session).context_blocks]
        assert "release-notes" in ids
        other = rt.create_session("release-bot", "Rerun CI")
        assert "release-notes" not in [b.block_id for b in _resolve(rt, other).context_blocks]

    def test_pack_condition_on_capability(self, rt):
        """The pull-request-guide pack needs the pulls.write capability."""
        session = rt.create_session("maintainer-bot", "Work on PRs")
        assert "pull-request-guide" not in [
            b.block_id for b in _resolve(rt, session).context_blocks
        ]
        ids = [
            b.block_id
            for b in _resolve(rt, session, required_capabilities=["pulls.write"]).context_blocks
        ]
        assert "pull-request-guide" in ids

    def test_budget_and_exclusions_narrow_what_is_recorded(self, rt):
        """Blocks left out by the budget or held already are neither returned nor recorded."""
        session = rt.create_session("triage-bot", "Triage new issues")
        full = _resolve(rt, session, risk_tier="high").context_blocks
        ids = [b.block_id for b in full]
        tokens = {b.block_id: b.token_estimate or 0 for b in full}
        assert ids == [
            "incident-safety",
            "repo-safety",
            "org-conventions",
            "label-taxonomy",
            "issue-triage",
        ]
        assert tokens["repo-safety"] > tokens["org-conventions"] + tokens["label-taxonomy"]
        # repo-safety does not fit after incident-safety; the smaller blocks after it do.
        small = ["incident-safety", "org-conventions", "label-taxonomy"]
        budget = sum(tokens[i] for i in small)

        def again(**kwargs: Any) -> list[str]:
            request = cra.resolve_request(session, risk_tier="high")
            return [b.block_id for b in rt.resolve(request, **kwargs).context_blocks]

        assert again(context_budget_tokens=budget) == small
        assert again(exclude_context=[(OPS_ID, "repo-safety"), ("other.atlas", "org-conventions")])
        assert again(exclude_context=[(OPS_ID, "repo-safety"), (OPS_ID, "issue-triage")]) == small
        assert again(context_budget_tokens=0) == []
        per_resolution: list[list[str]] = []
        for event in rt.trace_events(session.session_id):
            if event.event_type == "carp.request.received":
                per_resolution.append([])
            elif event.event_type == "context.injected":
                per_resolution[-1].append(event.payload["block_id"])
            elif event.event_type == "carp.resolution.completed":
                assert event.payload["context_block_count"] == len(per_resolution[-1])
        assert per_resolution == [ids, small, [i for i in ids if i != "repo-safety"], small, []]
        # The memoised selection is not narrowed for later requests.
        assert again() == ids
        with pytest.raises(cra.InvalidRequestError, match="context_budget_tokens"):
            again(context_budget_tokens=-1)


# -- events and schemas -----------------------------------------------------------------------


class TestEvents:
    def test_event_sequence(self, rt):
        """session.started, request.received, N policy.evaluated, M context.injected, completed."""
        session = rt.create_session("triage-bot", "Triage new issues")
        resolution = _resolve(rt, session, risk_tier="high")
        events = rt.trace_events(session.session_id)
        n, m = len(OPS_ACTIONS), len(resolution.context_blocks)
        assert _types(events) == [
            "session.started",
            "carp.request.received",
            *["policy.evaluated"] * n,
            *["context.injected"] * m,
            "carp.resolution.completed",
        ]
        assert [e.sequence for e in events] == list(range(len(events)))
        evaluated = events[2 : 2 + n]
        assert [e.payload["action_id"] for e in evaluated] == OPS_ACTIONS
        injected = events[2 + n : 2 + n + m]
        assert [e.payload["block_id"] for e in injected] == [
            b.block_id for b in resolution.context_blocks
        ]

    def test_payload_shapes(self, rt):
        """Payloads follow PROTOCOL_NOTES §4."""
        session = rt.create_session("triage-bot", "Triage new issues")
        request = cra.resolve_request(session)
        resolution = rt.resolve(request)
        events = rt.trace_events(session.session_id)
        received = events[1].payload
        assert received == {
            "request_id": request.request_id,
            "operation": "resolve",
            "goal": "Triage new issues",
            "atlas_ids": [OPS_ID],
        }
        completed = events[-1].payload
        assert completed == {
            "resolution_id": resolution.resolution_id,
            "request_id": request.request_id,
            "decision_type": "requires_approval",
            "allowed_count": len(resolution.allowed_actions),
            "denied_count": len(resolution.denied_actions),
            "context_block_count": len(resolution.context_blocks),
            "ttl_seconds": 3600,
        }
        by_action = {
            e.payload["action_id"]: e.payload for e in events if e.event_type == "policy.evaluated"
        }
        assert by_action["github.repo.delete"] == {
            "policy_id": "deny-repo-delete",
            "result": "deny",
            "action_id": "github.repo.delete",
        }
        assert by_action["github.pr.merge"]["result"] == "requires_approval"
        assert by_action["github.issue.list"]["policy_id"] == "allow-read"
        assert by_action["github.workflow.rerun"]["policy_id"] == "default-allow"
        injected = next(e.payload for e in events if e.event_type == "context.injected")
        assert set(injected) == {
            "block_id",
            "context_id",
            "source",
            "source_atlas",
            "content_type",
            "priority",
            "token_count",
        }
        assert injected["block_id"] == injected["context_id"] == "org-conventions"
        assert injected["source"] == injected["source_atlas"] == OPS_ID

    def test_resolution_validates_upstream_schema(self, rt, upstream_schemas):
        """resolution.model_dump(mode='json') validates against carp-resolution.schema.json."""
        validator = upstream_schemas["carp-resolution"]
        cases: list[tuple[str, dict[str, Any]]] = [
            ("triage-bot", {}),
            ("maintainer-bot", {"risk_tier": "high", "context_hints": ["security"]}),
            ("release-bot", {"required_capabilities": ["issues.read"]}),
        ]
        for agent, kwargs in cases:
            session = rt.create_session(agent, "Triage a release bug")
            dumped = _resolve(rt, session, **kwargs).model_dump(mode="json")
            errors = [e.message for e in validator.iter_errors(dumped)]
            assert errors == []

    def test_events_validate_upstream_schema(self, rt, upstream_schemas):
        """Every event (resolve, execute, deny, end) validates against trace-event.schema.json."""
        validator = upstream_schemas["trace-event"]
        raw = upstream_schemas["trace-event:raw"]
        session = rt.create_session("maintainer-bot", "Triage and merge")
        resolution = _resolve(rt, session, risk_tier="high", context_hints=["security"])
        _execute(rt, session, resolution, "github.issue.list", REPO)
        with pytest.raises(cra.ActionDeniedError):
            _execute(rt, session, resolution, "github.repo.delete", {})
        rt.end_session(session.session_id)
        events = rt.trace_events(session.session_id)
        assert {"action.requested", "action.approved", "action.denied", "session.ended"} <= set(
            _types(events)
        )
        for event in events:
            dumped = event.model_dump(mode="json")
            assert [e.message for e in validator.iter_errors(dumped)] == [], event.event_type
            name = _PAYLOAD_DEFS.get(event.event_type)
            payload = dict(event.payload)
            if payload.get("result") == "requires_approval":
                # Deliberate deviation (PROTOCOL_NOTES §7.17): the unreferenced $defs enum
                # lacks it; check the rest of the payload shape.
                payload["result"] = "deny"
            if name is not None:
                sub = {"$defs": raw["$defs"], **raw["$defs"][name]}
                jsonschema.validate(payload, sub, cls=type(validator))

    def test_chain_verifies(self, rt):
        """The session's chain verifies after resolves and executions."""
        session = rt.create_session("maintainer-bot", "Triage")
        for _ in range(3):
            resolution = _resolve(rt, session)
        _execute(rt, session, resolution, "github.issue.list", REPO)
        result = rt.verify(session.session_id)
        assert result.valid
        assert result.hash_rule == "both"
        assert result.event_count == len(rt.trace_events(session.session_id))
        assert cra.verify_chain(
            [e.model_dump(mode="json") for e in rt.trace_events(session.session_id)]
        ).valid

    def test_trace_events_filters(self, rt):
        """trace_events filters by type, since_sequence and limit."""
        session = rt.create_session("bot", "Goal")
        _resolve(rt, session)
        evaluated = rt.trace_events(session.session_id, event_type="policy.evaluated")
        assert len(evaluated) == len(OPS_ACTIONS)
        tail = rt.trace_events(session.session_id, since_sequence=1, limit=2)
        assert [e.sequence for e in tail] == [2, 3]


# -- request errors ---------------------------------------------------------------------------


class TestRequestErrors:
    def test_duplicate_request_id(self, rt):
        """Reusing a request_id in a session raises InvalidRequestError."""
        session = rt.create_session("bot", "Goal")
        request = cra.resolve_request(session)
        rt.resolve(request)
        with pytest.raises(cra.InvalidRequestError) as info:
            rt.resolve(request)
        assert info.value.details["reason"] == "duplicate_request_id"
        assert info.value.code == "INVALID_CARP_REQUEST"

    @pytest.mark.parametrize("offset_s", [-600, 600])
    def test_clock_skew(self, rt, offset_s):
        """A timestamp 10 minutes off raises InvalidRequestError (clock_skew)."""
        session = rt.create_session("bot", "Goal")
        request = cra.resolve_request(session).model_copy(
            update={"timestamp": format_timestamp(time.time_ns() + offset_s * 1_000_000_000)}
        )
        with pytest.raises(cra.InvalidRequestError) as info:
            rt.resolve(request)
        assert info.value.details["reason"] == "clock_skew"

    def test_timestamp_with_offset_within_skew(self, rt):
        """A current timestamp written with another offset is accepted."""
        session = rt.create_session("bot", "Goal")
        now = time.time()
        local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now + 7200)) + "+02:00"
        request = cra.resolve_request(session).model_dump(mode="json")
        request["timestamp"] = local
        assert rt.resolve(request).decision.type == "requires_approval"

    def test_wrong_agent(self, rt):
        """A requester that does not own the session is refused."""
        session = rt.create_session("triage-bot", "Goal")
        request = cra.resolve_request(session).model_dump(mode="json")
        request["requester"]["agent_id"] = "release-bot"
        with pytest.raises(cra.InvalidRequestError) as info:
            rt.resolve(request)
        assert info.value.details["reason"] == "agent_mismatch"

    @pytest.mark.parametrize(
        ("mutate", "path"),
        [
            (lambda r: r.pop("task"), "/task"),
            (lambda r: r["task"].update(risk_tier="extreme"), "/task/risk_tier"),
            (lambda r: r.update(carp_version="2.0"), "/carp_version"),
            (lambda r: r.update(request_id="not-a-uuid"), "/request_id"),
            (lambda r: r.update(surprise=1), "/surprise"),
        ],
    )
    def test_malformed_dict(self, rt, mutate, path):
        """A malformed dict request raises InvalidRequestError with a JSON pointer path."""
        session = rt.create_session("bot", "Goal")
        request = cra.resolve_request(session).model_dump(mode="json")
        mutate(request)
        with pytest.raises(cra.InvalidRequestError) as info:
            rt.resolve(request)
        assert info.value.details["path"] == path
        assert info.value.details["reason"] == "schema"

    def test_wrong_operation(self, rt):
        """resolve() refuses execute requests and execute() refuses resolve requests."""
        session = rt.create_session("bot", "Goal")
        resolution = _resolve(rt, session)
        with pytest.raises(cra.InvalidRequestError):
            rt.resolve(
                cra.execute_request(session, resolution.resolution_id, "github.issue.list", REPO)
            )
        with pytest.raises(cra.InvalidRequestError):
            rt.execute(cra.resolve_request(session))

    def test_execute_dict_request(self, rt):
        """execute() accepts a plain dict request."""
        session = rt.create_session("bot", "Goal")
        resolution = _resolve(rt, session)
        request = cra.execute_request(
            session, resolution.resolution_id, "github.issue.list", REPO
        ).model_dump(mode="json")
        assert rt.execute(request).status == "success"


# -- execute ----------------------------------------------------------------------------------


class TestExecute:
    def test_allowed_action(self, rt):
        """An allowed action succeeds with action.requested then action.approved."""
        session = rt.create_session("maintainer-bot", "Triage")
        resolution = _resolve(rt, session)
        request = cra.execute_request(session, resolution.resolution_id, "github.issue.list", REPO)
        response = rt.execute(request)
        assert response.status == "success"
        assert response.request_id == request.request_id
        assert response.resolution_id == resolution.resolution_id
        assert response.trace_id == session.trace_id
        events = rt.trace_events(session.session_id)
        assert _types(events[-3:]) == ["action.requested", "policy.evaluated", "action.approved"]
        requested, approved = events[-3].payload, events[-1].payload
        assert requested["action_id"] == "github.issue.list"
        assert requested["resolution_id"] == resolution.resolution_id
        assert requested["execution_id"] == response.execution_id
        assert len(requested["parameters_hash"]) == 64
        assert approved == {
            "action_id": "github.issue.list",
            "resolution_id": resolution.resolution_id,
            "execution_id": response.execution_id,
            "policy_id": "allow-read",
        }
        assert rt.session(session.session_id).action_count == 1

    def test_invalid_parameters(self, rt):
        """Parameters violating parameters_schema raise InvalidParametersError."""
        session = rt.create_session("maintainer-bot", "Triage")
        resolution = _resolve(rt, session)
        with pytest.raises(cra.InvalidParametersError) as info:
            _execute(rt, session, resolution, "github.issue.list", {"repo": "not a repo"})
        assert info.value.details == {"action_id": "github.issue.list", "path": "/repo"}
        assert info.value.code == "INVALID_PARAMETERS"
        events = rt.trace_events(session.session_id)
        assert _types(events[-2:]) == ["action.requested", "action.denied"]
        assert events[-1].payload["reason"] == "invalid_parameters"
        assert events[-1].payload["policy_id"] == "carp-runtime"
        with pytest.raises(cra.InvalidParametersError):
            _execute(rt, session, resolution, "github.issue.list", {})
        with pytest.raises(cra.InvalidParametersError):
            _execute(rt, session, resolution, "github.issue.list", {**REPO, "extra": 1})
        assert rt.session(session.session_id).action_count == 0

    def test_denied_action(self, rt):
        """A denied action raises ActionDeniedError naming the deny policy."""
        session = rt.create_session("maintainer-bot", "Triage")
        resolution = _resolve(rt, session)
        params = {"repo": "example-org/widgets", "confirm_name": "example-org/widgets"}
        with pytest.raises(cra.ActionDeniedError) as info:
            _execute(rt, session, resolution, "github.repo.delete", params)
        error = info.value
        assert (error.action_id, error.policy_id) == ("github.repo.delete", "deny-repo-delete")
        assert error.reason == "Deleting repositories is never automated"
        assert error.code == "ACTION_DENIED"
        assert isinstance(error, PermissionError)
        denied = rt.trace_events(session.session_id)[-1]
        assert denied.event_type == "action.denied"
        assert denied.payload["policy_id"] == "deny-repo-delete"

    def test_action_outside_resolution(self, rt):
        """An action filtered out of the resolution is refused by the runtime."""
        session = rt.create_session("maintainer-bot", "Read")
        resolution = _resolve(rt, session, required_capabilities=["issues.read"])
        with pytest.raises(cra.ActionDeniedError) as info:
            _execute(rt, session, resolution, "github.file.read", {**REPO, "path": "README.md"})
        assert info.value.policy_id == "carp-runtime"

    def test_unknown_resolution(self, rt):
        """An unknown resolution id raises ResolutionNotFoundError."""
        session = rt.create_session("bot", "Goal")
        with pytest.raises(cra.ResolutionNotFoundError):
            rt.execute(cra.execute_request(session, str(uuid.uuid4()), "github.issue.list", REPO))
        last = rt.trace_events(session.session_id)[-1]
        assert (last.event_type, last.payload["reason"]) == (
            "action.denied",
            "resolution_not_found",
        )

    def test_resolution_of_other_session(self, rt):
        """A resolution from another session cannot be used."""
        one = rt.create_session("bot", "Goal")
        two = rt.create_session("bot", "Goal")
        resolution = _resolve(rt, one)
        with pytest.raises(cra.ResolutionNotFoundError):
            _execute(rt, two, resolution, "github.issue.list", REPO)

    def test_expired_resolution(self, rt, monkeypatch):
        """After ttl_seconds the resolution is expired."""
        session = rt.create_session("bot", "Goal")
        resolution = _resolve(rt, session)
        real = time.monotonic
        monkeypatch.setattr(time, "monotonic", lambda: real() + 3601)
        with pytest.raises(cra.ResolutionExpiredError) as info:
            _execute(rt, session, resolution, "github.issue.list", REPO)
        assert info.value.recoverable
        assert rt.trace_events(session.session_id)[-1].payload["reason"] == "resolution_expired"

    def test_zero_ttl(self, ops_atlas):
        """Runtime(ttl_seconds=0) resolutions expire immediately."""
        rt = cra.Runtime(atlases=[ops_atlas], ttl_seconds=0)
        session = rt.create_session("bot", "Goal")
        resolution = _resolve(rt, session)
        assert resolution.ttl_seconds == 0
        time.sleep(0.005)
        with pytest.raises(cra.ResolutionExpiredError):
            _execute(rt, session, resolution, "github.issue.list", REPO)

    def test_approval_required(self, rt):
        """An approval-required action raises ApprovalRequiredError."""
        session = rt.create_session("maintainer-bot", "Merge")
        resolution = _resolve(rt, session)
        with pytest.raises(cra.ApprovalRequiredError) as info:
            _execute(rt, session, resolution, "github.pr.merge", MERGE)
        assert info.value.code == "ACTION_REQUIRES_APPROVAL"
        assert info.value.details["approval_id"] == resolution.decision.approval_id
        assert info.value.details["policy_id"] == "approve-merge"
        last = rt.trace_events(session.session_id)[-1].payload
        assert (last["reason"], last["policy_id"]) == ("approval_required", "approve-merge")

    def test_rate_limit(self, rt):
        """issue.comment 5/60 s: the 6th execute is refused and later resolves show it."""
        session = rt.create_session("maintainer-bot", "Comment")
        resolution = _resolve(rt, session)
        for _ in range(5):
            assert _execute(rt, session, resolution, "github.issue.comment", COMMENT).status == (
                "success"
            )
        with pytest.raises(cra.RateLimitExceededError) as info:
            _execute(rt, session, resolution, "github.issue.comment", COMMENT)
        error = info.value
        assert error.code == "RATE_LIMIT_EXCEEDED"
        assert error.status == 429
        assert error.policy_id == "rate-limit-comments"
        assert error.retry_after > 0
        assert isinstance(error, cra.ActionDeniedError)
        last = rt.trace_events(session.session_id)[-1].payload
        assert last["reason"] == "rate_limit_exceeded"
        later = _resolve(rt, session)
        assert _denied(later)["github.issue.comment"] == (
            "rate-limit-comments",
            "rate_limit_exceeded",
        )
        assert later.allowed("github.issue.comment") is None
        other = rt.create_session("release-bot", "Comment too")
        assert "github.issue.comment" in _denied(_resolve(rt, other))

    def test_resolve_does_not_consume(self, rt):
        """Resolving many times takes no rate-limit slots."""
        session = rt.create_session("maintainer-bot", "Comment")
        for _ in range(10):
            resolution = _resolve(rt, session)
        for _ in range(5):
            _execute(rt, session, resolution, "github.issue.comment", COMMENT)

    def test_idempotency_same_params(self, rt):
        """The same key and parameters return the first response and record nothing new."""
        session = rt.create_session("maintainer-bot", "Comment")
        resolution = _resolve(rt, session)
        first = _execute(
            rt, session, resolution, "github.issue.comment", COMMENT, idempotency_key="k1"
        )
        count = len(rt.trace_events(session.session_id))
        again = _execute(
            rt, session, resolution, "github.issue.comment", COMMENT, idempotency_key="k1"
        )
        assert again.execution_id == first.execution_id
        assert again == first
        assert len(rt.trace_events(session.session_id)) == count
        assert rt.session(session.session_id).action_count == 1

    def test_idempotency_conflict(self, rt):
        """The same key with other parameters or another action is a conflict."""
        session = rt.create_session("maintainer-bot", "Comment")
        resolution = _resolve(rt, session)
        _execute(rt, session, resolution, "github.issue.comment", COMMENT, idempotency_key="k")
        with pytest.raises(cra.IdempotencyConflictError) as info:
            _execute(
                rt,
                session,
                resolution,
                "github.issue.comment",
                {**COMMENT, "body": "Other"},
                idempotency_key="k",
            )
        assert info.value.code == "IDEMPOTENCY_CONFLICT"
        with pytest.raises(cra.IdempotencyConflictError):
            _execute(rt, session, resolution, "github.issue.list", REPO, idempotency_key="k")

    @pytest.mark.parametrize(
        "bad", [float("nan"), float("inf"), "\ud800", 2**70], ids=["nan", "inf", "surrogate", "big"]
    )
    def test_uncanonical_parameters(self, rt, bad):
        """NaN and other non-canonical parameter values raise InvalidParametersError."""
        session = rt.create_session("maintainer-bot", "Comment")
        resolution = _resolve(rt, session)
        count = len(rt.trace_events(session.session_id))
        with pytest.raises(cra.InvalidParametersError):
            _execute(rt, session, resolution, "github.issue.list", {**REPO, "x": bad})
        assert len(rt.trace_events(session.session_id)) == count
        assert rt.verify(session.session_id).valid

    def test_execute_wrong_agent(self, rt):
        """An execute request from another agent is refused and recorded."""
        session = rt.create_session("maintainer-bot", "Work")
        resolution = _resolve(rt, session)
        request = cra.execute_request(
            session, resolution.resolution_id, "github.issue.list", REPO
        ).model_dump(mode="json")
        request["requester"]["agent_id"] = "evil-bot"
        with pytest.raises(cra.InvalidRequestError):
            rt.execute(request)
        assert rt.trace_events(session.session_id)[-1].payload["reason"] == "agent_mismatch"

    def test_idempotent_replay_checks_agent(self, rt):
        """A replay with a known idempotency key from another agent is still refused."""
        session = rt.create_session("maintainer-bot", "Work")
        resolution = _resolve(rt, session)
        _execute(rt, session, resolution, "github.issue.list", REPO, idempotency_key="z")
        request = cra.execute_request(
            session, resolution.resolution_id, "github.issue.list", REPO, idempotency_key="z"
        ).model_dump(mode="json")
        request["requester"]["agent_id"] = "evil-bot"
        with pytest.raises(cra.InvalidRequestError):
            rt.execute(request)

    def test_concurrent_idempotency(self, rt, monkeypatch):
        """Concurrent executes sharing an idempotency key run the action once."""
        session = rt.create_session("maintainer-bot", "Work")
        resolution = _resolve(rt, session)
        real = gate_module.first_error

        def slow(schema: Any, parameters: Any) -> Any:
            time.sleep(0.05)  # widen the window between the check and the store
            return real(schema, parameters)

        monkeypatch.setattr(gate_module, "first_error", slow)
        requests = [
            cra.execute_request(
                session, resolution.resolution_id, "github.issue.list", REPO, idempotency_key="c"
            )
            for _ in range(4)
        ]
        ids: list[str] = []
        barrier = threading.Barrier(4)

        def worker(request: cra.CARPRequest) -> None:
            barrier.wait()
            ids.append(rt.execute(request).execution_id)

        threads = [threading.Thread(target=worker, args=(r,)) for r in requests]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(ids) == 4
        assert len(set(ids)) == 1
        assert len(rt.trace_events(session.session_id, event_type="action.approved")) == 1


# -- atlases ----------------------------------------------------------------------------------


class TestAtlases:
    def test_same_atlas_twice(self, ops_atlas):
        """Loading one atlas twice raises AtlasConflictError."""
        with pytest.raises(cra.AtlasConflictError) as info:
            cra.Runtime(atlases=[ops_atlas, ops_atlas])
        assert info.value.code == "ATLAS_ALREADY_LOADED"
        with pytest.raises(cra.AtlasConflictError):
            cra.Runtime(atlases=[GITHUB_OPS, GITHUB_OPS])

    def test_action_declared_twice(self):
        """Two atlases declaring the same action raise AtlasConflictError."""
        first = _small_manifest("com.example.one", ["shared.action"])
        second = _small_manifest("com.example.two", ["shared.action"])
        with pytest.raises(cra.AtlasConflictError) as info:
            cra.Runtime(atlases=[first, second])
        assert info.value.details == {"action_id": "shared.action"}

    def test_guardrail_atlas(self, ops_atlas):
        """A policy-only atlas loaded next to github-ops can deny github.issue.close."""
        guard = _small_manifest(
            "com.example.guardrail",
            [],
            [
                {
                    "policy_id": "no-close",
                    "type": "deny",
                    "actions": ["github.issue.close"],
                    "reason": "Closing issues is for humans",
                }
            ],
        )
        rt = cra.Runtime(atlases=[ops_atlas, guard])
        session = rt.create_session("triage-bot", "Triage")
        resolution = _resolve(rt, session)
        assert _denied(resolution)["github.issue.close"] == (
            "no-close",
            "Closing issues is for humans",
        )
        scoped = _resolve(rt, session, atlas_ids=[OPS_ID])
        assert "github.issue.close" in _denied(scoped)
        with pytest.raises(cra.ActionDeniedError) as info:
            _execute(rt, session, resolution, "github.issue.close", {**REPO, "issue_number": 1})
        assert info.value.policy_id == "no-close"

    def test_default_deny_runtime(self, ops_atlas):
        """default_deny=True denies unmatched actions as default-deny, keeps the rest."""
        rt = cra.Runtime(atlases=[ops_atlas], default_deny=True)
        session = rt.create_session("maintainer-bot", "Work")
        resolution = _resolve(rt, session)
        denied = _denied(resolution)
        assert denied["github.workflow.rerun"][0] == "default-deny"
        assert denied["github.branch.delete"][0] == "default-deny"
        assert denied["github.repo.delete"][0] == "deny-repo-delete"
        assert resolution.allowed("github.issue.list") is not None
        assert _must(resolution, "github.pr.merge").requires_confirmation
        assert resolution.decision.type == "requires_approval"
        evaluated = {
            e.payload["action_id"]: e.payload["policy_id"]
            for e in rt.trace_events(session.session_id, event_type="policy.evaluated")
        }
        assert evaluated["github.workflow.rerun"] == "default-deny"

    def test_atlases_property(self, ops_atlas):
        """Runtime.atlases lists loaded atlases in order."""
        other = _small_manifest(actions=["test.ping"])
        rt = cra.Runtime(atlases=[ops_atlas, other])
        assert [a.atlas_id for a in rt.atlases] == [OPS_ID, "com.example.test"]


# -- concurrency and caching -----------------------------------------------------------------


class TestConcurrency:
    def test_many_threads_one_session(self, rt):
        """8 threads x 50 resolves in one session: chain verifies, sequences contiguous."""
        session = rt.create_session("triage-bot", "Triage new issues")
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def worker(index: int) -> None:
            barrier.wait()
            try:
                for i in range(50):
                    kwargs: dict[str, Any] = {}
                    if i % 3 == 1:
                        kwargs["risk_tier"] = "high"
                    if i % 5 == 2:
                        kwargs["required_capabilities"] = ["issues.read"]
                    _resolve(rt, session, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        events = rt.trace_events(session.session_id)
        assert [e.sequence for e in events] == list(range(len(events)))
        result = rt.verify(session.session_id)
        assert result.valid
        assert result.event_count == len(events)
        assert _types(events).count("carp.resolution.completed") == 400
        assert _types(events).count("carp.request.received") == 400
        assert rt.session(session.session_id).resolution_count == 400
        # Each resolve's events are contiguous: received ... completed with nothing between.
        types = _types(events)
        for index, kind in enumerate(types):
            if kind == "carp.request.received":
                assert types[index - 1] in ("session.started", "carp.resolution.completed")


class TestPlanCaching:
    def test_agents_do_not_leak(self, rt):
        """Two sessions with different agents get their own decisions, interleaved."""
        triage = rt.create_session("triage-bot", "Work")
        release = rt.create_session("release-bot", "Work")
        for _ in range(3):
            assert "github.branch.delete" in _denied(_resolve(rt, triage))
            assert "github.branch.delete" not in _denied(_resolve(rt, release))

    def test_risk_tier_not_cached_across(self, rt):
        """The same session resolving at two risk tiers gets two decisions."""
        session = rt.create_session("release-bot", "Ship")
        for _ in range(2):
            low = _resolve(rt, session, required_capabilities=["releases.write"])
            high = _resolve(rt, session, required_capabilities=["releases.write"], risk_tier="high")
            assert low.decision.type == "allow"
            assert high.decision.type == "requires_approval"

    def test_context_not_cached_across(self, ops_atlas):
        """Request context is part of the decision key."""
        guard = _small_manifest(
            "com.example.guardrail",
            [],
            [
                {
                    "policy_id": "prod-freeze",
                    "type": "deny",
                    "actions": ["github.issue.*"],
                    "conditions": {"context_matches": {"env": "prod"}},
                }
            ],
        )
        rt = cra.Runtime(atlases=[ops_atlas, guard])
        session = rt.create_session("bot", "Work")
        for _ in range(2):
            prod = _resolve(rt, session, context={"env": "prod"})
            dev = _resolve(rt, session, context={"env": "dev"})
            unevaluable = _resolve(rt, session, context={"env": 1})
            assert _denied(prod)["github.issue.close"][0] == "prod-freeze"
            assert "github.issue.close" not in _denied(dev)
            assert _denied(unevaluable)["github.issue.close"][0] == "prod-freeze"

    def test_rate_limit_exhaustion_and_reset_visible(self, rt):
        """An exhausted limit shows up in later resolves, and disappears after a reset."""
        session = rt.create_session("maintainer-bot", "Comment")
        resolution = _resolve(rt, session)
        assert resolution.allowed("github.issue.comment") is not None
        for _ in range(5):
            _execute(rt, session, resolution, "github.issue.comment", COMMENT)
        assert "github.issue.comment" in _denied(_resolve(rt, session))
        assert "github.issue.comment" in _denied(_resolve(rt, session))
        rt.engine.limiter.reset()
        assert resolution.allowed("github.issue.comment") is not None
        assert _resolve(rt, session).allowed("github.issue.comment") is not None

    def test_resolution_mutation_does_not_leak(self, rt):
        """Mutating one resolution's parameters_schema affects neither other sessions nor
        execute."""
        first = rt.create_session("maintainer-bot", "Work")
        resolution = _resolve(rt, first)
        schema = _must(resolution, "github.issue.list").parameters_schema
        assert schema is not None
        with pytest.raises(TypeError, match="read-only"):
            schema["properties"]["repo"]["pattern"] = ".*"
        copied = copy.deepcopy(schema)
        copied["properties"]["repo"]["pattern"] = ".*"
        second = rt.create_session("release-bot", "Work")
        other = _must(_resolve(rt, second), "github.issue.list").parameters_schema
        assert other is not None
        assert other["properties"]["repo"]["pattern"] != ".*"
        with pytest.raises(cra.InvalidParametersError):
            _execute(rt, first, resolution, "github.issue.list", {"repo": "not a repo"})


# -- error objects ----------------------------------------------------------------------------


class TestErrorObjects:
    def test_to_error_response_shape(self):
        """to_error_response gives {error: {code, message, category, recoverable, ...}}."""
        error = cra.ActionDeniedError("denied", action_id="a.b", policy_id="p", reason="because")
        body = error.to_error_response("req-1")
        assert body == {
            "error": {
                "code": "ACTION_DENIED",
                "message": "denied",
                "category": "authorization",
                "recoverable": False,
                "details": {"action_id": "a.b", "policy_id": "p", "reason": "because"},
                "request_id": "req-1",
            }
        }
        json.dumps(body)
        bare = cra.SessionNotFoundError("gone").to_error_response()
        assert bare == {
            "error": {
                "code": "SESSION_NOT_FOUND",
                "message": "gone",
                "category": "not_found",
                "recoverable": False,
            }
        }

    def test_rate_limit_error_response(self):
        """RateLimitExceededError carries retry_after in details."""
        error = cra.RateLimitExceededError("slow", action_id="a.b", policy_id="p", retry_after=3.5)
        inner = error.to_error_response()["error"]
        assert inner["code"] == "RATE_LIMIT_EXCEEDED"
        assert inner["category"] == "rate_limit"
        assert inner["recoverable"] is True
        assert inner["details"]["retry_after"] == 3.5
        assert inner["details"]["reason"] == "rate_limit_exceeded"

    def test_pickle_action_denied(self):
        """Pickling ActionDeniedError keeps action_id, policy_id, reason and details."""
        error = cra.ActionDeniedError("denied", action_id="a.b", policy_id="p", reason="r")
        clone = pickle.loads(pickle.dumps(error))
        assert type(clone) is cra.ActionDeniedError
        assert (clone.action_id, clone.policy_id, clone.reason) == ("a.b", "p", "r")
        assert clone.details == error.details
        assert clone.code == "ACTION_DENIED"
        assert str(clone) == "denied"

    def test_pickle_rate_limit(self):
        """Pickling RateLimitExceededError keeps retry_after."""
        error = cra.RateLimitExceededError("slow", action_id="a.b", policy_id="p", retry_after=2.0)
        clone = pickle.loads(pickle.dumps(error))
        assert type(clone) is cra.RateLimitExceededError
        assert (clone.action_id, clone.retry_after) == ("a.b", 2.0)

    def test_pickle_runtime_raised_error(self, rt):
        """An error raised by the runtime survives pickling."""
        session = rt.create_session("maintainer-bot", "Work")
        resolution = _resolve(rt, session)
        with pytest.raises(cra.ActionDeniedError) as info:
            _execute(rt, session, resolution, "github.repo.delete", {})
        clone = pickle.loads(pickle.dumps(info.value))
        assert clone.action_id == "github.repo.delete"
        assert clone.policy_id == "deny-repo-delete"
