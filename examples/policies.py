"""Failure policies: partial success, keep-going runs, chord errbacks and run deadlines.

Run it with ``python examples/policies.py``.
"""

from __future__ import annotations

from typing import Any

import anyio

import aflow


class Unreachable(Exception):
    pass


@aflow.task
async def fetch_price(shop: str) -> float:
    """Ask one shop for a price; some shops are down."""
    await anyio.sleep(0.01)
    if shop in ("shop-c", "shop-e"):
        raise Unreachable(f"{shop} did not answer")
    return {"shop-a": 9.5, "shop-b": 8.75, "shop-d": 10.0}[shop]


@aflow.task
async def cheapest(prices: list[float | None]) -> float:
    return min(p for p in prices if p is not None)


@aflow.task
async def report_failures(
    error: BaseException, *, failures: dict[str, aflow.Failure], results: dict[str, Any]
) -> None:
    """A chord errback: runs once, with every failure and the results that did arrive."""
    print(f"  errback: {len(failures)} failed ({', '.join(failures)}), {len(results)} answered")


@aflow.task
async def slow_step() -> None:
    await anyio.sleep(10)


async def main() -> None:
    shops = ["shop-a", "shop-b", "shop-c", "shop-d", "shop-e"]

    print("1. partial success: 3 of 5 shops are enough")
    quotes = aflow.group(fetch_price.s(s) for s in shops).set(min_success=3)
    print(f"  prices: {await quotes}")  # failed members leave None in their place
    print(f"  cheapest: {await (quotes | cheapest.s())}")

    print("2. below the threshold: a GroupFailed holding each shop's own error")
    try:
        await aflow.group(fetch_price.s(s) for s in shops).set(success_ratio=0.8)
    except* Unreachable as group:
        print(f"  {[str(e) for e in group.exceptions]}")

    print("3. on_error='continue': independent branches finish, then the run raises")
    async with aflow.Runtime() as rt:
        run = await rt.submit(aflow.group(fetch_price.s(s) for s in shops), on_error="continue")
        with anyio.move_on_after(5):
            status = await run.wait()
        print(f"  status {status.value}; results {run.results()}")
        print(f"  failures {sorted(run.failures())}")

    print("4. a chord errback sees every failure once")
    chord = aflow.chord((fetch_price.s(s) for s in shops), cheapest.s())
    try:
        await aflow.run(chord.on_error(report_failures.s()), on_error="continue")
    except aflow.errors.GroupFailed as exc:
        print(f"  raised {type(exc).__name__}: {exc}")

    print("5. a run deadline")
    try:
        await aflow.run(slow_step.s(), timeout=0.05)
    except aflow.errors.RunTimeout as exc:
        print(f"  {exc}")


if __name__ == "__main__":
    anyio.run(main)
