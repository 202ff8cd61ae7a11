"""The embedded SQLite store.

WAL journal with ``synchronous=NORMAL``: a committed batch survives the
process being killed; a power cut may lose the last batches (they re-run
on resume, like any node not recorded as done).

Two connections and one thread per open store. A small write (a checkpoint
batch of up to :data:`INLINE_ROWS` rows, a run's status, a claim) and a
one-row read run at once on the caller's thread, on a connection that never
waits for a lock (busy timeout 0): a WAL commit with ``synchronous=NORMAL``
is an append to the -wal file, no fsync, tens of microseconds, less than a
hop to another thread and back costs. Anything that could wait runs on the
store's own thread, on a connection that waits up to the busy timeout: a
write that found the file locked by another connection (it changed nothing,
and is done again there), a large batch, reads of unbounded size, and the
WAL's checkpoints (the fsyncs; the caller's connection never checkpoints).
Jobs run in the order they were asked for; while one is queued or running
on the thread, everything else queues behind it, so writes keep their order.

Several processes may share one file. Every statement runs whole and is
finished (its rows fetched) before the next one starts, so no read
transaction is ever left open; a transaction that writes begins
``IMMEDIATE``. A write therefore waits for another process's write (up to
the busy timeout, on the store's thread) instead of failing at once, as it
does when a read transaction begun earlier has to be upgraded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import pathlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, final

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

__all__ = ["INLINE_ROWS", "SQLiteStore", "expected_schema", "schema_problems", "shape_of"]

T = TypeVar("T")

_CLAIM_SET = CLAIM_SET.format(owner=":owner", until=":until")
_CLAIM_FRESH_SET = CLAIM_FRESH_SET.format(owner=":owner", until=":until")
_CANCEL_SET = CANCEL_SET.format(now="?", reason="?")

#: SQLite allows 32,766 parameters per statement; a node row has 8.
_ROWS_PER_STATEMENT = 4000
#: How long a statement waits for another connection's lock, unless told otherwise.
DEFAULT_BUSY_TIMEOUT = 30.0
#: A checkpoint batch of up to this many rows is written on the caller's thread (a
#: larger one, a fan-out's, on the store's thread: one hop for many rows).
INLINE_ROWS = 64
#: The store's thread checkpoints the WAL after this many rows written on the caller's
#: thread (a commit of one row writes 4 pages or so; SQLite's own automatic checkpoint,
#: every 1,000 pages and inside the commit, is off there).
CHECKPOINT_EVERY = 1000
#: A WAL longer than this (in 4 KiB frames: 64 MiB) is caught up with before writes go
#: on. A catch-up holds the writes for its fsyncs (15 ms on this VM's disk), so it must
#: be rare: several times what the writes between two checkpoints add (about 4,300
#: frames for 1,000 one-row commits, the most).
WAL_FRAMES_CAUGHT_UP = 16_000
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

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


def _busy(exc: sqlite3.Error) -> bool:
    """True if ``exc`` says another connection holds a lock this statement needed."""
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF in _BUSY


def _transaction(db: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
    """``body(db)`` between BEGIN IMMEDIATE and COMMIT; on any error a ROLLBACK, so the
    connection is never left inside a transaction; the error goes on."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = body(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the error that ended it goes on
        raise
    return result


def _serve(jobs: queue.SimpleQueue[Callable[[], bool] | None]) -> None:
    """A store's thread: runs its jobs in turn until one returns True (or it gets None).
    A job hands its own errors to whoever waits for it; one it lets out (a bug) must not
    end the thread, or every job after it would wait forever."""
    while True:
        job = jobs.get()
        if job is None:
            return
        try:
            if job():
                return
        except Exception:
            pass


@functools.lru_cache(maxsize=64)
def _upsert(n: int) -> str:
    return UPSERT_NODE.format(rows=", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * n))


_UPSERT_ONE = _upsert(1)


@functools.lru_cache(maxsize=16)
def _history(n: int) -> str:
    return INSERT_HISTORY.format(rows=", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * n))


def _write_nodes(
    db: sqlite3.Connection,
    run_id: str,
    nodes: Sequence[NodeRecord],
    superseded: Sequence[NodeRecord] = (),
) -> None:
    """One checkpoint batch, all or nothing."""
    if len(nodes) <= _ROWS_PER_STATEMENT and not superseded:
        rows = [value for node in nodes for value in node_row(run_id, node)]
        db.execute(_upsert(len(nodes)), rows)  # one statement: a transaction of its own
        return

    def write(db: sqlite3.Connection) -> None:
        for start in range(0, len(superseded), _ROWS_PER_STATEMENT):
            part = superseded[start : start + _ROWS_PER_STATEMENT]
            db.execute(_history(len(part)), [v for node in part for v in history_row(run_id, node)])
        for start in range(0, len(nodes), _ROWS_PER_STATEMENT):
            chunk = nodes[start : start + _ROWS_PER_STATEMENT]
            db.execute(_upsert(len(chunk)), [v for node in chunk for v in node_row(run_id, node)])

    _transaction(db, write)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its waiter was cancelled: the job ran all the same
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


@final
class _Link:
    """An open store's two connections and its thread (see the module's docstring)."""

    __slots__ = (
        "checkpointing",
        "db",
        "finished",
        "jobs",
        "sent",
        "thread_db",
        "wal_frames",
        "written",
    )

    def __init__(
        self,
        jobs: queue.SimpleQueue[Callable[[], bool] | None],
        db: sqlite3.Connection,
        thread_db: sqlite3.Connection,
    ) -> None:
        self.jobs = jobs
        #: the caller's thread's connection: busy timeout 0, no automatic checkpoint
        self.db = db
        #: the store's thread's connection: waits up to the busy timeout
        self.thread_db = thread_db
        #: jobs handed to the thread and jobs it has finished; each is written by one
        #: thread only, and the caller's connection is used only while they are equal
        self.sent = 0
        self.finished = 0
        #: rows written on the caller's thread since the last checkpoint was asked for
        self.written = 0
        self.checkpointing = False
        #: the WAL's length in frames, as the last checkpoint found it
        self.wal_frames = 0

    def __del__(self) -> None:
        self.jobs.put(None)  # a store dropped without close(): its thread ends

    @property
    def idle(self) -> bool:
        """Nothing is queued or running on the store's thread (a checkpoint aside)."""
        return self.sent == self.finished

    def wrote(self, rows: int) -> None:
        """A commit of ``rows`` rows on the caller's thread. Every
        :data:`CHECKPOINT_EVERY` rows the store's thread checkpoints the WAL (PASSIVE: it
        never waits), beside the writes that go on meanwhile. The WAL starts over only
        when a write begins after a checkpoint copied all of it, which writes that never
        pause do not let happen: once it is longer than :data:`WAL_FRAMES_CAUGHT_UP`
        frames, the next checkpoint holds the writes back (they queue behind it on the
        thread) and catches up. So do writes that run far ahead of a checkpoint the
        thread has not got to yet."""
        self.written += rows
        if self.written < CHECKPOINT_EVERY:
            return
        if not self.checkpointing:
            self.written = 0
            self.checkpointing = True
            if self.wal_frames > WAL_FRAMES_CAUGHT_UP:
                self.sent += 1  # counted: nothing runs on the caller's thread meanwhile
                self.jobs.put(self._catch_up)
            else:
                self.jobs.put(self._checkpoint)
        elif self.written >= 4 * CHECKPOINT_EVERY:
            self.written = 0
            self.sent += 1  # writes queue behind the checkpoint from now on
            self.jobs.put(self._barrier)

    def _checkpoint(self, held: bool = False) -> bool:
        try:
            ((_, frames, copied),) = self.thread_db.execute(
                "PRAGMA wal_checkpoint(PASSIVE)"
            ).fetchall()
            # held and all copied: the next write starts the WAL over
            self.wal_frames = 0 if held and copied >= frames else int(frames)
        except sqlite3.Error:
            pass  # the next one tries again (and closing the store checkpoints)
        finally:
            self.checkpointing = False
        return False

    def _catch_up(self) -> bool:
        try:
            return self._checkpoint(held=True)
        finally:
            self.finished += 1

    def _barrier(self) -> bool:
        self.finished += 1
        return False

    async def hop(self, call: Callable[[sqlite3.Connection], T]) -> T:
        """``call(thread_db)`` on the store's thread, after what is queued there. A
        cancelled caller stops waiting; the job still runs, whole."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        db = self.thread_db

        def job() -> bool:
            result: Any = None
            error: BaseException | None = None
            try:
                result = call(db)
            except BaseException as exc:  # handed to the caller
                error = exc
            self.finished += 1
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # its loop has closed: nobody waits any more
                pass
            return False

        self.sent += 1
        self.jobs.put(job)
        return await future


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
        #: the schema it was opened at (below the newest only when opened read-only)
        self._version = SCHEMA_VERSION
        self._file = os.path.abspath(path)
        #: the connections and thread, while open
        self._link: _Link | None = None

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
        if self._link is not None:
            return
        loop = asyncio.get_running_loop()  # (asyncio only, as the store's futures are)
        jobs: queue.SimpleQueue[Callable[[], bool] | None] = queue.SimpleQueue()
        thread = threading.Thread(
            target=_serve, args=(jobs,), name=f"aflow store {self._file}", daemon=True
        )
        thread.start()
        opened: asyncio.Future[tuple[sqlite3.Connection, sqlite3.Connection]]
        opened = loop.create_future()

        def job() -> bool:
            # Checked and migrated on a connection of its own: it may wait for other
            # processes. The thread ends with the job if it fails.
            try:
                pair = self._connect()
            except BaseException as exc:  # handed to the caller
                loop.call_soon_threadsafe(_settle, opened, None, exc)
                return True
            loop.call_soon_threadsafe(_settle, opened, pair, None)
            return False

        jobs.put(job)
        # shielded: the connections a cancelled open made would be left to nobody
        with anyio.CancelScope(shield=True):
            db, thread_db = await opened
        self._link = _Link(jobs, db, thread_db)

    def _connect(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        """Check (and unless read-only migrate) the file, then open the two connections."""
        self._prepare()
        mode = "ro" if self.read_only else "rw"  # the file exists now: never create it here
        made: list[sqlite3.Connection] = []
        try:
            for _ in range(2):  # the caller's, then the thread's
                db = sqlite3.connect(
                    self._uri(mode),
                    uri=True,
                    isolation_level=None,
                    timeout=self.busy_timeout,  # set up here, on the thread: it may wait
                    check_same_thread=False,
                )
                made.append(db)
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA foreign_keys=ON")
                if self.read_only:
                    db.execute("PRAGMA query_only=ON")
            # the caller's connection never waits for a lock, and never checkpoints (an
            # fsync): what would wait goes to the thread
            made[0].execute("PRAGMA busy_timeout=0").fetchall()
            made[0].execute("PRAGMA wal_autocheckpoint=0").fetchall()
        except BaseException as exc:
            for db in made:
                db.close()
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc, "opening it") from exc
            raise
        return made[0], made[1]

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
                if version < READABLE_SCHEMA:
                    raise StoreError(
                        f"the SQLite store {self._file} has schema {version}, older than this "
                        f"aflow's {SCHEMA_VERSION}, and is opened read-only: open it once "
                        "for writing (aflow run, aflow resume, or a Runtime) to migrate it"
                    )
                self._version = version
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
        link, self._link = self._link, None
        if link is None:
            return

        def close(db: sqlite3.Connection) -> None:
            # the caller's connection first: the thread's, the last one, checkpoints the
            # WAL as it closes (off the caller's thread)
            try:
                link.db.close()
            finally:
                db.close()

        try:
            await link.hop(close)  # after every job queued before
        except sqlite3.Error as exc:
            raise self._error(exc, "closing it") from exc
        finally:
            link.jobs.put(None)  # the thread ends

    # --- statements -----------------------------------------------------------------------

    def _open_link(self) -> _Link:
        link = self._link
        if link is None:
            raise StoreError(f"the store {self.url} is not open: await store.open() first")
        return link

    async def _do(
        self, call: Callable[[sqlite3.Connection], T], *, inline: bool = True, rows: int = 0
    ) -> T:
        """``call(connection)``: at once on this thread (``inline``) if nothing of the store
        is queued on its thread and no other connection holds a lock it needs; else on the
        store's thread, after what is queued there. Driver errors go on."""
        link = self._open_link()
        if inline and link.idle:
            try:
                result = call(link.db)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                # locked by another connection: nothing was written; wait on the thread
            else:
                if rows:  # a commit
                    link.wrote(rows)
                return result
        return await link.hop(call)

    async def _fetch(
        self,
        doing: str,
        sql: str,
        args: Sequence[Any],
        *,
        inline: bool = True,
        rows: int = 0,
    ) -> list[Any]:
        """All rows of one statement, fetched in one go (``inline``: a few rows at most)."""
        try:
            return await self._do(
                lambda db: db.execute(sql, args).fetchall(), inline=inline, rows=rows
            )
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc

    async def _change(self, doing: str, sql: str, args: Sequence[Any] | Mapping[str, Any]) -> int:
        """Run one statement that writes (a transaction of its own); the rows it changed."""
        try:
            return await self._do(lambda db: db.execute(sql, args).rowcount, rows=1)
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        def create(db: sqlite3.Connection) -> tuple[RunRecord, bool]:
            if record.idempotency_key is not None:
                rows = db.execute(
                    f"SELECT {RUN_COLUMNS} FROM aflow_runs WHERE idempotency_key = ?",
                    (record.idempotency_key,),
                ).fetchall()
                for row in rows:  # one at most: the key is unique
                    return run_from_row(row), False
            db.execute(
                f"INSERT INTO aflow_runs ({RUN_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                run_row(record),
            )
            return record, True

        try:
            return await self._do(functools.partial(_transaction, body=create), rows=1)
        except sqlite3.IntegrityError as exc:
            if "aflow_runs.run_id" in str(exc):
                raise RunExists(record.run_id, self.url) from exc
            raise self._error(exc, f"creating run {record.run_id}") from exc
        except sqlite3.Error as exc:
            raise self._error(exc, f"creating run {record.run_id}") from exc

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
        rows = await self._fetch("listing runs", sql, (*args, limit), inline=False)
        return [run_from_row(row) for row in rows]

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
        inline = len(nodes) + len(superseded) <= INLINE_ROWS
        try:
            await self._do(
                functools.partial(_write_nodes, run_id=run_id, nodes=nodes, superseded=superseded),
                inline=inline,
                rows=len(nodes) + len(superseded),
            )
        except sqlite3.Error as exc:
            raise self._write_error(exc, run_id) from exc

    def try_write_nodes(
        self, run_id: str, nodes: Sequence[NodeRecord], superseded: Sequence[NodeRecord] = ()
    ) -> bool:
        """:meth:`write_nodes` on the calling thread, if that needs no waiting: True once
        the batch is committed; False if nothing was written (the store's thread has work
        queued, another connection holds the file's lock, or the batch is large), and
        ``await write_nodes(...)`` then writes it. Errors are those of write_nodes."""
        link = self._open_link()
        if link.sent != link.finished or len(nodes) + len(superseded) > INLINE_ROWS:
            return False
        try:
            if len(nodes) == 1 and not superseded:  # a chain's step
                link.db.execute(_UPSERT_ONE, node_row(run_id, nodes[0]))
            elif nodes:
                _write_nodes(link.db, run_id, nodes, superseded)
            else:
                return True
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.OperationalError) and _busy(exc):
                return False  # nothing was written
            raise self._write_error(exc, run_id) from exc
        link.wrote(len(nodes) + len(superseded))
        return True

    def _write_error(self, exc: sqlite3.Error, run_id: str) -> Exception:
        if isinstance(exc, sqlite3.IntegrityError):  # the run's row is missing
            return RunNotFound(run_id, self.url)
        return self._error(exc, f"writing a checkpoint of run {run_id}")

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
            inline=len(run_ids) <= INLINE_ROWS,
            rows=len(run_ids),
        )
        return {row[0]: status_of(row[0], row[1]) for row in rows}

    async def load_nodes(self, run_id: str) -> dict[str, NodeRecord]:
        await self.get_run(run_id)
        rows = await self._fetch(
            "reading a run's nodes",
            f"SELECT {NODE_COLUMNS} FROM aflow_nodes WHERE run_id = ?",
            (run_id,),
            inline=False,
        )
        return {row[0]: node_from_row(run_id, row) for row in rows}

    async def load_history(self, run_id: str) -> list[NodeRecord]:
        await self.get_run(run_id)
        rows = await self._fetch(
            "reading a run's history",
            f"SELECT {HISTORY_COLUMNS} FROM aflow_transitions WHERE run_id = ? ORDER BY seq",
            (run_id,),
            inline=False,
        )
        return [node_from_row(run_id, row) for row in rows]

    # --- events, published values and waits (see Store) -----------------------------------

    async def run_of_key(self, idempotency_key: str) -> str | None:
        rows = await self._fetch(
            "finding a run by its idempotency key",
            "SELECT run_id FROM aflow_runs WHERE idempotency_key = ?",
            (idempotency_key,),
        )
        return rows[0][0] if rows else None

    async def send_event(
        self, run_id: str, name: str, message_id: str, payload: str | None, now: float
    ) -> tuple[SendOutcome, StoredRunStatus]:
        def send(db: sqlite3.Connection) -> tuple[SendOutcome, StoredRunStatus]:
            rows = db.execute("SELECT status FROM aflow_runs WHERE run_id = ?", (run_id,))
            found = rows.fetchall()
            if not found:
                raise RunNotFound(run_id, self.url)
            status = status_of(run_id, found[0][0])
            if status in ENDED:
                kept = db.execute(
                    "SELECT 1 FROM aflow_events WHERE run_id = ? AND name = ? AND message_id = ?",
                    (run_id, name, message_id),
                ).fetchall()
                return ("duplicate" if kept else "ended"), status
            added = db.execute(
                "INSERT INTO aflow_events (run_id, name, message_id, payload, sent_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, name, message_id) DO NOTHING",
                (run_id, name, message_id, payload, now),
            ).rowcount
            if not added:
                return "duplicate", status
            db.execute(_WAKE_ON_EVENT, (run_id, name))
            return "kept", status

        try:
            return await self._do(functools.partial(_transaction, body=send), rows=2)
        except sqlite3.Error as exc:
            raise self._error(exc, f"sending event {name!r} to run {run_id}") from exc

    async def take_event(
        self, run_id: str, name: str, consumer: str, sent_by: float | None = None
    ) -> tuple[bool, str | None]:
        def take(db: sqlite3.Connection) -> tuple[bool, str | None]:
            mine = db.execute(
                "SELECT payload FROM aflow_events WHERE run_id = ? AND name = ? "
                "AND consumed_by = ? LIMIT 1",
                (run_id, name, consumer),
            ).fetchall()
            if mine:
                return True, mine[0][0]
            first = db.execute(
                "SELECT seq, payload FROM aflow_events WHERE run_id = ? AND name = ? "
                "AND consumed_by IS NULL AND (? IS NULL OR sent_at <= ?) ORDER BY seq LIMIT 1",
                (run_id, name, sent_by, sent_by),
            ).fetchall()
            if not first:
                return False, None
            db.execute(
                "UPDATE aflow_events SET consumed_by = ? WHERE seq = ?", (consumer, first[0][0])
            )
            return True, first[0][1]

        try:
            return await self._do(functools.partial(_transaction, body=take), rows=1)
        except sqlite3.Error as exc:
            raise self._error(exc, f"taking event {name!r} of run {run_id}") from exc

    async def begin_wait(
        self, run_id: str, key: str, event: str | None, deadline: float | None, now: float
    ) -> float | None:
        def begin(db: sqlite3.Connection) -> float | None:
            db.execute(
                "INSERT INTO aflow_waits (run_id, key, event, deadline, started_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, key) DO NOTHING",
                (run_id, key, event, deadline, now),
            )
            ((stored,),) = db.execute(
                "SELECT deadline FROM aflow_waits WHERE run_id = ? AND key = ?", (run_id, key)
            ).fetchall()
            return None if stored is None else float(stored)

        try:
            return await self._do(functools.partial(_transaction, body=begin), rows=1)
        except sqlite3.IntegrityError as exc:
            raise RunNotFound(run_id, self.url) from exc
        except sqlite3.Error as exc:
            raise self._error(exc, f"recording wait {key!r} of run {run_id}") from exc

    async def load_waits(self, run_id: str) -> list[WaitRecord]:
        rows = await self._fetch(
            "reading a run's waits",
            "SELECT key, event, deadline, started_at FROM aflow_waits WHERE run_id = ? "
            "ORDER BY started_at, key",
            (run_id,),
            inline=False,
        )
        return [WaitRecord(*row) for row in rows]

    async def park_waiting(
        self, run_id: str, owner: str, wake_at: float | None, events: Sequence[str], now: float
    ) -> bool:
        changed = await self._change(
            "recording a waiting run",
            _PARK_WAITING,
            (now, json.dumps(list(events)), json.dumps(list(events)), wake_at, run_id, owner),
        )
        return changed == 1

    async def due_runs(self, now: float, limit: int = 100) -> list[RunRecord]:
        rows = await self._fetch(
            "looking for runs that are due",
            # The partial index on waiting runs' wake_at, named: SQLite's planner prefers
            # the status index, which reads every waiting run (0.9 ms at 10,000; 0.03 ms)
            f"SELECT * FROM (SELECT {RUN_COLUMNS} FROM aflow_runs INDEXED BY aflow_runs_wake "
            "WHERE status = 'waiting' AND wake_at <= ? UNION ALL "
            f"SELECT {RUN_COLUMNS} FROM aflow_runs WHERE status = 'cancelling' AND owner IS NULL) "
            "ORDER BY wake_at LIMIT ?",
            (now, limit),
        )
        return [run_from_row(row) for row in rows]

    async def next_wake(self) -> float | None:
        rows = await self._fetch(
            "looking for the next wake-up",
            "SELECT MIN(wake_at) FROM aflow_runs INDEXED BY aflow_runs_wake "
            "WHERE status = 'waiting'",
            (),
        )
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def save_shape(self, fingerprint: str, shape: str) -> None:
        await self._change(
            "recording a graph's shape",
            "INSERT INTO aflow_shapes (fingerprint, shape) VALUES (?, ?) "
            "ON CONFLICT (fingerprint) DO NOTHING",
            (fingerprint, shape),
        )

    async def load_shape(self, fingerprint: str) -> str | None:
        if self._version < 5:  # (a schema 4 store opened read-only: no shapes kept)
            return None
        rows = await self._fetch(
            "reading a graph's shape",
            "SELECT shape FROM aflow_shapes WHERE fingerprint = ?",
            (fingerprint,),
            inline=False,
        )
        return rows[0][0] if rows else None

    async def set_value(self, run_id: str, name: str, payload: str | None, now: float) -> None:
        try:
            await self._do(
                lambda db: db.execute(
                    "INSERT INTO aflow_values (run_id, name, payload, set_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (run_id, name) DO UPDATE SET payload = excluded.payload, "
                    "set_at = excluded.set_at",
                    (run_id, name, payload, now),
                ),
                rows=1,
            )
        except sqlite3.IntegrityError as exc:
            raise RunNotFound(run_id, self.url) from exc
        except sqlite3.Error as exc:
            raise self._error(exc, f"publishing value {name!r} of run {run_id}") from exc

    async def get_value(self, run_id: str, name: str) -> tuple[bool, str | None]:
        rows = await self._fetch(
            "reading a run's value",
            "SELECT payload FROM aflow_values WHERE run_id = ? AND name = ?",
            (run_id, name),
        )
        if rows:
            return True, rows[0][0]
        await self.get_run(run_id)  # RunNotFound
        return False, None


#: An event came: a waiting run that waits for it is due at once.
_WAKE_ON_EVENT = (
    "UPDATE aflow_runs SET wake_at = 0 WHERE run_id = ? AND status = 'waiting' "
    "AND EXISTS (SELECT 1 FROM json_each(aflow_runs.waiting_for) WHERE value = ?)"
)
#: A run whose nodes in flight all wait: no owner, due at its first deadline, or at once
#: if an event it waits for came while it was being parked.
_PARK_WAITING = (
    "UPDATE aflow_runs SET status = 'waiting', updated_at = ?, owner = NULL, heartbeat = NULL, "
    "waiting_for = ?, wake_at = CASE WHEN EXISTS (SELECT 1 FROM aflow_events AS e WHERE "
    "e.run_id = aflow_runs.run_id AND e.consumed_by IS NULL AND e.name IN "
    "(SELECT value FROM json_each(?))) THEN 0 ELSE ? END "
    "WHERE run_id = ? AND owner = ? AND status = 'running'"
)
