"""aflow.ops templates made of steps: ``Steps`` and ``DAG`` with declared inputs and
outputs used as a step's template, nested, recursive (dflow's loop-by-recursion), and
``if_expression`` outputs. The first tests are dflow's own (tests/test_recurse.py,
tests/test_conditional_outputs.py), ported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

import aflow
from aflow.errors import MissingInputError, OpIOError, SignatureError
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
    Slices,
    Step,
    Steps,
    Workflow,
    download_artifact,
    if_expression,
    op,
)

from .ops_helpers import add, boom, read, run_wf, write


class Plus1(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"iter": int})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"iter": int})

    def execute(self, op_in: OPIO) -> OPIO:
        return OPIO({"iter": op_in["iter"] + 1})


def recursion(limit: int = 5) -> Steps:
    """dflow's tests/test_recurse.py: a Steps template adding a step that uses itself."""
    steps = Steps(
        name="iter",
        inputs=Inputs(
            parameters={"iter": InputParameter(value=0), "limit": InputParameter(value=limit)}
        ),
    )
    plus1 = Step(
        name="plus1",
        template=PythonOPTemplate(Plus1),
        parameters={"iter": steps.inputs.parameters["iter"]},
        key="iter-%s" % steps.inputs.parameters["iter"],  # noqa: UP031 (dflow's spelling)
    )
    steps.add(plus1)
    steps.add(
        Step(
            name="next",
            template=steps,
            parameters={"iter": plus1.outputs.parameters["iter"]},
            when="%s < %s"  # noqa: UP031 (dflow's spelling)
            % (plus1.outputs.parameters["iter"], steps.inputs.parameters["limit"]),
        )
    )
    return steps


# --- recursion ------------------------------------------------------------------------------


async def test_recursion_as_dflow_tests_it() -> None:
    wf = Workflow("recurse", steps=recursion())
    assert await run_wf(wf) == "Succeeded"
    step = wf.query_step(key="iter-4")[0]
    assert step.phase == "Succeeded"
    assert step.outputs.parameters["iter"].value == 5
    records = wf.query_step()
    assert [(r.key, r.phase) for r in records] == [
        *[(k, p) for i in range(5) for k, p in ((f"iter-{i}", "Succeeded"), ("next", "Succeeded"))][
            :-1
        ],
        ("next", "Skipped"),
    ]
    assert [r.inputs.parameters["iter"] for r in wf.query_step(name="plus1")] == [0, 1, 2, 3, 4]


async def test_a_deep_recursion_does_not_stack_up_its_levels() -> None:
    # each level runs in a task of its own: awaited inline, 80 levels reached Python's
    # recursion limit
    wf = Workflow("recurse", steps=recursion(limit=300))
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step(key="iter-299")[0].outputs.parameters["iter"].value == 300


async def test_workflow_parameters_override_the_entry_templates_defaults() -> None:
    wf = Workflow("recurse", steps=recursion(), parameters={"limit": 2, "iter": 10})
    assert await run_wf(wf) == "Succeeded"
    assert [r.key for r in wf.query_step(name="plus1")] == ["iter-10"]  # 11 < 2 is false
    with pytest.raises(SignatureError, match="'limt'"):
        Workflow("recurse", steps=recursion(), parameters={"limt": 2})


async def test_recursion_under_a_concurrency_limit_of_one_does_not_deadlock() -> None:
    # a template step holds no slot while its steps run (they take them)
    wf = Workflow("recurse", steps=recursion(limit=4))
    async with aflow.Runtime(max_concurrency=1):
        await wf.submit()
        with anyio.fail_after(10):
            assert await wf.wait() == "Succeeded"
    assert wf.query_step(key="iter-3")[0].outputs.parameters["iter"].value == 4


# --- conditional outputs --------------------------------------------------------------------


def coin(is_head: bool) -> type[OP]:
    class Random(OP):
        @classmethod
        def get_input_sign(cls) -> OPIOSign:
            return OPIOSign()

        @classmethod
        def get_output_sign(cls) -> OPIOSign:
            return OPIOSign(
                {
                    "is_head": bool,
                    "msg1": str,
                    "msg2": str,
                    "foo": Artifact(str),
                    "bar": Artifact(str),
                }
            )

        def execute(self, op_in: OPIO) -> OPIO:
            (op_in.workdir / "foo.txt").write_text("head")
            (op_in.workdir / "bar.txt").write_text("tail")
            return OPIO(
                {
                    "is_head": is_head,
                    "msg1": "head",
                    "msg2": "tail",
                    "foo": "foo.txt",
                    "bar": "bar.txt",
                }
            )

    return Random


@pytest.mark.parametrize("is_head", [False, True])
async def test_conditional_outputs_as_dflow_tests_them(is_head: bool, tmp_path: Path) -> None:
    steps = Steps(
        "steps",
        outputs=Outputs(parameters={"msg": OutputParameter()}, artifacts={"res": OutputArtifact()}),
    )
    random_step = Step(name="random", template=PythonOPTemplate(coin(is_head)))
    steps.add(random_step)
    steps.outputs.parameters["msg"].value_from_expression = if_expression(
        _if=random_step.outputs.parameters["is_head"],
        _then=random_step.outputs.parameters["msg1"],
        _else=random_step.outputs.parameters["msg2"],
    )
    steps.outputs.artifacts["res"].from_expression = if_expression(
        _if=random_step.outputs.parameters["is_head"],
        _then=random_step.outputs.artifacts["foo"],
        _else=random_step.outputs.artifacts["bar"],
    )
    wf = Workflow(name="conditional")
    wf.add(Step("conditional", template=steps))
    assert await run_wf(wf) == "Succeeded"
    step = wf.query_step(name="conditional")[0]
    assert step.phase == "Succeeded"
    word = "head" if is_head else "tail"
    assert step.outputs.parameters["msg"].value == word
    [path] = download_artifact(step.outputs.artifacts["res"], path=tmp_path)
    assert path.read_text() == word
    assert [r.name for r in wf.query_step()] == ["conditional", "random"]


@op(outputs={"n": int, "label": str})
async def measure(x: int):
    return {"n": x * 2, "label": f"x={x}"}


@pytest.mark.parametrize(("x", "expected"), [(1, "small"), (3, "x=3")])
async def test_if_expression_takes_an_expression_inputs_and_literals(x: int, expected: str) -> None:
    steps = Steps("pick", inputs=Inputs(parameters={"x": InputParameter(type=int)}))
    m = Step("m", measure, parameters={"x": steps.inputs.parameters["x"]})
    steps.add(m)
    steps.outputs.parameters["out"] = OutputParameter(
        value_from_expression=if_expression(
            _if=f"{m.outputs.parameters['n']} > {steps.inputs.parameters['x']} + 2",
            _then=m.outputs.parameters["label"],
            _else="small",
        )
    )
    steps.outputs.parameters["x_again"] = OutputParameter(
        value_from_parameter=steps.inputs.parameters["x"]
    )
    wf = Workflow("w").add(Step("p", steps, parameters={"x": x}))
    assert await run_wf(wf) == "Succeeded"
    outputs = wf.query_step(name="p")[0].outputs.parameters
    assert outputs["out"].value == expected
    assert outputs["x_again"].value == x


def test_if_expression_refuses_mixed_branches_and_bad_conditions() -> None:
    s = Step("m", measure, parameters={"x": 1})
    w = Step("w", write, parameters={"text": "t"})
    with pytest.raises(SignatureError, match="both parameters or both artifacts"):
        if_expression(
            _if=s.outputs.parameters["n"],
            _then=s.outputs.parameters["label"],
            _else=w.outputs.artifacts["file"],
        )
    with pytest.raises(SignatureError, match="not an artifact"):
        if_expression(_if=w.outputs.artifacts["file"], _then=1, _else=2)
    with pytest.raises(SignatureError, match="not allowed"):
        if_expression(_if="__import__('os')", _then=1, _else=2)


# --- nesting, inputs and outputs -------------------------------------------------------------


def copy_dag() -> DAG:
    """A DAG template: it reads its input artifact and writes a copy with a suffix."""
    dag = DAG(
        "copy",
        inputs=Inputs(
            parameters={"suffix": InputParameter(type=str, value="!")},
            artifacts={"src": InputArtifact()},
        ),
    )
    r = Step("r", read, artifacts={"file": dag.inputs.artifacts["src"]})
    t = Step(
        "t",
        join_text,
        parameters={"a": r.outputs.parameters["text"], "b": dag.inputs.parameters["suffix"]},
    )
    w = Step("w", write, parameters={"text": t.outputs.parameters["text"]})
    dag.add([r, t, w])
    dag.outputs.artifacts["copy"] = OutputArtifact(_from=w.outputs.artifacts["file"])
    dag.outputs.parameters["text"] = OutputParameter(
        value_from_parameter=t.outputs.parameters["text"]
    )
    return dag


@op(outputs={"text": str})
async def join_text(a: str, b: str):
    return {"text": a + b}


async def test_a_dag_template_takes_and_gives_artifacts_and_nests(tmp_path: Path) -> None:
    inner = copy_dag()
    outer = Steps(
        "twice",
        inputs=Inputs(artifacts={"src": InputArtifact()}),
        outputs=Outputs(artifacts={"out": OutputArtifact()}),
    )
    first = Step("first", inner, artifacts={"src": outer.inputs.artifacts["src"]})
    second = Step(
        "second",
        inner,
        parameters={"suffix": "?"},
        artifacts={"src": first.outputs.artifacts["copy"]},
    )
    outer.add(first).add(second)
    outer.outputs.artifacts["out"]._from = second.outputs.artifacts["copy"]

    source = tmp_path / "in.txt"
    source.write_text("hi")
    start = Step("start", write, parameters={"text": "hello"})
    wf = Workflow("nest")
    wf.add(start)
    wf.add(
        [
            Step("from-step", outer, artifacts={"src": start.outputs.artifacts["file"]}),
            Step("from-file", outer, artifacts={"src": source}),
        ]
    )
    assert await run_wf(wf) == "Succeeded"
    for name, text in (("from-step", "hello!?"), ("from-file", "hi!?")):
        [path] = download_artifact(
            wf.query_step(name=name)[0].outputs.artifacts["out"], path=tmp_path / name
        )
        assert path.read_text() == text
    # every level's steps are in the query, after the step that ran them
    names = [r.name for r in wf.query_step()]
    assert names[:1] == ["start"]
    assert names.count("first") == 2
    assert names.count("w") == 4
    assert [r.outputs.parameters["text"].value for r in wf.query_step(name="second")] == [
        "hello!?",
        "hi!?",
    ]


async def test_a_template_input_is_type_checked_when_it_runs() -> None:
    steps = Steps("typed", inputs=Inputs(parameters={"x": InputParameter(type=int)}))
    steps.add(Step("a", add, parameters={"x": steps.inputs.parameters["x"]}))
    text = Step("text", to_str, parameters={"x": 5})
    wf = Workflow("w")
    wf.add(text)
    wf.add(Step("t", steps, parameters={"x": text.outputs.parameters["s"]}))
    async with aflow.Runtime():
        await wf.submit()
        assert await wf.wait() == "Failed"
        with pytest.raises(OpIOError, match="'x'") as caught:
            await wf.run.result()
    assert caught.value.key == "x"
    assert caught.value.direction == "input"
    assert wf.query_step(name="t")[0].phase == "Failed"


@op(outputs={"s": str})
async def to_str(x: int):
    return {"s": str(x)}


def test_a_template_steps_inputs_are_checked_when_the_step_is_made() -> None:
    steps = Steps("needs", inputs=Inputs(parameters={"x": InputParameter(type=int)}))
    steps.add(Step("a", add, parameters={"x": steps.inputs.parameters["x"]}))
    with pytest.raises(MissingInputError, match="x"):
        Step("t", steps)
    with pytest.raises(SignatureError, match="'y'"):
        Step("t", steps, parameters={"x": 1, "y": 2})
    with pytest.raises(SignatureError, match="is given in parameters="):
        Step("t", steps, artifacts={"x": Path("f")})
    with pytest.raises(SignatureError, match="cannot be sliced"):
        Step("t", steps, parameters={"x": [1]}, slices=Slices(input_parameter=["x"]))


async def test_a_step_reading_another_templates_input_is_refused_naming_it() -> None:
    one = Steps("one", inputs=Inputs(parameters={"x": InputParameter(value=1)}))
    two = Steps("two", inputs=Inputs(parameters={"x": InputParameter(value=2)}))
    two.add(Step("a", add, parameters={"x": one.inputs.parameters["x"]}))
    wf = Workflow("w").add(Step("t", two))
    async with aflow.Runtime():
        await wf.submit()
        assert await wf.wait() == "Failed"
        with pytest.raises(SignatureError, match="an input of one") as caught:
            await wf.run.result()
    assert caught.value.args  # names the step
    assert "'a'" in str(caught.value) or "a:" in str(caught.value)


async def test_an_output_with_no_value_fails_naming_the_template_and_output() -> None:
    steps = Steps("quiet", outputs=Outputs(parameters={"answer": OutputParameter()}))
    steps.add(Step("a", add, parameters={"x": 1}))
    wf = Workflow("w").add(Step("t", steps))
    async with aflow.Runtime():
        await wf.submit()
        assert await wf.wait() == "Failed"
        with pytest.raises(OpIOError, match="'answer'") as caught:
            await wf.run.result()
    assert "quiet" in caught.value.op
    assert caught.value.direction == "output"
    # a default fills it in
    steps.outputs.parameters["answer"].default = 42
    wf = Workflow("w").add(Step("t", steps))
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step(name="t")[0].outputs.parameters["answer"].value == 42


async def test_an_inner_failure_fails_the_template_step_and_what_reads_it() -> None:
    steps = Steps("failing", outputs=Outputs(parameters={"y": OutputParameter()}))
    b = Step("b", boom, parameters={"x": 3})
    steps.add(b)
    steps.outputs.parameters["y"].value_from_parameter = b.outputs.parameters["y"]
    t = Step("t", steps)
    after = Step("after", add, parameters={"x": t.outputs.parameters["y"]})
    wf = Workflow("w").add(t).add(after)
    async with aflow.Runtime():
        await wf.submit()
        assert await wf.wait() == "Failed"
        with pytest.raises(ValueError, match="boom 3"):
            await wf.run.result()
    phases = {r.name: r.phase for r in wf.query_step()}
    assert phases == {"t": "Failed", "b": "Failed", "after": "Pending"}


async def test_continue_on_failed_inside_a_template_and_a_default_output() -> None:
    steps = Steps("tolerant", outputs=Outputs(parameters={"y": OutputParameter(default=-1)}))
    b = Step("b", boom, parameters={"x": 3}, continue_on_failed=True)
    steps.add(b)
    steps.outputs.parameters["y"].value_from_parameter = b.outputs.parameters["y"]
    wf = Workflow("w").add(Step("t", steps))
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step(name="t")[0].outputs.parameters["y"].value == -1


async def test_a_false_when_skips_the_template_step_and_runs_none_of_its_steps() -> None:
    steps = Steps("never")
    steps.add(Step("a", add, parameters={"x": 1}))
    first = Step("first", add, parameters={"x": 1})
    wf = Workflow("w").add(first)
    wf.add(Step("t", steps, when=f"{first.outputs.parameters['sum']} > 5"))
    assert await run_wf(wf) == "Succeeded"
    assert [(r.name, r.phase) for r in wf.query_step()] == [
        ("first", "Succeeded"),
        ("t", "Skipped"),
    ]


async def test_cancelling_a_run_cancels_the_steps_inside_a_template() -> None:
    started = anyio.Event()
    release = anyio.Event()

    @op(outputs={"y": int})
    async def hang(x: int):
        started.set()
        await release.wait()
        return {"y": x}

    steps = Steps("inner")
    steps.add(Step("h", hang, parameters={"x": 1}))
    wf = Workflow("w").add(Step("t", steps))
    async with aflow.Runtime():
        run = await wf.submit()
        with anyio.fail_after(10):
            await started.wait()
            assert wf.query_step(name="h")[0].phase == "Running"
            await run.cancel()
            assert await wf.wait() == "Failed"
    phases = {r.name: r.phase for r in wf.query_step()}
    assert phases == {"t": "Cancelled", "h": "Cancelled"}
    assert not release.is_set()


def test_templates_refuse_bad_declarations() -> None:
    with pytest.raises(TypeError, match="InputParameter"):
        Steps("s", inputs=Inputs(parameters={"x": OutputParameter()}))  # type: ignore[dict-item]
    shared = InputParameter(value=1)
    Steps("a", inputs=Inputs(parameters={"x": shared}))
    with pytest.raises(ValueError, match="declared already"):
        Steps("b", inputs=Inputs(parameters={"x": shared}))
    with pytest.raises(SignatureError, match="parallelism"):
        Steps("s", parallelism=0)
    with pytest.raises(TypeError, match="not both"):
        Workflow("w", steps=Steps("s"), dag=DAG("d"))
    with pytest.raises(SignatureError, match="at least one step"):
        Workflow("w", steps=Steps("s")).__aflow_graph__()


async def test_run_value_and_await_of_a_workflow_with_templates() -> None:
    steps = Steps("inner", outputs=Outputs(parameters={"sum": OutputParameter()}))
    a = Step("a", add, parameters={"x": 41})
    steps.add(a)
    steps.outputs.parameters["sum"].value_from_parameter = a.outputs.parameters["sum"]
    wf = Workflow("w").add(Step("t", steps))
    value: Any = await aflow.run(wf)
    assert value == {"t": {"sum": 42}}


# --- durable --------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_recursion_killed_deep_inside_resumes_without_rerunning_finished_levels(
    store_url: str, counts: Path
) -> None:
    from tests.durable_workflows import read_counts
    from tests.test_durable import LEASE, crash_in, later

    # start=1: levels iter=0..3; the process is killed inside the third level's step
    run_id = await anyio.to_thread.run_sync(crash_in, store_url, "ops_recursion", "count-2", counts)
    assert read_counts(counts) == {"count-0": 1, "count-1": 1, "count-2": 1}
    async with aflow.Runtime(store=store_url, recover=True, lease=LEASE, clock=later()) as rt:
        assert await rt.get(run_id).result() == {"next": {"last": 4}}
        wf = await Workflow.load(run_id, runtime=rt)
        records = wf.query_step(name="plus1")
        assert [(r.key, r.phase) for r in records] == [(f"iter-{i}", "Succeeded") for i in range(4)]
        assert [r.outputs.parameters["iter"].value for r in records] == [1, 2, 3, 4]
    # levels on record did not run again; the one cut short ran again (at least once)
    assert read_counts(counts) == {"count-0": 1, "count-1": 1, "count-2": 2, "count-3": 1}


async def test_a_durable_template_run_is_queried_from_the_store_in_another_runtime(
    tmp_path: Path, counts: Path
) -> None:
    from tests import durable_workflows as dw

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        run = await dw.ops_recursion(start=3).submit(runtime=rt)
        assert await run.result() == {"next": {"last": 6}}
    async with aflow.Runtime(store=url) as rt:
        wf = await Workflow.load(run.id, runtime=rt)
        assert wf.query_status() == "Succeeded"
        assert [(r.key, r.phase) for r in wf.query_step()] == [
            ("iter-2", "Succeeded"),
            ("next", "Succeeded"),
            ("iter-3", "Succeeded"),
            ("next", "Succeeded"),
            ("iter-4", "Succeeded"),
            ("next", "Succeeded"),
            ("iter-5", "Succeeded"),
            ("next", "Skipped"),
        ]
        assert wf.query_step(key="iter-5")[0].outputs.parameters["iter"].value == 6
        report = await rt.report(run.id)
        assert not [s for s in report.steps or () if s.key.startswith("_in:")]


async def test_a_retry_on_rule_holds_for_timeouts_in_template_levels_side_by_side() -> None:
    from aflow.testing import FakeClock

    calls = {"a": 0, "b": 0}

    @op(outputs={"y": int})
    async def slow(x: int, tag: str):
        calls[tag] += 1
        await anyio.sleep(10)  # past the step's timeout: a TaskTimeout, not a ConnectionError
        return {"y": x}

    steps = Steps("inner", inputs=Inputs(parameters={"tag": InputParameter(type=str)}))
    steps.add(
        Step(
            "s",
            slow,
            parameters={"x": 1, "tag": steps.inputs.parameters["tag"]},
            key=f"s-{steps.inputs.parameters['tag']}",
            timeout=1,
            retries=2,
            retry_on=ConnectionError,
        )
    )
    wf = Workflow("w").add(
        [
            Step("a", steps, parameters={"tag": "a"}, continue_on_failed=True),
            Step("b", steps, parameters={"tag": "b"}, continue_on_failed=True),
        ]
    )
    clock = FakeClock()
    async with clock, aflow.Runtime(clock=clock):
        await wf.submit()
        await wf.wait()
    assert calls == {"a": 1, "b": 1}  # neither level's timeout was retried


@pytest.mark.slow
async def test_a_tampered_inner_checkpoint_is_refused_naming_its_record(
    tmp_path: Path, counts: Path
) -> None:
    import sqlite3

    from tests.test_durable import LEASE, crash_in, later

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = await anyio.to_thread.run_sync(crash_in, url, "ops_recursion", "count-2", counts)
    db = sqlite3.connect(tmp_path / "runs.db")  # a row is data: someone wrote this
    try:
        with db:
            changed = db.execute(
                "UPDATE aflow_nodes SET result = '[]' WHERE run_id = ? AND key = ?",
                (run_id, "_in:next/iter-1"),
            ).rowcount
    finally:
        db.close()
    assert changed == 1
    async with aflow.Runtime(store=url, recover=True, lease=LEASE, clock=later()) as rt:
        with pytest.raises(aflow.errors.UntrustedManifest, match="_in:next/iter-1"):
            await rt.get(run_id).result()
