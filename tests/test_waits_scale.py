"""Durable waits at scale (issue 22): 10,000 runs waiting at once, each unloaded (recorded
``waiting`` in its store, with no task and no run in memory), then all taken up again.

What they cost in memory and time, against runs that are not waiting, is measured by
``benchmarks/waits.py``; here the counts are asserted: no asyncio task and no execution
per waiting run."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import anyio
import pytest

import aflow
from aflow._runtime._scheduler import Execution
from aflow.stores import StoredRunStatus
from aflow.testing import FakeClock

RUNS = 10_000
#: one handle in this many is kept by the test (it follows its run when taken up again)
HELD_EVERY = 10


@aflow.task
async def begin(i: int) -> int:
    return i


@aflow.task
async def finish(payload: Any) -> Any:
    return {"sent": payload}


GATE: dict[str, anyio.Event] = {}


@aflow.task
async def gated(i: int) -> int:
    GATE["entered"].set()
    await GATE["open"].wait()
    return i


@aflow.workflow
def gate_then_wait(i: int) -> Any:
    """A step held at a gate (so a heartbeat renews the run), then a wait."""
    return gated.s(i) | aflow.wait_for("go") | finish.s()


async def test_an_unloaded_run_is_freed_at_once_not_at_the_next_heartbeat() -> None:
    GATE.update(entered=anyio.Event(), open=anyio.Event())
    async with (
        FakeClock(autojump=False) as clock,
        aflow.Runtime(store="memory://", clock=clock, lease=4.0) as rt,
    ):
        before = executions()
        run_id = (await rt.submit(gate_then_wait, i=1)).id
        await GATE["entered"].wait()
        clock.advance(1.0)  # a heartbeat renews the run...
        assert rt.store is not None
        for _ in range(100):  # ...and ends its tick
            await anyio.lowlevel.checkpoint()
        GATE["open"].set()  # then the run waits, and is unloaded
        while (await rt.store.get_run(run_id)).status != StoredRunStatus.WAITING:
            await anyio.lowlevel.checkpoint()
        for _ in range(100):
            await anyio.lowlevel.checkpoint()
        assert executions() == before  # (no clock advance: no heartbeat since)
        assert await rt.send(run_id, "go", "now")
        with anyio.fail_after(10):
            while (await rt.store.get_run(run_id)).status != StoredRunStatus.SUCCEEDED:
                await anyio.lowlevel.checkpoint()
        assert await (await rt.retrieve(run_id)).result() == {"sent": "now"}


@aflow.workflow
def go_when_told(i: int) -> Any:
    """A step, a wait for ``go``, a step."""
    return begin.s(i) | aflow.wait_for("go") | finish.s()


def executions() -> int:
    """The runs in memory in this process (after a full collection)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Execution))


async def until_stored(rt: aflow.Runtime, status: StoredRunStatus, n: int, limit: float) -> None:
    """Until the store records ``n`` runs with ``status`` (``limit`` real seconds at most)."""
    assert rt.store is not None
    found = 0
    with anyio.move_on_after(limit):
        # (the store has no event to wait on)
        while (found := len(await rt.store.list_runs(status, limit=n + 1))) < n:  # noqa: ASYNC110
            await anyio.sleep(0.02)
    assert found == n, f"{found:,} of {n:,} runs {status} after {limit} s"


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_ten_thousand_runs_wait_at_once_unloaded_then_all_finish() -> None:
    started = time.perf_counter()
    async with aflow.Runtime(store="memory://") as rt:
        store = rt.store
        assert store is not None
        tasks_before = len(asyncio.all_tasks())
        executions_before = executions()
        ids: list[str] = []
        held: dict[int, aflow.Run[Any]] = {}
        for i in range(RUNS):
            run = await rt.submit(go_when_told, i=i)
            ids.append(run.id)
            if i % HELD_EVERY == 0:
                held[i] = run
        del run
        assert len(set(ids)) == RUNS

        await until_stored(rt, StoredRunStatus.WAITING, RUNS, limit=60)
        submitted = time.perf_counter()
        for run_id in ids:  # each recorded waiting, held by no process
            record = await store.get_run(run_id)
            assert (record.status, record.owner) == (StoredRunStatus.WAITING, None)
        assert not set(ids) & {r.id for r in rt.runs()}  # no live run here
        assert rt.runs() == []
        # What they hold while they wait: no task (the runtime's own tasks only), and no
        # execution but those of the handles the test keeps.
        tasks_waiting = len(asyncio.all_tasks())
        assert tasks_waiting <= tasks_before, (tasks_before, tasks_waiting)
        # (the heartbeat once kept the runs it renewed until its next tick, 2.5 s later)
        in_memory = executions() - executions_before
        assert in_memory <= len(held), f"{in_memory:,} runs in memory, {len(held):,} handles held"
        assert all(h.report(steps=False).status == "waiting" for h in held.values())
        assert not any(h.ready() for h in held.values())

        for i, run_id in enumerate(ids):
            assert await rt.send(run_id, "go", i)
        with anyio.fail_after(60):
            for i, handle in held.items():  # a held handle follows its run again
                assert await handle.result() == {"sent": i}
        await until_stored(rt, StoredRunStatus.SUCCEEDED, RUNS, limit=60)
        assert rt.runs() == []
        for i, run_id in enumerate(ids):  # every run got its own event
            handle = await rt.retrieve(run_id)
            assert await handle.result() == {"sent": i}, i
    print(
        f"\n{RUNS:,} runs: all waiting after {submitted - started:.1f} s, "
        f"all done {time.perf_counter() - submitted:.1f} s later"
    )
