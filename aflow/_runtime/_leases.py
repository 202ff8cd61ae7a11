"""Leases: how a process says it still drives its durable runs, and how it finds runs whose
process died.

Each durable run a process drives carries a lease in its store: the process's
``owner`` id and a heartbeat, a wall time ``lease`` seconds ahead. The process
renews it every quarter of the lease (:meth:`Leases.keep_alive`). A run whose
heartbeat is in the past belongs to a dead process, and any runtime with the
store may claim it: one with ``recover=True`` looks every quarter of its lease
(:meth:`Leases.keep_looking`). A run taken over more than ``max_recoveries``
times, each from a process that died holding it, is parked (:meth:`Leases.park`)
for a person to resume or cancel.

Heartbeats are written and compared as wall times, since other processes read
them; the waits between them are on the runtime's clock.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn, final

import anyio

from .._events import warn
from .._exceptions import LeaseLost, ResumeMismatch
from ..stores._base import RunRecord, Store, StoredRunStatus
from ._clock import Clock, wall_time
from ._scheduler import Execution

__all__ = ["DEFAULT_LEASE", "Leases"]

#: Seconds without a heartbeat after which a run's process counts as dead (recovery takes it).
DEFAULT_LEASE = 10.0


@final
class Leases:
    """A runtime's leases on its durable runs, and its look for runs whose process died."""

    __slots__ = ("_idle", "_warned", "alive", "lease", "looking", "max_recoveries", "owner")

    def __init__(self, lease: float, max_recoveries: int) -> None:
        if not lease > 0:
            raise ValueError(f"lease must be a number of seconds > 0, got {lease!r}")
        if not (isinstance(max_recoveries, int) and max_recoveries >= 0):
            raise ValueError(f"max_recoveries must be an int >= 0, got {max_recoveries!r}")
        self.lease = lease
        self.max_recoveries = max_recoveries
        #: this process, as the store knows it: host, pid and a token of this runtime
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: stops the heartbeats (once every run has ended) and the look for dead runs
        #: (as the runtime begins to close); new ones each time the runtime is entered
        self.alive = anyio.CancelScope()
        self.looking = anyio.CancelScope()
        self._warned: set[tuple[str, str]] = set()
        #: set when a durable run starts here while the heartbeats wait for one
        self._idle: anyio.Event | None = None

    def started(self) -> None:
        """A durable run starts in this process: its lease is renewed from now on."""
        if self._idle is not None:
            self._idle.set()

    def reset(self) -> None:
        """Fresh scopes for a runtime entered (again)."""
        self.alive = anyio.CancelScope()
        self.looking = anyio.CancelScope()

    async def keep_alive(
        self, store: Store, clock: Clock, driven: Callable[[], Mapping[str, Execution]]
    ) -> None:
        """Say this process still runs its durable runs (``driven()``: by run id); obey
        ``aflow cancel`` for them.

        A run this process no longer owns stops here (:class:`~aflow.errors.LeaseLost`):
        another process took it over, or the heartbeats failed for longer than the
        lease, after which recovery elsewhere may take it at any moment.
        """
        lease = self.lease
        until: dict[str, float] = {}  # run id -> when its lease runs out, as far as we know
        with self.alive:
            while True:
                if not until and not driven():
                    # Nothing to renew (every run ended, or waits unloaded): no tick until
                    # a durable run starts (a fake clock jumps straight to the next timer).
                    self._idle = anyio.Event()
                    await self._idle.wait()
                    self._idle = None
                await clock.sleep(lease / 4)
                await self._tick(store, clock, driven(), until)

    async def _tick(
        self, store: Store, clock: Clock, runs: Mapping[str, Execution], until: dict[str, float]
    ) -> None:
        """One heartbeat of :meth:`keep_alive`. A function of its own so that nothing holds
        the runs it renewed past it: a run unloaded meanwhile (it waits) is freed at once,
        not at the next tick."""
        lease = self.lease
        now = clock.now()
        for run_id in runs:
            until.setdefault(run_id, now + lease)  # claimed or created just now
        for run_id in list(until):
            if run_id not in runs:
                del until[run_id]
        try:
            renewed = await store.heartbeat(self.owner, lease, list(runs), now=wall_time(clock))
        except Exception as exc:  # the next tick tries again; the runs go on meanwhile
            warn("aflow_heartbeat_failed", store=store.url, error=repr(exc))
            for run_id, execution in runs.items():
                if clock.now() > until[run_id]:
                    reason = f"its heartbeats failed for over {lease} s ({exc!r})"
                    execution._store_failed(LeaseLost(run_id, reason))
            return
        expires = now + lease
        for run_id, execution in runs.items():
            status = renewed.get(run_id)
            if status is None:
                if not execution.closed:  # (a run that just ended is not ours to stop)
                    reason = "another process owns it now"
                    execution._store_failed(LeaseLost(run_id, reason))
                continue
            until[run_id] = expires
            if status == StoredRunStatus.CANCELLING:
                execution.cancel()

    async def keep_looking(
        self, store: Store, clock: Clock, recover: Callable[[], Awaitable[object]]
    ) -> None:
        """Look for runs whose process died (``recover()``) every quarter of the lease, so
        one is taken up within its lease plus a quarter (issue 14). A task of its own: a
        slow look must not hold up the heartbeats that keep this process's own leases."""
        with self.looking:  # (cancelled as the runtime begins to close)
            while True:
                await clock.sleep(self.lease / 4)
                try:
                    await recover()
                except Exception as exc:  # the store hiccupped: the next tick looks again
                    warn("aflow_recover_failed", store=store.url, error=repr(exc))

    async def park(self, store: Store, record: RunRecord) -> NoReturn:
        """Recovery took this run over more than ``max_recoveries`` times, each from a
        process that died holding it: it is parked (recovery leaves it alone), for a
        person to resume or cancel."""
        await store.set_status(record.run_id, StoredRunStatus.PARKED)  # (its stored cause stays)
        await store.release(record.run_id, self.owner)
        warn(
            "aflow_run_parked",
            run_id=record.run_id,
            workflow=record.workflow,
            recoveries=record.recoveries,
        )
        raise ResumeMismatch(
            record.run_id,
            f"parked: recovered {record.recoveries} times, each time from a process that "
            f"died holding it (max_recoveries={self.max_recoveries}); resume it by hand "
            "(aflow resume) once the cause is fixed, or cancel it (aflow cancel)",
        )

    def warn_once(self, event: str, **fields: Any) -> None:
        """A run recovery keeps skipping is logged once by this runtime, not every tick."""
        key = (str(fields.get("run_id")), event)
        if key not in self._warned:
            self._warned.add(key)
            warn(event, **fields)
