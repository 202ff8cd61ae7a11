"""The crew: a phase's worker tasks (spawn, stop, join), on asyncio and trio."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from ._bodies import await_coro
from ._run_state import RunState

try:  # anyio's asyncio scope, made without asking which backend runs (~1.2 µs less)
    from anyio._backends._asyncio import CancelScope as AsyncioCancelScope
except ImportError:  # pragma: no cover - another anyio layout
    AsyncioCancelScope = anyio.CancelScope  # type: ignore[misc,assignment]


__all__ = ["AsyncioCancelScope", "Crew"]


class Crew(RunState):
    """Spare workers of a phase: started when a node blocks and others are ready."""

    __slots__ = ()

    def _ensure_worker(self) -> None:
        if not self._spare_pending and self.starting and self._crew_open:
            self._spare_pending = True
            self._spawn(self._spare())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start a task of this phase (a spare worker, the flusher) in this run's own
        context: this may be called from another run's worker, when a limit hands this
        run a slot.

        On asyncio it is a plain task the phase tracks, as ``asyncio.TaskGroup`` does
        (anyio's ``start_soon`` costs 2.5 KiB a task, and a fan-out of nodes that all
        wait has a worker each): the phase cancels them when it stops and waits for
        every one before it ends (:meth:`_join_crew`). A node never moves from the
        task that started it.
        """
        loop = self._loop
        if loop is None:  # trio: a task of the phase's task group
            self._context.run(self._tg.start_soon, await_coro, coro)  # type: ignore[union-attr]
            return
        task = loop.create_task(coro, context=self._context.copy())
        self._crew.add(task)
        done = self._crew_done_callback
        if done is None:  # one bound method for all the run's workers (dropped at close)
            done = self._crew_done_callback = self._crew_done
        task.add_done_callback(done)

    def _crew_done(self, task: asyncio.Task[Any]) -> None:
        self._crew.discard(task)
        if task.cancelled():
            if self.starting and self._crew_error is None:
                # Nothing stopped the phase: a node raised CancelledError of its own
                # accord. Its worker ended with it; the run must not wait for it.
                keys = [self._nodes[i].key for i, f in self._failures.items() if f.cancelled]
                self._crew_error = RuntimeError(
                    f"run {self.run_id}: task {', '.join(map(repr, keys)) or '?'} raised "
                    "CancelledError without being cancelled"
                )
                self._cut_phase()
        else:
            error = task.exception()
            if error is not None and self._crew_error is None:
                # Nodes' own errors are handled in the task: this is the scheduler's own,
                # and it fails the phase, as a task group would.
                self._crew_error = error
                self._cut_phase()
        idle = self._crew_idle
        if (
            not self._crew
            and idle is not None
            and not idle.done()
            and not (self._idle_ends_phase and self._busy())
        ):
            idle.set_result(None)

    def _cut_phase(self) -> None:
        """Start nothing more, and cancel what runs in this phase: what the host awaits,
        and the crew's workers.

        Through their anyio scopes, never ``task.cancel()``: a shield inside a node (its
        cleanup, a thread being waited for) must hold, as in a task group.

        When no node is in flight there is nothing to interrupt (a cancel costs ~12 µs a
        scope, and the exception it throws more): the workers run dry and end, and the
        host is woken as at a phase's end.
        """
        self.starting = False
        # Nothing of this phase starts now: a slot a limit handed (or would hand) to one
        # of its parked nodes goes on to the next waiter at once, not when the phase has
        # ended, which may wait for that very waiter (another run).
        if self._parked:
            self._forget_waiters()
        if self.grants:
            self._return_grants()
        if self._nothing_in_flight():
            self._check_idle()
            return
        if self._scope is not None:
            self._scope.cancel()
        for scope in self._spare_scopes:
            scope.cancel()

    def _nothing_in_flight(self) -> bool:
        """No node body (nor revert) runs, waits for a retry or for a thread, and no
        worker waits on the store: every await of the phase's workers is then a turn of
        the loop, after which they see that nothing starts any more. (A failing node is
        no longer counted as running when its failure stops the run.)"""
        return self._running == 0 and self._journal is None

    async def _spare(self) -> None:
        """A spare worker of the crew, in a cancel scope of its own (see _cut_phase)."""
        scope = anyio.CancelScope() if self._loop is None else AsyncioCancelScope()
        with scope:
            if not self.starting:
                return  # the phase stopped before this task started
            self._spare_scopes.add(scope)
            try:
                await self._worker()
            finally:
                self._spare_scopes.discard(scope)

    async def _join_crew(self, cancel: bool) -> None:
        """Wait for every crew task to end (shielded); with ``cancel``, stop the phase
        first. A native cancel of this task meanwhile is re-raised once they have."""
        deferred: BaseException | None = None
        if cancel:
            self._cut_phase()
        loop = self._loop
        if not self._crew or loop is None:  # (a run whose nodes all ran inline)
            return
        with AsyncioCancelScope(shield=True):
            while self._crew:
                self._crew_idle = loop.create_future()
                try:
                    await self._crew_idle
                except BaseException as exc:  # asyncio's own cancel: kept for later
                    deferred = deferred or exc
                    self._cut_phase()
        self._crew_idle = None
        if deferred is not None:
            raise deferred
