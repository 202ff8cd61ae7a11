"""The ``"process"`` executor: bodies in a pool of worker processes.

What crosses to a worker is pickled before it is sent (see ``_remote``), so a value that
cannot go is an error naming the task and the argument at once (a pool would fail later,
in a thread of its own). A body is named, not sent: a task (or a revert function) must
be a module-level name the worker can import. Workers start with ``spawn`` (a fork of a
process running an event loop and threads is unsafe), once, and are reused. A body
that checks in (:func:`aflow.check_cancelled`) learns that its caller gave up on it from
a marker file, made only then.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import itertools
import multiprocessing
import multiprocessing.connection
import os
import shutil
import tempfile
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .._exceptions import WorkerLost
from ._base import Call, Executor
from ._remote import answer_of, pickled, process_name, run_blob

__all__ = ["Process", "default_pool", "shutdown"]


class Process(Executor):
    """Run task bodies (sync, or async in an event loop of the worker's) in worker
    processes: ``max_workers`` (default: the machine's CPUs), started on first use and
    reused. Arguments and results must pickle. A body cannot be interrupted: a
    cancelled or timed-out attempt is abandoned (its late result discarded) while the
    worker finishes it, unless it checks in with :func:`aflow.check_cancelled`."""

    name = "process"
    one_body_per_process = True

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and (isinstance(max_workers, bool) or max_workers < 1):
            raise ValueError(f"max_workers must be a number >= 1, got {max_workers!r}")
        self.max_workers = max_workers
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        #: attempts abandoned (cancelled, timed out) while their body ran, by run and
        #: step: the step's next attempt, or its revert, waits for that body to end first
        self._abandoned: dict[tuple[str, str], Future[bytes]] = {}
        #: where the markers of abandoned attempts go (made with the first call)
        self._markers: str | None = None
        self._calls = itertools.count()

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
            markers, self._markers = self._markers, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)
        if markers is not None:
            shutil.rmtree(markers, ignore_errors=True)

    def _marker(self) -> str:
        with self._lock:
            if self._markers is None:
                self._markers = tempfile.mkdtemp(prefix="aflow-process-")
            return os.path.join(self._markers, str(next(self._calls)))

    async def call(
        self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], step: Call
    ) -> Any:
        task = step.task
        blob = pickled(task, target, args, kwargs, step)
        where = (step.run_id, step.key)
        running = self._abandoned.pop(where, None)
        if running is not None:  # (its last body still runs: a retry or a revert waits)
            await asyncio.wait([asyncio.wrap_future(running)])
        pool = self._workers()
        try:
            marker = self._marker()
            future = pool.submit(_run, blob, marker)
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
                _give_up(future, marker)
            raise
        except BrokenProcessPool as exc:
            self._lost(pool)
            raise WorkerLost(task, str(exc) or "a worker process died") from None
        return answer_of(answer)


def _give_up(future: Future[bytes], marker: str) -> None:
    """Tell a running body that its caller gave up on it (what check_cancelled() sees),
    and drop the marker once it has ended."""
    try:
        with open(marker, "x"):
            pass
    except OSError:  # (shut down meanwhile: nothing left to tell)
        return
    future.add_done_callback(lambda _: _unlink(marker))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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


def _run(blob: bytes, marker: str) -> bytes:
    """In a worker: call the body (see :func:`run_blob`); the caller gives up on it by
    making the file ``marker``."""
    return run_blob(blob, functools.partial(os.path.exists, marker), process_name())


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
