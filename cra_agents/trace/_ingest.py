"""Ingest: TRACE events written elsewhere, added to a store only if they continue its chains.

The one rule for every store and every entry point (the server's ``POST /v1/ingest/batch``,
``cra ingest``): a batch is JSONL, one hashed TRACE event per line, of one or more sessions.

1. :func:`parse_batch` reads it strictly (no duplicate keys, no ``NaN``, nothing coerced), checks
   each line as a TRACE event and recomputes its hash (either upstream rule, as the verifier
   accepts), and refuses the whole batch at the first bad line (:class:`~cra_agents.TraceError`,
   code ``TRACE_BATCH_INVALID``, the line number in ``details``).
2. :func:`split_batch` groups it by session (first appearance order) and checks that each
   session's part is one contiguous, linked run of sequences.
3. Under the store's lock for each session (a transaction, an advisory lock), :func:`plan_session`
   compares that run with the stored chain: events at sequences already stored must be the
   stored events (same event id and hash) and are *duplicates*, so a retried batch is
   idempotent; the rest must continue the stored head (next sequence, linked to the head's
   hash). Anything else raises :class:`~cra_agents.ChainConflictError` (status 409, reason
   ``gap``, ``link`` or ``fork``) and the store keeps none of the batch.

Stores that can ingest (:class:`~cra_agents.trace.MemoryStore`,
:class:`~cra_agents.trace.SqliteStore`, the PostgreSQL store) have an ``ingest(events)`` method
returning an :class:`IngestResult`; see :class:`IngestStore`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, Protocol, runtime_checkable

import orjson
from pydantic import ValidationError

from cra_agents._canonical import canonical_json
from cra_agents._clock import normalize_timestamp
from cra_agents._exceptions import ChainConflictError, TraceError
from cra_agents._safejson import DEFAULT_MAX_DEPTH, JSONInputError, loads_strict
from cra_agents.protocol import GENESIS_HASH, TraceEvent
from cra_agents.trace._hash import _material
from cra_agents.trace._read import MAX_LINE_BYTES
from cra_agents.trace._verify import _rule

__all__ = [
    "BATCH_INVALID",
    "EMPTY_HEAD",
    "MAX_BATCH_EVENTS",
    "IngestResult",
    "IngestStore",
    "StoredEvent",
    "StoredHead",
    "head_of",
    "ingest_mapping",
    "parse_batch",
    "plan_session",
    "split_batch",
    "stored_events_of",
]

#: The :class:`~cra_agents.TraceError` code of a batch that is not a batch of hashed TRACE events.
BATCH_INVALID: Final = "TRACE_BATCH_INVALID"

#: The most events one batch may hold.
MAX_BATCH_EVENTS: Final = 10_000


class StoredHead(NamedTuple):
    """The last stored event of a session: ``(-1, GENESIS_HASH)`` when it has none."""

    sequence: int
    event_hash: str


#: A session with no stored events.
EMPTY_HEAD: Final = StoredHead(-1, GENESIS_HASH)


class StoredEvent(NamedTuple):
    """What the rule needs of a stored event to tell a duplicate from a fork."""

    sequence: int
    event_id: str
    event_hash: str


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What an ingest did: events added, events already stored (a retried batch), sessions."""

    inserted: int
    duplicates: int
    sessions: tuple[str, ...]

    def __add__(self, other: IngestResult) -> IngestResult:
        seen = dict.fromkeys(self.sessions)
        seen.update(dict.fromkeys(other.sessions))
        return IngestResult(
            self.inserted + other.inserted, self.duplicates + other.duplicates, tuple(seen)
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON answer of ``POST /v1/ingest/batch``."""
        return {
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "sessions": list(self.sessions),
        }


@runtime_checkable
class IngestStore(Protocol):
    """A store that can add events written elsewhere (see the module docstring)."""

    def ingest(self, events: Sequence[TraceEvent]) -> IngestResult:
        """Add the events of a checked batch that continue the stored chains, all or none.

        Raises:
            ChainConflictError: a session's part does not continue its stored chain; nothing
                of the batch is stored.
        """
        ...


def _invalid(message: str, line: int | None, **details: Any) -> TraceError:
    if line is not None:
        details["line"] = line
    return TraceError(message, code=BATCH_INVALID, details=details)


def parse_batch(
    data: bytes | str | Iterable[bytes], *, max_events: int = MAX_BATCH_EVENTS
) -> list[TraceEvent]:
    """The events of a JSONL batch, each checked as a hashed TRACE event.

    Blank lines are skipped; a last line without its newline is read like the others.

    Args:
        data: The batch (already decompressed), or its lines.
        max_events: Refuse a batch of more events.

    Raises:
        TraceError: code :data:`BATCH_INVALID`: an empty batch, too many events, a line that is
            not strict JSON, not a TRACE event, or whose ``event_hash`` is not its hash;
            ``details`` name the ``line`` (1-based) and the ``reason``.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    lines = data.split(b"\n") if isinstance(data, bytes) else data
    events: list[TraceEvent] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if len(events) >= max_events:
            raise _invalid(
                f"the batch holds more than {max_events} events: send smaller batches",
                None,
                reason="too_many_events",
                max_events=max_events,
            )
        try:
            value = _loads_line(line)
        except JSONInputError as exc:
            raise _invalid(f"line {number}: {exc}", number, reason="not_json") from exc
        if not isinstance(value, dict):
            raise _invalid(f"line {number} is not a JSON object", number, reason="not_an_object")
        try:
            event = TraceEvent.model_validate(value, strict=True)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in error["loc"]) or "event"
            raise _invalid(
                f"line {number} is not a TRACE event: {where}: {error['msg']}",
                number,
                reason="not_an_event",
                field=where,
            ) from exc
        if not _hashes(value):
            raise _invalid(
                f"line {number}: event {event.event_id} (session {event.session_id}, sequence "
                f"{event.sequence}) does not hash to its event_hash: it was changed after it "
                "was hashed",
                number,
                reason="hash_mismatch",
                session_id=event.session_id,
                sequence=event.sequence,
            )
        events.append(event)
    if not events:
        raise _invalid("the batch holds no events", None, reason="empty")
    return events


def _loads_line(line: bytes) -> Any:
    """One line of a batch as :func:`~cra_agents._safejson.loads_strict` reads it, faster.

    The fast path takes a line only when it is exactly what ``orjson.dumps`` writes for the
    value ``orjson.loads`` reads from it (what :func:`event_line` writes): the same bytes are
    the same tokens, so no key repeats (``dumps`` writes each key of a dict once), no integer
    is out of range (``loads`` reads those as floats, which ``dumps`` writes otherwise), no
    ``NaN`` and no byte-order mark (``loads`` refuses them). Nesting is bounded by the number
    of opening brackets. Any other line, accepted or not, is read by ``loads_strict`` itself,
    so what it refuses and how it words the refusal do not change.

    Raises:
        JSONInputError: from ``loads_strict``.
    """
    body = line[:-1] if line.endswith(b"\n") else line  # a file's lines keep their LF
    if len(body) <= MAX_LINE_BYTES and body.count(b"{") + body.count(b"[") <= DEFAULT_MAX_DEPTH:
        try:
            value = orjson.loads(body)
            if orjson.dumps(value) == body:
                return value
        except orjson.JSONDecodeError:
            pass  # loads_strict says why
    return loads_strict(line, max_bytes=MAX_LINE_BYTES)


def _hashes(value: Mapping[str, Any]) -> bool:
    """Whether an event's stored hash is its hash under either rule (``_rule`` is not None).

    The rule we write (normalised timestamp, canonical payload) is tried first: when it
    matches, which upstream rules also would is not asked here. Otherwise ``_rule`` decides.
    """
    try:
        timestamp = normalize_timestamp(str(value["timestamp"]))
        payload_json = canonical_json(value["payload"])
    except (TraceError, ValueError):
        return _rule(value) is not None
    material = _material(value, timestamp, payload_json)
    return hashlib.sha256(material).hexdigest() == value["event_hash"] or _rule(value) is not None


def split_batch(events: Iterable[TraceEvent]) -> dict[str, list[TraceEvent]]:
    """The batch's events by session (in order of first appearance), each a linked run.

    Raises:
        ChainConflictError: within the batch, a session's sequences do not follow each other
            by one (reason ``gap``) or an event does not link to the one before (``link``).
    """
    sessions: dict[str, list[TraceEvent]] = {}
    for event in events:
        run = sessions.setdefault(event.session_id, [])
        if run:
            before = run[-1]
            if event.sequence != before.sequence + 1:
                raise _conflict(
                    "gap",
                    event,
                    f"follows sequence {before.sequence} in the batch",
                    expected_sequence=before.sequence + 1,
                )
            if event.previous_event_hash != before.event_hash:
                raise _conflict(
                    "link",
                    event,
                    f"does not link to event {before.sequence} before it in the batch",
                    expected_previous_hash=before.event_hash,
                )
        run.append(event)
    return sessions


def plan_session(
    events: Sequence[TraceEvent],
    head: StoredHead,
    stored: Callable[[int, int], Iterable[StoredEvent]],
) -> tuple[list[TraceEvent], int]:
    """The events of one session's run (from :func:`split_batch`) that the store lacks.

    Call it under the store's lock for the session, with what the store holds now.

    Args:
        events: One session's run, in sequence order.
        head: The session's stored head (:data:`EMPTY_HEAD` for none).
        stored: The stored events with sequences from the first to the second argument
            (inclusive); asked only when the run overlaps what is stored.

    Returns:
        ``(new events, number of duplicates)``: the new events continue ``head``.

    Raises:
        ChainConflictError: an overlapping event differs from the stored one (reason
            ``fork``), or the new events do not continue the head (``gap``, ``link``).
    """
    first = events[0]
    duplicates = 0
    if first.sequence <= head.sequence:
        last_overlap = min(events[-1].sequence, head.sequence)
        kept = {item.sequence: item for item in stored(first.sequence, last_overlap)}
        for event in events:
            if event.sequence > head.sequence:
                break
            known = kept.get(event.sequence)
            if known is None or (known.event_id, known.event_hash) != (
                event.event_id,
                event.event_hash,
            ):
                raise _conflict(
                    "fork",
                    event,
                    "differs from the stored event at that sequence"
                    if known is not None
                    else "is at a sequence the store lists but cannot find",
                    stored_event_id=None if known is None else known.event_id,
                    stored_event_hash=None if known is None else known.event_hash,
                )
            duplicates += 1
    new = list(events[duplicates:])
    if new:
        nxt = new[0]
        if nxt.sequence != head.sequence + 1:
            raise _conflict(
                "gap",
                nxt,
                f"does not follow the stored head (sequence {head.sequence})",
                expected_sequence=head.sequence + 1,
            )
        if nxt.previous_event_hash != head.event_hash:
            raise _conflict(
                "link",
                nxt,
                "does not link to the stored head",
                expected_previous_hash=head.event_hash,
            )
    return new, duplicates


def _conflict(reason: str, event: TraceEvent, what: str, **details: Any) -> ChainConflictError:
    meaning = {
        "gap": "events are missing before it",
        "link": "its previous_event_hash is not the hash of the event before it",
        "fork": "the session has two different histories",
    }[reason]
    return ChainConflictError(
        f"session {event.session_id}: event {event.event_id} at sequence {event.sequence} "
        f"{what}: {meaning}; nothing of the batch was stored",
        details={
            "reason": reason,
            "session_id": event.session_id,
            "sequence": event.sequence,
            "event_id": event.event_id,
            **details,
        },
    )


def stored_events_of(events: Iterable[TraceEvent]) -> list[StoredEvent]:
    """:class:`StoredEvent` rows of events a store holds (for stores that keep whole events)."""
    return [StoredEvent(e.sequence, e.event_id, e.event_hash) for e in events]


def head_of(events: Sequence[TraceEvent]) -> StoredHead:
    """The head of a stored chain given as its events (its last ones suffice)."""
    return StoredHead(events[-1].sequence, events[-1].event_hash) if events else EMPTY_HEAD


def ingest_mapping(
    runs: Mapping[str, Sequence[TraceEvent]],
    head: Callable[[str], StoredHead],
    stored: Callable[[str, int, int], Iterable[StoredEvent]],
) -> tuple[dict[str, list[TraceEvent]], IngestResult]:
    """Plan every session of a split batch: ``(new events by session, result)``.

    Raises:
        ChainConflictError: from :func:`plan_session`, for the first session that conflicts.
    """
    new: dict[str, list[TraceEvent]] = {}
    inserted = duplicates = 0
    for session_id, run in runs.items():
        fresh, dup = plan_session(run, head(session_id), functools.partial(stored, session_id))
        duplicates += dup
        if fresh:
            new[session_id] = fresh
            inserted += len(fresh)
    return new, IngestResult(inserted, duplicates, tuple(runs))
