"""TaskFlow-style flow control: a graph flow, a retry controller, a decider, suspend and continue.

An order: reserve stock, then pay, trying payment providers in turn (a failed
provider's charge is reverted before the next one is tried); gift wrapping
only runs when the order asks for it. A second engine is suspended half-way
and continued. Run it with ``python examples/flow_control.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aflow
import aflow.retry
from aflow import engines
from aflow.patterns import graph_flow as gf
from aflow.patterns import linear_flow as lf


class Declined(Exception):
    pass


class Reserve(aflow.Task):
    default_provides = "reservation"

    async def execute(self, order: dict[str, Any]) -> str:
        print(f"reserve stock for {order['id']}")
        return f"res-{order['id']}"

    async def revert(self, order: dict[str, Any], result: Any) -> None:
        print(f"release {result}")


class Charge(aflow.Task):
    default_provides = "receipt"

    async def execute(self, order: dict[str, Any], provider: str) -> str:
        print(f"charge {order['total']} via {provider}")
        if provider == "flakypay":
            raise Declined(f"{provider} declined")
        return f"{provider}-receipt"

    async def revert(self, order: dict[str, Any], provider: str, result: Any) -> None:
        print(f"void the {provider} charge ({result})")


class GiftWrap(aflow.Task):
    default_provides = "wrapped"

    async def execute(self, reservation: str) -> bool:
        print(f"gift-wrap {reservation}")
        return True


class Ship(aflow.Task):
    async def execute(self, reservation: str, receipt: str) -> str:
        print(f"ship {reservation} paid by {receipt}")
        return "shipped"


class Step(aflow.Task):
    engine: engines.Engine | None = None

    async def execute(self) -> None:
        print(f"{self.name} runs")
        if self.name == "step1" and Step.engine is not None:
            Step.engine.suspend()  # the running step finishes; nothing new starts


def order_flow(order: dict[str, Any]) -> gf.Flow:
    payment = lf.Flow(
        "payment", retry=aflow.retry.ForEach(["flakypay", "goodpay"], provides="provider")
    ).add(Charge())
    reserve, wrap = Reserve(), GiftWrap()
    flow = gf.Flow("order").add(reserve, payment, wrap, Ship(provides="status"))
    # reserve -> ship and payment -> ship come from requires/provides; this edge is ours,
    # and wrapping (with anything downstream of it) is SKIPPED unless the order asks for it:
    flow.link(reserve, wrap, decider=lambda history: bool(order.get("gift")))
    return flow


async def main() -> None:
    order = {"id": "o-42", "total": 30}
    eng = engines.load(order_flow(order), store={"order": order}, engine="parallel")
    await eng.run()
    print("status:", eng.storage.fetch("status"), "| gift wrap:", eng.states()["GiftWrap"].value)

    print("--- suspend after the first step, then continue ---")
    steps = lf.Flow("steps").add(*(Step(name=f"step{i}") for i in range(1, 4)))
    eng2 = engines.load(steps)
    Step.engine = eng2
    await eng2.run()
    print("after run():", eng2.state.value, {k: v.value for k, v in eng2.states().items()})
    await eng2.run()
    print("after run() again:", eng2.state.value)


if __name__ == "__main__":
    asyncio.run(main())
