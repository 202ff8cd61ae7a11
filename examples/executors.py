"""One saga, unchanged, on the event loop, in worker processes and on a Dask cluster.

    reserve -> price (CPU-bound) -> charge -> ship

No task names an executor: each run says where its bodies go (``aflow.run(...,
executor=)``), while the run itself (its graph, retries, compensation) stays in this
process. Each executor runs the saga once to its end and once to a failure at ``ship``:
the reverts then run where the bodies ran, in reverse order. ``price`` checks in with
``aflow.check_cancelled()``, so a cancel or a timeout stops it even in another process.

The Dask part starts a ``LocalCluster`` of its own (2 worker processes on 127.0.0.1, no
dashboard); against a real cluster, give ``aflow.executors.Dask("tcp://scheduler:8786")``
and put the tasks in a module installed on the workers (this script's ``__main__`` is
importable only by workers started from it). A task run in another process must be a
module-level name, and what it is given and returns must pickle. Run it with
``python examples/executors.py`` (Dask needs ``pip install 'aflow[dask]'``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import anyio

import aflow
import aflow.executors


@aflow.task
def reserve(order: str) -> str:
    print(f"    reserve {order} (pid {os.getpid()})", flush=True)
    return f"rsv-{order}"


@reserve.revert
def release(order: str, *, result: Any) -> None:
    print(f"    undo: release {result} (pid {os.getpid()})", flush=True)


@aflow.task(timeout=10)
def price(rsv: str) -> int:
    """Pure-Python work, worth another process (about 50 ms here)."""
    began = time.perf_counter()
    total = 0
    while time.perf_counter() - began < 0.05:
        aflow.check_cancelled()  # (a cancel or the timeout stops it here, wherever it runs)
        total += sum(i * i for i in range(1000)) % 7
    print(f"    price {rsv} (pid {os.getpid()})", flush=True)
    return 42


@aflow.task
async def charge(amount: int) -> str:
    step = aflow.current_step()  # (answered where the body runs)
    print(f"    charge {amount}, attempt {step.attempt} (pid {os.getpid()})", flush=True)
    return f"ch-{amount}"


@charge.revert
async def refund(amount: int, *, result: Any) -> None:
    print(f"    undo: refund {result} (pid {os.getpid()})", flush=True)


@aflow.task
def ship(receipt: str, address: str) -> str:
    print(f"    ship {receipt} (pid {os.getpid()})", flush=True)
    if address == "nowhere":
        raise ValueError(f"cannot deliver to {address!r}")
    return f"shipped {receipt}"


@aflow.workflow
def saga(order: str, address: str) -> Any:
    return reserve.s(order) | price.s() | charge.s() | ship.s(address=address)


async def twice(where: str, executor: Any) -> None:
    print(f"{where}:")
    done = await aflow.run(saga, params={"order": "o-1", "address": "Main St 1"}, executor=executor)
    print("  ->", done)
    try:
        await aflow.run(saga, params={"order": "o-2", "address": "nowhere"}, executor=executor)
    except ValueError as exc:
        print("  ->", exc)


async def main() -> None:
    print(f"this process: {os.getpid()}")
    await twice("1. on the event loop (sync bodies in its threads)", "loop")
    await twice("2. in worker processes", "process")
    import dask
    from distributed import LocalCluster

    # aflow's retries alone: the scheduler fails a task at its first lost worker
    dask.config.set({"distributed.scheduler.allowed-failures": 0})
    async with LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=2,
        threads_per_worker=1,
        host="127.0.0.1",
        scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.ERROR,
        asynchronous=True,
    ) as cluster:
        on_dask = aflow.executors.Dask(cluster=cluster)
        try:
            await twice("3. on the workers of a Dask cluster", on_dask)
        finally:
            await anyio.to_thread.run_sync(on_dask.close)
    aflow.executors.shutdown()


if __name__ == "__main__":  # (worker processes import this module: run only here)
    anyio.run(main)
