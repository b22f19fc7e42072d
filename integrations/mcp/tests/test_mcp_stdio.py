"""The bounded stdio transport: messages split from a byte stream, each at most a limit."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import anyio
import mcp.types as types
import pytest
from mcp.client.stdio import StdioServerParameters
from mcp.shared.message import SessionMessage
from mcp_support import NOTES

from cra_agents_mcp._stdio import LineReader, MessageTooLargeError, bounded_stdio_client

PING = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'


def kinds(found: Sequence[object]) -> list[str]:
    return [
        "message" if isinstance(item, SessionMessage) else type(item).__name__ for item in found
    ]


def test_lines_across_chunks_blank_lines_and_faults() -> None:
    reader = LineReader(limit=len(PING) + 1)
    assert reader.feed(PING[:10]) == []
    assert kinds(reader.feed(PING[10:] + b"\n\n  \n" + PING + b"\nnot json\n")) == [
        "message",
        "message",
        "ValidationError",
    ]
    (first,) = reader.feed(PING + b"\r\n")  # exactly at the limit (with the \r): read
    assert isinstance(first, SessionMessage)
    assert isinstance(first.message, types.JSONRPCRequest) and first.message.method == "ping"


def test_a_line_over_the_limit_is_dropped_as_it_arrives() -> None:
    reader = LineReader(limit=100)
    (fault,) = reader.feed(b"x" * 60 + b"y" * 60)  # no newline yet: reported at once
    assert isinstance(fault, MessageTooLargeError) and fault.limit == 100
    assert "more than 100 bytes" in str(fault)
    assert reader.feed(b"z" * 10_000) == []  # the rest of it: dropped, nothing held
    assert len(reader._buffer) == 0
    assert kinds(reader.feed(b"zzz\n" + PING + b"\n")) == ["message"]  # its end, then the next
    assert kinds(reader.feed(b"q" * 101 + b"\n" + PING + b"\n")) == [
        "MessageTooLargeError",
        "message",
    ]


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        LineReader(0)


def test_a_server_that_stops_reading_ends_the_stream() -> None:
    """The server exits at once: a write fails, and the read stream ends (no hang)."""
    gone = StdioServerParameters(command=sys.executable, args=["-c", "pass"])

    async def main() -> None:
        with anyio.fail_after(30):
            async with bounded_stdio_client(gone, sys.stderr, 1024) as (read, write):
                await anyio.sleep(0.5)
                message = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/x")
                broke = False
                for _ in range(50):  # the pipe may take a write or two before it breaks
                    try:
                        await write.send(SessionMessage(message))
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        broke = True
                        break
                    await anyio.sleep(0.05)
                assert broke
                with pytest.raises(anyio.EndOfStream):
                    await read.receive()

    anyio.run(main)


def test_a_server_that_ignores_its_stdin_closing_is_terminated() -> None:
    """Close stdin, wait the grace period, then terminate its process group."""
    stubborn = StdioServerParameters(
        command=sys.executable, args=["-c", "import time; time.sleep(60)"]
    )

    async def main() -> float:
        started = time.monotonic()
        with anyio.fail_after(30):
            async with bounded_stdio_client(stubborn, sys.stderr, 1024):
                pass
        return time.monotonic() - started

    assert anyio.run(main) < 10


def test_a_real_server_answers(tmp_path: object) -> None:
    """The notes server over the bounded transport: initialize and a call."""
    from mcp.client.session import ClientSession

    params = StdioServerParameters(command=sys.executable, args=[str(NOTES)])

    async def main() -> str:
        with anyio.fail_after(30):
            async with (
                bounded_stdio_client(params, sys.stderr, 1 << 20) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                result = await session.call_tool("echo", {"text": "bounded"})
                block = result.content[0]
                assert isinstance(block, types.TextContent)
                return block.text

    assert anyio.run(main) == "echo: bounded"
