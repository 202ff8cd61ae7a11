"""Checked by ``mypy --strict`` (make lint), never run: typed operators type-check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypedDict, assert_type

import aflow
from aflow.ops import (
    DAG,
    OP,
    OPIO,
    Artifact,
    ArtifactValue,
    OPIOSign,
    Parameter,
    PythonOPTemplate,
    Slices,
    Step,
    StepRecord,
    Workflow,
    download_artifact,
    op,
)


class WriteFile(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"msg": str, "number": Parameter(int, default=1)})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"out": Artifact(list[Path])})

    def execute(self, op_in: OPIO) -> OPIO:
        return OPIO({"out": [Path("msg.txt")]})


class Later(OP):
    async def execute(self, op_in: OPIO) -> OPIO:  # an async override type-checks too
        return OPIO()


class Total(TypedDict):
    total: int


@op
async def total(values: list[int]) -> Total:
    return {"total": sum(values)}


@op(outputs={"text": str})
async def read(file: Annotated[Path, Artifact(Path)]) -> dict[str, str]:
    return {"text": file.read_text()}


async def main() -> None:
    s0 = Step("s0", PythonOPTemplate(WriteFile, slices=None), parameters={"msg": "hi"})
    s1 = Step("s1", read, artifacts={"file": s0.outputs.artifacts["out"]}, retries=2, timeout=5.0)
    s2 = Step("s2", total, parameters={"values": [1]}, slices=Slices(input_parameter=["values"]))
    wf = Workflow("w").add(s0).add([s1, s2])
    Workflow("d", dag=DAG().add([s0, s1]))
    async with aflow.Runtime():
        run: aflow.Run[Any] = await wf.submit()
        assert_type(run.id, str)
        status: str = await wf.wait()
        records: list[StepRecord] = wf.query_step(name="s1", phase=["Succeeded"])
        value = records[0].outputs.artifacts["out"]
        assert_type(value, ArtifactValue | None)
        paths: list[Path] = download_artifact(value, path="out")  # None raises ValueError
        print(status, paths)
