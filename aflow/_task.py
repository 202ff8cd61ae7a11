"""Function tasks: the ``@aflow.task`` decorator and its options."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, final, overload

from ._exceptions import SignatureError

if TYPE_CHECKING:
    from ._canvas import Group, Signature

__all__ = ["FunctionTask", "NodeOptions", "layer_options", "resolve_options", "task"]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

#: The options a task, a signature or a composite accepts, with their checks.
OPTION_NAMES = frozenset({"name", "retries", "timeout", "limit"})


@final
@dataclass(frozen=True, slots=True)
class NodeOptions:
    """The resolved per-node options the scheduler reads.

    Instances are interned: nodes that resolve to the same options share one
    object, so a million-node graph holds a handful of these.
    """

    retries: int = 0
    timeout: float | None = None
    limits: tuple[str, ...] = ()


DEFAULT_OPTIONS = NodeOptions()
_interned: dict[tuple[int, float | None, tuple[str, ...]], NodeOptions] = {}


def check_options(owner: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate option names and values; return them as a new dict."""
    unknown = set(options) - OPTION_NAMES
    if unknown:
        bad = sorted(unknown)[0]
        raise SignatureError(
            owner, f"unknown option; known options are {sorted(OPTION_NAMES)}", argument=bad
        )
    out = dict(options)
    if "name" in out and (not isinstance(out["name"], str) or not out["name"]):
        raise SignatureError(owner, "must be a non-empty string", argument="name")
    retries = out.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise SignatureError(owner, f"must be an int >= 0, got {retries!r}", argument="retries")
    timeout = out.get("timeout")
    if timeout is not None and (
        not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0
    ):
        raise SignatureError(owner, f"must be a number > 0, got {timeout!r}", argument="timeout")
    limit = out.get("limit")
    if limit is not None:
        names = (limit,) if isinstance(limit, str) else limit
        if not isinstance(names, tuple | list) or not all(isinstance(n, str) and n for n in names):
            raise SignatureError(
                owner, f"must be a limit name or a sequence of names, got {limit!r}", "limit"
            )
        out["limit"] = tuple(names)
    return out


def layer_options(outer: Mapping[str, Any], inner: Mapping[str, Any]) -> dict[str, Any]:
    """Options of a more specific level (``inner``) over a broader one.

    The more specific value wins (a signature's ``timeout`` over its group's,
    a group's over the decorator's), except ``limit``: limits add up, so a
    task declared ``limit="db"`` inside a group set to ``limit="api"`` takes
    a slot of both.
    """
    merged = {**outer, **inner}
    if "limit" in outer and "limit" in inner:
        merged["limit"] = tuple(dict.fromkeys((*outer["limit"], *inner["limit"])))
    return merged


def resolve_options(merged: Mapping[str, Any]) -> NodeOptions:
    """Turn merged (already checked) option dicts into an interned NodeOptions."""
    key = (merged.get("retries", 0), merged.get("timeout"), merged.get("limit") or ())
    found = _interned.get(key)
    if found is None:
        found = _interned[key] = NodeOptions(*key)
    return found


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
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an async __call__ also counts
        )
        self.options: dict[str, Any] = checked
        #: The node options when nothing overrides the decorator's (the common case).
        self.node_options = resolve_options(checked)
        #: Call shapes already checked against the function (see aflow._graph).
        self.checked_shapes: dict[tuple[int, tuple[str, ...]], str | None] = {}
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        kind = "async" if self.is_async else "thread"
        return f"<aflow task {self.name} ({kind})>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        """Run the function now, outside any graph (a plain sync function runs in a thread)."""
        if self.is_async:
            return self.fn(*args, **kwargs)  # type: ignore[return-value]
        from ._runtime._threads import run_in_thread

        return run_in_thread(functools.partial(self.fn, *args, **kwargs), None)  # type: ignore[arg-type]

    # --- building signatures (Celery's calling API) -------------------------------------------

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]:
        """A signature of this task with (possibly partial) arguments.

        In a chain, the parent's result is prepended to ``args``. Under a type
        checker ``.s()`` checks the full argument list; for a partial signature
        use :meth:`signature` (``add.signature((4,))``).
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
    timeout: float | None = None,
    limit: str | Iterable[str] | None = None,
) -> _TaskDecorator: ...
def task(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    retries: int = 0,
    timeout: float | None = None,
    limit: str | Iterable[str] | None = None,
) -> Any:
    """Turn a function into a task.

    ``async def`` functions run on the event loop; plain ``def`` functions run
    in a worker thread. Use bare (``@aflow.task``) or with keyword-only options::

        @aflow.task(retries=3, timeout=10, limit="payments")
        async def charge(order_id: str, amount: int) -> str: ...

    Args:
        name: the node name (default: the function's ``__name__``).
        retries: extra attempts after a failure (``CancelledError`` is never retried).
        timeout: seconds per attempt; an attempt over time raises ``TimeoutError``
            (a thread task cannot be interrupted: its late result is discarded).
        limit: the name(s) of concurrency limits this task takes a slot of; limits set
            on an enclosing group or chain add to these.
    """
    options: dict[str, Any] = {}
    if name is not None:
        options["name"] = name
    if retries:
        options["retries"] = retries
    if timeout is not None:
        options["timeout"] = timeout
    if limit is not None:
        options["limit"] = limit if isinstance(limit, str) else tuple(limit)

    def decorate(f: Callable[..., Any]) -> FunctionTask[..., Any]:
        return FunctionTask(f, options)

    if fn is not None:
        return decorate(fn)
    return decorate


# The canvas builds on this module; imported as a module, last, so the cycle resolves.
from . import _canvas  # noqa: E402
