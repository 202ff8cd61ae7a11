"""Inspection: what a run shows of itself (steps, results, failures, statistics)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .._failure import Failure
from ._run_state import (
    _CANCELLED,
    _FAILED,
    _JOIN,
    _PENDING,
    _RETRYING,
    _REVERT_FAILED,
    _REVERTED,
    _REVERTING,
    _RUNNING,
    _SKIPPED,
    _SUCCEEDED,
    RunState,
)
from ._states import NodeState, RunStatistics, StepInfo


class Inspection(RunState):
    """Read-only views of a run's state."""

    __slots__ = ()

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to end (or to now while running)."""
        if self.started_at is None:
            return None
        return (self.ended_at or time.time()) - self.started_at

    def _wall(self, t: float | None) -> float | None:
        return None if t is None else t + self._wall_offset

    def step(self, key: str) -> StepInfo:
        """A snapshot of the node with this key."""
        return self._info(self.graph.node(key).index)

    def step_now(self, step: int, attempt: int, item: int = -1) -> StepInfo:
        """The snapshot :func:`aflow.current_step` gives the body of node ``step`` (``~i``:
        the revert of node ``i``) during attempt ``attempt`` (in a map, of call ``item``)."""
        call = f"[{item}]" if item >= 0 else ""
        if step < 0:
            return self._info(~step, attempt, f"{call}/revert")
        return self._info(step, attempt, call)

    def _info(self, i: int, attempt: int | None = None, suffix: str = "") -> StepInfo:
        node = self._nodes[i]
        started, finished = self._started[i], self._finished[i]
        if attempt is None:
            attempt = self._attempts.get(i, 1 if started is not None else 0)
        return StepInfo(
            key=node.key,
            task=node.name,
            state=self._states[i],
            result=self._results[i],
            error=self._errors.get(i),
            attempts=attempt,
            started_at=self._wall(started),
            finished_at=self._wall(finished),
            duration_s=None if started is None or finished is None else finished - started,
            revert_error=self._revert_errors.get(i),
            run_id=self.run_id,
            idempotency_key=f"{self.run_id}/{self._key_prefix}{node.key}{suffix}",
        )

    def failures(self) -> dict[str, Failure]:
        """Every node that failed or was cancelled mid-way, by key."""
        return {self._nodes[i].key: f for i, f in self._failures.items()}

    def revert_failures(self) -> dict[str, Failure]:
        """Every node whose revert failed, by key, with what its revert raised."""
        attempts = self._revert_attempts
        return {
            self._nodes[i].key: Failure.capture(self._nodes[i].key, e, attempts.get(i, 1))
            for i, e in self._revert_errors.items()
        }

    def revert_result_of(self, index: int) -> Any:
        """What the revert of one node returned (``None`` if nothing, or not reverted)."""
        kept = self._revert_results
        return None if kept is None else kept.get(index)

    def reverted(self) -> list[str]:
        """The keys of the nodes reverted, in the order their reverts finished."""
        return [self._nodes[i].key for i in self._reverted]

    def task_indices(self) -> Iterable[int]:
        """Indices of the nodes that call a task (not joins)."""
        return (node.index for node in self._nodes if node.kind is not _JOIN)

    def state_of(self, index: int) -> NodeState:
        """The state of one node."""
        return self._states[index]

    def result_of(self, index: int) -> Any:
        """The stored result of one node (``None`` if it has none)."""
        return self._results[index]

    def error_of(self, index: int) -> BaseException | None:
        """The exception one node ended with, if any."""
        return self._errors.get(index)

    def results(self) -> dict[str, Any]:
        """Every succeeded task node's result, by node key."""
        states = self._states
        return {
            node.key: self._results[node.index]
            for node in self._nodes
            if node.kind is not _JOIN
            and states[node.index] in (_SUCCEEDED, _REVERTED)
            and node.index not in self._failures
        }

    def statistics(self) -> RunStatistics:
        """Counts of task nodes by state."""
        counts = dict.fromkeys(NodeState, 0)
        states = self._states
        for index in self.task_indices():
            counts[states[index]] += 1
        return RunStatistics(
            total=sum(counts.values()),
            pending=counts[_PENDING],
            running=counts[_RUNNING] + counts[_RETRYING] + counts[_REVERTING],
            succeeded=counts[_SUCCEEDED],
            failed=counts[_FAILED],
            cancelled=counts[_CANCELLED],
            skipped=counts[_SKIPPED],
            reverted=counts[_REVERTED],
            revert_failed=counts[_REVERT_FAILED],
            peak_running=self._peak,
            duration_s=self.duration_s,
        )

    def limit_summary(self) -> str:
        """A short text of the limits in force, for ``repr``."""
        limits = list(self._global_limits) + list(self._limits.values())
        return ", ".join(f"{lim.name} {lim.borrowed}/{lim.total}" for lim in limits)
