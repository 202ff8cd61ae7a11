"""The scheduler: runs one graph on the caller's event loop, and unwinds it on failure.

Forward phase. Bookkeeping is O(V + E): an in-degree counter per node and a
ready deque; a finished node decrements its children and pushes the ones that
reach zero. A worker pops a ready node and runs it *inline*. A plain async node
(no retries, timeout, named inputs or error scope) is started by hand: its
coroutine's first step runs in a copy of the run's context, and most nodes end
right there, with no task, no wake-up and no loop round trip (issue #7). A node
that suspends is driven on by :meth:`Execution._drive_suspended` in the same task (what
a node binds to its task, such as cancel scopes, must stay valid); if more work
is ready, one spare worker is started first, so the others still start. A
chain therefore runs in a single worker without any task switch, and a
fan-out of blocking nodes gets one worker per node, much as hand-written
``create_task`` code would.

Workers other than the caller's are plain asyncio tasks that the phase tracks
(the crew), cancels when it stops and waits for before it ends, as
``asyncio.TaskGroup`` does; the phase's own cancel scope is entered before any
node starts. Cancel scopes are opened only for nodes with a timeout.

Unwind phase (issue #3). When the forward phase fails, is cancelled or runs
out of time, the same workers walk the graph backwards: a node becomes ready
to revert once every node that consumed its output has been unwound, so a
revert never starts before the reverts of its consumers, and independent
reverts run concurrently under the same limits. The phase runs in a shielded
cancel scope with its own deadline, so a cancelled caller still unwinds. A
revert that fails blocks the unwinding of everything upstream of it (its
branch) while other branches go on.
"""

from __future__ import annotations

import contextvars
import time
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, final

import anyio
import anyio.abc
import anyio.lowlevel

from .._events import (
    TASK_FAILED,
    TASK_SKIPPED,
    TASK_SUCCEEDED,
)
from .._failure import Failure
from .._graph import Node, SkipOnly
from ..stores._base import NodeRecord, RecordState
from ._attempts import Attempts
from ._bodies import UNAWAITED, below_threshold, is_unawaited, no_error
from ._checkpoints import Checkpoints
from ._compensation import Compensation
from ._crew import Crew
from ._current import INJECTIONS
from ._inspect import Inspection
from ._journal import describe
from ._limits import Limit, release, try_acquire
from ._outcome import Outcome
from ._phases import Lifecycle
from ._restore import Restore
from ._run_limits import RunLimits
from ._run_state import (
    _FAILED,
    _JOIN,
    _PENDING,
    _REVERT_FAILED,
    _RUNNING,
    _SKIPPED,
    _SUBGRAPH,
    _SUCCEEDED,
    _UNWINDING,
    CONTAINED,
    StopReason,
)
from ._states import NodeState
from ._waits import maybe_unload

_perf_counter = time.perf_counter
# A global: every failure of a durable run reads it (an Enum attribute is slower).
_RECORD_FAILED = RecordState.FAILED

#: A worker that keeps finding work without ever blocking yields to the loop
#: this often, so a long run of instant tasks cannot starve the application.
_YIELD_EVERY = 128
#: A checkpoint the worker commits itself counts as this many nodes there (a commit costs
#: tens of µs: the loop gets a turn every few of them).
_COMMIT_WEIGHT = 16


@final
class Execution(
    Lifecycle, Attempts, Compensation, Outcome, Restore, Checkpoints, Crew, RunLimits, Inspection
):
    """One run of one graph: its state arrays, workers, limits and unwinding."""

    __slots__ = ()

    async def _worker(self) -> None:
        """Run ready nodes until none is left (or the run halts)."""
        self._spare_pending = False
        ready = self._ready
        nodes = self._nodes
        states = self._states
        results = self._results
        started = self._started
        finished = self._finished
        children = self._children
        remaining = self._remaining
        context = self._context
        events = self._events
        # A worker lives in one phase, and a run's journal never changes.
        journal = self._journal
        # (a run whose bodies run elsewhere by default starts none inline)
        inline_ok = self._phase is not _UNWINDING and self._remote is None
        unawaited = UNAWAITED  # (what no node may return; a frozenset: one lookup)
        any_limits = self._any_limits
        streak = 0
        # The clock is slow to read (150 ns on some VMs, a fifth of a node): a node that
        # ends inline is given the next reading as its finish (its start until then).
        unfinished = -1
        while True:
            while ready and self.starting:
                index = ready.popleft()
                node = nodes[index]
                if (
                    node.inline
                    and inline_ok
                    and not events.node_events
                    and not INJECTIONS
                    # a revert's start is written ahead of it (see _run_node)
                    and (journal is None or node.task.reverter is None)  # type: ignore[union-attr]
                ):
                    # The common node, started inline: most coroutines finish without ever
                    # suspending, and then cost no task, no wake-up and no spare worker.
                    if any_limits:
                        limits = self._limits_of(node)
                        if limits and not try_acquire(limits, self, index):
                            self._parked += 1
                            continue
                    else:
                        limits = ()
                    states[index] = _RUNNING
                    started[index] = start = _perf_counter()
                    if unfinished >= 0:
                        finished[unfinished] = start
                        unfinished = -1
                    ctx = context.copy()  # (no step in it: current_step() finds it here)
                    fn: Callable[..., Coroutine[Any, Any, Any]] = node.task.fn  # type: ignore[union-attr,assignment]
                    # In flight from its first step: it may stop its own run there (a cancel
                    # that must reach it once it waits: see _cut_phase).
                    self._running += 1
                    try:
                        source = node.input
                        if source < 0:
                            args = node.args
                        elif node.args:
                            args = (results[source], *node.args)
                        else:
                            args = (results[source],)
                        coro = fn(*args, **node.kwargs) if node.kwargs else fn(*args)
                        yielded = ctx.run(coro.send, None)
                    except StopIteration as stop:  # done without suspending: _succeed, inlined
                        self._running -= 1
                        if self._running >= self._peak:  # it ran beside those running
                            self._peak = self._running + 1
                        value = stop.value
                        if type(value) in unawaited:
                            self._node_failed(node, self._refused(node, value), 1)
                            if limits:  # (once the run has stopped: see _drive_suspended)
                                release(limits, self)
                        elif journal is not None:  # (no start record: nothing ran between)
                            if limits:
                                release(limits, self)
                            self._checkpoint_success(node, value, 1, start)
                        else:
                            if limits:
                                release(limits, self)
                            results[index] = value
                            states[index] = _SUCCEEDED
                            finished[index] = start
                            unfinished = index
                            for child in children[index]:
                                left = remaining[child] - 1
                                remaining[child] = left
                                if left == 0 and states[child] is _PENDING:
                                    ready.append(child)
                            self._done_count += 1
                            if self._done_count == self._done_goal and self._done is not None:
                                self._done.set()
                    except BaseException as exc:  # (handled, and re-raised if it is a cancel)
                        self._running -= 1
                        if not isinstance(exc, Exception) and not no_error(exc):
                            self._cancelled(node, exc)
                            if limits:
                                release(limits, self)
                            raise
                        self._node_failed(node, self._failure_of(node, exc, 1), 1)
                        if limits:  # (once the run has stopped: see _drive_suspended)
                            release(limits, self)
                    else:
                        if journal is not None:
                            journal.started(node.key, 1)
                        if self._running > self._peak:
                            self._peak = self._running
                        if ready and not self._spare_pending:  # it blocks: the others go on
                            self._spare_pending = True
                            self._spawn(self._spare())
                        if unfinished >= 0:
                            finished[unfinished] = _perf_counter()
                            unfinished = -1
                        await self._drive_suspended(node, limits, coro, ctx, yielded, start)
                    streak += 1
                    if streak >= _YIELD_EVERY:
                        streak = 0
                        if unfinished >= 0:
                            finished[unfinished] = _perf_counter()
                            unfinished = -1
                        await anyio.lowlevel.checkpoint()
                    continue
                if unfinished >= 0:
                    finished[unfinished] = _perf_counter()
                    unfinished = -1
                if self._phase is _UNWINDING:
                    if index not in self._reverting:
                        # (a restored revert that failed blocks its branch)
                        if self._states[index] is not _REVERT_FAILED:
                            self._unwound(index)
                        continue
                elif node.kind is _JOIN:
                    self._join(node)
                    continue
                if ready and not self._spare_pending:
                    self._spare_pending = True
                    self._spawn(self._spare())
                if self._any_limits and node.kind is not _SUBGRAPH:
                    limits = self._limits_of(node)
                    if limits and not try_acquire(limits, self, index):
                        self._parked += 1
                        continue
                else:
                    limits = ()
                if self._phase is _UNWINDING:
                    await self._revert_node(node, limits)
                else:
                    await self._run_node(node, limits)
                streak += 1
                if streak >= _YIELD_EVERY:
                    streak = 0
                    await anyio.lowlevel.checkpoint()
            if unfinished >= 0:
                finished[unfinished] = _perf_counter()
                unfinished = -1
            if self._waits is not None:  # what is left in flight may all be waits
                maybe_unload(self)
            if (
                journal is None
                or not self.starting
                or self._phase is _UNWINDING
                or self._handoff is not None
                or not journal.holding
            ):
                break
            # What comes next waits for a checkpoint (a chain's next step). Nothing else of
            # the run could join the batch: commit it here, if the store can at once.
            if self._write_now(journal):
                streak += _COMMIT_WEIGHT
                if streak >= _YIELD_EVERY and self.starting:
                    streak = 0
                    await anyio.lowlevel.checkpoint()
                continue
            # Else wait for the flusher's batch here rather than end, since a new worker
            # for what it releases would cost a task.
            self._handoff = handoff = anyio.Event()
            try:
                await handoff.wait()
            finally:
                self._handoff = None
        if self._phase is _UNWINDING:
            self._check_idle()  # the last nodes may have been joins, unwound without a revert

    @types.coroutine
    def _drive_suspended(
        self,
        node: Node,
        limits: tuple[Limit, ...],
        coro: Coroutine[Any, Any, Any],
        ctx: contextvars.Context,
        yielded: Any,
        start: float,
    ) -> Generator[Any, Any, None]:
        """Drive a node the worker started inline, which suspended on ``yielded``, to
        its end, in the same task: one generator for all of it (no coroutine per layer),
        as a fan-out of nodes that all wait holds one of these per node."""
        try:
            try:
                while True:
                    try:
                        sent = yield yielded
                    except BaseException as exc:  # forwarded, never swallowed
                        yielded = ctx.run(coro.throw, exc)
                    else:
                        yielded = ctx.run(coro.send, sent)
            except StopIteration as stop:
                value = stop.value
        # It is no longer in flight when its failure stops the run (see _cut_phase), but
        # its slots go back only once the run has stopped: a slot freed before would go to
        # a node of this run parked behind it, which never starts, while another run waits.
        except Exception as exc:
            self._running -= 1
            self._node_failed(node, self._failure_of(node, exc, 1), 1)
            if limits:
                release(limits, self)
            return
        except BaseException as exc:  # cancellation: record it, never swallow it
            self._running -= 1
            if no_error(exc):
                self._node_failed(node, self._failure_of(node, exc, 1), 1)
            else:
                self._cancelled(node, exc)
            if limits:
                release(limits, self)
            if no_error(exc):
                return
            raise
        self._running -= 1
        if is_unawaited(value):
            self._node_failed(node, self._refused(node, value), 1)
            if limits:  # (once the run has stopped, as above)
                release(limits, self)
            return
        if limits:
            release(limits, self)
        if self._events.node_events:  # someone subscribed while it ran
            self._events.emit(TASK_SUCCEEDED, node.key, node.name, 1, _perf_counter() - start)
        if self._journal is not None:
            self._checkpoint_success(node, value, 1, start)
        else:
            self._succeed(node.index, value)

    def _succeed(
        self, index: int, value: Any, state: NodeState = _SUCCEEDED, *, children: bool = True
    ) -> None:
        self._results[index] = value
        self._states[index] = state
        self._finished[index] = _perf_counter()
        if children:
            self._release(index)
        self._done_count += 1
        if self._done_count == self._done_goal and self._done is not None:
            self._done.set()

    def _release(self, index: int) -> None:
        """Node ``index`` is done: its children whose parents are all done become ready."""
        remaining = self._remaining
        ready = self._ready
        states = self._states
        for child in self._children[index]:
            left = remaining[child] - 1
            remaining[child] = left
            if left == 0 and states[child] is _PENDING:
                ready.append(child)

    def _node_failed(self, node: Node, error: Exception, attempt: int) -> None:
        index = node.index
        if self._journal is not None and node.task is not None:
            self._journal.record(
                NodeRecord(
                    node.key, _RECORD_FAILED, attempt, None, describe(error), None, time.time()
                )
            )
        self._errors[index] = error
        self._failures[index] = Failure.capture(node.key, error, attempt)
        error.add_note(f"aflow: task {node.key!r} failed on attempt {attempt} in run {self.run_id}")
        if self._events.node_events:
            self._events.emit(
                TASK_FAILED,
                node.key,
                node.name,
                attempt,
                _perf_counter() - (self._started[index] or _perf_counter()),
                error,
            )
        if node.error_scope is not None:  # an error callback failed: noted, not a root
            self._states[index] = _FAILED
            self._finished[index] = _perf_counter()
            return
        if node.options.continue_on_failed:
            self._succeed(index, None, _FAILED)  # dependents go on without its output
            return
        tolerant_join = self._tolerated_by.get(index)
        if (
            tolerant_join is not None
            or self._on_error == "continue"
            or getattr(error, CONTAINED, False)  # (a failure's path only)
        ):
            self._states[index] = _FAILED
            self._finished[index] = _perf_counter()
            self._skip_dependents(index, tolerant_join)
            self._done_count += 1
            self._check_idle()
            return
        self._states[index] = _FAILED
        self._finished[index] = _perf_counter()
        if self._failure is None:
            self._failure = (index, error)
            self._stop(StopReason.FAILURE)

    def _skip(self, index: int) -> None:
        """A guard said no: this node and everything downstream of it is SKIPPED."""
        self._states[index] = _SKIPPED
        self._finished[index] = _perf_counter()
        self._done_count += 1
        self._skip_dependents(index, None)
        self._check_idle()

    def _skip_only(self, index: int, only: tuple[int, ...]) -> None:
        """A guard said no to ``only``: the guard and those nodes are SKIPPED, and each
        node after them starts once its other parents end (they count as ended)."""
        states = self._states
        remaining = self._remaining
        nodes = self._nodes
        sink = self._events
        states[index] = _SKIPPED
        self._finished[index] = _perf_counter()
        self._done_count += 1
        skipped = [index]
        for i in only:
            if states[i] is _PENDING:
                states[i] = _SKIPPED
                self._done_count += 1
                skipped.append(i)
                if sink.node_events and nodes[i].kind is not _JOIN:
                    sink.emit(TASK_SKIPPED, nodes[i].key, nodes[i].name)
        out = set(skipped)
        for i in skipped:
            for child in self._children[i]:
                if child not in out:
                    left = remaining[child] - 1
                    remaining[child] = left
                    if left == 0 and states[child] is _PENDING:
                        self._ready.append(child)
        self._check_idle()

    def _skip_dependents(self, index: int, tolerant_join: int | None) -> None:
        """Mark every node downstream of a failed one SKIPPED, up to a tolerating join."""
        states = self._states
        remaining = self._remaining
        stack = [index]
        sink = self._events
        while stack:
            i = stack.pop()
            for child in self._children[i]:
                if child == tolerant_join or self._nodes[child].after_all:
                    remaining[child] -= 1
                    if remaining[child] == 0 and states[child] is _PENDING:
                        self._ready.append(child)
                elif states[child] is _PENDING:
                    states[child] = _SKIPPED
                    self._done_count += 1
                    if sink.node_events and self._nodes[child].kind is not _JOIN:
                        sink.emit(TASK_SKIPPED, self._nodes[child].key, self._nodes[child].name)
                    stack.append(child)

    def _join(self, node: Node) -> None:
        results = self._results
        sources = node.args[0] if node.args else node.parents
        if node.when is not None:
            self._started[node.index] = _perf_counter()
            states = self._states
            nodes = self._nodes
            try:
                # in the run's context, as a task would be (contextvars, the current run);
                # a source that was skipped has no result to show
                go = self._context.run(
                    node.when,
                    {nodes[p].key: results[p] for p in sources if states[p] is not _SKIPPED},
                )
            except Exception as exc:
                self._node_failed(node, exc, 1)
                return
            if not go:
                only = go.nodes if type(go) is SkipOnly else None
                if self._journal is not None:
                    self._record_decided_out(node, only)
                if only is None:
                    self._skip(node.index)
                else:
                    self._skip_only(node.index, only)
                return
            self._succeed(node.index, None)
            return
        if node.tolerates is None:
            self._succeed(node.index, [results[p] for p in sources])
            return
        states = self._states
        ok = sum(1 for p in sources if states[p] is _SUCCEEDED)
        if node.options.threshold_met(ok, len(sources)):
            self._succeed(
                node.index, [results[p] if states[p] is _SUCCEEDED else None for p in sources]
            )
            return
        start, end = node.tolerates
        failed = [
            error
            for i, error in self._errors.items()
            if start <= i < end
            and i in self._failures
            and not self._failures[i].cancelled
            and isinstance(error, Exception)
        ]
        error = below_threshold(self.run_id, node, ok, len(sources), failed)
        self._started[node.index] = _perf_counter()
        self._node_failed(node, error, 1)


#: The code that starts a node inline and drives it on: aflow.current_step() walks the
#: stack to them to find the step of a node that has none in its context.
DRIVERS = frozenset({Execution._worker.__code__, Execution._drive_suspended.__code__})
