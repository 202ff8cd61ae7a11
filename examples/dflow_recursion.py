"""dflow's loop by recursion, ported: a ``Steps`` template adds a step that uses the
template itself, guarded by ``when``; each level runs one more iteration.

The template declares its inputs (``iter`` with a default, ``limit``) and an output,
``last``: an ``if_expression`` that takes the next level's ``last`` while there is a
next level, else this level's value, so the value climbs back out of the recursion.
Step keys read the template's input (``iter-0``, ``iter-1``...), and every level's
steps show in ``query_step``. Run it with ``python examples/dflow_recursion.py``.
"""

from __future__ import annotations

import asyncio

import aflow
from aflow.ops import (
    OP,
    OPIO,
    InputParameter,
    Inputs,
    OPIOSign,
    OutputParameter,
    Outputs,
    PythonOPTemplate,
    Step,
    Steps,
    Workflow,
    if_expression,
)


class Plus1(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"iter": int})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"iter": int})

    async def execute(self, op_in: OPIO) -> OPIO:
        return OPIO({"iter": op_in["iter"] + 1})


def loop(limit: int) -> Workflow:
    steps = Steps(
        name="iter",
        inputs=Inputs(
            parameters={"iter": InputParameter(value=0), "limit": InputParameter(value=limit)}
        ),
        outputs=Outputs(parameters={"last": OutputParameter()}),
    )
    plus1 = Step(
        name="plus1",
        template=PythonOPTemplate(Plus1),
        parameters={"iter": steps.inputs.parameters["iter"]},
        key=f"iter-{steps.inputs.parameters['iter']}",
    )
    more = f"{plus1.outputs.parameters['iter']} < {steps.inputs.parameters['limit']}"
    deeper = Step(
        name="next",
        template=steps,  # the template uses itself: recursion
        parameters={"iter": plus1.outputs.parameters["iter"]},
        when=more,
    )
    steps.add(plus1)
    steps.add(deeper)
    steps.outputs.parameters["last"].value_from_expression = if_expression(
        _if=more, _then=deeper.outputs.parameters["last"], _else=plus1.outputs.parameters["iter"]
    )
    return Workflow("recurse", steps=steps)


async def main(limit: int = 5) -> dict[str, int]:
    wf = loop(limit)
    async with aflow.Runtime():
        await wf.submit()
        assert await wf.wait() == "Succeeded"
    last = wf.query_step(key=f"iter-{limit - 1}")[0]
    for record in wf.query_step(name="plus1"):
        print(f"{record.key}: {record.inputs.parameters['iter']} -> ", end="")
        print(record.outputs.parameters["iter"].value)
    top = wf.query_step(name="next")[0]  # the first level's: the value climbed back out
    return {
        "last": last.outputs.parameters["iter"].value,
        "out": top.outputs.parameters["last"].value,
    }


if __name__ == "__main__":
    print(asyncio.run(main()))
