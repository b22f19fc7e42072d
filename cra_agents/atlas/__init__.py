"""Atlas loading (directory, file, dict, URL), strict validation, linting and conversion.

Conversion turns a legacy Atlas 0.1 atlas into an Atlas 1.0 one.
"""

from __future__ import annotations

from cra_agents.atlas._convert import AtlasConversion, convert_legacy_atlas
from cra_agents.atlas._lint import lint_atlas
from cra_agents.atlas._load import AtlasSource, load_atlas
from cra_agents.atlas._model import Atlas
from cra_agents.atlas._validate import Finding, ValidationReport, validate_atlas

__all__ = [
    "Atlas",
    "AtlasConversion",
    "AtlasSource",
    "Finding",
    "ValidationReport",
    "convert_legacy_atlas",
    "lint_atlas",
    "load_atlas",
    "validate_atlas",
]
