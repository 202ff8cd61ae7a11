"""CancelOnDisconnect (aflow/fastapi/_disconnect.py): a client that leaves before its
response is complete cancels the handler, so that a request-scoped run unwinds.

The first tests drive the middleware with a fake server (deterministic: anyio Events
and ``wait_all_tasks_blocked``) on asyncio, uvloop and trio, a few on asyncio and uvloop
alone (what its asyncio path does: its watcher task, its own ``task.cancel()``, nothing
left behind in ``asyncio.all_tasks()``). ``TestUnderUvicorn`` runs
tests/disconnect_app.py in a real uvicorn process (httptools on uvloop, h11 on asyncio)
and talks to it over sockets; the app records what happened to each request, and the
test waits for those records through the app itself (see that module).
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import StreamingResponse

import aflow
from aflow.fastapi._disconnect import CancelOnDisconnect, Message, Receive, Scope, Send

from .helpers import on_each_backend

ROOT = pathlib.Path(__file__).resolve().parent.parent
DISCONNECT: Message = {"type": "http.disconnect"}


def http_scope(path: str = "/", headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers or [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


def body(data: bytes = b"", more: bool = False) -> Message:
    return {"type": "http.request", "body": data, "more_body": more}


class FakeServer:
    """The server's side of one request, as uvicorn behaves (``like_uvicorn``): receive()
    hands out what the test pushed, then ``http.disconnect`` once the client is gone or
    (uvicorn only) the response is complete; a second concurrent caller fails the test.
    ``send`` records, and holds the response's last message while ``hold_last`` is set."""

    def __init__(self, *messages: Message, like_uvicorn: bool = True) -> None:
        self.incoming = list(messages)
        self.like_uvicorn = like_uvicorn
        self.sent: list[Message] = []
        self.calls = 0  # receive() calls begun
        self.gone = False
        self.complete = False
        self.hold_last: anyio.Event | None = None
        self.fail_with: Exception | None = None
        self.said_disconnect = anyio.Event()  # receive() returned http.disconnect
        self.interrupted = 0  # receive() calls a cancellation cut short
        # A cancelled receive() waits for it (shielded) before it ends.
        self.linger: anyio.Event | None = None
        self.lingering = anyio.Event()
        self._receiving = False
        self._changed = anyio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def push(self, *messages: Message) -> None:
        self.incoming.extend(messages)
        self._wake()

    def disconnect(self) -> None:
        self.gone = True
        self._wake()

    async def receive(self) -> Message:
        assert not self._receiving, "the server's receive() was called concurrently"
        self.calls += 1
        self._receiving = True
        try:
            while True:
                if self.fail_with is not None:
                    raise self.fail_with
                if self.gone or (self.complete and self.like_uvicorn):
                    self.said_disconnect.set()
                    return DISCONNECT
                if self.incoming:
                    return self.incoming.pop(0)
                await self._changed.wait()
        except anyio.get_cancelled_exc_class():
            self.interrupted += 1
            if self.linger is not None:
                self.lingering.set()
                with anyio.CancelScope(shield=True):
                    await self.linger.wait()
            raise
        finally:
            self._receiving = False

    async def send(self, message: Message) -> None:
        last = message["type"] == "http.response.body" and not message.get("more_body", False)
        if last and self.hold_last is not None:
            await self.hold_last.wait()
        self.sent.append(message)
        if last:
            self.complete = True
            self._wake()


async def respond(send: Send, text: bytes = b"ok") -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": text, "more_body": False})


class Handler:
    """A fake handler's record: what it did, and whether it was cancelled."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.reached = anyio.Event()
        self.gate = anyio.Event()

    async def hold(self) -> None:
        """Say it got here, then wait for the gate; record a cancellation."""
        self.reached.set()
        try:
            await self.gate.wait()
        except anyio.get_cancelled_exc_class():
            self.log.append("cancelled")
            raise


# --- the ordering, with a fake server ------------------------------------------------


@on_each_backend
async def test_a_disconnect_mid_handler_cancels_it_and_the_request_ends_quietly() -> None:
    """The handler never reads its (empty) body: the disconnect is seen all the same."""
    handler = Handler()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await handler.hold()

    server = FakeServer(body())
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await handler.reached.wait()
        server.disconnect()
    assert handler.log == ["cancelled"]
    assert server.sent == []


@on_each_backend
async def test_a_disconnect_mid_run_unwinds_the_saga() -> None:
    log: list[str] = []
    charged = anyio.Event()

    @aflow.task
    async def charge() -> str:
        log.append("charged")
        charged.set()
        return "receipt"

    @charge.revert
    async def refund() -> None:
        log.append("refunded")

    @aflow.task
    async def ship(receipt: str) -> None:
        await anyio.sleep_forever()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        try:
            await aflow.run(charge.s() | ship.s())
        except anyio.get_cancelled_exc_class():
            log.append("cancelled")
            raise

    server = FakeServer(body(b'{"amount": 5}'))
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await charged.wait()
        server.disconnect()
    assert log == ["charged", "refunded", "cancelled"]


@on_each_backend
async def test_a_disconnect_after_the_response_started_stops_the_stream() -> None:
    handler = Handler()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"1", "more_body": True})
        await handler.hold()

    server = FakeServer(body())
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await handler.reached.wait()
        server.disconnect()
    assert handler.log == ["cancelled"]
    assert [m.get("body") for m in server.sent] == [None, b"1"]


@on_each_backend
async def test_after_the_response_is_complete_nothing_is_cancelled() -> None:
    """uvicorn's receive() says ``http.disconnect`` once the response is complete,
    the client still there or not: the background work after it runs on."""
    handler = Handler()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send)
        await handler.hold()
        handler.log.append("background done")

    server = FakeServer(body())
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await handler.reached.wait()
        server.disconnect()
        await anyio.wait_all_tasks_blocked()
        handler.gate.set()
    assert handler.log == ["background done"]


@on_each_backend
async def test_a_disconnect_while_the_last_message_is_sent_cancels_nothing() -> None:
    handler = Handler()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        handler.reached.set()
        await send({"type": "http.response.body", "body": b"end"})
        handler.log.append("returned")

    server = FakeServer(body(), like_uvicorn=False)
    server.hold_last = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await handler.reached.wait()
        await anyio.wait_all_tasks_blocked()  # the app is in its last send()
        server.disconnect()
        await anyio.wait_all_tasks_blocked()  # the middleware saw it
        server.hold_last.set()
    assert handler.log == ["returned"]


@on_each_backend
async def test_a_response_with_trailers_ends_with_its_trailers() -> None:
    handler = Handler()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"all", "more_body": False})
        await handler.hold()
        await send({"type": "http.response.trailers", "headers": []})

    server = FakeServer(body(), like_uvicorn=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await handler.reached.wait()
        server.disconnect()
    assert handler.log == ["cancelled"]


@on_each_backend
async def test_a_streamed_body_is_read_at_most_one_message_ahead() -> None:
    handler = Handler()
    got: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        got.append((await receive())["body"])
        await handler.hold()
        while True:
            message = await receive()
            got.append(message["body"])
            if not message["more_body"]:
                break
        await respond(send)

    server = FakeServer(body(b"a", more=True), body(b"b", more=True), body(b"c"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await handler.reached.wait()
        await anyio.wait_all_tasks_blocked()
        assert server.calls == 2  # "a" taken, "b" held: "c" waits in the server
        assert server.incoming == [body(b"c")]
        handler.gate.set()
    assert got == [b"a", b"b", b"c"]
    assert handler.log == []


@on_each_backend
async def test_the_apps_later_receive_gets_the_disconnect_when_it_comes() -> None:
    """After the body, the app's receive() waits for the disconnect (a server that
    does not announce the response's end), then returns it every time."""
    got: list[str] = []
    waiting = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        await respond(send)
        waiting.set()
        got.append((await receive())["type"])
        got.append((await receive())["type"])

    server = FakeServer(body(), like_uvicorn=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await waiting.wait()
        await anyio.wait_all_tasks_blocked()
        assert got == []
        server.disconnect()
    assert got == ["http.disconnect", "http.disconnect"]


@on_each_backend
async def test_two_tasks_of_the_app_may_wait_in_receive_at_once() -> None:
    got: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send)

        async def listen() -> None:
            got.append((await receive())["type"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            tg.start_soon(listen)

    server = FakeServer(like_uvicorn=False)  # no body yet: both wait
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await anyio.wait_all_tasks_blocked()
        server.push(body(b"x"))
        await anyio.wait_all_tasks_blocked()
        assert got == ["http.request"]  # one of them took the body
        server.disconnect()
    assert got == ["http.request", "http.disconnect"]


@on_each_backend
async def test_a_body_read_before_the_disconnect_comes_first() -> None:
    handler = Handler()
    got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send)
        await handler.hold()
        got.append(await receive())
        got.append(await receive())

    server = FakeServer(body(b"late"), like_uvicorn=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await handler.reached.wait()
        await anyio.wait_all_tasks_blocked()  # the body is read, the disconnect awaited
        server.disconnect()
        await anyio.wait_all_tasks_blocked()
        handler.gate.set()
    assert got == [body(b"late"), DISCONNECT]


@on_each_backend
async def test_starlettes_is_disconnected_and_streaming_response() -> None:
    """``request.is_disconnected()`` (a receive() in a cancelled scope) and a
    ``StreamingResponse`` (which listens for the disconnect itself) work with it."""
    seen: list[bool] = []
    handler = Handler()

    async def chunks() -> Any:
        yield b"1"
        await handler.hold()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        seen.append(await request.is_disconnected())  # takes the (empty) body
        seen.append(await request.is_disconnected())  # nothing there: not yet
        await StreamingResponse(chunks())(scope, receive, send)

    server = FakeServer(body())
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await handler.reached.wait()
        server.disconnect()
    assert seen == [False, False]
    assert handler.log == ["cancelled"]
    assert [m["type"] for m in server.sent] == ["http.response.start", "http.response.body"]


@on_each_backend
async def test_expect_100_continue_waits_for_the_apps_first_read() -> None:
    """Reading would make uvicorn send ``100 Continue``: the app may refuse the body."""
    handler = Handler()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await handler.hold()
        assert await receive() == body(b"payload")
        await respond(send)

    server = FakeServer(body(b"payload"))
    expect = [(b"expect", b"100-continue")]
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            CancelOnDisconnect(app), http_scope(headers=expect), server.receive, server.send
        )
        await handler.reached.wait()
        await anyio.wait_all_tasks_blocked()
        assert server.calls == 0
        handler.gate.set()
    assert server.calls >= 1
    assert server.complete


@on_each_backend
async def test_expect_100_continue_is_watched_once_the_response_started() -> None:
    handler = Handler()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await handler.hold()

    server = FakeServer(body(b"unwanted"))
    expect = [(b"expect", b"100-continue")]
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            CancelOnDisconnect(app), http_scope(headers=expect), server.receive, server.send
        )
        await handler.reached.wait()
        server.disconnect()
    assert handler.log == ["cancelled"]


@on_each_backend
async def test_an_error_of_the_servers_receive_reaches_the_app() -> None:
    got: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await receive()
        except OSError as exc:
            got.append(str(exc))
        await respond(send)

    server = FakeServer()
    server.fail_with = OSError("reset")
    await CancelOnDisconnect(app)(http_scope(), server.receive, server.send)
    assert got == ["reset"]
    assert server.complete


@on_each_backend
async def test_an_error_of_the_app_propagates_as_raised() -> None:
    error = ValueError("bug")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise error

    server = FakeServer(body())
    with pytest.raises(ValueError) as caught:
        await CancelOnDisconnect(app)(http_scope(), server.receive, server.send)
    assert caught.value is error


@on_each_backend
async def test_a_cancellation_from_outside_propagates() -> None:
    handler = Handler()
    escaped: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await handler.hold()

    async def call() -> None:
        server = FakeServer(body())
        try:
            await CancelOnDisconnect(app)(http_scope(), server.receive, server.send)
        except anyio.get_cancelled_exc_class():
            escaped.append("cancelled")
            raise
        escaped.append("returned")

    with anyio.CancelScope() as outer:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await handler.reached.wait()
            outer.cancel()
    assert outer.cancelled_caught
    assert handler.log == ["cancelled"]
    assert escaped == ["cancelled"]


@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
@on_each_backend
async def test_websockets_and_the_lifespan_pass_straight_through(kind: str) -> None:
    seen: list[tuple[object, object]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((receive, send))

    server = FakeServer()
    await CancelOnDisconnect(app)({"type": kind}, server.receive, server.send)
    assert seen == [(server.receive, server.send)]
    assert server.calls == 0


@on_each_backend
async def test_when_limits_the_requests_it_watches() -> None:
    handler = Handler()
    seen: list[object] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(receive)
        await handler.hold()
        handler.log.append("finished")

    middleware = CancelOnDisconnect(app, when=lambda scope: scope["path"] != "/upload")
    server = FakeServer(body())
    async with anyio.create_task_group() as tg:
        tg.start_soon(middleware, http_scope("/upload"), server.receive, server.send)
        await handler.reached.wait()
        server.disconnect()
        await anyio.wait_all_tasks_blocked()
        handler.gate.set()
    assert seen == [server.receive]
    assert handler.log == ["finished"]


# --- the asyncio path: its shortcuts, its own cancel, nothing left behind ----------------


def on_asyncio(test: Any) -> Any:
    """An async test, run on asyncio and uvloop: what the middleware does on asyncio
    alone (trio keeps an anyio task group)."""
    run = on_each_backend(test)
    run.pytestmark = [  # (replaces on_each_backend's parametrization)
        *getattr(test, "pytestmark", []),
        pytest.mark.parametrize("backend", ["asyncio", "uvloop"]).mark,
    ]
    return run


def other_tasks() -> set[asyncio.Task[Any]]:
    """The asyncio tasks of the loop but the current one (none on trio)."""
    try:
        return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]
    except RuntimeError:  # trio
        return set()


@on_each_backend
async def test_a_handler_that_answers_at_once_is_never_watched() -> None:
    """It never lets the loop turn: no disconnect could be seen, none is looked for."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send)

    server = FakeServer(body(), like_uvicorn=False)
    before = other_tasks()
    await CancelOnDisconnect(app)(http_scope(), server.receive, server.send)
    assert server.complete
    assert server.calls == 0
    assert other_tasks() == before


@on_each_backend
async def test_a_body_read_at_once_is_read_by_the_app_itself() -> None:
    got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        got.append(await receive())
        await respond(send)

    server = FakeServer(body(b"all"), like_uvicorn=False)
    await CancelOnDisconnect(app)(http_scope(), server.receive, server.send)
    assert got == [body(b"all")]
    assert server.complete


@pytest.mark.parametrize("like_uvicorn", [True, False], ids=["uvicorn", "other-server"])
@on_asyncio
async def test_the_watcher_never_outlives_the_request(like_uvicorn: bool) -> None:
    """Under uvicorn (its receive() says ``http.disconnect`` once the response is
    complete) the watcher ends by itself; under another server it is cancelled."""
    got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        got.append(await receive())
        await anyio.wait_all_tasks_blocked()  # the watcher is in receive()
        await respond(send)

    server = FakeServer(body(b"x"), like_uvicorn=like_uvicorn)
    before = other_tasks()
    await CancelOnDisconnect(app)(http_scope(), server.receive, server.send)
    assert other_tasks() == before
    assert got == [body(b"x")]
    assert server.calls == 2  # the app's own read, then the watcher's
    assert server.interrupted == (0 if like_uvicorn else 1)
    assert server.said_disconnect.is_set() == like_uvicorn


@pytest.mark.parametrize("like_uvicorn", [True, False], ids=["uvicorn", "other-server"])
@on_each_backend
async def test_a_disconnect_racing_the_responses_end_cancels_nothing(like_uvicorn: bool) -> None:
    """The client leaves while the app sends its last message: the watcher sees the
    disconnect only after it began sending it, and cancels nothing."""
    handler = Handler()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await handler.hold()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        server.disconnect()
        await send({"type": "http.response.body", "body": b"end"})
        await anyio.lowlevel.checkpoint()  # the watcher reads the disconnect here
        await anyio.wait_all_tasks_blocked()
        handler.log.append("returned")

    server = FakeServer(body(), like_uvicorn=like_uvicorn)
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await handler.reached.wait()
        await anyio.wait_all_tasks_blocked()  # the watcher is in receive()
        handler.gate.set()
    assert handler.log == ["returned"]
    assert server.said_disconnect.is_set()
    assert [m["type"] for m in server.sent] == ["http.response.start", "http.response.body"]


@on_each_backend
async def test_a_disconnect_the_apps_own_read_finds_cancels_it() -> None:
    """The client left before the app read its body: the app's receive() (on asyncio
    the app reads for itself while nobody else does) returns ``http.disconnect``, and
    the handler is cancelled at its next wait, as when the watcher reads it."""
    handler = Handler()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        handler.log.append((await receive())["type"])
        await handler.hold()

    server = FakeServer(body())
    server.disconnect()
    before = other_tasks()
    await CancelOnDisconnect(app)(http_scope(), server.receive, server.send)
    assert handler.log == ["http.disconnect", "cancelled"]
    assert server.sent == []
    assert other_tasks() == before


@on_each_backend
async def test_a_disconnect_while_the_app_waits_in_receive_is_returned_then_cancels() -> None:
    handler = Handler()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert await receive() == body()
        handler.reached.set()
        handler.log.append((await receive())["type"])
        await handler.hold()

    server = FakeServer(body(), like_uvicorn=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await handler.reached.wait()
        await anyio.wait_all_tasks_blocked()
        server.disconnect()
    assert handler.log == ["http.disconnect", "cancelled"]


@on_each_backend
async def test_a_disconnect_another_task_of_the_app_reads_cancels_the_handler() -> None:
    handler = Handler()

    async def listen(receive: Receive) -> None:
        await receive()
        await anyio.sleep_forever()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listen, receive)
            await handler.hold()

    server = FakeServer(body())
    server.disconnect()
    await CancelOnDisconnect(app)(http_scope(), server.receive, server.send)
    assert handler.log == ["cancelled"]
    assert server.sent == []


@on_each_backend
async def test_the_app_and_the_watcher_never_read_at_once() -> None:
    """The app waits in the server's receive() for a late body; the watcher, started
    meanwhile, waits for it to come out (the fake server fails a second caller)."""
    got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        got.append(await receive())
        got.append(await receive())
        await respond(send)

    server = FakeServer(like_uvicorn=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await anyio.wait_all_tasks_blocked()
        server.push(body(b"a", more=True))
        await anyio.wait_all_tasks_blocked()
        server.push(body(b"b"))
    assert got == [body(b"a", more=True), body(b"b")]
    assert server.complete


@on_each_backend
async def test_messages_of_an_odd_server_keep_their_order() -> None:
    """More ``http.request`` after the body's end: the watcher, holding one while the
    app has not taken the last, keeps the app from reading past it."""
    handler = Handler()
    got: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await handler.hold()
        for _ in range(3):
            got.append((await receive())["body"])
        await respond(send)

    server = FakeServer(body(b"1"), body(b"2"), body(b"3"), like_uvicorn=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await handler.reached.wait()
        await anyio.wait_all_tasks_blocked()  # "1" held, "2" read: the watcher waits
        assert server.calls == 2
        handler.gate.set()
    assert got == [b"1", b"2", b"3"]


@on_each_backend
async def test_an_outside_cancel_with_the_disconnect_propagates() -> None:
    """Both in the same turn: the cancel is not the middleware's alone, it goes on."""
    handler = Handler()
    escaped: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await handler.hold()

    server = FakeServer(body())

    async def call() -> None:
        try:
            await CancelOnDisconnect(app)(http_scope(), server.receive, server.send)
        except anyio.get_cancelled_exc_class():
            escaped.append("cancelled")
            raise
        escaped.append("returned")

    with anyio.CancelScope() as outer:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await handler.reached.wait()
            await anyio.wait_all_tasks_blocked()
            server.disconnect()
            outer.cancel()
    assert outer.cancelled_caught
    assert handler.log == ["cancelled"]
    assert escaped == ["cancelled"]


@pytest.mark.parametrize("swallowed", [False, True], ids=["raised", "caught-by-the-app"])
@on_asyncio
async def test_the_handlers_cancel_count_is_restored(swallowed: bool) -> None:
    """As ``asyncio.timeout`` does: after the middleware's own cancel (raised, or caught
    by the app) the task's ``cancelling()`` is back where it was."""
    handler = Handler()
    after: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await handler.hold()
        except asyncio.CancelledError:
            if not swallowed:
                raise

    async def call() -> None:
        server = FakeServer(body())
        tg.start_soon(disconnect_when_held, server)
        await CancelOnDisconnect(app)(http_scope(), server.receive, server.send)
        after.append(asyncio.current_task().cancelling())  # type: ignore[union-attr]

    async def disconnect_when_held(server: FakeServer) -> None:
        await handler.reached.wait()
        server.disconnect()

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
    assert handler.log == ["cancelled"]
    assert after == [0]


@on_asyncio
async def test_an_outside_cancel_while_the_watcher_ends_waits_for_it() -> None:
    """The request is cancelled while the middleware waits for its cancelled watcher:
    the cancel is raised once the watcher has ended, not before."""
    escaped: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.wait_all_tasks_blocked()  # the watcher is in receive()
        await respond(send)

    server = FakeServer(body(), like_uvicorn=False)  # the watcher must be cancelled
    server.linger = anyio.Event()

    async def call() -> None:
        try:
            await CancelOnDisconnect(app)(http_scope(), server.receive, server.send)
        except asyncio.CancelledError:
            escaped.append(f"cancelled, {len(other_tasks() - before)} task left")
            raise

    before = other_tasks()
    task = asyncio.get_running_loop().create_task(call())
    await server.lingering.wait()  # the watcher, cancelled, holds on
    task.cancel()
    await anyio.wait_all_tasks_blocked()
    assert escaped == []
    assert not task.done()
    server.linger.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert escaped == ["cancelled, 1 task left"]  # (the one that called)
    assert other_tasks() == before


@on_asyncio
async def test_nothing_is_left_behind_when_the_app_fails() -> None:
    error = ValueError("bug")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await anyio.wait_all_tasks_blocked()  # the watcher is in receive()
        raise error

    server = FakeServer(body())
    before = other_tasks()
    with pytest.raises(ValueError) as caught:
        await CancelOnDisconnect(app)(http_scope(), server.receive, server.send)
    assert caught.value is error
    assert server.interrupted == 1
    assert other_tasks() == before


@on_asyncio
async def test_nothing_is_left_behind_when_the_servers_receive_fails() -> None:
    got: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await anyio.wait_all_tasks_blocked()  # the watcher is in receive()
        server.fail_with = OSError("reset")
        server.push()
        await anyio.wait_all_tasks_blocked()  # the watcher is done
        try:
            await receive()
        except OSError as exc:
            got.append(str(exc))
        await respond(send)

    server = FakeServer(body())
    before = other_tasks()
    await CancelOnDisconnect(app)(http_scope(), server.receive, server.send)
    assert got == ["reset"]
    assert server.interrupted == 0
    assert other_tasks() == before


# --- a shield in the handler holds the cancel off ----------------------------------------


@on_each_backend
async def test_a_shield_in_the_handler_holds_the_cancel_off_until_it_is_down() -> None:
    handler = Handler()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        with anyio.CancelScope(shield=True):
            await handler.hold()
            handler.log.append("shield down")
        await handler.hold()  # the cancel lands here

    server = FakeServer(body())
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await handler.reached.wait()
        server.disconnect()
        await server.said_disconnect.wait()
        await anyio.wait_all_tasks_blocked()
        assert handler.log == []
        handler.gate.set()
    assert handler.log == ["shield down", "cancelled"]


@on_each_backend
async def test_a_shield_the_handler_spins_in_holds_the_cancel_off() -> None:
    """The handler is never waiting on anything when the disconnect comes (it yields
    with checkpoints): the cancel is tried again until the shield is down."""
    log: list[str] = []
    spinning = anyio.Event()
    stop = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        with anyio.CancelScope(shield=True):
            spinning.set()
            while not stop.is_set():
                await anyio.lowlevel.checkpoint()
            log.append("shield down")
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            log.append("cancelled")
            raise

    server = FakeServer(body())
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await spinning.wait()
        server.disconnect()
        await server.said_disconnect.wait()
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        assert log == []
        stop.set()
    assert log == ["shield down", "cancelled"]


@on_each_backend
async def test_a_shield_around_the_middleware_does_not_hold_the_cancel_off() -> None:
    """Only a shield of the app's own counts, as with a cancel scope of the middleware's."""
    handler = Handler()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await handler.hold()

    server = FakeServer(body())

    async def call() -> None:
        with anyio.CancelScope(shield=True):
            await CancelOnDisconnect(app)(http_scope(), server.receive, server.send)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await handler.reached.wait()
        server.disconnect()
    assert handler.log == ["cancelled"]


@on_each_backend
async def test_a_thread_the_handler_waits_for_ends_before_the_cancel() -> None:
    """``anyio.to_thread.run_sync`` (FastAPI's way with a ``def`` endpoint) waits for its
    thread behind a shield: the handler is cancelled once the thread is done, so its
    limiter's token is held until then."""
    log: list[str] = []
    started = anyio.Event()
    release = threading.Event()

    def blocking() -> str:
        anyio.from_thread.run_sync(started.set)
        release.wait(10)
        return "thread done"

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        log.append(await anyio.to_thread.run_sync(blocking))
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            log.append("cancelled")
            raise

    server = FakeServer(body())
    async with anyio.create_task_group() as tg:
        tg.start_soon(CancelOnDisconnect(app), http_scope(), server.receive, server.send)
        await started.wait()
        server.disconnect()
        await server.said_disconnect.wait()
        await anyio.wait_all_tasks_blocked()
        assert log == []
        assert anyio.to_thread.current_default_thread_limiter().borrowed_tokens == 1
        release.set()
    assert log == ["thread done", "cancelled"]


# --- a real uvicorn --------------------------------------------------------------------


class Server:
    """A uvicorn process serving tests/disconnect_app.py on 127.0.0.1 (a port it chose)."""

    def __init__(self, http: str, loop: str) -> None:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.disconnect_app:app",
            "--host=127.0.0.1",
            "--port=0",
            f"--http={http}",
            f"--loop={loop}",
            "--lifespan=on",
            "--no-access-log",
            "--log-level=info",
            "--timeout-graceful-shutdown=5",
        ]
        self.lines: list[str] = []
        self.port: int | None = None
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(30) or self.port is None:
            self.stop()
            raise RuntimeError("uvicorn did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                self._ready.set()
        self._ready.set()  # it exited

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def events(self, tag: str, until: str) -> list[str]:
        """What happened to request ``tag``, once ``until`` has (the app waits for it)."""
        answer = httpx.get(self.url(f"/_/events/{tag}"), params={"until": until}, timeout=30)
        found: list[str] = answer.json()
        assert until in found, f"{until!r} did not happen to {tag}: {found}"
        return found

    def release(self, tag: str) -> None:
        httpx.post(self.url(f"/_/release/{tag}"), timeout=30).raise_for_status()

    def open(self, method: str, path: str, payload: Any = None) -> socket.socket:
        """A raw connection that has sent a request (and will be closed mid-answer)."""
        assert self.port is not None
        data = b"" if payload is None else json.dumps(payload).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.sendall(head.encode() + data)
        return sock


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(("httptools", "uvloop"), id="httptools-uvloop"),
        pytest.param(("h11", "asyncio"), id="h11-asyncio"),
    ],
)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    running = Server(*request.param)
    try:
        yield running
    finally:
        running.stop()
    log = "".join(running.lines)
    assert "Traceback" not in log, log
    assert "ERROR" not in log, log


def new_tag() -> str:
    return uuid.uuid4().hex[:12]


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed before sending {marker!r}: {data!r}"
        data += chunk
    return data


class TestUnderUvicorn:
    @pytest.mark.parametrize(
        ("method", "payload"), [("GET", None), ("POST", {"amount": 5})], ids=["GET", "POST"]
    )
    def test_a_client_that_leaves_mid_run_cancels_it_and_its_steps_are_reverted(
        self, server: Server, method: str, payload: Any
    ) -> None:
        tag = new_tag()
        with server.open(method, f"/saga/{tag}", payload):
            server.events(tag, until="charged")
        found = server.events(tag, until="request returned")
        assert found == ["started", "charged", "refunded", "cancelled", "request returned"]

    def test_without_the_middleware_the_handler_runs_on_after_the_client_left(
        self, server: Server
    ) -> None:
        """Why the middleware: uvicorn tells the handler (if it asks), never stops it."""
        tag = new_tag()
        with server.open("GET", f"/bare/saga/{tag}?watch=1"):
            server.events(tag, until="charged")
        server.events(tag, until="client left")  # the handler knows, and runs on
        server.release(tag)
        found = server.events(tag, until="request returned")
        assert found == [
            "started",
            "charged",
            "client left",
            "shipped",
            "completed",
            "request returned",
        ]

    @pytest.mark.parametrize("method", ["GET", "POST"])
    def test_a_request_that_stays_gets_its_answer(self, server: Server, method: str) -> None:
        tag = new_tag()
        payload = {"amount": 5} if method == "POST" else None
        answer = httpx.request(
            method, server.url(f"/saga/{tag}"), params={"hold": "0"}, json=payload, timeout=30
        )
        assert answer.status_code == 200
        assert answer.json() == {"result": "parcel for receipt-" + tag, "payload": payload}
        found = server.events(tag, until="request returned")
        assert found == ["started", "charged", "shipped", "completed", "request returned"]

    @pytest.mark.parametrize("path", ["/stream", "/raw"], ids=["StreamingResponse", "raw-ASGI"])
    def test_a_stream_stops_when_its_client_leaves(self, server: Server, path: str) -> None:
        tag = new_tag()
        with server.open("GET", f"{path}/{tag}") as sock:
            read_until(sock, b"started\n")
            server.events(tag, until="charged")
        found = server.events(tag, until="request returned")
        assert found == ["started", "charged", "refunded", "cancelled", "request returned"]

    def test_background_work_after_a_complete_response_is_not_cancelled(
        self, server: Server
    ) -> None:
        tag = new_tag()
        with httpx.Client(timeout=30) as client:
            assert client.get(server.url(f"/background/{tag}")).json() == {"ok": True}
        server.release(tag)  # the connection is closed
        found = server.events(tag, until="request returned")
        assert found == ["responded", "background done", "request returned"]

    def test_a_streamed_upload_is_read_whole(self, server: Server) -> None:
        tag = new_tag()
        chunk = bytes(range(256)) * 256  # 64 KiB

        def parts() -> Iterator[bytes]:
            for _ in range(64):
                yield chunk

        answer = httpx.post(server.url(f"/upload/{tag}"), content=parts(), timeout=30)
        assert answer.json() == {"bytes": 64 * len(chunk)}
        found = server.events(tag, until="request returned")
        assert found == [f"read {64 * len(chunk)} bytes", "request returned"]


def test_without_anyios_record_of_scopes_every_request_takes_the_task_group_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another anyio (no `_task_states`, or another layout): the fast asyncio path is not
    taken, so a cancel can never land inside a shield the middleware cannot see."""
    import aflow.fastapi._disconnect as disconnect

    taken: list[str] = []

    class Spy:
        def __init__(self, *args: object) -> None:
            taken.append(type(self).__name__)

        async def serve(self, app: object) -> None:
            return None

    monkeypatch.setattr(disconnect, "_Watched", Spy)
    monkeypatch.setitem(disconnect._FAST, "ok", False)
    middleware = disconnect.CancelOnDisconnect(lambda *a: None)  # type: ignore[arg-type,return-value]

    async def main() -> None:
        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b""}

        async def send(message: object) -> None:
            return None

        await middleware({"type": "http", "headers": []}, receive, send)  # type: ignore[arg-type]

    asyncio.run(main())
    assert taken == ["Spy"]
