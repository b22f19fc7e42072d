"""TRACE: hash chains, verification and stores."""

from __future__ import annotations

from cra_agents.trace._calls import (
    CallRecord,
    ContextRecord,
    EventLike,
    OutcomeKind,
    ResolutionRecord,
    SessionRecord,
    event_field,
    event_payload,
    fold_calls,
    fold_session,
)
from cra_agents.trace._chain import SessionChain
from cra_agents.trace._checkpoint import (
    Checkpoint,
    append_checkpoint,
    generate_signing_key,
    load_signing_key,
    load_verify_key,
    read_checkpoints,
    save_signing_key,
    save_verify_key,
    sign_checkpoint,
)
from cra_agents.trace._collector import DURABILITY_MODES, Durability, TraceCollector
from cra_agents.trace._files import JsonlStore, SqliteStore, open_store, repair_torn_tail
from cra_agents.trace._hash import compute_event_hash, spec_event_hash
from cra_agents.trace._read import TornTail, iter_jsonl, read_events
from cra_agents.trace._store import MemoryStore, TraceStore
from cra_agents.trace._verify import ChainVerification, verify_chain

__all__ = [
    "DURABILITY_MODES",
    "CallRecord",
    "ChainVerification",
    "Checkpoint",
    "ContextRecord",
    "Durability",
    "EventLike",
    "JsonlStore",
    "MemoryStore",
    "OutcomeKind",
    "ResolutionRecord",
    "SessionChain",
    "SessionRecord",
    "SqliteStore",
    "TornTail",
    "TraceCollector",
    "TraceStore",
    "append_checkpoint",
    "compute_event_hash",
    "event_field",
    "event_payload",
    "fold_calls",
    "fold_session",
    "generate_signing_key",
    "iter_jsonl",
    "load_signing_key",
    "load_verify_key",
    "open_store",
    "read_checkpoints",
    "read_events",
    "repair_torn_tail",
    "save_signing_key",
    "save_verify_key",
    "sign_checkpoint",
    "spec_event_hash",
    "verify_chain",
]
