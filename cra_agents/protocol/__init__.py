"""CARP/1.0, TRACE/1.0 and Atlas/1.0 wire models (pydantic v2) and their JSON Schemas."""

from __future__ import annotations

import typing

from cra_agents._lazy import lazy_exports as _lazy_exports

# Event names and payload builders: a topic module (``from cra_agents.protocol import events``).
from cra_agents.protocol import _events as events  # noqa: F401 - public by path, not by __all__
from cra_agents.protocol._common import (
    ACTION_ID_PATTERN,
    ATLAS_ID_PATTERN,
    SEMVER_PATTERN,
    UUID_PATTERN,
    RiskTier,
    trusted,
)

if typing.TYPE_CHECKING:
    from cra_agents.protocol._atlas import (
        Action,
        ActionExample,
        ActionRateLimit,
        AdapterConfig,
        AtlasManifest,
        Capability,
        Conditions,
        ContextPack,
        InlineContextBlock,
        Policy,
        PolicyType,
        TimeWindow,
    )
    from cra_agents.protocol._carp import (
        AllowedAction,
        CARPRequest,
        CARPResolution,
        Constraint,
        ContextBlock,
        Decision,
        DecisionType,
        DeniedAction,
        ExecuteError,
        ExecuteResponse,
        Execution,
        RateLimit,
        Requester,
        Task,
    )
    from cra_agents.protocol._schemas import bundled_schema, generate_schemas
    from cra_agents.protocol._trace import (
        EVENT_TYPES,
        GENESIS_HASH,
        TRACE_VERSION,
        EventType,
        TraceEvent,
    )

__all__ = [
    "ACTION_ID_PATTERN",
    "ATLAS_ID_PATTERN",
    "EVENT_TYPES",
    "GENESIS_HASH",
    "SEMVER_PATTERN",
    "TRACE_VERSION",
    "UUID_PATTERN",
    "Action",
    "ActionExample",
    "ActionRateLimit",
    "AdapterConfig",
    "AllowedAction",
    "AtlasManifest",
    "CARPRequest",
    "CARPResolution",
    "Capability",
    "Conditions",
    "Constraint",
    "ContextBlock",
    "ContextPack",
    "Decision",
    "DecisionType",
    "DeniedAction",
    "EventType",
    "ExecuteError",
    "ExecuteResponse",
    "Execution",
    "InlineContextBlock",
    "Policy",
    "PolicyType",
    "RateLimit",
    "Requester",
    "RiskTier",
    "Task",
    "TimeWindow",
    "TraceEvent",
    "bundled_schema",
    "generate_schemas",
    "trusted",
]

# Loaded on first use (PEP 562): the Atlas models cost a third of the package's import time and
# only loading an atlas needs them; the CARP and TRACE models only resolving, calls and traces
# (not ``cra atlas validate``); the schema helpers only strict validation and ``make schemas``.
_ATLAS_MODELS = (
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
)
_CARP_MODELS = (
    "AllowedAction",
    "CARPRequest",
    "CARPResolution",
    "Constraint",
    "ContextBlock",
    "Decision",
    "DecisionType",
    "DeniedAction",
    "ExecuteError",
    "ExecuteResponse",
    "Execution",
    "RateLimit",
    "Requester",
    "Task",
)
_TRACE_NAMES = ("EVENT_TYPES", "GENESIS_HASH", "TRACE_VERSION", "EventType", "TraceEvent")
__getattr__, __dir__ = _lazy_exports(
    __name__,
    {
        **dict.fromkeys(_ATLAS_MODELS, "cra_agents.protocol._atlas"),
        **dict.fromkeys(_CARP_MODELS, "cra_agents.protocol._carp"),
        **dict.fromkeys(_TRACE_NAMES, "cra_agents.protocol._trace"),
        **dict.fromkeys(("bundled_schema", "generate_schemas"), "cra_agents.protocol._schemas"),
    },
)
