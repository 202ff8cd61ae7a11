"""Durable stores for runs: in-memory, SQLite (the embedded default) and PostgreSQL.

One protocol, three implementations with the same behaviour::

    store = aflow.stores.open_store("sqlite:///runs.db")     # or "postgresql://...", "memory://"

A store holds each run (id, workflow, inputs, graph fingerprint, status,
idempotency key, options, result or error, times), the latest transition of
each node, keyed by the node's key in the graph (stable across processes),
and the history of those transitions. The schema is versioned, created on
first use and migrated forward when an older store is opened.

A run's stored status is a :class:`StoredRunStatus` and a node transition's state a
:class:`RecordState`: string enums whose values are the text in the store's rows. A
store of your own (anything with :class:`Store`'s methods) hands out members of them,
converting the text of its rows as it reads them.
"""

from __future__ import annotations

from .._deprecated import moved as _moved
from ._base import SCHEMA_VERSION as SCHEMA_VERSION
from ._base import NodeRecord as NodeRecord
from ._base import RecordState as RecordState
from ._base import RunRecord as RunRecord
from ._base import Store as Store
from ._base import StoredRunStatus as StoredRunStatus
from ._base import open_store as open_store
from ._memory import MemoryStore as MemoryStore
from ._sqlite import SQLiteStore as SQLiteStore

__all__ = [
    "SCHEMA_VERSION",
    "MemoryStore",
    "NodeRecord",
    "RecordState",
    "RunRecord",
    "SQLiteStore",
    "Store",
    "StoredRunStatus",
    "open_store",
]

#: Exceptions this namespace used to export too (deprecated): their one home is aflow.errors.
__getattr__ = _moved(
    "aflow.stores",
    ["LeaseLost", "RecordedError", "ResumeMismatch", "RunExists", "RunNotFound", "StoreError"],
    to="aflow.errors",
)
