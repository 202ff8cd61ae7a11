"""The runtime of a service: made by its lifespan, given to handlers by a dependency."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Annotated, Any, TypeAlias

import anyio
from fastapi import Depends, Request
from starlette.types import ASGIApp

from .. import _feed
from .._runtime._runtime import Runtime, _let_runs_end

__all__ = ["DEFAULT_SHUTDOWN_TIMEOUT", "RuntimeDep", "lifespan", "runtime"]

#: Seconds a service's shutdown waits for its runs before it stops what is left (with a
#: store: releases them, and another process takes them up at once; without one: cancels
#: them, and they unwind). Below the usual 30 s grace period of a container stop.
DEFAULT_SHUTDOWN_TIMEOUT = 20.0

#: Where the lifespan puts the runtime: the lifespan state (``request.state``) and the
#: application's ``app.state``.
STATE_KEY = _feed.RUNTIME_KEY
#: Where it puts the event set when the process is told to stop (SIGTERM, SIGINT): the
#: event streams end then, so that the server, which waits for open responses before
#: it shuts its application down, is not held by them (see :func:`lifespan`).
CLOSING_KEY = _feed.CLOSING_KEY

Lifespan: TypeAlias = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]


def lifespan(
    *,
    store: str | Any | None = None,
    shutdown_timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT,
    recover: bool | None = None,
    then: Lifespan | None = None,
    **runtime_options: Any,
) -> Lifespan:
    """A FastAPI / Starlette ``lifespan`` that owns an :class:`aflow.Runtime`::

        app = FastAPI(lifespan=aflow.fastapi.lifespan(store="sqlite:///runs.db"))

    The runtime opens as the service starts and closes as it stops. ``recover``
    (on by default with a store) takes up, at start and at every lease renewal, the
    runs a dead process left. On shutdown it waits up to ``shutdown_timeout``
    seconds (:data:`DEFAULT_SHUTDOWN_TIMEOUT`; ``None`` waits for every run) for
    its runs, then stops what is left: with a store they are released (any process
    takes them up at once), without one they are cancelled and unwind. Every other
    keyword is the :class:`~aflow.Runtime`'s (``max_concurrency``, ``limits``,
    ``workflows``...). ``then``: the application's own lifespan, entered inside
    this one (the runtime is open while it runs); the state it yields is kept.
    Handlers get the runtime with the :data:`RuntimeDep` dependency.

    The runs end (or are stopped, and unwind) before the application's own lifespan
    closes what it opened for them. A server waits for its open responses before it
    shuts the application down (uvicorn does, with no limit by default): so that a
    client following a run (:class:`~aflow.fastapi.EventStream`) does not hold a
    deploy up until the run ends, the event streams end (with the run's report so
    far) as soon as the process is told to stop: the lifespan, entered in the main
    thread, adds that to the server's SIGTERM and SIGINT handlers while it runs.
    """
    options: dict[str, Any] = dict(runtime_options)
    if recover is None:
        recover = store is not None

    @contextlib.asynccontextmanager
    async def run_the_runtime(app: ASGIApp) -> AsyncIterator[Mapping[str, Any]]:
        async with Runtime(
            store=store, shutdown_timeout=shutdown_timeout, recover=recover, **options
        ) as rt:
            state = getattr(app, "state", None)
            closing = anyio.Event()
            if state is not None:
                setattr(state, STATE_KEY, rt)
                setattr(state, CLOSING_KEY, closing)
            undo = _on_stop_signals(closing)
            try:
                if then is None:
                    yield {STATE_KEY: rt, CLOSING_KEY: closing}
                    return
                async with then(app) as theirs:
                    try:
                        yield {**(theirs or {}), STATE_KEY: rt, CLOSING_KEY: closing}
                    except BaseException:
                        await _stop_now(rt)
                        raise
                    # the runs end (or are stopped, and unwind) while what the
                    # application's own lifespan opened for them is still open
                    await _let_runs_end_now(rt)
            finally:
                undo()
                closing.set()  # (a stream still open ends: the runtime closes)
                if state is not None and getattr(state, STATE_KEY, None) is rt:
                    delattr(state, STATE_KEY)  # (a closed runtime serves no request)
                    delattr(state, CLOSING_KEY)

    return run_the_runtime


def _begin_closing(rt: Runtime) -> None:
    """What the runtime's exit does first: recovery takes up nothing more here."""
    rt._closing = True
    rt._durable.stop_looking()


async def _let_runs_end_now(rt: Runtime) -> None:
    """The runtime's clean shutdown, done before the application's lifespan closes: wait
    for the runs (at most ``shutdown_timeout``), then stop what is left and wait for it
    (the runtime's own exit then has nothing left to wait for)."""
    _begin_closing(rt)
    try:
        await _let_runs_end(rt)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _all_ended(rt)
        raise


async def _stop_now(rt: Runtime) -> None:
    """Left because of an exception (a forced exit): stop the runs at once, and wait for
    them to stop (a cancelled run unwinds) before the application's lifespan closes."""
    _begin_closing(rt)
    rt._stop_runs()
    with anyio.CancelScope(shield=True):
        await _all_ended(rt)


async def _all_ended(rt: Runtime) -> None:
    while rt._runs:
        await next(iter(rt._runs.values())).wait()


async def runtime(request: Request) -> Runtime:
    """The service's runtime (a FastAPI dependency; see :data:`RuntimeDep`). A coroutine
    function: FastAPI runs a plain one in a worker thread, about 100 µs a request."""
    found = getattr(request.state, STATE_KEY, None)
    if found is None:
        found = getattr(request.app.state, STATE_KEY, None)
    if not isinstance(found, Runtime):
        raise RuntimeError(
            "no aflow Runtime here: give the application lifespan=aflow.fastapi.lifespan(...)"
        )
    return found


#: A handler's parameter typed ``rt: RuntimeDep`` gets the service's runtime.
RuntimeDep: TypeAlias = Annotated[Runtime, Depends(runtime)]


def _on_stop_signals(closing: anyio.Event) -> Callable[[], None]:
    """Set ``closing`` when the process gets SIGTERM or SIGINT, then do what its handler
    did (a server's: begin to shut down); give what undoes it. Only in the main thread
    (where signal handlers are), and only over a handler that is a function: with the
    default one a signal ends the process at once anyway."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    set_soon = _setter(closing)
    installed: dict[int, Any] = {}
    for number in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(number)
        if not callable(previous):
            continue

        def handler(signum: int, frame: Any, previous: Callable[[int, Any], Any] = previous) -> Any:
            try:
                set_soon()
            except RuntimeError:  # (the event loop has closed)
                pass
            return previous(signum, frame)

        signal.signal(number, handler)
        installed[number] = (handler, previous)

    def undo() -> None:
        for number, (handler, previous) in installed.items():
            if signal.getsignal(number) is handler:  # (nobody replaced it since)
                signal.signal(number, previous)

    return undo


def _setter(event: anyio.Event) -> Callable[[], None]:
    """What sets ``event`` from a signal handler (in the loop's thread, between any two
    of its steps): it asks the event loop to, as its own signal handling does."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio
        import trio.lowlevel

        token = trio.lowlevel.current_trio_token()
        return lambda: token.run_sync_soon(event.set)

    def set_soon() -> None:
        loop.call_soon_threadsafe(event.set)

    return set_soon
