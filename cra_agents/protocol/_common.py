"""Shared field types of the CARP, TRACE and Atlas 1.0 wire models."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ACTION_ID_PATTERN",
    "ATLAS_ID_PATTERN",
    "LENIENT_ACTION_ID_PATTERN",
    "RFC3339_PATTERN",
    "SEMVER_PATTERN",
    "UUID_PATTERN",
    "ActionId",
    "AtlasId",
    "RiskTier",
    "Timestamp",
    "Uuid",
    "WireModel",
    "trusted",
]

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
RFC3339_PATTERN = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
#: The spec's action id: dotted lower-case segments of letters and digits.
ACTION_ID_PATTERN = r"^[a-z][a-z0-9]*(\.[a-z][a-z0-9]*)+$"
#: What real atlases use as well (``trace.edit_event``): ``_`` and ``-`` inside segments.
LENIENT_ACTION_ID_PATTERN = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$"
ATLAS_ID_PATTERN = r"^[a-z][a-z0-9]*(\.[a-z][a-z0-9-]*)+$"
#: A Semantic Versioning 2.0.0 version (an atlas's ``version``).
SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)

Uuid = Annotated[str, Field(pattern=UUID_PATTERN)]
Timestamp = Annotated[str, Field(pattern=RFC3339_PATTERN)]
ActionId = Annotated[str, Field(pattern=LENIENT_ACTION_ID_PATTERN, max_length=255)]
AtlasId = Annotated[str, Field(pattern=ATLAS_ID_PATTERN, max_length=255)]
RiskTier = Literal["low", "medium", "high", "critical"]


class WireModel(BaseModel):
    """Base of every wire message: unknown keys are rejected, instances are immutable."""

    # defer_build: validators are built on first use, keeping ``import cra_agents`` fast.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


M = TypeVar("M", bound=BaseModel)
_new = object.__new__
_set = object.__setattr__


def trusted(cls: type[M], fields: dict[str, object]) -> M:
    """Build ``cls`` from fields this package has already validated, skipping validation.

    Every field must be present. Used on the resolve hot path, where ``model_validate`` of a
    resolution costs more than the whole decision; tests compare the result with the validated
    model so the two cannot drift apart.
    """
    instance = _new(cls)
    _set(instance, "__dict__", fields)
    _set(instance, "__pydantic_fields_set__", set(fields))
    _set(instance, "__pydantic_extra__", None)
    _set(instance, "__pydantic_private__", None)
    return instance
