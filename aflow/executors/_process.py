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
import functools
import itertools
import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import queue
import select
import shutil
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any

from .._exceptions import WorkerLost
from ._base import Call, Executor
from ._remote import answer_of, pickled, run_blob

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
        #: pools shut down without waiting, whose bodies may still run
        self._stopping: list[_Pool] = []
        self._release: weakref.finalize[Any, Any] | None = None
        _EXECUTORS.add(self)

    def __repr__(self) -> str:
        return f"<aflow.executors.Process max_workers={self.max_workers}>"

    def _workers(self) -> _Pool:
        with self._lock:
            if self._pool is None:
                self._pool = pool = _Pool(self.max_workers or os.cpu_count() or 1)
                # (a pool dropped unused stops its workers; at exit, they end once their
                # bodies have, and none waits forever: see _at_exit)
                self._release = release = weakref.finalize(self, pool.shutdown, False)
                release.atexit = False
            return self._pool

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers (a later call starts new ones): calls still queued are
        cancelled; with ``wait``, running bodies are waited for (those of an earlier
        shutdown that did not wait, too)."""
        with self._lock:
            pool, self._pool = self._pool, None
            release, self._release = self._release, None
            stopping = self._stopping
            self._stopping = [] if wait else [*stopping, *([pool] if pool else [])]
        if release is not None:
            release.detach()
        if pool is not None:
            pool.shutdown(wait)
        if wait:
            for earlier in stopping:
                earlier.shutdown(True)

    def _forked(self) -> None:
        """In a child forked from a process that used this pool: its threads and workers
        are the parent's; the child starts its own with its first call."""
        self._lock = threading.Lock()
        self._pool, self._release, self._stopping = None, None, []
        self._abandoned = {}

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
        pool = self._workers()
        marker = pool.marker()
        future = pool.submit(blob, marker)
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
        self._lock = threading.Lock()
        self._closed = False
        #: where the markers of abandoned attempts go: removed once no body can look
        self._markers = tempfile.mkdtemp(prefix="aflow-process-")
        self._marked = itertools.count()
        self._serving = size
        self._threads = [
            threading.Thread(target=self._serve, name=f"aflow process {i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()
        _POOLS.add(self)
        # at exit (of this process, or of a multiprocessing child that used aflow): its
        # bodies are waited for, and its workers stop, before multiprocessing waits for
        # its children (atexit runs in no such child, and this runs before that wait)
        self._at_exit = multiprocessing.util.Finalize(
            self, self.shutdown, args=(True,), exitpriority=10
        )

    def marker(self) -> str:
        """A path no body has been given yet (the file is made only to tell it)."""
        return os.path.join(self._markers, str(next(self._marked)))

    def submit(self, blob: bytes, marker: str) -> Future[bytes]:
        future: Future[bytes] = Future()
        with self._lock:  # (never into a queue no thread serves any more)
            if self._closed:
                future.cancel()
            else:
                self._calls.put((future, blob, marker))
        return future

    def shutdown(self, wait: bool) -> None:
        if wait:
            self._at_exit.cancel()
        with self._lock:
            self._closed = True
            while True:  # (what is queued never starts)
                try:
                    call = self._calls.get_nowait()
                except queue.Empty:
                    break
                if call is not None:
                    call[0].cancel()
            for _ in self._threads:  # (again: the drain took those of an earlier shutdown)
                self._calls.put(None)
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _serve(self) -> None:
        """A thread: hand calls to its worker, started (in this thread: a spawn blocks)
        with its first call and again after it died."""
        worker: _Worker | None = None
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
                why = "it did not start"
                for _ in range(3):  # (a worker found dead before it took the call: again)
                    if worker is not None and not worker.alive():
                        worker.died()
                        worker = None
                    if worker is None:
                        try:
                            worker = _Worker()
                        except BaseException as exc:  # (the spawn failed)
                            why = f"no worker process started ({exc!r})"
                            break
                    if not worker.send(marker, blob):  # (dead, or dying: it took nothing)
                        why = worker.died()
                        worker = None
                        continue
                    answer = worker.receive()
                    if answer is not None:
                        future.set_result(answer)
                        break
                    took = worker.took_it()
                    why = worker.died()
                    worker = None
                    if took:  # (it died running this call: the call's own loss)
                        future.set_exception(_Lost(why))
                        break
                else:
                    future.set_exception(_Lost(why))
                    continue
                if not future.done():
                    future.set_exception(_Lost(why))
        finally:
            if worker is not None:
                worker.stop()
            with self._lock:
                self._serving -= 1
                last = self._serving == 0
            if last:  # (no body of this pool runs any more: none looks at a marker)
                shutil.rmtree(self._markers, ignore_errors=True)


class _Worker:
    """One worker process and this side of its pipe."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, theirs = context.Pipe()
        #: how many calls it has taken (shared memory: a worker found dead that had not
        #: taken the call it was sent never ran it, and the call goes to another)
        self.taken = context.RawValue("Q", 0)
        self.sent = 0
        self.process = context.Process(
            target=_worker_main, args=(theirs, self.taken), name="aflow worker"
        )
        self.process.start()
        theirs.close()  # (so a dead worker is an EOF here, unless a fork of it holds it)
        # the process itself, watched (Linux): a child a body forked keeps the pipe open
        pidfd_open = getattr(os, "pidfd_open", None)
        self.watch: int | None = None
        self.poller: select.poll | None = None
        if pidfd_open is not None and self.process.pid is not None:
            try:
                self.watch = pidfd_open(self.process.pid)
            except OSError:
                self.watch = None
            else:
                self.poller = select.poll()
                self.poller.register(self.conn.fileno(), select.POLLIN)
                self.poller.register(self.watch, select.POLLIN)

    def alive(self) -> bool:
        return self.process.is_alive()

    def send(self, marker: str, blob: bytes) -> bool:
        """Hand it a call (False: it is dead, and took nothing)."""
        try:
            self.conn.send_bytes(marker.encode())
            self.conn.send_bytes(blob)
        except OSError:
            return False
        self.sent += 1
        return True

    def took_it(self) -> bool:
        """It took the last call it was sent (read once it is dead)."""
        return int(self.taken.value) >= self.sent

    def receive(self) -> bytes | None:
        """Its answer (None: it died first)."""
        try:
            poller = self.poller
            if poller is None:
                return bytes(self.conn.recv_bytes())
            conn = self.conn.fileno()
            while True:
                ready = poller.poll()
                if any(fd == conn for fd, _ in ready):
                    return bytes(self.conn.recv_bytes())
                if not self.process.is_alive():  # (gone, with no answer left in the pipe)
                    return bytes(self.conn.recv_bytes()) if self.conn.poll() else None
        except (EOFError, OSError):
            return None

    def died(self) -> str:
        self.process.join(5)
        if self.process.is_alive():  # (its pipe broke, yet it lives: it is of no use)
            self.process.kill()
            self.process.join()
        self.close()
        return f"worker process {self.process.pid} died (exit code {self.process.exitcode})"

    def stop(self) -> None:
        try:
            self.conn.send_bytes(b"")
        except OSError:
            pass
        self.process.join()
        self.close()

    def close(self) -> None:
        self.conn.close()
        if self.watch is not None:
            os.close(self.watch)
            self.watch = None


def _worker_main(conn: Any, taken: Any) -> None:
    """A worker process: call one body after another, as its thread hands them over."""
    _die_with_parent()
    try:
        while True:
            try:
                marker = conn.recv_bytes()
            except (EOFError, OSError):
                return
            if not marker:
                return
            blob = conn.recv_bytes()
            taken.value += 1  # (from here, its death is this call's)
            conn.send_bytes(_run(blob, marker.decode()))
    finally:
        _end_children()


def _end_children() -> None:
    """As a worker ends: what its bodies started and left running (a pool of their own,
    a helper process) ends too; multiprocessing would wait for them for ever."""
    _at_exit()  # (a pool of aflow's a body used here: its workers end with their bodies)
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()


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
    thread watches the parent process itself (a pidfd on Linux, else its pid), not the
    thread that spawned the worker (as Linux's PR_SET_PDEATHSIG would), nor a pipe a
    fork of the parent would hold open."""
    parent = os.getppid()

    def watch() -> None:
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None:
            try:
                fd = pidfd_open(parent)
            except OSError:  # (gone already)
                os._exit(1)
            multiprocessing.connection.wait([fd])
        else:
            while os.getppid() == parent:
                time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="aflow parent watch", daemon=True).start()


def _run(blob: bytes, marker: str) -> bytes:
    """In a worker: call the body (see :func:`run_blob`); the caller gives up on it by
    making the file ``marker``."""
    where = f"worker process {os.getpid()}"
    return run_blob(blob, functools.partial(os.path.exists, marker), where)


#: every pool alive, and every Process executor (for exit and fork)
_POOLS: weakref.WeakSet[_Pool] = weakref.WeakSet()
_EXECUTORS: weakref.WeakSet[Process] = weakref.WeakSet()


def _at_exit() -> None:
    """Every pool's queued calls are cancelled, its running bodies waited for."""
    for pool in list(_POOLS):
        pool.shutdown(True)


def _after_fork() -> None:
    """In a forked child: the parent's pools are not this process's (no thread serves
    them here): each executor starts its own with its first call."""
    _POOLS.clear()
    for executor in list(_EXECUTORS):
        executor._forked()


os.register_at_fork(after_in_child=_after_fork)

_DEFAULT: Process | None = None
_DEFAULT_LOCK = threading.Lock()


def default_pool() -> Process:
    """The process-wide pool ``executor="process"`` names (its workers stop at exit)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Process()  # (its pool stops at exit: see _Pool's finalizer)
        return _DEFAULT


def shutdown() -> None:
    """Stop the workers of ``executor="process"``'s pool (a later use starts new ones)."""
    if _DEFAULT is not None:
        _DEFAULT.shutdown(wait=True)
