"""A finished run leaves no reference cycle: it is freed as soon as it is dropped, and a
web service running thousands of short runs leaves no work to the garbage collector."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio.lowlevel
import pytest

import aflow
from aflow._graph import Graph
from aflow._runtime._scheduler import Execution


class OutOfStock(Exception):
    pass


undone: list[str] = []


@aflow.task
async def validate(order: str) -> str:
    await anyio.lowlevel.checkpoint()
    return order


@aflow.task
async def reserve(order: str) -> str:
    await anyio.lowlevel.checkpoint()
    return "reservation"


@reserve.revert
async def release(order: str, *, result: str) -> None:
    undone.append("release")


@aflow.task
async def quote(order: str) -> int:
    return 5


@aflow.task
async def charge(parts: list[Any]) -> str:
    await anyio.lowlevel.checkpoint()
    return "receipt"


@charge.revert
async def refund(parts: list[Any], *, result: str) -> None:
    undone.append("refund")


@aflow.task
async def ship(receipt: str) -> str:
    await anyio.lowlevel.checkpoint()
    return "shipped"


@aflow.task
async def ship_fails(receipt: str) -> str:
    await anyio.lowlevel.checkpoint()
    raise OutOfStock("none left")


def saga(last: Any = ship) -> Any:
    return validate.s("o") | aflow.group(reserve.s(), quote.s()) | charge.s() | last.s()


@contextmanager
def runs_left_in_cycles() -> Iterator[list[str]]:
    """The aflow runs (and graphs) that only the garbage collector could free."""
    found: list[str] = []
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.extend(type(o).__name__ for o in gc.garbage if isinstance(o, Execution | Graph))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def fails(call: Callable[[], Awaitable[Any]]) -> None:
    with pytest.raises(OutOfStock):
        await call()


@pytest.mark.parametrize(
    "how",
    # (a failed run submitted to a Runtime keeps one: its handle, which its caller may
    # still hold, keeps the error, whose traceback passes through the handle's frames)
    [
        "1-step",
        "saga",
        "awaited canvas",
        "compensating saga",
        "runtime",
        "runtime, compensating",
        "runtime, compensating, dropped from its history",
    ],
)
async def test_a_finished_run_leaves_no_reference_cycle(how: str) -> None:
    undone.clear()
    with runs_left_in_cycles() as left:
        if how == "1-step":
            assert await aflow.run(quote.s("o")) == 5
        elif how == "saga":
            assert await aflow.run(saga()) == "shipped"
        elif how == "awaited canvas":
            assert await saga() == "shipped"
        elif how == "compensating saga":
            await fails(lambda: aflow.run(saga(ship_fails)))
            assert undone == ["refund", "release"]
        elif how == "runtime":
            async with aflow.Runtime(keep_finished=0) as rt:
                assert await rt.run(saga()) == "shipped"
                assert await (await rt.submit(saga())).result() == "shipped"
        elif how == "runtime, compensating":
            async with aflow.Runtime(keep_finished=0) as rt:
                await fails(lambda: rt.run(saga(ship_fails)))
                await fails(lambda: rt.run(saga(ship_fails)))
            assert undone == ["refund", "release"] * 2
        else:
            async with aflow.Runtime(keep_finished=2) as rt:
                for _ in range(5):
                    await fails(lambda: rt.run(saga(ship_fails)))
                kept = list(rt._history.values())  # the last two, errors and all
                assert len(kept) == 2
                for handle in kept:
                    with pytest.raises(OutOfStock):
                        handle.result_nowait()
                del handle, kept
                for _ in range(2):  # they leave the history in turn
                    assert await rt.run(saga()) == "shipped"
            assert undone == ["refund", "release"] * 5
    assert left == []


async def test_a_run_handed_out_keeps_its_error_after_leaving_the_history() -> None:
    """Only a run nobody outside the runtime holds lets go of its error."""
    gate = anyio.Event()

    @aflow.task
    async def fail_later() -> None:
        await gate.wait()
        raise OutOfStock("later")

    async with aflow.Runtime(keep_finished=1) as rt:
        async with anyio.create_task_group() as tg:
            tg.start_soon(fails, lambda: rt.run(fail_later.si()))
            await anyio.wait_all_tasks_blocked()
            (listed,) = rt.runs()  # handed out while it runs
            gate.set()
        looked_up = rt.get(listed.id)  # (the same handle)
        await fails(lambda: rt.run(fail_later.si()))  # pushes it out of the history
        (last,) = rt._history.values()
        by_id = rt.get(last.id)  # handed out by rt.get
        await fails(lambda: rt.run(fail_later.si()))  # pushes that one out
        assert listed.id not in rt._history
        assert by_id.id not in rt._history
    assert looked_up is listed
    for handle in (listed, by_id):
        assert handle.status is aflow.RunStatus.FAILED
        with pytest.raises(OutOfStock, match="later"):
            handle.result_nowait()
        assert isinstance(handle.step("fail_later").error, OutOfStock)


@pytest.mark.parametrize("fail", [False, True])
async def test_a_run_kept_in_the_history_does_not_keep_its_callers_task(fail: bool) -> None:
    """A request handler's task (and all it holds) goes when the request ends, though the
    runtime keeps the run it made for rt.get()."""
    import asyncio
    import weakref

    async with aflow.Runtime(keep_finished=10) as rt:

        async def handler() -> None:
            if fail:
                await fails(lambda: rt.run(saga(ship_fails)))
            else:
                assert await rt.run(saga()) == "shipped"

        task = asyncio.create_task(handler())
        await task
        gone = weakref.ref(task)
        del task
        await anyio.lowlevel.checkpoint()  # (the loop's own callbacks let go of it)
        assert len(rt._history) == 1
        assert gone() is None


class Noop(aflow.Task):
    async def execute(self) -> int:
        return 1


class Inc(aflow.Task):
    async def execute(self, x: int) -> int:
        return x + 1


@pytest.mark.parametrize("pattern", ["unordered", "linear"])
async def test_a_finished_engine_leaves_no_reference_cycle(pattern: str) -> None:
    """A TaskFlow engine, its storage, its flow's compiled graph and its run are freed as
    the engine is dropped (an engine and its storage, and a run and its builder view,
    held each other: a 100k-task flow left ~1M objects to the collector)."""
    from aflow import engines
    from aflow.patterns import linear_flow as lf
    from aflow.patterns import unordered_flow as uf

    with runs_left_in_cycles() as left:
        if pattern == "unordered":
            flow = uf.Flow("u").add(*(Noop(name=f"t{i}", provides=f"v{i}") for i in range(5)))
            engine = engines.load(flow, engine="parallel")
            await engine.run()
            assert engine.storage.fetch_all() == {f"v{i}": 1 for i in range(5)}
        else:
            flow = lf.Flow("l").add(
                *(Inc(name=f"t{i}", rebind={"x": f"v{i}"}, provides=f"v{i + 1}") for i in range(5))
            )
            engine = engines.load(flow, store={"v0": 0}, engine="parallel")
            await engine.run()
            assert engine.storage.fetch("v5") == 5
        del engine, flow
    assert left == []
