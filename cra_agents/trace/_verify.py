"""Chain verification: linkage, then sequence, then hash (PROTOCOL_NOTES §3.4)."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from cra_agents._canonical import canonical_json
from cra_agents._clock import normalize_timestamp
from cra_agents._exceptions import TraceError
from cra_agents.protocol import GENESIS_HASH, TraceEvent
from cra_agents.trace._checkpoint import Checkpoint, _as_list
from cra_agents.trace._hash import _material, spec_event_hash
from cra_agents.trace._read import INDEX_MISMATCH, TornTail, iter_jsonl

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from cra_agents.trace._store import TraceStore

__all__ = [
    "INDEX_MISMATCH",
    "ChainVerification",
    "ErrorType",
    "HashRule",
    "stored_events",
    "verify_chain",
    "verify_logs",
    "verify_store",
]


ErrorType = Literal[
    "invalid_genesis",
    "chain_broken",
    "sequence_gap",
    "hash_mismatch",
    "malformed_event",
    "checkpoint_invalid",
    "checkpoint_mismatch",
    "truncated",
    "torn_tail",
    "unverifiable_tail",
    "session_mismatch",
    "index_mismatch",
]
#: ``normalized``: the Rust rule; ``as_written``: the spec's Appendix B; ``both``: every event
#: hashes identically under both (what we write); ``mixed``: events differ in the rule they need.
HashRule = Literal["normalized", "as_written", "both", "mixed"]


@dataclass(frozen=True, slots=True)
class ChainVerification:
    """The outcome of :func:`verify_chain`."""

    valid: bool
    event_count: int
    first_invalid_index: int | None = None
    error_type: ErrorType | None = None
    error_message: str | None = None
    last_valid_hash: str = GENESIS_HASH
    hash_rule: HashRule | None = None
    #: Size of the latest checkpoint checked (None: no checkpoint given).
    checkpoint_size: int | None = None
    #: Events after the latest checkpoint: consistent, but not protected against truncation.
    unverifiable_tail: int | None = None
    #: The log this is about: the id its store or caller names, else its events' session id.
    log_id: str | None = None

    def __bool__(self) -> bool:
        return self.valid

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "valid": self.valid,
            "event_count": self.event_count,
            "first_invalid_index": self.first_invalid_index,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "last_valid_hash": self.last_valid_hash,
            "hash_rule": self.hash_rule,
            "checkpoint_size": self.checkpoint_size,
            "unverifiable_tail": self.unverifiable_tail,
            "log_id": self.log_id,
        }


def _fields(item: TraceEvent | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(item, TraceEvent):
        return item.__dict__
    return item


# Where the spec's json.dumps may write a payload differently from canonical JSON (besides
# non-ASCII text): floats in exponent form, small floats Python writes as 1e-05, and DEL,
# which json.dumps escapes as \u007f while serde_json writes it raw.
def _has_float(value: Any) -> bool:
    """Whether a payload holds a float anywhere (canonical JSON takes mappings and sequences)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, float):
            return True
        if isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return False


def _rule(event: Mapping[str, Any]) -> set[str] | None:
    """Which hash rules reproduce the stored hash (None: neither)."""
    stored = event["event_hash"]
    matched: set[str] = set()
    written = str(event["timestamp"])
    try:
        normalized = normalize_timestamp(written)
        payload_json = canonical_json(event["payload"])
    except (TraceError, ValueError):
        normalized, payload_json = None, None
    if normalized is not None and payload_json is not None:
        rust = hashlib.sha256(_material(event, normalized, payload_json)).hexdigest()
        if rust == stored:
            matched.add("normalized")
        if (
            normalized == written
            and payload_json.isascii()
            and b"\x7f" not in payload_json
            and not _has_float(event["payload"])
        ):
            # Same timestamp string, same payload bytes: the spec rule hashes the same material.
            if rust == stored:
                matched.add("as_written")
            return matched or None
    try:
        if spec_event_hash(event) == stored:
            matched.add("as_written")
    except (TypeError, ValueError):
        pass
    return matched or None


def verify_chain(
    events_or_path: Iterable[TraceEvent | Mapping[str, Any] | BaseException]
    | str
    | os.PathLike[str],
    *,
    check_hashes: bool = True,
    checkpoints: Checkpoint | Iterable[Checkpoint] | None = None,
    verify_key: Ed25519PublicKey | None = None,
    log_id: str | None = None,
) -> ChainVerification:
    """Verify one session's chain, and optionally that it holds its signed checkpoints.

    Event 0 must link to the genesis hash (64 zeros) and have sequence 0; every later event
    must link to its predecessor's hash and follow its sequence by one, and carry the same
    session id; every stored hash must equal the recomputed one, under the Rust rule
    (normalised timestamp) or the spec's rule (timestamp as written) — ``hash_rule`` says which.

    Args:
        events_or_path: Events (models or dicts) in stored order, or a ``.trace.jsonl`` path.
            A last line cut off by a crash is reported as ``torn_tail``, not as tampering,
            unless the cut lies below the latest checkpoint: that is ``truncated``.
        check_hashes: Recompute hashes (turn off only for linkage-only checks).
        checkpoints: Signed checkpoints of this log (see :func:`sign_checkpoint`). Each must
            carry a valid signature by ``verify_key`` and match the log at its size; a log
            shorter than the latest is ``truncated`` (a rollback to an older state included);
            events after the latest are counted in ``unverifiable_tail``.
        verify_key: The Ed25519 public key the checkpoints were signed with.
        log_id: The id the log is known by outside its events (a store's session key, a
            file name); every event must carry it as its session id, else ``index_mismatch``.

    Returns:
        A :class:`ChainVerification`; it is truthy when valid.

    Raises:
        ValueError: checkpoints without a ``verify_key``.
    """
    anchors = _as_list(checkpoints)
    if anchors and verify_key is None:
        raise ValueError("checking checkpoints needs the verify_key they were signed with")
    for anchor in anchors:
        if verify_key is not None and not anchor.verify_signature(verify_key):
            return _bad_signature(anchor, log_id)
    wanted = {anchor.size for anchor in anchors}
    hashes_at: dict[int, str] = {0: GENESIS_HASH} if anchors else {}
    source: Iterable[Any]
    if isinstance(events_or_path, str | os.PathLike):
        source = iter_jsonl(events_or_path)
    else:
        source = events_or_path
    previous = GENESIS_HASH
    previous_sequence = -1
    count = 0
    session: str | None = log_id
    rules = _Rules()
    torn: TornTail | None = None

    def fail(kind: ErrorType, message: str) -> ChainVerification:
        return ChainVerification(False, count, count, kind, message, previous, None, log_id=session)

    for item in source:
        if isinstance(item, TornTail):
            torn = item  # a crash, unless a checkpoint covers what it cut (see below)
            break
        if isinstance(item, TraceError) and item.code == INDEX_MISMATCH:
            # A streaming store met a row its index misdescribes (see verify_store).
            return fail("index_mismatch", f"event {count} cannot be read: {item}")
        if isinstance(item, BaseException):
            return fail("malformed_event", f"event {count} cannot be read: {item}")
        event = _fields(item)
        try:
            stored = event["event_hash"]
            linked = event["previous_event_hash"]
            sequence = event["sequence"]
            carried = event.get("session_id")  # checked with the hash (linkage-only: not)
        except (KeyError, TypeError) as exc:
            return fail("malformed_event", f"event {count} lacks field {exc}")
        if count == 0:
            if linked != GENESIS_HASH:
                return fail("invalid_genesis", "the first event does not link to the genesis hash")
            if sequence != 0:
                return fail("sequence_gap", f"the first event has sequence {sequence}, not 0")
        else:
            if linked != previous:
                return fail("chain_broken", f"event {count} does not link to event {count - 1}")
            if sequence != previous_sequence + 1:
                return fail(
                    "sequence_gap",
                    f"event {count} has sequence {sequence}, expected {previous_sequence + 1}",
                )
        if check_hashes:
            try:
                matched = _rule(event)
            except (KeyError, TypeError) as exc:
                return fail("malformed_event", f"event {count} lacks field {exc}")
            if matched is None:
                return fail("hash_mismatch", f"event {count}'s hash does not match its content")
            rules.add(matched)
        if session is None:
            session = None if carried is None else str(carried)
        elif carried is not None and carried != session:
            # A chain is one session's; the hash covers the id, so this was written so.
            if log_id is not None:
                return fail(
                    "index_mismatch",
                    f"event {count} belongs to session {carried}, but the log is stored as "
                    f"{log_id}: its name or key was changed",
                )
            return fail(
                "session_mismatch", f"event {count} belongs to session {carried}, not {session}"
            )
        previous = stored
        previous_sequence = sequence
        count += 1
        if count in wanted:
            hashes_at[count] = stored
    hash_rule = rules.verdict()

    def verdict(
        valid: bool,
        index: int | None = None,
        kind: ErrorType | None = None,
        message: str | None = None,
        size: int | None = None,
    ) -> ChainVerification:
        tail = None if size is None else max(count - size, 0)
        return ChainVerification(
            valid, count, index, kind, message, previous, hash_rule, size, tail, session
        )

    torn_message = f"the last line is incomplete ({torn}); a crash cut it: repair it explicitly"
    if not anchors:
        if torn is not None:
            return verdict(False, count, "torn_tail", torn_message)
        return verdict(True)
    for anchor in anchors:
        if count and anchor.log_id != session:
            return verdict(
                False,
                None,
                "checkpoint_invalid",
                f"checkpoint is for log {anchor.log_id}, not {session}",
            )
    latest = max(anchors, key=lambda a: a.size)
    if count < latest.size:
        how = "cut inside a covered event, which no crash does" if torn else "removed"
        return verdict(
            False,
            count,
            "truncated",
            f"the log has {count} events but a checkpoint signed at {latest.timestamp} covers "
            f"{latest.size}: events were {how} from its end",
            latest.size,
        )
    for anchor in sorted(anchors, key=lambda a: a.size):
        if hashes_at.get(anchor.size) != anchor.head_hash:
            return verdict(
                False,
                max(anchor.size - 1, 0),
                "checkpoint_mismatch",
                f"event {anchor.size - 1} differs from the checkpoint signed at "
                f"{anchor.timestamp}: the log was rewritten",
                latest.size,
            )
    if torn is not None:  # above every checkpoint: what a crash leaves
        return verdict(False, count, "torn_tail", torn_message, latest.size)
    return verdict(True, size=latest.size)


class _Rules:
    """Which hash rules every event so far matched (constant memory, however long the log)."""

    __slots__ = ("as_written", "both", "count", "normalized")

    def __init__(self) -> None:
        self.count = 0
        self.both = self.normalized = self.as_written = True

    def add(self, matched: set[str]) -> None:
        self.count += 1
        self.both = self.both and len(matched) == 2
        self.normalized = self.normalized and "normalized" in matched
        self.as_written = self.as_written and "as_written" in matched

    def verdict(self) -> HashRule | None:
        if not self.count:
            return None
        if self.both:
            return "both"
        if self.normalized:
            return "normalized"
        if self.as_written:
            return "as_written"
        return "mixed"


def _bad_signature(anchor: Checkpoint, log_id: str | None) -> ChainVerification:
    return ChainVerification(
        False,
        0,
        None,
        "checkpoint_invalid",
        f"checkpoint of size {anchor.size} ({anchor.timestamp}) has no valid signature by this key",
        log_id=log_id or anchor.log_id,
    )


#: One log for :func:`verify_logs`: the id it is stored under (None: whatever its events
#: say), and its events in stored order (a sequence, or an iterable read once: a stream), or
#: the error its reading raised.
LogItems = tuple[
    str | None, Iterable[TraceEvent | Mapping[str, Any] | BaseException] | BaseException
]


def verify_logs(
    logs: Iterable[LogItems],
    *,
    checkpoints: Iterable[Checkpoint] | None = None,
    verify_key: Ed25519PublicKey | None = None,
    check_hashes: bool = True,
) -> list[ChainVerification]:
    """Verify a set of logs against a set of checkpoints, as a whole.

    Each log is checked with :func:`verify_chain` against the checkpoints signed for its
    session id (a log without any is verified, with ``checkpoint_size`` None). Then every log
    a checkpoint names must have been among ``logs``: one that is not — deleted, or re-keyed
    to another session id — gets a result of its own, ``truncated`` to 0 events (checkpoints
    of an empty log excepted). So a set of checkpoints vouches for the whole set of logs.

    Args:
        logs: ``(stored_id, events)`` pairs; ``stored_id`` is what the log is stored under
            (checked against its events, see ``log_id`` of :func:`verify_chain`) or None;
            ``events`` may be the exception reading them raised: a
            :class:`~cra_agents.TraceError` with code :data:`INDEX_MISMATCH` is reported
            ``index_mismatch``, anything else ``malformed_event``.
        checkpoints: Signed checkpoints of any of the logs.
        verify_key: The Ed25519 public key they were signed with.
        check_hashes: As for :func:`verify_chain`.

    Returns:
        One result per log, in order, then one per missing checkpointed log.

    Raises:
        ValueError: checkpoints without a ``verify_key``.
    """
    anchors = _as_list(checkpoints)
    if anchors and verify_key is None:
        raise ValueError("checking checkpoints needs the verify_key they were signed with")
    by_log: dict[str, list[Checkpoint]] = {}
    for anchor in anchors:
        by_log.setdefault(anchor.log_id, []).append(anchor)
    results: list[ChainVerification] = []
    present: set[str] = set()
    for stored_id, events in logs:
        if isinstance(events, BaseException):
            if stored_id is not None:
                present.add(stored_id)
            index = isinstance(events, TraceError) and events.code == INDEX_MISMATCH
            results.append(
                ChainVerification(
                    False,
                    0,
                    0,
                    "index_mismatch" if index else "malformed_event",
                    f"the log cannot be read: {events}",
                    log_id=stored_id,
                )
            )
            continue
        if isinstance(events, Sequence):
            carried = next(
                (_session_of(e) for e in events if not isinstance(e, BaseException)), None
            )
        else:  # a stream: look at its first item, then verify it from there
            stream = iter(events)
            first = next(stream, None)
            carried = (
                None if first is None or isinstance(first, BaseException) else (_session_of(first))
            )
            events = stream if first is None else itertools.chain((first,), stream)
        owner = carried or stored_id
        if owner is not None:
            present.add(owner)
        results.append(
            verify_chain(
                events,
                check_hashes=check_hashes,
                checkpoints=by_log.get(owner or "", []),
                verify_key=verify_key,
                log_id=stored_id,
            )
        )
    for log_id, group in by_log.items():
        if log_id in present:
            continue
        bad = next(
            (a for a in group if verify_key is None or not a.verify_signature(verify_key)), None
        )
        if bad is not None:
            results.append(_bad_signature(bad, log_id))
            continue
        latest = max(group, key=lambda a: a.size)
        if latest.size == 0:
            continue  # an empty log leaves nothing behind to find
        results.append(
            ChainVerification(
                False,
                0,
                0,
                "truncated",
                f"log {log_id} is missing, but a checkpoint signed at {latest.timestamp} "
                f"covers {latest.size} of its events: it was deleted or renamed",
                GENESIS_HASH,
                None,
                latest.size,
                0,
                log_id,
            )
        )
    return results


def _session_of(item: TraceEvent | Mapping[str, Any]) -> str | None:
    value = _fields(item).get("session_id")
    return value if isinstance(value, str) else None


def verify_store(
    store: TraceStore,
    *,
    checkpoints: Iterable[Checkpoint] | None = None,
    verify_key: Ed25519PublicKey | None = None,
    check_hashes: bool = True,
) -> list[ChainVerification]:
    """Verify every session of ``store`` with :func:`verify_logs`.

    A session the store refuses to read because its index disagrees with its events (see
    :data:`INDEX_MISMATCH`) is reported ``index_mismatch``; every checkpointed log must be
    in the store. A store with an ``iter_events(session_id)`` method (the PostgreSQL store)
    is streamed: one session at a time, a batch of events at a time, never loaded whole.

    Raises:
        ValueError: checkpoints without a ``verify_key``.
    """

    def logs() -> Iterator[LogItems]:
        for session_id in store.sessions():
            yield session_id, stored_events(store, session_id)

    return verify_logs(
        logs(), checkpoints=checkpoints, verify_key=verify_key, check_hashes=check_hashes
    )


def stored_events(store: TraceStore, session_id: str) -> Iterator[TraceEvent | ValueError]:
    """A session's stored events as the verifier takes them: the one way every verifier reads.

    Streams from a store that offers ``iter_events(session_id)`` (the PostgreSQL store: a page
    at a time, never the whole session in memory), else reads the session with ``read``. An
    error met while reading is yielded as the last item, so :func:`verify_chain` reports it at
    its index instead of raising: a :class:`~cra_agents.TraceError` with code
    :data:`INDEX_MISMATCH` (the store's index disagrees with its events) as
    ``index_mismatch``, any other ``ValueError`` (a stored event that is not a TRACE event) as
    ``malformed_event``. Used by :func:`verify_store`,
    :meth:`Runtime.verify <cra_agents.Runtime.verify>` and ``cra trace verify``.
    """
    stream = getattr(store, "iter_events", None)
    try:
        if stream is not None:
            yield from stream(session_id)
        else:
            yield from store.read(session_id)
    except ValueError as exc:  # TraceError included
        yield exc
