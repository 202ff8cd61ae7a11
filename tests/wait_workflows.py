"""Workflows for the durable-wait tests (issue 22); importable by the processes the tests
start and kill. Side effects are counted as in tests/durable_workflows.py."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import anyio

import aflow
import aflow.retry

from .durable_workflows import _count, hang


@aflow.task
async def charge(order: str) -> str:
    _count("charge")
    return f"charged {order}"


@charge.revert
async def refund(order: str) -> None:
    _count("refund")


@aflow.task
async def ship(payment: Any) -> str:
    _count("ship")
    if os.environ.get("AFLOW_HANG") == "ship":
        await hang("ship")
    return f"shipped after {payment}"


@aflow.workflow
def pay_then_ship(order: str, days: float = 14) -> Any:
    """Charge, wait up to ``days`` for the provider's ``paid`` webhook, ship; a refund
    if it never comes."""
    return charge.s(order) | aflow.wait_for("paid", timeout=timedelta(days=days)) | ship.s()


@aflow.task
async def publish_link(order: str) -> str:
    url = f"https://pay.example/{order}"
    await aflow.set_event("checkout_url", url)
    return url


@aflow.workflow
def link_then_wait(order: str) -> Any:
    """Publish a checkout link, then wait (no deadline) for ``paid``."""
    return publish_link.s(order) | aflow.wait_for("paid") | ship.s()


@aflow.task
async def stamp(x: Any) -> str:
    _count("stamp")
    return f"stamped {x}"


@aflow.workflow
def nap_then_stamp(seconds: float) -> Any:
    """A durable timer, then a step counted once per run."""
    return charge.s("nap") | aflow.sleep(seconds) | stamp.s()


@aflow.workflow
def two_waits(order: str) -> Any:
    """Two waits for the same event in a row: each takes its own message."""
    return charge.s(order) | aflow.wait_for("item") | aflow.wait_for("item") | ship.s()


@aflow.workflow
def either(order: str) -> Any:
    """Two waits at once (a group): the run is unloaded only when both wait."""
    return charge.s(order) | aflow.group(aflow.wait_for("a"), aflow.wait_for("b")) | ship.s()


@aflow.task
async def approval(charged: str) -> Any:
    return await aflow.receive("approved", timeout=timedelta(days=1))


@aflow.workflow
def receive_then_ship(order: str) -> Any:
    """A body that waits in ``aflow.receive`` (it is not unloaded)."""
    return charge.s(order) | approval.s() | ship.s()


GATE: dict[str, anyio.Event] = {}


@aflow.task
async def gated_charge(order: str) -> str:
    GATE["entered"].set()
    await GATE["open"].wait()
    _count("charge")
    return f"charged {order}"


@aflow.workflow
def gate_then_pay(order: str) -> Any:
    """A charge held at a gate, then a wait for ``paid`` (no deadline), then ship."""
    return gated_charge.s(order) | aflow.wait_for("paid") | ship.s()


@aflow.workflow
def pay_with_attempt_timeout(order: str) -> Any:
    """A wait node with an attempt timeout of its own (60 s), not a wait timeout."""
    return charge.s(order) | aflow.wait_for("paid").set(timeout=60) | ship.s()


class Approve(aflow.Task):
    """A TaskFlow task that publishes that it asked, then receives the answer."""

    default_provides = "answer"

    async def execute(self) -> Any:
        await aflow.set_event("asked", True)
        return await aflow.receive("approved", timeout=timedelta(days=1))


@aflow.workflow
def approval_in_a_retried_flow() -> Any:
    """The receive runs in a nested run (the retried inner flow's)."""
    from aflow.patterns import linear_flow as lf

    inner = lf.Flow("inner", retry=aflow.retry.Times(2)).add(Approve())
    return lf.Flow("outer").add(inner)
