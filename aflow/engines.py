"""Engines: run a TaskFlow-style flow with a store of named values (``taskflow.engines``).

Ported TaskFlow code changes its imports and adds ``async``/``await``::

    engine = aflow.engines.load(flow, store={"a": 1}, engine="parallel", max_workers=8)
    await engine.run()
    engine.storage.fetch_all()

``load`` compiles and validates the flow at once (missing inputs, ambiguous
providers, cycles, duplicate names raise there, before anything runs). The
engine runs on the caller's event loop with the one aflow scheduler; no
thread pool is created per engine. Sync ``execute`` methods run in aflow's
worker threads, or in the ``executor`` you pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import Executor
from typing import Any, Literal, final

from ._atom import Task
from ._canvas import Canvas
from ._deprecated import moved as _moved
from ._events import EventListener
from ._exceptions import EngineNotFound as _EngineNotFound
from ._exceptions import NotFound as _NotFound
from ._failure import Failure
from ._runtime._builder_api import RunView, new_run
from ._runtime._clock import Clock
from ._runtime._options import RunOptions
from ._runtime._states import NodeState, RunStatistics, RunStatus
from ._task import FunctionTask
from .patterns._compile import DEFER_REVERTS, CompiledFlow, Level, compile_flow
from .patterns._flow import Flow, FlowItem, item_name
from .patterns.linear_flow import Flow as _linear_flow

__all__ = ["Engine", "Storage", "load", "run"]

_ENGINES = ("serial", "parallel")

__getattr__ = _moved("aflow.engines", ["NotFound"], to="aflow.errors")


@final
class Storage:
    """The values an engine's flow provides, and its store (``engine.storage``)."""

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def fetch(self, name: str) -> Any:
        """The value stored under ``name``: its provider's (if it ran), else the store's.

        Raises :class:`aflow.errors.NotFound` when neither has it.
        """
        engine = self._engine
        found, value = engine._compiled.value(engine._execution, name)
        if found:
            return value
        if name in engine._store:
            return engine._store[name]
        known = ", ".join(sorted(self.fetch_all())[:20]) or "nothing"
        raise _NotFound(f"no value named {name!r} (stored: {known})")

    def fetch_all(self) -> dict[str, Any]:
        """Every stored value by name: the store, overridden by what tasks provided."""
        return {**self._engine._store, **self._engine._provided()}

    def fetch_many(self, *names: str) -> dict[str, Any]:
        """Several values by name (:class:`aflow.errors.NotFound` for the first missing one)."""
        return {name: self.fetch(name) for name in names}

    def get_atom_state(self, name: str) -> NodeState:
        """The state of the task (or retried flow) called ``name``."""
        engine = self._engine
        state = _state_in(engine._compiled, engine._execution, name)
        if state is None:
            raise _NotFound(f"no task named {name!r} in flow {engine.flow.name!r}")
        return state

    def get_flow_state(self) -> RunStatus:
        """The run's state (TaskFlow's name for :attr:`Engine.state`)."""
        return self._engine.state

    def get_revert_result(self, name: str) -> Any:
        """What the revert of task ``name`` returned, or the :class:`aflow.Failure` of
        what it raised (``None`` while it runs), as TaskFlow's storage gives it.

        Raises :class:`aflow.errors.NotFound` when no task has this name, or when it
        was not reverted. The value is kept in memory only: a revert that ran before
        its run was resumed from a durable store gives ``None``. A task in a retried
        flow answers for its latest attempt.
        """
        engine = self._engine
        where = _locate(engine._compiled, engine._execution, name)
        if where is None:
            if _state_in(engine._compiled, engine._execution, name) is None:
                raise _NotFound(f"no task named {name!r} in flow {engine.flow.name!r}")
            raise _NotFound(f"no revert result for task {name!r}: it did not run")
        view, index = where
        state = view.state_of(index)
        if state is NodeState.REVERTED:
            return view.revert_result_of(index)
        if state is NodeState.REVERT_FAILED:
            return view.revert_failures()[view.graph.nodes[index].key]
        if state is NodeState.REVERTING:
            return None
        node = view.graph.nodes[index]
        why = "" if node.task is None or node.task.reverter is not None else " (it has no revert)"
        raise _NotFound(
            f"no revert result for task {name!r}: it is {state.name}, not reverted{why}"
        )

    def get_execute_failures(self) -> dict[str, Failure]:
        """Every task whose ``execute`` failed, by name, with its :class:`aflow.Failure`.

        As TaskFlow's: a task of a retried flow keeps the failure of its latest
        attempt that failed, even once a later attempt succeeded. Tasks cancelled
        because another failed (aflow fails fast) did not fail and are not listed;
        a retried flow is listed under its name only when its controller raised.
        """
        engine = self._engine
        out: dict[str, Failure] = {}
        _execute_failures(engine._compiled, engine._execution, out)
        return out

    def get_revert_failures(self) -> dict[str, Failure]:
        """Every task whose ``revert`` failed, by name, with its :class:`aflow.Failure`
        (a retried flow under its name only when its controller's own revert failed)."""
        engine = self._engine
        out: dict[str, Failure] = {}
        _revert_failures(engine._compiled, engine._execution, out)
        return out


@final
class Engine:
    """Runs one flow; get one from :func:`load`.

    ``await run()`` runs the flow (or, after :meth:`suspend`, what is left of
    it); a failure reverts what ran, in reverse order, and raises the task's
    own exception, as ``await workflow`` does. Once the flow was reverted,
    ``run()`` runs it again from the start (as TaskFlow's engine does);
    :meth:`reset` forgets a run whatever its end.
    """

    __slots__ = (
        "_compiled",
        "_defer_reverts",
        "_execution",
        "_options",
        "_ran_empty",
        "_store",
        "flow",
    )

    def __init__(
        self,
        flow: Flow,
        store: Mapping[str, Any] | None,
        options: RunOptions,
        defer_reverts: bool = True,
    ) -> None:
        self.flow = flow
        self._store: dict[str, Any] = dict(store or {})
        self._options = options
        self._defer_reverts = defer_reverts
        self._compiled: CompiledFlow = compile_flow(flow, self._store)
        self._execution: RunView | None = None
        self._ran_empty = False  # an empty flow has no run: this says it was run

    def __repr__(self) -> str:
        return f"<Engine {self.flow.name!r} {self.state.value}>"

    @property
    def storage(self) -> Storage:
        """The values the flow provides, and the store.

        (A view made on each access, not kept: an engine and a storage that held each
        other would leave a finished engine, and its whole flow, to the garbage collector.)
        """
        return Storage(self)

    @property
    def state(self) -> RunStatus:
        """``PENDING`` before :meth:`run`, then the run's status (``SUSPENDED`` included)."""
        if self._compiled.graph is None:
            return RunStatus.SUCCEEDED if self._ran_empty else RunStatus.PENDING
        if self._execution is None:
            return RunStatus.PENDING
        return self._execution.status

    @property
    def run_id(self) -> str | None:
        """The id of the engine's run, once started."""
        return self._execution.run_id if self._execution is not None else None

    def compile(self) -> None:
        """Nothing left to do: :func:`load` compiled and validated the flow already."""

    prepare = validate = compile

    async def run(self) -> None:
        """Run the flow to the end, or until :meth:`suspend`; a later call continues.

        After a success this does nothing; after the flow was reverted (or cancelled
        and unwound) it runs the flow again from the start. After a run whose revert
        failed it raises ``RuntimeError``: what that revert kept is still done, so
        call :meth:`reset` first to run the flow again anyway.
        """
        graph = self._compiled.graph
        if graph is None:
            self._ran_empty = True
            return
        execution = self._execution
        if execution is not None:
            status = execution.status
            if status is RunStatus.SUCCEEDED:
                return  # nothing left to run
            if status is RunStatus.RUNNING:
                raise RuntimeError(f"the engine of flow {self.flow.name!r} is running already")
            if status is not RunStatus.SUSPENDED:
                if execution.statistics().revert_failed or self.storage.get_revert_failures():
                    raise RuntimeError(
                        f"the engine of flow {self.flow.name!r} already ran ({status.value}) "
                        "and a revert failed, so what it kept is still done; call "
                        "engine.reset() to run the flow from the start anyway"
                    )
                execution = None  # reverted (TaskFlow resets a reverted flow and runs it)
        if execution is None:
            execution = self._execution = self._new_execution()
        await execution.execute()

    def reset(self) -> None:
        """Forget the run: every task ``PENDING`` again and what they provided gone
        (the store stays); the next :meth:`run` runs the flow from the start.

        Raises ``RuntimeError`` while the engine runs. Nothing is reverted: a run
        that ended with a failed revert keeps what that revert could not undo.
        """
        execution = self._execution
        if execution is not None and execution.status is RunStatus.RUNNING:
            raise RuntimeError(
                f"the engine of flow {self.flow.name!r} is running: suspend() it and let "
                "run() return before reset()"
            )
        self._execution = None
        self._ran_empty = False

    def suspend(self) -> None:
        """Start no more tasks; running ones finish, then :meth:`run` returns (``SUSPENDED``).

        While the flow is being reverted, no more reverts start: the running ones
        finish, :meth:`run` returns (``SUSPENDED``) and the next :meth:`run` goes on
        reverting, then raises what failed (as TaskFlow's engine). A task inside a
        retried flow counts as part of that flow, which runs (or is undone) to its
        end. Before :meth:`run` has started (or once it ended) this does nothing.
        """
        if self._execution is not None:
            self._execution.suspend()

    def _new_execution(self) -> RunView:
        graph = self._compiled.graph
        assert graph is not None
        view = new_run(graph, self._options)
        if not self._defer_reverts:
            view.notes[DEFER_REVERTS] = False
        return view

    def _provided(self) -> dict[str, Any]:
        return self._compiled.values(self._execution)

    def states(self) -> dict[str, NodeState]:
        """The state of every task by name (tasks in retried flows: their latest attempt)."""
        out: dict[str, NodeState] = {}
        _states_of(self._compiled, self._execution, out, None)
        return out

    def statistics(self) -> RunStatistics | None:
        """Counts of the top-level nodes by state (``None`` before the run)."""
        return self._execution.statistics() if self._execution is not None else None


def _retried(level: Level) -> Iterator[Level]:
    """The retried flows directly inside ``level`` (not inside them)."""
    for item in level.items:
        if isinstance(item, Level):
            if item.runner is not None:
                yield item
            else:
                yield from _retried(item)


def _retried_in(compiled: CompiledFlow) -> Iterator[Level]:
    """The retried flows whose nodes are in ``compiled``'s graph (the flow itself when
    it has a retry: its graph is then the one node that runs it)."""
    level = compiled.level
    if level.runner is not None and not compiled.body:
        return iter((level,))
    return _retried(level)


def _states_of(
    compiled: CompiledFlow,
    execution: RunView | None,
    out: dict[str, NodeState],
    fill: NodeState | None,
) -> None:
    """Add the state of every task of ``compiled`` (``fill`` for those that never ran)."""
    graph = compiled.graph
    if graph is None:
        return
    for node in graph.nodes:
        if node.key.startswith("~"):
            continue  # a barrier or a decider's gate
        if execution is not None:
            out[node.key] = execution.state_of(node.index)
        else:
            out[node.key] = fill or NodeState.PENDING
    for level in _retried_in(compiled):
        _retried_states(level, execution, out)


def _retried_states(level: Level, outer: RunView | None, out: dict[str, NodeState]) -> None:
    assert level.runner is not None
    last = level.runner.last(outer)
    if last is not None:
        _states_of(last[0], last[1], out, None)
        return
    # never started: its tasks are PENDING, or SKIPPED with the flow
    own = out.get(level.name, NodeState.PENDING)
    fill = NodeState.SKIPPED if own is NodeState.SKIPPED else NodeState.PENDING
    for name in level.names:
        if name != level.name:
            out.setdefault(name, fill)


def _state_in(compiled: CompiledFlow, execution: RunView | None, name: str) -> NodeState | None:
    """The state of task ``name``, looked up without listing every task."""
    graph = compiled.graph
    if graph is None:
        return None
    node = graph.find(name)
    if node is not None and not name.startswith("~"):
        return execution.state_of(node.index) if execution is not None else NodeState.PENDING
    for level in _retried_in(compiled):
        if name not in level.name_set:
            continue
        assert level.runner is not None
        last = level.runner.last(execution)
        if last is not None:
            return _state_in(last[0], last[1], name)
        own = graph.find(level.name)
        skipped = (
            own is not None
            and execution is not None
            and execution.state_of(own.index) is NodeState.SKIPPED
        )
        return NodeState.SKIPPED if skipped else NodeState.PENDING
    return None


def _locate(
    compiled: CompiledFlow, execution: RunView | None, name: str
) -> tuple[RunView, int] | None:
    """The run and node index task ``name`` last ran as (``None``: unknown, or never in a
    run that started)."""
    graph = compiled.graph
    if graph is None or execution is None or name.startswith("~"):
        return None
    node = graph.find(name)
    if node is not None:
        return execution, node.index
    for level in _retried_in(compiled):
        if name in level.name_set:
            assert level.runner is not None
            last = level.runner.last(execution)
            return None if last is None else _locate(last[0], last[1], name)
    return None


def _execute_failures(
    compiled: CompiledFlow, execution: RunView | None, out: dict[str, Failure]
) -> None:
    if execution is None:
        return
    retried = {level.name: level for level in _retried_in(compiled)}
    for key, failure in execution.failures().items():
        if failure.cancelled or key.startswith("~"):
            continue
        level = retried.get(key)
        if level is not None:
            assert level.runner is not None
            if not level.runner.controller_raised(execution):
                continue  # its attempt's failure, listed under that task's name
        out[key] = failure
    for level in retried.values():
        assert level.runner is not None
        for sub, attempt in level.runner.attempts(execution):  # oldest first: latest wins
            _execute_failures(sub, attempt, out)


def _revert_failures(
    compiled: CompiledFlow, execution: RunView | None, out: dict[str, Failure]
) -> None:
    if execution is None:
        return
    retried = {level.name: level for level in _retried_in(compiled)}
    for key, failure in execution.revert_failures().items():
        level = retried.get(key)
        if level is not None:
            assert level.runner is not None
            last = level.runner.last(execution)
            if last is not None and last[1].revert_failures():
                continue  # its attempt's failed reverts, raised again: listed by their names
        out[key] = failure
    for level in retried.values():
        assert level.runner is not None
        error = level.runner.revert_error(execution)
        if error is not None:  # its controller's revert, when it was reverted alone
            out[level.name] = Failure.capture(level.name, error, 1)
        for sub, attempt in level.runner.attempts(execution):
            _revert_failures(sub, attempt, out)


def load(
    flow: Flow | FlowItem,
    store: Mapping[str, Any] | None = None,
    *,
    engine: Literal["serial", "parallel"] = "serial",
    max_workers: int | None = None,
    executor: Executor | None = None,
    timeout: float | None = None,
    compensation_timeout: float | None = None,
    on_event: EventListener | None = None,
    clock: Clock | None = None,
    defer_reverts: bool = True,
) -> Engine:
    """Compile ``flow`` with ``store`` and return an :class:`Engine` ready to :meth:`~Engine.run`.

    Args:
        flow: a linear, unordered or graph flow (any nesting), or a single task
            (an ``aflow.Task``, an ``@aflow.task`` or a canvas piece), run as a
            linear flow of its own name holding just it.
        store: the initial named values tasks may require.
        engine: ``"serial"`` (one task at a time, TaskFlow's default) or
            ``"parallel"`` (independent tasks concurrently); any other name raises
            :class:`aflow.errors.EngineNotFound` (a ``NotFound`` and a ``ValueError``).
        max_workers: with ``"parallel"``, at most this many tasks at once.
        executor: a ``concurrent.futures`` executor for sync ``execute`` methods
            (default: aflow's worker threads). The engine never shuts it down.
        timeout, compensation_timeout, on_event, clock: as for :func:`aflow.run`.
        defer_reverts: what a retried flow that gives up (its controller says
            ``REVERT``) reverts. ``True`` (the default, and what TaskFlow calls the
            behaviour to come): it defers to the enclosing flow's retry, and with none
            left the run fails and everything that ran is reverted. ``False``
            (TaskFlow's default): unless an enclosing retry retries or reverts all, only
            that flow is reverted; what ran outside it is kept, what depends on it is
            ``SKIPPED``, other branches go on, and the run then fails with its error
            (``FAILED``: it is not undone).
    """
    if isinstance(flow, Task | FunctionTask | Canvas):  # one task, as TaskFlow takes an atom
        flow = _linear_flow(item_name(flow)).add(flow)
    elif not isinstance(flow, Flow):
        raise TypeError(
            f"engines.load expects a flow from aflow.patterns or a single task, got {flow!r}"
        )
    if engine not in _ENGINES:
        raise _EngineNotFound(engine, _ENGINES)
    if max_workers is not None and (
        not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1
    ):
        raise ValueError(f"max_workers must be an int >= 1, got {max_workers!r}")
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(
            f"executor must be a concurrent.futures.Executor, got {executor!r} "
            "(aflow needs no executor: sync tasks run in its worker threads by default)"
        )
    options = RunOptions(
        max_concurrency=max_workers if engine == "parallel" else 1,  # serial: one at a time
        executor=executor,
        timeout=timeout,
        compensation_timeout=compensation_timeout,
        on_event=on_event,
        clock=clock,
    )
    if not isinstance(defer_reverts, bool):
        raise TypeError(f"defer_reverts must be True or False, got {defer_reverts!r}")
    return Engine(flow, store, options, defer_reverts)


async def run(
    flow: Flow | FlowItem,
    store: Mapping[str, Any] | None = None,
    *,
    engine: Literal["serial", "parallel"] = "serial",
    max_workers: int | None = None,
    executor: Executor | None = None,
    timeout: float | None = None,
    defer_reverts: bool = True,
) -> dict[str, Any]:
    """Load and run ``flow``; return every stored value by name (``storage.fetch_all()``)."""
    eng = load(
        flow,
        store,
        engine=engine,
        max_workers=max_workers,
        executor=executor,
        timeout=timeout,
        defer_reverts=defer_reverts,
    )
    await eng.run()
    return eng.storage.fetch_all()
