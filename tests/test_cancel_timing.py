"""A cancel may land at any moment of a run, the end of its last step included: whatever
the timing, the run's final status and what happened to its nodes agree (issue 14).

If anything was reverted because of a cancel, the run ends ``CANCELLED`` (the awaiter
gets ``RunCancelled``, or its own cancellation); if the run completed before the cancel
took effect, nothing is reverted and it ends ``SUCCEEDED`` with its value. A durable
store records the same outcome, and no node of a finished run is left ``running``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aflow

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}

#: per run: the steps whose revert ran, and how many times each step awaits
REVERTED: list[str] = []
PAUSES: dict[str, int] = {}


@aflow.task
async def step(x: int, name: str) -> int:
    for _ in range(PAUSES.get(name, 1)):
        await anyio.lowlevel.checkpoint()
    return x + 1


@step.revert
async def undo(x: int, name: str, *, result: Any) -> None:
    REVERTED.append(name)


@aflow.workflow
def saga(length: int, fan: bool) -> aflow.Canvas[Any]:
    """A chain of ``length`` steps; with ``fan`` its middle is a group of two."""
    first = step.s(0, "s0")
    if fan:
        middle = aflow.group(step.s("g1"), step.s("g2"))
        return first | middle | step.si(10, "last")
    canvas: Any = first
    for i in range(1, length):
        canvas = canvas | step.s(f"s{i}")
    return canvas


EXPECTED = {(n, False): n for n in range(1, 5)} | {(n, True): 11 for n in range(1, 5)}


def run_on(loop: str, coro: Any) -> Any:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(coro)


async def spin(k: int) -> None:
    for _ in range(k):
        await asyncio.sleep(0)


async def through_handle(
    length: int, fan: bool, k: int, store: str | None
) -> tuple[aflow.RunStatus, str, Any, dict[str, str], str | None]:
    """``await run.cancel()`` after ``k`` loop iterations; what the run ended as."""
    async with aflow.Runtime(store=store) as rt:
        if store is None:
            run = await rt.submit(saga(length, fan))
        else:
            run = await rt.submit(saga, length=length, fan=fan)
        await spin(k)
        await run.cancel()
        try:
            outcome: tuple[str, Any] = ("value", await run.result())
        except aflow.errors.RunCancelled:
            outcome = ("cancelled", None)
        stored_nodes: dict[str, str] = {}
        stored_status = None
        if rt.store is not None:
            stored_status = (await rt.store.get_run(run.id)).status
            nodes = await rt.store.load_nodes(run.id)
            stored_nodes = {key: node.state for key, node in nodes.items()}
        return run.status, outcome[0], outcome[1], stored_nodes, stored_status


async def through_awaiter(length: int, fan: bool, k: int, via: str) -> tuple[str, Any]:
    """The awaiting task is cancelled after ``k`` loop iterations; the run's last event
    (``rt.run``, which takes no listener: what its status says it was)."""
    last: list[str] = []
    seen: list[aflow.Run[Any]] = []

    def listen(event: aflow.Event) -> None:
        if event.node is None and event.name != "run_started":
            last.append(event.name)

    value: Any = None
    with anyio.CancelScope() as scope:

        async def cancel_later() -> None:
            if via == "rt.run":  # (it registered its run before its first step)
                seen.extend(rt.runs())
            await spin(k)
            scope.cancel()

        async with aflow.Runtime() as rt, anyio.create_task_group() as tg:
            tg.start_soon(cancel_later)
            if via == "rt.submit":
                run = await rt.submit(saga(length, fan), on_event=listen)
                with contextlib.suppress(aflow.errors.RunCancelled):
                    value = await _await_run(run)
            elif via == "rt.run":
                value = await rt.run(saga(length, fan))
            else:
                value = await aflow.run(saga(length, fan), on_event=listen)
    if seen:  # (rt.run: the run it ran in the awaiting task)
        (run,) = seen
        assert run.status in (aflow.RunStatus.SUCCEEDED, aflow.RunStatus.CANCELLED)
        assert rt.get(run.id) is run  # a finished one is kept
        last.append("run_succeeded" if run.status is aflow.RunStatus.SUCCEEDED else "run_cancelled")
    elif via == "rt.run" and value is not None:  # it ended before the other task first ran
        last.append("run_succeeded")
    return (last[-1] if last else "none"), value


async def _await_run(run: aflow.Run[Any]) -> Any:
    """What ``rt.run()`` does: the caller's cancellation cancels the run."""
    try:
        return await run.result()
    except anyio.get_cancelled_exc_class():
        await run.cancel()
        raise


@pytest.mark.parametrize("loop", list(LOOPS))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    length=st.integers(1, 4),
    fan=st.booleans(),
    k=st.integers(0, 60),
    pauses=st.dictionaries(
        st.sampled_from(["s0", "s1", "s2", "s3", "g1", "g2", "last"]), st.integers(0, 3)
    ),
    store=st.sampled_from([None, "memory://"]),
)
def test_status_and_reverts_agree_whenever_run_cancel_lands(
    loop: str, length: int, fan: bool, k: int, pauses: dict[str, int], store: str | None
) -> None:
    REVERTED.clear()
    PAUSES.clear()
    PAUSES.update(pauses)
    status, outcome, value, nodes, stored = run_on(loop, through_handle(length, fan, k, store))
    if status is aflow.RunStatus.SUCCEEDED:
        assert (outcome, value) == ("value", EXPECTED[length, fan])
        assert REVERTED == []
    else:
        assert status is aflow.RunStatus.CANCELLED
        assert outcome == "cancelled"
    if store is not None:
        assert stored == status.value
        if status is aflow.RunStatus.SUCCEEDED:
            assert set(nodes.values()) == {"succeeded"}
        else:
            assert "succeeded" not in nodes.values()  # every step that ended was undone
            assert "running" not in nodes.values()  # every node of a finished run is final
            assert len(REVERTED) == sum(state == "reverted" for state in nodes.values())


@pytest.mark.parametrize("loop", list(LOOPS))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    length=st.integers(1, 4),
    fan=st.booleans(),
    k=st.integers(0, 60),
    pauses=st.dictionaries(
        st.sampled_from(["s0", "s1", "s2", "s3", "g1", "g2", "last"]), st.integers(0, 3)
    ),
    via=st.sampled_from(["aflow.run", "rt.submit", "rt.run"]),
)
def test_status_and_reverts_agree_whenever_the_awaiter_is_cancelled(
    loop: str, length: int, fan: bool, k: int, pauses: dict[str, int], via: str
) -> None:
    REVERTED.clear()
    PAUSES.clear()
    PAUSES.update(pauses)
    last, value = run_on(loop, through_awaiter(length, fan, k, via))
    if REVERTED:
        assert last == "run_cancelled"
    else:
        assert last in ("run_succeeded", "run_cancelled")
    if value is not None:  # it returned to the awaiter: it completed before the cancel
        assert (last, value, REVERTED) == ("run_succeeded", EXPECTED[length, fan], [])


@pytest.mark.both_loops
async def test_a_cancel_after_the_last_step_ended_changes_nothing() -> None:
    """The window the bug lived in: every node has ended, the run has not returned yet."""
    REVERTED.clear()
    PAUSES.clear()
    ended = anyio.Event()

    def listen(event: aflow.Event) -> None:
        if event.name == "task_succeeded" and event.node == "step#3":
            ended.set()

    async with aflow.Runtime(store="memory://") as rt:
        run = await rt.submit(saga, length=3, fan=False, on_event=listen)
        await ended.wait()
        await run.cancel()
        assert await run.result() == 3
        assert run.status is aflow.RunStatus.SUCCEEDED
        assert REVERTED == []
        assert rt.store is not None
        assert (await rt.store.get_run(run.id)).status == "succeeded"


@pytest.mark.both_loops
@pytest.mark.parametrize("via_runtime", [False, True], ids=["aflow.run", "runtime"])
async def test_an_awaiter_cancelled_as_the_last_step_ends_leaves_the_run_succeeded(
    via_runtime: bool,
) -> None:
    """The awaiter always gets its own cancellation; the run, complete, is not undone."""
    REVERTED.clear()
    PAUSES.clear()
    events: list[str] = []
    with anyio.CancelScope() as scope:

        def listen(event: aflow.Event) -> None:
            events.append(event.name)
            if event.name == "task_succeeded" and event.node == "step#3":
                scope.cancel()

        if via_runtime:
            async with aflow.Runtime() as rt:
                run = await rt.submit(saga(3, False), on_event=listen)
                await _await_run(run)
        else:
            await aflow.run(saga(3, False), on_event=listen)
    if via_runtime:  # (aflow.run may return before the cancel is delivered: no checkpoint)
        assert scope.cancelled_caught
    assert REVERTED == []
    assert events[-1] == "run_succeeded"
    assert "run_cancelled" not in events
