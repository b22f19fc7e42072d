"""The in-memory trace store."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from cra_agents.protocol import TraceEvent
from cra_agents.trace._ingest import (
    IngestResult,
    head_of,
    ingest_mapping,
    split_batch,
    stored_events_of,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps events in RAM: for tests, notebooks and short-lived processes.

    Args:
        max_sessions: Keep at most this many sessions, dropping the oldest (whole sessions
            only) once exceeded; ``None`` keeps everything.
    """

    def __init__(self, max_sessions: int | None = None) -> None:
        self._lock = threading.Lock()
        self._events: OrderedDict[str, list[TraceEvent]] = OrderedDict()
        self._max_sessions = max_sessions

    def append(self, events: Sequence[TraceEvent]) -> None:
        """Keep ``events``."""
        if not events:
            return
        with self._lock:
            self._extend(events)

    def _extend(self, events: Sequence[TraceEvent]) -> None:
        session_id = events[0].session_id
        chain = self._events.get(session_id)
        if chain is None:
            chain = self._events[session_id] = []
            if self._max_sessions is not None:
                while len(self._events) > self._max_sessions:
                    self._events.popitem(last=False)
        chain.extend(events)

    def ingest(self, events: Sequence[TraceEvent]) -> IngestResult:
        """Add a checked batch's events that continue the kept chains, all or none.

        See :mod:`cra_agents.trace._ingest` for the rule.

        Raises:
            ChainConflictError: a session's part does not continue its chain.
        """
        runs = split_batch(events)
        with self._lock:
            new, result = ingest_mapping(
                runs,
                lambda sid: head_of(self._events.get(sid, ())),
                lambda sid, lo, hi: stored_events_of(
                    e for e in self._events.get(sid, ()) if lo <= e.sequence <= hi
                ),
            )
            for run in new.values():
                self._extend(run)
        return result

    def read(
        self,
        session_id: str,
        *,
        event_type: str | None = None,
        since_sequence: int | None = None,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        """Events of a session in sequence order; ``since_sequence`` is exclusive."""
        with self._lock:
            events = list(self._events.get(session_id, ()))
        if since_sequence is not None:
            events = [e for e in events if e.sequence > since_sequence]
        if event_type is not None:
            events = [e for e in events if e.event_type == event_type]
        return events if limit is None else events[:limit]

    def last_sequence(self, session_id: str) -> int:
        """The sequence of the session's last event (-1: none)."""
        with self._lock:
            chain = self._events.get(session_id)
            return chain[-1].sequence if chain else -1

    def sessions(self) -> list[str]:
        """Session ids, oldest first."""
        with self._lock:
            return list(self._events)

    def sync(self) -> None:
        """Nothing to sync: memory is as durable as it gets."""

    def close(self) -> None:
        """Nothing to release."""
