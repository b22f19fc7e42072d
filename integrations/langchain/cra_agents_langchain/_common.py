"""What the middleware, the tool wrapper and the callback handler share."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import cra_agents as cra
from cra_agents import (
    ActionDeniedError,
    ActionNotFoundError,
    InvalidParametersError,
    Runtime,
)

__all__ = [
    "REFUSALS",
    "THREAD_SESSIONS",
    "SessionRegistry",
    "runtime_or_default",
]

#: What the gate raises for a call it refused and recorded: the model reads why.
REFUSALS = (ActionDeniedError, ActionNotFoundError, InvalidParametersError)


def runtime_or_default(runtime: Runtime | None) -> Runtime:
    """``runtime``, or the one ``cra.configure`` set up."""
    return runtime if runtime is not None else cra.get_runtime()


class SessionRegistry:
    """Which session records a LangGraph thread: ``thread_id`` → (runtime, session id).

    ``CRAMiddleware`` writes an entry at each model call of a run and drops it when it ends
    the session; ``CRACallbackHandler`` reads it (callbacks get the ``thread_id`` in their
    ``metadata``), so a handler records into the middleware's session even in a node where
    no model call of this process announced it (a resume straight into the tools node).
    Bounded (least recently written first out) and thread-safe; the runtime is held weakly.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._entries: OrderedDict[str, tuple[weakref.ref[Runtime], str]] = OrderedDict()
        self._threads: dict[str, set[str]] = {}  # session id -> its thread ids
        self._lock = threading.Lock()

    def put(self, thread_id: str, runtime: Runtime, session_id: str) -> None:
        """``thread_id`` records into ``session_id`` of ``runtime`` (the newest entry)."""
        with self._lock:
            entries = self._entries
            old = entries.get(thread_id)
            if old is not None and old[1] == session_id and old[0]() is runtime:
                entries.move_to_end(thread_id)
                return
            if old is not None:
                self._unlink(thread_id, old[1])
            entries[thread_id] = (weakref.ref(runtime), session_id)
            entries.move_to_end(thread_id)
            self._threads.setdefault(session_id, set()).add(thread_id)
            while len(entries) > self.maxsize:
                evicted, (_, evicted_session) = entries.popitem(last=False)
                self._unlink(evicted, evicted_session)

    def get(self, thread_id: str, runtime: Runtime) -> str | None:
        """The session of ``thread_id`` in ``runtime``, if a middleware announced one."""
        entry = self._entries.get(thread_id)  # atomic; writers hold the lock
        if entry is None or entry[0]() is not runtime:
            return None
        return entry[1]

    def forget(self, session_id: str) -> None:
        """Drop the entries of an ended session."""
        if session_id not in self._threads:  # most sessions: no thread (no checkpointer)
            return
        with self._lock:
            for thread_id in self._threads.pop(session_id, ()):
                self._entries.pop(thread_id, None)

    def _unlink(self, thread_id: str, session_id: str) -> None:
        threads = self._threads.get(session_id)
        if threads is not None:
            threads.discard(thread_id)
            if not threads:
                del self._threads[session_id]

    def __len__(self) -> int:
        return len(self._entries)


#: The process's thread → session registry (see :class:`SessionRegistry`).
THREAD_SESSIONS = SessionRegistry()
