"""The runtime: sessions, CARP resolution, context selection and the execution gate."""

from __future__ import annotations

from cra_agents.runtime._runtime import (
    DEFAULT_TTL_SECONDS,
    Authorization,
    Precheck,
    Runtime,
    SessionInfo,
)

__all__ = ["DEFAULT_TTL_SECONDS", "Authorization", "Precheck", "Runtime", "SessionInfo"]
