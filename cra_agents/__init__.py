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

import importlib
import typing

from cra_agents._exceptions import (
    ActionDeniedError,
    ActionNotFoundError,
    ApprovalRequiredError,
    AtlasConflictError,
    AtlasError,
    AtlasNotFoundError,
    AuthenticationError,
    ChainConflictError,
    ConfigurationError,
    CRAError,
    ForbiddenError,
    IdempotencyConflictError,
    InternalError,
    InvalidParametersError,
    InvalidRequestError,
    MissingDependencyError,
    RateLimitExceededError,
    ResolutionExpiredError,
    ResolutionNotFoundError,
    ServiceUnavailableError,
    SessionEndedError,
    SessionNotFoundError,
    TooManyRequestsError,
    TraceError,
    TraceUnavailableError,
)
from cra_agents._lazy import lazy_exports as _lazy_exports
from cra_agents._version import __version__

if typing.TYPE_CHECKING:
    from cra_agents._requests import execute_request, resolve_request
    from cra_agents.atlas import Atlas, Finding, ValidationReport, load_atlas, validate_atlas
    from cra_agents.client import Client
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
    from cra_agents.tools import lint_atlas
    from cra_agents.trace import (
        ChainVerification,
        JsonlStore,
        MemoryStore,
        SqliteStore,
        TraceStore,
        open_store,
        verify_chain,
    )

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
    "AuthenticationError",
    "Authorization",
    "CARPRequest",
    "CARPResolution",
    "CRAError",
    "Call",
    "ChainConflictError",
    "ChainVerification",
    "Client",
    "ConfigurationError",
    "ConsoleApprover",
    "ExecuteResponse",
    "Finding",
    "ForbiddenError",
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
    "ServiceUnavailableError",
    "SessionEndedError",
    "SessionInfo",
    "SessionNotFoundError",
    "SqliteStore",
    "TooManyRequestsError",
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

# Everything but the errors is imported on first use (PEP 562), so that ``import cra_agents``
# and what imports a submodule (``cra --help`` imports cra_agents.cli) load only what they use.
_getattr, __dir__ = _lazy_exports(
    __name__,
    {
        **dict.fromkeys(("execute_request", "resolve_request"), "cra_agents._requests"),
        **dict.fromkeys(
            ("Atlas", "Finding", "ValidationReport", "load_atlas", "validate_atlas"),
            "cra_agents.atlas",
        ),
        "Client": "cra_agents.client",
        **dict.fromkeys(
            (
                "configure",
                "current_session",
                "get_runtime",
                "guarded",
                "propagate",
                "session",
                "shutdown",
            ),
            "cra_agents.guard",
        ),
        **dict.fromkeys(
            ("CARPRequest", "CARPResolution", "ExecuteResponse", "TraceEvent"),
            "cra_agents.protocol",
        ),
        **dict.fromkeys(
            (
                "Approval",
                "ApprovalDecision",
                "ApprovalRequest",
                "Authorization",
                "Call",
                "ConsoleApprover",
                "Observer",
                "Precheck",
                "Runtime",
                "RuntimeObserver",
                "SessionInfo",
            ),
            "cra_agents.runtime",
        ),
        "lint_atlas": "cra_agents.tools",
        **dict.fromkeys(
            (
                "ChainVerification",
                "JsonlStore",
                "MemoryStore",
                "SqliteStore",
                "TraceStore",
                "open_store",
                "verify_chain",
            ),
            "cra_agents.trace",
        ),
    },
)

#: Subpackages ``import cra_agents`` used to load, still reachable as attributes.
_SUBPACKAGES = frozenset(("atlas", "guard", "policy", "protocol", "runtime", "trace"))


def __getattr__(name: str) -> object:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    return _getattr(name)
