"""Workflows for the durable-run tests; importable by the subprocesses that get killed.

Side effects are counted in the JSON file named by ``AFLOW_COUNTS``; ``AFLOW_HANG``
names a step (``B`` or ``revert-B``) that blocks the first time it runs, so the
test can kill the process right there.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any

import aflow


def bump(name: str) -> int:
    path = pathlib.Path(os.environ["AFLOW_COUNTS"])
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = data.get(name, 0) + 1
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    if os.environ.get("AFLOW_HANG") == name and data[name] == 1:
        (path.parent / f"hanging-{name}").write_text("")
        time.sleep(120)  # blocks the loop on purpose: the test kills the process here
    return int(data[name])


@aflow.task
async def step_a(x: int) -> int:
    bump("A")
    return x + 1


@step_a.revert
async def undo_a(x: int, *, result: Any) -> None:
    bump("revert-A")


@aflow.task
async def step_b(x: int) -> int:
    bump("B")
    return x * 2


@step_b.revert
async def undo_b(x: int, *, result: Any) -> None:
    bump("revert-B")


@aflow.task
async def step_c(x: int) -> int:
    bump("C")
    return x + 100


@aflow.task
async def step_c_fails(x: int) -> int:
    bump("C")
    raise RuntimeError("card declined")


@aflow.workflow
def abc(start: int) -> Any:
    return step_a.s(start) | step_b.s() | step_c.s()


@aflow.workflow
def abc_fails(start: int) -> Any:
    return step_a.s(start) | step_b.s() | step_c_fails.s()


class Opaque:
    pass


@aflow.task
async def opaque(x: int) -> Opaque:
    return Opaque()


@aflow.workflow
def a_then_opaque(start: int) -> Any:
    return step_a.s(start) | opaque.s()


@aflow.workflow
def fan(n: int) -> Any:
    return aflow.chord((step_a.s(i) for i in range(n)), total.s())


@aflow.task
async def total(xs: list[int]) -> int:
    return sum(xs)


@aflow.task
async def wait_here(x: int) -> int:
    import anyio

    bump("W")
    path = pathlib.Path(os.environ["AFLOW_COUNTS"])
    (path.parent / "waiting").write_text("")
    await anyio.sleep(120)  # cancellable: the loop stays free
    return x


@wait_here.revert
async def undo_wait(x: int, *, result: Any) -> None:
    bump("revert-W")


@aflow.workflow
def a_then_wait(start: int) -> Any:
    return step_a.s(start) | wait_here.s()
