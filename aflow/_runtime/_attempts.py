"""The attempt runner: how a node's body is called, retried, timed out and ended."""

from __future__ import annotations

import contextvars
import functools
import math
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, TypeVar, final

import anyio
import anyio.abc
import anyio.lowlevel

from .._events import (
    REVERT_STARTED,
    TASK_CANCELLED,
    TASK_RETRIED,
    TASK_STARTED,
    TASK_SUCCEEDED,
    RunObserver,
)
from .._exceptions import (
    MissingInputError,
    ResultError,
    SerializationError,
    TaskFailed,
    TaskTimeout,
)
from .._failure import Failure
from .._graph import INPUT_ERROR, EndBranch, Node, OptionalKey
from .._options import NodeOptions
from ..stores._base import NodeRecord, RecordState
from ._bodies import (
    COROUTINE,
    InContext,
    _Escaped,
    awaitable_name,
    drive,
    in_thread_as,
    is_unawaited,
    map_async,
    map_sync,
    no_error,
    remote_call,
)
from ._clock import Clock
from ._current import INJECTIONS, Injection
from ._journal import describe
from ._limits import Limit, release
from ._run_state import (
    _CANCELLED,
    _MAP,
    _PENDING,
    _RETRYING,
    _RUNNING,
    _STARMAP,
    _SUBGRAPH,
    _SUCCEEDED,
    _TASK,
    _UNWINDING,
    RunState,
    StopReason,
)
from ._threads import run_in_executor, run_in_thread

_perf_counter = time.perf_counter
# Globals: a durable run's attempts read them (an Enum attribute is slower).
_RECORD_RETRYING = RecordState.RETRYING
_RECORD_ENDED = RecordState.ENDED
_RECORD_SUCCEEDED = RecordState.SUCCEEDED
_RECORD_CANCELLED = RecordState.CANCELLED

T = TypeVar("T")


class AttemptHooks:
    """What an attempt loop tells the work it retries (a node, a revert, a slice), and
    asks it. The defaults do nothing: override what the work needs."""

    __slots__ = ()

    @property
    def injecting(self) -> bool:
        """Whether :meth:`inject` runs before each attempt (planned failures, for tests)."""
        return False

    def started(self, attempt: int) -> None:
        """Attempt ``attempt`` (1 for the first) starts now."""

    def retrying(self, attempt: int, error: Exception, wait: float) -> None:
        """Attempt ``attempt`` failed with ``error``; the next starts after ``wait`` s."""

    def waiting(self, waiting: bool) -> None:
        """The backoff wait between two attempts begins (``True``) or ends (``False``)."""

    def stop_retrying(self, error: Exception) -> bool:
        """``True`` when no further attempt may start (the run is stopping)."""
        return False

    def ended(self, attempt: int, failed: bool) -> None:
        """The last attempt made was ``attempt``: it succeeded, or it ``failed`` and
        nothing retries it."""

    async def inject(self, attempt: int) -> None:
        """Before attempt ``attempt``: act out a planned failure, if any."""


_NO_HOOKS = AttemptHooks()


async def run_attempts(
    call: Callable[[int], Awaitable[T]],
    options: NodeOptions,
    clock: Clock,
    timed_out: Callable[[int, float], Exception],
    *,
    is_async: bool = True,
    hooks: AttemptHooks = _NO_HOOKS,
) -> tuple[T, int]:
    """Call ``call(attempt)`` until it succeeds or ``options`` give up; return
    ``(value, attempts made)``. The one retry mechanism of aflow.

    ``options`` give the retries, the backoff, which errors are retried
    (``retry_on``), the timeout of each attempt and the deadline of them all, all
    measured on ``clock`` (so a test's fake clock drives them). An attempt cut off
    by its timeout or the deadline raises ``timed_out(attempt, seconds)``. The last
    error is raised as it is. A cancellation (or any ``BaseException`` that is not
    an ``Exception``) is never retried.

    A sync body's ``call`` is a thread: it cannot be interrupted, so at its
    timeout the thread's cancel scope is cancelled (``anyio.from_thread.
    check_cancelled()`` in the thread sees it), the thread is waited for, and a
    late result counts as a timeout.
    """
    attempt = 1
    timeout = options.timeout
    give_up_at = clock.now() + options.deadline if options.deadline is not None else math.inf
    while True:
        hooks.started(attempt)
        try:
            limit = timeout
            if give_up_at != math.inf:
                left = give_up_at - clock.now()
                if left <= 0:
                    raise timed_out(attempt, options.deadline or 0.0)
                limit = left if limit is None else min(limit, left)
            if limit is None:
                if hooks.injecting:
                    await hooks.inject(attempt)
                value = await call(attempt)
            elif is_async:
                with clock.cancel_scope(limit) as scope:
                    if hooks.injecting:
                        await hooks.inject(attempt)
                    value = await call(attempt)
                if scope.cancelled_caught:
                    raise timed_out(attempt, limit)
            else:
                if hooks.injecting:  # an injected hang is interruptible, unlike the thread
                    with clock.cancel_scope(limit) as scope:
                        await hooks.inject(attempt)
                    if scope.cancelled_caught:
                        raise timed_out(attempt, limit)
                with clock.cancel_scope(limit) as scope:
                    value = await call(attempt)
                if scope.cancel_called:
                    raise timed_out(attempt, limit)
            hooks.ended(attempt, False)
            return value, attempt
        except Exception as exc:
            if (
                attempt <= options.retries
                and options.should_retry(exc)
                and not hooks.stop_retrying(exc)
            ):
                wait = options.backoff.delay(attempt) if options.backoff is not None else 0.0
                if clock.now() + wait < give_up_at:
                    hooks.retrying(attempt, exc, wait)
                    if wait > 0:
                        hooks.waiting(True)
                        await clock.sleep(wait)
                        hooks.waiting(False)
                    attempt += 1
                    continue
            hooks.ended(attempt, True)
            raise


class Attempts(RunState):
    """Run one node to its end: arguments, attempts, retries, timeouts, how it ended."""

    __slots__ = ()

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
        remote = task.executor if task.executor_named else self._remote
        if remote is not None and node.kind is not _SUBGRAPH:
            if node.kind is _TASK:  # (in the step's context: an in-process executor's
                # body asking aflow.current_step() finds its step)
                coro = remote_call(self, remote, task, node.index, attempt, args, kwargs)
                return InContext(coro, self._context, node.index, attempt)
            # a map's calls, each in the executor (as many at once as the map makes)
            one = functools.partial(remote_call, self, remote, task, node.index, attempt)
            star = node.kind is not _MAP
            done = None
            if task.reverter is not None:
                done = self._map_calls.setdefault(node.index, [])
            coro = map_async(
                lambda *a, **k: one(a, k), args[0], star, kwargs, node, self.run_id, done
            )
            return InContext(coro, self._context, node.index, attempt)
        if node.kind is _TASK or node.kind is _SUBGRAPH:
            if task.is_async:
                return InContext(task.fn(*args, **kwargs), self._context, node.index, attempt)  # type: ignore[arg-type]
            call = functools.partial(task.fn, *args, **kwargs)
        else:
            star = node.kind is not _MAP
            done = None
            if task.reverter is not None:
                done = self._map_calls.setdefault(node.index, [])
            if task.is_async:
                coro = map_async(task.fn, args[0], star, kwargs, node, self.run_id, done)
                return InContext(coro, self._context, node.index, attempt)
            call = functools.partial(
                map_sync, task.fn, args[0], star, kwargs, node, self.run_id, done
            )
        return self._in_thread(functools.partial(in_thread_as, self, node.index, attempt, call))

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
        hooks = _NodeAttempts(
            self, node, started, retried, self._attempts if attempts is None else attempts
        )
        observers = self._events.observers
        if observers:  # (aflow.otel) each attempt's body runs with its span current
            thread = "thread" if self._executor is None else type(self._executor).__name__
            make_call = _Observed(make_call, observers, node.key, started is REVERT_STARTED, thread)
        return await run_attempts(
            make_call, options, self._clock, hooks.timed_out, is_async=is_async, hooks=hooks
        )

    def _stopping_retries(self) -> bool:
        """A failure or a cancel stops retries; a suspend lets running nodes finish theirs."""
        if self._phase is _UNWINDING or self.starting:
            return False
        return self._stops != {StopReason.SUSPEND}

    async def _inject(self, node: Node, attempt: int) -> None:
        plans = INJECTIONS.get(node.key) or INJECTIONS.get(node.name) or ()
        plan: Injection | None = next(
            (p for p in plans if p.attempt is None or p.attempt == attempt), None
        )
        if plan is None or self._phase is _UNWINDING:
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
                self._node_failed(node, exc, 1)
                if limits:  # (once the run has stopped: see _drive_suspended)
                    release(limits, self)
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
                    journal.started(node.key, 1)
                    if self._write_now(journal):  # committed here (or the write failed)
                        if self._ready:  # what the batch released goes on beside this node
                            self._ensure_worker()
                    else:
                        await journal.committed()
                except BaseException:
                    if limits:
                        release(limits, self)
                    raise
                if not self.starting:  # the run stopped meanwhile: it does not start (_end_phase)
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
                # (on the loop: neither the task nor the run names an executor)
                and (task.executor is None if task.executor_named else self._remote is None)
            ):  # the common case, without the retry machinery
                attempt = 1
                value = await InContext(task.fn(*args, **kwargs), self._context, index)  # type: ignore[arg-type]
            else:
                value, attempt = await self._attempts_of(
                    node,
                    node.options,
                    task.is_async,
                    lambda attempt: self._make_call(node, args, kwargs, attempt),
                    TASK_STARTED,
                    TASK_RETRIED,
                )
        # It is no longer in flight when its failure stops the run (see _cut_phase), but
        # its slots go back only once the run has stopped (see _drive_suspended).
        except Exception as exc:
            self._running -= 1
            attempt = self._attempts.get(index, 1)
            self._node_failed(node, self._failure_of(node, exc, attempt), attempt)
            if limits:
                release(limits, self)
            return
        except BaseException as exc:  # cancellation: record it, never swallow it
            self._running -= 1
            if no_error(exc):
                attempt = self._attempts.get(index, 1)
                self._node_failed(node, self._failure_of(node, exc, attempt), attempt)
            else:
                self._cancelled(node, exc)
            if limits:
                release(limits, self)
            if no_error(exc):
                return
            raise
        self._running -= 1
        if is_unawaited(value) or (
            (node.kind is _MAP or node.kind is _STARMAP) and any(map(is_unawaited, value))
        ):
            self._node_failed(node, self._refused(node, value), attempt)
            if limits:  # (once the run has stopped, as above)
                release(limits, self)
            return
        if limits:
            release(limits, self)
        if sink.node_events:
            sink.emit(TASK_SUCCEEDED, node.key, task.name, attempt, _perf_counter() - start)
        if node.kind is _SUBGRAPH and type(value) is EndBranch:  # what follows is SKIPPED
            if journal is not None:  # on record as ENDED: a resume skips what follows too
                try:
                    text = journal.encode(node.key, value.value)
                except SerializationError as exc:
                    self._node_failed(node, exc, attempt)
                    return
                times = (self._wall(start), time.time())
                journal.record(
                    NodeRecord(node.key, _RECORD_ENDED, attempt, text, None, *times), ("end", index)
                )
                self._succeed(index, value.value, children=False)
                return
            self._succeed(index, value.value, children=False)
            self._skip_dependents(index, None)
            self._check_idle()
            return
        if node.error_scope is not None:
            # An error callback: nobody's input, and not one of the nodes the run's goal
            # counts (it runs after the forward phase). Noted as done; its value not kept.
            if journal is not None:
                times = (self._wall(start), time.time())
                journal.record(NodeRecord(node.key, _RECORD_SUCCEEDED, attempt, None, None, *times))
            self._results[index] = value
            self._states[index] = _SUCCEEDED
            self._finished[index] = _perf_counter()
        elif journal is not None:
            self._checkpoint_success(node, value, attempt, start)
        else:
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
                    _RECORD_CANCELLED,
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
        found = [value] if is_unawaited(value) else [v for v in value if is_unawaited(v)]
        for item in found:
            if type(item) is COROUTINE:
                item.close()
        if found[0] is value:
            what = awaitable_name(value)
        else:
            what = "coroutines" if all(type(v) is COROUTINE for v in found) else "awaitables"
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


@final
class _NodeAttempts(AttemptHooks):
    """A node's (or its revert's) attempts: events, the journal, its RETRYING state."""

    __slots__ = ("_attempts", "_before", "_execution", "_node", "_retried", "_started")

    def __init__(
        self,
        execution: Attempts,
        node: Node,
        started: str,
        retried: str,
        attempts: dict[int, int],
    ) -> None:
        self._execution = execution
        self._node = node
        self._started = started
        self._retried = retried
        self._attempts = attempts
        self._before = _PENDING

    @property
    def injecting(self) -> bool:
        return bool(INJECTIONS)

    def timed_out(self, attempt: int, seconds: float) -> TaskTimeout:
        return TaskTimeout(self._execution.run_id, self._node.key, attempt, seconds)

    def started(self, attempt: int) -> None:
        sink = self._execution._events
        if sink.node_events:
            sink.emit(self._started, self._node.key, self._node.name, attempt)

    def stop_retrying(self, error: Exception) -> bool:
        return self._execution._stopping_retries() or isinstance(error, _Escaped)

    def retrying(self, attempt: int, error: Exception, wait: float) -> None:
        execution = self._execution
        node = self._node
        sink = execution._events
        if sink.node_events:
            sink.emit(self._retried, node.key, node.name, attempt, error=error)
        journal = execution._journal
        if journal is not None and execution._phase is not _UNWINDING and node.error_scope is None:
            journal.record(NodeRecord(node.key, _RECORD_RETRYING, attempt, None, describe(error)))

    def waiting(self, waiting: bool) -> None:
        states = self._execution._states
        index = self._node.index
        if waiting:
            self._before = states[index]
            states[index] = _RETRYING
        else:
            states[index] = self._before

    def ended(self, attempt: int, failed: bool) -> None:
        if failed or attempt > 1:
            self._attempts[self._node.index] = attempt

    async def inject(self, attempt: int) -> None:
        await self._execution._inject(self._node, attempt)


@final
class _Observed:
    """``make_call``, each call's body in a context the run's observers entered first."""

    __slots__ = ("_key", "_make_call", "_observers", "_revert", "_thread")

    def __init__(
        self,
        make_call: Callable[[int], Any],
        observers: tuple[RunObserver, ...],
        key: str,
        revert: bool,
        thread: str,
    ) -> None:
        self._make_call = make_call
        self._observers = observers
        self._key = key
        self._revert = revert
        #: where a sync body runs: aflow's worker threads, or the run's own executor
        self._thread = thread

    def __call__(self, attempt: int) -> Any:
        call = self._make_call(attempt)
        if type(call) is InContext:
            ctx = call._ctx
            executor = "loop"
        else:  # a sync body's thread, which starts from a copy of the caller's context
            ctx = contextvars.copy_context()
            call = _Driven(call, ctx)
            executor = self._thread
        for observer in self._observers:
            ctx.run(observer.enter_body, self._key, attempt, self._revert, executor)
        return call


@final
class _Driven:
    """Await a coroutine stepped in ``ctx``."""

    __slots__ = ("_coro", "_ctx")

    def __init__(self, coro: Any, ctx: contextvars.Context) -> None:
        self._coro = coro
        self._ctx = ctx

    def __await__(self) -> Generator[Any, Any, Any]:
        return drive(self._coro, self._ctx, None, None)
