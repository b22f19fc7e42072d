"""``validate_atlas``: schema validation plus semantic checks, as structured findings.

Codes follow the upstream Rust validator where it has one (``E005`` duplicate action id, ...)
and continue its numbering for checks it lacks. Errors make an atlas invalid; warnings and
infos do not.

========  ========  ==============================================================
code      severity  finding
========  ========  ==============================================================
E000      error     the document cannot be read or parsed (or its digest pin fails)
E100      error     schema violation (strict: Atlas 1.0 + ``context_blocks``)
E005      error     duplicate ``action_id``
E007      error     duplicate ``policy_id``
E008      warning   policy without ``actions``: it applies to every action
E009      error     rate_limit policy without ``parameters.max_calls`` (≥ 1)
E010      error     rate_limit policy without ``parameters.window_seconds`` (≥ 1)
E011      error     rate_limit policy without ``parameters``
E012      error     capability names an action the atlas does not declare
E013      error     duplicate ``capability_id``
E014      error     duplicate ``pack_id`` or ``context_id``
E015      error     capability names a context pack the atlas does not declare
W006      warning   context pack without files
W007      warning   policy pattern matches no declared action
W008      warning   ``budget`` / ``scope`` policy: accepted, not enforced yet
W009      warning   context pack file does not exist (it is skipped)
W010      warning   ``also_inject`` names an unknown context block
I001      info      no ``license``
I003      info      no ``authors``
========  ========  ==============================================================
"""

from __future__ import annotations

import fnmatch
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from cra_agents._canonical import canonical_json
from cra_agents._exceptions import AtlasError, TraceError
from cra_agents.atlas._load import (
    DEFAULT_MAX_BYTES,
    AtlasSource,
    _read_context,
    json_pointer,
    read_document,
)
from cra_agents.atlas._model import Atlas

if TYPE_CHECKING:
    from cra_agents.protocol import AtlasManifest  # imported where used: see _load.py

__all__ = ["Finding", "Severity", "ValidationReport", "validate_atlas"]

#: How bad a :class:`Finding` is.
Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found in an atlas."""

    code: str
    severity: Severity
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """JSON form."""
        return {
            "code": self.code,
            "severity": self.severity,
            "path": self.path,
            "message": self.message,
        }


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of :func:`validate_atlas`."""

    source: str
    strict: bool
    findings: list[Finding] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """True when no finding is an error."""
        return not self.errors

    @property
    def errors(self) -> list[Finding]:
        """Findings of severity ``error``."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """Findings of severity ``warning``."""
        return [f for f in self.findings if f.severity == "warning"]

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "source": self.source,
            "strict": self.strict,
            "valid": self.valid,
            "findings": [f.as_dict() for f in self.findings],
        }


def _schema_findings(document: Mapping[str, Any]) -> list[Finding]:
    import jsonschema

    from cra_agents.protocol import bundled_schema

    validator = jsonschema.Draft202012Validator(bundled_schema("atlas-manifest.strict"))
    found = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
        found.append(Finding("E100", "error", json_pointer(error.absolute_path), error.message))
    return found


def _duplicates(values: list[str]) -> set[str]:
    return {value for value, count in Counter(values).items() if count > 1}


def _semantic(manifest: AtlasManifest) -> list[Finding]:
    found: list[Finding] = []
    add = found.append
    action_ids = [a.action_id for a in manifest.actions]
    for dup in sorted(_duplicates(action_ids)):
        index = action_ids.index(dup, action_ids.index(dup) + 1)
        add(
            Finding(
                "E005",
                "error",
                f"/actions/{index}/action_id",
                f"action_id {dup!r} is declared more than once",
            )
        )
    policy_ids = [p.policy_id for p in manifest.policies]
    for dup in sorted(_duplicates(policy_ids)):
        index = policy_ids.index(dup, policy_ids.index(dup) + 1)
        add(
            Finding(
                "E007",
                "error",
                f"/policies/{index}/policy_id",
                f"policy_id {dup!r} is declared more than once",
            )
        )
    cap_ids = [c.capability_id for c in manifest.capabilities]
    for dup in sorted(_duplicates(cap_ids)):
        add(
            Finding(
                "E013",
                "error",
                "/capabilities",
                f"capability_id {dup!r} is declared more than once",
            )
        )
    pack_ids = [p.pack_id for p in manifest.context_packs]
    block_ids = [b.context_id for b in manifest.context_blocks]
    for dup in sorted(_duplicates(pack_ids + block_ids)):
        add(
            Finding(
                "E014",
                "error",
                "/context_packs",
                f"context id {dup!r} is used by more than one pack or block",
            )
        )
    declared = set(action_ids)
    for c_index, capability in enumerate(manifest.capabilities):
        for a_index, action_id in enumerate(capability.actions):
            if action_id not in declared:
                add(
                    Finding(
                        "E012",
                        "error",
                        f"/capabilities/{c_index}/actions/{a_index}",
                        f"capability {capability.capability_id!r} names unknown action "
                        f"{action_id!r}",
                    )
                )
        for p_index, pack_id in enumerate(capability.context_packs):
            if pack_id not in pack_ids:
                add(
                    Finding(
                        "E015",
                        "error",
                        f"/capabilities/{c_index}/context_packs/{p_index}",
                        f"capability {capability.capability_id!r} names unknown context "
                        f"pack {pack_id!r}",
                    )
                )
    for p_index, policy in enumerate(manifest.policies):
        where = f"/policies/{p_index}"
        if policy.actions is None:
            add(
                Finding(
                    "E008",
                    "warning",
                    where,
                    f"policy {policy.policy_id!r} has no actions: it applies to every action",
                )
            )
        else:
            for k, pattern in enumerate(policy.actions):
                if not any(fnmatch.fnmatchcase(a, pattern) for a in declared):
                    add(
                        Finding(
                            "W007",
                            "warning",
                            f"{where}/actions/{k}",
                            f"pattern {pattern!r} of policy {policy.policy_id!r} matches no "
                            "declared action",
                        )
                    )
        if policy.type == "rate_limit":
            params = policy.parameters
            if not params:
                add(
                    Finding(
                        "E011",
                        "error",
                        where,
                        f"rate_limit policy {policy.policy_id!r} has no parameters "
                        "(needs max_calls and window_seconds)",
                    )
                )
            else:
                for key, code in (("max_calls", "E009"), ("window_seconds", "E010")):
                    value = params.get(key)
                    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                        add(
                            Finding(
                                code,
                                "error",
                                f"{where}/parameters/{key}",
                                f"rate_limit policy {policy.policy_id!r} needs an integer "
                                f"{key} of at least 1",
                            )
                        )
        if policy.type in ("budget", "scope"):
            add(
                Finding(
                    "W008",
                    "warning",
                    f"{where}/type",
                    f"{policy.type} policy {policy.policy_id!r} is accepted but not enforced",
                )
            )
    for p_index, pack in enumerate(manifest.context_packs):
        if not pack.files:
            add(
                Finding(
                    "W006",
                    "warning",
                    f"/context_packs/{p_index}/files",
                    f"context pack {pack.pack_id!r} has no files",
                )
            )
    known_blocks = set(block_ids) | set(pack_ids)
    for b_index, block in enumerate(manifest.context_blocks):
        for k, other in enumerate(block.also_inject):
            if other not in known_blocks:
                add(
                    Finding(
                        "W010",
                        "warning",
                        f"/context_blocks/{b_index}/also_inject/{k}",
                        f"context block {block.context_id!r} also injects unknown {other!r}",
                    )
                )
    if not manifest.license:
        add(Finding("I001", "info", "/license", "no license given"))
    if not manifest.authors:
        add(Finding("I003", "info", "/authors", "no authors given"))
    return found


def validate_atlas(
    source: AtlasSource, *, strict: bool = True, max_bytes: int = DEFAULT_MAX_BYTES
) -> ValidationReport:
    """Validate an atlas and report every finding instead of stopping at the first.

    Args:
        source: What :func:`load_atlas` accepts.
        strict: Check against the package's Atlas 1.0 schema (upstream's schema plus inline
            ``context_blocks``; unknown keys, ``requires_approval``, a policy's top-level
            ``reason`` and ``_`` in ids are errors). Otherwise check what :func:`load_atlas`
            accepts.
        max_bytes: Size cap of the manifest and of each context file.

    Returns:
        A :class:`ValidationReport`; ``report.valid`` is false when any finding is an error.
    """
    from cra_agents.protocol import AtlasManifest

    if isinstance(source, Atlas):
        label, base = source.source, source.base_dir
        document: Mapping[str, Any] = source.manifest.model_dump(mode="json", exclude_none=True)
    elif isinstance(source, AtlasManifest):
        label, base = "<manifest>", None
        document = source.model_dump(mode="json", exclude_none=True)
    else:
        try:
            document, label, base = read_document(
                source
                if isinstance(source, Mapping)
                else os.fspath(source)
                if not isinstance(source, str)
                else source,
                max_bytes=max_bytes,
            )
        except AtlasError as exc:
            return ValidationReport(
                str(exc.source or source), strict, [Finding("E000", "error", exc.path, str(exc))]
            )
    findings: list[Finding] = []
    if strict:
        findings.extend(_schema_findings(document))
    manifest: AtlasManifest | None = None
    try:
        manifest = AtlasManifest.model_validate(document)
    except ValidationError as exc:
        if not strict:
            for error in exc.errors(include_url=False, include_input=False):
                findings.append(Finding("E100", "error", json_pointer(error["loc"]), error["msg"]))
    try:
        canonical_json(document)
    except TraceError as exc:
        findings.append(Finding("E000", "error", str(exc.details.get("path", "")), str(exc)))
    if manifest is not None:
        findings.extend(_semantic(manifest))
        try:
            _, missing = _read_context(manifest, base, label, max_bytes)
        except AtlasError as exc:
            findings.append(Finding("E000", "error", exc.path, str(exc)))
        else:
            if base is not None:
                for name in missing:
                    findings.append(
                        Finding(
                            "W009",
                            "warning",
                            "/context_packs",
                            f"context file {name!r} does not exist",
                        )
                    )
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: (order[f.severity], f.path, f.code))
    return ValidationReport(label, strict, findings)
