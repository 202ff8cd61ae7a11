"""What a running task can ask about itself, and the failure-injection registry for tests."""

from __future__ import annotations

import contextvars
import sys
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, final

from ..executors._base import REMOTE_CANCELLED, REMOTE_STEP

if TYPE_CHECKING:
    from ._scheduler import Execution
    from ._states import StepInfo

__all__ = [
    "ATTEMPT",
    "EXECUTION",
    "INJECTIONS",
    "ITEM",
    "STEP",
    "Injection",
    "check_cancelled",
    "current_attempt",
    "current_step",
    "locate",
]

ATTEMPT: contextvars.ContextVar[int] = contextvars.ContextVar("aflow_attempt")
#: The run a task belongs to (a retried flow starts its nested run from it).
EXECUTION: contextvars.ContextVar[Execution | None] = contextvars.ContextVar("aflow_execution")
#: The node whose body runs in this context (``~index`` in its revert).
STEP: contextvars.ContextVar[int] = contextvars.ContextVar("aflow_step")
#: In a map or starmap, the index of the item whose call runs in this context.
ITEM: contextvars.ContextVar[int] = contextvars.ContextVar("aflow_item")


def current_step() -> StepInfo:
    """The step whose body (a task, or its revert) is running now, as a snapshot.

    It gives the run id, the node key, the task's name, the attempt (1 for the
    first) and a stable ``idempotency_key`` to pass to the services the step
    calls (each call of a map or starmap has its own, ending in ``[i]``). Works
    in async and sync bodies and in what they start with their context: tasks,
    ``anyio.to_thread`` / ``asyncio.to_thread`` (a bare ``threading.Thread``
    starts from an empty context). Raises ``RuntimeError`` outside a body aflow
    runs::

        @aflow.task
        async def charge(order: Order) -> Receipt:
            step = aflow.current_step()
            return await payments.charge(order, idempotency_key=step.idempotency_key)
    """
    if EXECUTION.get(None) is None:
        remote = REMOTE_STEP.get(None)
        if remote is not None:  # a body an executor runs in another process
            from ._states import NodeState, StepInfo

            return StepInfo(
                key=remote.key,
                task=remote.task,
                state=NodeState.RUNNING,
                result=None,
                error=None,
                attempts=remote.attempt,
                started_at=None,
                finished_at=None,
                duration_s=None,
                run_id=remote.run_id,
                idempotency_key=remote.idempotency_key,
            )
    execution, step = locate("aflow.current_step()", 2)
    return execution.step_now(step, ATTEMPT.get(1), ITEM.get(-1))


def check_cancelled() -> None:
    """Raise ``CancelledError`` if the attempt whose body calls it has been given up on:
    its run cancelled, or its timeout passed. A sync body (in a thread, a worker process
    or a Dask worker) cannot be interrupted; one that calls this now and then stops
    early instead of running to its end for nobody::

        @aflow.task(executor="process", timeout=60)
        def render(frames: list[Frame]) -> Video:
            for frame in frames:
                aflow.check_cancelled()
                draw(frame)
            ...

    In an async body on the loop it does nothing (a cancel interrupts it at its next
    ``await``). In a thread that aflow did not start it raises ``RuntimeError``.
    """
    remote = REMOTE_CANCELLED.get()
    if remote is not None:
        if remote():
            import asyncio

            raise asyncio.CancelledError("aflow: the caller gave up on this attempt")
        return
    if REMOTE_STEP.get(None) is not None:
        return  # (an executor of one's own that tells nothing)
    import anyio.from_thread

    try:
        anyio.from_thread.check_cancelled()
    except RuntimeError:
        if EXECUTION.get(None) is None and STEP.get(None) is None:
            raise RuntimeError(
                "aflow.check_cancelled() is only available inside a task or a revert"
            ) from None
        # on the loop itself: an async body, which a cancel interrupts by itself


def locate(what: str, depth: int = 1) -> tuple[Execution, int]:
    """The run and node (``~index`` in a revert) whose body calls ``what`` (a
    ``RuntimeError`` naming ``what`` outside one); ``depth``: frames above this one
    to begin the search from."""
    execution = EXECUTION.get(None)
    step = STEP.get(None)
    if step is None:
        # A node started inline has no step in its context (setting it costs a plain
        # node's start a tenth): the worker or generator driving it is on the stack.
        found = _driving_step(sys._getframe(depth))
        if found is not None:
            execution, step = found
            STEP.set(step)  # in the node's own context: what it starts from now sees it
            EXECUTION.set(execution)
    if execution is None or step is None:
        where = (
            f"a task or thread a step started before it asked: call {what} "
            "in the step's body first (or pass what it returns along)"
            if execution is not None
            else "a task or a revert that aflow runs"
        )
        raise RuntimeError(f"{what} is only available inside {where}")
    return execution, step


def _driving_step(frame: FrameType | None) -> tuple[Execution, int] | None:
    """The execution and node whose inline start (or its continuation) runs ``frame``."""
    from ._scheduler import DRIVERS  # (the scheduler imports this module)

    while frame is not None:
        if frame.f_code in DRIVERS:
            local = frame.f_locals
            node, execution = local.get("node"), local.get("self")
            if node is not None and execution is not None:
                return execution, int(node.index)
        frame = frame.f_back
    return None


def current_attempt() -> int:
    """The attempt number (1 for the first) of the task that is running now.

    Deprecated: use ``aflow.current_step().attempt``. Raises ``RuntimeError``
    when called outside a task run by aflow.
    """
    try:
        return ATTEMPT.get()
    except LookupError:
        remote = REMOTE_STEP.get(None)
        if remote is not None:  # a body in another process
            return remote.attempt
        raise RuntimeError("aflow.current_attempt() is only available inside a task") from None


@final
@dataclass(slots=True)
class Injection:
    """A failure planned at a node (see ``aflow.testing.inject_failure``)."""

    node: str
    attempt: int | None
    action: str  # "raise" | "hang" | "cancel"
    error: BaseException | None
    hits: int = 0


#: node key or task name -> planned injections. Empty except inside
#: ``aflow.testing.inject_failure``; the scheduler checks it with one truth test.
INJECTIONS: dict[str, list[Injection]] = {}
