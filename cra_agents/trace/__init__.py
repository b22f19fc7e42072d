"""TRACE: hash chains, verification and stores."""

from __future__ import annotations

from cra_agents.trace._chain import SessionChain
from cra_agents.trace._collector import DURABILITY_MODES, Durability, TraceCollector
from cra_agents.trace._files import JsonlStore, SqliteStore, open_store
from cra_agents.trace._hash import compute_event_hash, spec_event_hash
from cra_agents.trace._store import MemoryStore, TraceStore
from cra_agents.trace._verify import ChainVerification, verify_chain

__all__ = [
    "DURABILITY_MODES",
    "ChainVerification",
    "Durability",
    "JsonlStore",
    "MemoryStore",
    "SessionChain",
    "SqliteStore",
    "TraceCollector",
    "TraceStore",
    "compute_event_hash",
    "open_store",
    "spec_event_hash",
    "verify_chain",
]
