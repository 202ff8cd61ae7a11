"""Deploys, crashes and keys: what happens to durable runs when their process goes away.

1. A runtime with a store that shuts down (its ``shutdown_timeout`` elapses, or the
   service's lifespan is cancelled in a rolling deploy) *releases* its runs: they stop
   at a step boundary, nothing is reverted, and the next runtime takes them up at once,
   without waiting for a lease to run out.
2. A step cut short runs again on resume (at-least-once). ``aflow.current_step()``
   gives it a stable idempotency key, so the payment provider charges once.
3. ``Runtime(recover=True)`` keeps looking for runs whose process died, every quarter
   of its ``lease``; a run that keeps killing the processes that take it up is parked
   after ``max_recoveries`` takeovers, for a person to resume or cancel.

Run it: ``python examples/durable_deploys.py``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

import anyio

import aflow

#: the payment provider: it dedups requests by their idempotency key
CHARGES: dict[str, str] = {}
CHARGED = anyio.Event()
REPLIED = anyio.Event()


@aflow.task
async def charge(order_id: str) -> str:
    key = aflow.current_step().idempotency_key  # the same on every attempt and resume
    receipt = CHARGES.setdefault(key, f"rcpt-{order_id}-{len(CHARGES) + 1}")
    print(f"  charge {order_id} with key .../{key.split('/', 1)[1]}: {receipt}")
    CHARGED.set()
    await REPLIED.wait()  # the first process never gets the reply: a deploy stops it first
    return receipt


@charge.revert
async def refund(order_id: str, *, result: object) -> None:
    print(f"  refund {result}")


@aflow.task
async def ship(receipt: str) -> str:
    return f"shipped ({receipt})"


@aflow.workflow
def order(order_id: str) -> aflow.Canvas[str]:
    return charge.s(order_id) | ship.s()


async def main() -> None:
    # Run as a script this file is __main__, which another process could not import:
    # take the workflow (and what its steps share) from the module under its real name.
    from examples import durable_deploys as here

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{os.path.join(folder, 'runs.db')}"
        print("the old release of the service:")
        async with aflow.Runtime(store=url, shutdown_timeout=0.1) as old:
            run = await old.submit(here.order, order_id="o-7")
            await here.CHARGED.wait()  # ... and then the deploy stops it
        try:
            await run.result()
        except aflow.errors.RunReleased as exc:
            print(f"  {type(exc).__name__}: {exc.message}")
        print("the new release (its lease is an hour: the run was let go of, not lost):")
        here.REPLIED.set()
        async with aflow.Runtime(store=url, recover=True, lease=3600) as new:
            print("  result:", await new.get(run.id).result())
        print("charges made:", len(here.CHARGES), "(the step ran twice, with one key)")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    asyncio.run(main())
