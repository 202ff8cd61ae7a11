"""Hostile tests of aflow.ops templates (Steps / DAG with declared inputs and outputs, nested,
recursive, if_expression outputs, durable runs) and of script mode (a dflow script's shape:
submit / wait / query with no event loop, ``with Workflow()``, ``@OP.function``,
``upload_artifact``).

Written by a hostile review (session 11). What it found is fixed, and these tests guard
it: a cancel or a run timeout hundreds of levels deep in a recursion (it recursed through
every level's cancel scope and left tasks behind), keys holding ``/`` sharing inner
checkpoints, a reused entry-level step of a recursion ignored, and others (a template's
parallelism, a retried template step's work dirs, outputs and if_expressions reading
another template's inputs, inner failures missing from the store, wait before submit in a
script, a template built inside a ``with Workflow()`` block)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.lowlevel
import pytest

import aflow
from aflow.errors import RunTimeout, SignatureError, TaskTimeout
from aflow.ops import (
    DAG,
    OP,
    OPIO,
    Artifact,
    InputArtifact,
    InputParameter,
    Inputs,
    OPIOSign,
    OutputArtifact,
    OutputParameter,
    Outputs,
    PythonOPTemplate,
    Step,
    Steps,
    Workflow,
    download_artifact,
    if_expression,
    op,
    upload_artifact,
)
from aflow.testing import FakeClock

from . import hostile_templates_workflows as hw
from .ops_helpers import add, boom, run_wf

ROOT = Path(__file__).resolve().parent.parent


class Plus1(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"iter": int})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"iter": int})

    def execute(self, op_in: OPIO) -> OPIO:
        return OPIO({"iter": op_in["iter"] + 1})


def recursion(limit: int, plus1_op: Any = Plus1) -> Steps:
    steps = Steps(
        "iter",
        inputs=Inputs(
            parameters={"iter": InputParameter(value=0), "limit": InputParameter(value=limit)}
        ),
    )
    plus1 = Step(
        "plus1",
        plus1_op,
        parameters={"iter": steps.inputs.parameters["iter"]},
        key=f"iter-{steps.inputs.parameters['iter']}",
    )
    steps.add(plus1)
    steps.add(
        Step(
            "next",
            steps,
            parameters={
                "iter": plus1.outputs.parameters["iter"],
                "limit": steps.inputs.parameters["limit"],
            },
            when=f"{plus1.outputs.parameters['iter']} < {steps.inputs.parameters['limit']}",
        )
    )
    return steps


async def failed_with(wf: Workflow, **runtime: Any) -> BaseException:
    """Run ``wf``; it must fail; the error its run raises."""
    async with aflow.Runtime(**runtime):
        await wf.submit()
        with anyio.fail_after(20):
            assert await wf.wait() == "Failed"
        try:
            await wf.run.result()
        except Exception as exc:
            return exc
    raise AssertionError("the run did not raise")


# --- artifacts in and out of templates ----------------------------------------------------------


@op(outputs={"folder": Artifact(Path), "files": Artifact(list[Path]), "n": int})
def fold(
    src: Annotated[Path, Artifact(Path)],
    items: Annotated[list[Path], Artifact(list[Path])],
    workdir: Path,
):
    out = workdir / "out"
    out.mkdir()
    for f in sorted(src.iterdir()):
        (out / f.name).write_text(f.read_text().upper())
    files = []
    for i, p in enumerate(items):
        (workdir / f"item{i}.txt").write_text(p.read_text() + "!")
        files.append(Path(f"item{i}.txt"))
    return {"folder": Path("out"), "files": files, "n": len(items)}


@op(outputs={"text": str})
def cat_list(items: Annotated[list[Path], Artifact(list[Path])]):
    return {"text": "|".join(p.read_text() for p in items)}


def fold_template() -> Steps:
    tpl = Steps(
        "fold",
        inputs=Inputs(artifacts={"src": InputArtifact(), "items": InputArtifact()}),
        outputs=Outputs(
            parameters={"n": OutputParameter()},
            artifacts={"folder": OutputArtifact(), "files": OutputArtifact()},
        ),
    )
    f = Step(
        "f",
        fold,
        artifacts={"src": tpl.inputs.artifacts["src"], "items": tpl.inputs.artifacts["items"]},
    )
    tpl.add(f)
    tpl.outputs.artifacts["folder"]._from = f.outputs.artifacts["folder"]
    tpl.outputs.artifacts["files"]._from = f.outputs.artifacts["files"]
    tpl.outputs.parameters["n"].value_from_parameter = f.outputs.parameters["n"]
    return tpl


async def test_templates_take_and_give_folders_and_lists_chained(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("a")
    (tmp_path / "d" / "b.txt").write_text("b")
    (tmp_path / "x.txt").write_text("x")
    (tmp_path / "y.txt").write_text("y")
    tpl = fold_template()
    t1 = Step(
        "t1",
        tpl,
        artifacts={"src": tmp_path / "d", "items": [tmp_path / "x.txt", tmp_path / "y.txt"]},
    )
    # the second use reads the first's outputs: a folder and a list
    t2 = Step(
        "t2",
        tpl,
        artifacts={"src": t1.outputs.artifacts["folder"], "items": t1.outputs.artifacts["files"]},
    )
    c = Step("c", cat_list, artifacts={"items": t2.outputs.artifacts["files"]})
    wf = Workflow("arts").add(t1).add(t2).add(c)
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step(name="c")[0].outputs.parameters["text"].value == "x!!|y!!"
    rec = wf.query_step(name="t2")[0]
    assert rec.outputs.parameters["n"].value == 2
    [folder] = download_artifact(rec.outputs.artifacts["folder"], path=tmp_path / "dl")
    assert sorted((p.name, p.read_text()) for p in folder.iterdir()) == [
        ("a.txt", "A"),
        ("b.txt", "B"),
    ]
    files = download_artifact(rec.outputs.artifacts["files"], path=tmp_path / "dl2")
    assert sorted(p.read_text() for p in files) == ["x!!", "y!!"]


async def test_an_optional_input_artifact_left_out_and_passed_through() -> None:
    tpl = Steps(
        "opt",
        inputs=Inputs(artifacts={"maybe": InputArtifact(optional=True)}),
        outputs=Outputs(
            artifacts={"same": OutputArtifact(optional=True)},
            parameters={"n": OutputParameter()},
        ),
    )
    a = Step("a", add, parameters={"x": 1})
    tpl.add(a)
    tpl.outputs.artifacts["same"]._from = tpl.inputs.artifacts["maybe"]
    tpl.outputs.parameters["n"].value_from_parameter = a.outputs.parameters["sum"]
    wf = Workflow("w").add(Step("t", tpl))
    assert await run_wf(wf) == "Succeeded"
    rec = wf.query_step(name="t")[0]
    assert rec.outputs.artifacts["same"] is None
    assert rec.outputs.parameters["n"].value == 2


# --- failures, retries and timeouts -----------------------------------------------------------


async def test_an_inner_tolerated_failure_skips_its_readers_and_the_rest_goes_on() -> None:
    tpl = Steps("tolerant", outputs=Outputs(parameters={"y": OutputParameter(default=-1)}))
    b = Step("b", boom, parameters={"x": 3}, continue_on_failed=True)
    c = Step("c", add, parameters={"x": b.outputs.parameters["y"]})
    d = Step("d", add, parameters={"x": 10})
    tpl.add(b).add([c, d])
    tpl.outputs.parameters["y"].value_from_parameter = c.outputs.parameters["sum"]
    t = Step("t", tpl)
    after = Step("after", add, parameters={"x": t.outputs.parameters["y"]})
    wf = Workflow("w").add(t).add(after)
    assert await run_wf(wf) == "Succeeded"
    phases = {r.name: r.phase for r in wf.query_step()}
    assert phases == {
        "t": "Succeeded",
        "b": "Failed",
        "c": "Skipped",
        "d": "Succeeded",
        "after": "Succeeded",
    }
    assert wf.query_step(name="after")[0].outputs.parameters["sum"].value == 0
    assert "boom 3" in str(wf.query_step(name="b")[0].error)


async def test_a_tolerated_failed_template_step_skips_its_readers_only() -> None:
    tpl = Steps("failing", outputs=Outputs(parameters={"y": OutputParameter()}))
    b = Step("b", boom, parameters={"x": 1})
    tpl.add(b)
    tpl.outputs.parameters["y"].value_from_parameter = b.outputs.parameters["y"]
    t = Step("t", tpl, continue_on_failed=True)
    reader = Step("reader", add, parameters={"x": t.outputs.parameters["y"]})
    other = Step("other", add, parameters={"x": 5})
    wf = Workflow("w").add(t).add([reader, other])
    assert await run_wf(wf) == "Succeeded"
    phases = {r.name: r.phase for r in wf.query_step()}
    assert phases == {"t": "Failed", "b": "Failed", "reader": "Skipped", "other": "Succeeded"}


def flaky_template(calls: dict[str, int], marker: bool = False) -> Steps:
    @op(outputs={"y": int})
    async def first(x: int):
        calls["first"] += 1
        return {"y": x + 1}

    @op(outputs={"y": int})
    def second(x: int, workdir: Path):
        calls["second"] += 1
        if marker:  # a fresh work dir per attempt: the folder is not there yet
            (workdir / "made-by-this-attempt").mkdir()
        if calls["second"] == 1:
            raise ConnectionError("flaky once")
        return {"y": x * 10}

    tpl = Steps("flaky", outputs=Outputs(parameters={"y": OutputParameter()}))
    a = Step("a", first, parameters={"x": 1})
    b = Step("b", second, parameters={"x": a.outputs.parameters["y"]})
    tpl.add(a).add(b)
    tpl.outputs.parameters["y"].value_from_parameter = b.outputs.parameters["y"]
    return tpl


async def test_a_template_step_retried_runs_its_template_again() -> None:
    calls = {"first": 0, "second": 0}
    wf = Workflow("w").add(Step("t", flaky_template(calls), retries=1))
    assert await run_wf(wf) == "Succeeded"
    assert calls == {"first": 2, "second": 2}
    t = wf.query_step(name="t")[0]
    assert t.attempts == 2
    assert t.outputs.parameters["y"].value == 20
    # the query shows the attempt that went through
    assert {r.name: r.phase for r in wf.query_step()} == {
        "t": "Succeeded",
        "a": "Succeeded",
        "b": "Succeeded",
    }


async def test_a_retried_template_step_gives_its_inner_steps_fresh_work_dirs() -> None:
    calls = {"first": 0, "second": 0}
    wf = Workflow("w").add(Step("t", flaky_template(calls, marker=True), retries=1))
    assert await run_wf(wf) == "Succeeded", wf.query_step(name="b")[0].error


async def test_a_template_steps_timeout_cancels_its_inner_steps() -> None:
    started = anyio.Event()

    @op(outputs={"y": int})
    async def hang(x: int):
        started.set()
        await anyio.sleep_forever()
        raise AssertionError

    tpl = Steps("slow")
    tpl.add(Step("h", hang, parameters={"x": 1}))
    wf = Workflow("w").add(Step("t", tpl, timeout=30))
    async with FakeClock() as clock, aflow.Runtime(clock=clock):
        await wf.submit()
        with anyio.fail_after(10):
            assert await wf.wait() == "Failed"
    assert started.is_set()
    t = wf.query_step(name="t")[0]
    assert isinstance(t.error, TaskTimeout), t.error
    assert wf.query_step(name="h")[0].phase == "Cancelled"


async def test_an_inner_steps_timeout_fails_the_template_step_naming_it() -> None:
    @op(outputs={"y": int})
    async def hang(x: int):
        await anyio.sleep_forever()
        raise AssertionError

    tpl = Steps("slow")
    tpl.add(Step("h", hang, parameters={"x": 1}, timeout=5, retries=1))
    wf = Workflow("w").add(Step("t", tpl))
    async with FakeClock() as clock, aflow.Runtime(clock=clock):
        await wf.submit()
        with anyio.fail_after(10):
            assert await wf.wait() == "Failed"
    h = wf.query_step(name="h")[0]
    assert isinstance(h.error, TaskTimeout)
    assert h.attempts == 2
    assert wf.query_step(name="t")[0].phase == "Failed"


# --- one template, two steps at once ----------------------------------------------------------


async def test_one_template_used_by_two_parallel_steps_keeps_work_dirs_and_keys_apart(
    tmp_path: Path,
) -> None:
    in_flight = 0
    both = anyio.Event()
    seen: list[Path] = []

    @op(outputs={"file": Artifact(Path), "x": int})
    async def note(x: int, workdir: Path):
        nonlocal in_flight
        in_flight += 1
        if in_flight == 2:
            both.set()
        with anyio.fail_after(10):
            await both.wait()  # both levels run at once
        seen.append(workdir)
        (workdir / "note.txt").write_text(str(x))
        return {"file": Path("note.txt"), "x": x}

    tpl = DAG(
        "shared",
        inputs=Inputs(parameters={"x": InputParameter(type=int)}),
        outputs=Outputs(artifacts={"file": OutputArtifact()}, parameters={"x": OutputParameter()}),
    )
    n = Step("n", note, parameters={"x": tpl.inputs.parameters["x"]})
    tpl.add(n)
    tpl.outputs.artifacts["file"]._from = n.outputs.artifacts["file"]
    tpl.outputs.parameters["x"].value_from_parameter = n.outputs.parameters["x"]
    wf = Workflow("twins").add(
        [Step("t1", tpl, parameters={"x": 1}), Step("t2", tpl, parameters={"x": 2})]
    )
    assert await run_wf(wf) == "Succeeded"
    assert len(set(seen)) == 2
    for name, x in (("t1", 1), ("t2", 2)):
        rec = wf.query_step(name=name)[0]
        assert rec.outputs.parameters["x"].value == x
        [path] = download_artifact(rec.outputs.artifacts["file"], path=tmp_path / name)
        assert path.read_text() == str(x)
    assert [r.inputs.parameters["x"] for r in wf.query_step(name="n")] == [1, 2]


# --- cancellation, limits, endless recursion ---------------------------------------------------


async def test_cancelling_a_deep_recursion_leaves_no_task_of_the_run_behind() -> None:
    started = anyio.Event()

    class HangAt30(OP):
        @classmethod
        def get_input_sign(cls) -> OPIOSign:
            return OPIOSign({"iter": int})

        @classmethod
        def get_output_sign(cls) -> OPIOSign:
            return OPIOSign({"iter": int})

        async def execute(self, op_in: OPIO) -> OPIO:
            if op_in["iter"] == 30:
                started.set()
                await anyio.sleep_forever()
            return OPIO({"iter": op_in["iter"] + 1})

    wf = Workflow("deep", steps=recursion(limit=100, plus1_op=HangAt30))
    before = set(asyncio.all_tasks())
    async with aflow.Runtime():
        run = await wf.submit()
        with anyio.fail_after(20):
            await started.wait()
            assert wf.query_step(key="iter-30")[0].phase == "Running"
            await run.cancel()
            assert await wf.wait() == "Failed"
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        left = {
            t
            for t in asyncio.all_tasks() - before
            if t is not asyncio.current_task() and not t.done()
        }
        assert not left, left
        assert run.status is aflow.RunStatus.CANCELLED
        phases = {r.key: r.phase for r in wf.query_step(name="plus1")}
        assert phases["iter-29"] == "Succeeded"
        assert phases["iter-30"] == "Cancelled"
        assert "iter-31" not in phases


def inflight_op() -> tuple[Any, dict[str, int]]:
    stats = {"now": 0, "peak": 0, "calls": 0}

    @op(outputs={"y": int})
    async def probe(x: int):
        stats["now"] += 1
        stats["calls"] += 1
        stats["peak"] = max(stats["peak"], stats["now"])
        for _ in range(20):
            await anyio.lowlevel.checkpoint()  # let any other call start meanwhile
        stats["now"] -= 1
        return {"y": x + 1}

    return probe, stats


async def test_nested_templates_under_max_concurrency_one_do_not_deadlock() -> None:
    probe, stats = inflight_op()
    leaf = DAG(
        "leaf",
        inputs=Inputs(parameters={"x": InputParameter(type=int)}),
        outputs=Outputs(parameters={"y": OutputParameter()}),
    )
    la = Step("la", probe, parameters={"x": leaf.inputs.parameters["x"]})
    lb = Step("lb", probe, parameters={"x": leaf.inputs.parameters["x"]})
    lc = Step(
        "lc", add, parameters={"x": la.outputs.parameters["y"], "y": lb.outputs.parameters["y"]}
    )
    leaf.add([la, lb, lc])
    leaf.outputs.parameters["y"].value_from_parameter = lc.outputs.parameters["sum"]
    mid = Steps(
        "mid",
        inputs=Inputs(parameters={"x": InputParameter(type=int)}),
        outputs=Outputs(parameters={"y": OutputParameter()}),
    )
    m1 = Step("m1", leaf, parameters={"x": mid.inputs.parameters["x"]})
    m2 = Step("m2", leaf, parameters={"x": mid.inputs.parameters["x"]})
    m3 = Step(
        "m3", add, parameters={"x": m1.outputs.parameters["y"], "y": m2.outputs.parameters["y"]}
    )
    mid.add([m1, m2]).add(m3)
    mid.outputs.parameters["y"].value_from_parameter = m3.outputs.parameters["sum"]
    wf = Workflow("limits").add(
        [Step("a", mid, parameters={"x": 1}), Step("b", mid, parameters={"x": 2})]
    )
    async with aflow.Runtime(max_concurrency=1):
        await wf.submit()
        with anyio.fail_after(10):
            assert await wf.wait() == "Succeeded"
    assert stats["peak"] == 1
    assert stats["calls"] == 8
    assert wf.query_step(name="a")[0].outputs.parameters["y"].value == 8
    assert wf.query_step(name="b")[0].outputs.parameters["y"].value == 12


async def test_a_templates_parallelism_bounds_its_parallel_steps() -> None:
    probe, stats = inflight_op()
    tpl = Steps("bounded", parallelism=1)
    tpl.add([Step(f"p{i}", probe, parameters={"x": i}) for i in range(3)])
    wf = Workflow("w").add(Step("t", tpl))
    assert await run_wf(wf) == "Succeeded"
    assert stats["calls"] == 3
    assert stats["peak"] == 1


class HangAt(OP):
    """``iter + 1``; blocks for good at ``iter == DEPTH`` (set on the class), after ``reached``."""

    depth = 0
    reached: anyio.Event | None = None

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"iter": int})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"iter": int})

    async def execute(self, op_in: OPIO) -> OPIO:
        if op_in["iter"] == type(self).depth:
            assert type(self).reached is not None
            type(self).reached.set()
            await anyio.sleep_forever()
        return OPIO({"iter": op_in["iter"] + 1})


def endless(plus1_op: Any) -> Workflow:
    """A recursion with no stopping ``when``."""
    steps = Steps("forever", inputs=Inputs(parameters={"iter": InputParameter(value=0)}))
    p = Step("p", plus1_op, parameters={"iter": steps.inputs.parameters["iter"]})
    steps.add(p)
    steps.add(Step("next", steps, parameters={"iter": p.outputs.parameters["iter"]}))
    return Workflow("forever", steps=steps)


async def test_a_recursion_with_no_stopping_when_ends_with_the_runs_timeout() -> None:
    class Hang(HangAt):
        depth = 40
        reached = anyio.Event()

    wf = endless(Hang)
    async with FakeClock() as clock, aflow.Runtime(clock=clock):
        before = set(asyncio.all_tasks())
        run = await wf.submit(timeout=3600)  # virtual time: it jumps once all is blocked
        with anyio.fail_after(30):
            assert await wf.wait() == "Failed"
        with pytest.raises(RunTimeout):
            await run.result()
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        left = {t for t in asyncio.all_tasks() - before if not t.done()}
        assert left <= {asyncio.current_task()}, left
        records = wf.query_step(name="p")
    assert len(records) == 41
    assert {r.phase for r in records[:-1]} == {"Succeeded"}
    assert records[-1].phase == "Cancelled"


# A recursion several hundred levels deep, stopped from outside, in a process of its own:
# a run whose tasks are left behind would hang its event loop's close.
DEEP = textwrap.dedent(
    """
    import asyncio, json, os, sys, traceback
    import anyio
    import aflow
    from aflow.testing import FakeClock
    from tests.test_ops_templates_hostile import HangAt, endless

    MODE, DEPTH = sys.argv[1], int(sys.argv[2])

    async def main():
        class Hang(HangAt):
            depth = DEPTH
            reached = anyio.Event()

        wf = endless(Hang)
        out = {}
        clock = FakeClock()
        async with clock, aflow.Runtime(clock=clock):
            before = set(asyncio.all_tasks())
            run = await wf.submit(timeout=3600 if MODE == "timeout" else None)
            with anyio.fail_after(60):
                await Hang.reached.wait()
                if MODE == "cancel":
                    await run.cancel()
                out["status"] = await wf.wait()
            try:
                await run.result()
            except Exception as exc:
                out["error"] = type(exc).__name__
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            me = asyncio.current_task()
            left = [t for t in asyncio.all_tasks() - before if t is not me and not t.done()]
            out["left"] = len(left)
            out["records"] = len(wf.query_step(name="p"))
        return out

    async def guarded():
        try:
            out = await main()
        except BaseException as exc:
            lines = traceback.format_exception(exc)
            out = {"raised": type(exc).__name__, "where": "".join(lines)[-1500:]}
        print(json.dumps(out), flush=True)
        os._exit(0)  # a loop with tasks left behind would hang as it closes

    asyncio.run(guarded())
    """
)


def run_deep(mode: str, depth: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", DEEP, mode, str(depth)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-3000:]
    return dict(json.loads(lines[-1]))


def test_cancelling_a_recursion_500_levels_deep_ends_every_task() -> None:
    out = run_deep("cancel", 500)
    assert out == {"status": "Failed", "error": "RunCancelled", "left": 0, "records": 501}, out


def test_a_run_timeout_500_levels_deep_in_an_endless_recursion_ends_it() -> None:
    out = run_deep("timeout", 500)
    assert out == {"status": "Failed", "error": "RunTimeout", "left": 0, "records": 501}, out


def test_cancelling_a_recursion_200_levels_deep_ends_every_task() -> None:
    out = run_deep("cancel", 200)
    assert out == {"status": "Failed", "error": "RunCancelled", "left": 0, "records": 201}, out


async def test_query_step_answers_for_a_recursion_a_thousand_levels_deep() -> None:
    wf = Workflow("recurse", steps=recursion(limit=1000))
    async with aflow.Runtime():
        await wf.submit()
        with anyio.fail_after(60):
            assert await wf.wait() == "Succeeded"
        assert wf.query_step(key="iter-999")[0].outputs.parameters["iter"].value == 1000


# --- bad wiring: errors name the step or template at fault ----------------------------------------


def other_template() -> tuple[Steps, Step]:
    one = Steps("one", inputs=Inputs(parameters={"x": InputParameter(value=1)}))
    s1 = Step("s1", add, parameters={"x": one.inputs.parameters["x"]})
    one.add(s1)
    return one, s1


async def test_an_output_reading_a_step_of_another_template_fails_naming_both() -> None:
    _, s1 = other_template()
    two = Steps("two", outputs=Outputs(parameters={"y": OutputParameter()}))
    two.add(Step("s2", add, parameters={"x": 2}))
    two.outputs.parameters["y"].value_from_parameter = s1.outputs.parameters["sum"]
    exc = await failed_with(Workflow("w").add(Step("t", two)))
    assert isinstance(exc, SignatureError), exc
    assert "two" in str(exc)
    assert "s1" in str(exc)


async def test_an_if_expression_on_a_step_not_in_the_template_fails_naming_it() -> None:
    _, s1 = other_template()
    two = Steps("two", outputs=Outputs(parameters={"y": OutputParameter()}))
    two.add(Step("s2", add, parameters={"x": 2}))
    two.outputs.parameters["y"].value_from_expression = if_expression(
        _if=f"{s1.outputs.parameters['sum']} > 0", _then=1, _else=2
    )
    exc = await failed_with(Workflow("w").add(Step("t", two)))
    assert isinstance(exc, SignatureError), exc
    assert "two" in str(exc)
    assert "s1" in str(exc)


async def test_an_if_expression_reading_another_templates_input_fails_naming_it() -> None:
    one, _ = other_template()
    one.inputs.parameters["z"] = InputParameter(value=5)
    two = Steps("two", outputs=Outputs(parameters={"y": OutputParameter()}))
    two.add(Step("s2", add, parameters={"x": 2}))
    two.outputs.parameters["y"].value_from_expression = if_expression(
        _if=f"{one.inputs.parameters['z']} > 1", _then=1, _else=2
    )
    exc = await failed_with(Workflow("w").add(Step("t", two)))
    assert isinstance(exc, SignatureError), repr(exc)
    assert "two" in str(exc)


async def test_an_output_from_another_templates_input_fails_naming_it() -> None:
    one, _ = other_template()
    two = Steps("two", outputs=Outputs(parameters={"y": OutputParameter()}))
    two.add(Step("s2", add, parameters={"x": 2}))
    two.outputs.parameters["y"].value_from_parameter = one.inputs.parameters["x"]
    exc = await failed_with(Workflow("w").add(Step("t", two)))
    assert isinstance(exc, SignatureError), repr(exc)
    assert "one" in str(exc)
    assert "two" in str(exc)


async def test_an_output_from_another_templates_same_named_input_is_refused() -> None:
    one, _ = other_template()
    two = Steps(
        "two",
        inputs=Inputs(parameters={"x": InputParameter(value=222)}),
        outputs=Outputs(parameters={"y": OutputParameter()}),
    )
    two.add(Step("s2", add, parameters={"x": 2}))
    two.outputs.parameters["y"].value_from_parameter = one.inputs.parameters["x"]
    exc = await failed_with(Workflow("w").add(Step("t", two)))
    assert isinstance(exc, SignatureError), repr(exc)


async def test_a_when_or_key_reading_an_input_the_template_lacks_fails_naming_it() -> None:
    one, _ = other_template()
    one.inputs.parameters["limit"] = InputParameter(value=3)
    two = Steps("two")
    two.add(Step("s2", add, parameters={"x": 2}, when=f"{one.inputs.parameters['limit']} > 1"))
    exc = await failed_with(Workflow("w").add(Step("t", two)))
    assert isinstance(exc, SignatureError), repr(exc)
    assert "s2" in str(exc)
    assert "'limit'" in str(exc)

    three = Steps("three")
    three.add(Step("s3", add, parameters={"x": 2}, key=f"k-{one.inputs.parameters['limit']}"))
    exc = await failed_with(Workflow("w").add(Step("t", three)))
    assert isinstance(exc, SignatureError), repr(exc)
    assert "three" in str(exc)
    assert "'limit'" in str(exc)


async def test_a_step_reading_another_templates_input_artifact_is_refused() -> None:
    one = Steps("one", inputs=Inputs(artifacts={"src": InputArtifact()}))
    two = Steps("two")

    @op(outputs={"text": str})
    async def read(file: Annotated[Path, Artifact(Path)]):
        return {"text": file.read_text()}

    two.add(Step("r", read, artifacts={"file": one.inputs.artifacts["src"]}))
    exc = await failed_with(Workflow("w").add(Step("t", two)))
    assert isinstance(exc, SignatureError), repr(exc)
    assert "an input of one" in str(exc)


async def test_a_template_input_formatted_into_a_parameter_string_is_rendered() -> None:
    @op(outputs={"text": str})
    async def echo(text: str):
        return {"text": text}

    tpl = Steps(
        "greet",
        inputs=Inputs(parameters={"name": InputParameter(type=str)}),
        outputs=Outputs(parameters={"text": OutputParameter()}),
    )
    e = Step("e", echo, parameters={"text": f"hello {tpl.inputs.parameters['name']}"})
    tpl.add(e)
    tpl.outputs.parameters["text"].value_from_parameter = e.outputs.parameters["text"]
    wf = Workflow("w").add(Step("t", tpl, parameters={"name": "bob"}))
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step(name="t")[0].outputs.parameters["text"].value == "hello bob"


async def test_two_steps_of_one_level_rendering_the_same_key_fail_naming_it() -> None:
    tpl = Steps("clash", inputs=Inputs(parameters={"x": InputParameter(type=int)}))
    tpl.add(
        [
            Step("a", add, parameters={"x": 1}, key=f"k-{tpl.inputs.parameters['x']}"),
            Step("b", add, parameters={"x": 2}, key="k-1"),
        ]
    )
    exc = await failed_with(Workflow("w").add(Step("t", tpl, parameters={"x": 1})))
    assert isinstance(exc, aflow.errors.DuplicateTaskError), repr(exc)
    assert "k-1" in str(exc)


# --- reusing steps of an earlier run (dflow's "reuse steps from a previous workflow") ----------


def counting_plus1(calls: list[int]) -> type[OP]:
    class Counted(OP):
        @classmethod
        def get_input_sign(cls) -> OPIOSign:
            return OPIOSign({"iter": int})

        @classmethod
        def get_output_sign(cls) -> OPIOSign:
            return OPIOSign({"iter": int})

        def execute(self, op_in: OPIO) -> OPIO:
            calls.append(op_in["iter"])
            return OPIO({"iter": op_in["iter"] + 1})

    return Counted


async def test_reusing_inner_recursion_steps_takes_their_outputs_without_running_them() -> None:
    calls: list[int] = []
    op_ = counting_plus1(calls)
    async with aflow.Runtime():
        first = Workflow("r", steps=recursion(3, op_))
        await first.submit()
        assert await first.wait() == "Succeeded"
        reuse = first.query_step(key=["iter-1", "iter-2"])
        reuse[-1].modify_output_parameter("iter", 10)
        calls.clear()
        again = Workflow("r", steps=recursion(12, op_))
        await again.submit(reuse_step=reuse)
        assert await again.wait() == "Succeeded"
    assert calls == [0, 10, 11]
    got = [
        (r.key, r.reused, r.outputs.parameters["iter"].value)
        for r in again.query_step(name="plus1")
    ]
    assert got == [
        ("iter-0", False, 1),
        ("iter-1", True, 2),
        ("iter-2", True, 10),
        ("iter-10", False, 11),
        ("iter-11", False, 12),
    ]


async def test_reusing_the_entry_levels_keyed_step_of_a_recursion_takes_its_outputs() -> None:
    calls: list[int] = []
    op_ = counting_plus1(calls)
    async with aflow.Runtime():
        first = Workflow("r", steps=recursion(3, op_))
        await first.submit()
        assert await first.wait() == "Succeeded"
        [reuse] = first.query_step(key="iter-0")
        reuse.modify_output_parameter("iter", 5)
        calls.clear()
        again = Workflow("r", steps=recursion(7, op_))
        await again.submit(reuse_step=[reuse])
        assert await again.wait() == "Succeeded"
    got = [
        (r.key, r.reused, r.outputs.parameters["iter"].value)
        for r in again.query_step(name="plus1")
    ]
    assert got[0] == ("iter-0", True, 5)
    assert [k for k, _, _ in got] == ["iter-0", "iter-5", "iter-6"]
    assert calls == [5, 6]


# --- durable runs -------------------------------------------------------------------------------


def crash_in(store_url: str, workflow: str, hang: str, counts: Path) -> str:
    """Run a workflow of tests/hostile_templates_workflows.py in a subprocess; SIGKILL it
    while step ``hang`` is blocked (tests/test_durable.py's crasher)."""
    from tests.test_durable import crash_in as crash

    return crash(store_url, workflow, hang, counts, "tests.hostile_templates_workflows")


@pytest.mark.slow
async def test_a_run_killed_inside_a_nested_template_resumes_without_rerunning_finished_steps(
    tmp_path: Path, counts: Path
) -> None:
    from tests.durable_workflows import read_counts
    from tests.test_durable import LEASE, later

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = await anyio.to_thread.run_sync(crash_in, url, "nested_crash", "l2-b", counts)
    assert read_counts(counts) == {"l1-a": 1, "l1-b": 1, "l2-a": 1, "l2-b": 1}
    async with aflow.Runtime(store=url, recover=True, lease=LEASE, clock=later()) as rt:
        with anyio.fail_after(30):
            assert await rt.get(run_id).result() == {"after": {"y": 6}}
    assert read_counts(counts) == {"l1-a": 1, "l1-b": 1, "l2-a": 1, "l2-b": 2, "after": 1}
    async with aflow.Runtime(store=url) as rt:
        wf = await Workflow.load(run_id, runtime=rt)
        assert wf.query_status() == "Succeeded"
        records = [(r.name, r.phase) for r in wf.query_step()]
        assert records == [
            ("m", "Succeeded"),
            ("l1", "Succeeded"),
            ("a", "Succeeded"),
            ("b", "Succeeded"),
            ("l2", "Succeeded"),
            ("a", "Succeeded"),
            ("b", "Succeeded"),
            ("after", "Succeeded"),
        ]
        assert [r.outputs.parameters["y"].value for r in wf.query_step(name="b")] == [3, 5]
        assert wf.query_step(name="m")[0].outputs.parameters["y"].value == 5


async def test_a_durable_template_used_twice_at_once_keeps_its_checkpoints_apart(
    tmp_path: Path, counts: Path
) -> None:
    from tests.durable_workflows import read_counts

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        run = await hw.twin_templates(start=1).submit(runtime=rt)
        assert await run.result() == {"t1": {"y": 3}, "t2": {"y": 102}}
        assert rt.store is not None
        nodes = await rt.store.load_nodes(run.id)
        assert {"_in:t1/a", "_in:t1/b", "_in:t2/a", "_in:t2/b"} <= set(nodes)
    assert read_counts(counts) == {"t1-a": 1, "t1-b": 1, "t2-a": 1, "t2-b": 1}
    async with aflow.Runtime(store=url) as rt:
        wf = await Workflow.load(run.id, runtime=rt)
        got = [
            (r.name, r.inputs.parameters["x"], r.outputs.parameters["y"].value)
            for r in wf.query_step()
        ]
        assert got == [
            ("t1", 1, 3),
            ("a", 1, 2),
            ("b", 2, 3),
            ("t2", 100, 102),
            ("a", 100, 101),
            ("b", 101, 102),
        ]


async def test_a_failed_inner_step_reads_back_from_the_store_as_failed(
    tmp_path: Path, counts: Path
) -> None:

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        wf = hw.tolerated_inner_failure(start=1)
        await wf.submit(runtime=rt)
        assert await wf.wait() == "Succeeded"
        live = {r.name: r.phase for r in wf.query_step()}
        assert live == {
            "t": "Succeeded",
            "ok": "Succeeded",
            "bad": "Failed",
            "after-bad": "Skipped",
        }
        run_id = wf.run.id
    async with aflow.Runtime(store=url) as rt:
        loaded = await Workflow.load(run_id, runtime=rt)
        assert {r.name: r.phase for r in loaded.query_step()} == live
        assert loaded.query_step(name="t")[0].outputs.parameters["y"].value == -1


async def test_a_durable_run_that_failed_inside_a_template_reads_back_its_failure(
    tmp_path: Path, counts: Path
) -> None:

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        wf = hw.failing_inner(start=1)
        await wf.submit(runtime=rt)
        assert await wf.wait() == "Failed"
        run_id = wf.run.id
    async with aflow.Runtime(store=url) as rt:
        loaded = await Workflow.load(run_id, runtime=rt)
        assert loaded.query_status() == "Failed"
        phases = {r.name: r.phase for r in loaded.query_step()}
        assert phases == {"t": "Failed", "ok": "Succeeded", "bad": "Failed"}


async def test_a_durable_template_step_retried_reads_back_its_last_attempt(
    tmp_path: Path, counts: Path
) -> None:
    from tests.durable_workflows import read_counts

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        run = await hw.retried_template(start=1).submit(runtime=rt)
        assert await run.result() == {"t": {"y": 3}}
    assert read_counts(counts) == {"a": 2, "b": 2}
    async with aflow.Runtime(store=url) as rt:
        wf = await Workflow.load(run.id, runtime=rt)
        t = wf.query_step(name="t")[0]
        assert (t.phase, t.attempts) == ("Succeeded", 2)
        assert {r.name: r.phase for r in wf.query_step()} == {
            "t": "Succeeded",
            "a": "Succeeded",
            "b": "Succeeded",
        }


async def test_a_durable_sliced_step_in_a_template_used_twice_reads_back_per_level(
    tmp_path: Path, counts: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"

    def seen(wf: Workflow) -> list[Any]:
        return [
            (r.key, r.phase, r.outputs.parameters["y"].value, [x.phase for x in r.slices])
            for r in wf.query_step(name="s")
        ]

    async with aflow.Runtime(store=url) as rt:
        wf = hw.sliced_in_twins(start=1)
        await wf.submit(runtime=rt)
        assert await wf.wait() == "Succeeded"
        live = seen(wf)
        run_id = wf.run.id
    assert live == [
        ("s", "Succeeded", [3, 6], ["Succeeded"] * 2),
        ("s", "Succeeded", [30, 33, 36], ["Succeeded"] * 3),
    ]
    async with aflow.Runtime(store=url) as rt:
        assert seen(await Workflow.load(run_id, runtime=rt)) == live


async def test_keys_with_a_slash_do_not_share_a_checkpoint_inside_templates(
    tmp_path: Path, counts: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"

    def seen(wf: Workflow) -> list[Any]:
        return [(r.key, r.outputs.parameters["y"].value) for r in wf.query_step() if r.key != "t"]

    async with aflow.Runtime(store=url) as rt:
        wf = hw.slash_keys(start=1)
        await wf.submit(runtime=rt)
        assert await wf.wait() == "Succeeded"
        live = seen(wf)
        run_id = wf.run.id
    assert live == [("x", 2), ("y", 2), ("x/y", 101)]
    async with aflow.Runtime(store=url) as rt:
        assert seen(await Workflow.load(run_id, runtime=rt)) == live


# --- script mode (plain def tests: no event loop runs in their thread) --------------------------


@OP.function(outputs={"y": int})
def meet(x: int) -> dict[str, int]:
    return {"y": x}


def test_two_workflows_submitted_at_once_in_a_script_run_side_by_side() -> None:
    barrier = threading.Barrier(2, timeout=20)

    @op(outputs={"y": int})
    def together(x: int):
        barrier.wait()  # both runs' ops are in flight at once, or this breaks
        return {"y": x * 2}

    wf1 = Workflow("one").add(Step("s", together, parameters={"x": 1}))
    wf2 = Workflow("two").add(Step("s", together, parameters={"x": 2}))
    wf1.submit()
    wf2.submit()
    assert wf1.wait() == "Succeeded"
    assert wf2.wait() == "Succeeded"
    assert wf1.query_step(name="s")[0].outputs.parameters["y"].value == 2
    assert wf2.query_step(name="s")[0].outputs.parameters["y"].value == 4
    assert wf1.run.id != wf2.run.id


def test_a_script_workflow_failing_inside_a_template_is_failed_and_queryable() -> None:
    tpl = Steps("inner", outputs=Outputs(parameters={"y": OutputParameter()}))
    b = Step("b", boom, parameters={"x": 7})
    tpl.add(b)
    tpl.outputs.parameters["y"].value_from_parameter = b.outputs.parameters["y"]
    wf = Workflow("fails").add(Step("t", tpl))
    wf.submit()
    assert wf.wait() == "Failed"
    assert wf.query_status() == "Failed"
    phases = {r.name: r.phase for r in wf.query_step()}
    assert phases == {"t": "Failed", "b": "Failed"}
    assert "boom 7" in str(wf.query_step(name="b")[0].error)


def test_a_script_recursion_is_queried_by_its_inner_keys() -> None:
    wf = Workflow("rec", steps=recursion(limit=3))
    wf.submit()
    assert wf.wait() == "Succeeded"
    assert wf.query_step(key="iter-2")[0].outputs.parameters["iter"].value == 3
    assert [r.key for r in wf.query_step(name="plus1")] == ["iter-0", "iter-1", "iter-2"]


def test_query_before_submit_in_a_script() -> None:
    wf = Workflow("early").add(Step("s", add, parameters={"x": 1}))
    assert wf.query_status() == "Pending"
    with pytest.raises(RuntimeError, match="not been submitted"):
        wf.query_step()


def test_wait_before_submit_in_a_script_raises() -> None:
    wf = Workflow("early").add(Step("s", add, parameters={"x": 1}))
    got: Any = None
    try:
        with pytest.raises(RuntimeError, match="not been submitted"):
            got = wf.wait()
    finally:
        if asyncio.iscoroutine(got):
            got.close()  # what the caller got back: a coroutine, never run


def test_waiting_twice_in_a_script_gives_the_same_status() -> None:
    wf = Workflow("twice").add(Step("s", add, parameters={"x": 1}))
    wf.submit()
    assert wf.wait() == "Succeeded"
    assert wf.wait() == "Succeeded"
    assert wf.query_step(name="s")[0].outputs.parameters["sum"].value == 2


def test_a_with_block_that_raises_does_not_submit() -> None:
    wf = Workflow("broken")

    def build() -> None:
        with wf:
            Step("s", add, parameters={"x": 1})
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        build()
    assert [s.name for s in wf.steps] == ["s"]
    assert wf.query_status() == "Pending"
    with pytest.raises(RuntimeError, match="not been submitted"):
        _ = wf.run
    # the block is over: steps made now join no workflow
    Step("later", add, parameters={"x": 1})
    assert [s.name for s in wf.steps] == ["s"]


def test_nested_with_blocks_of_two_workflows_keep_their_steps_apart() -> None:
    with Workflow("outer") as outer:
        a = Step("a", add, parameters={"x": 1})
        with Workflow("inner") as inner:
            Step("b", add, parameters={"x": 10})
            meet(5)
        assert inner.query_status() in ("Running", "Succeeded")  # submitted at its end
        Step("c", add, parameters={"x": a.outputs.parameters["sum"]})
        meet(6)
    assert [s.name for s in outer.steps] == ["a", "c", "meet-0"]
    assert [s.name for s in inner.steps] == ["b", "meet-0"]
    assert outer.wait() == "Succeeded"
    assert inner.wait() == "Succeeded"
    assert outer.query_step(name="c")[0].outputs.parameters["sum"].value == 3
    assert inner.query_step(name="meet-0")[0].outputs.parameters["y"].value == 5
    assert outer.query_step(name="meet-0")[0].outputs.parameters["y"].value == 6


def test_submitting_inside_the_with_block_submits_once() -> None:
    with Workflow("explicit") as wf:
        Step("s", add, parameters={"x": 1})
        wf.submit()
        first = wf.run
    assert wf.run is first
    assert wf.wait() == "Succeeded"


def test_a_template_built_inside_a_with_block_keeps_its_steps() -> None:
    calls: list[int] = []

    @op(outputs={"y": int})
    def once(x: int):
        calls.append(x)
        return {"y": x}

    with Workflow("tpl-in-block") as wf:
        tpl = Steps("inner")
        tpl.add(Step("i", once, parameters={"x": 1}))
        Step("t", tpl)
    assert wf.wait() == "Succeeded"
    assert [s.name for s in wf.steps] == ["t"]
    assert calls == [1]


def test_uploaded_folders_and_lists_feed_a_template_in_a_script(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("f")
    (tmp_path / "x.txt").write_text("x")
    folder = upload_artifact(tmp_path / "d")
    files = upload_artifact([tmp_path / "x.txt", tmp_path / "d" / "f.txt"])
    wf = Workflow("up").add(Step("t", fold_template(), artifacts={"src": folder, "items": files}))
    wf.submit()
    assert wf.wait() == "Succeeded", wf.query_step(name="f")[0].error
    rec = wf.query_step(name="t")[0]
    assert rec.outputs.parameters["n"].value == 2
    got = download_artifact(rec.outputs.artifacts["files"], path=tmp_path / "dl")
    assert sorted(p.read_text() for p in got) == ["f!", "x!"]


async def test_a_workflow_submitted_from_a_script_thread_is_awaited_from_async_code() -> None:
    wf = Workflow("threads").add(Step("s", PythonOPTemplate(Plus1), parameters={"iter": 1}))
    await anyio.to_thread.run_sync(wf.submit)  # no loop in that thread: script mode
    with anyio.fail_after(20):
        assert await wf.wait() == "Succeeded"
    records = await anyio.to_thread.run_sync(wf.query_step)
    assert records[0].outputs.parameters["iter"].value == 2


def test_two_script_threads_submit_and_wait_at_once() -> None:
    barrier = threading.Barrier(2, timeout=20)
    results: dict[int, Any] = {}

    @op(outputs={"y": int})
    def together(x: int):
        barrier.wait()
        return {"y": x + 1}

    def script(i: int) -> None:  # each thread is a plain script of its own
        try:
            with Workflow(f"thread-{i}") as wf:
                Step("s", together, parameters={"x": i})
            status = wf.wait()
            results[i] = (status, wf.query_step(name="s")[0].outputs.parameters["y"].value)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=script, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {1: ("Succeeded", 2), 2: ("Succeeded", 3)}


def test_a_with_block_whose_workflow_is_refused_raises_at_its_end(tmp_path: Path) -> None:
    wf = Workflow("refused")
    with pytest.raises(SignatureError, match="no such file"), wf:
        Step("s", cat_list, artifacts={"items": [tmp_path / "missing.txt"]})
    assert wf.query_status() == "Pending"
    (tmp_path / "missing.txt").write_text("here now")
    wf.submit()
    assert wf.wait() == "Succeeded"
    assert wf.query_step(name="s")[0].outputs.parameters["text"].value == "here now"
