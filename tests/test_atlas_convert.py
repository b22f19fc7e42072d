"""convert_legacy_atlas: legacy Atlas 0.1 → Atlas 1.0, checked against the real legacy atlas."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cra_agents as cra
from cra_agents import AtlasError
from cra_agents.atlas import Finding, load_atlas, validate_atlas
from cra_agents.tools import AtlasConversion, convert_legacy_atlas

CREATE_ISSUE = "api.github.create.issue"
CLOSE_ISSUE = "api.github.close.issue"
CREATE_PR = "api.github.create.pull.request"
MERGE_PR = "api.github.merge.pull.request"
PROTECT = "api.github.update.branch.protection"


@pytest.fixture(scope="module")
def legacy_dir(conformance_dir: Path) -> Path:
    return conformance_dir / "atlases" / "github-ops-legacy"


@pytest.fixture(scope="module")
def conversion(legacy_dir: Path) -> AtlasConversion:
    return convert_legacy_atlas(legacy_dir)


@pytest.fixture(scope="module")
def converted_dir(conversion: AtlasConversion, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return conversion.write(tmp_path_factory.mktemp("converted") / "github-ops")


@pytest.fixture(scope="module")
def runtime(converted_dir: Path) -> Iterator[cra.Runtime]:
    with cra.Runtime(atlases=[converted_dir], store="memory://") as rt:
        yield rt


def notes_at(conversion: AtlasConversion, code: str) -> dict[str, Finding]:
    return {n.path: n for n in conversion.notes if n.code == code}


def legacy(**overrides: Any) -> dict[str, Any]:
    """A small, complete legacy atlas; keyword arguments replace top-level keys."""
    document: dict[str, Any] = {
        "atlas_version": "0.1",
        "metadata": {"id": "com.example.legacy", "name": "Legacy", "version": "1.0.0"},
        "domains": [{"id": "ops", "name": "Ops", "description": "Operations work"}],
        "actions": [
            {
                "id": "restart",
                "type": "api.ops.restart_service",
                "name": "Restart",
                "description": "Restart a service",
                "domain": "ops",
                "risk_tier": "high",
            }
        ],
        "policies": [
            {
                "id": "safety",
                "rules": [
                    {
                        "id": "approve-high",
                        "condition": {"type": "risk_tier", "operator": "in", "value": ["high"]},
                        "effect": "require_approval",
                        "priority": 10,
                    }
                ],
            }
        ],
    }
    document.update(copy.deepcopy(overrides))
    return document


def conversion_error(source: Any) -> AtlasError:
    with pytest.raises(AtlasError) as info:
        convert_legacy_atlas(source)
    return info.value


class TestGithubOpsLegacy:
    def test_identity(self, conversion):
        """metadata becomes the 1.0 identity: id, version, name, authors, SPDX license."""
        m = conversion.manifest
        assert m["atlas_version"] == "1.0"
        assert m["atlas_id"] == "com.cra.github-ops"
        assert m["version"] == "0.1.0"
        assert m["name"] == "GitHub Operations"
        assert m["description"] == "Context and actions for GitHub repository management"
        assert m["authors"] == ["CRA Team <team@cra.dev>"]
        assert m["license"] == "MIT"
        assert m["domains"] == ["github.issues", "github.pulls", "github.repos"]
        assert m["metadata"]["keywords"][0] == "github"

    def test_actions(self, conversion):
        """Action ids come from the legacy type, rewritten to the 1.0 pattern, in order."""
        actions = conversion.manifest["actions"]
        assert [a["action_id"] for a in actions] == [
            CREATE_ISSUE,
            CLOSE_ISSUE,
            CREATE_PR,
            MERGE_PR,
            PROTECT,
        ]
        first = actions[0]
        assert first["parameters_schema"]["required"] == ["owner", "repo", "title"]
        assert first["risk_tier"] == "low"
        assert first["examples"] == [
            {
                "name": "Create a bug report",
                "parameters": {
                    "owner": "myorg",
                    "repo": "myapp",
                    "title": "Bug: Login fails on mobile",
                    "body": "## Description\nThe login button does not work on iOS Safari.",
                    "labels": ["bug", "mobile"],
                },
            }
        ]
        assert [a["risk_tier"] for a in actions] == ["low", "low", "medium", "high", "critical"]
        assert "examples" not in actions[3]  # an empty legacy list stays absent

    def test_legacy_ids_and_tool_names_stay_discoverable(self, conversion):
        """executor is the openai tool name (else the legacy id); metadata.legacy maps both."""
        executors = {a["action_id"]: a["executor"] for a in conversion.manifest["actions"]}
        assert executors == {
            CREATE_ISSUE: "github_create_issue",
            CLOSE_ISSUE: "github_close_issue",
            CREATE_PR: "github_create_pr",
            MERGE_PR: "merge-pr",
            PROTECT: "update-branch-protection",
        }
        legacy_block = conversion.manifest["metadata"]["legacy"]
        assert legacy_block["atlas_version"] == "0.1"
        assert legacy_block["actions"]["merge-pr"] == MERGE_PR
        assert legacy_block["tool_names"] == {
            "openai": {
                "github_create_issue": CREATE_ISSUE,
                "github_close_issue": CLOSE_ISSUE,
                "github_create_pr": CREATE_PR,
            }
        }
        assert legacy_block["policy_sets"] == {
            "github-safety": ["require-approval-high-risk", "allow-issues", "rate-limit-api"]
        }

    def test_capabilities_one_per_domain(self, conversion):
        """Each legacy domain becomes a capability with its actions and context packs."""
        caps = {c["capability_id"]: c for c in conversion.manifest["capabilities"]}
        assert list(caps) == ["github.issues", "github.pulls", "github.repos"]
        assert caps["github.issues"]["actions"] == [CREATE_ISSUE, CLOSE_ISSUE]
        assert caps["github.issues"]["context_packs"] == ["issues-guide"]
        assert caps["github.pulls"]["name"] == "GitHub Pull Requests"
        assert caps["github.repos"]["actions"] == [PROTECT]

    def test_context_packs_and_files(self, conversion, legacy_dir):
        """Packs keep id, source and priority; their files are read byte for byte."""
        packs = conversion.manifest["context_packs"]
        assert packs[0] == {
            "pack_id": "issues-guide",
            "name": "Issues Guide",
            "files": ["context/issues-guide.md"],
            "priority": 10,
        }
        assert [p["priority"] for p in packs] == [10, 10, 5]
        assert set(conversion.files) == {
            "context/issues-guide.md",
            "context/pr-guide.md",
            "context/repo-settings.md",
        }
        for name, data in conversion.files.items():
            assert data == (legacy_dir / name).read_bytes()

    def test_rules_become_policies_with_explicit_actions(self, conversion):
        """Each rule is a policy listing the actions its condition selects."""
        policies = {p["policy_id"]: p for p in conversion.manifest["policies"]}
        approval = policies["require-approval-high-risk"]
        assert approval["type"] == "require_approval"
        assert approval["priority"] == 100
        assert approval["actions"] == [MERGE_PR, PROTECT]
        assert approval["parameters"] == {
            "reason": "High-risk operations require explicit approval"
        }
        assert policies["allow-issues"]["actions"] == [CREATE_ISSUE, CLOSE_ISSUE]
        rate = policies["rate-limit-api"]
        assert rate["type"] == "allow"  # the legacy effect, not rate_limit
        assert rate["actions"] == [CREATE_ISSUE, CLOSE_ISSUE, CREATE_PR, MERGE_PR, PROTECT]
        assert "parameters" not in rate

    def test_notes(self, conversion):
        """Dropped fields are warnings at their JSON path; renamings are infos."""
        dropped = notes_at(conversion, "C003")
        for path in (
            "/metadata/license/type",
            "/domains/0/risk_tier",
            "/context_packs/0/format",
            "/context_packs/1/ttl_seconds",
            "/context_packs/2/tags",
            "/context_packs/2/evidence_sources",
            "/actions/0/examples/0/expected_outcome",
            "/adapters/0",
            "/adapters/2",
            "/policies/0/version",
            "/tests",
        ):
            assert dropped[path].severity == "warning", path
        assert "tool names are kept" in dropped["/adapters/0"].message
        assert "tool names" not in dropped["/adapters/1"].message
        renamed = notes_at(conversion, "C001")
        assert renamed["/actions/0/type"].severity == "info"
        assert "'api.github.create.issue'" in renamed["/actions/0/type"].message
        rate = notes_at(conversion, "C007")
        assert list(rate) == ["/policies/0/rules/2/effect"]
        assert "rate_limit policy" in rate["/policies/0/rules/2/effect"].message
        assert not notes_at(conversion, "C008")  # the phase order changes no decision
        assert not notes_at(conversion, "C009")  # every action is decided by a rule
        assert all(n.severity in ("warning", "info") for n in conversion.notes)

    def test_validates_strictly_without_findings(self, converted_dir):
        """Written with its context files, the result passes strict validation cleanly."""
        report = validate_atlas(converted_dir, strict=True)
        assert report.valid, report.errors
        assert report.findings == []

    def test_written_manifest_format(self, conversion, converted_dir):
        """atlas.json is 2-space indented JSON with a trailing newline; files sit beside it."""
        text = (converted_dir / "atlas.json").read_text(encoding="utf-8")
        assert text == json.dumps(conversion.manifest, indent=2, ensure_ascii=False) + "\n"
        assert (converted_dir / "context" / "pr-guide.md").is_file()

    def test_loads(self, converted_dir):
        """The converted atlas loads with every context file."""
        atlas = load_atlas(converted_dir)
        assert atlas.atlas_id == "com.cra.github-ops"
        assert atlas.missing_files == ()
        assert len(atlas.context_files) == 3

    @pytest.mark.parametrize(
        ("action_id", "result", "policy_id"),
        [
            (CREATE_ISSUE, "allow", "allow-issues"),
            (CLOSE_ISSUE, "allow", "allow-issues"),
            (CREATE_PR, "allow", "rate-limit-api"),
            (MERGE_PR, "requires_approval", "require-approval-high-risk"),
            (PROTECT, "requires_approval", "require-approval-high-risk"),
        ],
    )
    def test_decisions_match_the_legacy_rules(self, runtime, action_id, result, policy_id):
        """Issues are allowed, high/critical actions need approval, PRs pass the type rule."""
        session = runtime.create_session("converter-test", "Work on GitHub")
        check = runtime.precheck(session.session_id, action_id, {}, check_parameters=False)
        assert (check.result, check.policy_id) == (result, policy_id)
        if result == "requires_approval":
            assert check.reason == "High-risk operations require explicit approval"

    def test_resolution(self, runtime):
        """A resolve asks for approval of the two risky actions and injects the three packs."""
        session = runtime.create_session("converter-test", "Triage issues and merge PRs")
        resolution = runtime.resolve(cra.resolve_request(session))
        assert resolution.decision.type == "requires_approval"
        confirm = {a.action_id: a.requires_confirmation for a in resolution.allowed_actions}
        assert confirm == {
            CREATE_ISSUE: False,
            CLOSE_ISSUE: False,
            CREATE_PR: False,
            MERGE_PR: True,
            PROTECT: True,
        }
        assert resolution.denied_actions == []
        assert {b.block_id for b in resolution.context_blocks} == {
            "issues-guide",
            "pr-guide",
            "repo-settings",
        }

    def test_manifest_file_and_pathlike_sources(self, legacy_dir, conversion):
        """Its atlas.json path (str or Path) converts the same as the directory."""
        for source in (str(legacy_dir / "atlas.json"), legacy_dir / "atlas.json"):
            other = convert_legacy_atlas(source)
            assert other.manifest == conversion.manifest
            assert other.files == conversion.files
        assert conversion.source == str(legacy_dir)

    def test_dict_source(self, legacy_dir, conversion):
        """A parsed document converts too; its context files cannot be read, which is noted."""
        document = json.loads((legacy_dir / "atlas.json").read_text(encoding="utf-8"))
        from_dict = convert_legacy_atlas(document)
        assert from_dict.source == "<dict>"
        assert from_dict.manifest == conversion.manifest
        assert from_dict.files == {}
        assert "not copied" in notes_at(from_dict, "C010")["/context_packs"].message

    def test_as_dict(self, conversion, legacy_dir):
        """as_dict is JSON: source, manifest, file sizes and notes."""
        data = json.loads(json.dumps(conversion.as_dict()))
        assert data["source"] == str(legacy_dir)
        assert data["manifest"]["atlas_id"] == "com.cra.github-ops"
        assert (
            data["files"]["context/pr-guide.md"]
            == (legacy_dir / "context/pr-guide.md").stat().st_size
        )
        assert {"code", "severity", "path", "message"} <= set(data["notes"][0])


class TestRefusals:
    def test_already_atlas_1_0(self, github_ops):
        """An Atlas 1.0 atlas is refused with a message that says so and what to run."""
        error = conversion_error(github_ops)
        assert error.code == "ATLAS_VERSION_MISMATCH"
        assert error.reason == "already_converted"
        assert "already Atlas 1.0" in str(error)
        assert "cra atlas validate" in str(error)

    @pytest.mark.parametrize(
        ("version", "text"), [(None, "has no atlas_version"), ("0.2", "'0.2'")]
    )
    def test_not_legacy(self, version, text):
        """Anything but atlas_version 0.1 is refused with what was found."""
        document = legacy()
        if version is None:
            del document["atlas_version"]
        else:
            document["atlas_version"] = version
        error = conversion_error(document)
        assert error.reason == "unsupported_version"
        assert text in str(error)
        assert error.path == "/atlas_version"

    def test_unreadable_source(self, tmp_path):
        """A directory without atlas.json or a non-object document fails like the loader."""
        assert conversion_error(tmp_path).code == "ATLAS_LOAD_ERROR"
        (tmp_path / "atlas.json").write_text("[1]", encoding="utf-8")
        assert conversion_error(tmp_path).reason == "not_an_object"

    @pytest.mark.parametrize(
        ("mutate", "path", "text"),
        [
            (lambda d: d.pop("metadata"), "/metadata", "no metadata object"),
            (lambda d: d.update(metadata=[]), "/metadata", "must be an object"),
            (lambda d: d["metadata"].update(id="Bad Id"), "/metadata/id", "atlas id"),
            (lambda d: d["metadata"].update(id=7), "/metadata/id", "expected a string"),
            (lambda d: d["metadata"].pop("version"), "/metadata/version", "missing"),
            (lambda d: d["metadata"].update(version="v1"), "/metadata/version", "SemVer"),
            (lambda d: d["metadata"].update(authors=[{}]), "/metadata/authors/0", "name or"),
            (lambda d: d["metadata"].update(authors={}), "/metadata/authors", "a list"),
            (lambda d: d.update(domains=[{"name": "x"}]), "/domains/0", "needs an id"),
            (lambda d: d.update(domains=["ops", "ops"]), "/domains/1", "declared twice"),
            (lambda d: d.update(actions="x"), "/actions", "expected a list"),
            (lambda d: d.update(actions=[3]), "/actions/0", "must be an object"),
            (
                lambda d: d["actions"][0].pop("id") and d["actions"][0].pop("type"),
                "/actions/0",
                "an id or a type",
            ),
            (lambda d: d["actions"].append(dict(d["actions"][0])), "/actions/1/id", "used twice"),
            (
                lambda d: d["actions"][0].update(risk_tier="extreme"),
                "/actions/0/risk_tier",
                "is not one of",
            ),
            (lambda d: d["actions"][0].update(schema=[]), "/actions/0/schema", "an object"),
            (
                lambda d: d["actions"][0].update(timeout_seconds=0),
                "/actions/0/timeout_seconds",
                "wrong type",
            ),
            (
                lambda d: d["actions"][0].update(idempotent="yes"),
                "/actions/0/idempotent",
                "wrong type",
            ),
            (
                lambda d: d.update(context_packs=[{"source": "a.md"}]),
                "/context_packs/0",
                "needs an id",
            ),
            (
                lambda d: d.update(context_packs=[{"id": "a"}, {"id": "a"}]),
                "/context_packs/1/id",
                "used twice",
            ),
            (
                lambda d: d.update(context_packs=[{"id": "a", "source": ["../x.md"]}]),
                "/context_packs/0/source/0",
                "relative path",
            ),
            (
                lambda d: d.update(context_packs=[{"id": "a", "source": "/etc/passwd"}]),
                "/context_packs/0/source",
                "relative path",
            ),
            (
                lambda d: d.update(context_packs=[{"id": "a", "source": "atlas.json"}]),
                "/context_packs/0/source",
                "cannot be a context file",
            ),
            (
                lambda d: d.update(context_packs=[{"id": "a", "source": [""]}]),
                "/context_packs/0/source/0",
                "file path",
            ),
            (
                lambda d: d.update(context_packs=[{"id": "a", "source": [], "priority": "hi"}]),
                "/context_packs/0/priority",
                "integer",
            ),
            (
                lambda d: d["policies"][0]["rules"][0].update(priority=1.5),
                "/policies/0/rules/0/priority",
                "integer",
            ),
            (
                lambda d: d.update(dependencies={"com.example.x": 1}),
                "/dependencies/com.example.x",
                "string",
            ),
            (lambda d: d.update(dependencies=[{"version": "1"}]), "/dependencies/0", "an id"),
            (
                lambda d: d.update(adapters=[{"platform": "x", "tool_mappings": [{}]}]),
                "/adapters/0/tool_mappings/0",
                "platform_tool_name",
            ),
        ],
    )
    def test_malformed(self, mutate, path, text):
        """Malformed legacy input names the field and says to fix it and convert again."""
        document = legacy()
        mutate(document)
        error = conversion_error(document)
        assert error.path == path
        assert text in str(error)
        assert error.reason in ("legacy_malformed", "path_escape")
        assert "convert again" in str(error) or "cannot be a context file" in str(error)

    @pytest.mark.parametrize(
        "condition",
        [
            {"type": "time", "operator": "eq", "value": "night"},
            {"type": "risk_tier", "operator": "gte", "value": "high"},
            {"type": "risk_tier", "operator": "in", "value": "high"},
            {"type": "domain", "operator": "eq", "value": ["ops"]},
            {"type": "action_type", "operator": "matches", "value": "("},
        ],
    )
    def test_restricting_rule_that_cannot_be_converted(self, condition):
        """A deny/approval rule is never dropped: the conversion fails and says why."""
        document = legacy()
        document["policies"][0]["rules"][0]["condition"] = condition
        error = conversion_error(document)
        assert error.reason == "legacy_unsupported"
        assert error.path == "/policies/0/rules/0/condition"
        assert "would remove a restriction" in str(error)

    @pytest.mark.parametrize("effect", ["block", None])
    def test_unknown_effect(self, effect):
        """An effect the converter does not know may be a restriction: it is refused."""
        document = legacy()
        document["policies"][0]["rules"][0]["effect"] = effect
        error = conversion_error(document)
        assert error.reason == "legacy_unsupported"
        assert error.path == "/policies/0/rules/0/effect"
        assert "require_approval" in str(error)

    def test_context_file_outside_directory(self, tmp_path):
        """A context source that escapes the legacy directory through a symlink is refused."""
        outside = tmp_path / "outside.md"
        outside.write_text("secret", encoding="utf-8")
        atlas_dir = tmp_path / "atlas"
        (atlas_dir / "context").mkdir(parents=True)
        (atlas_dir / "context" / "link.md").symlink_to(outside)
        document = legacy(context_packs=[{"id": "a", "source": "context/link.md"}])
        (atlas_dir / "atlas.json").write_text(json.dumps(document), encoding="utf-8")
        assert conversion_error(atlas_dir).reason == "path_escape"

    def test_context_file_not_regular(self, tmp_path):
        """A FIFO or directory as context source is refused, not read forever."""
        (tmp_path / "context").mkdir()
        document = legacy(context_packs=[{"id": "a", "source": "context"}])
        (tmp_path / "atlas.json").write_text(json.dumps(document), encoding="utf-8")
        assert conversion_error(tmp_path).reason == "not_a_file"

    def test_context_file_too_large(self, tmp_path):
        """Context files obey the size cap."""
        document = legacy(context_packs=[{"id": "a", "source": "big.md"}])
        (tmp_path / "big.md").write_text("x" * (len(json.dumps(document)) + 100), "utf-8")
        (tmp_path / "atlas.json").write_text(json.dumps(document), encoding="utf-8")
        with pytest.raises(AtlasError) as info:
            convert_legacy_atlas(tmp_path, max_bytes=len(json.dumps(document)) + 10)
        assert info.value.reason == "too_large"

    def test_context_file_read_error(self, tmp_path, monkeypatch):
        """An OS error reading a context file is an ATLAS_LOAD_ERROR naming the file."""
        (tmp_path / "a.md").write_text("x", encoding="utf-8")
        document = legacy(context_packs=[{"id": "a", "source": "a.md"}])
        (tmp_path / "atlas.json").write_text(json.dumps(document), encoding="utf-8")
        real_open = Path.open

        def failing_open(self: Path, *args: Any, **kwargs: Any) -> Any:
            if self.name == "a.md":
                raise PermissionError(13, "Permission denied")
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", failing_open)
        error = conversion_error(tmp_path)
        assert error.code == "ATLAS_LOAD_ERROR"
        assert "'a.md'" in str(error)


@pytest.fixture(scope="module")
def sink() -> AtlasConversion:
    """A legacy atlas exercising every approximation the converter makes."""
    document = {
        "atlas_version": "0.1",
        "$schema": "legacy",
        "metadata": {
            "id": "com.example.sink",
            "version": "2.1",
            "name": "N" * 120,
            "description": "D" * 1200,
            "authors": [
                "Ann <ann@example.com>",
                {"email": "bob@example.com"},
                {"name": "Cy", "url": "https://cy.example", "role": "dev"},
            ],
            "license": {"type": "custom"},
            "homepage": "https://example.com",
            "tags": ["x"],
        },
        "domains": ["ops", {"id": "ops_infra", "risk_tier": "critical", "owner": "me"}],
        "adapters": [
            {
                "platform": "claude",
                "tool_mappings": [
                    {"action_id": "deploy", "platform_tool_name": "claude_deploy"},
                    {"action_id": "ghost", "platform_tool_name": "ghost_tool"},
                ],
            },
            {"tool_mappings": [{"action_id": "scale", "platform_tool_name": "scale_x"}]},
        ],
        "actions": [
            {
                "id": "deploy",
                "type": "Ops.Deploy-Service_2",
                "domain": "ops_infra",
                "description": "Deploy a service to production",
                "schema": {"type": "object"},
                "examples": [{"name": "named", "parameters": {"a": 1}, "extra": True}],
                "idempotent": True,
                "timeout_seconds": 60,
                "returns_schema": {"type": "object"},
                "owner": "team",
            },
            {"id": "scale", "domain": "web", "risk_tier": "medium"},
            {"id": "status", "type": "ops.deploy.service2"},
            {
                "id": "9lives",
                "type": "9lives",
                "risk_tier": "low",
                "name": "Nine",
                "description": "Nine lives of a cat",
            },
        ],
        "context_packs": [
            {
                "id": "runbook",
                "name": "Runbook",
                "description": "How to operate",
                "source": ["context/a.md", "context/b.md"],
                "priority": 5000,
                "domain": "dbs",
            },
        ],
        "policies": [
            {
                "id": "main",
                "rules": [
                    {
                        "condition": {
                            "type": "domain",
                            "operator": "in",
                            "value": ["ops_infra"],
                        },
                        "effect": "deny",
                        "priority": 1,
                        "message": "No deploys",
                    },
                    {"id": "allow-all-ops", "effect": "allow", "priority": 100},
                    {
                        "id": "allow-all-ops",
                        "condition": {"type": "risk_tier", "operator": "neq", "value": "low"},
                        "effect": "rate_limit",
                        "parameters": {"max_calls": 3, "window_seconds": 60},
                    },
                    {
                        "id": "throttle",
                        "effect": "rate_limit",
                        "condition": {"type": "risk_tier", "operator": "eq", "value": "low"},
                    },
                    {
                        "id": "odd",
                        "effect": "allow",
                        "condition": {"type": "when", "operator": "eq", "value": "x"},
                    },
                    {
                        "id": "none",
                        "effect": "requires_approval",
                        "priority": 5,
                        "condition": {"type": "action_type", "operator": "eq", "value": "nope"},
                        "weight": 3,
                    },
                    {
                        "id": "not-web",
                        "effect": "allow",
                        "condition": {
                            "type": "domain",
                            "operator": "not_in",
                            "value": ["web"],
                            "negate": False,
                        },
                    },
                ],
            },
            {"id": "empty"},
        ],
        "dependencies": [
            "com.example.base",
            {"atlas_id": "com.example.util"},
            {"id": "com.example.core", "version": "^1.0.0", "optional": True},
        ],
    }
    return convert_legacy_atlas(document)


class TestApproximations:
    def test_identity_adjustments(self, sink):
        """Short versions are padded, long texts cut, authors and license normalised."""
        m = sink.manifest
        assert m["version"] == "2.1.0"
        assert len(m["name"]) == 100
        assert len(m["description"]) == 1000
        assert m["authors"] == [
            "Ann <ann@example.com>",
            "<bob@example.com>",
            "Cy (https://cy.example)",
        ]
        assert "license" not in m
        assert m["homepage"] == "https://example.com"
        notes = {(n.code, n.path) for n in sink.notes}
        assert {
            ("C004", "/metadata/version"),
            ("C004", "/metadata/name"),
            ("C004", "/metadata/description"),
            ("C003", "/metadata/license"),
            ("C003", "/metadata/license/type"),
            ("C003", "/metadata/tags"),
            ("C003", "/metadata/authors/2/role"),
            ("C003", "/$schema"),
        } <= notes

    def test_action_ids(self, sink):
        """Ids are lower-cased, split on - and _, digits join the previous segment."""
        ids = [a["action_id"] for a in sink.manifest["actions"]]
        assert ids == ["ops.deploy.service2", "web.scale", "ops.deploy.service22", "legacy.n9lives"]
        collision = notes_at(sink, "C004")["/actions/2/type"]
        assert "already taken" in collision.message
        assert "'web.scale'" in notes_at(sink, "C001")["/actions/1/id"].message

    def test_action_fields(self, sink):
        """Names and descriptions are derived when missing; 1.0 fields pass through."""
        deploy, scale, status, _ = sink.manifest["actions"]
        assert deploy["risk_tier"] == "critical"  # inherited from its domain
        assert deploy["idempotent"] is True
        assert deploy["timeout_seconds"] == 60
        assert deploy["returns_schema"] == {"type": "object"}
        assert deploy["executor"] == "claude_deploy"
        assert deploy["examples"] == [{"name": "named", "parameters": {"a": 1}}]
        assert scale["name"] == "Scale"
        assert scale["description"] == "Scale"
        assert scale["executor"] == "scale_x"
        assert status["risk_tier"] == "low"
        assert status["executor"] == "status"
        risk = notes_at(sink, "C004")
        assert "its domain 'ops_infra'" in risk["/actions/0/risk_tier"].message
        assert "the Atlas 1.0 default" in risk["/actions/2/risk_tier"].message
        assert "/actions/0/owner" in notes_at(sink, "C003")
        assert "/actions/0/examples/0/extra" in notes_at(sink, "C003")

    def test_domains_and_capabilities(self, sink):
        """Undeclared domains are added; domain ids are rewritten to capability ids."""
        m = sink.manifest
        assert m["domains"] == ["ops", "ops_infra", "web", "dbs"]
        caps = {c["capability_id"]: c for c in m["capabilities"]}
        assert list(caps) == ["ops.infra", "web", "dbs"]  # "ops" has nothing: no capability
        assert caps["ops.infra"]["name"] == "Ops Infra"
        assert caps["dbs"] == {"capability_id": "dbs", "name": "Dbs", "context_packs": ["runbook"]}
        assert "/domains/1" in notes_at(sink, "C001")
        assert "/domains/1/owner" in notes_at(sink, "C003")
        assert {"/actions/1/domain", "/context_packs/0/domain"} <= set(notes_at(sink, "C004"))

    def test_packs(self, sink):
        """Several sources become several files; priority is clamped to 0-1000."""
        (pack,) = sink.manifest["context_packs"]
        assert pack == {
            "pack_id": "runbook",
            "name": "Runbook",
            "description": "How to operate",
            "files": ["context/a.md", "context/b.md"],
            "priority": 1000,
        }
        assert "/context_packs/0/priority" in notes_at(sink, "C004")

    def test_policies(self, sink):
        """Rules convert or are noted; ids are made unique; empty selections are kept."""
        policies = {p["policy_id"]: p for p in sink.manifest["policies"]}
        assert list(policies) == [
            "main-rule-0",
            "allow-all-ops",
            "allow-all-ops2",
            "none",
            "not-web",
        ]
        assert policies["main-rule-0"]["actions"] == ["ops.deploy.service2"]
        assert policies["main-rule-0"]["parameters"] == {"reason": "No deploys"}
        assert policies["allow-all-ops"]["actions"] == [
            "ops.deploy.service2",
            "web.scale",
            "ops.deploy.service22",
            "legacy.n9lives",
        ]
        assert policies["allow-all-ops2"]["type"] == "rate_limit"
        assert policies["allow-all-ops2"]["parameters"] == {"max_calls": 3, "window_seconds": 60}
        assert policies["allow-all-ops2"]["actions"] == ["ops.deploy.service2", "web.scale"]
        assert policies["none"]["type"] == "require_approval"
        assert policies["none"]["actions"] == []
        assert policies["not-web"]["actions"] == [
            "ops.deploy.service2",
            "ops.deploy.service22",
            "legacy.n9lives",
        ]
        not_converted = notes_at(sink, "C005")
        assert "max_calls" in not_converted["/policies/0/rules/3/effect"].message
        assert "allow rule 'odd'" in not_converted["/policies/0/rules/4/condition"].message
        assert "has no rules" in not_converted["/policies/1"].message
        assert "/policies/0/rules/5/condition" in notes_at(sink, "C006")
        assert "/policies/0/rules/5/weight" in notes_at(sink, "C003")
        assert "/policies/0/rules/6/condition/negate" in notes_at(sink, "C003")
        assert "/policies/0/rules/1/condition" in notes_at(sink, "C004")
        assert "/policies/0/rules/0/id" in notes_at(sink, "C002")
        assert "taken" in notes_at(sink, "C004")["/policies/0/rules/2/id"].message
        assert sink.manifest["metadata"]["legacy"]["policy_sets"] == {
            "main": ["main-rule-0", "allow-all-ops", "allow-all-ops2", "none", "not-web"],
            "empty": [],
        }

    def test_decision_changes_are_noted(self, sink):
        """A deny that lost to a higher-priority allow under legacy rules is flagged."""
        changed = notes_at(sink, "C008")
        assert list(changed) == ["/actions/0"]
        assert "'main-rule-0' (deny) decides it now" in changed["/actions/0"].message

    def test_dependencies_and_leftovers(self, sink):
        """Dependency lists become a map; unknown tool mappings are dropped with a note."""
        assert sink.manifest["dependencies"] == {
            "com.example.base": "*",
            "com.example.util": "*",
            "com.example.core": "^1.0.0",
        }
        assert "/dependencies/2/optional" in notes_at(sink, "C003")
        assert "'ghost'" in notes_at(sink, "C004")["/adapters"].message
        assert sink.manifest["metadata"]["legacy"]["tool_names"] == {
            "claude": {"claude_deploy": "ops.deploy.service2"},
            "adapter1": {"scale_x": "web.scale"},
        }

    def test_still_valid(self, sink, tmp_path):
        """Even this conversion passes strict validation (missing files only warn)."""
        report = validate_atlas(sink.write(tmp_path / "sink"), strict=True)
        assert report.valid, report.errors
        assert {f.code for f in report.warnings} == {"W009"}

    def test_undecided_action_is_noted(self):
        """An action no rule selects is noted: the runtime default decides it."""
        document = legacy(policies=[])
        undecided = notes_at(convert_legacy_atlas(document), "C009")
        assert "default-allow" in undecided["/actions/0"].message

    def test_mapping_dependencies_and_string_license(self):
        """A dependency map and a plain-string license are kept as they are."""
        document = legacy(dependencies={"com.example.base": "^2.0.0"})
        document["metadata"]["license"] = "Apache-2.0"
        document["metadata"]["description"] = "A described atlas"
        converted = convert_legacy_atlas(document)
        assert converted.manifest["dependencies"] == {"com.example.base": "^2.0.0"}
        assert converted.manifest["license"] == "Apache-2.0"
        assert "metadata" in converted.manifest
        assert "keywords" not in converted.manifest["metadata"]

    def test_valid_type_is_kept_and_separators_collapse(self):
        """A type that is already a 1.0 id is kept silently; runs of separators collapse."""
        document = legacy()
        document["actions"][0]["type"] = "ops.restart"
        document["actions"].append({"id": "b", "type": "__Ops--stop__", "risk_tier": "low"})
        converted = convert_legacy_atlas(document)
        assert [a["action_id"] for a in converted.manifest["actions"]] == [
            "ops.restart",
            "ops.stop",
        ]
        assert list(notes_at(converted, "C001")) == ["/actions/1/type"]

    def test_minimal(self):
        """Identity alone converts: no domains, actions or policies, an empty example kept."""
        converted = convert_legacy_atlas(
            {"atlas_version": "0.1", "metadata": {"id": "com.example.bare", "version": "1.0.0"}}
        )
        assert set(converted.manifest) == {
            "atlas_version",
            "atlas_id",
            "version",
            "name",
            "description",
            "metadata",
        }
        assert validate_atlas(converted.manifest, strict=True).valid
        document = legacy()
        document["actions"][0]["examples"] = [{}]
        assert convert_legacy_atlas(document).manifest["actions"][0]["examples"] == [{}]

    def test_missing_name_and_context_file(self, tmp_path):
        """A missing name falls back to the id; a missing context file stays listed."""
        document = legacy(
            context_packs=[
                {"id": "a", "source": "context/a.md"},
                {"id": "b", "source": "context/a.md"},
            ]
        )
        del document["metadata"]["name"]
        (tmp_path / "atlas.json").write_text(json.dumps(document), encoding="utf-8")
        converted = convert_legacy_atlas(tmp_path)
        assert converted.manifest["name"] == "com.example.legacy"
        assert converted.files == {}
        assert "does not exist" in notes_at(converted, "C010")["/context_packs/0/source"].message
        assert converted.manifest["context_packs"][1]["files"] == ["context/a.md"]


class TestWrite:
    def test_refuses_non_empty_directory(self, conversion, tmp_path):
        """An existing non-empty directory is refused with what to do instead."""
        (tmp_path / "keep.txt").write_text("mine", encoding="utf-8")
        with pytest.raises(AtlasError) as info:
            conversion.write(tmp_path)
        assert info.value.reason == "output_exists"
        assert "--force" in str(info.value)
        assert not (tmp_path / "atlas.json").exists()

    def test_overwrite(self, conversion, tmp_path):
        """overwrite=True writes into it, replacing our files and keeping the others."""
        (tmp_path / "keep.txt").write_text("mine", encoding="utf-8")
        (tmp_path / "atlas.json").write_text("{}", encoding="utf-8")
        assert conversion.write(tmp_path, overwrite=True) == tmp_path
        assert load_atlas(tmp_path).atlas_id == "com.cra.github-ops"
        assert (tmp_path / "keep.txt").read_text(encoding="utf-8") == "mine"
        assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))

    def test_empty_existing_directory(self, conversion, tmp_path):
        """An existing empty directory is fine without overwrite."""
        assert conversion.write(os.fspath(tmp_path)) == tmp_path
        assert (tmp_path / "atlas.json").is_file()

    def test_output_is_a_file(self, conversion, tmp_path):
        """A file where the directory should go is refused, even with overwrite."""
        target = tmp_path / "file"
        target.write_text("x", encoding="utf-8")
        with pytest.raises(AtlasError) as info:
            conversion.write(target, overwrite=True)
        assert "not a directory" in str(info.value)

    def test_os_error(self, conversion, tmp_path):
        """A directory that cannot be created is an IO_ERROR that says what to check."""
        (tmp_path / "file").write_text("x", encoding="utf-8")
        with pytest.raises(AtlasError) as info:
            conversion.write(tmp_path / "file" / "sub")
        assert info.value.code == "IO_ERROR"
        assert "permissions" in str(info.value)

    @pytest.mark.parametrize("name", ["../evil.md", "/abs.md", "atlas.json", "C:/x.md"])
    def test_file_paths_stay_inside(self, tmp_path, name):
        """A hand-built conversion cannot write outside the output directory."""
        rogue = AtlasConversion({"atlas_version": "1.0"}, {name: b"x"})
        with pytest.raises(AtlasError):
            rogue.write(tmp_path / "out")
        assert not (tmp_path / "evil.md").exists()

    def test_planted_temporary_symlink(self, conversion, tmp_path):
        """A symlink where the temporary file goes is replaced, not written through."""
        out = tmp_path / "out"
        out.mkdir()
        victim = tmp_path / "victim.txt"
        victim.write_text("keep", encoding="utf-8")
        (out / ".atlas.json.tmp").symlink_to(victim)
        conversion.write(out, overwrite=True)
        assert victim.read_text(encoding="utf-8") == "keep"
        assert load_atlas(out).atlas_id == "com.cra.github-ops"

    def test_dict_input_is_not_shared(self):
        """Changing the input dict afterwards does not change the conversion."""
        document = legacy()
        document["actions"][0]["schema"] = {"type": "object", "properties": {}}
        converted = convert_legacy_atlas(document)
        document["actions"][0]["schema"]["properties"]["x"] = {}
        assert converted.manifest["actions"][0]["parameters_schema"]["properties"] == {}

    def test_symlinked_subdirectory_escape(self, tmp_path):
        """A symlink inside the output directory does not let a file escape it."""
        out = tmp_path / "out"
        out.mkdir()
        (out / "context").symlink_to(tmp_path)
        rogue = AtlasConversion({"atlas_version": "1.0"}, {"context/x.md": b"x"})
        with pytest.raises(AtlasError) as info:
            rogue.write(out, overwrite=True)
        assert info.value.reason == "path_escape"
        assert not (tmp_path / "x.md").exists()


_SEGMENT = st.from_regex(r"[a-z][a-z0-9_-]{0,6}", fullmatch=True)
_TYPE = st.lists(_SEGMENT, min_size=1, max_size=4).map(".".join)


@st.composite
def legacy_atlases(draw: st.DrawFn) -> dict[str, Any]:
    domains = draw(st.lists(_SEGMENT, min_size=1, max_size=3, unique=True))
    actions = [
        {
            "id": f"a{i}",
            "type": draw(_TYPE),
            "domain": draw(st.sampled_from(domains)),
            "risk_tier": draw(st.sampled_from(["low", "medium", "high", "critical"])),
            "schema": {"type": "object"},
        }
        for i in range(draw(st.integers(0, 5)))
    ]
    condition = st.one_of(
        st.builds(
            lambda v: {"type": "risk_tier", "operator": "in", "value": v},
            st.lists(st.sampled_from(["low", "medium", "high", "critical"]), max_size=3),
        ),
        st.builds(
            lambda v: {"type": "domain", "operator": "eq", "value": v}, st.sampled_from(domains)
        ),
        st.builds(
            lambda v: {"type": "action_type", "operator": "matches", "value": v},
            st.sampled_from(["^api", "\\.", "x$", ""]),
        ),
    )
    rules = [
        {
            "id": f"r{i}",
            "condition": draw(condition),
            "effect": draw(st.sampled_from(["allow", "deny", "require_approval"])),
            "priority": draw(st.integers(-5, 200)),
        }
        for i in range(draw(st.integers(0, 4)))
    ]
    return {
        "atlas_version": "0.1",
        "metadata": {"id": "com.example.generated", "name": "G", "version": "0.1.0"},
        "domains": [{"id": d, "risk_tier": "low"} for d in domains],
        "actions": actions,
        "policies": [{"id": "set", "rules": rules}],
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(legacy_atlases())
def test_generated_conversions_validate(document: dict[str, Any]) -> None:
    """Converting any small legacy atlas gives a manifest that validates strictly."""
    converted = convert_legacy_atlas(document)
    report = validate_atlas(converted.manifest, strict=True)
    assert report.valid, report.errors
