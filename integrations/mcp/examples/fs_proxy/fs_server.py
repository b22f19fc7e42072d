"""A small file-system MCP server for the example: list, read, write and delete files.

It serves one folder (its first argument) and refuses paths that leave it; it has no policy
of its own. Put ``cra mcp proxy`` in front of it to decide each call.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
server = MCPServer("files")


def _inside(path: str) -> Path:
    target = (ROOT / path).resolve()
    if target != ROOT and ROOT not in target.parents:
        raise ValueError(f"{path} is outside the served folder")
    return target


@server.tool()
def list_files(folder: str = ".") -> list[str]:
    """The files below a folder, relative to the served folder."""
    base = _inside(folder)
    return sorted(str(p.relative_to(ROOT)) for p in base.rglob("*") if p.is_file())


@server.tool()
def read_file(path: str) -> str:
    """A file's text."""
    return _inside(path).read_text(encoding="utf-8")


@server.tool()
def write_file(path: str, text: str) -> str:
    """Write a file's text (creating folders)."""
    target = _inside(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return f"wrote {len(text)} characters to {path}"


@server.tool()
def delete_file(path: str) -> str:
    """Delete a file."""
    _inside(path).unlink()
    return f"deleted {path}"


if __name__ == "__main__":
    server.run("stdio")
