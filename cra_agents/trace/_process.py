"""The trace writer process: hashing and storing off the agent's process.

With ``writer="process"`` (the default for ``jsonl://`` and ``sqlite://`` stores) the runtime
spawns one writer process (``subprocess``, not ``fork``, so it works from notebooks, threads
and ``python -m``). The agent process queues events as today, encodes their payloads and ships
them in batches through the child's stdin; the child assigns ids and timestamps, hashes
(:func:`~cra_agents.trace._chain.seal`, the same code the writer thread runs), writes, syncs,
and answers on its stdout with acknowledgements: the last durable sequence of each session,
and the sealed events of batches somebody watches (observers, such as spans).

Messages are length-prefixed pickles over the two pipes ``Popen`` creates: private to the two
processes (close-on-exec, no name in the file system), never read from anywhere else.

Faults stay closed. The child reports a store error and exits; the parent's reader sees the
report or the end of the pipe and fails the collector, which then refuses every later call
(``TRACE_UNAVAILABLE``). When the agent process dies, even by ``kill -9``, its end of the pipe
closes: the child writes everything it was handed, syncs and exits, so no orphan lingers and no
event already shipped is lost. The child also exits when it is re-parented (its parent is gone
but a forked grandchild kept the pipe open).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from cra_agents._exceptions import ConfigurationError
from cra_agents.protocol import GENESIS_HASH
from cra_agents.trace._chain import seal
from cra_agents.trace._store import open_store

__all__ = ["WriterProcess", "main"]

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<I")
# A batch message is at most a few MiB (the collector ships 256-event chunks); anything larger
# is a corrupted stream, not a message.
_MAX_FRAME = 1 << 30
_PIPE_SIZE = 1 << 20  # what Linux allows an unprivileged process by default
_ENTRY = "from cra_agents.trace._process import main; main()"

#: One session's part of a message: (session id, trace id, watched, encoded batches).
Record = tuple[str, str, bool, list[Any]]
#: What the child acknowledges: how many messages, [(session id, last durable sequence)],
#: and for watched records the sealed events' fields, by session id.
Ack = tuple[int, list[tuple[str, int]], dict[str, list[dict[str, Any]]]]


def _frame(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Frames:
    """Reads length-prefixed messages from a file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.eof = False

    def fill(self) -> None:
        """Read what is available (blocks until something is); sets ``eof`` at the end."""
        chunk = os.read(self.fd, 1 << 20)
        if chunk:
            self.buffer += chunk
        else:
            self.eof = True

    def messages(self) -> list[Any]:
        """The complete messages buffered so far."""
        out = []
        buffer = self.buffer
        start = 0
        while len(buffer) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, start)
            if size > _MAX_FRAME:
                raise ValueError(f"a trace writer message of {size} bytes is not a message")
            end = start + _HEADER.size + size
            if len(buffer) < end:
                break
            out.append(pickle.loads(buffer[start + _HEADER.size : end]))  # noqa: S301 - our pipe
            start = end
        del buffer[:start]
        return out


class WriterProcess:
    """The agent side of a writer process.

    Args:
        url: The store URL the child opens (``jsonl://`` or ``sqlite://``).
        durable: Open the store durable (``group`` and ``sync`` modes).
        on_ack: Called on the reader thread with each acknowledgement.
        on_exit: Called once on the reader thread when the child stops answering for a reason
            other than :meth:`close` (it died, or reported a store error).
    """

    def __init__(
        self,
        url: str,
        *,
        durable: bool,
        on_ack: Callable[[Ack], None],
        on_exit: Callable[[BaseException], None],
    ) -> None:
        self.url = url
        self._owner = os.getpid()  # a forked copy of this object must not write to the pipe
        self._on_ack = on_ack
        self._on_exit = on_exit
        self._closing = False
        root = str(Path(__file__).resolve().parents[2])  # where cra_agents is importable from
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and entry point
                [sys.executable, "-c", _ENTRY, url, "1" if durable else "0", str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                # Its own session: a Ctrl-C in the terminal interrupts the agent, not its
                # writer, which finishes writing what it was handed when the agent goes away.
                start_new_session=True,
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot start the trace writer process ({exc}); pass writer='thread' "
                "(or set CRA_AGENTS_WRITER=thread) to write from a thread of this process",
                details={"reason": "writer_process_unavailable", "cause": repr(exc)},
            ) from exc
        self._stdin: BinaryIO = self.process.stdin  # type: ignore[assignment]  # PIPE
        self._stdout: BinaryIO = self.process.stdout  # type: ignore[assignment]  # PIPE
        with contextlib.suppress(OSError, AttributeError):  # Linux only; a bigger batch window
            import fcntl

            fcntl.fcntl(self._stdin.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="cra-trace-acks", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def send(self, records: Sequence[Record]) -> None:
        """Ship ``records`` (blocks while the pipe is full).

        Raises:
            OSError: the child is gone (``BrokenPipeError``) or the pipe is closed.
        """
        if os.getpid() != self._owner:
            # Two processes writing one pipe would interleave their frames: a forked child
            # records nothing through its parent's writer (it fails closed instead).
            raise BrokenPipeError(
                "this process was forked from the one that started the trace writer process; "
                "configure a runtime in this process to record here"
            )
        data = _frame(list(records))
        with self._send_lock:
            if self._stdin.closed:
                raise BrokenPipeError("the trace writer process is closed")
            try:
                _write_all(self._stdin.fileno(), data)
            except OSError:
                self.reason(1.0)
                raise

    def _read(self) -> None:
        frames = _Frames(self._stdout.fileno())
        error: BaseException | None = None
        try:
            while not frames.eof:
                frames.fill()
                for message in frames.messages():
                    if message[0] == "A":
                        self._on_ack(message[1])
                    elif message[0] == "E" and error is None:
                        # Reported at once, not after the child has exited: its exit (closing
                        # the store, interpreter shutdown) takes 100 ms or more, during which
                        # async callers would go on acting without a record.
                        error = OSError(f"the trace writer process failed: {message[1]}")
                        self._on_exit(error)
        except BaseException as exc:  # noqa: BLE001 - reported through on_exit
            if error is None:
                error = exc
                self._on_exit(error)
        code = self.process.wait()
        if error is None and not self._closing:
            self._on_exit(OSError(f"the trace writer process exited unexpectedly (code {code})"))

    def reason(self, timeout: float) -> None:
        """Give the reader up to ``timeout`` seconds to report why the child stopped.

        A send that finds the pipe broken calls this first, so the collector records the
        child's own error (a full disk, say) rather than the broken pipe it caused.
        """
        self._reader.join(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Close the pipe: the child writes what it has, syncs, closes the store and exits."""
        self._closing = True
        with self._send_lock, contextlib.suppress(OSError):
            self._stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.error("the trace writer process did not exit within %gs; killing it", timeout)
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout)
        with contextlib.suppress(OSError):
            self._stdout.close()


# -- the child ------------------------------------------------------------------------------


def main() -> None:
    """Entry point of the writer process (argv: store URL, durable 0/1, parent pid)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    url, durable, parent = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
    out = sys.stdout.buffer.fileno()
    try:
        _serve(url, durable, parent, sys.stdin.buffer.fileno(), out)
    except BaseException:  # noqa: BLE001 - reported to the parent by _serve, then exit 1
        sys.exit(1)


class _Sealed:
    """A sealed event's fields as attributes: all a store reads (cheaper than a model)."""

    __slots__ = ("__dict__",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.__dict__ = fields


def _report(out: int, exc: BaseException) -> None:
    """Tell the parent why this writer stops (before anything else can fail or block)."""
    with contextlib.suppress(OSError):
        _write_all(out, _frame(("E", repr(exc))))


def _serve(url: str, durable: bool, parent: int, inp: int, out: int) -> None:
    try:
        store = open_store(url, durable=durable)
    except BaseException as exc:
        _report(out, exc)
        raise
    # session id -> [head hash, root span id]; dropped once the session's end is written.
    heads: dict[str, list[Any]] = {}
    frames = _Frames(inp)
    try:
        while not frames.eof:
            ready, _, _ = select.select([inp], [], [], 1.0)
            if not ready:
                if os.getppid() != parent:  # re-parented: the agent is gone
                    frames.eof = True
                continue
            frames.fill()
            messages = frames.messages()
            if not messages:
                continue
            acks: dict[str, int] = {}
            watched: dict[str, list[dict[str, Any]]] = {}
            for records in messages:
                for session_id, trace_id, watch, queued in records:
                    state = heads.get(session_id)
                    if state is None:
                        state = heads[session_id] = [GENESIS_HASH, None]
                    events: list[Any] = []
                    state[0], state[1] = seal(
                        session_id,
                        trace_id,
                        state[0],
                        state[1],
                        queued,
                        events,
                        _Sealed,
                        raw=not watch,  # parsed only to send the fields back
                    )
                    store.append(events)
                    acks[session_id] = events[-1].sequence
                    if watch:
                        watched.setdefault(session_id, []).extend(e.__dict__ for e in events)
                    if events[-1].event_type == "session.ended":
                        del heads[session_id]
            store.sync()
            with contextlib.suppress(BrokenPipeError):  # the agent is gone; keep writing
                _write_all(out, _frame(("A", (len(messages), list(acks.items()), watched))))
        store.close()
    except BaseException as exc:
        # Reported first: closing a store that failed (a full disk) may fail or take long.
        _report(out, exc)
        with contextlib.suppress(Exception):
            store.close()
        raise
