"""Charge, wait for the payment provider's webhook, ship; refund if it never comes.

    create_charge (revert: refund) -> wait_for("payment", timeout) -> check_payment -> ship

``create_charge`` asks the (pretend) provider for a charge and publishes its checkout
link on the run (``aflow.set_event``): the web handler hands the link back while the
run goes on. The run then waits for the provider's webhook, which the service sends to
it (``rt.send``). With a store the waiting run is recorded ``waiting`` and unloaded (no
task, no lease; a restart or another process takes it up when the webhook comes). A
confirmation ships the order; a declined payment, or no word within the deadline (a
``WaitTimeout``), fails the run, and the charge is refunded.

``router`` is this saga's part of the FastAPI service (``examples/fastapi_app.py``):
``POST /checkout`` starts a run and answers with its link; ``POST /webhooks/payments``
is the endpoint the provider calls (its signature checked, a redelivery taken once).

``python examples/payment_webhook.py`` runs three orders in a runtime with a SQLite
store: one confirmed (its webhook delivered twice), one whose webhook came before the
run waited, one that hears nothing and is refunded.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, HTTPException, Request
from pydantic import BaseModel

import aflow
import aflow.fastapi
from aflow.errors import RunEnded, RunNotFound, WaitTimeout
from aflow.fastapi import RuntimeDep

#: the secret the provider signs its webhooks with (from its dashboard, in real life)
WEBHOOK_SECRET = os.environ.get("PAYMENTS_WEBHOOK_SECRET", "whsec_demo").encode()


class PaymentDeclined(Exception):
    """The provider says the customer did not pay."""


@aflow.task
async def create_charge(order: dict[str, Any]) -> dict[str, Any]:
    charge = {"charge_id": f"ch_{order['id']}", "amount": order["total"]}
    await aflow.set_event("checkout_url", f"https://pay.example/checkout/{charge['charge_id']}")
    return charge


@create_charge.revert
async def refund(order: dict[str, Any], *, result: Any) -> None:
    if not isinstance(result, aflow.Failure):
        print(f"undo: refunded {result['amount']:.2f} ({result['charge_id']})", flush=True)


@aflow.task
async def check_payment(event: dict[str, Any], order: dict[str, Any]) -> dict[str, Any]:
    """The provider's word on the charge: paid (the amount charged), or declined."""
    if event["type"] != "payment.succeeded":
        raise PaymentDeclined(f"order {order['id']}: {event['type']}")
    if event["amount"] != order["total"]:
        raise PaymentDeclined(f"order {order['id']}: paid {event['amount']}, not {order['total']}")
    return {"order": order["id"], "paid_by": event["id"], "amount": event["amount"]}


@aflow.task(retries=2, retry_on=ConnectionError)
async def ship(payment: dict[str, Any], order: dict[str, Any]) -> dict[str, Any]:
    return {**payment, "tracking": f"trk-{order['id']}"}


@aflow.workflow
def paid_order(order: dict[str, Any], confirm_within: float = 3600.0) -> aflow.Canvas[Any]:
    """One order's payment saga; ``confirm_within`` seconds for the provider's word."""
    return (
        create_charge.s(order)
        | aflow.wait_for("payment", timeout=timedelta(seconds=confirm_within))
        | check_payment.s(order)
        | ship.s(order)
    )


# --- the service's side: start a checkout, take the provider's webhooks --------------------


class Checkout(BaseModel):
    id: str
    total: float
    #: seconds the customer has to pay
    confirm_within: float = 3600.0


class ProviderEvent(BaseModel):
    """What the provider posts to the webhook (signed: ``X-Signature``)."""

    id: str
    type: str
    order_id: str
    amount: float


def sign(body: bytes) -> str:
    """The provider's signature of a webhook's body."""
    return hmac.new(WEBHOOK_SECRET, body, hashlib.sha256).hexdigest()


def run_key(order_id: str) -> str:
    """An order's run is submitted with this idempotency key: a webhook finds it by it."""
    return f"checkout-{order_id}"


router = APIRouter(tags=["payments"])


@router.post("/checkout", status_code=202)
async def checkout(order: Checkout, rt: RuntimeDep) -> dict[str, Any]:
    """Start the order's run (once per order) and answer with its checkout link as soon
    as the run has published it; the run goes on waiting for the payment."""
    run = await rt.submit(
        paid_order(order.model_dump(exclude={"confirm_within"}), order.confirm_within),
        idempotency_key=run_key(order.id),
    )
    link = await rt.get_event(run.id, "checkout_url", timeout=10)
    return {"run_id": run.id, "checkout_url": link, "status": f"/runs/{run.id}"}


@router.post("/webhooks/payments")
async def payment_webhook(
    request: Request, rt: RuntimeDep, x_signature: Annotated[str, Header()] = ""
) -> dict[str, Any]:
    """The provider's webhook: checked, then sent to the order's run. A redelivery (same
    event id) is answered 200 and not taken twice; so is a word that came too late."""
    body = await request.body()
    if not hmac.compare_digest(sign(body), x_signature):
        raise HTTPException(401, "bad signature")
    event = ProviderEvent.model_validate_json(body)
    try:
        delivered = await rt.send(
            None,
            "payment",
            event.model_dump(),
            message_id=event.id,
            idempotency_key=run_key(event.order_id),
        )
    except RunNotFound as exc:
        raise HTTPException(404, f"no checkout for order {event.order_id!r}") from exc
    except RunEnded as exc:  # (a real service would refund a payment that came too late)
        return {"delivered": False, "ended": str(exc)}
    return {"delivered": delivered}


# --- the demo: three orders in one runtime, with a SQLite store ---------------------------


def provider_event(order_id: str, amount: float, kind: str = "payment.succeeded") -> Any:
    return {"id": f"evt_{order_id}", "type": kind, "order_id": order_id, "amount": amount}


async def until_waiting(rt: aflow.Runtime, run_id: str) -> aflow.RunReport:
    """(For the demo's printout: a service does not wait for this.)"""
    with anyio.fail_after(10):
        while (report := await rt.report(run_id)).status != "waiting":  # noqa: ASYNC110
            await anyio.sleep(0.01)
    return report


async def main() -> None:
    # Run as a script this file is __main__, which another process could not import:
    # take the workflow from the module under its real name.
    from examples.payment_webhook import paid_order

    with tempfile.TemporaryDirectory() as folder:
        async with aflow.Runtime(store=f"sqlite:///{folder}/payments.db") as rt:
            order = {"id": "o-1", "total": 20.0}
            run = await rt.submit(paid_order(order), idempotency_key=run_key("o-1"))
            print("checkout link:", await rt.get_event(run.id, "checkout_url", timeout=10))
            report = await until_waiting(rt, run.id)
            (wait,) = report.waits
            assert wait.deadline is not None
            deadline = datetime.fromtimestamp(wait.deadline, UTC)
            print(f"run {report.status} for {wait.event!r} until {deadline:%Y-%m-%d %H:%M} UTC")
            for attempt in (1, 2):  # the provider delivers its webhook twice
                sent = await rt.send(
                    run.id, "payment", provider_event("o-1", 20.0), message_id="evt_o-1"
                )
                print(f"webhook delivery {attempt}: taken={sent}")
            print("o-1:", await run.result())

            early = await rt.submit(paid_order({"id": "o-2", "total": 5.0}))
            await rt.send(early.id, "payment", provider_event("o-2", 5.0))  # before it waits
            print("o-2:", await early.result())

            late = await rt.submit(paid_order({"id": "o-3", "total": 7.5}, confirm_within=0.2))
            try:
                await late.result()
            except WaitTimeout as exc:
                print(f"o-3: {exc}; run {(await rt.report(late.id)).status}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    anyio.run(main)
