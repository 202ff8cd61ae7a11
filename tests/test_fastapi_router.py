"""aflow.fastapi: the lifespan, the runtime dependency, the runs router and its event
stream, in process (httpx over ASGI); tests/test_fastapi_app.py runs a real server."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

import aflow
import aflow.fastapi
from aflow.fastapi import RuntimeDep
from tests import durable_workflows as wf
from tests import wait_workflows
from tests.durable_workflows import read_counts

GATE: dict[str, anyio.Event] = {}


@aflow.task
async def first(x: int) -> int:
    return x + 1


@aflow.task
async def gated(x: int) -> int:
    GATE["started"].set()
    await GATE["open"].wait()
    return x * 2


@gated.revert
async def ungated(x: int, *, result: Any) -> None:
    return None


def make_app(store: str | None = None, **options: Any) -> FastAPI:
    app = FastAPI(lifespan=aflow.fastapi.lifespan(store=store, **options))
    app.include_router(aflow.fastapi.runs_router(), prefix="/runs")

    @app.post("/start")
    async def start(rt: RuntimeDep) -> dict[str, str]:
        run = await rt.submit(first.s(1) | gated.s())
        return {"id": run.id}

    @app.post("/pay/{order}")
    async def pay(order: str, rt: RuntimeDep) -> dict[str, str]:
        run = await rt.submit(wait_workflows.link_then_wait, order=order)
        return {"id": run.id}

    @app.post("/durable/{start}")
    async def durable(start: int, rt: RuntimeDep) -> dict[str, str]:
        run = await rt.submit(wf.abc(start))
        await run.wait()
        return {"id": run.id}

    return app


@asynccontextmanager
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app) as state:
        transport = httpx.ASGITransport(app=_with_state(app, state))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


def _with_state(app: FastAPI, state: Any) -> Any:
    """What a server does with the lifespan's state: every request's scope gets a copy."""

    async def with_state(scope: Any, receive: Any, send: Any) -> None:
        await app({**scope, "state": dict(state or {})}, receive, send)

    return with_state


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.fixture(autouse=True)
def gate() -> None:
    GATE["open"] = anyio.Event()
    GATE["started"] = anyio.Event()


async def test_a_run_through_the_router_live_and_streamed() -> None:
    async with client(make_app()) as http:
        run_id = (await http.post("/start")).json()["id"]
        await GATE["started"].wait()
        running = (await http.get(f"/runs/{run_id}")).json()
        assert running["status"] == "running"
        assert {s["key"]: s["state"] for s in running["steps"]} == {
            "first": "succeeded",
            "gated": "running",
        }
        listed = (await http.get("/runs", params={"status": "running"})).json()
        assert [r["id"] for r in listed] == [run_id]
        assert listed[0]["steps"] is None
        GATE["open"].set()
        stream = await http.get(f"/runs/{run_id}/events")
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = sse(stream.text)
        names = [(name, data.get("node")) for name, data in events]
        assert names == [
            ("run_started", None),
            ("task_started", "first"),
            ("task_succeeded", "first"),
            ("task_started", "gated"),
            ("task_succeeded", "gated"),
            ("run_succeeded", None),
            ("end", None),
        ]
        assert events[-1][1]["status"] == "succeeded"
        assert events[-1][1]["result"] == 4
        done = (await http.get(f"/runs/{run_id}")).json()
        assert (done["status"], done["result"], done["finished"]) == ("succeeded", 4, True)
        assert (await http.get("/runs", params={"status": "running"})).json() == []
        assert (await http.get("/runs/nope")).status_code == 404
        assert (await http.get("/runs/nope/events")).status_code == 404
        assert (await http.get("/runs", params={"status": "bogus"})).status_code == 422


async def test_cancel_over_http_unwinds_the_run() -> None:
    async with client(make_app()) as http:
        run_id = (await http.post("/start")).json()["id"]
        cancelled = await http.post(f"/runs/{run_id}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        assert (await http.post("/runs/nope/cancel")).status_code == 404
        assert (await http.post(f"/runs/{run_id}/resume")).status_code == 409  # no store


@pytest.mark.parametrize("store", [None, "sqlite"])
async def test_a_webhook_sends_an_event_once_and_a_client_reads_a_published_value(
    store: str | None, tmp_path: pathlib.Path, counts: pathlib.Path
) -> None:
    url = None if store is None else f"sqlite:///{tmp_path / 'w.db'}"
    async with client(make_app(url)) as http:
        run_id = (await http.post("/pay/o-1")).json()["id"]
        link = await http.get(f"/runs/{run_id}/values/checkout_url", params={"timeout": 10})
        assert link.status_code == 200, link.text
        assert link.json() == {
            "run_id": run_id,
            "name": "checkout_url",
            "value": "https://pay.example/o-1",
        }
        unset = await http.get(f"/runs/{run_id}/values/nothing", params={"timeout": 0})
        assert unset.status_code == 404
        assert "has not set 'nothing'" in unset.json()["detail"]
        bad = await http.post(f"/runs/{run_id}/send/paid", content=b"{not json")
        assert bad.status_code == 422
        deep = await http.post(f"/runs/{run_id}/send/paid", content=b"[" * 100_000)
        assert deep.status_code == 422  # (a RecursionError was a 500)
        hook = f"/runs/{run_id}/send/paid"
        body = {"amount": 5, "currency": "EUR"}
        sent = await http.post(hook, json=body, headers={"Idempotency-Key": "evt_1"})
        assert sent.status_code == 202, sent.text
        assert sent.json() == {"run_id": run_id, "event": "paid", "delivered": True}
        again = await http.post(hook, json={"amount": 6}, params={"message_id": "evt_1"})
        assert again.status_code == 202
        assert again.json()["delivered"] is False  # a redelivery: answered 2xx, not kept
        with anyio.fail_after(10):
            while (await http.get(f"/runs/{run_id}")).json()["status"] != "succeeded":  # noqa: ASYNC110
                await anyio.sleep(0.01)
        done = (await http.get(f"/runs/{run_id}")).json()
        assert done["result"] == "shipped after {'amount': 5, 'currency': 'EUR'}"
        redelivered = await http.post(hook, json=body, headers={"Idempotency-Key": "evt_1"})
        assert redelivered.status_code == 202  # after the run ended: still a no-op, not a 409
        assert redelivered.json()["delivered"] is False
        late = await http.post(hook, json=1, params={"message_id": "evt_2"})
        assert late.status_code == 409
        assert "not kept" in late.json()["detail"]
        ended = await http.get(f"/runs/{run_id}/values/nothing", params={"timeout": 1})
        assert ended.status_code == 409
        assert (await http.post("/runs/nope/send/paid", json=1)).status_code == 404
        assert (await http.get("/runs/nope/values/x")).status_code == 404
        too_long = await http.get(f"/runs/{run_id}/values/x", params={"timeout": 3600})
        assert too_long.status_code == 422
    assert read_counts(counts) == {"ship": 1}


def test_the_send_routes_can_be_left_out() -> None:
    paths = {r.path for r in aflow.fastapi.runs_router(send=False).routes}  # type: ignore[attr-defined]
    assert "/{run_id}/send/{event}" not in paths
    assert "/{run_id}/send/{event}" in {r.path for r in aflow.fastapi.runs_router().routes}  # type: ignore[attr-defined]


async def test_stored_runs_are_listed_read_and_replayed_from_the_store(
    tmp_path: pathlib.Path, counts: pathlib.Path
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    async with client(make_app(url)) as http:
        first_id = (await http.post("/durable/1")).json()["id"]
    # a new process: the runs are the store's now
    async with client(make_app(url, keep_finished=0)) as http:
        second_id = (await http.post("/durable/2")).json()["id"]
        listed = (await http.get("/runs")).json()
        assert [r["id"] for r in listed] == [second_id, first_id]
        assert {r["source"] for r in listed} == {"store"}
        by_workflow = await http.get("/runs", params={"workflow": "tests.durable_workflows:abc"})
        assert len(by_workflow.json()) == 2
        assert (await http.get("/runs", params={"workflow": "x:y"})).json() == []
        one = (await http.get(f"/runs/{first_id}")).json()
        assert (one["status"], one["result"], one["params"]) == ("succeeded", 104, {"start": 1})
        assert [s["state"] for s in one["steps"]] == ["succeeded"] * 3
        events = sse((await http.get(f"/runs/{first_id}/events")).text)
        assert [(n, d.get("node")) for n, d in events] == [
            ("run_started", None),
            ("task_started", "step_a"),
            ("task_succeeded", "step_a"),
            ("task_started", "step_b"),
            ("task_succeeded", "step_b"),
            ("task_started", "step_c"),
            ("task_succeeded", "step_c"),
            ("run_succeeded", None),
            ("end", None),
        ]
        assert events[-1][1]["result"] == 104
        assert (await http.post(f"/runs/{first_id}/resume")).status_code == 409  # finished


async def test_the_lifespan_keeps_the_applications_own_and_defaults() -> None:
    entered: list[str] = []

    @asynccontextmanager
    async def mine(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        entered.append("in")
        yield {"db": "conn"}
        entered.append("out")

    app = FastAPI(lifespan=aflow.fastapi.lifespan(then=mine))
    async with app.router.lifespan_context(app) as state:
        rt = state["aflow_runtime"]
        assert isinstance(rt, aflow.Runtime)
        assert state["db"] == "conn"
        assert rt._shutdown_timeout == aflow.fastapi.DEFAULT_SHUTDOWN_TIMEOUT
        assert app.state.aflow_runtime is rt
    assert entered == ["in", "out"]


async def test_a_handler_without_the_lifespan_is_told_what_to_do() -> None:
    app = FastAPI()

    @app.get("/x")
    async def x(rt: RuntimeDep) -> str:
        return "no"

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        with pytest.raises(RuntimeError, match=r"lifespan=aflow\.fastapi\.lifespan"):
            await http.get("/x")


async def test_the_dependency_runs_on_the_loop_not_in_a_thread() -> None:
    """FastAPI runs a plain-function dependency in a worker thread (about 100 µs a
    request, measured): RuntimeDep's is a coroutine function, and sees the loop's thread."""
    import inspect
    import threading

    assert inspect.iscoroutinefunction(aflow.fastapi.runtime)
    app = make_app()
    seen: list[int] = []

    @app.get("/thread")
    async def thread(rt: RuntimeDep) -> str:
        seen.append(threading.get_ident())
        return "ok"

    async with client(app) as http:
        assert (await http.get("/thread")).json() == "ok"
    assert seen == [threading.get_ident()]
