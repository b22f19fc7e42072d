from __future__ import annotations

import copy
import hashlib
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from cra_agents.protocol import GENESIS_HASH, TraceEvent
from cra_agents.trace import (
    ChainVerification,
    MemoryStore,
    SessionChain,
    TraceStore,
    compute_event_hash,
    spec_event_hash,
    verify_chain,
)
from cra_agents.trace._chain import build_event

ZEROS = "0" * 64
RUST_HASH = "3d71a7b30f84fadf986955467af6cabdbd180a61de5b14f4582cd3cdfbe57d2e"
SPEC_HASH = "f5b4945b0bb5f9adc249a7062a5bf1bbcf6f095edbd8fb1503bbc2d5a05d19c5"


def _single_event(**overrides: Any) -> dict[str, Any]:
    """CONFORMANCE hash.compute.single_event input (without event_hash)."""
    event: dict[str, Any] = {
        "trace_version": "1.0",
        "event_id": "01234567-89ab-cdef-0123-456789abcdef",
        "trace_id": "11111111-1111-1111-1111-111111111111",
        "span_id": "22222222-2222-2222-2222-222222222222",
        "parent_span_id": None,
        "session_id": "33333333-3333-3333-3333-333333333333",
        "sequence": 0,
        "timestamp": "2024-12-28T12:00:00.000000Z",
        "event_type": "session.started",
        "payload": {"agent_id": "test-agent", "goal": "Test session"},
        "previous_event_hash": ZEROS,
    }
    event.update(overrides)
    return event


def _reference_hash(event: dict[str, Any], timestamp: str) -> str:
    """The 11-field rule of PROTOCOL_NOTES §3.1, written out independently."""
    parts = [
        event["trace_version"],
        event["event_id"],
        event["trace_id"],
        event["span_id"],
        event.get("parent_span_id") or "",
        event["session_id"],
        str(event["sequence"]),
        timestamp,
        event["event_type"],
        json.dumps(event["payload"], sort_keys=True, separators=(",", ":"), ensure_ascii=False),
        event["previous_event_hash"],
    ]
    return hashlib.sha256("".join(parts).encode("utf-8")).hexdigest()


def _new_chain(sink: Any = None) -> SessionChain:
    return SessionChain(str(uuid.uuid4()), str(uuid.uuid4()), sink)


def _chain_events(count: int = 20) -> list[TraceEvent]:
    chain = _new_chain()
    chain.append("session.started", {"agent_id": "bot", "goal": "Test"})
    for i in range(1, count):
        chain.append("policy.evaluated", {"policy_id": f"p{i}", "result": "allow", "n": i})
    return chain.flush()


@pytest.fixture
def chain20() -> list[dict[str, Any]]:
    """A valid 20-event chain as plain dicts."""
    return [e.model_dump(mode="json") for e in _chain_events(20)]


# -- hash rule --------------------------------------------------------------------------------


class TestHashVectors:
    def test_rust_rule_single_event(self):
        """compute_event_hash of the CONFORMANCE single event (Z timestamp) → 3d71…."""
        assert compute_event_hash(_single_event()) == RUST_HASH

    def test_spec_rule_single_event(self):
        """spec_event_hash of the same event (timestamp as written) → f5b4…."""
        assert spec_event_hash(_single_event()) == SPEC_HASH

    def test_both_rules_agree_on_normalised_timestamp(self):
        """With timestamp +00:00 both rules give 3d71…."""
        event = _single_event(timestamp="2024-12-28T12:00:00+00:00")
        assert compute_event_hash(event) == RUST_HASH
        assert spec_event_hash(event) == RUST_HASH

    def test_reference_rule(self):
        """An independent implementation of the rule reproduces both vectors."""
        event = _single_event()
        assert _reference_hash(event, "2024-12-28T12:00:00+00:00") == RUST_HASH
        assert _reference_hash(event, event["timestamp"]) == SPEC_HASH

    @pytest.mark.parametrize(
        ("written", "normalised"),
        [
            ("2024-12-28T12:00:00.000000Z", "2024-12-28T12:00:00+00:00"),
            ("2024-12-28T13:00:00+01:00", "2024-12-28T12:00:00+00:00"),
            ("2024-12-28T12:00:00.120Z", "2024-12-28T12:00:00.120+00:00"),
            ("2024-12-28T12:00:00.123456Z", "2024-12-28T12:00:00.123456+00:00"),
            ("2024-12-28T12:00:00.123456789Z", "2024-12-28T12:00:00.123456789+00:00"),
            ("2024-12-28T12:00:00.1234567Z", "2024-12-28T12:00:00.123456700+00:00"),
        ],
    )
    def test_timestamp_normalisation(self, written, normalised):
        """The Rust rule hashes the timestamp in UTC +00:00 with 0/3/6/9 fraction digits."""
        event = _single_event(timestamp=written)
        assert compute_event_hash(event) == _reference_hash(event, normalised)

    def test_absent_parent_equals_null(self):
        """An absent parent_span_id hashes like null."""
        event = _single_event()
        del event["parent_span_id"]
        assert compute_event_hash(event) == RUST_HASH

    def test_non_ascii_payload_rules_differ(self):
        """Non-ASCII text: the Rust rule writes raw UTF-8, the spec rule escapes it."""
        event = _single_event(timestamp="2024-12-28T12:00:00+00:00", payload={"goal": "café ✓"})
        assert compute_event_hash(event) == _reference_hash(event, event["timestamp"])
        assert compute_event_hash(event) != spec_event_hash(event)

    def test_parent_span_changes_hash(self):
        """parent_span_id is part of the hash."""
        with_parent = _single_event(parent_span_id="44444444-4444-4444-4444-444444444444")
        assert compute_event_hash(with_parent) != RUST_HASH


class TestHashRule:
    def test_our_chains_hash_both_ways(self):
        """Chains we write verify with hash_rule "both"."""
        events = _chain_events(5)
        result = verify_chain(events)
        assert result.valid
        assert result.hash_rule == "both"
        assert result.event_count == 5
        assert result.last_valid_hash == events[-1].event_hash
        assert all(e.timestamp.endswith("+00:00") for e in events)

    def test_rust_written_event(self):
        """A Z-timestamp event hashed the Rust way verifies with hash_rule "normalized"."""
        event = _single_event()
        event["event_hash"] = compute_event_hash(event)
        result = verify_chain([event])
        assert result.valid
        assert result.hash_rule == "normalized"
        assert result.last_valid_hash == RUST_HASH

    def test_spec_written_event(self):
        """A Z-timestamp event hashed as written verifies with hash_rule "as_written"."""
        event = _single_event()
        event["event_hash"] = spec_event_hash(event)
        result = verify_chain([event])
        assert result.valid
        assert result.hash_rule == "as_written"
        assert result.last_valid_hash == SPEC_HASH

    def test_mixed_rules(self):
        """Events needing different rules verify with hash_rule "mixed"."""
        first = _single_event()
        first["event_hash"] = spec_event_hash(first)
        second = _single_event(
            event_id="01234567-89ab-cdef-0123-456789abcdee",
            sequence=1,
            timestamp="2024-12-28T12:00:01.000Z",
            event_type="session.ended",
            payload={"reason": "completed", "duration_ms": 1000},
            previous_event_hash=first["event_hash"],
        )
        second["event_hash"] = compute_event_hash(second)
        result = verify_chain([first, second])
        assert result.valid
        assert result.hash_rule == "mixed"

    def test_non_ascii_chain_is_normalized(self):
        """Our chain with non-ASCII payloads verifies under the Rust rule only."""
        chain = _new_chain()
        chain.append("session.started", {"agent_id": "bot", "goal": "Résumé ✓"})
        chain.append("session.ended", {"reason": "completed", "duration_ms": 1})
        result = verify_chain(chain.flush())
        assert result.valid
        assert result.hash_rule == "normalized"


# -- tampering --------------------------------------------------------------------------------


class TestTamperMatrix:
    def test_intact(self, chain20):
        """The untouched dict chain verifies."""
        result = verify_chain(chain20)
        assert result.valid
        assert bool(result)
        assert result.event_count == 20
        assert result.first_invalid_index is None
        assert result.error_type is None

    def test_payload_mutated(self, chain20):
        """A mutated payload is hash_mismatch at that index."""
        chain20[7]["payload"]["result"] = "deny"
        result = verify_chain(chain20)
        assert (result.valid, result.error_type, result.first_invalid_index) == (
            False,
            "hash_mismatch",
            7,
        )
        assert not result
        assert result.event_count == 7
        assert result.last_valid_hash == chain20[6]["event_hash"]
        assert result.hash_rule is None

    @pytest.mark.parametrize(
        "field", ["event_type", "timestamp", "event_id", "span_id", "trace_id", "session_id"]
    )
    def test_other_field_mutated(self, chain20, field):
        """Any hashed field changed is hash_mismatch at that index."""
        replacement = {
            "event_type": "policy.violated",
            "timestamp": "2001-01-01T00:00:00+00:00",
        }.get(field, str(uuid.uuid4()))
        chain20[11][field] = replacement
        result = verify_chain(chain20)
        assert (result.error_type, result.first_invalid_index) == ("hash_mismatch", 11)

    def test_event_hash_replaced(self, chain20):
        """A forged event_hash is hash_mismatch at that index."""
        chain20[4]["event_hash"] = "f" * 64
        result = verify_chain(chain20)
        assert (result.error_type, result.first_invalid_index) == ("hash_mismatch", 4)

    def test_previous_hash_changed(self, chain20):
        """A changed previous_event_hash is chain_broken at that index."""
        chain20[9]["previous_event_hash"] = "a" * 64
        result = verify_chain(chain20)
        assert (result.error_type, result.first_invalid_index) == ("chain_broken", 9)
        assert result.last_valid_hash == chain20[8]["event_hash"]

    def test_swap(self, chain20):
        """Swapping two events is chain_broken at the first of them."""
        chain20[5], chain20[6] = chain20[6], chain20[5]
        result = verify_chain(chain20)
        assert (result.error_type, result.first_invalid_index) == ("chain_broken", 5)

    def test_delete_middle(self, chain20):
        """Deleting a middle event is chain_broken where the gap is."""
        del chain20[10]
        result = verify_chain(chain20)
        assert (result.error_type, result.first_invalid_index) == ("chain_broken", 10)

    def test_delete_last_is_valid_prefix(self, chain20):
        """Truncating the tail leaves a valid (shorter) chain."""
        result = verify_chain(chain20[:-1])
        assert result.valid
        assert result.event_count == 19

    def test_sequence_renumbered(self, chain20):
        """A renumbered sequence is sequence_gap at that index."""
        chain20[12]["sequence"] = 13
        result = verify_chain(chain20)
        assert (result.error_type, result.first_invalid_index) == ("sequence_gap", 12)

    def test_all_later_sequences_shifted(self, chain20):
        """Shifting every later sequence is still sequence_gap at the first shifted."""
        for event in chain20[12:]:
            event["sequence"] += 1
        result = verify_chain(chain20)
        assert (result.error_type, result.first_invalid_index) == ("sequence_gap", 12)

    def test_genesis_changed(self, chain20):
        """The first event's previous hash changed is invalid_genesis at 0."""
        chain20[0]["previous_event_hash"] = "1" * 64
        result = verify_chain(chain20)
        assert (result.error_type, result.first_invalid_index) == ("invalid_genesis", 0)
        assert result.last_valid_hash == GENESIS_HASH

    def test_first_sequence_one(self, chain20):
        """A first event with sequence 1 is sequence_gap at 0."""
        chain20[0]["sequence"] = 1
        result = verify_chain(chain20)
        assert (result.error_type, result.first_invalid_index) == ("sequence_gap", 0)

    def test_chain_not_starting_at_genesis(self, chain20):
        """A chain missing its first event is invalid_genesis."""
        result = verify_chain(chain20[1:])
        assert (result.error_type, result.first_invalid_index) == ("invalid_genesis", 0)

    @pytest.mark.parametrize(
        "field", ["event_hash", "previous_event_hash", "sequence", "payload", "timestamp"]
    )
    def test_missing_field(self, chain20, field):
        """A missing field is malformed_event at that index."""
        del chain20[3][field]
        result = verify_chain(chain20)
        assert (result.error_type, result.first_invalid_index) == ("malformed_event", 3)

    def test_non_mapping_item(self, chain20):
        """A non-object item is malformed_event."""
        chain20[2] = ["not", "an", "event"]
        result = verify_chain(chain20)
        assert (result.error_type, result.first_invalid_index) == ("malformed_event", 2)

    def test_empty_chain(self):
        """An empty chain is valid with last_valid_hash genesis."""
        result = verify_chain([])
        assert result.valid
        assert result.event_count == 0
        assert result.last_valid_hash == GENESIS_HASH
        assert result.hash_rule is None

    def test_as_dict(self, chain20):
        """as_dict is the JSON form of the result."""
        chain20[7]["payload"]["n"] = -1
        body = verify_chain(chain20).as_dict()
        assert set(body) == {
            "valid",
            "event_count",
            "first_invalid_index",
            "error_type",
            "error_message",
            "last_valid_hash",
            "hash_rule",
            "checkpoint_size",
            "unverifiable_tail",
            "log_id",
        }
        assert body["error_type"] == "hash_mismatch"
        json.dumps(body)
        assert isinstance(verify_chain([]), ChainVerification)

    def test_models_and_dicts_agree(self):
        """Models and their dict dumps verify identically."""
        events = _chain_events(6)
        as_models = verify_chain(events)
        as_dicts = verify_chain([e.model_dump(mode="json") for e in events])
        assert as_models == as_dicts

    def test_iterator_input(self, chain20):
        """A one-shot iterator is accepted."""
        assert verify_chain(iter(chain20)).valid


# -- JSONL files ------------------------------------------------------------------------------


def _write_jsonl(path: Path, events: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")


class TestJsonl:
    def test_valid_file(self, tmp_path, chain20):
        """A JSONL file of events verifies, as str or Path."""
        path = tmp_path / "s.trace.jsonl"
        _write_jsonl(path, chain20)
        assert verify_chain(path).valid
        result = verify_chain(str(path))
        assert result.valid
        assert result.event_count == 20
        assert result.hash_rule == "both"

    def test_last_line_without_newline_but_complete(self, tmp_path, chain20):
        """A complete last line without a trailing newline is fine."""
        path = tmp_path / "s.trace.jsonl"
        path.write_text("\n".join(json.dumps(e) for e in chain20), encoding="utf-8")
        assert verify_chain(path).valid

    def test_torn_tail(self, tmp_path, chain20):
        """A truncated last line without newline is torn_tail at that index."""
        path = tmp_path / "s.trace.jsonl"
        full = "".join(json.dumps(e) + "\n" for e in chain20[:19])
        last = json.dumps(chain20[19])
        path.write_text(full + last[: len(last) // 2], encoding="utf-8")
        result = verify_chain(path)
        assert (result.valid, result.error_type, result.first_invalid_index) == (
            False,
            "torn_tail",
            19,
        )
        assert result.event_count == 19
        assert result.last_valid_hash == chain20[18]["event_hash"]

    def test_truncated_line_with_newline_is_malformed(self, tmp_path, chain20):
        """A truncated line followed by a newline is not a torn tail."""
        path = tmp_path / "s.trace.jsonl"
        last = json.dumps(chain20[19])
        path.write_text(
            "".join(json.dumps(e) + "\n" for e in chain20[:19]) + last[:40] + "\n",
            encoding="utf-8",
        )
        result = verify_chain(path)
        assert (result.error_type, result.first_invalid_index) == ("malformed_event", 19)

    @pytest.mark.parametrize("garbage", ["not json", "[1, 2]", '{"a": 1, "a": 2}', ""])
    def test_garbage_middle_line(self, tmp_path, chain20, garbage):
        """A garbage middle line is malformed_event at that index."""
        path = tmp_path / "s.trace.jsonl"
        lines = [json.dumps(e) for e in chain20]
        lines[10] = garbage
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        result = verify_chain(path)
        assert (result.error_type, result.first_invalid_index) == ("malformed_event", 10)

    def test_tampered_file(self, tmp_path, chain20):
        """Tampering in a file is detected like in memory."""
        chain20[3]["payload"]["n"] = 99
        path = tmp_path / "s.trace.jsonl"
        _write_jsonl(path, chain20)
        result = verify_chain(path)
        assert (result.error_type, result.first_invalid_index) == ("hash_mismatch", 3)

    def test_empty_file(self, tmp_path):
        """An empty JSONL file is a valid empty chain."""
        path = tmp_path / "empty.trace.jsonl"
        path.write_bytes(b"")
        result = verify_chain(path)
        assert result.valid
        assert result.last_valid_hash == GENESIS_HASH


# -- linkage-only mode (CONFORMANCE hash.chain.*) ---------------------------------------------


def _expand(value: str) -> str:
    """The conformance harness expands the abbreviated genesis "0000...0000"."""
    return ZEROS if value == "0000...0000" else value


def _conformance_chain(*rows: tuple[int, str, str]) -> list[dict[str, Any]]:
    events = []
    for sequence, event_hash, previous in rows:
        events.append(
            {
                "trace_version": "1.0",
                "event_id": str(uuid.UUID(int=sequence + 1)),
                "trace_id": "11111111-1111-1111-1111-111111111111",
                "span_id": str(uuid.UUID(int=sequence + 100)),
                "session_id": "33333333-3333-3333-3333-333333333333",
                "sequence": sequence,
                "timestamp": "2024-12-28T12:00:00.000000Z",
                "event_type": "session.started" if sequence == 0 else "policy.evaluated",
                "payload": {},
                "event_hash": event_hash,
                "previous_event_hash": _expand(previous),
            }
        )
    return events


class TestLinkageOnly:
    def test_conformance_chain_valid(self):
        """hash.chain.valid: a linked 3-event chain verifies with check_hashes=False."""
        chain = _conformance_chain(
            (0, "hash1", "0000...0000"), (1, "hash2", "hash1"), (2, "hash3", "hash2")
        )
        result = verify_chain(chain, check_hashes=False)
        assert result.valid
        assert result.event_count == 3
        assert result.last_valid_hash == "hash3"
        assert result.hash_rule is None

    def test_conformance_chain_broken(self):
        """hash.chain.broken: a wrong previous hash is chain_broken at 1."""
        chain = _conformance_chain(
            (0, "hash1", "0000...0000"), (1, "hash2", "wrong_hash"), (2, "hash3", "hash2")
        )
        result = verify_chain(chain, check_hashes=False)
        assert (result.valid, result.error_type, result.first_invalid_index) == (
            False,
            "chain_broken",
            1,
        )

    def test_conformance_sequence_gap(self):
        """hash.chain.sequence_gap: sequence 0 → 2 is sequence_gap at 1."""
        chain = _conformance_chain((0, "hash1", "0000...0000"), (2, "hash2", "hash1"))
        result = verify_chain(chain, check_hashes=False)
        assert (result.valid, result.error_type, result.first_invalid_index) == (
            False,
            "sequence_gap",
            1,
        )

    def test_unexpanded_genesis_is_invalid(self):
        """Without expansion the abbreviated genesis is invalid_genesis."""
        chain = _conformance_chain((0, "hash1", "0000...0000"))
        chain[0]["previous_event_hash"] = "0000...0000"
        result = verify_chain(chain, check_hashes=False)
        assert result.error_type == "invalid_genesis"

    def test_stand_in_hashes_fail_hash_check(self):
        """The stand-in hashes do not pass a full check."""
        chain = _conformance_chain((0, "hash1", "0000...0000"))
        assert verify_chain(chain).error_type == "hash_mismatch"

    def test_linkage_only_ignores_payload_tamper(self, chain20):
        """check_hashes=False does not see payload changes but still sees linkage."""
        chain20[5]["payload"]["n"] = 1000
        assert verify_chain(chain20, check_hashes=False).valid
        chain20[6]["previous_event_hash"] = ZEROS
        result = verify_chain(chain20, check_hashes=False)
        assert (result.error_type, result.first_invalid_index) == ("chain_broken", 6)


# -- SessionChain -----------------------------------------------------------------------------


class TestSessionChain:
    def test_basic_fields(self):
        """Sequences, ids, parent spans, timestamps and head of a fresh chain."""
        store = MemoryStore()
        chain = _new_chain(store.append)
        assert chain.head == GENESIS_HASH
        assert chain.append("session.started", {"agent_id": "a", "goal": "g"}) == 0
        assert chain.extend([("policy.evaluated", {"i": 1}), ("policy.evaluated", {"i": 2})]) == 1
        assert len(chain) == 3
        events = chain.flush()
        assert [e.sequence for e in events] == [0, 1, 2]
        assert events[0].previous_event_hash == GENESIS_HASH
        assert events[0].parent_span_id is None
        assert {e.parent_span_id for e in events[1:]} == {events[0].span_id}
        assert len({e.span_id for e in events}) == 3
        assert len({e.event_id for e in events}) == 3
        assert {e.trace_id for e in events} == {chain.trace_id}
        assert {e.session_id for e in events} == {chain.session_id}
        assert chain.head == events[-1].event_hash
        assert events[1].previous_event_hash == events[0].event_hash
        assert all(e.event_hash == compute_event_hash(e.__dict__) for e in events)
        assert store.read(chain.session_id) == events
        assert chain.flush() == []

    def test_flush_incrementally(self):
        """Flushing in several steps continues the same chain."""
        chain = _new_chain()
        events: list[TraceEvent] = []
        for i in range(10):
            chain.append("policy.evaluated", {"i": i})
            if i % 3 == 0:
                events.extend(chain.flush())
        events.extend(chain.flush())
        assert [e.sequence for e in events] == list(range(10))
        assert verify_chain(events).valid

    def test_concurrent_appends(self):
        """16 threads x 200 events on 8 chains (two threads each): each chain verifies."""
        store = MemoryStore()
        chains = [_new_chain(store.append) for _ in range(8)]
        barrier = threading.Barrier(16)
        errors: list[BaseException] = []

        def worker(index: int) -> None:
            chain = chains[index // 2]
            barrier.wait()
            try:
                for i in range(200):
                    if i % 50 == 25:
                        chain.extend([("policy.evaluated", {"t": index, "i": i, "batch": True})])
                    else:
                        chain.append("policy.evaluated", {"t": index, "i": i})
                    if i % 64 == 0:
                        chain.flush()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for chain in chains:
            chain.flush()
            events = store.read(chain.session_id)
            assert [e.sequence for e in events] == list(range(400))
            result = verify_chain(events)
            assert result.valid, result
            assert result.event_count == 400
            assert sorted({e.payload["t"] for e in events}) == sorted(
                {i for i in range(16) if chains[i // 2] is chain}
            )
        assert sorted(store.sessions()) == sorted(c.session_id for c in chains)

    @pytest.mark.parametrize(
        "poison",
        [float("nan"), float("inf"), "\ud800", 2**70, {1: "non-string key"}, object()],
        ids=["nan", "inf", "surrogate", "big-int", "int-key", "object"],
    )
    def test_poison_payload(self, poison):
        """An uncanonicalisable payload becomes error.occurred; the chain still verifies."""
        store = MemoryStore()
        chain = _new_chain(store.append)
        chain.append("session.started", {"agent_id": "a", "goal": "g"})
        chain.append("context.injected", {"block_id": "b", "value": poison})
        chain.append("session.ended", {"reason": "completed", "duration_ms": 1})
        events = chain.flush()
        assert [e.event_type for e in events] == [
            "session.started",
            "error.occurred",
            "session.ended",
        ]
        payload = events[1].payload
        assert payload["error_code"] == "INVALID_TRACE_EVENT"
        assert payload["refused_event_type"] == "context.injected"
        assert isinstance(payload["error_message"], str)
        assert verify_chain(events).valid
        assert verify_chain([e.model_dump(mode="json") for e in events]).valid
        assert store.read(chain.session_id) == events

    def test_build_event_equals_validated(self):
        """build_event of a dict equals TraceEvent.model_validate of the same dict."""
        for event in _chain_events(4):
            fields = event.model_dump(mode="json")
            built = build_event(copy.deepcopy(fields))
            validated = TraceEvent.model_validate(fields)
            assert built == validated
            assert built.model_dump(mode="json") == validated.model_dump(mode="json")
            assert built.model_fields_set == validated.model_fields_set
            assert event == validated

    def test_events_are_schema_shaped(self):
        """Finalised events re-validate as TraceEvent models."""
        for event in _chain_events(3):
            TraceEvent.model_validate(event.model_dump(mode="json"))
            TraceEvent.model_validate_json(event.model_dump_json())


# -- MemoryStore ------------------------------------------------------------------------------


def _filled_store(count: int = 10, **kwargs: Any) -> tuple[MemoryStore, SessionChain]:
    store = MemoryStore(**kwargs)
    chain = _new_chain(store.append)
    chain.append("session.started", {"agent_id": "a", "goal": "g"})
    for i in range(1, count):
        chain.append("policy.evaluated" if i % 2 else "context.injected", {"i": i})
    chain.flush()
    return store, chain


class TestMemoryStore:
    def test_protocol(self):
        """MemoryStore satisfies the TraceStore protocol."""
        assert isinstance(MemoryStore(), TraceStore)

    def test_read_all(self):
        """read returns every event in sequence order."""
        store, chain = _filled_store()
        assert [e.sequence for e in store.read(chain.session_id)] == list(range(10))

    def test_filter_event_type(self):
        """event_type keeps only that type."""
        store, chain = _filled_store()
        events = store.read(chain.session_id, event_type="policy.evaluated")
        assert [e.sequence for e in events] == [1, 3, 5, 7, 9]
        assert store.read(chain.session_id, event_type="nope.none") == []

    def test_since_sequence_exclusive(self):
        """since_sequence is exclusive."""
        store, chain = _filled_store()
        assert [e.sequence for e in store.read(chain.session_id, since_sequence=6)] == [7, 8, 9]
        assert store.read(chain.session_id, since_sequence=9) == []
        assert len(store.read(chain.session_id, since_sequence=-1)) == 10

    def test_limit(self):
        """limit caps the result."""
        store, chain = _filled_store()
        assert [e.sequence for e in store.read(chain.session_id, limit=3)] == [0, 1, 2]
        assert store.read(chain.session_id, limit=0) == []

    def test_filters_combined(self):
        """since_sequence, then event_type, then limit."""
        store, chain = _filled_store()
        events = store.read(
            chain.session_id, event_type="context.injected", since_sequence=2, limit=2
        )
        assert [e.sequence for e in events] == [4, 6]

    def test_unknown_session(self):
        """Reading an unknown session returns nothing."""
        assert MemoryStore().read(str(uuid.uuid4())) == []

    def test_read_returns_copy(self):
        """Mutating a read result does not change the store."""
        store, chain = _filled_store()
        store.read(chain.session_id).clear()
        assert len(store.read(chain.session_id)) == 10

    def test_sessions_order(self):
        """sessions() lists session ids oldest first."""
        store = MemoryStore()
        chains = [_new_chain(store.append) for _ in range(4)]
        for chain in reversed(chains):
            chain.append("session.started", {"agent_id": "a", "goal": "g"})
            chain.flush()
        chains[0].append("session.ended", {"reason": "completed", "duration_ms": 1})
        chains[0].flush()
        assert store.sessions() == [c.session_id for c in reversed(chains)]

    def test_max_sessions_eviction(self):
        """max_sessions drops whole oldest sessions."""
        store = MemoryStore(max_sessions=2)
        chains = [_new_chain(store.append) for _ in range(3)]
        for chain in chains:
            chain.append("session.started", {"agent_id": "a", "goal": "g"})
            chain.flush()
        assert store.sessions() == [chains[1].session_id, chains[2].session_id]
        assert store.read(chains[0].session_id) == []
        assert len(store.read(chains[2].session_id)) == 1

    def test_append_empty_and_close(self):
        """Appending nothing is a no-op; close() is accepted."""
        store = MemoryStore()
        store.append([])
        assert store.sessions() == []
        store.close()

    def test_negative_since_sequence(self):
        """since_sequence=-5 (exclusive) returns every event."""
        store, chain = _filled_store()
        assert len(store.read(chain.session_id, since_sequence=-5)) == 10
