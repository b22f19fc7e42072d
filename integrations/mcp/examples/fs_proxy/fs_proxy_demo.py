"""The governing proxy in front of a file-system MCP server, driven by an MCP client.

    python integrations/mcp/examples/fs_proxy/fs_proxy_demo.py

Starts ``cra mcp proxy`` (as ``python -m cra_agents_mcp proxy``) in front of ``fs_server.py``
serving a temporary folder, connects a real ``mcp.ClientSession`` that answers approval
questions (elicitation) with yes, and makes four calls: a read (allowed), a write (asked,
approved), deletes inside and outside ``scratch/`` (allowed; refused). Then it prints the
recorded trace and checks its hash chain.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from cra_agents import open_store, verify_chain

HERE = Path(__file__).parent


async def approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    """The person at the client: shown the question, says yes."""
    print(f"  [asked] {params.message.splitlines()[0]}")
    return types.ElicitResult(action="accept", content={"approve": True, "reason": "looks fine"})


async def main(folder: Path, store: str) -> None:
    proxy = StdioServerParameters(
        command=sys.executable,
        args=[
            *("-m", "cra_agents_mcp", "proxy", "--atlas", str(HERE / "atlas.json")),
            *("--store", store, "--agent", "files-demo"),
            *("--", sys.executable, str(HERE / "fs_server.py"), str(folder)),
        ],
    )
    with anyio.fail_after(60), open(os.devnull, "w") as errlog:  # noqa: ASYNC230
        async with (
            stdio_client(proxy, errlog=errlog) as (read, write),
            ClientSession(read, write, elicitation_callback=approve) as session,
        ):
            await session.initialize()
            calls: list[tuple[str, dict[str, Any]]] = [
                ("read_file", {"path": "notes.txt"}),
                ("write_file", {"path": "notes.txt", "text": "hello again"}),
                ("delete_file", {"path": "scratch/old.txt"}),
                ("delete_file", {"path": "notes.txt"}),
            ]
            for name, arguments in calls:
                result = await session.call_tool(name, arguments)
                text = " ".join(b.text for b in result.content if isinstance(b, types.TextContent))
                print(f"{name}({arguments}) -> {'ERROR ' if result.is_error else ''}{text[:110]}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "files"
        (folder / "scratch").mkdir(parents=True)
        (folder / "notes.txt").write_text("hello")
        (folder / "scratch" / "old.txt").write_text("old")
        store = f"sqlite://{Path(tmp) / 'traces.db'}"
        anyio.run(main, folder, store)
        assert (folder / "notes.txt").read_text() == "hello again"
        assert not (folder / "scratch" / "old.txt").exists()
        trace = open_store(store)
        try:
            (session_id,) = trace.sessions()
            events = trace.read(session_id)
        finally:
            trace.close()
        print(f"\ntrace of session {session_id}:")
        for event in events:
            payload = event.payload
            what = payload.get("action_id") or payload.get("agent_id") or ""
            why = payload.get("reason") or payload.get("approver") or ""
            print(f"  {event.sequence:2d} {event.event_type:20s} {what} {why}")
        print("chain valid:", verify_chain(events).valid)
