"""Who is calling the server: the principal every route and the trace stream act for.

Shared by the parts of the server (routes, the call routes of HTTP mode, the trace stream):
authentication turns a request's headers into a :class:`Principal`; a route checks its
``scopes`` and ``agent_ids``; a session belongs to the principal that created it (its id is kept
in the session's metadata under :data:`OWNER_KEY`) and is invisible (404) to any other.

Imports no web framework: the app stores its authenticator in ``app.state.authenticate``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cra_agents._exceptions import ForbiddenError

__all__ = ["DEFAULT_SCOPES", "OWNER_KEY", "SCOPES", "Authenticator", "Principal", "Scope", "owns"]

Scope = Literal["read", "write", "ingest", "audit"]
#: Every scope a credential may hold.
SCOPES: frozenset[str] = frozenset({"read", "write", "ingest", "audit"})
#: The scopes of an API key that names none: an agent's, not an operator's.
DEFAULT_SCOPES: frozenset[str] = frozenset({"read", "write"})
#: Session metadata key that holds the id of the principal that created the session.
OWNER_KEY = "cra.principal"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    Attributes:
        id: Stable id, e.g. ``"key:ci-bot"`` for an API key, ``"jwt:<sub>"`` for a token.
        scopes: What it may do: ``"read"`` (get, list, traces, verify, stream of its own
            sessions), ``"write"`` (create and end sessions, resolve, execute, calls,
            atlases), ``"ingest"`` (send batches of TRACE events written elsewhere,
            ``POST /v1/ingest/batch``), ``"audit"`` (read, verify and replay every stored
            session, whoever wrote it).
        agent_ids: The agent ids it may act as; ``None`` for any.
    """

    id: str
    scopes: frozenset[str]
    agent_ids: frozenset[str] | None = None

    def require(self, scope: Scope, agent_id: str | None = None) -> None:
        """Raise :class:`ForbiddenError` unless this principal has ``scope`` (for ``agent_id``).

        Raises:
            ForbiddenError: code ``FORBIDDEN``, saying which scope or agent id is missing.
        """
        if scope not in self.scopes:
            raise ForbiddenError(
                f"this credential may not {scope}: it has {sorted(self.scopes) or 'no'} scope",
                details={"reason": "scope", "required": scope},
            )
        if agent_id is not None and self.agent_ids is not None and agent_id not in self.agent_ids:
            raise ForbiddenError(
                f"this credential may not act as agent {agent_id!r}",
                details={"reason": "agent_id", "agent_id": agent_id},
            )


def owns(principal: Principal, metadata: Mapping[str, Any] | None) -> bool:
    """Whether ``principal`` created the session whose metadata is ``metadata``."""
    return metadata is not None and metadata.get(OWNER_KEY) == principal.id


#: Turns request headers (lower-case names) into a principal; raises
#: :class:`~cra_agents.AuthenticationError` (401) when they carry no valid credential.
Authenticator = Callable[[Mapping[str, str]], Principal]
