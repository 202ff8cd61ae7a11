"""aflow.ops typed boundaries: operator signatures, inputs checked when a step is built,
values checked at run time, outputs checked when an op returns."""

from __future__ import annotations

from pathlib import Path

import pytest

import aflow
from aflow.ops import (
    OP,
    OPIO,
    Artifact,
    OPIOSign,
    Parameter,
    PythonOPTemplate,
    Slices,
    Step,
    Workflow,
    op,
)

from .ops_helpers import (
    WriteFile,
    add,
    missing_key,
    read,
    run_wf,
    to_text,
    total,
    write,
    wrong_type,
)

# --- checked when the step is built ---------------------------------------------------------------


def test_a_literal_of_the_wrong_type_is_refused_when_the_step_is_built() -> None:
    with pytest.raises(
        aflow.errors.SignatureError, match=r"input 'number': expected int, got str"
    ) as info:
        Step("step0", WriteFile, parameters={"msg": "hi", "number": "5"})
    assert info.value.task == "step0"
    assert info.value.argument == "number"


def test_a_missing_input_is_a_build_time_error_naming_step_and_key() -> None:
    with pytest.raises(aflow.errors.MissingInputError) as info:
        Step("step0", WriteFile, parameters={"msg": "hi"})
    assert info.value.task == "step0"
    assert info.value.missing == ("number",)


def test_unknown_inputs_and_misplaced_artifacts_are_refused() -> None:
    with pytest.raises(aflow.errors.SignatureError, match="has no input 'nope'"):
        Step("s", WriteFile, parameters={"msg": "a", "number": 1, "nope": 2})
    producer = Step("w", write, parameters={"text": "x"})
    with pytest.raises(aflow.errors.SignatureError, match="is a parameter, but is wired to"):
        Step("s", add, parameters={"x": producer.outputs.artifacts["file"]})
    with pytest.raises(aflow.errors.SignatureError, match="no output parameter 'nope'"):
        producer.outputs.parameters["nope"]
    with pytest.raises(aflow.errors.SignatureError, match="is given in artifacts="):
        Step("r", read, parameters={"file": "x.txt"})


def test_op_functions_and_wiring_shapes_are_checked_when_built(tmp_path: Path) -> None:
    with pytest.raises(aflow.errors.SignatureError, match="named parameters only"):

        @op(outputs={})
        async def positional(x: int, /):
            return {}

    with pytest.raises(aflow.errors.SignatureError, match="given twice"):

        @op(outputs={})
        async def twice(x: Parameter(int, default=5) = 7):  # type: ignore[valid-type]
            return {}

    @op(outputs={"fs": Artifact(list[Path])})
    async def many():
        return {"fs": []}

    @op(outputs={})
    async def one(f: Artifact(Path), d: Artifact(dict[str, Path], optional=True) = None):  # type: ignore[valid-type]
        return {}

    m = Step("m", many)
    with pytest.raises(aflow.errors.SignatureError, match="is wired to"):
        Step("o", one, artifacts={"f": m.outputs.artifacts["fs"]})
    local = tmp_path / "x.txt"
    local.write_text("x")
    with pytest.raises(aflow.errors.SignatureError, match="dict of local paths"):
        Step("o", one, artifacts={"f": local, "d": local})
    sliced = Slices(input_parameter=["x", "y"])
    with pytest.raises(aflow.errors.SignatureError, match="one length"):
        Step("a", add, parameters={"x": [1, 2], "y": [1]}, slices=sliced)


# --- checked when the step runs -------------------------------------------------------------------


async def test_a_wired_value_of_the_wrong_type_fails_the_step_and_nothing_downstream_runs() -> None:
    ran: list[str] = []

    @op(outputs={"x": int})
    async def record(x: int):
        ran.append("downstream")
        return {"x": x}

    text = Step("text", to_text, parameters={"x": 5})
    bad = Step("bad", add, parameters={"x": text.outputs.parameters["text"]})  # str into int
    after = Step("after", record, parameters={"x": bad.outputs.parameters["sum"]})
    wf = Workflow("typed").add(text).add(bad).add(after)
    assert await run_wf(wf) == "Failed"
    [failed] = wf.query_step(phase="Failed")
    assert failed.key == "bad"
    error = failed.error
    assert isinstance(error, aflow.errors.OpIOError)
    assert (error.op, error.direction, error.key, error.expected) == ("add", "input", "x", "int")
    assert error.actual.startswith("str")
    assert ran == []
    assert wf.query_step(name="after")[0].phase == "Pending"
    with pytest.raises(aflow.errors.OpIOError):
        await wf.run.result()


@pytest.mark.parametrize(
    ("operator", "key", "expected", "actual"),
    [
        (wrong_type, "y", "int", "str ('5')"),
        (missing_key, "z", "int", "nothing (the key is missing)"),
    ],
)
async def test_outputs_are_checked(
    operator: type[OP], key: str, expected: str, actual: str
) -> None:
    wf = Workflow("out").add(Step("s", operator, parameters={"x": 1}))
    assert await run_wf(wf) == "Failed"
    error = wf.query_step(name="s")[0].error
    assert isinstance(error, aflow.errors.OpIOError)
    assert (error.direction, error.key, error.expected, error.actual) == (
        "output",
        key,
        expected,
        actual,
    )


async def test_an_output_artifact_that_does_not_exist_fails_the_step() -> None:
    @op(outputs={"f": Artifact(Path)})
    async def liar():
        return {"f": Path("never-written.txt")}

    wf = Workflow("liar").add(Step("s", liar))
    assert await run_wf(wf) == "Failed"
    error = wf.query_step(name="s")[0].error
    assert isinstance(error, aflow.errors.OpIOError)
    assert error.key == "f"
    assert "missing path" in error.actual


# --- defaults, TypedDict outputs and OP classes ---------------------------------------------------


async def test_defaults_typeddict_outputs_and_parameter_objects() -> None:
    class Scale(OP):
        @classmethod
        def get_input_sign(cls) -> OPIOSign:
            return OPIOSign({"x": int, "factor": Parameter(int, default=3)})

        @classmethod
        def get_output_sign(cls) -> OPIOSign:
            return OPIOSign({"y": int})

        async def execute(self, op_in: OPIO) -> OPIO:
            return OPIO({"y": op_in["x"] * op_in["factor"]})

    a = Step("a", add, parameters={"x": 1})  # y defaults to 1
    b = Step("b", Scale, parameters={"x": a.outputs.parameters["sum"]})
    with pytest.raises(
        aflow.errors.SignatureError, match="at \\[0\\]"
    ):  # a list of references is no wiring
        Step("c", total, parameters={"values": [b.outputs.parameters["y"]]})
    c = Step("c", add, parameters={"x": b.outputs.parameters["y"], "y": 10})
    assert await aflow.run(Workflow("w").add(a).add(b).add(c)) == {"c": {"sum": 16}}


async def test_an_op_instance_need_not_be_hashable() -> None:
    import dataclasses

    @dataclasses.dataclass
    class Scale(OP):
        factor: int = 2

        @classmethod
        def get_input_sign(cls) -> OPIOSign:
            return OPIOSign({"x": int})

        @classmethod
        def get_output_sign(cls) -> OPIOSign:
            return OPIOSign({"y": int})

        async def execute(self, op_in: OPIO) -> OPIO:
            return OPIO({"y": op_in["x"] * self.factor})

    wf = Workflow("dc").add(Step("s", PythonOPTemplate(Scale(3)), parameters={"x": 2}))
    assert await aflow.run(wf) == {"s": {"y": 6}}
