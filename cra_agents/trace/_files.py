"""Deprecated home of the file stores; import them from :mod:`cra_agents.trace`.

Kept only until ``cra_agents.runtime._runtime`` imports ``open_store`` from there.
"""

from __future__ import annotations

from cra_agents.trace._jsonl import JsonlStore, repair_torn_tail
from cra_agents.trace._sqlite import SqliteStore
from cra_agents.trace._store import open_store

__all__ = ["JsonlStore", "SqliteStore", "open_store", "repair_torn_tail"]
