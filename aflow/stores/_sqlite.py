"""The embedded SQLite store (aiosqlite is imported here and nowhere else).

WAL journal with ``synchronous=NORMAL``: a committed batch survives the
process being killed; a power cut may lose the last batches (they re-run
on resume, like any node not recorded as done).

Several processes may share one file. Every statement of the store's
connection runs under its lock and is finished (its rows fetched) before the
lock is released, so no read transaction is ever left open; a transaction
that writes begins ``IMMEDIATE``. A write therefore waits for another
process's write (up to the busy timeout) instead of failing at once, as it
does when a read transaction begun earlier has to be upgraded.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, final

import aiosqlite
import anyio

from .._exceptions import RunExists, RunNotFound, StoreError
from ._base import SCHEMA_VERSION, NodeRecord, RunRecord, StoredRunStatus
from ._sql import (
    CANCEL_SET,
    CANCELLABLE,
    CLAIM_FRESH_SET,
    CLAIM_SET,
    HISTORY_COLUMNS,
    INSERT_HISTORY,
    NODE_COLUMNS,
    NOT_CANCELLING,
    RUN_COLUMNS,
    UNFINISHED,
    UPSERT_NODE,
    history_row,
    migrations,
    node_from_row,
    node_row,
    run_from_row,
    run_row,
    status_of,
)

__all__ = ["SQLiteStore", "expected_schema", "schema_problems", "shape_of"]

_CLAIM_SET = CLAIM_SET.format(owner=":owner", until=":until")
_CLAIM_FRESH_SET = CLAIM_FRESH_SET.format(owner=":owner", until=":until")
_CANCEL_SET = CANCEL_SET.format(now="?", reason="?")

#: SQLite allows 32,766 parameters per statement; a node row has 8.
_ROWS_PER_STATEMENT = 4000
#: How long a statement waits for another connection's lock, unless told otherwise.
DEFAULT_BUSY_TIMEOUT = 30.0

#: A schema's shape: (``table`` or ``trigger``, name) -> the table's columns.
Shape = Mapping[tuple[str, str], frozenset[str]]

_SHAPE_QUERY = (
    "SELECT m.type, m.name, p.name FROM sqlite_master AS m "
    "LEFT JOIN pragma_table_info(m.name) AS p WHERE m.type IN ('table', 'trigger')"
)


@functools.cache
def expected_schema(version: int) -> Shape:
    """The tables, columns and triggers of schema ``version``, found by running its
    migrations on an empty in-memory database (so they cannot drift from them)."""
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        for target, statements in migrations("sqlite", 0):
            if target <= version:
                for statement in statements:
                    db.execute(statement)
        return shape_of(db.execute(_SHAPE_QUERY).fetchall())


def schema_problems(expected: Shape, found: Shape) -> list[str]:
    """What ``found`` lacks of ``expected`` (anything more is allowed)."""
    problems = []
    for (kind, name), columns in sorted(expected.items()):
        have = found.get((kind, name))
        if have is None:
            problems.append(f"no {kind} {name}")
            continue
        problems.extend(f"no column {name}.{column}" for column in sorted(columns - have))
    return problems


def shape_of(rows: Iterable[Sequence[Any]]) -> Shape:
    """A schema's shape from ``(kind, name, column or None)`` rows."""
    shape: dict[tuple[str, str], set[str]] = {}
    for kind, name, column in rows:
        shape.setdefault((kind, name), set()).update([column] if column else [])
    return {key: frozenset(columns) for key, columns in shape.items()}


def _missing(path: str) -> bool:
    """True if nothing is at ``path`` (a folder without search permission: False, and
    SQLite tells what is wrong when it opens the file)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


@contextlib.asynccontextmanager
async def _transaction(db: aiosqlite.Connection) -> AsyncIterator[None]:
    """BEGIN IMMEDIATE ... COMMIT; on any error (cancellation too) a shielded ROLLBACK,
    so the connection is never left inside a transaction; the error goes on."""
    try:
        await db.execute("BEGIN IMMEDIATE")
        yield
        await db.execute("COMMIT")
    except BaseException:
        # Queued after the BEGIN even when a cancel interrupted the wait for it (the
        # connection's thread runs statements in order), so it cannot be skipped.
        with anyio.CancelScope(shield=True):
            try:
                await db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # no transaction was open (BEGIN or COMMIT failed): the error goes on
        raise


@functools.lru_cache(maxsize=64)
def _upsert(n: int) -> str:
    return UPSERT_NODE.format(rows=", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * n))


@functools.lru_cache(maxsize=16)
def _history(n: int) -> str:
    return INSERT_HISTORY.format(rows=", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * n))


@final
class SQLiteStore:
    """Runs in one SQLite file (``sqlite:///runs.db``).

    ``busy_timeout``: seconds a statement waits for another process's lock
    before it fails. ``read_only``: never create, migrate or write the file (it
    must hold an aflow store of the current schema; SQLite may still create its
    -wal and -shm files next to it, to read it). ``create=False``: a missing
    file is an error instead of a new store.
    """

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        read_only: bool = False,
        create: bool = True,
    ) -> None:
        if not busy_timeout >= 0:
            raise ValueError(f"busy_timeout must be a number of seconds >= 0, got {busy_timeout!r}")
        self.path = path
        self.url = f"sqlite:///{path}"
        self.busy_timeout = busy_timeout
        self.read_only = read_only
        self._create = create and not read_only
        self._file = os.path.abspath(path)
        self._db: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r}>"

    # --- errors ---------------------------------------------------------------------------

    def _error(self, exc: Exception, doing: str) -> StoreError:
        """The StoreError for a driver error: what happened to which file, and what to do."""
        where = f"the SQLite store {self._file}"
        why = f"{exc}; while {doing}"
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            text = (
                f"{where} stayed locked by another connection for over "
                f"{self.busy_timeout:g} s ({why}): let the process holding it finish (a long "
                "transaction, an open sqlite3 shell), or wait longer: "
                f"sqlite:///{self.path}?busy_timeout=120"
            )
        elif code == sqlite3.SQLITE_READONLY:
            text = (
                f"{where} cannot be written ({why}): make the file and its folder (which "
                "holds its -wal and -shm files) writable by this user, or only read it "
                "(aflow runs, aflow show)"
            )
        elif code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            text = (
                f"{where} is damaged or is not an SQLite database ({why}): aflow leaves it "
                "as it is; restore it from a backup, or give another path"
            )
        elif code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH):
            text = (
                f"cannot open {where} ({why}): check that the file and its folder "
                f"{os.path.dirname(self._file)} exist, and that this user may read them and "
                "create files in the folder (SQLite keeps the -wal and -shm files there)"
            )
        elif code == sqlite3.SQLITE_FULL:
            text = f"the disk holding {where} is full ({why}): free some space"
        elif code == sqlite3.SQLITE_IOERR:
            text = (
                f"{where} could not be read or written ({why}): check the disk and the "
                "file system it is on"
            )
        elif "no such table" in str(exc) or "no such column" in str(exc):
            text = (
                f"{where} lacks part of aflow's schema ({why}): something other than aflow "
                "changed it; restore it from a backup, or use a new file"
            )
        else:
            text = f"{where} failed ({type(exc).__name__}: {why})"
        return StoreError(text)

    # --- opening --------------------------------------------------------------------------

    def _uri(self, mode: str) -> str:
        return f"{pathlib.Path(self._file).as_uri()}?mode={mode}"

    async def open(self) -> None:
        if self._db is not None:
            return
        # Checked and migrated on a connection of its own in a worker thread: it may
        # wait for other processes, and a failed aiosqlite connect leaves its thread
        # to report on a loop that may be closed by then ("Event loop is closed").
        await anyio.to_thread.run_sync(self._prepare)
        mode = "ro" if self.read_only else "rw"  # the file exists now: never create it here
        try:
            # shielded: aiosqlite's thread opens the connection of a cancelled connect
            # anyway, and nothing would close it (a ResourceWarning on 3.13)
            with anyio.CancelScope(shield=True):
                db = await aiosqlite.connect(
                    self._uri(mode), uri=True, isolation_level=None, timeout=self.busy_timeout
                )
        except sqlite3.Error as exc:
            raise self._error(exc, "opening it") from exc
        try:
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA foreign_keys=ON")
            if self.read_only:
                await db.execute("PRAGMA query_only=ON")
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await db.close()
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc, "opening it") from exc
            raise
        self._db = db

    def _prepare(self) -> None:
        """Check that the file is an aflow store this aflow can use, changing nothing;
        then, unless read-only, switch it to WAL and bring it to the current schema."""
        if _missing(self._file):
            if not self._create:
                raise StoreError(
                    f"no store at {self._file}: check the path (the --store URL or "
                    "$AFLOW_STORE); a store is created by the first run written to it"
                )
            folder = os.path.dirname(self._file)
            if not os.path.isdir(folder):
                raise StoreError(
                    f"cannot create the SQLite store {self._file}: the folder {folder} "
                    "does not exist; create it first, or give another path"
                )
        elif os.path.isdir(self._file):
            raise StoreError(f"the SQLite store {self._file} is a folder: give a file's path")
        doing = "opening it"
        try:
            db = sqlite3.connect(
                self._uri("ro" if self.read_only else "rwc" if self._create else "rw"),
                uri=True,
                isolation_level=None,
                timeout=self.busy_timeout,
            )
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc
        try:
            db.execute("BEGIN")  # one snapshot for all its reads: another process may migrate
            try:
                version = self._inspect(db)  # reads only: a file we refuse is left untouched
            finally:
                if db.in_transaction:  # (an error may have ended it)
                    db.execute("ROLLBACK")
            if self.read_only:
                if version == 0:
                    raise StoreError(
                        f"no store at {self._file}: the file is an empty SQLite database "
                        "(a store is created by the first run written to it)"
                    )
                if version < SCHEMA_VERSION:
                    raise StoreError(
                        f"the SQLite store {self._file} has schema {version}, older than this "
                        f"aflow's {SCHEMA_VERSION}, and is opened read-only: open it once "
                        "for writing (aflow run, aflow resume, or a Runtime) to migrate it"
                    )
                return
            ((mode,),) = db.execute("PRAGMA journal_mode").fetchall()
            if mode != "wal":
                self._wal(db)
            doing = f"bringing it to schema {SCHEMA_VERSION}"
            db.execute("BEGIN IMMEDIATE")  # one process migrates at a time
            try:
                version = self._inspect(db)  # again: another process may have migrated it
                steps = migrations("sqlite", version)
                for target, statements in steps:
                    for statement in statements:
                        db.execute(statement)
                    db.execute(
                        "INSERT OR REPLACE INTO aflow_meta (key, value) "
                        "VALUES ('schema_version', ?)",
                        (str(target),),
                    )
                if steps:
                    self._inspect(db)
                    db.execute("COMMIT")
                else:  # a write that changes nothing: a read-only file fails here, not later
                    db.execute("UPDATE aflow_meta SET value = value WHERE key = 'schema_version'")
                    db.execute("ROLLBACK")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc
        finally:
            db.close()

    def _inspect(self, db: sqlite3.Connection) -> int:
        """The file's schema version, once its tables, columns and triggers are those of
        that version (a StoreError otherwise); 0 for an empty database. Called in a
        transaction: its reads must see one snapshot."""
        found = shape_of(db.execute(_SHAPE_QUERY).fetchall())
        tables = sorted(name for kind, name in found if kind == "table")
        if not tables:
            return 0
        if "aflow_meta" not in tables:
            raise StoreError(
                f"{self._file} is an SQLite database of something else "
                f"(tables: {', '.join(tables[:5])}); aflow leaves it alone: give another path"
            )
        # fetchall: a statement left unfinished would hold a read transaction open
        rows = db.execute("SELECT value FROM aflow_meta WHERE key = 'schema_version'").fetchall()
        row = rows[0] if rows else None
        try:
            version = int(row[0]) if row is not None else -1
        except (TypeError, ValueError):
            version = -1
        if version < 1:
            raise StoreError(
                f"the SQLite store {self._file} has no valid schema version "
                f"({'none' if row is None else repr(row[0])}): something other than aflow "
                "changed it; restore it from a backup, or use a new file"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the SQLite store {self._file} has schema {version}, newer than this "
                f"aflow's {SCHEMA_VERSION}: upgrade aflow"
            )
        problems = schema_problems(expected_schema(version), found)
        if problems:
            raise StoreError(
                f"the SQLite store {self._file} lacks part of aflow's schema {version} "
                f"({'; '.join(problems)}): something other than aflow changed it; "
                "restore it from a backup, or use a new file"
            )
        return version

    def _wal(self, db: sqlite3.Connection) -> None:
        """Switch to WAL. The switch needs the file to itself and SQLite does not wait
        for that (no busy handler), so processes opening one store at once retry, for
        up to the busy timeout."""
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.005
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL").fetchall()
                return
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)  # a worker thread's backoff, not the event loop's
            delay = min(delay * 2, 0.5)

    async def close(self) -> None:
        async with self._lock:  # after the statement or transaction under way
            db, self._db = self._db, None
        if db is not None:
            try:
                await db.close()
            except sqlite3.Error as exc:
                raise self._error(exc, "closing it") from exc

    # --- statements -----------------------------------------------------------------------

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(f"the store {self.url} is not open: await store.open() first")
        return self._db

    async def _fetch(self, doing: str, sql: str, args: Sequence[Any]) -> list[Any]:
        """All rows of one statement, fetched in one go under the lock."""
        async with self._lock:
            db = self._conn()
            try:
                return list(await db.execute_fetchall(sql, args))
            except sqlite3.Error as exc:
                raise self._error(exc, doing) from exc

    async def _change(self, doing: str, sql: str, args: Sequence[Any] | Mapping[str, Any]) -> int:
        """Run one statement that writes (a transaction of its own); the rows it changed."""
        async with self._lock:
            db = self._conn()
            try:
                cursor = await db.execute(sql, args)
            except sqlite3.Error as exc:
                raise self._error(exc, doing) from exc
            return cursor.rowcount

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        async with self._lock:
            db = self._conn()
            try:
                async with _transaction(db):
                    if record.idempotency_key is not None:
                        rows = await db.execute_fetchall(
                            f"SELECT {RUN_COLUMNS} FROM aflow_runs WHERE idempotency_key = ?",
                            (record.idempotency_key,),
                        )
                        for row in rows:  # one at most: the key is unique
                            return run_from_row(row), False
                    await db.execute(
                        f"INSERT INTO aflow_runs ({RUN_COLUMNS}) VALUES "
                        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        run_row(record),
                    )
            except sqlite3.IntegrityError as exc:
                if "aflow_runs.run_id" in str(exc):
                    raise RunExists(record.run_id, self.url) from exc
                raise self._error(exc, f"creating run {record.run_id}") from exc
            except sqlite3.Error as exc:
                raise self._error(exc, f"creating run {record.run_id}") from exc
        return record, True

    async def get_run(self, run_id: str) -> RunRecord:
        rows = await self._fetch(
            "reading a run", f"SELECT {RUN_COLUMNS} FROM aflow_runs WHERE run_id = ?", (run_id,)
        )
        if not rows:
            raise RunNotFound(run_id, self.url)
        return run_from_row(rows[0])

    async def list_runs(
        self, status: StoredRunStatus | None = None, limit: int = 100
    ) -> list[RunRecord]:
        sql = f"SELECT {RUN_COLUMNS} FROM aflow_runs"
        args: tuple[Any, ...] = ()
        if status is not None:
            sql += " WHERE status = ?"
            args = (status,)
        sql += " ORDER BY created_at DESC LIMIT ?"
        return [run_from_row(row) for row in await self._fetch("listing runs", sql, (*args, limit))]

    async def set_status(
        self,
        run_id: str,
        status: StoredRunStatus,
        *,
        result: str | None = None,
        error: str | None = None,
        ended_at: float | None = None,
    ) -> None:
        changed = await self._change(
            "recording a run's status",
            "UPDATE aflow_runs SET status = ?, updated_at = ?, "
            "result = COALESCE(?, result), error = COALESCE(?, error), "
            "ended_at = COALESCE(?, ended_at) WHERE run_id = ?",
            (status, time.time(), result, error, ended_at, run_id),
        )
        if changed == 0:
            raise RunNotFound(run_id, self.url)

    async def write_nodes(
        self, run_id: str, nodes: Sequence[NodeRecord], superseded: Sequence[NodeRecord] = ()
    ) -> None:
        if not nodes:
            return
        async with self._lock:
            db = self._conn()
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
            except sqlite3.IntegrityError as exc:  # the run's row is missing
                raise RunNotFound(run_id, self.url) from exc
            except sqlite3.Error as exc:
                raise self._error(exc, f"writing a checkpoint of run {run_id}") from exc

    async def claim(
        self,
        run_id: str,
        owner: str,
        lease: float,
        *,
        now: float | None = None,
        fresh: bool = False,
    ) -> bool:
        now = time.time() if now is None else now
        claimed = await self._change(
            "claiming a run",
            f"UPDATE aflow_runs SET {_CLAIM_FRESH_SET if fresh else _CLAIM_SET} "
            "WHERE run_id = :run AND "
            "(owner IS NULL OR owner = :owner OR heartbeat IS NULL OR heartbeat < :now)",
            {"owner": owner, "until": now + lease, "run": run_id, "now": now},
        )
        if not claimed:
            await self.get_run(run_id)  # RunNotFound, or owned by a live process
        return claimed == 1

    async def release(self, run_id: str, owner: str) -> bool:
        marks = ", ".join("?" * len(CANCELLABLE))
        released = await self._change(
            "letting go of a run",
            "UPDATE aflow_runs SET owner = NULL, heartbeat = NULL WHERE run_id = ? AND "
            f"owner = ? AND status IN ({marks})",
            (run_id, owner, *CANCELLABLE),
        )
        return released == 1

    async def start_run(
        self, run_id: str, status: StoredRunStatus, error: str | None
    ) -> StoredRunStatus:
        await self._change(
            "starting a run",
            "UPDATE aflow_runs SET status = ?, updated_at = ?, error = COALESCE(?, error) "
            f"WHERE run_id = ? AND {NOT_CANCELLING}",
            (status, time.time(), error, run_id),
        )
        return (await self.get_run(run_id)).status

    async def request_cancel(self, run_id: str, reason: str) -> StoredRunStatus:
        marks = ", ".join("?" * len(CANCELLABLE))
        await self._change(
            "asking a run to cancel",
            f"UPDATE aflow_runs SET {_CANCEL_SET} WHERE run_id = ? AND status IN ({marks})",
            (time.time(), reason, run_id, *CANCELLABLE),
        )
        return (await self.get_run(run_id)).status

    async def heartbeat(
        self, owner: str, lease: float, run_ids: Sequence[str], *, now: float | None = None
    ) -> dict[str, StoredRunStatus]:
        if not run_ids:
            return {}
        until = (time.time() if now is None else now) + lease
        marks = ", ".join("?" * len(UNFINISHED))
        rows = await self._fetch(  # an UPDATE ... RETURNING: one statement, fetched at once
            "renewing leases",
            f"UPDATE aflow_runs SET heartbeat = ? WHERE run_id IN "
            f"(SELECT value FROM json_each(?)) AND owner = ? AND status IN ({marks}) "
            "RETURNING run_id, status",
            (until, json.dumps(list(run_ids)), owner, *UNFINISHED),
        )
        return {row[0]: status_of(row[0], row[1]) for row in rows}

    async def load_nodes(self, run_id: str) -> dict[str, NodeRecord]:
        await self.get_run(run_id)
        rows = await self._fetch(
            "reading a run's nodes",
            f"SELECT {NODE_COLUMNS} FROM aflow_nodes WHERE run_id = ?",
            (run_id,),
        )
        return {row[0]: node_from_row(run_id, row) for row in rows}

    async def load_history(self, run_id: str) -> list[NodeRecord]:
        await self.get_run(run_id)
        rows = await self._fetch(
            "reading a run's history",
            f"SELECT {HISTORY_COLUMNS} FROM aflow_transitions WHERE run_id = ? ORDER BY seq",
            (run_id,),
        )
        return [node_from_row(run_id, row) for row in rows]
