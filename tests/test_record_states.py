"""Stored record states are one string enum each (issue 15): ``RecordState`` for a node
transition, ``StoredRunStatus`` for a run. Their values are the text stores held before
the enums existed, so old rows read the same; text aflow never writes is refused, as a
row is read, with a typed error naming the run."""

from __future__ import annotations

import contextlib
import json
import pathlib
import sqlite3
import time
import typing
import uuid
from typing import Any

import anyio
import pytest

import aflow
from aflow._workflow import fingerprint
from aflow.errors import StoreError
from aflow.stores import (
    MemoryStore,
    NodeRecord,
    RecordState,
    StoredRunStatus,
    open_store,
)
from aflow.stores._base import StateText

from . import durable_workflows as wf
from .test_resume import dead_run

read = wf.read_counts

#: The text each state has in existing stores: changing one would strand their rows.
NODE_TEXT = {
    "RUNNING": "running",
    "RETRYING": "retrying",
    "SUCCEEDED": "succeeded",
    "ENDED": "ended",
    "REUSED": "reused",
    "NOT_STARTED": "not_started",
    "SKIPPED": "skipped",
    "CANCELLED": "cancelled",
    "FAILED": "failed",
    "REVERTED": "reverted",
    "REVERT_FAILED": "revert_failed",
}
RUN_TEXT = {
    "PENDING": "pending",
    "RUNNING": "running",
    "REVERTING": "reverting",
    "CANCELLING": "cancelling",
    "PARKED": "parked",
    "WAITING": "waiting",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "REVERTED": "reverted",
    "CANCELLED": "cancelled",
}


def test_each_member_is_the_text_stores_hold() -> None:
    assert {m.name: m.value for m in RecordState} == NODE_TEXT
    assert {m.name: m.value for m in StoredRunStatus} == RUN_TEXT
    for member in [*RecordState, *StoredRunStatus]:
        assert isinstance(member, str)
        assert member == member.value
        assert str(member) == f"{member}" == member.value
        assert json.dumps(member) == json.dumps(member.value)
    # a record may name its state by its text too: the literal type lists the same text
    assert set(typing.get_args(StateText)) == set(NODE_TEXT.values())
    # the four ends are a run's own statuses, by value
    for status in aflow.RunStatus:
        if status.finished:
            assert StoredRunStatus(status.value).name == status.name


def test_the_enums_are_exported_next_to_the_records() -> None:
    import aflow.stores

    assert {"RecordState", "StoredRunStatus"} <= set(aflow.stores.__all__)
    assert "RecordState" not in aflow.__all__  # the store API's, not the run API's


# --- stores written with plain text --------------------------------------------------------


def _sql(url: str, statements: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
    """Run statements on the store behind aflow's back (``?`` placeholders); the rows
    the last one returns."""
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url[len("sqlite:///") :])) as db, db:
            rows: list[tuple[Any, ...]] = []
            for sql, args in statements:
                rows = db.execute(sql, args).fetchall()
            return rows

    async def on_postgres() -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            found: list[tuple[Any, ...]] = []
            for sql, args in statements:
                parts = sql.split("?")
                numbered = parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], 1))
                found = [tuple(row) for row in await conn.fetch(numbered, *args)]
            return found
        finally:
            await conn.close()

    return anyio.run(on_postgres)


async def _schema(url: str) -> None:
    store = open_store(url)
    await store.open()
    await store.close()


def _dead_run_as_text(url: str, status: str, nodes: list[tuple[str, str, str | None]]) -> str:
    """What a process that died left, written as plain text (as aflow wrote it before the
    enums): run ``wf.abc(start=1)`` with ``nodes`` as ``(key, state, result)``."""
    run_id = uuid.uuid4().hex
    now = time.time()
    graph = wf.abc.build({"start": 1})
    statements: list[tuple[str, tuple[Any, ...]]] = [
        (
            "INSERT INTO aflow_runs (run_id, workflow, params, fingerprint, status, "
            "created_at, updated_at, serializer, owner, heartbeat) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'json', 'gone-host:1:dead', 0)",
            (run_id, wf.abc.path, '{"start": 1}', fingerprint(graph), status, now, now),
        )
    ]
    for key, state, result in nodes:
        statements.append(
            (
                "INSERT INTO aflow_nodes (run_id, key, state, attempt, result, started_at) "
                "VALUES (?, ?, ?, 1, ?, ?)",
                (run_id, key, state, result, now),
            )
        )
    _sql(url, statements)
    return run_id


async def test_rows_written_as_plain_text_load_as_members_and_resume(
    store_url: str, counts: pathlib.Path
) -> None:
    """A store written before the enums (plain text in every row) reads as members, and
    its unfinished run resumes where it stopped; what is written stays the same text."""
    await _schema(store_url)
    run_id = await anyio.to_thread.run_sync(
        _dead_run_as_text,
        store_url,
        "running",
        [("step_a", "succeeded", "2"), ("step_b", "running", None)],
    )
    store = open_store(store_url)
    await store.open()
    try:
        run = await store.get_run(run_id)
        assert run.status is StoredRunStatus.RUNNING
        nodes = await store.load_nodes(run_id)
        assert nodes["step_a"].state is RecordState.SUCCEEDED
        assert nodes["step_b"].state is RecordState.RUNNING
        history = await store.load_history(run_id)
        assert [type(node.state) for node in history] == [RecordState, RecordState]
        assert [r.run_id for r in await store.list_runs(StoredRunStatus.RUNNING)] == [run_id]
    finally:
        await store.close()

    async with aflow.Runtime(store=store_url) as rt:
        resumed = await rt.resume(run_id)
        assert await resumed.result() == 104
    assert read(counts) == {"B": 1, "C": 1}  # step_a was on record: not run again

    rows = await anyio.to_thread.run_sync(
        _sql,
        store_url,
        [
            (
                "SELECT r.status, n.key, n.state FROM aflow_runs r JOIN aflow_nodes n "
                "ON n.run_id = r.run_id WHERE r.run_id = ? ORDER BY n.key",
                (run_id,),
            )
        ],
    )
    assert rows == [
        ("succeeded", "step_a", "succeeded"),
        ("succeeded", "step_b", "succeeded"),
        ("succeeded", "step_c", "succeeded"),
    ]


async def test_records_given_as_text_through_the_store_api_resume(counts: pathlib.Path) -> None:
    """A record made in a process may name its state by its text (the in-memory store
    keeps it as given): it compares equal, and the run resumes the same."""
    store = MemoryStore()
    async with aflow.Runtime(store=store) as rt:
        run_id = await dead_run(
            store,
            wf.abc_fails,
            [
                NodeRecord("step_a", "succeeded", 1, "2", None, 1.0, 2.0),
                NodeRecord("step_b", "succeeded", 1, "4", None, 1.0, 2.0),
                NodeRecord("step_c_fails", "failed", 1, None, "RuntimeError: card declined"),
            ],
            status="reverting",
            error="RuntimeError: card declined",
        )
        resumed = await rt.resume(run_id)
        with pytest.raises(aflow.errors.RecordedError, match="card declined"):
            await resumed.result()
        assert (await store.get_run(run_id)).status == StoredRunStatus.REVERTED
        states = {key: node.state for key, node in (await store.load_nodes(run_id)).items()}
    assert states == {"step_a": "reverted", "step_b": "reverted", "step_c_fails": "failed"}
    assert read(counts) == {"revert-B": 1, "revert-A": 1}


# --- text aflow never writes: a typed error naming the run ----------------------------------


async def test_a_node_state_aflow_never_writes_is_a_store_error_naming_the_run(
    store_url: str, counts: pathlib.Path
) -> None:
    """A crafted or damaged node row (a state no aflow writes) is refused as it is read:
    ``StoreError`` naming the run, the node and the text, never a ``ValueError`` from deep
    inside the resume. The run is left as it was (unclaimed, its rows untouched)."""
    await _schema(store_url)
    run_id = await anyio.to_thread.run_sync(
        _dead_run_as_text, store_url, "running", [("step_a", "finished-ish", "2")]
    )
    async with aflow.Runtime(store=store_url) as rt:
        assert rt.store is not None
        with pytest.raises(StoreError, match=run_id) as info:
            await rt.resume(run_id)
        assert "step_a" in str(info.value)
        assert "finished-ish" in str(info.value)
        assert not isinstance(info.value, ValueError)
        with pytest.raises(StoreError, match=run_id):
            await rt.store.load_nodes(run_id)
        with pytest.raises(StoreError, match=run_id):
            await rt.store.load_history(run_id)
        with pytest.raises(StoreError, match=run_id):
            await rt.fork(run_id, reuse=["step_a"])
    rows = await anyio.to_thread.run_sync(
        _sql, store_url, [("SELECT status, owner FROM aflow_runs WHERE run_id = ?", (run_id,))]
    )
    assert rows == [("running", None)]  # released at once, for a resume once it is repaired
    assert read(counts) == {}


async def test_a_run_status_aflow_never_writes_is_a_store_error_naming_the_run(
    store_url: str, counts: pathlib.Path
) -> None:
    await _schema(store_url)
    run_id = await anyio.to_thread.run_sync(_dead_run_as_text, store_url, "zombie", [])
    async with aflow.Runtime(store=store_url) as rt:
        store = rt.store
        assert store is not None
        for read_it in (
            lambda: store.get_run(run_id),
            lambda: store.list_runs(),
            lambda: rt.resume(run_id),
        ):
            with pytest.raises(StoreError, match=run_id) as info:
                await read_it()
            assert "zombie" in str(info.value)
        assert await rt.recover() == []  # it is no unfinished run: recovery passes it by
    assert read(counts) == {}


async def test_recovery_passes_over_a_run_with_a_crafted_node_and_takes_up_the_others(
    tmp_path: pathlib.Path, counts: pathlib.Path
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    await _schema(url)
    bad = await anyio.to_thread.run_sync(
        _dead_run_as_text, url, "running", [("step_a", "bogus", "2")]
    )
    good = await anyio.to_thread.run_sync(
        _dead_run_as_text, url, "running", [("step_a", "succeeded", "2")]
    )
    async with aflow.Runtime(store=url) as rt:
        found = await rt.recover()
        assert [run.id for run in found] == [good]
        assert await found[0].result() == 104
        assert rt.store is not None
        assert (await rt.store.get_run(bad)).status is StoredRunStatus.RUNNING


async def test_aflow_show_refuses_a_crafted_row_with_exit_2(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aflow import cli  # (imported here: aflow.cli is no attribute of aflow until then)

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    await _schema(url)
    run_id = await anyio.to_thread.run_sync(
        _dead_run_as_text, url, "running", [("step_a", "bogus", "2")]
    )
    code = await anyio.to_thread.run_sync(cli.main, ["--store", url, "show", run_id])
    assert code == 2
    err = capsys.readouterr().err
    assert run_id in err
    assert "'bogus'" in err


async def test_aflow_runs_takes_only_statuses_aflow_writes(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aflow import cli

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    await _schema(url)
    await anyio.to_thread.run_sync(_dead_run_as_text, url, "running", [])
    await anyio.to_thread.run_sync(_dead_run_as_text, url, "failed", [])
    code = await anyio.to_thread.run_sync(cli.main, ["--store", url, "runs", "--status", "running"])
    assert code == 0
    listed = capsys.readouterr().out
    assert "running" in listed
    assert "failed" not in listed
    with pytest.raises(SystemExit) as exited:
        await anyio.to_thread.run_sync(cli.main, ["--store", url, "runs", "--status", "runing"])
    assert exited.value.code == 2
    assert "invalid choice: 'runing'" in capsys.readouterr().err
