"""The state of one run: its fields, what each one means, and the checks on them."""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel

from .._events import (
    EventListener,
    EventSink,
)
from .._failure import Failure
from .._graph import Graph, Node, NodeKind
from ._clock import SYSTEM_CLOCK, Clock, DeadlineScope
from ._journal import Journal
from ._limits import Limit
from ._states import NodeState, RunStatus

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from .._exceptions import StoreError
    from .._options import NodeOptions

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


class RunState:
    """The fields every unit of a run reads and writes (see :class:`Execution`)."""

    __slots__ = (
        "__weakref__",
        "_announced",
        "_any_limits",
        "_attempts",
        "_cancel_requested",
        "_children",
        "_clock",
        "_compensation_timeout",
        "_context",
        "_crew",
        "_crew_done_callback",
        "_crew_error",
        "_crew_idle",
        "_deadline",
        "_deferred_cancel",
        "_done",
        "_done_count",
        "_errbacks_due",
        "_errors",
        "_events",
        "_executor",
        "_failure",
        "_failures",
        "_finished",
        "_global_limits",
        "_halt",
        "_handoff",
        "_incarnation",
        "_journal",
        "_key_prefix",
        "_limit_cache",
        "_limits",
        "_loop",
        "_map_calls",
        "_needed",
        "_nested",
        "_nested_runs",
        "_nodes",
        "_on_error",
        "_parent",
        "_parked",
        "_peak",
        "_phase_open",
        "_ready",
        "_releasing",
        "_remaining",
        "_results",
        "_resumed_unwinding",
        "_revert_attempts",
        "_revert_errors",
        "_reverted",
        "_reverting",
        "_running",
        "_scope",
        "_spare_pending",
        "_spare_scopes",
        "_started",
        "_states",
        "_store_error",
        "_suspend_requested",
        "_tg",
        "_thread_limiter",
        "_timed_out",
        "_timeout",
        "_tolerated_by",
        "_trigger",
        "_unwinding",
        "_wall_deadline",
        "_wall_offset",
        "closed",
        "ended_at",
        "grants",
        "graph",
        "release_on_interrupt",
        "restored",
        "run_id",
        "started_at",
        "status",
        "stopping",
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
        def _end_phase(self) -> None: ...
        def cancel(self) -> None: ...
        def _being_released(self) -> bool: ...
        def _close(self, status: RunStatus) -> None: ...

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
        async def _unwind(self) -> None: ...
        def _unwound(self, index: int) -> None: ...

        # outcome.py
        def _trigger_text(self, caller_cancel: BaseException | None) -> str: ...
        def _stopped_by_store(self) -> StoreError: ...
        def _root_failures(self) -> list[BaseException]: ...
        def _note_outcome(self, primary: BaseException) -> None: ...
        def _why_cut_short(self, exc: BaseException) -> str: ...
        def _errors_for(self, node: Node) -> BaseException: ...
        async def _run_errbacks(self) -> list[tuple[str, BaseException]]: ...

        # checkpoints.py
        async def _write_leftover(self) -> None: ...
        async def _flusher(self, journal: Journal) -> None: ...
        def _checkpoint_success(
            self, node: Node, value: Any, attempt: int, start: float
        ) -> None: ...

        # crew.py
        def _ensure_worker(self) -> None: ...
        def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...
        def _crew_done(self, task: asyncio.Task[Any]) -> None: ...
        def _stop_phase(self) -> None: ...
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
        def _return_grants(self) -> None: ...
        def _forget_waiters(self) -> None: ...

    def __init__(
        self,
        graph: Graph,
        *,
        run_id: str | None = None,
        max_concurrency: int | None = None,
        limits: Mapping[str, Limit] | None = None,
        global_limits: Sequence[Limit] = (),
        thread_limiter: anyio.CapacityLimiter | None = None,
        listeners: Sequence[EventListener] = (),
        on_error: str = "revert",
        timeout: float | None = None,
        compensation_timeout: float | None = None,
        clock: Clock | None = None,
        executor: Executor | None = None,
        nested: bool = False,
        journal: Journal | None = None,
    ) -> None:
        if on_error not in ("revert", "continue"):
            raise ValueError(f"on_error must be 'revert' or 'continue', got {on_error!r}")
        for name, value in (("timeout", timeout), ("compensation_timeout", compensation_timeout)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        self.graph = graph
        self.run_id = run_id or uuid.uuid4().hex
        self.status = RunStatus.PENDING
        self.closed = False
        self.stopping = False
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._on_error = on_error
        self._timeout = timeout
        self._compensation_timeout = compensation_timeout
        self._clock: Clock = clock or SYSTEM_CLOCK
        nodes = graph.nodes
        n = len(nodes)
        self._nodes = nodes
        self._children = graph._children
        self._results: list[Any] = [None] * n
        self._states: list[NodeState] = [_PENDING] * n
        self._remaining = [len(node.parents) for node in nodes]
        self._started: list[float | None] = [None] * n
        self._finished: list[float | None] = [None] * n
        self._attempts: dict[int, int] = {}
        self._revert_attempts: dict[int, int] = {}
        self._map_calls: dict[int, list[tuple[Any, Any]]] = {}
        self._errors: dict[int, BaseException] = {}
        self._failures: dict[int, Failure] = {}
        self._revert_errors: dict[int, BaseException] = {}
        self._reverted: list[int] = []
        self._reverting: frozenset[int] = frozenset()
        self._ready: deque[int] = deque()
        errbacks = 0
        tolerant: list[Node] = []
        for node in nodes:
            if node.error_scope is not None:
                errbacks += 1
            elif not node.parents:
                self._ready.append(node.index)
            if node.tolerates is not None:
                tolerant.append(node)
        self._needed = n - errbacks
        # node -> the join of the innermost group with a threshold that tolerates it
        self._tolerated_by: dict[int, int] = {}
        for join in sorted(tolerant, key=lambda j: j.tolerates[1] - j.tolerates[0], reverse=True):  # type: ignore[index]
            start, end = join.tolerates  # type: ignore[misc]
            for i in range(start, end):
                self._tolerated_by[i] = join.index
        self._done_count = 0
        self._running = 0
        self._parked = 0
        self._peak = 0
        self._failure: tuple[int, BaseException] | None = None
        self._errbacks_due = False
        self._halt = False
        self._unwinding = False
        self._cancel_requested = False
        self._suspend_requested = False
        #: let go of at shutdown (see release()): nothing is undone, the store keeps it
        self._releasing = False
        #: a run its runtime owns is cancelled through cancel(); a native cancellation of
        #: its task means the runtime itself is going away (its task group, or a scope
        #: around it, was cancelled): with this set, that releases the run (issue 14)
        self.release_on_interrupt = False
        self._executor = executor
        self._nested = nested
        #: a nested run's steps are known by their path: see nested()
        self._key_prefix = ""
        self._nested_runs: dict[int, int] | None = None
        self._incarnation = ""  # "~<token>" once restored (see nested())
        self._parent: RunState | None = None
        self._journal = journal
        self._resumed_unwinding = False
        self._store_error: BaseException | None = None
        #: nodes whose start went out with their parent's success (write-ahead for free)
        self._announced: set[int] = set()
        #: taken up from checkpoints (a resumed or forked run)
        self.restored = False
        #: What stopped the run, as stored while it is reverting (a resume needs it)
        self._trigger: str | None = None
        self._timed_out = False
        #: the run's own deadline, while its forward phase runs
        self._deadline: DeadlineScope | None = None
        #: a resumed run's deadline, as its store kept it (see keep_deadline())
        self._wall_deadline: float | None = None
        self._deferred_cancel: BaseException | None = None
        self._spare_pending = False
        #: set by the flusher after each batch, for the worker waiting on it (see _worker)
        self._handoff: anyio.Event | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        #: the phase's worker tasks, and what waits for the last of them to end
        self._crew: set[asyncio.Task[Any]] = set()
        self._crew_idle: asyncio.Future[None] | None = None
        self._crew_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._crew_done_callback = self._crew_done  # one bound method, not one a task
        self._phase_open = False
        self._spare_scopes: set[anyio.CancelScope] = set()
        self._done: anyio.Event | None = None
        self._wall_offset = 0.0
        self._context = _copy_context()
        self._thread_limiter = thread_limiter
        self._events = EventSink(self.run_id, listeners, run_events=not nested)

        global_ = list(global_limits)
        if max_concurrency is not None:
            global_.append(Limit("max_concurrency", max_concurrency))
        self._global_limits = tuple(global_)
        self._limits = dict(limits or {})
        self._limit_cache: dict[int, tuple[Limit, ...]] = {}
        self.grants: dict[int, tuple[Limit, ...]] = {}
        self._any_limits = bool(self._global_limits)
        for node in nodes:  # options are interned: this loop sees few distinct objects
            if node.options.limits and id(node.options) not in self._limit_cache:
                self._limit_cache[id(node.options)] = self._resolve_limits(node)
                self._any_limits = True
