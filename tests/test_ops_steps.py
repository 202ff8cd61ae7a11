"""aflow.ops steps: the examples end to end, sequences, parallel lists and DAGs, submit,
wait and status, and where sync and async ops run."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import aflow
from aflow.ops import DAG, OP, Step, Workflow, op

from .ops_helpers import EXAMPLES, add, run_wf

# --- the seed's examples --------------------------------------------------------------------------


async def test_hello_world_downloads_both_files(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import dflow_style  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    paths = await dflow_style.main(tmp_path)
    assert sorted(p.name for p in paths) == ["msg.txt", "results.txt"]
    assert (tmp_path / "msg.txt").read_text() == "HelloWorld!"
    assert (tmp_path / "results.txt").read_text() == "1"


async def test_typed_ops_example_reuses_the_simulation(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import typed_ops  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    typed_ops.simulations = 0
    outcome = await typed_ops.main(tmp_path)
    assert outcome["simulations"] == 5  # the second run reused them all
    assert outcome["flag"] == "Skipped"  # the lowered scores miss the threshold
    assert outcome["report"].splitlines()[2] == "candidate 2: 0.80"


# --- submit, wait, status -------------------------------------------------------------------------


async def test_submit_needs_a_runtime() -> None:
    wf = Workflow("w").add(Step("a", add, parameters={"x": 1}))
    with pytest.raises(RuntimeError, match=r"needs a running aflow\.Runtime"):
        await wf.submit()


async def test_submit_returns_at_once_and_wait_reports_without_raising() -> None:
    release = anyio.Event()
    started = anyio.Event()

    @op(outputs={"ok": bool})
    async def gate():
        started.set()
        await release.wait()
        raise RuntimeError("declined")

    wf = Workflow("w").add(Step("g", gate))
    async with aflow.Runtime():
        run = await wf.submit()
        await started.wait()
        assert wf.query_status() == "Running"
        assert wf.query_step(name="g")[0].phase == "Running"
        release.set()
        assert await wf.wait() == "Failed"
        with pytest.raises(RuntimeError, match="declined"):
            await run.result()


async def test_submit_takes_an_event_listener() -> None:
    seen: list[tuple[str, str | None]] = []
    wf = Workflow("w").add(Step("a", add, parameters={"x": 1}))
    async with aflow.Runtime():
        await wf.submit(on_event=lambda e: seen.append((e.name, e.node)))
        await wf.wait()
    assert ("run_started", None) in seen
    assert ("task_succeeded", "a") in seen


# --- ordering: sequence, parallel, DAG ------------------------------------------------------------


async def test_add_runs_steps_in_sequence_and_lists_in_parallel() -> None:
    events = {name: anyio.Event() for name in ("b", "c")}
    order: list[str] = []

    def waiter(name: str, other: str) -> type[OP]:
        @op(outputs={"ok": bool})
        async def step():
            order.append(f"start {name}")
            events[name].set()
            await events[other].wait()  # both must run at once, or this never ends
            order.append(f"end {name}")
            return {"ok": True}

        return step

    @op(outputs={"ok": bool})
    async def mark(tag: str):
        order.append(tag)
        return {"ok": True}

    wf = Workflow("seq")
    wf.add(Step("a", mark, parameters={"tag": "a"}))
    wf.add([Step("b", waiter("b", "c")), Step("c", waiter("c", "b"))])
    wf.add(Step("d", mark, parameters={"tag": "d"}))
    with anyio.fail_after(10):
        assert await run_wf(wf) == "Succeeded"
    assert order[0] == "a"
    assert order[-1] == "d"
    assert set(order[1:3]) == {"start b", "start c"}


async def test_a_dag_orders_by_wiring_and_explicit_dependencies_add_to_it() -> None:
    order: list[str] = []

    @op(outputs={"x": int})
    async def mark(tag: str, x: int = 0):
        order.append(tag)
        await anyio.lowlevel.checkpoint()
        return {"x": x + 1}

    a = Step("a", mark, parameters={"tag": "a"})
    side = Step("side", mark, parameters={"tag": "side"})
    b = Step(
        "b",
        mark,
        parameters={"tag": "b", "x": a.outputs.parameters["x"]},
        dependencies=[side],  # adds to the wiring: b waits for a *and* side
    )
    dag = DAG().add([b, side, a])  # added out of order on purpose
    wf = Workflow("dag", dag=dag)
    assert await run_wf(wf) == "Succeeded"
    assert order.index("b") > order.index("a")
    assert order.index("b") > order.index("side")
    assert wf.query_step(name="b")[0].outputs.parameters["x"].value == 2


def test_cycles_duplicates_and_foreign_steps_are_build_errors() -> None:
    a = Step("a", add, parameters={"x": 1})
    b = Step("b", add, parameters={"x": a.outputs.parameters["sum"]})
    a.dependencies = (b,)  # only a later change can close a loop
    with pytest.raises(aflow.errors.CycleError, match=r"cycle: (a -> b -> a|b -> a -> b)"):
        aflow.compile(Workflow("c", dag=DAG().add([a, b])))
    a.dependencies = ()
    with pytest.raises(aflow.errors.SignatureError, match="is not in workflow"):
        aflow.compile(Workflow("c").add(b))
    with pytest.raises(aflow.errors.DuplicateTaskError):
        aflow.compile(Workflow("c").add(a).add(Step("a", add, parameters={"x": 2})))
    x = Step("x", add, parameters={"x": 1})
    y = Step("y", add, parameters={"x": 1}, dependencies=[x])
    with pytest.raises(aflow.errors.SignatureError, match="depends on step 'x'"):
        aflow.compile(Workflow("c", dag=DAG().add([y])))


# --- where ops run: the loop and the runtime's threads --------------------------------------------


async def test_sync_ops_run_in_a_worker_thread_and_async_ops_on_the_loop() -> None:
    seen: dict[str, int] = {}

    @op(outputs={"t": int})
    def in_thread():
        seen["sync"] = threading.get_ident()
        return {"t": 1}

    @op(outputs={"t": int})
    async def on_loop():
        seen["async"] = threading.get_ident()
        return {"t": 1}

    assert await run_wf(Workflow("t").add([Step("a", in_thread), Step("b", on_loop)])) == (
        "Succeeded"
    )
    assert seen["async"] == threading.get_ident()
    assert seen["sync"] != threading.get_ident()


async def test_sync_ops_use_the_runtime_threads() -> None:
    barrier = threading.Barrier(2, timeout=0.3)
    together: list[bool] = []

    @op(outputs={"ok": bool})
    def meet(i: int):
        try:
            barrier.wait()
            together.append(True)
        except threading.BrokenBarrierError:
            together.append(False)
        return {"ok": True}

    steps = [Step(f"m{i}", meet, parameters={"i": i}) for i in range(2)]
    async with aflow.Runtime(threads=1):
        wf = Workflow("w").add(steps)
        await wf.submit()
        assert await wf.wait() == "Succeeded"
    assert together == [False, False]  # one thread: they never met
    barrier.reset()
    together.clear()
    async with aflow.Runtime(threads=2):
        wf = Workflow("w").add([Step(f"m{i}", meet, parameters={"i": i}) for i in range(2)])
        await wf.submit()
        assert await wf.wait() == "Succeeded"
    assert together == [True, True]
