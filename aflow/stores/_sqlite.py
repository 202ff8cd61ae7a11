"""The embedded SQLite store (aiosqlite is imported here and nowhere else).

WAL journal with ``synchronous=NORMAL``: a committed batch survives the
process being killed; a power cut may lose the last batches (they re-run
on resume, like any node not recorded as done).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, final

import aiosqlite
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

__all__ = ["SQLiteStore"]

#: SQLite allows 32,766 parameters per statement; a node row has 8.
_ROWS_PER_STATEMENT = 4000


@contextlib.asynccontextmanager
async def _transaction(db: aiosqlite.Connection) -> AsyncIterator[None]:
    """BEGIN IMMEDIATE ... COMMIT; on any error (cancellation too) a shielded ROLLBACK,
    so the connection is never left inside a transaction; the error goes on."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with anyio.CancelScope(shield=True):
            await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")


@contextlib.asynccontextmanager
async def _closing_on_error(db: aiosqlite.Connection) -> AsyncIterator[None]:
    """Close ``db`` (shielded) if the block fails, cancellation included; the error goes on."""
    try:
        yield
    except BaseException:
        with anyio.CancelScope(shield=True):
            await db.close()
        raise


@functools.lru_cache(maxsize=64)
def _upsert(n: int) -> str:
    return UPSERT_NODE.format(rows=", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * n))


@functools.lru_cache(maxsize=16)
def _history(n: int) -> str:
    return INSERT_HISTORY.format(rows=", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * n))


@final
class SQLiteStore:
    """Runs in one SQLite file (``sqlite:///runs.db``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self._db: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r}>"

    async def open(self) -> None:
        if self._db is not None:
            return
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None, timeout=30)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path!r}: {exc}") from exc
        async with _closing_on_error(db):
            await self._prepare(db)
        self._db = db

    async def _prepare(self, db: aiosqlite.Connection) -> None:
        try:
            async with db.execute("SELECT name FROM sqlite_master WHERE type='table'") as cursor:
                tables = {row[0] for row in await cursor.fetchall()}
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path!r} is not an aflow store (not a SQLite database: {exc})"
            ) from exc
        if tables and "aflow_meta" not in tables:
            raise StoreError(
                f"{self.path!r} is a SQLite database of something else "
                f"(tables: {', '.join(sorted(tables)[:5])}); aflow leaves it alone"
            )
        # only now that the file is ours (or empty) do settings that change it
        await self._wal(db)
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA foreign_keys=ON")
        version = await self._version(db) if "aflow_meta" in tables else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path!r} has schema {version}, newer than this aflow's "
                f"{SCHEMA_VERSION}: upgrade aflow"
            )
        for target, statements in migrations("sqlite", version):
            try:
                async with _transaction(db):  # BEGIN IMMEDIATE: one process migrates at a time
                    tables = await self._tables(db)
                    if "aflow_meta" in tables and await self._version(db) >= target:
                        continue  # another process got there first
                    for statement in statements:
                        await db.execute(statement)
                    await db.execute(
                        "INSERT OR REPLACE INTO aflow_meta (key, value) "
                        "VALUES ('schema_version', ?)",
                        (str(target),),
                    )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot bring {self.path!r} to schema {target}: {exc}") from exc

    async def _wal(self, db: aiosqlite.Connection) -> None:
        """Switch to WAL. The switch needs the file to itself and SQLite does not wait
        for that (no busy timeout), so processes opening one store at once retry."""
        for delay in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0):
            try:
                await db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise StoreError(f"cannot open {self.path!r}: {exc}") from exc
                await anyio.sleep(delay)
        raise StoreError(f"{self.path!r} stayed locked while switching it to WAL")

    @staticmethod
    async def _tables(db: aiosqlite.Connection) -> set[str]:
        async with db.execute("SELECT name FROM sqlite_master WHERE type='table'") as cursor:
            return {row[0] for row in await cursor.fetchall()}

    @staticmethod
    async def _version(db: aiosqlite.Connection) -> int:
        async with db.execute("SELECT value FROM aflow_meta WHERE key='schema_version'") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(f"the store {self.url} is not open: await store.open() first")
        return self._db

    async def _fetchone(self, sql: str, args: Sequence[Any]) -> Any:
        async with self._conn().execute(sql, args) as cursor:
            return await cursor.fetchone()

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        db = self._conn()
        async with self._lock, _transaction(db):
            if record.idempotency_key is not None:
                row = await self._fetchone(
                    f"SELECT {RUN_COLUMNS} FROM aflow_runs WHERE idempotency_key = ?",
                    (record.idempotency_key,),
                )
                if row is not None:
                    return run_from_row(row), False
            await db.execute(
                f"INSERT INTO aflow_runs ({RUN_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                run_row(record),
            )
        return record, True

    async def get_run(self, run_id: str) -> RunRecord:
        row = await self._fetchone(
            f"SELECT {RUN_COLUMNS} FROM aflow_runs WHERE run_id = ?", (run_id,)
        )
        if row is None:
            raise RunNotFound(run_id, self.url)
        return run_from_row(row)

    async def list_runs(self, status: str | None = None, limit: int = 100) -> list[RunRecord]:
        sql = f"SELECT {RUN_COLUMNS} FROM aflow_runs"
        args: tuple[Any, ...] = ()
        if status is not None:
            sql += " WHERE status = ?"
            args = (status,)
        sql += " ORDER BY created_at DESC LIMIT ?"
        async with self._conn().execute(sql, (*args, limit)) as cursor:
            return [run_from_row(row) for row in await cursor.fetchall()]

    async def set_status(
        self,
        run_id: str,
        status: str,
        *,
        result: str | None = None,
        error: str | None = None,
        ended_at: float | None = None,
    ) -> None:
        async with self._lock:
            cursor = await self._conn().execute(
                "UPDATE aflow_runs SET status = ?, updated_at = ?, "
                "result = COALESCE(?, result), error = COALESCE(?, error), "
                "ended_at = COALESCE(?, ended_at) WHERE run_id = ?",
                (status, time.time(), result, error, ended_at, run_id),
            )
            if cursor.rowcount == 0:
                raise RunNotFound(run_id, self.url)

    async def write_nodes(
        self, run_id: str, nodes: Sequence[NodeRecord], superseded: Sequence[NodeRecord] = ()
    ) -> None:
        if not nodes:
            return
        db = self._conn()
        async with self._lock:
            try:
                if len(nodes) <= _ROWS_PER_STATEMENT and not superseded:
                    rows = [value for node in nodes for value in node_row(run_id, node)]
                    await db.execute(_upsert(len(nodes)), rows)  # atomic, one thread hop
                    return
                async with _transaction(db):
                    for start in range(0, len(superseded), _ROWS_PER_STATEMENT):
                        part = superseded[start : start + _ROWS_PER_STATEMENT]
                        values = [v for node in part for v in history_row(run_id, node)]
                        await db.execute(_history(len(part)), values)
                    for start in range(0, len(nodes), _ROWS_PER_STATEMENT):
                        chunk = nodes[start : start + _ROWS_PER_STATEMENT]
                        values = [v for node in chunk for v in node_row(run_id, node)]
                        await db.execute(_upsert(len(chunk)), values)
            except sqlite3.IntegrityError as exc:
                raise RunNotFound(run_id, self.url) from exc

    async def claim(self, run_id: str, owner: str, lease: float) -> bool:
        now = time.time()
        async with self._lock:
            cursor = await self._conn().execute(
                "UPDATE aflow_runs SET owner = ?, heartbeat = ? WHERE run_id = ? AND "
                "(owner IS NULL OR owner = ? OR heartbeat IS NULL OR heartbeat < ?)",
                (owner, now + lease, run_id, owner, now),
            )
            claimed = cursor.rowcount == 1
        if not claimed:
            await self.get_run(run_id)  # RunNotFound, or owned by a live process
        return claimed

    async def start_run(self, run_id: str, status: str, error: str | None) -> str:
        async with self._lock:
            await self._conn().execute(
                "UPDATE aflow_runs SET status = ?, updated_at = ?, error = COALESCE(?, error) "
                "WHERE run_id = ? AND status <> 'cancelling'",
                (status, time.time(), error, run_id),
            )
        return (await self.get_run(run_id)).status

    async def request_cancel(self, run_id: str, reason: str) -> str:
        marks = ", ".join("?" * len(UNFINISHED))
        async with self._lock:
            await self._conn().execute(
                "UPDATE aflow_runs SET status = 'cancelling', updated_at = ?, error = CASE "
                "WHEN status = 'reverting' AND error IS NOT NULL THEN error ELSE ? END "
                f"WHERE run_id = ? AND status IN ({marks})",
                (time.time(), reason, run_id, *UNFINISHED),
            )
        return (await self.get_run(run_id)).status

    async def heartbeat(self, owner: str, lease: float, run_ids: Sequence[str]) -> dict[str, str]:
        if not run_ids:
            return {}
        marks = ", ".join("?" * len(UNFINISHED))
        async with (
            self._lock,
            self._conn().execute(
                f"UPDATE aflow_runs SET heartbeat = ? WHERE run_id IN "
                f"(SELECT value FROM json_each(?)) AND owner = ? AND status IN ({marks}) "
                "RETURNING run_id, status",
                (time.time() + lease, json.dumps(list(run_ids)), owner, *UNFINISHED),
            ) as cursor,
        ):
            return {row[0]: row[1] for row in await cursor.fetchall()}

    async def load_nodes(self, run_id: str) -> dict[str, NodeRecord]:
        await self.get_run(run_id)
        async with self._conn().execute(
            f"SELECT {NODE_COLUMNS} FROM aflow_nodes WHERE run_id = ?", (run_id,)
        ) as cursor:
            return {row[0]: NodeRecord(*row) for row in await cursor.fetchall()}

    async def load_history(self, run_id: str) -> list[NodeRecord]:
        await self.get_run(run_id)
        async with self._conn().execute(
            f"SELECT {HISTORY_COLUMNS} FROM aflow_transitions WHERE run_id = ? ORDER BY seq",
            (run_id,),
        ) as cursor:
            return [NodeRecord(*row) for row in await cursor.fetchall()]
