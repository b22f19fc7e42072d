"""Every failure as the API's error body: ``{"error": {code, message, details, request_id, ...}}``.

One handler per kind: a :class:`~cra_agents.CRAError` answers with its own status (a policy
denial is 403, a policy rate limit 429 with ``Retry-After``); a request that fails validation
is 400 ``SCHEMA_VALIDATION_ERROR`` with the paths of the fields at fault (the CARP routes
answer ``INVALID_CARP_REQUEST`` with the paths themselves); an unknown route 404, a wrong
method 405; anything else is 500 ``INTERNAL_ERROR`` with no detail of the failure (it is
logged with the request id).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from cra_agents._exceptions import CRAError, InternalError

__all__ = [
    "PayloadTooLargeError",
    "RequestSchemaError",
    "RequestTimeoutError",
    "error_response",
    "install_error_handlers",
    "internal_error",
    "request_id_of",
]

logger = logging.getLogger("cra_agents.server")


class PayloadTooLargeError(CRAError):
    """The request body is larger than ``max_body_bytes``."""

    default_code = "PAYLOAD_TOO_LARGE"
    status = 413
    category = "validation"


class RequestSchemaError(CRAError):
    """The request does not match the API's schema (body, query or path)."""

    default_code = "SCHEMA_VALIDATION_ERROR"
    status = 400
    category = "validation"


class RequestTimeoutError(CRAError):
    """The request took longer than ``request_timeout``."""

    default_code = "REQUEST_TIMEOUT"
    status = 504
    category = "external"
    recoverable = True


def request_id_of(scope: Any) -> str | None:
    """The request id the middleware gave this request."""
    value = scope.get("cra.request_id")
    return value if isinstance(value, str) else None


def error_response(exc: CRAError, request_id: str | None) -> JSONResponse:
    """``exc`` as its status and error body (``Retry-After`` on 429s)."""
    headers = {}
    retry_after = getattr(exc, "retry_after", None)
    if exc.status == 429 and isinstance(retry_after, int | float):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    return JSONResponse(exc.to_error_response(request_id), status_code=exc.status, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        head, rest = parts[0], parts[1:]
        return head + "".join(f"/{p}" for p in rest)
    return "/".join(parts)


async def _cra_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CRAError)  # noqa: S101 - registered for CRAError only
    return error_response(exc, request_id_of(request.scope))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for it only
    errors = [
        {"path": _location(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))}
        for e in exc.errors()
    ][:50]
    first = errors[0]["path"] if errors else "request"
    error = RequestSchemaError(
        f"invalid request: {first}: {errors[0]['message'] if errors else 'invalid'}",
        details={"errors": errors},
    )
    return error_response(error, request_id_of(request.scope))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for it only
    codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
    body = {
        "error": {
            "code": codes.get(exc.status_code, "HTTP_ERROR"),
            "message": str(exc.detail),
            "category": "not_found" if exc.status_code == 404 else "validation",
            "recoverable": False,
        }
    }
    request_id = request_id_of(request.scope)
    if request_id is not None:
        body["error"]["request_id"] = request_id
    return JSONResponse(body, status_code=exc.status_code, headers=dict(exc.headers or {}))


def internal_error(request_id: str | None) -> JSONResponse:
    """The 500 body of an unexpected failure: nothing of the failure itself."""
    return error_response(
        InternalError("internal error; the request was refused (see the server log)"), request_id
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(CRAError, _cra_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
