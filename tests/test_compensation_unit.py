"""The compensation unit (aflow/_runtime/_compensation.py), driven through tiny graphs:
reverts run consumers first (diamonds, groups, random DAGs), once each and only for nodes
that started, shielded when the caller is cancelled; a failed revert gives
CompensationFailed with the root failure first; the unwind has a deadline of its own,
counted from its start (FakeClock); compensate() undoes a finished run once. On asyncio,
uvloop and trio; deterministic (anyio Events, virtual time).
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import aflow
from aflow._graph import Node, NodeKind
from aflow._runtime._journal import Journal
from aflow._runtime._options import RunOptions, new_execution
from aflow._runtime._scheduler import Execution
from aflow._serialize import JsonSerializer
from aflow.errors import CompensationFailed, RunTimeout, StoreError
from aflow.testing import FakeClock

from .helpers import HAS_TRIO, FakeStore, gated, on_each_backend, run_on


class Declined(Exception):
    pass


class Saga:
    """Tasks whose reverts log ``("start", name)`` and ``("end", name)``, in one log."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.gates: dict[str, anyio.Event] = {}  # a revert waits at its gate, if it has one
        self.failing_reverts: set[str] = set()
        self.clock: FakeClock | None = None
        self.revert_takes: float = 0  # virtual seconds a revert takes (with a clock)
        self.ended_at: dict[str, float] = {}  # virtual time each revert ended (with a clock)

    def task(self, name: str, fails: bool = False) -> aflow.FunctionTask[..., Any]:
        log = self.log

        @aflow.task(name=name)
        async def body(*args: Any) -> str:
            log.append(("do", name))
            await anyio.lowlevel.checkpoint()
            if fails:
                raise Declined(name)
            return name

        @body.revert
        async def undo(*args: Any) -> None:
            log.append(("start", name))
            await anyio.lowlevel.checkpoint()
            if name in self.gates:
                await self.gates[name].wait()
            if self.clock is not None and self.revert_takes:
                await self.clock.sleep(self.revert_takes)
            if name in self.failing_reverts:
                raise RuntimeError(f"cannot undo {name}")
            log.append(("end", name))
            if self.clock is not None:
                self.ended_at[name] = self.clock.now()

        return body

    def tasks(self, names: str) -> list[aflow.FunctionTask[..., Any]]:
        return [self.task(n) for n in names.split()]

    def fail(self) -> aflow.FunctionTask[..., Any]:
        return self.task("fail", fails=True)

    def reverted(self) -> list[str]:
        return [name for what, name in self.log if what == "end"]

    def precedes(self, first: str, then: str) -> bool:
        """``first``'s revert ended before ``then``'s began."""
        return self.log.index(("end", first)) < self.log.index(("start", then))


def execution_of(canvas: Any, store: FakeStore | None = None, **options: Any) -> Execution:
    journal = None if store is None else Journal(store, "r", JsonSerializer())  # type: ignore[arg-type]
    return new_execution(aflow.compile(canvas), RunOptions(**options), journal=journal)


def state_of(execution: Execution, key: str) -> aflow.NodeState:
    return execution._states[execution.graph.node(key).index]


async def fails_with(execution: Execution, error: type[BaseException]) -> BaseException:
    with pytest.raises(error) as caught:
        await execution.execute()
    return caught.value


# (canvas of tasks r a b c d and fail) -> (consumer, producer): the consumer's revert first
SHAPES = {
    "diamond": (
        lambda r, a, b, c, d, f: r.s() | aflow.group(a.s(), b.s()) | c.s() | f.s(),
        [("fail", "c"), ("c", "a"), ("c", "b"), ("a", "r"), ("b", "r")],
    ),
    "group of chains": (
        lambda r, a, b, c, d, f: r.s() | aflow.group(a.s() | b.s(), c.s() | d.s()) | f.s(),
        [("fail", "b"), ("fail", "d"), ("b", "a"), ("d", "c"), ("a", "r"), ("c", "r")],
    ),
}


@on_each_backend
@pytest.mark.parametrize("shape", list(SHAPES))
async def test_reverts_run_consumers_first(shape: str) -> None:
    saga = Saga()
    build, order = SHAPES[shape]
    execution = execution_of(build(*saga.tasks("r a b c d"), saga.fail()))
    await fails_with(execution, Declined)
    for consumer, producer in order:
        assert saga.precedes(consumer, producer), (consumer, producer)
    ran = sorted(name for what, name in saga.log if what == "do")
    assert sorted(saga.reverted()) == ran  # what ran, each once
    keys = [execution._nodes[i].key for i in execution._reverted]
    assert keys == saga.reverted()  # the run's own record: in the order they ended
    assert execution.status is aflow.RunStatus.REVERTED


@on_each_backend
async def test_nodes_that_never_started_are_not_reverted() -> None:
    saga = Saga()
    a, after, later = saga.tasks("a after later")
    started = anyio.Event()

    @aflow.task
    async def slow(x: str) -> None:
        started.set()
        await anyio.sleep_forever()

    @slow.revert
    async def unslow(x: str, *, result: Any) -> None:
        assert isinstance(result, aflow.Failure)
        assert result.cancelled
        saga.log.append(("end", "slow"))

    @aflow.task
    async def fail(x: str) -> None:
        await started.wait()
        raise Declined

    # slow was cut short (it started: reverted); after and later never started
    execution = execution_of(a.s() | aflow.group(slow.s(), fail.s()) | after.s() | later.s())
    await fails_with(execution, Declined)
    assert saga.reverted() == ["slow", "a"]
    assert state_of(execution, "after") is aflow.NodeState.PENDING
    assert state_of(execution, "later") is aflow.NodeState.PENDING


def shielded_saga() -> tuple[Saga, Execution]:
    """a | b | fail, where b's revert waits at its gate."""
    saga = Saga()
    a, b = saga.tasks("a b")
    saga.gates["b"] = anyio.Event()
    return saga, execution_of(a.s() | b.s() | saga.fail().s())


@on_each_backend
async def test_reverts_run_shielded_when_the_caller_is_cancelled() -> None:
    saga, execution = shielded_saga()
    outcome: list[BaseException] = []
    scope = anyio.CancelScope()

    async def caller() -> None:
        with scope:
            try:
                await execution.execute()
            except BaseException as exc:
                outcome.append(exc)
                raise

    async with gated(saga.gates["b"]) as tg:
        tg.start_soon(caller)
        while ("start", "b") not in saga.log:
            await anyio.wait_all_tasks_blocked()
        scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert outcome == []  # still unwinding: b's revert holds the caller
        saga.gates["b"].set()  # b's revert was not cancelled: it goes on, then a's
    assert saga.reverted() == ["fail", "b", "a"]
    assert len(outcome) == 1
    assert isinstance(outcome[0], anyio.get_cancelled_exc_class())  # then it is the caller's


@pytest.mark.both_loops
async def test_a_native_asyncio_cancel_waits_for_the_reverts() -> None:
    """task.cancel() (asyncio.wait_for, a server's handler timeout) is not stopped by
    anyio's shield: the unwind runs in a child task, and the cancel is kept for later."""
    saga, execution = shielded_saga()
    task = asyncio.create_task(execution.execute())
    try:
        while ("start", "b") not in saga.log:
            await anyio.wait_all_tasks_blocked()
        task.cancel()
        await anyio.wait_all_tasks_blocked()
        assert not task.done()
    finally:
        saga.gates["b"].set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert saga.reverted() == ["fail", "b", "a"]


@on_each_backend
async def test_a_failed_revert_gives_compensation_failed_with_the_root_failure_first() -> None:
    saga = Saga()
    a, b, c = saga.tasks("a b c")
    saga.failing_reverts.add("c")
    execution = execution_of(a.s() | aflow.group(b.s(), c.s()) | saga.fail().s())
    error = await fails_with(execution, CompensationFailed)
    assert isinstance(error, CompensationFailed)
    root = execution._errors[execution.graph.node("fail").index]
    assert error.exceptions[0] is root is error.original
    assert [type(e) for e in error.exceptions] == [Declined, RuntimeError]
    assert str(error.exceptions[1]) == "cannot undo c"
    assert saga.reverted() == ["fail", "b"]  # the other branch goes on; a is kept
    assert state_of(execution, "c") is aflow.NodeState.REVERT_FAILED
    assert state_of(execution, "a") is aflow.NodeState.SUCCEEDED
    assert execution.status is aflow.RunStatus.FAILED


@on_each_backend
@pytest.mark.parametrize(("takes", "undone"), [(12, True), (40, False)])
async def test_the_compensation_deadline_counts_from_its_own_start(
    takes: float, undone: bool
) -> None:
    saga = Saga()
    a, b = saga.tasks("a b")

    @aflow.task
    async def fail_late(x: str) -> None:
        await clock.sleep(100)  # the forward phase takes 100 s: more than the deadline
        raise Declined

    store = FakeStore()  # (durable: what the deadline cut is on record too)
    async with FakeClock() as clock:
        saga.clock, saga.revert_takes = clock, takes
        canvas = a.s() | b.s() | fail_late.s()
        execution = execution_of(canvas, store, clock=clock, compensation_timeout=30)
        error = await fails_with(execution, Declined if undone else CompensationFailed)
    final = dict(record for batch in store.writes for record in batch)
    if undone:  # two reverts of 12 s: in time, though the run is 124 s old
        assert saga.ended_at == {"b": 112, "a": 124}
        assert clock.now() == 124
        assert final == {"a": "reverted", "b": "reverted", "fail_late": "failed"}
        assert execution.status is aflow.RunStatus.REVERTED
        return
    assert final == {"a": "revert_failed", "b": "revert_failed", "fail_late": "failed"}
    assert store.statuses[-1] == "failed"
    assert clock.now() == 130  # cut at the deadline, 30 s after the unwind began
    assert isinstance(error, CompensationFailed)
    assert isinstance(error.exceptions[0], Declined)
    (timeout,) = error.exceptions[1:]  # one error for every revert it cut or never reached
    assert isinstance(timeout, TimeoutError)
    assert ("start", "a") not in saga.log  # never reached: on record as failed all the same
    assert state_of(execution, "a") is aflow.NodeState.REVERT_FAILED
    assert execution._revert_errors[execution.graph.node("a").index] is timeout


@pytest.mark.both_loops
async def test_a_revert_that_takes_no_virtual_time_is_not_cut_by_the_deadline() -> None:
    @aflow.task
    async def a() -> int:
        return 1

    @a.revert
    async def undo_a() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(loop.call_soon, lambda: done.done() or done.set_result(None))
        await done  # two turns of the loop later; no time passes

    @aflow.task
    async def fail(x: int) -> None:
        raise Declined

    async with FakeClock() as clock:
        with pytest.raises(Declined):  # today: CompensationFailed(Declined, TimeoutError)
            await aflow.run(a.s() | fail.s(), clock=clock, compensation_timeout=30)
    assert clock.now() == 0


@on_each_backend
async def test_the_run_s_own_deadline_does_not_cut_its_compensation() -> None:
    saga = Saga()
    (a,) = saga.tasks("a")

    @aflow.task
    async def hang(x: str) -> None:
        await anyio.sleep_forever()

    async with FakeClock() as clock:
        saga.clock, saga.revert_takes = clock, 50
        execution = execution_of(a.s() | hang.s(), clock=clock, timeout=10)
        await fails_with(execution, RunTimeout)
    assert clock.now() == 60  # the revert took its 50 s after the deadline at 10
    assert saga.reverted() == ["a"]
    assert execution.status is aflow.RunStatus.REVERTED


@on_each_backend
async def test_compensate_undoes_a_finished_run_once() -> None:
    saga = Saga()
    a, b, c = saga.tasks("a b c")
    execution = execution_of(a.s() | aflow.group(b.s(), c.s()))
    assert await execution.execute() == ["b", "c"]
    await execution.compensate()
    assert sorted(saga.reverted()[:2]) == ["b", "c"]
    assert saga.reverted()[2:] == ["a"]
    assert execution.status is aflow.RunStatus.REVERTED
    await execution.compensate()  # nothing is undone twice
    assert len(saga.reverted()) == 3


@on_each_backend
async def test_compensate_reports_a_failed_revert_now_and_later() -> None:
    saga = Saga()
    a, b = saga.tasks("a b")
    saga.failing_reverts.add("b")
    execution = execution_of(a.s() | b.s())
    await execution.execute()
    with pytest.raises(CompensationFailed, match="while undoing a finished run") as caught:
        await execution.compensate()
    assert [type(e) for e in caught.value.exceptions] == [RuntimeError]
    assert saga.reverted() == []  # a precedes the failed revert: kept
    with pytest.raises(CompensationFailed, match="failed earlier"):
        await execution.compensate()
    assert saga.log.count(("start", "b")) == 1  # not tried again


@on_each_backend
async def test_a_store_that_cannot_say_reverting_stops_the_unwind() -> None:
    saga = Saga()
    (a,) = saga.tasks("a")
    store = FakeStore()
    store.refuse_status = "reverting"
    error = await fails_with(execution_of(a.s() | saga.fail().s(), store), StoreError)
    assert isinstance(error.__cause__, OSError)
    assert saga.reverted() == []  # a resume does the unwinding, once the store is back
    assert ("start", "a") not in saga.log


# --- random DAGs --------------------------------------------------------------------------

LOG: list[tuple[str, int]] = []
BACKEND_NAMES = ["asyncio", "uvloop", "trio"] if HAS_TRIO else ["asyncio", "uvloop"]


@aflow.task
async def dag_step(*, k: int, fail: bool, pause: bool) -> int:
    LOG.append(("do", k))
    if pause:
        await anyio.lowlevel.checkpoint()
    if fail:
        raise Declined(k)
    return k


@dag_step.revert
async def undo_dag_step(*, k: int, fail: bool, pause: bool) -> None:
    LOG.append(("start", k))
    if pause:
        await anyio.lowlevel.checkpoint()
    LOG.append(("end", k))


@st.composite
def dags(draw: st.DrawFn) -> aflow.Graph:
    """Node i depends on up to 3 earlier nodes; one or two fail; some pause."""
    n = draw(st.integers(min_value=2, max_value=10))
    failing = draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=2))
    nodes = []
    for i in range(n):
        parents = tuple(sorted(draw(st.sets(st.integers(0, i - 1), max_size=3)))) if i else ()
        kwargs = {"k": i, "fail": i in failing, "pause": draw(st.booleans())}
        nodes.append(Node(i, f"n{i}", NodeKind.TASK, dag_step, (), kwargs, parents))
    return aflow.Graph(nodes, n - 1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=dags(), limit=st.sampled_from([None, 1, 2]), backend=st.sampled_from(BACKEND_NAMES))
def test_random_dags_unwind_what_started_once_in_reverse_dependency_order(
    graph: aflow.Graph, limit: int | None, backend: str
) -> None:
    note(repr([(n.parents, dict(n.kwargs)) for n in graph.nodes]))
    LOG.clear()

    async def main() -> Execution:
        execution = new_execution(graph, RunOptions(max_concurrency=limit))
        with pytest.raises((Declined, aflow.errors.GroupFailed)):
            await execution.execute()
        return execution

    execution = run_on(backend, main)
    started = [k for what, k in LOG if what == "do"]
    begun = [k for what, k in LOG if what == "start"]
    ended = [k for what, k in LOG if what == "end"]
    assert sorted(begun) == sorted(ended) == sorted(started)  # all that started, once each
    assert ended == execution._reverted
    assert execution.status is aflow.RunStatus.REVERTED
    # consumers first: a revert begins only after every descendant's revert ended
    for p in begun:
        stack, seen = list(graph.children(p)), set()
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            stack.extend(graph.children(c))
            if c in started:
                assert LOG.index(("end", c)) < LOG.index(("start", p)), (p, c, LOG)
