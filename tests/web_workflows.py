"""Workflows for the dashboard's tests (tests/test_web_dashboard.py, tests/test_web_browser.py):
importable, so durable runs of them can be resumed, retried and forked.

``GATES`` holds the events a test opens: ``charge`` started / may go on; ``FAIL`` names
the steps that fail while it holds them; ``CALLS`` counts each step's calls."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio

import aflow

GATES: dict[str, anyio.Event] = {}
FAIL: set[str] = set()
CALLS: Counter[str] = Counter()
REVERTED: list[str] = []


def reset() -> None:
    GATES.clear()
    FAIL.clear()
    CALLS.clear()
    REVERTED.clear()


async def _gate(name: str) -> None:
    started = GATES.get(f"{name}-started")
    if started is not None:
        started.set()
    go = GATES.get(f"{name}-go")
    if go is not None:
        await go.wait()


def _step(name: str) -> None:
    CALLS[name] += 1
    if name in FAIL:
        raise RuntimeError(f"{name} failed <on purpose>")


@aflow.task
async def reserve(order: str) -> str:
    _step("reserve")
    await _gate("reserve")
    return f"rsv-{order}"


@reserve.revert
async def release(order: str, *, result: Any) -> None:
    REVERTED.append("reserve")


@aflow.task
async def quote(order: str) -> int:
    _step("quote")
    return 5


@aflow.task
async def charge(parts: list[Any]) -> str:
    _step("charge")
    await _gate("charge")
    return f"paid-{parts[0]}"


@charge.revert
async def refund(parts: list[Any], *, result: Any) -> None:
    await _gate("refund")
    REVERTED.append("charge")


@aflow.task
async def ship(receipt: str) -> str:
    _step("ship")
    await _gate("ship")
    return f"shipped-{receipt}"


@aflow.workflow
def saga(order: str) -> Any:
    """reserve + quote (side by side) -> charge -> ship."""
    return aflow.group(reserve.s(order), quote.s(order)) | charge.s() | ship.s()


@aflow.task
async def item(i: int) -> int:
    _step("item")
    if i % 7 == 3 and "item" in GATES:
        raise ValueError(f"item {i} is odd")
    return i


@aflow.task
async def total(xs: list[int]) -> int:
    return sum(xs)


@aflow.workflow
def fan(n: int) -> Any:
    """n items side by side, then their total."""
    return aflow.chord((item.s(i) for i in range(n)), total.s())


@aflow.task
async def noop(x: int) -> int:
    return x


@aflow.workflow
def wide(n: int) -> Any:
    """n independent steps (a big run)."""
    return aflow.group(noop.s(i) for i in range(n))


@aflow.workflow
def long(n: int) -> Any:
    """n steps one after the other."""
    return aflow.chain(*(noop.s(0) if i == 0 else noop.s() for i in range(n)))
