"""Tools that sit above the policy engine and the atlas loader: linting and legacy conversion.

Not imported by ``import cra_agents``; ``cra_agents.lint_atlas`` loads this module on first use::

    from cra_agents.examples import atlas_path
    from cra_agents.tools import convert_legacy_atlas, lint_atlas

    report = lint_atlas(atlas_path("github-ops"))
    conversion = convert_legacy_atlas("legacy-atlas/")
"""

from __future__ import annotations

from cra_agents.tools._convert import AtlasConversion, convert_legacy_atlas
from cra_agents.tools._lint import lint_atlas

__all__ = ["AtlasConversion", "convert_legacy_atlas", "lint_atlas"]
