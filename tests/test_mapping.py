"""One rule maps a tool to its action, for every adapter."""

from __future__ import annotations

from typing import Any

import pytest

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.runtime import ToolMap

GITHUB_OPS = atlas_path("github-ops")


def _atlas(*actions: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "atlas_version": "1.0",
        "atlas_id": "com.example.mapping",
        "version": "1.0.0",
        "name": "Mapping",
        "description": "Actions whose names collide.",
        "actions": [
            {"action_id": a, "name": n, "description": "x", "executor": e} for a, n, e in actions
        ],
        "policies": [],
    }


class TestToolMap:
    def test_the_order_of_the_rule(self):
        """Explicit id, then the adapter's table, then id, name or executor."""
        tools = ToolMap([cra.load_atlas(GITHUB_OPS)])
        assert tools.map("anything", action_id="github.issue.list") == "github.issue.list"
        assert tools.map("lister", actions={"lister": "github.pr.list"}) == "github.pr.list"
        assert tools.map("list_issues") == "github.issue.list"  # executor
        assert tools.map("github.issue.list") == "github.issue.list"  # id

    def test_no_match_names_the_atlases(self):
        """An unknown tool is refused with the loaded atlases and how to name the action."""
        tools = ToolMap([cra.load_atlas(GITHUB_OPS)])
        with pytest.raises(cra.ActionNotFoundError, match=r"com\.example\.github-ops") as caught:
            tools.map("no_such_tool")
        assert caught.value.details == {"tool": "no_such_tool", "reason": "unmapped_tool"}

    def test_ambiguity_names_the_candidates(self):
        """A name two actions answer to is refused, naming both."""
        atlas = _atlas(("ops.a.run", "run", "runner"), ("ops.b.run", "Run B", "run"))
        tools = ToolMap([cra.load_atlas(atlas)])
        with pytest.raises(cra.ActionNotFoundError, match="several actions") as caught:
            tools.map("run")
        assert caught.value.details["candidates"] == ["ops.a.run", "ops.b.run"]


def test_an_unmapped_call_is_refused_and_recorded():
    """Through the gate, an unmapped tool is a recorded refusal (undeclared-action)."""
    with cra.Runtime([GITHUB_OPS], store="memory://") as runtime:
        session = runtime.create_session("triage-bot", "Triage")
        with pytest.raises(cra.ActionNotFoundError):
            runtime.call("no_such_tool", {}, session_id=session.session_id).__enter__()
        denied = runtime.trace_events(session.session_id)[-1]
        assert denied.event_type == "action.denied"
        assert (denied.payload["policy_id"], denied.payload["reason"]) == (
            "undeclared-action",
            "unmapped_tool",
        )
