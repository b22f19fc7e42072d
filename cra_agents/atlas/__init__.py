"""Atlas loading (directory, file, dict, URL) and strict validation.

Linting and legacy conversion moved to :mod:`cra_agents.tools`; ``lint_atlas``,
``convert_legacy_atlas`` and ``AtlasConversion`` still resolve here, loaded on first use, but
are no longer listed in ``__all__``.
"""

from __future__ import annotations

import typing

from cra_agents._lazy import lazy_exports as _lazy_exports
from cra_agents.atlas._load import (
    DEFAULT_MAX_BYTES,
    MAX_CONTEXT_BYTES,
    AtlasSource,
    json_pointer,
    load_atlas,
    read_context_file,
    read_document,
)
from cra_agents.atlas._model import Atlas
from cra_agents.atlas._validate import Finding, Severity, ValidationReport, validate_atlas

if typing.TYPE_CHECKING:
    from cra_agents.tools import AtlasConversion as AtlasConversion
    from cra_agents.tools import convert_legacy_atlas as convert_legacy_atlas
    from cra_agents.tools import lint_atlas as lint_atlas

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_CONTEXT_BYTES",
    "Atlas",
    "AtlasSource",
    "Finding",
    "Severity",
    "ValidationReport",
    "json_pointer",
    "load_atlas",
    "read_context_file",
    "read_document",
    "validate_atlas",
]

# Moved to cra_agents.tools, which sits above the policy engine: still importable from here,
# without ``import cra_agents.atlas`` loading the tools, but no longer listed.
__getattr__, __dir__ = _lazy_exports(
    __name__,
    dict.fromkeys(("AtlasConversion", "convert_legacy_atlas", "lint_atlas"), "cra_agents.tools"),
    listed=False,
)
