"""Per-session hash chains: sequencing on the caller's thread, hashing deferred.

Appending takes the chain's lock only to assign the next sequence number and queue
``(sequence, time_ns, event_type, payload)``; identifiers, the timestamp string, canonical JSON
and SHA-256 are computed when the chain is flushed, strictly in sequence order, so 16 threads
appending to one chain still produce one contiguous, valid chain. Nothing of a payload may be
mutated after it is appended: callers hand over freshly built dicts.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson

from cra_agents._canonical import canonical_json
from cra_agents._clock import format_timestamp
from cra_agents._exceptions import TraceError
from cra_agents._ids import uuid7_batch
from cra_agents.protocol import GENESIS_HASH, TRACE_VERSION, TraceEvent

__all__ = ["Payload", "Queued", "SessionChain", "Watcher", "build_event", "encode", "seal"]

logger = logging.getLogger(__name__)

#: An event's payload: a mapping, or its canonical JSON already (runtime templates).
Payload = Mapping[str, Any] | bytes

#: Called on the writer's thread with the stored events of a batch, or None when the trace failed
#: and they will never be stored.
Watcher = Callable[[Sequence[TraceEvent] | None], None]

_FIELDS_SET: Final = set(TraceEvent.model_fields)
_new = object.__new__
_set = object.__setattr__


def build_event(fields: dict[str, Any]) -> TraceEvent:
    """Wrap already-valid event fields in a :class:`TraceEvent` without re-validating them.

    Only for events this package just built; anything read from outside goes through
    ``TraceEvent.model_validate``.
    """
    event = _new(TraceEvent)
    _set(event, "__dict__", fields)
    _set(event, "__pydantic_fields_set__", _FIELDS_SET.copy())  # pydantic may update it
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    return event


class SessionChain:
    """The hash chain of one session.

    Args:
        session_id: The session's id.
        trace_id: The trace id shared by every event of the session.
        sink: Called with each batch of finalised events, in order, under the chain's lock.
    """

    __slots__ = (
        "_head",
        "_lock",
        "_next",
        "_pending",
        "_root_span",
        "_sealing",
        "_sink",
        "_watch",
        "committed",
        "durable",
        "session_id",
        "trace_id",
    )

    def __init__(
        self,
        session_id: str,
        trace_id: str,
        sink: Callable[[list[TraceEvent]], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.trace_id = trace_id
        self._sink = sink
        self._lock = threading.Lock()
        self._sealing = threading.Lock()
        self._next = 0
        # Batches of (first sequence, time_ns, [(event_type, payload), ...]).
        self._pending: list[tuple[int, int, Sequence[tuple[str, Payload]]]] = []
        self._head = GENESIS_HASH
        self._root_span: str | None = None
        # last sequence of a batch -> (first sequence, callback wanting the finalised batch).
        self._watch: dict[int, tuple[int, Watcher]] = {}
        #: Highest sequence known to be in the store (-1: none); maintained by the collector.
        self.durable = -1
        #: Highest sequence handed to the collector (-1: none); maintained by the collector.
        self.committed = -1

    def append(
        self,
        event_type: str,
        payload: Payload,
        watch: Watcher | None = None,
    ) -> int:
        """Queue an event; return its sequence number.

        ``watch`` is called with ``[event]``, finalised, once the collector has stored it, or
        with None if it never will be (the trace failed).
        """
        now = time.time_ns()
        with self._lock:
            sequence = self._next
            self._next = sequence + 1
            self._pending.append((sequence, now, ((event_type, payload),)))
            if watch is not None:
                self._watch[sequence] = (sequence, watch)
        return sequence

    def extend(
        self,
        events: Sequence[tuple[str, Payload]],
        watch: Watcher | None = None,
    ) -> int:
        """Queue several events at once (one lock, one timestamp); return the first sequence.

        ``watch`` is called with all of them, finalised, once the collector stored the last.
        """
        now = time.time_ns()
        with self._lock:
            first = self._next
            self._next = first + len(events)
            self._pending.append((first, now, events))
            if watch is not None:
                self._watch[first + len(events) - 1] = (first, watch)
        return first

    def abandon(self) -> None:
        """Tell every watcher its event will never be stored (called with None)."""
        with self._lock:
            watchers, self._watch = list(self._watch.values()), {}
        for _, callback in watchers:
            try:
                callback(None)
            except Exception:
                logger.exception("a trace event watcher failed (ignored)")

    def notify(self, events: Sequence[TraceEvent]) -> None:
        """Hand stored ``events`` to the callbacks watching them (errors are logged)."""
        if not self._watch:
            return
        start = events[0].sequence if events else 0
        for index, event in enumerate(events):
            watched = self._watch.pop(event.sequence, None)
            if watched is not None:
                first, callback = watched
                # A batch is flushed whole, in order: its events are all in ``events``.
                batch = events[max(first - start, 0) : index + 1]
                try:
                    callback(batch)
                except Exception:
                    logger.exception("a trace event watcher failed (ignored)")

    @property
    def watched(self) -> bool:
        """Whether a watcher waits for some queued event."""
        return bool(self._watch)

    @property
    def pending(self) -> bool:
        """Whether events wait to be hashed."""
        return bool(self._pending)

    def __len__(self) -> int:
        return self._next

    @property
    def head(self) -> str:
        """Hash of the last finalised event (genesis when none)."""
        return self._head

    def take(self, limit: int | None = None) -> list[Queued]:
        """Remove queued batches, in order, with their payloads encoded; ``[]`` when none.

        With ``limit``, stop after the batch that reaches that many events. Whoever takes
        must seal what it took (:func:`seal`) before anyone takes more: the collector does
        both under its write lock, in this process or in the writer process. Encoding runs
        outside the chain's lock, so callers appending meanwhile are not held up.
        """
        with self._lock:
            if limit is None or len(self._pending) <= 1:
                pending, self._pending = self._pending, []
            else:
                taken = 0
                cut = 0
                for cut, queued in enumerate(self._pending, 1):  # noqa: B007 - cut is used
                    taken += len(queued[2])
                    if taken >= limit:
                        break
                pending, self._pending = self._pending[:cut], self._pending[cut:]
        return [
            (first, time_ns, [encode(*event) for event in batch])
            for first, time_ns, batch in pending
        ]

    def flush(self, limit: int | None = None) -> list[TraceEvent]:
        """Hash queued events in order, hand them to the sink and return them.

        With ``limit``, stop after the batch that reaches it (call again for the rest), which
        keeps a writer's working set small.

        A payload that cannot be canonicalised (NaN, a lone surrogate...) does not break the
        chain: its event is replaced by an ``error.occurred`` event that says what was refused.
        """
        with self._sealing:  # one sealer at a time; appends only wait for take()
            queued = self.take(limit)
            if not queued:
                return []
            events: list[TraceEvent] = []
            self._head, self._root_span = seal(
                self.session_id, self.trace_id, self._head, self._root_span, queued, events
            )
            if self._sink is not None:
                self._sink(events)
            return events


#: A queued batch with its payloads encoded: (first sequence, time_ns, [(type, payload JSON)]).
Queued = tuple[int, int, list[tuple[str, bytes]]]


def encode(event_type: str, payload: Payload) -> tuple[str, bytes]:
    """``(event_type, canonical payload JSON)``; what canonical JSON cannot carry is replaced.

    A payload given as bytes is canonical JSON already (a :class:`~cra_agents._canonical.Template`
    filled in by the runtime) and passes as it is.

    A payload that cannot be canonicalised (NaN, a lone surrogate...) does not break the
    chain: its event becomes an ``error.occurred`` event that says what was refused.
    """
    if type(payload) is bytes:
        return event_type, payload
    try:
        return event_type, canonical_json(payload)
    except TraceError as exc:
        refused = {
            "error_code": exc.code,
            "error_message": exc.message,
            "refused_event_type": event_type,
        }
        return "error.occurred", canonical_json(refused)


def seal(
    session_id: str,
    trace_id: str,
    previous: str,
    root_span: str | None,
    queued: Sequence[Queued],
    out: list[Any],
    make: Callable[[dict[str, Any]], Any] = build_event,
    *,
    raw: bool = False,
) -> tuple[str, str | None]:
    """Hash encoded batches onto a chain whose head is ``previous``; append events to ``out``.

    The one place events get their ids, timestamps and hashes, whichever writer runs it (the
    writer thread or the writer process), so both write byte-identical chains. The payload
    each event carries is the one its canonical JSON parses to (keys in canonical order).
    ``make`` wraps each event's fields (default: a :class:`TraceEvent`; the writer process,
    which only stores them, passes a lighter object with the same attributes). With ``raw``
    the payload stays its canonical JSON (an ``orjson.Fragment``: stored as it is, never
    parsed), for events nobody reads before they are stored.

    Returns:
        The new head hash and the session's root span id.
    """
    sha256 = hashlib.sha256
    loads = orjson.Fragment if raw else orjson.loads
    for first, time_ns, batch in queued:
        timestamp = format_timestamp(time_ns)
        ids = uuid7_batch(time_ns, 2 * len(batch))
        for offset, (event_type, payload_json) in enumerate(batch):
            span_id, event_id = ids[2 * offset], ids[2 * offset + 1]
            parent = root_span
            if parent is None:
                root_span = span_id
            sequence = first + offset
            # The hash rule (PROTOCOL_NOTES §3.1), written out for speed; the tests check it
            # against compute_event_hash and spec_event_hash on every event of many chains.
            digest = sha256(
                f"{TRACE_VERSION}{event_id}{trace_id}{span_id}{parent or ''}{session_id}"
                f"{sequence}{timestamp}{event_type}".encode()
            )
            digest.update(payload_json)
            digest.update(previous.encode())
            event_hash = digest.hexdigest()
            out.append(
                make(
                    {
                        "trace_version": TRACE_VERSION,
                        "event_id": event_id,
                        "trace_id": trace_id,
                        "span_id": span_id,
                        "parent_span_id": parent,
                        "session_id": session_id,
                        "sequence": sequence,
                        "timestamp": timestamp,
                        "event_type": event_type,
                        "payload": loads(payload_json),
                        "event_hash": event_hash,
                        "previous_event_hash": previous,
                    }
                )
            )
            previous = event_hash
    return previous, root_span
