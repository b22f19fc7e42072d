"""A stdio transport to an upstream MCP server that bounds the size of each message it reads.

The SDK's ``stdio_client`` keeps reading a line until its newline, however long: an upstream
that writes a 1 GiB line makes the proxy hold 1 GiB before any size check can run. This
transport reads the server's stdout in chunks and keeps at most ``max_message_bytes`` of an
unfinished line: a longer line is discarded unread (up to its newline) and reported on the
read stream as a :class:`MessageTooLargeError`, the way the SDK reports a line that does not
parse (an exception on the read stream, which ``ClientSession`` hands to its
``message_handler``). Everything else is the SDK's behaviour: one JSON-RPC message per line,
the server in its own process group, and the spec's shutdown (close stdin, wait, then
terminate the group).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import TextIO

import anyio
import anyio.abc
import mcp.types as types
from mcp.client.stdio import StdioServerParameters, get_default_environment, stdio_client
from mcp.os.posix.utilities import terminate_posix_process_tree
from mcp.shared.message import SessionMessage

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "MessageTooLargeError", "bounded_stdio_client"]

logger = logging.getLogger(__name__)

#: The largest message (one line) read from a stdio upstream; a longer one is discarded.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Bytes read from the server's stdout at a time.
CHUNK_BYTES = 64 * 1024
#: Seconds a server may take to exit once its stdin is closed, then to die once terminated.
EXIT_GRACE = 2.0

Incoming = SessionMessage | Exception
Streams = tuple[anyio.abc.ObjectReceiveStream[Incoming], anyio.abc.ObjectSendStream[SessionMessage]]


class MessageTooLargeError(ValueError):
    """An upstream wrote a message (line) longer than the proxy reads; it was discarded."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a message of more than {limit} bytes (discarded unread)")
        self.limit = limit


class LineReader:
    """Splits a byte stream into JSON-RPC messages, one per line, each at most ``limit`` bytes.

    :meth:`feed` returns what a chunk completes: a parsed message, the parse error of a line
    that is not one (as the SDK reports it), or a :class:`MessageTooLargeError` for a line
    longer than ``limit`` (whose bytes are dropped as they arrive, never held). Blank lines
    are skipped.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the message size limit must be positive")
        self.limit = limit
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, chunk: bytes) -> list[Incoming]:
        """The messages (or faults) that ``chunk`` completes."""
        found: list[Incoming] = []
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not self._discarding:
                self._buffer += piece
                if len(self._buffer) > self.limit:
                    found.append(MessageTooLargeError(self.limit))
                    self._buffer.clear()
                    self._discarding = True
            if end < 0:
                return found
            if self._discarding:  # the end of the line being dropped
                self._discarding = False
            else:
                line = bytes(self._buffer)
                self._buffer.clear()
                if line.strip():
                    found.append(parse(line))
            start = end + 1


def parse(line: bytes) -> Incoming:
    """One line as a JSON-RPC message, or why it is not one (the SDK's rule)."""
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        return exc


@contextlib.asynccontextmanager
async def bounded_stdio_client(
    server: StdioServerParameters, errlog: TextIO, max_message_bytes: int
) -> AsyncIterator[Streams]:
    """Start ``server`` and exchange messages with it, each read at most ``max_message_bytes``.

    On Windows this is the SDK's ``stdio_client`` (no bound on a message's size).
    """
    if sys.platform == "win32":  # pragma: no cover - the SDK's Job Object handling
        async with stdio_client(server, errlog=errlog) as streams:
            yield streams  # type: ignore[misc]
        return
    reader = LineReader(max_message_bytes)
    process = await anyio.open_process(
        [server.command, *server.args],
        env=get_default_environment() | (server.env or {}),
        stderr=errlog,
        cwd=server.cwd,
        start_new_session=True,
    )
    incoming, read_stream = anyio.create_memory_object_stream[Incoming](0)
    write_stream, outgoing = anyio.create_memory_object_stream[SessionMessage](0)
    stdout, stdin = process.stdout, process.stdin
    assert stdout is not None  # noqa: S101 - spawned with pipes
    assert stdin is not None  # noqa: S101

    async def read() -> None:
        async with incoming:
            with contextlib.suppress(
                anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError
            ):
                while True:
                    for item in reader.feed(await stdout.receive(CHUNK_BYTES)):
                        await incoming.send(item)

    async def write() -> None:
        try:
            async with outgoing:
                async for message in outgoing:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await stdin.send((data + "\n").encode())
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await incoming.aclose()  # the server stopped reading: the session sees the end

    async with anyio.create_task_group() as group:
        group.start_soon(read)
        group.start_soon(write)
        try:
            yield read_stream, write_stream
        finally:
            with anyio.CancelScope(shield=True):
                await _stop(process)
                for stream in (read_stream, write_stream):
                    await stream.aclose()
            group.cancel_scope.cancel()


async def _stop(process: anyio.abc.Process) -> None:
    """Close the server's stdin, give it time to exit, then terminate its process group."""
    assert process.stdin is not None  # noqa: S101 - spawned with pipes
    assert process.stdout is not None  # noqa: S101
    with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        await process.stdin.aclose()
    if not await _exited(process):
        await terminate_posix_process_tree(process, EXIT_GRACE)
        if not await _exited(process):  # pragma: no cover - only an unkillable process
            logger.warning("upstream MCP server process %d survived the kill", process.pid)
    with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        await process.stdout.aclose()
    # Not process.wait() (it also waits for the pipes' end, which a surviving child of the
    # server can hold open): close asyncio's transport as the SDK does, so it is not left
    # to the garbage collector.
    transport = getattr(getattr(process, "_process", None), "_transport", None)
    close = getattr(transport, "close", None)
    if callable(close):
        with contextlib.suppress(PermissionError):
            close()


async def _exited(process: anyio.abc.Process) -> bool:
    """Whether the process exits within :data:`EXIT_GRACE` seconds (polling its returncode)."""
    with anyio.move_on_after(EXIT_GRACE):
        while process.returncode is None:  # noqa: ASYNC110 - no event says a process exited
            await anyio.sleep(0.01)
    return process.returncode is not None
