"""A small MCP server for the tests (stdio, or streamable HTTP with ``--http PORT``)."""

from __future__ import annotations

import os
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("notes")
NOTES: dict[str, str] = {"hello": "world"}


@server.tool()
def echo(text: str) -> str:
    """Say it back."""
    return f"echo: {text}"


@server.tool()
def write_note(name: str, text: str) -> str:
    """Write a note."""
    NOTES[name] = text
    return f"wrote {name}"


@server.tool()
def delete_all() -> str:
    """Delete every note."""
    NOTES.clear()
    return "deleted"


@server.tool()
def undeclared() -> str:
    """A tool no atlas declares."""
    return "ran"


@server.tool()
def fails() -> str:
    """A tool that reports an error."""
    raise ValueError("the disk is full")


@server.tool()
def crash() -> str:
    """Kill the server mid-call."""
    sys.stdout.flush()
    os._exit(3)


@server.tool()
async def slow(steps: int, ctx: Context) -> str:
    """Report progress, then answer (or be cancelled)."""
    for step in range(steps):
        await ctx.report_progress(step + 1, steps, f"step {step + 1}")
        await anyio.sleep(0.05)
    return f"done after {steps}"


@server.tool()
async def sleep(seconds: float) -> str:
    """Sleep (a call to cancel)."""
    await anyio.sleep(seconds)
    return "slept"


@server.tool()
async def shout(text: str, ctx: Context) -> str:
    """Log a message to the client, then answer."""
    # Logging is deprecated from protocol 2026-07-28 but still spoken on handshake sessions.
    await ctx.info(f"shouting {text}")  # type: ignore[deprecated]
    return text.upper()


@server.tool()
async def add_tool(ctx: Context) -> str:
    """Add a tool ``added`` and tell the client the list changed."""
    server.add_tool(lambda: "added", name="added", description="Added at run time.")
    await ctx.session.send_tool_list_changed()
    return "added"


@server.resource("note://hello")
def hello_note() -> str:
    """The hello note."""
    return NOTES.get("hello", "")


@server.prompt()
def summarise(topic: str) -> str:
    """A prompt."""
    return f"Summarise {topic}"


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--http":
        import uvicorn

        app = server.streamable_http_app()
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    else:
        server.run("stdio")
