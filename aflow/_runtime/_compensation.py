"""Compensation: the unwind of what ran, consumers first, shielded, with its own deadline."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from .._events import (
    REVERT_FAILED,
    REVERT_RETRIED,
    REVERT_STARTED,
    REVERT_SUCCEEDED,
)
from .._exceptions import (
    CompensationFailed,
    MissingInputError,
)
from .._graph import Node
from ..stores._base import NodeRecord, RecordState, StoredRunStatus
from ._bodies import (
    InContext,
    in_thread_as,
    no_error,
    refuse_unawaited,
    remote_call,
    revert_items_async,
    revert_items_sync,
)
from ._crew import AsyncioCancelScope
from ._current import EXECUTION, INJECTIONS
from ._invariants import CHECK_INVARIANTS
from ._journal import describe
from ._limits import Limit, release
from ._ready import PriorityReady
from ._run_state import (
    _CANCELLED,
    _FAILED,
    _MAP,
    _REVERT_FAILED,
    _REVERTED,
    _REVERTING,
    _STARMAP,
    _SUCCEEDED,
    _TASK,
    Phase,
    RunState,
    StopReason,
)
from ._states import RunStatus

_perf_counter = time.perf_counter
_set_execution = EXECUTION.set
# Globals: each revert of a durable run reads one (an Enum attribute is slower).
_RECORD_REVERTED = RecordState.REVERTED
_RECORD_REVERT_FAILED = RecordState.REVERT_FAILED


def _wake(waiter: asyncio.Future[None], _: object) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Compensation(RunState):
    """The unwind phase: reverts in reverse dependency order."""

    __slots__ = ()

    def _failed_reverts(self) -> dict[str, BaseException]:
        """The nodes whose reverts failed, by key, with what they raised."""
        nodes = self._nodes
        return {nodes[i].key: e for i, e in self._revert_errors.items()}

    async def compensate(self) -> None:
        """Revert a run that succeeded (a retried flow undone by an outer failure).

        Same order and shielding as the unwinding after a failure; a revert
        that fails raises :class:`aflow.errors.CompensationFailed`.
        """
        if self._revert_errors:  # its own unwinding failed: what it kept cannot be undone
            errors = list({id(e): e for e in self._revert_errors.values()}.values())
            raise CompensationFailed(
                self.run_id,
                f"{len(errors)} revert(s) failed earlier; what they kept stays",
                errors,  # type: ignore[arg-type]
                self._failed_reverts(),
            )
        if self.status is not RunStatus.SUCCEEDED:
            return  # a failed run was unwound already; a suspended one is not undone
        self._context.run(_set_execution, self)  # type: ignore[arg-type]  # (its close let go of it)
        await self._unwind()
        if self._revert_errors:
            errors = list({id(e): e for e in self._revert_errors.values()}.values())
            self.status = RunStatus.FAILED
            raise CompensationFailed(
                self.run_id,
                f"{len(errors)} revert(s) failed while undoing a finished run",
                errors,  # type: ignore[arg-type]
                self._failed_reverts(),
            )
        if self._reverted:
            self.status = RunStatus.REVERTED
        if CHECK_INVARIANTS:
            self._check_invariants()

    async def _unwind(self) -> bool:
        """Revert what ran, consumers first; shielded, with its own deadline.

        Returns ``True`` when :meth:`suspend` stopped it with reverts still to start
        (calling it again goes on: what was reverted is passed over)."""
        states = self._states
        started = self._started
        self._reverting = frozenset(
            node.index
            for node in self._nodes
            if node.task is not None
            and node.task.reverter is not None
            and node.error_scope is None
            and started[node.index] is not None
            and states[node.index] in (_SUCCEEDED, _FAILED, _CANCELLED)
        )
        if not self._reverting:
            return False
        before = self._phase  # (FORWARD, or CLOSED for compensate())
        self._phase = Phase.UNWINDING
        self._remaining = [len(c) for c in self._children]
        # Ready reverts go by priority (TaskFlow sorts reverts alike), then the last to
        # finish first, as a hand-written saga undoes its steps: an order that does not
        # hang on timing, so a suspended unwinding goes on as the plain one would.
        rank = [-(at or 0.0) for at in self._finished]
        self._ready = ready = PriorityReady(self.graph._shape[0].priorities, (), rank)
        frontier = [i for i, left in enumerate(self._remaining) if left == 0]
        for i in frontier:
            if i in self._reverting:
                ready.append(i)
        # What has nothing to revert is passed through at once, so the first reverts
        # are chosen among every one ready.
        for i in frontier:
            if i not in self._reverting and states[i] is not _REVERT_FAILED:
                self._unwound(i)
        timed_out = False
        loop = self._loop
        finished = None if loop is not None else anyio.Event()

        async def compensate() -> None:
            nonlocal timed_out
            try:
                if self._journal is not None:
                    try:
                        await self._journal.store.set_status(
                            self.run_id, StoredRunStatus.REVERTING, error=self._stop_cause
                        )
                    except Exception as exc:
                        self._store_failed(exc)
                        return
                if self._compensation_timeout is None:
                    await self._run_phase()
                else:
                    with self._clock.cancel_scope(self._compensation_timeout) as deadline:
                        await self._run_phase()
                    timed_out = deadline.cancelled_caught
            finally:
                if finished is not None:
                    finished.set()

        # The shield stops anyio cancellation (cancel scopes, task groups). A native
        # ``task.cancel()`` on asyncio still reaches the waiting task: that is why the
        # reverts run in a child task and this one only waits, keeping the cancel for later.
        if loop is not None:  # asyncio: a plain task (a task group costs a third more)
            with AsyncioCancelScope(shield=True):
                child = loop.create_task(compensate())
                while not child.done():
                    ended = loop.create_future()  # (not the child: a cancel would reach it)
                    child.add_done_callback(functools.partial(_wake, ended))
                    try:
                        await ended
                    except asyncio.CancelledError as exc:
                        self._deferred_cancel = exc
                child.result()  # the compensation itself crashed: let its error out
        else:
            assert finished is not None
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(compensate)
                    while not finished.is_set():
                        try:
                            await finished.wait()
                        except anyio.get_cancelled_exc_class() as exc:
                            if tg.cancel_scope.cancel_called:
                                raise  # the compensation itself crashed: let its error out
                            self._deferred_cancel = exc
        self._phase = before
        left = bool(self._ready or self._parked) and StopReason.SUSPEND in self._stops
        self._end_phase()
        if timed_out:
            left = False
            timeout = TimeoutError(
                f"compensation of run {self.run_id} exceeded {self._compensation_timeout} s"
            )
            journal = self._journal
            for i in self._reverting:  # in progress, in backoff, parked or never reached
                if states[i] is not _REVERTED and i not in self._revert_errors:
                    states[i] = _REVERT_FAILED
                    self._revert_errors[i] = timeout
                    if journal is not None:
                        journal.record(
                            NodeRecord(
                                self._nodes[i].key,
                                _RECORD_REVERT_FAILED,
                                1,
                                None,
                                describe(timeout),
                            )
                        )
            await self._write_leftover()
        return left

    def _unwound(self, index: int) -> None:
        """Node ``index`` is undone: its parents whose consumers all are become ready.

        One with nothing to revert is passed through here and then (a join, a node
        without a revert, one reverted before a resume): the ready deque holds reverts,
        so a worker that blocks on one starts a spare only for another revert. A
        restored revert that failed stays: it blocks its branch."""
        nodes = self._nodes
        remaining = self._remaining
        ready = self._ready
        reverting = self._reverting
        states = self._states
        undone = [index]
        while undone:
            for parent in nodes[undone.pop()].parents:
                left = remaining[parent] - 1
                remaining[parent] = left
                if left == 0:
                    if parent in reverting:
                        ready.append(parent)
                    elif states[parent] is not _REVERT_FAILED:
                        undone.append(parent)

    async def _revert_node(self, node: Node, limits: tuple[Limit, ...]) -> None:
        index = node.index
        task = node.task
        assert task is not None
        assert task.reverter is not None
        reverter = task.reverter
        args = self._args_of(node)
        try:
            kwargs = dict(self._kwargs_of(node))
        except MissingInputError:  # it never ran with them: nothing to undo
            kwargs = dict(node.kwargs)
        if reverter.takes_result:
            failure = self._failures.get(index)
            kwargs["result"] = self._results[index] if failure is None else failure
        if reverter.takes_failures:
            kwargs["flow_failures"] = self.failures()

        task = node.task
        assert task is not None
        # (a revert runs where its task's body runs)
        remote = task.executor if task.executor_named else self._remote

        def make_call(attempt: int) -> Any:
            call: Callable[[], Any]
            if remote is not None and node.kind is _TASK:
                coro = remote_call(self, remote, reverter.fn, ~index, attempt, args, kwargs)
                return InContext(coro, self._context, ~index, attempt)
            if node.kind is _MAP or node.kind is _STARMAP:  # one revert per call made
                kwargs.pop("result", None)
                star = node.kind is not _MAP
                done = self._map_calls.get(index, [])
                if remote is not None:  # each call's revert where the call ran

                    def one(*a: Any, **k: Any) -> Any:
                        return remote_call(self, remote, reverter.fn, ~index, attempt, a, k)

                    coro = revert_items_async(
                        one, done, star, kwargs, reverter.takes_result, node.key
                    )
                    return InContext(coro, self._context, ~index, attempt)
                if reverter.is_async:
                    coro = revert_items_async(
                        reverter.fn, done, star, kwargs, reverter.takes_result, node.key
                    )
                    return InContext(coro, self._context, ~index, attempt)
                call = functools.partial(
                    revert_items_sync,
                    reverter.fn,
                    done,
                    star,
                    kwargs,
                    reverter.takes_result,
                    node.key,
                )
            elif reverter.is_async:
                return InContext(reverter.fn(*args, **kwargs), self._context, ~index, attempt)
            else:
                call = functools.partial(reverter.fn, *args, **kwargs)
            return self._in_thread(functools.partial(in_thread_as, self, ~index, attempt, call))

        self._states[index] = _REVERTING
        self._running += 1
        start = _perf_counter()
        sink = self._events
        try:
            if (
                reverter.options.single_shot
                and reverter.is_async
                and node.kind is _TASK
                and not sink.node_events
                and not INJECTIONS
                and remote is None
            ):  # the common revert, without the retry machinery (as _run_node's)
                attempt = 1
                returned = await InContext(reverter.fn(*args, **kwargs), self._context, ~index)
            else:
                returned, attempt = await self._attempts_of(
                    node,
                    reverter.options,
                    reverter.is_async,
                    make_call,
                    REVERT_STARTED,
                    REVERT_RETRIED,
                    self._revert_attempts,
                )
            refuse_unawaited(returned, node.key)
        except BaseException as caught:
            if not isinstance(caught, Exception) and not no_error(caught):
                raise  # a cancellation (of a crashed compensation) or an interrupt
            exc = self._failure_of(node, caught, self._revert_attempts.get(index, 1))
            self._states[index] = _REVERT_FAILED
            self._revert_errors[index] = exc
            if self._journal is not None:
                tries = self._revert_attempts.get(index, 1)
                text = describe(exc)
                record = NodeRecord(
                    node.key, _RECORD_REVERT_FAILED, tries, None, text, None, time.time()
                )
                self._journal.record(record)
            exc.add_note(f"aflow: the revert of {node.key!r} failed in run {self.run_id}")
            if sink.node_events:
                sink.emit(REVERT_FAILED, node.key, node.name, error=exc)
            # what precedes this node in its branch stays as it is
        else:
            self._states[index] = _REVERTED
            self._reverted.append(index)
            if returned is not None:  # (TaskFlow's storage.get_revert_result reads it)
                kept = self._revert_results
                if kept is None:
                    kept = self._revert_results = {}
                kept[index] = returned
            if sink.node_events:
                sink.emit(REVERT_SUCCEEDED, node.key, node.name, attempt, _perf_counter() - start)
            if self._journal is not None:  # its parents' reverts start once this is on record
                failure = self._failures.get(index)
                had = None  # a failure it had is kept on record: a resume needs it
                if failure is not None and not failure.cancelled:
                    had = describe(self._errors[index])
                self._journal.record(
                    NodeRecord(node.key, _RECORD_REVERTED, attempt, None, had, None, time.time()),
                    ("reverted", index),
                )
            else:
                self._unwound(index)  # before the idle check: the parents are ready now
        finally:
            self._running -= 1
            if limits:
                release(limits, self)
            self._check_idle()
