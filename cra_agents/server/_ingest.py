"""``POST /v1/ingest/batch``: TRACE events written elsewhere, added to the server's store.

The route of :mod:`cra_agents.trace`'s ingest rule (see :func:`cra_agents.trace.parse_batch`)
over HTTP, for the agents' HTTP sink (``store="http://..."``) and ``cra ingest send``:

- **Who**: a credential with the ``ingest`` scope (401 without one, 403 without the scope),
  checked before the body is looked at; the per-principal rate limit applies (429).
- **Body**: JSONL, one hashed TRACE event per line (``Content-Type: application/x-ndjson`` or
  ``application/jsonl``), plain or zstd-compressed (``Content-Encoding: zstd``; anything else
  is 415). The body as sent is capped by the server's ``max_body_bytes`` (413); a zstd body is
  also capped once decompressed (:data:`DEFAULT_MAX_INGEST_BYTES`, ``CRA_MAX_INGEST_BYTES``, or
  ``app.state.ingest_max_bytes``): decompression stops at the cap, so a small "zstd bomb" never
  takes more memory than the cap, and the answer is 413 ``PAYLOAD_TOO_LARGE``.
- **Rule**: every line checked and hashed (400 ``TRACE_BATCH_INVALID`` with the line and the
  reason), then added to the store in one transaction where it continues the stored chains;
  events already stored are counted as duplicates, so a retried batch is idempotent; a batch
  that breaks a chain is 409 ``TRACE_CHAIN_CONFLICT`` (the reason, session and sequence in
  ``details``) and none of it is stored.
- **Answer**: 200 ``{"inserted": n, "duplicates": n, "sessions": [...]}``. A store that cannot
  ingest (``jsonl://``, ``memory://`` of another kind) is 501 ``NOT_IMPLEMENTED``; a store that
  fails (locked, down) is 503 ``SERVICE_UNAVAILABLE``: the sender retries.

Ingested sessions belong to no principal: they are read with the ``audit`` scope, or on the
store itself (``cra trace verify --store ...``).
"""

from __future__ import annotations

import io
import logging
import os
from typing import Any, Final

import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from cra_agents._exceptions import CRAError, MissingDependencyError, ServiceUnavailableError
from cra_agents.server._errors import PayloadTooLargeError
from cra_agents.server._routes import Caller
from cra_agents.trace import IngestResult, IngestStore, parse_batch

__all__ = [
    "DEFAULT_MAX_INGEST_BYTES",
    "INGEST_MEDIA_TYPES",
    "NotImplementedByStoreError",
    "UnsupportedMediaTypeError",
    "decompress_capped",
    "router",
]

logger = logging.getLogger("cra_agents.server")

#: The most bytes a batch may hold once decompressed (64 MiB).
DEFAULT_MAX_INGEST_BYTES: Final = 64 * 1024 * 1024
#: The media types of a batch.
INGEST_MEDIA_TYPES: Final = frozenset({"application/x-ndjson", "application/jsonl"})
#: The largest zstd window accepted (a frame asking for more is refused, not allocated).
_MAX_WINDOW: Final = 1 << 25
_CHUNK: Final = 1 << 20

router = APIRouter()


class UnsupportedMediaTypeError(CRAError):
    """The body's ``Content-Type`` or ``Content-Encoding`` is not one the route takes."""

    default_code = "UNSUPPORTED_MEDIA_TYPE"
    status = 415
    category = "validation"


class NotImplementedByStoreError(CRAError):
    """The server's trace store cannot ingest (a JSONL directory)."""

    default_code = "NOT_IMPLEMENTED"
    status = 501
    category = "internal"


def decompress_capped(body: bytes, limit: int) -> bytes:
    """``body`` (one or more zstd frames) decompressed, refused past ``limit`` bytes.

    Reads at most ``limit + 1`` bytes out of the decompressor, 1 MiB at a time, so memory never
    grows past the cap whatever the frames declare (or omit) as their content size.

    Raises:
        PayloadTooLargeError: it decompresses to more than ``limit`` bytes.
        UnsupportedMediaTypeError: it is not valid zstd (reason ``bad_zstd``).
    """
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - the server extra installs it
        raise MissingDependencyError(
            "decompressing zstd ingest batches", package="zstandard", extra="server"
        ) from exc
    decompressor = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)
    out = io.BytesIO()
    try:
        with decompressor.stream_reader(io.BytesIO(body), read_across_frames=True) as reader:
            while True:
                chunk = reader.read(min(_CHUNK, limit + 1 - out.tell()))
                if not chunk:
                    break
                out.write(chunk)
                if out.tell() > limit:
                    raise PayloadTooLargeError(
                        f"the batch decompresses to more than {limit} bytes: send smaller batches",
                        details={"max_decompressed_bytes": limit, "reason": "decompressed_size"},
                    )
    except zstandard.ZstdError as exc:
        raise UnsupportedMediaTypeError(
            f"the body is not valid zstd ({exc})", details={"reason": "bad_zstd"}
        ) from exc
    return out.getvalue()


def _limit(request: Request) -> int:
    given = getattr(request.app.state, "ingest_max_bytes", None)
    if isinstance(given, int) and given > 0:
        return given
    try:
        return int(os.environ.get("CRA_MAX_INGEST_BYTES", "")) or DEFAULT_MAX_INGEST_BYTES
    except ValueError:
        return DEFAULT_MAX_INGEST_BYTES


def _check_headers(request: Request) -> bool:
    """Whether the body is zstd; 415 for a media type or coding the route does not take."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in INGEST_MEDIA_TYPES:
        raise UnsupportedMediaTypeError(
            f"send a batch as application/x-ndjson (or application/jsonl), not {media or 'none'}",
            details={"reason": "content_type", "content_type": media or None},
        )
    coding = request.headers.get("content-encoding", "").strip().lower()
    if coding in ("", "identity"):
        return False
    if coding == "zstd":
        return True
    raise UnsupportedMediaTypeError(
        f"Content-Encoding {coding!r} is not supported: send zstd or identity",
        details={"reason": "content_encoding", "content_encoding": coding},
    )


def _ingest(store: Any, body: bytes, zstd: bool, limit: int) -> IngestResult:
    data = decompress_capped(body, limit) if zstd else body
    events = parse_batch(data)
    try:
        result: IngestResult = store.ingest(events)
    except CRAError:
        raise
    except Exception as exc:
        logger.exception("ingesting a batch of %d events failed", len(events))
        raise ServiceUnavailableError(
            f"the trace store could not take the batch ({type(exc).__name__}); nothing of it "
            "was stored: retry later",
            details={"reason": "store_failed", "retry_after": 1},
        ) from exc
    return result


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_OPENAPI: Final[dict[str, Any]] = {
    "operationId": "ingestBatch",
    "requestBody": {
        "required": True,
        "description": "One hashed TRACE event per line; Content-Encoding zstd or identity.",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in sorted(INGEST_MEDIA_TYPES)
        },
    },
    "responses": {
        "200": {
            "description": "The events that continue the stored chains were added.",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["inserted", "duplicates", "sessions"],
                        "properties": {
                            "inserted": {"type": "integer", "minimum": 0},
                            "duplicates": {"type": "integer", "minimum": 0},
                            "sessions": {"type": "array", "items": {"type": "string"}},
                        },
                    }
                }
            },
        },
        "400": _error("A line is not a hashed TRACE event (TRACE_BATCH_INVALID)."),
        "401": _error("No valid credential."),
        "403": _error("The credential lacks the ingest scope."),
        "409": _error("The batch breaks a stored chain (TRACE_CHAIN_CONFLICT); none stored."),
        "413": _error("The body, or the body decompressed, is too large."),
        "415": _error("Unsupported Content-Type or Content-Encoding."),
        "429": _error("Too many requests for this principal."),
        "501": _error("The server's trace store cannot ingest."),
        "503": _error("The trace store failed; nothing was stored: retry."),
    },
}


@router.post("/v1/ingest/batch", openapi_extra=_OPENAPI)
async def ingest_batch(request: Request, principal: Caller) -> Response:
    """Add a batch of hashed TRACE events (JSONL, optionally zstd) to the server's store."""
    principal.require("ingest")
    zstd = _check_headers(request)
    store = request.app.state.runtime.store
    if not isinstance(store, IngestStore):
        raise NotImplementedByStoreError(
            f"this server's trace store ({type(store).__name__}) cannot ingest: serve it with "
            "--store sqlite://FILE or postgresql://...",
            details={"reason": "store_cannot_ingest", "store": type(store).__name__},
        )
    body = await request.body()
    result = await run_in_threadpool(_ingest, store, body, zstd, _limit(request))
    return Response(orjson.dumps(result.as_dict()), media_type="application/json")
