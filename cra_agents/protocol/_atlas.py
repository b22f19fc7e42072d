"""Atlas/1.0 manifests (PROTOCOL_NOTES §2.5), read leniently.

These models accept what real upstream atlases contain besides the schema: inline
``context_blocks``, a policy's top-level ``reason``, the ``requires_approval`` spelling, ``_`` and
``-`` in action ids, and the Rust core's ``checkpoints``, ``steward`` and ``sources`` sections.
Anything else unknown is rejected, so a typo such as ``efect`` can never silently drop a rule.
Strict validation against the Atlas 1.0 schema is :func:`cra_agents.validate_atlas`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from cra_agents.protocol._common import SEMVER_PATTERN, ActionId, AtlasId, RiskTier, WireModel

__all__ = [
    "Action",
    "ActionExample",
    "ActionRateLimit",
    "AdapterConfig",
    "AtlasManifest",
    "Capability",
    "Conditions",
    "ContextPack",
    "InlineContextBlock",
    "Policy",
    "PolicyType",
    "TimeWindow",
]

PolicyType = Literal["allow", "deny", "rate_limit", "require_approval", "budget", "scope"]

_TIME = r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})?$"
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class TimeWindow(WireModel):
    """Daily window ``start``-``end`` (may wrap midnight) in ``timezone`` on ``days``."""

    start: str | None = Field(default=None, pattern=_TIME)
    end: str | None = Field(default=None, pattern=_TIME)
    timezone: str | None = None
    days: list[Weekday] | None = None


class Conditions(WireModel):
    """When a policy or context pack applies. All given keys must hold."""

    risk_tiers: list[RiskTier] | None = None
    agents: list[str] | None = None
    capabilities: list[str] | None = None
    context_matches: dict[str, str] | None = None
    time_window: TimeWindow | None = None


class Capability(WireModel):
    """A named group of actions and context packs."""

    capability_id: str = Field(pattern=r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*$")
    name: str
    description: str | None = None
    actions: list[str] = Field(default_factory=list)
    context_packs: list[str] = Field(default_factory=list)


class ContextPack(WireModel):
    """Markdown or text files, relative to the atlas directory, injected as context."""

    pack_id: str = Field(min_length=1)
    name: str
    description: str | None = None
    files: list[str]
    priority: int = Field(default=100, ge=0, le=1000)
    conditions: Conditions | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    inject_mode: Literal["always", "on_match", "on_demand", "risk_based"] | None = None


class InlineContextBlock(WireModel):
    """A context block written inline in the manifest (documented extension)."""

    context_id: str = Field(min_length=1)
    name: str | None = None
    priority: int = Field(default=0, ge=0, le=1000)
    content: str
    content_type: Literal["text/markdown", "text/plain", "application/json"] = "text/markdown"
    inject_mode: Literal["always", "on_match", "on_demand", "risk_based"] = "on_match"
    also_inject: list[str] = Field(default_factory=list)
    inject_when: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)
    risk_tiers: list[RiskTier] = Field(default_factory=list)


class Policy(WireModel):
    """A governance rule over action-id glob patterns."""

    policy_id: str = Field(min_length=1)
    type: PolicyType
    name: str | None = None
    description: str | None = None
    priority: int = 0
    conditions: Conditions | None = None
    actions: list[str] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _normalise_type(cls, value: object) -> object:
        # The Rust core and every real atlas spell it "requires_approval"; the schema does not.
        return "require_approval" if value == "requires_approval" else value

    @property
    def patterns(self) -> list[str]:
        """The action patterns; a policy without ``actions`` covers every action."""
        return ["*"] if self.actions is None else self.actions

    @property
    def denial_reason(self) -> str | None:
        """``reason``, else ``parameters.reason`` (PROTOCOL_NOTES §7.12)."""
        if self.reason:
            return self.reason
        value = self.parameters.get("reason")
        return value if isinstance(value, str) and value else None


class ActionExample(WireModel):
    """An example invocation of an action (extra keys are kept)."""

    model_config = WireModel.model_config | {"extra": "allow"}

    name: str | None = None
    parameters: dict[str, Any] | None = None
    expected_result: dict[str, Any] | None = None


class ActionRateLimit(WireModel):
    """An action's own rate limit (extra keys are kept, as the schema allows)."""

    model_config = WireModel.model_config | {"extra": "allow"}

    max_calls: int | None = Field(default=None, ge=1)
    window_seconds: int | None = Field(default=None, ge=1)


class Action(WireModel):
    """Something an agent can do, with its parameter schema and risk tier."""

    action_id: ActionId
    name: str
    description: str
    parameters_schema: dict[str, Any] | None = None
    returns_schema: dict[str, Any] | None = None
    risk_tier: RiskTier = "low"
    idempotent: bool = False
    requires_confirmation: bool = False
    executor: str | None = None
    timeout_seconds: int = Field(default=30, ge=1, le=300)
    rate_limit: ActionRateLimit | None = None
    examples: list[ActionExample] = Field(default_factory=list)


class AdapterConfig(WireModel):
    """Platform-specific adapter settings (any extra keys are kept)."""

    model_config = WireModel.model_config | {"extra": "allow"}

    enabled: bool = True
    settings: dict[str, Any] = Field(default_factory=dict)


class AtlasManifest(WireModel):
    """An Atlas/1.0 manifest."""

    atlas_version: Literal["1.0"]
    atlas_id: AtlasId
    version: str = Field(pattern=SEMVER_PATTERN)
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(max_length=1000)
    authors: list[str] = Field(default_factory=list)
    license: str | None = None
    homepage: str | None = None
    repository: str | None = None
    domains: list[str] = Field(default_factory=list)
    capabilities: list[Capability] = Field(default_factory=list)
    context_packs: list[ContextPack] = Field(default_factory=list)
    context_blocks: list[InlineContextBlock] = Field(default_factory=list)
    policies: list[Policy] = Field(default_factory=list)
    actions: list[Action] = Field(default_factory=list)
    adapters: dict[str, AdapterConfig] = Field(default_factory=dict)
    dependencies: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    # Rust-core extensions found in real atlases; carried, not interpreted.
    checkpoints: list[dict[str, Any]] | None = None
    steward: dict[str, Any] | None = None
    sources: dict[str, Any] | None = None
