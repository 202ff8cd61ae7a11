"""Checked by ``mypy --strict`` (make lint), never run: running workflows keeps their types.

The README's calls (``aflow.run``, ``aflow.run_sync``, ``rt.run``, ``rt.submit``, an
``@aflow.workflow`` with its parameters, durable or not) give the workflow's result
type, ``Any`` inside it included (``dict[str, Any]`` stays ``dict[str, Any]``, not
``Any``). Every ``# type: ignore[code]`` line must fail.
"""

from __future__ import annotations

from typing import Any, assert_type

import aflow
from aflow import ops
from aflow.patterns import linear_flow as lf


@aflow.task
async def load(order_id: str) -> dict[str, Any]:
    return {"id": order_id}


@aflow.task
async def reserve(order_id: str) -> dict[str, Any]:
    return {"id": order_id}


@aflow.task
async def charge(order: dict[str, Any]) -> dict[str, Any]:
    return order


@aflow.task
async def ship(order: dict[str, Any]) -> str:
    return "shipped"


@aflow.workflow
def order_saga(order_id: str) -> aflow.Canvas[str]:
    return reserve.s(order_id) | charge.s() | ship.s()


@aflow.workflow
def order_data(order_id: str) -> aflow.Canvas[dict[str, Any]]:
    return reserve.s(order_id) | charge.s()


@aflow.workflow
def order_chain(order_id: str) -> aflow.Chain[str]:
    """Annotated with a canvas subclass: the builder is covariant in what it builds."""
    return aflow.chain(reserve.s(order_id), charge.s(), ship.s())


@aflow.workflow
def order_flow(order_id: str) -> lf.Flow:
    return lf.Flow("order").add(load)


def show(event: aflow.Event) -> None:
    pass


async def run_in_the_caller() -> None:
    workflow = load.s("o-1") | charge.s()
    assert_type(await workflow, dict[str, Any])
    assert_type(await aflow.run(workflow, max_concurrency=64, limits={"db": 5}), dict[str, Any])
    assert_type(await aflow.run(load.s("o-1"), timeout=60, on_event=show), dict[str, Any])
    assert_type(await aflow.run(workflow, on_error="continue"), dict[str, Any])
    assert_type(await aflow.run(order_saga(order_id="o-1")), str)
    await aflow.run(workflow, max_concurrency="64")  # type: ignore[call-overload]
    await aflow.run(load)  # type: ignore[call-overload]  # a task, not a signature
    await aflow.run(object())  # type: ignore[call-overload]
    await aflow.run(order_saga(order="o-1"))  # type: ignore[call-arg]


def run_from_a_script() -> None:
    assert_type(aflow.run_sync(load.s("o-1") | charge.s()), dict[str, Any])
    assert_type(aflow.run_sync(order_data, params={"order_id": "o-1"}), dict[str, Any])
    aflow.run_sync(load)  # type: ignore[call-overload]


async def in_a_runtime() -> None:
    async with aflow.Runtime(max_concurrency=64, limits={"payments": 4}) as rt:
        workflow = load.s("o-1") | charge.s()
        assert_type(await rt.run(workflow), dict[str, Any])
        run = await rt.submit(workflow, on_event=show)
        assert_type(run, aflow.Run[dict[str, Any]])
        assert_type(await run.result(), dict[str, Any])
        assert_type(await rt.run(order_saga(order_id="o-1"), timeout=5), str)
        # keyword parameters are for an @aflow.workflow only
        await rt.submit(workflow, order_id="o-1")  # type: ignore[call-overload]
        await rt.run(load)  # type: ignore[call-overload]


async def durable() -> None:
    async with aflow.Runtime(store="sqlite:///runs.db", recover=True) as rt:
        # the workflow and its parameters: the result type holds (the names are not checked)
        run = await rt.submit(order_saga, order_id="o-42", idempotency_key="order-o-42")
        assert_type(run, aflow.Run[str])
        assert_type(await run.result(), str)
        assert_type(await rt.run(order_saga, order_id="o-42"), str)
        assert_type(
            await rt.submit(order_data, params={"order_id": "o-1"}), aflow.Run[dict[str, Any]]
        )
        assert_type(await rt.run(order_chain, order_id="o-1"), str)
        # what a call of it built: the call checks the parameters' names and types
        assert_type(await rt.submit(order_saga(order_id="o-1")), aflow.Run[str])
        assert_type(await rt.run(order_saga(order_id="o-1"), idempotency_key="order-o-1"), str)
        await rt.submit(order_saga(order="o-1"))  # type: ignore[call-arg]
        await rt.run(order_saga(order_id=1))  # type: ignore[arg-type]
        await rt.run(order_saga())  # type: ignore[call-arg]
    value = await aflow.run(
        order_saga,
        params={"order_id": "o-42"},
        store="sqlite:///runs.db",
        idempotency_key="order-o-42",
    )
    assert_type(value, str)


async def other_workflows(graph: aflow.Graph) -> None:
    flow = lf.Flow("f").add(load)
    assert_type(await aflow.run(flow), dict[str, Any])
    assert_type(await aflow.run(order_flow, params={"order_id": "o-1"}), Any)
    assert_type(await aflow.run(graph), Any)
    assert_type(await aflow.run(aflow.compile(load.s("o-1"))), Any)
    assert_type(await aflow.run(ops.Workflow("w")), Any)
    async with aflow.Runtime() as rt:
        assert_type(await rt.run(flow), dict[str, Any])
        assert_type(await rt.submit(flow), aflow.Run[dict[str, Any]])
        assert_type(await rt.submit(graph), aflow.Run[Any])
