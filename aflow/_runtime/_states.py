"""Node and run states, and the frozen snapshots a run hands out."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, final

__all__ = ["NodeState", "RunStatistics", "RunStatus", "StepInfo"]


class NodeState(enum.Enum):
    """Where one node of a run is.

    ``PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | SKIPPED`` going
    forward (``RETRYING`` while it waits between attempts), then, if the run
    unwinds, ``REVERTING -> REVERTED | REVERT_FAILED``. ``SKIPPED`` marks a
    node downstream of a failure the run went on past, and an error callback
    that was not needed.
    """

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    REVERTING = "reverting"
    REVERTED = "reverted"
    REVERT_FAILED = "revert_failed"


class RunStatus(enum.Enum):
    """Where a run is: ``PENDING -> RUNNING -> SUCCEEDED | FAILED | REVERTED | CANCELLED``.

    ``REVERTED``: a task failed and every revert that was due succeeded.
    ``FAILED``: a task failed with nothing to revert, or a revert failed too.
    ``CANCELLED``: the run was cancelled and unwound cleanly.
    ``SUSPENDED``: told to suspend, it let running tasks finish and stopped;
    running it again runs only what is left.
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REVERTED = "reverted"
    CANCELLED = "cancelled"
    SUSPENDED = "suspended"

    @property
    def finished(self) -> bool:
        """True once the run can no longer change."""
        return self not in (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SUSPENDED)


@final
@dataclass(frozen=True, slots=True)
class StepInfo:
    """A snapshot of one node of a run (``run.step("charge")``, ``aflow.current_step()``).

    Times are wall-clock seconds since the epoch; ``duration_s`` is measured
    on a monotonic clock. ``idempotency_key`` is stable for the step across its
    attempts and across resumes of the run (``<run id>/<node key>``; a revert's
    own ends in ``/revert``): pass it to the services a step calls, so a step
    run again after a crash does not do its work twice.
    """

    key: str
    task: str
    state: NodeState
    result: Any
    error: BaseException | None
    attempts: int
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    revert_error: BaseException | None = None
    run_id: str = ""
    idempotency_key: str = ""

    @property
    def attempt(self) -> int:
        """The attempt under way (or the last one made): ``attempts`` by another name."""
        return self.attempts


@final
@dataclass(frozen=True, slots=True)
class RunStatistics:
    """Counts of a run's task nodes by state, and timing."""

    total: int
    pending: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    skipped: int
    reverted: int
    revert_failed: int
    peak_running: int
    duration_s: float | None
