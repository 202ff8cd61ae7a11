"""Checkpoints: the run's records in its store (start, end, each step) and the flusher."""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from .._events import (
    warn,
)
from .._exceptions import (
    SerializationError,
)
from .._graph import Node
from ..stores._base import NodeRecord, RecordState, StoredRunStatus
from ._journal import Journal, describe
from ._run_state import _JOIN, _PENDING, RunState, StopReason
from ._states import RunStatus

# A global: every success of a durable run reads it (an Enum attribute is slower).
_RECORD_SUCCEEDED = RecordState.SUCCEEDED
#: The status a run that ended is stored with (a suspended one is not over: none).
_ENDED_AS = {
    RunStatus.SUCCEEDED: StoredRunStatus.SUCCEEDED,
    RunStatus.FAILED: StoredRunStatus.FAILED,
    RunStatus.REVERTED: StoredRunStatus.REVERTED,
    RunStatus.CANCELLED: StoredRunStatus.CANCELLED,
}


class Checkpoints(RunState):
    """Write-ahead rules and batched checkpoint writes (see :mod:`._journal`)."""

    __slots__ = ()

    async def execute(self) -> Any:
        """Run the graph to the end in the calling task; return the output node's value.

        With a journal (a durable store), the run's status, result or error are
        recorded too; a run killed before the end stays ``running`` (or
        ``reverting``) in the store, which is what recovery looks for.
        """
        journal = self._journal
        if journal is None:
            return await self._execute()
        store = journal.store
        # A resumed compensation says so (with its trigger) before anything else; a cancel
        # requested meanwhile (`aflow cancel`) is kept, and obeyed.
        first = StoredRunStatus.REVERTING if self._resumed_unwinding else StoredRunStatus.RUNNING
        try:
            stored = await store.start_run(self.run_id, first, self._stop_cause)
        except Exception as exc:  # nothing ran: the run stays as stored, for a resume
            self._store_error = exc
            self._stops.add(StopReason.STORE)
            raise self._stopped_by_store() from exc
        if stored == StoredRunStatus.CANCELLING:
            self.cancel()
        try:
            value = await self._execute()
        except BaseException as exc:
            if self._store_error is not None or StopReason.RELEASE in self._stops:
                raise  # the store keeps the run unfinished, for a resume to take up
            if self.status is RunStatus.SUCCEEDED:  # it completed, then its awaiter was cancelled
                await self._record_end(result=self._result_text(journal))
            else:
                await self._record_end(error=describe(exc))
            raise
        await self._record_end(result=self._result_text(journal))
        return value

    def _result_text(self, journal: Journal) -> str | None:
        try:
            return journal.encode("the run's result", self._results[self.graph.output])
        except SerializationError:
            return None  # every node's result is on record; only the run's own value is not

    async def _record_end(self, *, result: str | None = None, error: str | None = None) -> None:
        """Write the run's final status. If the store fails here the outcome stands (the
        caller gets it); the store keeps the run unfinished, and a resume of it, with every
        node on record, runs nothing again and writes the end."""
        journal = self._journal
        assert journal is not None
        status = _ENDED_AS.get(self.status)
        if status is None:  # suspended: what is left runs when it resumes
            return
        try:
            with anyio.CancelScope(shield=True):
                await journal.store.set_status(
                    self.run_id,
                    status,
                    result=result,
                    error=error,
                    ended_at=self.ended_at,
                )
        except Exception as exc:
            self._store_error = exc
            warn("aflow_run_end_not_recorded", run_id=self.run_id, error=repr(exc))

    async def _write_leftover(self) -> None:
        """Write what is still buffered outside a phase (shielded); release what it held."""
        journal = self._journal
        if journal is None or not journal.holding or self._store_error is not None:
            return
        try:
            with anyio.CancelScope(shield=True):
                released = await journal.write()
        except Exception as exc:
            self._store_failed(exc)
        else:
            self._release_held(released)

    async def _flusher(self, journal: Journal) -> None:
        """Write checkpoints in batches; release what each batch held (see _journal)."""
        while await journal.next_batch():
            try:
                with anyio.CancelScope(shield=True):  # a batch is written whole, even if cancelled
                    released = await journal.write()
            except Exception as exc:
                self._store_failed(exc)
                return
            self._release_held(released)
            if self._handoff is not None:
                self._handoff.set()  # the worker waiting for this batch goes on (or ends)
            elif self._ready:
                self._ensure_worker()
            self._check_idle()

    def _write_now(self, journal: Journal) -> bool:
        """Commit the pending batch here and now, with no task switch, if the store can
        without waiting (see :meth:`Journal.write_now`) and nothing else of this run could
        still join the batch (no node of it in flight or ready: waiting for the flusher
        would buy no group commit). True if the batch was committed and what it held
        released, or its write failed (the run stops); False if it is left to the flusher.
        """
        if self._running or self._ready or self._store_error is not None:
            return False
        try:
            released = journal.write_now()
        except Exception as exc:
            self._store_failed(exc)
            return True
        if released is None:
            return False
        self._release_held(released)
        if self._handoff is not None:
            self._handoff.set()  # a worker waiting for a batch: nothing is left to wait for
        return True

    def _release_held(self, released: list[tuple[str, int]]) -> None:
        for kind, index in released:
            if kind == "ok":
                self._release(index)
            elif kind == "end":
                self._skip_dependents(index, None)
            else:
                self._unwound(index)

    def _record_decided_out(self, guard: Node, only: tuple[int, ...] | None = None) -> None:
        """A condition (a guard join) said no: the nodes it guards (``only`` those, if
        given) go on record as skipped, so a stored run shows them so. A resume asks the
        condition again."""
        journal = self._journal
        assert journal is not None
        now = time.time()
        for child in self._children[guard.index] if only is None else only:
            node = self._nodes[child]
            if (
                node.kind is not _JOIN
                and node.error_scope is None
                and self._states[child] is _PENDING
            ):
                journal.record(NodeRecord(node.key, RecordState.SKIPPED, 0, finished_at=now))

    def _checkpoint_success(self, node: Node, value: Any, attempt: int, start: float) -> None:
        """Record a success; its children start once the record is written."""
        journal = self._journal
        assert journal is not None
        try:
            text = journal.encode(node.key, value)
        except SerializationError as exc:  # the value cannot be kept: the node fails
            self._node_failed(node, exc, attempt)
            return
        now = time.time()
        started = self._wall(start)
        journal.record(
            NodeRecord(node.key, _RECORD_SUCCEEDED, attempt, text, None, started, now),
            ("ok", node.index),
        )
        # A child with a revert that this success makes ready writes its start in the
        # same batch, so a saga's chain pays one commit per step, not two.
        remaining = self._remaining
        for child in self._children[node.index]:
            task = self._nodes[child].task
            if (
                self.starting
                and remaining[child] == 1
                and task is not None
                and task.reverter is not None
                and self._states[child] is _PENDING
                and self._nodes[child].error_scope is None
            ):
                journal.started(self._nodes[child].key, 1)
                self._announced.add(child)
        self._succeed(node.index, value, children=False)
