"""Signed checkpoints: truncation, rollback and rewrites are detected; torn tails repaired."""

from __future__ import annotations

import json
import os
import stat

import pytest

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.trace import (
    Checkpoint,
    JsonlStore,
    append_checkpoint,
    generate_signing_key,
    load_signing_key,
    load_verify_key,
    read_checkpoints,
    repair_torn_tail,
    save_signing_key,
    save_verify_key,
    sign_checkpoint,
    verify_chain,
)

GITHUB_OPS = atlas_path("github-ops")


@pytest.fixture(scope="module")
def key():
    return generate_signing_key()


@pytest.fixture
def log(tmp_path):
    """A JSONL session log with three resolves, and its runtime (closed)."""
    store = JsonlStore(tmp_path / "traces")
    with cra.Runtime([GITHUB_OPS], store=store) as runtime:
        session = runtime.create_session("bot", "Triage new bug reports")
        for _ in range(3):
            runtime.resolve(cra.resolve_request(session))
        events = runtime.trace_events(session.session_id)
    return store.path(session.session_id), events


def _dump(events):
    return [e.model_dump(mode="json") for e in events]


class TestCheckpoints:
    def test_a_checkpointed_log_verifies(self, log, key):
        """A log holding its checkpoint is valid; nothing after it is unverifiable."""
        _, events = log
        checkpoint = sign_checkpoint(events, key)
        result = verify_chain(events, checkpoints=checkpoint, verify_key=key.public_key())
        assert result.valid
        assert (result.checkpoint_size, result.unverifiable_tail) == (len(events), 0)

    def test_events_after_the_checkpoint_are_an_unverifiable_tail(self, log, key):
        """Growth after the checkpoint is consistent but counted as unprotected."""
        _, events = log
        checkpoint = sign_checkpoint(events[:10], key)
        result = verify_chain(events, checkpoints=[checkpoint], verify_key=key.public_key())
        assert result.valid
        assert result.unverifiable_tail == len(events) - 10

    def test_truncation_after_the_checkpoint_is_detected(self, log, key):
        """Cutting events off the end is never reported valid once checkpointed."""
        _, events = log
        checkpoint = sign_checkpoint(events, key)
        for keep in (0, 1, len(events) // 2, len(events) - 1):
            result = verify_chain(
                events[:keep], checkpoints=checkpoint, verify_key=key.public_key()
            )
            assert not result.valid
            assert result.error_type == "truncated"
            assert result.first_invalid_index == keep

    def test_rollback_to_an_older_checkpoint_is_detected(self, log, key):
        """A log rolled back to match an older checkpoint fails against the latest one."""
        _, events = log
        old, new = sign_checkpoint(events[:8], key), sign_checkpoint(events, key)
        assert verify_chain(events[:8], checkpoints=old, verify_key=key.public_key()).valid
        result = verify_chain(events[:8], checkpoints=[old, new], verify_key=key.public_key())
        assert result.error_type == "truncated"

    def test_rewrite_with_recomputed_hashes_is_detected(self, log, key):
        """Editing an event and recomputing the whole chain contradicts the checkpoint."""
        _, events = log
        checkpoint = sign_checkpoint(events, key)
        forged_chain = cra.trace.SessionChain(events[0].session_id, events[0].trace_id)
        for event in events:
            payload = dict(event.payload)
            if event.event_type == "policy.evaluated" and payload["result"] == "deny":
                payload["result"] = "allow"
            forged_chain.append(event.event_type, payload)
        forged = forged_chain.flush()
        assert verify_chain(forged).valid  # internally consistent...
        result = verify_chain(forged, checkpoints=checkpoint, verify_key=key.public_key())
        assert result.error_type == "checkpoint_mismatch"  # ...but not the log that was signed

    def test_signature_and_log_binding(self, log, key):
        """A forged signature, another key or another log's checkpoint is refused."""
        _, events = log
        checkpoint = sign_checkpoint(events, key)
        other = generate_signing_key()
        assert (
            verify_chain(events, checkpoints=checkpoint, verify_key=other.public_key()).error_type
            == "checkpoint_invalid"
        )
        tampered = Checkpoint(**{**checkpoint.as_dict(), "size": checkpoint.size - 1})
        assert (
            verify_chain(events, checkpoints=tampered, verify_key=key.public_key()).error_type
            == "checkpoint_invalid"
        )
        garbage = Checkpoint(**{**checkpoint.as_dict(), "signature": "not base64!"})
        assert not garbage.verify_signature(key.public_key())
        elsewhere = sign_checkpoint(events, key, log_id="another-log")
        assert (
            verify_chain(events, checkpoints=elsewhere, verify_key=key.public_key()).error_type
            == "checkpoint_invalid"
        )
        with pytest.raises(ValueError, match="verify_key"):
            verify_chain(events, checkpoints=checkpoint)

    def test_empty_log_checkpoint(self, key):
        """An empty log can be checkpointed with an explicit id, and then must stay empty."""
        checkpoint = sign_checkpoint([], key, log_id="log-1")
        assert checkpoint.head_hash == "0" * 64
        assert verify_chain([], checkpoints=checkpoint, verify_key=key.public_key()).valid
        with pytest.raises(ValueError, match="explicit log_id"):
            sign_checkpoint([], key)

    def test_runtime_checkpoint_and_verify(self, key):
        """Runtime.checkpoint signs the stored chain; Runtime.verify checks against it."""
        with cra.Runtime([GITHUB_OPS], store="memory://") as runtime:
            session = runtime.create_session("bot", "Triage")
            runtime.resolve(cra.resolve_request(session))
            checkpoint = runtime.checkpoint(session.session_id, key)
            runtime.resolve(cra.resolve_request(session))
            result = runtime.verify(
                session.session_id, checkpoints=checkpoint, verify_key=key.public_key()
            )
            assert result.valid
            assert result.unverifiable_tail is not None
            assert result.unverifiable_tail > 0

    def test_runtime_refuses_to_sign_a_broken_chain(self, key, monkeypatch):
        """A chain that does not verify is not vouched for."""
        with cra.Runtime([GITHUB_OPS], store="memory://") as runtime:
            session = runtime.create_session("bot", "Triage")
            events = runtime.trace_events(session.session_id)
            broken = [events[0].model_copy(update={"sequence": 5})]
            monkeypatch.setattr(runtime, "trace_events", lambda *a, **k: broken)
            with pytest.raises(cra.TraceError, match="not signing"):
                runtime.checkpoint(session.session_id, key)


class TestCheckpointFiles:
    def test_append_and_read_back(self, tmp_path, log, key):
        """Checkpoints are appended as JSON lines outside the log and read back in order."""
        _, events = log
        first, second = sign_checkpoint(events[:5], key), sign_checkpoint(events, key)
        append_checkpoint(first, tmp_path / "anchors")
        path = append_checkpoint(second, tmp_path / "anchors")
        assert path.name == f"{first.log_id}.checkpoints.jsonl"
        assert read_checkpoints(tmp_path / "anchors", first.log_id) == [first, second]
        assert read_checkpoints(tmp_path / "anchors", "nothing") == []

    def test_corrupt_checkpoint_file(self, tmp_path):
        """A damaged checkpoint line is an error naming the file and line."""
        (tmp_path / "x.checkpoints.jsonl").write_text('{"log_id": "x"}\n', "utf-8")
        with pytest.raises(ValueError, match=r"x\.checkpoints\.jsonl:1"):
            read_checkpoints(tmp_path, "x")
        with pytest.raises(ValueError, match="negative"):
            Checkpoint.from_dict(
                {
                    "log_id": "x",
                    "size": -1,
                    "head_hash": "0",
                    "timestamp": "2024-12-28T12:00:00+00:00",
                    "key_id": "k",
                    "signature": "s",
                }
            )

    def test_keys_round_trip_with_and_without_password(self, tmp_path, log):
        """Keys are saved as PEM (private 0600, optionally encrypted) and load back."""
        _, events = log
        key = generate_signing_key()
        save_signing_key(key, tmp_path / "k.pem", password=b"s3cret")
        save_signing_key(key, tmp_path / "plain.pem")
        save_verify_key(key.public_key(), tmp_path / "k.pub")
        assert stat.S_IMODE(os.stat(tmp_path / "k.pem").st_mode) == 0o600
        loaded = load_signing_key(tmp_path / "k.pem", password=b"s3cret")
        assert load_signing_key(tmp_path / "plain.pem") is not None
        checkpoint = sign_checkpoint(events, loaded)
        assert checkpoint.verify_signature(load_verify_key(tmp_path / "k.pub"))
        with pytest.raises(ValueError):
            load_signing_key(tmp_path / "k.pem", password=b"wrong")
        with pytest.raises(ValueError, match=r"(?i)password"):
            load_signing_key(tmp_path / "k.pem")

    def test_wrong_key_types_are_refused(self, tmp_path):
        """An RSA key file is not taken for an Ed25519 key."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (tmp_path / "rsa.pem").write_bytes(
            rsa_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (tmp_path / "rsa.pub").write_bytes(
            rsa_key.public_key().public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
        )
        with pytest.raises(ValueError, match="Ed25519"):
            load_signing_key(tmp_path / "rsa.pem")
        with pytest.raises(ValueError, match="Ed25519"):
            load_verify_key(tmp_path / "rsa.pub")


class TestRepairTornTail:
    def test_torn_line_is_cut_and_the_log_verifies_again(self, log):
        """repair_torn_tail removes exactly the incomplete line."""
        path, _ = log
        intact = path.read_bytes()
        with path.open("ab") as handle:
            handle.write(b'{"trace_version":"1.0","event_')
        assert verify_chain(path).error_type == "torn_tail"
        assert repair_torn_tail(path) == len(b'{"trace_version":"1.0","event_')
        assert path.read_bytes() == intact
        assert verify_chain(path).valid
        assert repair_torn_tail(path) == 0

    def test_complete_last_event_only_gets_its_newline(self, log):
        """A whole event missing its newline is kept."""
        path, events = log
        data = path.read_bytes()
        path.write_bytes(data[:-1])
        assert repair_torn_tail(path) == 0
        assert path.read_bytes() == data
        assert verify_chain(path).event_count == len(events)

    def test_empty_file(self, tmp_path):
        """Nothing to repair in an empty file."""
        path = tmp_path / "empty.trace.jsonl"
        path.write_bytes(b"")
        assert repair_torn_tail(path) == 0


def test_checkpoint_json_form(log, key):
    """as_dict/from_dict round-trip."""
    _, events = log
    checkpoint = sign_checkpoint(events, key)
    assert Checkpoint.from_dict(json.loads(json.dumps(checkpoint.as_dict()))) == checkpoint
