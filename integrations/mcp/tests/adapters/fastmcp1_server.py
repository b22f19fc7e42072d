"""An MCP server written with mcp 1.x's ``FastMCP`` (the SDK langchain-mcp-adapters uses).

Runs in the venv of ``test_langchain_mcp_adapters.py`` (mcp<2), over stdio. Every tool writes
a marker file ``ran-TOOL`` into the folder given as its argument before it answers, so a test
can tell whether a call reached the server.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mcp.server.fastmcp import FastMCP  # type: ignore[attr-defined]  # mcp<2 only

MARKERS = Path(sys.argv[1])
server = FastMCP("notes-mcp1")


def _ran(tool: str) -> None:
    (MARKERS / f"ran-{tool}").write_text(tool, encoding="utf-8")


def echo(text: str) -> str:
    """Say it back."""
    _ran("echo")
    return f"echo: {text}"


def delete_all() -> str:
    """Delete every note."""
    _ran("delete_all")
    return "deleted"


def undeclared() -> str:
    """A tool no atlas declares."""
    _ran("undeclared")
    return "ran"


for tool in (echo, delete_all, undeclared):
    server.add_tool(tool)

if __name__ == "__main__":
    server.run("stdio")
