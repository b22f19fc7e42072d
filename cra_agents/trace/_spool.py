"""The HTTP sink's local durable queue: JSONL segment files in one directory, in order.

Layout of a spool directory::

    lock                    held (``flock``) by the one process that owns the spool
    000000000041.jsonl      segments, oldest first: stored event lines (LF-terminated)
    000000000042.jsonl      the newest may be open for appending
    rejected/               segments the ingest refused for good, with a ``.error.json`` each

Events are appended to the open segment; :meth:`Spool.sync` flushes it (and fsyncs it and, for
a new file, the directory, when durable). A segment is *sealed* (closed, never written again)
when it is full or when the sender takes it; sealed segments are sent oldest first and deleted
(the directory fsynced) only once the ingest has them. A process that starts on a spool left
by another one (a crash, a kill -9) cuts each segment after its last LF: a torn last line was
never acknowledged to anyone. The spool is bounded in bytes (:class:`SpoolFullError`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections import deque
from pathlib import Path
from typing import IO, Any

from cra_agents._exceptions import ConfigurationError

__all__ = ["LOCK_NAME", "REJECTED_DIR", "Spool", "SpoolFullError"]

LOCK_NAME = "lock"
REJECTED_DIR = "rejected"
_SUFFIX = ".jsonl"


class SpoolFullError(Exception):
    """Appending would take the spool past its bound (nothing was appended)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cut_torn_tail(path: Path) -> int:
    """Cut ``path`` after its last LF; the number of bytes cut (0 when none)."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as handle:
        handle.seek(max(size - 65536, 0))
        tail = handle.read()
        if tail.endswith(b"\n"):
            return 0
        keep = tail.rfind(b"\n")
        if keep < 0 and size > len(tail):  # a torn line longer than the window: search back
            handle.seek(0)
            data = handle.read()
            keep_at = data.rfind(b"\n") + 1
        else:
            keep_at = max(size - len(tail), 0) + keep + 1
        handle.truncate(keep_at)
        handle.flush()
        os.fsync(handle.fileno())
    return size - keep_at


class Spool:
    """A bounded, ordered, crash-safe queue of event lines on disk (see the module docstring).

    Not thread-safe: the sink serialises every call.

    Args:
        directory: The spool directory (created if missing).
        max_bytes: The most bytes the segments may hold together.
        segment_bytes: A segment is sealed once it holds this many bytes.
        durable: fsync segments and the directory (else flush to the OS only).

    Raises:
        ConfigurationError: another process holds the spool (reason ``spool_locked``), or the
            directory cannot be created (``spool_not_writable``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        segment_bytes: int = 4 * 1024 * 1024,
        durable: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.durable = durable
        try:
            (self.directory / REJECTED_DIR).mkdir(parents=True, exist_ok=True)
            self._lock: IO[str] | None = (self.directory / LOCK_NAME).open("a+", encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the trace spool {str(self.directory)!r} ({exc}); point "
                "?spool= at a writable directory",
                details={"reason": "spool_not_writable", "cause": repr(exc)},
            ) from exc
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "unknown"
            self._lock.close()
            self._lock = None
            raise ConfigurationError(
                f"the trace spool {str(self.directory)!r} is in use by another process (pid "
                f"{holder}); each process needs a spool of its own: give this one another "
                "directory (?spool=DIR in the store URL)",
                details={"reason": "spool_locked", "holder_pid": holder},
            ) from exc
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()
        #: Bytes of torn last lines cut from segments an earlier process left.
        self.torn_bytes = 0
        self._sealed: deque[tuple[Path, int]] = deque()
        numbers = []
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                numbers.append(int(path.stem))
            except ValueError:
                continue
            self.torn_bytes += cut_torn_tail(path)
            size = path.stat().st_size
            if size:
                self._sealed.append((path, size))
            else:
                path.unlink()
        self._next = max(numbers, default=0) + 1
        self._bytes = sum(size for _, size in self._sealed)
        self._current: IO[bytes] | None = None
        self._current_path: Path | None = None
        self._current_size = 0
        self._new_file = False

    # -- state ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes the segments hold (sealed and open)."""
        return self._bytes

    @property
    def segments(self) -> int:
        """Segments waiting (sealed, plus the open one if it holds anything)."""
        return len(self._sealed) + (1 if self._current_size else 0)

    @property
    def pending(self) -> bool:
        """Whether anything waits to be sent."""
        return bool(self._sealed) or self._current_size > 0

    # -- writing ----------------------------------------------------------------------------

    def append(self, data: bytes) -> None:
        """Append whole lines to the open segment (opened if none).

        Raises:
            SpoolFullError: the spool would grow past ``max_bytes``; nothing was written.
        """
        if self._bytes + len(data) > self.max_bytes:
            raise SpoolFullError(data)
        if self._current is None:
            self._current_path = self.directory / f"{self._next:012d}{_SUFFIX}"
            self._next += 1
            self._current = self._current_path.open("ab")
            self._current_size = 0
            self._new_file = True
        self._current.write(data)
        self._current_size += len(data)
        self._bytes += len(data)

    def sync(self) -> None:
        """Flush the open segment to the OS; when durable, fsync it (and a new file's dir).

        A segment that reached ``segment_bytes`` is sealed.
        """
        self.sync_only()
        if self._current_size >= self.segment_bytes:
            self.seal()

    def seal(self) -> bool:
        """Close the open segment (synced) and queue it; False when it held nothing."""
        if self._current is None or self._current_path is None:
            return False
        if not self._current_size:
            return False
        self.sync_only()
        self._current.close()
        self._sealed.append((self._current_path, self._current_size))
        self._current = None
        self._current_path = None
        self._current_size = 0
        return True

    def sync_only(self) -> None:
        """Flush (and fsync when durable) the open segment, without sealing it."""
        if self._current is None:
            return
        self._current.flush()
        if self.durable:
            os.fsync(self._current.fileno())
            if self._new_file:
                _fsync_dir(self.directory)
        self._new_file = False

    # -- sending side -----------------------------------------------------------------------

    def oldest(self) -> Path | None:
        """The oldest sealed segment, None when none is sealed."""
        return self._sealed[0][0] if self._sealed else None

    def delivered(self, path: Path) -> None:
        """The ingest has every event of ``path``, the oldest sealed segment: delete it."""
        _, size = self._pop(path)
        path.unlink(missing_ok=True)
        if self.durable:
            _fsync_dir(self.directory)
        self._bytes -= size

    def reject(self, path: Path, error: dict[str, Any]) -> Path:
        """Move ``path`` (the oldest sealed segment) to ``rejected/`` with its error beside it.

        Returns:
            Where the segment now is.
        """
        _, size = self._pop(path)
        target = self.directory / REJECTED_DIR / path.name
        (target.with_suffix(".error.json")).write_text(
            json.dumps(error, indent=2, default=str) + "\n", encoding="utf-8"
        )
        os.replace(path, target)
        if self.durable:
            _fsync_dir(target.parent)
            _fsync_dir(self.directory)
        self._bytes -= size
        return target

    def _pop(self, path: Path) -> tuple[Path, int]:
        if not self._sealed or self._sealed[0][0] != path:  # pragma: no cover - sink bug
            raise RuntimeError(f"{path} is not the oldest sealed segment")
        return self._sealed.popleft()

    def close(self) -> None:
        """Seal the open segment and release the lock (idempotent)."""
        with contextlib.suppress(OSError):
            self.seal()
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
