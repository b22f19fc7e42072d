"""What the proxy and the guarded client session share: refusals, errors, results."""

from __future__ import annotations

from typing import Any, ClassVar

import mcp.types as types

from cra_agents import (
    ActionDeniedError,
    ActionNotFoundError,
    CRAError,
    InvalidParametersError,
)

__all__ = [
    "REFUSALS",
    "MCPToolError",
    "UpstreamError",
    "error_result",
    "recordable",
    "result_text",
]

#: What the gate raises for a call it refused and recorded: the model reads why.
REFUSALS = (ActionDeniedError, ActionNotFoundError, InvalidParametersError)


class UpstreamError(CRAError):
    """The proxy could not get a usable answer from an upstream MCP server.

    ``code`` says what happened: ``MCP_UPSTREAM_UNAVAILABLE`` (the server crashed, closed or
    never started: later calls to it fail closed), ``MCP_UPSTREAM_TIMEOUT``,
    ``MCP_RESULT_TOO_LARGE``, ``MCP_MALFORMED_RESULT``, ``MCP_UNKNOWN_TOOL``.
    """

    default_code: ClassVar[str] = "MCP_UPSTREAM_UNAVAILABLE"
    status = 502
    category = "internal"


class MCPToolError(Exception):
    """An upstream tool answered with ``is_error``: recorded as the call's failure."""


def error_result(text: str) -> types.CallToolResult:
    """An MCP tool error result whose text the model reads."""
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def result_text(result: types.CallToolResult, limit: int = 2000) -> str:
    """The text parts of a tool result, cut at ``limit`` characters (for failure records)."""
    parts = [block.text for block in result.content if isinstance(block, types.TextContent)]
    text = "\n".join(parts) or "the tool reported an error"
    return text if len(text) <= limit else text[:limit] + "..."


def recordable(result: types.CallToolResult) -> Any:
    """What the trace digests of a tool result: its content (and structured content)."""
    dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {k: v for k, v in dumped.items() if k in ("content", "structuredContent")}
