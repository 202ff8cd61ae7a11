"""dflow's conditional outputs, ported: a template's output parameter and artifact are
taken from one of two steps' outputs, chosen by ``if_expression``.

A ``Steps`` template flips a coin (the op reports heads or tails and writes two
files); its ``msg`` parameter and ``res`` artifact come from the heads outputs or the
tails ones. A second step reads the chosen file. Run it with
``python examples/dflow_conditional.py``.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path
from typing import Annotated

import aflow
from aflow.ops import (
    OP,
    OPIO,
    Artifact,
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
)


class Random(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign()

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign(
            {"is_head": bool, "msg1": str, "msg2": str, "foo": Artifact(str), "bar": Artifact(str)}
        )

    def execute(self, op_in: OPIO) -> OPIO:
        (op_in.workdir / "foo.txt").write_text("head")
        (op_in.workdir / "bar.txt").write_text("tail")
        return OPIO(
            {
                "is_head": random.random() < 0.5,
                "msg1": "head",
                "msg2": "tail",
                "foo": "foo.txt",
                "bar": "bar.txt",
            }
        )


@op(outputs={"text": str})
def read(file: Annotated[Path, Artifact(Path)]) -> dict[str, str]:
    return {"text": file.read_text()}


def coin_flip() -> Workflow:
    steps = Steps(
        "flip",
        outputs=Outputs(parameters={"msg": OutputParameter()}, artifacts={"res": OutputArtifact()}),
    )
    flip = Step("random", PythonOPTemplate(Random))
    steps.add(flip)
    heads = flip.outputs.parameters["is_head"]
    steps.outputs.parameters["msg"].value_from_expression = if_expression(
        _if=heads, _then=flip.outputs.parameters["msg1"], _else=flip.outputs.parameters["msg2"]
    )
    steps.outputs.artifacts["res"].from_expression = if_expression(
        _if=heads, _then=flip.outputs.artifacts["foo"], _else=flip.outputs.artifacts["bar"]
    )
    conditional = Step("conditional", steps)
    check = Step("check", read, artifacts={"file": conditional.outputs.artifacts["res"]})
    return Workflow("conditional").add(conditional).add(check)


async def main(download_to: Path) -> dict[str, str]:
    wf = coin_flip()
    async with aflow.Runtime():
        await wf.submit()
        assert await wf.wait() == "Succeeded"
    step = wf.query_step(name="conditional")[0]
    [path] = download_artifact(step.outputs.artifacts["res"], path=download_to)
    return {
        "msg": step.outputs.parameters["msg"].value,
        "file": path.read_text(),
        "read downstream": wf.query_step(name="check")[0].outputs.parameters["text"].value,
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as out:
        print(asyncio.run(main(Path(out))))
