"""``lint_atlas``: is a valid atlas also a good, safe one?

:func:`~cra_agents.atlas.validate_atlas` answers "does it load and is it well formed"; lint
answers "does it do what its author most likely meant". An atlas that does not pass lenient
validation (what the runtime loads) gets its validation findings back and no lint findings, so
lint never fails on bad input. A valid atlas gets lint findings only: run ``validate_atlas`` for
the validation warnings (``W007`` unmatched pattern, ``W009`` missing file, ...).

Decisions are checked against the runtime's semantics (PROTOCOL_NOTES §4.3): phases deny →
require_approval → rate_limit → budget → allow → default, the first hit wins, within a phase
higher ``priority`` first, then manifest order; a policy without ``actions`` covers every
action; a deny or approval whose conditions hold stops evaluation; rate limits all apply and
still apply after an approval. A finding about decisions is only raised when it holds for every
request. A policy counts as *unconditional* when it has no conditions (or only conditions that
hold for every request: all four risk tiers, an ``agents`` glob of ``*``). Lint looks at one
atlas alone; policies of other atlases loaded beside it also apply at runtime.

========  ========  ==============================================================
code      severity  finding
========  ========  ==============================================================
L001      warning   action without ``parameters_schema``: arguments are not checked
L002      warning   ``parameters_schema`` accepts properties it does not list
L003      warning   high/critical action no deny or require_approval policy covers
L004      info      high/critical action gated only when some policy's conditions hold
L005      warning   action no deny, require_approval or allow policy covers: the
                    runtime default decides it
L006      warning   policy that can never decide: another policy always decides first
                    for every action it covers, or its conditions can never hold
L007      warning   policy that covers no declared action
L008      warning   capability without actions
L009      warning   context block or pack that can never be injected
L010      info      ``on_match`` block without ``keywords`` or usable ``inject_when``:
                    injected into every resolution
L011      warning   context pack ``inject_mode`` other than ``on_demand``/``always``:
                    packs follow ``conditions``, the mode is ignored
L012      warning   action description missing or shorter than 20 characters
L013      info      atlas, capability, context pack or policy description missing or
                    shorter than 20 characters
L014      info      deny or require_approval policy without a reason
L015      warning   ``parameters_schema`` pattern RE2 cannot run in linear time
                    (backreference, lookaround), or ``unevaluatedProperties`` beside
                    ``patternProperties``: every call of the action is refused
L016      warning   ``parameters_schema`` format no installed checker knows: any string
                    passes it
========  ========  ==============================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cra_agents._exceptions import AtlasError
from cra_agents._schema_rules import schema_problems
from cra_agents.atlas import (
    DEFAULT_MAX_BYTES,
    AtlasSource,
    Finding,
    Severity,
    ValidationReport,
    load_atlas,
    validate_atlas,
)
from cra_agents.policy import POLICY_PHASES, compile_globs
from cra_agents.protocol import Action, AtlasManifest, Conditions, Policy

__all__ = ["lint_atlas"]

_TIERS = frozenset({"low", "medium", "high", "critical"})
_HIGH = frozenset({"high", "critical"})
_MIN_DESCRIPTION = 20
_ORDER = {"error": 0, "warning": 1, "info": 2}


def _impossible(conditions: Conditions | None) -> str | None:
    """Why ``conditions`` can never hold (an empty list matches nothing), if they cannot."""
    if conditions is None:
        return None
    for key in ("risk_tiers", "agents", "capabilities"):
        if getattr(conditions, key) == []:
            return f"conditions.{key} is an empty list, which no request matches"
    return None


def _unconditional(policy: Policy) -> bool:
    """Whether the policy's conditions hold for every request."""
    c = policy.conditions
    if c is None:
        return True
    return (
        (c.risk_tiers is None or set(c.risk_tiers) >= _TIERS)
        and (c.agents is None or any(set(pattern) == {"*"} for pattern in c.agents))
        and c.capabilities is None
        and not c.context_matches
        and c.time_window is None
    )


def _path_key(path: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key of a JSON pointer with array indexes in numeric order (``/actions/2`` < ``/10``)."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in path.split("/"))


def _names(items: list[str]) -> str:
    shown = ", ".join(repr(item) for item in items[:5])
    return shown + (f" and {len(items) - 5} more" if len(items) > 5 else "")


class _Linter:
    def __init__(self, manifest: AtlasManifest) -> None:
        self.manifest = manifest
        self.findings: list[Finding] = []
        self.declared = [action.action_id for action in manifest.actions]
        # Policies in evaluation order, each with its index and the declared actions it covers.
        ranked = sorted(
            enumerate(manifest.policies),
            key=lambda item: (POLICY_PHASES[item[1].type], -item[1].priority, item[0]),
        )
        self.ranked = [(index, policy, self._covered(policy.patterns)) for index, policy in ranked]

    def _covered(self, patterns: list[str]) -> list[str]:
        matches = compile_globs(patterns)  # the engine's own glob rule
        return [a for a in self.declared if matches(a)]

    def add(self, code: str, severity: Severity, path: str, message: str) -> None:
        self.findings.append(Finding(code, severity, path, message))

    def covering(self, action_id: str, kinds: tuple[str, ...]) -> list[Policy]:
        return [
            policy
            for _, policy, covered in self.ranked
            if policy.type in kinds and action_id in covered
        ]

    def run(self) -> list[Finding]:
        for index, action in enumerate(self.manifest.actions):
            self.action(index, action)
        self.policies()
        self.capabilities()
        self.context()
        self.descriptions()
        self.findings.sort(key=lambda f: (_ORDER[f.severity], _path_key(f.path), f.code))
        return self.findings

    # -- actions ----------------------------------------------------------------------------

    def action(self, index: int, action: Action) -> None:
        where = f"/actions/{index}"
        name = action.action_id
        schema = action.parameters_schema
        if schema is None:
            self.add(
                "L001",
                "warning",
                f"{where}/parameters_schema",
                f"action {name!r} has no parameters_schema, so any arguments reach it; add one "
                '(type object, properties, required, "additionalProperties": false)',
            )
        elif schema.get("additionalProperties") is not False and (
            schema.get("unevaluatedProperties") is not False
        ):
            self.add(
                "L002",
                "warning",
                f"{where}/parameters_schema",
                f"the parameters_schema of {name!r} accepts arguments it does not list; add "
                '"additionalProperties": false so unexpected arguments are refused',
            )
        if schema is not None:
            self.schema(where, name, schema)
        restricting = self.covering(name, ("deny", "require_approval"))
        if action.risk_tier in _HIGH and not restricting:
            self.add(
                "L003",
                "warning",
                f"{where}/risk_tier",
                f"{action.risk_tier}-risk action {name!r} is covered by no deny or "
                "require_approval policy, so an agent runs it without a person; add a "
                "require_approval policy naming it (requires_confirmation is only advice to "
                "the agent)",
            )
        elif action.risk_tier in _HIGH and not any(_unconditional(p) for p in restricting):
            self.add(
                "L004",
                "info",
                f"{where}/risk_tier",
                f"{action.risk_tier}-risk action {name!r} is gated only when the conditions of "
                f"{_names([p.policy_id for p in restricting])} hold; for other requests it runs "
                "without a person. Add an unconditional require_approval policy unless that "
                "is intended",
            )
        if not self.covering(name, ("deny", "require_approval", "allow")):
            self.add(
                "L005",
                "warning",
                where,
                f"no deny, require_approval or allow policy covers action {name!r}: the runtime "
                "default decides it (allowed as default-allow, denied under default_deny); add "
                "an allow policy (or a deny) that names it",
            )
        if len(action.description.strip()) < _MIN_DESCRIPTION:
            self.add(
                "L012",
                "warning",
                f"{where}/description",
                f"action {name!r} has {'a very short' if action.description.strip() else 'no'} "
                "description; agents choose actions by it, so say what it does and what it "
                "changes",
            )

    def schema(self, where: str, name: str, schema: Mapping[str, Any]) -> None:
        import jsonschema

        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        known = frozenset(cls.FORMAT_CHECKER.checkers)
        for problem in schema_problems(schema, known):
            hint = (
                "; calls of this action are refused until it is rewritten for RE2 (no "
                "backreferences or lookaround)"
                if problem.code == "L015"
                else f"; use one of {', '.join(sorted(known))}, or a pattern"
            )
            self.add(
                problem.code,
                "warning",
                f"{where}/parameters_schema{problem.path}",
                f"in the parameters_schema of {name!r}: {problem.message}{hint}",
            )

    # -- policies ---------------------------------------------------------------------------

    def shadowed_by(self, position: int, action_id: str) -> Policy | None:
        """The unconditional policy that always decides ``action_id`` before ranked[position]."""
        _, policy, _ = self.ranked[position]
        phase = POLICY_PHASES[policy.type]
        for _, earlier, covered in self.ranked[:position]:
            if action_id not in covered or not _unconditional(earlier):
                continue
            if earlier.type == "deny":
                return earlier  # a deny that always holds ends every evaluation
            # Within the approval and allow phases the first applicable policy decides. Rate
            # limits all apply (even after an approval), so only a deny shadows them.
            if earlier.type == policy.type and phase in (1, 4):
                return earlier
        return None

    def policies(self) -> None:
        for position, (index, policy, covered) in enumerate(self.ranked):
            where = f"/policies/{index}"
            name = policy.policy_id
            if self.declared and not covered:
                self.add(
                    "L007",
                    "warning",
                    f"{where}/actions",
                    f"policy {name!r} covers no action this atlas declares; fix its actions "
                    "patterns, or ignore this if it guards the actions of another atlas",
                )
            impossible = _impossible(policy.conditions)
            if impossible is not None:
                self.add(
                    "L006",
                    "warning",
                    f"{where}/conditions",
                    f"policy {name!r} never applies: {impossible}; remove the empty list (or "
                    "the policy)",
                )
            elif covered and policy.type in ("deny", "require_approval", "rate_limit", "allow"):
                winners = [self.shadowed_by(position, action_id) for action_id in covered]
                if all(winner is not None for winner in winners):
                    ids = sorted({w.policy_id for w in winners if w is not None})
                    self.add(
                        "L006",
                        "warning",
                        where,
                        f"policy {name!r} never decides: for every action it covers, "
                        f"{_names(ids)} always decides first (phases run deny, "
                        "require_approval, rate_limit, allow; higher priority first). Remove "
                        "it, or narrow the policy that wins",
                    )
            if policy.type in ("deny", "require_approval") and policy.denial_reason is None:
                self.add(
                    "L014",
                    "info",
                    f"{where}/parameters",
                    f"{policy.type} policy {name!r} gives no reason, so agents and approvers see "
                    'a generic one; add "parameters": {"reason": "..."}',
                )

    # -- capabilities and context -------------------------------------------------------------

    def capabilities(self) -> None:
        for index, capability in enumerate(self.manifest.capabilities):
            if not capability.actions:
                self.add(
                    "L008",
                    "warning",
                    f"/capabilities/{index}/actions",
                    f"capability {capability.capability_id!r} has no actions, so requesting it "
                    "grants nothing; list its actions or remove it",
                )

    def context(self) -> None:
        for index, block in enumerate(self.manifest.context_blocks):
            where = f"/context_blocks/{index}"
            name = block.context_id
            # The runtime matches inject_when entries by their dot-separated parts of 3+ chars.
            parts = [p for entry in block.inject_when for p in entry.split(".") if len(p) > 2]
            if block.inject_mode == "risk_based" and not block.risk_tiers:
                self.add(
                    "L009",
                    "warning",
                    f"{where}/risk_tiers",
                    f"risk_based block {name!r} has no risk_tiers, so it is never injected; "
                    "list the risk tiers it is for",
                )
            elif block.inject_mode == "on_match" and not block.keywords and not parts:
                self.add(
                    "L010",
                    "info",
                    where,
                    f"on_match block {name!r} has no keywords or inject_when (of parts longer "
                    "than 2 characters), so it is injected into every resolution; set "
                    '"inject_mode": "always" to say so, or add keywords',
                )
        for index, pack in enumerate(self.manifest.context_packs):
            where = f"/context_packs/{index}"
            impossible = _impossible(pack.conditions)
            if impossible is not None:
                self.add(
                    "L009",
                    "warning",
                    f"{where}/conditions",
                    f"context pack {pack.pack_id!r} is never injected: {impossible}",
                )
            if pack.inject_mode in ("on_match", "risk_based"):
                self.add(
                    "L011",
                    "warning",
                    f"{where}/inject_mode",
                    f"context pack {pack.pack_id!r} has inject_mode {pack.inject_mode!r}, which "
                    "file packs ignore: they follow their conditions (none: every "
                    "resolution). Use conditions (e.g. risk_tiers) instead",
                )

    def descriptions(self) -> None:
        manifest = self.manifest
        described: list[tuple[str, str, str | None]] = [
            ("", f"atlas {manifest.atlas_id!r}", manifest.description)
        ]
        described += [
            (f"/capabilities/{i}", f"capability {c.capability_id!r}", c.description)
            for i, c in enumerate(manifest.capabilities)
        ]
        described += [
            (f"/context_packs/{i}", f"context pack {p.pack_id!r}", p.description)
            for i, p in enumerate(manifest.context_packs)
        ]
        described += [
            (f"/policies/{i}", f"policy {p.policy_id!r}", p.description)
            for i, p in enumerate(manifest.policies)
        ]
        for where, what, text in described:
            stripped = (text or "").strip()
            if len(stripped) < _MIN_DESCRIPTION:
                self.add(
                    "L013",
                    "info",
                    f"{where}/description",
                    f"{what} has {'a very short' if stripped else 'no'} description; say what "
                    "it is for",
                )


def lint_atlas(source: AtlasSource, *, max_bytes: int = DEFAULT_MAX_BYTES) -> ValidationReport:
    """Find unsafe or weak spots in an atlas (see the module docstring for the codes).

    Args:
        source: What :func:`~cra_agents.atlas.load_atlas` accepts.
        max_bytes: Size cap of the manifest and of each context file.

    Returns:
        A :class:`~cra_agents.atlas.ValidationReport` (``strict`` is false). For an atlas that
        does not pass lenient validation, its validation findings (``valid`` is false);
        otherwise the lint findings, all warnings or infos, so ``valid`` is true.

    Example:
        >>> report = lint_atlas(cra_agents.examples.atlas_path("github-ops"))  # doctest: +SKIP
        >>> [f.code for f in report.warnings]  # doctest: +SKIP
        ['L005']
    """
    try:
        atlas = load_atlas(source, max_bytes=max_bytes)
    except AtlasError as exc:
        report = validate_atlas(source, strict=False, max_bytes=max_bytes)
        if report.valid:
            # The loader refused something validation does not look at: report the refusal.
            refusal = Finding("E000", "error", exc.path, str(exc))
            return ValidationReport(report.source, False, [refusal, *report.findings])
        return report
    report = validate_atlas(atlas, strict=False, max_bytes=max_bytes)
    if not report.valid:
        return report
    return ValidationReport(atlas.source, False, _Linter(atlas.manifest).run())
