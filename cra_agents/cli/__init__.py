"""The ``cra`` command."""

from __future__ import annotations

from cra_agents.cli._main import main

__all__ = ["main"]
