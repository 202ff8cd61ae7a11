"""What a store adds to a :class:`~aflow.Runtime`: runs recorded as they go, found again by
their idempotency key, resumed, forked and recovered.

The :class:`Durability` of a runtime owns its store (opened on entry), its
:class:`~._leases.Leases` and its :class:`~._rebuild.Rebuilder`. It starts runs
through the runtime (``Runtime._start``), whose active and finished runs it
reads; without a store it holds nothing but the checked ``lease``,
``serializer`` and ``workflows=``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.abc

from .._events import warn
from .._exceptions import DefinitionError, ResumeMismatch
from .._graph import Graph
from .._serialize import Serializer, serializer_for
from .._workflow import WorkflowBuilder, fingerprint, shape_text
from ..stores._base import (
    NodeRecord,
    RecordState,
    RunRecord,
    Store,
    StoredRunStatus,
    open_store,
)
from ._clock import SYSTEM_CLOCK, wall_time
from ._follow import follow
from ._handle import Run
from ._identity import same_work
from ._ids import new_run_id
from ._journal import Journal
from ._leases import Leases
from ._options import RunOptions, dump_options, stored_options
from ._rebuild import FINISHED, Rebuilder
from ._scheduler import Execution
from ._wake import Waker

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["Durability"]

_KEEP: Any = object()
#: A stored run in one of these is unwinding: a resume goes on undoing it.
_UNWINDING = (StoredRunStatus.REVERTING, StoredRunStatus.CANCELLING)
#: The unfinished statuses recovery looks for, in the order it takes their runs up.
_RECOVERED = (
    StoredRunStatus.RUNNING,
    StoredRunStatus.REVERTING,
    StoredRunStatus.PENDING,
    StoredRunStatus.CANCELLING,
)
#: A fork reuses the stored output of a node in one of these.
_HAS_OUTPUT = (RecordState.SUCCEEDED, RecordState.REUSED)


@final
class Durability:
    """A runtime's store side (see the module's docstring)."""

    __slots__ = (
        "_rt",
        "_spec",
        "followers",
        "leases",
        "rebuilder",
        "recovering",
        "store",
        "waker",
    )

    def __init__(
        self,
        runtime: Runtime,
        store: str | Store | None,
        serializer: str | Serializer,
        workflows: Iterable[WorkflowBuilder[..., Any] | str] | None,
        *,
        lease: float,
        max_recoveries: int,
        recover: bool,
        poll: float = 1.0,
    ) -> None:
        self._rt = runtime
        self._spec = store
        #: the open store, between entry and exit (``None`` without one)
        self.store: Store | None = None
        self.leases = Leases(lease, max_recoveries)
        self.rebuilder = Rebuilder(serializer_for(serializer), workflows)
        #: look for runs whose process died, on entry and every quarter of the lease
        self.recovering = recover
        #: handles on runs another process drives (an idempotency key's), polled until they
        #: end, one per run id, with the scope that stops the polling
        self.followers: dict[str, tuple[Run[Any], anyio.CancelScope]] = {}
        #: takes up this store's unloaded runs when they are due (with a store only)
        self.waker: Waker | None = Waker(self, poll) if store is not None else None

    @property
    def serializer(self) -> Serializer:
        """The serializer this runtime writes runs with."""
        return self.rebuilder.serializer

    def require(self, what: str) -> Store:
        """The open store, for ``what()`` (a :class:`RuntimeError` without one)."""
        if self.store is None:
            raise RuntimeError(
                f"{what}() needs a durable store: Runtime(store='sqlite:///runs.db')"
            )
        return self.store

    # --- entry and exit ------------------------------------------------------------------

    async def open(self) -> None:
        """Open the store (one given as a URL is opened here, and closed in :meth:`close`)."""
        spec = self._spec
        if spec is not None:
            store = open_store(spec) if isinstance(spec, str) else spec
            await store.open()
            self.store = store

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Start the heartbeats, and the look for dead runs with ``recover=True``."""
        self.leases.reset()
        store = self.store
        if store is None:
            return
        clock = self._rt._clock or SYSTEM_CLOCK
        tg.start_soon(
            self.leases.keep_alive, store, clock, self._driven, name="aflow runtime heartbeat"
        )
        if self.recovering:
            tg.start_soon(
                self.leases.keep_looking, store, clock, self.recover, name="aflow runtime recovery"
            )
        waker = self.waker
        if waker is not None and hasattr(store, "due_runs"):
            waker.scope = anyio.CancelScope()
            tg.start_soon(waker.keep_waking, store, name="aflow runtime waker")

    def _driven(self) -> dict[str, Execution]:
        """The durable runs this process drives now, by id (what its heartbeats renew)."""
        return {
            run_id: active._execution
            for run_id, active in self._rt._runs.items()
            if active._execution._journal is not None and not active._execution.closed
        }

    def stop_looking(self) -> None:
        """The runtime begins to close: take up nothing more, follow nothing more."""
        self.leases.looking.cancel()
        for _, follower in self.followers.values():
            follower.cancel()
        if self.waker is not None:
            self.waker.close()

    def stop_heartbeats(self) -> None:
        """Every run has ended: no lease is left to renew."""
        self.leases.alive.cancel()

    async def let_go(self, run_id: str) -> None:
        """A run let go of at shutdown: any process may take it up at once, without
        waiting for its lease to lapse (if the store cannot be told, the lease lapses)."""
        store = self.store
        if store is None:
            return
        try:
            with anyio.CancelScope(shield=True):
                await store.release(run_id, self.leases.owner)
        except Exception as exc:
            warn("aflow_release_failed", run_id=run_id, error=repr(exc))

    async def close(self) -> None:
        """Close a store opened from a URL; the runtime has no store until it is entered again."""
        if self.store is not None and isinstance(self._spec, str):
            with anyio.CancelScope(shield=True):
                await self.store.close()
        self.store = None

    # --- starting runs -------------------------------------------------------------------

    async def submit(
        self,
        workflow: WorkflowBuilder[..., Any],
        graph: Graph,
        params: dict[str, Any],
        run_id: str | None,
        idempotency_key: str | None,
        options: RunOptions,
        taken: dict[str, NodeRecord] | None,
    ) -> Run[Any]:
        """Record a new run and start it, or attach to the run its idempotency key names."""
        store = self.require("submit")
        why = workflow.rebuildable
        if why is not None:
            raise DefinitionError(
                f"workflow {workflow.path} cannot be rebuilt by another process: {why}"
            )
        serializer = self.serializer
        now = wall_time(options.clock)
        record = RunRecord(
            run_id=run_id or new_run_id(),
            workflow=workflow.path,
            params=workflow.dump_params(params, serializer),
            fingerprint=fingerprint(graph),
            status=StoredRunStatus.PENDING,
            idempotency_key=idempotency_key,
            created_at=now,
            updated_at=now,
            serializer=serializer.name,
            owner=self.leases.owner,
            heartbeat=now + self.leases.lease,
            options=dump_options(options, now),
        )
        # (before the run's record: a submit cancelled here leaves no run that nobody
        # drives; once a process has given a shape to a store this is no await at all)
        await _keep_shape(store, record.fingerprint, graph)
        stored, created = await store.create_run(record)
        if not created:
            assert idempotency_key is not None
            if stored.workflow != workflow.path or stored.params != record.params:
                # (parameters that differ as text may still be equal: order, NaN aside)
                loaded = self.rebuilder.serializer_of(stored).loads(stored.params)
                same_work(
                    stored.run_id,
                    idempotency_key,
                    (stored.workflow, loaded),
                    (workflow.path, params),
                )
            return await self._attach(stored, graph)
        restore: tuple[dict[str, NodeRecord], bool, None, dict[str, str]] | None = None
        if taken:
            await store.write_nodes(stored.run_id, list(taken.values()))
            restore = (taken, False, None, {})
        journal = Journal(store, stored.run_id, serializer)
        return self._rt._start(graph, stored.run_id, journal, options, restore)

    def reused(
        self, graph: Graph, reuse: Mapping[str, Any], serializer: Serializer | None = None
    ) -> dict[str, NodeRecord]:
        """Records of reused outputs: serialised for a store (with ``serializer``, else the
        runtime's), as they are without one."""
        taken: dict[str, NodeRecord] = {}
        for key, value in reuse.items():
            graph.node(key)  # KeyError naming the known keys
            if self.store is not None:
                value = (serializer or self.serializer).dumps(value, task=key)
            elif value is None:
                raise ValueError(f"cannot reuse node {key!r}: its output is None")
            taken[key] = NodeRecord(key, RecordState.REUSED, 1, value)
        return taken

    async def _attach(self, stored: RunRecord, graph: Graph) -> Run[Any]:
        """The run an idempotency key names: live here, finished, or left by a dead process."""
        rt = self._rt
        active = rt._runs.get(stored.run_id) or rt._history.get(stored.run_id)
        following = self.followers.get(stored.run_id)
        if following is not None:
            return following[0]
        if active is not None:
            stopped_by_store = active._execution._store_error is not None
            if not (stopped_by_store and stored.status not in FINISHED):
                return active
            return await self.resume(stored.run_id)  # its store failed here; it works again
        if stored.status in FINISHED:
            value, error = self.rebuilder.outcome_of(stored)
            execution = rt._execution(graph, stored.run_id)
            execution.status = FINISHED[stored.status]
            return Run._finished_in_store(execution, value, error)
        # pending or running in the store, but not here: another process has it, or had it
        # and died; wait for it to end there (recovery resumes a dead one).
        assert rt._tg is not None
        return follow(self, stored, rt._execution(graph, stored.run_id), rt._tg)

    # --- taking up stored runs -----------------------------------------------------------

    async def resume(
        self, run_id: str, *, automatic: bool = False, graph: Graph | None = None
    ) -> Run[Any]:
        """Take up a run a dead process left unfinished (see :meth:`aflow.Runtime.resume`);
        ``automatic`` for recovery, which counts the run's recoveries (a person's resume
        gives it a fresh count) and parks a run recovered too often. ``graph``: the run's,
        rebuilt already from its record (a run's workflow and parameters never change)."""
        store = self.require("resume")
        rt = self._rt
        if rt._tg is None:
            raise RuntimeError("resume() needs an entered Runtime: use 'async with Runtime()'")
        active = rt._runs.get(run_id)
        if active is not None and not active._finished.is_set():
            return active
        record = await store.get_run(run_id)
        if record.status in FINISHED:
            raise ResumeMismatch(run_id, f"it has finished already ({record.status})")
        # What a row says is checked before the run is claimed: a bad row stays as it is.
        if graph is None:
            graph = self.rebuilder.graph_of(record)
        options, deadline = stored_options(record, rt._defaults)
        serializer = self.rebuilder.serializer_of(record)
        wall = wall_time(rt._clock)
        leases = self.leases
        if not await store.claim(run_id, leases.owner, leases.lease, now=wall, fresh=not automatic):
            raise ResumeMismatch(
                run_id, f"a live process runs it ({record.owner}); its lease holds"
            )
        try:
            if automatic:
                record = await store.get_run(run_id)
                if record.recoveries > leases.max_recoveries:
                    await leases.park(store, record)
            records = await store.load_nodes(run_id)
            failed_before: dict[str, str] = {}
            if any(node.state == RecordState.REVERT_FAILED for node in records.values()):
                for transition in await store.load_history(run_id):  # oldest first
                    if transition.state == RecordState.FAILED and transition.error is not None:
                        failed_before[transition.key] = transition.error
            journal = Journal(store, run_id, serializer)
            # A run cancelled while its process was gone is unwound at once; what was
            # running when the process died counts as cancelled mid-way (its revert
            # runs), as it would have in the process itself. A parked run with a stored
            # cause was compensating when recovery parked it.
            unwinding = record.status in _UNWINDING or (
                record.status == StoredRunStatus.PARKED and record.error is not None
            )
            if unwinding:  # (a compensation has its own deadline, and its own cause)
                deadline = None
            active = rt._runs.get(run_id)
            if active is not None:  # resumed by another task of this runtime meanwhile
                return active
            restore = (records, unwinding, record.error, failed_before)
            handle = rt._start(graph, run_id, journal, options, restore, deadline)
        except BaseException:  # (a checkpoint that cannot be read...): let go of it at once
            with anyio.CancelScope(shield=True):
                try:
                    await store.release(run_id, leases.owner)
                except Exception as exc:  # its lease lapses instead
                    warn("aflow_release_failed", run_id=run_id, error=repr(exc))
            raise
        _name(handle, record, serializer, record.idempotency_key)
        if record.status == StoredRunStatus.CANCELLING:
            handle._execution.cancel()
        return handle

    async def recover(self) -> list[Run[Any]]:
        """Resume every unfinished run whose process is gone (see
        :meth:`aflow.Runtime.recover`)."""
        store = self.require("recover")
        rt = self._rt
        found: list[Run[Any]] = []
        now = wall_time(rt._clock)
        for status in _RECOVERED:
            for record in await store.list_runs(status, limit=10_000):
                if record.run_id in rt._runs or rt._closing:
                    continue
                if record.owner is not None and (record.heartbeat or 0) >= now:
                    continue  # its owner's lease holds: the process is alive
                try:
                    found.append(await self.resume(record.run_id, automatic=True))
                except ResumeMismatch as exc:  # claimed by another process first, or changed
                    self.leases.warn_once(
                        "aflow_recover_skipped", run_id=record.run_id, reason=str(exc)
                    )
                except Exception as exc:  # one broken run must not keep the others down
                    self.leases.warn_once(
                        "aflow_recover_failed",
                        run_id=record.run_id,
                        workflow=record.workflow,
                        error=f"{type(exc).__name__}: {exc}",
                    )
        return found

    async def fork(
        self, run_id: str, reuse: Mapping[str, Any] | Iterable[str], run_key: str | None
    ) -> Run[Any]:
        """A new run of an earlier run's workflow (see :meth:`aflow.Runtime.fork`)."""
        store = self.require("fork")
        rt = self._rt
        record = await store.get_run(run_id)
        graph = self.rebuilder.graph_of(record)
        old = await store.load_nodes(run_id)
        serializer = self.rebuilder.serializer_of(record)
        overrides = dict(reuse) if isinstance(reuse, Mapping) else dict.fromkeys(reuse, _KEEP)
        new_values = {k: v for k, v in overrides.items() if v is not _KEEP}
        taken = self.reused(graph, new_values, serializer)
        for key, value in overrides.items():
            if value is _KEEP:
                graph.node(key)  # KeyError naming the known keys
                found = old.get(key)
                if found is None or found.state not in _HAS_OUTPUT:
                    raise ResumeMismatch(run_id, f"node {key!r} has no stored output to reuse")
                taken[key] = NodeRecord(key, RecordState.REUSED, 1, found.result)
        await _keep_shape(store, record.fingerprint, graph)  # (a run from before shapes)
        now = wall_time(rt._clock)
        options, _ = stored_options(record, rt._defaults)  # (a new run: its deadline starts now)
        new = RunRecord(
            run_id=new_run_id(),
            workflow=record.workflow,
            params=record.params,
            fingerprint=record.fingerprint,
            status=StoredRunStatus.PENDING,
            idempotency_key=run_key,
            created_at=now,
            updated_at=now,
            serializer=record.serializer,
            owner=self.leases.owner,
            heartbeat=now + self.leases.lease,
            options=dump_options(options, now),  # a new run: its deadline starts now
        )
        stored, created = await store.create_run(new)
        if not created:  # the key names another run: never write into it
            raise ValueError(f"run_key {run_key!r} is used by run {stored.run_id} already")
        await store.write_nodes(stored.run_id, list(taken.values()))
        journal = Journal(store, stored.run_id, serializer)
        handle = rt._start(graph, stored.run_id, journal, options, (taken, False, None, {}))
        _name(handle, record, serializer, run_key)
        return handle


def _name(handle: Run[Any], record: RunRecord, serializer: Serializer, key: str | None) -> None:
    """Say which workflow a resumed or forked run runs, with what (its reports, the
    dashboard's filters and its events' name, as a submitted run's)."""
    try:
        params = serializer.loads(record.params)
    except Exception:  # (a report shows no parameters then; the run itself read them)
        params = None
    handle._origin = (record.workflow, key, params if isinstance(params, dict) else None)
    handle._execution._events.name = record.workflow


#: Per open store, the fingerprints whose shape it was given (by this process).
_SHAPES_KEPT: weakref.WeakKeyDictionary[Store, set[str]] = weakref.WeakKeyDictionary()


async def _keep_shape(store: Store, fingerprint: str, graph: Graph) -> None:
    """Give the store the shape of a run's graph, once per shape and store (for a
    dashboard over the store alone); a store that cannot keep it, or fails to, is
    only warned about: a run never fails for it."""
    save = getattr(store, "save_shape", None)
    if save is None:
        return
    try:
        kept = _SHAPES_KEPT.setdefault(store, set())
    except TypeError:  # (a store that cannot be weakly referenced: given each time)
        kept = set()
    if fingerprint in kept:
        return
    try:
        await save(fingerprint, shape_text(graph))
    except Exception as exc:
        warn("aflow_shape_not_kept", store=store.url, error=repr(exc))
        return
    kept.add(fingerprint)
