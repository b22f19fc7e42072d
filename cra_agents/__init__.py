"""cra-agents: governed, provable tool calls for AI agents.

Resolve an agent's tool calls (CARP/1.0) against loaded atlases (Atlas/1.0) before they run, and
record every step in a SHA-256 hash-chained audit log (TRACE/1.0)::

    import cra_agents as cra
    from cra_agents.examples import atlas_path

    runtime = cra.Runtime(atlases=[atlas_path("github-ops")])
    session = runtime.create_session("triage-bot", "Triage new issues")
    resolution = runtime.resolve(cra.resolve_request(session, "Triage new issues"))
    assert cra.verify_chain(runtime.trace_events(session.session_id)).valid
"""

from __future__ import annotations

import typing

from cra_agents._exceptions import (
    ActionDeniedError,
    ActionNotFoundError,
    ApprovalRequiredError,
    AtlasConflictError,
    AtlasError,
    AtlasNotFoundError,
    ConfigurationError,
    CRAError,
    IdempotencyConflictError,
    InternalError,
    InvalidParametersError,
    InvalidRequestError,
    MissingDependencyError,
    RateLimitExceededError,
    ResolutionExpiredError,
    ResolutionNotFoundError,
    SessionEndedError,
    SessionNotFoundError,
    TraceError,
    TraceUnavailableError,
)
from cra_agents._lazy import lazy_exports as _lazy_exports
from cra_agents._requests import execute_request, resolve_request
from cra_agents._version import __version__
from cra_agents.atlas import Atlas, Finding, ValidationReport, load_atlas, validate_atlas
from cra_agents.guard import (
    configure,
    current_session,
    get_runtime,
    guarded,
    propagate,
    session,
    shutdown,
)
from cra_agents.protocol import CARPRequest, CARPResolution, ExecuteResponse, TraceEvent
from cra_agents.runtime import (
    Approval,
    ApprovalDecision,
    ApprovalRequest,
    Authorization,
    Call,
    ConsoleApprover,
    Observer,
    Precheck,
    Runtime,
    RuntimeObserver,
    SessionInfo,
)
from cra_agents.trace import (
    ChainVerification,
    JsonlStore,
    MemoryStore,
    SqliteStore,
    TraceStore,
    open_store,
    verify_chain,
)

if typing.TYPE_CHECKING:
    from cra_agents.tools import lint_atlas

#: The name the guard documentation uses for a denied call.
ActionDenied = ActionDeniedError

__all__ = [
    "ActionDenied",
    "ActionDeniedError",
    "ActionNotFoundError",
    "Approval",
    "ApprovalDecision",
    "ApprovalRequest",
    "ApprovalRequiredError",
    "Atlas",
    "AtlasConflictError",
    "AtlasError",
    "AtlasNotFoundError",
    "Authorization",
    "CARPRequest",
    "CARPResolution",
    "CRAError",
    "Call",
    "ChainVerification",
    "ConfigurationError",
    "ConsoleApprover",
    "ExecuteResponse",
    "Finding",
    "IdempotencyConflictError",
    "InternalError",
    "InvalidParametersError",
    "InvalidRequestError",
    "JsonlStore",
    "MemoryStore",
    "MissingDependencyError",
    "Observer",
    "Precheck",
    "RateLimitExceededError",
    "ResolutionExpiredError",
    "ResolutionNotFoundError",
    "Runtime",
    "RuntimeObserver",
    "SessionEndedError",
    "SessionInfo",
    "SessionNotFoundError",
    "SqliteStore",
    "TraceError",
    "TraceEvent",
    "TraceStore",
    "TraceUnavailableError",
    "ValidationReport",
    "__version__",
    "configure",
    "current_session",
    "execute_request",
    "get_runtime",
    "guarded",
    "lint_atlas",
    "load_atlas",
    "open_store",
    "propagate",
    "resolve_request",
    "session",
    "shutdown",
    "validate_atlas",
    "verify_chain",
]

# The tools sit above the policy engine, and ``import cra_agents`` does not need them.
__getattr__, __dir__ = _lazy_exports(__name__, {"lint_atlas": "cra_agents.tools"})
