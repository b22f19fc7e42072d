"""Chain verification: linkage, then sequence, then hash (PROTOCOL_NOTES §3.4)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from cra_agents._canonical import canonical_json
from cra_agents._clock import normalize_timestamp
from cra_agents._exceptions import TraceError
from cra_agents.protocol import GENESIS_HASH, TraceEvent
from cra_agents.trace._checkpoint import Checkpoint, _as_list
from cra_agents.trace._hash import _material, spec_event_hash
from cra_agents.trace._read import TornTail, iter_jsonl

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["ChainVerification", "ErrorType", "HashRule", "verify_chain"]

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
    events_or_path: Iterable[TraceEvent | Mapping[str, Any]] | str | os.PathLike[str],
    *,
    check_hashes: bool = True,
    checkpoints: Checkpoint | Iterable[Checkpoint] | None = None,
    verify_key: Ed25519PublicKey | None = None,
) -> ChainVerification:
    """Verify one session's chain, and optionally that it holds its signed checkpoints.

    Event 0 must link to the genesis hash (64 zeros) and have sequence 0; every later event
    must link to its predecessor's hash and follow its sequence by one; every stored hash must
    equal the recomputed one, under the Rust rule (normalised timestamp) or the spec's rule
    (timestamp as written) — ``hash_rule`` says which.

    Args:
        events_or_path: Events (models or dicts) in stored order, or a ``.trace.jsonl`` path.
            A last line cut off by a crash is reported as ``torn_tail``, not as tampering.
        check_hashes: Recompute hashes (turn off only for linkage-only checks).
        checkpoints: Signed checkpoints of this log (see :func:`sign_checkpoint`). Each must
            carry a valid signature by ``verify_key`` and match the log at its size; a log
            shorter than the latest is ``truncated`` (a rollback to an older state included);
            events after the latest are counted in ``unverifiable_tail``.
        verify_key: The Ed25519 public key the checkpoints were signed with.

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
            return ChainVerification(
                False,
                0,
                None,
                "checkpoint_invalid",
                f"checkpoint of size {anchor.size} ({anchor.timestamp}) has no valid signature "
                "by this key",
            )
    wanted = {anchor.size for anchor in anchors}
    hashes_at: dict[int, str] = {0: GENESIS_HASH} if anchors else {}
    session_ids: set[str] = set()
    source: Iterable[Any]
    if isinstance(events_or_path, str | os.PathLike):
        source = iter_jsonl(events_or_path)
    else:
        source = events_or_path
    previous = GENESIS_HASH
    previous_sequence = -1
    count = 0
    rules: set[str] = set()
    rule_sets: list[set[str]] = []

    def fail(kind: ErrorType, message: str) -> ChainVerification:
        return ChainVerification(False, count, count, kind, message, previous, None)

    for item in source:
        if isinstance(item, TornTail):
            return fail("torn_tail", f"the last line is incomplete ({item}); repair it explicitly")
        if isinstance(item, BaseException):
            return fail("malformed_event", f"event {count} cannot be read: {item}")
        event = _fields(item)
        try:
            stored = event["event_hash"]
            linked = event["previous_event_hash"]
            sequence = event["sequence"]
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
            rules |= matched
            rule_sets.append(matched)
        previous = stored
        previous_sequence = sequence
        count += 1
        if anchors:
            if count in wanted:
                hashes_at[count] = stored
            session_ids.add(str(event.get("session_id")))
    hash_rule: HashRule | None = None
    if rule_sets:
        if all(len(s) == 2 for s in rule_sets):
            hash_rule = "both"
        elif all("normalized" in s for s in rule_sets):
            hash_rule = "normalized"
        elif all("as_written" in s for s in rule_sets):
            hash_rule = "as_written"
        else:
            hash_rule = "mixed"
    if not anchors:
        return ChainVerification(True, count, None, None, None, previous, hash_rule)
    for anchor in anchors:
        if session_ids and session_ids != {anchor.log_id}:
            return ChainVerification(
                False,
                count,
                None,
                "checkpoint_invalid",
                f"checkpoint is for log {anchor.log_id}, not {', '.join(sorted(session_ids))}",
                previous,
                hash_rule,
            )
    latest = max(anchors, key=lambda a: a.size)
    if count < latest.size:
        return ChainVerification(
            False,
            count,
            count,
            "truncated",
            f"the log has {count} events but a checkpoint signed at {latest.timestamp} covers "
            f"{latest.size}: events were removed from its end",
            previous,
            hash_rule,
            latest.size,
            0,
        )
    for anchor in sorted(anchors, key=lambda a: a.size):
        if hashes_at.get(anchor.size) != anchor.head_hash:
            return ChainVerification(
                False,
                count,
                max(anchor.size - 1, 0),
                "checkpoint_mismatch",
                f"event {anchor.size - 1} differs from the checkpoint signed at "
                f"{anchor.timestamp}: the log was rewritten",
                previous,
                hash_rule,
                latest.size,
                0,
            )
    return ChainVerification(
        True, count, None, None, None, previous, hash_rule, latest.size, count - latest.size
    )
