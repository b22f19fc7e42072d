"""The TRACE hash rule (PROTOCOL_NOTES §3.1) in its two upstream readings."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cra_agents._canonical import canonical_json
from cra_agents._clock import normalize_timestamp

__all__ = ["compute_event_hash", "spec_event_hash"]

_FIELDS = ("event_id", "trace_id", "span_id")


def _material(event: Mapping[str, Any], timestamp: str, payload_json: bytes) -> bytes:
    return b"".join(
        (
            str(event.get("trace_version", "1.0")).encode(),
            str(event["event_id"]).encode(),
            str(event["trace_id"]).encode(),
            str(event["span_id"]).encode(),
            str(event.get("parent_span_id") or "").encode(),
            str(event["session_id"]).encode(),
            str(event["sequence"]).encode(),
            timestamp.encode(),
            str(event["event_type"]).encode(),
            payload_json,
            str(event["previous_event_hash"]).encode(),
        )
    )


def compute_event_hash(event: Mapping[str, Any]) -> str:
    """The event hash by the rule we write and the Rust core uses.

    The timestamp is hashed in normalised form (UTC, ``+00:00``, 0/3/6/9 fraction digits) and
    the payload as canonical JSON (sorted keys, raw UTF-8, ryu floats).

    Raises:
        ValueError: the timestamp is not RFC 3339.
        TraceError: the payload is not canonical JSON.
    """
    timestamp = normalize_timestamp(str(event["timestamp"]))
    return hashlib.sha256(_material(event, timestamp, canonical_json(event["payload"]))).hexdigest()


def spec_event_hash(event: Mapping[str, Any]) -> str:
    """The event hash as the spec's Appendix B computes it.

    The timestamp is hashed as written and the payload as
    ``json.dumps(payload, sort_keys=True, separators=(",", ":"))`` (ASCII-escaped).
    """
    payload = json.dumps(event["payload"], sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(_material(event, str(event["timestamp"]), payload)).hexdigest()
