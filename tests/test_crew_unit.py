"""The crew unit (aflow/_runtime/_crew.py) on its own: a blocking job gets a spare worker
while other work is ready (one spare pending at a time, never more than the ready work),
a spare that starts after the phase stopped does nothing, a stopped phase cancels its
spares through their scopes (a shield inside holds) and waits for every one of them, a
scheduler error in a spare fails the phase, and a native cancel of the joining task is
kept until the crew has ended.

The crew is driven by the real phase frame (Lifecycle._run_phase) with scripted jobs in
place of the scheduler's worker loop; the last tests run real graphs. Each scenario runs
on asyncio, on uvloop and on trio (the crew's other path: a task group's tasks), where
the unit supports it. Deterministic: anyio Events, no wall-clock sleeps (fail_after is
only a guard against a hang).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aflow
from aflow._runtime._checkpoints import Checkpoints
from aflow._runtime._crew import Crew
from aflow._runtime._options import Capacity, RunOptions, new_execution
from aflow._runtime._phases import Lifecycle
from aflow.testing import FakeClock

from .helpers import BACKENDS, gated, run_on

Job = Callable[[], Awaitable[None]]

ASYNCIO_LOOPS = ["asyncio", "uvloop"]


def flatten(error: BaseException) -> list[BaseException]:
    """The leaves of a (possibly nested) exception group."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for e in error.exceptions for leaf in flatten(e)]
    return [error]


@aflow.task
async def _noop() -> None:
    return None


_GRAPH = aflow.compile(_noop.s())
_OPTIONS = RunOptions()


class FakeRun(Lifecycle, Checkpoints, Crew):
    """A run whose worker loop pops scripted jobs, as the scheduler's does: before it
    runs one (which may block), it asks the crew for a spare if more work is ready, and
    it counts the job as running while it is in flight (what a stop interrupts)."""

    def __init__(self, jobs: list[Job]) -> None:
        super().__init__(_GRAPH, _OPTIONS, Capacity.of(_OPTIONS))
        self.jobs: deque[Job] = deque(jobs)
        self._done_goal = len(jobs)
        self.spawned = 0
        self.workers = 0

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.spawned += 1
        super()._spawn(coro)

    async def _worker(self) -> None:
        self._spare_pending = False  # as the scheduler's worker says as it begins
        self.workers += 1
        while self.jobs and self.starting:
            job = self.jobs.popleft()
            if self.jobs:
                self._ensure_worker()
            self._running += 1
            try:
                await job()
            finally:
                self._running -= 1
            self._done_count += 1
            self._check_idle()


def test_no_spare_without_an_open_phase() -> None:
    run = FakeRun([])
    run._ensure_worker()  # not starting
    run.starting = True
    run._ensure_worker()  # the crew takes no new workers outside a phase's frame
    assert run.spawned == 0
    assert not run._spare_pending


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_blocking_job_gets_a_spare_and_the_phase_joins_them(backend: str) -> None:
    n = 5
    gate, all_in = anyio.Event(), anyio.Event()
    entered = 0

    async def job() -> None:
        nonlocal entered
        entered += 1
        if entered == n:
            all_in.set()
        await gate.wait()

    async def main() -> FakeRun:
        run = FakeRun([job] * n)
        async with anyio.create_task_group() as tg:
            tg.start_soon(run._run_phase)
            await all_in.wait()  # every job runs at once: one worker each
            assert (run.spawned, run.workers) == (n - 1, n)  # the caller's + a spare each
            assert len(run._spare_scopes) == n - 1
            if backend != "trio":  # the tasks the crew tracks itself (trio: its task group)
                assert len(run._crew) == n - 1
            gate.set()
        return run

    run = run_on(backend, main)
    assert run.spawned == n - 1  # none beyond the ready work
    assert not run._crew
    assert not run._spare_scopes
    assert not run._crew_open
    assert run._crew_error is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_at_most_one_spare_is_pending_at_a_time(backend: str) -> None:
    seen: list[int] = []
    gate = anyio.Event()

    async def probe() -> None:
        run._ensure_worker()
        run._ensure_worker()  # the spare asked for has not begun its loop yet
        seen.append(run.spawned)
        await gate.wait()

    async def other() -> None:
        seen.append(run.spawned)
        gate.set()

    run = FakeRun([probe, other])

    async def main() -> None:
        await run._run_phase()

    run_on(backend, main)
    assert seen == [1, 1]
    assert run.workers == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_spare_that_starts_after_the_phase_stopped_runs_nothing(backend: str) -> None:
    ran: list[str] = []

    async def cut() -> None:
        ran.append("cut")  # a spare was asked for (another job is ready); then a stop
        run._cut_phase()

    async def other() -> None:
        ran.append("other")

    run = FakeRun([cut, other])

    async def main() -> None:
        await run._run_phase()

    run_on(backend, main)
    assert ran == ["cut"]
    assert run.spawned == 1
    assert run.workers == 1  # the spare began, saw the stop, and ended
    assert list(run.jobs) == [other]
    assert not run._spare_scopes
    assert not run._crew


class Bug(Exception):
    """The scheduler's own error (nodes' errors never leave a worker)."""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stopped_phase_cancels_its_spares_yet_waits_for_a_shield_in_them(
    backend: str,
) -> None:
    raised, escape = anyio.Event(), anyio.Event()
    in_cleanup, cleanup_may_end = anyio.Event(), anyio.Event()
    log: list[str] = []

    async def fail_once_the_spare_blocks() -> None:
        await anyio.wait_all_tasks_blocked()
        raised.set()
        raise Bug

    async def with_cleanup() -> None:
        try:
            await escape.wait()  # (set by the test only if the stop never reaches it)
        finally:
            with anyio.CancelScope(shield=True):  # a node's cleanup, or a thread waited for
                in_cleanup.set()
                await cleanup_may_end.wait()
                log.append("cleanup done")

    run = FakeRun([fail_once_the_spare_blocks, with_cleanup])

    async def main() -> bool:
        async def phase() -> None:
            try:
                await run._run_phase()
            except BaseException as exc:
                log.append(f"phase ended: {[type(e).__name__ for e in flatten(exc)]}")

        async with gated(cleanup_may_end, escape) as tg:
            tg.start_soon(phase)
            await raised.wait()
            await anyio.wait_all_tasks_blocked()
            cut = in_cleanup.is_set()  # the stop reached the spare through its scope
            escape.set()
            await anyio.wait_all_tasks_blocked()
            assert log == []  # the phase still waits for the spare's shielded cleanup
            assert not run.starting
            cleanup_may_end.set()
        return cut

    assert run_on(backend, main)
    assert log == ["cleanup done", "phase ended: ['Bug']"]
    assert not run._crew
    assert not run._spare_scopes


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_scheduler_error_in_a_spare_fails_the_phase(backend: str) -> None:
    async def blocks() -> None:
        await anyio.sleep_forever()  # in the caller's worker: cancelled by the cut

    async def bug() -> None:
        raise Bug("in a spare")

    run = FakeRun([blocks, bug])

    async def main() -> BaseException:
        with pytest.raises(BaseException) as caught:
            await run._run_phase()
        return caught.value

    error = run_on(backend, main)
    (leaf,) = flatten(error)  # asyncio: itself; trio: out of the phase's task group
    assert isinstance(leaf, Bug)
    assert not run.starting
    if backend != "trio":
        assert run._crew_error is leaf
    assert not run._crew
    assert not run._spare_scopes


@pytest.mark.parametrize("backend", ASYNCIO_LOOPS)
def test_a_native_cancel_of_the_joining_task_waits_for_the_crew(backend: str) -> None:
    """asyncio's task.cancel() goes through anyio's shield: the join keeps it, lets the
    crew end (the spares are cut), and raises it only then."""
    release, log = anyio.Event(), []

    async def worker() -> None:  # a crew task outside any spare scope: it cannot be cut
        await release.wait()
        log.append("worker ended")

    async def main() -> None:
        run = FakeRun([])
        run._loop = asyncio.get_running_loop()
        run.starting = run._crew_open = True
        run._spawn(worker())
        joining = asyncio.create_task(run._join_crew(cancel=False))
        await anyio.wait_all_tasks_blocked()
        joining.cancel()
        await anyio.wait_all_tasks_blocked()
        assert not joining.done()  # still waiting for the worker
        assert not run.starting  # ... having stopped the phase
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await joining
        log.append("join raised")
        assert not run._crew
        assert run._crew_idle is None

    run_on(backend, main)
    assert log == ["worker ended", "join raised"]


# --- the crew in real runs -------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("limit", [None, 2])
def test_a_fan_out_runs_one_worker_per_blocking_node_up_to_the_limit(
    backend: str, limit: int | None
) -> None:
    n = 6
    expected = n if limit is None else limit
    state = {"running": 0, "peak": 0}
    full, gate = anyio.Event(), anyio.Event()

    @aflow.task
    async def hold(i: int) -> int:
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])
        if state["running"] == expected:
            full.set()
        await gate.wait()
        state["running"] -= 1
        return i

    async def main() -> Any:
        execution = new_execution(
            aflow.compile(aflow.group(hold.s(i) for i in range(n))),
            RunOptions(max_concurrency=limit),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(execution.execute)
            await full.wait()  # `expected` nodes block at once: a worker each
            await anyio.wait_all_tasks_blocked()
            assert state["running"] == expected
            gate.set()
        return execution

    execution = run_on(backend, main)
    assert state["peak"] == expected
    assert execution._results[execution.graph.output] == list(range(n))
    assert not execution._crew
    assert not execution._crew_open


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failure_cuts_the_spares_of_a_real_run(backend: str) -> None:
    cancelled: list[int] = []
    all_in, failed, escape = anyio.Event(), anyio.Event(), anyio.Event()

    @aflow.task
    async def wait(i: int) -> None:
        try:
            if i == 3:
                all_in.set()
            await escape.wait()  # (set by the test only if the failure never cuts it)
        except anyio.get_cancelled_exc_class():
            cancelled.append(i)
            raise

    @aflow.task
    async def fail() -> None:
        await all_in.wait()
        failed.set()
        raise Bug("boom")

    async def run() -> None:
        with pytest.raises(Bug):
            await aflow.run(aflow.group(fail.si(), *(wait.s(i) for i in range(4))))

    async def main() -> list[int]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await failed.wait()
            await anyio.wait_all_tasks_blocked()
            cut = sorted(cancelled)
            escape.set()
        return cut

    assert run_on(backend, main) == [0, 1, 2, 3]  # each in its own spare


@pytest.mark.parametrize("backend", ASYNCIO_LOOPS)
def test_a_node_raising_cancelled_error_of_its_own_accord_fails_the_run(backend: str) -> None:
    """Its worker task ends cancelled though nothing stopped the phase: the crew names the
    node, rather than leave the run waiting for that worker."""
    gate = anyio.Event()

    @aflow.task
    async def first() -> None:
        await gate.wait()  # blocks in the caller's worker: the next node gets a spare

    @aflow.task
    async def rogue() -> None:
        await anyio.lowlevel.checkpoint()
        raise asyncio.CancelledError

    async def main() -> None:
        with pytest.raises(RuntimeError, match="'rogue' raised CancelledError without being"):
            await aflow.run(aflow.group(first.si(), rogue.si()))

    run_on(backend, main)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fails_in", ["caller", "spare"])
def test_a_failure_cuts_a_sibling_waiting_for_its_retry(backend: str, fails_in: str) -> None:
    """A node in its backoff is in flight (nothing else is): the failure of another node
    must reach it, or the run would wait out the hour."""
    attempts: list[int] = []
    first_try_failed = anyio.Event()

    @aflow.task(retries=3, backoff=aflow.Backoff(base=3600))
    async def flaky() -> None:
        attempts.append(aflow.current_step().attempt)
        await anyio.lowlevel.checkpoint()  # (suspends: the failing node gets a worker)
        first_try_failed.set()
        raise KeyError("again")

    @aflow.task
    async def fail() -> None:
        await first_try_failed.wait()
        await anyio.wait_all_tasks_blocked()  # flaky is in its backoff now
        raise Bug("boom")

    nodes = [flaky.si(), fail.si()] if fails_in == "spare" else [fail.si(), flaky.si()]

    async def main() -> float:
        async with FakeClock(autojump=False) as clock, anyio.create_task_group() as tg:

            async def guard() -> None:  # the cut never reached the backoff: end it
                await anyio.sleep(5)
                clock.advance(4 * 3600)

            tg.start_soon(guard)
            with pytest.raises(Bug):
                await aflow.run(aflow.group(*nodes), clock=clock)
            tg.cancel_scope.cancel()
            return clock.now()

    assert run_on(backend, main) == 0  # nobody waited for the hour
    assert attempts == [1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_last_node_in_flight_failing_in_a_spare_ends_the_run(backend: str) -> None:
    """Nothing else is in flight when it fails: the phase ends as its workers run dry (no
    cancel is needed), the completed sibling is reverted, the error reaches the caller."""
    log: list[str] = []
    first_done = anyio.Event()

    @aflow.task
    async def first() -> str:
        await anyio.lowlevel.checkpoint()  # blocks the caller's worker: a spare starts
        log.append("first done")
        first_done.set()
        return "kept"

    @first.revert
    async def undo_first(*, result: str) -> None:
        log.append(f"undo {result}")

    @aflow.task
    async def fail() -> None:
        await first_done.wait()
        await anyio.lowlevel.checkpoint()
        raise Bug("last")

    async def main() -> None:
        with anyio.fail_after(10), pytest.raises(Bug, match="last"):
            await aflow.run(aflow.group(first.si(), fail.si()))

    run_on(backend, main)
    assert log == ["first done", "undo kept"]


async def _helper() -> int:
    return 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["raises", "returns a coroutine"])
def test_a_failed_nodes_slot_goes_to_another_run_not_to_a_node_that_never_starts(
    backend: str, how: str
) -> None:
    """Run A: `fail` fails while `parked` waits for its slot, and `holds` has a shielded
    cleanup that needs run B's `other`, parked after A's. The freed slot must go to B
    (A has stopped): handed to A's parked node, which never starts, it deadlocks."""
    fail_now, cleanup_may_end = anyio.Event(), anyio.Event()

    @aflow.task
    async def fail() -> Any:
        await fail_now.wait()
        if how == "raises":
            raise Bug("fail")
        return _helper()  # a missing await: it fails with ResultError

    @aflow.task
    async def holds() -> int:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):  # a cleanup that needs run B
                await cleanup_may_end.wait()
        return 0

    @aflow.task
    async def parked() -> int:
        return 1

    @aflow.task
    async def other() -> int:
        cleanup_may_end.set()
        return 3

    async def main() -> tuple[aflow.RunStatus, aflow.RunStatus]:
        async with aflow.Runtime(max_concurrency=2) as rt:
            a = await rt.submit(aflow.group(fail.si(), holds.si(), parked.si()))
            await anyio.wait_all_tasks_blocked()
            b = await rt.submit(other.si())
            await anyio.wait_all_tasks_blocked()
            fail_now.set()
            try:
                with anyio.fail_after(5):
                    await a.wait()
                    await b.wait()
            finally:
                cleanup_may_end.set()  # (a deadlock: let it end, the asserts say so)
            return a.status, b.status

    assert run_on(backend, main) == (aflow.RunStatus.FAILED, aflow.RunStatus.SUCCEEDED)


_RUNTIMES: list[aflow.Runtime] = []


def _my_run() -> aflow.Run[Any]:
    # (outside the task's body: a body that names current_step is not started inline)
    return _RUNTIMES[-1].get(aflow.current_step().run_id)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_node_that_cancels_its_own_run_in_its_first_step_is_cancelled(backend: str) -> None:
    """It is in flight from its first step (inline, before it ever waits): the cancel
    must reach it when it waits for its run to stop, or both wait for each other."""

    @aflow.task
    async def first() -> int:
        return 1

    @aflow.task
    async def abort(x: int) -> int:
        await _my_run().cancel()  # cancel my own run: cancelled right here
        return 2

    async def main() -> tuple[aflow.RunStatus, aflow.NodeState]:
        async with aflow.Runtime() as rt:
            _RUNTIMES.append(rt)
            run = await rt.submit(first.s() | abort.s())
            with anyio.fail_after(5):
                await run.wait()
            return run.status, run.step("abort").state

    try:
        assert run_on(backend, main) == (aflow.RunStatus.CANCELLED, aflow.NodeState.CANCELLED)
    finally:
        _RUNTIMES.clear()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancelled_callers_slot_goes_to_another_run_not_to_a_node_that_never_starts(
    backend: str,
) -> None:
    """The caller of rt.run gives up while its node holds a limit's one slot: the node,
    cancelled first, gives the slot back before the run stops. Stopping the run passes
    it on to the other run's node (which `holds`'s shielded cleanup needs), not to the
    run's own parked node, which never starts."""
    cleanup_may_end = anyio.Event()

    @aflow.task(limit="L")
    async def waits() -> int:
        await anyio.sleep_forever()
        return 0

    @aflow.task(limit="L")
    async def parked() -> int:
        return 1

    @aflow.task
    async def holds() -> int:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):  # a cleanup that needs run B
                await cleanup_may_end.wait()
        return 0

    @aflow.task(limit="L")
    async def other() -> int:
        cleanup_may_end.set()
        return 3

    async def main() -> aflow.RunStatus:
        async with aflow.Runtime(limits={"L": 1}) as rt, anyio.create_task_group() as tg:
            b: list[aflow.Run[Any]] = []

            async def request() -> None:
                with anyio.CancelScope() as scope:
                    caller.append(scope)
                    await rt.run(aflow.group(waits.si(), holds.si(), parked.si()))

            caller: list[anyio.CancelScope] = []
            tg.start_soon(request)
            await anyio.wait_all_tasks_blocked()
            b.append(await rt.submit(other.si()))  # parked behind A's own
            await anyio.wait_all_tasks_blocked()
            caller[0].cancel()  # the client went away
            try:
                with anyio.fail_after(5):
                    return await b[0].wait()
            finally:
                cleanup_may_end.set()  # (a deadlock: let it end, the assert says so)

    assert run_on(backend, main) is aflow.RunStatus.SUCCEEDED
