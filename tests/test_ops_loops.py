"""aflow.ops loops without slices (``with_param``, ``with_sequence``, ``argo_range``,
``argo_len``, ``{{item}}``) and parallelism bounds (``Workflow``, ``Steps``/``DAG`` and
``Step`` ``parallelism=``), as dflow writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

import aflow
from aflow.errors import SignatureError
from aflow.ops import (
    InputParameter,
    Inputs,
    OutputParameter,
    Outputs,
    Step,
    Steps,
    Workflow,
    argo_len,
    argo_range,
    argo_sequence,
    op,
)

from .ops_helpers import PeakProbe, run_wf


@op(outputs={"y": int, "tag": str})
async def sq(x: int, tag: str = ""):
    return {"y": x * x, "tag": tag}


@op(outputs={"xs": list[int]})
async def make(n: int):
    return {"xs": list(range(n))}


@op(outputs={"total": int})
async def total(values: list[int]):
    return {"total": sum(values)}


async def test_with_param_over_an_upstream_list_with_item_in_parameters_and_key() -> None:
    m = Step("make", make, parameters={"n": 4})
    a = Step(
        "a",
        sq,
        parameters={"x": "{{item}}", "tag": "t-{{item}}"},
        with_param=m.outputs.parameters["xs"],
        key="a-{{item}}",
    )
    t = Step("t", total, parameters={"values": a.outputs.parameters["y"]})
    wf = Workflow("loops").add(m).add(a).add(t)
    assert await run_wf(wf) == "Succeeded"
    record = wf.query_step(name="a")[0]
    assert record.outputs.parameters["y"].value == [0, 1, 4, 9]
    assert record.outputs.parameters["tag"].value == ["t-0", "t-1", "t-2", "t-3"]
    assert [s.key for s in record.slices] == ["a-0", "a-1", "a-2", "a-3"]
    assert wf.query_step(key="a-3")[0].outputs.parameters["y"].value == 9
    assert wf.query_step(key="a-2")[0].inputs.parameters == {"x": 2, "tag": "t-2"}
    assert wf.query_step(name="t")[0].outputs.parameters["total"].value == 14


@pytest.mark.parametrize(
    ("loop", "expected"),
    [
        ({"with_param": [3, 1]}, [9, 1]),
        ({"with_param": (2,)}, [4]),
        ({"with_param": []}, []),
        ({"with_param": argo_range(3)}, [0, 1, 4]),
        ({"with_param": argo_range(1, 7, 2)}, [1, 9, 25]),
        ({"with_sequence": argo_sequence(count=3, start=2)}, [4, 9, 16]),
        ({"with_sequence": argo_sequence(start=3, end=1)}, [9, 4, 1]),
    ],
)
async def test_loops_over_literals_ranges_and_sequences(
    loop: dict[str, object], expected: list[int]
) -> None:
    wf = Workflow("w").add(Step("s", sq, parameters={"x": "{{item}}"}, **loop))  # type: ignore[arg-type]
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step(name="s")[0].outputs.parameters["y"].value == expected


async def test_argo_len_and_a_formatted_sequence_and_dict_items() -> None:
    m = Step("make", make, parameters={"n": 3})
    by_len = Step(
        "by-len",
        sq,
        parameters={"x": "{{item}}"},
        with_param=argo_range(argo_len(m.outputs.parameters["xs"])),
    )
    fmt = Step(
        "fmt",
        sq,
        parameters={"x": 1, "tag": "{{item}}"},
        with_sequence=argo_sequence(count=2, start=9, format="run-%03d"),
    )
    fields = Step(
        "fields",
        sq,
        parameters={"x": "{{item.v}}", "tag": "{{item.name}}"},
        with_param=[{"v": 5, "name": "five"}, {"v": 6, "name": "six"}],
    )
    wf = Workflow("w").add(m).add([by_len, fmt, fields])
    assert await run_wf(wf) == "Succeeded"
    out = {r.name: r.outputs.parameters for r in wf.query_step()}
    assert out["by-len"]["y"].value == [0, 1, 4]
    assert out["fmt"]["tag"].value == ["run-009", "run-010"]
    assert out["fields"]["y"].value == [25, 36]
    assert out["fields"]["tag"].value == ["five", "six"]


async def test_a_loop_in_a_template_reads_the_templates_input() -> None:
    steps = Steps(
        "inner",
        inputs=Inputs(parameters={"n": InputParameter(type=int)}),
        outputs=Outputs(parameters={"ys": OutputParameter()}),
    )
    s = Step(
        "s", sq, parameters={"x": "{{item}}"}, with_param=argo_range(steps.inputs.parameters["n"])
    )
    steps.add(s)
    steps.outputs.parameters["ys"].value_from_parameter = s.outputs.parameters["y"]
    wf = Workflow("w").add(
        [Step("two", steps, parameters={"n": 2}), Step("three", steps, parameters={"n": 3})]
    )
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step(name="two")[0].outputs.parameters["ys"].value == [0, 1]
    assert wf.query_step(name="three")[0].outputs.parameters["ys"].value == [0, 1, 4]


async def test_an_item_of_the_wrong_type_fails_the_item_naming_the_input() -> None:
    wf = Workflow("w").add(Step("s", sq, parameters={"x": "{{item}}"}, with_param=["a"]))
    async with aflow.Runtime():
        await wf.submit()
        assert await wf.wait() == "Failed"
        with pytest.raises(aflow.errors.OpIOError, match="'x'"):
            await wf.run.result()
    [item] = wf.query_step(name="s")[0].slices
    assert item.phase == "Failed"


async def test_a_loop_over_something_not_a_list_fails_naming_the_step() -> None:
    m = Step("make", sq, parameters={"x": 2})
    wf = (
        Workflow("w")
        .add(m)
        .add(Step("s", sq, parameters={"x": "{{item}}"}, with_param=m.outputs.parameters["y"]))
    )
    async with aflow.Runtime():
        await wf.submit()
        assert await wf.wait() == "Failed"
        with pytest.raises(SignatureError, match="not a list") as caught:
            await wf.run.result()
    assert "'s'" in str(caught.value) or caught.value.args[0] == "s"


async def test_tolerated_failed_items_give_none_in_their_place() -> None:
    @op(outputs={"y": int})
    async def picky(x: int):
        if x == 2:
            raise ValueError("two")
        return {"y": x}

    s = Step(
        "s", picky, parameters={"x": "{{item}}"}, with_param=[1, 2, 3], continue_on_num_success=2
    )
    wf = Workflow("w").add(s)
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step(name="s")[0].outputs.parameters["y"].value == [1, None, 3]


def test_loops_are_checked_when_the_step_is_made() -> None:
    with pytest.raises(SignatureError, match="not both"):
        Step(
            "s",
            sq,
            parameters={"x": "{{item}}"},
            with_param=[1],
            with_sequence=argo_sequence(count=1),
        )
    with pytest.raises(SignatureError, match="the text"):
        Step("s", sq, parameters={"x": "{{item}}"}, with_param="[1, 2]")
    with pytest.raises(SignatureError, match="argo_sequence"):
        Step("s", sq, parameters={"x": "{{item}}"}, with_sequence=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="no with_param"):
        Step("s", sq, parameters={"x": "{{item}}"})
    with pytest.raises(SignatureError, match="'x'"):
        Step("s", sq, parameters={"x": "nope"}, with_param=[1])
    with pytest.raises(TypeError, match="1 to 3"):
        argo_range()
    with pytest.raises(TypeError, match="not both"):
        argo_sequence(count=2, end=3)
    with pytest.raises(SignatureError, match="parallelism"):
        Step("s", sq, parameters={"x": 1}, parallelism=0)
    with pytest.raises(SignatureError, match="parallelism"):
        Workflow("w", parallelism=0)


# --- parallelism ------------------------------------------------------------------------------


async def test_step_parallelism_bounds_its_own_items() -> None:
    probe = PeakProbe(fill=2)
    wf = Workflow("w").add(
        Step("s", probe.op, parameters={"x": "{{item}}"}, with_param=list(range(6)), parallelism=2)
    )
    assert await run_wf(wf) == "Succeeded"
    assert probe.peak == 2


async def test_workflow_parallelism_bounds_every_op_call_of_a_run() -> None:
    probe = PeakProbe(fill=3)
    wf = Workflow("w", parallelism=3).add(
        [
            Step("a", probe.op, parameters={"x": "{{item}}"}, with_param=list(range(4))),
            Step("b", probe.op, parameters={"x": 1}),
            Step("c", probe.op, parameters={"x": "{{item}}"}, with_param=list(range(3))),
        ]
    )
    assert await run_wf(wf) == "Succeeded"
    assert probe.peak == 3


async def test_a_templates_parallelism_bounds_each_run_of_it() -> None:
    probe = PeakProbe(fill=4)  # two runs of the template at once, each bound to 2
    steps = Steps("inner", parallelism=2)
    steps.add(Step("s", probe.op, parameters={"x": "{{item}}"}, with_param=list(range(5))))
    wf = Workflow("w").add([Step("one", steps), Step("two", steps)])
    assert await run_wf(wf) == "Succeeded"
    assert probe.peak == 4


async def test_parallelism_with_recursion_does_not_deadlock(tmp_path: Path) -> None:
    from .test_ops_templates import recursion

    wf = Workflow("recurse", steps=recursion(limit=6), parallelism=1)
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step(key="iter-5")[0].outputs.parameters["iter"].value == 6


# --- reusing slices and steps inside templates --------------------------------------------------


async def test_reusing_slices_runs_only_the_others() -> None:
    from aflow.ops import Slices

    calls: list[int] = []

    @op(outputs={"y": int})
    async def tracked(x: int):
        calls.append(x)
        return {"y": x * 10}

    def build() -> Workflow:
        return Workflow("w").add(
            Step(
                "s",
                tracked,
                parameters={"x": [1, 2, 3]},
                slices=Slices(input_parameter=["x"], output_parameter=["y"]),
            )
        )

    first = build()
    assert await run_wf(first) == "Succeeded"
    assert sorted(calls) == [1, 2, 3]
    [record] = first.query_step(name="s")
    kept = record.slices[0]
    kept.modify_output_parameter("y", 99)
    calls.clear()
    second = build()
    assert await run_wf(second, reuse_step=[kept, first.query_step(key="s-2")[0]]) == "Succeeded"
    assert calls == [2]  # slices 0 and 2 were reused
    [again] = second.query_step(name="s")
    assert again.outputs.parameters["y"].value == [99, 20, 30]
    assert [s.reused for s in again.slices] == [True, False, True]


async def test_reusing_steps_inside_a_recursion_as_dflow_tests_it() -> None:
    from .test_ops_templates import recursion

    first = Workflow("recurse", steps=recursion())
    assert await run_wf(first) == "Succeeded"
    step0 = first.query_step(key="iter-0")[0]
    step1 = first.query_step(key="iter-1")[0]
    step1.modify_output_parameter("iter", 3)
    second = Workflow("recurse-resubmit", steps=recursion())
    assert await run_wf(second, reuse_step=[step0, step1]) == "Succeeded"
    # iter-1 gave 3, so the next level is iter-3: iter-2 never ran
    assert [r.key for r in second.query_step(name="plus1")] == [
        "iter-0",
        "iter-1",
        "iter-3",
        "iter-4",
    ]
    assert [r.reused for r in second.query_step(name="plus1")] == [True, True, False, False]


async def test_reusing_an_unknown_key_is_refused_when_no_template_could_hold_it() -> None:
    wf = Workflow("w").add(Step("s", sq, parameters={"x": 1}))
    assert await run_wf(wf) == "Succeeded"
    [record] = wf.query_step()
    record.key = "other"
    with pytest.raises(KeyError, match="other"):
        await run_wf(Workflow("w").add(Step("s", sq, parameters={"x": 1})), reuse_step=[record])
