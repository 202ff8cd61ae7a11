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

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, final

import anyio

#: anyio's record of each asyncio task's cancel scopes, read to respect a shield. Without
#: it (another anyio), or once its layout proves other than expected, every request takes
#: the anyio task-group path (its cancel scope respects shields by itself): slower, never
#: a cancel into a shield (a run's compensation is shielded).
_task_states: Mapping[asyncio.Task[Any], Any] | None
try:
    from anyio._backends._asyncio import _task_states as _anyio_task_states
except ImportError:  # pragma: no cover - another anyio
    _task_states = None
else:
    _task_states = _anyio_task_states
#: the fast asyncio path may be used (see _task_states)
_FAST = {"ok": _task_states is not None and hasattr(_task_states, "get")}

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

    One task at a time calls the server's ``receive()``: a watcher started for the
    request, which hands the app what it reads, at most one message ahead of the app (a
    streamed upload keeps the server's backpressure, and nothing is buffered beyond one
    message), or, on asyncio, the app's own ``receive()`` while the watcher is not in
    it. Once the body is all in (at once, for most requests), the watcher keeps reading:
    the disconnect, when it comes, cancels the handler if the response is not complete
    (a disconnect after ``http.response.start`` stops a stream), and every later
    ``receive()`` of the app returns ``http.disconnect``, as the server's would. Once
    the app has begun sending the response's last message nothing is cancelled any more
    (background tasks run on). The watcher starts once the handler lets the event loop
    turn (a handler that answers without waiting is never watched: no disconnect could
    reach it), and it never outlives the request.

    The cancellation is the middleware's own: the handler gets a cancellation
    (``CancelledError``, or ``trio.Cancelled``), its ``rt.run`` unwinds, and the request
    ends quietly, with no response, as it does under uvicorn for a client that left. A
    cancellation from outside (a server shutting down) propagates untouched, and an
    exception from the app propagates as raised (not wrapped in a group). It reaches
    the handler where it waits, as an anyio cancel scope's does: a handler woken with a
    message (a ``receive()`` that returns ``http.disconnect``) gets it at its next wait,
    and one inside a shield of the app (``anyio.CancelScope(shield=True)``, or the
    thread ``anyio.to_thread.run_sync`` waits for, as FastAPI does for a ``def``
    endpoint) once the shield is down. On asyncio it is a ``task.cancel()``, told from
    any other cancel as ``asyncio.timeout`` tells its own (``Task.cancelling()``,
    ``uncancel()``), and it is made once: a handler that catches it and goes on is not
    cancelled again (on trio, in a cancel scope, it is at each of its waits).

    What it costs, on asyncio: a few µs of CPU per request (a handler that waits adds a
    task and, at its end, one turn of the loop); ``benchmarks/asgi_disconnect.py``.

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
        try:
            handler = asyncio.current_task()
        except RuntimeError:  # not asyncio: trio
            handler = None
        if handler is None or not _FAST["ok"]:
            await _Watched(scope, receive, send).serve(self.app)
        else:
            await _Request(scope, receive, send, handler).serve(self.app)


def _expects_continue(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"expect" and value.lower() == b"100-continue":
            return True
    return False


@final
class _Watched:
    """One request on trio (:class:`_Request` serves it on asyncio): the server's
    ``receive()`` read by :meth:`_watch` alone, in an anyio task group, the app fed from
    it through :meth:`receive`, its response followed through :meth:`send`, and the app
    run in a cancel scope of its own."""

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


@final
class _Request:
    """One request on asyncio (uvloop too), served as :class:`_Watched` serves it on
    trio, with the loop's own machinery instead of anyio's, at a fraction of the cost
    (an anyio task group, its task, its cancel scope and events cost ~70 µs a request):

    * the watcher (:meth:`_watch`) is a plain task of the loop, made by a callback at
      the loop's next turn, if the app is not done by then;
    * the app runs in the caller's task, the handler; its ``receive()`` calls the
      server's itself while nobody is in it (a body read at once costs no wait), and
      otherwise waits for what the watcher reads: one task at a time is in the server's
      ``receive()``, the watcher or one of the app's;
    * waits are futures made when somebody waits;
    * the handler is cancelled with ``task.cancel()`` (:meth:`_cancel_handler`), told
      from any other cancel as ``asyncio.timeout`` tells its own;
    * the watcher never outlives :meth:`serve`: once the app is done it is cancelled
      and waited for, unless it ends by itself within one turn of the loop, as it does
      under uvicorn, whose ``receive()`` returns ``http.disconnect`` as soon as the
      response is complete.
    """

    __slots__ = (
        "_boundary",
        "_cancelled",
        "_cancelling",
        "_complete",
        "_ended",
        "_error",
        "_handler",
        "_held",
        "_in_receive",
        "_loop",
        "_reading",
        "_receive",
        "_running",
        "_scope",
        "_send",
        "_start",
        "_trailers",
        "_waiters",
        "_watcher",
        "_watcher_waits",
    )

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, handler: asyncio.Task[Any]
    ) -> None:
        self._scope = scope
        self._receive = receive
        self._send = send
        self._handler = handler
        self._loop = handler.get_loop()
        # Invariant: at most one message is held; while it has more_body, nothing is read.
        self._held: Message | None = None
        self._ended: Message | None = None  # the server's last message (http.disconnect)
        self._error: Exception | None = None  # what the server's receive() raised
        # A task (the watcher, or the app's) is in receive(), or the watcher holds on to
        # what it read there: the app's receive() waits for it, rather than read on.
        self._in_receive = False
        self._waiters: list[asyncio.Future[None]] = []  # the app's receive() calls waiting
        self._watcher: asyncio.Task[None] | None = None
        # The watcher waits for the app: to take the held message, to leave receive(),
        # or to let it read.
        self._watcher_waits: asyncio.Future[None] | None = None
        self._reading = not _expects_continue(scope)  # the watcher may call receive()
        self._complete = False  # the app has begun sending the response's last message
        self._trailers = False
        self._running = True  # the app runs: a disconnect cancels it
        self._cancelled = False  # the handler was cancelled by this middleware
        self._cancelling = handler.cancelling()  # the cancels it had already
        # The handler's innermost anyio cancel scope outside the app: a shield inside the
        # app holds the cancel off, one outside does not (as with a scope of our own).
        state = _task_states.get(handler) if _task_states is not None else None
        self._boundary: object = getattr(state, "cancel_scope", None)
        self._start: asyncio.Handle | None = None

    async def serve(self, app: ASGIApp) -> None:
        # The watcher starts at the loop's next turn, if the app is not done by then.
        self._start = self._loop.call_soon(self._start_watching)
        try:
            await app(self._scope, self.receive, self.send)
        except BaseException as exc:
            self._running = False
            ours = self._uncancel() and isinstance(exc, asyncio.CancelledError)
            await self._stop_watching()
            if ours:
                return  # the request ends quietly, as under uvicorn for a client that left
            raise
        self._running = False
        self._uncancel()  # (the app caught the cancel and returned)
        watcher = self._watcher
        if watcher is not None and not watcher.done() and self._complete:
            try:  # one turn: a watcher that the response's end woke ends in it
                await asyncio.sleep(0)
            except BaseException:
                await self._stop_watching()
                raise
        await self._stop_watching()

    def _start_watching(self) -> None:
        self._start = None
        if self._running and self._ended is None and self._error is None:
            self._watcher = self._loop.create_task(
                self._watch(), name="aflow: watch for a disconnect"
            )

    def _uncancel(self) -> bool:
        """Take back this middleware's cancel of the handler, if it made one; whether no
        other cancel is pending (so the ``CancelledError`` the app raised is ours)."""
        if not self._cancelled:
            return False
        self._cancelled = False
        return self._handler.uncancel() <= self._cancelling

    async def _stop_watching(self) -> None:
        """Cancel the watcher (or its start) and wait for it to end; a cancel of the
        handler meanwhile is raised once it has."""
        if self._start is not None:
            self._start.cancel()
            self._start = None
        watcher = self._watcher
        if watcher is None or watcher.done():
            return
        watcher.cancel()
        deferred: BaseException | None = None
        while not watcher.done():
            ended = self._loop.create_future()  # (not the watcher: a cancel would reach it)
            watcher.add_done_callback(functools.partial(_wake_up, ended))
            try:
                await ended
            except asyncio.CancelledError as exc:
                deferred = exc
        if deferred is not None:
            try:
                raise deferred
            finally:
                del deferred

    async def _watch(self) -> None:
        try:
            while True:
                held = self._held
                if (
                    not self._reading
                    or self._in_receive
                    or (held is not None and held.get("more_body", False))
                ):  # backpressure: no more than one message ahead
                    await self._wait_for_app()
                    continue
                if self._ended is not None or self._error is not None:
                    return  # the app's own read found the end
                self._in_receive = True
                try:
                    message = await self._receive()
                    if message["type"] != "http.request":
                        self._ended = message
                        self._wake_app()
                        self._cancel_handler()
                        return
                    while self._held is not None:  # after the body's end, from an odd server
                        await self._wait_for_app()
                    self._held = message
                finally:
                    self._in_receive = False
                self._wake_app()
        except Exception as exc:  # the app's receive() raises it, as the server's did
            self._error = exc
            self._wake_app()

    async def _wait_for_app(self) -> None:
        waits = self._watcher_waits = self._loop.create_future()
        try:
            await waits
        finally:
            self._watcher_waits = None

    def _wake_watcher(self) -> None:
        waits = self._watcher_waits
        if waits is not None and not waits.done():
            waits.set_result(None)

    def _wake_app(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _cancel_handler(self, _: object = None) -> None:
        """Cancel the handler, if the app runs and its response is not complete.

        As an anyio cancel scope delivers its cancel: not to a handler that is running
        or already woken (it gets what woke it, and the cancel at its next wait), nor
        inside a shield of the app; until then it is tried again each time the handler
        has moved on (the future it waits on is done, or it ran a step).
        """
        if not self._running or self._complete or self._cancelled:
            return
        handler = self._handler
        waiting: asyncio.Future[Any] | None = getattr(handler, "_fut_waiter", None)
        if (
            (waiting is not None and waiting.done())
            or asyncio.current_task() is handler
            or self._shielded()
        ):
            if waiting is not None:
                waiting.add_done_callback(self._cancel_handler)  # (after the handler's wakeup)
            else:
                self._loop.call_soon(self._cancel_handler)
            return
        self._cancelled = True
        handler.cancel()

    def _shielded(self) -> bool:
        """Whether the handler is inside a shielded anyio cancel scope of the app."""
        if _task_states is None:  # pragma: no cover - (this path is not taken then)
            return True
        try:
            state = _task_states.get(self._handler)
            scope = None if state is None else state.cancel_scope
            while scope is not None and scope is not self._boundary:
                if scope.shield:
                    return True
                scope = scope._parent_scope
        except AttributeError:  # pragma: no cover - another anyio's layout
            # Not known to be unshielded: hold the cancel (it is tried again as the
            # handler moves on) and send later requests down the task-group path.
            _FAST["ok"] = False
            return True
        return False

    async def receive(self) -> Message:
        while True:
            held = self._held
            if held is not None:
                self._held = None
                self._wake_watcher()
                return held
            if self._error is not None:
                raise self._error
            if self._ended is not None:
                return self._ended
            if not self._reading:  # the app reads: the server may send 100 Continue now
                self._reading = True
                self._wake_watcher()
            if not self._in_receive:
                return await self._read()
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done() or waiter.cancelled():
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)

    async def _read(self) -> Message:
        """The app's own call of the server's ``receive()``, read as the watcher reads."""
        self._in_receive = True
        try:
            message = await self._receive()
        except Exception as exc:
            self._error = exc
            self._wake_app()
            raise
        finally:
            self._in_receive = False
            self._wake_watcher()
        if message["type"] != "http.request":
            self._ended = message
            self._wake_app()
            self._cancel_handler()  # (at the handler's next wait: it may be this task)
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._trailers = bool(message.get("trailers", False))
            await self._send(message)
            if not self._reading:  # the server sends no 100 Continue once the response began
                self._reading = True
                self._wake_watcher()
            return
        if _ends_response(message, self._trailers):
            self._complete = True  # before sending: a disconnect from now on cancels nothing
        await self._send(message)


def _wake_up(future: asyncio.Future[None], _: object) -> None:
    if not future.done():
        future.set_result(None)


def _ends_response(message: Message, trailers: bool) -> bool:
    """Whether ``message`` (sent after ``http.response.start``) is the response's last."""
    kind = message["type"]
    if kind in ("http.response.body", "http.response.zerocopysend"):
        return not trailers and not message.get("more_body", False)
    if kind == "http.response.trailers":
        return not message.get("more_trailers", False)
    return bool(kind == "http.response.pathsend")
