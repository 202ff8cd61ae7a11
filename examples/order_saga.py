"""An order saga: validate, three checks at once, charge, ship, notify; undone on failure.

    validate -> group(reserve stock, quote shipping, check fraud) -> charge -> ship -> notify

Run it with ``make demo`` (or ``python examples/order_saga.py``). It runs two
orders and prints each step as it finishes. The first succeeds. The second is
charged, then the carrier rejects its address: aflow refunds the charge and
releases the stock (the reverts, in reverse dependency order) and the run ends
``reverted`` with the carrier's own exception.
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


class AddressRejected(Exception):
    """The carrier cannot deliver to this address (retrying will not help)."""


@aflow.task(limit="inventory")
async def reserve_stock(order: dict[str, Any]) -> str:
    await anyio.sleep(0.03 + rng.random() / 50)  # a call to the inventory service
    return f"rsv-{order['id']}"


@reserve_stock.revert
async def release_stock(order: dict[str, Any], result: Any) -> None:
    """Compensation: give the reserved items back (``result`` is the reservation)."""
    if isinstance(result, aflow.Failure):
        return  # the reservation never happened
    await anyio.sleep(0.005)
    print(f"  undo: released {result}")


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


@charge.revert
async def refund(checks: list[Any], order: dict[str, Any], result: Any) -> None:
    if isinstance(result, aflow.Failure):
        return  # nothing was charged
    await anyio.sleep(0.005)
    print(f"  undo: refunded {result['amount']:.2f} EUR ({result['receipt']})")


@aflow.task(retries=3, backoff=aflow.Backoff(base=0.01, factor=2), retry_on=ConnectionError)
async def ship(receipt: dict[str, Any], address: str) -> dict[str, Any]:
    """Book the carrier: busy lines are retried with backoff, a bad address is not."""
    await anyio.sleep(0.01)
    if aflow.current_step().attempt == 1:
        raise ConnectionError("carrier line busy")  # retried after 10 ms
    if address == "nowhere":
        raise AddressRejected(f"carrier cannot deliver to {address!r}")
    return {**receipt, "tracking": f"trk-{receipt['receipt'][5:]}"}


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
        | ship.s(order["address"])
        | notify.s(order["email"])
    )


def show(event: aflow.Event) -> None:
    if event.name == "task_succeeded":
        print(f"  {event.node:<15} ok      {1000 * (event.duration_s or 0):7.1f} ms")
    elif event.name in ("task_failed", "task_retried", "task_cancelled"):
        print(f"  {event.node:<15} {event.name[5:]:<9} {event.error!r}")


async def place(rt: aflow.Runtime, order: dict[str, Any]) -> None:
    print(f"order {order['id']}:")
    started = time.perf_counter()
    run = await rt.submit(order_saga(order), on_event=show)
    try:
        result = await run.result()
    except AddressRejected as exc:
        print(f"  failed: {exc}")
        for note in exc.__notes__:
            print(f"    {note}")
    else:
        print(f"  result: {result}")
    elapsed = time.perf_counter() - started
    stats = run.statistics()
    print(
        f"  run {run.id[:8]} {run.status.value} in {1000 * elapsed:.1f} ms: "
        f"{stats.succeeded}/{stats.total} steps succeeded, {stats.reverted} reverted, "
        f"up to {stats.peak_running} at once\n"
    )


async def main() -> None:
    good = {
        "id": "o-42",
        "items": ["book", "lamp"],
        "total": 74.0,
        "email": "ada@example.com",
        "address": "12 Analytical St",
    }
    bad_address = {**good, "id": "o-43", "address": "nowhere"}
    print(f"workflow: {aflow.compile(order_saga(good))}\n")
    async with aflow.Runtime(max_concurrency=8, limits={"inventory": 2}) as rt:
        await place(rt, good)
        await place(rt, bad_address)


if __name__ == "__main__":
    anyio.run(main)
