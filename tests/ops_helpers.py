"""Operators and helpers shared by the aflow.ops test modules (tests/test_ops_*.py)."""

from __future__ import annotations

import pathlib
from pathlib import Path
from typing import Annotated, Any, TypedDict

import anyio
import anyio.lowlevel

import aflow
from aflow.ops import OP, OPIO, Artifact, OPIOSign, Workflow, op

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


class WriteFile(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"msg": str, "number": int})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"out_art": Artifact(list[Path])})

    def execute(self, op_in: OPIO) -> OPIO:
        (op_in.workdir / "msg.txt").write_text(op_in["msg"])
        (op_in.workdir / "results.txt").write_text(str(op_in["number"]))
        return OPIO({"out_art": [Path("msg.txt"), Path("results.txt")]})


@op(outputs={"sum": int})
async def add(x: int, y: int = 1):
    return {"sum": x + y}


@op(outputs={"text": str})
def to_text(x: int):
    return {"text": str(x)}


class Sum(TypedDict):
    total: int


@op
async def total(values: list[int | None]) -> Sum:
    return {"total": sum(v for v in values if v is not None)}


@op(outputs={"file": Artifact(Path)})
async def write(text: str, workdir: Path):
    (workdir / "note.txt").write_text(text)
    return {"file": Path("note.txt")}


@op(outputs={"text": str})
async def read(file: Annotated[Path, Artifact(Path)]):
    return {"text": file.read_text()}


@op(outputs={"y": int})
async def boom(x: int):
    raise ValueError(f"boom {x}")


@op(outputs={"y": int})
async def wrong_type(x: int):
    return {"y": "5"}


@op(outputs={"y": int, "z": int})
async def missing_key(x: int):
    return {"y": 1}


class PeakProbe:
    """An op that counts how many of its calls run at once; each call holds on until
    ``fill`` calls are in flight (so a bound that is too loose shows), then yields a little."""

    def __init__(self, fill: int) -> None:
        self.in_flight = 0
        self.peak = 0
        self.full = anyio.Event()
        probe = self

        @op(outputs={"x": int})
        async def probe_op(x: int):
            probe.in_flight += 1
            probe.peak = max(probe.peak, probe.in_flight)
            if probe.in_flight == fill:
                probe.full.set()
            await probe.full.wait()
            for _ in range(5):
                await anyio.lowlevel.checkpoint()  # let any unbounded sibling start
            probe.in_flight -= 1
            return {"x": x}

        self.op = probe_op


async def run_wf(wf: Workflow, **submit: Any) -> str:
    async with aflow.Runtime():
        await wf.submit(**submit)
        return await wf.wait()
