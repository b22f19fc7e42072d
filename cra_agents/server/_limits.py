"""What every request goes through: request id, body size, timeout, rate limit, access log.

:class:`RequestMiddleware` is one pure ASGI middleware (no per-request task or copy of the
request beyond its body):

- **Request id**: ``X-Request-ID`` is taken when it is a short printable token, else a new one
  is made; it is echoed on every response, put in every error body and access log line. A W3C
  ``traceparent`` header's trace id is kept beside it.
- **Body size**: a body over ``max_body_bytes`` (by ``Content-Length`` or as it streams in) is
  refused with 413 ``PAYLOAD_TOO_LARGE`` before any route sees it.
- **Timeout**: a request that takes longer than ``request_timeout`` gets 504
  ``REQUEST_TIMEOUT`` (work already handed to the runtime still completes and is recorded).
- **Failures**: an exception no handler turned into a response becomes 500 ``INTERNAL_ERROR``
  with nothing of the exception in the body (it is logged with the request id).
- **Access log**: one JSON line per request on the ``cra_agents.server.access`` logger (INFO):
  method, path template, status, duration_ms, principal, request_id, trace_id.

:class:`TokenBuckets` limits requests per principal (a token bucket of ``burst`` tokens refilled
at ``per_second``); the server's authenticator takes a token after authenticating, so every
route (including those of other routers) is limited, and a refusal is 429
``TOO_MANY_REQUESTS`` with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from cra_agents._exceptions import CRAError, TooManyRequestsError
from cra_agents.server._errors import (
    PayloadTooLargeError,
    RequestTimeoutError,
    error_response,
    internal_error,
)

__all__ = ["RequestInfo", "RequestMiddleware", "TokenBuckets", "current_request"]

logger = logging.getLogger("cra_agents.server")
access_logger = logging.getLogger("cra_agents.server.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


@dataclass(slots=True)
class RequestInfo:
    """What the server knows about the request being served (see :func:`current_request`)."""

    request_id: str
    trace_id: str | None = None
    principal: str | None = None


_current: ContextVar[RequestInfo | None] = ContextVar("cra_server_request", default=None)


def current_request() -> RequestInfo | None:
    """The request being served in this context (None outside a request)."""
    return _current.get()


class TokenBuckets:
    """One token bucket per principal; the least recently seen are forgotten past ``keep``."""

    def __init__(
        self,
        per_second: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        keep: int = 10_000,
    ) -> None:
        self.per_second = per_second
        self.burst = max(burst, 1)
        self._clock = clock
        self._keep = keep
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether requests are limited at all."""
        return self.per_second > 0

    def take(self, key: str) -> None:
        """Take one token of ``key``'s bucket.

        Raises:
            TooManyRequestsError: the bucket is empty; ``retry_after`` says for how long.
        """
        if not self.enabled:
            return
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.per_second)
            if tokens >= 1.0:
                tokens -= 1.0
                wait = 0.0
            else:
                wait = (1.0 - tokens) / self.per_second
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self._keep:
                self._buckets.popitem(last=False)
        if wait > 0:
            raise TooManyRequestsError(
                f"too many requests; retry in {wait:.2f}s", retry_after=round(wait, 3)
            )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class RequestMiddleware:
    """The ASGI middleware described in the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        request_timeout: float,
        access_log: bool = True,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                info = self._identify(scope)
                token = _current.set(info)
                try:
                    await self.app(scope, receive, send)
                finally:
                    _current.reset(token)
                return
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info = self._identify(scope)
        token = _current.set(info)
        state = {"status": 0, "started": False}
        request_id_header = (b"x-request-id", info.request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                state["status"] = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                headers.append(request_id_header)
                message["headers"] = headers
            await send(message)

        async def answer(error: CRAError) -> None:
            if state["started"]:
                return  # too late for an error response: the connection is closed by the server
            response = error_response(error, info.request_id)
            await response(scope, receive, send_with_id)

        try:
            async with asyncio.timeout(self.request_timeout):
                await self._serve(scope, receive, send_with_id)
        except PayloadTooLargeError as exc:
            await answer(exc)
        except TimeoutError:
            await answer(
                RequestTimeoutError(
                    f"the request took longer than {self.request_timeout:g}s",
                    details={"timeout_seconds": self.request_timeout},
                )
            )
        except Exception:
            logger.exception("request %s failed", info.request_id)
            if not state["started"]:
                await internal_error(info.request_id)(scope, receive, send_with_id)
        finally:
            _current.reset(token)
            if self.access_log:
                route = scope.get("route")
                access_logger.info(
                    json.dumps(
                        {
                            "method": scope.get("method"),
                            "path": getattr(route, "path", None) or "<unmatched>",
                            "status": state["status"],
                            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                            "principal": info.principal,
                            "request_id": info.request_id,
                            "trace_id": info.trace_id,
                        },
                        separators=(",", ":"),
                    )
                )

    def _identify(self, scope: Scope) -> RequestInfo:
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        trace_id = None
        parent = _header(scope, b"traceparent")
        if parent:
            match = _TRACEPARENT.fullmatch(parent.strip())
            if match and match.group(1) != "0" * 32:
                trace_id = match.group(1)
        scope["cra.request_id"] = request_id
        scope["cra.trace_id"] = trace_id
        return RequestInfo(request_id, trace_id)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = 0
            if declared > self.max_body_bytes:
                raise self._too_large()
        if scope.get("method") in {"GET", "HEAD", "DELETE", "OPTIONS"} and not length:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)  # disconnected
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"the request body is larger than {self.max_body_bytes} bytes",
            details={"max_body_bytes": self.max_body_bytes},
        )


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
