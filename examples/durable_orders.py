"""A durable order saga, run by the ``aflow`` command on the embedded SQLite store.

    aflow run examples.durable_orders:order_saga --param order_id=o-42
    aflow runs
    aflow show <run id>

Every step is checkpointed in ``aflow-runs.db``: kill the process while it
runs and ``aflow resume <run id>`` (or ``Runtime(recover=True)``) finishes
the run without repeating the steps already done. Running this file does the
same as the first command, with a fresh store in a temporary folder.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from typing import Any

import aflow


@aflow.task(retries=2)
async def reserve(order_id: str) -> dict[str, Any]:
    print(f"reserve stock for {order_id}")
    return {"order_id": order_id, "reservation": f"res-{order_id}"}


@reserve.revert
async def release(order_id: str, *, result: Any) -> None:
    print(f"release {result['reservation']}")


@aflow.task(timeout=10)
async def charge(order: dict[str, Any]) -> dict[str, Any]:
    print(f"charge the card for {order['order_id']}")
    return {**order, "receipt": f"rcpt-{order['order_id']}"}


@aflow.task
async def ship(order: dict[str, Any]) -> str:
    print(f"ship {order['reservation']} (paid: {order['receipt']})")
    return f"shipped {order['order_id']}"


@aflow.workflow
def order_saga(order_id: str) -> aflow.Canvas[str]:
    """Reserve, charge, ship: one order, checkpointed step by step."""
    return reserve.s(order_id) | charge.s() | ship.s()


async def main() -> None:
    # Run as a script this file is __main__, which another process could not import:
    # take the workflow from the module under its real name.
    from examples.durable_orders import order_saga

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{os.path.join(folder, 'runs.db')}"
        async with aflow.Runtime(store=url) as rt:
            run = await rt.submit(order_saga, order_id="o-42", idempotency_key="order-o-42")
            print("result:", await run.result())
            again = await rt.submit(order_saga, order_id="o-42", idempotency_key="order-o-42")
            print("same key, same run, nothing ran twice:", again.id == run.id)
            assert rt.store is not None
            nodes = await rt.store.load_nodes(run.id)
            print("checkpoints:", {key: node.state for key, node in nodes.items()})


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    asyncio.run(main())
