"""Operators whose ``execute`` runs in another process (tests/test_ops_executors.py):
module-level, so a worker can import them, and written as dflow code is, with paths
relative to the current directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from aflow.ops import OP, OPIO, Artifact, OPIOSign, op


class WriteRelative(OP):
    """dflow's hello-world op: it writes where it stands and returns relative paths."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"msg": str, "number": int})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"out_art": Artifact(list[Path]), "cwd": str, "pid": int})

    def execute(self, op_in: OPIO) -> OPIO:
        Path("msg.txt").write_text(op_in["msg"])
        Path("sub").mkdir()
        Path("sub/results.txt").write_text(str(op_in["number"]))
        return OPIO(
            {
                "out_art": [Path("msg.txt"), Path("sub/results.txt")],
                "cwd": os.getcwd(),
                "pid": os.getpid(),
            }
        )


@op(outputs={"text": str, "cwd": str})
async def read_relative(files: Annotated[list[Path], Artifact(list[Path])]) -> dict[str, str]:
    """An async op: its input files are in its work dir (inputs/...), found relatively
    (blocking calls are fine: it is alone in its worker process)."""
    [msg] = [Path(os.path.relpath(f)) for f in files if f.name == "msg.txt"]  # noqa: ASYNC240
    assert msg.parts[0] == "inputs"
    return {"text": msg.read_text(), "cwd": os.getcwd()}


@op(outputs={"square": int, "cwd": str})
def square_here(n: int) -> dict[str, object]:
    Path("n.txt").write_text(str(n))
    return {"square": int(Path("n.txt").read_text()) ** 2, "cwd": os.getcwd()}


@op(outputs={"pid": int})
def where_am_i(x: object = None) -> dict[str, int]:
    return {"pid": os.getpid()}
