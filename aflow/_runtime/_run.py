"""``aflow.run`` and ``aflow.run_sync``: run a workflow in the calling task, or from a script.

Each builds one :class:`~._options.RunOptions` from its keyword arguments and
calls :func:`run_with`. Without a store the run is an execution of its own;
with one it is the one run of a :class:`~aflow.Runtime` that lives as long as
the call.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

import anyio

from .._events import EventListener
from .._graph import Graph, compile
from .._serialize import Serializer
from .._workflow import WorkflowBuilder
from ..executors._base import Executor
from ..stores._base import Store
from ._clock import Clock
from ._handle import outcome
from ._options import RunOptions, new_execution
from ._runtime import Runtime

if TYPE_CHECKING:
    from .._canvas import Canvas
    from ..ops._workflow import Workflow
    from ..patterns._flow import Flow
    from ._scheduler import Execution

__all__ = ["run", "run_sync", "run_with"]

R = TypeVar("R")


#: The options of a call that gives none (built once: a short run's cost counts).
_DEFAULTS = RunOptions()

# The overloads of run / run_sync (and of Runtime.submit / Runtime.run) name what each
# accepts, never `object`: a catch-all would also match a Canvas[dict[str, Any]], and
# mypy gives Any when an argument holding Any matches two overloads. The builder
# overload binds R only so its argument matches the Canvas-builder's one exactly (then
# mypy sees no ambiguity and keeps that one's result type).


@overload
async def run(
    workflow: Canvas[R],
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    executor: str | Executor | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | Store | None = None,
    idempotency_key: str | None = None,
    serializer: str | Serializer = "json",
) -> R: ...
@overload
async def run(
    workflow: WorkflowBuilder[..., Canvas[R]],
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    executor: str | Executor | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | Store | None = None,
    idempotency_key: str | None = None,
    serializer: str | Serializer = "json",
) -> R: ...
@overload
async def run(
    workflow: Flow,
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    executor: str | Executor | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | Store | None = None,
    idempotency_key: str | None = None,
    serializer: str | Serializer = "json",
) -> dict[str, Any]: ...
@overload
async def run(
    workflow: WorkflowBuilder[..., R],
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    executor: str | Executor | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | Store | None = None,
    idempotency_key: str | None = None,
    serializer: str | Serializer = "json",
) -> Any: ...
@overload
async def run(
    workflow: Graph | Workflow,
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    executor: str | Executor | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | Store | None = None,
    idempotency_key: str | None = None,
    serializer: str | Serializer = "json",
) -> Any: ...
async def run(
    workflow: object,
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    executor: str | Executor | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | Store | None = None,
    idempotency_key: str | None = None,
    serializer: str | Serializer = "json",
) -> Any:
    """Run a workflow in the calling task and return its value.

    Independent branches run concurrently, at most ``max_concurrency`` task
    nodes at once, and at most ``limits[name]`` nodes of tasks declared with
    ``limit=name``. ``on_event`` receives every run and node event.

    If a task fails (after its retries), the other running tasks are
    cancelled, nodes not started never start, the reverts of what ran are
    called in reverse dependency order (``on_error="revert"``, shielded, at
    most ``compensation_timeout`` seconds), and the task's own exception is
    raised. With ``on_error="continue"`` the dependents of a failed task are
    skipped, independent branches finish, and the failure is raised at the
    end. ``timeout`` bounds the whole run (:class:`aflow.errors.RunTimeout`); time
    comes from ``clock`` (``aflow.testing.FakeClock`` in tests). Cancelling
    the caller cancels and unwinds the run, then re-raises. ``executor``
    (``"process"``, an :class:`aflow.executors.Executor`) runs the bodies of the
    tasks that name none elsewhere.

    ``params`` builds an ``@aflow.workflow``. With ``store`` (a URL or a
    :class:`~aflow.stores.Store`) the run is durable, as in a
    :class:`Runtime` with that store: every node is checkpointed, and
    ``idempotency_key`` makes a second call with the same key return the
    first run's result instead of running again.

    Example::

        total = await aflow.run(aflow.chord(fetch.s(u) for u in urls), merge.s(),
                                max_concurrency=16)
        await aflow.run(order_saga, params={"order_id": "o-42"},
                        store="sqlite:///runs.db", idempotency_key="order-o-42")
    """
    if (
        max_concurrency is None
        and limits is None
        and on_event is None
        and on_error == "revert"
        and timeout is None
        and compensation_timeout is None
        and clock is None
        and executor is None
    ):
        options = _DEFAULTS  # the common call: no options to check (it is frozen)
    else:
        options = RunOptions(
            max_concurrency=max_concurrency,
            limits=limits,
            on_event=on_event,
            on_error=on_error,
            timeout=timeout,
            compensation_timeout=compensation_timeout,
            clock=clock,
            executor=executor,
        )
    if store is None:  # (no journal: its execute() is _execute(), one coroutine less)
        execution = _in_memory(workflow, options, run_id, params, idempotency_key)
        try:
            return await execution._execute()
        except BaseException:
            # Nobody can ask this run anything now: let go of its errors, so that the
            # one raised (whose traceback holds the run's frames) makes no reference
            # cycle with it, and both are freed without the garbage collector.
            execution._let_go_of_errors()
            raise
    return await run_with(
        workflow,
        options,
        run_id=run_id,
        params=params,
        store=store,
        idempotency_key=idempotency_key,
        serializer=serializer,
    )


async def run_with(
    workflow: Any,  # (what it passes on to Runtime.submit(), whose overloads take no object)
    options: RunOptions,
    *,
    run_id: str | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | Store | None = None,
    idempotency_key: str | None = None,
    serializer: str | Serializer = "json",
) -> Any:
    """:func:`run` with its options built: what ``run`` and ``run_sync`` both call."""
    if store is not None:
        failure: Exception | None = None
        async with Runtime._owning_one_run(options, store, serializer) as rt:
            try:
                handle = await rt.submit(
                    workflow, params=params, run_id=run_id, idempotency_key=idempotency_key
                )
                value = await outcome(handle)
            except Exception as exc:  # raised below, as itself (not in the runtime's group)
                failure = exc
        if failure is not None:
            raise failure
        return value
    return await _in_memory(workflow, options, run_id, params, idempotency_key).execute()


def _in_memory(
    workflow: object,
    options: RunOptions,
    run_id: str | None,
    params: Mapping[str, Any] | None,
    idempotency_key: str | None,
) -> Execution:
    """The execution of a run without a store (no coroutine of its own: a short run's
    cost counts)."""
    if idempotency_key is not None:
        raise ValueError("an idempotency_key needs a durable store: pass store='sqlite:///...'")
    if isinstance(workflow, WorkflowBuilder):
        graph = workflow.build(dict(params or {}))
        execution = new_execution(graph, options, run_id=run_id)
        execution._events.name = workflow.path  # (the name its events give: aflow.otel's)
        return execution
    if params:
        raise TypeError("parameters can only be given to an @aflow.workflow")
    return new_execution(compile(workflow), options, run_id=run_id)


@overload
def run_sync(
    workflow: Canvas[R],
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    executor: str | Executor | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | None = None,
    idempotency_key: str | None = None,
    serializer: str = "json",
    use_uvloop: bool | None = None,
) -> R: ...
@overload
def run_sync(
    workflow: WorkflowBuilder[..., Canvas[R]],
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    executor: str | Executor | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | None = None,
    idempotency_key: str | None = None,
    serializer: str = "json",
    use_uvloop: bool | None = None,
) -> R: ...
@overload
def run_sync(
    workflow: Flow,
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    executor: str | Executor | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | None = None,
    idempotency_key: str | None = None,
    serializer: str = "json",
    use_uvloop: bool | None = None,
) -> dict[str, Any]: ...
@overload
def run_sync(
    workflow: WorkflowBuilder[..., R],
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    executor: str | Executor | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | None = None,
    idempotency_key: str | None = None,
    serializer: str = "json",
    use_uvloop: bool | None = None,
) -> Any: ...
@overload
def run_sync(
    workflow: Graph | Workflow,
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    executor: str | Executor | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | None = None,
    idempotency_key: str | None = None,
    serializer: str = "json",
    use_uvloop: bool | None = None,
) -> Any: ...
def run_sync(
    workflow: object,
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    executor: str | Executor | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | None = None,
    idempotency_key: str | None = None,
    serializer: str = "json",
    use_uvloop: bool | None = None,
) -> Any:
    """Run a workflow from synchronous code (a script) on a new event loop.

    Uses uvloop when it is installed unless ``use_uvloop=False``.
    """
    if use_uvloop is None:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            use_uvloop = False
        else:
            use_uvloop = True
    options = RunOptions(
        max_concurrency=max_concurrency,
        limits=limits,
        on_event=on_event,
        on_error=on_error,
        timeout=timeout,
        compensation_timeout=compensation_timeout,
        clock=clock,
        executor=executor,
    )
    call = functools.partial(
        run_with,
        workflow,
        options,
        run_id=run_id,
        params=params,
        store=store,
        idempotency_key=idempotency_key,
        serializer=serializer,
    )
    return anyio.run(call, backend="asyncio", backend_options={"use_uvloop": use_uvloop})
