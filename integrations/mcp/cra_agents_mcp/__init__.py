"""MCP integration of cra-agents: a governing proxy for MCP servers, and guarded client sessions.

Put the proxy in front of any MCP server (an MCP host starts it in the server's place)::

    cra mcp proxy --atlas ./atlas --store sqlite://.cra/traces.db -- python my_server.py

Or guard the calls an agent makes through the MCP Python SDK::

    from cra_agents_mcp import guard_session

    guarded = guard_session(session, runtime=runtime)   # an initialized mcp.ClientSession
    result = await guarded.call_tool("read_file", {"path": "notes.txt"})
"""

from __future__ import annotations

try:
    import mcp  # noqa: F401 - the SDK this package is built on
except ImportError as exc:  # pragma: no cover - mcp is a dependency of cra-agents-mcp
    from cra_agents import MissingDependencyError

    raise MissingDependencyError(
        "cra_agents_mcp (the MCP proxy and guard_session)", package="mcp", extra="mcp"
    ) from exc

from cra_agents_mcp._common import MCPToolError, UpstreamError
from cra_agents_mcp._guard import GuardedSession, ToolDeniedError, guard_session
from cra_agents_mcp._proxy import DEFAULT_MAX_RESULT_BYTES, MCPProxy, Upstream
from cra_agents_mcp._stdio import DEFAULT_MAX_MESSAGE_BYTES

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_RESULT_BYTES",
    "GuardedSession",
    "MCPProxy",
    "MCPToolError",
    "ToolDeniedError",
    "Upstream",
    "UpstreamError",
    "guard_session",
]
