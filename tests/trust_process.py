"""Processes for the several-process tests of issue 14 (tests/test_trust.py).

``python -m tests.trust_process MODE STORE ...`` where MODE is:

* ``owner WORKFLOW LEASE``: submit ``tests.trust_workflows.WORKFLOW`` (start=1), print
  the run id, then wait for its end. SIGTERM cancels the main task, as uvicorn stops
  a service's lifespan in a rolling deploy; the runtime then shuts down.
* ``recoverer RUN_ID LEASE MAX_RECOVERIES``: a long-lived ``Runtime(recover=True)``.
  It prints ``took RUN_ID`` once it drives the run, then ``ended STATUS`` once the
  store has the run finished or parked, and exits.

Every line is flushed at once: the test reads them to know where the process is.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import anyio

import aflow

from . import trust_workflows as tw


async def owner(url: str, workflow: str, lease: float) -> None:
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    async with aflow.Runtime(store=url, lease=lease) as rt:
        run = await rt.submit(getattr(tw, workflow), start=1)
        print(run.id, flush=True)
        await run.wait()


async def recoverer(url: str, run_id: str, lease: float, max_recoveries: int) -> None:
    async with aflow.Runtime(
        store=url, recover=True, lease=lease, max_recoveries=max_recoveries
    ) as rt:
        print("ready", flush=True)
        assert rt.store is not None
        took = False
        while True:
            if not took:
                try:
                    rt.get(run_id)  # driven here (or driven here, and ended)
                except KeyError:
                    pass
                else:
                    took = True
                    print(f"took {run_id}", flush=True)
            status = (await rt.store.get_run(run_id)).status
            if status in ("succeeded", "failed", "reverted", "cancelled", "parked"):
                print(f"ended {status}", flush=True)
                return
            await anyio.sleep(0.01)


if __name__ == "__main__":
    mode, url, *rest = sys.argv[1:]
    if mode == "owner":
        try:
            asyncio.run(owner(url, rest[0], float(rest[1])))
        except asyncio.CancelledError:  # SIGTERM: the runtime has shut down
            print("stopped", flush=True)
    else:
        asyncio.run(recoverer(url, rest[0], float(rest[1]), int(rest[2])))
