"""TaskFlow scheduling and undo: priorities, a decider's depth, revert arguments, suspend.

A warehouse restock, written as a TaskFlow user would:

* with one task at a time (the serial engine), ``priority=`` decides which ready
  task goes next, and which revert goes first when the flow is undone;
* a decider on a link says no to the gift wrap only (``Depth.ATOM``): what
  follows it still runs;
* a revert reads its own arguments (``revert_rebind``) and its value is kept
  (``storage.get_revert_result``);
* ``suspend()`` from inside a revert stops the unwinding, and ``run()`` again
  goes on with it, in the order the plain run takes.

Run it with ``python examples/taskflow_scheduling.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aflow
from aflow import engines
from aflow.patterns import Depth
from aflow.patterns import graph_flow as gf
from aflow.patterns import linear_flow as lf
from aflow.patterns import unordered_flow as uf

LOG: list[str] = []
ENGINE: list[engines.Engine] = []


class OutOfStock(Exception):
    pass


class Step(aflow.Task):
    """Logs itself; its revert logs too (and suspends the engine once if asked)."""

    fail = False
    suspend_in_revert = False

    async def execute(self) -> str:
        LOG.append(self.name)
        if self.fail:
            raise OutOfStock(self.name)
        return f"{self.name} done"

    async def revert(self, result: Any) -> str:
        LOG.append(f"undo {self.name}")
        if self.suspend_in_revert:
            self.suspend_in_revert = False
            ENGINE[0].suspend()  # the running revert ends; nothing new starts
        return f"{self.name} undone"


def restock(*, suspend: bool) -> lf.Flow:
    urgent = Step("urgent-order", priority=5)
    urgent.suspend_in_revert = suspend
    pallets = Step("pallets", priority=1)
    fails = Step("carrier")
    fails.fail = True
    return lf.Flow("restock").add(
        uf.Flow("order").add(Step("routine-order"), urgent, pallets),
        fails,
    )


class Pack(aflow.Task):
    default_provides = "parcel"

    async def execute(self, item: str) -> str:
        return f"parcel({item})"

    async def revert(self, item: str, result: Any) -> None:
        LOG.append(f"unpack {result}, put {item} back")


class Wrap(aflow.Task):
    default_provides = "wrapped"

    async def execute(self, parcel: str) -> str:
        return f"wrapped({parcel})"


class Label(aflow.Task):
    default_provides = "label"

    async def execute(self, parcel: str) -> str:
        return f"label for {parcel}"


async def main() -> None:
    print("--- priorities: one task at a time ---")
    for suspend in (False, True):
        LOG.clear()
        ENGINE[:] = [eng := engines.load(restock(suspend=suspend), engine="serial")]
        runs = 0
        while True:
            runs += 1
            try:
                await eng.run()
            except OutOfStock:
                break
        print(f"{'suspended once' if suspend else 'plain'} ({runs} run() calls): {LOG}")
        print("  revert value kept:", eng.storage.get_revert_result("urgent-order"))

    print("--- a decider that skips one task only ---")
    pack, wrap, label = Pack(), Wrap(), Label()
    flow = gf.Flow("ship").add(pack, wrap, label)
    flow.link(pack, wrap, decider=lambda history: False, decider_depth=Depth.ATOM)
    eng = engines.load(flow, store={"item": "teapot"})
    await eng.run()
    print("states:", {name: state.value for name, state in eng.states().items()})
    print("label:", eng.storage.fetch("label"))

    print("--- a revert that reads its own argument ---")
    LOG.clear()
    carrier = Step("carrier")
    carrier.fail = True
    undo = lf.Flow("ship").add(Pack(revert_rebind={"item": "shelf_slot"}), carrier)
    try:
        await engines.run(undo, store={"item": "teapot", "shelf_slot": "A-7"})
    except OutOfStock:
        print("undone:", LOG)


if __name__ == "__main__":
    asyncio.run(main())
