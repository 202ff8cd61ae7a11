"""Entry points: ``aflow.run``, ``aflow.run_sync``, :class:`Runtime` and the :class:`Run` handle."""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final, overload

import anyio
import anyio.abc

from .._events import Event, EventListener
from .._exceptions import RunCancelled, RunNotFinished
from .._failure import Failure
from .._graph import Graph, NodeKind, compile
from ._clock import Clock
from ._limits import Limit
from ._scheduler import Execution
from ._states import NodeState, RunStatistics, RunStatus, StepInfo
from ._threads import DEFAULT_THREADS

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectSendStream

    from .._canvas import Canvas

__all__ = ["Run", "Runtime", "run", "run_sync"]

R = TypeVar("R")


def _make_limits(limits: Mapping[str, int] | None) -> dict[str, Limit]:
    return {name: Limit(name, total) for name, total in (limits or {}).items()}


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

    Example::

        total = await aflow.run(aflow.chord(fetch.s(u) for u in urls), merge.s(),
                                max_concurrency=16)
    """
    execution = Execution(
        compile(workflow),
        run_id=run_id,
        max_concurrency=max_concurrency,
        limits=_make_limits(limits),
        listeners=(on_event,) if on_event is not None else (),
        on_error=on_error,
        timeout=timeout,
        compensation_timeout=compensation_timeout,
        clock=clock,
    )
    return await execution.execute()


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
    call = functools.partial(
        run,
        workflow,
        max_concurrency=max_concurrency,
        limits=limits,
        on_event=on_event,
        run_id=run_id,
        on_error=on_error,
        timeout=timeout,
        compensation_timeout=compensation_timeout,
        clock=clock,
    )
    return anyio.run(call, backend="asyncio", backend_options={"use_uvloop": use_uvloop})


@final
class Run(Generic[R]):
    """A handle on a run submitted to a :class:`Runtime`.

    Get one from ``await runtime.submit(workflow)``; it is never constructed
    directly. The group-result methods (``successful()``, ``failed()``,
    ``ready()``...) follow Celery's ``GroupResult`` and count task nodes.
    """

    __slots__ = ("_error", "_execution", "_finished", "_streams", "_traceback", "_value")

    def __init__(self, execution: Execution) -> None:
        self._execution = execution
        self._finished = anyio.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._traceback: TracebackType | None = None
        self._streams: list[MemoryObjectSendStream[Event]] = []

    async def _drive(self) -> None:
        try:
            self._value = await self._execution.execute()
        except Exception as exc:  # stored for result(); the runtime must not crash
            self._error = exc
            self._traceback = exc.__traceback__
        except BaseException:  # the runtime is shutting down: record, then re-raise
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
        """Cancel the run and wait until it has stopped."""
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
    On exit the runtime waits for its runs (up to ``shutdown_timeout`` seconds,
    if given, then cancels what is left); leaving because of an exception
    cancels them at once.
    """

    __slots__ = (
        "_clock",
        "_compensation_timeout",
        "_global",
        "_history",
        "_keep",
        "_limits",
        "_max_concurrency",
        "_on_error",
        "_runs",
        "_shutdown_timeout",
        "_tg",
        "_thread_limiter",
        "_threads",
        "_timeout",
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
    ) -> None:
        self._on_error = on_error
        self._timeout = timeout
        self._compensation_timeout = compensation_timeout
        self._clock = clock
        self._max_concurrency = max_concurrency
        self._keep = keep_finished
        self._history: OrderedDict[str, Run[Any]] = OrderedDict()
        self._limits = _make_limits(limits)
        self._global = (
            (Limit("max_concurrency", max_concurrency),) if max_concurrency is not None else ()
        )
        self._threads = threads
        self._shutdown_timeout = shutdown_timeout
        self._tg: anyio.abc.TaskGroup | None = None
        self._thread_limiter: anyio.CapacityLimiter | None = None
        self._runs: dict[str, Run[Any]] = {}

    def __repr__(self) -> str:
        state = "open" if self._tg is not None else "closed"
        return f"<Runtime {state} [{len(self.runs())} active runs]>"

    async def __aenter__(self) -> Runtime:
        if self._tg is not None:
            raise RuntimeError("this Runtime is already running")
        self._thread_limiter = anyio.CapacityLimiter(self._threads)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        assert tg is not None
        try:
            if exc is None and self._shutdown_timeout is not None:
                with anyio.move_on_after(self._shutdown_timeout):
                    for active in self.runs():
                        await active.wait()
                for active in self.runs():
                    active._execution.cancel()
        finally:
            self._tg = None
            handled = await tg.__aexit__(exc_type, exc, tb)
        return handled

    @overload
    async def submit(
        self,
        workflow: Canvas[R],
        *,
        run_id: str | None = None,
        on_event: EventListener | None = None,
        on_error: str | None = None,
        timeout: float | None = None,
        compensation_timeout: float | None = None,
        clock: Clock | None = None,
    ) -> Run[R]: ...
    @overload
    async def submit(
        self,
        workflow: Graph | object,
        *,
        run_id: str | None = None,
        on_event: EventListener | None = None,
        on_error: str | None = None,
        timeout: float | None = None,
        compensation_timeout: float | None = None,
        clock: Clock | None = None,
    ) -> Run[Any]: ...
    async def submit(
        self,
        workflow: object,
        *,
        run_id: str | None = None,
        on_event: EventListener | None = None,
        on_error: str | None = None,
        timeout: float | None = None,
        compensation_timeout: float | None = None,
        clock: Clock | None = None,
    ) -> Run[Any]:
        """Start a run in the runtime and return its handle at once.

        The workflow is compiled and validated here, so a malformed workflow
        raises to the submitter before anything runs.
        """
        if self._tg is None:
            raise RuntimeError("submit() needs an entered Runtime: use 'async with Runtime()'")
        if run_id is not None and (run_id in self._runs or run_id in self._history):
            raise ValueError(f"a run with id {run_id!r} is already active in this runtime")
        execution = Execution(
            compile(workflow),
            run_id=run_id,
            limits=self._limits,
            global_limits=self._global,
            thread_limiter=self._thread_limiter,
            listeners=(on_event,) if on_event is not None else (),
            on_error=on_error or self._on_error,
            timeout=timeout if timeout is not None else self._timeout,
            compensation_timeout=(
                compensation_timeout
                if compensation_timeout is not None
                else self._compensation_timeout
            ),
            clock=clock or self._clock,
        )
        handle: Run[Any] = Run(execution)
        self._runs[handle.id] = handle
        self._tg.start_soon(self._drive, handle, name=f"aflow run {handle.id[:8]}")
        return handle

    async def _drive(self, handle: Run[Any]) -> None:
        try:
            await handle._drive()
        finally:
            self._runs.pop(handle.id, None)
            if self._keep > 0:
                self._history[handle.id] = handle
                while len(self._history) > self._keep:
                    self._history.popitem(last=False)

    @overload
    async def run(self, workflow: Canvas[R]) -> R: ...
    @overload
    async def run(self, workflow: Graph | object) -> Any: ...
    async def run(self, workflow: object) -> Any:
        """Submit a workflow and wait for its value; cancelling the caller cancels the run."""
        handle = await self.submit(workflow)
        try:
            return await handle.result()
        except anyio.get_cancelled_exc_class():
            # Cancelling the awaiter cancels the run and waits for it to stop, then re-raises.
            handle._execution.cancel()
            with anyio.CancelScope(shield=True):
                await handle.wait()
            raise

    def runs(self) -> list[Run[Any]]:
        """The runs that have not finished yet."""
        return list(self._runs.values())

    def get(self, run_id: str) -> Run[Any]:
        """A run by id: an active one, or one of the last ``keep_finished`` finished ones."""
        found = self._runs.get(run_id) or self._history.get(run_id)
        if found is None:
            raise KeyError(f"no run {run_id!r} in this runtime (active or recently finished)")
        return found
