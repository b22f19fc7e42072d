"""Errors raised by cra-agents.

Every error carries a stable ``code`` (the upstream CRA error code where upstream has one), the
HTTP status and category the upstream reference core maps it to, and keyword-only context::

    CRAError(Exception)                       .code .status .category .recoverable .details
    ├── AtlasError(CRAError, ValueError)                .path .reason   INVALID_ATLAS_MANIFEST,
    │                                                                   ATLAS_LOAD_ERROR, ...
    ├── AtlasNotFoundError(CRAError, LookupError)       ATLAS_NOT_FOUND
    ├── AtlasConflictError(CRAError)                    ATLAS_ALREADY_LOADED
    ├── InvalidRequestError(CRAError, ValueError)       INVALID_CARP_REQUEST   .reason
    ├── InvalidParametersError(CRAError, ValueError)    INVALID_PARAMETERS     .action_id .errors
    ├── SessionNotFoundError(CRAError, LookupError)     SESSION_NOT_FOUND
    ├── SessionEndedError(CRAError)                     SESSION_ALREADY_ENDED
    ├── ResolutionNotFoundError(CRAError, LookupError)  RESOLUTION_NOT_FOUND
    ├── ResolutionExpiredError(CRAError)                RESOLUTION_EXPIRED
    ├── ActionNotFoundError(CRAError, LookupError)      ACTION_NOT_FOUND
    ├── ActionDeniedError(CRAError, PermissionError)    ACTION_DENIED          .action_id .policy_id
    ├── ApprovalRequiredError(CRAError)                 ACTION_REQUIRES_APPROVAL
    ├── RateLimitExceededError(ActionDeniedError)       RATE_LIMIT_EXCEEDED    .retry_after
    ├── IdempotencyConflictError(CRAError)              IDEMPOTENCY_CONFLICT
    ├── TraceError(CRAError, ValueError)                INVALID_TRACE_EVENT
    ├── TraceUnavailableError(CRAError)                 TRACE_UNAVAILABLE
    ├── ConfigurationError(CRAError, ValueError)        CONFIGURATION_ERROR
    ├── MissingDependencyError(CRAError, ImportError)   MISSING_DEPENDENCY     .package .extra
    ├── AuthenticationError(CRAError)                   UNAUTHORIZED           (HTTP mode)
    ├── ForbiddenError(CRAError, PermissionError)       FORBIDDEN              (HTTP mode)
    ├── TooManyRequestsError(CRAError)                  TOO_MANY_REQUESTS      .retry_after
    ├── ServiceUnavailableError(CRAError)               SERVICE_UNAVAILABLE    (HTTP mode)
    └── InternalError(CRAError)                         INTERNAL_ERROR

Callers may catch either our class or the builtin it also derives from.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ActionDeniedError",
    "ActionNotFoundError",
    "ApprovalRequiredError",
    "AtlasConflictError",
    "AtlasError",
    "AtlasNotFoundError",
    "AuthenticationError",
    "CRAError",
    "ChainConflictError",
    "ConfigurationError",
    "ForbiddenError",
    "IdempotencyConflictError",
    "InternalError",
    "InvalidParametersError",
    "InvalidRequestError",
    "MissingDependencyError",
    "RateLimitExceededError",
    "ResolutionExpiredError",
    "ResolutionNotFoundError",
    "ServiceUnavailableError",
    "SessionEndedError",
    "SessionNotFoundError",
    "TooManyRequestsError",
    "TraceError",
    "TraceUnavailableError",
]


class CRAError(Exception):
    """Base class of every error cra-agents raises on purpose.

    Attributes:
        code: Stable machine-readable code, e.g. ``"SESSION_NOT_FOUND"``.
        status: The HTTP status the upstream API maps the code to.
        category: One of ``not_found``, ``validation``, ``authorization``, ``conflict``,
            ``rate_limit``, ``integrity``, ``internal``, ``external``.
        recoverable: Whether retrying later (or after approval) can succeed.
        details: Extra structured context; always JSON-serialisable.
    """

    default_code: ClassVar[str] = "INTERNAL_ERROR"
    status: ClassVar[int] = 500
    category: ClassVar[str] = "internal"
    recoverable: ClassVar[bool] = False

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details: dict[str, Any] = dict(details or {})

    def to_error_response(self, request_id: str | None = None) -> dict[str, Any]:
        """Return the HTTP error body: upstream's ``Error`` object plus category/recoverable."""
        error: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "category": self.category,
            "recoverable": self.recoverable,
        }
        if self.details:
            error["details"] = self.details
        if request_id is not None:
            error["request_id"] = request_id
        return {"error": error}

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only context must survive pickling (multiprocessing, logging handlers).
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[CRAError], state: dict[str, Any]) -> CRAError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


class AtlasError(CRAError, ValueError):
    """An atlas could not be loaded or is invalid. Nothing of it was loaded.

    Attributes:
        path: JSON pointer of the offending field (``""`` for the whole document).
        reason: Short slug such as ``invalid_json``, ``duplicate_key``, ``too_deep``,
            ``too_large``, ``schema``, ``digest_mismatch``, ``fetch_failed``.
        source: Where the atlas came from (path, URL or ``"<dict>"``).
    """

    default_code = "INVALID_ATLAS_MANIFEST"
    status = 400
    category = "validation"

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        path: str = "",
        source: str | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        location = f" at {path}" if path else ""
        origin = f" ({source})" if source else ""
        super().__init__(f"{message}{location}{origin}", code=code, details=details)
        self.reason = reason
        self.path = path
        self.source = source
        self.details.setdefault("reason", reason)
        if path:
            self.details.setdefault("path", path)


class AtlasNotFoundError(CRAError, LookupError):
    """A request named an atlas that is not loaded."""

    default_code = "ATLAS_NOT_FOUND"
    status = 404
    category = "not_found"


class AtlasConflictError(CRAError):
    """An atlas (or an action id it declares) is already loaded."""

    default_code = "ATLAS_ALREADY_LOADED"
    status = 409
    category = "conflict"


class InvalidRequestError(CRAError, ValueError):
    """A CARP request is malformed or breaks a runtime rule (duplicate id, clock skew...)."""

    default_code = "INVALID_CARP_REQUEST"
    status = 400
    category = "validation"


class InvalidParametersError(CRAError, ValueError):
    """Execution parameters do not validate against the action's ``parameters_schema``."""

    default_code = "INVALID_PARAMETERS"
    status = 400
    category = "validation"


class SessionNotFoundError(CRAError, LookupError):
    """No session with that id exists in this runtime."""

    default_code = "SESSION_NOT_FOUND"
    status = 404
    category = "not_found"


class SessionEndedError(CRAError):
    """The session has ended; it accepts no further requests."""

    default_code = "SESSION_ALREADY_ENDED"
    status = 409
    category = "conflict"


class ResolutionNotFoundError(CRAError, LookupError):
    """An execute request names a resolution this session never produced."""

    default_code = "RESOLUTION_NOT_FOUND"
    status = 404
    category = "not_found"


class ResolutionExpiredError(CRAError):
    """The resolution's ``ttl_seconds`` has passed; resolve again."""

    default_code = "RESOLUTION_EXPIRED"
    status = 410
    category = "conflict"
    recoverable = True


class ActionNotFoundError(CRAError, LookupError):
    """No loaded atlas declares the action."""

    default_code = "ACTION_NOT_FOUND"
    status = 404
    category = "not_found"


class ActionDeniedError(CRAError, PermissionError):
    """The action is not permitted.

    Attributes:
        action_id: The action that was denied.
        policy_id: The policy (or built-in rule such as ``undeclared-action``) that denied it.
        reason: Human-readable reason, from the policy where it gives one.
    """

    default_code = "ACTION_DENIED"
    status = 403
    category = "authorization"

    def __init__(
        self,
        message: str,
        *,
        action_id: str,
        policy_id: str,
        reason: str,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        merged = {"action_id": action_id, "policy_id": policy_id, "reason": reason}
        merged.update(details or {})
        super().__init__(message, code=code, details=merged)
        self.action_id = action_id
        self.policy_id = policy_id
        self.reason = reason


class RateLimitExceededError(ActionDeniedError):
    """A rate-limit policy has no slot left; retry after ``retry_after`` seconds."""

    default_code = "RATE_LIMIT_EXCEEDED"
    status = 429
    category = "rate_limit"
    recoverable = True

    def __init__(self, message: str, *, action_id: str, policy_id: str, retry_after: float) -> None:
        super().__init__(
            message,
            action_id=action_id,
            policy_id=policy_id,
            reason="rate_limit_exceeded",
            details={"retry_after": retry_after},
        )
        self.retry_after = retry_after


class ApprovalRequiredError(CRAError):
    """The action needs a human approval that has not been given."""

    default_code = "ACTION_REQUIRES_APPROVAL"
    status = 423
    category = "authorization"
    recoverable = True


class IdempotencyConflictError(CRAError):
    """An idempotency key was reused with different parameters or another action."""

    default_code = "IDEMPOTENCY_CONFLICT"
    status = 409
    category = "conflict"


class TraceError(CRAError, ValueError):
    """A TRACE event could not be built or recorded (e.g. a payload that is not canonical JSON)."""

    default_code = "INVALID_TRACE_EVENT"
    status = 400
    category = "validation"


class ChainConflictError(TraceError):
    """Events offered to a store do not continue the chain it holds (ingest).

    ``details["reason"]``: ``gap`` (events missing before them), ``link`` (not linked to the
    event before), ``fork`` (a different event at a stored sequence: two histories of one
    session), ``event_id_reused`` (the event id belongs to another stored event). Nothing of
    the batch was stored; resending the same batch fails the same way.
    """

    default_code = "TRACE_CHAIN_CONFLICT"
    status = 409
    category = "integrity"


class TraceUnavailableError(CRAError):
    """Events can no longer be recorded durably (store failure, writer stopped, closed).

    Everything that needs an audit record is refused until the runtime is rebuilt: fail closed.
    """

    default_code = "TRACE_UNAVAILABLE"
    status = 503
    category = "internal"
    recoverable = True


class ConfigurationError(CRAError, ValueError):
    """cra-agents is set up wrongly: a bad store URL, endpoint or option, or no runtime yet.

    Raised where a setting is read, before anything runs. It is also a ``ValueError``: every
    such problem is a value given to an argument or an environment variable, and callers that
    caught the ``ValueError`` these places raised before keep working.

    ``details["reason"]`` is a slug naming the problem, e.g. ``unknown_store_scheme``.
    """

    default_code = "CONFIGURATION_ERROR"
    status = 500
    category = "internal"


class MissingDependencyError(CRAError, ImportError):
    """A feature needs an optional dependency that is not installed.

    The message ends with the command that installs it, ``pip install 'cra-agents[EXTRA]'``.
    It is also an ``ImportError``, so ``except ImportError`` around an optional feature works.

    Args:
        message: What needed the dependency, e.g. ``"exporting spans over OTLP"``.
        package: The missing distribution, e.g. ``"opentelemetry-sdk"``.
        extra: The cra-agents extra that installs it, e.g. ``"otel"``.

    Attributes:
        package: The missing distribution.
        extra: The extra that installs it.
        install_hint: ``pip install 'cra-agents[EXTRA]'``.
    """

    default_code = "MISSING_DEPENDENCY"
    status = 500
    category = "internal"

    def __init__(
        self,
        message: str,
        *,
        package: str,
        extra: str,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        hint = f"pip install 'cra-agents[{extra}]'"
        merged = {"package": package, "extra": extra}
        merged.update(details or {})
        super().__init__(f"{message} needs {package}: {hint}", code=code, details=merged)
        self.package = package
        self.extra = extra
        self.install_hint = hint


class AuthenticationError(CRAError):
    """A request to the server carried no credentials, or credentials that do not verify."""

    default_code = "UNAUTHORIZED"
    status = 401
    category = "authorization"


class ForbiddenError(CRAError, PermissionError):
    """The caller is known but may not do this (scope, or an agent id it may not act for)."""

    default_code = "FORBIDDEN"
    status = 403
    category = "authorization"


class TooManyRequestsError(CRAError):
    """The server's per-caller request rate is exhausted; retry after ``retry_after`` seconds.

    Not a policy decision (that is :class:`RateLimitExceededError`): a limit on API requests.
    """

    default_code = "TOO_MANY_REQUESTS"
    status = 429
    category = "rate_limit"
    recoverable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.retry_after = retry_after
        self.details.setdefault("retry_after", retry_after)


class ServiceUnavailableError(CRAError):
    """The CRA server could not be reached or did not answer in time (HTTP mode).

    A guarded call that meets it is refused: nothing runs undecided (fail closed).
    """

    default_code = "SERVICE_UNAVAILABLE"
    status = 503
    category = "external"
    recoverable = True


class InternalError(CRAError):
    """An unexpected failure inside cra-agents; the operation was refused (fail closed)."""

    default_code = "INTERNAL_ERROR"
    status = 500
    category = "internal"
