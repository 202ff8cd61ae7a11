"""How a task's body is called: in a context of its own, in a thread, item by item,
and what it may not return."""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections.abc import Callable, Coroutine, Generator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, final

from .._exceptions import (
    BelowThreshold,
    ResultError,
    TaskFailed,
)
from .._failure import Failure
from .._graph import Node
from ..executors._base import Call
from ..executors._base import Executor as AflowExecutor
from ._current import ATTEMPT, EXECUTION, ITEM, STEP

if TYPE_CHECKING:
    from ._run_state import RunState

_copy_context = contextvars.copy_context
_set_attempt = ATTEMPT.set
_set_execution = EXECUTION.set
_set_step = STEP.set
_set_item = ITEM.set


@final
class InContext:
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
        return drive(self._coro, self._ctx, None, None)


def drive(
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


async def await_coro(coro: Coroutine[Any, Any, Any]) -> Any:
    return await coro


def in_thread_as(execution: RunState, step: int, attempt: int, fn: Callable[[], Any]) -> Any:
    """Call a sync body in its thread, which runs in its own copy of the context: what
    the body may ask of itself (:func:`aflow.current_step`) is set there first."""
    _set_execution(execution)  # type: ignore[arg-type]  # (an Execution: made of RunState)
    _set_step(step)
    _set_attempt(attempt)
    try:
        return fn()
    except BaseException as exc:  # (GeneratorExit...) carried out of the thread as an error
        if no_error(exc):
            raise _Escaped(exc) from exc
        raise  # an error, an interrupt, or a cancellation that check_cancelled() saw


class _Escaped(Exception):
    """A ``BaseException`` that is no error, raised by a sync body in its thread: it
    travels to the scheduler as an error (see :meth:`Execution._failure_of`)."""


def no_error(exc: BaseException) -> bool:
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


async def map_async(
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
            out.append(MISSING)
        else:
            if done is not None:
                done.append((item, value))
            out.append(value)
    return _settle_map(out, errors, node, run_id)


def map_sync(
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
        ctx = _copy_context()  # each call in a context of its own, as in map_async
        ctx.run(_set_item, i)
        try:
            value = ctx.run(fn, *item, **kwargs) if star else ctx.run(fn, item, **kwargs)
        except BaseException as exc:
            _record_item(done, node, item, exc)
            if not tolerant or not _a_failure(exc):
                raise
            errors.append(_as_item_error(exc, node, run_id))
            out.append(MISSING)
        else:
            if done is not None:
                done.append((item, value))
            out.append(value)
    return _settle_map(out, errors, node, run_id)


def _a_failure(exc: BaseException) -> bool:
    """An error, or a BaseException that is no error: a failure (not a cancellation)."""
    return isinstance(exc, Exception) or no_error(exc)


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


async def revert_items_async(
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
        refuse_unawaited(returned, key)
        done.pop()


def revert_items_sync(
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
        refuse_unawaited(returned, key)
        done.pop()


def is_unawaited(value: Any) -> bool:
    """A value no task may return: a coroutine or a future it forgot to ``await``."""
    return type(value) is COROUTINE or isinstance(value, _FUTURE)


def refuse_unawaited(value: Any, key: str) -> None:
    """A revert that returned a coroutine or a future did not do its work: it failed."""
    if is_unawaited(value):
        if type(value) is COROUTINE:
            value.close()
        what = awaitable_name(value)
        raise ResultError(key, f"(its revert) returned {what}: a missing 'await'?")


def awaitable_name(value: Any) -> str:
    if type(value) is COROUTINE:
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
        return drive(self._coro, self._ctx, None, None)


MISSING: Any = object()
COROUTINE = types.CoroutineType
_FUTURE = asyncio.Future
#: The types of what a task forgot to await, for the inline path's one-lookup check
#: (any other future subclass is caught where a node does not end inline).
UNAWAITED = frozenset(
    {
        COROUTINE,
        asyncio.Future,
        asyncio.Task,
        getattr(asyncio.tasks, "_GatheringFuture", asyncio.Future),  # what gather() returns
    }
)


def below_threshold(
    run_id: str, node: Node, ok: int, total: int, errors: Sequence[Exception]
) -> BelowThreshold:
    """The error of a group or a map with too few members that succeeded."""
    return BelowThreshold(run_id, node.key, ok, total, errors)


def _settle_map(out: list[Any], errors: list[Exception], node: Node, run_id: str) -> list[Any]:
    succeeded = len(out) - len(errors)
    if not node.options.threshold_met(succeeded, len(out)):
        raise below_threshold(run_id, node, succeeded, len(out), errors)
    return [None if v is MISSING else v for v in out]


async def remote_call(
    execution: Any,
    executor: AflowExecutor,
    target: Any,
    step: int,
    attempt: int,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> Any:
    """One attempt of a body (``step``; ``~i`` for the revert of node ``i``) in
    ``executor``: what the body may ask of itself (:func:`aflow.current_step`) goes with
    it: which run, step and attempt (not the step's values: they need not pickle)."""
    # (read as it is awaited: a map's item has its own key by then)
    info = execution.step_now(step, attempt, ITEM.get(-1))
    trace = trace_carrier(execution)
    call = Call(info.run_id, info.key, info.task, attempt, info.idempotency_key, trace)
    return await executor.call(target, tuple(args), dict(kwargs), call)


def trace_carrier(execution: Any) -> dict[str, str] | None:
    """The trace context current here, as W3C headers, for a body run in another
    process to continue (``None`` unless aflow.otel observes the run)."""
    for observer in execution._events.observers:
        carrier = getattr(observer, "trace_carrier", None)
        if carrier is not None:
            made: dict[str, str] = carrier()
            return made
    return None
