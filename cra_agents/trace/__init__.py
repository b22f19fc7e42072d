"""TRACE: hash chains, verification and stores."""

from __future__ import annotations

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
from cra_agents.trace._hash import compute_event_hash, spec_event_hash
from cra_agents.trace._jsonl import JsonlStore, repair_torn_tail
from cra_agents.trace._memory import MemoryStore
from cra_agents.trace._sqlite import SqliteStore
from cra_agents.trace._store import TraceStore, open_store
from cra_agents.trace._verify import ChainVerification, verify_chain

__all__ = [
    "DURABILITY_MODES",
    "ChainVerification",
    "Checkpoint",
    "Durability",
    "JsonlStore",
    "MemoryStore",
    "SessionChain",
    "SqliteStore",
    "TraceCollector",
    "TraceStore",
    "append_checkpoint",
    "compute_event_hash",
    "generate_signing_key",
    "load_signing_key",
    "load_verify_key",
    "open_store",
    "read_checkpoints",
    "repair_torn_tail",
    "save_signing_key",
    "save_verify_key",
    "sign_checkpoint",
    "spec_event_hash",
    "verify_chain",
]
