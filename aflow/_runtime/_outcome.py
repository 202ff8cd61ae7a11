"""The outcome: root failures, error callbacks, notes on the error, and why a run stopped."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from .._events import (
    RUN_CANCELLED,
    RUN_FAILED,
    RUN_REVERTED,
    RUN_SUCCEEDED,
)
from .._exceptions import (
    CompensationFailed,
    GroupFailed,
    LeaseLost,
    RunCancelled,
    RunTimeout,
    StoreError,
    told,
)
from .._graph import Node, errback_extras
from ._journal import describe
from ._run_state import (
    _CANCELLED,
    _FAILED,
    _JOIN,
    _PENDING,
    _REVERT_FAILED,
    _REVERTED,
    _SUCCEEDED,
    Phase,
    RunState,
    StopReason,
)
from ._states import RunStatus

_RELEASED = "interrupted: its runtime shut down (it runs again when the run resumes)"
_UNLOADED = "waiting: the run was unloaded until its event or timer (it runs again then)"


class Outcome(RunState):
    """What a run reports when it ends."""

    __slots__ = ()

    async def _settle(self) -> Any:
        """Close a run that was not cut short: run the error callbacks that are due, then
        return the output's value, or raise what stopped the run (with notes)."""
        events = self._events
        roots = self._root_failures()
        primary: BaseException | None
        if StopReason.TIMEOUT in self._stops:
            primary = RunTimeout(self.run_id, self._timeout or 0.0)
        elif len(roots) == 1:
            primary = roots[0]
        elif roots:
            primary = GroupFailed(self.run_id, f"{len(roots)} tasks failed", roots)  # type: ignore[arg-type]
        elif self._failure is not None and self._failure[0] < 0:  # resumed: the stored trigger
            primary = self._failure[1]
        elif StopReason.CANCEL in self._stops and self._done_count < self._done_goal:
            primary = RunCancelled(self.run_id)
        else:
            primary = None
        try:
            errback_errors = (
                await self._run_errbacks() if self._done_goal < len(self._nodes) else []
            )
            await self._write_leftover()  # the error callbacks' records
        except BaseException as exc:  # cancelled while the error callbacks ran
            self._close(RunStatus.FAILED if self._revert_errors else RunStatus.CANCELLED)
            events.emit(RUN_CANCELLED, error=exc)
            raise
        if primary is None:
            self._close(RunStatus.SUCCEEDED)
            events.emit(RUN_SUCCEEDED, duration_s=self.duration_s)
            return self._results[self.graph.output]

        self._note_outcome(primary)
        self._note_errbacks(primary)
        for key, error in errback_errors:
            if error is not primary:
                primary.add_note(
                    f"aflow: error callback {key!r} also failed: "
                    f"{type(error).__name__}: {told(error)}"
                )
        if self._revert_errors:
            unique = {id(e): e for e in self._revert_errors.values()}  # one compensation timeout
            # A nested run's failed reverts, raised again by the revert of the node that
            # ran it (a retried flow), are in the node's failure already: listed once.
            reported = _leaves(primary)
            errors = [primary, *(e for e in unique.values() if not _leaves(e) <= reported)]
            self._close(RunStatus.FAILED)
            events.emit(RUN_FAILED, error=primary)
            raise CompensationFailed(
                self.run_id,
                f"{len(self._revert_errors)} revert(s) failed while unwinding",
                errors,  # type: ignore[arg-type]
                self._failed_reverts(),
            )
        if isinstance(primary, RunCancelled):
            self._close(RunStatus.CANCELLED)
            events.emit(RUN_CANCELLED)
        elif self._reverted:
            self._close(RunStatus.REVERTED)
            events.emit(RUN_REVERTED, error=primary)
        else:
            self._close(RunStatus.FAILED)
            events.emit(RUN_FAILED, error=primary)
        try:
            raise primary
        finally:  # (this frame is in its traceback: no reference cycle through its locals)
            del primary, roots, errback_errors

    def _cause_text(self) -> str:
        if self._failure is not None:
            return describe(self._failure[1])
        if StopReason.TIMEOUT in self._stops:
            return describe(RunTimeout(self.run_id, self._timeout or 0.0))
        return describe(RunCancelled(self.run_id))

    def _stopped_by_store(self) -> StoreError:
        """The run stops where its store last recorded it (nothing reverted): a resume
        takes it up from there once the store works again."""
        error = self._store_error
        assert error is not None
        self._close(RunStatus.FAILED)
        self._events.emit(RUN_FAILED, error=error)
        if isinstance(error, LeaseLost):
            failure = StoreError(
                f"run {self.run_id} stopped: {error}. Nothing was reverted here; whoever "
                "owns the run now (or a recovery) takes it up from its last checkpoint"
            )
        else:
            failure = StoreError(
                f"run {self.run_id} stopped: a checkpoint could not be written "
                f"({describe(error)}). Nothing was reverted; the store keeps the run "
                "unfinished at its last checkpoint: resume it (Runtime.resume(), "
                "`aflow resume`, or Runtime(recover=True)) once the store is back"
            )
        failure.__cause__ = error
        return failure

    def _root_failures(self) -> list[BaseException]:
        """Failures that stopped the run: not tolerated, not continued past."""
        roots: list[BaseException] = []
        for index, error in self._errors.items():
            node = self._nodes[index]
            if (
                self._states[index] in (_FAILED, _REVERTED, _REVERT_FAILED)
                and index in self._failures
                and not self._failures[index].cancelled
                and node.error_scope is None
                and not node.options.continue_on_failed
                and index not in self._tolerated_by
            ):
                roots.append(error)
        return roots

    def _note_outcome(self, primary: BaseException) -> None:
        if self._reverted:
            names = ", ".join(self._nodes[i].key for i in self._reverted)
            primary.add_note(f"aflow: run {self.run_id} reverted {names} (in that order)")
        if self._revert_errors:
            names = ", ".join(self._nodes[i].key for i in self._revert_errors)
            primary.add_note(f"aflow: the revert of {names} failed; what precedes it was kept")

    def _note_errbacks(self, primary: BaseException) -> None:
        """Say which error callbacks ran, and how many did not because the run stopped
        before their tasks could fail (fail fast: cancelled, or never started)."""
        if self._done_goal >= len(self._nodes):  # no error callbacks (as in _settle)
            return
        states = self._states
        ran: list[str] = []
        missed = 0
        for node in self._nodes:
            scope = node.error_scope
            if scope is None:
                continue
            if states[node.index] is not _PENDING:
                ran.append(node.key)
            elif StopReason.FAILURE in self._stops and any(
                states[i] is _PENDING or states[i] is _CANCELLED
                for i in range(scope[0], scope[1])
                if self._nodes[i].task is not None and self._nodes[i].error_scope is None
            ):
                missed += 1
        if ran:
            shown = ", ".join(repr(key) for key in ran[:5])
            more = f" and {len(ran) - 5} more" if len(ran) > 5 else ""
            primary.add_note(f"aflow: {len(ran)} error callback(s) ran: {shown}{more}")
        if missed:
            primary.add_note(
                f"aflow: {missed} error callback(s) did not run: the run stopped at its first "
                "failure before their tasks failed (they were cancelled or never started); "
                "on_error='continue' runs every task, and so every failing task's errbacks"
            )

    def _why_cut_short(self, exc: BaseException) -> str:
        """Why a running node was cancelled, as its record says."""
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return f"interrupted: {exc!r} was raised while it ran"
        if self._being_released():
            if self._waits is not None and self._waits.unloading:
                return _UNLOADED
            return _RELEASED
        if self._failure is not None:
            failed = self._nodes[self._failure[0]].key if self._failure[0] >= 0 else "a step"
            return f"cancelled mid-way: task {failed!r} failed"
        if StopReason.TIMEOUT in self._stops or (
            self._deadline is not None and self._deadline.cancel_called
        ):
            return "cancelled mid-way: the run ran out of time"
        if StopReason.CANCEL in self._stops:
            return "cancelled mid-way: the run was cancelled"
        return "cancelled mid-way: the task driving the run was cancelled"

    def _errors_for(self, node: Node) -> BaseException:
        scope = node.error_scope
        assert scope is not None
        for index, error in self._errors.items():  # insertion order: the first failure first
            failure = self._failures.get(index)
            if failure is not None and not failure.cancelled and self._fails(scope, index):
                return error
        raise AssertionError("error callback run without a failure in its scope")

    def _fails(self, scope: tuple[int, ...], i: int) -> bool:
        """Whether node ``i``'s failure fails an error callback's scope: ``i`` lies in one
        of its ``(start, end)`` ranges, and is a task's own failure which no success
        threshold inside the scope tolerated."""
        node = self._nodes[i]
        if node.error_scope is not None:
            return False
        if node.options.continue_on_failed:
            # The run went on past it: only the errbacks on that task itself see it, as
            # a success threshold's group runs its failed members' errbacks, not its own.
            return scope[0] == i and scope[1] == i + 1
        join = self._tolerated_by.get(i)
        inside = False
        for at in range(0, len(scope), 2):
            start, end = scope[at], scope[at + 1]
            if join is not None and start <= join < end:
                return False
            if start <= i < end:
                inside = True
        return inside

    async def _run_errbacks(self) -> list[tuple[str, BaseException]]:
        """Run the error callbacks whose scope saw a failure; return those that failed."""
        failed = [i for i, f in self._failures.items() if not f.cancelled]
        states = self._states
        fails = self._fails
        due = [  # one already done before a resume is not run again
            node
            for node in self._nodes
            if node.error_scope is not None
            and states[node.index] is _PENDING
            and any(fails(node.error_scope, i) for i in failed)
        ]
        if not due:
            return []
        self._phase = Phase.CALLBACKS
        self.starting = True
        async with anyio.create_task_group() as tg:
            for node in due:
                tg.start_soon(self._run_errback, node)
        return [
            (node.key, self._errors[node.index])
            for node in due
            if self._states[node.index] is _FAILED and node.index in self._errors
        ]

    async def _run_errback(self, node: Node) -> None:
        task = node.task
        assert task is not None
        scope = node.error_scope
        assert scope is not None
        ranges = sorted((scope[at], scope[at + 1]) for at in range(0, len(scope), 2))
        args = self._args_of(node)
        kwargs = dict(node.kwargs)
        accepted = errback_extras(task)
        if "failures" in accepted:
            kwargs["failures"] = {
                self._nodes[i].key: f
                for i, f in self._failures.items()
                if not f.cancelled and any(start <= i < end for start, end in ranges)
            }
        if "results" in accepted:
            kwargs["results"] = {
                self._nodes[i].key: self._results[i]
                for start, end in ranges
                for i in range(start, end)
                if self._nodes[i].kind is not _JOIN
                and self._nodes[i].error_scope is None  # (an errback inside: not a result)
                and i not in self._failures
                and self._states[i] in (_SUCCEEDED, _REVERTED, _REVERT_FAILED)
            }
        await self._run_node(node._replace(args=args, kwargs=kwargs, input=-1), ())


def _leaves(error: BaseException) -> set[int]:
    """The identities of the exceptions ``error`` is made of (itself, or its groups' leaves)."""
    if isinstance(error, BaseExceptionGroup):
        found: set[int] = set()
        for inner in error.exceptions:
            found |= _leaves(inner)
        return found
    return {id(error)}
