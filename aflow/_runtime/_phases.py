"""The run's lifecycle: its phases, what stops it, and the forward phase's frame."""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel

from .._events import (
    RUN_CANCELLED,
    RUN_RELEASED,
    RUN_STARTED,
    RUN_SUCCEEDED,
    RUN_SUSPENDED,
    RUN_WAITING,
    EventListener,
)
from .._exceptions import (
    RecordedError,
    RunReleased,
)
from .._graph import Graph
from ..stores._base import NodeRecord, RecordState
from ._clock import wall_time
from ._crew import AsyncioCancelScope
from ._current import ATTEMPT, EXECUTION, STEP
from ._invariants import CHECK_INVARIANTS
from ._run_state import _PENDING, _SKIPPED, _UNWINDING, Phase, RunState, StopReason
from ._states import RunStatus

if TYPE_CHECKING:
    from ._scheduler import Execution

_perf_counter = time.perf_counter
_copy_context = contextvars.copy_context
_set_attempt = ATTEMPT.set
_set_execution = EXECUTION.set


#: Stopped before the forward phase began: it does not run.
_STOPPED_BEFORE_START = frozenset({StopReason.CANCEL, StopReason.TIMEOUT, StopReason.RELEASE})
#: What stops a compensation under way (a cancel or a deadline does not: it is shielded).
_CUTS_COMPENSATION = frozenset({StopReason.STORE, StopReason.RELEASE})
# The members the lifecycle reads on every run, as globals (an Enum attribute is slower).
_NOT_STARTED = Phase.PENDING
_FORWARD = Phase.FORWARD
_SUSPENDED = Phase.SUSPENDED
_CLOSED = Phase.CLOSED
_FAILURE = StopReason.FAILURE
_CANCEL = StopReason.CANCEL
_TIMEOUT = StopReason.TIMEOUT
_SUSPEND = StopReason.SUSPEND
_STORE = StopReason.STORE
_RELEASE = StopReason.RELEASE
_RECORD_NOT_STARTED = RecordState.NOT_STARTED


class Lifecycle(RunState):
    """Phases of a run and how it stops (see :class:`Phase`, :class:`StopReason`)."""

    __slots__ = ()

    def add_listener(self, listener: EventListener) -> None:
        """Subscribe to this run's events from now on."""
        self._events.add_listener(listener)

    def remove_listener(self, listener: EventListener) -> None:
        """Stop sending events to ``listener``."""
        self._events.remove_listener(listener)

    async def _execute(self) -> Any:
        """The run itself (see :meth:`execute`).

        On failure the other running tasks are cancelled, completed work is
        unwound (reverts, reverse dependency order, shielded), error callbacks
        run, and the task's own exception is raised with notes naming the
        task, the run and what was reverted. Cancelling the caller cancels and
        unwinds the run, then re-raises ``CancelledError``.
        """
        if self._phase is _SUSPENDED:
            self._prepare_resume()
        elif self._phase is not _NOT_STARTED:
            raise RuntimeError(f"run {self.run_id} was already started")
        else:
            self.started_at = time.time()
            self._wall_offset = self.started_at - _perf_counter()
        self._phase = _FORWARD
        self.status = RunStatus.RUNNING
        self._context = context = _copy_context()
        context.run(_set_attempt, 1)  # every node's context starts from this one
        context.run(_set_execution, self)  # type: ignore[arg-type]  # (an Execution)
        events = self._events
        events.emit(RUN_STARTED)
        if self._resumed_unwinding:
            self._take_up_unwinding()
        stops = self._stops
        caller_cancel: BaseException | None = None
        try:
            timeout = self._timeout
            if self._wall_deadline is not None and timeout is not None:
                timeout = self._wall_deadline - wall_time(self._clock)
                if timeout <= 0:
                    stops.add(_TIMEOUT)
            if (not stops or stops.isdisjoint(_STOPPED_BEFORE_START)) and (
                not self._resumed_unwinding
            ):
                if timeout is None:
                    await self._run_phase()
                else:
                    with self._clock.cancel_scope(timeout) as deadline:
                        self._deadline = deadline
                        await self._run_phase()
                    if deadline.cancelled_caught:
                        stops.add(_TIMEOUT)
        except BaseException as exc:  # the caller was cancelled: unwind, then re-raise
            caller_cancel = exc
        self._end_phase()
        if self._store_error is not None and caller_cancel is None:
            raise self._stopped_by_store()
        if self._completed():
            # A cancel or a deadline that landed as the last node ended stopped nothing:
            # the run succeeded, and nothing is reverted (its status and its nodes agree).
            if stops:  # (enum members hash in Python: a short run skips it)
                stops.discard(_CANCEL)
                stops.discard(_TIMEOUT)
            if caller_cancel is not None:  # the awaiter itself was cancelled: never swallowed
                self._close(RunStatus.SUCCEEDED)
                events.emit(RUN_SUCCEEDED, duration_s=self.duration_s)
                raise caller_cancel
        if caller_cancel is not None and (
            (
                self._journal is not None
                and isinstance(caller_cancel, (KeyboardInterrupt, SystemExit))
            )
            or self._being_released()
            or (self._parent is not None and self._parent._being_released())
        ):
            stops.add(_RELEASE)  # an interrupt leaves a durable run resumable
        if stops and _RELEASE in stops:
            await self._let_go(caller_cancel)

        stopped = (
            self._failure is not None
            or caller_cancel is not None
            or (bool(stops) and (_TIMEOUT in stops or _CANCEL in stops))
        )
        left = False  # suspend() stopped the unwinding with reverts still to start
        if stopped and self._on_error == "revert":
            self._stop_cause = self._cause_text()
            try:
                left = await self._unwind()
                if left and caller_cancel is None:
                    # A cancel that arrived while the shield was up, with the suspend: the
                    # caller is gone too, and nobody would run the rest of the unwinding.
                    caller_cancel = self._deferred_cancel
                    if caller_cancel is None:
                        try:
                            await anyio.lowlevel.checkpoint_if_cancelled()
                        except BaseException as exc:
                            caller_cancel = exc
                if left and caller_cancel is not None:  # its caller is gone: undo it all now
                    stops.discard(_SUSPEND)
                    left = await self._unwind()
            except BaseException as exc:  # a native cancel as the shielded group closed
                caller_cancel = caller_cancel or exc
                left = False
            if _RELEASE in stops:  # let go of mid-compensation: a resume goes on
                await self._let_go(caller_cancel)
            if caller_cancel is None and self._reverting:
                caller_cancel = self._deferred_cancel
                try:  # a cancel that arrived while the shield was up is the caller's now
                    await anyio.lowlevel.checkpoint_if_cancelled()
                except BaseException as exc:
                    caller_cancel = exc
        if caller_cancel is not None:
            await self._write_leftover()  # what was cut short, on record (shielded)
            self._close(RunStatus.FAILED if self._revert_errors else RunStatus.CANCELLED)
            events.emit(RUN_CANCELLED, error=caller_cancel)
            raise caller_cancel
        if self._store_error is not None:  # while unwinding
            raise self._stopped_by_store()
        if left:  # the next execute() takes up the unwinding where it stopped
            self._resumed_unwinding = True
            self.status = RunStatus.SUSPENDED
            self._phase = _SUSPENDED
            events.emit(RUN_SUSPENDED)
            return None
        if stops and _SUSPEND in stops and not stopped and self._done_count < self._done_goal:
            self.status = RunStatus.SUSPENDED  # what is left runs on the next execute()
            self._phase = _SUSPENDED
            events.emit(RUN_SUSPENDED)
            return None
        if not stopped and not self._errors and self._journal is None:
            # Nothing failed, and nothing is left to write: it succeeded (the common end).
            self._close(RunStatus.SUCCEEDED)
            events.emit(RUN_SUCCEEDED, duration_s=self.duration_s)
            return self._results[self.graph.output]
        return await self._settle()

    def _take_up_unwinding(self) -> None:
        """A run restored mid-compensation goes on with it, for the cause on record."""
        trigger = self._stop_cause or ""
        stops = self._stops
        if roots := self._root_failures():
            first = next(i for i, e in self._errors.items() if e is roots[0])
            self._failure = (first, roots[0])
        elif _TIMEOUT in stops:
            return  # the outcome says so (RunTimeout)
        elif trigger and not trigger.startswith("RunCancelled"):
            # a failure started it (a cancel asked later does not change that)
            self._failure = (-1, RecordedError(trigger))
        elif _CANCEL not in stops:  # unwinding, with no cause on record
            why = "the run was being undone when its process stopped (no cause on record)"
            self._failure = (-1, RecordedError(why))
        else:
            return
        stops.add(_FAILURE)

    async def _let_go(self, interrupt: BaseException | None) -> None:
        """End a released run here: write what finished (shielded), undo nothing."""
        await self._write_leftover()
        self._close(RunStatus.SUSPENDED)
        waits = self._waits
        self._events.emit(RUN_WAITING if waits is not None and waits.unloading else RUN_RELEASED)
        if interrupt is not None:
            raise interrupt
        raise RunReleased(self.run_id)

    def _store_failed(self, error: BaseException) -> None:
        """A checkpoint write failed, or the lease was lost: stop at once (running nodes
        are cancelled; nothing is reverted)."""
        if self._store_error is None:
            self._store_error = error
        self._stop(_STORE)

    def _stop(self, reason: StopReason) -> None:
        """The one way a run is stopped: record why, and start no node any more.

        A suspend lets running nodes finish; any other reason cancels them, except that
        a cancel or a deadline does not cut short a compensation (it is shielded: it
        finishes). A store failure or a release stops the compensation too.
        """
        self._stops.add(reason)
        if reason is _SUSPEND:
            self.starting = False
            self._check_idle()
        elif self._phase is not _UNWINDING or reason in _CUTS_COMPENSATION:
            self._cut_phase()

    async def _run_phase(self) -> None:
        """Run workers until the phase's ready work is done (or it is stopped)."""
        self.starting = True
        self._spare_pending = False  # a spare cancelled before it started never said so
        self._crew_error = None
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # trio: the workers are tasks of a task group
            self._loop = None
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._scope = tg.cancel_scope
                await self._phase_frame()
            self._tg = None
        else:
            # The phase's scope is entered before any node starts: a node's first step
            # runs inline, and a cancel scope it opens there must nest inside this one.
            with AsyncioCancelScope() as scope:
                self._scope = scope
                await self._phase_frame()
        # (An exited scope still names its task: a finished run kept in a history must
        # not keep its caller's task, and what that holds, alive.)
        self._scope = None
        if self._crew_error is not None:
            raise self._crew_error
        if self._journal is not None:
            await self._write_leftover()  # a halted phase leaves transitions unwritten

    async def _phase_frame(self) -> None:
        journal = self._journal
        self._crew_open = True
        if journal is not None:
            journal.reopen()
            # Never cancelled (only spares are): closing the journal ends it, batch whole.
            self._spawn(self._flusher(journal))
        try:
            await self._worker()
            if self._busy():
                loop = self._loop
                if loop is not None and journal is None:
                    # What is left runs in the crew: its last task to end wakes this one
                    # (see _crew_done), and there is then no crew left to join.
                    self._idle_ends_phase = True
                    self._crew_idle = loop.create_future()
                    if not self._crew and not self._busy():  # (see _check_idle)
                        self._crew_idle.set_result(None)
                    await self._crew_idle
                else:
                    self._done = anyio.Event()
                    await self._done.wait()
            if journal is not None:
                journal.close()
            await self._join_crew(cancel=False)
        except BaseException:
            if journal is not None:
                journal.close()
            await self._join_crew(cancel=True)
            raise
        finally:
            self._crew_open = False
            self._done = None
            self._crew_idle = None
            self._idle_ends_phase = False

    def suspend(self) -> None:
        """Start no more nodes; the running ones finish, then :meth:`execute` returns.

        The run is then ``SUSPENDED`` and a later :meth:`execute` runs only
        what is left. A run that is unwinding starts no more reverts: the running
        ones finish, :meth:`execute` returns (``SUSPENDED``), and the next one goes on
        unwinding, then raises what stopped the run (TaskFlow's engine does so). A run
        whose awaiting task was cancelled is unwound to the end all the same.
        """
        if self.closed:
            return
        self._stop(_SUSPEND)

    def _prepare_resume(self) -> None:
        """Ready again every pending node whose parents are all done."""
        self._stops.discard(_SUSPEND)
        states = self._states
        remaining = self._remaining
        self._ready = self.graph._shape[0].new_ready(
            node.index
            for node in self._nodes
            if node.error_scope is None
            and states[node.index] is _PENDING
            and remaining[node.index] == 0
        )

    def nested(self, graph: Graph, *, run_id: str | None = None) -> Execution:
        """A run of ``graph`` that shares this run's limits, threads, clock and listeners.

        Called from a node's body (a retried flow's attempt): the child's steps are
        known as ``<that node's key>#<attempt>/<their key>``, so their idempotency keys
        differ from one attempt to the next (an attempt that was undone is new work).
        """
        outer = STEP.get(-1)
        prefix = self._key_prefix
        if outer >= 0:
            made = self._nested_runs = self._nested_runs or {}
            made[outer] = made.get(outer, 0) + 1
            # A resumed run numbers its nested runs again from 1 (they are not on
            # record): its own mark keeps it from reusing a key a dead process used.
            prefix = f"{prefix}{self._nodes[outer].key}#{made[outer]}{self._incarnation}/"
        from ._options import Capacity
        from ._scheduler import Execution  # (it is made of this unit)

        # Its own run options are the defaults, but for the compensation deadline; it
        # shares this run's limits, threads and listeners.
        child = Execution(
            graph,
            self._options.nested(),
            Capacity(self._limits, self._global_limits, self._thread_limiter),
            run_id=run_id or self.run_id,
            listeners=self._events.listeners,
            nested=True,
        )
        child._key_prefix = prefix
        child._parent = self  # (released with it: a nested run undoes nothing then)
        return child

    def _busy(self) -> bool:
        if not self.starting:
            return False
        if self._phase is _UNWINDING:
            held = self._journal is not None and self._journal.holding
            return bool(self._running or self._ready or self._parked or held)
        return self._done_count < self._done_goal

    def _check_idle(self) -> None:
        if self._done is not None:
            if not self._busy():
                self._done.set()
        elif self._idle_ends_phase and not self._crew and not self._busy():
            idle = self._crew_idle
            if idle is not None and not idle.done():
                idle.set_result(None)

    def _end_phase(self) -> None:
        """The forward phase is over: nothing may start, slots go back."""
        if self._announced and self._journal is not None:
            states = self._states
            for i in self._announced:  # its start is on record, but it never started
                if states[i] is _PENDING:
                    self._journal.record(NodeRecord(self._nodes[i].key, _RECORD_NOT_STARTED, 1))
            self._announced.clear()
        self._tg = None
        self.starting = False
        self._ready.clear()
        if self._parked:
            self._forget_waiters()
        self._parked = 0
        self._return_grants()

    def cancel(self) -> None:
        """Cancel the run from outside; it unwinds, then raises :class:`RunCancelled`.

        A run whose every node has ended (or that has closed) is past cancelling: the
        request changes nothing, as ``asyncio.Task.cancel()`` on a finished task.
        """
        if self.closed or (self._completed() and self._phase is not _UNWINDING):
            return
        self._stop(_CANCEL)  # (a compensation under way finishes: shielded)

    def release(self) -> None:
        """Let go of a durable run at a step boundary, undoing nothing (its runtime shuts
        down): no node starts any more, running ones are interrupted (they run again on
        resume, at-least-once), what finished is written, and :meth:`execute` raises
        :class:`aflow.errors.RunReleased` (or what interrupted its task), the run
        ``SUSPENDED`` here and resumable in its store. A run without a store, or one
        whose every node has ended, is not released."""
        if self.closed or self._journal is None or self._completed():
            return
        self._stop(_RELEASE)

    @property
    def closed(self) -> bool:
        """The run has ended: its status is final."""
        return self._phase is _CLOSED

    @property
    def released(self) -> bool:
        """Its runtime let go of it (see :meth:`release`): the store keeps it unfinished."""
        return _RELEASE in self._stops

    def keep_deadline(self, wall: float) -> None:
        """Keep the deadline a resumed run had (wall seconds): it gets what is left of
        it as it starts; one that passed while no process ran it times out at once,
        and unwinds what ran before (issue 14)."""
        self._wall_deadline = wall

    def run_deadline(self) -> float | None:
        """When the run's own ``timeout`` runs out (wall seconds; None: it has none)."""
        if self._wall_deadline is not None:
            return self._wall_deadline
        if self._timeout is None or self.started_at is None:
            return None
        return self.started_at + self._timeout

    def _being_released(self) -> bool:
        """Its runtime is letting go of this run: released, or its task cancelled from
        outside (see release_on_interrupt) with no cancel, failure or deadline of its own."""
        if _RELEASE in self._stops:
            return True
        return (
            self.release_on_interrupt
            and _CANCEL not in self._stops
            and self._failure is None
            and not (self._deadline is not None and self._deadline.cancel_called)
        )

    def _completed(self) -> bool:
        """Every node the run needs has ended, and no failure stopped it.

        This is the run's commit point (issue 14): from here on a cancel or a deadline
        stops nothing, so it must not undo anything either; the run succeeds.
        """
        return (
            self._done_count >= self._done_goal
            and self._failure is None
            and not self._resumed_unwinding
        )

    def _let_go_of_errors(self) -> None:
        """Drop what this closed run holds of its errors (see :func:`aflow.run`)."""
        self._errors = {}
        self._failures = {}
        self._revert_errors = {}
        self._failure = None
        self._deferred_cancel = None
        self._store_error = None

    def _close(self, status: RunStatus) -> None:
        # Break the run's reference cycles (its context names it; so does the crew's
        # callback): a closed run is freed when dropped, not by the garbage collector.
        self._context.run(_set_execution, None)
        self._crew_done_callback = None
        self._scope = None  # (a phase cut short by an error left it: see _run_phase)
        self._phase = _CLOSED
        self.starting = False
        self._return_grants()
        self.status = status
        self.ended_at = time.time()
        states = self._states
        for node in self._nodes:
            if node.error_scope is not None and states[node.index] is _PENDING:
                states[node.index] = _SKIPPED
        if CHECK_INVARIANTS:
            self._check_invariants()
