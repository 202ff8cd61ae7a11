"""The runtime of a service: made by its lifespan, given to handlers by a dependency."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Annotated, Any, TypeAlias

from fastapi import Depends, Request
from starlette.types import ASGIApp

from .._runtime._runtime import Runtime

__all__ = ["DEFAULT_SHUTDOWN_TIMEOUT", "RuntimeDep", "lifespan", "runtime"]

#: Seconds a service's shutdown waits for its runs before it stops what is left (with a
#: store: releases them, and another process takes them up at once; without one: cancels
#: them, and they unwind). Below the usual 30 s grace period of a container stop.
DEFAULT_SHUTDOWN_TIMEOUT = 20.0

#: Where the lifespan puts the runtime: the lifespan state (``request.state``) and the
#: application's ``app.state``.
STATE_KEY = "aflow_runtime"

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
            if state is not None:
                setattr(state, STATE_KEY, rt)
            if then is None:
                yield {STATE_KEY: rt}
                return
            async with then(app) as theirs:
                yield {**(theirs or {}), STATE_KEY: rt}

    return run_the_runtime


def runtime(request: Request) -> Runtime:
    """The service's runtime (a FastAPI dependency; see :data:`RuntimeDep`)."""
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
