"""One behaviour, three stores: memory, SQLite and a real PostgreSQL."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from aflow.stores import (
    MemoryStore,
    NodeRecord,
    RunNotFound,
    RunRecord,
    SQLiteStore,
    Store,
    StoreError,
    open_store,
)


def record(key: str | None = None, status: str = "pending") -> RunRecord:
    now = time.time()
    return RunRecord(uuid.uuid4().hex, "mod:wf", "{}", "fp", status, key, now, now)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        found: Store = MemoryStore()
    elif request.param == "sqlite":
        found = SQLiteStore(str(tmp_path / "runs.db"))
    else:
        import asyncpg

        url = request.getfixturevalue("postgres_url")
        name = f"t{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(url)
        await conn.execute(f"CREATE DATABASE {name}")
        await conn.close()
        found = open_store(url.rsplit("/", 1)[0] + f"/{name}")
    await found.open()
    try:
        yield found
    finally:
        await found.close()


async def test_runs_and_nodes_round_trip(store: Store) -> None:
    run = record("order-1")
    stored, created = await store.create_run(run)
    assert created
    assert stored == run
    assert await store.get_run(run.run_id) == run
    await store.write_nodes(
        run.run_id,
        [NodeRecord("a", "running", 1, started_at=1.0), NodeRecord("b", "running", 1)],
    )
    await store.write_nodes(run.run_id, [NodeRecord("a", "succeeded", 2, "41", None, 1.0, 2.0)])
    nodes = await store.load_nodes(run.run_id)
    assert nodes["a"] == NodeRecord("a", "succeeded", 2, "41", None, 1.0, 2.0)
    assert nodes["b"].state == "running"
    await store.set_status(run.run_id, "succeeded", result="41", ended_at=3.0)
    done = await store.get_run(run.run_id)
    assert (done.status, done.result, done.ended_at) == ("succeeded", "41", 3.0)
    assert [r.run_id for r in await store.list_runs("succeeded")] == [run.run_id]
    assert await store.list_runs("failed") == []


async def test_an_idempotency_key_gives_one_run_even_when_submitted_at_once(store: Store) -> None:
    results: list[tuple[RunRecord, bool]] = []

    async def create() -> None:
        results.append(await store.create_run(record("same-key")))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(create)
    assert sum(created for _, created in results) == 1
    assert len({run.run_id for run, _ in results}) == 1


async def test_unknown_runs_raise_run_not_found_and_change_nothing(store: Store) -> None:
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        await store.get_run("nope")
    with pytest.raises(RunNotFound):
        await store.load_nodes("nope")
    with pytest.raises(RunNotFound):
        await store.write_nodes("nope", [NodeRecord("a", "running", 1)])
    with pytest.raises(RunNotFound):
        await store.set_status("nope", "failed")
    assert await store.list_runs() == []


async def test_the_sqlite_schema_is_created_once_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    first = open_store(f"sqlite:///{path}")
    await first.open()
    run = record()
    await first.create_run(run)
    await first.close()
    again = open_store(f"sqlite:///{path}")
    await again.open()
    assert (await again.get_run(run.run_id)).run_id == run.run_id
    await again.close()
    with sqlite3.connect(path) as db:
        (version,) = db.execute(
            "SELECT value FROM aflow_meta WHERE key='schema_version'"
        ).fetchone()
    assert version == "1"


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = SQLiteStore(str(path))
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE aflow_meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(StoreError, match="schema 99, newer"):
        await SQLiteStore(str(path)).open()


async def test_a_corrupted_file_is_a_store_error_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"this is not a database at all" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not an aflow store"):
        await SQLiteStore(str(path)).open()
    assert path.read_bytes() == before


async def test_a_foreign_database_is_a_store_error_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"database of something else.*users"):
        await SQLiteStore(str(path)).open()
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert tables == {"users"}
    assert path.read_bytes() == before  # not even switched to WAL


def test_store_urls() -> None:
    assert isinstance(open_store(None), MemoryStore)
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store("sqlite:///runs.db"), SQLiteStore)
    assert open_store("sqlite:////var/tmp/x.db").path == "/var/tmp/x.db"  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="unknown store URL scheme 'redis'"):
        open_store("redis://localhost")
    with pytest.raises(StoreError, match="names no file"):
        open_store("sqlite:///")


async def test_a_store_that_is_not_open_says_so(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not open"):
        await SQLiteStore(str(tmp_path / "x.db")).get_run("r")
