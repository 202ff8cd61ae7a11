"""What a review of the executors' first step (issue 21) found wrong: each test failed
before its fix. Every task here is a module-level name, so a worker can import it."""

from __future__ import annotations

import asyncio
import os
import pathlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import aflow
import aflow.executors
from aflow.errors import AflowError
from aflow.executors import Process
from tests import executor_workflows as ew
from tests.test_executors import gone, lines

# --- bodies --------------------------------------------------------------------------


@aflow.task(executor="process")
def key_there(x: int) -> str:
    return aflow.current_step().idempotency_key


@aflow.task
def key_here(x: int) -> str:
    return aflow.current_step().idempotency_key


@aflow.task(executor="process")
def doubled(x: int) -> int:
    return 2 * x


@doubled.revert
def undouble(x: int, *, result: Any) -> None:
    ew.log(f"undouble {x}")


@aflow.task
def slow_charge(marker: str) -> str:
    """Marks its start, works 1.5 s, then marks the charge as made."""
    pathlib.Path(marker + ".started").write_text("")
    time.sleep(1.5)  # a body's own blocking work, where it runs (noqa: hook)
    pathlib.Path(marker + ".charged").write_text("")
    return "ch-1"


@slow_charge.revert
def slow_refund(marker: str, *, result: Any) -> None:
    """What the refund saw when it ran: was the charge it undoes made yet?"""
    charged = pathlib.Path(marker + ".charged").exists()
    pathlib.Path(marker + ".refund").write_text(f"charged={charged} result={result!r}")


@aflow.task
def nap(seconds: float) -> int:
    time.sleep(seconds)  # a body's own blocking work, where it runs (noqa: hook)
    return os.getpid()


class Refused(Exception):
    """An error with an __init__ of its own: it pickles, and does not unpickle."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"{code}: {why}")
        self.code = code


@aflow.task  # (on the loop)
def refuse(x: Any) -> None:
    raise Refused(402, "no funds")


@aflow.task(executor="process")
def hold_there(x: int) -> int:
    return x


@hold_there.revert
def unhold_there(x: int, *, result: Any, flow_failures: Any) -> None:
    ew.log(f"unhold {x} {sorted(flow_failures)}")


def _plain_body(x: int) -> int:
    return x + 1


#: a task made of a module-level function (not by decorating it in place)
plus_one = aflow.task(executor="process", name="plus_one")(_plain_body)


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture
def log(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pathlib.Path]:
    path = tmp_path / "log"
    monkeypatch.setenv("AFLOW_LOG", str(path))
    aflow.executors.shutdown()  # (workers read the variable as they start)
    yield path
    aflow.executors.shutdown()


logged = lines


# --- the findings ----------------------------------------------------------------------


async def test_map_items_in_a_worker_get_the_idempotency_keys_they_get_on_the_loop() -> None:
    """In-process, each call of a map has a key of its own (``.../key[i]``); in a worker,
    every item is told the node's key: an API that dedupes by it drops all but one."""
    here = await aflow.run(key_here.map([1, 2, 3]))
    assert len(set(here)) == 3
    there = await aflow.run(key_there.map([1, 2, 3]))
    assert [k.rsplit("/", 1)[-1] for k in there] == [
        k.rsplit("/", 1)[-1].replace("key_here", "key_there") for k in here
    ]


async def test_a_sleep_node_works_under_a_runs_process_executor() -> None:
    """aflow's own tasks (aflow.sleep, wait_for, ops steps, TaskFlow atoms, flows in a
    canvas) name no executor, so the run's "process" sends them to a worker too."""
    with anyio.fail_after(20):
        assert await aflow.run(ew.square.s(3) | aflow.sleep(0.01), executor="process") == 9


async def test_an_ops_step_runs_under_a_runtimes_process_executor() -> None:
    """README: "ops run with their work dir as the current directory" is "not yet"; in
    fact an op cannot run at all under Runtime(executor="process"): its task is a
    FunctionTask of aflow.ops._runner.run_step, which pickles by a name that is not it."""
    from aflow.ops import Step, Workflow
    from tests.ops_helpers import add

    wf = Workflow("w").add(Step("a", add, parameters={"x": 1}))
    with anyio.fail_after(30):
        async with aflow.Runtime(executor="process"):
            await wf.submit()
            assert await wf.wait() == "Succeeded"


async def test_a_maps_revert_runs_where_its_body_ran(log: pathlib.Path) -> None:
    """README: "reverts run where their task's body runs"; a map's do not."""
    with pytest.raises(ew.Declined):
        await aflow.run(doubled.map([1, 2]) | ew.boom.s())
    undone = [(what, pid) for what, pid in logged(log) if what.startswith("undouble")]
    assert len(undone) == 2
    assert all(pid != os.getpid() for _, pid in undone)


@pytest.mark.slow
async def test_a_cancelled_steps_revert_waits_for_its_body(tmp_path: pathlib.Path) -> None:
    """On the loop a cancelled sync body's thread is waited for before its revert runs.
    In a worker the body goes on, and the revert runs at once in another worker: the
    refund runs before the charge it should undo is made."""
    marker = str(tmp_path / "m")
    pool = Process(max_workers=2)
    try:
        async with aflow.Runtime(executor=pool) as rt:
            run = await rt.submit(slow_charge.s(marker))
            with anyio.fail_after(30):
                while not pathlib.Path(marker + ".started").exists():  # noqa: ASYNC110, ASYNC240
                    await anyio.sleep(0.02)
            await run.cancel()
        with anyio.fail_after(10):
            while not pathlib.Path(marker + ".charged").exists():  # noqa: ASYNC110, ASYNC240
                await anyio.sleep(0.05)
        refund = pathlib.Path(marker + ".refund").read_text()  # noqa: ASYNC240
        assert refund.startswith("charged=True"), refund
    finally:
        pool.shutdown()


def test_workers_outlive_the_thread_that_started_them() -> None:
    """PR_SET_PDEATHSIG fires when the *thread* that forked the worker ends, not the
    process: a run started from a short-lived thread (run_sync in a request thread, an
    anyio worker thread that idles out) leaves its pool's workers killed behind it."""
    pool = Process(max_workers=1)
    found: list[int] = []
    try:
        thread = threading.Thread(
            target=lambda: found.append(asyncio.run(aflow.run(nap.s(0), executor=pool)))
        )
        thread.start()
        thread.join()
        (worker,) = found
        # (the thread has ended: a death signal tied to it was sent as it exited, so the
        # next call meets a killed worker, a broken pool or a new worker)
        assert asyncio.run(aflow.run(nap.s(0), executor=pool)) == worker
        assert not gone(worker), "the worker died with the thread that started it"
    finally:
        pool.shutdown()


async def test_a_pool_shut_down_mid_run_fails_the_run_and_does_not_cancel_it() -> None:
    """A pending call cancelled by the pool (Process.shutdown, aflow.executors.shutdown
    at exit) comes out of asyncio.wrap_future as a CancelledError nobody asked for."""
    pool = Process(max_workers=1)
    try:

        async def stop_soon() -> None:
            await anyio.sleep(0.5)
            pool.shutdown(wait=False)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_soon)
                with pytest.raises(AflowError):
                    await aflow.run(aflow.group(nap.s(0.3) for _ in range(5)), executor=pool)
    finally:
        pool.shutdown()


async def test_a_remote_revert_gets_the_failures_of_steps_run_on_the_loop(
    log: pathlib.Path,
) -> None:
    """Failure.__reduce__ checks that its exception pickles, not that it unpickles: an
    error with an __init__ of its own, raised on the loop, makes every remote revert that
    takes ``flow_failures`` (or ``result=``) fail in the worker before it starts."""
    with pytest.raises(Refused):
        await aflow.run(hold_there.s(1) | refuse.s())
    assert [what for what, _ in logged(log)] == ["unhold 1 ['refuse']"]


async def test_a_task_made_of_a_module_level_function_runs_in_a_worker() -> None:
    """FunctionTask.__reduce__ names the task by its function's __qualname__, which names
    the function, not the task: ``t = aflow.task(executor="process")(f)`` cannot go."""
    assert await aflow.run(plus_one.s(1)) == 2


class Here(aflow.executors.Executor):
    """An executor of one's own that runs bodies in this process (a thread pool, a
    semaphore, a test double: what the Executor contract invites)."""

    async def call(
        self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], step: Any
    ) -> Any:
        return getattr(target, "fn", target)(*args, **kwargs)


async def test_current_step_in_an_executor_of_ones_own_names_the_right_step() -> None:
    """The remote path skips InContext (no STEP set), and REMOTE_STEP is read only when
    no run is current: a body an in-process Executor runs is told another node's step."""
    keys = await aflow.run(aflow.group(key_here.s(i) for i in range(3)), executor=Here())
    assert len(set(keys)) == 3, keys
