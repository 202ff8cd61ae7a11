"""Executors (issue 21, first step): task bodies in worker processes (``executor="process"``),
with the run's graph, retries, compensation and state kept in this process."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import aflow
import aflow.executors
from aflow.errors import RemoteError, RunCancelled, SerializationError, TaskTimeout, WorkerLost
from aflow.executors import Call, Executor, Process
from tests import executor_workflows as ew
from tests.anywhere_workflows import lines
from tests.durable_workflows import read_counts
from tests.test_durable import LEASE, crash_in, later


@pytest.fixture
def log(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pathlib.Path]:
    """What the bodies did, and in which process (the workers inherit the variable)."""
    path = tmp_path / "log"
    monkeypatch.setenv("AFLOW_LOG", str(path))
    aflow.executors.shutdown()  # (workers read the variable as they start)
    yield path
    aflow.executors.shutdown()


async def test_a_saga_runs_in_worker_processes_and_unwinds_there(log: pathlib.Path) -> None:
    assert await aflow.run(ew.saga, params={"order": "o-1"}) == "shipped-paid-rsv-o-1"
    with pytest.raises(ew.Declined, match="carrier refused paid-rsv-o-2"):
        await aflow.run(ew.saga, params={"order": "o-2", "fail": True})
    done = lines(log)
    assert [what.split(" attempt=")[0] for what, _ in done] == [
        "reserve o-1",
        "charge rsv-o-1",
        "ship paid-rsv-o-1",
        "reserve o-2",
        "charge rsv-o-2",
        "ship paid-rsv-o-2",
        "refund paid-rsv-o-2",  # the reverts, in reverse order, in the workers too
        "release rsv-o-2",
    ]
    assert all(pid != os.getpid() for _, pid in done)


async def test_a_body_in_a_worker_knows_its_step(log: pathlib.Path) -> None:
    async with aflow.Runtime() as rt:
        run = await rt.submit(ew.saga, order="o-3")
        await run.wait()
    (charge,) = [what for what, _ in lines(log) if what.startswith("charge")]
    assert charge == f"charge rsv-o-3 attempt=1 run={run.id} key=charge"


async def test_the_runs_executor_runs_the_tasks_that_name_none() -> None:
    here = os.getpid()
    assert await aflow.run(ew.plain.s(1)) == here  # (a sync body: a thread of this process)
    assert await aflow.run(ew.plain.s(1), executor="process") != here
    async with aflow.Runtime(executor="process") as rt:
        assert await rt.run(ew.plain.s(1)) != here
    local = aflow.task(executor="loop")(ew.plain.fn)
    async with aflow.Runtime(executor="process") as rt:
        assert await rt.run(local.s(1)) == here  # (a task that names the loop keeps it)


async def test_a_map_calls_each_item_in_the_workers() -> None:
    assert await aflow.run(ew.square.map([1, 2, 3, 4])) == [1, 4, 9, 16]
    assert await aflow.run(aflow.group(ew.square.s(i) for i in range(6))) == [
        i * i for i in range(6)
    ]


async def test_what_cannot_cross_to_a_worker_is_an_error_naming_task_and_value() -> None:
    with pytest.raises(SerializationError, match=r"'echo'.*argument 0.*must pickle") as info:
        await aflow.run(ew.echo.s(ew.Opaque()))
    assert info.value.task == "echo"
    assert info.value.path == "argument 0"
    with pytest.raises(SerializationError, match=r"'gives_opaque'.*must pickle"):
        await aflow.run(ew.gives_opaque.s())
    with pytest.raises(RemoteError, match=r"Local: from a local class") as raised:
        await aflow.run(ew.raises_opaque.s())
    assert "raises_opaque" in raised.value.traceback_text

    @aflow.task(executor="process")
    def nested(x: int) -> int:  # (not a module-level name: a worker cannot import it)
        return x

    with pytest.raises(SerializationError, match=r"define .*nested.* at a module's top level"):
        await aflow.run(nested.s(1))


async def test_a_lost_worker_is_a_failed_attempt_and_is_retried(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "died"
    pid = await aflow.run(ew.dies_once.s(str(marker)))  # retries=2
    assert marker.read_text() == "died"
    assert pid != os.getpid()
    again = tmp_path / "again"
    with pytest.raises(WorkerLost, match="'dies_without_retries': the worker running it was"):
        await aflow.run(ew.dies_without_retries.s(str(again)))
    assert await aflow.run(ew.square.s(3)) == 9  # the pool came back


async def test_a_timeout_and_a_cancel_abandon_the_attempt_and_discard_its_result(
    log: pathlib.Path,
) -> None:
    with pytest.raises(TaskTimeout):
        await aflow.run(ew.sleeps.s(1.0).set(timeout=0.2))
    async with aflow.Runtime() as rt:
        run = await rt.submit(ew.sleeps.s(1.0))
        with anyio.fail_after(10):
            while run.steps()[0].state.value != "running":  # noqa: ASYNC110
                await anyio.sleep(0.01)
        await run.cancel()
        assert run.status.value == "cancelled"
        with pytest.raises(RunCancelled):
            await run.result()


def test_executor_values_are_checked() -> None:
    with pytest.raises(ValueError, match=r"task 'plain'.*'loop', 'process'"):
        aflow.task(executor="threads")(ew.plain.fn)
    with pytest.raises(TypeError, match="executor must be"):
        aflow.Runtime(executor=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_workers"):
        Process(max_workers=0)
    assert isinstance(Process(), Executor)


class Counting(Executor):
    """An executor of one's own: it runs bodies here, counting the calls."""

    name = "counting"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def call(
        self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], step: Call
    ) -> Any:
        self.calls.append(step.key)
        fn = getattr(target, "fn", target)
        return fn(*args, **kwargs)


async def test_an_executor_of_ones_own_gets_every_attempt_and_revert(log: pathlib.Path) -> None:
    mine = Counting()
    with pytest.raises(ew.Declined):
        await aflow.run(ew.reserve.s("x") | ew.ship.s(fail=True), executor=mine)
    # (reserve and ship name "process": the run's executor is for the tasks naming none)
    assert mine.calls == []
    with pytest.raises(ew.Declined, match="boom 1"):
        await aflow.run(ew.hold.s(1) | ew.boom.s(), executor=mine)
    assert mine.calls == ["hold", "boom", "hold"]  # the task, the failure, the revert
    assert [what for what, _ in lines(log)][-1] == "unhold 1"


def gone(pid: int) -> bool:
    """The process has ended (a zombie nobody reaped counts: it runs nothing)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@pytest.mark.slow
async def test_a_caller_killed_mid_step_takes_its_worker_along_and_resumes(
    store_url: str, counts: pathlib.Path, log: pathlib.Path
) -> None:
    """SIGKILL of the calling process while step B runs in a worker: the worker dies too
    (no body left running for nobody), and a resume does not run A again."""
    run_id = await anyio.to_thread.run_sync(
        crash_in, store_url, "abc", "B", counts, "tests.executor_workflows"
    )
    assert read_counts(counts) == {"A": 1, "B": 1}
    ((_, worker),) = [line for line in lines(log) if line[0] == "b"]
    with anyio.fail_after(10):
        while not gone(worker):  # noqa: ASYNC110  (nothing to wait on: another process)
            await anyio.sleep(0.05)
    aflow.executors.shutdown()  # (this process's workers: started with AFLOW_COUNTS set)
    async with aflow.Runtime(store=store_url, recover=True, lease=LEASE, clock=later()) as rt:
        run = rt.get(run_id)  # recovered at start-up
        assert await run.result() == 104
    assert read_counts(counts) == {"A": 1, "B": 2, "C": 1}  # B again: at-least-once
