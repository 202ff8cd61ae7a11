"""The scheduler: runs one graph on the caller's event loop, and unwinds it on failure.

Forward phase. Bookkeeping is O(V + E): an in-degree counter per node and a
ready deque; a finished node decrements its children and pushes the ones that
reach zero. A worker pops a ready node and runs it *inline*. A plain async node
(no retries, timeout, named inputs or error scope) is started by hand: its
coroutine's first step runs in a copy of the run's context, and most nodes end
right there, with no task, no wake-up and no loop round trip (issue #7). A node
that suspends is driven on by :meth:`Execution._finish` in the same task (what
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

import asyncio
import contextvars
import functools
import math
import time
import types
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any, final

import anyio
import anyio.abc
import anyio.lowlevel

from .._events import (
    REVERT_FAILED,
    REVERT_RETRIED,
    REVERT_STARTED,
    REVERT_SUCCEEDED,
    RUN_CANCELLED,
    RUN_FAILED,
    RUN_RELEASED,
    RUN_REVERTED,
    RUN_STARTED,
    RUN_SUCCEEDED,
    RUN_SUSPENDED,
    TASK_CANCELLED,
    TASK_FAILED,
    TASK_RETRIED,
    TASK_SKIPPED,
    TASK_STARTED,
    TASK_SUCCEEDED,
    EventListener,
    EventSink,
    warn,
)
from .._exceptions import (
    CompensationFailed,
    DefinitionError,
    GroupFailed,
    LeaseLost,
    MissingInputError,
    RecordedError,
    ResultError,
    ResumeMismatch,
    RunCancelled,
    RunReleased,
    RunTimeout,
    SerializationError,
    StoreError,
    TaskFailed,
    TaskTimeout,
)
from .._failure import Failure
from .._graph import INPUT_ERROR, EndBranch, Graph, Node, NodeKind, OptionalKey, errback_extras
from .._options import NodeOptions
from ..stores._base import NodeRecord
from ._clock import SYSTEM_CLOCK, Clock, DeadlineScope, wall_time
from ._current import ATTEMPT, EXECUTION, INJECTIONS, ITEM, STEP, Injection
from ._journal import Journal, describe
from ._limits import Limit, release, try_acquire
from ._states import NodeState, RunStatistics, RunStatus, StepInfo
from ._threads import run_in_executor, run_in_thread

__all__ = ["DRIVERS", "Execution"]

_PENDING = NodeState.PENDING
_RUNNING = NodeState.RUNNING
_RETRYING = NodeState.RETRYING
_SUCCEEDED = NodeState.SUCCEEDED
_FAILED = NodeState.FAILED
_CANCELLED = NodeState.CANCELLED
_SKIPPED = NodeState.SKIPPED
_REVERTING = NodeState.REVERTING
_REVERTED = NodeState.REVERTED
_REVERT_FAILED = NodeState.REVERT_FAILED
_TASK = NodeKind.TASK
_JOIN = NodeKind.JOIN
_MAP = NodeKind.MAP
_STARMAP = NodeKind.STARMAP
_SUBGRAPH = NodeKind.SUBGRAPH

#: A worker that keeps finding work without ever blocking yields to the loop
#: this often, so a long run of instant tasks cannot starve the application.
_YIELD_EVERY = 128

_perf_counter = time.perf_counter
_copy_context = contextvars.copy_context
_set_attempt = ATTEMPT.set
_set_execution = EXECUTION.set
_set_step = STEP.set
_set_item = ITEM.set


@final
class _InContext:
    """Await a coroutine inside its own copy of the context, as a task would.

    Workers run many nodes one after another; without this, a contextvar one
    task sets would leak into the next node the same worker runs.
    """

    __slots__ = ("_coro", "_ctx")

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        run_context: contextvars.Context,
        step: int,
        attempt: int = 1,
    ) -> None:
        self._coro = coro
        self._ctx = ctx = run_context.copy()
        ctx.run(_set_step, step)
        if attempt != 1:  # the run's context says 1 already
            ctx.run(_set_attempt, attempt)

    def __await__(self) -> Generator[Any, Any, Any]:
        return _drive(self._coro, self._ctx, None, None)


def _drive(
    coro: Coroutine[Any, Any, Any],
    ctx: contextvars.Context,
    value: Any,
    error: BaseException | None,
) -> Generator[Any, Any, Any]:
    """Step ``coro`` in ``ctx``, passing what the loop sends or throws, until it returns."""
    run = ctx.run
    send = coro.send
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


async def _await(coro: Coroutine[Any, Any, Any]) -> Any:
    return await coro


def _in_thread_as(execution: Execution, step: int, attempt: int, fn: Callable[[], Any]) -> Any:
    """Call a sync body in its thread, which runs in its own copy of the context: what
    the body may ask of itself (:func:`aflow.current_step`) is set there first."""
    _set_execution(execution)
    _set_step(step)
    _set_attempt(attempt)
    try:
        return fn()
    except BaseException as exc:  # (GeneratorExit...) carried out of the thread as an error
        if _no_error(exc):
            raise _Escaped(exc) from exc
        raise  # an error, an interrupt, or a cancellation that check_cancelled() saw


class _Escaped(Exception):
    """A ``BaseException`` that is no error, raised by a sync body in its thread: it
    travels to the scheduler as an error (see :meth:`Execution._failure_of`)."""


def _no_error(exc: BaseException) -> bool:
    """A ``BaseException`` a task raised that is neither an error, nor a cancellation, nor
    an interrupt (``GeneratorExit``, a user's own): the task failed (issue 14). Safe in
    a worker thread (no anyio call): trio's ``Cancelled`` is known by its module."""
    return not (
        isinstance(exc, (Exception, KeyboardInterrupt, SystemExit, asyncio.CancelledError))
        or type(exc).__module__.startswith("trio")
    )


# A map or starmap node calls its task on each item in turn. When the task has a
# revert, ``done`` records (item, value or Failure) for every call made, so the
# unwinding can compensate item by item (see Execution._revert_node).


async def _map_async(
    fn: Any,
    items: Iterable[Any],
    star: bool,
    kwargs: Mapping[str, Any],
    node: Node,
    run_id: str,
    done: list[tuple[Any, Any]] | None,
) -> list[Any]:
    tolerant = node.options.tolerant
    out: list[Any] = []
    errors: list[Exception] = []
    for i, item in enumerate(items):
        try:  # each call in a context of its own: its step is the item (current_step())
            value = await _InItem(fn(*item, **kwargs) if star else fn(item, **kwargs), i)
        except BaseException as exc:
            _record_item(done, node, item, exc)
            if not tolerant or not _a_failure(exc):
                raise
            errors.append(_as_item_error(exc, node, run_id))
            out.append(_MISSING)
        else:
            if done is not None:
                done.append((item, value))
            out.append(value)
    return _settle_map(out, errors, node, run_id)


def _map_sync(
    fn: Any,
    items: Iterable[Any],
    star: bool,
    kwargs: Mapping[str, Any],
    node: Node,
    run_id: str,
    done: list[tuple[Any, Any]] | None,
) -> list[Any]:
    tolerant = node.options.tolerant
    out: list[Any] = []
    errors: list[Exception] = []
    for i, item in enumerate(items):
        ctx = _copy_context()  # each call in a context of its own, as in _map_async
        ctx.run(_set_item, i)
        try:
            value = ctx.run(fn, *item, **kwargs) if star else ctx.run(fn, item, **kwargs)
        except BaseException as exc:
            _record_item(done, node, item, exc)
            if not tolerant or not _a_failure(exc):
                raise
            errors.append(_as_item_error(exc, node, run_id))
            out.append(_MISSING)
        else:
            if done is not None:
                done.append((item, value))
            out.append(value)
    return _settle_map(out, errors, node, run_id)


def _a_failure(exc: BaseException) -> bool:
    """An error, or a BaseException that is no error: a failure (not a cancellation)."""
    return isinstance(exc, Exception) or _no_error(exc)


def _as_item_error(exc: BaseException, node: Node, run_id: str) -> Exception:
    if isinstance(exc, Exception):
        return exc
    failed = TaskFailed(run_id, node.key, ATTEMPT.get(1), repr(exc))
    failed.__cause__ = exc
    return failed


def _record_item(
    done: list[tuple[Any, Any]] | None, node: Node, item: Any, error: BaseException
) -> None:
    if done is not None:
        cancelled = not _a_failure(error)
        done.append((item, Failure.capture(node.key, error, ATTEMPT.get(1), cancelled=cancelled)))


async def _revert_items_async(
    fn: Any,
    done: list[tuple[Any, Any]],
    star: bool,
    kwargs: dict[str, Any],
    takes_result: bool,
    key: str,
) -> None:
    while done:  # last call first; a retry resumes where a failed revert stopped
        item, result = done[-1]
        extra = {"result": result} if takes_result else {}
        call = fn(*item, **kwargs, **extra) if star else fn(item, **kwargs, **extra)
        returned = await _InItem(call, len(done) - 1)  # (its item's index: calls in order)
        _refuse_unawaited(returned, key)
        done.pop()


def _revert_items_sync(
    fn: Any,
    done: list[tuple[Any, Any]],
    star: bool,
    kwargs: dict[str, Any],
    takes_result: bool,
    key: str,
) -> None:
    while done:
        item, result = done[-1]
        extra = {"result": result} if takes_result else {}
        ctx = _copy_context()
        ctx.run(_set_item, len(done) - 1)
        if star:
            returned = ctx.run(fn, *item, **kwargs, **extra)
        else:
            returned = ctx.run(fn, item, **kwargs, **extra)
        _refuse_unawaited(returned, key)
        done.pop()


def _unawaited(value: Any) -> bool:
    """A value no task may return: a coroutine or a future it forgot to ``await``."""
    return type(value) is _COROUTINE or isinstance(value, _FUTURE)


def _refuse_unawaited(value: Any, key: str) -> None:
    """A revert that returned a coroutine or a future did not do its work: it failed."""
    if _unawaited(value):
        if type(value) is _COROUTINE:
            value.close()
        what = _awaitable_name(value)
        raise ResultError(key, f"(its revert) returned {what}: a missing 'await'?")


def _awaitable_name(value: Any) -> str:
    if type(value) is _COROUTINE:
        return f"a coroutine ({getattr(value, '__qualname__', '?')}())"
    return f"an awaitable ({type(value).__name__})"


@final
class _InItem:
    """Await one call of a map in a context of its own, naming its item (current_step())."""

    __slots__ = ("_coro", "_ctx")

    def __init__(self, coro: Coroutine[Any, Any, Any], item: int) -> None:
        self._coro = coro
        self._ctx = ctx = _copy_context()
        ctx.run(_set_item, item)

    def __await__(self) -> Generator[Any, Any, Any]:
        return _drive(self._coro, self._ctx, None, None)


_MISSING: Any = object()
_COROUTINE = types.CoroutineType
_FUTURE = asyncio.Future
#: The types of what a task forgot to await, for the inline path's one-lookup check
#: (any other future subclass is caught where a node does not end inline).
_UNAWAITED = frozenset(
    {
        _COROUTINE,
        asyncio.Future,
        asyncio.Task,
        getattr(asyncio.tasks, "_GatheringFuture", asyncio.Future),  # what gather() returns
    }
)
_CUT_SHORT = "cancelled mid-way: its process stopped"
_RELEASED = "interrupted: its runtime shut down (it runs again when the run resumes)"
#: Stored states of a node that began and did not end: it runs again on a resume (or,
#: in a run that is unwinding, counts as cancelled mid-way).
_CUT_OFF = ("running", "retrying", "cancelled")


def _below_threshold(
    run_id: str, node: Node, ok: int, total: int, what: str, errors: Sequence[BaseException]
) -> GroupFailed:
    message = f"{ok} of {total} {what} of {node.key!r} succeeded, below its success threshold"
    if not errors:  # too few members to begin with (a fan-out over a short input)
        errors = [ValueError(f"{node.key!r}: {message}")]
    return GroupFailed(run_id, message, errors)  # type: ignore[arg-type]


def _settle_map(out: list[Any], errors: list[Exception], node: Node, run_id: str) -> list[Any]:
    succeeded = len(out) - len(errors)
    if not node.options.threshold_met(succeeded, len(out)):
        raise _below_threshold(run_id, node, succeeded, len(out), "items", errors)
    return [None if v is _MISSING else v for v in out]


@final
class Execution:
    """One run of one graph: its state arrays, workers, limits and unwinding."""

    __slots__ = (
        "__weakref__",
        "_announced",
        "_any_limits",
        "_attempts",
        "_cancel_requested",
        "_children",
        "_clock",
        "_compensation_timeout",
        "_context",
        "_crew",
        "_crew_done_callback",
        "_crew_error",
        "_crew_idle",
        "_deadline",
        "_deferred_cancel",
        "_done",
        "_done_count",
        "_errbacks_due",
        "_errors",
        "_events",
        "_executor",
        "_failure",
        "_failures",
        "_finished",
        "_global_limits",
        "_halt",
        "_handoff",
        "_incarnation",
        "_journal",
        "_key_prefix",
        "_limit_cache",
        "_limits",
        "_loop",
        "_map_calls",
        "_needed",
        "_nested",
        "_nested_runs",
        "_nodes",
        "_on_error",
        "_parent",
        "_parked",
        "_peak",
        "_phase_open",
        "_ready",
        "_releasing",
        "_remaining",
        "_results",
        "_resumed_unwinding",
        "_revert_attempts",
        "_revert_errors",
        "_reverted",
        "_reverting",
        "_running",
        "_scope",
        "_spare_pending",
        "_spare_scopes",
        "_started",
        "_states",
        "_store_error",
        "_suspend_requested",
        "_tg",
        "_thread_limiter",
        "_timed_out",
        "_timeout",
        "_tolerated_by",
        "_trigger",
        "_unwinding",
        "_wall_deadline",
        "_wall_offset",
        "closed",
        "ended_at",
        "grants",
        "graph",
        "release_on_interrupt",
        "restored",
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
        on_error: str = "revert",
        timeout: float | None = None,
        compensation_timeout: float | None = None,
        clock: Clock | None = None,
        executor: Executor | None = None,
        nested: bool = False,
        journal: Journal | None = None,
    ) -> None:
        if on_error not in ("revert", "continue"):
            raise ValueError(f"on_error must be 'revert' or 'continue', got {on_error!r}")
        for name, value in (("timeout", timeout), ("compensation_timeout", compensation_timeout)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        self.graph = graph
        self.run_id = run_id or uuid.uuid4().hex
        self.status = RunStatus.PENDING
        self.closed = False
        self.stopping = False
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._on_error = on_error
        self._timeout = timeout
        self._compensation_timeout = compensation_timeout
        self._clock: Clock = clock or SYSTEM_CLOCK
        nodes = graph.nodes
        n = len(nodes)
        self._nodes = nodes
        self._children = graph._children
        self._results: list[Any] = [None] * n
        self._states: list[NodeState] = [_PENDING] * n
        self._remaining = [len(node.parents) for node in nodes]
        self._started: list[float | None] = [None] * n
        self._finished: list[float | None] = [None] * n
        self._attempts: dict[int, int] = {}
        self._revert_attempts: dict[int, int] = {}
        self._map_calls: dict[int, list[tuple[Any, Any]]] = {}
        self._errors: dict[int, BaseException] = {}
        self._failures: dict[int, Failure] = {}
        self._revert_errors: dict[int, BaseException] = {}
        self._reverted: list[int] = []
        self._reverting: frozenset[int] = frozenset()
        self._ready: deque[int] = deque()
        errbacks = 0
        tolerant: list[Node] = []
        for node in nodes:
            if node.error_scope is not None:
                errbacks += 1
            elif not node.parents:
                self._ready.append(node.index)
            if node.tolerates is not None:
                tolerant.append(node)
        self._needed = n - errbacks
        # node -> the join of the innermost group with a threshold that tolerates it
        self._tolerated_by: dict[int, int] = {}
        for join in sorted(tolerant, key=lambda j: j.tolerates[1] - j.tolerates[0], reverse=True):  # type: ignore[index]
            start, end = join.tolerates  # type: ignore[misc]
            for i in range(start, end):
                self._tolerated_by[i] = join.index
        self._done_count = 0
        self._running = 0
        self._parked = 0
        self._peak = 0
        self._failure: tuple[int, BaseException] | None = None
        self._errbacks_due = False
        self._halt = False
        self._unwinding = False
        self._cancel_requested = False
        self._suspend_requested = False
        #: let go of at shutdown (see release()): nothing is undone, the store keeps it
        self._releasing = False
        #: a run its runtime owns is cancelled through cancel(); a native cancellation of
        #: its task means the runtime itself is going away (its task group, or a scope
        #: around it, was cancelled): with this set, that releases the run (issue 14)
        self.release_on_interrupt = False
        self._executor = executor
        self._nested = nested
        #: a nested run's steps are known by their path: see nested()
        self._key_prefix = ""
        self._nested_runs: dict[int, int] | None = None
        self._incarnation = ""  # "~<token>" once restored (see nested())
        self._parent: Execution | None = None
        self._journal = journal
        self._resumed_unwinding = False
        self._store_error: BaseException | None = None
        #: nodes whose start went out with their parent's success (write-ahead for free)
        self._announced: set[int] = set()
        #: taken up from checkpoints (a resumed or forked run)
        self.restored = False
        #: What stopped the run, as stored while it is reverting (a resume needs it)
        self._trigger: str | None = None
        self._timed_out = False
        #: the run's own deadline, while its forward phase runs
        self._deadline: DeadlineScope | None = None
        #: a resumed run's deadline, as its store kept it (see keep_deadline())
        self._wall_deadline: float | None = None
        self._deferred_cancel: BaseException | None = None
        self._spare_pending = False
        #: set by the flusher after each batch, for the worker waiting on it (see _worker)
        self._handoff: anyio.Event | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        #: the phase's worker tasks, and what waits for the last of them to end
        self._crew: set[asyncio.Task[Any]] = set()
        self._crew_idle: asyncio.Future[None] | None = None
        self._crew_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._crew_done_callback = self._crew_done  # one bound method, not one a task
        self._phase_open = False
        self._spare_scopes: set[anyio.CancelScope] = set()
        self._done: anyio.Event | None = None
        self._wall_offset = 0.0
        self._context = _copy_context()
        self._thread_limiter = thread_limiter
        self._events = EventSink(self.run_id, listeners, run_events=not nested)

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

    # --- the run -------------------------------------------------------------------------

    def add_listener(self, listener: EventListener) -> None:
        """Subscribe to this run's events from now on."""
        self._events.add_listener(listener)

    def remove_listener(self, listener: EventListener) -> None:
        """Stop sending events to ``listener``."""
        self._events.remove_listener(listener)

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
        first = "reverting" if self._resumed_unwinding else "running"
        try:
            stored = await store.start_run(self.run_id, first, self._trigger)
        except Exception as exc:  # nothing ran: the run stays as stored, for a resume
            self._store_error = exc
            raise self._stopped_by_store() from exc
        if stored == "cancelling":
            self.cancel()
        try:
            value = await self._execute()
        except BaseException as exc:
            if self._store_error is not None or self._releasing:
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
        try:
            with anyio.CancelScope(shield=True):
                await journal.store.set_status(
                    self.run_id,
                    self.status.value,
                    result=result,
                    error=error,
                    ended_at=self.ended_at,
                )
        except Exception as exc:
            self._store_error = exc
            warn("aflow_run_end_not_recorded", run_id=self.run_id, error=repr(exc))

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
                    record.state in ("reverted", "revert_failed")
                    or (record.state == "failed" and self._stops_run(node))
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
            if state in ("succeeded", "reused", "ended") and (
                record.result is not None or node.error_scope is not None
            ):
                self._results[i] = None if record.result is None else read(node, record.result)
                states[i] = _SUCCEEDED
                if state == "ended":
                    ended.add(i)
            elif state == "failed":
                failed.append(i)
                self._restore_error(node, record.error or "failed (no error on record)", record)
            elif unwinding and state in ("reverted", "revert_failed"):
                if record.result is not None:
                    self._results[i] = read(node, record.result)
                if state == "reverted":
                    states[i] = _REVERTED
                    self._reverted.append(i)
                    if record.error is not None:  # it had failed before it was reverted
                        self._restore_error(node, record.error, record)
                        self._errbacks_due = True
                else:
                    states[i] = _REVERT_FAILED
                    self._revert_errors[i] = RecordedError(record.error or "its revert failed")
                    earlier = (failed_before or {}).get(node.key)
                    if earlier is not None:  # it had failed, then its revert failed too
                        self._restore_error(node, earlier, record)
                        self._errbacks_due = True
            elif unwinding and state in _CUT_OFF:
                states[i] = _CANCELLED
                self._restore_error(node, _CUT_SHORT, record, cancelled=True)
            else:
                continue  # it runs (again)
            if state != "reused":  # a fork's reused node ran in another run: never reverted
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
        self._ready = deque(
            node.index
            for node in nodes
            if node.error_scope is None
            and states[node.index] is _PENDING
            and self._remaining[node.index] == 0
        )
        if unwinding:
            self._resumed_unwinding = True
            self._trigger = trigger
            if trigger is not None and trigger.startswith("RunTimeout"):
                self._timed_out = True
            elif trigger is not None and trigger.startswith("RunCancelled"):
                self._cancel_requested = True

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
        self._errbacks_due = True
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

    async def _execute(self) -> Any:
        """The run itself (see :meth:`execute`).

        On failure the other running tasks are cancelled, completed work is
        unwound (reverts, reverse dependency order, shielded), error callbacks
        run, and the task's own exception is raised with notes naming the
        task, the run and what was reverted. Cancelling the caller cancels and
        unwinds the run, then re-raises ``CancelledError``.
        """
        if self.status is RunStatus.SUSPENDED:
            self._prepare_resume()
        elif self.status is not RunStatus.PENDING:
            raise RuntimeError(f"run {self.run_id} was already started")
        else:
            self.started_at = time.time()
            self._wall_offset = self.started_at - _perf_counter()
        self.status = RunStatus.RUNNING
        self._context = context = _copy_context()
        context.run(_set_attempt, 1)  # every node's context starts from this one
        context.run(_set_execution, self)
        events = self._events
        events.emit(RUN_STARTED)
        caller_cancel: BaseException | None = None
        if self._resumed_unwinding:  # taken up mid-compensation: go on with it
            trigger = self._trigger or ""
            if roots := self._root_failures():
                first = next(i for i, e in self._errors.items() if e is roots[0])
                self._failure = (first, roots[0])
            elif self._timed_out:
                pass  # the outcome says so (RunTimeout)
            elif trigger and not trigger.startswith("RunCancelled"):
                # a failure started it (a cancel asked later does not change that)
                self._failure = (-1, RecordedError(trigger))
            elif not self._cancel_requested:  # unwinding, with no cause on record
                why = "the run was being undone when its process stopped (no cause on record)"
                self._failure = (-1, RecordedError(why))
            self._halt = True
        try:
            timeout = self._timeout
            if self._wall_deadline is not None and timeout is not None:
                timeout = self._wall_deadline - wall_time(self._clock)
                if timeout <= 0:
                    self._timed_out = True
            if not (
                self._cancel_requested
                or self._resumed_unwinding
                or self._timed_out
                or self._releasing  # let go of before it began
            ):
                if timeout is None:
                    await self._run_phase()
                else:
                    with self._clock.cancel_scope(timeout) as deadline:
                        self._deadline = deadline
                        await self._run_phase()
                    if deadline.cancelled_caught:
                        self._timed_out = True
        except BaseException as exc:  # the caller was cancelled: unwind, then re-raise
            caller_cancel = exc
        self._end_phase()
        if self._store_error is not None and caller_cancel is None:
            raise self._stopped_by_store()
        if self._completed():
            # A cancel or a deadline that landed as the last node ended stopped nothing:
            # the run succeeded, and nothing is reverted (its status and its nodes agree).
            self._cancel_requested = False
            self._timed_out = False
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
            self._releasing = True  # an interrupt leaves a durable run resumable, not final
        if self._releasing:
            await self._let_go(caller_cancel)

        stopped = (
            self._failure is not None
            or caller_cancel is not None
            or self._timed_out
            or self._cancel_requested
        )
        if stopped and self._on_error == "revert":
            self._trigger = self._trigger_text(caller_cancel)
            try:
                await self._unwind()
            except BaseException as exc:  # a native cancel as the shielded group closed
                caller_cancel = caller_cancel or exc
            if self._releasing:  # let go of mid-compensation: a resume goes on with it
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
        if self._suspend_requested and not stopped and self._done_count < self._needed:
            self.status = RunStatus.SUSPENDED  # what is left runs on the next execute()
            events.emit(RUN_SUSPENDED)
            return None

        roots = self._root_failures()
        primary: BaseException | None
        if self._timed_out:
            primary = RunTimeout(self.run_id, self._timeout or 0.0)
        elif len(roots) == 1:
            primary = roots[0]
        elif roots:
            primary = GroupFailed(self.run_id, f"{len(roots)} tasks failed", roots)  # type: ignore[arg-type]
        elif self._failure is not None and self._failure[0] < 0:  # resumed: the stored trigger
            primary = self._failure[1]
        elif self._cancel_requested and self._done_count < self._needed:
            primary = RunCancelled(self.run_id)
        else:
            primary = None
        try:
            errback_errors = await self._run_errbacks() if self._errbacks_due else []
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
        for key, error in errback_errors:
            if error is not primary:
                primary.add_note(
                    f"aflow: error callback {key!r} also failed: {type(error).__name__}: {error}"
                )
        if self._revert_errors:
            unique = {id(e): e for e in self._revert_errors.values()}  # one compensation timeout
            errors = [primary, *unique.values()]
            self._close(RunStatus.FAILED)
            events.emit(RUN_FAILED, error=primary)
            raise CompensationFailed(
                self.run_id,
                f"{len(self._revert_errors)} revert(s) failed while unwinding",
                errors,  # type: ignore[arg-type]
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
        raise primary

    async def _let_go(self, interrupt: BaseException | None) -> None:
        """End a released run here: write what finished (shielded), undo nothing."""
        await self._write_leftover()
        self._close(RunStatus.SUSPENDED)
        self._events.emit(RUN_RELEASED)
        if interrupt is not None:
            raise interrupt
        raise RunReleased(self.run_id)

    def _trigger_text(self, caller_cancel: BaseException | None) -> str:
        if self._failure is not None:
            return describe(self._failure[1])
        if self._timed_out:
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

    def _store_failed(self, error: BaseException) -> None:
        """A checkpoint write failed, or the lease was lost: stop at once (running nodes
        are cancelled; nothing is reverted)."""
        if self._store_error is None:
            self._store_error = error
        self._halt = True
        self._stop_phase()

    async def _run_phase(self) -> None:
        """Run workers until the phase's ready work is done (or it is halted)."""
        self._halt = False
        self._spare_pending = False  # a spare cancelled before it started never said so
        self._crew_error = None
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # trio: the workers are tasks of a task group
            self._loop = None
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._scope = tg.cancel_scope
                await self._phase()
            self._tg = None
        else:
            # The phase's scope is entered before any node starts: a node's first step
            # runs inline, and a cancel scope it opens there must nest inside this one.
            with anyio.CancelScope() as scope:
                self._scope = scope
                await self._phase()
        if self._crew_error is not None:
            raise self._crew_error
        await self._write_leftover()  # a halted phase leaves transitions unwritten

    async def _phase(self) -> None:
        journal = self._journal
        self._phase_open = True
        if journal is not None:
            journal.reopen()
            # Never cancelled (only spares are): closing the journal ends it, batch whole.
            self._spawn(self._flusher(journal))
        try:
            await self._worker()
            if self._busy():
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
            self._phase_open = False
            self._done = None

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

    def _release_held(self, released: list[tuple[str, int]]) -> None:
        for kind, index in released:
            if kind == "ok":
                self._release(index)
            elif kind == "end":
                self._skip_dependents(index, None)
            else:
                self._unwound(index)

    def suspend(self) -> None:
        """Start no more nodes; the running ones finish, then :meth:`execute` returns.

        The run is then ``SUSPENDED`` and a later :meth:`execute` runs only
        what is left. A run already unwinding is not suspended.
        """
        if self._unwinding or self.closed:
            return
        self._suspend_requested = True
        self._halt = True
        self._check_idle()

    def _prepare_resume(self) -> None:
        """Ready again every pending node whose parents are all done."""
        self._suspend_requested = False
        self._halt = False
        self.stopping = False
        states = self._states
        remaining = self._remaining
        self._ready = deque(
            node.index
            for node in self._nodes
            if node.error_scope is None
            and states[node.index] is _PENDING
            and remaining[node.index] == 0
        )

    async def compensate(self) -> None:
        """Revert a run that succeeded (a retried flow undone by an outer failure).

        Same order and shielding as the unwinding after a failure; a revert
        that fails raises :class:`aflow.CompensationFailed`.
        """
        if self._revert_errors:  # its own unwinding failed: what it kept cannot be undone
            errors = list({id(e): e for e in self._revert_errors.values()}.values())
            raise CompensationFailed(
                self.run_id,
                f"{len(errors)} revert(s) failed earlier; what they kept stays",
                errors,  # type: ignore[arg-type]
            )
        if self.status is not RunStatus.SUCCEEDED:
            return  # a failed run was unwound already; a suspended one is not undone
        await self._unwind()
        if self._revert_errors:
            errors = list({id(e): e for e in self._revert_errors.values()}.values())
            self.status = RunStatus.FAILED
            raise CompensationFailed(
                self.run_id,
                f"{len(errors)} revert(s) failed while undoing a finished run",
                errors,  # type: ignore[arg-type]
            )
        if self._reverted:
            self.status = RunStatus.REVERTED

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
        child = Execution(
            graph,
            run_id=run_id or self.run_id,
            limits=self._limits,
            global_limits=self._global_limits,
            thread_limiter=self._thread_limiter,
            listeners=self._events.listeners,
            compensation_timeout=self._compensation_timeout,
            clock=self._clock,
            executor=self._executor,
            nested=True,
        )
        child._key_prefix = prefix
        child._parent = self  # (released with it: a nested run undoes nothing then)
        return child

    def _busy(self) -> bool:
        if self._halt:
            return False
        if self._unwinding:
            held = self._journal is not None and self._journal.holding
            return bool(self._running or self._ready or self._parked or held)
        return self._done_count < self._needed

    def _check_idle(self) -> None:
        if self._done is not None and not self._busy():
            self._done.set()

    def _end_phase(self) -> None:
        """The forward phase is over: nothing may start, slots go back."""
        if self._announced and self._journal is not None:
            states = self._states
            for i in self._announced:  # its start is on record, but it never started
                if states[i] is _PENDING:
                    self._journal.record(NodeRecord(self._nodes[i].key, "not_started", 1))
            self._announced.clear()
        self._tg = None
        self._halt = True
        self.stopping = True
        self._ready.clear()
        if self._parked:
            self._forget_waiters()
        self._parked = 0
        self._return_grants()

    def _forget_waiters(self) -> None:
        """Take this run's parked nodes off the limits' queues (a later phase starts afresh)."""
        for limit in (*self._global_limits, *self._limits.values()):
            if any(execution is self for execution, _ in limit.waiters):
                limit.waiters = deque(w for w in limit.waiters if w[0] is not self)

    def cancel(self) -> None:
        """Cancel the run from outside; it unwinds, then raises :class:`RunCancelled`.

        A run whose every node has ended (or that has closed) is past cancelling: the
        request changes nothing, as ``asyncio.Task.cancel()`` on a finished task.
        """
        if self.closed or (self._completed() and not self._unwinding):
            return
        self._cancel_requested = True
        if self._unwinding:
            return  # compensation is shielded: let it finish
        self._halt = True
        self._stop_phase()

    def release(self) -> None:
        """Let go of a durable run at a step boundary, undoing nothing (its runtime shuts
        down): no node starts any more, running ones are interrupted (they run again on
        resume, at-least-once), what finished is written, and :meth:`execute` raises
        :class:`aflow.errors.RunReleased` (or what interrupted its task), the run
        ``SUSPENDED`` here and resumable in its store. A run without a store, or one
        whose every node has ended, is not released."""
        if self.closed or self._journal is None or self._completed():
            return
        self._releasing = True
        self._halt = True
        self._stop_phase()

    def keep_deadline(self, wall: float) -> None:
        """Keep the deadline a resumed run had (wall seconds): it gets what is left of
        it as it starts; one that passed while no process ran it times out at once,
        and unwinds what ran before (issue 14)."""
        self._wall_deadline = wall

    def _being_released(self) -> bool:
        """Its runtime is letting go of this run: released, or its task cancelled from
        outside (see release_on_interrupt) with no cancel, failure or deadline of its own."""
        if self._releasing:
            return True
        return (
            self.release_on_interrupt
            and not self._cancel_requested
            and self._failure is None
            and not (self._deadline is not None and self._deadline.cancel_called)
        )

    def _completed(self) -> bool:
        """Every node the run needs has ended, and no failure stopped it.

        This is the run's commit point (issue 14): from here on a cancel or a deadline
        stops nothing, so it must not undo anything either; the run succeeds.
        """
        return (
            self._done_count >= self._needed
            and self._failure is None
            and not self._resumed_unwinding
        )

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

    # --- grants and limits -----------------------------------------------------------------

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
        self._parked -= 1
        self._ready.appendleft(index)
        if wake:
            self._ensure_worker()

    def _ensure_worker(self) -> None:
        if not self._spare_pending and not self._halt and self._phase_open:
            self._spare_pending = True
            self._spawn(self._spare())

    # --- the crew: the phase's worker tasks --------------------------------------------------

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
            self._context.run(self._tg.start_soon, _await, coro)  # type: ignore[union-attr]
            return
        task = loop.create_task(coro, context=self._context.copy())
        self._crew.add(task)
        task.add_done_callback(self._crew_done_callback)

    def _crew_done(self, task: asyncio.Task[Any]) -> None:
        self._crew.discard(task)
        if task.cancelled():
            if not self._halt and self._crew_error is None:
                # Nothing stopped the phase: a node raised CancelledError of its own
                # accord. Its worker ended with it; the run must not wait for it.
                keys = [self._nodes[i].key for i, f in self._failures.items() if f.cancelled]
                self._crew_error = RuntimeError(
                    f"run {self.run_id}: task {', '.join(map(repr, keys)) or '?'} raised "
                    "CancelledError without being cancelled"
                )
                self._halt = True
                self._stop_phase()
        else:
            error = task.exception()
            if error is not None and self._crew_error is None:
                # Nodes' own errors are handled in the task: this is the scheduler's own,
                # and it fails the phase, as a task group would.
                self._crew_error = error
                self._halt = True
                self._stop_phase()
        idle = self._crew_idle
        if not self._crew and idle is not None and not idle.done():
            idle.set_result(None)

    def _stop_phase(self) -> None:
        """Cancel what runs in this phase: what the host awaits, and the crew's workers.

        Through their anyio scopes, never ``task.cancel()``: a shield inside a node (its
        cleanup, a thread being waited for) must hold, as in a task group.
        """
        if self._scope is not None:
            self._scope.cancel()
        for scope in self._spare_scopes:
            scope.cancel()

    async def _spare(self) -> None:
        """A spare worker of the crew, in a cancel scope of its own (see _stop_phase)."""
        with anyio.CancelScope() as scope:
            if self._halt:
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
            self._halt = True
            self._stop_phase()
        loop = self._loop
        with anyio.CancelScope(shield=True):
            while self._crew and loop is not None:
                self._crew_idle = loop.create_future()
                try:
                    await self._crew_idle
                except BaseException as exc:  # asyncio's own cancel: kept for later
                    deferred = deferred or exc
                    self._halt = True
                    self._stop_phase()
        self._crew_idle = None
        if deferred is not None:
            raise deferred

    @types.coroutine
    def _finish(
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
        except Exception as exc:
            self._node_failed(node, self._failure_of(node, exc, 1), 1)
            return
        except BaseException as exc:  # cancellation: record it, never swallow it
            if _no_error(exc):
                self._node_failed(node, self._failure_of(node, exc, 1), 1)
                return
            self._cancelled(node, exc)
            raise
        finally:
            self._running -= 1
            if limits:
                release(limits, self)
        if _unawaited(value):
            self._node_failed(node, self._refused(node, value), 1)
            return
        if self._events.node_events:  # someone subscribed while it ran
            self._events.emit(TASK_SUCCEEDED, node.key, node.name, 1, _perf_counter() - start)
        if self._journal is not None:
            self._checkpoint_success(node, value, 1, start)
        else:
            self._succeed(node.index, value)

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
        inline_ok = not self._unwinding
        unawaited = _UNAWAITED  # (what no node may return; a frozenset: one lookup)
        any_limits = self._any_limits
        streak = 0
        # The clock is slow to read (150 ns on some VMs, a fifth of a node): a node that
        # ends inline is given the next reading as its finish (its start until then).
        unfinished = -1
        while True:
            while ready and not self._halt:
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
                        if limits:
                            release(limits, self)
                        if self._running >= self._peak:  # it ran beside those running
                            self._peak = self._running + 1
                        value = stop.value
                        if type(value) in unawaited:
                            self._node_failed(node, self._refused(node, value), 1)
                        elif journal is not None:  # (no start record: nothing ran between)
                            self._checkpoint_success(node, value, 1, start)
                        else:
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
                            if self._done_count == self._needed and self._done is not None:
                                self._done.set()
                    except BaseException as exc:  # (handled, and re-raised if it is a cancel)
                        if limits:
                            release(limits, self)
                        if not isinstance(exc, Exception) and not _no_error(exc):
                            self._cancelled(node, exc)
                            raise
                        self._node_failed(node, self._failure_of(node, exc, 1), 1)
                    else:
                        if journal is not None:
                            journal.started(node.key, 1)
                        self._running += 1
                        if self._running > self._peak:
                            self._peak = self._running
                        if ready and not self._spare_pending:  # it blocks: the others go on
                            self._spare_pending = True
                            self._spawn(self._spare())
                        if unfinished >= 0:
                            finished[unfinished] = _perf_counter()
                            unfinished = -1
                        await self._finish(node, limits, coro, ctx, yielded, start)
                    streak += 1
                    if streak == _YIELD_EVERY:
                        streak = 0
                        if unfinished >= 0:
                            finished[unfinished] = _perf_counter()
                            unfinished = -1
                        await anyio.lowlevel.checkpoint()
                    continue
                if unfinished >= 0:
                    finished[unfinished] = _perf_counter()
                    unfinished = -1
                if self._unwinding:
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
                if self._unwinding:
                    await self._revert_node(node, limits)
                else:
                    await self._run_node(node, limits)
                streak += 1
                if streak == _YIELD_EVERY:
                    streak = 0
                    await anyio.lowlevel.checkpoint()
            if unfinished >= 0:
                finished[unfinished] = _perf_counter()
                unfinished = -1
            if (
                journal is None
                or self._halt
                or self._unwinding
                or self._handoff is not None
                or not journal.holding
            ):
                break
            # What comes next waits for a checkpoint (a chain's next step): wait for the
            # batch here rather than end, since a new worker for it would cost a task.
            self._handoff = handoff = anyio.Event()
            try:
                await handoff.wait()
            finally:
                self._handoff = None
        if self._unwinding:
            self._check_idle()  # the last nodes may have been joins, unwound without a revert

    def _args_of(self, node: Node) -> tuple[Any, ...]:
        source = node.input
        if source >= 0:
            return (self._results[source], *node.args)
        if source == INPUT_ERROR:
            return (self._errors_for(node), *node.args)
        return node.args

    def _kwargs_of(self, node: Node) -> Mapping[str, Any]:
        """The node's keyword arguments, with the values it takes by name from other nodes."""
        if not node.bindings:
            return node.kwargs
        kwargs = dict(node.kwargs)
        results = self._results
        after_all = node.after_all
        for param, source, selector in node.bindings:
            if after_all and self._states[source] is not _SUCCEEDED:
                continue  # a provider that was skipped (or failed and was continued past)
            value = results[source]
            if selector is not None:
                soft = type(selector) is OptionalKey
                try:
                    value = value[selector.key if soft else selector]
                except (KeyError, IndexError, TypeError):
                    if soft or after_all:
                        continue  # an optional input: the parameter keeps its default
                    raise MissingInputError(
                        node.key,
                        [param],
                        f"{self._nodes[source].key!r} gave no value {selector!r}",
                    ) from None
            kwargs[param] = value
        return kwargs

    def _in_thread(self, call: Callable[[], Any]) -> Any:
        if self._executor is not None:
            return run_in_executor(call, self._executor)
        return run_in_thread(call, self._thread_limiter)

    def _make_call(
        self, node: Node, args: tuple[Any, ...], kwargs: Mapping[str, Any], attempt: int
    ) -> Any:
        task = node.task
        assert task is not None
        if node.kind is _TASK or node.kind is _SUBGRAPH:
            if task.is_async:
                return _InContext(task.fn(*args, **kwargs), self._context, node.index, attempt)  # type: ignore[arg-type]
            call = functools.partial(task.fn, *args, **kwargs)
        else:
            star = node.kind is not _MAP
            done = None
            if task.reverter is not None:
                done = self._map_calls.setdefault(node.index, [])
            if task.is_async:
                coro = _map_async(task.fn, args[0], star, kwargs, node, self.run_id, done)
                return _InContext(coro, self._context, node.index, attempt)
            call = functools.partial(
                _map_sync, task.fn, args[0], star, kwargs, node, self.run_id, done
            )
        return self._in_thread(functools.partial(_in_thread_as, self, node.index, attempt, call))

    async def _attempts_of(
        self,
        node: Node,
        options: NodeOptions,
        is_async: bool,
        make_call: Callable[[int], Any],
        started: str,
        retried: str,
        attempts: dict[int, int] | None = None,
    ) -> tuple[Any, int]:
        """Call until success or until the retry policy gives up; return (value, attempts).

        The final exception is re-raised with ``attempts`` (default: the node
        attempts) recording how many attempts were made. Cancellation is never
        retried.
        """
        index = node.index
        sink = self._events
        clock = self._clock
        name = node.name
        if attempts is None:
            attempts = self._attempts
        attempt = 1
        timeout = options.timeout
        give_up_at = clock.now() + options.deadline if options.deadline is not None else math.inf
        while True:
            if sink.node_events:
                sink.emit(started, node.key, name, attempt)
            try:
                limit = timeout
                if give_up_at != math.inf:
                    left = give_up_at - clock.now()
                    if left <= 0:
                        raise TaskTimeout(self.run_id, node.key, attempt, options.deadline or 0.0)
                    limit = left if limit is None else min(limit, left)
                if limit is None:
                    if INJECTIONS:
                        await self._inject(node, attempt)
                    value = await make_call(attempt)
                elif is_async:
                    with clock.cancel_scope(limit) as scope:
                        if INJECTIONS:
                            await self._inject(node, attempt)
                        value = await make_call(attempt)
                    if scope.cancelled_caught:
                        raise TaskTimeout(self.run_id, node.key, attempt, limit)
                else:
                    if INJECTIONS:  # an injected hang is interruptible, unlike the thread
                        with clock.cancel_scope(limit) as scope:
                            await self._inject(node, attempt)
                        if scope.cancelled_caught:
                            raise TaskTimeout(self.run_id, node.key, attempt, limit)
                    # A thread cannot be interrupted: at the deadline its cancel scope is
                    # cancelled (anyio.from_thread.check_cancelled() in the thread sees it),
                    # the thread is waited for, and a late result counts as a timeout.
                    with clock.cancel_scope(limit) as scope:
                        value = await make_call(attempt)
                    if scope.cancel_called:
                        raise TaskTimeout(self.run_id, node.key, attempt, limit)
                if attempt > 1:
                    attempts[index] = attempt
                return value, attempt
            except Exception as exc:
                halted = self._stopping_retries() or isinstance(exc, _Escaped)
                if attempt <= options.retries and options.should_retry(exc) and not halted:
                    wait = options.backoff.delay(attempt) if options.backoff is not None else 0.0
                    if clock.now() + wait < give_up_at:
                        if sink.node_events:
                            sink.emit(retried, node.key, name, attempt, error=exc)
                        if (
                            self._journal is not None
                            and not self._unwinding
                            and node.error_scope is None
                        ):
                            self._journal.record(
                                NodeRecord(node.key, "retrying", attempt, None, describe(exc))
                            )
                        if wait > 0:
                            previous = self._states[index]
                            self._states[index] = _RETRYING
                            await clock.sleep(wait)
                            self._states[index] = previous
                        attempt += 1
                        continue
                attempts[index] = attempt
                raise

    def _stopping_retries(self) -> bool:
        """A failure or a cancel stops retries; a suspend lets running nodes finish theirs."""
        if self._unwinding or not self._halt:
            return False
        return not self._suspend_requested or self._failure is not None or self._cancel_requested

    async def _inject(self, node: Node, attempt: int) -> None:
        plans = INJECTIONS.get(node.key) or INJECTIONS.get(node.name) or ()
        plan: Injection | None = next(
            (p for p in plans if p.attempt is None or p.attempt == attempt), None
        )
        if plan is None or self._unwinding:
            return
        plan.hits += 1
        if plan.action == "raise":
            assert plan.error is not None
            raise plan.error
        if plan.action == "cancel":
            self.cancel()
        await anyio.sleep_forever()

    async def _run_node(self, node: Node, limits: tuple[Limit, ...]) -> None:
        """Run one task node to its end (retries, timeouts, checkpoints, events)."""
        index = node.index
        task = node.task
        assert task is not None
        args = self._args_of(node)
        if node.bindings:
            try:
                kwargs = self._kwargs_of(node)
            except MissingInputError as exc:  # it never ran: nothing to revert
                if limits:
                    release(limits, self)
                self._node_failed(node, exc, 1)
                return
        else:
            kwargs = node.kwargs
        journal = self._journal
        if journal is not None and node.error_scope is None:
            if index in self._announced:
                pass  # its start was committed with its parent's success
            elif task.reverter is not None:  # write-ahead: a dead run's cancel must undo it
                self._announced.add(index)
                try:
                    await journal.announce(node.key)
                except BaseException:
                    if limits:
                        release(limits, self)
                    raise
                if self._halt:  # the run stopped meanwhile: it does not start (see _end_phase)
                    if limits:
                        release(limits, self)
                    return
            else:
                journal.started(node.key, 1)
        self._states[index] = _RUNNING
        self._running += 1
        if self._running > self._peak:
            self._peak = self._running
        start = _perf_counter()
        self._started[index] = start
        sink = self._events
        try:
            if (
                node.options.single_shot
                and node.kind is _TASK
                and task.is_async
                and not sink.node_events
                and not INJECTIONS
            ):  # the common case, without the retry machinery
                attempt = 1
                value = await _InContext(task.fn(*args, **kwargs), self._context, index)  # type: ignore[arg-type]
            else:
                value, attempt = await self._attempts_of(
                    node,
                    node.options,
                    task.is_async,
                    lambda attempt: self._make_call(node, args, kwargs, attempt),
                    TASK_STARTED,
                    TASK_RETRIED,
                )
        except Exception as exc:
            attempt = self._attempts.get(index, 1)
            self._node_failed(node, self._failure_of(node, exc, attempt), attempt)
            return
        except BaseException as exc:  # cancellation: record it, never swallow it
            if _no_error(exc):
                attempt = self._attempts.get(index, 1)
                self._node_failed(node, self._failure_of(node, exc, attempt), attempt)
                return
            self._cancelled(node, exc)
            raise
        finally:
            self._running -= 1
            if limits:
                release(limits, self)
        if _unawaited(value) or (
            (node.kind is _MAP or node.kind is _STARMAP) and any(map(_unawaited, value))
        ):
            self._node_failed(node, self._refused(node, value), attempt)
            return
        if sink.node_events:
            sink.emit(TASK_SUCCEEDED, node.key, task.name, attempt, _perf_counter() - start)
        if node.kind is _SUBGRAPH and type(value) is EndBranch:  # what follows is SKIPPED
            if journal is not None:  # on record as "ended": a resume skips what follows too
                try:
                    text = journal.encode(node.key, value.value)
                except SerializationError as exc:
                    self._node_failed(node, exc, attempt)
                    return
                times = (self._wall(start), time.time())
                journal.record(
                    NodeRecord(node.key, "ended", attempt, text, None, *times), ("end", index)
                )
                self._succeed(index, value.value, children=False)
                return
            self._succeed(index, value.value, children=False)
            self._skip_dependents(index, None)
            self._check_idle()
            return
        if journal is not None:
            if node.error_scope is None:
                self._checkpoint_success(node, value, attempt, start)
                return
            # an error callback's value is nobody's input: noted as done, not kept
            times = (self._wall(start), time.time())
            journal.record(NodeRecord(node.key, "succeeded", attempt, None, None, *times))
        self._succeed(index, value)

    def _cancelled(self, node: Node, exc: BaseException) -> None:
        index = node.index
        self._states[index] = _CANCELLED
        self._finished[index] = _perf_counter()
        self._errors[index] = exc
        attempt = self._attempts.get(index, 1)
        self._failures[index] = Failure.capture(node.key, exc, attempt, cancelled=True)
        journal = self._journal
        if journal is not None and self._store_error is None and node.error_scope is None:
            # Every node of a finished run ends in a final state on record (issue 14); a
            # resume treats a cancelled node as one that was running (see _CUT_OFF).
            journal.record(
                NodeRecord(
                    node.key,
                    "cancelled",
                    attempt,
                    None,
                    self._why_cut_short(exc),
                    None,
                    time.time(),
                )
            )
        if self._events.node_events:
            self._events.emit(TASK_CANCELLED, node.key, node.name, attempt)

    def _refused(self, node: Node, value: Any) -> ResultError:
        """A task returned a coroutine or a future (or a map a list holding some): a
        missing ``await``. Coroutines are closed: no "never awaited" warning follows."""
        found = [value] if _unawaited(value) else [v for v in value if _unawaited(v)]
        for item in found:
            if type(item) is _COROUTINE:
                item.close()
        if found[0] is value:
            what = _awaitable_name(value)
        else:
            what = "coroutines" if all(type(v) is _COROUTINE for v in found) else "awaitables"
        return ResultError(node.key, f"returned {what} instead of a value: a missing 'await'?")

    def _failure_of(self, node: Node, exc: BaseException, attempt: int) -> Exception:
        """The error a node failed with: its own, or :class:`aflow.errors.TaskFailed`
        for a ``BaseException`` that is no error (the original is its ``__cause__``)."""
        if isinstance(exc, _Escaped):
            exc = exc.__cause__ or exc
        if isinstance(exc, Exception):
            return exc
        failed = TaskFailed(self.run_id, node.key, attempt, repr(exc))
        failed.__cause__ = exc
        return failed

    def _why_cut_short(self, exc: BaseException) -> str:
        """Why a running node was cancelled, as its record says."""
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return f"interrupted: {exc!r} was raised while it ran"
        if self._being_released():
            return _RELEASED
        if self._failure is not None:
            failed = self._nodes[self._failure[0]].key if self._failure[0] >= 0 else "a step"
            return f"cancelled mid-way: task {failed!r} failed"
        if self._timed_out or (self._deadline is not None and self._deadline.cancel_called):
            return "cancelled mid-way: the run ran out of time"
        if self._cancel_requested:
            return "cancelled mid-way: the run was cancelled"
        return "cancelled mid-way: the task driving the run was cancelled"

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
            NodeRecord(node.key, "succeeded", attempt, text, None, started, now),
            ("ok", node.index),
        )
        # A child with a revert that this success makes ready writes its start in the
        # same batch, so a saga's chain pays one commit per step, not two.
        remaining = self._remaining
        for child in self._children[node.index]:
            task = self._nodes[child].task
            if (
                not self._halt
                and remaining[child] == 1
                and task is not None
                and task.reverter is not None
                and self._states[child] is _PENDING
                and self._nodes[child].error_scope is None
            ):
                journal.started(self._nodes[child].key, 1)
                self._announced.add(child)
        self._succeed(node.index, value, children=False)

    def _join(self, node: Node) -> None:
        results = self._results
        sources = node.args[0] if node.args else node.parents
        if node.when is not None:
            self._started[node.index] = _perf_counter()
            try:
                # in the run's context, as a task would be (contextvars, the current run)
                go = self._context.run(node.when, {self._nodes[p].key: results[p] for p in sources})
            except Exception as exc:
                self._node_failed(node, exc, 1)
                return
            if not go:
                self._skip(node.index)
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
            if start <= i < end and i in self._failures and not self._failures[i].cancelled
        ]
        error = _below_threshold(self.run_id, node, ok, len(sources), "members", failed)
        self._started[node.index] = _perf_counter()
        self._node_failed(node, error, 1)

    def _succeed(
        self, index: int, value: Any, state: NodeState = _SUCCEEDED, *, children: bool = True
    ) -> None:
        self._results[index] = value
        self._states[index] = state
        self._finished[index] = _perf_counter()
        if children:
            self._release(index)
        self._done_count += 1
        if self._done_count == self._needed and self._done is not None:
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
                NodeRecord(node.key, "failed", attempt, None, describe(error), None, time.time())
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
        self._errbacks_due = True
        tolerant_join = self._tolerated_by.get(index)
        if tolerant_join is not None or self._on_error == "continue":
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
            self._halt = True
            self._stop_phase()

    def _skip(self, index: int) -> None:
        """A guard said no: this node and everything downstream of it is SKIPPED."""
        self._states[index] = _SKIPPED
        self._finished[index] = _perf_counter()
        self._done_count += 1
        self._skip_dependents(index, None)
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

    # --- unwinding -------------------------------------------------------------------------

    async def _unwind(self) -> None:
        """Revert what ran, consumers first; shielded, with its own deadline."""
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
            return
        self._unwinding = True
        self.stopping = False  # reverts take limit slots like any node
        self._remaining = [len(c) for c in self._children]
        self._ready = deque(i for i, left in enumerate(self._remaining) if left == 0)
        timed_out = False
        finished = anyio.Event()

        async def compensate() -> None:
            nonlocal timed_out
            if self._journal is not None:
                try:
                    await self._journal.store.set_status(
                        self.run_id, "reverting", error=self._trigger
                    )
                except Exception as exc:
                    self._store_failed(exc)
                    finished.set()
                    return
            try:
                with self._clock.cancel_scope(self._compensation_timeout) as deadline:
                    await self._run_phase()
                timed_out = deadline.cancelled_caught
            finally:
                finished.set()

        # The shield stops anyio cancellation (cancel scopes, task groups). A native
        # ``task.cancel()`` on asyncio still reaches the waiting task: that is why the
        # reverts run in a child task and this one only waits, keeping the cancel for later.
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
        self._unwinding = False
        self._end_phase()
        if timed_out:
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
                                self._nodes[i].key, "revert_failed", 1, None, describe(timeout)
                            )
                        )
            await self._write_leftover()

    def _unwound(self, index: int) -> None:
        remaining = self._remaining
        ready = self._ready
        for parent in self._nodes[index].parents:
            left = remaining[parent] - 1
            remaining[parent] = left
            if left == 0:
                ready.append(parent)

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

        def make_call(attempt: int) -> Any:
            call: Callable[[], Any]
            if node.kind is _MAP or node.kind is _STARMAP:  # one revert per call made
                kwargs.pop("result", None)
                star = node.kind is not _MAP
                done = self._map_calls.get(index, [])
                if reverter.is_async:
                    coro = _revert_items_async(
                        reverter.fn, done, star, kwargs, reverter.takes_result, node.key
                    )
                    return _InContext(coro, self._context, ~index, attempt)
                call = functools.partial(
                    _revert_items_sync,
                    reverter.fn,
                    done,
                    star,
                    kwargs,
                    reverter.takes_result,
                    node.key,
                )
            elif reverter.is_async:
                return _InContext(reverter.fn(*args, **kwargs), self._context, ~index, attempt)
            else:
                call = functools.partial(reverter.fn, *args, **kwargs)
            return self._in_thread(functools.partial(_in_thread_as, self, ~index, attempt, call))

        self._states[index] = _REVERTING
        self._running += 1
        start = _perf_counter()
        sink = self._events
        try:
            returned, attempt = await self._attempts_of(
                node,
                reverter.options,
                reverter.is_async,
                make_call,
                REVERT_STARTED,
                REVERT_RETRIED,
                self._revert_attempts,
            )
            _refuse_unawaited(returned, node.key)
        except BaseException as caught:
            if not isinstance(caught, Exception) and not _no_error(caught):
                raise  # a cancellation (of a crashed compensation) or an interrupt
            exc = self._failure_of(node, caught, self._revert_attempts.get(index, 1))
            self._states[index] = _REVERT_FAILED
            self._revert_errors[index] = exc
            if self._journal is not None:
                tries = self._revert_attempts.get(index, 1)
                text = describe(exc)
                record = NodeRecord(node.key, "revert_failed", tries, None, text, None, time.time())
                self._journal.record(record)
            exc.add_note(f"aflow: the revert of {node.key!r} failed in run {self.run_id}")
            if sink.node_events:
                sink.emit(REVERT_FAILED, node.key, node.name, error=exc)
            # what precedes this node in its branch stays as it is
        else:
            self._states[index] = _REVERTED
            self._reverted.append(index)
            if sink.node_events:
                sink.emit(REVERT_SUCCEEDED, node.key, node.name, attempt, _perf_counter() - start)
            if self._journal is not None:  # its parents' reverts start once this is on record
                failure = self._failures.get(index)
                had = None  # a failure it had is kept on record: a resume needs it
                if failure is not None and not failure.cancelled:
                    had = describe(self._errors[index])
                self._journal.record(
                    NodeRecord(node.key, "reverted", attempt, None, had, None, time.time()),
                    ("reverted", index),
                )
            else:
                self._unwound(index)  # before the idle check: the parents are ready now
        finally:
            self._running -= 1
            if limits:
                release(limits, self)
            self._check_idle()

    # --- error callbacks -----------------------------------------------------------------

    def _errors_for(self, node: Node) -> BaseException:
        assert node.error_scope is not None
        start, end = node.error_scope
        for index, error in self._errors.items():  # insertion order: the first failure first
            failure = self._failures.get(index)
            if start <= index < end and failure is not None and not failure.cancelled:
                return error
        raise AssertionError("error callback run without a failure in its scope")

    async def _run_errbacks(self) -> list[tuple[str, BaseException]]:
        """Run the error callbacks whose scope saw a failure; return those that failed."""
        failed = [
            i
            for i, f in self._failures.items()
            if not f.cancelled
            and self._nodes[i].error_scope is None
            and not self._nodes[i].options.continue_on_failed
        ]
        tolerated_by = self._tolerated_by

        def fails(scope: tuple[int, int], i: int) -> bool:
            # A failure a threshold inside the scope tolerated did not fail the scope.
            start, end = scope
            join = tolerated_by.get(i)
            return start <= i < end and not (join is not None and start <= join < end)

        states = self._states
        due = [  # one already done before a resume is not run again
            node
            for node in self._nodes
            if node.error_scope is not None
            and states[node.index] is _PENDING
            and any(fails(node.error_scope, i) for i in failed)
        ]
        if not due:
            return []
        self._halt = False
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
        assert node.error_scope is not None
        start, end = node.error_scope
        args = self._args_of(node)
        kwargs = dict(node.kwargs)
        accepted = errback_extras(task)
        if "failures" in accepted:
            kwargs["failures"] = {
                self._nodes[i].key: f
                for i, f in self._failures.items()
                if start <= i < end and not f.cancelled
            }
        if "results" in accepted:
            kwargs["results"] = {
                self._nodes[i].key: self._results[i]
                for i in range(start, end)
                if self._nodes[i].kind is not _JOIN
                and i not in self._failures
                and self._states[i] in (_SUCCEEDED, _REVERTED, _REVERT_FAILED)
            }
        await self._run_node(node._replace(args=args, kwargs=kwargs, input=-1), ())

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


#: The code that starts a node inline and drives it on: aflow.current_step() walks the
#: stack to them to find the step of a node that has none in its context.
DRIVERS = frozenset({Execution._worker.__code__, Execution._finish.__code__})
