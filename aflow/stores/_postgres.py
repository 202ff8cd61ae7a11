"""The PostgreSQL store, for several processes sharing runs (asyncpg lives here only)."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any, final

import anyio

from .._exceptions import RunNotFound, StoreError
from ._base import SCHEMA_VERSION, NodeRecord, RunRecord
from ._sql import (
    HISTORY_COLUMNS,
    INSERT_HISTORY,
    NODE_COLUMNS,
    RUN_COLUMNS,
    UNFINISHED,
    UPSERT_NODE,
    history_row,
    migrations,
    node_row,
    run_from_row,
    run_row,
)

__all__ = ["PostgresStore"]

_PLACEHOLDERS = ", ".join(f"${i}" for i in range(1, 17))
#: PostgreSQL allows 32,767 parameters per statement; a node row has 8.
_ROWS_PER_STATEMENT = 4000


@functools.lru_cache(maxsize=64)
def _upsert(n: int) -> str:
    groups = ("(" + ", ".join(f"${8 * row + col}" for col in range(1, 9)) + ")" for row in range(n))
    return UPSERT_NODE.format(rows=", ".join(groups))


@functools.lru_cache(maxsize=16)
def _history(n: int) -> str:
    groups = ("(" + ", ".join(f"${7 * row + col}" for col in range(1, 8)) + ")" for row in range(n))
    return INSERT_HISTORY.format(rows=", ".join(groups))


@final
class PostgresStore:
    """Runs in PostgreSQL (``postgresql://user@host:port/db``); needs ``aflow[postgres]``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: Any = None

    def __repr__(self) -> str:
        return f"<PostgresStore {self.url.split('@')[-1]!r}>"

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            import asyncpg
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise StoreError(
                "PostgreSQL stores need asyncpg: pip install 'aflow[postgres]'"
            ) from exc
        try:
            pool = await asyncpg.create_pool(self.url, min_size=1, max_size=4)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to {self!r}: {exc}") from exc
        try:
            async with pool.acquire() as conn, conn.transaction():
                # one process creates the schema at a time
                await conn.execute("SELECT pg_advisory_xact_lock(727274)")
                exists = await conn.fetchval("SELECT to_regclass('aflow_meta') IS NOT NULL")
                version = 0
                if exists:
                    row = await conn.fetchval(
                        "SELECT value FROM aflow_meta WHERE key = 'schema_version'"
                    )
                    version = int(row) if row else 0
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self!r} has schema {version}, newer than this aflow's "
                        f"{SCHEMA_VERSION}: upgrade aflow"
                    )
                for target, statements in migrations("postgres", version):
                    async with conn.transaction():  # a savepoint per version
                        for statement in statements:
                            await conn.execute(statement)
                        await conn.execute(
                            "INSERT INTO aflow_meta (key, value) VALUES ('schema_version', $1) "
                            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                            str(target),
                        )
        except BaseException:  # cancellation too: close the pool (shielded), then go on
            with anyio.CancelScope(shield=True):
                await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _p(self) -> Any:
        if self._pool is None:
            raise StoreError(f"the store {self!r} is not open: await store.open() first")
        return self._pool

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        async with self._p().acquire() as conn:
            inserted = await conn.fetchval(
                f"INSERT INTO aflow_runs ({RUN_COLUMNS}) VALUES ({_PLACEHOLDERS}) "
                "ON CONFLICT (idempotency_key) DO NOTHING RETURNING run_id",
                *run_row(record),
            )
            if inserted is not None:
                return record, True
            row = await conn.fetchrow(
                f"SELECT {RUN_COLUMNS} FROM aflow_runs WHERE idempotency_key = $1",
                record.idempotency_key,
            )
            return run_from_row(tuple(row)), False

    async def get_run(self, run_id: str) -> RunRecord:
        row = await self._p().fetchrow(
            f"SELECT {RUN_COLUMNS} FROM aflow_runs WHERE run_id = $1", run_id
        )
        if row is None:
            raise RunNotFound(run_id, repr(self))
        return run_from_row(tuple(row))

    async def list_runs(self, status: str | None = None, limit: int = 100) -> list[RunRecord]:
        if status is None:
            rows = await self._p().fetch(
                f"SELECT {RUN_COLUMNS} FROM aflow_runs ORDER BY created_at DESC LIMIT $1", limit
            )
        else:
            rows = await self._p().fetch(
                f"SELECT {RUN_COLUMNS} FROM aflow_runs WHERE status = $1 "
                "ORDER BY created_at DESC LIMIT $2",
                status,
                limit,
            )
        return [run_from_row(tuple(row)) for row in rows]

    async def set_status(
        self,
        run_id: str,
        status: str,
        *,
        result: str | None = None,
        error: str | None = None,
        ended_at: float | None = None,
    ) -> None:
        done = await self._p().execute(
            "UPDATE aflow_runs SET status = $1, updated_at = $2, "
            "result = COALESCE($3, result), error = COALESCE($4, error), "
            "ended_at = COALESCE($5, ended_at) WHERE run_id = $6",
            status,
            time.time(),
            result,
            error,
            ended_at,
            run_id,
        )
        if done.endswith(" 0"):
            raise RunNotFound(run_id, repr(self))

    async def write_nodes(
        self, run_id: str, nodes: Sequence[NodeRecord], superseded: Sequence[NodeRecord] = ()
    ) -> None:
        if not nodes:
            return
        import asyncpg

        try:
            if len(nodes) <= _ROWS_PER_STATEMENT and not superseded:  # one round trip
                rows = [value for node in nodes for value in node_row(run_id, node)]
                await self._p().execute(_upsert(len(nodes)), *rows)
                return
            async with self._p().acquire() as conn, conn.transaction():
                for start in range(0, len(superseded), _ROWS_PER_STATEMENT):
                    part = superseded[start : start + _ROWS_PER_STATEMENT]
                    values = [v for node in part for v in history_row(run_id, node)]
                    await conn.execute(_history(len(part)), *values)
                for start in range(0, len(nodes), _ROWS_PER_STATEMENT):
                    chunk = nodes[start : start + _ROWS_PER_STATEMENT]
                    rows = [value for node in chunk for value in node_row(run_id, node)]
                    await conn.execute(_upsert(len(chunk)), *rows)
        except asyncpg.ForeignKeyViolationError as exc:
            raise RunNotFound(run_id, repr(self)) from exc

    async def claim(self, run_id: str, owner: str, lease: float) -> bool:
        now = time.time()
        done = await self._p().execute(
            "UPDATE aflow_runs SET owner = $1, heartbeat = $2 WHERE run_id = $3 AND "
            "(owner IS NULL OR owner = $1 OR heartbeat IS NULL OR heartbeat < $4)",
            owner,
            now + lease,
            run_id,
            now,
        )
        if done.endswith(" 0"):
            await self.get_run(run_id)  # RunNotFound, or owned by a live process
            return False
        return True

    async def start_run(self, run_id: str, status: str, error: str | None) -> str:
        await self._p().execute(
            "UPDATE aflow_runs SET status = $1, updated_at = $2, error = COALESCE($3, error) "
            "WHERE run_id = $4 AND status <> 'cancelling'",
            status,
            time.time(),
            error,
            run_id,
        )
        return (await self.get_run(run_id)).status

    async def request_cancel(self, run_id: str, reason: str) -> str:
        await self._p().execute(
            "UPDATE aflow_runs SET status = 'cancelling', updated_at = $2, error = CASE "
            "WHEN status = 'reverting' AND error IS NOT NULL THEN error ELSE $1 END "
            "WHERE run_id = $3 AND status = ANY($4::text[])",
            reason,
            time.time(),
            run_id,
            list(UNFINISHED),
        )
        return (await self.get_run(run_id)).status

    async def heartbeat(self, owner: str, lease: float, run_ids: Sequence[str]) -> dict[str, str]:
        if not run_ids:
            return {}
        rows = await self._p().fetch(
            "UPDATE aflow_runs SET heartbeat = $1 WHERE run_id = ANY($2::text[]) AND owner = $3 "
            "AND status = ANY($4::text[]) RETURNING run_id, status",
            time.time() + lease,
            list(run_ids),
            owner,
            list(UNFINISHED),
        )
        return {row[0]: row[1] for row in rows}

    async def load_nodes(self, run_id: str) -> dict[str, NodeRecord]:
        await self.get_run(run_id)
        rows = await self._p().fetch(
            f"SELECT {NODE_COLUMNS} FROM aflow_nodes WHERE run_id = $1", run_id
        )
        return {row[0]: NodeRecord(*tuple(row)) for row in rows}

    async def load_history(self, run_id: str) -> list[NodeRecord]:
        await self.get_run(run_id)
        rows = await self._p().fetch(
            f"SELECT {HISTORY_COLUMNS} FROM aflow_transitions WHERE run_id = $1 ORDER BY seq",
            run_id,
        )
        return [NodeRecord(*tuple(row)) for row in rows]
