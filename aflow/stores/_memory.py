"""The in-memory store: the same behaviour as the durable ones, gone with the process."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any, final

from .._exceptions import RunExists, RunNotFound
from ._base import ENDED, NodeRecord, RunRecord, SendOutcome, StoredRunStatus, WaitRecord
from ._sql import CANCELLABLE, UNFINISHED

_CANCELLING = StoredRunStatus.CANCELLING
_PARKED = StoredRunStatus.PARKED
#: A run that keeps what started its compensation when a cancel is asked.
_KEEPS_CAUSE = (StoredRunStatus.REVERTING, _PARKED)

__all__ = ["MemoryStore"]


@final
class MemoryStore:
    """Runs and node transitions in dicts (the default for a plain ``await``)."""

    url = "memory://"

    def __init__(self) -> None:
        self._runs: dict[str, RunRecord] = {}
        #: the runs that may be due for a waker (waiting or cancelling when last set): a
        #: waker looks at those only, not at every run the store ever kept
        self._maybe_due: set[str] = set()
        self._keys: dict[str, str] = {}
        #: graph shapes by fingerprint (what a dashboard draws)
        self._shapes: dict[str, str] = {}
        self._nodes: dict[str, dict[str, NodeRecord]] = {}
        self._history: dict[str, list[NodeRecord]] = {}
        #: per run: events as [name, message id, payload, consumed by, sent at], in the
        #: order sent
        self._events: dict[str, list[list[Any]]] = {}
        self._values: dict[tuple[str, str], str | None] = {}
        self._waits: dict[str, dict[str, WaitRecord]] = {}

    def __repr__(self) -> str:
        return f"<MemoryStore [{len(self._runs)} runs]>"

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        key = record.idempotency_key
        if key is not None and key in self._keys:
            return self._runs[self._keys[key]], False
        if record.run_id in self._runs:
            raise RunExists(record.run_id, self.url)
        self._runs[record.run_id] = record
        if record.status in _MAYBE_DUE:
            self._maybe_due.add(record.run_id)
        self._nodes[record.run_id] = {}
        self._history[record.run_id] = []
        if key is not None:
            self._keys[key] = record.run_id
        return record, True

    async def get_run(self, run_id: str) -> RunRecord:
        try:
            return self._runs[run_id]
        except KeyError:
            raise RunNotFound(run_id, self.url) from None

    async def list_runs(
        self, status: StoredRunStatus | None = None, limit: int = 100
    ) -> list[RunRecord]:
        runs = [r for r in self._runs.values() if status is None or r.status == status]
        runs.sort(key=lambda r: r.created_at, reverse=True)
        return runs[:limit]

    async def set_status(
        self,
        run_id: str,
        status: StoredRunStatus,
        *,
        result: str | None = None,
        error: str | None = None,
        ended_at: float | None = None,
    ) -> None:
        run = await self.get_run(run_id)
        self._runs[run_id] = dataclasses.replace(
            run,
            status=status,
            updated_at=time.time(),
            result=result if result is not None else run.result,
            error=error if error is not None else run.error,
            ended_at=ended_at if ended_at is not None else run.ended_at,
        )
        if status in _MAYBE_DUE:
            self._maybe_due.add(run_id)

    async def write_nodes(
        self, run_id: str, nodes: Sequence[NodeRecord], superseded: Sequence[NodeRecord] = ()
    ) -> None:
        self.try_write_nodes(run_id, nodes, superseded)

    def try_write_nodes(
        self, run_id: str, nodes: Sequence[NodeRecord], superseded: Sequence[NodeRecord] = ()
    ) -> bool:
        """:meth:`write_nodes` at once (it never waits): always True."""
        table = self._nodes.get(run_id)
        if table is None:
            raise RunNotFound(run_id, self.url)
        history = self._history[run_id]
        history.extend(superseded)
        for node in nodes:
            history.append(node)  # its result is dropped when the history is read
            old = table.get(node.key)
            if old is not None:  # a later transition keeps the result and start time it lacks
                node = dataclasses.replace(
                    node,
                    result=node.result if node.result is not None else old.result,
                    started_at=node.started_at if node.started_at is not None else old.started_at,
                )
            table[node.key] = node
        return True

    async def claim(
        self,
        run_id: str,
        owner: str,
        lease: float,
        *,
        now: float | None = None,
        fresh: bool = False,
    ) -> bool:
        run = await self.get_run(run_id)
        now = time.time() if now is None else now
        if run.owner not in (None, owner) and (run.heartbeat or 0) >= now:
            return False  # another owner's lease has not run out
        taken = run.owner is not None and run.owner != owner
        recoveries = 0 if fresh else run.recoveries + taken
        self._runs[run_id] = dataclasses.replace(
            run, owner=owner, heartbeat=now + lease, recoveries=recoveries
        )
        return True

    async def release(self, run_id: str, owner: str) -> bool:
        run = self._runs.get(run_id)
        if run is None or run.owner != owner or run.status not in CANCELLABLE:
            return False
        self._runs[run_id] = dataclasses.replace(run, owner=None, heartbeat=None)
        return True

    async def start_run(
        self, run_id: str, status: StoredRunStatus, error: str | None
    ) -> StoredRunStatus:
        run = await self.get_run(run_id)
        if run.status != _CANCELLING:
            await self.set_status(run_id, status, error=error)
        return (await self.get_run(run_id)).status

    async def request_cancel(self, run_id: str, reason: str) -> StoredRunStatus:
        run = await self.get_run(run_id)
        if run.status in CANCELLABLE:
            keep = run.status in _KEEPS_CAUSE and run.error is not None
            if run.status == _PARKED:
                self._runs[run_id] = dataclasses.replace(run, recoveries=0)
            await self.set_status(run_id, _CANCELLING, error=None if keep else reason)
            return _CANCELLING
        return run.status

    async def heartbeat(
        self, owner: str, lease: float, run_ids: Sequence[str], *, now: float | None = None
    ) -> dict[str, StoredRunStatus]:
        expires = (time.time() if now is None else now) + lease
        renewed: dict[str, StoredRunStatus] = {}
        for run_id in run_ids:
            run = self._runs.get(run_id)
            if run is not None and run.owner == owner and run.status in UNFINISHED:
                self._runs[run_id] = dataclasses.replace(run, heartbeat=expires)
                renewed[run_id] = run.status
        return renewed

    async def load_nodes(self, run_id: str) -> dict[str, NodeRecord]:
        table = self._nodes.get(run_id)
        if table is None:
            raise RunNotFound(run_id, self.url)
        return dict(table)

    async def load_history(self, run_id: str) -> list[NodeRecord]:
        await self.get_run(run_id)
        return [dataclasses.replace(node, result=None) for node in self._history[run_id]]

    # --- events, published values and waits (see Store) -----------------------------------

    async def run_of_key(self, idempotency_key: str) -> str | None:
        return self._keys.get(idempotency_key)

    async def send_event(
        self, run_id: str, name: str, message_id: str, payload: str | None, now: float
    ) -> tuple[SendOutcome, StoredRunStatus]:
        run = await self.get_run(run_id)
        events = self._events.get(run_id, [])
        if any(e[0] == name and e[1] == message_id for e in events):
            return "duplicate", run.status
        if run.status in ENDED:
            return "ended", run.status
        self._events.setdefault(run_id, events).append([name, message_id, payload, None, now])
        if run.status == StoredRunStatus.WAITING and name in json.loads(run.waiting_for or "[]"):
            self._runs[run_id] = dataclasses.replace(run, wake_at=0.0)
        return "kept", run.status

    async def take_event(
        self, run_id: str, name: str, consumer: str, sent_by: float | None = None
    ) -> tuple[bool, str | None]:
        events = self._events.get(run_id, [])
        for event in events:
            if event[0] == name and event[3] == consumer:
                return True, event[2]
        for event in events:
            if event[0] == name and event[3] is None and (sent_by is None or event[4] <= sent_by):
                event[3] = consumer
                return True, event[2]
        return False, None

    async def begin_wait(
        self, run_id: str, key: str, event: str | None, deadline: float | None, now: float
    ) -> float | None:
        await self.get_run(run_id)
        waits = self._waits.setdefault(run_id, {})
        if key not in waits:
            waits[key] = WaitRecord(key, event, deadline, now)
        return waits[key].deadline

    async def load_waits(self, run_id: str) -> list[WaitRecord]:
        return sorted(self._waits.get(run_id, {}).values(), key=lambda w: (w.started_at, w.key))

    async def park_waiting(
        self, run_id: str, owner: str, wake_at: float | None, events: Sequence[str], now: float
    ) -> bool:
        run = self._runs.get(run_id)
        if run is None or run.owner != owner or run.status != StoredRunStatus.RUNNING:
            return False
        names = set(events)
        if any(e[0] in names and e[3] is None for e in self._events.get(run_id, [])):
            wake_at = 0.0
        self._runs[run_id] = dataclasses.replace(
            run,
            status=StoredRunStatus.WAITING,
            updated_at=now,
            owner=None,
            heartbeat=None,
            wake_at=wake_at,
            waiting_for=json.dumps(list(events)),
        )
        self._maybe_due.add(run_id)
        return True

    async def due_runs(self, now: float, limit: int = 100) -> list[RunRecord]:
        due = []
        for run in self._due_candidates():
            if (
                run.status == StoredRunStatus.WAITING
                and run.wake_at is not None
                and run.wake_at <= now
            ) or (run.status == _CANCELLING and run.owner is None):
                due.append(run)
        due.sort(key=lambda run: run.wake_at if run.wake_at is not None else -1.0)
        return due[:limit]

    async def next_wake(self) -> float | None:
        times = [
            run.wake_at
            for run in self._due_candidates()
            if run.status == StoredRunStatus.WAITING and run.wake_at is not None
        ]
        return min(times) if times else None

    def _due_candidates(self) -> list[RunRecord]:
        """The runs waiting or cancelling now (the others are dropped as candidates)."""
        found = []
        for run_id in list(self._maybe_due):
            record = self._runs[run_id]
            if record.status in _MAYBE_DUE:
                found.append(record)
            else:
                self._maybe_due.discard(run_id)
        return found

    async def save_shape(self, fingerprint: str, shape: str) -> None:
        self._shapes.setdefault(fingerprint, shape)

    async def load_shape(self, fingerprint: str) -> str | None:
        return self._shapes.get(fingerprint)

    async def set_value(self, run_id: str, name: str, payload: str | None, now: float) -> None:
        await self.get_run(run_id)
        self._values[run_id, name] = payload

    async def get_value(self, run_id: str, name: str) -> tuple[bool, str | None]:
        await self.get_run(run_id)
        if (run_id, name) in self._values:
            return True, self._values[run_id, name]
        return False, None


_MAYBE_DUE = frozenset({StoredRunStatus.WAITING, StoredRunStatus.CANCELLING})
