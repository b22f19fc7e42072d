"""``convert_legacy_atlas``: turn a legacy Atlas 0.1 atlas into an Atlas 1.0 one.

Atlas 0.1 is the pre-spec format of upstream's design branch (``atlas_version: "0.1"``, identity
under ``metadata``, domains, rule-based policies, adapters with tool mappings). The conversion is
pure: it returns an :class:`AtlasConversion` (the 1.0 manifest, the context files to copy and a
note for everything renamed, approximated or dropped) and writes nothing until
:meth:`AtlasConversion.write`.

Mapping (legacy → Atlas 1.0):

==================================  ==============================================================
legacy                              Atlas 1.0
==================================  ==============================================================
``metadata.id``                     ``atlas_id`` (must already be a 1.0 atlas id)
``metadata.version``                ``version`` (``1`` / ``1.2`` are padded to SemVer, noted)
``metadata.name`` / ``description`` ``name`` (≤ 100 chars) / ``description`` (≤ 1000 chars)
``metadata.authors[]``              ``authors``: ``"Name <email> (url)"`` strings
``metadata.license.spdx``           ``license`` (``license.type`` is dropped)
``metadata.keywords``               ``metadata.keywords``
``metadata.homepage/repository``    ``homepage`` / ``repository``
``domains[].id``                    ``domains``
``domains[]``                       one ``capabilities[]`` entry per domain: ``capability_id`` =
                                    the domain id, ``name``, ``description``, the domain's
                                    ``actions`` and ``context_packs`` (``risk_tier`` dropped)
``actions[].type``                  ``action_id``, rewritten to the 1.0 pattern: lower case, every
                                    ``_``/``-`` becomes ``.`` (``api.github.create_issue`` →
                                    ``api.github.create.issue``); without ``type``: ``domain.id``
``actions[].id``                    ``executor`` when no adapter maps it to a tool, and
                                    ``metadata.legacy.actions`` (legacy id → new id)
``actions[].name/description``      ``name`` / ``description``
``actions[].schema``                ``parameters_schema``
``actions[].risk_tier``             ``risk_tier`` (missing: the domain's risk tier, else ``low``)
``actions[].examples[]``            ``examples[]``: ``description`` → ``name``, ``parameters``
                                    kept, ``expected_outcome`` (free text) dropped
``context_packs[]``                 ``context_packs[]``: ``id`` → ``pack_id``, ``source`` →
                                    ``files``, ``priority`` kept (clamped to 0-1000), ``name``
                                    from the id; ``format``, ``ttl_seconds``, ``tags`` and
                                    ``evidence_sources`` dropped; the files are read and returned
                                    in :attr:`AtlasConversion.files`
``policies[].rules[]``              one ``policies[]`` entry per rule: ``policy_id`` = rule id,
                                    ``type`` = ``effect``, ``priority``, ``parameters.reason`` =
                                    ``message``, ``description``; ``actions`` = the explicit list
                                    of converted action ids the rule's ``condition`` selects now
``policies[]`` (the rule set)       ``metadata.legacy.policy_sets`` (set id → its rule ids)
``adapters[].tool_mappings``        ``executor`` (the ``openai`` tool name first, else the first
                                    platform mapping the action) and
                                    ``metadata.legacy.tool_names`` (platform → tool → action id)
``adapters[].config_file``          dropped (not copied)
``tests``                           dropped
``dependencies``                    ``dependencies`` (``[{id, version}]`` → ``{id: version}``)
==================================  ==============================================================

Rule conditions ``{type, operator, value}`` are evaluated against the legacy actions at
conversion time: ``type`` is ``risk_tier``, ``domain`` or ``action_type`` (the legacy ``type``
string); ``operator`` is ``eq``, ``neq``, ``in``, ``not_in`` or ``matches`` (``re.search``). A rule
without ``condition`` selects every action. A rule that selects no action is kept with
``actions: []``: it validates (``E008`` fires only when ``actions`` is absent, which would make it
cover every action), decides nothing, exactly like the legacy rule today, and keeps its id,
priority and reason for whoever re-targets it.

Conversion fails closed: a rule with an unknown ``effect``, or a ``deny`` or
``require_approval`` rule whose condition cannot be evaluated, makes the conversion fail rather
than silently drop a restriction. A ``rate_limit`` rule without ``parameters.max_calls`` and
``parameters.window_seconds`` limits nothing and is dropped with a note. An ``allow`` rule
that cannot be converted is dropped with a note (the runtime's default then decides, as it
would for an action no rule selects). Atlas 1.0 decides in phases (deny → require_approval →
rate_limit → allow), where the legacy rules were read highest priority first; every action whose
outcome the phase order changes gets a note (``C008``).

Note codes (:class:`~cra_agents.atlas.Finding` objects; the path is a JSON pointer into the legacy
document):

========  ========  ==============================================================
code      severity  note
========  ========  ==============================================================
C001      info      action id rewritten to the Atlas 1.0 pattern
C002      info      a required 1.0 field was derived (a name made from an id)
C003      warning   dropped: the legacy field has no Atlas 1.0 equivalent
C004      warning   approximated: a value was adjusted, inferred or truncated
C005      warning   a policy rule was not converted
C006      warning   a policy rule selects no action (kept with ``actions: []``)
C007      warning   a rule named like a rate limit is not a ``rate_limit`` rule
C008      warning   Atlas 1.0's phase order decides an action differently
C009      info      no rule selects an action: the runtime default decides it
C010      warning   a context file was not copied
C011      info      kept under ``metadata`` (keywords, legacy ids, tool names)
C012      info      Atlas 1.0 treats a converted element differently (pack scope)
========  ========  ==============================================================
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from cra_agents._exceptions import AtlasError
from cra_agents.atlas import (
    DEFAULT_MAX_BYTES,
    MAX_CONTEXT_BYTES,
    Finding,
    read_context_file,
    read_document,
)
from cra_agents.protocol import ACTION_ID_PATTERN, ATLAS_ID_PATTERN, SEMVER_PATTERN

__all__ = ["AtlasConversion", "convert_legacy_atlas"]

_ACTION_ID = re.compile(ACTION_ID_PATTERN)
_ATLAS_ID = re.compile(ATLAS_ID_PATTERN)
_SEMVER_RE = re.compile(SEMVER_PATTERN)
_SHORT_VERSION = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))?$")
_RISK_TIERS = ("low", "medium", "high", "critical")
_EFFECTS = {
    "allow": "allow",
    "deny": "deny",
    "require_approval": "require_approval",
    "requires_approval": "require_approval",
    "rate_limit": "rate_limit",
}
_PHASE = {"deny": 0, "require_approval": 1, "rate_limit": 2, "allow": 4}
_CONDITION_TYPES = ("risk_tier", "domain", "action_type")
_OPERATORS = ("eq", "neq", "in", "not_in", "matches")
_MANIFEST = "atlas.json"
_TOP_LEVEL = (
    "atlas_version",
    "metadata",
    "domains",
    "context_packs",
    "policies",
    "actions",
    "adapters",
    "tests",
    "dependencies",
)
# Optional Atlas 1.0 action fields a legacy action may already carry, with their JSON type.
_PASSTHROUGH: dict[str, type] = {
    "returns_schema": dict,
    "idempotent": bool,
    "requires_confirmation": bool,
    "timeout_seconds": int,
}


@dataclass(frozen=True)
class AtlasConversion:
    """The result of :func:`convert_legacy_atlas`.

    Attributes:
        manifest: The Atlas 1.0 document, ready to be written as ``atlas.json``.
        files: Context files to write beside it: path relative to the atlas directory → bytes.
        notes: What was renamed (``info``) or approximated and dropped (``warning``), each with
            the JSON pointer of the legacy field.
        source: Where the legacy atlas came from: a path, a URL or ``"<dict>"``.
    """

    manifest: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    notes: list[Finding] = field(default_factory=list)
    source: str = "<dict>"

    def write(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``atlas.json`` (2-space indented) and the context files into ``directory``.

        Context files are written first and ``atlas.json`` last, each through a temporary file
        and a rename, so an interrupted write never leaves a manifest naming missing files.

        Args:
            directory: The output atlas directory; created (with its parents) if missing.
            overwrite: Write into an existing non-empty directory. Files the conversion
                produces are replaced; other files are left alone.

        Returns:
            The directory written, loadable with :func:`~cra_agents.atlas.load_atlas`.

        Raises:
            AtlasError: the directory exists and is not empty (without ``overwrite``), is not
                a directory, a file path would leave it, or the file system refused a write.
        """
        target = Path(directory)
        label = str(target)
        if target.exists() and not target.is_dir():
            raise AtlasError(
                "the output path exists and is not a directory; choose another output directory",
                reason="output_exists",
                source=label,
                code="IO_ERROR",
            )
        if target.is_dir() and not overwrite and any(target.iterdir()):
            raise AtlasError(
                "the output directory is not empty; pass --force (overwrite=True) to write "
                "into it, or choose another directory",
                reason="output_exists",
                source=label,
                code="IO_ERROR",
            )
        text = json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n"
        try:
            target.mkdir(parents=True, exist_ok=True)
            root = target.resolve()
            for name in sorted(self.files):
                destination = (root / _relative_path(name, label, f"/files/{name}")).resolve()
                if not destination.is_relative_to(root):
                    raise AtlasError(
                        f"context file {name!r} would be written outside the output directory",
                        reason="path_escape",
                        source=label,
                        code="IO_ERROR",
                    )
                destination.parent.mkdir(parents=True, exist_ok=True)
                _replace(destination, self.files[name])
            _replace(root / _MANIFEST, text.encode("utf-8"))
        except OSError as exc:
            raise AtlasError(
                f"cannot write the converted atlas: {exc.strerror or exc}; check the output "
                "directory's permissions and free space",
                reason="io_error",
                source=label,
                code="IO_ERROR",
            ) from exc
        return target

    def as_dict(self) -> dict[str, Any]:
        """JSON form: source, manifest, file sizes in bytes and notes."""
        return {
            "source": self.source,
            "manifest": self.manifest,
            "files": {name: len(self.files[name]) for name in sorted(self.files)},
            "notes": [note.as_dict() for note in self.notes],
        }


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fresh temporary file and an atomic rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    # O_EXCL: never write through a symlink planted where the temporary file goes.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def _relative_path(name: str, label: str, where: str) -> str:
    """``name`` as a clean relative POSIX path inside the atlas directory, or AtlasError."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if not name or pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", name):
        raise AtlasError(
            f"file {name!r} is not a relative path inside the atlas directory; move it under "
            "the atlas directory (e.g. context/) and convert again",
            reason="path_escape",
            path=where,
            source=label,
        )
    clean = str(pure)
    if clean in (".", _MANIFEST):
        raise AtlasError(
            f"file {name!r} cannot be a context file (it is the atlas directory or its manifest)",
            reason="legacy_malformed",
            path=where,
            source=label,
        )
    return clean


def _passes(value: object, kind: type) -> bool:
    """Whether a legacy value may be copied into an Atlas 1.0 action field of JSON type ``kind``."""
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 300
    return isinstance(value, kind)


def _title(identifier: str) -> str:
    words = re.split(r"[-_.\s]+", identifier)
    return " ".join(word[:1].upper() + word[1:] for word in words if word) or identifier


def _segments(text: str) -> list[str]:
    """Lower-case ``[a-z0-9]`` segments; a segment starting with a digit joins the previous."""
    out: list[str] = []
    for part in re.split(r"[^a-z0-9]+", text.lower()):
        if not part:
            continue
        if part[0].isdigit():
            if out:
                out[-1] += part
                continue
            part = "n" + part
        out.append(part)
    return out


def _unique(candidate: str, taken: set[str]) -> str:
    unique, number = candidate, 2
    while unique in taken:
        unique, number = f"{candidate}{number}", number + 1
    taken.add(unique)
    return unique


@dataclass(eq=False)
class _Action:
    """A legacy action with what the conditions and the output need."""

    index: int
    legacy_id: str
    action_type: str
    domain: str | None
    risk_tier: str
    action_id: str
    output: dict[str, Any]


@dataclass(eq=False)
class _Rule:
    """A converted rule: the 1.0 policy plus what the decision comparison needs."""

    path: str
    policy: dict[str, Any]
    selected: list[_Action]
    order: int

    @property
    def type(self) -> str:
        return str(self.policy["type"])

    @property
    def priority(self) -> int:
        return int(self.policy.get("priority", 0))


class _Converter:
    def __init__(
        self, document: dict[str, Any], label: str, base: Path | None, max_bytes: int
    ) -> None:
        self.doc = document
        self.label = label
        self.base = base
        self.max_bytes = max_bytes
        self.notes: list[Finding] = []
        self.files: dict[str, bytes] = {}
        self.context_bytes = 0
        # domain id -> (legacy domain object or None, pointer)
        self.domains: dict[str, tuple[Mapping[str, Any] | None, str]] = {}
        self.tools: dict[str, dict[str, str]] = {}  # platform -> legacy action id -> tool name

    # -- helpers ------------------------------------------------------------------------------

    def note(
        self, code: str, severity: Literal["warning", "info"], path: str, message: str
    ) -> None:
        self.notes.append(Finding(code, severity, path, message))

    def malformed(self, path: str, message: str) -> AtlasError:
        return AtlasError(
            f"{message}; fix the legacy atlas and convert again",
            reason="legacy_malformed",
            path=path,
            source=self.label,
        )

    def obj(self, value: object, path: str, what: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.malformed(path, f"{what} must be an object, not {type(value).__name__}")
        return value

    def items(self, value: object, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.malformed(path, f"expected a list, not {type(value).__name__}")
        return value

    def text(self, value: object, path: str) -> str | None:
        if value is None or isinstance(value, str):
            return value
        raise self.malformed(path, f"expected a string, not {type(value).__name__}")

    def dropped(
        self, mapping: Mapping[str, Any], used: tuple[str, ...], path: str, why: str
    ) -> None:
        for key in mapping:
            if key not in used:
                self.note(
                    "C003",
                    "warning",
                    f"{path}/{key}",
                    f"{key!r} has no Atlas 1.0 equivalent and was dropped{why}",
                )

    def add_domain(self, domain: str, path: str, owner: str) -> None:
        if domain not in self.domains:
            self.domains[domain] = (None, path)
            self.note(
                "C004",
                "warning",
                path,
                f"{owner} names domain {domain!r}, which domains does not declare; it was "
                "added to domains and given its own capability",
            )

    # -- sections -----------------------------------------------------------------------------

    def convert(self) -> AtlasConversion:
        doc = self.doc
        self.dropped(doc, _TOP_LEVEL, "", "")
        manifest: dict[str, Any] = {"atlas_version": "1.0"}
        metadata: dict[str, Any] = {}
        manifest.update(self.identity(metadata))
        self.read_domains()
        self.read_adapters()
        actions = self.actions()
        packs, pack_domains = self.packs()
        rules, policy_sets = self.rules(actions)
        self.compare_decisions(actions, rules)
        capabilities = self.capabilities(actions, pack_domains)
        dependencies = self.dependencies()
        if self.domains:
            manifest["domains"] = list(self.domains)
        if capabilities:
            manifest["capabilities"] = capabilities
        if packs:
            manifest["context_packs"] = packs
        if rules:
            manifest["policies"] = [rule.policy for rule in rules]
        if actions:
            manifest["actions"] = [action.output for action in actions]
        if dependencies:
            manifest["dependencies"] = dependencies
        if "tests" in doc:
            self.note(
                "C003",
                "warning",
                "/tests",
                "legacy test suites are not converted and their files are not copied; record "
                "Atlas 1.0 golden traces under tests/*.trace.jsonl instead",
            )
        legacy: dict[str, Any] = {
            "atlas_version": "0.1",
            "actions": {a.legacy_id: a.action_id for a in actions},
        }
        by_legacy = {a.legacy_id: a.action_id for a in actions}
        tool_names: dict[str, dict[str, str]] = {}
        for platform, mapping in self.tools.items():
            for legacy_id, tool in mapping.items():
                if legacy_id in by_legacy:
                    tool_names.setdefault(platform, {})[tool] = by_legacy[legacy_id]
                else:
                    self.note(
                        "C004",
                        "warning",
                        "/adapters",
                        f"the {platform!r} tool {tool!r} maps unknown action {legacy_id!r}; "
                        "the mapping was dropped",
                    )
        if tool_names:
            legacy["tool_names"] = tool_names
        if policy_sets:
            legacy["policy_sets"] = policy_sets
        metadata["legacy"] = legacy
        manifest["metadata"] = metadata
        self.note(
            "C011",
            "info",
            "",
            "legacy action ids, tool names and policy sets are kept under metadata.legacy",
        )
        return AtlasConversion(manifest, dict(self.files), list(self.notes), self.label)

    def identity(self, metadata: dict[str, Any]) -> dict[str, Any]:
        raw = self.doc.get("metadata")
        if raw is None:
            raise self.malformed(
                "/metadata", "the legacy atlas has no metadata object (it holds id and version)"
            )
        meta = self.obj(raw, "/metadata", "metadata")
        out: dict[str, Any] = {}
        atlas_id = self.text(meta.get("id"), "/metadata/id")
        if atlas_id is None or not _ATLAS_ID.match(atlas_id):
            raise self.malformed(
                "/metadata/id",
                f"metadata.id {atlas_id!r} is not an Atlas 1.0 atlas id (reverse DNS in lower "
                "case, e.g. com.example.github-ops)",
            )
        out["atlas_id"] = atlas_id
        version = self.text(meta.get("version"), "/metadata/version")
        if version is None:
            raise self.malformed("/metadata/version", "metadata.version is missing (e.g. 0.1.0)")
        if not _SEMVER_RE.match(version):
            if not _SHORT_VERSION.match(version):
                raise self.malformed(
                    "/metadata/version",
                    f"metadata.version {version!r} is not a SemVer version (e.g. 0.1.0)",
                )
            padded = ".".join([*version.split("."), "0", "0"][:3])
            self.note(
                "C004",
                "warning",
                "/metadata/version",
                f"version {version!r} was padded to the SemVer {padded!r}",
            )
            version = padded
        out["version"] = version
        name = self.text(meta.get("name"), "/metadata/name")
        if not name:
            name = atlas_id
            self.note("C002", "info", "/metadata/name", "no name: the atlas id is used as name")
        if len(name) > 100:
            self.note(
                "C004", "warning", "/metadata/name", "name was cut to Atlas 1.0's 100 characters"
            )
            name = name[:100]
        out["name"] = name
        description = self.text(meta.get("description"), "/metadata/description") or ""
        if not description:
            self.note(
                "C004",
                "warning",
                "/metadata/description",
                "no description: the 1.0 description is empty; write one",
            )
        if len(description) > 1000:
            self.note(
                "C004",
                "warning",
                "/metadata/description",
                "description was cut to Atlas 1.0's 1000 characters",
            )
            description = description[:1000]
        out["description"] = description
        authors = [
            self.author(author, f"/metadata/authors/{i}")
            for i, author in enumerate(self.items(meta.get("authors"), "/metadata/authors"))
        ]
        if authors:
            out["authors"] = authors
        license_ = self.license(meta.get("license"))
        if license_:
            out["license"] = license_
        for key in ("homepage", "repository"):
            value = self.text(meta.get(key), f"/metadata/{key}")
            if value:
                out[key] = value
        if "keywords" in meta:
            metadata["keywords"] = self.items(meta["keywords"], "/metadata/keywords")
            self.note(
                "C011",
                "info",
                "/metadata/keywords",
                "Atlas 1.0 has no keywords field; they are kept as metadata.keywords",
            )
        used = ("id", "version", "name", "description", "authors", "license", "keywords")
        self.dropped(meta, (*used, "homepage", "repository"), "/metadata", "")
        return out

    def author(self, value: object, path: str) -> str:
        if isinstance(value, str):
            return value
        author = self.obj(value, path, "an author")
        name = self.text(author.get("name"), f"{path}/name")
        email = self.text(author.get("email"), f"{path}/email")
        url = self.text(author.get("url"), f"{path}/url")
        parts = [
            p for p in (name, f"<{email}>" if email else None, f"({url})" if url else None) if p
        ]
        if not parts:
            raise self.malformed(path, "an author needs a name or an email")
        self.dropped(author, ("name", "email", "url"), path, "")
        return " ".join(parts)

    def license(self, value: object) -> str | None:
        if value is None or isinstance(value, str):
            return value
        license_ = self.obj(value, "/metadata/license", "license")
        spdx = self.text(license_.get("spdx"), "/metadata/license/spdx")
        if not spdx:
            self.note(
                "C003",
                "warning",
                "/metadata/license",
                "the license has no spdx identifier and was dropped; set license to an SPDX id",
            )
        self.dropped(license_, ("spdx",), "/metadata/license", " (license is an SPDX id)")
        return spdx

    def read_domains(self) -> None:
        for i, raw in enumerate(self.items(self.doc.get("domains"), "/domains")):
            path = f"/domains/{i}"
            if isinstance(raw, str):
                domain_id, domain = raw, None
            else:
                domain = self.obj(raw, path, "a domain")
                domain_id = self.text(domain.get("id"), f"{path}/id") or ""
                if "risk_tier" in domain:
                    self.note(
                        "C003",
                        "warning",
                        f"{path}/risk_tier",
                        "Atlas 1.0 has no domain risk tier; each action keeps its own "
                        "risk_tier (actions without one inherit it)",
                    )
                used = ("id", "name", "description", "risk_tier")
                self.dropped(domain, used, path, "")
            if not domain_id:
                raise self.malformed(path, "a domain needs an id")
            if domain_id in self.domains:
                raise self.malformed(path, f"domain {domain_id!r} is declared twice")
            self.domains[domain_id] = (domain, path)

    def read_adapters(self) -> None:
        for i, raw in enumerate(self.items(self.doc.get("adapters"), "/adapters")):
            path = f"/adapters/{i}"
            adapter = self.obj(raw, path, "an adapter")
            platform = self.text(adapter.get("platform"), f"{path}/platform") or f"adapter{i}"
            mappings = self.items(adapter.get("tool_mappings"), f"{path}/tool_mappings")
            for k, raw_mapping in enumerate(mappings):
                where = f"{path}/tool_mappings/{k}"
                mapping = self.obj(raw_mapping, where, "a tool mapping")
                legacy_id = self.text(mapping.get("action_id"), f"{where}/action_id")
                tool = self.text(mapping.get("platform_tool_name"), f"{where}/platform_tool_name")
                if not legacy_id or not tool:
                    raise self.malformed(
                        where, "a tool mapping needs action_id and platform_tool_name"
                    )
                self.tools.setdefault(platform, {})[legacy_id] = tool
            kept = "; its tool names are kept in metadata.legacy.tool_names" if mappings else ""
            self.note(
                "C003",
                "warning",
                path,
                f"the {platform!r} adapter is not converted and its config file is not copied "
                f"(Atlas 1.0 adapters are per-platform settings){kept}",
            )

    def actions(self) -> list[_Action]:
        out: list[_Action] = []
        taken: set[str] = set()
        known: set[str] = set()
        for i, raw in enumerate(self.items(self.doc.get("actions"), "/actions")):
            path = f"/actions/{i}"
            action = self.obj(raw, path, "an action")
            legacy_id = self.text(action.get("id"), f"{path}/id")
            action_type = self.text(action.get("type"), f"{path}/type")
            if not legacy_id and not action_type:
                raise self.malformed(path, "an action needs an id or a type")
            legacy_id = legacy_id or str(action_type)
            if legacy_id in known:
                raise self.malformed(f"{path}/id", f"action id {legacy_id!r} is used twice")
            known.add(legacy_id)
            domain = self.text(action.get("domain"), f"{path}/domain")
            if domain:
                self.add_domain(domain, f"{path}/domain", f"action {legacy_id!r}")
            action_id = self.action_id(legacy_id, action_type, domain, path, taken)
            risk = self.risk_tier(action.get("risk_tier"), domain, legacy_id, path)
            name = self.text(action.get("name"), f"{path}/name")
            if not name:
                name = _title(legacy_id)
                self.note("C002", "info", f"{path}/name", f"no name: {name!r} made from the id")
            description = self.text(action.get("description"), f"{path}/description")
            if not description:
                description = name
                self.note(
                    "C004",
                    "warning",
                    f"{path}/description",
                    "no description: the name is used; write one, agents choose actions by it",
                )
            output: dict[str, Any] = {
                "action_id": action_id,
                "name": name,
                "description": description,
            }
            if action.get("schema") is not None:
                output["parameters_schema"] = dict(
                    self.obj(action["schema"], f"{path}/schema", "schema")
                )
            output["risk_tier"] = risk
            for key, kind in _PASSTHROUGH.items():
                value = action.get(key)
                if value is None:
                    continue
                if not _passes(value, kind):
                    raise self.malformed(f"{path}/{key}", f"{key} has the wrong type or range")
                output[key] = value
            output["executor"] = self.executor(legacy_id)
            examples = self.examples(action.get("examples"), f"{path}/examples")
            if examples:
                output["examples"] = examples
            used = ("id", "type", "name", "description", "domain", "schema", "risk_tier")
            self.dropped(action, (*used, "examples", *_PASSTHROUGH), path, "")
            out.append(_Action(i, legacy_id, action_type or "", domain, risk, action_id, output))
        return out

    def action_id(
        self,
        legacy_id: str,
        action_type: str | None,
        domain: str | None,
        path: str,
        taken: set[str],
    ) -> str:
        if action_type:
            origin, where, segments = action_type, f"{path}/type", _segments(action_type)
        else:
            origin, where = legacy_id, f"{path}/id"
            segments = _segments(f"{domain}.{legacy_id}" if domain else legacy_id)
        if len(segments) < 2:
            segments.insert(0, "legacy")
        candidate = ".".join(segments)
        action_id = _unique(candidate, taken)
        if action_id != candidate:
            self.note(
                "C004",
                "warning",
                where,
                f"{candidate!r} is already taken by another action; this one is {action_id!r}",
            )
        elif action_id != origin or not action_type:
            self.note(
                "C001",
                "info",
                where,
                f"action {legacy_id!r} ({origin!r}) is now {action_id!r} (Atlas 1.0 action ids "
                "are dot-separated lower-case letters and digits)",
            )
        assert _ACTION_ID.match(action_id)  # noqa: S101 - _segments guarantees the pattern
        return action_id

    def risk_tier(self, value: object, domain: str | None, legacy_id: str, path: str) -> str:
        if value in _RISK_TIERS:
            return str(value)
        if value is not None:
            raise self.malformed(
                f"{path}/risk_tier",
                f"risk_tier {value!r} of action {legacy_id!r} is not one of "
                f"{', '.join(_RISK_TIERS)}",
            )
        legacy_domain = self.domains[domain][0] if domain else None
        inherited = legacy_domain.get("risk_tier") if legacy_domain is not None else None
        tier = inherited if inherited in _RISK_TIERS else "low"
        source = f"its domain {domain!r}" if inherited in _RISK_TIERS else "the Atlas 1.0 default"
        self.note(
            "C004",
            "warning",
            f"{path}/risk_tier",
            f"action {legacy_id!r} has no risk_tier; it is {tier!r} from {source}",
        )
        return str(tier)

    def executor(self, legacy_id: str) -> str:
        ordered = sorted(self.tools, key=lambda platform: platform != "openai")
        for platform in ordered:
            tool = self.tools[platform].get(legacy_id)
            if tool is not None:
                return tool
        return legacy_id

    def examples(self, value: object, path: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for k, raw in enumerate(self.items(value, path)):
            where = f"{path}/{k}"
            example = self.obj(raw, where, "an example")
            converted: dict[str, Any] = {}
            name = self.text(example.get("description") or example.get("name"), where)
            if name:
                converted["name"] = name
            if example.get("parameters") is not None:
                converted["parameters"] = dict(
                    self.obj(example["parameters"], f"{where}/parameters", "parameters")
                )
            if "expected_outcome" in example:
                self.note(
                    "C003",
                    "warning",
                    f"{where}/expected_outcome",
                    "expected_outcome is free text; Atlas 1.0's expected_result is an object, "
                    "so it was dropped",
                )
            self.dropped(
                example, ("description", "name", "parameters", "expected_outcome"), where, ""
            )
            out.append(converted)
        return out

    def packs(self) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
        out: list[dict[str, Any]] = []
        by_domain: dict[str, list[str]] = {}
        seen: set[str] = set()
        for i, raw in enumerate(self.items(self.doc.get("context_packs"), "/context_packs")):
            path = f"/context_packs/{i}"
            pack = self.obj(raw, path, "a context pack")
            pack_id = self.text(pack.get("id"), f"{path}/id")
            if not pack_id:
                raise self.malformed(path, "a context pack needs an id")
            if pack_id in seen:
                raise self.malformed(f"{path}/id", f"context pack id {pack_id!r} is used twice")
            seen.add(pack_id)
            name = self.text(pack.get("name"), f"{path}/name")
            if not name:
                name = _title(pack_id)
                self.note("C002", "info", f"{path}/name", f"no name: {name!r} made from the id")
            sources = pack.get("source")
            names = [sources] if isinstance(sources, str) else self.items(sources, f"{path}/source")
            files = []
            for k, raw_name in enumerate(names):
                where = f"{path}/source" if isinstance(sources, str) else f"{path}/source/{k}"
                file_name = self.text(raw_name, where)
                if not file_name:
                    raise self.malformed(where, "a context source must be a file path")
                files.append(self.read_file(_relative_path(file_name, self.label, where), where))
            converted: dict[str, Any] = {"pack_id": pack_id, "name": name}
            description = self.text(pack.get("description"), f"{path}/description")
            if description:
                converted["description"] = description
            converted["files"] = files
            priority = pack.get("priority")
            if priority is not None:
                if not isinstance(priority, int) or isinstance(priority, bool):
                    raise self.malformed(f"{path}/priority", "priority must be an integer")
                clamped = min(max(priority, 0), 1000)
                if clamped != priority:
                    self.note(
                        "C004",
                        "warning",
                        f"{path}/priority",
                        f"priority {priority} was clamped to Atlas 1.0's 0-1000: {clamped}",
                    )
                converted["priority"] = clamped
            domain = self.text(pack.get("domain"), f"{path}/domain")
            if domain:
                self.add_domain(domain, f"{path}/domain", f"context pack {pack_id!r}")
                by_domain.setdefault(domain, []).append(pack_id)
                self.note(
                    "C012",
                    "info",
                    f"{path}/domain",
                    f"pack {pack_id!r} belongs to the {domain!r} capability but Atlas 1.0 "
                    "injects it into every resolution; to inject it only when that capability "
                    'is requested, add "conditions": {"capabilities": [...]}',
                )
            used = ("id", "name", "description", "source", "priority", "domain")
            self.dropped(pack, used, path, "")
            out.append(converted)
        if self.base is None and out:
            self.note(
                "C010",
                "warning",
                "/context_packs",
                "the legacy atlas was not read from a directory, so its context files were not "
                "copied; copy them next to the converted atlas.json",
            )
        return out, by_domain

    def read_file(self, name: str, where: str) -> str:
        if self.base is None or name in self.files:
            return name
        data = read_context_file(
            self.base, name, where=where, source=self.label, max_bytes=self.max_bytes
        )
        if data is None:
            self.note(
                "C010",
                "warning",
                where,
                f"context file {name!r} does not exist; it stays listed (the loader skips it) "
                "until you add it to the converted atlas",
            )
            return name
        self.context_bytes += len(data)
        if len(data) > self.max_bytes or self.context_bytes > MAX_CONTEXT_BYTES:
            raise AtlasError(
                f"context file {name!r} takes the atlas over its size limit",
                reason="too_large",
                path=where,
                source=self.label,
            )
        self.files[name] = data
        return name

    def rules(self, actions: list[_Action]) -> tuple[list[_Rule], dict[str, list[str]]]:
        out: list[_Rule] = []
        sets: dict[str, list[str]] = {}
        taken: set[str] = set()
        for i, raw in enumerate(self.items(self.doc.get("policies"), "/policies")):
            path = f"/policies/{i}"
            policy_set = self.obj(raw, path, "a policy")
            set_id = self.text(policy_set.get("id"), f"{path}/id") or f"policy-set-{i}"
            if "rules" not in policy_set:
                self.note("C005", "warning", path, f"policy {set_id!r} has no rules")
            members: list[str] = []
            for k, rule_raw in enumerate(self.items(policy_set.get("rules"), f"{path}/rules")):
                rule = self.rule(rule_raw, f"{path}/rules/{k}", set_id, actions, taken, len(out))
                if rule is not None:
                    out.append(rule)
                    members.append(rule.policy["policy_id"])
            sets[set_id] = members
            for key in ("name", "version", "description"):
                if key in policy_set:
                    self.note(
                        "C003",
                        "warning",
                        f"{path}/{key}",
                        f"the rule set's {key} has no Atlas 1.0 equivalent and was dropped (its "
                        "rules are listed in metadata.legacy.policy_sets)",
                    )
            used = ("id", "rules", "name", "version", "description")
            self.dropped(policy_set, used, path, "")
        return out, sets

    def rule(
        self,
        raw: object,
        path: str,
        set_id: str,
        actions: list[_Action],
        taken: set[str],
        order: int,
    ) -> _Rule | None:
        rule = self.obj(raw, path, "a rule")
        rule_id = self.text(rule.get("id"), f"{path}/id")
        if not rule_id:
            rule_id = f"{set_id}-rule-{path.rsplit('/', 1)[1]}"
            self.note("C002", "info", f"{path}/id", f"no id: the policy is {rule_id!r}")
        effect = self.text(rule.get("effect"), f"{path}/effect")
        policy_type = _EFFECTS.get(effect or "")
        if policy_type is None:
            # An unknown effect may be a restriction ("block"): refuse rather than drop it.
            raise AtlasError(
                f"cannot convert rule {rule_id!r}: effect {effect!r} is not one of "
                f"{', '.join(sorted(_EFFECTS))}; change it to the effect it means (or remove the "
                "rule) and convert again",
                reason="legacy_unsupported",
                path=f"{path}/effect",
                source=self.label,
            )
        parameters: dict[str, Any] = {}
        if policy_type == "rate_limit":
            legacy_parameters = rule.get("parameters")
            limits = legacy_parameters if isinstance(legacy_parameters, Mapping) else {}
            if not all(
                isinstance(limits.get(k), int)
                and not isinstance(limits.get(k), bool)
                and limits[k] >= 1
                for k in ("max_calls", "window_seconds")
            ):
                self.note(
                    "C005",
                    "warning",
                    f"{path}/effect",
                    f"rate_limit rule {rule_id!r} has no parameters.max_calls and "
                    "parameters.window_seconds; it was not converted (add a rate_limit policy "
                    "with both)",
                )
                return None
            parameters.update(limits)
        else:
            words = re.sub(r"[-_.]", " ", f"{rule_id} {rule.get('description') or ''}").lower()
            if "rate" in words and "limit" in words:
                self.note(
                    "C007",
                    "warning",
                    f"{path}/effect",
                    f"rule {rule_id!r} is named like a rate limit but its effect is {effect!r}: "
                    f"it was converted with type {policy_type!r} and limits nothing; to cap "
                    "calls, add a rate_limit policy with parameters.max_calls and "
                    "parameters.window_seconds",
                )
        priority = rule.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise self.malformed(f"{path}/priority", "priority must be an integer")
        selected = self.select(
            rule.get("condition"), f"{path}/condition", rule_id, policy_type, actions
        )
        if selected is None:
            return None
        policy_id = _unique(rule_id, taken)
        if policy_id != rule_id:
            self.note(
                "C004", "warning", f"{path}/id", f"rule id {rule_id!r} is taken; now {policy_id!r}"
            )
        message = self.text(rule.get("message"), f"{path}/message")
        if message:
            parameters["reason"] = message
        policy: dict[str, Any] = {"policy_id": policy_id, "name": _title(rule_id)}
        description = self.text(rule.get("description"), f"{path}/description")
        if description:
            policy["description"] = description
        policy.update(
            {"type": policy_type, "priority": priority, "actions": [a.action_id for a in selected]}
        )
        if parameters:
            policy["parameters"] = parameters
        if not selected:
            self.note(
                "C006",
                "warning",
                f"{path}/condition",
                f"rule {rule_id!r} selects no action today; it is kept with an empty actions "
                "list (it decides nothing) so you can point it at actions by hand",
            )
        used = ("id", "description", "condition", "effect", "priority", "message", "parameters")
        self.dropped(rule, used, path, "")
        return _Rule(path, policy, selected, order)

    def select(
        self,
        raw: object,
        path: str,
        rule_id: str,
        policy_type: str,
        actions: list[_Action],
    ) -> list[_Action] | None:
        """The actions a rule's condition selects; ``None``: an allow rule that was dropped."""
        if raw is None:
            self.note(
                "C004",
                "warning",
                path,
                f"rule {rule_id!r} has no condition: it applies to every action, listed "
                "explicitly (new actions are not covered)",
            )
            return list(actions)
        condition = self.obj(raw, path, "a condition")
        kind = condition.get("type")
        operator = condition.get("operator")
        value = condition.get("value")
        problem = None
        if kind not in _CONDITION_TYPES:
            problem = f"condition type {kind!r} is not one of {', '.join(_CONDITION_TYPES)}"
        elif operator not in _OPERATORS:
            problem = f"operator {operator!r} is not one of {', '.join(_OPERATORS)}"
        elif operator in ("in", "not_in"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problem = f"operator {operator!r} needs a list of strings as value"
        elif not isinstance(value, str):
            problem = f"operator {operator!r} needs a string value"
        pattern = None
        if problem is None and operator == "matches":
            try:
                pattern = re.compile(str(value))
            except re.error as exc:
                problem = f"value {value!r} is not a valid regular expression ({exc})"
        if problem is not None:
            if policy_type == "allow":
                self.note(
                    "C005",
                    "warning",
                    path,
                    f"allow rule {rule_id!r} was not converted: {problem}; the actions it "
                    "allowed now fall to other policies or the runtime default",
                )
                return None
            raise AtlasError(
                f"cannot convert {policy_type} rule {rule_id!r}: {problem}; dropping it would "
                "remove a restriction, so rewrite the condition (type risk_tier, domain or "
                "action_type; operator eq, neq, in, not_in or matches) and convert again",
                reason="legacy_unsupported",
                path=path,
                source=self.label,
            )
        self.dropped(condition, ("type", "operator", "value"), path, "")

        def attribute(action: _Action) -> str:
            if kind == "risk_tier":
                return action.risk_tier
            if kind == "domain":
                return action.domain or ""
            return action.action_type

        def holds(action: _Action) -> bool:
            actual = attribute(action)
            if pattern is not None:
                return pattern.search(actual) is not None
            if operator == "eq":
                return actual == value
            if operator == "neq":
                return actual != value
            assert isinstance(value, list)  # noqa: S101 - checked above
            return (actual in value) == (operator == "in")

        return [action for action in actions if holds(action)]

    def compare_decisions(self, actions: list[_Action], rules: list[_Rule]) -> None:
        """Note every action the phase order decides differently from priority order."""
        decisive = [rule for rule in rules if rule.type != "rate_limit"]
        for action in actions:
            covering = [r for r in decisive if any(a is action for a in r.selected)]
            where = f"/actions/{action.index}"
            if not covering:
                self.note(
                    "C009",
                    "info",
                    where,
                    f"no rule decides action {action.legacy_id!r}: the runtime default decides "
                    "it (allowed as default-allow unless the runtime runs with default_deny)",
                )
                continue
            legacy = min(covering, key=lambda r: (-r.priority, r.order))
            current = min(covering, key=lambda r: (_PHASE[r.type], -r.priority, r.order))
            if legacy.type != current.type:
                self.note(
                    "C008",
                    "warning",
                    where,
                    f"action {action.legacy_id!r} was decided by rule "
                    f"{legacy.policy['policy_id']!r} ({legacy.type}, highest priority); Atlas "
                    f"1.0 evaluates deny, then require_approval, then allow, so "
                    f"{current.policy['policy_id']!r} ({current.type}) decides it now",
                )

    def capabilities(
        self, actions: list[_Action], pack_domains: dict[str, list[str]]
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        taken: set[str] = set()
        for domain_id, (domain, path) in self.domains.items():
            members = [a.action_id for a in actions if a.domain == domain_id]
            packs = pack_domains.get(domain_id, [])
            if not members and not packs:
                continue
            candidate = ".".join(_segments(domain_id))
            capability_id = _unique(candidate, taken)
            if capability_id != domain_id:
                self.note(
                    "C001",
                    "info",
                    path,
                    f"domain {domain_id!r} became capability {capability_id!r} (capability ids "
                    "are dot-separated lower-case letters and digits)",
                )
            name = self.text(domain.get("name"), f"{path}/name") if domain else None
            capability: dict[str, Any] = {
                "capability_id": capability_id,
                "name": name or _title(domain_id),
            }
            description = (
                self.text(domain.get("description"), f"{path}/description") if domain else None
            )
            if description:
                capability["description"] = description
            if members:
                capability["actions"] = members
            if packs:
                capability["context_packs"] = packs
            out.append(capability)
        return out

    def dependencies(self) -> dict[str, str]:
        raw = self.doc.get("dependencies")
        if isinstance(raw, Mapping):
            out = {}
            for key, value in raw.items():
                if not isinstance(value, str):
                    raise self.malformed(f"/dependencies/{key}", "a version range must be a string")
                out[str(key)] = value
            return out
        out = {}
        for i, entry in enumerate(self.items(raw, "/dependencies")):
            path = f"/dependencies/{i}"
            if isinstance(entry, str):
                out[entry] = "*"
                self.note(
                    "C004", "warning", path, f"dependency {entry!r} has no version; '*' is used"
                )
                continue
            dependency = self.obj(entry, path, "a dependency")
            atlas_id = self.text(dependency.get("id") or dependency.get("atlas_id"), path)
            if not atlas_id:
                raise self.malformed(path, "a dependency needs an id")
            version = self.text(dependency.get("version"), f"{path}/version")
            if not version:
                self.note(
                    "C004", "warning", path, f"dependency {atlas_id!r} has no version; '*' is used"
                )
            out[atlas_id] = version or "*"
            self.dropped(dependency, ("id", "atlas_id", "version"), path, "")
        return out


def convert_legacy_atlas(
    source: str | os.PathLike[str] | Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> AtlasConversion:
    """Convert a legacy Atlas 0.1 atlas to Atlas 1.0 (see the module docstring's mapping).

    Args:
        source: A legacy atlas directory, its ``atlas.json`` (or an ``http(s)://`` URL of it),
            or the parsed document. Context files are read only from a directory source.
        max_bytes: Size cap of the manifest and of each context file.

    Returns:
        An :class:`AtlasConversion`; nothing is written until its ``write`` method is called.

    Raises:
        AtlasError: the source cannot be read, is not a legacy 0.1 atlas (an Atlas 1.0 atlas is
            refused with ``ATLAS_VERSION_MISMATCH``), is malformed, or holds a restricting rule
            that cannot be converted without weakening it.

    Example:
        >>> conversion = convert_legacy_atlas("atlases/github-ops")  # doctest: +SKIP
        >>> conversion.write("atlases/github-ops-1.0")  # doctest: +SKIP
        PosixPath('atlases/github-ops-1.0')
    """
    document, label, base = read_document(
        source if isinstance(source, Mapping | str) else os.fspath(source), max_bytes=max_bytes
    )
    if isinstance(source, Mapping):
        document = copy.deepcopy(document)  # the manifest must not share objects with the input
    version = document.get("atlas_version")
    if version == "1.0":
        raise AtlasError(
            "this atlas is already Atlas 1.0, so there is nothing to convert; check it with "
            "`cra atlas validate --strict` instead",
            reason="already_converted",
            path="/atlas_version",
            source=label,
            code="ATLAS_VERSION_MISMATCH",
        )
    if version != "0.1":
        found = "has no atlas_version" if version is None else f"has atlas_version {version!r}"
        raise AtlasError(
            f"the document {found}, so it is not a legacy Atlas 0.1 atlas; only atlases with "
            'atlas_version "0.1" (identity under metadata) can be converted',
            reason="unsupported_version",
            path="/atlas_version",
            source=label,
            code="ATLAS_VERSION_MISMATCH",
        )
    return _Converter(document, label, base, max_bytes).convert()
