"""Node and run states, and the frozen snapshots a run hands out."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, final

__all__ = ["NodeState", "RunStatistics", "RunStatus", "StepInfo"]


class NodeState(enum.Enum):
    """Where one node of a run is: ``PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED``.

    ``SKIPPED`` marks an error callback that was not needed.
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class RunStatus(enum.Enum):
    """Where a run is: ``PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED``."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True once the run can no longer change."""
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


@final
@dataclass(frozen=True, slots=True)
class StepInfo:
    """A snapshot of one node of a run (``run.step("charge")``).

    Times are wall-clock seconds since the epoch; ``duration_s`` is measured
    on a monotonic clock.
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
    peak_running: int
    duration_s: float | None
