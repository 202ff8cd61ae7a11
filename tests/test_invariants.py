"""The run's invariants (aflow/_runtime/_invariants.py): checked as every run of the suite
closes (conftest.py), they must catch a broken state, and hold under faults and cancels.

These tests reach into a run's private state on purpose: the invariants are about it.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aflow
from aflow._runtime import _invariants
from aflow._runtime._states import NodeState
from aflow.errors import AflowInternalError

from .strategies import Chain, Group, Injected, Leaf, trees


def test_the_suite_checks_every_run_as_it_closes() -> None:
    assert _invariants.CHECK_INVARIANTS


@aflow.task
async def reserve(x: int) -> int:
    return x + 1


@reserve.revert
async def release(x: int, *, result: Any) -> None:
    await anyio.lowlevel.checkpoint()


@aflow.task
async def charge(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x * 2


@charge.revert
async def refund(x: int, *, result: Any) -> None:
    await anyio.lowlevel.checkpoint()


@aflow.task
async def ship(x: int) -> int:
    raise Injected("no truck")


async def reverted_run() -> Any:
    """A closed run that failed and reverted charge, then reserve."""
    async with aflow.Runtime() as rt:
        run = await rt.submit(reserve.s(1) | charge.s() | ship.s())
        assert await run.wait() is aflow.RunStatus.REVERTED
        assert run.reverted() == ["charge", "reserve"]
        return run._execution


def _break(execution: Any, how: str) -> str:
    """Break one invariant of a closed run; return what the report must say."""
    if how == "running":
        execution._running = 1
        return "counted as running"
    if how == "in flight":
        execution._states[2] = NodeState.RUNNING
        return "still in flight"
    if how == "order":
        execution._reverted.reverse()
        return "was reverted before its consumer 'charge'"
    if how == "twice":
        execution._reverted.append(execution._reverted[0])
        return "reverted twice"
    if how == "count":
        execution._done_count = execution._done_goal + 1
        return "above its goal"
    if how == "error":
        execution._errors.pop(2)
        return "with no error on record"
    if how == "gate":
        execution.starting = True
        return "still lets nodes start"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["running", "in flight", "order", "twice", "count", "error", "gate"]
)
async def test_a_broken_invariant_is_reported_by_name(how: str) -> None:
    execution = await reverted_run()
    execution._check_invariants()  # holds as closed
    said = _break(execution, how)
    with pytest.raises(AflowInternalError, match="broke its invariants") as caught:
        execution._check_invariants()
    assert said in str(caught.value)
    assert _invariants.FOUND  # kept for the suite's check even if the error were caught
    _invariants.FOUND.clear()


@aflow.task(limit="db")
async def db_step(*args: Any, k: int, fail: bool = False) -> int:
    for _ in range(k % 3):
        await anyio.lowlevel.checkpoint()
    if fail:
        raise Injected(f"k={k}")
    return k


@db_step.revert
async def undo_db_step(*args: Any, k: int, fail: bool = False, result: Any) -> None:
    await anyio.lowlevel.checkpoint()


def db_saga(tree: Any, failing: frozenset[int]) -> aflow.Canvas[Any]:
    """The canvas a tree describes, on ``db_step`` leaves (leaf ``i`` fails if in ``failing``)."""
    numbers = iter(range(1_000_000))

    def build(node: Any) -> aflow.Canvas[Any]:
        if isinstance(node, Leaf):
            k = next(numbers)
            make = db_step.si if node.immutable else db_step.s
            return make(k=k, fail=k in failing)
        if isinstance(node, Chain):
            return aflow.chain(*(build(s) for s in node.steps))
        if isinstance(node, Group):
            return aflow.group(build(m) for m in node.members)
        return aflow.chord([build(m) for m in node.header], build(node.body))

    return build(tree)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    runs=st.lists(
        st.tuples(
            trees(max_leaves=8),
            st.sets(st.integers(min_value=0, max_value=7), max_size=2),
            st.one_of(st.none(), st.integers(min_value=0, max_value=12)),
        ),
        min_size=1,
        max_size=4,
    ),
    db=st.integers(min_value=1, max_value=3),
    cap=st.one_of(st.none(), st.integers(min_value=1, max_value=4)),
)
def test_every_slot_is_given_back_whatever_fails_or_is_cancelled(
    runs: list[tuple[Any, set[int], int | None]], db: int, cap: int | None
) -> None:
    """Concurrent runs share a Runtime's limits; some fail, some are cancelled after a
    number of loop turns. Afterwards every slot is back and no run waits on a limit (each
    run also checked its own invariants as it closed)."""

    async def main() -> None:
        async with aflow.Runtime(limits={"db": db}, max_concurrency=cap) as rt:
            handles = []
            for tree, failing, cancel_after in runs:
                handles.append((await rt.submit(db_saga(tree, frozenset(failing))), cancel_after))

            async def cancel_later(run: aflow.Run[Any], turns: int) -> None:
                for _ in range(turns):
                    await anyio.lowlevel.checkpoint()
                await run.cancel()

            async with anyio.create_task_group() as tg:
                for run, turns in handles:
                    if turns is not None:
                        tg.start_soon(cancel_later, run, turns)
            for run, _ in handles:
                await run.wait()
                assert run.status.finished
            limits = {
                id(limit): limit
                for run, _ in handles
                for limit in (*run._execution._global_limits, *run._execution._limits.values())
            }
            for limit in limits.values():
                assert limit.borrowed == 0, limit
                assert not limit.waiters, limit

    anyio.run(main)
