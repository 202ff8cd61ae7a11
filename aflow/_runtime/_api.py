"""Entry points: ``aflow.run``, ``aflow.run_sync``, :class:`Runtime` and the :class:`Run` handle."""

from __future__ import annotations

import contextvars
import functools
import importlib
import math
import os
import socket
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final, overload

import anyio
import anyio.abc

from .._events import Event, EventListener, warn
from .._exceptions import (
    DefinitionError,
    IdempotencyConflict,
    LeaseLost,
    ResumeMismatch,
    RunCancelled,
    RunError,
    RunExists,
    RunNotFinished,
    RunReleased,
)
from .._failure import Failure
from .._graph import Graph, NodeKind, compile
from .._serialize import Serializer, serializer_for
from .._workflow import Workflow, fingerprint, registered_workflow
from ..stores._base import NodeRecord, RunRecord, Store, open_store
from ..stores._sql import PARKED
from ._clock import SYSTEM_CLOCK, Clock, wall_time
from ._journal import Journal
from ._options import (
    Capacity,
    RunOptions,
    dump_options,
    new_execution,
    stored_options,
)
from ._scheduler import Execution
from ._states import NodeState, RunStatistics, RunStatus, StepInfo
from ._threads import DEFAULT_THREADS

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectSendStream

    from .._canvas import Canvas

__all__ = ["CURRENT_RUNTIME", "Run", "Runtime", "run", "run_sync"]

R = TypeVar("R")

_FINISHED = frozenset({"succeeded", "failed", "reverted", "cancelled"})
_KEEP: Any = object()
#: The innermost entered Runtime of this context (``aflow.ops.Workflow.submit()`` uses it).
CURRENT_RUNTIME: contextvars.ContextVar[Runtime] = contextvars.ContextVar("aflow_runtime")
#: Seconds without a heartbeat after which a run's process counts as dead (recovery takes it).
DEFAULT_LEASE = 10.0


async def _outcome(handle: Run[Any]) -> Any:
    """The run's value; cancelling the awaiter cancels the run, waits for it to stop
    (it unwinds), then re-raises."""
    try:
        return await handle.result()
    except anyio.get_cancelled_exc_class():
        handle._execution.cancel()
        with anyio.CancelScope(shield=True):
            await handle.wait()
        raise


def _as_is(value: Any) -> Any:
    return value


def _identity(workflow: object, params: Mapping[str, Any], graph: Graph) -> tuple[str, Any]:
    """What an idempotency key stands for: a workflow and its parameters (a canvas: its
    graph's shape and every node's arguments)."""
    if isinstance(workflow, Workflow):
        return (workflow.path, dict(params))
    arguments = [(node.args, dict(node.kwargs)) for node in graph.nodes]
    return (f"a {type(workflow).__name__} of {len(graph)} nodes", (fingerprint(graph), arguments))


def _same_work(run_id: str, key: str, existing: tuple[str, Any], wanted: tuple[str, Any]) -> None:
    """An idempotency key names run ``run_id``: refuse it for other work (issue 14)."""
    try:
        if existing == wanted:
            return
    except Exception:  # arguments that cannot be compared (an array...) are not the same
        pass

    def text(identity: tuple[str, Any]) -> str:
        what, params = identity
        if not isinstance(params, dict):
            return what
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        return f"{what}({shown[:200]}{'...' if len(shown) > 200 else ''})"

    raise IdempotencyConflict(run_id, key, text(existing), text(wanted))


@overload
async def run(
    workflow: Canvas[R],
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | Store | None = None,
    idempotency_key: str | None = None,
    serializer: str | Serializer = "json",
) -> R: ...
@overload
async def run(
    workflow: Graph | object,
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | Store | None = None,
    idempotency_key: str | None = None,
    serializer: str | Serializer = "json",
) -> Any: ...
async def run(
    workflow: object,
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | Store | None = None,
    idempotency_key: str | None = None,
    serializer: str | Serializer = "json",
) -> Any:
    """Run a workflow in the calling task and return its value.

    Independent branches run concurrently, at most ``max_concurrency`` task
    nodes at once, and at most ``limits[name]`` nodes of tasks declared with
    ``limit=name``. ``on_event`` receives every run and node event.

    If a task fails (after its retries), the other running tasks are
    cancelled, nodes not started never start, the reverts of what ran are
    called in reverse dependency order (``on_error="revert"``, shielded, at
    most ``compensation_timeout`` seconds), and the task's own exception is
    raised. With ``on_error="continue"`` the dependents of a failed task are
    skipped, independent branches finish, and the failure is raised at the
    end. ``timeout`` bounds the whole run (:class:`aflow.RunTimeout`); time
    comes from ``clock`` (``aflow.testing.FakeClock`` in tests). Cancelling
    the caller cancels and unwinds the run, then re-raises.

    ``params`` builds an ``@aflow.workflow``. With ``store`` (a URL or a
    :class:`~aflow.stores.Store`) the run is durable, as in a
    :class:`Runtime` with that store: every node is checkpointed, and
    ``idempotency_key`` makes a second call with the same key return the
    first run's result instead of running again.

    Example::

        total = await aflow.run(aflow.chord(fetch.s(u) for u in urls), merge.s(),
                                max_concurrency=16)
        await aflow.run(order_saga, params={"order_id": "o-42"},
                        store="sqlite:///runs.db", idempotency_key="order-o-42")
    """
    options = RunOptions(
        max_concurrency=max_concurrency,
        limits=limits,
        on_event=on_event,
        on_error=on_error,
        timeout=timeout,
        compensation_timeout=compensation_timeout,
        clock=clock,
    )
    return await run_with(
        workflow,
        options,
        run_id=run_id,
        params=params,
        store=store,
        idempotency_key=idempotency_key,
        serializer=serializer,
    )


async def run_with(
    workflow: object,
    options: RunOptions,
    *,
    run_id: str | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | Store | None = None,
    idempotency_key: str | None = None,
    serializer: str | Serializer = "json",
) -> Any:
    """:func:`run` with its options built: what ``run`` and ``run_sync`` both call."""
    if store is not None:
        failure: Exception | None = None
        async with Runtime._owning_one_run(options, store, serializer) as rt:
            try:
                handle = await rt.submit(
                    workflow, params=params, run_id=run_id, idempotency_key=idempotency_key
                )
                value = await _outcome(handle)
            except Exception as exc:  # raised below, as itself (not in the runtime's group)
                failure = exc
        if failure is not None:
            raise failure
        return value
    if idempotency_key is not None:
        raise ValueError("an idempotency_key needs a durable store: pass store='sqlite:///...'")
    if isinstance(workflow, Workflow):
        graph = workflow.build(dict(params or {}))
    elif params:
        raise TypeError("parameters can only be given to an @aflow.workflow")
    else:
        graph = compile(workflow)
    return await new_execution(graph, options, run_id=run_id).execute()


@overload
def run_sync(
    workflow: Canvas[R],
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | None = None,
    idempotency_key: str | None = None,
    serializer: str = "json",
    use_uvloop: bool | None = None,
) -> R: ...
@overload
def run_sync(
    workflow: Graph | object,
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | None = None,
    idempotency_key: str | None = None,
    serializer: str = "json",
    use_uvloop: bool | None = None,
) -> Any: ...
def run_sync(
    workflow: object,
    *,
    max_concurrency: int | None = None,
    limits: Mapping[str, int] | None = None,
    on_event: EventListener | None = None,
    run_id: str | None = None,
    on_error: str = "revert",
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    clock: Clock | None = None,
    params: Mapping[str, Any] | None = None,
    store: str | None = None,
    idempotency_key: str | None = None,
    serializer: str = "json",
    use_uvloop: bool | None = None,
) -> Any:
    """Run a workflow from synchronous code (a script) on a new event loop.

    Uses uvloop when it is installed unless ``use_uvloop=False``.
    """
    if use_uvloop is None:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            use_uvloop = False
        else:
            use_uvloop = True
    options = RunOptions(
        max_concurrency=max_concurrency,
        limits=limits,
        on_event=on_event,
        on_error=on_error,
        timeout=timeout,
        compensation_timeout=compensation_timeout,
        clock=clock,
    )
    call = functools.partial(
        run_with,
        workflow,
        options,
        run_id=run_id,
        params=params,
        store=store,
        idempotency_key=idempotency_key,
        serializer=serializer,
    )
    return anyio.run(call, backend="asyncio", backend_options={"use_uvloop": use_uvloop})


@final
class Run(Generic[R]):
    """A handle on a run submitted to a :class:`Runtime`.

    Get one from ``await runtime.submit(workflow)``; it is never constructed
    directly. The group-result methods (``successful()``, ``failed()``,
    ``ready()``...) follow Celery's ``GroupResult`` and count task nodes.
    """

    __slots__ = (
        "_error",
        "_execution",
        "_finished",
        "_key",
        "_remote_cancel",
        "_streams",
        "_traceback",
        "_value",
    )

    def __init__(self, execution: Execution) -> None:
        self._execution = execution
        self._finished = anyio.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._traceback: TracebackType | None = None
        self._streams: list[MemoryObjectSendStream[Event]] = []
        #: (idempotency key, what it stands for) of a run without a store
        self._key: tuple[str, tuple[str, Any]] | None = None
        #: for a run another process drives: ask its store to cancel it
        self._remote_cancel: Callable[[], Awaitable[Any]] | None = None

    @classmethod
    def _finished_in_store(
        cls, execution: Execution, value: Any, error: BaseException | None
    ) -> Run[Any]:
        """A handle on a run that ended earlier (found by its idempotency key)."""
        handle: Run[Any] = cls(execution)
        handle._value = value
        handle._error = error
        handle._finished.set()
        return handle

    async def _drive(self) -> None:
        try:
            self._value = await self._execution.execute()
        except Exception as exc:  # stored for result(); the runtime must not crash
            self._error = exc
            self._traceback = exc.__traceback__
        except BaseException:  # the runtime is shutting down: record, then re-raise
            execution = self._execution
            if execution.status is RunStatus.SUCCEEDED:  # it completed as the cancel came
                self._value = execution.result_of(execution.graph.output)
            elif execution._releasing:
                self._error = RunReleased(self.id)
            else:
                self._error = RunCancelled(self.id, "the runtime shut down before the run finished")
            raise
        finally:
            self._finished.set()
            for stream in self._streams:
                stream.close()

    # --- identity and state ----------------------------------------------------------------

    @property
    def id(self) -> str:
        """The run id (a uuid4 hex string unless one was given)."""
        return self._execution.run_id

    @property
    def status(self) -> RunStatus:
        """The run's current status."""
        return self._execution.status

    @property
    def graph(self) -> Graph:
        """The compiled graph this run executes."""
        return self._execution.graph

    def __repr__(self) -> str:
        stats = self._execution.statistics()
        done = stats.succeeded + stats.failed + stats.cancelled + stats.skipped
        text = (
            f"<Run {self.id[:8]} {self.status.name} [{done} done, {stats.running} running, "
            f"{stats.pending} waiting"
        )
        limits = self._execution.limit_summary()
        return text + (f" | {limits}]>" if limits else "]>")

    # --- outcome -------------------------------------------------------------------------

    async def result(self) -> R:
        """Wait for the run to end; return its value or raise what it raised.

        A run cancelled by :meth:`cancel` or by a runtime shutdown raises
        :class:`~aflow.RunCancelled`.
        """
        await self._finished.wait()
        if self._error is not None:
            raise self._error.with_traceback(self._traceback)
        value: R = self._value
        return value

    def result_nowait(self) -> R:
        """The value of a finished run (raises :class:`~aflow.RunNotFinished` before the end)."""
        if not self._finished.is_set():
            raise RunNotFinished(self.id)
        if self._error is not None:
            raise self._error.with_traceback(self._traceback)
        value: R = self._value
        return value

    async def wait(self) -> RunStatus:
        """Wait for the run to end without raising; return its status."""
        await self._finished.wait()
        return self.status

    async def cancel(self) -> None:
        """Cancel the run and wait until it has stopped.

        A run another process drives (found by its idempotency key) is asked to
        cancel through the store, as ``aflow cancel`` does; its process unwinds it.
        """
        if self._remote_cancel is not None and not self._finished.is_set():
            await self._remote_cancel()
        self._execution.cancel()
        await self._finished.wait()

    def step(self, key: str) -> StepInfo:
        """A snapshot of one node: state, result or error, attempts, times."""
        return self._execution.step(key)

    def steps(self) -> list[StepInfo]:
        """A snapshot of every task node, in graph order."""
        graph = self._execution.graph
        return [self._execution.step(graph.nodes[i].key) for i in self._execution.task_indices()]

    def results(self) -> dict[str, Any]:
        """Every succeeded task node's output, by node key."""
        return self._execution.results()

    def failures(self) -> dict[str, Failure]:
        """Every node that failed or was cancelled mid-way, by key (the run's full record)."""
        return self._execution.failures()

    def reverted(self) -> list[str]:
        """The keys of the nodes whose reverts succeeded, in the order they finished."""
        return self._execution.reverted()

    def statistics(self) -> RunStatistics:
        """Counts of task nodes by state, the peak in flight, and the duration."""
        return self._execution.statistics()

    async def events(self) -> AsyncIterator[Event]:
        """Iterate over the run's events from now until it ends."""
        if self._finished.is_set():
            return
        send, receive = anyio.create_memory_object_stream[Event](math.inf)
        self._streams.append(send)
        self._execution.add_listener(send.send_nowait)
        try:
            async with receive:
                async for event in receive:
                    yield event
        finally:
            if not self._finished.is_set():
                self._execution.remove_listener(send.send_nowait)

    # --- Celery's GroupResult API ----------------------------------------------------------

    def _task_states(self) -> list[NodeState]:
        ex = self._execution
        return [ex.state_of(i) for i in ex.task_indices() if ex.graph.nodes[i].error_scope is None]

    def successful(self) -> bool:
        """True when every task node succeeded."""
        return all(s is NodeState.SUCCEEDED for s in self._task_states())

    def failed(self) -> bool:
        """True when any task node failed (reverted since or not)."""
        return any(not f.cancelled for f in self._execution.failures().values())

    def waiting(self) -> bool:
        """True while any task node has not finished."""
        return any(s in (NodeState.PENDING, NodeState.RUNNING) for s in self._task_states())

    def ready(self) -> bool:
        """True once the run has finished."""
        return self._finished.is_set()

    def completed_count(self) -> int:
        """How many task nodes succeeded."""
        return sum(s is NodeState.SUCCEEDED for s in self._task_states())

    async def join(self, *, propagate: bool = True) -> Any:
        """Wait for the end; return the result.

        With ``propagate=False`` nothing is raised: for a workflow whose value
        is a group, failed or cancelled members hold their exception in the
        list; otherwise the exception itself is returned.
        """
        if propagate:
            return await self.result()
        await self._finished.wait()
        if self._error is None:
            return self._value
        ex = self._execution
        output = ex.graph.nodes[ex.graph.output]
        if output.kind is NodeKind.JOIN:
            return [
                ex.result_of(p) if ex.state_of(p) is NodeState.SUCCEEDED else ex.error_of(p)
                for p in output.parents
            ]
        return self._error

    async def revoke(self) -> None:
        """Cancel the run (Celery's name for :meth:`cancel`)."""
        await self.cancel()


@final
class Runtime:
    """Owns runs that outlive the code that submitted them (a web request, say).

    Use it as an async context manager, e.g. in a FastAPI lifespan::

        async with aflow.Runtime(max_concurrency=64, limits={"payments": 4}) as rt:
            run = await rt.submit(order_saga(order_id))
            ...
            await run.result()

    ``max_concurrency`` and ``limits`` are shared by every run of the runtime.
    The last ``keep_finished`` finished runs stay reachable through :meth:`get`.
    ``workflows`` (``@aflow.workflow`` functions, or module names imported on
    entry) narrows what :meth:`resume` and recovery may rebuild; by default any
    workflow this process registered by importing it. A module a stored run
    names is never imported because the store says so.
    On exit the runtime waits for its runs (up to ``shutdown_timeout`` seconds,
    if given); then, or at once when it is left because of an exception or a
    cancellation (a deploy stopping the service), it stops what is left. With a
    store it *releases* them (``on_shutdown="release"``, the default there):
    they stop at a step boundary, nothing is reverted, and any process with the
    store takes them up at once (their result raises
    :class:`aflow.errors.RunReleased` here). Without a store, or with
    ``on_shutdown="cancel"``, it cancels them: they unwind.
    """

    __slots__ = (
        "_alive",
        "_capacity",
        "_clock",
        "_closing",
        "_defaults",
        "_followers",
        "_history",
        "_keep",
        "_lease",
        "_looking",
        "_max_recoveries",
        "_on_shutdown",
        "_owner",
        "_recover",
        "_runs",
        "_serializer",
        "_shutdown_timeout",
        "_store",
        "_store_spec",
        "_tg",
        "_threads",
        "_token",
        "_warned",
        "_workflow_modules",
        "_workflows",
    )

    def __init__(
        self,
        *,
        max_concurrency: int | None = None,
        limits: Mapping[str, int] | None = None,
        threads: int = DEFAULT_THREADS,
        shutdown_timeout: float | None = None,
        keep_finished: int = 1000,
        on_error: str = "revert",
        timeout: float | None = None,
        compensation_timeout: float | None = None,
        clock: Clock | None = None,
        store: str | Store | None = None,
        serializer: str | Serializer = "json",
        recover: bool = False,
        lease: float = DEFAULT_LEASE,
        workflows: Iterable[Workflow[..., Any] | str] | None = None,
        on_shutdown: str | None = None,
        max_recoveries: int = 5,
    ) -> None:
        #: what a run submitted here gets for every option its call leaves unset
        self._defaults = RunOptions(
            max_concurrency=max_concurrency,
            limits=limits,
            on_error=on_error,
            timeout=timeout,
            compensation_timeout=compensation_timeout,
            clock=clock,
        )
        #: the runtime's own time: heartbeats, recovery, following another process's run
        self._clock = clock
        if not lease > 0:
            raise ValueError(f"lease must be a number of seconds > 0, got {lease!r}")
        self._lease = lease
        self._alive = anyio.CancelScope()
        self._looking = anyio.CancelScope()
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._store_spec = store
        self._store: Store | None = None
        self._serializer: Serializer = serializer_for(serializer)
        self._recover = recover
        if not (isinstance(max_recoveries, int) and max_recoveries >= 0):
            raise ValueError(f"max_recoveries must be an int >= 0, got {max_recoveries!r}")
        self._max_recoveries = max_recoveries
        self._warned: set[tuple[str, str]] = set()
        self._closing = False
        if on_shutdown not in (None, "release", "cancel"):
            raise ValueError(f"on_shutdown must be 'release' or 'cancel', got {on_shutdown!r}")
        if on_shutdown == "release" and store is None:
            raise ValueError("on_shutdown='release' needs a store: a run in memory cannot resume")
        self._on_shutdown = on_shutdown or ("release" if store is not None else "cancel")
        #: what resume() and recovery may rebuild: None for any workflow this process
        #: registered; else these workflows and those of these modules (imported on entry)
        self._workflows: frozenset[str] | None = None
        self._workflow_modules: tuple[str, ...] = ()
        if workflows is not None:
            chosen = list(workflows)
            for item in chosen:
                if not isinstance(item, (Workflow, str)):
                    raise TypeError(
                        f"workflows= takes @aflow.workflow functions and module names, got {item!r}"
                    )
            self._workflows = frozenset(w.path for w in chosen if isinstance(w, Workflow))
            self._workflow_modules = tuple(m for m in chosen if isinstance(m, str))
        self._keep = keep_finished
        self._history: OrderedDict[str, Run[Any]] = OrderedDict()
        self._threads = threads
        self._shutdown_timeout = shutdown_timeout
        self._tg: anyio.abc.TaskGroup | None = None
        #: the limits and threads every run of this runtime shares (built on entry)
        self._capacity: Capacity | None = None
        self._runs: dict[str, Run[Any]] = {}
        #: handles on runs another process drives (an idempotency key's), polled until they
        #: end, one per run id, with the scope that stops the polling
        self._followers: dict[str, tuple[Run[Any], anyio.CancelScope]] = {}
        self._token: contextvars.Token[Runtime] | None = None

    @classmethod
    def _owning_one_run(
        cls, options: RunOptions, store: str | Store, serializer: str | Serializer
    ) -> Runtime:
        """The runtime of ``aflow.run(store=...)``: its one run's options are its defaults,
        and the call owns the run (cancelling the call cancels the run). Its own time
        (heartbeats, recovery) stays the loop's: ``clock`` is the run's."""
        runtime = cls(store=store, serializer=serializer, on_shutdown="cancel")
        runtime._defaults = options
        return runtime

    def __repr__(self) -> str:
        state = "open" if self._tg is not None else "closed"
        return f"<Runtime {state} [{len(self.runs())} active runs]>"

    async def __aenter__(self) -> Runtime:
        if self._tg is not None:
            raise RuntimeError("this Runtime is already running")
        for module in self._workflow_modules:  # allowed by the application: imported now
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise DefinitionError(f"cannot import workflow module {module!r}: {exc}") from exc
        self._capacity = Capacity.of(self._defaults, anyio.CapacityLimiter(self._threads))
        spec = self._store_spec
        if spec is not None:
            store = open_store(spec) if isinstance(spec, str) else spec
            await store.open()
            self._store = store
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._token = CURRENT_RUNTIME.set(self)
        self._alive = anyio.CancelScope()
        self._looking = anyio.CancelScope()
        self._closing = False
        if self._store is not None:
            tg.start_soon(self._keep_alive, self._store, name="aflow runtime heartbeat")
            if self._recover:
                tg.start_soon(self._keep_recovering, name="aflow runtime recovery")
        if self._recover and self._store is not None:
            try:
                await self.recover()
            except BaseException as exc:
                await self.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        assert tg is not None
        self._closing = True  # recovery takes up nothing more here (what it lets go of)
        self._looking.cancel()
        try:
            for _, follower in self._followers.values():  # other processes' runs: stop watching
                follower.cancel()
            if exc is None:
                try:
                    if self._shutdown_timeout is not None:
                        with anyio.move_on_after(self._shutdown_timeout):
                            while self._runs:
                                await next(iter(self._runs.values())).wait()
                        self._stop_runs()
                    while self._runs:  # a follower may have resumed one meanwhile
                        await next(iter(self._runs.values())).wait()
                except BaseException:  # cancelled while waiting: a deploy stops the service
                    self._stop_runs()
                    raise
            else:
                self._stop_runs()
            self._alive.cancel()  # the heartbeat, once every run has ended
        finally:
            self._tg = None
            if self._token is not None:
                try:
                    CURRENT_RUNTIME.reset(self._token)
                except ValueError:  # exited in another context than it was entered in
                    pass
                self._token = None
            try:
                try:
                    handled = await tg.__aexit__(exc_type, exc, tb)
                except BaseExceptionGroup as group:
                    # the block's own exception, alone: let it out as itself (so
                    # `except DefinitionError:` around `async with Runtime()` works)
                    if exc is not None and group.split(lambda e: e is exc)[1] is None:
                        return False
                    raise
            finally:
                if self._store is not None and isinstance(self._store_spec, str):
                    with anyio.CancelScope(shield=True):
                        await self._store.close()
                self._store = None
        return handled

    def _stop_runs(self) -> None:
        """Shutting down: let go of durable runs (kept resumable, nothing undone), or
        cancel them (they unwind) with ``on_shutdown="cancel"`` or without a store."""
        for active in self.runs():
            execution = active._execution
            if self._on_shutdown == "release" and execution._journal is not None:
                execution.release()
            else:
                execution.cancel()

    @overload
    async def submit(
        self,
        workflow: Canvas[R],
        /,
        *,
        run_id: str | None = None,
        on_event: EventListener | None = None,
        on_error: str | None = None,
        timeout: float | None = None,
        compensation_timeout: float | None = None,
        clock: Clock | None = None,
        idempotency_key: str | None = None,
        params: Mapping[str, Any] | None = None,
        reuse: Mapping[str, Any] | None = None,
    ) -> Run[R]: ...
    @overload
    async def submit(
        self,
        workflow: Graph | object,
        /,
        *,
        run_id: str | None = None,
        on_event: EventListener | None = None,
        on_error: str | None = None,
        timeout: float | None = None,
        compensation_timeout: float | None = None,
        clock: Clock | None = None,
        idempotency_key: str | None = None,
        params: Mapping[str, Any] | None = None,
        reuse: Mapping[str, Any] | None = None,
        **workflow_params: Any,
    ) -> Run[Any]: ...
    async def submit(
        self,
        workflow: object,
        /,
        *,
        run_id: str | None = None,
        on_event: EventListener | None = None,
        on_error: str | None = None,
        timeout: float | None = None,
        compensation_timeout: float | None = None,
        clock: Clock | None = None,
        idempotency_key: str | None = None,
        params: Mapping[str, Any] | None = None,
        reuse: Mapping[str, Any] | None = None,
        **workflow_params: Any,
    ) -> Run[Any]:
        """Start a run in the runtime and return its handle at once.

        ``workflow`` is a canvas, a flow or a graph, or an ``@aflow.workflow``
        called with ``params`` / keyword parameters. The workflow is compiled
        and validated here, so a malformed one raises before anything runs.

        With a durable store (``Runtime(store="sqlite:///runs.db")``) the
        workflow must be an ``@aflow.workflow`` (so any process can rebuild
        it); every node is checkpointed. ``idempotency_key``: a second submit
        with the same key returns the same run and runs nothing twice (a
        finished run's handle holds its stored result).

        ``reuse`` maps node keys to outputs the run takes instead of running
        those nodes (dflow's ``reuse_step``); they are recorded ``reused``.
        """
        if self._tg is None:
            raise RuntimeError("submit() needs an entered Runtime: use 'async with Runtime()'")
        if run_id is not None and (run_id in self._runs or run_id in self._history):
            raise RunExists(run_id, "this runtime")
        all_params = {**(params or {}), **workflow_params}
        store = self._store
        if isinstance(workflow, Workflow):
            graph = workflow.build(all_params)
        elif all_params:
            raise TypeError("parameters can only be given to an @aflow.workflow")
        else:
            if store is not None:
                raise DefinitionError(
                    f"a durable run needs a workflow it can rebuild: decorate the function that "
                    f"builds {type(workflow).__name__} with @aflow.workflow and submit that "
                    f"(the store is {store.url})"
                )
            graph = compile(workflow)
        taken = self._reused(graph, reuse) if reuse else None
        restore: tuple[dict[str, NodeRecord], bool, None, dict[str, str]] | None = (
            (taken, False, None, {}) if taken else None
        )
        options = self._defaults.merged(
            on_event=on_event,
            on_error=on_error,
            timeout=timeout,
            compensation_timeout=compensation_timeout,
            clock=clock,
        )
        if store is None:
            identity = None
            if idempotency_key is not None:
                identity = _identity(workflow, all_params, graph)
                for active in (*self._runs.values(), *self._history.values()):
                    if active._key is not None and active._key[0] == idempotency_key:
                        _same_work(active.id, idempotency_key, active._key[1], identity)
                        return active
            handle = self._start(graph, run_id, None, options, restore)
            if idempotency_key is not None and identity is not None:
                handle._key = (idempotency_key, identity)
            return handle
        assert isinstance(workflow, Workflow)
        why = workflow.rebuildable
        if why is not None:
            raise DefinitionError(
                f"workflow {workflow.path} cannot be rebuilt by another process: {why}"
            )
        now = wall_time(options.clock)
        record = RunRecord(
            run_id=run_id or uuid.uuid4().hex,
            workflow=workflow.path,
            params=workflow.dump_params(all_params, self._serializer),
            fingerprint=fingerprint(graph),
            status="pending",
            idempotency_key=idempotency_key,
            created_at=now,
            updated_at=now,
            serializer=self._serializer.name,
            owner=self._owner,
            heartbeat=now + self._lease,
            options=dump_options(options, now),
        )
        stored, created = await store.create_run(record)
        if not created:
            assert idempotency_key is not None
            if stored.workflow != workflow.path or stored.params != record.params:
                # (parameters that differ as text may still be equal: order, NaN aside)
                existing = (stored.workflow, self._serializer_of(stored).loads(stored.params))
                _same_work(stored.run_id, idempotency_key, existing, (workflow.path, all_params))
            return await self._attach(stored, graph, options)
        if taken:
            await store.write_nodes(stored.run_id, list(taken.values()))
        return self._start(
            graph, stored.run_id, Journal(store, stored.run_id, self._serializer), options, restore
        )

    def _reused(
        self, graph: Graph, reuse: Mapping[str, Any], serializer: Serializer | None = None
    ) -> dict[str, NodeRecord]:
        """Records of reused outputs: serialised for a store (with ``serializer``, else the
        runtime's), as they are without one."""
        taken: dict[str, NodeRecord] = {}
        for key, value in reuse.items():
            graph.node(key)  # KeyError naming the known keys
            if self._store is not None:
                value = (serializer or self._serializer).dumps(value, task=key)
            elif value is None:
                raise ValueError(f"cannot reuse node {key!r}: its output is None")
            taken[key] = NodeRecord(key, "reused", 1, value)
        return taken

    def _start(
        self,
        graph: Graph,
        run_id: str | None,
        journal: Journal | None,
        options: RunOptions,
        restore: tuple[Mapping[str, NodeRecord], bool, str | None, Mapping[str, str]] | None = None,
        deadline: float | None = None,
    ) -> Run[Any]:
        execution = self._execution(graph, run_id, journal, options)
        execution.release_on_interrupt = journal is not None and self._on_shutdown == "release"
        if deadline is not None:
            execution.keep_deadline(deadline)
        if restore is not None:
            # the run's own serializer reads its records
            records, unwinding, trigger, failed_before = restore
            decode = journal.serializer.loads if journal is not None else _as_is
            execution.restore(
                records, decode, unwinding=unwinding, trigger=trigger, failed_before=failed_before
            )
        handle: Run[Any] = Run(execution)
        self._runs[handle.id] = handle
        assert self._tg is not None
        self._tg.start_soon(self._drive, handle, name=f"aflow run {handle.id[:8]}")
        return handle

    def _execution(
        self,
        graph: Graph,
        run_id: str | None,
        journal: Journal | None = None,
        options: RunOptions | None = None,
    ) -> Execution:
        """An execution of ``graph`` with this runtime's limits and threads, and its defaults
        unless ``options`` are given: every handle it gives out is built here, one on a
        finished run too (issue 14)."""
        return new_execution(
            graph, options or self._defaults, self._capacity, run_id=run_id, journal=journal
        )

    async def _attach(self, stored: RunRecord, graph: Graph, options: RunOptions) -> Run[Any]:
        """The run an idempotency key names: live here, finished, or left by a dead process."""
        active = self._runs.get(stored.run_id) or self._history.get(stored.run_id)
        following = self._followers.get(stored.run_id)
        if following is not None:
            return following[0]
        if active is not None:
            stopped_by_store = active._execution._store_error is not None
            if not (stopped_by_store and stored.status not in _FINISHED):
                return active
            return await self.resume(stored.run_id)  # its store failed here; it works again
        if stored.status in _FINISHED:
            value = None
            error: BaseException | None = None
            if stored.result is not None:
                value = self._serializer_of(stored).loads(stored.result)
            if stored.status != "succeeded":
                error = RunError(stored.run_id, f"the run ended {stored.status}: {stored.error}")
            execution = self._execution(graph, stored.run_id)
            execution.status = RunStatus(stored.status)
            return Run._finished_in_store(execution, value, error)
        # pending or running in the store, but not here: another process has it, or had it
        # and died; wait for it to end there (recovery resumes a dead one).
        return await self._follow(stored, graph)

    async def _follow(self, stored: RunRecord, graph: Graph) -> Run[Any]:
        """A handle on a run another process drives: it follows the run's status in the
        store. If that process dies (its lease runs out) this runtime resumes the run
        and the handle follows its own execution; on exit, following stops."""
        store = self._store
        assert store is not None
        assert self._tg is not None
        execution = self._execution(graph, stored.run_id)
        execution.status = RunStatus.RUNNING
        handle: Run[Any] = Run(execution)
        scope = anyio.CancelScope()
        self._followers[stored.run_id] = (handle, scope)

        async def cancel_there() -> None:
            await store.request_cancel(stored.run_id, "RunCancelled: cancelled by a follower")

        handle._remote_cancel = cancel_there

        def end(status: str, error: BaseException | None, value: Any = None) -> None:
            handle._execution.status = RunStatus(status)
            handle._value = value
            handle._error = error
            handle._finished.set()

        async def step() -> bool:
            """One look at the store; True once the run has ended."""
            record = await store.get_run(stored.run_id)
            if record.status in _FINISHED:
                value = None
                if record.result is not None:
                    value = self._serializer_of(record).loads(record.result)
                error = None
                if record.status != "succeeded":
                    error = RunError(
                        record.run_id, f"the run ended {record.status}: {record.error}"
                    )
                end(record.status, error, value)
                return True
            if record.status == PARKED:
                reason = "recovery parked it: it kept killing the processes that took it up"
                end("failed", RunError(record.run_id, reason))
                return True
            if (record.heartbeat or 0) >= wall_time(self._clock):
                return False  # its process is alive
            try:
                resumed = await self._resume(record.run_id, automatic=True)
            except ResumeMismatch as exc:
                if "lease holds" in exc.reason:
                    return False  # another process took it first: keep following
                end("failed", exc)  # it cannot be resumed (its workflow changed...)
                return True
            handle._remote_cancel = None
            handle._execution = resumed._execution  # cancel() and steps() reach it now
            with anyio.CancelScope(shield=True):  # it runs here now: exit waits for it anyway
                await resumed.wait()
            end(resumed.status.value, resumed._error, resumed._value)
            return True

        async def poll() -> None:
            try:
                with scope:
                    while True:
                        try:
                            if await step():
                                return
                        except Exception as exc:  # a store hiccup: the next look tries again
                            warn("aflow_follow_failed", run_id=stored.run_id, error=repr(exc))
                        await (self._clock or SYSTEM_CLOCK).sleep(0.05)
            finally:
                self._followers.pop(stored.run_id, None)
                if not handle._finished.is_set():
                    end(
                        "cancelled",
                        RunCancelled(handle.id, "the runtime closed while following the run"),
                    )

        self._tg.start_soon(poll, name=f"aflow follow {stored.run_id[:8]}")
        return handle

    async def resume(self, run_id: str) -> Run[Any]:
        """Take up a run a dead process left ``running`` (or ``reverting``) in the store.

        The graph is rebuilt from the run's registered workflow and parameters
        (:class:`~aflow.stores.ResumeMismatch` if it changed); nodes whose results
        are on record are not run again, nodes that were running are run again
        (at-least-once), and an interrupted compensation goes on where it stopped.
        A run recovery parked (it kept killing the processes that took it up) is
        resumed too: this is how a person takes it up again.
        """
        return await self._resume(run_id, automatic=False)

    async def _resume(self, run_id: str, *, automatic: bool) -> Run[Any]:
        store = self._require_store("resume")
        if self._tg is None:
            raise RuntimeError("resume() needs an entered Runtime: use 'async with Runtime()'")
        active = self._runs.get(run_id)
        if active is not None and not active._finished.is_set():
            return active
        record = await store.get_run(run_id)
        if record.status in _FINISHED:
            raise ResumeMismatch(run_id, f"it has finished already ({record.status})")
        # What a row says is checked before the run is claimed: a bad row stays as it is.
        graph = self._rebuild(record)
        options, deadline = stored_options(record, self._defaults)
        serializer = self._serializer_of(record)
        wall = wall_time(self._clock)
        # a person's resume gives the run a fresh count of recoveries (see _park)
        if not await store.claim(run_id, self._owner, self._lease, now=wall, fresh=not automatic):
            raise ResumeMismatch(
                run_id, f"a live process runs it ({record.owner}); its lease holds"
            )
        try:
            if automatic:
                record = await store.get_run(run_id)
                if record.recoveries > self._max_recoveries:
                    await self._park(record)
            records = await store.load_nodes(run_id)
            failed_before: dict[str, str] = {}
            if any(node.state == "revert_failed" for node in records.values()):
                for transition in await store.load_history(run_id):  # oldest first
                    if transition.state == "failed" and transition.error is not None:
                        failed_before[transition.key] = transition.error
            journal = Journal(store, run_id, serializer)
            # A run cancelled while its process was gone is unwound at once; what was
            # running when the process died counts as cancelled mid-way (its revert
            # runs), as it would have in the process itself. A parked run with a stored
            # cause was compensating when recovery parked it.
            unwinding = record.status in ("reverting", "cancelling") or (
                record.status == PARKED and record.error is not None
            )
            if unwinding:  # (a compensation has its own deadline, and its own cause)
                deadline = None
            active = self._runs.get(run_id)
            if active is not None:  # resumed by another task of this runtime meanwhile
                return active
            restore = (records, unwinding, record.error, failed_before)
            handle = self._start(graph, run_id, journal, options, restore, deadline)
        except BaseException:  # (a checkpoint that cannot be read...): let go of it at once
            with anyio.CancelScope(shield=True):
                try:
                    await store.release(run_id, self._owner)
                except Exception as exc:  # its lease lapses instead
                    warn("aflow_release_failed", run_id=run_id, error=repr(exc))
            raise
        if record.status == "cancelling":
            handle._execution.cancel()
        return handle

    async def recover(self) -> list[Run[Any]]:
        """Resume every unfinished run whose process is gone (its lease ran out).

        A run that cannot be resumed (its workflow changed or cannot be imported,
        its records cannot be read) is left as it is in the store and logged as
        a warning; the others are resumed.
        """
        store = self._require_store("recover")
        found: list[Run[Any]] = []
        now = wall_time(self._clock)
        for status in ("running", "reverting", "pending", "cancelling"):
            for record in await store.list_runs(status, limit=10_000):
                if record.run_id in self._runs or self._closing:
                    continue
                if record.owner is not None and (record.heartbeat or 0) >= now:
                    continue  # its owner's lease holds: the process is alive
                try:
                    found.append(await self._resume(record.run_id, automatic=True))
                except ResumeMismatch as exc:  # claimed by another process first, or changed
                    self._warn_once("aflow_recover_skipped", run_id=record.run_id, reason=str(exc))
                except Exception as exc:  # one broken run must not keep the others down
                    self._warn_once(
                        "aflow_recover_failed",
                        run_id=record.run_id,
                        workflow=record.workflow,
                        error=f"{type(exc).__name__}: {exc}",
                    )
        return found

    async def _park(self, record: RunRecord) -> None:
        """Recovery took this run over more than ``max_recoveries`` times, each from a
        process that died holding it: it is parked (recovery leaves it alone), for a
        person to resume or cancel."""
        store = self._require_store("recover")
        await store.set_status(record.run_id, PARKED)  # (its stored cause stays)
        await store.release(record.run_id, self._owner)
        warn(
            "aflow_run_parked",
            run_id=record.run_id,
            workflow=record.workflow,
            recoveries=record.recoveries,
        )
        raise ResumeMismatch(
            record.run_id,
            f"parked: recovered {record.recoveries} times, each time from a process that "
            f"died holding it (max_recoveries={self._max_recoveries}); resume it by hand "
            "(aflow resume) once the cause is fixed, or cancel it (aflow cancel)",
        )

    def _warn_once(self, event: str, **fields: Any) -> None:
        """A run recovery keeps skipping is logged once by this runtime, not every tick."""
        key = (str(fields.get("run_id")), event)
        if key not in self._warned:
            self._warned.add(key)
            warn(event, **fields)

    async def fork(
        self, run_id: str, reuse: Mapping[str, Any] | Iterable[str], *, run_key: str | None = None
    ) -> Run[Any]:
        """A new run of an earlier run's workflow that takes the ``reuse`` nodes' outputs from it.

        ``reuse`` lists node keys (their stored outputs are taken as they are) or
        maps keys to new outputs (dflow's ``reuse_step`` with a modified value).
        """
        store = self._require_store("fork")
        record = await store.get_run(run_id)
        graph = self._rebuild(record)
        old = await store.load_nodes(run_id)
        serializer = self._serializer_of(record)
        overrides = dict(reuse) if isinstance(reuse, Mapping) else dict.fromkeys(reuse, _KEEP)
        new_values = {k: v for k, v in overrides.items() if v is not _KEEP}
        taken = self._reused(graph, new_values, serializer)
        for key, value in overrides.items():
            if value is _KEEP:
                graph.node(key)  # KeyError naming the known keys
                found = old.get(key)
                if found is None or found.state not in ("succeeded", "reused"):
                    raise ResumeMismatch(run_id, f"node {key!r} has no stored output to reuse")
                taken[key] = NodeRecord(key, "reused", 1, found.result)
        now = wall_time(self._clock)
        options, _ = stored_options(record, self._defaults)  # (a new run: its deadline starts now)
        new = RunRecord(
            run_id=uuid.uuid4().hex,
            workflow=record.workflow,
            params=record.params,
            fingerprint=record.fingerprint,
            status="pending",
            idempotency_key=run_key,
            created_at=now,
            updated_at=now,
            serializer=record.serializer,
            owner=self._owner,
            heartbeat=now + self._lease,
            options=dump_options(options, now),  # a new run: its deadline starts now
        )
        stored, created = await store.create_run(new)
        if not created:  # the key names another run: never write into it
            raise ValueError(f"run_key {run_key!r} is used by run {stored.run_id} already")
        await store.write_nodes(stored.run_id, list(taken.values()))
        journal = Journal(store, stored.run_id, serializer)
        return self._start(graph, stored.run_id, journal, options, (taken, False, None, {}))

    def _workflow_of(self, record: RunRecord) -> Workflow[..., Any]:
        """The workflow a stored run names, if this runtime may rebuild it: registered by
        this process (and, with ``workflows=``, one of those). Never imports what a row
        names (issue 14)."""
        try:
            workflow = registered_workflow(record.workflow, self._workflow_modules)
        except DefinitionError as exc:
            raise ResumeMismatch(record.run_id, str(exc)) from exc
        allowed = self._workflows
        if (
            allowed is not None
            and workflow.path not in allowed
            and workflow.fn.__module__ not in self._workflow_modules
        ):
            raise ResumeMismatch(
                record.run_id, f"workflow {workflow.path} is not among this runtime's workflows="
            )
        return workflow

    def _rebuild(self, record: RunRecord) -> Graph:
        workflow = self._workflow_of(record)
        params = self._serializer_of(record).loads(record.params)
        graph = workflow.build(params)
        if fingerprint(graph) != record.fingerprint:
            raise ResumeMismatch(
                record.run_id,
                f"workflow {record.workflow} now builds a different graph than when the run began",
            )
        return graph

    def _serializer_of(self, record: RunRecord) -> Serializer:
        """The serializer a run was written with. A pickle run is read only by a runtime
        that opted into pickle: loading a pickle runs code."""
        mine = self._serializer
        if record.serializer == mine.name:
            return mine
        if record.serializer == "json":
            return serializer_for("json")
        raise ResumeMismatch(
            record.run_id,
            f"it was written with serializer {record.serializer!r} and this runtime uses "
            f"{mine.name!r}; only a Runtime(serializer={record.serializer!r}) reads it",
        )

    def _require_store(self, what: str) -> Store:
        if self._store is None:
            raise RuntimeError(
                f"{what}() needs a durable store: Runtime(store='sqlite:///runs.db')"
            )
        return self._store

    @property
    def store(self) -> Store | None:
        """The runtime's durable store (``None``: runs live in memory only)."""
        return self._store

    async def _drive(self, handle: Run[Any]) -> None:
        try:
            await handle._drive()
        finally:
            execution = handle._execution
            if execution._releasing and self._store is not None:
                try:  # any process may take it up at once, without waiting for the lease
                    with anyio.CancelScope(shield=True):
                        await self._store.release(handle.id, self._owner)
                except Exception as exc:  # its lease lapses instead
                    warn("aflow_release_failed", run_id=handle.id, error=repr(exc))
            self._runs.pop(handle.id, None)
            if self._keep > 0:
                self._history[handle.id] = handle
                while len(self._history) > self._keep:
                    self._history.popitem(last=False)

    async def _keep_alive(self, store: Store) -> None:
        """Say this process still runs its durable runs; obey `aflow cancel` for them.

        A run this process no longer owns stops here (:class:`~aflow.stores.LeaseLost`):
        another process took it over, or the heartbeats failed for longer than the
        lease, after which recovery elsewhere may take it at any moment.
        """
        clock = self._clock or SYSTEM_CLOCK
        until: dict[str, float] = {}  # run id -> when its lease runs out, as far as we know
        with self._alive:
            while True:
                await clock.sleep(self._lease / 4)
                driven = {
                    run_id: active._execution
                    for run_id, active in self._runs.items()
                    if active._execution._journal is not None and not active._execution.closed
                }
                now = clock.now()
                for run_id in driven:
                    until.setdefault(run_id, now + self._lease)  # claimed or created just now
                for run_id in list(until):
                    if run_id not in driven:
                        del until[run_id]
                try:
                    renewed = await store.heartbeat(
                        self._owner, self._lease, list(driven), now=wall_time(clock)
                    )
                except Exception as exc:  # the next tick tries again; the runs go on meanwhile
                    warn("aflow_heartbeat_failed", store=store.url, error=repr(exc))
                    for run_id, execution in driven.items():
                        if clock.now() > until[run_id]:
                            reason = f"its heartbeats failed for over {self._lease} s ({exc!r})"
                            execution._store_failed(LeaseLost(run_id, reason))
                    continue
                expires = now + self._lease
                for run_id, execution in driven.items():
                    status = renewed.get(run_id)
                    if status is None:
                        if not execution.closed:  # (a run that just ended is not ours to stop)
                            reason = "another process owns it now"
                            execution._store_failed(LeaseLost(run_id, reason))
                        continue
                    until[run_id] = expires
                    if status == "cancelling":
                        execution.cancel()

    async def _keep_recovering(self) -> None:
        """Look for runs whose process died every quarter of the lease, so one is taken
        up within its lease plus a quarter (issue 14). A task of its own: a slow look
        must not hold up the heartbeats that keep this process's own leases."""
        clock = self._clock or SYSTEM_CLOCK
        url = self._require_store("recover").url
        with self._looking:  # (cancelled as the runtime begins to close)
            while True:
                await clock.sleep(self._lease / 4)
                try:
                    await self.recover()
                except Exception as exc:  # the store hiccupped: the next tick looks again
                    warn("aflow_recover_failed", store=url, error=repr(exc))

    @overload
    async def run(self, workflow: Canvas[R]) -> R: ...
    @overload
    async def run(self, workflow: Graph | object) -> Any: ...
    async def run(self, workflow: object) -> Any:
        """Submit a workflow and wait for its value; cancelling the caller cancels the run."""
        return await _outcome(await self.submit(workflow))

    def runs(self) -> list[Run[Any]]:
        """The runs that have not finished yet."""
        return list(self._runs.values())

    def get(self, run_id: str) -> Run[Any]:
        """A run by id: an active one, or one of the last ``keep_finished`` finished ones."""
        found = self._runs.get(run_id) or self._history.get(run_id)
        if found is None:
            raise KeyError(f"no run {run_id!r} in this runtime (active or recently finished)")
        return found
