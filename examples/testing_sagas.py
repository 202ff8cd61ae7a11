"""Testing a saga: virtual time, planted failures, captured events, and cancellation.

Run it with ``python examples/testing_sagas.py``: each check prints what it proved.
The same helpers (``aflow.testing``) work inside pytest-asyncio tests.
"""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel

import aflow
from aflow.testing import FakeClock, inject_failure

ledger: list[str] = []


class Declined(Exception):
    pass


@aflow.task
async def reserve(order: str) -> str:
    ledger.append(f"reserve {order}")
    return f"rsv-{order}"


@reserve.revert
async def release(order: str, result: object) -> None:
    ledger.append(f"release {order}")


@aflow.task(retries=4, backoff=aflow.Backoff(base=30, factor=2, max=300))
async def charge(reservation: str) -> str:
    """A payment API that is down for the first two attempts."""
    if aflow.current_step().attempt <= 2:
        raise ConnectionError("payment API unavailable")
    ledger.append(f"charge {reservation}")
    return f"rcpt-{reservation}"


@charge.revert
async def refund(reservation: str, result: object) -> None:
    if not isinstance(result, aflow.Failure):
        ledger.append(f"refund {result}")


@aflow.task(timeout=600)
async def ship(receipt: str) -> str:
    """Book a courier; gives up after 10 minutes (measured on the run's clock)."""
    await anyio.lowlevel.checkpoint()
    return "shipped"


def saga(order: str) -> aflow.Canvas[str]:
    return reserve.s(order) | charge.s() | ship.s()


async def main() -> None:
    print("1. retries after 30 s and 60 s, then a courier that never answers: no real waiting")
    async with FakeClock() as clock:
        began = anyio.current_time()
        assert await aflow.run(saga("o-1"), clock=clock) == "shipped"
        assert clock.now() == 30 + 60
        with inject_failure("ship", hang=True):
            try:
                await aflow.run(saga("o-1b"), clock=clock)
            except aflow.errors.TaskTimeout as exc:
                print(f"  {exc}")
        print(f"  virtual {clock.now():.0f} s, real {anyio.current_time() - began:.3f} s")
    assert clock.now() == 2 * (30 + 60) + 600

    print("2. a failure planted at 'ship' unwinds charge, then reserve")
    ledger.clear()
    async with FakeClock() as clock:
        with inject_failure("ship", raises=Declined("courier declined")) as plan:
            try:
                await aflow.run(saga("o-2"), clock=clock)
            except Declined as exc:
                print(f"  raised {exc!r}; {exc.__notes__[-1]}")
    assert plan.hits == 1
    assert ledger == ["reserve o-2", "charge rsv-o-2", "refund rcpt-rsv-o-2", "release o-2"]
    print(f"  ledger: {ledger}")

    print("3. the caller is cancelled mid-run (a client disconnect): the saga still unwinds")
    ledger.clear()
    events: list[str] = []
    shipping = anyio.Event()

    def listen(event: aflow.Event) -> None:
        events.append(event.name)
        if event.node == "ship" and event.name == "task_started":
            shipping.set()

    async with FakeClock() as clock:
        with inject_failure("ship", hang=True):
            handler = asyncio.create_task(aflow.run(saga("o-3"), clock=clock, on_event=listen))
            await shipping.wait()
            handler.cancel()  # what the server does when the client goes away
            try:
                await handler
            except asyncio.CancelledError:
                print("  the handler saw CancelledError, never a result")
    assert ledger[-2:] == ["refund rcpt-rsv-o-3", "release o-3"]
    assert "run_cancelled" in events
    print(f"  ledger: {ledger}")


if __name__ == "__main__":
    anyio.run(main, backend="asyncio")
