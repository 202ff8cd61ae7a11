"""What :class:`aflow.fastapi.CancelOnDisconnect` costs per request, in process.

Usage: ``python benchmarks/asgi_disconnect.py [--quick] [--rounds N] [--requests N]
[--concurrency N] [--loops asyncio,uvloop] [--apps 'raw GET;...'] [--baseline REV]``

No sockets: each request is driven straight into the ASGI app by a fake server that
behaves as uvicorn's request cycle does (``httptools_impl.RequestResponseCycle``): the
body is in when the app starts (one message, or none for a GET), ``receive()`` then
blocks on an ``asyncio.Event`` until the response is complete and returns
``http.disconnect``, and the response's last ``send()`` sets that event. The client
never leaves: this is the common request, the one the middleware must cost little on.

Apps, each bare and wrapped in ``CancelOnDisconnect``:

* ``raw GET``: a trivial ASGI app that sends its response and returns (it never
  calls ``receive()``);
* ``raw POST``: the same, reading its one-message body first;
* ``FastAPI GET``: ``GET /items/{item_id}`` of a small FastAPI app (a path parameter,
  a dict answered as JSON);
* ``FastAPI POST``: ``POST /orders`` of the same app (a pydantic body, a pydantic
  answer);
* ``raw POST, waits`` and ``FastAPI POST, waits`` (``POST /orders/slow``): the same,
  but the handler lets the loop turn twice before it answers, as one that awaits
  something does (a saga's steps, a database): only then is there a watcher to start,
  to read the server's ``receive()`` and to end.

Figures are CPU time (``time.process_time``) per request, each request in a task of its
own (as uvicorn runs it), one after the other (``--concurrency N``: N at a time) on a
fresh event loop per cell, after a warm-up. One at a time, every turn of the loop a
request causes is a whole iteration of the loop (a ``select()`` call and all) charged
to that request alone; with many in flight, as in a busy server, the turns are shared.
Every round runs every cell (app x loop x variant) once, in an order rotated from
round to round, so that the machine's mood (other processes on its cores) falls on
every cell alike; reported are the medians over rounds, the overhead (wrapped - bare)
and the ratio (wrapped / bare), both medians of the per-round figures. With
``--baseline REV``, the middleware as it is in git revision ``REV``
(``aflow/fastapi/_disconnect.py``) is measured in the same rounds as a third variant.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this file's folder comes first on sys.path, and benchmarks/http.py
# would shadow the standard library's ``http`` (which starlette imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))  # this tree's aflow, as the other benchmarks do

from fastapi import FastAPI  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from aflow.fastapi._disconnect import CancelOnDisconnect  # noqa: E402

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPS = ("asyncio", "uvloop")
DISCONNECT: Message = {"type": "http.disconnect"}


# --- the fake server -----------------------------------------------------------------


class Cycle:
    """One request as uvicorn's ``RequestResponseCycle`` serves it to the app (the
    parts the middleware meets): the body arrived whole before the app started."""

    __slots__ = ("answer", "body", "complete", "event", "status")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.complete = False
        self.event = asyncio.Event()
        self.event.set()  # on_message_complete: the body is in
        self.status = 0
        self.answer = b""

    async def receive(self) -> Message:
        if not self.complete:
            await self.event.wait()
            self.event.clear()
        if self.complete:
            return DISCONNECT
        message = {"type": "http.request", "body": self.body, "more_body": False}
        self.body = b""
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
        elif kind == "http.response.body":
            self.answer += message.get("body", b"")
            if not message.get("more_body", False):
                self.complete = True
                self.event.set()


def scope_of(method: str, path: str, body: bytes) -> Scope:
    headers = [(b"host", b"127.0.0.1:8000")]
    if body:
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": method,
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "state": {},
    }


# --- the apps ------------------------------------------------------------------------


async def raw_get(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok", "more_body": False})


async def raw_post(scope: Scope, receive: Receive, send: Send) -> None:
    message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": message["body"], "more_body": False})


async def raw_post_waits(scope: Scope, receive: Receive, send: Send) -> None:
    message = await receive()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": message["body"], "more_body": False})


class Order(BaseModel):
    item: str
    quantity: int


class Receipt(BaseModel):
    item: str
    quantity: int
    total: float


api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@api.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, int]:
    return {"id": item_id}


@api.post("/orders")
async def order(order: Order) -> Receipt:
    return Receipt(item=order.item, quantity=order.quantity, total=order.quantity * 2.5)


@api.post("/orders/slow")
async def slow_order(order: Order) -> Receipt:
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return Receipt(item=order.item, quantity=order.quantity, total=order.quantity * 2.5)


ORDER = b'{"item": "book", "quantity": 2}'
RECEIPT = b'{"item":"book","quantity":2,"total":5.0}'
#: label: (app, method, path, body, the answer expected)
APPS: dict[str, tuple[ASGIApp, str, str, bytes, bytes]] = {
    "raw GET": (raw_get, "GET", "/", b"", b"ok"),
    "raw POST": (raw_post, "POST", "/", ORDER, ORDER),
    "raw POST, waits": (raw_post_waits, "POST", "/", ORDER, ORDER),
    "FastAPI GET": (api, "GET", "/items/7", b"", b'{"id":7}'),
    "FastAPI POST": (api, "POST", "/orders", ORDER, RECEIPT),
    "FastAPI POST, waits": (api, "POST", "/orders/slow", ORDER, RECEIPT),
}


# --- measuring -----------------------------------------------------------------------


def load_baseline(rev: str) -> type[Any]:
    """``CancelOnDisconnect`` as it is in git revision ``rev``."""
    where = "aflow/fastapi/_disconnect.py"
    source = subprocess.run(
        ["git", "show", f"{rev}:{where}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    name = f"_disconnect_at_{rev.replace('~', '_').replace('^', '_')}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = types.ModuleType(name)
    module.__spec__ = spec
    sys.modules[name] = module
    exec(compile(source, f"{rev}:{where}", "exec"), module.__dict__)
    middleware: type[Any] = module.CancelOnDisconnect
    return middleware


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


async def drive(app: ASGIApp, label: str, requests: int, warmup: int, concurrency: int) -> float:
    """µs of CPU per request: ``requests`` of them after ``warmup``, back to back in each
    of ``concurrency`` tasks."""
    _, method, path, body, expected = APPS[label]
    template = scope_of(method, path, body)

    async def client(count: int, check: bool) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            cycle = Cycle(body)
            # A task of its own, as uvicorn runs each request (_start_asgi_task)
            await loop.create_task(app(dict(template), cycle.receive, cycle.send))
            if check and (cycle.status != 200 or cycle.answer != expected):
                raise AssertionError(f"{label}: {cycle.status} {cycle.answer!r}")

    each = max(1, requests // concurrency)
    await asyncio.gather(*(client(max(1, warmup // concurrency), True) for _ in range(concurrency)))
    clock = time.process_time
    start = clock()
    if concurrency == 1:
        await client(each, False)
    else:
        await asyncio.gather(*(client(each, False) for _ in range(concurrency)))
    return (clock() - start) / (each * concurrency) * 1e6


def measure(
    app: ASGIApp, label: str, loop_name: str, requests: int, warmup: int, concurrency: int
) -> float:
    gc.collect()
    loop = new_loop(loop_name)
    try:
        return loop.run_until_complete(drive(app, label, requests, warmup, concurrency))
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=4000, help="timed, per cell")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument(
        "--concurrency", type=int, default=1, help="requests in flight at once (default 1)"
    )
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument("--apps", default=";".join(APPS), help="labels, ';'-separated")
    parser.add_argument("--baseline", metavar="REV", help="also measure REV's middleware")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1000 requests")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests, args.warmup = 3, 1000, 100
    loops = [name for name in args.loops.split(",") if name]
    labels = [label for label in args.apps.split(";") if label]
    variants: dict[str, Callable[[ASGIApp], ASGIApp]] = {
        "bare": lambda app: app,
        "wrapped": CancelOnDisconnect,
    }
    if args.baseline:
        variants[args.baseline] = load_baseline(args.baseline)
    cells = [
        (label, loop_name, variant, wrap(APPS[label][0]))
        for label in labels
        for loop_name in loops
        for variant, wrap in variants.items()
    ]
    results: dict[tuple[str, str, str], list[float]] = {cell[:3]: [] for cell in cells}
    print(
        f"python {platform.python_version()}, {args.rounds} rounds of {args.requests} "
        f"requests a cell (+{args.warmup} warm-up), {args.concurrency} at a time, "
        "CPU µs per request",
        file=sys.stderr,
    )
    for round_no in range(args.rounds):
        shift = round_no * 7 % len(cells)
        for label, loop_name, variant, app in cells[shift:] + cells[:shift]:
            us = measure(app, label, loop_name, args.requests, args.warmup, args.concurrency)
            results[label, loop_name, variant].append(us)
        print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)

    others = [variant for variant in variants if variant != "bare"]
    head = ["app", "loop", "bare µs"]
    for variant in others:
        head += [f"{variant} µs", f"{variant} overhead µs", f"{variant} ratio"]
    rows = []
    for label in labels:
        for loop_name in loops:
            bare = results[label, loop_name, "bare"]
            row = [label, loop_name, f"{statistics.median(bare):.1f}"]
            for variant in others:
                runs = results[label, loop_name, variant]
                row += [
                    f"{statistics.median(runs):.1f}",
                    f"{statistics.median(w - b for w, b in zip(runs, bare, strict=True)):.1f}",
                    f"{statistics.median(w / b for w, b in zip(runs, bare, strict=True)):.2f}x",
                ]
            rows.append(row)
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
