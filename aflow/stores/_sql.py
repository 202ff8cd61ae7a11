"""The schema the SQL stores share, and turning rows into records."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from .._exceptions import StoreError
from ._base import NodeRecord, RecordState, RunRecord, StoredRunStatus

__all__ = [
    "HISTORY_COLUMNS",
    "NODE_COLUMNS",
    "RUN_COLUMNS",
    "CANCELLABLE",
    "CANCEL_SET",
    "CLAIM_FRESH_SET",
    "CLAIM_SET",
    "NOT_CANCELLING",
    "UNFINISHED",
    "INSERT_HISTORY",
    "UPSERT_NODE",
    "history_row",
    "migrations",
    "node_from_row",
    "node_row",
    "run_from_row",
    "run_row",
    "status_of",
]

#: Version 1, created on first use; later versions are migrations from it (below), so
#: a new store and an upgraded one run the same statements. ``{real}`` is REAL
#: (SQLite) or DOUBLE PRECISION (PostgreSQL).
_VERSION_1 = (
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

#: Version 2: the run's options (a resumed run keeps them), and every node transition
#: (a trigger on aflow_nodes appends it, so a checkpoint batch stays one statement).
_VERSION_2_COMMON = (
    "ALTER TABLE aflow_runs ADD COLUMN options TEXT",
    """CREATE TABLE aflow_transitions (
        seq {serial},
        run_id TEXT NOT NULL,
        key TEXT NOT NULL,
        state TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        error TEXT,
        started_at {real},
        finished_at {real}
    )""",
    "CREATE INDEX aflow_transitions_run ON aflow_transitions (run_id, seq)",
)
_LOG_VALUES = (
    "INSERT INTO aflow_transitions (run_id, key, state, attempt, error, started_at, "
    "finished_at) VALUES (NEW.run_id, NEW.key, NEW.state, NEW.attempt, NEW.error, "
    "NEW.started_at, NEW.finished_at);"
)
_VERSION_2 = {
    "sqlite": _VERSION_2_COMMON
    + tuple(
        f"CREATE TRIGGER aflow_nodes_log_{event.lower()} AFTER {event} ON aflow_nodes "
        f"BEGIN {_LOG_VALUES} END"
        for event in ("INSERT", "UPDATE")
    ),
    # PostgreSQL: one statement-level trigger per event, reading the rows a checkpoint
    # batch wrote from a transition table (one trigger call per batch, not per row)
    "postgres": (
        *_VERSION_2_COMMON,
        "CREATE OR REPLACE FUNCTION aflow_log_transitions() RETURNS trigger AS $$ BEGIN "
        "INSERT INTO aflow_transitions (run_id, key, state, attempt, error, started_at, "
        "finished_at) SELECT run_id, key, state, attempt, error, started_at, finished_at "
        "FROM written; RETURN NULL; END $$ LANGUAGE plpgsql",
        *(
            f"CREATE TRIGGER aflow_nodes_log_{event.lower()} AFTER {event} ON aflow_nodes "
            f"REFERENCING NEW TABLE AS written FOR EACH STATEMENT "
            f"EXECUTE FUNCTION aflow_log_transitions()"
            for event in ("INSERT", "UPDATE")
        ),
    ),
}
#: Version 3: how many times recovery took a run over from a process that died holding
#: it (a run that keeps killing its processes is parked past a maximum; issue 14).
_VERSION_3 = ("ALTER TABLE aflow_runs ADD COLUMN recoveries INTEGER NOT NULL DEFAULT 0",)
#: Version 4: durable waits (issue 22). A run can be ``waiting`` (no owner, due at
#: ``wake_at``, for the events in ``waiting_for``); the events sent to runs (one per
#: run, name and message id; ``consumed_by`` the wait that took it), the values runs
#: publish, and each wait's deadline, fixed when it first begins.
_VERSION_4 = (
    "ALTER TABLE aflow_runs ADD COLUMN wake_at {real}",
    "ALTER TABLE aflow_runs ADD COLUMN waiting_for TEXT",
    # partial: a run's every status change would update it otherwise (+10% on a short
    # durable run on SQLite); only waiting runs are looked up by wake_at
    "CREATE INDEX aflow_runs_wake ON aflow_runs (wake_at) WHERE status = 'waiting'",
    """CREATE TABLE aflow_events (
        seq {serial},
        run_id TEXT NOT NULL REFERENCES aflow_runs (run_id),
        name TEXT NOT NULL,
        message_id TEXT NOT NULL,
        payload TEXT,
        sent_at {real} NOT NULL,
        consumed_by TEXT
    )""",
    "CREATE UNIQUE INDEX aflow_events_message ON aflow_events (run_id, name, message_id)",
    "CREATE INDEX aflow_events_taken ON aflow_events (run_id, name, consumed_by)",
    """CREATE TABLE aflow_values (
        run_id TEXT NOT NULL REFERENCES aflow_runs (run_id),
        name TEXT NOT NULL,
        payload TEXT,
        set_at {real} NOT NULL,
        PRIMARY KEY (run_id, name)
    )""",
    """CREATE TABLE aflow_waits (
        run_id TEXT NOT NULL REFERENCES aflow_runs (run_id),
        key TEXT NOT NULL,
        event TEXT,
        deadline {real},
        started_at {real} NOT NULL,
        PRIMARY KEY (run_id, key)
    )""",
)
#: Version 5: the shape of each graph runs were made of (its steps, their tasks and
#: edges), by fingerprint, so a dashboard over the store alone draws a run's graph with
#: the steps not begun yet (issue 20). Written once per shape, not per run.
_VERSION_5 = (
    """CREATE TABLE aflow_shapes (
        fingerprint TEXT PRIMARY KEY,
        shape TEXT NOT NULL
    )""",
)
_TYPES = {
    "sqlite": {"real": "REAL", "serial": "INTEGER PRIMARY KEY"},
    "postgres": {"real": "DOUBLE PRECISION", "serial": "BIGSERIAL PRIMARY KEY"},
}


def migrations(dialect: str, version: int) -> list[tuple[int, list[str]]]:
    """The statements that take a store from schema ``version`` (0: empty) to the
    newest, version by version; each version runs in its own transaction."""
    types = _TYPES[dialect]
    steps = {
        1: _VERSION_1,
        2: _VERSION_2[dialect],
        3: _VERSION_3,
        4: _VERSION_4,
        5: _VERSION_5,
    }
    return [
        (v, [statement.format(**types) for statement in steps[v]])
        for v in sorted(steps)
        if v > version
    ]


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

#: Transitions kept in the history only (a retry's failure, superseded in its batch).
INSERT_HISTORY = (
    "INSERT INTO aflow_transitions (run_id, key, state, attempt, error, started_at, "
    "finished_at) VALUES {rows}"
)

RUN_COLUMNS = (
    "run_id, workflow, params, fingerprint, status, idempotency_key, created_at, "
    "updated_at, ended_at, result, error, serializer, owner, heartbeat, options, recoveries, "
    "wake_at, waiting_for"
)
NODE_COLUMNS = "key, state, attempt, result, error, started_at, finished_at"
#: A transition as the history keeps it (its result is in aflow_nodes).
HISTORY_COLUMNS = "key, state, attempt, NULL, error, started_at, finished_at"

_PENDING = StoredRunStatus.PENDING
_RUNNING = StoredRunStatus.RUNNING
_REVERTING = StoredRunStatus.REVERTING
_CANCELLING = StoredRunStatus.CANCELLING
_PARKED = StoredRunStatus.PARKED
_WAITING = StoredRunStatus.WAITING

#: Statuses of runs that are not over (recovery looks at the first four; a waiting run
#: has no owner, and is taken up when it is due).
UNFINISHED = (_PENDING, _RUNNING, _REVERTING, _CANCELLING, _WAITING)
#: What ``aflow cancel`` may act on: an unfinished run, or a parked one (the dead-letter
#: state: recovery leaves it alone, a person may resume or cancel it; issue 14).
CANCELLABLE = (*UNFINISHED, _PARKED)
#: ``start_run`` changes the status of a run unless a cancel was asked meanwhile.
NOT_CANCELLING = f"status <> '{_CANCELLING}'"

#: Set by ``claim``: the new owner, its lease, and one more recovery when the run is
#: taken from another owner (one that died holding it; a released run has none).
CLAIM_SET = (
    "owner = {owner}, heartbeat = {until}, recoveries = recoveries + "
    "CASE WHEN owner IS NOT NULL AND owner <> {owner} THEN 1 ELSE 0 END"
)
#: ``claim(fresh=True)``: a person takes the run up; its count of recoveries restarts.
CLAIM_FRESH_SET = "owner = {owner}, heartbeat = {until}, recoveries = 0"
#: ``request_cancel``: a reverting (or parked) run keeps what started its compensation,
#: and a person cancelling a parked run gives it a fresh count of recoveries.
CANCEL_SET = (
    f"status = '{_CANCELLING}', updated_at = {{now}}, recoveries = CASE WHEN status = "
    f"'{_PARKED}' THEN 0 ELSE recoveries END, error = CASE WHEN status IN ('{_REVERTING}', "
    f"'{_PARKED}') AND error IS NOT NULL THEN error ELSE {{reason}} END"
)

#: Stored text -> member, for rows read back (a dict lookup, not an enum call per row).
_STATUSES: dict[object, StoredRunStatus] = {m.value: m for m in StoredRunStatus}
_STATES: dict[object, RecordState] = {m.value: m for m in RecordState}


def _unknown(what: str, text: object, known: type[enum.StrEnum]) -> StoreError:
    return StoreError(
        f"{what} is {text!r} on record, which aflow never writes (it writes "
        f"{', '.join(m.value for m in known)}): something other than aflow changed the "
        "store; restore it from a backup, or remove the row"
    )


def run_row(record: RunRecord) -> tuple[Any, ...]:
    return (
        record.run_id,
        record.workflow,
        record.params,
        record.fingerprint,
        str(record.status),  # as plain text: SQLite adapts a str subclass, a slower path
        record.idempotency_key,
        record.created_at,
        record.updated_at,
        record.ended_at,
        record.result,
        record.error,
        record.serializer,
        record.owner,
        record.heartbeat,
        record.options,
        record.recoveries,
        record.wake_at,
        record.waiting_for,
    )


def run_from_row(row: Sequence[Any]) -> RunRecord:
    """A run row (``RUN_COLUMNS``) as a record; a status aflow never writes is a
    :class:`StoreError` naming the run."""
    run_id, workflow, params, fingerprint, text, *rest = row
    return RunRecord(run_id, workflow, params, fingerprint, status_of(run_id, text), *rest)


def status_of(run_id: str, text: object) -> StoredRunStatus:
    """A stored status as a member (a :class:`StoreError` naming the run if aflow never
    writes it)."""
    status = _STATUSES.get(text)
    if status is None:
        raise _unknown(f"the status of run {run_id!r}", text, StoredRunStatus)
    return status


def node_from_row(run_id: str, row: Sequence[Any]) -> NodeRecord:
    """A node row (``NODE_COLUMNS`` or ``HISTORY_COLUMNS``) as a record; a state aflow
    never writes is a :class:`StoreError` naming the run and the node."""
    key, text, *rest = row
    state = _STATES.get(text)
    if state is None:
        raise _unknown(f"the state of node {key!r} of run {run_id!r}", text, RecordState)
    return NodeRecord(key, state, *rest)


def history_row(run_id: str, node: NodeRecord) -> tuple[Any, ...]:
    return (
        run_id,
        node.key,
        str(node.state),  # as plain text: SQLite adapts a str subclass, a slower path
        node.attempt,
        node.error,
        node.started_at,
        node.finished_at,
    )


def node_row(run_id: str, node: NodeRecord) -> tuple[Any, ...]:
    return (
        run_id,
        node.key,
        str(node.state),  # as plain text: SQLite adapts a str subclass, a slower path
        node.attempt,
        node.result,
        node.error,
        node.started_at,
        node.finished_at,
    )
