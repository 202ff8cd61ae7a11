"""One saga, unchanged, on every executor (issue 21): the loop, worker processes, and the
workers of a real Dask cluster (tests/dask_cluster.py). The same semantics everywhere:
compensation in reverse order, where the body ran; a failure on a worker retried by
aflow alone; a cancel or a timeout that a body checking in sees; what a body asks of
itself (``aflow.current_step()``) answered there."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import aflow
import aflow.executors
from aflow.errors import RunCancelled, TaskTimeout
from tests import anywhere_workflows as aw
from tests.anywhere_workflows import lines


@pytest.fixture(params=["loop", "process", "dask"])
def executor(request: pytest.FixtureRequest) -> Iterator[Any]:
    """What a run is given: "loop", "process", or a Dask executor on the session's cluster."""
    if request.param != "dask":
        yield request.param
        return
    dask = aflow.executors.Dask(request.getfixturevalue("dask_address"))
    yield dask
    dask.close()


@pytest.fixture
def log(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "log"


def elsewhere(executor: Any, pids: list[int]) -> bool:
    """The bodies ran in this process (the loop) or in others (every other executor)."""
    here = os.getpid()
    return all(pid == here for pid in pids) if executor == "loop" else here not in pids


async def wait_for_line(log: pathlib.Path, what: str) -> None:
    """Until a body (maybe in another process) has written ``what``."""
    with anyio.fail_after(20):
        while what not in [line for line, _ in lines(log)]:  # noqa: ASYNC110  (another process)
            await anyio.sleep(0.01)


async def test_the_saga_runs_and_unwinds_in_reverse_order_wherever_it_runs(
    executor: Any, log: pathlib.Path
) -> None:
    where = str(log)
    assert await aflow.run(aw.saga, params={"order": "o-1", "log": where}, executor=executor) == (
        "shipped-paid-rsv-o-1"
    )
    with pytest.raises(aw.Declined, match="carrier refused paid-rsv-o-2"):
        await aflow.run(
            aw.saga, params={"order": "o-2", "log": where, "fail": "always"}, executor=executor
        )
    done = lines(log)
    assert [what for what, _ in done] == [
        "reserve o-1",
        "charge rsv-o-1 attempt=1 run=" + done[1][0].split("run=")[1],
        "ship paid-rsv-o-1 attempt=1",
        "reserve o-2",
        "charge rsv-o-2 attempt=1 run=" + done[4][0].split("run=")[1],
        "ship paid-rsv-o-2 attempt=1",  # retries=2: three attempts, all declined
        "ship paid-rsv-o-2 attempt=2",
        "ship paid-rsv-o-2 attempt=3",
        "refund paid-rsv-o-2",  # the reverts, in reverse order, where the bodies ran
        "release rsv-o-2",
    ]
    assert elsewhere(executor, [pid for _, pid in done])


async def test_a_body_knows_its_run_step_and_attempt_wherever_it_runs(
    executor: Any, log: pathlib.Path
) -> None:
    async with aflow.Runtime(executor=executor) as rt:
        run = await rt.submit(aw.saga, order="o-3", log=str(log), fail="once")
        assert await run.result() == "shipped-paid-rsv-o-3"
    what = [line for line, _ in lines(log)]
    assert what[1] == f"charge rsv-o-3 attempt=1 run={run.id} key=charge"
    assert what[2:] == ["ship paid-rsv-o-3 attempt=1", "ship paid-rsv-o-3 attempt=2"]
    assert run.step("ship").attempts == 2


async def test_a_cancel_mid_step_unwinds_and_the_body_checking_in_stops(
    executor: Any, log: pathlib.Path
) -> None:
    async with aflow.Runtime(executor=executor) as rt:
        run = await rt.submit(aw.saga, order="o-4", log=str(log), fail="hold")
        await wait_for_line(log, "holding")
        await run.cancel()
        with pytest.raises(RunCancelled):
            await run.result()
    await wait_for_line(log, "stopped CancelledError")  # told, not left running
    what = [line for line, _ in lines(log)]
    assert "ran out" not in what
    what.remove("stopped CancelledError")  # (told as the unwinding began: in any order)
    assert what == [
        "reserve o-4",
        "charge rsv-o-4 attempt=1 run=" + what[1].split("run=")[1],
        "ship paid-rsv-o-4 attempt=1",
        "holding",
        "refund paid-rsv-o-4",
        "release rsv-o-4",
    ]


async def test_a_timeout_applies_and_the_body_checking_in_stops(
    executor: Any, log: pathlib.Path
) -> None:
    with pytest.raises(TaskTimeout):
        await aflow.run(aw.overstays.s(str(log)), executor=executor)
    await wait_for_line(log, "stopped CancelledError")
    assert [line for line, _ in lines(log)] == ["holding", "stopped CancelledError"]


async def test_check_cancelled_outside_a_body_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="only available inside a task"):
        aflow.check_cancelled()
