"""Cancel a request's handler when its client goes away: :class:`CancelOnDisconnect`.

What uvicorn (0.55, both ``--http httptools`` and ``--http h11``) does when a client
disconnects, read from ``uvicorn/protocols/http/httptools_impl.py`` (h11_impl.py has the
same code at the line numbers in brackets):

* ``connection_lost`` (115-132 [106-129]) sets the request cycle's ``disconnected`` flag,
  unless its response is complete, and sets its ``message_event``. That is all: the task
  running the app (made by ``_start_asgi_task``, 300-309 [248-256]) is **never
  cancelled**; uvicorn cancels it only at shutdown, after ``timeout_graceful_shutdown``
  (server.py 295-304).
* The app learns of the disconnect only by calling ``receive()`` (565-579 [518-536]). It
  waits for ``message_event`` and returns ``{"type": "http.disconnect"}`` once the client
  is gone, **and also once the response is complete** though the client is still there.
  Once the request body is all in, ``receive()`` blocks until one of the two happens.
* ``send()`` after a disconnect returns at once and writes nothing (461-466 [451-456]):
  no error, so a handler, or a stream, goes on to its end unaware. uvicorn announces ASGI
  spec 2.3 (227 [209]); the 2.4 behaviour (``send`` raising ``OSError``) is not there.
* While a request body waits unread, uvicorn stops reading the socket once it buffered
  64 KiB (``on_body``, 311-317 [258-264]) and reads again when ``receive()`` is called;
  until then a closed connection goes unnoticed.
* ``run_asgi`` (418-444 [405-431]) logs any exception out of the app, a
  ``CancelledError`` too, as "Exception in ASGI application"; an app that returns
  without a complete response after a disconnect is not logged.

Starlette does not cancel a handler either: only ``StreamingResponse`` (under spec < 2.4)
stops its own body iterator when its ``receive()`` sees the disconnect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, final

import anyio

__all__ = ["CancelOnDisconnect"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@final
class CancelOnDisconnect:
    """ASGI middleware: cancel a request's handler when its client disconnects before
    the response is complete, so that ``await rt.run(saga)`` in it unwinds (its reverts
    run) instead of running on for nobody.

    ::

        app.add_middleware(aflow.fastapi.CancelOnDisconnect)  # FastAPI, Starlette
        app = CancelOnDisconnect(app)                           # any ASGI app
        app.add_middleware(CancelOnDisconnect, when=lambda scope: scope["path"] != "/upload")

    Only ``http`` requests are watched (and of those only the ones ``when(scope)`` is
    true for, if given); websockets and the lifespan pass straight through.

    One task per request reads the server's ``receive()`` (nothing else calls it) and
    hands the app what it reads, at most one message ahead of the app: a streamed upload
    keeps the server's backpressure, and nothing is buffered beyond one message. Once the
    body is all in (at once, for most requests), it keeps reading: the disconnect, when
    it comes, cancels the handler if the response is not complete (a disconnect after
    ``http.response.start`` stops a stream), and every later ``receive()`` of the app
    returns ``http.disconnect``, as the server's would. Once the app has begun sending
    the response's last message nothing is cancelled any more (background tasks run on).

    The cancellation is the middleware's own: the handler gets a cancellation
    (``CancelledError``, or ``trio.Cancelled``), its ``rt.run`` unwinds, and the request
    ends quietly, with no response, as it does under uvicorn for a client that left. A
    cancellation from outside (a server shutting down) propagates untouched, and an
    exception from the app propagates as raised (not wrapped in a group).

    Limits: a request that sends ``Expect: 100-continue`` is watched only from the
    app's first ``receive()`` or its response's start, so that the server does not ask
    for a body the app may refuse. While the app leaves a message of a longer body
    unread, the disconnect is seen when it reads it (its ``receive()`` then returns
    ``http.disconnect``).
    """

    __slots__ = ("app", "when")

    def __init__(self, app: ASGIApp, *, when: Callable[[Scope], bool] | None = None) -> None:
        self.app = app
        self.when = when

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.when is not None and not self.when(scope)):
            await self.app(scope, receive, send)
            return
        await _Watched(scope, receive, send).serve(self.app)


def _expects_continue(scope: Scope) -> bool:
    return any(
        name == b"expect" and value.lower() == b"100-continue"
        for name, value in scope.get("headers", ())
    )


@final
class _Watched:
    """One request: the server's ``receive()`` read by :meth:`_watch` alone, the app fed
    from it through :meth:`receive`, its response followed through :meth:`send`."""

    __slots__ = (
        "_arrived",
        "_complete",
        "_ended",
        "_error",
        "_handler",
        "_held",
        "_reading",
        "_receive",
        "_scope",
        "_send",
        "_taken",
        "_trailers",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._scope = scope
        self._receive = receive
        self._send = send
        # Invariant: at most one message is held; while it has more_body, nothing is read.
        self._held: Message | None = None
        self._taken = anyio.Event()  # the app took the held message
        self._ended: Message | None = None  # the server's last message (http.disconnect)
        self._error: Exception | None = None  # what the server's receive() raised
        self._arrived = anyio.Event()  # set (then replaced) when any of the three changes
        self._reading = anyio.Event()  # the watcher may call the server's receive()
        if not _expects_continue(scope):
            self._reading.set()
        self._complete = False  # the app has begun sending the response's last message
        self._trailers = False
        self._handler = anyio.CancelScope()

    async def serve(self, app: ASGIApp) -> None:
        cancelled = anyio.get_cancelled_exc_class()
        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            with self._handler:
                try:
                    await app(self._scope, self.receive, self.send)
                except cancelled:
                    raise  # ours ends at the scope; any other goes through the group as is
                except BaseException as exc:  # a task group would wrap it in a group
                    failure = exc
            tg.cancel_scope.cancel()  # the watcher: the request is over
        if failure is not None:
            try:
                raise failure
            finally:
                del failure  # (the traceback holds this frame)

    async def _watch(self) -> None:
        await self._reading.wait()
        while True:
            try:
                message = await self._receive()
            except Exception as exc:  # the app's receive() raises it, as the server's did
                self._error = exc
                self._wake()
                return
            if message["type"] != "http.request":
                self._ended = message
                self._wake()
                if not self._complete:
                    self._handler.cancel()
                return
            if self._held is not None:  # only after the body's end, from an odd server
                await self._taken.wait()
            self._held = message
            self._taken = anyio.Event()
            self._wake()
            if message.get("more_body", False):
                await self._taken.wait()  # backpressure: no more than one message ahead

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = anyio.Event()

    async def receive(self) -> Message:
        while True:
            held = self._held
            if held is not None:
                self._held = None
                self._taken.set()
                return held
            if self._error is not None:
                raise self._error
            if self._ended is not None:
                return self._ended
            self._reading.set()  # the app reads: the server may send 100 Continue now
            await self._arrived.wait()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._trailers = bool(message.get("trailers", False))
            await self._send(message)
            self._reading.set()  # the server sends no 100 Continue once the response began
            return
        if _ends_response(message, self._trailers):
            self._complete = True  # before sending: a disconnect from now on cancels nothing
        await self._send(message)


def _ends_response(message: Message, trailers: bool) -> bool:
    """Whether ``message`` (sent after ``http.response.start``) is the response's last."""
    kind = message["type"]
    if kind in ("http.response.body", "http.response.zerocopysend"):
        return not trailers and not message.get("more_body", False)
    if kind == "http.response.trailers":
        return not message.get("more_trailers", False)
    return bool(kind == "http.response.pathsend")
