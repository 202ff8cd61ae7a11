"""``aflow.executors.Dask``: bodies on the workers of a Dask cluster (``aflow[dask]``).

The run (its graph, limits, retries, compensation and durable state) stays in the
calling process; each attempt is one Dask task, submitted with Dask's own retries off
and a key of its own, released as soon as its answer is here. What crosses is pickled
by aflow (see ``_remote``), so Dask carries bytes and a value that cannot go is an
error naming the task and the argument before anything is sent.

A client works in the event loop it was made in. One this executor opens itself
(``address=``, ``cluster=``) runs in a thread of its own (Dask's "synchronous" client),
so any loop, and any number of them (``aflow.run_sync`` makes one per call), can use
it; a call from another loop than the client's is handed over to the client's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

from .._exceptions import WorkerLost, WorkerMismatch
from . import _remote
from ._base import Call, Executor
from ._remote import answer_of, pickled, run_blob, versions

__all__ = ["Dask"]

#: the states of a task a worker still runs for someone (a cancelled one is "cancelled")
_RUNNING = frozenset({"executing", "long-running"})


class Dask(Executor):
    """Run task bodies (sync, or async in an event loop of the worker thread's) on the
    workers of a Dask cluster. Give one of:

    * ``address``: a scheduler's address (``"tcp://10.0.0.5:8786"``);
    * ``cluster``: a cluster object (``LocalCluster``, dask-jobqueue, dask-kubernetes);
    * ``client``: a ``distributed.Client`` of yours (this executor never closes it).

    The client is opened on first use, and the workers' Python and aflow checked against
    this process's (:class:`~aflow.errors.WorkerMismatch`). Arguments and results must
    pickle, and a task must be a module-level name the workers can import. A worker lost
    mid-attempt (Dask's ``KilledWorker``) is :class:`~aflow.errors.WorkerLost`, retried
    by the task's ``retries``. A body cannot be interrupted: a cancelled or timed-out
    attempt is released (its late result discarded), and a body that checks in with
    :func:`aflow.check_cancelled` stops there.
    """

    name = "dask"

    def __init__(
        self, address: str | None = None, *, cluster: Any = None, client: Any = None
    ) -> None:
        given = [
            name
            for name, v in (("address", address), ("cluster", cluster), ("client", client))
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "aflow.executors.Dask: give one of address=, cluster= or client=, "
                f"got {', '.join(given) or 'none'}"
            )
        if cluster is not None:
            address = getattr(cluster, "scheduler_address", None)
            if not isinstance(address, str):
                raise ValueError(
                    f"aflow.executors.Dask: cluster= must be a Dask cluster (with a "
                    f"scheduler_address), got {cluster!r}"
                )
        if client is not None and not hasattr(client, "submit"):
            raise ValueError(
                f"aflow.executors.Dask: client= must be a distributed.Client, got {client!r}"
            )
        if address is not None and not isinstance(address, str):
            raise ValueError(f"aflow.executors.Dask: address= must be a string, got {address!r}")
        self.address = address
        self._client: Any = client
        self._owned = client is None
        self._lock = threading.Lock()
        #: the check of the workers, begun by the first call (one that failed is dropped)
        self._check: concurrent.futures.Future[None] | None = None

    def __repr__(self) -> str:
        where = self.address if self.address is not None else repr(self._client)
        return f"<aflow.executors.Dask {where}>"

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` in use (``None`` before the first call opens it)."""
        return self._client

    def close(self) -> None:
        """Close the client this executor opened (not one it was given); a later call
        opens a new one."""
        with self._lock:
            client = self._client if self._owned else None
            if self._owned:
                self._client = None
            self._check = None
        if client is not None:
            client.close()

    async def call(
        self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], step: Call
    ) -> Any:
        task = step.task
        blob = pickled(task, target, args, kwargs, step)
        client = await self._connected(task)
        key = f"aflow-{task}-{uuid.uuid4().hex}"
        answer = await _in_loop_of(client, lambda: _submit(client, blob, key, task))
        return answer_of(answer)

    async def _connected(self, task: str) -> Any:
        """The client, opened (in a thread: it blocks) and its workers checked, once."""
        client = self._client
        check = self._check
        if client is not None and check is not None and check.done() and not check.exception():
            return client
        if client is None:
            try:
                client = await asyncio.to_thread(self._open)
            except Exception as exc:
                raise WorkerLost(
                    task, f"the Dask scheduler at {self.address} cannot be reached ({exc})"
                ) from None
        with self._lock:
            check = self._check
            if check is None or (check.done() and check.exception() is not None):
                loop = client.loop.asyncio_loop
                check = asyncio.run_coroutine_threadsafe(_check_workers(client, task), loop)
                self._check = check
        # (shielded: a caller cancelled while it waits leaves the check to the others)
        await asyncio.shield(asyncio.wrap_future(check))
        return client

    def _open(self) -> Any:
        with self._lock:
            if self._client is None:
                from distributed import Client

                self._client = Client(self.address, set_as_default=False)  # type: ignore[no-untyped-call]
            return self._client


async def _in_loop_of(client: Any, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``make()`` in the client's event loop: here if it is this one, else handed
    over to it (cancelling this cancels that)."""
    loop = client.loop.asyncio_loop
    if loop is asyncio.get_running_loop():
        return await make()
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(make(), loop))


async def _submit(client: Any, blob: bytes, key: str, task: str) -> bytes:
    """In the client's loop: one attempt as one Dask task, released once answered."""
    from distributed import KilledWorker

    future = client.submit(_on_worker, blob, key=key, pure=False, retries=0)
    try:
        answer: bytes = await future
        return answer
    except KilledWorker as exc:
        raise WorkerLost(task, f"Dask's KilledWorker: {exc}") from None
    except asyncio.CancelledError as exc:
        now = asyncio.current_task()
        if now is not None and not now.cancelling():  # Dask cancelled it, not our caller
            raise WorkerLost(task, f"Dask cancelled the task ({exc})") from None
        raise
    finally:
        future.release()  # (a running body is cancelled there, and its result dropped)


async def _check_workers(client: Any, task: str) -> None:
    """In the client's loop: every worker runs this process's Python and aflow; and a
    warning if the scheduler re-runs a lost worker's tasks itself."""
    ours = _remote.CALLER
    try:
        theirs: dict[str, Any] = await client.run(versions)
    except (ImportError, AttributeError) as exc:
        raise WorkerMismatch(task, "a Dask worker", _described(ours), f"no aflow ({exc})") from None
    for worker, pair in sorted(theirs.items()):
        if tuple(pair) != ours:
            raise WorkerMismatch(task, f"Dask worker {worker}", _described(ours), _described(pair))
    try:
        allowed = await client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.allowed_failures
        )
    except Exception:  # (an older scheduler: nothing to tell)
        return
    if allowed:
        warnings.warn(
            f"the Dask scheduler at {client.scheduler.address} re-runs a task whose worker "
            f"died, up to {allowed} times (distributed.scheduler.allowed-failures), before "
            "aflow hears of it: a body may run again within one attempt. Set it to 0 for "
            "aflow's retries alone (README: Running steps elsewhere).",
            UserWarning,
            stacklevel=1,
        )


def _described(pair: Any) -> str:
    return f"Python {pair[0]}, aflow {pair[1]}"


def _on_worker(blob: bytes) -> bytes:
    """On a Dask worker: call the body; the caller gave up on it once Dask cancelled its
    task there (what :func:`aflow.check_cancelled` sees)."""
    from distributed import get_worker

    worker = get_worker()
    key = worker.get_current_task()
    tasks = worker.state.tasks

    def cancelled() -> bool:
        state = tasks.get(key)
        return state is None or state.state not in _RUNNING

    return run_blob(blob, cancelled, f"Dask worker {worker.address}")
