"""A loaded atlas: the manifest, its content digest and the context files read with it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cra_agents.protocol import Action, AtlasManifest

__all__ = ["Atlas"]


@dataclass(frozen=True, eq=False)
class Atlas:
    """An atlas that loaded without error.

    Attributes:
        manifest: The parsed manifest.
        digest: ``sha256:<hex>`` over the manifest's canonical JSON and every context file read;
            two atlases with equal digests decide identically.
        source: Where it came from: a path, a URL or ``"<dict>"``.
        base_dir: The directory context pack files are relative to, if any.
        context_files: Pack file path (as written in the manifest) to its text.
        missing_files: Pack files that do not exist; they are skipped.
    """

    manifest: AtlasManifest
    digest: str
    source: str
    base_dir: Path | None = None
    context_files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    missing_files: tuple[str, ...] = ()

    @property
    def atlas_id(self) -> str:
        """The manifest's ``atlas_id``."""
        return self.manifest.atlas_id

    @property
    def version(self) -> str:
        """The manifest's ``version``."""
        return self.manifest.version

    @property
    def actions(self) -> list[Action]:
        """The declared actions, in manifest order."""
        return self.manifest.actions

    def action(self, action_id: str) -> Action | None:
        """The declared action ``action_id``, if any."""
        for action in self.manifest.actions:
            if action.action_id == action_id:
                return action
        return None

    def __repr__(self) -> str:
        return f"<Atlas {self.atlas_id}@{self.version} {self.digest[:19]}>"
