"""@cra.guarded, cra.session, approvals, shadow mode and fail-closed behaviour."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.policy import PolicyEngine
from cra_agents.runtime import ToolMap
from cra_agents.runtime import _gate as gate_module
from cra_agents.runtime import _sessions as sessions_module
from cra_agents.trace import TraceCollector

GITHUB_OPS = atlas_path("github-ops")
MERGE: dict[str, Any] = {"repo": "acme/app", "pr_number": 7, "expected_head_sha": "a" * 40}


@pytest.fixture(autouse=True)
def configured() -> Iterator[cra.Runtime]:
    runtime = cra.configure(atlases=[GITHUB_OPS], store="memory://")
    yield runtime
    cra.shutdown()


def _types(session_id: str) -> list[str]:
    return [e.event_type for e in cra.get_runtime().trace_events(session_id)]


@cra.guarded("github.issue.comment")
def comment(repo: str, issue_number: int, body: str) -> dict[str, Any]:
    return {"repo": repo, "issue": issue_number, "body": body}


@cra.guarded
def merge_pull_request(repo: str, pr_number: int, expected_head_sha: str) -> str:
    return f"merged {repo}#{pr_number}"


class TestGuardedCalls:
    def test_allowed_call_runs_and_is_recorded(self):
        """An allowed call runs once and leaves requested → evaluated → approved → executed."""
        with cra.session(agent_id="triage-bot", goal="Triage") as active:
            assert comment("acme/app", 3, "Thanks!") == {
                "repo": "acme/app",
                "issue": 3,
                "body": "Thanks!",
            }
        types = _types(active.session_id)
        assert types[1:5] == [
            "action.requested",
            "policy.evaluated",
            "action.approved",
            "action.executed",
        ]
        assert types[-1] == "session.ended"
        assert cra.get_runtime().verify(active.session_id).valid

    def test_signature_and_wrapped_are_kept(self):
        """functools.wraps keeps the name, signature and __wrapped__."""
        import inspect

        assert comment.__name__ == "comment"
        assert list(inspect.signature(comment).parameters) == ["repo", "issue_number", "body"]
        assert comment.__wrapped__ is not None  # type: ignore[attr-defined]

    def test_denied_call_never_runs(self):
        """A policy denial raises ActionDenied with action, policy and reason."""
        ran = []

        @cra.guarded("github.repo.delete")
        def delete(repo: str, confirm_name: str) -> None:
            ran.append(repo)

        with (
            cra.session(agent_id="triage-bot", goal="Triage") as active,
            pytest.raises(cra.ActionDenied) as info,
        ):
            delete("acme/app", "acme/app")
        assert ran == []
        assert (info.value.action_id, info.value.policy_id) == (
            "github.repo.delete",
            "deny-repo-delete",
        )
        assert "action.denied" in _types(active.session_id)

    def test_tool_exception_is_recorded_and_reraised_unchanged(self):
        """A failing tool records action.failed and its own exception propagates."""

        @cra.guarded("github.issue.list")
        def list_issues(repo: str) -> list[str]:
            raise ConnectionError("GitHub is down")

        with (
            cra.session(agent_id="triage-bot", goal="Triage") as active,
            pytest.raises(ConnectionError, match="GitHub is down"),
        ):
            list_issues("acme/app")
        failed = cra.get_runtime().trace_events(active.session_id, event_type="action.failed")
        assert failed[0].payload["error_code"] == "ConnectionError"

    def test_arguments_are_frozen_at_decision_time(self):
        """The tool gets a deep copy: the caller's later changes never reach it."""
        seen: list[dict[str, Any]] = []

        @cra.guarded("github.repo.settings")
        def settings_(repo: str, settings: dict[str, Any]) -> None:
            seen.append(settings)

        runtime = cra.configure(
            atlases=[GITHUB_OPS], store="memory://", approvals=lambda request: True
        )
        payload = {"has_wiki": False}
        with cra.session(agent_id="admin-bot", goal="Settings"):
            settings_("acme/app", payload)
        payload["has_wiki"] = True
        assert seen == [{"has_wiki": False}]
        assert seen[0] is not payload
        assert runtime is cra.get_runtime()

    def test_async_and_methods(self):
        """Async functions and methods are guarded; the receiver is not tool input."""

        class Bot:
            @cra.guarded("github.issue.label")
            def label(self, repo: str, issue_number: int, add: list[str]) -> int:
                return len(add)

            @cra.guarded("github.issue.close")
            async def close(self, repo: str, issue_number: int) -> str:
                await asyncio.sleep(0)
                return "closed"

        async def run() -> tuple[int, str]:
            async with cra.session(agent_id="triage-bot", goal="Triage"):
                bot = Bot()
                return bot.label("acme/app", 1, ["bug"]), await bot.close("acme/app", 1)

        assert asyncio.run(run()) == (1, "closed")

    def test_arguments_bind_like_the_plain_function(self):
        """Positional, keyword and default values reach the tool as Python would bind them."""
        seen: list[dict[str, Any]] = []

        @cra.guarded("github.file.read")
        def read(repo: str, path: str = "README.md", *, ref: str = "main") -> None:
            seen.append({"repo": repo, "path": path, "ref": ref})

        @cra.guarded("github.file.read")
        def read_any(*args: Any, **kwargs: Any) -> None:
            seen.append(kwargs)

        @cra.guarded("github.file.read")
        def read_positional(repo: str, /, path: str, **kwargs: Any) -> None:
            seen.append({"repo": repo, "path": path, **kwargs})

        with cra.session(agent_id="triage-bot", goal="Read") as active:
            read("acme/app")
            read("acme/app", "docs/x.md")
            read(repo="acme/app", ref="dev")
            read("acme/app", path="y.md", ref="v1")
            read_any(repo="acme/app", path="z.md")
            read_positional("acme/app", "p.md", ref="v2")
            with pytest.raises(TypeError, match="clash"):
                read_positional("acme/app", "p.md", repo="x")
            with pytest.raises(cra.InvalidParametersError):
                read_any("acme/app", path="z.md")  # *args reach the schema as "args"
            unbound: Any = read  # calls a type checker would reject, as Python does
            for bad in ((), ("acme/app", "p", "extra"), ("acme/app",)):
                extra = {"nope": 1} if len(bad) == 1 else {}
                with pytest.raises(TypeError):
                    unbound(*bad, **extra)
            with pytest.raises(TypeError):
                unbound("acme/app", repo="acme/app")
        assert seen == [
            {"repo": "acme/app", "path": "README.md", "ref": "main"},
            {"repo": "acme/app", "path": "docs/x.md", "ref": "main"},
            {"repo": "acme/app", "path": "README.md", "ref": "dev"},
            {"repo": "acme/app", "path": "y.md", "ref": "v1"},
            {"repo": "acme/app", "path": "z.md"},
            {"repo": "acme/app", "path": "p.md", "ref": "v2"},
        ]
        assert _types(active.session_id).count("action.executed") == 6

    def test_mapping_by_executor_name_and_errors(self):
        """Bare @guarded maps by executor name; an unknown tool is refused with a hint."""

        @cra.guarded
        def no_such_tool() -> None:
            raise AssertionError("must not run")

        with cra.session(agent_id="maintainer", goal="Merge"):
            with pytest.raises(cra.ActionDenied):  # approval needed, auto_deny by default
                merge_pull_request(**MERGE)
            with pytest.raises(cra.ActionNotFoundError, match="executor or name"):
                no_such_tool()

    def test_invalid_arguments_are_refused(self):
        """Arguments failing parameters_schema never reach the tool."""
        with (
            cra.session(agent_id="triage-bot", goal="Triage"),
            pytest.raises(cra.InvalidParametersError),
        ):
            comment("not a repo", 1, "x")


class TestSessions:
    def test_nested_sessions_record_their_parent(self):
        """An inner session names the outer one as parent; an error ends it with 'error'."""
        with (
            cra.session(agent_id="lead", goal="Plan") as outer,
            pytest.raises(RuntimeError),
            cra.session(agent_id="worker", goal="Do") as inner,
        ):
            raise RuntimeError("boom")
        runtime = cra.get_runtime()
        started = runtime.trace_events(inner.session_id)[0].payload
        assert started["parent_session_id"] == outer.session_id
        ended = runtime.trace_events(inner.session_id)[-1].payload
        assert (ended["reason"], ended["error"]) == ("error", "RuntimeError: boom")
        assert cra.current_session() is None

    def test_implicit_session_and_strict_mode(self):
        """Outside a session calls share one implicit session, unless configured off."""
        comment("acme/app", 1, "a")
        comment("acme/app", 2, "b")
        runtime = cra.get_runtime()
        implicit = [s for s in runtime.sessions() if s.agent_id == "cra-implicit"]
        assert len(implicit) == 1
        cra.configure(atlases=[GITHUB_OPS], store="memory://", implicit_sessions=False)
        with pytest.raises(cra.InvalidRequestError, match=r"outside any cra\.session"):
            comment("acme/app", 1, "a")

    def test_not_configured(self):
        """Using the guard before configure() says what to do."""
        cra.shutdown()
        with pytest.raises(cra.ConfigurationError, match=r"cra\.configure"):
            comment("acme/app", 1, "a")


class TestApprovals:
    @pytest.mark.parametrize(
        ("answer", "runs", "reason"),
        [
            (True, True, None),
            (False, False, "approval_denied"),
            (cra.ApprovalDecision(True, approver="alice", reason="looks right"), True, None),
            (cra.ApprovalDecision(False, approver="bob"), False, "approval_denied"),
        ],
    )
    def test_handler_answers(self, answer, runs, reason):
        """The handler's answer decides; approvals record who approved."""
        requests: list[cra.ApprovalRequest] = []

        def handler(request: cra.ApprovalRequest) -> Any:
            requests.append(request)
            return answer

        cra.configure(atlases=[GITHUB_OPS], store="memory://", approvals=handler)
        with cra.session(agent_id="maintainer", goal="Merge") as active:
            if runs:
                assert merge_pull_request(**MERGE) == "merged acme/app#7"
            else:
                with pytest.raises(cra.ActionDenied) as info:
                    merge_pull_request(**MERGE)
                assert info.value.reason == reason
        assert requests[0].action_id == "github.pr.merge"
        assert requests[0].arguments == MERGE
        events = cra.get_runtime().trace_events(active.session_id)
        if runs:
            approved = next(e for e in events if e.event_type == "action.approved")
            assert approved.payload["approver"] in ("handler", "alice")

    def test_async_handler_timeout_and_errors(self):
        """Async handlers are awaited; slow or failing approvers deny."""

        async def slow(request: cra.ApprovalRequest) -> bool:
            await asyncio.sleep(5)
            return True

        async def approve(request: cra.ApprovalRequest) -> bool:
            return True

        @cra.guarded("github.pr.merge")
        async def merge(repo: str, pr_number: int, expected_head_sha: str) -> str:
            return "merged"

        async def run(handler: Any, limit: float = 1.0) -> str:
            cra.configure(
                atlases=[GITHUB_OPS], store="memory://", approvals=handler, approval_timeout=limit
            )
            async with cra.session(agent_id="maintainer", goal="Merge"):
                return await merge(**MERGE)

        assert asyncio.run(run(approve)) == "merged"
        with pytest.raises(cra.ActionDenied, match="approval_timeout"):
            asyncio.run(run(slow, limit=0.05))

        def broken(request: cra.ApprovalRequest) -> bool:
            raise RuntimeError("approval service down")

        with pytest.raises(cra.ActionDenied, match="approval_error"):
            asyncio.run(run(broken))

    def test_sync_handler_timeout_error_and_async_handler_in_sync_code(self):
        """Sync calls time out slow approvers, deny on errors and refuse async handlers."""

        def slow(request: cra.ApprovalRequest) -> bool:
            time.sleep(1)
            return True

        def broken(request: cra.ApprovalRequest) -> bool:
            raise RuntimeError("down")

        async def async_handler(request: cra.ApprovalRequest) -> bool:
            return True

        for handler, reason in (
            (slow, "approval_timeout"),
            (broken, "approval_error"),
            (async_handler, "approval_error"),
        ):
            cra.configure(
                atlases=[GITHUB_OPS], store="memory://", approvals=handler, approval_timeout=0.05
            )
            with (
                cra.session(agent_id="maintainer", goal="Merge"),
                pytest.raises(cra.ActionDenied, match=reason),
            ):
                merge_pull_request(**MERGE)

    def test_approval_tokens_refuse_all_six_replay_classes(self, configured):
        """A granted approval works once, for its session, action, arguments and atlas only."""
        runtime = configured
        one = runtime.create_session("maintainer", "Merge")
        two = runtime.create_session("maintainer", "Merge")

        def attempt(
            session_id: str,
            approval_id: str,
            args: dict[str, Any] = MERGE,
            action: str = "github.pr.merge",
        ) -> str:
            try:
                runtime.authorize(session_id, action, args, approval_id=approval_id)
            except cra.ActionDenied as exc:
                return exc.reason
            return "allowed"

        token = runtime.grant_approval(one.session_id, "github.pr.merge", MERGE, approver="alice")
        assert attempt(one.session_id, token.approval_id) == "allowed"
        results = {"reuse": attempt(one.session_id, token.approval_id)}
        token = runtime.grant_approval(one.session_id, "github.pr.merge", MERGE, approver="alice")
        results["other session"] = attempt(two.session_id, token.approval_id)
        results["other arguments"] = attempt(
            one.session_id, token.approval_id, {**MERGE, "pr_number": 8}
        )
        results["other action"] = attempt(
            one.session_id,
            token.approval_id,
            {"repo": "acme/app", "settings": {"has_wiki": False}},
            "github.repo.settings",
        )
        expired = runtime.grant_approval(
            one.session_id, "github.pr.merge", MERGE, approver="alice", ttl_seconds=0.001
        )
        time.sleep(0.01)
        results["expired"] = attempt(one.session_id, expired.approval_id)
        restarted = cra.Runtime([GITHUB_OPS], store="memory://")
        other = restarted.create_session("maintainer", "Merge")
        stale = runtime.grant_approval(one.session_id, "github.pr.merge", MERGE, approver="x")
        try:
            restarted.authorize(
                other.session_id, "github.pr.merge", MERGE, approval_id=stale.approval_id
            )
            results["after restart"] = "allowed"
        except cra.ActionDenied as exc:
            results["after restart"] = exc.reason
        restarted.close()
        print(f"\napproval replays: {results}")
        assert "allowed" not in results.values()
        assert results["reuse"] == "approval_already_used"
        assert results["other session"] == "approval_for_other_session"
        assert results["other arguments"] == "approval_for_other_arguments"
        assert results["expired"] == "approval_expired"
        assert results["after restart"] == "approval_unknown"


class TestShadowMode:
    def test_would_be_denials_run_and_are_flagged(self):
        """Shadow mode records policy.violated and lets the call run, flagged everywhere."""
        ran = []

        @cra.guarded("github.repo.delete")
        def delete(repo: str, confirm_name: str) -> None:
            ran.append(repo)

        cra.configure(atlases=[GITHUB_OPS], store="memory://", shadow=True)
        with cra.session(agent_id="triage-bot", goal="Try") as active:
            delete("acme/app", "acme/app")
            merge_pull_request(**MERGE)
        assert ran == ["acme/app"]
        events = cra.get_runtime().trace_events(active.session_id)
        violated = [e for e in events if e.event_type == "policy.violated"]
        assert [v.payload["policy_id"] for v in violated] == ["deny-repo-delete", "approve-merge"]
        assert all(v.payload["details"]["shadow"] for v in violated)
        kinds = ("action.requested", "policy.evaluated", "action.approved", "action.executed")
        flagged = [e for e in events if e.event_type in kinds]
        assert len(flagged) == 8
        assert all(e.payload.get("shadow") for e in flagged)


STAGES = {
    "decide": (PolicyEngine, "decide"),
    "schema": (gate_module, "first_error"),
    "digest": (gate_module, "sha256_hex"),
    "canonical": (gate_module, "canonical_json"),
    "commit": (TraceCollector, "committed"),
    "check": (TraceCollector, "check"),
    "map_tool": (ToolMap, "map"),
}
FAULTS = [
    Exception,
    RecursionError,
    MemoryError,
    TimeoutError,
    KeyError,
    UnicodeError,
    lambda: OSError(28, "No space left on device"),
]
TALLY = {"faults": 0, "runs": 0, "traced": 0}


@settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    stage=st.sampled_from(sorted(STAGES)),
    fault=st.sampled_from(FAULTS),
    issue=st.integers(1, 10_000),
)
def test_any_internal_failure_denies(monkeypatch, stage, fault, issue):
    """Faults injected in every decision stage: the tool never runs; the call is refused."""
    runtime = cra.configure(atlases=[GITHUB_OPS], store="memory://")
    runs: list[int] = []

    @cra.guarded("github.issue.comment")
    def tool(repo: str, issue_number: int, body: str) -> None:
        runs.append(issue_number)

    session = runtime.create_session("triage-bot", "Triage")
    token = sessions_module._current.set(cra.runtime.ActiveSession(session, runtime))

    def boom(*args: object, **kwargs: object) -> None:
        raise fault()

    owner, name = STAGES[stage]
    with monkeypatch.context() as patch:
        patch.setattr(owner, name, boom)
        refused: cra.CRAError | None = None
        try:
            tool("acme/app", issue, "hello")
        except cra.CRAError as exc:
            refused = exc
        finally:
            sessions_module._current.reset(token)
    assert refused is not None
    assert refused.code
    TALLY["faults"] += 1
    TALLY["runs"] += len(runs)
    events = runtime.trace_events(session.session_id)
    if any(e.event_type == "action.denied" for e in events) or stage in ("commit", "check"):
        TALLY["traced"] += 1
    assert runs == []


def test_zz_fault_report():
    """Print the fault-injection figure."""
    print(
        f"\nfail closed: {TALLY['faults']} injected faults, {TALLY['runs']} tool runs, "
        f"{TALLY['traced']} denials traced or refused before recording was possible"
    )
    assert TALLY["runs"] == 0


class TestConsoleApprover:
    def test_answers_at_the_console(self, capsys):
        """y approves with the console identity; anything else, or end of input, denies."""
        import io

        answers = iter(["y", "n"])

        def ask(prompt: str) -> str:
            assert "Approve" in prompt
            return next(answers)

        out = io.StringIO()
        approver = cra.ConsoleApprover(approver="console:alice", ask=ask, output=out)
        cra.configure(atlases=[GITHUB_OPS], store="memory://", approvals=approver)
        with cra.session(agent_id="maintainer", goal="Merge") as active:
            assert merge_pull_request(**MERGE) == "merged acme/app#7"
            with pytest.raises(cra.ActionDenied, match="approval_denied"):
                merge_pull_request(**MERGE)
        shown = out.getvalue()
        assert "github.pr.merge" in shown
        assert '"pr_number": 7' in shown
        events = cra.get_runtime().trace_events(active.session_id)
        approved = [e for e in events if e.event_type == "action.approved"]
        assert approved[0].payload["approver"] == "console:alice"

        def eof(prompt: str) -> str:
            raise EOFError

        decision = cra.ConsoleApprover(ask=eof, output=io.StringIO())(
            cra.ApprovalRequest("s", "a", "x", {"big": "y" * 5000}, "d" * 64, "high", "r", "p")
        )
        assert not decision.approved
        assert decision.approver.startswith("console:")

    def test_without_a_terminal_it_denies_at_once(self, monkeypatch):
        """approvals="console" with no TTY on stdin denies instead of hanging."""
        import io

        monkeypatch.setattr("sys.stdin", io.StringIO(""))
        cra.configure(atlases=[GITHUB_OPS], store="memory://", approvals="console")
        with (
            cra.session(agent_id="maintainer", goal="Merge"),
            pytest.raises(cra.ActionDenied, match="approval_denied"),
        ):
            merge_pull_request(**MERGE)


class TestPrecheckAndGivenAnswers:
    def test_precheck_records_nothing(self):
        """precheck says allow / deny / requires_approval / invalid without an event."""
        runtime = cra.get_runtime()
        with cra.session(agent_id="maintainer", goal="Look first") as active:
            before = len(_types(active.session_id))
            merge = runtime.precheck(active.session_id, "github.pr.merge", MERGE)
            read = runtime.precheck(
                active.session_id, "github.file.read", {"repo": "acme/app", "path": "R"}
            )
            delete = runtime.precheck(
                active.session_id, "github.repo.delete", {"repo": "a/b", "confirm_name": "a/b"}
            )
            bad = runtime.precheck(active.session_id, "github.file.read", {"repo": "nope"})
            unjson = runtime.precheck(active.session_id, "github.file.read", {"x": float("nan")})
            assert len(_types(active.session_id)) == before
        assert merge.needs_approval and merge.policy_id == "approve-merge"
        assert merge.risk_tier == "high"
        assert read.result == "allow" and not read.needs_approval
        assert delete.result == "deny" and delete.reason
        assert bad.result == "deny" and bad.reason == "invalid_parameters"
        assert bad.parameters_problem
        assert unjson.reason == "invalid_parameters"
        with cra.session(agent_id="maintainer", goal="Quick look") as again:
            sid = again.session_id
            quick = runtime.precheck(
                sid, "github.file.read", {"repo": "nope"}, check_parameters=False
            )
            assert quick.result == "allow"  # the policy's answer alone
            runtime.authorize(sid, "github.file.read", {"repo": "a/b", "path": "R"})
            cached = runtime.precheck(sid, "github.file.read", {}, check_parameters=False)
            assert cached.result == "allow"

    def test_an_answer_given_for_the_call(self):
        """authorize(approval=...) records the given answer instead of asking the handler."""
        runtime = cra.get_runtime()
        with cra.session(agent_id="maintainer", goal="Merge") as active:
            sid = active.session_id
            auth = runtime.authorize(
                sid,
                "github.pr.merge",
                MERGE,
                approval=cra.ApprovalDecision(True, "alice", "looks good"),
            )
            assert auth.approver == "alice"
            with pytest.raises(cra.ActionDenied, match="approval_denied"):
                runtime.authorize(
                    sid, "github.pr.merge", MERGE, approval=cra.ApprovalDecision(False, "bob")
                )

            async def async_answer() -> cra.Authorization:
                return await runtime.aauthorize(
                    sid, "github.pr.merge", MERGE, approval=cra.ApprovalDecision(True, "carol")
                )

            assert asyncio.run(async_answer()).approver == "carol"
        events = runtime.trace_events(sid)
        approved = [e.payload.get("approver") for e in events if e.event_type == "action.approved"]
        assert approved == ["alice", "carol"]
