"""Restore: stored records in, a run's state out (a resumed or forked run)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from .._exceptions import (
    RecordedError,
    ResumeMismatch,
)
from .._failure import Failure
from .._graph import Node
from ..stores._base import NodeRecord, RecordState
from ._run_state import (
    _CANCELLED,
    _FAILED,
    _JOIN,
    _MAP,
    _PENDING,
    _REVERT_FAILED,
    _REVERTED,
    _STARMAP,
    _SUCCEEDED,
    RunState,
    StopReason,
)
from ._states import RunStatus

_perf_counter = time.perf_counter

_CUT_SHORT = "cancelled mid-way: its process stopped"
#: Stored states of a node that began and did not end: it runs again on a resume (or,
#: in a run that is unwinding, counts as cancelled mid-way).
_CUT_OFF = frozenset({RecordState.RUNNING, RecordState.RETRYING, RecordState.CANCELLED})
#: Stored states of a node that ended well: its value is restored, it does not run again.
_DONE = frozenset({RecordState.SUCCEEDED, RecordState.REUSED, RecordState.ENDED})
#: Stored states of a node whose revert ran: the run was unwinding.
_UNDONE = frozenset({RecordState.REVERTED, RecordState.REVERT_FAILED})
# Globals: a resume reads them for each node on record (an Enum attribute is slower).
_RECORD_FAILED = RecordState.FAILED
_RECORD_ENDED = RecordState.ENDED
_RECORD_REVERTED = RecordState.REVERTED
_RECORD_REUSED = RecordState.REUSED


class Restore(RunState):
    """Take up a run from its checkpoints."""

    __slots__ = ()

    def restore(
        self,
        records: Mapping[str, NodeRecord],
        decode: Callable[[str], Any],
        *,
        unwinding: bool,
        trigger: str | None = None,
        failed_before: Mapping[str, str] | None = None,
    ) -> None:
        """Take up a run from its checkpoints: recorded successes are not run again.

        A recorded failure is final, as it was in the process that stopped: with
        ``on_error="revert"`` (and not tolerated) it makes the run unwind. The run
        unwinds too when ``unwinding`` says it was compensating, or when a revert
        is on record: nodes already reverted stay so, a revert that failed keeps
        what precedes it, and the unwinding goes on from there; what was running
        then is reverted as cancelled mid-way. ``trigger`` is what stopped the run
        (the stored text: a task's error, ``RunTimeout: ...`` or ``RunCancelled: ...``).
        ``failed_before`` gives, from the history, the failure of a step whose latest
        record is a failed revert.
        """
        if self.status is not RunStatus.PENDING:
            raise RuntimeError(f"run {self.run_id} was already started")

        def read(node: Node, text: str) -> Any:  # a store row is data: a typed error
            try:
                return decode(text)
            except Exception as exc:
                raise ResumeMismatch(
                    self.run_id, f"the stored result of step {node.key!r} cannot be read ({exc})"
                ) from exc

        self.restored = True
        self._incarnation = f"~{uuid.uuid4().hex[:8]}"
        now = _perf_counter()
        states = self._states
        nodes = self._nodes
        for node in nodes:  # first: was the run unwinding when it stopped?
            record = records.get(node.key)
            if (
                record is not None
                and node.task is not None
                and (
                    record.state in _UNDONE
                    or (record.state == _RECORD_FAILED and self._stops_run(node))
                )
            ):
                unwinding = True
        failed: list[int] = []
        ended: set[int] = set()  # succeeded, and ended their branch (what follows is skipped)
        for node in nodes:
            record = records.get(node.key)
            if record is None or node.task is None:
                continue
            i = node.index
            state = record.state
            if state in _DONE and (record.result is not None or node.error_scope is not None):
                self._results[i] = None if record.result is None else read(node, record.result)
                states[i] = _SUCCEEDED
                if state == _RECORD_ENDED:
                    ended.add(i)
            elif state == _RECORD_FAILED:
                failed.append(i)
                self._restore_error(node, record.error or "failed (no error on record)", record)
            elif unwinding and state in _UNDONE:
                if record.result is not None:
                    self._results[i] = read(node, record.result)
                if state == _RECORD_REVERTED:
                    states[i] = _REVERTED
                    self._reverted.append(i)
                    if record.error is not None:  # it had failed before it was reverted
                        self._restore_error(node, record.error, record)
                else:
                    states[i] = _REVERT_FAILED
                    self._revert_errors[i] = RecordedError(record.error or "its revert failed")
                    earlier = (failed_before or {}).get(node.key)
                    if earlier is not None:  # it had failed, then its revert failed too
                        self._restore_error(node, earlier, record)
            elif unwinding and state in _CUT_OFF:
                states[i] = _CANCELLED
                self._restore_error(node, _CUT_SHORT, record, cancelled=True)
            else:
                continue  # it runs (again)
            if state != _RECORD_REUSED:  # a fork's reused node ran elsewhere: never reverted
                self._started[i] = self._finished[i] = now
            if record.attempt > 1:
                self._attempts[i] = record.attempt
        done = [i for i, st in enumerate(states) if st is _SUCCEEDED]
        self._done_count = len(done)
        for i in done:
            if i in ended:
                self._skip_dependents(i, None)
            else:
                self._release(i)
        for i in failed:
            self._restore_failure(nodes[i])
        self._restore_joins()
        if self._failure is not None and self._on_error == "revert" and not unwinding:
            # a join below its threshold failed again on restore: the run unwinds, and
            # what was running when the process stopped was cancelled mid-way
            unwinding = True
            for node in nodes:
                record = records.get(node.key)
                i = node.index
                if (
                    record is not None
                    and node.task is not None
                    and states[i] is _PENDING
                    and record.state in _CUT_OFF
                ):
                    states[i] = _CANCELLED
                    self._restore_error(node, _CUT_SHORT, record, cancelled=True)
                    self._started[i] = self._finished[i] = now
        self._rebuild_map_calls()
        self._ready = self.graph._shape[0].new_ready(
            node.index
            for node in nodes
            if node.error_scope is None
            and states[node.index] is _PENDING
            and self._remaining[node.index] == 0
        )
        if unwinding:
            self._resumed_unwinding = True
            self._stop_cause = trigger
            if trigger is not None and trigger.startswith("RunTimeout"):
                self._stops.add(StopReason.TIMEOUT)
            elif trigger is not None and trigger.startswith("RunCancelled"):
                self._stops.add(StopReason.CANCEL)

    def _stops_run(self, node: Node) -> bool:
        """Whether a failure of ``node`` stops the run (rather than being tolerated)."""
        return (
            node.error_scope is None
            and not node.options.continue_on_failed
            and node.index not in self._tolerated_by
            and self._on_error == "revert"
        )

    def _restore_error(
        self, node: Node, text: str, record: NodeRecord, *, cancelled: bool = False
    ) -> None:
        error = RecordedError(text)
        self._errors[node.index] = error
        self._failures[node.index] = Failure.capture(
            node.key, error, record.attempt, cancelled=cancelled
        )

    def _restore_failure(self, node: Node) -> None:
        """Replay a recorded failure's effect on what depends on it."""
        i = node.index
        self._states[i] = _FAILED
        self._finished[i] = _perf_counter()
        if node.error_scope is not None:
            return
        if node.options.continue_on_failed:
            self._done_count += 1
            self._release(i)
            return
        tolerant_join = self._tolerated_by.get(i)
        if tolerant_join is not None or self._on_error == "continue":
            self._done_count += 1
            self._skip_dependents(i, tolerant_join)

    def _restore_joins(self) -> None:
        """Joins are not stored: recompute those whose sources are all restored.

        A revert (or a map's items) may take a join's value as its input. Guard
        joins (deciders) are left to run again: nothing takes their value.
        """
        nodes = self._nodes
        states = self._states
        for i in self.graph.topological_order():
            node = nodes[i]
            if (
                node.kind is _JOIN
                and node.when is None
                and states[i] is _PENDING
                and self._remaining[i] == 0
            ):
                self._join(node)

    def _rebuild_map_calls(self) -> None:
        """A restored map or starmap with a revert undoes each of its items' calls.

        A map that succeeded pairs each item with its result; one that failed or
        was running when the process stopped gives each item the failure (which
        items had run is not on record, so every item's revert is called).
        """
        for node in self._nodes:
            i = node.index
            task = node.task
            if (
                node.kind not in (_MAP, _STARMAP)
                or task is None
                or task.reverter is None
                or self._started[i] is None
            ):
                continue
            source = self._args_of(node)
            if not source or source[0] is None:
                continue  # its input was never restored: it cannot have run
            items = list(source[0])
            failure = self._failures.get(i)
            if failure is None:
                self._map_calls[i] = list(zip(items, self._results[i] or (), strict=False))
            else:
                self._map_calls[i] = [(item, failure) for item in items]
