"""aflow.ops ``BigParameter``: dflow's tests/test_big_parameter.py ported, and big values
kept out of a durable run's records (written once, passed by reference)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import aflow
from aflow.ops import (
    OP,
    OPIO,
    BigParameter,
    InputParameter,
    OPIOSign,
    OutputParameter,
    PythonOPTemplate,
    Step,
    Steps,
    Workflow,
)

from .ops_helpers import run_wf


class Hello:
    def __init__(self, msg: str) -> None:
        self.msg = msg


class Duplicate(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"foo": BigParameter(Hello)})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"foo": BigParameter(Hello)})

    def execute(self, op_in: OPIO) -> OPIO:
        foo = op_in["foo"]
        foo.msg = foo.msg * 2
        return OPIO({"foo": foo})


async def test_big_parameter_as_dflow_tests_it() -> None:
    steps = Steps(name="hello-steps")
    steps.inputs.parameters["foo"] = InputParameter()
    steps.outputs.parameters["foo"] = OutputParameter()
    step1 = Step(
        name="step1",
        template=PythonOPTemplate(Duplicate),
        parameters={"foo": steps.inputs.parameters["foo"]},
        key="step1",
    )
    steps.add(step1)
    step2 = Step(
        name="step2",
        template=PythonOPTemplate(Duplicate),
        parameters={"foo": step1.outputs.parameters["foo"]},
        key="step2",
    )
    steps.add(step2)
    steps.outputs.parameters["foo"].value_from_parameter = step2.outputs.parameters["foo"]
    given = Hello("hello")
    wf = Workflow(name="big-param").add(
        Step(name="big-step", template=steps, parameters={"foo": given})
    )
    assert await run_wf(wf) == "Succeeded"
    step = wf.query_step(key="step1")[0]
    assert step.phase == "Succeeded"
    assert isinstance(step.outputs.parameters["foo"].value, Hello)
    # each step had its own copy: step1's output and the caller's object are as they were
    assert step.outputs.parameters["foo"].value.msg == "hellohello"
    assert wf.query_step(key="step2")[0].outputs.parameters["foo"].value.msg == "hello" * 4
    assert given.msg == "hello"


async def test_a_durable_run_keeps_big_values_out_of_its_records(
    tmp_path: Path, counts: Path
) -> None:
    from tests import durable_workflows as dw

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        wf = dw.ops_big(start=3)
        run = await wf.submit(runtime=rt)
        assert await run.result() == {"sum-0": {"total": 4498500}, "sum-1": {"total": 4498500}}
        assert wf.query_step(name="make")[0].outputs.parameters["values"].value[-1] == 2999
        assert rt.store is not None
        record = (await rt.store.load_nodes(run.id))["make"]
        assert record.result is not None
        assert len(record.result) < 200  # a reference, not 3,000 numbers
        assert "__aflow_big__" in json.dumps(json.loads(record.result))
    async with aflow.Runtime(store=url) as rt:  # read back elsewhere: the value again
        again = await Workflow.load(run.id, runtime=rt)
        made = again.query_step(name="make")[0]
        assert made.outputs.parameters["values"].value == list(range(3000))
        assert again.query_step(name="sum-1")[0].inputs.parameters["values"][:3] == [0, 1, 2]


async def test_in_a_run_without_a_store_a_big_parameter_is_a_parameter(counts: Path) -> None:
    from tests import durable_workflows as dw

    wf = dw.ops_big(start=1)
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step(name="make")[0].outputs.parameters["values"].value == list(range(1000))
    assert [
        r.outputs.parameters["total"].value for r in wf.query_step(name=["sum-0", "sum-1"])
    ] == [
        499500,
        499500,
    ]


@aflow.workflow
def hellos(n: int) -> Workflow:
    """Big parameters holding a class of this module (JSON cannot hold it, pickle can)."""
    step1 = Step("step1", Duplicate, parameters={"foo": Hello("hi" * n)})
    step2 = Step("step2", Duplicate, parameters={"foo": step1.outputs.parameters["foo"]})
    return Workflow("hellos").add(step1).add(step2)


async def test_a_big_value_the_stores_serializer_refuses_fails_naming_the_step(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        run = await hellos(n=1).submit(runtime=rt)
        with pytest.raises(aflow.errors.SerializationError, match="step1"):
            await run.result()
    # with the pickle serializer (a store nobody untrusted writes to) it goes through
    url = f"sqlite:///{tmp_path / 'pickled.db'}"
    async with aflow.Runtime(store=url, serializer="pickle") as rt:
        wf = hellos(n=1)
        run = await wf.submit(runtime=rt)
        await run.result()
        assert wf.query_step(name="step2")[0].outputs.parameters["foo"].value.msg == "hi" * 4


async def test_every_reader_of_a_big_value_in_a_durable_run_reads_the_value(
    tmp_path: Path, counts: Path
) -> None:
    from tests import durable_workflows as dw

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        wf = dw.ops_big_readers(start=1)
        run = await wf.submit(runtime=rt)
        # a step read it through a template's output, and the run's value holds values
        assert await run.result() == {"after": {"total": 1}}
        outputs = {r.name: r.outputs.parameters for r in wf.query_step()}
    # a condition compared the list (not its reference); a loop went over it
    assert outputs["gate"]["total"].value == 3
    assert outputs["loop"]["y"].value == [1, 2, 3]
    assert outputs["sub"]["values"].value == [0, 1]  # (a reference, shown as its value)
