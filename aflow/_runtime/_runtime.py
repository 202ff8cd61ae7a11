"""The :class:`Runtime`: owns runs that outlive the code that submitted them.

It holds the runs of this process (active, and the last ``keep_finished``
finished), the limits and threads they share (its :class:`~._options.Capacity`)
and the defaults of their options; it starts each run in its task group and
stops what is left when it closes. What a store adds (recording, idempotency
across processes, resume, fork, recovery, leases) is its
:class:`~._durable.Durability`.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, final, overload

import anyio
import anyio.abc

from .._events import EventListener
from .._exceptions import AflowError, DefinitionError, RunExists, RunNotFound
from .._graph import Graph, compile
from .._serialize import Serializer
from .._workflow import WorkflowBuilder, built_by, fingerprint
from ..executors._base import Executor
from ..stores._base import NodeRecord, Store
from ._clock import Clock
from ._durable import Durability
from ._handle import Run, outcome
from ._identity import identity, same_work
from ._journal import Journal
from ._leases import DEFAULT_LEASE
from ._options import Capacity, RunOptions, new_execution
from ._rebuild import Rebuilder
from ._scheduler import Execution
from ._threads import DEFAULT_THREADS
from ._waits import wait_store

if TYPE_CHECKING:
    from .._canvas import Canvas
    from ..ops._workflow import Workflow
    from ..patterns._flow import Flow
    from ._report import RunReport

__all__ = ["CURRENT_RUNTIME", "DEFAULT_LEASE", "Runtime"]

R = TypeVar("R")

#: The innermost entered Runtime of this context (``aflow.ops.Workflow.submit()`` uses it).
CURRENT_RUNTIME: contextvars.ContextVar[Runtime] = contextvars.ContextVar("aflow_runtime")


def _as_is(value: Any) -> Any:
    return value


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
        "_capacity",
        "_clock",
        "_closing",
        "_defaults",
        "_durable",
        "_history",
        "_in_callers",
        "_interrupt",
        "_keep",
        "_loop",
        "_on_shutdown",
        "_run_tasks",
        "_runs",
        "_shutdown_timeout",
        "_tg",
        "_threads",
        "_token",
        "_unload_waits",
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
        workflows: Iterable[WorkflowBuilder[..., Any] | str] | None = None,
        on_shutdown: str | None = None,
        max_recoveries: int = 5,
        poll: float = 1.0,
        executor: str | Executor | None = None,
    ) -> None:
        #: what a run submitted here gets for every option its call leaves unset
        self._defaults = RunOptions(
            max_concurrency=max_concurrency,
            limits=limits,
            on_error=on_error,
            timeout=timeout,
            compensation_timeout=compensation_timeout,
            clock=clock,
            executor=executor,
        )
        #: the runtime's own time: heartbeats, recovery, following another process's run
        self._clock = clock
        self._durable = Durability(
            self,
            store,
            serializer,
            workflows,
            lease=lease,
            max_recoveries=max_recoveries,
            recover=recover,
            poll=poll,
        )
        if on_shutdown not in (None, "release", "cancel"):
            raise ValueError(f"on_shutdown must be 'release' or 'cancel', got {on_shutdown!r}")
        if on_shutdown == "release" and store is None:
            raise ValueError("on_shutdown='release' needs a store: a run in memory cannot resume")
        self._on_shutdown = on_shutdown or ("release" if store is not None else "cancel")
        self._closing = False
        self._keep = keep_finished
        self._runs: dict[str, Run[Any]] = {}
        #: the runs rt.run() drives in its callers' tasks (the rest are the task group's)
        self._in_callers: set[Run[Any]] = set()
        self._history: OrderedDict[str, Run[Any]] = OrderedDict()
        self._threads = threads
        self._shutdown_timeout = shutdown_timeout
        self._tg: anyio.abc.TaskGroup | None = None
        #: on asyncio, the submitted runs' tasks: plain tasks (an anyio task group's
        #: start_soon costs several times a whole short run); on trio, the task group's
        self._loop: asyncio.AbstractEventLoop | None = None
        self._run_tasks: set[asyncio.Task[None]] = set()
        #: a KeyboardInterrupt or SystemExit raised in one of those tasks: it stops the
        #: runtime's block and leaves its exit, as it would a task group's
        self._interrupt: BaseException | None = None
        #: the limits and threads every run of this runtime shares (built on entry)
        self._capacity: Capacity | None = None
        self._token: contextvars.Token[Runtime] | None = None
        #: a durable run whose nodes in flight all wait is unloaded (see _waits); not in
        #: aflow.run(store=...)'s runtime, whose one run its caller awaits
        self._unload_waits = True

    @classmethod
    def _owning_one_run(
        cls, options: RunOptions, store: str | Store, serializer: str | Serializer
    ) -> Runtime:
        """The runtime of ``aflow.run(store=...)``: its one run's options are its defaults,
        and the call owns the run (cancelling the call cancels the run). Its own time
        (heartbeats, recovery) stays the loop's: ``clock`` is the run's."""
        runtime = cls(store=store, serializer=serializer, on_shutdown="cancel")
        runtime._defaults = options
        runtime._unload_waits = False
        return runtime

    def __repr__(self) -> str:
        state = "open" if self._tg is not None else "closed"
        return f"<Runtime {state} [{len(self.runs())} active runs]>"

    @property
    def store(self) -> Store | None:
        """The runtime's durable store (``None``: runs live in memory only)."""
        return self._durable.store

    @property
    def _rebuilder(self) -> Rebuilder:
        """How this runtime reads a stored run (``aflow.ops`` reads its steps with it)."""
        return self._durable.rebuilder

    # --- entry and exit --------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        if self._tg is not None:
            raise RuntimeError("this Runtime is already running")
        durable = self._durable
        durable.rebuilder.import_modules()  # allowed by the application: imported now
        self._capacity = Capacity.of(self._defaults, anyio.CapacityLimiter(self._threads))
        await durable.open()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # trio
            self._loop = None
        self._token = CURRENT_RUNTIME.set(self)
        self._closing = False
        durable.start(tg)
        if durable.recovering and durable.store is not None:
            try:
                await durable.recover()
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
        durable = self._durable
        durable.stop_looking()  # (and other processes' runs: stop watching them)
        stopped = exc is not None
        try:
            try:
                if exc is None:
                    try:
                        await _let_runs_end(self)
                    except BaseException:
                        stopped = True
                        raise
                else:
                    self._stop_runs()
            finally:
                # What a task group does for its tasks: cancel them if the runtime is
                # left because of an exception (after _stop_runs() asked them to stop),
                # and wait for them; rt.run's runs unwind in their callers' tasks, waited
                # for the same way.
                with anyio.CancelScope(shield=True):
                    tasks = self._run_tasks
                    if stopped:
                        for task in tasks:
                            task.cancel()
                    if tasks:
                        await asyncio.wait(tasks)
                    for active in list(self._in_callers):
                        await active.wait()
            durable.stop_heartbeats()  # once every run has ended
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
                await durable.close()
                interrupt, self._interrupt = self._interrupt, None
                if interrupt is not None:
                    raise interrupt  # (what a run's task raised: it ends the block)
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

    # --- starting runs ---------------------------------------------------------------------

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
        workflow: WorkflowBuilder[..., Canvas[R]],
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
    ) -> Run[R]: ...
    @overload
    async def submit(
        self,
        workflow: Flow,
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
    ) -> Run[dict[str, Any]]: ...
    @overload
    async def submit(
        self,
        workflow: WorkflowBuilder[..., R],  # (R: see aflow._runtime._run)
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
    @overload
    async def submit(
        self,
        workflow: Graph | Workflow,
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
        self._check_open("submit")
        if run_id is not None and (run_id in self._runs or run_id in self._history):
            raise RunExists(run_id, "this runtime")
        all_params = {**(params or {}), **workflow_params}
        durable = self._durable
        store = durable.store
        if store is not None and not isinstance(workflow, WorkflowBuilder) and not all_params:
            workflow, all_params, graph = self._called(workflow)
        else:
            graph = self._compile(workflow, all_params)
        taken = durable.reused(graph, reuse) if reuse else None
        options = self._defaults.merged(
            on_event=on_event,
            on_error=on_error,
            timeout=timeout,
            compensation_timeout=compensation_timeout,
            clock=clock,
        )
        if store is not None:
            assert isinstance(workflow, WorkflowBuilder)
            handle = await durable.submit(
                workflow, graph, all_params, run_id, idempotency_key, options, taken
            )
            if handle._origin is None:
                handle._origin = (workflow.path, idempotency_key, all_params)
            handle._execution._events.name = workflow.path
            return handle
        key = None
        if idempotency_key is not None:
            key = (idempotency_key, identity(workflow, all_params, graph))
            for active in (*self._runs.values(), *self._history.values()):
                if active._key is not None and active._key[0] == idempotency_key:
                    same_work(active.id, idempotency_key, active._key[1], key[1])
                    return active
        handle = self._start(
            graph, run_id, None, options, (taken, False, None, {}) if taken else None
        )
        handle._key = key
        if isinstance(workflow, WorkflowBuilder):
            handle._origin = (workflow.path, idempotency_key, all_params)
            handle._execution._events.name = workflow.path
        else:
            origin = built_by(workflow)
            if origin is not None or idempotency_key is not None:
                path = None if origin is None else origin[0].path
                handle._origin = (path, idempotency_key, None)
                handle._execution._events.name = path
        return handle

    def _check_open(self, call: str) -> None:
        if self._tg is None:
            raise RuntimeError(f"{call}() needs an entered Runtime: use 'async with Runtime()'")

    def _called(self, built: object) -> tuple[WorkflowBuilder[..., Any], dict[str, Any], Graph]:
        """What a call of an ``@aflow.workflow`` built, given to a durable runtime: the run
        records that call (the workflow and its parameters by name), so any process can
        build it again; the graph is what was given, and must be what the call builds."""
        origin = built_by(built)
        if origin is None:
            raise self._not_rebuildable(built)
        builder, args, kwargs = origin
        try:
            params = builder.named_arguments(args, kwargs)
        except TypeError as exc:
            raise DefinitionError(
                f"a durable run rebuilds {builder.path} from its parameters by name: {exc}; "
                f"submit the workflow itself with its parameters by name"
            ) from exc
        graph = compile(built)
        if fingerprint(builder.build(params)) != fingerprint(graph):
            raise DefinitionError(
                f"{type(built).__name__} built by {builder.path} was changed after the call "
                f"built it (or the function builds another graph from the same parameters): "
                f"a durable run must be what its workflow builds from its parameters"
            )
        return builder, params, graph

    def _compile(self, workflow: object, params: dict[str, Any]) -> Graph:
        """The graph of ``workflow`` (an ``@aflow.workflow`` built with ``params``)."""
        if isinstance(workflow, WorkflowBuilder):
            return workflow.build(params)
        if params:
            raise TypeError("parameters can only be given to an @aflow.workflow")
        if self._durable.store is not None:
            raise self._not_rebuildable(workflow)
        return compile(workflow)

    def _not_rebuildable(self, workflow: object) -> DefinitionError:
        store = self._durable.store
        assert store is not None
        return DefinitionError(
            f"a durable run needs a workflow it can rebuild: decorate the function that "
            f"builds {type(workflow).__name__} with @aflow.workflow and submit what a call of "
            f"it builds, rt.submit(build(...)), or the function and its parameters, "
            f"rt.submit(build, x=...) (the store is {store.url})"
        )

    def _start(
        self,
        graph: Graph,
        run_id: str | None,
        journal: Journal | None,
        options: RunOptions,
        restore: tuple[Mapping[str, NodeRecord], bool, str | None, Mapping[str, str]] | None = None,
        deadline: float | None = None,
        *,
        spawn: bool = True,
    ) -> Run[Any]:
        """Start a run in this runtime's task group: a new one, or one taken up from its
        store's records (``restore``, and the wall-time ``deadline`` it kept). With
        ``spawn=False`` the run is only registered: the caller drives it (see :meth:`run`)."""
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
        waker = self._durable.waker
        taken = None if waker is None or journal is None else waker.take(execution.run_id)
        if taken is not None:  # an unloaded run taken up again: its handle follows it
            taken._take_up(execution)
            handle: Run[Any] = taken
        else:
            handle = Run(execution)
        if journal is not None:
            execution.unload_waits = self._unload_waits
            self._durable.leases.started()
        self._runs[handle.id] = handle
        if spawn:
            name = f"aflow run {handle.id[:8]}"
            if self._loop is not None:
                task = self._loop.create_task(self._drive(handle), name=name)
                self._run_tasks.add(task)
                task.add_done_callback(self._run_tasks.discard)
            else:
                assert self._tg is not None
                self._tg.start_soon(self._drive, handle, name=name)
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

    async def _drive(self, handle: Run[Any]) -> None:
        try:
            await handle._drive()
        except (KeyboardInterrupt, SystemExit) as exc:
            if self._loop is None:  # a task group's task: it takes it to the runtime's exit
                raise
            # A plain task would let it out of the event loop at once, past the runtime's
            # exit (its store left open): hand it to the block, as a task group does.
            if self._interrupt is None:
                self._interrupt = exc
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
        finally:
            waker = self._durable.waker
            if handle._detached and waker is not None:  # unloaded while it waits
                self._runs.pop(handle.id, None)
                await waker.park(handle)
            else:
                if handle._execution.released:
                    await self._durable.let_go(handle.id)
                self._retire(handle)
            if handle._leaving is not None:  # (unloaded: it has left; _retire says so too)
                handle._leaving.set()

    def _retire(self, handle: Run[Any]) -> None:
        """A run has ended: keep it among the last ``keep_finished``."""
        self._runs.pop(handle.id, None)
        if handle._leaving is not None:  # a shutdown waits for it to leave
            handle._leaving.set()
        if self._keep > 0:
            self._history[handle.id] = handle
            while len(self._history) > self._keep:
                _, dropped = self._history.popitem(last=False)
                if dropped._private:
                    dropped._let_go_of_errors()
        elif handle._private:
            handle._let_go_of_errors()

    # --- stored runs (see _durable.py) -----------------------------------------------------

    async def resume(self, run_id: str) -> Run[Any]:
        """Take up a run a dead process left ``running`` (or ``reverting``) in the store.

        The graph is rebuilt from the run's registered workflow and parameters
        (:class:`~aflow.errors.ResumeMismatch` if it changed); nodes whose results
        are on record are not run again, nodes that were running are run again
        (at-least-once), and an interrupted compensation goes on where it stopped.
        A run recovery parked (it kept killing the processes that took it up) is
        resumed too: this is how a person takes it up again.
        """
        return await self._durable.resume(run_id)

    async def recover(self) -> list[Run[Any]]:
        """Resume every unfinished run whose process is gone (its lease ran out).

        A run that cannot be resumed (its workflow changed or cannot be imported,
        its records cannot be read) is left as it is in the store and logged as
        a warning; the others are resumed.
        """
        return await self._durable.recover()

    async def fork(
        self, run_id: str, reuse: Mapping[str, Any] | Iterable[str], *, run_key: str | None = None
    ) -> Run[Any]:
        """A new run of an earlier run's workflow that takes the ``reuse`` nodes' outputs from it.

        ``reuse`` lists node keys (their stored outputs are taken as they are) or
        maps keys to new outputs (dflow's ``reuse_step`` with a modified value).
        """
        return await self._durable.fork(run_id, reuse, run_key)

    # --- the runs --------------------------------------------------------------------------

    @overload
    async def run(
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
    ) -> R: ...
    @overload
    async def run(
        self,
        workflow: WorkflowBuilder[..., Canvas[R]],
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
    ) -> R: ...
    @overload
    async def run(
        self,
        workflow: Flow,
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
    ) -> dict[str, Any]: ...
    @overload
    async def run(
        self,
        workflow: WorkflowBuilder[..., R],  # (R: see aflow._runtime._run)
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
    ) -> Any: ...
    @overload
    async def run(
        self,
        workflow: Graph | Workflow,
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
    ) -> Any: ...
    async def run(
        self,
        workflow: Any,  # (what it passes on to submit(), whose overloads take no object)
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
    ) -> Any:
        """Run a workflow in this runtime and return its value: the request-scoped call.
        Cancelling the caller (a client that went away) cancels the run, which unwinds,
        then re-raises.

        It takes what :meth:`submit` takes (an ``@aflow.workflow`` with its parameters,
        ``run_id``, ``idempotency_key``, ``on_event``, ``timeout``...). The run shares the
        runtime's limits and threads, is listed by :meth:`runs` and :meth:`get` while it
        goes on, and is stopped by the runtime's shutdown like any other. Without a
        store it runs in the calling task itself (no task is spawned), so it costs what
        :func:`aflow.run` costs; with one (or an idempotency key) it is submitted and
        awaited, and a second call with the same key returns what the first run gave.
        """
        if self._durable.store is not None or idempotency_key is not None:
            handle = await self.submit(
                workflow,
                run_id=run_id,
                on_event=on_event,
                on_error=on_error,
                timeout=timeout,
                compensation_timeout=compensation_timeout,
                clock=clock,
                idempotency_key=idempotency_key,
                params=params,
                reuse=reuse,
                **workflow_params,
            )
            return await outcome(handle)
        self._check_open("run")
        if run_id is not None and (run_id in self._runs or run_id in self._history):
            raise RunExists(run_id, "this runtime")
        graph = self._compile(
            workflow, {**params, **workflow_params} if params else workflow_params
        )
        options = self._defaults
        if not (
            on_event is None
            and on_error is None
            and timeout is None
            and compensation_timeout is None
            and clock is None
        ):
            options = options.merged(
                on_event=on_event,
                on_error=on_error,
                timeout=timeout,
                compensation_timeout=compensation_timeout,
                clock=clock,
            )
        restore: tuple[Mapping[str, NodeRecord], bool, str | None, Mapping[str, str]] | None = None
        if reuse:
            restore = (self._durable.reused(graph, reuse), False, None, {})
        handle = self._start(graph, run_id, None, options, restore, spawn=False)
        handle._private = True
        self._in_callers.add(handle)
        try:
            await handle._drive("the task that ran it was cancelled")
        finally:
            self._in_callers.discard(handle)
            error, value, traceback = handle._error, handle._value, handle._traceback
            self._retire(handle)  # (which may let go of its errors: they are in hand here)
        if error is None:
            return value
        error = error.with_traceback(traceback)
        traceback = None
        try:
            raise error
        finally:
            error = None  # (this frame is in its traceback: no cycle through it)

    def runs(self) -> list[Run[Any]]:
        """The runs that have not finished yet."""
        runs = list(self._runs.values())
        for handle in runs:
            handle._private = False
        return runs

    def get(self, run_id: str) -> Run[Any]:
        """A run by id: an active one, or one of the last ``keep_finished`` finished ones
        (:class:`aflow.errors.RunNotFound`, a ``KeyError``, for any other)."""
        found = self._runs.get(run_id) or self._history.get(run_id)
        if found is None and self._durable.waker is not None:  # unloaded while it waits
            found = self._durable.waker.detached.get(run_id)
        if found is None:  # (a KeyError too)
            raise RunNotFound(run_id, "this runtime (active or recently finished)")
        found._private = False
        return found

    async def retrieve(self, run_id: str) -> Run[Any]:
        """A run by id, from this runtime or its store: an active or recently finished
        run of this runtime (as :meth:`get`); else, with a store, the stored run: a
        finished one's handle gives its stored result (``await run.result()``; a
        failed one raises :class:`~aflow.errors.RunError` saying how it ended), an
        unfinished one's follows it in the store until it ends.
        :class:`~aflow.errors.RunNotFound` (a ``KeyError``) if neither has it;
        :class:`~aflow.errors.ResumeMismatch` if its workflow cannot be rebuilt here
        (:meth:`report` still reads it).
        """
        found = self._runs.get(run_id) or self._history.get(run_id)
        if found is not None:
            found._private = False
            return found
        store = self._durable.store
        if store is None:
            raise RunNotFound(run_id, "this runtime (active or recently finished; no store)")
        self._check_open("retrieve")
        record = await store.get_run(run_id)
        handle = await self._durable._attach(record, self._rebuilder.graph_of(record))
        if handle._finished.is_set() and handle._execution.started_at is None:
            handle._stored = await self.report(run_id)  # (it ran elsewhere: its records)
        return handle

    # --- events and values (see _wake.py) -----------------------------------------------

    async def send(
        self,
        run_id: str | None,
        event: str,
        payload: Any = None,
        *,
        message_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """Send event ``event`` with ``payload`` to a run: an ``aflow.wait_for(event)``
        node or an ``aflow.receive(event)`` in it takes it. Name the run by id, or by the
        ``idempotency_key`` it was submitted with (``run_id=None``).

        An event sent before the run gets to its wait is kept until it does. Sending is
        idempotent per run, event and ``message_id``: returns True if the event was
        kept, False if that message was sent already (a webhook delivered twice, even
        after the run has ended); with no ``message_id`` a run takes one event of each
        name. With a store, any process
        with it may send (the payload is written with the run's serializer), and a run
        unloaded while it waits is taken up at once here if this process can rebuild
        its workflow, else by one that can. :class:`~aflow.errors.RunNotFound` for an
        unknown run, :class:`~aflow.errors.RunEnded` for one that has ended (the event
        is not kept).
        """
        from ._wake import send

        self._check_open("send")
        if run_id is None:
            run_id = await self._run_of_key(idempotency_key)
        return await send(self, run_id, event, payload, message_id)

    async def get_event(
        self,
        run_id: str | None,
        name: str,
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """The value a run published under ``name`` (``aflow.set_event`` in one of its
        tasks), waiting up to ``timeout`` seconds (on the runtime's clock) for it to be
        set: :class:`~aflow.errors.WaitTimeout` (a ``TimeoutError``) if it is not, and
        :class:`~aflow.errors.RunEnded` at once if the run ended without setting it.
        With a store, it reads what any process's run published."""
        from ._wake import get_event

        self._check_open("get_event")
        if run_id is None:
            run_id = await self._run_of_key(idempotency_key)
        return await get_event(self, run_id, name, timeout)

    async def _run_of_key(self, key: str | None) -> str:
        """The id of the run submitted with idempotency key ``key``."""
        if key is None:
            raise TypeError("name the run: give its run_id, or its idempotency_key")
        for active in (*self._runs.values(), *self._history.values()):
            if active._key is not None and active._key[0] == key:
                return active.id
        store = self._durable.store
        if store is not None:
            found = await wait_store(store).run_of_key(key)
            if found is not None:
                return found
        raise RunNotFound(key, "this runtime (no run has that idempotency key)")

    async def report(self, run_id: str, *, steps: bool = True) -> RunReport:
        """A run as data (:class:`aflow.RunReport`), from this runtime or else its store:
        the same model and state names either way. A stored run's steps come from its
        records (in graph order, with those not begun yet, when this process can
        rebuild its workflow). :class:`~aflow.errors.RunNotFound` if neither has it."""
        from ._report import report_of_record, report_of_run

        found = self._runs.get(run_id) or self._history.get(run_id)
        if found is not None:
            return report_of_run(found, steps=steps)
        store = self._durable.store
        if store is None:
            raise RunNotFound(run_id, "this runtime (active or recently finished; no store)")
        record = await store.get_run(run_id)
        rebuilder = self._rebuilder
        loads = rebuilder.reader_of(record)
        if not steps:
            return report_of_record(record, None, (), loads, None)
        nodes = await store.load_nodes(run_id)
        history = await store.load_history(run_id)
        waits = await store.load_waits(run_id) if hasattr(store, "load_waits") else None
        try:
            graph: Graph | None = rebuilder.graph_of(record)
        except AflowError:  # not registered here, or changed: the records alone
            graph = None
        return report_of_record(record, nodes, history, loads, graph, waits)


async def _leaves(handle: Run[Any]) -> None:
    """Until a run of the runtime has left it: ended, or unloaded while it waits (it is
    safe in its store then; a handle awaited on it gets RunReleased as the runtime
    closes)."""
    if handle._leaving is None:
        handle._leaving = anyio.Event()
    await handle._leaving.wait()


async def _let_runs_end(runtime: Runtime) -> None:
    """A clean shutdown: wait for the runs (at most ``shutdown_timeout``), then let go
    of or cancel what is left (see :meth:`Runtime._stop_runs`)."""
    runs = runtime._runs
    try:
        if runtime._shutdown_timeout is not None:
            with anyio.move_on_after(runtime._shutdown_timeout):
                while runs:
                    await _leaves(next(iter(runs.values())))
            runtime._stop_runs()
        while runs:  # a follower may have resumed one meanwhile
            await _leaves(next(iter(runs.values())))
    except BaseException:  # cancelled while waiting: a deploy stops the service
        runtime._stop_runs()
        raise
