"""The app tests/test_fastapi_disconnect.py serves with a real uvicorn process.

Each request is named by a tag (its path's last part) and what happens to it is recorded
under that tag: the order saga's steps and reverts, the handler's cancellation, and how
the request left the app (``request returned``, or ``request raised <type>``; recorded
outside the middleware, so a cancellation it let escape would show). The test reads the
record through ``GET /_/events/{tag}?until=<event>``, which waits for that event (no
sleeps on either side), and lets a held step go with ``POST /_/release/{tag}``.

Paths under ``/bare/`` reach the same FastAPI app without :class:`CancelOnDisconnect`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import StreamingResponse

import aflow
from aflow.fastapi._disconnect import CancelOnDisconnect, Receive, Scope, Send

EVENTS: defaultdict[str, list[str]] = defaultdict(list)
_changed: anyio.Event | None = None
_releases: dict[str, anyio.Event] = {}
_runtime: list[aflow.Runtime] = []
#: The request paths whose fate is recorded (the control paths under /_/ are not).
WATCHED = ("/saga/", "/bare/", "/stream/", "/raw/", "/background/", "/upload/")


def record(tag: str, what: str) -> None:
    global _changed
    EVENTS[tag].append(what)
    if _changed is not None:
        _changed.set()
        _changed = None


def release(tag: str) -> anyio.Event:
    return _releases.setdefault(tag, anyio.Event())


@aflow.task
async def charge(tag: str) -> str:
    record(tag, "charged")
    return f"receipt-{tag}"


@charge.revert
async def refund(tag: str) -> None:
    record(tag, "refunded")


@aflow.task
async def ship(receipt: str, tag: str, hold: bool) -> str:
    if hold:
        await release(tag).wait()
    record(tag, "shipped")
    return f"parcel for {receipt}"


async def order(tag: str, hold: bool) -> str:
    """The request-scoped run, recording its cancellation."""
    try:
        result: str = await _runtime[0].run(charge.s(tag) | ship.s(tag=tag, hold=hold))
    except anyio.get_cancelled_exc_class():
        record(tag, "cancelled")
        raise
    return result


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with aflow.Runtime() as rt:
        _runtime.append(rt)
        yield
        _runtime.clear()


api = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)


@api.get("/_/events/{tag}")
async def events(tag: str, until: str, timeout: float = 20.0) -> list[str]:
    """The events of ``tag`` once ``until`` is among them (or after ``timeout`` s)."""
    global _changed
    with anyio.move_on_after(timeout):
        while until not in EVENTS[tag]:
            if _changed is None:
                _changed = anyio.Event()
            await _changed.wait()
    return EVENTS[tag]


@api.post("/_/release/{tag}")
async def release_step(tag: str) -> None:
    release(tag).set()


async def saga(request: Request, tag: str, hold: bool = True, watch: bool = False) -> Any:
    body = await request.body()
    payload = await request.json() if body else None
    record(tag, "started")
    async with anyio.create_task_group() as tg:
        if watch:
            tg.start_soon(watch_for_disconnect, request, tag)
        result = await order(tag, hold)
        tg.cancel_scope.cancel()
    record(tag, "completed")
    return {"result": result, "payload": payload}


async def watch_for_disconnect(request: Request, tag: str) -> None:
    """What a handler can do without the middleware: see the disconnect, and go on."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    record(tag, "client left")


api.add_api_route("/saga/{tag}", saga, methods=["GET", "POST"])
api.add_api_route("/bare/saga/{tag}", saga, methods=["GET", "POST"])


@api.get("/stream/{tag}")
async def stream(tag: str) -> StreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        yield b"started\n"
        record(tag, "started")
        yield (await order(tag, hold=True)).encode() + b"\n"

    return StreamingResponse(lines(), media_type="text/plain")


async def raw_stream(scope: Scope, receive: Receive, send: Send) -> None:
    """A stream written straight in ASGI: nothing but the middleware stops it."""
    tag = scope["path"].rsplit("/", 1)[-1]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"started\n", "more_body": True})
    record(tag, "started")
    result = await order(tag, hold=True)
    await send({"type": "http.response.body", "body": result.encode(), "more_body": False})


api.mount("/raw", raw_stream)


@api.get("/background/{tag}")
async def background(tag: str, tasks: BackgroundTasks) -> dict[str, bool]:
    async def later() -> None:
        try:
            await release(tag).wait()
        except anyio.get_cancelled_exc_class():
            record(tag, "background cancelled")
            raise
        record(tag, "background done")

    tasks.add_task(later)
    record(tag, "responded")
    return {"ok": True}


@api.post("/upload/{tag}")
async def upload(request: Request, tag: str) -> dict[str, int]:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    record(tag, f"read {size} bytes")
    return {"bytes": size}


guarded = CancelOnDisconnect(api)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/bare/...`` without the middleware, the rest with it; records how each ended."""
    path: str = scope.get("path", "")
    inner = api if path.startswith("/bare/") else guarded
    if not path.startswith(WATCHED):
        await inner(scope, receive, send)
        return
    tag = path.rsplit("/", 1)[-1]
    try:
        await inner(scope, receive, send)
    except BaseException as exc:
        record(tag, f"request raised {type(exc).__name__}")
        raise
    record(tag, "request returned")
