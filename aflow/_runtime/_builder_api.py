"""The runtime as the builders see it: the one internal API they use.

A builder (canvas, patterns, engines, ops) compiles a graph; the runtime runs it.
While a run executes, a body a builder wrote (an ops step's runner, a retried
flow's attempts, TaskFlow's engine) reaches its run through :func:`current_run`
and uses it through :class:`RunView` only: its id, its durable store and
journal, its threads, its slots, its clock, and the runs nested in it. It
never reads an ``Execution``'s private state or the runtime's contextvars; the
import contract in ``pyproject.toml`` (``make lint``) allows builders this
module, the handles, states, clock and options of ``aflow._runtime``, and
nothing else. What a builder needs that is missing here is added here.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, final

import anyio.lowlevel

from .._exceptions import CompensationFailed
from .._graph import Graph
from .._options import NodeOptions
from ..executors._base import Call
from ..stores._base import NodeRecord, RunRecord, Store
from ._attempts import AttemptHooks, run_attempts
from ._bodies import trace_carrier
from ._clock import SYSTEM_CLOCK, Clock
from ._current import ATTEMPT, EXECUTION, STEP, _driving_step, current_step
from ._fan_out import FanOutHooks, fan_out
from ._handle import Run
from ._limits import Limit, acquire_slot, release
from ._options import RunOptions, new_execution
from ._run_state import CONTAINED
from ._states import NodeState, RunStatistics, RunStatus, StepInfo
from ._threads import run_in_thread

if TYPE_CHECKING:
    from .._failure import Failure
    from .._workflow import WorkflowBuilder
    from ._runtime import Runtime
    from ._scheduler import Execution

__all__ = [
    "AttemptHooks",
    "remote_call_of",
    "FanOutHooks",
    "contain",
    "RunView",
    "current_attempt_number",
    "current_run",
    "in_thread",
    "new_run",
    "run_attempts",
    "Subflow",
    "run_subflow",
    "runtime_clock",
    "stored_loads",
    "stored_workflow",
    "undo_subflow",
    "view_of",
]


#: the runs a run's nodes made (see RunView.nested), in its notes
_MADE = "aflow.made"


@final
class RunView:
    """One run, as a builder may use it.

    A view lives as long as its run; :attr:`notes` keep what a builder tracks per
    run (an ops step's live slices, say) and go with it.
    """

    __slots__ = ("__weakref__", "_execution")

    def __init__(self, execution: Execution) -> None:
        self._execution = execution

    @property
    def notes(self) -> dict[str, Any]:
        """A builder's own state for this run, under a key it owns (``"ops.slices"``).

        (Kept by the run, not the view: a view is made on each ask, so that a run and
        its view hold no reference cycle and a finished run is freed at once.)"""
        execution = self._execution
        notes: dict[str, Any] | None = execution._notes
        if notes is None:
            notes = execution._notes = {}
        return notes

    def __repr__(self) -> str:
        return f"<RunView {self.run_id}>"

    # --- What the run is ----------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self._execution.run_id

    @property
    def graph(self) -> Graph:
        return self._execution.graph

    @property
    def status(self) -> RunStatus:
        return self._execution.status

    @property
    def top(self) -> RunView:
        """The outermost run this one is nested in (itself, for a run that is not nested):
        the one with the store and journal."""
        execution = self._execution
        while execution._parent is not None:
            execution = execution._parent  # type: ignore[assignment]
        return self if execution is self._execution else RunView(execution)

    @property
    def restored(self) -> bool:
        """True when the run was read back from its store (a resumed run): what is on
        record there is not done again."""
        return self._execution.restored

    @property
    def store(self) -> Store | None:
        """The durable store the run checkpoints to (``None`` for a run in memory)."""
        journal = self._execution._journal
        return None if journal is None else journal.store

    @property
    def clock(self) -> Clock:
        """The clock the run's timeouts, backoffs and deadlines go by."""
        return self._execution._clock

    def state_of(self, index: int) -> NodeState:
        return self._execution.state_of(index)

    def result_of(self, index: int) -> Any:
        return self._execution.result_of(index)

    def failures(self) -> dict[str, Failure]:
        return self._execution.failures()

    def step(self, key: str) -> StepInfo:
        """A snapshot of node ``key`` (as ``Run.step`` gives it)."""
        return self._execution.step(key)

    def results(self) -> dict[str, Any]:
        """Every succeeded task node's output, by node key."""
        return self._execution.results()

    def revert_failures(self) -> dict[str, Failure]:
        """The nodes whose revert failed, by key."""
        return self._execution.revert_failures()

    def revert_result_of(self, index: int) -> Any:
        """What node ``index``'s revert returned (kept in memory, not checkpointed)."""
        return self._execution.revert_result_of(index)

    def statistics(self) -> RunStatistics:
        return self._execution.statistics()

    # --- The run's journal (a no-op for a run in memory) --------------------------------

    def record(self, record: NodeRecord) -> None:
        """Put ``record`` on the run's record with its next checkpoint."""
        journal = self._execution._journal
        if journal is not None:
            journal.record(record)

    async def record_now(self, record: NodeRecord) -> None:
        """Put ``record`` on the run's record and wait until it is written (write-ahead)."""
        journal = self._execution._journal
        if journal is not None:
            await journal.record_now(record)

    async def stored_nodes(self) -> Mapping[str, NodeRecord]:
        """The run's node records in its store, by key (none for a run in memory)."""
        store = self.store
        return {} if store is None else await store.load_nodes(self.run_id)

    def encode(self, key: str, value: Any) -> str:
        """``value`` in the stored form of node ``key``'s results (raises
        :class:`aflow.errors.SerializationError`); only for a durable run."""
        journal = self._execution._journal
        assert journal is not None, "encode() is for a run with a store"
        return journal.encode(key, value)

    def decode(self, text: str) -> Any:
        """A stored value read back."""
        journal = self._execution._journal
        assert journal is not None, "decode() is for a run with a store"
        return journal.serializer.loads(text)

    # --- Running work inside a node ------------------------------------------------------

    async def in_thread(self, call: Callable[[], Any]) -> Any:
        """Run blocking ``call`` in the run's threads (its ``Runtime(threads=)`` or
        executor). A cancel that came meanwhile is raised once it returns."""
        result = await self._execution._in_thread(call)
        await anyio.lowlevel.checkpoint_if_cancelled()
        return result

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot of the run's global limits (``max_concurrency``) while inside:
        work inside a node waits its turn in line with the nodes."""
        limits = self._execution._global_limits
        if not limits:
            yield
            return
        taken: list[Limit] = []
        try:
            for limit in limits:
                await acquire_slot(limit)
                taken.append(limit)
            yield
        finally:
            release(tuple(taken), None)

    async def fan_out(
        self,
        count: int,
        body: Callable[[int, int], Awaitable[Any]],
        options: NodeOptions,
        *,
        pool_size: int | None = None,
        group_size: int = 1,
        per_group: int = 1,
        done: Collection[int] = (),
        hooks: FanOutHooks | None = None,
    ) -> dict[int, Exception]:
        """Run ``count`` items of work inside the node running now, on this run's clock
        and slots; return the failed items' errors (see :func:`._fan_out.fan_out`)."""
        return await fan_out(
            count,
            body,
            options,
            self._execution._clock,
            self.slot if self._execution._global_limits else None,
            pool_size=pool_size,
            group_size=group_size,
            per_group=per_group,
            done=done,
            hooks=hooks,
        )

    # --- Runs of its own ---------------------------------------------------------------

    def nested(self, graph: Graph) -> RunView:
        """A run of ``graph`` inside the node running now: it shares this run's limits,
        threads, clock and listeners, and its steps are known by their path."""
        execution = self._execution
        child = view_of(execution.nested(graph))
        step = STEP.get(-1)
        if step >= 0:
            made = self.notes.setdefault(_MADE, {})
            made.setdefault(execution.graph.nodes[step].key, []).append(child)
        return child

    def made_by(self, key: str) -> list[RunView]:
        """The runs node ``key`` made with :meth:`nested` in this process, oldest first."""
        made: dict[str, list[RunView]] = self.notes.get(_MADE, {})
        return made.get(key, [])

    async def execute(self) -> Any:
        """Run it (again, for a suspended run) and return its result."""
        return await self._execution.execute()

    async def compensate(self) -> None:
        """Undo a run that ended: its reverts, in reverse dependency order."""
        await self._execution.compensate()

    def suspend(self) -> None:
        """Let the running nodes (or reverts) finish and start no more (see
        ``Engine.suspend``)."""
        self._execution.suspend()


def view_of(run: Execution | Run[Any]) -> RunView:
    """The view of ``run`` (an execution, or the handle of one); views of one run share
    its notes."""
    return RunView(run._execution if isinstance(run, Run) else run)


def current_run() -> RunView:
    """The run whose node body is running now (raises ``RuntimeError`` elsewhere)."""
    execution = EXECUTION.get(None)
    if execution is None or STEP.get(None) is None:
        # a node started inline has none in its context: its driver is on the stack
        found = _driving_step(sys._getframe())
        if found is not None:
            execution = found[0]
    if execution is None:
        raise RuntimeError("no aflow run is executing here")
    return RunView(execution)


def remote_call_of(task: str, key: str) -> Call:
    """What an executor is told of the attempt running now, for a call it makes on
    behalf of the node body (an op's ``execute`` in another process): ``key`` names the
    call within the node (a slice's own), and the idempotency key follows it."""
    info = current_step()
    idempotency = info.idempotency_key
    if key != info.key:
        idempotency = f"{idempotency}/{key}"
    trace = trace_carrier(current_run()._execution)
    return Call(info.run_id, key, task, info.attempts, idempotency, trace)


def current_attempt_number() -> int:
    """The attempt (1 for the first) of the node body running now."""
    return ATTEMPT.get(1)


class Subflow(Protocol):
    """What a retried subflow's controller decides (TaskFlow's ``Retry``, say): the
    graph of each attempt, whether a failed one is tried again, the node's value."""

    async def next_graph(self) -> Graph | None:
        """The graph of the next attempt (``None``: nothing to run, the node is done)."""
        ...

    def started(self, attempt: RunView) -> None:
        """The run of the graph :meth:`next_graph` gave is made; it starts now."""
        ...

    async def failed(self, attempt: RunView, error: Exception) -> bool:
        """Attempt ``attempt`` failed with ``error`` and was unwound: ``True`` to make
        another. A controller giving up may add notes to ``error``; it is raised."""
        ...

    def value(self, attempt: RunView | None) -> Any:
        """The node's value once ``attempt`` (``None``: no attempt was needed) succeeded."""
        ...


async def run_subflow(subflow: Subflow) -> Any:
    """Run a subflow inside the node running now, one nested run per attempt, until
    ``subflow`` is done or gives up (the node's revert: :func:`undo_subflow`)."""
    outer = current_run()
    while True:
        graph = await subflow.next_graph()
        if graph is None:
            return subflow.value(None)
        attempt = outer.nested(graph)
        subflow.started(attempt)
        try:
            await attempt.execute()
        except Exception as exc:
            if await subflow.failed(attempt, exc):
                continue
            raise
        return subflow.value(attempt)


async def undo_subflow(key: str) -> bool:
    """Undo the last attempt node ``key`` of the current run made (its reverts run, in
    reverse order); ``False`` when it made none in this process (a resumed run).

    An attempt that failed was unwound then; if reverts failed in it, what they raised
    is raised again, the same objects, which the node's own failure holds already: the
    run reports each once (see ``Outcome._settle``), and the node's revert fails, so
    what precedes it in its branch is kept."""
    made = current_run().made_by(key)
    if not made:
        return False
    last = made[-1]._execution
    if last.status is not RunStatus.SUCCEEDED and last._revert_errors:
        failed = last._failed_reverts()
        errors = list({id(e): e for e in failed.values()}.values())
        if len(errors) == 1:
            raise errors[0]
        raise CompensationFailed(
            last.run_id,
            f"{len(errors)} revert(s) failed earlier; what they kept stays",
            errors,  # type: ignore[arg-type]
            failed,
        )
    await made[-1].compensate()
    return True


def contain(error: BaseException) -> None:
    """Keep the failure of the node that raises ``error`` to its branch: what depends
    on that node is SKIPPED, the rest of the run goes on, nothing is unwound, and the
    run fails with ``error`` once the rest has ended (a run holding a node of a run it
    raises from treats that node alike). TaskFlow's revert scope without
    ``defer_reverts``: a retried subflow that gave up is reverted alone."""
    try:
        setattr(error, CONTAINED, True)
    except AttributeError:  # pragma: no cover - an exception type that refuses attributes
        pass


def new_run(graph: Graph, options: RunOptions) -> RunView:
    """A run of ``graph`` with ``options``, not started (``execute()`` runs it)."""
    return view_of(new_execution(graph, options))


def stored_workflow(runtime: Runtime, record: RunRecord) -> WorkflowBuilder[..., Any]:
    """The workflow a stored run names, if ``runtime`` may rebuild it (registered in this
    process; never imported by the name a row gives)."""
    return runtime._rebuilder.workflow_of(record)


def stored_loads(runtime: Runtime, record: RunRecord) -> Callable[[str], Any]:
    """How ``runtime`` reads the values stored by the run ``record`` (its serializer)."""
    return runtime._rebuilder.serializer_of(record).loads


def runtime_clock(runtime: Runtime | None) -> Clock:
    """The time ``runtime`` goes by (heartbeats, recovery, following another process's
    run); the system clock without one."""
    return SYSTEM_CLOCK if runtime is None or runtime._clock is None else runtime._clock


async def in_thread(call: Callable[[], Any]) -> Any:
    """Run blocking ``call`` in the current run's threads, or in aflow's own outside a run."""
    execution = EXECUTION.get(None)
    if execution is not None:
        return await view_of(execution).in_thread(call)
    result = await run_in_thread(call, None)
    await anyio.lowlevel.checkpoint_if_cancelled()
    return result
