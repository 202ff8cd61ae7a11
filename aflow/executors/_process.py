"""The ``"process"`` executor: bodies in a pool of worker processes.

What crosses to a worker is pickled before it is sent (see ``_remote``), so a value that
cannot go is an error naming the task and the argument at once (a pool would fail later,
in a thread of its own). A body is named, not sent: a task (or a revert function) must
be a module-level name the worker can import. Workers start with ``spawn`` (a fork of a
process running an event loop and threads is unsafe), once, and are reused. A body
that checks in (:func:`aflow.check_cancelled`) learns that its caller gave up on it from
a marker file, made only then (in a folder of the pool's, made with its first call).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import itertools
import multiprocessing
import multiprocessing.connection
import os
import queue
import shutil
import tempfile
import threading
import weakref
from concurrent.futures import Future
from typing import Any

from .._exceptions import WorkerLost
from ._base import Call, Executor
from ._remote import answer_of, pickled, process_name, run_blob

__all__ = ["Process", "default_pool", "shutdown"]


class Process(Executor):
    """Run task bodies (sync, or async in an event loop of the worker's) in worker
    processes: ``max_workers`` (default: the machine's CPUs), each started with its
    first call and reused. Arguments and results must pickle. A body cannot be
    interrupted: a cancelled or timed-out attempt is abandoned (its late result
    discarded) while the worker finishes it, unless it checks in with
    :func:`aflow.check_cancelled`; one still queued never starts. A worker that dies
    fails its own call alone (:class:`~aflow.errors.WorkerLost`) and is replaced."""

    name = "process"
    one_body_per_process = True

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and (isinstance(max_workers, bool) or max_workers < 1):
            raise ValueError(f"max_workers must be a number >= 1, got {max_workers!r}")
        self.max_workers = max_workers
        self._pool: _Pool | None = None
        self._lock = threading.Lock()
        #: attempts abandoned (cancelled, timed out) while their body ran, by run and
        #: step: the step's next attempt, or its revert, waits for that body to end first
        self._abandoned: dict[tuple[str, str], Future[bytes]] = {}
        #: where the markers of abandoned attempts go (made with the first call)
        self._markers: str | None = None
        self._calls = itertools.count()

    def __repr__(self) -> str:
        return f"<aflow.executors.Process max_workers={self.max_workers}>"

    def _workers(self) -> _Pool:
        with self._lock:
            if self._pool is None:
                self._pool = _Pool(self.max_workers or os.cpu_count() or 1)
                # (at exit, its workers end once their bodies have: none waits forever)
                atexit.register(self._pool.shutdown, True)
            return self._pool

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers (a later call starts new ones): calls still queued are
        cancelled; with ``wait``, running bodies are waited for."""
        with self._lock:
            pool, self._pool = self._pool, None
            markers, self._markers = self._markers, None
        if pool is not None:
            atexit.unregister(pool.shutdown)
            pool.shutdown(wait)
        if markers is not None and wait:  # (else bodies told to stop may still look)
            shutil.rmtree(markers, ignore_errors=True)

    def _marker(self) -> str:
        with self._lock:
            if self._markers is None:
                self._markers = tempfile.mkdtemp(prefix="aflow-process-")
                # (removed with the pool at the latest: at exit, or once it is collected)
                weakref.finalize(self, shutil.rmtree, self._markers, True)
            return os.path.join(self._markers, str(next(self._calls)))

    async def call(
        self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], step: Call
    ) -> Any:
        task = step.task
        blob = pickled(task, target, args, kwargs, step)
        where = (step.run_id, step.key)
        running = self._abandoned.get(where)
        if running is not None:  # (its last body still runs: a retry or a revert waits;
            # cancelled meanwhile, the entry stays for what comes next)
            await asyncio.wait([asyncio.wrap_future(running)])
        marker = self._marker()
        future = self._workers().submit(blob, marker)
        try:
            answer = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task_now = asyncio.current_task()
            if future.cancelled() and (task_now is None or not task_now.cancelling()):
                # the pool cancelled it (shut down), not our caller
                raise WorkerLost(task, "its pool was shut down") from None
            if not future.cancel():  # running: dropped, but waited for by what follows
                self._abandon(where, future)
                _give_up(future, marker)
            raise
        except _Lost as exc:
            raise WorkerLost(task, str(exc)) from None
        return answer_of(answer, task, args, kwargs)

    def _abandon(self, where: tuple[str, str], future: Future[bytes]) -> None:
        """Keep ``future`` for the step's next attempt or revert to wait for, until its
        body has ended."""
        self._abandoned[where] = future

        def ended(_: object) -> None:
            if self._abandoned.get(where) is future:
                del self._abandoned[where]

        future.add_done_callback(ended)


class _Lost(Exception):
    """The worker running a call died."""


class _Pool:
    """``size`` worker processes, each served by a thread of this process that hands it
    one call at a time: a worker that dies fails its own call alone, and is replaced
    with the next call its thread takes (a ``ProcessPoolExecutor`` breaks as a whole,
    and counts calls it has queued as running, so they cannot be cancelled)."""

    def __init__(self, size: int) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[bytes], bytes, str] | None] = (
            queue.SimpleQueue()
        )
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"aflow process {i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, blob: bytes, marker: str) -> Future[bytes]:
        future: Future[bytes] = Future()
        if self._closed:
            future.cancel()
        else:
            self._calls.put((future, blob, marker))
        return future

    def shutdown(self, wait: bool) -> None:
        self._closed = True
        while True:  # (what is queued never starts)
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                break
            if call is not None:
                call[0].cancel()
        for _ in self._threads:
            self._calls.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _serve(self) -> None:
        """A thread: hand calls to its worker, started (in this thread: a spawn blocks)
        with its first call and again after it died."""
        context = multiprocessing.get_context("spawn")
        worker: Any = None
        conn: Any = None
        try:
            while True:
                call = self._calls.get()
                if call is None or self._closed:
                    if call is not None:
                        call[0].cancel()
                    return
                future, blob, marker = call
                if not future.set_running_or_notify_cancel():
                    continue  # (cancelled while queued: never started)
                if worker is None:
                    try:
                        conn, theirs = context.Pipe()
                        worker = context.Process(
                            target=_worker_main, args=(theirs,), name="aflow worker"
                        )
                        worker.start()
                        theirs.close()  # (so a dead worker is an EOF here)
                    except BaseException as exc:  # (the spawn failed)
                        worker = conn = None
                        future.set_exception(_Lost(f"no worker process could start ({exc!r})"))
                        continue
                try:
                    conn.send_bytes(marker.encode())
                    conn.send_bytes(blob)
                    answer = conn.recv_bytes()
                except (EOFError, OSError):
                    worker.join()
                    why = f"worker process {worker.pid} died (exit code {worker.exitcode})"
                    conn.close()
                    worker = conn = None
                    future.set_exception(_Lost(why))
                    continue
                future.set_result(answer)
        finally:
            if worker is not None:
                try:
                    conn.send_bytes(b"")  # (stop)
                except OSError:
                    pass
                worker.join()
                conn.close()


def _worker_main(conn: Any) -> None:
    """A worker process: call one body after another, as its thread hands them over."""
    _die_with_parent()
    while True:
        try:
            marker = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not marker:
            return
        blob = conn.recv_bytes()
        conn.send_bytes(_run(blob, marker.decode()))


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
