"""The dflow seed's hello world, ported: an OP writes two files, a step runs it,
the workflow is queried and its artifact downloaded.

What changed from dflow: ``execute`` writes into ``op_in.workdir`` (aflow
never changes the process's current directory), the run is awaited inside an
``aflow.Runtime`` instead of polling Argo, and there is no image: the op runs
in this process. Run it with ``python examples/dflow_style.py``.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import aflow
from aflow.ops import (
    OP,
    OPIO,
    Artifact,
    OPIOSign,
    PythonOPTemplate,
    Step,
    Workflow,
    download_artifact,
)


class WriteFile(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"msg": str, "number": int})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"out_art": Artifact(list[Path])})

    @OP.exec_sign_check
    def execute(self, op_in: OPIO) -> OPIO:  # a plain def runs in a worker thread
        (op_in.workdir / "msg.txt").write_text(op_in["msg"])
        (op_in.workdir / "results.txt").write_text(str(op_in["number"]))
        return OPIO({"out_art": [Path("msg.txt"), Path("results.txt")]})


async def main(download_to: Path) -> list[Path]:
    # no image=: the op runs in this process (dflow's image= would warn, IgnoredOption)
    a_tmp = PythonOPTemplate(WriteFile)
    step0 = Step(name="step0", template=a_tmp, parameters={"msg": "HelloWorld!", "number": 1})
    wf = Workflow(name="python")
    wf.add(step0)
    async with aflow.Runtime():
        await wf.submit()
        assert await wf.wait() == "Succeeded"
    step = wf.query_step(name="step0")[0]
    assert step.phase == "Succeeded"
    return download_artifact(step.outputs.artifacts["out_art"], path=download_to)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as out:
        for path in asyncio.run(main(Path(out))):
            print(f"{path.name}: {path.read_text()!r}")
