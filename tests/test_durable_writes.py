"""Checkpoints a worker commits itself (issue 16): the write-ahead rules hold.

A store that can commit a small batch at once on the calling thread
(``try_write_nodes``: SQLite, the memory store) lets the worker with nothing else to do
commit its batch itself, instead of waiting for the flusher. Checked here: each step
starts only once its parent's success is committed (and a step with a revert once its
own start is), a fan-out still shares one commit, a store that declines or fails is
handled as before, a wrapper is never bypassed; on SQLite, what a step sees through
another connection, a write that finds the file locked, the WAL's checkpoints, and
processes killed in the middle of a batch.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aflow
from aflow._runtime._journal import Journal, sync_writer
from aflow._runtime._options import RunOptions, new_execution
from aflow._runtime._scheduler import Execution
from aflow._serialize import JsonSerializer
from aflow.errors import StoreError
from aflow.stores import MemoryStore, NodeRecord, RunRecord, SQLiteStore, _sqlite
from aflow.testing import FakeClock

from . import write_workflows as ww
from .helpers import FakeStore, gated, on_each_backend

ROOT = pathlib.Path(__file__).resolve().parent.parent


class CommitsAtOnce(FakeStore):
    """A fake store that commits at once when asked (``try_write_nodes``), logging
    ``("commit", batch)``; ``decline`` makes it say no (the flusher writes instead,
    logging ``("write", batch)``), ``fail_now_at`` makes it raise."""

    def __init__(self) -> None:
        super().__init__()
        self.decline = False
        self.fail_now_at: tuple[str, str] | None = None
        self.commits: list[list[tuple[str, str]]] = []

    async def write_nodes(
        self, run_id: str, nodes: Sequence[NodeRecord], superseded: Sequence[NodeRecord] = ()
    ) -> None:
        await super().write_nodes(run_id, nodes, superseded)

    def try_write_nodes(
        self, run_id: str, nodes: Sequence[NodeRecord], superseded: Sequence[NodeRecord] = ()
    ) -> bool:
        if self.decline:
            return False
        batch = [(n.key, n.state) for n in nodes]
        if self.fail_now_at in batch:
            raise OSError("disk full")
        self.commits.append(batch)
        self.writes.append(batch)
        self.superseded.append([(n.key, n.state) for n in superseded])
        self.log.append(("commit", batch))
        return True


def durable(canvas: Any, store: FakeStore) -> Execution:
    journal = Journal(store, "run-1", JsonSerializer())  # type: ignore[arg-type]
    return new_execution(aflow.compile(canvas), RunOptions(), journal=journal)


def committed_before(log: list[tuple[str, Any]], record: tuple[str, str], event: Any) -> bool:
    """A commit (either way) holding ``record`` is in ``log`` before ``event``."""
    return any(e[0] in ("write", "commit") and record in e[1] for e in log[: log.index(event)])


def steps(store: FakeStore, names: list[str], *, suspend: bool) -> list[Any]:
    """A task per name (``r*`` names have a revert) logging its body into the store's
    log; ``suspend``: each waits once (a checkpoint) before it returns."""
    return [step(store.log, name, suspend) for name in names]


def step(log: list[tuple[str, Any]], name: str, suspend: bool) -> Any:
    @aflow.task(name=name)
    async def body(*args: Any) -> str:
        log.append(("body", name))
        if suspend:
            await anyio.lowlevel.checkpoint()
        return name

    if name.startswith("r"):

        @body.revert
        async def undo(*args: Any, result: Any) -> None:
            pass

    return body


# --- the write-ahead rules, with a worker that commits ---------------------------------


@on_each_backend
@pytest.mark.parametrize("suspend", [False, True], ids=["at-once", "suspending"])
async def test_each_step_starts_only_once_its_parent_s_success_is_committed(
    suspend: bool,
) -> None:
    store = CommitsAtOnce()
    names = ["p1", "r1", "p2", "p3", "r2", "r3", "p4"]
    tasks = steps(store, names, suspend=suspend)
    canvas = aflow.chain(*(t.s() if i else t.si() for i, t in enumerate(tasks)))
    assert await durable(canvas, store).execute() == "p4"
    log = store.log
    for parent, child in itertools.pairwise(names):
        assert committed_before(log, (parent, "succeeded"), ("body", child)), (parent, child)
        if child.startswith("r"):  # written ahead, in its parent's commit
            assert committed_before(log, (child, "running"), ("body", child))
            assert any(
                (parent, "succeeded") in batch and (child, "running") in batch
                for batch in store.writes
            )
    if not suspend:  # one commit per step, each by the worker: no flusher round trip
        assert len(store.commits) == len(store.writes) == len(names)
        assert all(entry[0] != "write" for entry in log)
    assert store.statuses == ["running", "succeeded"]


@on_each_backend
async def test_a_fan_out_s_successes_still_share_one_commit() -> None:
    n = 8
    go, all_in = anyio.Event(), anyio.Event()
    entered = 0

    @aflow.task
    async def leaf(i: int) -> int:
        nonlocal entered
        entered += 1
        if entered == n:
            all_in.set()
        await go.wait()
        return i

    store = CommitsAtOnce()
    store.pause_at(("leaf", "running"))  # the batch of the first starts, in flight
    execution = durable(aflow.group(leaf.s(i) for i in range(n)), store)
    async with gated(store.gate) as tg:
        tg.start_soon(execution.execute)
        await all_in.wait()
        await store.reached.wait()
        go.set()
        await anyio.wait_all_tasks_blocked()  # every leaf succeeded; the last one's worker,
        assert execution._done_count == n  # with nothing else running, did not commit
        assert not any(("leaf", "succeeded") in batch for batch in store.writes)
        store.gate.set()
    successes = [b for b in store.writes if any(state == "succeeded" for _, state in b)]
    assert len(successes) == 1
    assert len(successes[0]) == n
    assert execution.status is aflow.RunStatus.SUCCEEDED


@on_each_backend
async def test_a_store_that_cannot_commit_at_once_leaves_the_batch_to_the_flusher() -> None:
    store = CommitsAtOnce()
    store.decline = True
    names = ["p1", "r1", "p2", "r2"]
    tasks = steps(store, names, suspend=False)
    canvas = aflow.chain(*(t.s() if i else t.si() for i, t in enumerate(tasks)))
    assert await durable(canvas, store).execute() == "r2"
    assert store.commits == []
    for parent, child in itertools.pairwise(names):
        assert committed_before(store.log, (parent, "succeeded"), ("body", child))
        if child.startswith("r"):
            assert committed_before(store.log, (child, "running"), ("body", child))


@on_each_backend
@pytest.mark.parametrize("where", ["p1 success", "r1 start"])
async def test_a_commit_that_fails_at_once_stops_the_run_as_its_store_error(where: str) -> None:
    store = CommitsAtOnce()
    # r1's start goes out with p1's success: either way that commit fails
    store.fail_now_at = ("p1", "succeeded") if where == "p1 success" else ("r1", "running")
    tasks = steps(store, ["p1", "r1", "p2"], suspend=False)
    execution = durable(tasks[0].si() | tasks[1].s() | tasks[2].s(), store)
    with pytest.raises(StoreError, match="could not be written") as caught:
        await execution.execute()
    assert isinstance(caught.value.__cause__, OSError)
    assert ("body", "r1") not in store.log  # its parent's success never reached the store
    assert ("body", "p2") not in store.log
    assert "reverting" not in store.statuses  # nothing is undone: a resume goes on
    assert execution.status is aflow.RunStatus.FAILED


@on_each_backend
async def test_a_root_with_a_revert_is_committed_before_it_starts() -> None:
    store = CommitsAtOnce()
    (first, after) = steps(store, ["r1", "p1"], suspend=False)
    assert await durable(first.si() | after.s(), store).execute() == "p1"
    assert store.commits[0] == [("r1", "running")]  # committed by the worker, at once
    assert committed_before(store.log, ("r1", "running"), ("body", "r1"))


@on_each_backend
async def test_a_commit_at_once_waits_for_the_batch_in_flight() -> None:
    """A batch the flusher is writing is committed before any later one: a success is
    never committed ahead of the start the flusher is still writing."""
    store = CommitsAtOnce()
    go = anyio.Event()

    @aflow.task
    async def p1() -> str:
        store.log.append(("body", "p1"))
        await go.wait()
        return "p1"

    after = step(store.log, "p2", suspend=False)
    store.pause_at(("p1", "running"))  # the flusher's batch of p1's start, in flight
    execution = durable(p1.si() | after.s(), store)
    async with gated(store.gate) as tg:
        tg.start_soon(execution.execute)
        await store.reached.wait()
        go.set()
        await anyio.wait_all_tasks_blocked()  # p1 has succeeded meanwhile
        assert execution._done_count == 1
        assert not any(("p1", "succeeded") in batch for batch in store.writes)
        assert ("body", "p2") not in store.log
        store.gate.set()
    order = [e[1] for e in store.log if e[0] in ("write", "commit")]
    start = next(i for i, batch in enumerate(order) if ("p1", "running") in batch)
    success = next(i for i, batch in enumerate(order) if ("p1", "succeeded") in batch)
    assert start < success
    assert committed_before(store.log, ("p1", "succeeded"), ("body", "p2"))


class Wrapper:
    """A store wrapper that checks every write, and passes the rest on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write_nodes(self, run_id: str, nodes: Any, superseded: Any = ()) -> None:
        await self.inner.write_nodes(run_id, nodes, superseded)


def test_the_commit_at_once_is_used_only_where_write_nodes_is_defined_with_it(
    tmp_path: pathlib.Path,
) -> None:
    class Checked(CommitsAtOnce):
        async def write_nodes(self, run_id: str, nodes: Any, superseded: Any = ()) -> None:
            await super().write_nodes(run_id, nodes, superseded)

    store = CommitsAtOnce()
    assert sync_writer(store) == store.try_write_nodes  # type: ignore[arg-type]
    memory = MemoryStore()
    assert sync_writer(memory) == memory.try_write_nodes
    sqlite = SQLiteStore(str(tmp_path / "runs.db"))
    assert sync_writer(sqlite) == sqlite.try_write_nodes
    assert sync_writer(FakeStore()) is None  # type: ignore[arg-type]
    assert sync_writer(Checked()) is None  # type: ignore[arg-type]
    assert sync_writer(Wrapper(memory)) is None  # type: ignore[arg-type]


# --- SQLite: what a step sees, a locked file, the WAL ------------------------------------


async def test_each_step_sees_its_parents_committed_through_another_connection(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "runs.db"
    ww.DATABASE[:] = [str(path)]
    ww.SEEN.clear()
    n = 12
    async with aflow.Runtime(store=f"sqlite:///{path}") as rt:
        store = rt.store
        assert isinstance(store, SQLiteStore)
        link = store._link
        assert link is not None
        hops = link.sent
        run = await rt.submit(ww.probe_chain, n=n)
        assert await run.result() == n
        assert link.sent == hops  # every write of the run was committed on this thread
    # as it started, each step saw every step before it committed as succeeded
    assert [(i, i) for i in range(n)] == ww.SEEN


LOCKER = textwrap.dedent(
    """
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()
    db.execute("ROLLBACK")
    """
)


@contextlib.contextmanager
def locked(path: pathlib.Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the file's write lock until the block ends (or its stdin
    gets a line)."""
    with subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        try:
            assert proc.stdout.readline().strip() == "locked"
            yield proc
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            if proc.wait(timeout=30) != 0:
                proc.kill()


def record(key: str | None = None) -> RunRecord:
    now = time.time()
    return RunRecord(uuid.uuid4().hex, "mod:wf", "{}", "fp", "running", key, now, now)


async def test_a_write_that_finds_the_file_locked_waits_on_the_store_s_thread(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "runs.db"
    store = SQLiteStore(str(path), busy_timeout=30)
    await store.open()
    try:
        run = record()
        await store.create_run(run)
        link = store._link
        assert link is not None
        with locked(path) as locker:
            node = NodeRecord("a", "succeeded", 1, "1")
            assert not store.try_write_nodes(run.run_id, [node])  # nothing written
            done: list[str] = []

            async def write() -> None:
                await store.write_nodes(run.run_id, [node])
                done.append("written")

            async with anyio.create_task_group() as tg:
                tg.start_soon(write)
                with anyio.fail_after(10):
                    while link.idle:  # its write waits on the store's thread
                        await anyio.lowlevel.checkpoint()
                assert not store.try_write_nodes(run.run_id, [NodeRecord("b", "running", 1)])
                assert done == []
                assert locker.stdin is not None
                locker.stdin.write("go\n")  # the other process lets go
                locker.stdin.flush()
        assert done == ["written"]
        assert (await store.load_nodes(run.run_id))["a"].state == "succeeded"
        assert "b" not in await store.load_nodes(run.run_id)
        assert store.try_write_nodes(run.run_id, [NodeRecord("b", "running", 1)])
    finally:
        await store.close()


async def test_the_wal_is_checkpointed_on_the_store_s_thread_and_stays_bounded(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    every, bound = 50, 200  # (1,000 rows and 4,000 frames in use: the same rules, smaller)
    monkeypatch.setattr(_sqlite, "CHECKPOINT_EVERY", every)
    monkeypatch.setattr(_sqlite, "WAL_FRAMES_CAUGHT_UP", bound)
    path = tmp_path / "runs.db"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        run = record()
        await store.create_run(run)
        link = store._link
        assert link is not None
        assert link.db.execute("PRAGMA wal_autocheckpoint").fetchall() == [(0,)]
        assert link.db.execute("PRAGMA busy_timeout").fetchall() == [(0,)]
        assert link.thread_db.execute("PRAGMA busy_timeout").fetchall() == [(30_000,)]
        commits = 3000  # about 4 frames each: 12,000 frames if nothing started the WAL over
        for i in range(commits):
            node = NodeRecord(f"n{i}", "succeeded", 1, "1", None, 1.0, 2.0)
            if not store.try_write_nodes(run.run_id, [node]):
                await store.write_nodes(run.run_id, [node])
        assert len(await store.load_nodes(run.run_id)) == commits
        # It started over, again and again: it never grew far past the bound (the file
        # keeps its largest size). A catch-up follows the first checkpoint that finds it
        # past the bound, `every` rows later; writes wait for a checkpoint the thread has
        # not got to within 4x `every` rows.
        wal = path.with_name("runs.db-wal").stat().st_size
        assert wal <= 4096 * (bound + 6 * every * 5)
    finally:
        await store.close()


async def test_the_store_s_thread_keeps_the_order_of_writes(tmp_path: pathlib.Path) -> None:
    """While a job runs on the store's thread, nothing is written on the caller's: a
    later write queues behind it."""
    path = tmp_path / "runs.db"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        run = record()
        await store.create_run(run)
        link = store._link
        assert link is not None
        gate = threading.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(link.hop, lambda db: gate.wait(10))
            await anyio.wait_all_tasks_blocked()
            assert not link.idle
            assert not store.try_write_nodes(run.run_id, [NodeRecord("a", "running", 1)])
            tg.start_soon(store.write_nodes, run.run_id, [NodeRecord("a", "succeeded", 1, "1")])
            await anyio.wait_all_tasks_blocked()
            assert committed_keys(path) == []  # queued behind the job
            gate.set()
        assert committed_keys(path) == [("a", "succeeded")]
        assert [(n.key, n.state) for n in await store.load_history(run.run_id)] == [
            ("a", "succeeded")
        ]
    finally:
        await store.close()


async def test_a_job_that_fails_on_the_store_s_thread_does_not_end_it(
    tmp_path: pathlib.Path,
) -> None:
    store = SQLiteStore(str(tmp_path / "runs.db"))
    await store.open()
    try:
        link = store._link
        assert link is not None

        def broken() -> bool:
            raise RuntimeError("a job's own bug")

        link.jobs.put(broken)
        with anyio.fail_after(10):
            assert await store.list_runs() == []  # the thread runs the jobs after it
    finally:
        await store.close()


def committed_keys(path: pathlib.Path) -> list[Any]:
    """What another connection sees committed."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT key, state FROM aflow_nodes").fetchall()


# --- processes killed in the middle of a batch --------------------------------------------

#: Writes batches of ``ROWS`` nodes (each with a retry's failure the history keeps: a
#: transaction of several statements), saying ``committed I`` after each; as batch
#: ``KILL_AT`` is about to commit, with some of its pages already in the WAL (a cache of
#: two pages spills), the process kills itself.
BATCH_KILLER = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time
    from aflow.stores import NodeRecord, RunRecord, SQLiteStore

    ROWS, KILL_AT = int(sys.argv[2]), int(sys.argv[3])

    async def main():
        store = SQLiteStore(sys.argv[1])
        await store.open()
        now = time.time()
        await store.create_run(RunRecord("r", "mod:wf", "{}", "fp", "running", None, now, now))
        db = store._link.db
        db.execute("PRAGMA cache_size=2")
        batch = [0]

        def trace(sql):
            if sql == "COMMIT" and batch[0] == KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)

        db.set_trace_callback(trace)
        for i in range(KILL_AT + 1):
            batch[0] = i
            nodes = [NodeRecord(f"b{i}-{j}", "succeeded", 2, "x" * 3000) for j in range(ROWS)]
            retries = [NodeRecord(f"b{i}-{j}", "retrying", 1, None, "E: x") for j in range(ROWS)]
            assert store.try_write_nodes("r", nodes, retries)
            print("committed", i, flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_a_process_killed_mid_batch_loses_nothing_committed_and_none_of_that_batch(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "runs.db"
    rows, kill_at = 30, 5
    done = subprocess.run(
        [sys.executable, "-c", BATCH_KILLER, str(path), str(rows), str(kill_at)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    said = [int(line.split()[1]) for line in done.stdout.splitlines()]
    assert said == list(range(kill_at))
    with contextlib.closing(sqlite3.connect(path)) as db:
        nodes = db.execute("SELECT key, state, result FROM aflow_nodes ORDER BY key").fetchall()
        history = db.execute("SELECT key, state FROM aflow_transitions").fetchall()
        (check,) = db.execute("PRAGMA integrity_check").fetchone()
    assert check == "ok"
    expected = {f"b{i}-{j}" for i in range(kill_at) for j in range(rows)}
    assert {key for key, _, _ in nodes} == expected  # every batch it said was committed
    assert all(state == "succeeded" and result == "x" * 3000 for _, state, result in nodes)
    assert sorted(history) == sorted(
        (key, state) for key in expected for state in ("retrying", "succeeded")
    )


#: Runs ``logged_chain`` and kills itself as the commit of step ``KILL_KEY``'s success
#: begins (before it is durable).
RUN_KILLER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import aflow
    from tests import write_workflows as ww

    async def main():
        url, n, kill_key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        async with aflow.Runtime(store=url, lease=0.2) as rt:
            def trace(sql):
                if "INSERT INTO aflow_nodes" in sql and f"'{kill_key}', 'succeeded'" in sql:
                    os.kill(os.getpid(), signal.SIGKILL)

            rt.store._link.db.set_trace_callback(trace)
            run = await rt.submit(ww.logged_chain, n=n)
            print(run.id, flush=True)
            await run.result()

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_a_run_killed_as_a_step_s_success_commits_resumes_from_the_last_commit(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, log = tmp_path / "runs.db", tmp_path / "steps.log"
    url = f"sqlite:///{path}"
    n, kill_key = 8, "logged#6"  # the sixth step (position 5)
    env = {**os.environ, "AFLOW_STEP_LOG": str(log)}

    def crash() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", RUN_KILLER, url, str(n), kill_key],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = await anyio.to_thread.run_sync(crash)
    assert done.returncode == -signal.SIGKILL, done.stderr
    run_id = done.stdout.split()[0]
    assert ww.read_log(str(log)) == [0, 1, 2, 3, 4, 5]  # the sixth ran; the seventh never
    clock = FakeClock(autojump=False)
    clock.advance(0.3)  # the dead process's lease has run out
    monkeypatch.setenv("AFLOW_STEP_LOG", str(log))
    async with aflow.Runtime(store=url, lease=0.2, clock=clock) as rt:
        assert rt.store is not None
        stored = await rt.store.load_nodes(run_id)
        assert {k: (v.state, v.result) for k, v in stored.items()} == {
            key: ("succeeded", str(i + 1))
            for i, key in enumerate(["logged", *(f"logged#{j}" for j in range(2, 6))])
        }  # the first five, and nothing of the sixth
        run = await rt.resume(run_id)
        assert await run.result() == n
    # nothing committed ran again; the step whose commit was cut short did (at-least-once)
    assert ww.read_log(str(log)) == [0, 1, 2, 3, 4, 5, 5, 6, 7]
