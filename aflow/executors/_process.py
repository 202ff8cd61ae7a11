"""The ``"process"`` executor: bodies in a pool of worker processes.

What crosses to a worker is pickled here, before it is sent, so a value that cannot go
is a :class:`~aflow.errors.SerializationError` naming the task and the argument at
once (a pool would fail later, in a thread of its own). A body is named, not sent: a
task (or a revert function) must be a module-level name the worker can import.
Workers start with ``spawn`` (a fork of a process running an event loop and threads is
unsafe), once, and are reused.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import multiprocessing
import multiprocessing.connection
import os
import pickle
import threading
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .._exceptions import RemoteError, SerializationError, WorkerLost
from ._base import REMOTE_STEP, Call, Executor

__all__ = ["Process", "default_pool", "shutdown"]


class Process(Executor):
    """Run task bodies (sync, or async in an event loop of the worker's) in worker
    processes: ``max_workers`` (default: the machine's CPUs), started on first use and
    reused. Arguments and results must pickle. A body cannot be interrupted: a
    cancelled or timed-out attempt is abandoned (its late result discarded) while the
    worker finishes it."""

    name = "process"

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and (isinstance(max_workers, bool) or max_workers < 1):
            raise ValueError(f"max_workers must be a number >= 1, got {max_workers!r}")
        self.max_workers = max_workers
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        #: attempts abandoned (cancelled, timed out) while their body ran, by run and
        #: step: the step's next attempt, or its revert, waits for that body to end first
        self._abandoned: dict[tuple[str, str], Future[bytes]] = {}

    def __repr__(self) -> str:
        return f"<aflow.executors.Process max_workers={self.max_workers}>"

    def _workers(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.max_workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_die_with_parent,
                )
            return self._pool

    def _lost(self, pool: ProcessPoolExecutor) -> None:
        """A pool broken by a dead worker is replaced (the next attempt gets a new one)."""
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers (a later call starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)

    async def call(
        self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], step: Call
    ) -> Any:
        task = step.task
        blob = _pickled(task, target, args, kwargs, step)
        where = (step.run_id, step.key)
        running = self._abandoned.pop(where, None)
        if running is not None:  # (its last body still runs: a retry or a revert waits)
            await asyncio.wait([asyncio.wrap_future(running)])
        pool = self._workers()
        try:
            future = pool.submit(_run, blob)
        except (BrokenProcessPool, RuntimeError) as exc:  # (broken, or shut down)
            self._lost(pool)
            raise WorkerLost(task, str(exc) or "its pool is broken") from None
        try:
            answer = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task_now = asyncio.current_task()
            if future.cancelled() and (task_now is None or not task_now.cancelling()):
                # the pool cancelled it (shut down), not our caller
                raise WorkerLost(task, "its pool was shut down") from None
            if not future.cancel():  # running: dropped, but waited for by what follows
                self._abandoned[where] = future
            raise
        except BrokenProcessPool as exc:
            self._lost(pool)
            raise WorkerLost(task, str(exc) or "a worker process died") from None
        ok, value = pickle.loads(answer)
        if ok:
            return value
        raise value


def _pickled(
    task: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], step: Call
) -> bytes:
    """What a worker is sent, or a SerializationError naming what cannot go (looked for
    only when the whole does not pickle)."""
    try:
        return pickle.dumps((target, args, kwargs, step))
    except Exception:
        pass
    try:
        pickle.dumps(target)
    except Exception as exc:
        raise SerializationError(
            task,
            type(target),
            detail=f"a body run in another process is named, not sent: define "
            f"{getattr(target, '__qualname__', target)!r} at a module's top level ({exc})",
        ) from None
    for where, value in (
        *((f"argument {i}", a) for i, a in enumerate(args)),
        *((f"argument {name!r}", v) for name, v in kwargs.items()),
    ):
        try:
            pickle.dumps(value)
        except Exception as exc:
            raise SerializationError(
                task,
                type(value),
                where,
                f"what a body in another process is given must pickle ({exc})",
            ) from None
    return pickle.dumps((target, args, kwargs, step))


def _die_with_parent() -> None:
    """In a new worker: die when the process that started it dies (a SIGKILL of the
    caller would otherwise leave a worker running its body to the end for nobody). A
    thread waits on the parent's sentinel: the process, not the thread that spawned
    the worker (as Linux's PR_SET_PDEATHSIG would)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="aflow parent watch", daemon=True).start()


def _run(blob: bytes) -> bytes:
    """In a worker: call the body, and give back its value or its error, pickled."""
    target, args, kwargs, step = pickle.loads(blob)
    fn = getattr(target, "fn", target)  # (a task: its function; a revert: itself)
    token = REMOTE_STEP.set(step)
    try:
        if inspect.iscoroutinefunction(fn):
            value = asyncio.run(_in_context(fn, args, kwargs, step))
        else:
            value = fn(*args, **kwargs)
    except BaseException as exc:  # (sent back whatever it is: the caller decides)
        return _error(exc)
    finally:
        REMOTE_STEP.reset(token)
    try:
        return pickle.dumps((True, value))
    except Exception as exc:
        name = step.task
        error = SerializationError(
            name, type(value), detail=f"a result from another process must pickle ({exc})"
        )
        return pickle.dumps((False, error))


async def _in_context(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], step: Call) -> Any:
    REMOTE_STEP.set(step)  # (asyncio.run copies the context as it was: set it here too)
    return await fn(*args, **kwargs)


def _error(exc: BaseException) -> bytes:
    text = "".join(traceback.format_exception(exc))
    try:
        exc.add_note(f"aflow: raised in worker process {os.getpid()}")
        blob = pickle.dumps((False, exc))
        pickle.loads(blob)  # (a type the caller could not rebuild fails here, not there)
        return blob
    except Exception:
        kind = type(exc)
        name = kind.__qualname__
        if kind.__module__ != "builtins":
            name = f"{kind.__module__}.{name}"
        return pickle.dumps((False, RemoteError(name, str(exc), text)))


_DEFAULT: Process | None = None
_DEFAULT_LOCK = threading.Lock()


def default_pool() -> Process:
    """The process-wide pool ``executor="process"`` names (its workers stop at exit)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Process()
            atexit.register(shutdown)
        return _DEFAULT


def shutdown() -> None:
    """Stop the workers of ``executor="process"``'s pool (a later use starts new ones)."""
    if _DEFAULT is not None:
        _DEFAULT.shutdown(wait=True)
