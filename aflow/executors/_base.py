"""What an executor is, and how a task's or a run's ``executor=`` is read."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

__all__ = ["REMOTE_CANCELLED", "REMOTE_STEP", "Call", "Executor", "executor_of"]


class Call(NamedTuple):
    """Which attempt of which step an executor runs (what ``aflow.current_step()`` tells
    the body there): small, and cheap to send to another process."""

    run_id: str
    key: str
    task: str
    attempt: int
    idempotency_key: str
    #: the W3C trace context of the attempt's span (``aflow.otel`` instrumented), for
    #: the worker's ``execute {key}`` span to continue its trace
    trace: Mapping[str, str] | None = None


#: In a worker (another process): the call of the body running there.
REMOTE_STEP: contextvars.ContextVar[Call] = contextvars.ContextVar("aflow_remote_step")
#: In a worker: whether the caller has given up on the attempt running there (cancelled,
#: or timed out): what :func:`aflow.check_cancelled` asks.
REMOTE_CANCELLED: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar(
    "aflow_remote_cancelled", default=None
)


class Executor:
    """Runs task bodies somewhere other than the event loop. aflow calls :meth:`call`
    for each attempt; the result (or error) comes back into the run, which checkpoints
    it and decides on retries: an executor never retries by itself."""

    #: the name spans and reports give it (``aflow.executor``)
    name = "executor"
    #: each worker process runs one body at a time: a body may have the process's
    #: current directory to itself (an ``aflow.ops`` op runs in its work dir there)
    one_body_per_process = False

    async def call(
        self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], step: Call
    ) -> Any:
        """Run ``target`` (a task, or a revert function: a module-level name another
        process can import) with ``args`` and ``kwargs``; ``step`` says which attempt of
        which step it is (what ``aflow.current_step()`` tells the body). Cancelled, it
        stops waiting and discards a late result."""
        raise NotImplementedError


def executor_of(spec: Any, where: str) -> Executor | None:
    """The executor ``spec`` names (``None`` or ``"loop"``: the event loop, as today);
    a :class:`ValueError` naming ``where`` for anything else."""
    if spec is None or spec == "loop":
        return None
    if spec == "process":
        from ._process import default_pool

        return default_pool()
    if type(spec).__module__.startswith("distributed") and type(spec).__name__ == "Client":
        from ._dask import for_client

        return for_client(spec)
    if isinstance(spec, Executor):
        return spec
    raise ValueError(
        f"{where}: executor must be 'loop', 'process', an aflow.executors.Executor "
        f"(Process, Dask...) or a distributed.Client, got {spec!r}"
    )
