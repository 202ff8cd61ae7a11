"""Workflows for tests/test_trust_hostile.py (importable by a resumed run's process)."""

from __future__ import annotations

from typing import Any

import anyio

import aflow

from .durable_workflows import bump

#: idempotency keys the flow's charge step saw, in order (one process: the test's)
CHARGE_KEYS: list[str] = []


class Charge(aflow.Task):
    """Declined at its first attempt (undone), hangs at its second, pays at the third."""

    async def execute(self, attempt: int) -> str:
        CHARGE_KEYS.append(aflow.current_step().idempotency_key)
        n = await bump("charge")
        if n == 1:
            raise OSError("declined, try again")
        if n == 2:
            await anyio.sleep_forever()  # until its runtime shuts down
        return "paid"

    async def revert(self, attempt: int, **kwargs: Any) -> None:
        await bump("refund")


@aflow.workflow
def pay_with_retries(start: int) -> Any:
    """A TaskFlow flow whose 'pay' sub-flow is retried (an undone attempt is new work)."""
    from aflow.patterns import linear_flow as lf

    pay = lf.Flow("pay", retry=aflow.retry.Times(3, provides="attempt")).add(Charge())
    return lf.Flow("order").add(pay).as_canvas()


@aflow.task
async def bad_path(x: int) -> int:
    raise ValueError("cannot read [/etc/aflow.conf]")


@aflow.workflow
def fails_with_brackets(start: int) -> Any:
    """Fails with an error whose text holds a path in square brackets."""
    return bad_path.s(start)
