"""What the MCP tests share: the test servers, the atlas, a client, an in-process proxy."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp.types as types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.memory import create_client_server_memory_streams

from cra_agents import Runtime
from cra_agents_mcp import MCPProxy, Upstream

HERE = Path(__file__).parent
ATLAS = HERE / "atlas.json"
NOTES = HERE / "servers" / "notes_server.py"
MALICIOUS = HERE / "servers" / "malicious_server.py"

Elicit = Any  # an elicitation callback (mcp.client.session.ElicitationFnT)


def answer(action: str, content: dict[str, Any] | None = None) -> Elicit:
    """An elicitation callback that answers every question the same way, and counts them."""
    asked: list[str] = []

    async def elicit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action=action, content=content)

    elicit.asked = asked  # type: ignore[attr-defined]
    return elicit


def notes_upstream() -> Upstream:
    return Upstream.stdio([sys.executable, str(NOTES)], name="notes")


def malicious_upstream() -> Upstream:
    return Upstream.stdio([sys.executable, str(MALICIOUS)], name="malicious")


@contextlib.asynccontextmanager
async def client(
    read: Any,
    write: Any,
    elicit: Elicit | None = None,
    name: str = "test-client",
    on_message: Any = None,
) -> AsyncIterator[ClientSession]:
    async with ClientSession(
        read,
        write,
        elicitation_callback=elicit,
        message_handler=on_message,
        client_info=types.Implementation(name=name, version="1.0"),
    ) as session:
        with anyio.fail_after(30):
            await session.initialize()
        yield session


@contextlib.asynccontextmanager
async def in_process(
    proxy: MCPProxy, elicit: Elicit | None = None, name: str = "test-client", on_message: Any = None
) -> AsyncIterator[ClientSession]:
    """A real ClientSession talking to ``proxy`` over in-memory streams."""
    async with (
        create_client_server_memory_streams() as (client_streams, server_streams),
        anyio.create_task_group() as group,
    ):
        group.start_soon(proxy.serve, *server_streams)
        async with client(*client_streams, elicit, name, on_message) as session:
            yield session
        # Closing the client's side ends the proxy's serve (and its upstreams), within 20 s.
        await client_streams[1].aclose()
        await client_streams[0].aclose()
        group.cancel_scope.deadline = anyio.current_time() + 20


@contextlib.asynccontextmanager
async def over_stdio(
    argv: Sequence[str], elicit: Elicit | None = None, name: str = "test-client"
) -> AsyncIterator[ClientSession]:
    """A real ClientSession talking to a proxy process started as ``argv``."""
    params = StdioServerParameters(command=argv[0], args=list(argv[1:]))
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230 - /dev/null does not block
        async with (
            stdio_client(params, errlog=errlog) as streams,
            client(*streams, elicit=elicit, name=name) as session,
        ):
            yield session


def texts(result: types.CallToolResult) -> str:
    return "\n".join(b.text for b in result.content if isinstance(b, types.TextContent))


def event_types(runtime: Runtime, session_id: str) -> list[str]:
    return [event.event_type for event in runtime.trace_events(session_id)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def http_notes_server() -> Iterator[str]:
    """The notes server over streamable HTTP on 127.0.0.1 (a child process, killed after)."""
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - our own test server
        [sys.executable, str(NOTES), "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the HTTP MCP test server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
