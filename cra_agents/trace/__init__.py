"""TRACE: hash chains, verification and stores."""

from __future__ import annotations

import typing

from cra_agents._lazy import lazy_exports as _lazy_exports
from cra_agents.trace._chain import SessionChain
from cra_agents.trace._checkpoint import (
    Checkpoint,
    append_checkpoint,
    generate_signing_key,
    key_id,
    load_signing_key,
    load_verify_key,
    read_checkpoints,
    save_signing_key,
    save_verify_key,
    sign_checkpoint,
)
from cra_agents.trace._collector import (
    DURABILITY_MODES,
    Durability,
    TraceCollector,
    TraceStats,
)
from cra_agents.trace._feed import CommitFeed, CommitListener
from cra_agents.trace._hash import compute_event_hash, spec_event_hash
from cra_agents.trace._ingest import (
    BATCH_INVALID,
    MAX_BATCH_EVENTS,
    IngestResult,
    IngestStore,
    StoredEvent,
    StoredHead,
    parse_batch,
    plan_session,
    split_batch,
)
from cra_agents.trace._jsonl import JsonlStore, repair_torn_tail
from cra_agents.trace._memory import MemoryStore
from cra_agents.trace._read import TornTail, iter_jsonl, read_events
from cra_agents.trace._sqlite import SqliteStore
from cra_agents.trace._store import (
    WRITERS,
    TraceStore,
    Writer,
    open_store,
    read_session_ends,
    redact_store_url,
    writer_url,
)
from cra_agents.trace._verify import (
    INDEX_MISMATCH,
    ChainVerification,
    stored_events,
    verify_chain,
    verify_logs,
    verify_store,
)

__all__ = [
    "BATCH_INVALID",
    "DURABILITY_MODES",
    "INDEX_MISMATCH",
    "MAX_BATCH_EVENTS",
    "WRITERS",
    "CallRecord",
    "ChainVerification",
    "Checkpoint",
    "CommitFeed",
    "CommitListener",
    "ContextRecord",
    "Durability",
    "EventLike",
    "HttpSink",
    "IngestResult",
    "IngestStore",
    "JsonlStore",
    "MemoryStore",
    "OutcomeKind",
    "PostgresStore",
    "ResolutionRecord",
    "SessionChain",
    "SessionRecord",
    "SinkStats",
    "SqliteStore",
    "StoredEvent",
    "StoredHead",
    "TornTail",
    "TraceCollector",
    "TraceStats",
    "TraceStore",
    "Writer",
    "append_checkpoint",
    "compute_event_hash",
    "event_field",
    "event_payload",
    "fold_calls",
    "fold_session",
    "generate_signing_key",
    "iter_jsonl",
    "key_id",
    "load_signing_key",
    "load_verify_key",
    "open_store",
    "parse_batch",
    "plan_session",
    "read_checkpoints",
    "read_events",
    "read_session_ends",
    "redact_store_url",
    "repair_torn_tail",
    "save_signing_key",
    "save_verify_key",
    "sign_checkpoint",
    "sink_from_url",
    "spec_event_hash",
    "split_batch",
    "stored_events",
    "verify_chain",
    "verify_logs",
    "verify_store",
    "writer_url",
]

# The fold (report, replay, export, notebooks) loads on first use: the hot path never needs it.
_CALLS = (
    "CallRecord",
    "ContextRecord",
    "EventLike",
    "HttpSink",
    "OutcomeKind",
    "ResolutionRecord",
    "SessionRecord",
    "event_field",
    "event_payload",
    "fold_calls",
    "fold_session",
)
if typing.TYPE_CHECKING:
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
    from cra_agents.trace._http import HttpSink, SinkStats, sink_from_url

    # psycopg (the postgres extra) is imported when a PostgresStore is made, not here.
    from cra_agents.trace._postgres import PostgresStore
# The HTTP sink (httpx, zstandard) loads when a store URL or a caller asks for it.
_HTTP = ("HttpSink", "SinkStats", "sink_from_url")
_HOMES = dict.fromkeys(_CALLS, "cra_agents.trace._calls")
_HOMES.update(dict.fromkeys(_HTTP, "cra_agents.trace._http"))
_HOMES["PostgresStore"] = "cra_agents.trace._postgres"
__getattr__, __dir__ = _lazy_exports(__name__, _HOMES)
