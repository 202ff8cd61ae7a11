"""Following a run another process drives: a handle that reads the run's status from the store.

``submit(..., idempotency_key=k)`` in a process that does not drive the run
``k`` names returns such a handle. It looks at the store every 50 ms (on the
runtime's clock) until the run ends there. If the driving process dies (its
lease runs out) this runtime resumes the run and the handle follows its own
execution from then on; ``cancel()`` asks the store to cancel the run, as
``aflow cancel`` does. Following stops when the runtime closes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .._events import warn
from .._exceptions import ResumeMismatch, RunCancelled, RunError
from ..stores._base import RunRecord, StoredRunStatus
from ._clock import SYSTEM_CLOCK, wall_time
from ._handle import Run
from ._rebuild import FINISHED
from ._scheduler import Execution
from ._states import RunStatus

if TYPE_CHECKING:
    from ._durable import Durability

__all__ = ["follow"]

#: Seconds between two looks at the store.
POLL = 0.05


def follow(
    durability: Durability, stored: RunRecord, execution: Execution, tg: anyio.abc.TaskGroup
) -> Run[Any]:
    """A handle on run ``stored``, which another process drives, following it in ``tg``
    (``execution`` stands for it here: it is never executed)."""
    store = durability.require("submit")
    clock = durability._rt._clock
    execution.status = RunStatus.RUNNING
    handle: Run[Any] = Run(execution)
    scope = anyio.CancelScope()
    durability.followers[stored.run_id] = (handle, scope)

    async def cancel_there() -> None:
        await store.request_cancel(stored.run_id, "RunCancelled: cancelled by a follower")

    handle._remote_cancel = cancel_there

    def end(status: RunStatus, error: BaseException | None, value: Any = None) -> None:
        handle._execution.status = status
        handle._value = value
        handle._error = error
        handle._finished.set()

    async def step() -> bool:
        """One look at the store; True once the run has ended."""
        record = await store.get_run(stored.run_id)
        ended = FINISHED.get(record.status)
        if ended is not None:
            value, error = durability.rebuilder.outcome_of(record)
            end(ended, error, value)
            return True
        if record.status == StoredRunStatus.PARKED:
            reason = "recovery parked it: it kept killing the processes that took it up"
            end(RunStatus.FAILED, RunError(record.run_id, reason))
            return True
        if record.status == StoredRunStatus.WAITING:
            return False  # unloaded while it waits: a runtime takes it up when it is due
        if (record.heartbeat or 0) >= wall_time(clock):
            return False  # its process is alive
        try:
            resumed = await durability.resume(record.run_id, automatic=True)
        except ResumeMismatch as exc:
            if "lease holds" in exc.reason:
                return False  # another process took it first: keep following
            end(RunStatus.FAILED, exc)  # it cannot be resumed (its workflow changed...)
            return True
        handle._remote_cancel = None
        handle._execution = resumed._execution  # cancel() and steps() reach it now
        with anyio.CancelScope(shield=True):  # it runs here now: exit waits for it anyway
            await resumed.wait()
        end(resumed.status, resumed._error, resumed._value)
        return True

    async def poll() -> None:
        try:
            with scope:
                while True:
                    try:
                        if await step():
                            return
                    except Exception as exc:  # a store hiccup: the next look tries again
                        warn("aflow_follow_failed", run_id=stored.run_id, error=repr(exc))
                    await (clock or SYSTEM_CLOCK).sleep(POLL)
        finally:
            durability.followers.pop(stored.run_id, None)
            if not handle._finished.is_set():
                end(
                    RunStatus.CANCELLED,
                    RunCancelled(handle.id, "the runtime closed while following the run"),
                )

    tg.start_soon(poll, name=f"aflow follow {stored.run_id[:8]}")
    return handle
