"""Running plain (sync) task functions in worker threads."""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

__all__ = ["DEFAULT_THREADS", "default_thread_limiter", "run_in_executor", "run_in_thread"]

T = TypeVar("T")

#: Threads aflow lets sync tasks use at once, per event loop, unless told otherwise.
DEFAULT_THREADS = 40

_limiters: weakref.WeakKeyDictionary[object, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()


class _NoLoop:
    pass


_NO_LOOP = _NoLoop()


def default_thread_limiter() -> anyio.CapacityLimiter:
    """The limiter aflow owns for sync tasks on the current event loop.

    It is separate from anyio's default limiter, so aflow's sync tasks never
    starve (or are starved by) the application's own ``to_thread`` calls.
    """
    import asyncio

    try:
        loop: object = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): one limiter per process is fine there
        loop = _NO_LOOP
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(DEFAULT_THREADS)
    return limiter


async def run_in_thread(fn: Callable[[], T], limiter: anyio.CapacityLimiter | None) -> T:
    """Run ``fn`` in a worker thread; contextvars are copied in (anyio does that).

    Threads cannot be interrupted: if the awaiting task is cancelled, the
    cancellation waits for the function to return, so no thread outlives the run.
    """
    return await anyio.to_thread.run_sync(fn, limiter=limiter or default_thread_limiter())


async def run_in_executor(fn: Callable[[], T], executor: Executor) -> T:
    """Run ``fn`` in a caller-given ``concurrent.futures`` executor (asyncio only).

    As with :func:`run_in_thread`, a cancelled caller waits for ``fn`` to
    return before the cancellation goes on, so no work outlives the run.
    """
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(executor, contextvars.copy_context().run, fn)
    error: BaseException | None = None
    done: Any = None
    with anyio.CancelScope(shield=True):
        try:
            done = await asyncio.shield(future)
        except asyncio.CancelledError:  # a native cancel: wait for the thread, then go on
            await asyncio.wait([future])
            raise
        except BaseException as exc:  # raised below, unless the run was cancelled meanwhile
            error = exc
    await anyio.lowlevel.checkpoint_if_cancelled()
    if error is not None:
        raise error
    result: T = done
    return result
