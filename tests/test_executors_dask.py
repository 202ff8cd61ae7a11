"""``aflow.executors.Dask`` on a real cluster (tests/dask_cluster.py): lost workers, what
cannot cross, versions, the clients it takes, futures released, and a caller killed
mid-step then resumed. The saga's semantics on every executor are in
tests/test_executors_anywhere.py."""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import aflow
import aflow.executors
from aflow.errors import SerializationError, TaskTimeout, WorkerLost, WorkerMismatch
from aflow.executors import Dask
from tests import anywhere_workflows as aw
from tests.anywhere_workflows import lines
from tests.durable_workflows import read_counts
from tests.test_durable import LEASE, ROOT, later
from tests.test_executors_anywhere import wait_for_line


@pytest.fixture
def dask(dask_address: str) -> Iterator[Dask]:
    executor = Dask(dask_address)
    yield executor
    executor.close()


async def aflow_keys(executor: Dask) -> list[str]:
    """The tasks the scheduler still holds for this test's runs."""

    def held(dask_scheduler: Any) -> list[str]:
        return [str(k) for k in dask_scheduler.tasks if str(k).startswith("aflow-")]

    found: list[str] = await anyio.to_thread.run_sync(executor.client.run_on_scheduler, held)
    return found


async def test_a_worker_killed_mid_attempt_is_a_failed_attempt_and_is_retried(
    dask: Dask, tmp_path: pathlib.Path
) -> None:
    marker = tmp_path / "died"
    pid = await aflow.run(aw.dies_once.s(str(marker)), executor=dask)  # retries=1
    assert marker.read_text() == "died"
    assert pid != os.getpid()
    again = tmp_path / "again"
    with pytest.raises(WorkerLost, match=r"'dies': the worker running it was lost .*KilledWorker"):
        await aflow.run(aw.dies.s(str(again)), executor=dask)
    assert again.read_text() == "died"  # (ran once: Dask re-ran nothing by itself)
    assert await aflow.run(aw.echo.s(3), executor=dask) == 3  # the cluster came back


async def test_what_cannot_cross_is_an_error_naming_task_and_argument_before_sending(
    dask: Dask,
) -> None:
    with pytest.raises(SerializationError, match=r"'echo'.*argument 0"):
        await aflow.run(aw.echo.s(threading.Lock()), executor=dask)
    assert dask.client is None  # (found before the client was even opened)
    with pytest.raises(SerializationError, match=r"'gives_lock'.*a result from another process"):
        await aflow.run(aw.gives_lock.s(), executor=dask)


async def test_futures_are_released_once_answered(dask: Dask, log: pathlib.Path) -> None:
    assert await aflow.run(aw.echo.map(list(range(20))), executor=dask) == list(range(20))
    with pytest.raises(aw.Declined):
        await aflow.run(
            aw.saga, params={"order": "o", "log": str(log), "fail": "always"}, executor=dask
        )
    with anyio.fail_after(10):  # (a release reaches the scheduler in its next batch)
        while await aflow_keys(dask):  # noqa: ASYNC110  (the scheduler: another process)
            await anyio.sleep(0.02)


async def test_a_failed_attempts_task_is_released_while_its_error_is_kept(
    dask: Dask, tmp_path: pathlib.Path
) -> None:
    """The error of a lost worker keeps the frame that awaited the Dask future (its
    traceback, in the run's failures): the future is released all the same, or the
    scheduler would hold the task as long as anyone keeps the run."""
    async with aflow.Runtime(executor=dask) as rt:
        run = await rt.submit(aw.dies.s(str(tmp_path / "died")))
        with pytest.raises(WorkerLost):
            await run.result()
        kept = run.failures()["dies"]
        assert kept.exception.__traceback__ is not None
        with anyio.fail_after(10):
            while await aflow_keys(dask):  # noqa: ASYNC110  (the scheduler: another process)
                await anyio.sleep(0.02)
        assert kept.exception is not None


@pytest.fixture
def log(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "log"


async def test_workers_of_another_aflow_are_refused_at_connect_and_per_call(
    dask_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aflow.executors import _remote

    real = _remote.CALLER
    monkeypatch.setattr(_remote, "CALLER", (real[0], "0.0.0-other"))
    executor = Dask(dask_address)
    try:
        with pytest.raises(
            WorkerMismatch,
            match=r"task 'echo': Dask worker tcp://127\.0\.0\.1:\d+ runs Python .*, aflow ",
        ):
            await aflow.run(aw.echo.s(1), executor=executor)
        # (the check is skipped, as if the workers changed after it: each call is checked)
        monkeypatch.setattr(_remote, "CALLER", real)
        assert await aflow.run(aw.echo.s(1), executor=executor) == 1
        monkeypatch.setattr(_remote, "CALLER", (real[0], "0.0.0-other"))
        with pytest.raises(WorkerMismatch, match=r"caller runs Python .*, aflow 0\.0\.0-other"):
            await aflow.run(aw.echo.s(2), executor=executor)
    finally:
        executor.close()


async def test_process_workers_check_each_call_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from aflow.executors import _remote

    monkeypatch.setattr(_remote, "CALLER", ("2.7", _remote.CALLER[1]))
    with pytest.raises(
        WorkerMismatch, match=r"worker process \d+ runs Python 3\.\d+.*caller runs Python 2\.7"
    ):
        await aflow.run(aw.echo.s(1), executor="process")


async def test_a_client_of_ones_own_is_used_and_left_open(dask_address: str) -> None:
    from distributed import Client

    async with Client(dask_address, asynchronous=True) as client:
        assert await aflow.run(aw.where.s(), executor=client) != os.getpid()  # (a Client as such)
        mine = Dask(client=client)
        assert await aflow.run(aw.echo.s("x"), executor=mine) == "x"
        mine.close()
        assert client.status == "running"


def test_one_executor_serves_several_event_loops(dask_address: str) -> None:
    """run_sync makes a loop per call; the executor's client lives in a thread of its own."""
    executor = Dask(dask_address)
    try:
        assert aflow.run_sync(aw.echo.s(1), executor=executor) == 1
        assert aflow.run_sync(aw.echo.s(2), executor=executor) == 2
    finally:
        executor.close()


def test_dask_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"give one of address=, cluster= or client=, got none"):
        Dask()
    with pytest.raises(ValueError, match=r"got address, client"):
        Dask("tcp://127.0.0.1:1", client=object())
    with pytest.raises(ValueError, match=r"cluster= must be a Dask cluster"):
        Dask(cluster=object())
    with pytest.raises(ValueError, match=r"client= must be a distributed\.Client"):
        Dask(client=object())


async def test_an_unreachable_scheduler_is_a_lost_worker() -> None:
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        executor = Dask("tcp://127.0.0.1:9")
        with pytest.raises(
            WorkerLost, match=r"scheduler at tcp://127\.0\.0\.1:9 cannot be reached"
        ):
            await aflow.run(aw.echo.s(1), executor=executor)


async def test_a_scheduler_that_reruns_lost_workers_tasks_is_warned_of() -> None:
    from distributed import LocalCluster

    async with LocalCluster(
        n_workers=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        asynchronous=True,
        silence_logs=logging.ERROR,
    ) as cluster:
        executor = Dask(cluster=cluster)
        try:
            with pytest.warns(UserWarning, match=r"re-runs a task whose worker died, up to 3"):
                assert await aflow.run(aw.echo.s(1), executor=executor) == 1
        finally:
            await anyio.to_thread.run_sync(executor.close)


RESUMER = textwrap.dedent(
    """
    import asyncio, sys
    import aflow, aflow.executors
    from tests import anywhere_workflows as aw

    async def main():
        dask = aflow.executors.Dask(sys.argv[2])
        async with aflow.Runtime(store=sys.argv[1], lease=float(sys.argv[3]), executor=dask) as rt:
            run = await rt.submit(aw.abc, start=1, counts=sys.argv[4], log=sys.argv[5])
            print(run.id, flush=True)
            await run.result()

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_a_caller_killed_mid_step_releases_its_body_and_resumes(
    dask_address: str, store_url: str, tmp_path: pathlib.Path, log: pathlib.Path
) -> None:
    """SIGKILL of the calling process while step B runs on a Dask worker: the scheduler
    drops the dead client's task, B (checking in) stops, and a resume in this process
    runs B and C there without running A again."""
    counts = tmp_path / "counts.json"
    args = [store_url, dask_address, str(LEASE), str(counts), str(log)]
    async with await anyio.open_process(
        [sys.executable, "-c", RESUMER, *args], cwd=ROOT, stderr=None
    ) as proc:
        assert proc.stdout is not None
        with anyio.fail_after(30):
            said = b""
            while not said.endswith(b"\n"):
                said += await proc.stdout.receive()
            run_id = said.decode().strip()
            await wait_for_line(log, "holding")
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
    await wait_for_line(log, "stopped CancelledError")  # no body left running for nobody
    assert read_counts(counts) == {"A": 1, "B": 1}
    executor = Dask(dask_address)
    try:
        async with aflow.Runtime(
            store=store_url, recover=True, lease=LEASE, clock=later(), executor=executor
        ) as rt:
            assert await rt.get(run_id).result() == 104
    finally:
        executor.close()
    assert read_counts(counts) == {"A": 1, "B": 2, "C": 1}  # B again: at-least-once
    assert all(pid != os.getpid() for _, pid in lines(log))


def test_a_client_whose_loop_has_ended_is_a_clear_error_not_a_hang(dask_address: str) -> None:
    """A client made with asynchronous=True in one asyncio.run, used from the next."""
    from distributed import Client

    async def made() -> Any:
        return await Client(dask_address, asynchronous=True)

    async def close(client: Any) -> None:
        await client.close()

    import asyncio

    runner = asyncio.Runner()
    client = runner.run(made())
    try:
        runner_loop_stopped = Dask(client=client)
        with pytest.raises(RuntimeError, match="belongs to an event loop that no longer runs"):
            aflow.run_sync(aw.echo.s(1), executor=runner_loop_stopped)
    finally:
        runner.run(close(client))
        runner.close()


async def test_abandoned_attempts_no_one_asks_about_are_forgotten_once_ended(
    dask: Dask, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Attempts given up on are kept for the step's next attempt or revert to wait on;
    those none asks about (no retries, no revert) go once their body has ended."""
    from aflow.executors import _dask

    monkeypatch.setattr(_dask, "_PRUNE_AT", 2)
    for i in range(3):
        with pytest.raises(TaskTimeout):
            await aflow.run(aw.overstays.s(str(tmp_path / f"log{i}")), executor=dask)
    assert len(dask._abandoned) == 3
    for i in range(3):
        await wait_for_line(tmp_path / f"log{i}", "stopped CancelledError")
    assert await aflow.run(aw.echo.s(1), executor=dask) == 1
    assert dask._abandoned == {}
