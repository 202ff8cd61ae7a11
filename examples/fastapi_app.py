"""An order service on FastAPI: a saga per request, runs you can follow over HTTP.

    validate -> group(reserve stock, quote shipping) -> charge -> ship -> notify

* ``POST /orders`` runs the saga inside the request (``rt.run``): the answer is the
  receipt; a rejected address answers 422 after the charge was refunded and the stock
  released (and says what could not be undone, when a refund fails too); a client
  that goes away mid-saga cancels the run, which unwinds.
* ``POST /orders/async`` answers 202 at once with the run's id; ``GET /runs/{id}``
  reports it (status, steps, errors as JSON), ``GET /runs/{id}/events`` streams its
  progress (server-sent events, from the start), ``GET /runs`` lists runs.
* ``POST /checkout`` starts a payment saga that waits for the provider's webhook
  (``POST /webhooks/payments``): it ships on confirmation and refunds if no word comes
  in time (``examples/payment_webhook.py``). ``POST /runs/{id}/send/{event}`` sends
  any run an event (guard it as you would cancel).
* ``GET /aflow/`` is the runs dashboard (``aflow.web``): runs, their graphs live, each
  step's detail; cancel, resume, retry and fork for callers ``allow_operator`` lets
  through (from this machine, or with the ``operator`` cookie the service is given).
* ``AFLOW_STORE=sqlite:///orders.db`` makes the runs durable: a retried request with
  the same order id attaches to the first run, and a run in flight when the service
  stops is taken up by the next process.

Serve it with ``uvicorn examples.fastapi_app:app``; ``python examples/fastapi_app.py``
starts it on 127.0.0.1, places four orders over HTTP and prints what it sees.
"""

from __future__ import annotations

import hmac
import json
import os
import socket
import sys
from typing import Any

import anyio
import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import aflow
import aflow.fastapi
import aflow.web
from aflow.fastapi import RuntimeDep

if __name__ == "__main__":  # run as a script: import the examples package as uvicorn does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from examples import payment_webhook


class Order(BaseModel):
    id: str
    items: list[str]
    total: float
    address: str
    email: str
    #: seconds the carrier takes (to watch a run in flight)
    ship_delay: float = 0.0


class AddressRejected(Exception):
    """The carrier cannot deliver there (retrying will not help)."""


@aflow.task
async def validate(order: dict[str, Any]) -> dict[str, Any]:
    if not order["items"]:
        raise ValueError(f"order {order['id']} has no items")
    return order


@aflow.task(limit="inventory")
async def reserve_stock(order: dict[str, Any]) -> str:
    await anyio.sleep(0.01)
    return f"rsv-{order['id']}"


@reserve_stock.revert
async def release_stock(order: dict[str, Any], *, result: Any) -> None:
    if not isinstance(result, aflow.Failure):
        print(f"undo: released {result}", flush=True)


@aflow.task
async def quote_shipping(order: dict[str, Any]) -> float:
    return round(4.5 + 0.5 * len(order["items"]), 2)


@aflow.task(limit="payments")
async def charge(checks: list[Any], order: dict[str, Any]) -> dict[str, Any]:
    reservation, shipping = checks
    return {
        "receipt": f"rcpt-{order['id']}",
        "amount": order["total"] + shipping,
        "reservation": reservation,
    }


@charge.revert
async def refund(checks: list[Any], order: dict[str, Any], *, result: Any) -> None:
    if isinstance(result, aflow.Failure):
        return
    if order["total"] >= 1000:
        raise ConnectionRefusedError("the payment provider refused the refund")
    print(f"undo: refunded {result['amount']:.2f} ({result['receipt']})", flush=True)


@aflow.task(retries=2, retry_on=ConnectionError)
async def ship(receipt: dict[str, Any], order: dict[str, Any]) -> dict[str, Any]:
    print(f"carrier: booking {order['id']}", flush=True)
    await anyio.sleep(order["ship_delay"])
    if order["address"] == "nowhere":
        raise AddressRejected(f"the carrier cannot deliver to {order['address']!r}")
    return {**receipt, "tracking": f"trk-{order['id']}"}


@aflow.task
async def notify(receipt: dict[str, Any], email: str) -> dict[str, Any]:
    return {**receipt, "notified": email}


@aflow.workflow
def order_saga(order: dict[str, Any]) -> aflow.Canvas[dict[str, Any]]:
    """The saga of one order (its parameters are JSON: a durable run rebuilds it)."""
    return (
        validate.s(order)
        | aflow.group(reserve_stock.s(), quote_shipping.s())
        | charge.s(order)
        | ship.s(order)
        | notify.s(order["email"])
    )


app = FastAPI(
    title="orders",
    lifespan=aflow.fastapi.lifespan(
        store=os.environ.get("AFLOW_STORE") or None,
        limits={"payments": 8, "inventory": 16},
        shutdown_timeout=float(os.environ.get("AFLOW_SHUTDOWN_TIMEOUT", "20")),
    ),
)
app.include_router(aflow.fastapi.runs_router(), prefix="/runs")
app.include_router(payment_webhook.router)
aflow.fastapi.add_exception_handlers(app)  # handlers see the root failure of a run
app.add_middleware(aflow.fastapi.CancelOnDisconnect)  # a client that leaves stops its run


def allow_operator(request: Request, action: str, run_id: str | None) -> bool:
    """Who may cancel, resume, retry or fork runs from the dashboard: your auth goes here
    (a session, your SSO). This one: with ``ORDERS_OPERATOR_TOKEN`` set, a browser that
    carries it in its ``operator`` cookie; without, a browser on this machine that no
    proxy forwarded (behind a local proxy every visitor would come from here)."""
    token = os.environ.get("ORDERS_OPERATOR_TOKEN")
    if token:
        given = request.cookies.get("operator", "")
        return hmac.compare_digest(given.encode(), token.encode())
    forwarded = "x-forwarded-for" in request.headers or "forwarded" in request.headers
    local = request.client is not None and request.client.host in ("127.0.0.1", "::1")
    return local and not forwarded


app.mount("/aflow", aflow.web.app(authorize=allow_operator, title="orders"))


@app.exception_handler(AddressRejected)
async def address_rejected(request: Request, exc: Exception) -> JSONResponse:
    """The carrier said no: the order was undone, except what a failed revert lists (a
    refund that failed too reaches here through CompensationFailed)."""
    not_undone = [failure.step for failure in aflow.fastapi.revert_failures(exc)]
    return JSONResponse({"detail": str(exc), "not_undone": not_undone}, status_code=422)


@app.post("/orders")
async def place_order(order: Order, rt: RuntimeDep) -> dict[str, Any]:
    """The saga in the request: the receipt, or the failure after it was undone."""
    return await rt.run(order_saga(order.model_dump()), idempotency_key=f"order-{order.id}")


@app.post("/orders/async", status_code=202)
async def submit_order(order: Order, rt: RuntimeDep) -> dict[str, str]:
    """The saga in the background: its run id, to follow at /runs/{id}."""
    run = await rt.submit(order_saga(order.model_dump()), idempotency_key=f"order-{order.id}")
    return {"run_id": run.id, "status": f"/runs/{run.id}", "events": f"/runs/{run.id}/events"}


# --- the demo: serve on 127.0.0.1 and place orders over HTTP ------------------------------


def order(
    id: str, address: str = "1 Main St", delay: float = 0.0, total: float = 20.0
) -> dict[str, Any]:
    return Order(
        id=id, items=["book"], total=total, address=address, email="a@b.c", ship_delay=delay
    ).model_dump()


async def demo() -> None:
    # a socket bound here: requests wait in its backlog until the server serves them
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [listener])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            done = await http.post("/orders", json=order("o-1"))
            print("POST /orders          ", done.status_code, done.json())
            rejected = await http.post("/orders", json=order("o-2", address="nowhere"))
            print("POST /orders (nowhere)", rejected.status_code, rejected.json())
            big = await http.post("/orders", json=order("o-9", address="nowhere", total=1500))
            print("POST /orders (refund fails too)", big.status_code, big.json())
            accepted = (await http.post("/orders/async", json=order("o-3", delay=0.05))).json()
            print("POST /orders/async    ", accepted)
            async with http.stream("GET", accepted["events"]) as events:
                async for line in events.aiter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        print("  event", event.get("name", "end"), event.get("node") or "")
            report = (await http.get(accepted["status"])).json()
            steps = ", ".join(f"{s['key']}={s['state']}" for s in report["steps"])
            print("GET /runs/{id}        ", report["status"], steps)
            await pay_over_http(http)
            graph = (await http.get(f"/aflow/api/runs/{accepted['run_id']}/graph")).json()
            drawn = ", ".join(f"{n['key']}={n['state']}" for n in graph["nodes"])
            print("GET /aflow/api/runs/{id}/graph", drawn)
            page = await http.get("/aflow/")
            print(f"dashboard: http://127.0.0.1:{port}/aflow/ ({page.status_code})")
        server.should_exit = True


async def pay_over_http(http: httpx.AsyncClient) -> None:
    """A checkout paid through the webhook (delivered twice), and one never paid."""
    started = (await http.post("/checkout", json={"id": "o-7", "total": 12.0})).json()
    print("POST /checkout        ", started["checkout_url"])
    body = json.dumps(payment_webhook.provider_event("o-7", 12.0)).encode()
    signed = {"X-Signature": payment_webhook.sign(body), "Content-Type": "application/json"}
    for _ in range(2):  # the provider delivers it twice
        hook = await http.post("/webhooks/payments", content=body, headers=signed)
        print("POST /webhooks/payments", hook.status_code, hook.json())
    forged = await http.post("/webhooks/payments", content=body, headers={"X-Signature": "x"})
    print("POST /webhooks/payments (forged)", forged.status_code)
    print("  o-7", await settled(http, started["run_id"]))
    unpaid = {"id": "o-8", "total": 3.0, "confirm_within": 0.2}
    started = (await http.post("/checkout", json=unpaid)).json()
    print("  o-8 (never paid)", await settled(http, started["run_id"]))


async def settled(http: httpx.AsyncClient, run_id: str) -> tuple[str, Any]:
    """The run's status and result once it has ended (the demo polls; a client could
    follow /runs/{id}/events instead)."""
    with anyio.fail_after(10):
        while not (report := (await http.get(f"/runs/{run_id}")).json())["finished"]:  # noqa: ASYNC110
            await anyio.sleep(0.02)
    return report["status"], report["result"]


if __name__ == "__main__":
    anyio.run(demo)
