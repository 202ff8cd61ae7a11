"""A hostile tester's look at the executors (issue 21): task bodies in worker processes
and on a Dask cluster, with the run's graph, retries, compensation and state kept here.

The tests in the first part fail on the code they were written against (commit
3fdd846; each says what goes wrong); those in the second part are attacks that held. Every task is a
module-level name in tests/hostile_executor_workflows.py, so workers can import it.
Other processes are waited on by polling the files they write (never a bare sleep)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

import aflow
import aflow.executors
from aflow.errors import (
    AflowError,
    RemoteError,
    RunCancelled,
    SerializationError,
    TaskTimeout,
    WorkerLost,
)
from aflow.executors import Dask, Process
from tests import hostile_executor_workflows as hw
from tests.test_executors_dask import aflow_keys

ROOT = pathlib.Path(__file__).resolve().parent.parent


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def log(tmp_path: pathlib.Path) -> str:
    return str(tmp_path / "log")


async def wait_for(log: str, what: str, seconds: float = 15.0) -> None:
    """Until a body (in another process) has written the line ``what``."""
    with anyio.fail_after(seconds):
        while what not in hw.lines(log):  # noqa: ASYNC110  (another process writes it)
            await anyio.sleep(0.01)


async def warm(pool: Process, workers: int) -> None:
    """Start ``workers`` worker processes of ``pool`` (a spawn takes a while: timeouts
    below must not count it)."""
    with anyio.fail_after(30):
        await aflow.run(aflow.group(hw.echo.s(i) for i in range(workers)), executor=pool)
        if workers > 1:  # (side by side: each call in a worker of its own)
            await aflow.run(
                aflow.group(hw.naps.s(os.devnull, 0.3, str(i)) for i in range(workers)),
                executor=pool,
            )


@pytest.fixture
async def pool2() -> AsyncIterator[Process]:
    pool = Process(max_workers=2)
    await warm(pool, 2)
    yield pool
    await anyio.to_thread.run_sync(pool.shutdown)


@pytest.fixture
async def pool1() -> AsyncIterator[Process]:
    pool = Process(max_workers=1)
    await warm(pool, 1)
    yield pool
    await anyio.to_thread.run_sync(pool.shutdown)


@pytest.fixture(params=["process", "dask"])
def elsewhere(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A Process pool of the test's own, or a Dask executor on the session's cluster."""
    if request.param == "process":
        pool = Process(max_workers=1)
        yield pool
        pool.shutdown()
        return
    dask = Dask(request.getfixturevalue("dask_address"))
    yield dask
    dask.close()


# =========================================================================================
# Findings: each of these fails on the code they were written against (commit 3fdd846).
# =========================================================================================


async def test_a_revert_never_runs_before_the_body_it_undoes_even_when_the_retry_times_out(
    pool2: Process, log: str
) -> None:
    """README: "the step's next attempt, or its revert, waits for it first (a refund
    never runs before the charge it undoes has ended)". Attempt 1 (1.5 s) times out at
    0.4 s and is abandoned; attempt 2 pops it from ``Process._abandoned`` and waits for
    it, times out itself while waiting, and the entry is gone: the revert runs at once,
    while attempt 1's charge is still being made."""
    with pytest.raises(TaskTimeout):
        await aflow.run(hw.slow_charge_once.s(log, 1.5), executor=pool2)
    await wait_for(log, "end 1")
    await wait_for(log, "refund")
    done = hw.lines(log)
    assert done.index("end 1") < done.index("refund"), done


async def test_on_dask_a_revert_never_runs_before_the_body_it_undoes(
    dask_address: str, log: str
) -> None:
    """The Dask executor's wait for an abandoned body, cancelled by the waiting
    attempt's own timeout, leaves the entry for the revert (it was popped first)."""
    async with Dask(dask_address) as executor:
        with pytest.raises(TaskTimeout):
            await aflow.run(hw.slow_charge_once.s(log, 1.5), executor=executor)
        await wait_for(log, "end 1")
        await wait_for(log, "refund")
    done = hw.lines(log)
    assert done.index("end 1") < done.index("refund"), done


async def test_on_dask_two_attempts_of_one_step_never_run_at_once(
    dask_address: str, log: str
) -> None:
    async with Dask(dask_address) as executor:
        with pytest.raises(TaskTimeout):
            await aflow.run(hw.slow_charge.s(log, 1.5), executor=executor)
        await wait_for(log, "refund")
    running: set[str] = set()
    for line in hw.lines(log):
        what, _, attempt = line.partition(" ")
        if what == "start":
            assert not running, f"attempt {attempt} started beside {running}: {hw.lines(log)}"
            running.add(attempt)
        elif what == "end":
            running.discard(attempt)


async def test_two_attempts_of_one_step_never_run_at_once(pool2: Process, log: str) -> None:
    """Same cause: attempt 2 times out while it waits for attempt 1's body, so attempt 3
    does not wait at all and runs beside attempt 1 (two charges in flight at once)."""
    with pytest.raises(TaskTimeout):
        await aflow.run(hw.slow_charge.s(log, 1.5), executor=pool2)
    await wait_for(log, "refund")
    running: set[str] = set()
    for line in hw.lines(log):
        what, _, attempt = line.partition(" ")
        if what == "start":
            assert not running, f"attempt {attempt} started beside {running}: {hw.lines(log)}"
            running.add(attempt)
        elif what == "end":
            running.discard(attempt)


async def test_bodies_still_queued_when_their_run_is_cancelled_never_start(
    pool1: Process, log: str
) -> None:
    """A call waiting in the pool's call queue is already "running" for
    concurrent.futures (``future.cancel()`` fails), so a cancelled run's bodies that never
    started are only marked abandoned, and start later, for nobody: side effects after
    ``run.cancel()`` returned, never reverted (on Dask a released task never starts)."""
    async with aflow.Runtime(executor=pool1) as rt:
        busy = await rt.submit(hw.busy.s(log, 1.0))
        await wait_for(log, "busy start")
        run = await rt.submit(aflow.group([hw.side_effect.s(log, "a"), hw.side_effect.s(log, "b")]))
        await anyio.sleep(0.3)  # (both calls handed to the pool, queued behind busy)
        await run.cancel()
        assert run.status is aflow.RunStatus.CANCELLED
        assert await busy.result() == "busy"
    with anyio.move_on_after(1.0):  # whatever was queued would run right after busy
        while not any(line.startswith("side") for line in hw.lines(log)):  # noqa: ASYNC110
            await anyio.sleep(0.02)
    assert [line for line in hw.lines(log) if line.startswith("side")] == []


async def test_an_attempt_that_timed_out_before_it_started_does_not_run_beside_its_retry(
    pool1: Process, log: str
) -> None:
    """Same cause, with a timeout: a busy pool holds attempt 1 (1 s timeout) in its call
    queue past its timeout; it is abandoned, attempt 2 waits for it, then it runs after
    all (for nobody), and attempt 2 runs it again: one success, two executions. On the
    loop or on Dask an attempt given up on before it started never starts."""
    async with aflow.Runtime(executor=pool1) as rt:
        busy = await rt.submit(hw.busy.s(log, 1.5))
        await wait_for(log, "busy start")
        quick = await rt.submit(hw.quick_with_timeout.s(log))
        with anyio.fail_after(15):
            assert await quick.result() == "quick"
            assert await busy.result() == "busy"
    assert [line for line in hw.lines(log) if line.startswith("quick")] == ["quick attempt=2"]


async def test_an_executor_keeps_nothing_of_an_abandoned_attempt_once_its_body_ended(
    pool1: Process, log: str
) -> None:
    """``Process._abandoned`` keeps the future (and the pickled result it holds) of every
    cancelled or timed-out attempt that no retry or revert pops: a long-lived runtime
    piles them up, one per abandoned step, forever."""
    with pytest.raises(TaskTimeout):
        await aflow.run(hw.naps.s(log, 0.5, "x").set(timeout=0.1), executor=pool1)
    await wait_for(log, "nap end x")
    with anyio.move_on_after(2):
        while pool1._abandoned:  # noqa: ASYNC110
            await anyio.sleep(0.02)
    assert pool1._abandoned == {}


async def test_a_result_the_caller_cannot_unpickle_is_a_serialization_error(
    elsewhere: Any,
) -> None:
    """A worker with a package the caller lacks returns one of its objects: the caller's
    ``pickle.loads`` in ``answer_of`` raises a bare AttributeError (or
    ModuleNotFoundError) from the unpickler, as if the body had raised it (only aflow's
    note names the task; nothing says the result could not be loaded here), retried
    like the body's own failure. README: a result "must pickle", else a
    SerializationError naming the task, as for a result that does not pickle there."""
    with pytest.raises(SerializationError, match="gives_ghost"):
        await aflow.run(hw.gives_ghost.s(), executor=elsewhere)


async def test_an_error_the_caller_cannot_unpickle_is_a_remote_error(elsewhere: Any) -> None:
    """README: "an error whose type cannot come back is an aflow.errors.RemoteError with
    its type, message and traceback as text". The worker only checks that the error
    unpickles *there*; one whose type only the worker has comes back as a bare
    AttributeError ("Can't get attribute 'PhantomError'"), the body's message and its
    traceback there lost."""
    with pytest.raises(RemoteError, match="only the worker has") as raised:
        await aflow.run(hw.raises_ghost.s(), executor=elsewhere)
    assert "raises_ghost" in raised.value.traceback_text


async def test_an_argument_the_worker_cannot_unpickle_is_an_error_naming_the_task(
    elsewhere: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A class of the caller's own that the workers cannot import (a Dask user's class
    in ``__main__``, a package installed here only): ``run_blob`` unpickles the call
    before its try (and before the version check), so the caller gets the worker's bare
    AttributeError (the unpickler's, not an aflow error: only aflow's note names the
    task, nothing the argument), retried like a failure of the body."""
    kind = type("CallerOnly", (), {"__module__": hw.__name__, "__qualname__": "CallerOnly"})
    monkeypatch.setattr(hw, "CallerOnly", kind, raising=False)
    with pytest.raises(AflowError, match="takes_anything"):
        await aflow.run(hw.takes_anything.s(kind()), executor=elsewhere)


async def test_a_task_the_workers_cannot_import_is_an_error_naming_it(
    elsewhere: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: "a task must be a module-level name the workers can import (it is named,
    not sent)". A Dask user's task in their script's ``__main__`` (or in a module the
    workers run an older copy of) is not there: the worker's unpickling, outside
    ``run_blob``'s try, gives the caller a bare AttributeError ("module ... has no
    attribute 'late_body'"), not an aflow error saying the workers cannot import the
    task."""

    def late(x: int) -> int:
        return x

    late.__module__ = hw.__name__
    late.__qualname__ = late.__name__ = "late_body"
    monkeypatch.setattr(hw, "late_body", late, raising=False)
    task = aflow.task(name="late_task")(late)
    with pytest.raises(AflowError, match="late_task"):
        await aflow.run(task.s(1), executor=elsewhere)


async def test_a_worker_of_another_aflow_is_a_mismatch_even_if_the_call_cannot_load_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """README: "every call is checked where it lands (WorkerMismatch)". ``run_blob``
    unpickles the whole call before it compares versions, so a worker whose aflow (or
    libraries) cannot load what the caller sent, the very case the check is for, fails
    with whatever the unpickling raised instead (here an AttributeError)."""
    from aflow.errors import WorkerMismatch
    from aflow.executors import _remote

    monkeypatch.setattr(_remote, "CALLER", (_remote.CALLER[0], "0.0.0-other"))
    kind = type("NewerThing", (), {"__module__": hw.__name__, "__qualname__": "NewerThing"})
    monkeypatch.setattr(hw, "NewerThing", kind, raising=False)
    pool = Process(max_workers=1)
    try:
        with pytest.raises(WorkerMismatch):
            await aflow.run(hw.takes_anything.s(kind()), executor=pool)
    finally:
        await anyio.to_thread.run_sync(pool.shutdown)


async def test_an_async_callable_object_runs_elsewhere_as_it_does_on_the_loop(
    elsewhere: Any,
) -> None:
    """aflow makes an async task of an object with an ``async def __call__``
    (``_task._is_async`` looks at ``__call__``), and it runs on the loop. In a worker,
    ``run_blob`` asks ``inspect.iscoroutinefunction(fn)`` instead, which is False for
    such an object: the body's coroutine is never awaited ("coroutine ... was never
    awaited" there) and comes back as a SerializationError about pickling a coroutine."""
    assert hw.price.is_async
    assert await aflow.run(hw.price.s(2)) == 20
    assert await aflow.run(hw.price.s(2), executor=elsewhere) == 20


async def test_a_worker_that_dies_fails_its_attempt_at_once_while_another_is_busy(
    log: str,
) -> None:
    """A pool whose second worker is spawned on demand (as every spawn pool's are) while
    the first runs a long body: the new worker dies (os._exit), and, more often than
    not, its attempt hears nothing until the other body ends: ProcessPoolExecutor.submit
    wakes its manager thread before it spawns the worker, and the manager goes back to
    waiting on the sentinels of the workers it knew (CPython 3.11's race, which
    ``Process`` inherits by spawning workers on demand). With a body that runs an hour,
    the attempt hangs an hour. (Tried a few times: each try loses the race or not.)"""
    blind = 0
    for i in range(5):
        pool = Process(max_workers=2)
        await warm(pool, 1)
        try:
            async with aflow.Runtime(executor=pool) as rt:
                innocent = await rt.submit(hw.hold.s(log, f"innocent{i}"))
                await wait_for(log, f"hold innocent{i}")
                culprit = await rt.submit(hw.exits_hard.s(log))
                with anyio.move_on_after(2) as waited:
                    with pytest.raises(WorkerLost):
                        await culprit.result()
                await innocent.cancel()
        finally:
            await anyio.to_thread.run_sync(pool.shutdown)
        if waited.cancelled_caught:
            blind += 1
            break
    assert not blind, f"a dead worker's attempt went unnoticed for 2 s (try {i + 1})"


async def test_a_body_that_exits_its_worker_does_not_kill_another_runs_body(log: str) -> None:
    """README: "A worker that dies is a failed attempt (WorkerLost)": its attempt. One
    body's ``os._exit`` breaks the shared ProcessPoolExecutor, which terminates every
    worker: another run's body, in a healthy worker, is killed mid-way and fails with
    WorkerLost (the default pool is shared by every run of the process)."""
    pool = Process(max_workers=2)
    await warm(pool, 2)
    try:
        async with aflow.Runtime(executor=pool) as rt:
            innocent = await rt.submit(hw.naps.s(log, 2.0, "innocent"))
            await wait_for(log, "nap start innocent")
            culprit = await rt.submit(hw.exits_hard.s(log))
            with pytest.raises(WorkerLost):
                await culprit.result()
            with anyio.fail_after(10):
                assert await innocent.result() == "innocent"
    finally:
        await anyio.to_thread.run_sync(pool.shutdown)


MARKERS = textwrap.dedent(
    """
    import asyncio
    import aflow, aflow.executors
    from tests import hostile_executor_workflows as hw

    async def main():
        pool = aflow.executors.Process(max_workers=1)
        assert await aflow.run(hw.echo.s(1), executor=pool) == 1
        print(pool._workers()._markers, flush=True)

    if __name__ == "__main__":
        asyncio.run(main())
    """
)


async def test_a_pool_of_ones_own_leaves_no_folder_in_tmp_behind(tmp_path: pathlib.Path) -> None:
    """``Process()`` makes ``/tmp/aflow-process-*`` at its first call and removes it only
    in ``shutdown()``: the default pool has an atexit hook, a pool of one's own has none
    (nor a finalizer), so every script that uses one leaves a folder in /tmp."""
    script = tmp_path / "script.py"
    script.write_text(MARKERS)
    with anyio.fail_after(30):
        done = await anyio.run_process([sys.executable, str(script)], cwd=ROOT)
    folder = pathlib.Path(done.stdout.decode().strip())
    assert folder.name.startswith("aflow-process-")
    exists = folder.exists()  # noqa: ASYNC240
    if exists:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)  # (the test cleans what it found)
    assert not exists, f"{folder} left behind"


async def test_a_dask_executor_closed_mid_attempt_is_a_lost_worker(
    dask_address: str, log: str
) -> None:
    """Dask cancels the futures of a client that closes (``Dask.close()``, a client of
    one's own closed, a restarted scheduler...): ``_submit`` means to turn that into
    WorkerLost ("Dask cancelled the task"), but catches ``asyncio.CancelledError``, and
    Dask raises ``distributed.client.FutureCancelledError``, a
    ``concurrent.futures.CancelledError``: the run fails with Dask's raw error."""
    executor = Dask(dask_address)
    try:
        async with aflow.Runtime(executor=executor) as rt:
            run = await rt.submit(hw.hold.s(log, "closed"))
            await wait_for(log, "hold closed")
            await anyio.to_thread.run_sync(executor.close)
            with anyio.fail_after(10), pytest.raises(WorkerLost):
                await run.result()
    finally:
        executor.close()
    await wait_for(log, "stopped closed CancelledError")  # (the body was told)


# =========================================================================================
# Attacks that held.
# =========================================================================================


async def test_a_retry_after_a_timeout_waits_for_a_body_that_checks_in(
    pool2: Process, log: str
) -> None:
    assert await aflow.run(hw.retried_hold.s(log), executor=pool2) == "attempt 2"
    done = hw.lines(log)
    assert done.index("stopped 1") < done.index("start 2"), done


@pytest.mark.parametrize("where", ["process", "dask"])
async def test_an_async_body_elsewhere_sees_its_timeout(
    where: str, log: str, request: pytest.FixtureRequest
) -> None:
    executor: Any = Process(max_workers=1)
    if where == "dask":
        executor = Dask(request.getfixturevalue("dask_address"))
    try:
        with pytest.raises(TaskTimeout):
            await aflow.run(hw.async_hold.s(log).set(timeout=0.5), executor=executor)
        await wait_for(log, "async stopped CancelledError")
        assert "async ran out" not in hw.lines(log)
    finally:
        if where == "dask":
            executor.close()
        else:
            await anyio.to_thread.run_sync(executor.shutdown)


async def queued_on_workers(executor: Dask) -> list[str]:
    """The aflow tasks a worker holds other than the bodies it still runs, released."""

    def held(dask_worker: Any) -> list[str]:
        return [
            str(key)
            for key, state in dask_worker.state.tasks.items()
            if str(key).startswith("aflow-") and state.state != "cancelled"
        ]

    found = await anyio.to_thread.run_sync(executor.client.run, held)
    return [key for keys in found.values() for key in keys]


async def test_a_dask_run_cancelled_with_bodies_queued_never_starts_them(
    dask_address: str, log: str, tmp_path: pathlib.Path
) -> None:
    """The session's cluster has 2 single-threaded workers: two bodies that do not check
    in take them, the run's other calls wait on the scheduler; a cancel releases them
    all, and once the scheduler holds none of them the busy workers are let go: the
    queued calls never start. (While the cancel is in flight, a worker a cancelled body
    leaves at once may be handed a queued call before its release arrives: README.)"""
    go = tmp_path / "go"
    executor = Dask(dask_address)
    try:
        async with aflow.Runtime(executor=executor) as rt:
            run = await rt.submit(
                aflow.group(
                    [
                        hw.blocks_until.s(log, "h1", str(go)),
                        hw.blocks_until.s(log, "h2", str(go)),
                        hw.side_effect.s(log, "q1"),
                        hw.side_effect.s(log, "q2"),
                    ]
                )
            )
            await wait_for(log, "block h1")
            await wait_for(log, "block h2")
            before = hw.lines(log)  # (a queued call started before the cancel ran legitimately)
            await run.cancel()
            with pytest.raises(RunCancelled):
                await run.result()
        with anyio.fail_after(10):  # (neither the scheduler nor a worker's queue holds one)
            while await aflow_keys(executor) or await queued_on_workers(executor):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        go.write_text("go")
        await wait_for(log, "unblocked h1")
        await wait_for(log, "unblocked h2")
        after = hw.lines(log)[len(before) :]
        assert not [line for line in after if line.startswith("side")], (before, after)
    finally:
        executor.close()


async def test_many_concurrent_runs_share_one_dask_executor(dask_address: str) -> None:
    executor = Dask(dask_address)
    try:
        with anyio.fail_after(30):
            got = await asyncio.gather(
                *(aflow.run(hw.echo.s(i), executor=executor) for i in range(40))
            )
            assert got == list(range(40))
            assert await aflow.run(
                hw.echo.starmap([(i,) for i in range(10)]), executor=executor
            ) == list(range(10))
            assert await aflow.run(hw.async_body.map([1, 2, 3]), executor=executor) == [3, 6, 9]
            while await aflow_keys(executor):  # noqa: ASYNC110
                await anyio.sleep(0.05)
    finally:
        executor.close()


async def test_a_dask_body_given_up_on_leaves_no_task_on_the_scheduler(
    dask_address: str, log: str
) -> None:
    """A body that never checks in, timed out: released at once, and forgotten by the
    scheduler once its worker is done with it."""
    executor = Dask(dask_address)
    try:
        with pytest.raises(TaskTimeout):
            await aflow.run(hw.naps.s(log, 1.0, "dask").set(timeout=0.2), executor=executor)
        await wait_for(log, "nap end dask")
        with anyio.fail_after(10):
            while await aflow_keys(executor):  # noqa: ASYNC110
                await anyio.sleep(0.05)
    finally:
        executor.close()


def test_run_sync_with_dask_times_out_and_goes_on(
    dask_address: str, tmp_path: pathlib.Path
) -> None:
    """run_sync's loop ends after each call; the client's loop hands a cancel over."""
    log = str(tmp_path / "log")
    executor = Dask(dask_address)
    try:
        with pytest.raises(TaskTimeout):
            aflow.run_sync(hw.hold.s(log, "sync").set(timeout=0.3), executor=executor)
        assert aflow.run_sync(hw.echo.s(3), executor=executor) == 3
        with anyio.from_thread.start_blocking_portal() as portal:
            portal.call(wait_for, log, "stopped sync CancelledError")
    finally:
        executor.close()


def test_run_sync_from_several_threads_shares_one_dask_executor(dask_address: str) -> None:
    """Four threads, each with run_sync (a loop of its own), racing the first connect."""
    executor = Dask(dask_address)
    got: dict[int, Any] = {}

    def one(i: int) -> None:
        try:
            got[i] = aflow.run_sync(hw.echo.s(i) | hw.echo.s(), executor=executor)
        except BaseException as exc:  # (reported below)
            got[i] = exc

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert got == {i: i for i in range(4)}
    finally:
        executor.close()


async def test_a_cancel_during_the_first_connect_leaves_the_executor_usable(
    dask_address: str,
) -> None:
    executor = Dask(dask_address)
    try:
        with anyio.move_on_after(0.01):
            await aflow.run(hw.echo.s(1), executor=executor)
        with anyio.fail_after(20):
            assert await aflow.run(hw.echo.s(2), executor=executor) == 2
    finally:
        executor.close()


@pytest.mark.parametrize(
    ("body", "raised"), [("system_exit", SystemExit), ("interrupts", KeyboardInterrupt)]
)
def test_an_interrupt_in_a_worker_reaches_the_caller_as_it_does_on_the_loop(
    body: str, raised: type[BaseException]
) -> None:
    pool = Process(max_workers=1)
    task = getattr(hw, body)
    try:
        for executor in ("loop", pool):
            with pytest.raises(raised):
                asyncio.run(aflow.run(hw.echo.s(1) | task.si(), executor=executor))
        assert asyncio.run(aflow.run(hw.echo.s(5), executor=pool)) == 5  # (the worker lives)
    finally:
        pool.shutdown()


async def test_a_generator_body_elsewhere_is_a_serialization_error_naming_it(
    elsewhere: Any,
) -> None:
    with pytest.raises(SerializationError, match=r"'gen'.*generator"):
        await aflow.run(hw.gen.s(3), executor=elsewhere)


async def test_an_error_that_cannot_pickle_comes_back_as_a_remote_error(elsewhere: Any) -> None:
    with pytest.raises(RemoteError, match="holding a lock") as raised:
        await aflow.run(hw.raises_locked.s(), executor=elsewhere)
    assert "LockedError" in str(raised.value)
    assert "raises_locked" in raised.value.traceback_text


async def test_big_arguments_and_results_cross(elsewhere: Any) -> None:
    """(On Dask the argument goes inline in the task, pickled by aflow: Dask warns of a
    large graph at each such call, and cannot scatter it.)"""
    big = b"y" * (32 * 1024 * 1024)
    with anyio.fail_after(30):
        if isinstance(elsewhere, Dask):
            with pytest.warns(UserWarning, match="Sending large graph"):
                assert await aflow.run(hw.size_of.s(big), executor=elsewhere) == len(big)
        else:
            assert await aflow.run(hw.size_of.s(big), executor=elsewhere) == len(big)
        back: bytes = await aflow.run(hw.big_result.s(len(big)), executor=elsewhere)
        assert len(back) == len(big)


async def test_a_durable_run_in_workers_checkpoints_each_step_once(
    elsewhere: Any, tmp_path: pathlib.Path
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    counts = tmp_path / "counts"
    async with aflow.Runtime(store=url, executor=elsewhere) as rt:
        run = await rt.submit(hw.two_steps, counts=str(counts), start=1)
        assert await run.result() == 3
    async with aflow.Runtime(store=url, executor=elsewhere) as rt:
        assert await (await rt.retrieve(run.id)).result() == 3
        report = await rt.report(run.id)
        assert report.steps is not None
        assert [str(s.state) for s in report.steps] == ["succeeded", "succeeded"]
    assert counts.read_text().split() == ["a", "b"]


async def test_a_cancelled_durable_step_keeps_no_late_result(
    pool1: Process, tmp_path: pathlib.Path, log: str
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url, executor=pool1) as rt:
        run = await rt.submit(hw.durable_nap, log=log, seconds=0.8)
        await wait_for(log, "nap start durable")
        await run.cancel()
    await wait_for(log, "nap end durable")
    await anyio.sleep(0.2)  # (a late result, were it kept, would be written by now)
    async with aflow.Runtime(store=url, executor=pool1) as rt:
        report = await rt.report(run.id)
    assert str(report.status) == "cancelled"
    assert report.steps is not None
    assert [(s.key, str(s.state)) for s in report.steps] == [
        ("naps", "cancelled"),
        ("echo", "pending"),
    ]
