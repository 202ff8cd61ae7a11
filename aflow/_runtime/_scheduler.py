"""The scheduler: runs one graph on the caller's event loop.

Bookkeeping is O(V + E): an in-degree counter per node and a ready deque; a
finished node decrements its children and pushes the ones that reach zero.

Workers are coroutines in the run's one task group. A worker pops a ready
node and awaits it *inline*; when it pops a node while more are ready, it
makes sure one spare worker is scheduled, so that if this node blocks the
others still start. A chain therefore runs in a single worker without any
task switch, and a fan-out of blocking nodes gets one worker per node, much
as hand-written ``create_task`` code would. Cancel scopes are opened only for
nodes with a timeout.
"""

from __future__ import annotations

import contextvars
import functools
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Generator, Iterable, Mapping, Sequence
from typing import Any, final

import anyio
import anyio.abc
import anyio.lowlevel

from .._events import (
    RUN_CANCELLED,
    RUN_FAILED,
    RUN_STARTED,
    RUN_SUCCEEDED,
    TASK_CANCELLED,
    TASK_FAILED,
    TASK_RETRIED,
    TASK_STARTED,
    TASK_SUCCEEDED,
    EventListener,
    EventSink,
)
from .._exceptions import DefinitionError, RunCancelled
from .._graph import INPUT_ERROR, Graph, Node, NodeKind
from ._limits import Limit, release, try_acquire
from ._states import NodeState, RunStatistics, RunStatus, StepInfo
from ._threads import run_in_thread

__all__ = ["Execution"]

_PENDING = NodeState.PENDING
_RUNNING = NodeState.RUNNING
_SUCCEEDED = NodeState.SUCCEEDED
_FAILED = NodeState.FAILED
_CANCELLED = NodeState.CANCELLED
_SKIPPED = NodeState.SKIPPED
_TASK = NodeKind.TASK
_JOIN = NodeKind.JOIN
_MAP = NodeKind.MAP

#: A worker that keeps finding work without ever blocking yields to the loop
#: this often, so a long run of instant tasks cannot starve the application.
_YIELD_EVERY = 128

_perf_counter = time.perf_counter
_copy_context = contextvars.copy_context


@final
class _InContext:
    """Await a coroutine inside its own copy of the context, as a task would.

    Workers run many nodes one after another; without this, a contextvar one
    task sets would leak into the next node the same worker runs.
    """

    __slots__ = ("_coro", "_ctx")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._ctx = _copy_context()

    def __await__(self) -> Generator[Any, Any, Any]:
        run = self._ctx.run
        coro = self._coro
        send = coro.send
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                if error is None:
                    yielded = run(send, value)
                else:
                    yielded = run(coro.throw, error)
                    error = None
            except StopIteration as stop:
                return stop.value
            try:
                value = yield yielded
            except BaseException as exc:  # forwarded into the coroutine, never swallowed
                error = exc


async def _map_async(
    fn: Any, items: Iterable[Any], star: bool, kwargs: Mapping[str, Any]
) -> list[Any]:
    if star:
        return [await fn(*item, **kwargs) for item in items]
    return [await fn(item, **kwargs) for item in items]


def _map_sync(fn: Any, items: Iterable[Any], star: bool, kwargs: Mapping[str, Any]) -> list[Any]:
    if star:
        return [fn(*item, **kwargs) for item in items]
    return [fn(item, **kwargs) for item in items]


@final
class Execution:
    """One run of one graph: its state arrays, workers and limits."""

    __slots__ = (
        "_any_limits",
        "_attempts",
        "_cancel_requested",
        "_children",
        "_context",
        "_done",
        "_done_count",
        "_errback_phase",
        "_errors",
        "_events",
        "_failure",
        "_finished",
        "_global_limits",
        "_limit_cache",
        "_limits",
        "_needed",
        "_nodes",
        "_peak",
        "_ready",
        "_remaining",
        "_results",
        "_running",
        "_scope",
        "_spare_pending",
        "_started",
        "_states",
        "_tg",
        "_thread_limiter",
        "_wall_offset",
        "closed",
        "ended_at",
        "grants",
        "graph",
        "run_id",
        "started_at",
        "status",
        "stopping",
    )

    def __init__(
        self,
        graph: Graph,
        *,
        run_id: str | None = None,
        max_concurrency: int | None = None,
        limits: Mapping[str, Limit] | None = None,
        global_limits: Sequence[Limit] = (),
        thread_limiter: anyio.CapacityLimiter | None = None,
        listeners: Sequence[EventListener] = (),
    ) -> None:
        self.graph = graph
        self.run_id = run_id or uuid.uuid4().hex
        self.status = RunStatus.PENDING
        self.closed = False
        self.started_at: float | None = None
        self.ended_at: float | None = None
        nodes = graph.nodes
        n = len(nodes)
        self._nodes = nodes
        self._children = [graph.children(i) for i in range(n)]
        self._results: list[Any] = [None] * n
        self._states: list[NodeState] = [_PENDING] * n
        self._remaining = [len(node.parents) for node in nodes]
        self._started: list[float | None] = [None] * n
        self._finished: list[float | None] = [None] * n
        self._attempts: dict[int, int] = {}
        self._errors: dict[int, BaseException] = {}
        self._ready: deque[int] = deque()
        errbacks = 0
        for node in nodes:
            if node.error_scope is not None:
                errbacks += 1
            elif not node.parents:
                self._ready.append(node.index)
        self._needed = n - errbacks
        self._done_count = 0
        self._running = 0
        self._peak = 0
        self._failure: tuple[int, BaseException] | None = None
        self.stopping = False
        self._errback_phase = False
        self._cancel_requested = False
        self._spare_pending = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._done: anyio.Event | None = None
        self._wall_offset = 0.0
        self._context = _copy_context()
        self._thread_limiter = thread_limiter
        self._events = EventSink(self.run_id, listeners)

        global_ = list(global_limits)
        if max_concurrency is not None:
            global_.append(Limit("max_concurrency", max_concurrency))
        self._global_limits = tuple(global_)
        self._limits = dict(limits or {})
        self._limit_cache: dict[int, tuple[Limit, ...]] = {}
        self.grants: dict[int, tuple[Limit, ...]] = {}
        self._any_limits = bool(self._global_limits)
        for node in nodes:  # options are interned: this loop sees few distinct objects
            if node.options.limits and id(node.options) not in self._limit_cache:
                self._limit_cache[id(node.options)] = self._resolve_limits(node)
                self._any_limits = True

    def _resolve_limits(self, node: Node) -> tuple[Limit, ...]:
        found: list[Limit] = []
        for name in node.options.limits:
            limit = self._limits.get(name)
            if limit is None:
                known = ", ".join(sorted(self._limits)) or "none"
                raise DefinitionError(
                    f"task {node.key!r} uses limit {name!r}, but the run has no such limit "
                    f"(configured: {known}); pass limits={{{name!r}: N}}"
                )
            found.append(limit)
        return tuple(found)

    def _limits_of(self, node: Node) -> tuple[Limit, ...]:
        if not node.options.limits:
            return self._global_limits
        named = self._limit_cache[id(node.options)]
        return self._global_limits + named if self._global_limits else named

    # --- running -------------------------------------------------------------------------

    def add_listener(self, listener: EventListener) -> None:
        """Subscribe to this run's events from now on."""
        self._events.add_listener(listener)

    def remove_listener(self, listener: EventListener) -> None:
        """Stop sending events to ``listener``."""
        self._events.remove_listener(listener)

    async def execute(self) -> Any:
        """Run the graph to the end in the calling task; return the output node's value.

        A task's exception propagates as raised (with notes naming the task
        and the run) after the other running tasks were cancelled and the
        matching error callbacks ran. Cancelling the caller cancels the run
        and re-raises.
        """
        if self.status is not RunStatus.PENDING:
            raise RuntimeError(f"run {self.run_id} was already started")
        self.status = RunStatus.RUNNING
        self.started_at = time.time()
        self._wall_offset = self.started_at - _perf_counter()
        self._context = _copy_context()
        events = self._events
        events.emit(RUN_STARTED)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._scope = tg.cancel_scope
                await self._worker()
                if self._done_count < self._needed and not self.stopping:
                    self._done = anyio.Event()
                    await self._done.wait()
        except BaseException as exc:
            self._tg = None
            self._close(RunStatus.CANCELLED)
            events.emit(RUN_CANCELLED, error=exc)
            raise
        self._tg = None
        self.closed = True  # no limit may hand this run a node any more
        self.stopping = True
        self._return_grants()
        if self._failure is not None:
            error = self._failure[1]
            try:
                await self._run_errbacks()
            except BaseException:
                self._close(RunStatus.CANCELLED)
                events.emit(RUN_CANCELLED)
                raise
            self._close(RunStatus.FAILED)
            events.emit(RUN_FAILED, error=error)
            raise error
        if self._cancel_requested and self._done_count < self._needed:
            self._close(RunStatus.CANCELLED)
            events.emit(RUN_CANCELLED)
            raise RunCancelled(self.run_id)
        self._close(RunStatus.SUCCEEDED)
        events.emit(RUN_SUCCEEDED, duration_s=self.duration_s)
        return self._results[self.graph.output]

    def cancel(self) -> None:
        """Cancel the run from outside; :meth:`execute` then raises :class:`RunCancelled`."""
        self._cancel_requested = True
        self.stopping = True
        if self._scope is not None:
            self._scope.cancel()

    def _close(self, status: RunStatus) -> None:
        self.closed = True
        self.stopping = True
        self._return_grants()
        self.status = status
        self.ended_at = time.time()
        states = self._states
        for node in self._nodes:
            if node.error_scope is not None and states[node.index] is _PENDING:
                states[node.index] = _SKIPPED

    def grant(self, index: int, limit: Limit) -> None:
        """A slot of ``limit`` was handed to node ``index`` (see :mod:`._limits`)."""
        held = self.grants.get(index)
        self.grants[index] = (limit,) if held is None else (*held, limit)

    def take_grants(self, index: int) -> tuple[Limit, ...]:
        """The slots handed to node ``index``, now its own."""
        return self.grants.pop(index, ())

    def _return_grants(self) -> None:
        # Slots handed to nodes this run will never start go on to the next waiters.
        while self.grants:
            _, limits = self.grants.popitem()
            release(limits, None)

    def requeue(self, index: int, *, wake: bool) -> None:
        """Put a node that waited for a limit slot back at the front of the ready queue."""
        self._ready.appendleft(index)
        if wake:
            self._ensure_worker()

    def _ensure_worker(self) -> None:
        if not self._spare_pending and not self.stopping and self._tg is not None:
            self._spare_pending = True
            # Called from another run's worker when a limit hands us a slot: start
            # the worker in this run's own context, never in the caller's.
            self._context.run(self._tg.start_soon, self._worker)

    async def _worker(self) -> None:
        self._spare_pending = False
        ready = self._ready
        nodes = self._nodes
        results = self._results
        streak = 0
        while ready and not self.stopping:
            index = ready.popleft()
            if ready and not self._spare_pending:
                self._spare_pending = True
                self._tg.start_soon(self._worker)  # type: ignore[union-attr]
            node = nodes[index]
            if node.kind is _JOIN:
                sources = node.args[0] if node.args else node.parents
                self._succeed(index, [results[p] for p in sources])
                continue
            if self._any_limits:
                limits = self._limits_of(node)
                if limits and not try_acquire(limits, self, index):
                    continue
            else:
                limits = ()
            await self._run_node(node, limits)
            streak += 1
            if streak == _YIELD_EVERY:
                streak = 0
                await anyio.lowlevel.checkpoint()

    async def _run_node(self, node: Node, limits: tuple[Limit, ...]) -> None:
        index = node.index
        task = node.task
        assert task is not None
        args = node.args
        source = node.input
        if source >= 0:
            args = (self._results[source], *args)
        elif source == INPUT_ERROR:
            args = (self._errors_for(node), *args)
        kwargs = node.kwargs
        options = node.options
        sink = self._events
        self._states[index] = _RUNNING
        self._running += 1
        if self._running > self._peak:
            self._peak = self._running
        start = _perf_counter()
        self._started[index] = start
        attempt = 1
        call: Any
        try:
            while True:
                if sink.node_events:
                    sink.emit(TASK_STARTED, node.key, task.name, attempt)
                try:
                    if node.kind is _TASK:
                        if task.is_async:
                            call = _InContext(task.fn(*args, **kwargs))  # type: ignore[arg-type]
                        else:
                            call = run_in_thread(
                                functools.partial(task.fn, *args, **kwargs), self._thread_limiter
                            )
                    else:
                        star = node.kind is not _MAP
                        if task.is_async:
                            call = _InContext(_map_async(task.fn, args[0], star, kwargs))
                        else:
                            call = run_in_thread(
                                functools.partial(_map_sync, task.fn, args[0], star, kwargs),
                                self._thread_limiter,
                            )
                    if options.timeout is None:
                        value = await call
                    elif task.is_async:
                        with anyio.fail_after(options.timeout):
                            value = await call
                    else:
                        # A thread cannot be interrupted: wait for it, then treat a
                        # late result as a timeout (the value is discarded).
                        began = _perf_counter()
                        value = await call
                        if _perf_counter() - began > options.timeout:
                            raise TimeoutError(
                                f"task {node.key!r} took longer than {options.timeout} s "
                                "(a thread task's result arrived late and was discarded)"
                            )
                except Exception as exc:
                    if attempt <= options.retries and (not self.stopping or self._errback_phase):
                        if sink.node_events:
                            sink.emit(TASK_RETRIED, node.key, task.name, attempt, error=exc)
                        attempt += 1
                        continue
                    self._fail(node, exc, attempt)
                    return
                break
        except BaseException as exc:  # cancellation: record it, never swallow it
            self._states[index] = _CANCELLED
            self._finished[index] = _perf_counter()
            self._errors[index] = exc
            if sink.node_events:
                sink.emit(TASK_CANCELLED, node.key, task.name, attempt)
            raise
        finally:
            self._running -= 1
            if attempt > 1:
                self._attempts[index] = attempt
            if limits:
                release(limits, self)
        if sink.node_events:
            sink.emit(TASK_SUCCEEDED, node.key, task.name, attempt, _perf_counter() - start)
        self._succeed(index, value)

    def _succeed(self, index: int, value: Any) -> None:
        self._results[index] = value
        self._states[index] = _SUCCEEDED
        self._finished[index] = _perf_counter()
        remaining = self._remaining
        ready = self._ready
        for child in self._children[index]:
            left = remaining[child] - 1
            remaining[child] = left
            if left == 0:
                ready.append(child)
        self._done_count += 1
        if self._done_count == self._needed and self._done is not None:
            self._done.set()

    def _fail(self, node: Node, error: Exception, attempt: int) -> None:
        index = node.index
        self._states[index] = _FAILED
        self._finished[index] = _perf_counter()
        self._errors[index] = error
        error.add_note(f"aflow: task {node.key!r} failed on attempt {attempt} in run {self.run_id}")
        if self._events.node_events:
            assert node.task is not None
            self._events.emit(
                TASK_FAILED,
                node.key,
                node.task.name,
                attempt,
                _perf_counter() - (self._started[index] or 0.0),
                error,
            )
        if self._failure is None and node.error_scope is None:
            self._failure = (index, error)
            self.stopping = True
            if self._scope is not None:
                self._scope.cancel()

    # --- error callbacks -----------------------------------------------------------------

    def _errors_for(self, node: Node) -> BaseException:
        assert node.error_scope is not None
        start, end = node.error_scope
        for index, error in self._errors.items():  # insertion order: the first failure first
            if start <= index < end and self._states[index] is _FAILED:
                return error
        raise AssertionError("error callback run without a failure in its scope")

    async def _run_errbacks(self) -> None:
        failed = [i for i, s in enumerate(self._states) if s is _FAILED]
        due = [
            node
            for node in self._nodes
            if node.error_scope is not None
            and any(node.error_scope[0] <= i < node.error_scope[1] for i in failed)
        ]
        if not due:
            return
        root = self._failure[1] if self._failure is not None else None
        async with anyio.create_task_group() as tg:
            for node in due:
                tg.start_soon(self._run_errback, node)
        for node in due:
            error = self._errors.get(node.index)
            if (
                error is not None
                and root is not None
                and error is not root
                and self._states[node.index] is _FAILED
            ):
                root.add_note(
                    f"aflow: error callback {node.key!r} also failed: "
                    f"{type(error).__name__}: {error}"
                )

    async def _run_errback(self, node: Node) -> None:
        self._errback_phase = True  # errbacks run after the forward phase stopped
        await self._run_node(node, ())

    # --- introspection -------------------------------------------------------------------

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
        node = self.graph.node(key)
        i = node.index
        started, finished = self._started[i], self._finished[i]
        return StepInfo(
            key=node.key,
            task=node.name,
            state=self._states[i],
            result=self._results[i],
            error=self._errors.get(i),
            attempts=self._attempts.get(i, 1 if started is not None else 0),
            started_at=self._wall(started),
            finished_at=self._wall(finished),
            duration_s=None if started is None or finished is None else finished - started,
        )

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
            if node.kind is not _JOIN and states[node.index] is _SUCCEEDED
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
            running=counts[_RUNNING],
            succeeded=counts[_SUCCEEDED],
            failed=counts[_FAILED],
            cancelled=counts[_CANCELLED],
            skipped=counts[_SKIPPED],
            peak_running=self._peak,
            duration_s=self.duration_s,
        )

    def limit_summary(self) -> str:
        """A short text of the limits in force, for ``repr``."""
        limits = list(self._global_limits) + list(self._limits.values())
        return ", ".join(f"{lim.name} {lim.borrowed}/{lim.total}" for lim in limits)
