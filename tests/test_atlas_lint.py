"""lint_atlas: each finding fires on a minimal atlas and not on the fixed one."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cra_agents import AtlasError
from cra_agents.atlas import Finding, ValidationReport, load_atlas
from cra_agents.protocol import AtlasManifest
from cra_agents.tools import _lint as lint_module
from cra_agents.tools import lint_atlas

CLOSED = {"type": "object", "properties": {"service": {"type": "string"}}}
Mutation = Callable[[dict[str, Any]], object]


def good() -> dict[str, Any]:
    """An atlas that lints without a single finding."""
    return copy.deepcopy(
        {
            "atlas_version": "1.0",
            "atlas_id": "com.example.lint",
            "version": "1.0.0",
            "name": "Lint",
            "description": "Operate one service: read its status, restart it with approval.",
            "capabilities": [
                {
                    "capability_id": "ops",
                    "name": "Operations",
                    "description": "Read and restart the service.",
                    "actions": ["ops.read", "ops.restart"],
                    "context_packs": ["runbook"],
                }
            ],
            "context_packs": [
                {
                    "pack_id": "runbook",
                    "name": "Runbook",
                    "description": "How to restart the service safely.",
                    "files": ["context/runbook.md"],
                    "conditions": {"risk_tiers": ["high", "critical"]},
                }
            ],
            "context_blocks": [
                {
                    "context_id": "restart-notes",
                    "content": "Drain traffic first.",
                    "inject_when": ["ops.restart"],
                },
                {"context_id": "always-on", "content": "Be careful.", "inject_mode": "always"},
                {
                    "context_id": "incident",
                    "content": "Page the on-call.",
                    "inject_mode": "risk_based",
                    "risk_tiers": ["critical"],
                },
            ],
            "policies": [
                {
                    "policy_id": "approve-restart",
                    "type": "require_approval",
                    "description": "Restarts wait for an operator's approval.",
                    "actions": ["ops.restart"],
                    "parameters": {"reason": "Restarts need an operator"},
                },
                {
                    "policy_id": "limit-restart",
                    "type": "rate_limit",
                    "description": "At most two restarts every ten minutes.",
                    "actions": ["ops.restart"],
                    "parameters": {"max_calls": 2, "window_seconds": 600},
                },
                {
                    "policy_id": "allow-ops",
                    "type": "allow",
                    "description": "Reading status and approved restarts are fine.",
                    "actions": ["ops.*"],
                },
            ],
            "actions": [
                {
                    "action_id": "ops.read",
                    "name": "Read Status",
                    "description": "Read the service's status and health checks.",
                    "parameters_schema": {**CLOSED, "additionalProperties": False},
                },
                {
                    "action_id": "ops.restart",
                    "name": "Restart",
                    "description": "Restart the service; open connections are dropped.",
                    "parameters_schema": {**CLOSED, "unevaluatedProperties": False},
                    "risk_tier": "high",
                },
            ],
        }
    )


def codes(report: ValidationReport) -> set[str]:
    return {f.code for f in report.findings}


def lint(document: dict[str, Any]) -> ValidationReport:
    report = lint_atlas(document)
    assert report.valid, report.errors
    return report


def policy(document: dict[str, Any], policy_id: str) -> dict[str, Any]:
    return next(p for p in document["policies"] if p["policy_id"] == policy_id)


def add_policy(document: dict[str, Any], **fields: Any) -> None:
    document["policies"].append({"description": "A policy added by the test.", **fields})


def test_good_atlas_is_clean():
    """The fixed atlas has no findings at all."""
    report = lint(good())
    assert report.findings == []
    assert report.strict is False
    assert report.source == "<dict>"


FIRES: list[tuple[str, str | list[str], Mutation]] = [
    ("L001", "/actions/0/parameters_schema", lambda d: d["actions"][0].pop("parameters_schema")),
    (
        "L002",
        "/actions/0/parameters_schema",
        lambda d: d["actions"][0]["parameters_schema"].pop("additionalProperties"),
    ),
    ("L003", "/actions/1/risk_tier", lambda d: d["policies"].pop(0)),
    (
        "L004",
        "/actions/1/risk_tier",
        lambda d: d["policies"][0].update(conditions={"agents": ["ops-*"]}),
    ),
    ("L005", "/actions/0", lambda d: policy(d, "allow-ops").update(actions=["ops.restart"])),
    (
        "L006",
        "/policies/3",
        lambda d: add_policy(
            d, policy_id="allow-read", type="allow", priority=-1, actions=["ops.read"]
        ),
    ),
    (
        "L006",
        ["/policies/0", "/policies/1", "/policies/2"],
        lambda d: add_policy(
            d,
            policy_id="deny-all",
            type="deny",
            actions=["*"],
            conditions={"agents": ["*"], "risk_tiers": ["low", "medium", "high", "critical"]},
            parameters={"reason": "Frozen"},
        ),
    ),
    (
        "L006",
        "/policies/3",
        lambda d: add_policy(
            d,
            policy_id="approve-again",
            type="require_approval",
            actions=["ops.restart"],
            priority=-5,
            parameters={"reason": "Twice"},
        ),
    ),
    (
        "L006",
        "/policies/0/conditions",
        lambda d: d["policies"][0].update(conditions={"risk_tiers": []}),
    ),
    ("L007", "/policies/2/actions", lambda d: d["policies"][2].update(actions=["db.*"])),
    ("L007", "/policies/2/actions", lambda d: d["policies"][2].update(actions=[])),
    (
        "L008",
        "/capabilities/1/actions",
        lambda d: d["capabilities"].append(
            {"capability_id": "empty", "name": "Empty", "description": "Nothing in it at all."}
        ),
    ),
    ("L009", "/context_blocks/2/risk_tiers", lambda d: d["context_blocks"][2].pop("risk_tiers")),
    (
        "L009",
        "/context_packs/0/conditions",
        lambda d: d["context_packs"][0].update(conditions={"capabilities": []}),
    ),
    ("L010", "/context_blocks/0", lambda d: d["context_blocks"][0].pop("inject_when")),
    (
        "L010",
        "/context_blocks/0",
        lambda d: d["context_blocks"][0].update(inject_when=["op.rs"]),
    ),
    (
        "L011",
        "/context_packs/0/inject_mode",
        lambda d: d["context_packs"][0].update(inject_mode="risk_based"),
    ),
    ("L012", "/actions/0/description", lambda d: d["actions"][0].update(description="Reads")),
    ("L012", "/actions/0/description", lambda d: d["actions"][0].update(description="  ")),
    ("L013", "/description", lambda d: d.update(description="Ops")),
    ("L013", "/capabilities/0/description", lambda d: d["capabilities"][0].pop("description")),
    ("L013", "/context_packs/0/description", lambda d: d["context_packs"][0].pop("description")),
    ("L013", "/policies/1/description", lambda d: d["policies"][1].pop("description")),
    ("L014", "/policies/0/parameters", lambda d: d["policies"][0].pop("parameters")),
]


@pytest.mark.parametrize(
    ("code", "path", "mutate"), FIRES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(FIRES)]
)
def test_fires(code: str, path: str | list[str], mutate: Mutation) -> None:
    """Each code fires at its path on a minimal breakage of the clean atlas."""
    document = good()
    mutate(document)
    report = lint(document)
    hits = [f for f in report.findings if f.code == code]
    assert [f.path for f in hits] == (path if isinstance(path, list) else [path]), hits
    severity = hits[0].severity
    assert severity == ("info" if code in ("L004", "L010", "L013", "L014") else "warning")


class TestDoesNotFire:
    """Near misses: what looks like a finding but is not certain or not a problem."""

    def test_conditional_deny_does_not_shadow(self):
        """A deny with conditions does not make later policies dead."""
        document = good()
        add_policy(
            document,
            policy_id="deny-bots",
            type="deny",
            actions=["ops.*"],
            conditions={"agents": ["bot-*"]},
            parameters={"reason": "No bots"},
        )
        assert "L006" not in codes(lint(document))

    def test_approval_does_not_shadow_rate_limit_or_allow(self):
        """After an approval, rate limits and the allow phase still apply."""
        document = good()
        policy(document, "approve-restart")["actions"] = ["ops.*"]
        assert "L006" not in codes(lint(document))

    def test_allow_partly_shadowed_is_alive(self):
        """An allow shadowed for some of its actions still decides the others."""
        document = good()
        add_policy(
            document,
            policy_id="allow-read-first",
            type="allow",
            priority=10,
            actions=["ops.read"],
        )
        assert "L006" not in codes(lint(document))

    def test_policy_only_atlas_has_no_l007(self):
        """A guardrail atlas without actions may name actions of other atlases."""
        document = good()
        del document["actions"]
        document["capabilities"] = []
        assert "L007" not in codes(lint(document))

    def test_missing_actions_key_covers_everything(self):
        """A policy without actions covers every action (E008 is validation's business)."""
        document = good()
        del policy(document, "allow-ops")["actions"]
        assert codes(lint(document)) == set()

    def test_high_risk_with_unconditional_deny(self):
        """A high-risk action behind an unconditional deny is fine."""
        document = good()
        document["policies"][0].update(type="deny")
        assert not {"L003", "L004"} & codes(lint(document))


class TestInput:
    def test_invalid_atlas_returns_validation_errors(self, make_manifest):
        """An atlas that does not validate gets its validation errors, no lint findings."""
        document = make_manifest(
            actions=[
                {"action_id": "a.b", "name": "x", "description": "x"},
                {"action_id": "a.b", "name": "x", "description": "x"},
            ]
        )
        report = lint_atlas(document)
        assert not report.valid
        assert "E005" in codes(report)
        assert not any(f.code.startswith("L") for f in report.findings)

    def test_unloadable_atlas(self, tmp_path):
        """A legacy or unreadable document is reported, never raised."""
        assert not lint_atlas({"atlas_version": "0.1"}).valid
        broken = tmp_path / "atlas.json"
        broken.write_text("{", encoding="utf-8")
        report = lint_atlas(broken)
        assert [f.code for f in report.errors] == ["E000"]

    def test_loader_refusal_validation_misses(self, monkeypatch):
        """If the loader refuses what validation accepts, the refusal is the error."""

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise AtlasError("refused for a reason", reason="test", path="/x")

        monkeypatch.setattr(lint_module, "load_atlas", refuse)
        report = lint_atlas(good())
        assert not report.valid
        assert report.findings[0] == Finding("E000", "error", "/x", "refused for a reason at /x")

    def test_loaded_atlas_and_manifest(self, github_ops):
        """An Atlas or AtlasManifest object lints like its source."""
        atlas = load_atlas(github_ops)
        by_path = lint_atlas(github_ops).findings
        assert lint_atlas(atlas).findings == by_path
        assert lint_atlas(AtlasManifest.model_validate(good())).findings == []

    def test_findings_sorted_numerically(self):
        """Findings come warnings first, then by path with indexes in numeric order."""
        document = good()
        for i in range(11):
            document["actions"].append(
                {"action_id": f"ops.extra{i}", "name": "x", "description": "x"}
            )
        paths = [f.path for f in lint(document).findings if f.code == "L012"]
        assert paths == [f"/actions/{i}/description" for i in range(2, 13)]


class TestRealAtlases:
    def test_example_atlas(self, github_ops):
        """The example atlas: one uncovered action, two conditionally gated risky ones."""
        report = lint(json.loads((github_ops / "atlas.json").read_text(encoding="utf-8")))
        found = {(f.code, f.severity, f.message.split("'")[1]) for f in report.findings}
        assert found == {
            ("L005", "warning", "github.workflow.rerun"),
            ("L004", "info", "github.release.publish"),
            ("L004", "info", "github.branch.delete"),
        }

    def test_cra_development(self, conformance_dir: Path) -> None:
        """The real upstream atlas lints (it is lenient-valid) and shows its weak spots."""
        report = lint_atlas(conformance_dir / "atlases" / "cra-development.json")
        assert report.valid
        by_code: dict[str, list[Finding]] = {}
        for finding in report.findings:
            by_code.setdefault(finding.code, []).append(finding)
        assert len(by_code["L002"]) == 12  # every schema is a bare {"type": "object"}
        assert {f.message.split("'")[1] for f in by_code["L005"]} == {
            "atlas.edit_manifest",
            "atlas.edit_loader",
        }
        assert {f.path for f in by_code["L007"]} == {"/policies/1/actions", "/policies/2/actions"}
        assert "L003" not in by_code  # the high-risk edits need approval
