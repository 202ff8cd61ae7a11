"""An order workflow: validate, then three checks at once, then charge and notify.

    validate -> group(reserve stock, quote shipping, check fraud) -> charge -> notify

Run it with ``make demo`` (or ``python examples/order_saga.py``). It prints each
step as it finishes, how long it took, and the final result.
"""

from __future__ import annotations

import random
import time
from typing import Any

import anyio

import aflow

rng = random.Random(42)


@aflow.task
async def validate(order: dict[str, Any]) -> dict[str, Any]:
    if not order["items"]:
        raise ValueError(f"order {order['id']} has no items")
    await anyio.sleep(0.01)
    return order


@aflow.task(limit="inventory")
async def reserve_stock(order: dict[str, Any]) -> str:
    await anyio.sleep(0.03 + rng.random() / 50)  # a call to the inventory service
    return f"rsv-{order['id']}"


@aflow.task
async def quote_shipping(order: dict[str, Any]) -> float:
    await anyio.sleep(0.02 + rng.random() / 50)
    return round(4.5 + 0.5 * len(order["items"]), 2)


@aflow.task
def check_fraud(order: dict[str, Any]) -> str:
    """A blocking library call: plain ``def``, so aflow runs it in a worker thread."""
    time.sleep(0.02)
    return "low-risk" if order["total"] < 1000 else "review"


@aflow.task(retries=2, timeout=5)
async def charge(checks: list[Any], order: dict[str, Any]) -> dict[str, Any]:
    reservation, shipping, risk = checks
    if risk != "low-risk":
        raise PermissionError(f"order {order['id']} needs a manual review")
    await anyio.sleep(0.02)
    amount = order["total"] + shipping
    return {"receipt": f"rcpt-{order['id']}", "amount": amount, "reservation": reservation}


@aflow.task
async def notify(receipt: dict[str, Any], email: str) -> str:
    await anyio.sleep(0.005)
    return f"sent {receipt['receipt']} ({receipt['amount']:.2f} EUR) to {email}"


def order_saga(order: dict[str, Any]) -> aflow.Canvas[str]:
    """Build the workflow for one order."""
    return (
        validate.s(order)
        | aflow.group(reserve_stock.s(), quote_shipping.s(), check_fraud.s())
        | charge.s(order)
        | notify.s(order["email"])
    )


async def main() -> None:
    order = {"id": "o-42", "items": ["book", "lamp"], "total": 74.0, "email": "ada@example.com"}
    workflow = order_saga(order)
    print(f"workflow: {aflow.compile(workflow)}")

    def show(event: aflow.Event) -> None:
        if event.name == "task_succeeded":
            print(f"  {event.node:<15} ok      {1000 * (event.duration_s or 0):7.1f} ms")
        elif event.name in ("task_failed", "task_retried"):
            print(f"  {event.node:<15} {event.name[5:]:<7} {event.error!r}")

    async with aflow.Runtime(max_concurrency=8, limits={"inventory": 2}) as rt:
        started = time.perf_counter()
        run = await rt.submit(workflow, on_event=show)
        result = await run.result()
        elapsed = time.perf_counter() - started
    stats = run.statistics()
    print(f"result: {result}")
    print(
        f"run {run.id[:8]} {run.status.value} in {1000 * elapsed:.1f} ms: "
        f"{stats.succeeded}/{stats.total} steps, up to {stats.peak_running} at once"
    )


if __name__ == "__main__":
    anyio.run(main)
