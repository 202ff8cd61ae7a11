"""Function tasks: the ``@aflow.task`` decorator and its options."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    TypeVar,
    final,
    overload,
)

from ._exceptions import SignatureError
from ._options import (
    DEFAULT_OPTIONS,
    Backoff,
    NodeOptions,
    RetryOn,
    check_options,
    layer_options,
    resolve_options,
)
from .executors._base import Executor, executor_of

if TYPE_CHECKING:
    from ._canvas import Group, PartialSignature, Signature
    from ._failure import Failure

__all__ = [
    "DEFAULT_OPTIONS",
    "FunctionTask",
    "NodeOptions",
    "Revert",
    "layer_options",
    "resolve_options",
    "task",
]

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
E_contra = TypeVar("E_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an async __call__ also counts
    )


#: What a body names when it asks about its own step (see ``FunctionTask.asks_step``).
_STEP_NAMES = frozenset({"current_step", "current_attempt"})


def _asks_step(fn: object) -> bool:
    """Whether ``fn``'s code (or code defined inside it: a helper, a lambda it starts in
    a thread) names ``aflow.current_step``. Such a task's nodes are given their step
    up front; any other's only when it asks (``aflow.current_step`` finds it then),
    which keeps a plain node's start at its cheapest."""
    target = inspect.unwrap(fn) if callable(fn) else fn
    code = getattr(target, "__code__", None)
    if code is None:  # a callable object: its __call__'s code
        call = getattr(type(target), "__call__", None)  # noqa: B004 - its code, not a test
        code = getattr(call, "__code__", None)
    stack = [code] if code is not None else []
    while stack:
        current = stack.pop()
        if _STEP_NAMES.intersection(current.co_names):
            return True
        stack.extend(c for c in current.co_consts if inspect.iscode(c))
    return False


if TYPE_CHECKING:
    # An error callback's shapes that .s() accepts with nothing more: the runtime gives it
    # the failure and, if it names them, the keyword-only failures= and results=.

    class _TakesFailures(Protocol[E_contra, R_co]):
        def __call__(
            self, error: E_contra, /, *, failures: dict[str, Failure]
        ) -> Coroutine[Any, Any, R_co]: ...

    class _TakesResults(Protocol[E_contra, R_co]):
        def __call__(
            self, error: E_contra, /, *, results: dict[str, Any]
        ) -> Coroutine[Any, Any, R_co]: ...

    class _TakesBoth(Protocol[E_contra, R_co]):
        def __call__(
            self, error: E_contra, /, *, failures: dict[str, Failure], results: dict[str, Any]
        ) -> Coroutine[Any, Any, R_co]: ...


class _RevertDecorator(Protocol):
    def __call__(self, fn: F, /) -> F: ...


@final
@dataclass(frozen=True, slots=True)
class Revert:
    """A task's compensation: the function and how it is called.

    ``takes_result`` / ``takes_failures`` say whether the function accepts the
    ``result=`` and ``flow_failures=`` keywords (it is given only what it accepts).
    """

    fn: Callable[..., Any]
    is_async: bool
    takes_result: bool
    takes_failures: bool
    options: NodeOptions


def _check_revert(
    task_name: str,
    task_fn: Callable[..., Any],
    fn: Callable[..., Any],
    *,
    by_keyword: bool = False,
) -> Revert:
    """Reject, at definition time, a revert that cannot take what it will be given.

    ``by_keyword``: the task's arguments always come by keyword after one
    positional ``self`` (an ``aflow.Task``'s), not positionally as in a canvas.
    """
    revert_name = getattr(fn, "__name__", repr(fn))
    try:
        task_sig = inspect.signature(task_fn)
        revert_sig = inspect.signature(fn)
    except (TypeError, ValueError):  # no introspectable signature: trust the user
        return Revert(fn, _is_async(fn), True, True, DEFAULT_OPTIONS)
    params = revert_sig.parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for reserved in ("result", "flow_failures"):
        if reserved in task_sig.parameters:
            raise SignatureError(
                task_name,
                f"a task with a revert cannot have a parameter named {reserved!r}: "
                "the revert receives it as a keyword",
                reserved,
            )
    takes_result = "result" in params or var_kw
    takes_failures = "flow_failures" in params or var_kw
    # The revert is called with the task's own arguments: every way of passing them
    # (all positionally, or by keyword where the task allows) must bind.
    positional: list[None] = []
    keywords: dict[str, None] = {}
    by_name: dict[str, None] = {}
    for p in task_sig.parameters.values():
        if p.kind is p.POSITIONAL_ONLY:
            positional.append(None)
        elif p.kind is p.POSITIONAL_OR_KEYWORD:
            positional.append(None)
            by_name[p.name] = None
        elif p.kind is p.VAR_POSITIONAL:
            positional.append(None)
        elif p.kind is p.KEYWORD_ONLY:
            keywords[p.name] = None
        else:
            keywords["__any_keyword__"] = None
    extra: dict[str, None] = {}
    if takes_result:
        extra["result"] = None
    if takes_failures:
        extra["flow_failures"] = None
    n_posonly = sum(1 for p in task_sig.parameters.values() if p.kind is p.POSITIONAL_ONLY)
    variants: list[tuple[list[None], dict[str, None]]] = [
        (positional, keywords),
        (positional[:n_posonly], {**by_name, **keywords}),
    ]
    if by_keyword:
        first = next(iter(task_sig.parameters), None)
        named = {k: v for k, v in {**by_name, **keywords}.items() if k != first}
        variants = [([None], named)]
    for args, kwargs in variants:
        try:
            revert_sig.bind(*args, **kwargs, **extra)
        except TypeError as exc:
            reason = str(exc)
            argument = reason.split("'")[1] if "'" in reason else None
            raise SignatureError(
                task_name,
                f"revert {revert_name!r} cannot take the task's arguments "
                f"{list(task_sig.parameters)} plus {list(extra) or 'nothing'}: {reason}",
                argument,
            ) from None
    return Revert(fn, _is_async(fn), takes_result, takes_failures, DEFAULT_OPTIONS)


@final
class FunctionTask(Generic[P, R]):
    """A function turned into a task by :func:`task`.

    Calling it runs the function directly (``await add(2, 2)``); ``.s()``,
    ``.si()``, ``.map()``, ``.starmap()`` and ``.chunks()`` build workflow
    pieces that run on the scheduler.
    """

    def __init__(
        self, fn: Callable[P, Awaitable[R]] | Callable[P, R], options: Mapping[str, Any]
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@aflow.task expects a function, got {fn!r}")
        if inspect.isasyncgenfunction(fn):
            raise SignatureError(
                getattr(fn, "__name__", repr(fn)),
                "async generator functions cannot be tasks; return a list instead",
            )
        name = getattr(fn, "__name__", None) or type(fn).__name__
        checked = check_options(name, options)
        self.fn = fn
        self.name: str = checked.pop("name", name)
        self.is_async = _is_async(fn)
        #: its body asks aflow.current_step(): its nodes get their step up front
        self.asks_step = _asks_step(fn)
        self.options: dict[str, Any] = checked
        #: The compensation registered with :meth:`revert`, if any.
        self.reverter: Revert | None = None
        #: The node options when nothing overrides the decorator's (the common case).
        self.node_options = resolve_options(checked)
        #: Call shapes already checked against the function (see aflow._graph).
        self.checked_shapes: dict[tuple[int, tuple[str, ...]], str | None] = {}
        #: Where its body runs (``None``: the run's choice, by default the event loop);
        #: ``executor_named``: the task chose (``"loop"`` too), not the run.
        self.executor: Executor | None = None
        #: aflow's own tasks (sleep, waits, ops' steps, atoms) run on the loop: a run's
        #: executor is for the tasks its user wrote
        self.executor_named = getattr(fn, "__module__", "").startswith("aflow.")
        #: its module-level name was found to be it (what pickling it by name needs)
        self._named_ok = False
        functools.update_wrapper(self, fn)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its module-level name (what another process imports): a body run
        # in a worker process is named, not sent. The name may hold the task, or the
        # function it was made of (``aflow.task(...)(f)``): a worker needs the function.
        module, qualname = self.__module__, str(getattr(self, "__qualname__", self.name))
        if not self._named_ok:
            try:
                found = _named(module, qualname)
            except Exception:
                found = None
            if found is not self and found is not self.fn:
                import pickle

                raise pickle.PicklingError(
                    f"{module}.{qualname} is not this task (nor its function) in its module"
                )
            self._named_ok = True
        return (_named, (module, qualname))

    def __repr__(self) -> str:
        kind = "async" if self.is_async else "thread"
        revert = ", with revert" if self.reverter is not None else ""
        return f"<aflow task {self.name} ({kind}{revert})>"

    @overload
    def revert(self, fn: F, /) -> F: ...
    @overload
    def revert(
        self,
        /,
        *,
        retries: int = 0,
        backoff: Backoff | None = None,
        retry_on: RetryOn | None = None,
        timeout: float | None = None,
    ) -> _RevertDecorator: ...
    def revert(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        retries: int = 0,
        backoff: Backoff | None = None,
        retry_on: RetryOn | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Register this task's compensation, bare or with retry options::

            @charge.revert
            async def refund(order_id: str, amount: int, *, result: str) -> None: ...

        The revert is called with the task's own arguments, plus ``result=``
        (the task's return value, or an :class:`aflow.Failure` if it failed or
        was cancelled mid-way) and ``flow_failures=`` (node key -> Failure),
        each only if its signature accepts it. A revert that cannot take them
        raises :class:`~aflow.errors.SignatureError` here, not when it is needed.
        The function is returned unchanged.
        """
        options: dict[str, Any] = {"retries": retries}
        if backoff is not None:
            options["backoff"] = backoff
        if retry_on is not None:
            options["retry_on"] = retry_on
        if timeout is not None:
            options["timeout"] = timeout
        checked = check_options(f"{self.name} (revert)", options)

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            if not callable(f):
                raise TypeError(f"{self.name}.revert expects a function, got {f!r}")
            found = _check_revert(self.name, self.fn, f)
            self.reverter = Revert(
                found.fn,
                found.is_async,
                found.takes_result,
                found.takes_failures,
                resolve_options(checked),
            )
            return f

        if fn is not None:
            return register(fn)
        return register

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        """Run the function now, outside any graph (a plain sync function runs in a thread)."""
        if self.is_async:
            return self.fn(*args, **kwargs)  # type: ignore[return-value]
        from ._runtime._threads import run_in_thread

        return run_in_thread(functools.partial(self.fn, *args, **kwargs), None)  # type: ignore[arg-type]

    # --- building signatures (Celery's calling API) -------------------------------------------

    @overload
    def s(
        self: Callable[Concatenate[T, P2], Coroutine[Any, Any, R]],
        *args: P2.args,
        **kwargs: P2.kwargs,
    ) -> PartialSignature[T, R]: ...
    @overload
    def s(self: _TakesBoth[T, R]) -> PartialSignature[T, R]: ...
    @overload
    def s(self: _TakesFailures[T, R]) -> PartialSignature[T, R]: ...
    @overload
    def s(self: _TakesResults[T, R]) -> PartialSignature[T, R]: ...
    @overload
    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]: ...
    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A signature of this task with (possibly partial) arguments.

        In a chain, the parent's result is prepended to ``args``. A type checker
        accepts either the full argument list or all but the first argument,
        which the parent's result fills (``charge.s()`` after a step returning an
        ``Order``); then ``|``, ``.link()``, ``.link_error()`` and ``chord()``
        check that the parent's result fits that first parameter. An error
        callback may leave out its keyword-only ``failures`` / ``results`` too.
        """
        return _canvas.Signature._new(self, args, kwargs, False)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]:
        """An immutable signature: it ignores the parent's result."""
        return _canvas.Signature._new(self, args, kwargs, True)

    def signature(
        self,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        **options: Any,
    ) -> Signature[R]:
        """A signature built from an args tuple, a kwargs dict and options (Celery's form)."""
        return _canvas.Signature(
            self, tuple(args), dict(kwargs or {}), immutable=immutable, options=options
        )

    def map(self, items: Iterable[Any] | None = None) -> Signature[list[R]]:
        """One node that calls the task on each item in turn (``[task(x) for x in items]``).

        Without ``items``, the parent's result in a chain is the iterable.
        """
        return _canvas.Signature(self, () if items is None else (list(items),), {}, mode="map")

    def starmap(self, items: Iterable[Iterable[Any]] | None = None) -> Signature[list[R]]:
        """Like :meth:`map`, but each item is unpacked as positional arguments."""
        return _canvas.Signature(
            self, () if items is None else ([tuple(x) for x in items],), {}, mode="starmap"
        )

    def chunks(self, items: Iterable[Iterable[Any]], n: int) -> Group:
        """Split ``items`` into parts of ``n`` and run each part as a :meth:`starmap`, in parallel.

        The result is a list with one list of results per part.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise SignatureError(self.name, f"chunk size must be an int >= 1, got {n!r}", "n")
        pairs = [tuple(x) for x in items]
        return _canvas.Group([self.starmap(pairs[i : i + n]) for i in range(0, len(pairs), n)])


class _TaskDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> FunctionTask[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> FunctionTask[P, R]: ...


@overload
def task(fn: Callable[P, Coroutine[Any, Any, R]], /) -> FunctionTask[P, R]: ...
@overload
def task(fn: Callable[P, R], /) -> FunctionTask[P, R]: ...
@overload
def task(
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: Backoff | None = None,
    retry_on: RetryOn | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
    limit: str | Iterable[str] | None = None,
    continue_on_failed: bool = False,
    provides: str | tuple[str, ...] | set[str] | frozenset[str] | None = None,
    priority: float = 0,
    executor: str | Executor | None = None,
) -> _TaskDecorator: ...
def task(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: Backoff | None = None,
    retry_on: RetryOn | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
    limit: str | Iterable[str] | None = None,
    continue_on_failed: bool = False,
    provides: str | tuple[str, ...] | set[str] | frozenset[str] | None = None,
    priority: float = 0,
    executor: str | Executor | None = None,
) -> Any:
    """Turn a function into a task.

    ``async def`` functions run on the event loop; plain ``def`` functions run
    in a worker thread. Use bare (``@aflow.task``) or with keyword-only options::

        @aflow.task(retries=3, timeout=10, limit="payments")
        async def charge(order_id: str, amount: int) -> str: ...

    Args:
        name: the node name (default: the function's ``__name__``).
        retries: extra attempts after a failure (``CancelledError`` is never retried).
        backoff: how long to wait between attempts (default: retry at once).
        retry_on: exception types, or a predicate, that may be retried (default: any
            ``Exception``; a ``TimeoutError`` from ``timeout`` too, if admitted).
        timeout: seconds per attempt; an attempt over time raises
            :class:`aflow.errors.TaskTimeout` (a ``TimeoutError``). A thread task cannot be
            interrupted: its late result is discarded.
        deadline: seconds for all attempts together, waits included.
        limit: the name(s) of concurrency limits this task takes a slot of; limits set
            on an enclosing group or chain add to these.
        continue_on_failed: if the task still fails, the run goes on as if it had
            returned ``None`` (its state stays ``FAILED``).
        provides: inside a flow (``aflow.patterns``), the name its result is stored
            under; a tuple of names unpacks a returned sequence, a set of names
            picks keys of a returned dict.
        priority: when more nodes are ready than may run, the higher starts (and, on
            unwinding, reverts) first; equal ones in the order they became ready.
        executor: where its body (and its revert) runs: ``"loop"`` (the default: the
            event loop, a sync body in a worker thread), ``"process"`` (a pool of worker
            processes: arguments and results must pickle, the task must be a module-level
            name), or an :class:`aflow.executors.Executor`. Overrides the run's.
    """
    options: dict[str, Any] = {}
    if name is not None:
        options["name"] = name
    if retries:
        options["retries"] = retries
    if backoff is not None:
        options["backoff"] = backoff
    if retry_on is not None:
        options["retry_on"] = retry_on
    if timeout is not None:
        options["timeout"] = timeout
    if deadline is not None:
        options["deadline"] = deadline
    if limit is not None:
        options["limit"] = limit if isinstance(limit, str) else tuple(limit)
    if continue_on_failed:
        options["continue_on_failed"] = True
    if provides is not None:
        options["provides"] = provides
    if priority:
        options["priority"] = priority

    def decorate(f: Callable[..., Any]) -> FunctionTask[..., Any]:
        made = FunctionTask(f, options)
        if executor is not None:
            made.executor = executor_of(executor, f"task {made.name!r}")
            made.executor_named = True
        return made

    if fn is not None:
        return decorate(fn)
    return decorate


def _named(module: str, qualname: str) -> Any:
    """What a task pickled by name is in another process: the object at that name."""
    import importlib

    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


# The canvas builds on this module; imported as a module, last, so the cycle resolves.
from . import _canvas  # noqa: E402
