"""The state of one run: its fields, what each one means, and the checks on them."""

from __future__ import annotations

import asyncio
import contextvars
import enum
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.abc
import anyio.lowlevel

from .._events import (
    EventListener,
    EventSink,
)
from .._exceptions import AflowInternalError
from .._failure import Failure
from .._graph import Graph, Node, NodeKind
from ..executors._base import Executor as AflowExecutor
from ._clock import SYSTEM_CLOCK, Clock, DeadlineScope
from ._ids import new_run_id
from ._invariants import FOUND, violations
from ._journal import Journal
from ._limits import Limit
from ._ready import PriorityReady, ReadyQueue
from ._states import NodeState, RunStatus

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from .._exceptions import StoreError
    from .._options import NodeOptions
    from ._options import Capacity, RunOptions
    from ._waits import WaitState

_copy_context = contextvars.copy_context

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


class Phase(enum.Enum):
    """Where a run is in its lifecycle (see :mod:`._phases` for the transitions)."""

    PENDING = "pending"  # built or restored; nothing ran yet in this process
    FORWARD = "forward"  # nodes run, in dependency order
    SUSPENDED = "suspended"  # suspend(): running nodes finished; execute() goes on
    UNWINDING = "unwinding"  # reverts run, consumers first (shielded)
    CALLBACKS = "callbacks"  # error callbacks run
    CLOSED = "closed"  # ended: its status is final


class StopReason(enum.Enum):
    """Why a run stops before every node has ended (a run may have several)."""

    FAILURE = "failure"  # a node failed and nothing tolerates it
    CANCEL = "cancel"  # cancel(), or a cancel asked through the store
    TIMEOUT = "timeout"  # the run's own deadline passed
    SUSPEND = "suspend"  # suspend(): start nothing more, let running nodes finish
    STORE = "store"  # a checkpoint could not be written, or the lease was lost
    RELEASE = "release"  # its runtime let go of it (shutdown): undo nothing


_FORWARD = Phase.FORWARD
_UNWINDING = Phase.UNWINDING

#: An exception with this attribute true fails its node "contained": what depends on
#: the node is SKIPPED, the rest of the run goes on, nothing is unwound, and the run
#: fails with it at its end (see _builder_api.contain).
CONTAINED = "_aflow_contained"


class RunState:
    """The fields every unit of a run reads and writes (see :class:`Execution`)."""

    __slots__ = (
        "__weakref__",
        "_announced",
        "_any_limits",
        "_attempts",
        "_children",
        "_clock",
        "_compensation_timeout",
        "_context",
        "_crew",
        "_crew_done_callback",
        "_crew_error",
        "_crew_idle",
        "_crew_open",
        "_deadline",
        "_deferred_cancel",
        "_done",
        "_done_count",
        "_done_goal",
        "_errors",
        "_events",
        "_executor",
        "_failure",
        "_failures",
        "_finished",
        "_global_limits",
        "_handoff",
        "_idle_ends_phase",
        "_incarnation",
        "_journal",
        "_key_prefix",
        "_limit_cache",
        "_limits",
        "_loop",
        "_map_calls",
        "_nested",
        "_nested_runs",
        "_nodes",
        "_notes",
        "_on_error",
        "_options",
        "_parent",
        "_parked",
        "_peak",
        "_phase",
        "_ready",
        "_remaining",
        "_remote",
        "_results",
        "_resumed_unwinding",
        "_revert_attempts",
        "_revert_errors",
        "_revert_results",
        "_reverted",
        "_reverting",
        "_running",
        "_scope",
        "_spare_pending",
        "_spare_scopes",
        "_started",
        "_states",
        "_stop_cause",
        "_stops",
        "_store_error",
        "_tg",
        "_thread_limiter",
        "_timeout",
        "_tolerated_by",
        "_waits",
        "_wall_deadline",
        "_wall_offset",
        "ended_at",
        "grants",
        "graph",
        "release_on_interrupt",
        "restored",
        "run_id",
        "started_at",
        "starting",
        "status",
        "unload_waits",
    )

    if TYPE_CHECKING:  # The seams: what one unit calls of another, by the unit that defines it.
        # scheduler.py
        async def _worker(self) -> None: ...
        def _succeed(
            self, index: int, value: Any, state: NodeState = _SUCCEEDED, *, children: bool = True
        ) -> None: ...
        def _release(self, index: int) -> None: ...
        def _node_failed(self, node: Node, error: Exception, attempt: int) -> None: ...
        def _skip_dependents(self, index: int, tolerant_join: int | None) -> None: ...
        def _join(self, node: Node) -> None: ...

        # phases.py
        async def _execute(self) -> Any: ...
        def _store_failed(self, error: BaseException) -> None: ...
        async def _run_phase(self) -> None: ...
        def _check_idle(self) -> None: ...
        def _busy(self) -> bool: ...
        def _end_phase(self) -> None: ...
        def cancel(self) -> None: ...
        def _being_released(self) -> bool: ...
        def _close(self, status: RunStatus) -> None: ...
        @property
        def released(self) -> bool: ...

        # attempts.py
        def _args_of(self, node: Node) -> tuple[Any, ...]: ...
        def _kwargs_of(self, node: Node) -> Mapping[str, Any]: ...
        def _in_thread(self, call: Callable[[], Any]) -> Any: ...
        async def _attempts_of(
            self,
            node: Node,
            options: NodeOptions,
            is_async: bool,
            make_call: Callable[[int], Any],
            started: str,
            retried: str,
            attempts: dict[int, int] | None = None,
        ) -> tuple[Any, int]: ...
        async def _run_node(self, node: Node, limits: tuple[Limit, ...]) -> None: ...
        def _failure_of(self, node: Node, exc: BaseException, attempt: int) -> Exception: ...

        # compensation.py
        async def _unwind(self) -> bool: ...
        def _unwound(self, index: int) -> None: ...
        def _failed_reverts(self) -> dict[str, BaseException]: ...

        # outcome.py
        def _cause_text(self) -> str: ...
        async def _settle(self) -> Any: ...
        def _stopped_by_store(self) -> StoreError: ...
        def _root_failures(self) -> list[BaseException]: ...
        def _note_outcome(self, primary: BaseException) -> None: ...
        def _why_cut_short(self, exc: BaseException) -> str: ...
        def _errors_for(self, node: Node) -> BaseException: ...
        async def _run_errbacks(self) -> list[tuple[str, BaseException]]: ...

        # checkpoints.py
        async def _write_leftover(self) -> None: ...
        async def _flusher(self, journal: Journal) -> None: ...
        def _write_now(self, journal: Journal) -> bool: ...
        def _checkpoint_success(
            self, node: Node, value: Any, attempt: int, start: float
        ) -> None: ...

        # crew.py
        def _ensure_worker(self) -> None: ...
        def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...
        def _crew_done(self, task: asyncio.Task[Any]) -> None: ...
        def _cut_phase(self) -> None: ...
        def _stop(self, reason: StopReason) -> None: ...
        async def _join_crew(self, cancel: bool) -> None: ...

        # inspect.py
        @property
        def duration_s(self) -> float | None: ...
        def _wall(self, t: float | None) -> float | None: ...
        def failures(self) -> dict[str, Failure]: ...

        # run_limits.py
        def _resolve_limits(self, node: Node) -> tuple[Limit, ...]: ...
        def grant(self, index: int, limit: Limit) -> None: ...
        def take_grants(self, index: int) -> tuple[Limit, ...]: ...
        def requeue(self, index: int, *, wake: bool) -> None: ...
        def credit(self, limit: Limit) -> None: ...
        def take_credit(self, limit: Limit) -> bool: ...
        def put_back(self, index: int, *, wake: bool) -> None: ...
        def _return_grants(self) -> None: ...
        def _forget_waiters(self) -> None: ...

    def __init__(
        self,
        graph: Graph,
        options: RunOptions,
        capacity: Capacity,
        *,
        run_id: str | None = None,
        listeners: Sequence[EventListener] = (),
        nested: bool = False,
        journal: Journal | None = None,
    ) -> None:
        # (options were checked as they were built: see RunOptions)
        self.graph = graph
        self.run_id = run_id or new_run_id()
        self.status = RunStatus.PENDING
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._options = options
        self._on_error = options.on_error
        self._timeout = options.timeout
        self._compensation_timeout = options.compensation_timeout
        self._clock: Clock = options.clock or SYSTEM_CLOCK
        executor = options.executor
        #: a concurrent.futures executor for sync bodies, or None (aflow's threads)
        self._executor: Executor | None = None
        #: an aflow executor for the bodies of tasks that name none (None: the loop)
        self._remote: AflowExecutor | None = None
        if executor is not None:  # (the common run has none: no isinstance to pay)
            if isinstance(executor, AflowExecutor):
                self._remote = executor
            elif isinstance(executor, Executor):
                self._executor = executor
        self._nested = nested
        self._thread_limiter = capacity.threads
        self._events = EventSink(self.run_id, listeners, run_events=not nested)

        # --- The run's lifecycle (see _phases). ------------------------------------------
        #: where the run is: PENDING -> FORWARD -> [UNWINDING] -> [CALLBACKS] -> CLOSED, or
        #: FORWARD -> SUSPENDED -> FORWARD; set by the lifecycle unit alone
        self._phase = Phase.PENDING
        #: why the run stops, added by _stop() (or by restore()); empty while it goes on
        self._stops: set[StopReason] = set()
        #: nodes may start now. A cache of (phase open and not stopped) for the hot loop:
        #: only _open_phase() sets it, only _stop() and _end_phase() clear it
        self.starting = False
        #: the failure that stopped the run: (node index, error); index -1 for one read
        #: back from the store. Set once, with StopReason.FAILURE
        self._failure: tuple[int, BaseException] | None = None
        #: the store write that failed (or the lease lost), with StopReason.STORE
        self._store_error: BaseException | None = None
        #: taken up from checkpoints (a resumed or forked run); a fact, never cleared
        self.restored = False
        #: taken up in the middle of its compensation (restored, or suspended while
        #: unwinding): its next execute() goes on unwinding (a fact)
        self._resumed_unwinding = False
        #: what stopped the run, as its store keeps it while it reverts (a resume needs it)
        self._stop_cause: str | None = None
        #: its waits, once it waits, sends or is sent to (see _waits)
        self._waits: WaitState | None = None
        #: a durable run of a runtime: unloaded while every node in flight waits
        self.unload_waits = False
        #: a run its runtime owns is cancelled through cancel(); a native cancellation of
        #: its task means the runtime itself is going away (its task group, or a scope
        #: around it, was cancelled): with this set, that releases the run (issue 14)
        self.release_on_interrupt = False
        #: the run's own deadline, while its forward phase runs
        self._deadline: DeadlineScope | None = None
        #: a resumed run's deadline, as its store kept it (see keep_deadline())
        self._wall_deadline: float | None = None
        #: a cancellation of the awaiting task that arrived while compensation was shielded
        self._deferred_cancel: BaseException | None = None
        #: set while a phase waits for its last nodes (see _check_idle)
        self._done: anyio.Event | None = None

        # --- Node state: arrays indexed by node index (see _scheduler). ------------------
        nodes = graph.nodes
        n = len(nodes)
        shape: RunShape | None = graph._shape[0]
        if shape is None:
            shape = graph._shape[0] = RunShape(nodes)
        self._nodes = nodes
        self._children = graph._children
        #: the node's value once it succeeded (a restored or a join's too)
        self._results: list[Any] = [None] * n
        #: every node leaves PENDING at most once per phase; at close none is in flight
        #: (RUNNING, RETRYING, REVERTING)
        self._states: list[NodeState] = [_PENDING] * n
        #: forward: parents of the node that have not released it yet (it is ready at 0);
        #: unwinding: consumers of the node not unwound yet (its revert is ready at 0)
        self._remaining = shape.remaining.copy()
        #: perf_counter() readings; a node that started has a start <= its finish
        self._started: list[float | None] = [None] * n
        self._finished: list[float | None] = [None] * n
        #: attempts made, when more than one (forward; reverts)
        self._attempts: dict[int, int] = {}
        self._revert_attempts: dict[int, int] = {}
        #: a map's calls with their values or failures, for its per-item revert
        self._map_calls: dict[int, list[tuple[Any, Any]]] = {}
        #: every node that failed or was cancelled mid-way has an error and a Failure
        self._errors: dict[int, BaseException] = {}
        self._failures: dict[int, Failure] = {}
        #: every REVERT_FAILED node has its revert's error here
        self._revert_errors: dict[int, BaseException] = {}
        #: what a revert returned, when not None (made by the first such revert: a run
        #: that reverts nothing, or whose reverts return None, allocates nothing); in
        #: memory only, never checkpointed
        self._revert_results: dict[int, Any] | None = None
        #: nodes reverted, in the order their reverts ended: a node's consumers come first
        self._reverted: list[int] = []
        #: the nodes the unwind phase reverts (fixed as it begins)
        self._reverting: frozenset[int] = frozenset()
        #: nodes whose remaining count reached 0 and that have not started, each once
        #: (a deque; by priority for a graph with priorities: see PriorityReady)
        self._ready: ReadyQueue = shape.new_ready(shape.roots)
        #: the run is complete once _done_count reaches this: every node but the error
        #: callbacks (which run only after a failure)
        self._done_goal = shape.done_goal
        #: nodes that have ended for the run's purpose (succeeded, skipped, or failed and
        #: tolerated); never above _done_goal
        self._done_count = 0
        #: node -> the join of the innermost group with a threshold that tolerates it
        #: (the graph's: never written)
        self._tolerated_by: Mapping[int, int] = shape.tolerated_by
        #: nodes in flight in this run's workers, and parked on a limit; both 0 at close
        self._running = 0
        self._parked = 0
        self._peak = 0

        # --- Nesting (a retried flow's attempts: see nested()). ----------------------------
        #: a nested run's steps are known by their path
        self._key_prefix = ""
        self._nested_runs: dict[int, int] | None = None
        self._incarnation = ""  # "~<token>" once restored
        self._parent: RunState | None = None
        #: builders' notes on this run (RunView.notes), made when first asked
        self._notes: dict[str, Any] | None = None

        # --- Checkpoints (see _checkpoints and _journal). ----------------------------------
        self._journal = journal
        #: nodes whose start went out with their parent's success (write-ahead for free)
        self._announced: set[int] = set()
        #: set by the flusher after each batch, for the worker waiting on it (see _worker)
        self._handoff: anyio.Event | None = None
        #: node time (perf_counter) + this = wall time
        self._wall_offset = 0.0

        # --- The crew: the phase's workers (see _crew). ------------------------------------
        self._tg: anyio.abc.TaskGroup | None = None
        #: the phase's own cancel scope (entered before any node starts)
        self._scope: anyio.CancelScope | None = None
        #: the phase's worker tasks, and what waits for the last of them to end
        self._crew: set[asyncio.Task[Any]] = set()
        self._crew_idle: asyncio.Future[None] | None = None
        #: the phase's host waits on _crew_idle for its end (asyncio, no journal): it is
        #: set once the crew is empty *and* no work is left (one wake-up, no Event)
        self._idle_ends_phase = False
        self._crew_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the crew's done callback, made when first needed: a bound method of this run,
        #: so a reference cycle, broken at close (a run that leaves no cycle is freed as
        #: soon as it is dropped, with no work left for the garbage collector)
        self._crew_done_callback: Callable[[asyncio.Task[Any]], None] | None = None
        #: the crew takes new workers (while a phase's frame is open)
        self._crew_open = False
        #: a spare worker was started and has not begun its loop yet (at most one)
        self._spare_pending = False
        self._spare_scopes: set[anyio.CancelScope] = set()
        #: the run's context; each node runs in a copy of it
        self._context = _copy_context()

        # --- Limits (see _run_limits and _limits). ----------------------------------------
        #: the limits this run shares (its runtime's, or its own: see Capacity)
        self._global_limits = capacity.global_limits
        self._limits = capacity.limits
        self._limit_cache: dict[int, tuple[Limit, ...]] = {}
        #: slots a limit handed to a parked node of this run, not yet taken; every slot
        #: granted is taken or released exactly once: empty once a phase ends
        self.grants: dict[int, tuple[Limit, ...]] = {}
        self._any_limits = bool(self._global_limits)
        for node in shape.limited:
            self._limit_cache[id(node.options)] = self._resolve_limits(node)
            self._any_limits = True

    def _check_invariants(self) -> None:
        """Raise :class:`aflow.errors.AflowInternalError` naming every invariant this
        closed run breaks (see :mod:`._invariants`)."""
        found = violations(self)
        if found:
            FOUND.extend(f"run {self.run_id}: {v}" for v in found)
            raise AflowInternalError(f"run {self.run_id} broke its invariants: " + "; ".join(found))


class RunShape:
    """What every run of one graph starts from, worked out once per graph (a short run's
    set-up counts): its root nodes, parents per node, the error callbacks' count, which
    group joins tolerate which nodes, and a node per distinct set of options with limits."""

    __slots__ = (
        "done_goal",
        "limited",
        "new_ready",
        "priorities",
        "remaining",
        "roots",
        "tolerated_by",
    )

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.remaining = [len(node.parents) for node in nodes]
        roots: list[int] = []
        errbacks = 0
        tolerant: list[Node] = []
        limited: dict[int, Node] = {}
        prioritised = False
        for node in nodes:
            if node.error_scope is not None:
                errbacks += 1
            elif not node.parents:
                roots.append(node.index)
            if node.tolerates is not None:
                tolerant.append(node)
            options = node.options
            if options.queued:  # limits or a priority (options are interned: few objects)
                if options.limits:
                    limited.setdefault(id(options), node)
                if options.priority:
                    prioritised = True
        #: makes a run's ready queue: a plain deque unless some node has a priority, so a
        #: graph without one pays nothing for them
        self.new_ready: Callable[[Iterable[int]], ReadyQueue] = deque
        #: each node's priority, by index (all 0 without priorities)
        self.priorities: Sequence[float] = _Zeros(len(nodes))
        if prioritised:
            priorities = self.priorities = [node.options.priority for node in nodes]
            self.new_ready = lambda items: PriorityReady(priorities, items)
        self.roots = tuple(roots)
        self.done_goal = len(nodes) - errbacks
        self.limited = tuple(limited.values())
        tolerated_by: dict[int, int] = {}
        if tolerant:  # outermost first: an inner group's join overrides it
            tolerant.sort(key=_tolerated_span, reverse=True)
            for join in tolerant:
                start, end = join.tolerates  # type: ignore[misc]
                for i in range(start, end):
                    tolerated_by[i] = join.index
        self.tolerated_by: Mapping[int, int] = tolerated_by


def _tolerated_span(join: Node) -> int:
    start, end = join.tolerates  # type: ignore[misc]
    return int(end - start)


@final
class _Zeros(Sequence[float]):
    """Every node's priority in a graph without priorities."""

    __slots__ = ("_n",)

    def __init__(self, n: int) -> None:
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: Any) -> Any:
        return 0.0
