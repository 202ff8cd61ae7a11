"""One behaviour, three stores: memory, SQLite and a real PostgreSQL."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from aflow.errors import RunExists, RunNotFound, StoreError
from aflow.stores import (
    SCHEMA_VERSION,
    MemoryStore,
    NodeRecord,
    RunRecord,
    SQLiteStore,
    Store,
    open_store,
)
from aflow.stores._sql import migrations


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
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        (version,) = db.execute(
            "SELECT value FROM aflow_meta WHERE key='schema_version'"
        ).fetchone()
    assert version == str(SCHEMA_VERSION)


async def test_a_version_1_store_is_migrated_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    ((_, version_1), *_) = migrations("sqlite", 0)
    # a store as the first aflow release left it
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for statement in version_1:
            db.execute(statement)
        db.execute("INSERT INTO aflow_meta VALUES ('schema_version', '1')")
        db.execute(
            "INSERT INTO aflow_runs VALUES ('old', 'mod:wf', '{}', 'fp', 'running', NULL, "
            "1.0, 1.0, NULL, NULL, NULL, 'json', NULL, NULL)"
        )
        db.execute("INSERT INTO aflow_nodes VALUES ('old', 'a', 'succeeded', 1, '41', NULL, 1, 2)")
    store = SQLiteStore(str(path))
    await store.open()
    try:
        old = await store.get_run("old")
        assert (old.status, old.options) == ("running", None)
        assert (await store.load_nodes("old"))["a"].result == "41"
        await store.write_nodes("old", [NodeRecord("b", "failed", 1, None, "ValueError: x")])
        assert [(n.key, n.state) for n in await store.load_history("old")] == [("b", "failed")]
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        (version,) = db.execute(
            "SELECT value FROM aflow_meta WHERE key='schema_version'"
        ).fetchone()
    assert version == str(SCHEMA_VERSION)


async def test_options_and_every_transition_are_kept(store: Store) -> None:
    run = dataclasses.replace(record(), options='{"on_error": "continue"}')
    await store.create_run(run)
    assert (await store.get_run(run.run_id)).options == '{"on_error": "continue"}'
    await store.write_nodes(run.run_id, [NodeRecord("a", "running", 1, started_at=1.0)])
    await store.write_nodes(run.run_id, [NodeRecord("a", "retrying", 1, None, "OSError: x")])
    await store.write_nodes(
        run.run_id,
        [NodeRecord("a", "succeeded", 2, "7", None, None, 3.0), NodeRecord("b", "running", 1)],
    )
    history = await store.load_history(run.run_id)
    assert [(n.key, n.state, n.attempt, n.error) for n in history] == [
        ("a", "running", 1, None),
        ("a", "retrying", 1, "OSError: x"),
        ("a", "succeeded", 2, None),
        ("b", "running", 1, None),
    ]
    assert all(n.result is None for n in history)  # results live in the latest record only
    assert (await store.load_nodes(run.run_id))["a"].result == "7"
    with pytest.raises(RunNotFound):
        await store.load_history("nope")


async def test_a_cancel_request_changes_only_an_unfinished_run(store: Store) -> None:
    live, done = record(status="running"), record(status="succeeded")
    for run in (live, done):
        await store.create_run(run)
    assert await store.request_cancel(live.run_id, "RunCancelled: by hand") == "cancelling"
    assert (await store.get_run(live.run_id)).error == "RunCancelled: by hand"
    assert await store.request_cancel(done.run_id, "RunCancelled: by hand") == "succeeded"
    after = await store.get_run(done.run_id)
    assert (after.status, after.error) == ("succeeded", None)
    with pytest.raises(RunNotFound):
        await store.request_cancel("nope", "x")


async def test_a_heartbeat_renews_only_the_runs_named(store: Store) -> None:
    driven, dropped = record(status="running"), record(status="running")
    for run in (driven, dropped):
        await store.create_run(run)
        assert await store.claim(run.run_id, "me", 0.01)
    await store.request_cancel(driven.run_id, "RunCancelled: x")
    assert await store.heartbeat("me", 60.0, [driven.run_id]) == {driven.run_id: "cancelling"}
    assert await store.heartbeat("someone-else", 60.0, [dropped.run_id]) == {}
    assert await store.heartbeat("me", 60.0, []) == {}
    now = time.time()
    assert ((await store.get_run(driven.run_id)).heartbeat or 0) > now + 30
    assert ((await store.get_run(dropped.run_id)).heartbeat or 0) < now + 1  # not renewed


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = SQLiteStore(str(path))
    await store.open()
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE aflow_meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(StoreError, match="schema 99, newer"):
        await SQLiteStore(str(path)).open()


async def test_a_corrupted_file_is_a_store_error_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"this is not a database at all" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="damaged or is not an SQLite database"):
        await SQLiteStore(str(path)).open()
    assert path.read_bytes() == before


async def test_a_foreign_database_is_a_store_error_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"database of something else.*users"):
        await SQLiteStore(str(path)).open()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
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


async def test_a_run_id_that_exists_is_refused_with_run_exists(store: Store) -> None:
    run = record("key-1")
    await store.create_run(run)
    for again in (dataclasses.replace(run, idempotency_key=None), record("key-2")):
        again = dataclasses.replace(again, run_id=run.run_id, workflow="mod:other")
        with pytest.raises(RunExists) as info:
            await store.create_run(again)
        assert (info.value.run_id, info.value.where) == (run.run_id, store.url)
    assert await store.get_run(run.run_id) == run  # left as it was
    assert [r.run_id for r in await store.list_runs()] == [run.run_id]


async def test_two_connections_to_one_file_read_and_write_at_once(tmp_path: Path) -> None:
    # As two processes do. Reads used to run outside the lock, so a write could begin
    # on a connection whose read (of an older snapshot) was still open: it failed at
    # once with "database is locked", whatever the busy timeout.
    path = str(tmp_path / "runs.db")
    stores = [SQLiteStore(path), SQLiteStore(path)]
    for one in stores:
        await one.open()
    try:
        run = record()
        await stores[0].create_run(run)

        async def reads(store: Store) -> None:
            for _ in range(100):
                await store.get_run(run.run_id)

        async def writes(store: Store, name: str) -> None:
            for i in range(100):
                await store.create_run(record(f"{name}-{i % 10}"))
                await store.write_nodes(run.run_id, [NodeRecord(f"{name}-{i}", "running", 1)])

        async with anyio.create_task_group() as tg:
            for n, one in enumerate(stores):
                tg.start_soon(reads, one)
                tg.start_soon(writes, one, f"s{n}")
        assert len(await stores[1].load_nodes(run.run_id)) == 200
        assert len(await stores[1].list_runs()) == 21
    finally:
        for one in stores:
            await one.close()


async def test_a_create_run_cancelled_anywhere_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(str(tmp_path / "runs.db"), busy_timeout=0.05)
    await store.open()
    try:
        for turns in range(12):  # the cancel lands on each await of create_run in turn
            with anyio.CancelScope() as scope:

                async def cancel(scope: anyio.CancelScope = scope, turns: int = turns) -> None:
                    for _ in range(turns):
                        await anyio.lowlevel.checkpoint()
                    scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel)
                    await store.create_run(record(f"key-{turns}"))
            # a BEGIN whose wait was cancelled used to run anyway, and stay open
            await store.create_run(record())
    finally:
        await store.close()


async def test_a_takeover_counts_a_recovery_and_a_release_lets_go_at_once(store: Store) -> None:
    """claim() counts a run taken from an owner that held it (it died), not one taken
    after a release (a clean shutdown) nor one its owner takes again."""
    now = time.time()
    run = dataclasses.replace(record(), status="running", owner="a", heartbeat=now + 60)
    await store.create_run(run)
    assert not await store.claim(run.run_id, "b", 10, now=now)  # a's lease holds
    assert await store.claim(run.run_id, "b", 10, now=now + 61)  # a died: b takes it over
    assert (await store.get_run(run.run_id)).recoveries == 1
    assert await store.claim(run.run_id, "b", 10, now=now + 62)  # b again: no recovery
    assert not await store.release(run.run_id, "a")  # not a's to let go of
    assert await store.release(run.run_id, "b")
    released = await store.get_run(run.run_id)
    assert (released.owner, released.heartbeat, released.recoveries) == (None, None, 1)
    assert await store.claim(run.run_id, "c", 10, now=now)  # at once, and no recovery
    assert (await store.get_run(run.run_id)).recoveries == 1
    renewed = await store.heartbeat("c", 10, [run.run_id], now=now + 100)
    assert renewed == {run.run_id: "running"}
    assert (await store.get_run(run.run_id)).heartbeat == pytest.approx(now + 110)


async def test_cancelling_a_parked_run_gives_it_a_fresh_count(store: Store) -> None:
    now = time.time()
    run = dataclasses.replace(
        record(), status="parked", error="RuntimeError: declined", recoveries=6
    )
    await store.create_run(run)
    assert await store.heartbeat("x", 10, [run.run_id], now=now) == {}  # parked: not renewed
    assert await store.request_cancel(run.run_id, "RunCancelled: by hand") == "cancelling"
    cancelled = await store.get_run(run.run_id)
    assert (cancelled.recoveries, cancelled.error) == (0, "RuntimeError: declined")


async def test_a_run_parked_as_an_event_for_it_commits_is_due_at_once(
    request: pytest.FixtureRequest,
) -> None:
    """PostgreSQL: a send holds the run's row while it keeps the event; a park that
    comes meanwhile waits for the row. Its check for kept events must see that event
    (a statement begun before the send's commit does not), or the run waits on for an
    event it has (found under load: the run was never taken up)."""
    import asyncpg

    url = request.getfixturevalue("postgres_url")
    name = f"t{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(url)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    db_url = url.rsplit("/", 1)[0] + f"/{name}"
    store = open_store(db_url)
    await store.open()
    sender = await asyncpg.connect(db_url)
    try:
        run = dataclasses.replace(record(status="running"), owner="me")
        await store.create_run(run)
        sending = sender.transaction()  # what send_event does, held open
        await sending.start()
        await sender.execute(
            "SELECT status FROM aflow_runs WHERE run_id = $1 FOR UPDATE", run.run_id
        )
        await sender.execute(
            "INSERT INTO aflow_events (run_id, name, message_id, payload, sent_at) "
            "VALUES ($1, 'paid', '', NULL, 0)",
            run.run_id,
        )
        parked: list[bool] = []

        async def park() -> None:
            waiting = store.park_waiting  # type: ignore[attr-defined]
            parked.append(await waiting(run.run_id, "me", None, ["paid"], 1.0))

        async with anyio.create_task_group() as tg:
            tg.start_soon(park)
            with anyio.fail_after(10):  # until the park waits for the row
                while not await sender.fetchval(  # noqa: ASYNC110 - a lock has no event
                    "SELECT count(*) FROM pg_locks WHERE NOT granted"
                ):
                    await anyio.sleep(0.005)
            assert parked == []
            await sending.commit()
        assert parked == [True]
        stored = await store.get_run(run.run_id)
        assert (stored.status, stored.wake_at) == ("waiting", 0.0)
        assert [r.run_id for r in await store.due_runs(1.0)] == [run.run_id]  # type: ignore[attr-defined]
    finally:
        await sender.close()
        await store.close()
