"""Verification with checkpoints cannot be talked around: every checkpointed log must be there,
whole up to its checkpoint, and a cut below a checkpoint is tampering, never a crash."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cra_agents as cra
from cra_agents.cli import main
from cra_agents.trace import (
    SessionChain,
    generate_signing_key,
    sign_checkpoint,
    verify_chain,
    verify_logs,
)

KEY = generate_signing_key()
PUB = KEY.public_key()


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _chain(length: int, session: int = 1) -> list[dict[str, Any]]:
    chain = SessionChain(
        f"00000000-0000-7000-8000-{session:012d}", f"11111111-1111-7000-8000-{session:012d}"
    )
    for index in range(length):
        chain.append("policy.evaluated", {"index": index, "result": "deny"})
    return [e.model_dump(mode="json") for e in chain.flush()]


def _rekey(events: list[dict[str, Any]], session: int) -> list[dict[str, Any]]:
    """The events re-hashed under another session id, as an attacker with write access would."""
    chain = SessionChain(
        f"00000000-0000-7000-8000-{session:012d}", f"11111111-1111-7000-8000-{session:012d}"
    )
    for event in events:
        chain.append(event["event_type"], event["payload"])
    return [e.model_dump(mode="json") for e in chain.flush()]


def _write(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """A key pair written as the CLI reads it: (private, public)."""
    assert main(["trace", "keygen", str(tmp_path / "k")]) == 0
    capsys.readouterr()
    return str(tmp_path / "k.key"), str(tmp_path / "k.pub")


def _sessions(runtime: cra.Runtime, count: int) -> list[str]:
    ids = []
    for index in range(count):
        session = runtime.create_session(f"bot-{index}", "Triage new bug reports")
        for _ in range(3):
            runtime.resolve(cra.resolve_request(session))
        runtime.end_session(session.session_id)
        ids.append(session.session_id)
    return ids


class TestEveryCheckpointedLogMustBeThere:
    def test_truncated_log_rekeyed_to_a_new_session_is_not_valid(
        self, capsys, tmp_path, github_ops, keys
    ):
        """Verifying several files: a checkpointed log cut short and re-keyed (its own file
        gone) is reported truncated, not hidden as a new session without a checkpoint."""
        directory = tmp_path / "jsonl"
        with cra.Runtime([github_ops], store=f"jsonl://{directory}") as runtime:
            first, second = _sessions(runtime, 2)
        cps = str(tmp_path / "cps")
        for sid in (first, second):
            assert main(["trace", "checkpoint", str(directory / f"{sid}.trace.jsonl"),
                         "--key", keys[0], "-o", cps]) == 0  # fmt: skip
        capsys.readouterr()
        original = directory / f"{first}.trace.jsonl"
        events = [json.loads(line) for line in original.read_text().splitlines()]
        forged = _rekey(events[:5], 99)
        _write(directory / f"{forged[0]['session_id']}.trace.jsonl", forged)
        original.unlink()
        files = sorted(str(p) for p in directory.glob("*.trace.jsonl"))
        code, document = run_json(
            capsys, "trace", "verify", *files, "--checkpoint", cps, "--pubkey", keys[1]
        )
        print(f"\nrekeyed+truncated among {len(files)} files: exit {code}")
        assert code == 1
        assert document["valid"] is False
        missing = [t for t in document["traces"] if t["log_id"] == first]
        assert len(missing) == 1
        assert missing[0]["error_type"] == "truncated"
        assert missing[0]["checkpoint_size"] == len(events)

    @pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
    def test_deleted_checkpointed_session_fails_verify_all(
        self, capsys, tmp_path, github_ops, keys, kind
    ):
        """A checkpointed session deleted from the store fails ``verify --all``."""
        url = f"sqlite://{tmp_path}/t.db" if kind == "sqlite" else f"jsonl://{tmp_path}/j"
        with cra.Runtime([github_ops], store=url) as runtime:
            first, second = _sessions(runtime, 2)
        cps = str(tmp_path / "cps")
        for sid in (first, second):
            assert main(["trace", "checkpoint", sid, "--key", keys[0], "-o", cps,
                         "--store", url]) == 0  # fmt: skip
        capsys.readouterr()
        if kind == "sqlite":
            with sqlite3.connect(tmp_path / "t.db") as db:
                (key,) = db.execute(
                    "SELECT session_key FROM sessions WHERE session_id = ?", (first,)
                ).fetchone()
                db.execute("DELETE FROM events WHERE id >> 32 = ?", (key,))
                db.execute("DELETE FROM sessions WHERE session_key = ?", (key,))
        else:
            (tmp_path / "j" / f"{first}.trace.jsonl").unlink()
        code, document = run_json(
            capsys,
            "trace",
            "verify",
            "--all",
            "--checkpoint",
            cps,
            "--pubkey",
            keys[1],
            "--store",
            url,
        )
        print(f"\n{kind}: deleted checkpointed session, verify --all exit {code}")
        assert code == 1
        verdicts = {t["log_id"]: (t["valid"], t["error_type"]) for t in document["traces"]}
        assert verdicts == {first: (False, "truncated"), second: (True, None)}

    def test_library_reports_missing_logs(self):
        """``verify_logs`` applies each checkpoint to its own log and reports the absent."""
        a, b = _chain(6, 1), _chain(4, 2)
        checkpoints = [sign_checkpoint(a, KEY), sign_checkpoint(b[:2], KEY)]
        results = verify_logs([(None, a), (None, b)], checkpoints=checkpoints, verify_key=PUB)
        assert [(r.log_id, r.valid, r.unverifiable_tail) for r in results] == [
            (a[0]["session_id"], True, 0),
            (b[0]["session_id"], True, 2),
        ]
        results = verify_logs([(None, b)], checkpoints=checkpoints, verify_key=PUB)
        missing = results[-1]
        assert (missing.log_id, missing.valid, missing.error_type) == (
            a[0]["session_id"],
            False,
            "truncated",
        )
        assert (missing.event_count, missing.checkpoint_size) == (0, 6)
        # A log without any checkpoint is still verified, and counted as wholly unprotected.
        other = _chain(3, 3)
        result = verify_logs([(None, other)], checkpoints=[], verify_key=PUB)[0]
        assert (result.valid, result.checkpoint_size) == (True, None)
        # An empty log's checkpoint (size 0) asks for nothing when the log is absent.
        empty = sign_checkpoint([], KEY, log_id="empty-log")
        assert verify_logs([], checkpoints=[empty], verify_key=PUB) == []
        # A forged checkpoint of an absent log is reported as such, not as a truncation.
        forged = sign_checkpoint(_chain(2, 4), generate_signing_key())
        (result,) = verify_logs([], checkpoints=[forged], verify_key=PUB)
        assert result.error_type == "checkpoint_invalid"
        with pytest.raises(ValueError, match="verify_key"):
            verify_logs([], checkpoints=checkpoints)

    def test_unreadable_log_in_a_set(self):
        """A log that could not be read is reported, and still counts as present."""
        a = _chain(3, 1)
        checkpoint = sign_checkpoint(a, KEY)
        error = cra.TraceError("index says otherwise", code="TRACE_INDEX_MISMATCH")
        results = verify_logs(
            [(a[0]["session_id"], error), ("x", OSError("gone")), (None, OSError("?"))],
            checkpoints=[checkpoint],
            verify_key=PUB,
        )
        assert [(r.log_id, r.error_type) for r in results] == [
            (a[0]["session_id"], "index_mismatch"),
            ("x", "malformed_event"),
            (None, "malformed_event"),
        ]


class TestCutBelowACheckpoint:
    def test_cut_mid_line_below_the_checkpoint_is_truncated(self, tmp_path):
        """A file cut inside an event the checkpoint covers is tampering: ``truncated``."""
        events = _chain(30)
        data = b"".join(orjson.dumps(e) + b"\n" for e in events)
        path = tmp_path / "log.trace.jsonl"
        path.write_bytes(data[: len(data) // 2])
        result = verify_chain(path, checkpoints=sign_checkpoint(events, KEY), verify_key=PUB)
        print(f"\ncut at byte {len(data) // 2} below a checkpoint of 30: {result.error_type}")
        assert (result.valid, result.error_type) == (False, "truncated")
        assert result.checkpoint_size == 30

    def test_torn_line_above_the_checkpoint_is_a_crash(self, tmp_path):
        """A torn last line above the latest checkpoint is reported ``torn_tail``."""
        events = _chain(30)
        data = b"".join(orjson.dumps(e) + b"\n" for e in events)
        path = tmp_path / "log.trace.jsonl"
        path.write_bytes(data[:-20])
        result = verify_chain(path, checkpoints=sign_checkpoint(events[:20], KEY), verify_key=PUB)
        assert (result.valid, result.error_type) == (False, "torn_tail")
        assert (result.event_count, result.checkpoint_size, result.unverifiable_tail) == (
            29,
            20,
            9,
        )
        # The prefix is still checked against the checkpoint: a rewrite is not a crash.
        forged = _rekey(events, 1)
        forged[3]["payload"]["result"] = "allow"
        forged = _rekey(forged, 1)
        data = b"".join(orjson.dumps(e) + b"\n" for e in forged)
        path.write_bytes(data[:-20])
        result = verify_chain(path, checkpoints=sign_checkpoint(events[:20], KEY), verify_key=PUB)
        assert result.error_type == "checkpoint_mismatch"

    def test_cli_agrees(self, capsys, tmp_path, keys):
        """``cra trace verify`` classifies the same cut the same way."""
        events = _chain(30)
        cps = tmp_path / "cps"
        cps.mkdir()
        checkpoint = sign_checkpoint(events, cra.trace.load_signing_key(keys[0]))
        (cps / f"{checkpoint.log_id}.checkpoints.jsonl").write_text(
            json.dumps(checkpoint.as_dict()) + "\n"
        )
        data = b"".join(orjson.dumps(e) + b"\n" for e in events)
        path = tmp_path / "log.trace.jsonl"
        path.write_bytes(data[: len(data) // 2])
        code, document = run_json(
            capsys, "trace", "verify", str(path), "--checkpoint", str(cps), "--pubkey", keys[1]
        )
        assert code == 1
        assert document["traces"][0]["error_type"] == "truncated"


def _expected(lines: list[bytes], cut: int, size: int) -> tuple[str | None, int]:
    """The verdict a cut at byte ``cut`` must get, with a checkpoint at ``size`` events."""
    count, torn, start = 0, False, 0
    for line in lines:
        end = start + len(line)
        if cut >= end - 1:  # whole, or whole but for its newline
            count += 1
        elif cut > start:
            torn = True
        start = end
    if count < size:
        return "truncated", count
    return ("torn_tail" if torn else None), count


@settings(max_examples=300, deadline=None, database=None)
@given(length=st.integers(1, 12), data=st.data())
def test_cut_points_relative_to_a_checkpoint(tmp_path_factory, length, data):
    """Any cut of a file: below the latest checkpoint ``truncated``, above it a torn line is
    ``torn_tail`` and a clean cut is valid with the rest counted as unverifiable."""
    events = _chain(length, data.draw(st.integers(0, 10**6)))
    lines = [orjson.dumps(e) + b"\n" for e in events]
    blob = b"".join(lines)
    size = data.draw(st.integers(0, length), label="checkpoint size")
    # Where in which line to cut (line lengths vary with the timestamps' fraction digits).
    line = data.draw(st.integers(0, length - 1), label="line")
    offset = data.draw(st.integers(0, 1000), label="offset in the line")
    cut = sum(len(x) for x in lines[:line]) + offset % (len(lines[line]) + 1)
    path = tmp_path_factory.mktemp("cut") / "log.trace.jsonl"
    path.write_bytes(blob[:cut])
    checkpoint = sign_checkpoint(events[:size], KEY, log_id=events[0]["session_id"])
    result = verify_chain(path, checkpoints=checkpoint, verify_key=PUB)
    kind, count = _expected(lines, cut, size)
    assert result.error_type == kind, (cut, size, result)
    assert result.valid is (kind is None)
    assert result.checkpoint_size == size
    if kind != "truncated":
        assert result.event_count == count
        assert result.unverifiable_tail == count - size


class TestOneLogOneSession:
    def test_a_chain_mixing_sessions_is_refused(self):
        """Every event of a chain carries the session id of its first event."""
        events = _chain(4)
        forged = [*events[:2], *_rekey(events, 5)[2:]]
        for index in (2, 3):  # relink, as a writer that mixed logs would
            forged[index]["previous_event_hash"] = forged[index - 1]["event_hash"]
        forged = _rehash_keeping_ids(forged)
        result = verify_chain(forged)
        assert (result.valid, result.error_type, result.first_invalid_index) == (
            False,
            "session_mismatch",
            2,
        )

    def test_the_index_id_must_match_the_content(self):
        """``log_id=`` (a file name, a store key) must be the session id every event carries."""
        events = _chain(3)
        assert verify_chain(events, log_id=events[0]["session_id"]).valid
        result = verify_chain(events, log_id="another-session")
        assert (result.error_type, result.first_invalid_index) == ("index_mismatch", 0)
        assert result.log_id == "another-session"


def _rehash_keeping_ids(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from cra_agents.trace import compute_event_hash

    previous = "0" * 64
    out = []
    for event in events:
        event = {**event, "previous_event_hash": previous}
        event["event_hash"] = compute_event_hash(event)
        previous = event["event_hash"]
        out.append(event)
    return out
