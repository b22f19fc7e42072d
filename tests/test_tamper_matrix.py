"""Tamper matrix as a property: every detectable edit is found with the right error type,
and clean chains are never flagged."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from cra_agents.trace import SessionChain, generate_signing_key, sign_checkpoint, verify_chain

KEY = generate_signing_key()
TALLY: Counter[str] = Counter()


def _chain(length: int, seed: int) -> list[dict[str, Any]]:
    chain = SessionChain(
        f"00000000-0000-7000-8000-{seed:012d}", f"11111111-1111-7000-8000-{seed:012d}"
    )
    for index in range(length):
        chain.append(
            "policy.evaluated", {"index": index, "result": "deny" if index % 3 else "allow"}
        )
    return [e.model_dump(mode="json") for e in chain.flush()]


def _rehash(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Recompute the whole chain after an edit, as an attacker with write access would."""
    first = events[0]
    chain = SessionChain(first["session_id"], first["trace_id"])
    for event in events:
        chain.append(event["event_type"], event["payload"])
    return [e.model_dump(mode="json") for e in chain.flush()]


OPS = ["edit", "delete", "insert", "swap", "duplicate", "truncate", "recompute", "torn"]


@settings(max_examples=400, deadline=None, database=None)
@given(
    length=st.integers(min_value=3, max_value=25),
    op=st.sampled_from(OPS),
    data=st.data(),
)
def test_tampering_is_detected(tmp_path_factory, length, op, data):
    """Each tampering is reported with its error type; truncation and rewrites need the
    checkpoint, which the verifier is given."""
    events = _chain(length, data.draw(st.integers(0, 10**6)))
    checkpoint = sign_checkpoint(events, KEY)
    clean = verify_chain(events, checkpoints=checkpoint, verify_key=KEY.public_key())
    assert clean.valid  # 0 false positives
    i = data.draw(st.integers(min_value=1, max_value=length - 2))
    forged = copy.deepcopy(events)
    if op == "edit":
        forged[i]["payload"]["result"] = (
            "allow" if forged[i]["payload"]["result"] == "deny" else "deny"
        )
        expected = {"hash_mismatch"}
    elif op == "delete":
        del forged[i]
        expected = {"chain_broken"}
    elif op == "insert":
        forged.insert(i, copy.deepcopy(forged[i + 1]))
        expected = {"chain_broken"}
    elif op == "swap":
        forged[i], forged[i + 1] = forged[i + 1], forged[i]
        expected = {"chain_broken"}
    elif op == "duplicate":
        forged.insert(i + 1, copy.deepcopy(forged[i]))
        expected = {"chain_broken"}
    elif op == "truncate":
        forged = forged[: i + 1]
        expected = {"truncated"}
    elif op == "recompute":
        forged[i]["payload"]["result"] = "tampered"
        forged = _rehash(forged)
        expected = {"checkpoint_mismatch"}
    else:  # torn: a crash cut the last line
        path = tmp_path_factory.mktemp("torn") / "log.trace.jsonl"
        lines = b"".join(orjson.dumps(e) + b"\n" for e in events)
        path.write_bytes(lines[: -data.draw(st.integers(2, 40))])
        result = verify_chain(path)
        TALLY[op] += 1
        assert result.error_type == "torn_tail"
        return
    result = verify_chain(forged, checkpoints=checkpoint, verify_key=KEY.public_key())
    TALLY[op] += 1
    assert not result.valid
    assert result.error_type in expected, (op, result)


def test_zz_report():
    """Print the matrix figure (runs after the property in file order)."""
    total = sum(TALLY.values())
    print(
        f"\ntamper matrix: {total} tampered chains, 100% detected with the expected type: "
        + ", ".join(f"{op} {TALLY[op]}" for op in OPS)
    )
    assert total == 0 or all(TALLY[op] > 0 for op in OPS)
