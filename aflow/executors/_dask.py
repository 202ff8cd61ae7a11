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

An attempt given up on (cancelled, timed out) is released: Dask cancels its task, and
a body that checks in (:func:`aflow.check_cancelled`) sees it. A body that does not
runs on; the step's next attempt, or its revert, waits until no worker runs it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
import warnings
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Self

from .._exceptions import WorkerLost, WorkerMismatch
from . import _remote
from ._base import Call, Executor
from ._remote import answer_of, pickled, run_blob, versions

__all__ = ["Dask", "for_client"]

#: the states of a task a worker still runs (a released one is "cancelled" until then)
_RUNNING = frozenset({"executing", "long-running"})
_BUSY = frozenset({"executing", "long-running", "cancelled", "resumed"})
#: how often a step whose last body was abandoned asks whether it still runs
_POLL_S = 0.05
#: abandoned attempts no later attempt or revert asked about: looked at past this many
_PRUNE_AT = 256


class Dask(Executor):
    """Run task bodies (sync, or async in an event loop of the worker thread's) on the
    workers of a Dask cluster. Give one of:

    * ``address``: a scheduler's address (``"tcp://10.0.0.5:8786"``), with its
      ``security`` (a ``distributed.Security``) for TLS;
    * ``cluster``: a cluster object (``LocalCluster``, dask-jobqueue, dask-kubernetes),
      reached with its own security;
    * ``client``: a ``distributed.Client`` of yours (this executor never closes it).

    ``resources``, ``workers``, ``allow_other_workers`` and ``priority`` go to every
    ``client.submit`` (a GPU step: ``Dask(client=c, resources={"GPU": 1})``; several
    executors may share one client). The client is opened on first use, and the
    workers' Python and aflow checked against this process's
    (:class:`~aflow.errors.WorkerMismatch`). Arguments and results must pickle, and a
    task must be a module-level name the workers can import. A worker lost mid-attempt
    (Dask's ``KilledWorker``), a scheduler gone, or a task Dask cancelled is
    :class:`~aflow.errors.WorkerLost`, retried by the task's ``retries``. A body cannot
    be interrupted: a cancelled or timed-out attempt is released (its late result
    discarded), a body that checks in with :func:`aflow.check_cancelled` stops there,
    and the step's next attempt or revert waits for one that does not.
    """

    name = "dask"

    def __init__(
        self,
        address: str | None = None,
        *,
        cluster: Any = None,
        client: Any = None,
        security: Any = None,
        resources: Mapping[str, float] | None = None,
        workers: str | Sequence[str] | None = None,
        allow_other_workers: bool = False,
        priority: int = 0,
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
            security = security if security is not None else getattr(cluster, "security", None)
        if client is not None and not hasattr(client, "submit"):
            raise ValueError(
                f"aflow.executors.Dask: client= must be a distributed.Client, got {client!r}"
            )
        if client is not None and security is not None:
            raise ValueError("aflow.executors.Dask: security= goes with address=, not client=")
        if address is not None and not isinstance(address, str):
            raise ValueError(f"aflow.executors.Dask: address= must be a string, got {address!r}")
        self.address = address
        self._security = security
        self._submit: dict[str, Any] = {"allow_other_workers": allow_other_workers}
        if resources is not None:
            self._submit["resources"] = dict(resources)
        if workers is not None:
            self._submit["workers"] = workers
        if priority:
            self._submit["priority"] = priority
        self._client: Any = client
        self._owned = client is None
        self._lock = threading.Lock()
        #: the check of the workers, begun by the first call (one that failed is dropped)
        self._check: concurrent.futures.Future[int] | None = None
        self._warned = False
        #: attempts given up on while their body may run, by run and step: their key
        self._abandoned: dict[tuple[str, str], str] = {}

    def __repr__(self) -> str:
        where = self.address if self.address is not None else repr(self._client)
        return f"<aflow.executors.Dask {where}>"

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` in use (``None`` before the first call opens it)."""
        return self._client

    def close(self) -> None:
        """Close the client this executor opened (not one it was given); a later call
        opens a new one. It blocks: from async code, ``await executor.aclose()``."""
        with self._lock:
            client = self._client if self._owned else None
            if self._owned:
                self._client = None
            self._check = None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """:meth:`close`, in a worker thread."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def call(
        self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], step: Call
    ) -> Any:
        task = step.task
        blob = pickled(task, target, args, kwargs, step)
        client = await self._connected(task)
        where = (step.run_id, step.key)
        left = self._abandoned.get(where)
        if left is not None:  # (its last body may still run: a retry or a revert waits;
            # cancelled meanwhile, the entry stays for what comes next)
            await _in_loop_of(client, lambda: _until_ended(client, left), task)
            if self._abandoned.get(where) == left:
                del self._abandoned[where]
        if len(self._abandoned) > _PRUNE_AT:  # (those whose body has ended go)
            await _in_loop_of(client, lambda: _prune(client, self._abandoned), task)
        key = f"aflow-{task}-{uuid.uuid4().hex}"
        options = self._submit
        try:
            answer = await _in_loop_of(
                client, lambda: _submit(client, blob, key, task, options), task
            )
        except asyncio.CancelledError:
            self._abandoned[where] = key
            raise
        return answer_of(answer, task, args, kwargs)

    async def _connected(self, task: str) -> Any:
        """The client, opened (in a thread: it blocks) and its workers checked, once;
        one this executor opened that has closed since (its scheduler gone too long)
        is opened again."""
        client = self._client
        check = self._check
        if self._owned and client is not None and client.status in ("closing", "closed"):
            with self._lock:
                if self._client is client:
                    self._client, self._check = None, None
            client = None
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
                check = self._check = _hand_over(client, _check_workers(client, task))
        # (shielded: a caller cancelled while it waits leaves the check to the others)
        allowed = await _awaited(asyncio.shield(asyncio.wrap_future(check)), task)
        if allowed and not self._warned:
            self._warned = True
            warnings.warn(
                f"the Dask scheduler at {client.scheduler.address} re-runs a task whose "
                f"worker died, up to {allowed} times (distributed.scheduler.allowed-"
                "failures), before aflow hears of it: a body may run again within one "
                "attempt. Set it to 0 for aflow's retries alone (README: Running steps "
                "elsewhere).",
                UserWarning,
                stacklevel=4,
            )
        return client

    def _open(self) -> Any:
        with self._lock:
            if self._client is None:
                from distributed import Client

                self._client = Client(  # type: ignore[no-untyped-call]
                    self.address, security=self._security, set_as_default=False
                )
            return self._client


_FOR_CLIENT: weakref.WeakKeyDictionary[Any, Dask] = weakref.WeakKeyDictionary()
_FOR_CLIENT_LOCK = threading.Lock()


def for_client(client: Any) -> Dask:
    """The executor a ``distributed.Client`` given as such stands for: one per client,
    so its workers are checked once, not per run."""
    with _FOR_CLIENT_LOCK:
        found = _FOR_CLIENT.get(client)
        if found is None:
            found = _FOR_CLIENT[client] = Dask(client=client)
        return found


def _hand_over(client: Any, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
    """Start ``coro`` in the client's event loop (a RuntimeError, not a wait forever,
    when that loop no longer runs)."""
    loop = client.loop.asyncio_loop
    if loop is None or not loop.is_running():
        coro.close()
        raise RuntimeError(
            f"the Dask client {client!r} belongs to an event loop that no longer runs (a "
            "client made with asynchronous=True in another asyncio.run, say): give "
            "aflow.executors.Dask(address=...), whose client works from any loop"
        )
    return asyncio.run_coroutine_threadsafe(coro, loop)


async def _in_loop_of(client: Any, make: Callable[[], Coroutine[Any, Any, Any]], task: str) -> Any:
    """Run ``make()`` in the client's event loop: here if it is this one, else handed
    over to it (cancelling this cancels that)."""
    if client.loop.asyncio_loop is asyncio.get_running_loop():
        return await _awaited(make(), task)
    return await _awaited(asyncio.wrap_future(_hand_over(client, make())), task)


async def _awaited(awaitable: Any, task: str) -> Any:
    """Await ``awaitable``; a cancel that did not come to this task (the client's loop
    ended, Dask cancelled its task) is the worker lost, not this run cancelled."""
    try:
        return await awaitable
    except asyncio.CancelledError:
        now = asyncio.current_task()
        if now is not None and not now.cancelling():
            raise WorkerLost(task, "the Dask client's event loop cancelled the call") from None
        raise


async def _submit(
    client: Any, blob: bytes, key: str, task: str, options: Mapping[str, Any]
) -> bytes:
    """In the client's loop: one attempt as one Dask task, released once answered."""
    from distributed import KilledWorker

    future = client.submit(_on_worker, blob, key=key, pure=False, retries=0, **options)
    try:
        answer: bytes = await future
        return answer
    except KilledWorker as exc:
        raise WorkerLost(task, f"Dask's KilledWorker: {exc}") from None
    except concurrent.futures.CancelledError as exc:  # (Dask's FutureCancelledError)
        raise WorkerLost(task, f"Dask cancelled the task ({exc})") from None
    except OSError as exc:  # (a comm closed: the scheduler or the worker went away)
        raise WorkerLost(task, f"Dask lost the connection ({exc})") from None
    except Exception as exc:
        if type(exc).__name__ == "ClosedClientError":  # (distributed's, closed under us)
            raise WorkerLost(task, f"the Dask client closed ({exc})") from None
        raise
    finally:
        future.release()  # (a running body is cancelled there, and its result dropped)


async def _check_workers(client: Any, task: str) -> int:
    """In the client's loop: every worker runs this process's Python and aflow. Gives
    how many times the scheduler re-runs a lost worker's task itself."""
    ours = _remote.CALLER
    try:
        theirs: dict[str, Any] = await client.run(versions)
    except (ImportError, AttributeError) as exc:
        raise WorkerMismatch(task, "a Dask worker", _described(ours), f"no aflow ({exc})") from None
    for worker, pair in sorted(theirs.items()):
        if tuple(pair) != ours:
            raise WorkerMismatch(task, f"Dask worker {worker}", _described(ours), _described(pair))
    try:
        allowed = await client.run_on_scheduler(_allowed_failures)
    except Exception:  # (an older scheduler: nothing to tell)
        return 0
    return int(allowed or 0)


def _allowed_failures(dask_scheduler: Any) -> int:
    return int(getattr(dask_scheduler, "allowed_failures", 0) or 0)


async def _until_ended(client: Any, key: str) -> None:
    """In the client's loop: wait until no worker runs the body of task ``key`` (one
    that died runs nothing)."""
    while True:
        running = await client.run(_busy_with, key, on_error="ignore")
        if not any(running.values()):
            return
        await asyncio.sleep(_POLL_S)


async def _prune(client: Any, abandoned: dict[tuple[str, str], str]) -> None:
    """In the client's loop: forget the abandoned attempts no worker runs any more."""
    keys = list(abandoned.values())
    running = await client.run(_busy_among, keys, on_error="ignore")
    busy = {key for found in running.values() if isinstance(found, list) for key in found}
    for where, key in list(abandoned.items()):
        if key not in busy and abandoned.get(where) == key:
            del abandoned[where]


def _busy_among(keys: list[str], dask_worker: Any = None) -> list[str]:
    """On a worker: which of ``keys`` it still runs."""
    return [key for key in keys if _busy_with(key, dask_worker)]


def _busy_with(key: str, dask_worker: Any = None) -> bool:
    """On a worker: it still runs task ``key`` (released or not)."""
    tasks = getattr(getattr(dask_worker, "state", None), "tasks", None)
    state = tasks.get(key) if tasks is not None else None
    return state is not None and state.state in _BUSY


def _described(pair: Any) -> str:
    return f"Python {pair[0]}, aflow {pair[1]}"


def _on_worker(blob: bytes) -> bytes:
    """On a Dask worker: call the body; the caller gave up on it once Dask cancelled its
    task there (what :func:`aflow.check_cancelled` sees)."""
    from distributed import get_worker

    worker = get_worker()
    key = worker.get_current_task()

    def cancelled() -> bool:
        # (the worker's state machine: read when asked; a Dask that moved it tells nothing)
        tasks = getattr(getattr(worker, "state", None), "tasks", None)
        if tasks is None:
            return False
        state = tasks.get(key)
        return state is None or state.state not in _RUNNING

    return run_blob(blob, cancelled, f"Dask worker {worker.address}")
