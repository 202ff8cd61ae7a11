"""The PostgreSQL store, for several processes sharing runs (asyncpg lives here only)."""

from __future__ import annotations

import functools
import json
import time
import urllib.parse
from collections.abc import Sequence
from types import TracebackType
from typing import Any, final

import anyio

from .._exceptions import RunExists, RunNotFound, StoreError
from ._base import (
    ENDED,
    READABLE_SCHEMA,
    SCHEMA_VERSION,
    NodeRecord,
    RunRecord,
    SendOutcome,
    StoredRunStatus,
    WaitRecord,
)
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
from ._sqlite import expected_schema, schema_problems, shape_of

__all__ = ["PostgresStore"]

_CLAIM_SET = CLAIM_SET.format(owner="$1", until="$2")
_CLAIM_FRESH_SET = CLAIM_FRESH_SET.format(owner="$1", until="$2")
_CANCEL_SET = CANCEL_SET.format(now="$2", reason="$1")

_PLACEHOLDERS = ", ".join(f"${i}" for i in range(1, 19))
#: PostgreSQL allows 32,767 parameters per statement; a node row has 8.
_ROWS_PER_STATEMENT = 4000

#: The aflow tables' columns and the triggers, as (kind, name, column) rows.
_SHAPE_QUERY = (
    "SELECT 'table', table_name::text, column_name::text FROM information_schema.columns "
    "WHERE table_schema = current_schema() AND table_name LIKE 'aflow%' "
    "UNION ALL SELECT 'trigger', trigger_name::text, NULL FROM information_schema.triggers "
    "WHERE trigger_schema = current_schema()"
)


@functools.lru_cache(maxsize=64)
def _upsert(n: int) -> str:
    groups = ("(" + ", ".join(f"${8 * row + col}" for col in range(1, 9)) + ")" for row in range(n))
    return UPSERT_NODE.format(rows=", ".join(groups))


@functools.lru_cache(maxsize=16)
def _history(n: int) -> str:
    groups = ("(" + ", ".join(f"${7 * row + col}" for col in range(1, 8)) + ")" for row in range(n))
    return INSERT_HISTORY.format(rows=", ".join(groups))


def redacted(url: str) -> str:
    """``url`` without its password (in the user part or the query)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        name = user.partition(":")[0]
        netloc = f"{name}@{host}" if name else host
    query = urllib.parse.urlencode(
        [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "password"]
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


class _Errors:
    """Turns asyncpg's (and the network's) errors raised in its block into a StoreError
    naming the store's URL; other exceptions go on as they are."""

    __slots__ = ("doing", "store")

    def __init__(self, store: PostgresStore, doing: str) -> None:
        self.store = store
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, Exception):
            error = self.store._error(exc, self.doing)
            if error is not None:
                raise error from exc


@final
class PostgresStore:
    """Runs in PostgreSQL (``postgresql://user@host:port/db``); needs ``aflow[postgres]``.

    ``read_only``: only read (every transaction is read-only; the schema is neither
    created nor migrated). ``create=False``: a database without an aflow store is
    an error instead of getting a new one.
    """

    def __init__(self, url: str, *, read_only: bool = False, create: bool = True) -> None:
        self._dsn = url
        #: the URL without its password: it goes into messages and logs
        self.url = redacted(url)
        self.read_only = read_only
        self._create = create and not read_only
        #: the schema it was opened at (below the newest only when opened read-only)
        self._version = SCHEMA_VERSION
        self._pool: Any = None

    def __repr__(self) -> str:
        return f"<PostgresStore {self.url!r}>"

    def _error(self, exc: Exception, doing: str) -> StoreError | None:
        """The StoreError for a driver or network error (None for any other exception)."""
        import asyncpg

        where = f"the PostgreSQL store {self.url}"
        what = f"{type(exc).__name__}: {exc}"
        if isinstance(
            exc,
            OSError
            | TimeoutError
            | asyncpg.PostgresConnectionError
            | asyncpg.CannotConnectNowError
            | asyncpg.TooManyConnectionsError,
        ):
            text = (
                f"cannot reach {where} while {doing} ({what}): check that the server runs "
                "and accepts connections from here, and the host and port in the URL"
            )
        elif isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
            text = (
                f"{where} refused the login while {doing} ({what}): check the user and "
                "password (in the URL, PGPASSWORD or ~/.pgpass)"
            )
        elif isinstance(exc, asyncpg.InvalidCatalogNameError):
            text = (
                f"{where} names a database that does not exist ({what}): create it "
                "(createdb NAME) or fix the URL"
            )
        elif isinstance(
            exc,
            asyncpg.UndefinedTableError
            | asyncpg.UndefinedColumnError
            | asyncpg.UndefinedFunctionError,
        ):
            text = (
                f"{where} lacks part of aflow's schema while {doing} ({what}): something "
                "other than aflow changed it; restore it, or use a new database"
            )
        elif isinstance(exc, asyncpg.InsufficientPrivilegeError):
            text = (
                f"{where}: the user may not do this while {doing} ({what}): grant it the "
                "rights on the aflow_* tables, or use another user"
            )
        elif isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
            text = f"{where} is read-only here while {doing} ({what}): use a writable server"
        elif isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
            text = f"{where} failed while {doing}: {what}"
        else:
            return None
        return StoreError(text)

    def _errors(self, doing: str) -> _Errors:
        return _Errors(self, doing)

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            import asyncpg
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise StoreError(
                "PostgreSQL stores need asyncpg: pip install 'aflow[postgres]'"
            ) from exc
        settings = {"default_transaction_read_only": "on"} if self.read_only else None
        try:
            pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=4, server_settings=settings
            )
        except Exception as exc:  # a malformed URL too (asyncpg raises ValueError for some)
            error = self._error(exc, "connecting")
            raise error or StoreError(
                f"cannot connect to the PostgreSQL store {self.url} "
                f"({type(exc).__name__}: {exc}): check the URL"
            ) from exc
        try:
            with self._errors("opening it"):
                async with pool.acquire() as conn, conn.transaction():
                    await self._prepare(conn)
        except BaseException:  # cancellation too: close the pool (shielded), then go on
            with anyio.CancelScope(shield=True):
                await pool.close()
            raise
        self._pool = pool

    async def _prepare(self, conn: Any) -> None:
        """Check the schema, then (unless read-only) bring it to the current version; in
        the caller's transaction, so a store that is refused is left as it was."""
        if not self.read_only:  # one process creates or migrates the schema at a time
            await conn.execute("SELECT pg_advisory_xact_lock(727274)")
        version = await self._inspect(conn)
        if version == 0 and not self._create:
            raise StoreError(
                f"no store in {self.url}: check the URL; a store is created by the first "
                "run written to it"
            )
        if self.read_only:
            if version < READABLE_SCHEMA:
                raise StoreError(
                    f"the PostgreSQL store {self.url} has schema {version}, older than this "
                    f"aflow's {SCHEMA_VERSION}, and is opened read-only: open it once for "
                    "writing (aflow run, aflow resume, or a Runtime) to migrate it"
                )
            self._version = version
            return
        steps = migrations("postgres", version)
        for target, statements in steps:
            async with conn.transaction():  # a savepoint per version
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO aflow_meta (key, value) VALUES ('schema_version', $1) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    str(target),
                )
        if steps:
            await self._inspect(conn)

    async def _inspect(self, conn: Any) -> int:
        """The schema version, once the tables, columns and triggers are those of that
        version (a StoreError otherwise); 0 when there is no store."""
        if not await conn.fetchval("SELECT to_regclass('aflow_meta') IS NOT NULL"):
            return 0
        value = await conn.fetchval("SELECT value FROM aflow_meta WHERE key = 'schema_version'")
        try:
            version = int(value) if value is not None else -1
        except ValueError:
            version = -1
        if version < 1:
            raise StoreError(
                f"the PostgreSQL store {self.url} has no valid schema version "
                f"({'none' if value is None else repr(value)}): something other than aflow "
                "changed it; restore it, or use a new database"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the PostgreSQL store {self.url} has schema {version}, newer than this "
                f"aflow's {SCHEMA_VERSION}: upgrade aflow"
            )
        found = shape_of(tuple(row) for row in await conn.fetch(_SHAPE_QUERY))
        problems = schema_problems(expected_schema(version), found)
        if problems:
            raise StoreError(
                f"the PostgreSQL store {self.url} lacks part of aflow's schema {version} "
                f"({'; '.join(problems)}): something other than aflow changed it; "
                "restore it, or use a new database"
            )
        return version

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with self._errors("closing it"):
                await pool.close()

    def _p(self) -> Any:
        if self._pool is None:
            raise StoreError(f"the store {self.url} is not open: await store.open() first")
        return self._pool

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        import asyncpg

        with self._errors(f"creating run {record.run_id}"):
            async with self._p().acquire() as conn:
                try:
                    inserted = await conn.fetchval(
                        f"INSERT INTO aflow_runs ({RUN_COLUMNS}) VALUES ({_PLACEHOLDERS}) "
                        "ON CONFLICT (idempotency_key) DO NOTHING RETURNING run_id",
                        *run_row(record),
                    )
                except asyncpg.UniqueViolationError as exc:
                    if exc.constraint_name == "aflow_runs_pkey":
                        raise RunExists(record.run_id, self.url) from exc
                    raise
                if inserted is not None:
                    return record, True
                row = await conn.fetchrow(
                    f"SELECT {RUN_COLUMNS} FROM aflow_runs WHERE idempotency_key = $1",
                    record.idempotency_key,
                )
                return run_from_row(tuple(row)), False

    async def get_run(self, run_id: str) -> RunRecord:
        with self._errors("reading a run"):
            row = await self._p().fetchrow(
                f"SELECT {RUN_COLUMNS} FROM aflow_runs WHERE run_id = $1", run_id
            )
        if row is None:
            raise RunNotFound(run_id, self.url)
        return run_from_row(tuple(row))

    async def list_runs(
        self, status: StoredRunStatus | None = None, limit: int = 100
    ) -> list[RunRecord]:
        with self._errors("listing runs"):
            if status is None:
                rows = await self._p().fetch(
                    f"SELECT {RUN_COLUMNS} FROM aflow_runs ORDER BY created_at DESC LIMIT $1",
                    limit,
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
        status: StoredRunStatus,
        *,
        result: str | None = None,
        error: str | None = None,
        ended_at: float | None = None,
    ) -> None:
        with self._errors("recording a run's status"):
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
            raise RunNotFound(run_id, self.url)

    async def write_nodes(
        self, run_id: str, nodes: Sequence[NodeRecord], superseded: Sequence[NodeRecord] = ()
    ) -> None:
        if not nodes:
            return
        import asyncpg

        with self._errors(f"writing a checkpoint of run {run_id}"):
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
                raise RunNotFound(run_id, self.url) from exc

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
        with self._errors("claiming a run"):
            done = await self._p().execute(
                f"UPDATE aflow_runs SET {_CLAIM_FRESH_SET if fresh else _CLAIM_SET} "
                "WHERE run_id = $3 AND "
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

    async def release(self, run_id: str, owner: str) -> bool:
        with self._errors("letting go of a run"):
            done = await self._p().execute(
                "UPDATE aflow_runs SET owner = NULL, heartbeat = NULL WHERE run_id = $1 "
                "AND owner = $2 AND status = ANY($3::text[])",
                run_id,
                owner,
                list(CANCELLABLE),
            )
        return not done.endswith(" 0")

    async def start_run(
        self, run_id: str, status: StoredRunStatus, error: str | None
    ) -> StoredRunStatus:
        with self._errors("starting a run"):
            await self._p().execute(
                "UPDATE aflow_runs SET status = $1, updated_at = $2, error = COALESCE($3, error) "
                f"WHERE run_id = $4 AND {NOT_CANCELLING}",
                status,
                time.time(),
                error,
                run_id,
            )
        return (await self.get_run(run_id)).status

    async def request_cancel(self, run_id: str, reason: str) -> StoredRunStatus:
        with self._errors("asking a run to cancel"):
            await self._p().execute(
                f"UPDATE aflow_runs SET {_CANCEL_SET} "
                "WHERE run_id = $3 AND status = ANY($4::text[])",
                reason,
                time.time(),
                run_id,
                list(CANCELLABLE),
            )
        return (await self.get_run(run_id)).status

    async def heartbeat(
        self, owner: str, lease: float, run_ids: Sequence[str], *, now: float | None = None
    ) -> dict[str, StoredRunStatus]:
        if not run_ids:
            return {}
        with self._errors("renewing leases"):
            rows = await self._p().fetch(
                "UPDATE aflow_runs SET heartbeat = $1 WHERE run_id = ANY($2::text[]) "
                "AND owner = $3 AND status = ANY($4::text[]) RETURNING run_id, status",
                (time.time() if now is None else now) + lease,
                list(run_ids),
                owner,
                list(UNFINISHED),
            )
        return {row[0]: status_of(row[0], row[1]) for row in rows}

    async def load_nodes(self, run_id: str) -> dict[str, NodeRecord]:
        await self.get_run(run_id)
        with self._errors("reading a run's nodes"):
            rows = await self._p().fetch(
                f"SELECT {NODE_COLUMNS} FROM aflow_nodes WHERE run_id = $1", run_id
            )
        return {row[0]: node_from_row(run_id, tuple(row)) for row in rows}

    async def load_history(self, run_id: str) -> list[NodeRecord]:
        await self.get_run(run_id)
        with self._errors("reading a run's history"):
            rows = await self._p().fetch(
                f"SELECT {HISTORY_COLUMNS} FROM aflow_transitions WHERE run_id = $1 ORDER BY seq",
                run_id,
            )
        return [node_from_row(run_id, tuple(row)) for row in rows]

    # --- events, published values and waits (see Store) -----------------------------------

    async def run_of_key(self, idempotency_key: str) -> str | None:
        with self._errors("finding a run by its idempotency key"):
            found = await self._p().fetchval(
                "SELECT run_id FROM aflow_runs WHERE idempotency_key = $1", idempotency_key
            )
        return None if found is None else str(found)

    async def send_event(
        self, run_id: str, name: str, message_id: str, payload: str | None, now: float
    ) -> tuple[SendOutcome, StoredRunStatus]:
        with self._errors(f"sending event {name!r} to run {run_id}"):
            async with self._p().acquire() as conn, conn.transaction():
                text = await conn.fetchval(
                    "SELECT status FROM aflow_runs WHERE run_id = $1 FOR UPDATE", run_id
                )
                if text is None:
                    raise RunNotFound(run_id, self.url)
                status = status_of(run_id, text)
                if status in ENDED:
                    kept = await conn.fetchval(
                        "SELECT 1 FROM aflow_events WHERE run_id = $1 AND name = $2 "
                        "AND message_id = $3",
                        run_id,
                        name,
                        message_id,
                    )
                    return ("duplicate" if kept else "ended"), status
                added = await conn.fetchval(
                    "INSERT INTO aflow_events (run_id, name, message_id, payload, sent_at) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id, name, message_id) "
                    "DO NOTHING RETURNING seq",
                    run_id,
                    name,
                    message_id,
                    payload,
                    now,
                )
                if added is None:
                    return "duplicate", status
                await conn.execute(
                    "UPDATE aflow_runs SET wake_at = 0 WHERE run_id = $1 AND status = 'waiting' "
                    "AND waiting_for::jsonb ? $2",
                    run_id,
                    name,
                )
                return "kept", status

    async def take_event(
        self, run_id: str, name: str, consumer: str, sent_by: float | None = None
    ) -> tuple[bool, str | None]:
        with self._errors(f"taking event {name!r} of run {run_id}"):
            async with self._p().acquire() as conn, conn.transaction():
                mine = await conn.fetchrow(
                    "SELECT payload FROM aflow_events WHERE run_id = $1 AND name = $2 "
                    "AND consumed_by = $3 LIMIT 1",
                    run_id,
                    name,
                    consumer,
                )
                if mine is not None:
                    return True, mine[0]
                first = await conn.fetchrow(
                    "SELECT seq, payload FROM aflow_events WHERE run_id = $1 AND name = $2 "
                    "AND consumed_by IS NULL AND ($3::float8 IS NULL OR sent_at <= $3::float8) "
                    "ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
                    run_id,
                    name,
                    sent_by,
                )
                if first is None:
                    return False, None
                await conn.execute(
                    "UPDATE aflow_events SET consumed_by = $1 WHERE seq = $2", consumer, first[0]
                )
                return True, first[1]

    async def begin_wait(
        self, run_id: str, key: str, event: str | None, deadline: float | None, now: float
    ) -> float | None:
        import asyncpg

        with self._errors(f"recording wait {key!r} of run {run_id}"):
            try:
                async with self._p().acquire() as conn, conn.transaction():
                    await conn.execute(
                        "INSERT INTO aflow_waits (run_id, key, event, deadline, started_at) "
                        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id, key) DO NOTHING",
                        run_id,
                        key,
                        event,
                        deadline,
                        now,
                    )
                    stored = await conn.fetchval(
                        "SELECT deadline FROM aflow_waits WHERE run_id = $1 AND key = $2",
                        run_id,
                        key,
                    )
            except asyncpg.ForeignKeyViolationError as exc:
                raise RunNotFound(run_id, self.url) from exc
        return None if stored is None else float(stored)

    async def load_waits(self, run_id: str) -> list[WaitRecord]:
        with self._errors("reading a run's waits"):
            rows = await self._p().fetch(
                "SELECT key, event, deadline, started_at FROM aflow_waits WHERE run_id = $1 "
                "ORDER BY started_at, key",
                run_id,
            )
        return [WaitRecord(*tuple(row)) for row in rows]

    async def park_waiting(
        self, run_id: str, owner: str, wake_at: float | None, events: Sequence[str], now: float
    ) -> bool:
        names = json.dumps(list(events))
        with self._errors("recording a waiting run"):
            async with self._p().acquire() as conn, conn.transaction():
                # The row first, as send_event takes it: an event sent meanwhile is
                # committed before the UPDATE below begins, so its EXISTS sees it (in one
                # statement, its snapshot predates that commit and the run would wait on
                # for an event it has; found on PostgreSQL only, under load).
                await conn.execute("SELECT 1 FROM aflow_runs WHERE run_id = $1 FOR UPDATE", run_id)
                done = await conn.execute(
                    "UPDATE aflow_runs SET status = 'waiting', updated_at = $1, owner = NULL, "
                    "heartbeat = NULL, waiting_for = $2::text, wake_at = CASE WHEN EXISTS "
                    "(SELECT 1 FROM aflow_events AS e WHERE e.run_id = aflow_runs.run_id AND "
                    "e.consumed_by IS NULL AND ($2::text)::jsonb ? e.name) THEN 0 "
                    "ELSE $3::float8 END WHERE run_id = $4 AND owner = $5 AND status = 'running'",
                    now,
                    names,
                    wake_at,
                    run_id,
                    owner,
                )
        return not done.endswith(" 0")

    async def due_runs(self, now: float, limit: int = 100) -> list[RunRecord]:
        with self._errors("looking for runs that are due"):
            rows = await self._p().fetch(
                f"SELECT {RUN_COLUMNS} FROM aflow_runs WHERE (status = 'waiting' AND "
                "wake_at <= $1) OR (status = 'cancelling' AND owner IS NULL) "
                "ORDER BY wake_at LIMIT $2",
                now,
                limit,
            )
        return [run_from_row(tuple(row)) for row in rows]

    async def next_wake(self) -> float | None:
        with self._errors("looking for the next wake-up"):
            value = await self._p().fetchval(
                "SELECT MIN(wake_at) FROM aflow_runs WHERE status = 'waiting'"
            )
        return None if value is None else float(value)

    async def save_shape(self, fingerprint: str, shape: str) -> None:
        with self._errors("recording a graph's shape"):
            await self._p().execute(
                "INSERT INTO aflow_shapes (fingerprint, shape) VALUES ($1, $2) "
                "ON CONFLICT (fingerprint) DO NOTHING",
                fingerprint,
                shape,
            )

    async def load_shape(self, fingerprint: str) -> str | None:
        if self._version < 5:  # (a schema 4 store opened read-only: no shapes kept)
            return None
        with self._errors("reading a graph's shape"):
            found: str | None = await self._p().fetchval(
                "SELECT shape FROM aflow_shapes WHERE fingerprint = $1", fingerprint
            )
        return found

    async def set_value(self, run_id: str, name: str, payload: str | None, now: float) -> None:
        import asyncpg

        with self._errors(f"publishing value {name!r} of run {run_id}"):
            try:
                await self._p().execute(
                    "INSERT INTO aflow_values (run_id, name, payload, set_at) "
                    "VALUES ($1, $2, $3, $4) ON CONFLICT (run_id, name) DO UPDATE SET "
                    "payload = excluded.payload, set_at = excluded.set_at",
                    run_id,
                    name,
                    payload,
                    now,
                )
            except asyncpg.ForeignKeyViolationError as exc:
                raise RunNotFound(run_id, self.url) from exc

    async def get_value(self, run_id: str, name: str) -> tuple[bool, str | None]:
        with self._errors("reading a run's value"):
            row = await self._p().fetchrow(
                "SELECT payload FROM aflow_values WHERE run_id = $1 AND name = $2", run_id, name
            )
        if row is not None:
            return True, row[0]
        await self.get_run(run_id)
        return False, None
