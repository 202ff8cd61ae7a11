"""The ASGI app that ``benchmarks/http.py`` serves with uvicorn: the order saga, both ways.

Served as ``uvicorn benchmarks.http_app:app`` (from the repository's root). The
saga is ``benchmarks/ab.py``'s: validate, then reserve stock and quote shipping at
once, charge, ship; reserve and charge have reverts. Every step body is one plain
async function below, awaiting ``anyio.sleep(0)`` once, and both versions call the
very same functions: the aflow tasks are ``aflow.task(fn)`` of them, the reverts
registered with ``task.revert(fn)``.

* ``/hand/saga``: hand-written, ``asyncio.gather`` for the group, try/except
  compensation (reverts in reverse order, consumers first, as aflow does).
* ``/aflow/saga``: the canvas built per request and ``await aflow.run(canvas)``.
* ``/aflow/runtime``: the same canvas, ``await rt.run(canvas)`` on one
  ``aflow.Runtime`` that the app's lifespan (``aflow.fastapi.lifespan()``) enters and
  leaves.
* ``/integrated/saga``: the same, as the README's web-service section writes it: the
  runtime from the ``RuntimeDep`` dependency, and ``aflow.fastapi.CancelOnDisconnect``
  watching the request (so the middleware's cost is in the figure).

``?fail=1`` makes the last step (ship) raise: the reverts run (refund, then
release) and the endpoint answers 409. ``/stats`` tells how many reverts ran, so
a check can see that compensation really happened in every version.
"""

# Each step awaits anyio.sleep(0), as in issue 16's measurements and benchmarks/ab.py.
# ruff: noqa: ASYNC115

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import aflow
import aflow.fastapi
from aflow.fastapi import RuntimeDep

#: reverts that ran, by name (the same counter for every version)
REVERTED = {"release": 0, "refund": 0}


class AddressRejected(Exception):
    """The carrier refuses the order: the saga's last step fails."""


# --- the step bodies, shared by both versions ---------------------------------------------


async def validate(order: str) -> str:
    await anyio.sleep(0)
    return order


async def reserve(order: str) -> str:
    await anyio.sleep(0)
    return f"rsv-{order}"


async def release(order: str, *, result: Any) -> None:
    await anyio.sleep(0)
    REVERTED["release"] += 1


async def quote(order: str) -> int:
    await anyio.sleep(0)
    return 5


async def charge(parts: Sequence[Any]) -> str:
    await anyio.sleep(0)
    return f"rcpt-{parts[0]}"


async def refund(parts: Sequence[Any], *, result: Any) -> None:
    await anyio.sleep(0)
    REVERTED["refund"] += 1


async def ship(receipt: str, fail: bool) -> str:
    await anyio.sleep(0)
    if fail:
        raise AddressRejected(f"carrier cannot deliver {receipt}")
    return f"shipped {receipt}"


# --- hand-written ---------------------------------------------------------------------------


async def saga_by_hand(order: str, fail: bool) -> str:
    checked = await validate(order)
    reverts: list[tuple[Any, Any, Any]] = []
    try:
        parts = await asyncio.gather(reserve(checked), quote(checked))
        reverts.append((release, checked, parts[0]))
        receipt = await charge(parts)
        reverts.append((refund, parts, receipt))
        return await ship(receipt, fail)
    except Exception:
        for revert, arg, result in reversed(reverts):
            await revert(arg, result=result)
        raise


# --- aflow ----------------------------------------------------------------------------------

validate_t = aflow.task(validate)
reserve_t = aflow.task(reserve)
reserve_t.revert(release)
quote_t = aflow.task(quote)
charge_t = aflow.task(charge)
charge_t.revert(refund)
ship_t = aflow.task(ship)


def saga_canvas(order: str, fail: bool) -> aflow.Canvas[str]:
    """The same saga as a canvas; the group's list goes to charge, as in the hand version."""
    return (
        validate_t.s(order)
        | aflow.group(reserve_t.s(), quote_t.s())
        | charge_t.s()
        | ship_t.s(fail)
    )


# --- the app --------------------------------------------------------------------------------


# The Runtime of /aflow/runtime and /integrated/saga: aflow.fastapi's lifespan (which also
# puts it on app.state.aflow_runtime).
app = FastAPI(lifespan=aflow.fastapi.lifespan(), openapi_url=None, docs_url=None, redoc_url=None)


def rejected(exc: AddressRejected) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=409)


@app.get("/hand/saga", response_model=None)
async def hand(order: str = "o-1", fail: bool = False) -> dict[str, str] | JSONResponse:
    try:
        return {"result": await saga_by_hand(order, fail)}
    except AddressRejected as exc:
        return rejected(exc)


@app.get("/aflow/saga", response_model=None)
async def aflow_run(order: str = "o-1", fail: bool = False) -> dict[str, str] | JSONResponse:
    try:
        return {"result": await aflow.run(saga_canvas(order, fail))}
    except AddressRejected as exc:
        return rejected(exc)


@app.get("/aflow/runtime", response_model=None)
async def aflow_runtime(
    request: Request, order: str = "o-1", fail: bool = False
) -> dict[str, str] | JSONResponse:
    rt: aflow.Runtime = request.app.state.aflow_runtime
    try:
        return {"result": await rt.run(saga_canvas(order, fail))}
    except AddressRejected as exc:
        return rejected(exc)


# /integrated: what the README's web-service section writes: the runtime from RuntimeDep,
# and CancelOnDisconnect, so a client that leaves stops its run (the middleware watches
# these requests only: the other endpoints pay one call of `when`).
@app.get("/integrated/saga", response_model=None)
async def integrated_saga(
    rt: RuntimeDep, order: str = "o-1", fail: bool = False
) -> dict[str, str] | JSONResponse:
    try:
        return {"result": await rt.run(saga_canvas(order, fail))}
    except AddressRejected as exc:
        return rejected(exc)


app.add_middleware(
    aflow.fastapi.CancelOnDisconnect, when=lambda scope: scope["path"].startswith("/integrated")
)


@app.get("/stats")
async def stats() -> dict[str, int]:
    return dict(REVERTED)
