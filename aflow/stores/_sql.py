"""The schema the SQL stores share, and turning rows into records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._base import NodeRecord, RunRecord

__all__ = [
    "RUN_COLUMNS",
    "SCHEMA",
    "UNFINISHED",
    "UPSERT_NODE",
    "node_row",
    "run_from_row",
    "run_row",
]

#: Created on first use; ``{real}`` is REAL (SQLite) or DOUBLE PRECISION (PostgreSQL).
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS aflow_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS aflow_runs (
        run_id TEXT PRIMARY KEY,
        workflow TEXT NOT NULL,
        params TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status TEXT NOT NULL,
        idempotency_key TEXT UNIQUE,
        created_at {real} NOT NULL,
        updated_at {real} NOT NULL,
        ended_at {real},
        result TEXT,
        error TEXT,
        serializer TEXT NOT NULL,
        owner TEXT,
        heartbeat {real}
    )""",
    "CREATE INDEX IF NOT EXISTS aflow_runs_status ON aflow_runs (status, created_at)",
    """CREATE TABLE IF NOT EXISTS aflow_nodes (
        run_id TEXT NOT NULL REFERENCES aflow_runs (run_id),
        key TEXT NOT NULL,
        state TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        result TEXT,
        error TEXT,
        started_at {real},
        finished_at {real},
        PRIMARY KEY (run_id, key)
    )""",
)

#: Record a node transition; a later one keeps the result and start time it lacks.
#: ``{rows}`` is one or more ``(?, ...)`` groups (SQLite) or ``($1, ..., $8)`` (PostgreSQL).
UPSERT_NODE = (
    "INSERT INTO aflow_nodes (run_id, key, state, attempt, result, error, started_at, "
    "finished_at) VALUES {rows} ON CONFLICT (run_id, key) DO UPDATE SET "
    "state = excluded.state, attempt = excluded.attempt, "
    "result = COALESCE(excluded.result, aflow_nodes.result), error = excluded.error, "
    "started_at = COALESCE(excluded.started_at, aflow_nodes.started_at), "
    "finished_at = excluded.finished_at"
)

RUN_COLUMNS = (
    "run_id, workflow, params, fingerprint, status, idempotency_key, created_at, "
    "updated_at, ended_at, result, error, serializer, owner, heartbeat"
)

#: Statuses of runs that are not over (recovery looks at these).
UNFINISHED = ("pending", "running", "reverting", "cancelling")


def run_row(record: RunRecord) -> tuple[Any, ...]:
    return (
        record.run_id,
        record.workflow,
        record.params,
        record.fingerprint,
        record.status,
        record.idempotency_key,
        record.created_at,
        record.updated_at,
        record.ended_at,
        record.result,
        record.error,
        record.serializer,
        record.owner,
        record.heartbeat,
    )


def run_from_row(row: Sequence[Any]) -> RunRecord:
    return RunRecord(*row)


def node_row(run_id: str, node: NodeRecord) -> tuple[Any, ...]:
    return (
        run_id,
        node.key,
        node.state,
        node.attempt,
        node.result,
        node.error,
        node.started_at,
        node.finished_at,
    )
