"""HTTP mode: :class:`Client`, the embedded runtime's surface over a CRA server.

::

    client = cra_agents.Client("http://127.0.0.1:8420", api_key="...")  # or $CRA_URL, $CRA_API_KEY
    session = client.create_session("triage-bot", "Triage new issues")
    with client.call("create_issue", {"repo": "acme/app", "title": "Crash"},
                     session_id=session.session_id) as call:
        call.result = create_issue(**call.arguments)  # decided by the server, run here

A :class:`Client` has the methods of :class:`~cra_agents.Runtime` that make sense remotely
(sessions, resolve, execute, traces, verify, atlases, and guarded calls), so
``cra.configure(mode="http")`` installs one where the guard and the LangChain middleware expect
the runtime: ``@cra.guarded``, ``cra.session``, ``cra.propagate`` and ``CRAMiddleware`` work
unchanged, and the server's gate decides every call (the client holds no decision logic).

**Guarded calls** (:meth:`Client.call`, ``async with client.acall(...)``): decided on entry by
``POST /v1/calls`` (see :mod:`cra_agents.server._calls`); a refusal raises the error the server
answered (:class:`~cra_agents.ActionDeniedError` with its policy id,
:class:`~cra_agents.InvalidParametersError`, ...); a call that needs approval (423) is put to
the local approval handler (``approvals=``) and sent again with its answer; the tool runs
with the server's frozen ``call.arguments``; the outcome is posted on exit, whatever the tool
did. **Fail closed**: a server that cannot be reached, times out or answers 5xx refuses the
call with :class:`~cra_agents.ServiceUnavailableError` — the tool never runs undecided.

**Errors**: an error body's ``code`` picks the :class:`~cra_agents.CRAError` subclass
(one table, :data:`ERRORS`); any 5xx is :class:`~cra_agents.ServiceUnavailableError` (the
server's code and message in ``details``).

**Retries**: only idempotent requests (GET, DELETE, trace verification, precheck) are
retried, on connection errors, timeouts, 502/503/504 and 429, with exponential backoff and
jitter; never session creation, resolve, execute or the call routes.

**Async**: :meth:`Client.acall` and :meth:`gate_async` run the HTTP request in a worker
thread (``asyncio.to_thread``) over the same keep-alive pool; async approval handlers are
awaited on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import httpx

from cra_agents._canonical import canonical_json
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
from cra_agents._retry import backoff_delay, retry_after_seconds
from cra_agents.runtime import (
    ApprovalDecision,
    ApprovalHandler,
    ApprovalRequest,
    Approvers,
    ConsoleApprover,
    OpenScopes,
    Precheck,
    SessionInfo,
    SessionScope,
    ToolMap,
    session_for_call,
)

if TYPE_CHECKING:
    from cra_agents.atlas import Atlas, AtlasSource
    from cra_agents.protocol import CARPRequest, CARPResolution, ExecuteResponse, TraceEvent
    from cra_agents.runtime import Runtime
    from cra_agents.trace import ChainVerification

__all__ = ["ERRORS", "Client", "RemoteCall", "error_from_response"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 2
_RETRY_STATUS = frozenset((429, 502, 503, 504))
_PAGE = 1000

#: Error ``code`` → the class the client raises (codes not listed: :class:`CRAError`).
ERRORS: dict[str, type[CRAError]] = {
    cls.default_code: cls
    for cls in (
        ActionDeniedError,
        ActionNotFoundError,
        ApprovalRequiredError,
        AtlasConflictError,
        AtlasError,
        AtlasNotFoundError,
        AuthenticationError,
        ChainConflictError,
        ConfigurationError,
        ForbiddenError,
        IdempotencyConflictError,
        InternalError,
        InvalidParametersError,
        InvalidRequestError,
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
} | {
    "ATLAS_VERSION_MISMATCH": AtlasError,
    "ATLAS_LOAD_ERROR": AtlasError,
    "SESSION_ALREADY_EXISTS": CRAError,
    "SESSION_EXPIRED": SessionEndedError,
    "INVALID_POLICY": AtlasError,
    "SCHEMA_VALIDATION_ERROR": InvalidRequestError,
    "TRACE_CHAIN_INTEGRITY_ERROR": TraceError,
    "RATE_LIMIT_EXCEEDED": RateLimitExceededError,
}


def error_from_response(response: httpx.Response) -> CRAError:
    """The :class:`CRAError` an error response stands for (see :data:`ERRORS`)."""
    status = response.status_code
    try:
        body = response.json()
        error = body["error"] if isinstance(body, dict) else None
    except ValueError:
        error = None
    if not isinstance(error, dict):
        error = {}
    code = str(error.get("code") or "")
    message = str(error.get("message") or f"HTTP {status} from the CRA server")
    details = error.get("details")
    details = dict(details) if isinstance(details, dict) else {}
    if status >= 500:
        return ServiceUnavailableError(
            f"the CRA server failed ({status} {code or 'no code'}): {message}",
            details={"status": status, "code": code or None, "server_message": message},
        )
    cls = ERRORS.get(code, CRAError)
    return _rebuild(cls, message, code or cls.default_code, details, response)


def _rebuild(
    cls: type[CRAError],
    message: str,
    code: str,
    details: dict[str, Any],
    response: httpx.Response,
) -> CRAError:
    """``cls`` with the server's message, code and details (its own ``__init__`` skipped)."""
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.message, err.code, err.details = message, code, details
    fields: dict[str, Any] = {}
    if issubclass(cls, ActionDeniedError):
        fields = {
            "action_id": details.get("action_id", ""),
            "policy_id": details.get("policy_id", ""),
            "reason": details.get("reason", message),
        }
    if issubclass(cls, (RateLimitExceededError, TooManyRequestsError)):
        fields["retry_after"] = _retry_after(response, details)
    if issubclass(cls, AtlasError):
        fields = {"reason": details.get("reason", ""), "path": details.get("path", "")}
        fields["source"] = None
    for name, value in fields.items():
        setattr(err, name, value)
    return err


def _retry_after(response: httpx.Response, details: Mapping[str, Any]) -> float:
    return retry_after_seconds(details.get("retry_after", response.headers.get("retry-after")))


def _unreachable(exc: Exception) -> ServiceUnavailableError:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "could not be reached"
    return ServiceUnavailableError(
        f"the CRA server {kind}: {type(exc).__name__}: {exc}",
        details={"reason": "timeout" if kind == "timed out" else "unreachable"},
    )


def _recordable(value: Any) -> Any:
    """``value`` if canonical JSON carries it, else its ``repr`` (as the embedded gate)."""
    try:
        canonical_json(value)
    except Exception:  # noqa: BLE001 - anything unrecordable is described instead
        try:
            return repr(value)
        except Exception:  # noqa: BLE001
            return f"<unrepresentable {type(value).__name__}>"
    return value


class RemoteCall:
    """One guarded call decided by the server: what :meth:`Client.call` returns.

    The surface adapters use of :class:`~cra_agents.Call`: enter it (``with`` / ``async
    with``) to have it decided, run the tool with :attr:`arguments`, set :attr:`result`;
    leaving posts the outcome (``action.executed``, or ``action.failed`` with the exception
    that left the block or the one given to :meth:`fail`).
    """

    def __init__(
        self,
        client: Client,
        session_id: str,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        action_id: str | None,
        actions: Mapping[str, str] | None,
        tool_call_id: str | None,
        risk_tier: str | None,
        approval: ApprovalDecision | None,
    ) -> None:
        self._client = client
        self.session_id = session_id
        self.tool = tool
        #: The arguments as given; once decided, the server's frozen ones.
        self.arguments: dict[str, Any] = dict(arguments)
        self.action_id = action_id or ""
        self._explicit_action = action_id
        self.actions = dict(actions) if actions else None
        self.tool_call_id = tool_call_id
        self.risk_tier = risk_tier or ""
        self._stated_risk = risk_tier
        self.approval = approval
        self.call_id: str | None = None
        self.execution_id: str | None = None
        self.policy_id = ""
        self.reason: str | None = None
        self.approver: str | None = None
        #: What the tool returned (set it before leaving the block).
        self.result: Any = None
        self.error: BaseException | None = None
        self._failure: BaseException | None = None
        self.done = False
        self._started = time.monotonic()

    def __repr__(self) -> str:
        return (
            f"RemoteCall(action_id={self.action_id!r}, call_id={self.call_id!r}, "
            f"session_id={self.session_id!r}, policy_id={self.policy_id!r})"
        )

    @property
    def decided(self) -> bool:
        """Whether the server allowed the call (it waits for its outcome)."""
        return self.call_id is not None

    def fail(self, error: BaseException) -> None:
        """Record the call as failed with ``error`` on exit, though no exception left it."""
        self._failure = error

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "session_id": self.session_id,
            "tool": self.tool,
            "arguments": self.arguments,
        }
        if self._explicit_action is not None:
            body["action_id"] = self._explicit_action
        if self.actions:
            body["actions"] = self.actions
        if self.tool_call_id is not None:
            body["tool_call_id"] = self.tool_call_id
        if self._stated_risk is not None:
            body["risk_tier"] = self._stated_risk
        approval = self.approval
        if approval is not None:
            body["approval"] = {
                "approved": approval.approved,
                "approver": approval.approver,
                "reason": approval.reason,
                "original_arguments": (
                    None
                    if approval.original_arguments is None
                    else dict(approval.original_arguments)
                ),
                "responded": approval.responded,
            }
        return body

    def _allowed(self, answer: Mapping[str, Any]) -> None:
        self.call_id = str(answer["call_id"])
        self.execution_id = str(answer.get("execution_id") or self.call_id)
        self.action_id = str(answer["action_id"])
        self.arguments = dict(answer["arguments"])
        self.policy_id = str(answer.get("policy_id") or "")
        self.reason = answer.get("reason")
        self.risk_tier = str(answer.get("risk_tier") or "")
        self.approver = answer.get("approver")
        self._started = time.monotonic()

    def __enter__(self) -> RemoteCall:
        if self.done:
            raise RuntimeError("enter a call returned by Client.call(...), once")
        if not self.decided:
            self._client.gate_sync(self)
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self._client.record_outcome(self, result=self.result, error=exc or self._failure)
        except CRAError:
            # The tool ran: its caller gets its result or exception. The server records the
            # call failed (outcome_not_reported) when its timeout passes.
            logger.exception("reporting the outcome of %s failed", self.action_id)

    async def __aenter__(self) -> RemoteCall:
        if self.done:
            raise RuntimeError("enter a call returned by Client.acall(...), once")
        if not self.decided:
            await self._client.gate_async(self)
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            await asyncio.to_thread(
                self._client.record_outcome, self, result=self.result, error=exc or self._failure
            )
        except CRAError:
            logger.exception("reporting the outcome of %s failed", self.action_id)


class Client:
    """The CRA server, with the embedded :class:`~cra_agents.Runtime`'s methods.

    Args:
        base_url: The server (default ``$CRA_URL``).
        api_key: Sent as ``X-API-Key`` (default ``$CRA_API_KEY``).
        token: A JWT, sent as ``Authorization: Bearer``.
        timeout: Seconds per request (connect, read, write, pool).
        retries: Retries of an idempotent request (see the module docstring).
        backoff: First retry delay in seconds; doubled each retry, with jitter.
        approvals: Who answers calls that need approval (as ``Runtime``'s
            ``approval_handler``): ``"auto_deny"``, ``"console"`` or a callable.
        approval_timeout: Seconds an approver may take.
        implicit_sessions: Calls outside every ``cra.session`` use one implicit server
            session of this client (agent ``cra-implicit``); ``False`` refuses them.
        transport: An ``httpx`` transport (tests).

    Raises:
        ConfigurationError: no ``base_url`` and no ``$CRA_URL``.
    """

    #: Server-side shadow mode is not visible to clients: adapters ask as if it were off.
    shadow = False

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.05,
        approvals: ApprovalHandler = "auto_deny",
        approval_timeout: float = 300.0,
        implicit_sessions: bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = base_url or os.environ.get("CRA_URL")
        if not url:
            raise ConfigurationError(
                "no CRA server URL: pass base_url or set CRA_URL",
                details={"reason": "no_server_url"},
            )
        if api_key is None and token is None:
            api_key = os.environ.get("CRA_API_KEY") or None
        headers = {"accept": "application/json"}
        if api_key is not None:
            headers["x-api-key"] = api_key
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        self.base_url = url.rstrip("/")
        self.retries = max(int(retries), 0)
        self.backoff = backoff
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        self._approvers = Approvers(
            ConsoleApprover() if approvals == "console" else approvals, approval_timeout
        )
        self.implicit_sessions = implicit_sessions
        self._lock = threading.Lock()
        self._scopes = OpenScopes()
        self._atlas_cache: tuple[float, tuple[Atlas, ...]] | None = None
        self._tools: Any = None
        #: How long the atlases read from the server are reused (seconds).
        self.atlas_cache_seconds = 30.0

    # -- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool and the approvers' threads (idempotent)."""
        self._http.close()
        self._approvers.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self, timeout: float = 10.0) -> bool:
        """Nothing is queued here: the server records (for parity with ``Runtime``)."""
        return True

    @property
    def trace_failure(self) -> BaseException | None:
        """Always None: the server's trace failures come back as errors of its answers."""
        return None

    @property
    def approval_handler(self) -> ApprovalHandler:
        """Who answers calls that need approval (asked here, in the client's process)."""
        return self._approvers.handler

    @approval_handler.setter
    def approval_handler(self, handler: ApprovalHandler) -> None:
        self._approvers.handler = ConsoleApprover() if handler == "console" else handler

    @property
    def approval_timeout(self) -> float:
        """Seconds an approver may take."""
        return self._approvers.timeout

    @approval_timeout.setter
    def approval_timeout(self, seconds: float) -> None:
        self._approvers.timeout = seconds

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """Send one request; raise the error it answers. Retries idempotent ones only.

        Raises:
            ServiceUnavailableError: unreachable, timed out, or a 5xx answer.
            CRAError: the error the server answered (see :data:`ERRORS`).
        """
        retry = method in ("GET", "DELETE") if idempotent is None else idempotent
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._http.request(method, path, json=json, params=params)
            except httpx.HTTPError as exc:
                if last:
                    raise _unreachable(exc) from exc
                self._sleep(attempt, None)
                continue
            if response.status_code < 400:
                return response
            if not last and response.status_code in _RETRY_STATUS:
                self._sleep(attempt, response)
                continue
            raise error_from_response(response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _sleep(self, attempt: int, response: httpx.Response | None) -> None:
        delay = backoff_delay(attempt, self.backoff, jitter="half")
        if response is not None and response.status_code == 429:
            delay = max(delay, min(_retry_after(response, {}), 30.0))
        time.sleep(delay)

    def health(self) -> dict[str, Any]:
        """``GET /v1/health``."""
        answer: dict[str, Any] = self._request("GET", "/v1/health").json()
        return answer

    # -- sessions -------------------------------------------------------------------------

    def create_session(
        self,
        agent_id: str,
        goal: str,
        *,
        session_id: str | None = None,
        parent_session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SessionInfo:
        """``POST /v1/sessions`` (never retried: a retry could open a second session)."""
        body: dict[str, Any] = {"agent_id": agent_id, "goal": goal}
        if metadata:
            body["metadata"] = dict(metadata)
        if session_id is not None:
            body["session_id"] = session_id
        if parent_session_id is not None:
            body["parent_session_id"] = parent_session_id
        return _session_info(self._request("POST", "/v1/sessions", json=body).json())

    def session(self, session_id: str) -> SessionInfo:
        """``GET /v1/sessions/{session_id}``."""
        return _session_info(self._request("GET", f"/v1/sessions/{session_id}").json())

    def sessions(
        self, *, status: str = "all", limit: int = 100, offset: int = 0
    ) -> list[SessionInfo]:
        """``GET /v1/sessions``: the caller's sessions (``status``: active, ended or all)."""
        params = {"status": status, "limit": limit, "offset": offset}
        answer = self._request("GET", "/v1/sessions", params=params).json()
        return [_session_info(item) for item in answer.get("items", [])]

    def stored_sessions(
        self, *, limit: int = 100, offset: int = 0, order: str = "oldest"
    ) -> list[SessionInfo]:
        """``GET /v1/stored-sessions``: every session the server stores (``audit`` key).

        ``order``: ``oldest`` or ``newest`` first. Sessions still going have no counts yet;
        ``event_count`` is what the store holds.

        .. versionadded:: 0.2
        """
        params = {"limit": limit, "offset": offset, "order": order}
        answer = self._request("GET", "/v1/stored-sessions", params=params).json()
        return [_session_info(item) for item in answer.get("items", [])]

    def end_session(
        self,
        session_id: str,
        reason: str = "completed",
        *,
        error: str | None = None,
        cause: BaseException | None = None,
    ) -> SessionInfo:
        """``DELETE /v1/sessions/{session_id}``, then the session as it ended.

        ``reason`` and ``error`` go as query parameters (a server that does not read them
        records its own reason).
        """
        params: dict[str, Any] = {"reason": reason}
        if error is not None:
            params["error"] = error[:2000]
        self._request("DELETE", f"/v1/sessions/{session_id}", params=params)
        self._scopes.forget(session_id)
        return self.session(session_id)

    def implicit_session_id(self) -> str:
        """The session of a call made outside every ``cra.session`` block of this client.

        Raises:
            InvalidRequestError: a ``cra.session`` of this client is open, so the call escaped
                it (``session_not_propagated``), or implicit sessions are off (``no_session``).
        """
        return self._scopes.implicit(
            enabled=self.implicit_sessions,
            create=lambda: (
                self.create_session(
                    "cra-implicit", f"implicit session of process {os.getpid()}"
                ).session_id
            ),
            alive=lambda session_id: True,  # forgotten when this client ends it
        )

    def scope_opened(self, session_id: str) -> None:
        """A ``cra.session`` block of this client began."""
        self._scopes.opened(session_id)

    def scope_closed(self, session_id: str) -> None:
        """A ``cra.session`` block of this client ended."""
        self._scopes.closed(session_id)

    def activate_session(self, session_id: str) -> tuple[Any, ...]:
        """Observers run at the server: nothing to activate here."""
        return ()

    def deactivate_session(self, session_id: str, tokens: tuple[Any, ...]) -> None:
        """Undo :meth:`activate_session` (nothing)."""

    def session_scope(
        self, agent_id: str, goal: str, *, metadata: dict[str, Any] | None = None
    ) -> Any:
        """A ``with`` / ``async with`` block that is one server session."""
        return SessionScope(lambda: cast("Runtime", self), agent_id, goal, metadata)

    # -- CARP -----------------------------------------------------------------------------

    def resolve(
        self,
        request: CARPRequest | Mapping[str, Any],
        *,
        context_budget_tokens: int | None = None,
        exclude_context: Iterable[tuple[str, str]] = (),
    ) -> CARPResolution:
        """``POST /v1/resolve`` (never retried).

        ``context_budget_tokens`` and ``exclude_context`` are accepted for parity with
        ``Runtime.resolve`` and not sent: the upstream route has no such fields.
        """
        from cra_agents.protocol import CARPResolution

        answer = self._request("POST", "/v1/resolve", json=_wire(request)).json()
        return CARPResolution.model_validate(answer)

    def execute(self, request: CARPRequest | Mapping[str, Any]) -> ExecuteResponse:
        """``POST /v1/execute`` (never retried)."""
        from cra_agents.protocol import ExecuteResponse

        answer = self._request("POST", "/v1/execute", json=_wire(request)).json()
        return ExecuteResponse.model_validate(answer)

    # -- trace ----------------------------------------------------------------------------

    def trace_events(
        self,
        session_id: str,
        *,
        event_type: str | None = None,
        since_sequence: int | None = None,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        """``GET /v1/traces/{session_id}``, page after page until ``limit`` (None: all).

        ``since_sequence``: events after that sequence number.
        """
        from cra_agents.protocol import TraceEvent

        events: list[TraceEvent] = []
        after = since_sequence
        while limit is None or len(events) < limit:
            page = _PAGE if limit is None else min(_PAGE, limit - len(events))
            params: dict[str, Any] = {"limit": page}
            if event_type is not None:
                params["event_type"] = event_type
            if after is not None:
                params["since_sequence"] = after
            answer = self._request("GET", f"/v1/traces/{session_id}", params=params).json()
            got = [TraceEvent.model_validate(e) for e in answer.get("events", [])]
            events.extend(got)
            if len(got) < page:
                break
            after = got[-1].sequence
        return events

    def verify(self, session_id: str) -> ChainVerification:
        """``POST /v1/traces/{session_id}/verify`` (retried: it changes nothing)."""
        from cra_agents.trace import ChainVerification

        answer = self._request("POST", f"/v1/traces/{session_id}/verify", idempotent=True).json()
        errors = answer.get("errors") or []
        first = errors[0] if errors else {}
        return ChainVerification(
            valid=bool(answer["valid"]),
            event_count=int(answer.get("event_count", 0)),
            first_invalid_index=first.get("sequence"),
            error_type=first.get("error"),
            error_message=(first.get("details") or None) if first else None,
            log_id=session_id,
        )

    def replay(
        self,
        session_id: str,
        atlas: AtlasSource | None = None,
        *,
        atlas_ids: Sequence[str] | None = None,
        default_deny: bool | None = None,
        changed_only: bool = False,
    ) -> dict[str, Any]:
        """``POST /v1/traces/{session_id}/replay``: what a candidate atlas would decide.

        The server re-decides the stored session's decisions against its loaded atlases (or
        ``atlas_ids`` of them), with ``atlas`` (a manifest, path or :class:`Atlas`) in place
        of the loaded atlas of its id. Retried: it changes nothing.

        Returns:
            The report: ``counts`` (decisions, changed, identical, skipped), ``decisions``
            (each ``before``/``after`` as ``[result, policy_id]``, ``changed``), ``skipped``.

        .. versionadded:: 0.2
        """
        body: dict[str, Any] = {"changed_only": changed_only}
        if atlas is not None:
            body["atlas"] = _manifest(atlas)
        if atlas_ids is not None:
            body["atlas_ids"] = list(atlas_ids)
        if default_deny is not None:
            body["default_deny"] = default_deny
        path = f"/v1/traces/{session_id}/replay"
        answer: dict[str, Any] = self._request("POST", path, json=body, idempotent=True).json()
        return answer

    # -- atlases --------------------------------------------------------------------------

    @property
    def atlases(self) -> tuple[Atlas, ...]:
        """The server's loaded atlases (``GET /v1/atlases`` + each manifest), briefly cached."""
        cached = self._atlas_cache
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.atlas_cache_seconds:
            return cached[1]
        answer = self._request("GET", "/v1/atlases").json()
        atlases = tuple(self.atlas(str(item["atlas_id"])) for item in answer.get("items", []))
        self._atlas_cache = (now, atlases)
        self._tools = None
        return atlases

    def atlas(self, atlas_id: str) -> Atlas:
        """``GET /v1/atlases/{atlas_id}``: the manifest, as an :class:`~cra_agents.Atlas`."""
        from cra_agents.atlas import load_atlas

        manifest = self._request("GET", f"/v1/atlases/{atlas_id}").json()
        return load_atlas(manifest)

    def load_atlas(self, source: AtlasSource) -> dict[str, Any]:
        """``POST /v1/atlases`` with the manifest of ``source``; the server's summary."""
        summary: dict[str, Any] = self._request(
            "POST", "/v1/atlases", json=_manifest(source)
        ).json()
        self._atlas_cache = None
        return summary

    def unload_atlas(self, atlas_id: str) -> None:
        """``DELETE /v1/atlases/{atlas_id}``."""
        self._request("DELETE", f"/v1/atlases/{atlas_id}")
        self._atlas_cache = None

    def map_tool(
        self,
        tool: str,
        *,
        action_id: str | None = None,
        actions: Mapping[str, str] | None = None,
    ) -> str:
        """The action ``tool`` performs under the server's atlases (the one mapping rule).

        For adapters that ask before calling; the server maps every call itself.
        """
        atlases = self.atlases
        tools = self._tools
        if tools is None:
            tools = self._tools = ToolMap(atlases)
        mapped: str = tools.map(tool, action_id=action_id, actions=actions)
        return mapped

    # -- guarded calls --------------------------------------------------------------------

    def call(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        action_id: str | None = None,
        actions: Mapping[str, str] | None = None,
        session_id: str | None = None,
        tool_call_id: str | None = None,
        risk_tier: str | None = None,
        approval: ApprovalDecision | None = None,
        approval_id: str | None = None,
    ) -> RemoteCall:
        """One tool call as a context manager, decided by the server (``Runtime.call``'s contract).

        ::

            with client.call("create_issue", {"repo": "acme/app", "title": "Crash"}) as call:
                call.result = create_issue(**call.arguments)

        Raises (on entry): the refusal the server answered (``ActionDeniedError``,
        ``InvalidParametersError``, ``ActionNotFoundError``, ``SessionEndedError``...), or
        ``ServiceUnavailableError`` when it cannot decide (fail closed).
        """
        if approval_id is not None:
            raise InvalidRequestError(
                "approval ids are granted and consumed at the server; over HTTP, give the "
                "approver's answer as approval=ApprovalDecision(...)",
                details={"reason": "approval_id_over_http"},
            )
        if session_id is None:
            session_id = session_for_call(cast("Runtime", self))
        return RemoteCall(
            self,
            session_id,
            tool,
            arguments,
            action_id=action_id,
            actions=actions,
            tool_call_id=tool_call_id,
            risk_tier=risk_tier,
            approval=approval,
        )

    #: :meth:`call` for ``async with``.
    acall = call

    def gate_sync(self, call: RemoteCall, *, ask: bool = True) -> RemoteCall:
        """Have the server decide ``call``; a 423 is put to the approval handler here.

        Raises:
            CRAError: the refusal (the tool must not run); ``ServiceUnavailableError`` when
                the server could not decide.
        """
        try:
            call._allowed(self._post_call(call))
            return call
        except ApprovalRequiredError as needed:
            if not ask or call.approval is not None:
                call.done = True
                raise
            request = _approval_request(call, needed)
        except BaseException:
            call.done = True
            raise
        try:
            call.approval = self._approvers.ask_sync(request)
            call._allowed(self._post_call(call))
        except BaseException:
            call.done = True
            raise
        return call

    async def gate_async(self, call: RemoteCall, *, ask: bool = True) -> RemoteCall:
        """:meth:`gate_sync` for async code (async approval handlers are awaited)."""
        try:
            call._allowed(await asyncio.to_thread(self._post_call, call))
            return call
        except ApprovalRequiredError as needed:
            if not ask or call.approval is not None:
                call.done = True
                raise
            request = _approval_request(call, needed)
        except BaseException:
            call.done = True
            raise
        try:
            call.approval = await self._approvers.ask_async(request)
            call._allowed(await asyncio.to_thread(self._post_call, call))
        except BaseException:
            call.done = True
            raise
        return call

    def _post_call(self, call: RemoteCall) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = self._request(
                "POST", "/v1/calls", json=call._body(), idempotent=False
            ).json()
        except CRAError:
            raise
        except Exception as exc:
            raise ServiceUnavailableError(
                f"the CRA server's answer could not be read: {type(exc).__name__}: {exc}",
                details={"reason": "bad_answer"},
            ) from exc
        return answer

    def authorize(
        self,
        session_id: str,
        action_id: str,
        arguments: Mapping[str, Any],
        *,
        tool_call_id: str | None = None,
        approval: ApprovalDecision | None = None,
        risk_tier: str | None = None,
    ) -> RemoteCall:
        """Decide one call of ``action_id`` (the first half of :meth:`call`)."""
        call = self.call(
            action_id,
            arguments,
            action_id=action_id,
            session_id=session_id,
            tool_call_id=tool_call_id,
            risk_tier=risk_tier,
            approval=approval,
        )
        return self.gate_sync(call)

    def record_outcome(
        self, authorization: RemoteCall, *, result: Any = None, error: BaseException | None = None
    ) -> None:
        """``POST /v1/calls/{call_id}/outcome`` (once per call; never retried).

        Raises:
            InvalidRequestError: the call was not allowed, or its outcome is reported already.
            CRAError: the server's answer (``CALL_NOT_FOUND`` once its timeout passed).
        """
        call = authorization
        if call.call_id is None or call.done:
            raise InvalidRequestError(
                "record_outcome takes an allowed call, once",
                details={"reason": "not_authorized"},
            )
        call.done = True
        call.result, call.error = result, error
        body: dict[str, Any]
        if error is None:
            body = {"status": "executed", "result": _recordable(result)}
        else:
            try:
                message = str(error)
            except Exception:  # noqa: BLE001 - a str() that raises: still recorded
                message = "<unprintable error>"
            body = {
                "status": "failed",
                "error": {"type": type(error).__name__, "message": message[:20_000]},
            }
        self._request("POST", f"/v1/calls/{call.call_id}/outcome", json=body, idempotent=False)

    def precheck(
        self,
        session_id: str,
        action_id: str,
        arguments: Mapping[str, Any],
        *,
        check_parameters: bool = True,
    ) -> Precheck:
        """``POST /v1/calls/precheck``: what the server's gate would decide, recording nothing."""
        body = {
            "session_id": session_id,
            "action_id": action_id,
            "arguments": dict(arguments),
            "check_parameters": check_parameters,
        }
        answer = self._request("POST", "/v1/calls/precheck", json=body, idempotent=True).json()
        return Precheck(
            answer["action_id"],
            answer["result"],
            answer["policy_id"],
            answer.get("reason"),
            answer["risk_tier"],
            answer.get("parameters_problem"),
        )

    def record_approval_request(
        self,
        session_id: str,
        precheck: Precheck,
        arguments: Mapping[str, Any],
        *,
        tool_call_id: str | None = None,
    ) -> int:
        """Have the server record ``approval.requested`` for a call a person is asked about.

        Sends the call without an approval: the server answers 423 and records the question.
        Returns the event's sequence (-1 if the server did not say). A call the server allows
        after all (its policy changed) is reported failed, not run.
        """
        call = RemoteCall(
            self,
            session_id,
            precheck.action_id,
            arguments,
            action_id=precheck.action_id,
            actions=None,
            tool_call_id=tool_call_id,
            risk_tier=None,
            approval=None,
        )
        try:
            call._allowed(self._post_call(call))
        except ApprovalRequiredError as asked:
            return int(asked.details.get("sequence", -1))
        self.record_outcome(call, error=InvalidRequestError("not run: asked for approval"))
        return -1

    def record_event(self, session_id: str, event_type: str, payload: Mapping[str, Any]) -> int:
        """Extension events are not part of the HTTP API.

        Raises:
            InvalidRequestError: always (reason ``not_supported_over_http``).
        """
        raise InvalidRequestError(
            f"recording {event_type!r} events is not supported over HTTP",
            details={"reason": "not_supported_over_http", "event_type": event_type},
        )


def _manifest(source: AtlasSource) -> dict[str, Any]:
    """The manifest JSON of an atlas source, as ``POST /v1/atlases`` takes it."""
    if isinstance(source, Mapping):
        return dict(source)
    from cra_agents.atlas import load_atlas

    atlas = load_atlas(source)
    manifest: dict[str, Any] = atlas.manifest.model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    return manifest


def _wire(request: Any) -> Any:
    if isinstance(request, Mapping):
        return dict(request)
    return request.model_dump(mode="json", exclude_none=True)


def _session_info(data: Mapping[str, Any]) -> SessionInfo:
    metadata = data.get("metadata")
    return SessionInfo(
        session_id=str(data["session_id"]),
        agent_id=str(data.get("agent_id", "")),
        goal=str(data.get("goal") or ""),
        trace_id=str(data.get("trace_id") or ""),
        parent_session_id=data.get("parent_session_id"),
        created_at=str(data.get("created_at") or ""),
        active=data.get("status", "active") == "active",
        ended_at=data.get("ended_at"),
        resolution_count=int(data.get("resolution_count") or 0),
        action_count=int(data.get("action_count") or 0),
        event_count=int(data.get("event_count") or 0),
        durable_count=int(data.get("durable_count") or 0),
        metadata=dict(metadata) if isinstance(metadata, Mapping) else None,
    )


def _approval_request(call: RemoteCall, needed: ApprovalRequiredError) -> ApprovalRequest:
    """What the local approver is asked, from the 423's details."""
    d = needed.details
    return ApprovalRequest(
        session_id=str(d.get("session_id") or call.session_id),
        agent_id=str(d.get("agent_id") or ""),
        action_id=str(d.get("action_id") or call.action_id or call.tool),
        arguments=dict(d.get("arguments") or call.arguments),
        digest=str(d.get("digest") or ""),
        risk_tier=str(d.get("risk_tier") or "low"),
        reason=str(d.get("reason") or needed.message),
        policy_id=str(d.get("policy_id") or ""),
    )
