"""``cra atlas validate|lint|init|convert|show``."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from cra_agents.cli._output import CLIError, Output
from cra_agents.cli._output import esc as _esc

__all__ = ["convert", "init", "lint", "show", "validate"]

_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def _report_findings(out: Output, reports: list[Any], verb: str, fail_on: str) -> int:
    """Print validation or lint reports; the exit code for ``fail_on``."""
    threshold = _SEVERITY_ORDER[fail_on]
    failed = any(
        _SEVERITY_ORDER[f.severity] <= threshold for report in reports for f in report.findings
    )
    if out.json_mode:
        out.json(
            {
                "valid": all(r.valid for r in reports),
                "passed": not failed,
                "atlases": [r.as_dict() for r in reports],
            }
        )
        return 1 if failed else 0
    for report in reports:
        errors, warnings = len(report.errors), len(report.warnings)
        infos = len(report.findings) - errors - warnings
        status = "invalid" if errors else ("warning" if warnings else "valid")
        word = "INVALID" if errors else "VALID" if verb == "validate" else "OK"
        out.print(
            f"{out.styled(status, word)}  {_esc(report.source)}  "
            f"[dim]({errors} errors, {warnings} warnings, {infos} notes)[/]"
        )
        if report.findings:
            out.print(
                out.table(
                    ["severity", "code", "path", "message"],
                    [
                        (out.styled(f.severity), f.code, _esc(f.path or "/"), _esc(f.message))
                        for f in report.findings
                    ],
                    markup=True,
                )
            )
    if failed and verb == "lint" and fail_on == "warning":
        out.print("[dim]exit 1: warnings fail with --fail-on warning[/]")
    return 1 if failed else 0


def validate(args: argparse.Namespace, out: Output) -> int:
    """Validate atlases; exit 1 when any has an error."""
    from cra_agents.atlas import validate_atlas

    reports = []
    with out.progress("validating", len(args.paths)) as advance:
        for path in args.paths:
            _require_exists(path)
            reports.append(validate_atlas(path, strict=args.strict))
            advance(1)
    return _report_findings(out, reports, "validate", "error")


def lint(args: argparse.Namespace, out: Output) -> int:
    """Lint atlases; exit 1 on errors (or warnings with ``--fail-on warning``)."""
    from cra_agents.tools import lint_atlas

    reports = []
    with out.progress("linting", len(args.paths)) as advance:
        for path in args.paths:
            _require_exists(path)
            reports.append(lint_atlas(path))
            advance(1)
    return _report_findings(out, reports, "lint", args.fail_on)


def _require_exists(path: str) -> None:
    if "://" not in path and not Path(path).exists():
        raise CLIError(
            "atlas_not_found",
            f"there is no atlas at {path}",
            "pass an atlas directory (with atlas.json) or a manifest file; "
            "'cra atlas init NAME' makes one",
        )


# -- init ---------------------------------------------------------------------------------------

_GUIDE = """\
# {name}: how to work here

This file is a context pack: the runtime injects it into resolutions that need it.
Write here what an agent must know before acting: conventions, limits, who approves what.
"""


def _scaffold(name: str, atlas_id: str) -> dict[str, Any]:
    title = name.replace("-", " ").replace("_", " ").strip().title() or "My Atlas"
    slug = re.sub(r"[^a-z0-9]", "", name.lower()) or "tool"
    prefix = f"{slug}.note"
    return {
        "atlas_version": "1.0",
        "atlas_id": atlas_id,
        "version": "0.1.0",
        "name": title[:100],
        "description": f"{title}: actions, policies and context for a governed agent. "
        "Edit this description: say what agents may do with this atlas.",
        "authors": ["Edit me: the team that owns this atlas"],
        "license": "Apache-2.0",
        "domains": [slug],
        "capabilities": [
            {
                "capability_id": f"{slug}.notes",
                "name": "Notes",
                "description": "Read and write notes.",
                "actions": [f"{prefix}.read", f"{prefix}.write", f"{prefix}.delete"],
                "context_packs": ["guide"],
            }
        ],
        "context_packs": [
            {
                "pack_id": "guide",
                "name": f"{title} Guide",
                "description": "What an agent must know before acting.",
                "files": ["context/guide.md"],
                "priority": 500,
            }
        ],
        "policies": [
            {
                "policy_id": "deny-delete",
                "type": "deny",
                "name": "Deletion is never automated",
                "description": "Deleting a note loses it for good: only a person does it.",
                "actions": [f"{prefix}.delete"],
                "parameters": {"reason": "Deleting notes needs a person"},
            },
            {
                "policy_id": "approve-write",
                "type": "require_approval",
                "name": "Writes need approval",
                "description": "A person reads every write before it is made.",
                "actions": [f"{prefix}.write"],
                "parameters": {"reason": "A person approves every write"},
            },
            {
                "policy_id": "limit-read",
                "type": "rate_limit",
                "name": "Read rate limit",
                "description": "At most 60 reads a minute, against runaway loops.",
                "actions": [f"{prefix}.read"],
                "parameters": {"max_calls": 60, "window_seconds": 60},
            },
            {
                "policy_id": "allow-read",
                "type": "allow",
                "name": "Reading is allowed",
                "description": "Reading notes changes nothing: agents may do it.",
                "actions": [f"{prefix}.read"],
            },
        ],
        "actions": [
            {
                "action_id": f"{prefix}.read",
                "name": "Read a note",
                "description": "Read one note by its id.",
                "risk_tier": "low",
                "idempotent": True,
                "parameters_schema": {
                    "type": "object",
                    "properties": {"note_id": {"type": "string", "minLength": 1}},
                    "required": ["note_id"],
                    "additionalProperties": False,
                },
            },
            {
                "action_id": f"{prefix}.write",
                "name": "Write a note",
                "description": "Create or replace a note.",
                "risk_tier": "medium",
                "parameters_schema": {
                    "type": "object",
                    "properties": {
                        "note_id": {"type": "string", "minLength": 1},
                        "text": {"type": "string", "maxLength": 10000},
                    },
                    "required": ["note_id", "text"],
                    "additionalProperties": False,
                },
            },
            {
                "action_id": f"{prefix}.delete",
                "name": "Delete a note",
                "description": "Delete a note for good.",
                "risk_tier": "high",
                "parameters_schema": {
                    "type": "object",
                    "properties": {"note_id": {"type": "string", "minLength": 1}},
                    "required": ["note_id"],
                    "additionalProperties": False,
                },
            },
        ],
    }


def _copy_example(example: str, directory: Path) -> list[str]:
    from cra_agents.examples import atlas_names, copy_atlas

    if example not in atlas_names():
        raise CLIError(
            "unknown_example",
            f"there is no example atlas {example!r}",
            f"choose one of: {', '.join(atlas_names())}",
        )
    copy_atlas(example, directory, overwrite=True)
    return sorted(str(p) for p in directory.rglob("*") if p.is_file())


def init(args: argparse.Namespace, out: Output) -> int:
    """Write a valid atlas directory to start from."""
    from cra_agents.atlas import validate_atlas

    directory = Path(args.name)
    name = directory.resolve().name
    slug = re.sub(r"[^a-z0-9-]", "", name.lower().replace("_", "-")).strip("-") or "atlas"
    atlas_id = args.atlas_id or f"local.{slug}"
    if not re.fullmatch(r"[a-z][a-z0-9]*(\.[a-z][a-z0-9-]*)+", atlas_id):
        raise CLIError(
            "bad_atlas_id",
            f"{atlas_id!r} is not an atlas id",
            "use reverse-DNS form in lower case, e.g. --id com.example.notes",
        )
    manifest = directory / "atlas.json"
    if manifest.exists() and not args.force:
        raise CLIError(
            "exists",
            f"{manifest} already exists",
            "choose another NAME, or pass --force to overwrite the scaffold files",
        )
    if args.example is not None:
        if args.atlas_id:
            raise CLIError(
                "usage",
                "--id names a new scaffold; an example keeps its own atlas id",
                "drop --id, or edit atlas_id in the copied atlas.json",
            )
        files = _copy_example(args.example, directory)
        atlas_id = json.loads(manifest.read_text("utf-8"))["atlas_id"]
    else:
        document = _scaffold(name, atlas_id)
        (directory / "context").mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", "utf-8")
        guide = directory / "context" / "guide.md"
        guide.write_text(_GUIDE.format(name=document["name"]), "utf-8")
        files = [str(manifest), str(guide)]
    report = validate_atlas(directory, strict=True)
    if not report.valid:  # pragma: no cover - the scaffold and examples are tested to validate
        raise CLIError("internal", f"the atlas does not validate: {report.errors}", "report it")
    if out.json_mode:
        out.json({"atlas_id": atlas_id, "directory": str(directory), "files": files})
        return 0
    out.print(f"[green]created[/] {_esc(str(directory))} ({_esc(atlas_id)})")
    for file in files:
        out.line(f"  {file}")
    out.line(
        f"next: edit {manifest}, then 'cra atlas validate --strict {directory}' and "
        f"'cra atlas lint {directory}'"
    )
    return 0


# -- convert ------------------------------------------------------------------------------------


def convert(args: argparse.Namespace, out: Output) -> int:
    """Convert legacy 0.1 atlases to Atlas 1.0 directories."""
    from cra_agents._exceptions import AtlasError
    from cra_agents.atlas import validate_atlas
    from cra_agents.tools import convert_legacy_atlas

    if args.output and len(args.paths) > 1:
        raise CLIError(
            "usage",
            "-o/--output names one directory, but several atlases were given",
            "convert one atlas per call with -o, or omit -o to write PATH-1.0 beside each",
        )
    results: list[dict[str, Any]] = []
    failed = False
    with out.progress("converting", len(args.paths)) as advance:
        for path in args.paths:
            _require_exists(path)
            if "://" in path and not args.output:
                raise CLIError(
                    "usage",
                    f"{path} is a URL: there is no directory beside it to write to",
                    "pass -o DIR for the converted atlas",
                )
            source = Path(path).resolve() if "://" not in path else None
            if source is not None:
                base = source if source.is_dir() else source.parent
                target = Path(args.output) if args.output else base.with_name(base.name + "-1.0")
            else:
                target = Path(args.output)
            try:
                conversion = convert_legacy_atlas(source if source is not None else path)
                written = conversion.write(target, overwrite=args.force)
            except AtlasError as exc:
                failed = True
                results.append({"source": path, "error": str(exc)})
                out.warn(f"{path}: {exc}")
                advance(1)
                continue
            report = validate_atlas(written, strict=True)
            failed = failed or not report.valid
            results.append(
                {
                    "source": path,
                    "output": str(written),
                    "valid": report.valid,
                    "notes": [n.as_dict() for n in conversion.notes],
                    "validation": report.as_dict(),
                }
            )
            advance(1)
            if not out.json_mode:
                word = "valid" if report.valid else "invalid"
                out.print(
                    f"{out.styled(word, 'converted')} {_esc(path)} → {_esc(str(written))} "
                    f"[dim](Atlas 1.0, strict validation: {word}, "
                    f"{len(conversion.notes)} notes)[/]"
                )
                if conversion.notes:
                    out.print(
                        out.table(
                            ["severity", "code", "path", "note"],
                            [
                                (out.styled(n.severity), n.code, _esc(n.path), _esc(n.message))
                                for n in conversion.notes
                            ],
                            markup=True,
                        )
                    )
                for finding in report.errors:
                    out.line(f"  {finding.code} {finding.path}: {finding.message}")
    if out.json_mode:
        out.json({"converted": results, "passed": not failed})
    elif failed:
        out.line("some atlases were not converted or do not validate; see above")
    return 1 if failed else 0


# -- show ---------------------------------------------------------------------------------------


def show(args: argparse.Namespace, out: Output) -> int:
    """Summarise one atlas: identity, actions with their default decision, policies, context."""
    from cra_agents.atlas import load_atlas
    from cra_agents.policy import ConditionContext, PolicyEngine

    _require_exists(args.path)
    atlas = load_atlas(args.path)
    manifest = atlas.manifest
    engine = PolicyEngine([atlas])
    decisions = {}
    for action in manifest.actions:
        decision = engine.decide(
            action.action_id,
            ConditionContext(agent_id="*", risk_tier=action.risk_tier),
            check_rates=False,
        )
        decisions[action.action_id] = decision
    if out.json_mode:
        out.json(
            {
                "atlas_id": atlas.atlas_id,
                "version": atlas.version,
                "name": manifest.name,
                "digest": atlas.digest,
                "source": atlas.source,
                "actions": [
                    {
                        "action_id": a.action_id,
                        "risk_tier": a.risk_tier,
                        "decision": decisions[a.action_id].result,
                        "policy_id": decisions[a.action_id].policy_id,
                    }
                    for a in manifest.actions
                ],
                "policies": [
                    p.model_dump(mode="json", exclude_none=True) for p in manifest.policies
                ],
                "capabilities": [c.capability_id for c in manifest.capabilities],
                "context_packs": [p.pack_id for p in manifest.context_packs],
                "context_blocks": [b.context_id for b in manifest.context_blocks],
                "missing_files": list(atlas.missing_files),
            }
        )
        return 0
    out.print(f"[bold]{_esc(manifest.name)}[/]  {_esc(atlas.atlas_id)} {_esc(atlas.version)}")
    out.print(f"[dim]{_esc(atlas.digest)}  {_esc(atlas.source)}[/]")
    out.line(manifest.description)
    out.line()
    out.print(
        out.table(
            ["action", "risk", "decision", "policy", "reason"],
            [
                (
                    _esc(a.action_id),
                    _esc(a.risk_tier),
                    out.styled(decisions[a.action_id].result),
                    _esc(decisions[a.action_id].policy_id or ""),
                    _esc(decisions[a.action_id].reason or ""),
                )
                for a in manifest.actions
            ],
            title=f"actions ({len(manifest.actions)}; decision for any agent, before rate limits)",
            markup=True,
        )
    )
    out.print(
        out.table(
            ["policy", "type", "priority", "actions", "reason"],
            [
                (
                    _esc(p.policy_id),
                    out.styled(p.type),
                    str(p.priority),
                    _esc(", ".join(p.patterns)),
                    _esc(p.denial_reason or ""),
                )
                for p in manifest.policies
            ],
            title=f"policies ({len(manifest.policies)})",
            markup=True,
        )
    )
    context = [
        (p.pack_id, "pack", str(p.priority), ", ".join(p.files)) for p in manifest.context_packs
    ] + [(b.context_id, "block", str(b.priority), b.inject_mode) for b in manifest.context_blocks]
    if context:
        out.print(out.table(["context", "kind", "priority", "files / injection"], context))
    if atlas.missing_files:
        out.warn(f"missing context files (skipped): {', '.join(atlas.missing_files)}")
    return 0
