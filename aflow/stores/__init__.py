"""Durable stores for runs: in-memory, SQLite (the embedded default) and PostgreSQL.

One protocol, three implementations with the same behaviour::

    store = aflow.stores.open_store("sqlite:///runs.db")     # or "postgresql://...", "memory://"

A store holds each run (id, workflow, inputs, graph fingerprint, status,
idempotency key, result or error, times) and the latest transition of each
node, keyed by the node's key in the graph (stable across processes). The
schema is versioned and created on first use.
"""

from __future__ import annotations

from .._exceptions import ResumeMismatch as ResumeMismatch
from .._exceptions import RunNotFound as RunNotFound
from .._exceptions import StoreError as StoreError
from ._base import NodeRecord as NodeRecord
from ._base import RunRecord as RunRecord
from ._base import Store as Store
from ._base import open_store as open_store
from ._memory import MemoryStore as MemoryStore
from ._sqlite import SQLiteStore as SQLiteStore

__all__ = [
    "MemoryStore",
    "NodeRecord",
    "ResumeMismatch",
    "RunNotFound",
    "RunRecord",
    "SQLiteStore",
    "Store",
    "StoreError",
    "open_store",
]
