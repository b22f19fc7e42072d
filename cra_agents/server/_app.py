"""The app factory: :func:`create_app` wires a runtime, a configuration and the routes.

The served ``/openapi.json`` is the upstream contract (``openapi.yaml``, shipped in this package
as ``openapi.json``) with our reconciliations (PROTOCOL_NOTES §6/§7), plus the routes other
routers add (documented as extensions, ``x-cra-extension: true``).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi

from cra_agents._clock import format_timestamp
from cra_agents._version import __version__
from cra_agents.runtime import Runtime
from cra_agents.server._auth import CredentialAuthenticator
from cra_agents.server._config import ServerConfig
from cra_agents.server._errors import install_error_handlers
from cra_agents.server._limits import RequestMiddleware, TokenBuckets, current_request
from cra_agents.server._principal import Authenticator, Principal
from cra_agents.server._replay import router as replay_router
from cra_agents.server._routes import health_router, router

__all__ = ["OPTIONAL_ROUTERS", "contract", "create_app"]

#: Routers of other parts of the server, mounted when their module is installed.
OPTIONAL_ROUTERS = (
    "cra_agents.server._stream",
    "cra_agents.server._calls",
    "cra_agents.server._ingest",
)


@cache
def _upstream() -> dict[str, Any]:
    text = (Path(__file__).with_name("openapi.json")).read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def contract() -> dict[str, Any]:
    """The upstream OpenAPI document with our reconciliations (a fresh copy)."""
    document = copy.deepcopy(_upstream())
    schemas = document["components"]["schemas"]
    # Event 0 has no parent span: TRACE writes null there (PROTOCOL_NOTES §7 #5).
    schemas["TraceEvent"]["properties"]["parent_span_id"] = {
        "type": ["string", "null"],
        "format": "uuid",
    }
    # Our error object carries Rust's category and recoverable too (§7 #30).
    error = schemas["Error"]["properties"]["error"]["properties"]
    error["category"] = {"type": "string"}
    error["recoverable"] = {"type": "boolean"}
    document["paths"]["/health"] = copy.deepcopy(document["paths"]["/v1/health"])
    document["paths"]["/health"]["get"]["operationId"] = "getHealthRoot"
    document["paths"]["/health"]["get"]["x-cra-extension"] = True
    return document


def _limited(authenticate: Authenticator, buckets: TokenBuckets) -> Authenticator:
    """``authenticate``, then one token of the principal's bucket; noted for the access log."""

    def authenticated(headers: Any) -> Principal:
        principal = authenticate(headers)
        info = current_request()
        if info is not None:
            info.principal = principal.id
        buckets.take(principal.id)
        return principal

    return authenticated


def _openapi(app: FastAPI) -> dict[str, Any]:
    document = contract()
    generated = get_openapi(title="cra", version=__version__, routes=app.routes)
    for path, item in generated.get("paths", {}).items():
        if path in document["paths"]:
            continue
        for operation in item.values():
            if isinstance(operation, dict):
                operation["x-cra-extension"] = True
        document["paths"][path] = item
    schemas = document["components"]["schemas"]
    for name, schema in generated.get("components", {}).get("schemas", {}).items():
        schemas.setdefault(name, schema)
    return document


def create_app(runtime: Runtime, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``runtime`` under ``config``.

    Sets ``app.state.runtime``, ``app.state.authenticate`` (API keys and JWTs, then the
    per-principal rate limit) and ``app.state.config``; mounts the optional routers that are
    installed. The caller owns the runtime (``cra serve`` closes it at shutdown).
    """
    config = config or ServerConfig()
    app = FastAPI(
        title="CRA Runtime API",
        version=__version__,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    buckets = TokenBuckets(config.rate_limit_per_second, config.rate_limit_burst)
    app.state.runtime = runtime
    app.state.config = config
    app.state.rate_limits = buckets
    app.state.authenticate = _limited(CredentialAuthenticator(config), buckets)
    app.state.started = time.monotonic()
    now = format_timestamp(time.time_ns())
    app.state.atlas_loaded_at = {atlas.atlas_id: now for atlas in runtime.atlases}
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(router)
    app.include_router(replay_router)
    for name in OPTIONAL_ROUTERS:
        if importlib.util.find_spec(name) is not None:
            app.include_router(importlib.import_module(name).router)
    document: dict[str, Any] = {}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> Response:
        if not document:
            document.update(_openapi(app))
        return Response(json.dumps(document), media_type="application/json")

    app.add_middleware(
        RequestMiddleware,
        max_body_bytes=config.max_body_bytes,
        request_timeout=config.request_timeout,
        access_log=config.access_log,
    )
    return app
