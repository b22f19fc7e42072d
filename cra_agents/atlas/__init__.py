"""Atlas loading (directory, file, dict, URL), strict validation and the compiled-atlas cache."""

from __future__ import annotations

from cra_agents.atlas._load import AtlasSource, load_atlas
from cra_agents.atlas._model import Atlas
from cra_agents.atlas._validate import Finding, ValidationReport, validate_atlas

__all__ = ["Atlas", "AtlasSource", "Finding", "ValidationReport", "load_atlas", "validate_atlas"]
