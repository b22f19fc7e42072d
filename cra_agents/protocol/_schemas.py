"""JSON Schemas generated from the wire models, bundled in ``cra_agents/protocol/schemas/``.

``atlas-manifest.strict`` is what :func:`cra_agents.validate_atlas` checks with ``strict=True``:
the Atlas 1.0 schema with one documented extension, inline ``context_blocks``. It is derived from
the lenient :class:`~cra_agents.protocol.AtlasManifest` by removing what only the lenient reader
accepts (the Rust-core sections, a policy's top-level ``reason``, ``_`` in ids, ``null`` for
absent fields). Regenerate the files with ``python -m cra_agents.protocol._schemas``.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cra_agents.protocol._atlas import AtlasManifest
from cra_agents.protocol._carp import CARPRequest, CARPResolution, ExecuteResponse
from cra_agents.protocol._common import ACTION_ID_PATTERN
from cra_agents.protocol._trace import EVENT_TYPES, TraceEvent

__all__ = ["SCHEMA_NAMES", "bundled_schema", "generate_schemas"]

_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_MODELS: dict[str, type[BaseModel]] = {
    "carp-request": CARPRequest,
    "carp-resolution": CARPResolution,
    "execute-response": ExecuteResponse,
    "trace-event": TraceEvent,
    "atlas-manifest": AtlasManifest,
}
SCHEMA_NAMES = (*_MODELS, "atlas-manifest.strict")


def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    return {
        "$schema": _DIALECT,
        "$id": f"https://cra-agents.dev/schemas/{model.__name__}",
        **schema,
    }


def _drop_null(node: Any) -> Any:
    """Replace ``anyOf: [X, {type: null}]`` by ``X`` everywhere (absent, never null)."""
    if isinstance(node, dict):
        any_of = node.get("anyOf")
        if isinstance(any_of, list):
            rest = [item for item in any_of if item != {"type": "null"}]
            if len(rest) == 1 and len(rest) < len(any_of):
                merged = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
                merged.update(rest[0])
                node = merged
        return {key: _drop_null(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_drop_null(item) for item in node]
    return node


def _strict_atlas(lenient: dict[str, Any]) -> Any:
    schema = _drop_null(copy.deepcopy(lenient))
    schema["$id"] = "https://cra-agents.dev/schemas/AtlasManifest.strict"
    schema["description"] = (
        "Atlas 1.0 manifest, strict: the upstream schema plus inline context_blocks."
    )
    for key in ("checkpoints", "steward", "sources"):
        schema["properties"].pop(key)
    for key in ("homepage", "repository"):
        schema["properties"][key]["format"] = "uri"
    defs = schema["$defs"]
    defs["Policy"]["properties"].pop("reason")
    defs["ContextPack"]["properties"].pop("inject_mode")
    defs["Action"]["properties"]["action_id"]["pattern"] = ACTION_ID_PATTERN
    defs["Capability"]["properties"]["capability_id"]["pattern"] = (
        r"^[a-z][a-z0-9]*(\.[a-z][a-z0-9]*)*$"
    )
    return schema


def _trace_event(schema: dict[str, Any]) -> dict[str, Any]:
    # What we emit uses the upstream event types only; readers accept more (see TraceEvent).
    schema["properties"]["event_type"] = {"type": "string", "enum": sorted(EVENT_TYPES)}
    return schema


def generate_schemas() -> dict[str, dict[str, Any]]:
    """Generate every bundled schema from the models."""
    schemas = {name: _model_schema(model) for name, model in _MODELS.items()}
    schemas["trace-event"] = _trace_event(schemas["trace-event"])
    schemas["atlas-manifest.strict"] = dict(_strict_atlas(schemas["atlas-manifest"]))
    return schemas


@functools.cache
def bundled_schema(name: str) -> dict[str, Any]:
    """Return the bundled schema ``name`` (one of :data:`SCHEMA_NAMES`)."""
    if name not in SCHEMA_NAMES:
        raise KeyError(f"no bundled schema {name!r}; choose one of {', '.join(SCHEMA_NAMES)}")
    text = resources.files("cra_agents.protocol").joinpath(f"schemas/{name}.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _write(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, schema in generate_schemas().items():
        text = json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (directory / f"{name}.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover - developer tool, checked by test_schemas
    _write(Path(__file__).with_name("schemas"))
