"""The JSONL trace store: one ``<session_id>.trace.jsonl`` file per session (spec §6.2)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import orjson

from cra_agents._exceptions import TraceError
from cra_agents.protocol import TraceEvent
from cra_agents.trace._read import check_indexed

__all__ = ["JsonlStore", "repair_torn_tail"]

_SUFFIX = ".trace.jsonl"
_MAX_OPEN = 64


def event_line(event: TraceEvent) -> bytes:
    """``event`` as one stored line; the SQLite store keeps the same text without the LF."""
    # The instance dict holds exactly the fields in the spec's order (the order the Rust core
    # writes them); compact, UTF-8, LF.
    try:
        return orjson.dumps(event.__dict__) + b"\n"
    except TypeError as exc:  # pragma: no cover - payloads are canonicalised before this
        raise TraceError(f"event {event.event_id} cannot be written: {exc}") from exc


def parse_line(line: bytes | str) -> TraceEvent:
    """The event a stored line holds.

    Raises:
        ValueError: the line is not a valid event (pydantic's ``ValidationError``).
    """
    return TraceEvent.model_validate_json(line)


class JsonlStore:
    """One ``<session_id>.trace.jsonl`` file per session under ``directory`` (spec §6.2).

    Appends take an exclusive ``flock`` on the file, so several processes may write the same
    directory without interleaving lines. ``sync`` fsyncs every file written since the last
    sync (``durable=False`` leaves syncing to the operating system). At most 64 files stay
    open; older handles are closed (after a flush and sync) and reopened on demand.

    A store deleted under it is not written to in silence: an open file keeps accepting
    writes after its directory entry is gone, so ``sync`` checks that the directory is still
    the one opened and that every file written since the last sync still has a name, and
    raises ``FileNotFoundError`` otherwise.
    """

    def __init__(self, directory: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.durable = durable
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._identity = file_identity(self.directory)
        self._lock = threading.Lock()
        self._files: OrderedDict[str, IO[bytes]] = OrderedDict()
        self._unsynced: set[str] = set()
        self._closed = False

    def check_writable(self) -> None:
        """Create, write and remove a probe file in the directory.

        Raises:
            OSError: the directory cannot be written (read-only, full, gone).
        """
        probe = self.directory / f".cra-probe-{os.getpid()}-{threading.get_ident()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\n")
        finally:
            os.close(fd)
            probe.unlink()

    def path(self, session_id: str) -> Path:
        """The file of ``session_id``.

        Raises:
            ValueError: ``session_id`` could name a file outside the directory or a hidden one.
        """
        if (
            not session_id
            or "/" in session_id
            or "\\" in session_id
            or "\0" in session_id
            or session_id.startswith(".")
        ):
            raise ValueError(f"not a session id: {session_id!r}")
        return self.directory / f"{session_id}{_SUFFIX}"

    def _handle(self, session_id: str) -> IO[bytes]:
        handle = self._files.get(session_id)
        if handle is not None:
            self._files.move_to_end(session_id)
            return handle
        handle = self.path(session_id).open("ab")
        self._files[session_id] = handle
        while len(self._files) > _MAX_OPEN:
            old_id, old = self._files.popitem(last=False)
            old.flush()
            if old_id in self._unsynced and self.durable:
                os.fdatasync(old.fileno())
                self._unsynced.discard(old_id)
            old.close()
        return handle

    def append(self, events: Sequence[TraceEvent]) -> None:
        """Append ``events`` (one session's) as lines."""
        if not events:
            return
        data = b"".join(event_line(e) for e in events)
        session_id = events[0].session_id
        with self._lock:
            if self._closed:
                raise ValueError("store is closed")
            handle = self._handle(session_id)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                handle.write(data)
                handle.flush()
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            self._unsynced.add(session_id)

    def sync(self) -> None:
        """Fdatasync every file written since the last sync (nothing if not ``durable``)."""
        with self._lock:
            try:
                # A file closed since it was written was synced when it was closed.
                written = [
                    handle
                    for session_id in self._unsynced
                    if (handle := self._files.get(session_id)) is not None
                ]
                if self._unsynced:
                    self._check_present(written)
                if self.durable:
                    for handle in written:
                        os.fdatasync(handle.fileno())
            finally:
                self._unsynced.clear()

    def _check_present(self, handles: list[IO[bytes]]) -> None:
        """Raise if the directory or a file just written was deleted or replaced."""
        check_unreplaced(self.directory, self._identity, "the trace store directory")
        for handle in handles:
            if os.fstat(handle.fileno()).st_nlink == 0:
                raise FileNotFoundError(
                    errno.ENOENT,
                    "a trace file was deleted while in use; events written to it are lost",
                    handle.name,
                )

    def _written(self, session_id: str) -> Path | None:
        """The session's file with everything appended so far flushed to it; None: no file."""
        path = self.path(session_id)
        with self._lock:
            handle = self._files.get(session_id)
            if handle is not None:
                handle.flush()
        return path if path.exists() else None

    def read(
        self,
        session_id: str,
        *,
        event_type: str | None = None,
        since_sequence: int | None = None,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        """Events of a session in file order, optionally filtered.

        Raises:
            ValueError: a line is not a valid event (use ``verify_chain(path)`` to diagnose).
            TraceError: an event of another session is in the file (it was renamed), with
                code ``TRACE_INDEX_MISMATCH``.
        """
        path = self._written(session_id)
        if path is None:
            return []
        out: list[TraceEvent] = []
        with path.open("rb") as reader:
            for raw in reader:
                if not raw.endswith(b"\n"):
                    break  # a torn tail is not an event; verify_chain reports it
                event = check_indexed(parse_line(raw), session_id)
                if since_sequence is not None and event.sequence <= since_sequence:
                    continue
                if event_type is not None and event.event_type != event_type:
                    continue
                out.append(event)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def last_sequence(self, session_id: str) -> int:
        """The sequence of the session's last complete line (-1: none), read from the end.

        Raises:
            TraceError: the line is another session's (code ``TRACE_INDEX_MISMATCH``).
        """
        path = self._written(session_id)
        if path is None:
            return -1
        with path.open("rb") as reader:
            size = reader.seek(0, os.SEEK_END)
            block = b""
            position = size
            while position > 0:
                step = min(65536, position)
                position -= step
                reader.seek(position)
                block = reader.read(step) + block
                lines = block.split(b"\n")
                # The last piece is torn or empty; the first may be cut by the block edge.
                whole = lines[1:-1] if position > 0 else lines[:-1]
                complete = [line for line in whole if line.strip()]
                if complete:
                    return check_indexed(parse_line(complete[-1]), session_id).sequence
        return -1

    def sessions(self) -> list[str]:
        """Session ids with a file, oldest file first."""
        files = sorted(self.directory.glob(f"*{_SUFFIX}"), key=lambda p: p.stat().st_mtime_ns)
        return [p.name[: -len(_SUFFIX)] for p in files]

    def close(self) -> None:
        """Sync and close every file (closed even when the last sync fails)."""
        try:
            self.sync()
        finally:
            with self._lock:
                handles = list(self._files.values())
                self._files.clear()
                self._closed = True
                for handle in handles:
                    with contextlib.suppress(OSError):  # buffered bytes of a failed store
                        handle.close()


def file_identity(path: Path) -> tuple[int, int]:
    """What tells a directory or file apart from one put in its place."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


def check_unreplaced(path: Path, identity: tuple[int, int], what: str) -> None:
    """Raise ``FileNotFoundError`` if ``path`` is gone or no longer the one opened as ``identity``.

    A store deleted or replaced under an open handle still takes writes, into a file nobody
    can open again: stores say so rather than go on writing in silence.
    """
    try:
        current: tuple[int, int] | None = file_identity(path)
    except FileNotFoundError:
        current = None
    if current != identity:
        raise FileNotFoundError(
            errno.ENOENT,
            f"{what} was deleted or replaced while in use; what was written since cannot be found",
            str(path),
        )


def repair_torn_tail(path: str | os.PathLike[str]) -> int:
    """Cut a torn last line (a crash mid-write) off a ``.trace.jsonl`` file.

    Only a final line without its newline that is not a complete event is removed; a
    complete event missing only its newline gets the newline. Everything else is left alone:
    this never hides tampering, which ``verify_chain`` reports as such.

    Returns:
        The number of bytes removed (0 when there was nothing to repair).
    """
    target = Path(path)
    with target.open("r+b") as handle:
        data = handle.read()
        if not data or data.endswith(b"\n"):
            return 0
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        try:
            parse_line(tail)
        except ValueError:
            handle.truncate(cut)
            handle.flush()
            os.fsync(handle.fileno())
            return len(tail)
        handle.write(b"\n")
        handle.flush()
        os.fsync(handle.fileno())
        return 0
