"""The same saga with its bodies on the event loop and in worker processes.

    reserve -> price (CPU-bound, in the workers) -> charge -> ship

``price`` names ``executor="process"``: its body runs in a pool of worker processes,
while the run (its graph, retries, compensation) stays here. The second run gives the
whole saga to the workers (``aflow.run(..., executor="process")``) and fails at
``ship``: the reverts run in the workers too, in reverse order. A task run in another
process must be a module-level name, and what it is given and returns must pickle.
Run it with ``python examples/executors.py``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio

import aflow


@aflow.task
def reserve(order: str) -> str:
    print(f"  reserve {order} (pid {os.getpid()})", flush=True)
    return f"rsv-{order}"


@reserve.revert
def release(order: str, *, result: Any) -> None:
    print(f"  undo: release {result} (pid {os.getpid()})", flush=True)


@aflow.task(executor="process")
def price(rsv: str) -> int:
    """Pure-Python work, worth another process (about 50 ms here)."""
    began = time.perf_counter()
    total = 0
    while time.perf_counter() - began < 0.05:
        total += sum(i * i for i in range(1000)) % 7
    print(f"  price {rsv} (pid {os.getpid()})", flush=True)
    return 42


@aflow.task
async def charge(amount: int) -> str:
    print(f"  charge {amount} (pid {os.getpid()})", flush=True)
    return f"ch-{amount}"


@charge.revert
async def refund(amount: int, *, result: Any) -> None:
    print(f"  undo: refund {result} (pid {os.getpid()})", flush=True)


@aflow.task
def ship(receipt: str, address: str) -> str:
    print(f"  ship {receipt} (pid {os.getpid()})", flush=True)
    if address == "nowhere":
        raise ValueError(f"cannot deliver to {address!r}")
    return f"shipped {receipt}"


def saga(order: str, address: str) -> Any:
    return reserve.s(order) | price.s() | charge.s() | ship.s(address=address)


async def main() -> None:
    print(f"this process: {os.getpid()}")
    print("1. on the loop, price in the workers:")
    print("  ->", await aflow.run(saga("o-1", "Main St 1")))
    print("2. every body in the workers, and ship fails:")
    try:
        await aflow.run(saga("o-2", "nowhere"), executor="process")
    except ValueError as exc:
        print("  ->", exc)


if __name__ == "__main__":  # (worker processes import this module: run only here)
    anyio.run(main)
