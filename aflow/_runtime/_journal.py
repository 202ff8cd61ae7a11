"""Checkpoints of one run: node transitions buffered, then written to the store in batches.

A node's success is *held*: its children start only once the batch holding
it is committed (group commit), so a crash never loses a result something
downstream already used. While one batch is being written the next one
fills, so a fan-out pays one transaction per batch, not per node. Reverts
are held the same way: a node's revert starts only once the reverts of its
consumers are on record, so an interrupted compensation resumes where it
stopped.

A store that can commit a small batch at once, on the calling thread
(``try_write_nodes``, see :meth:`Journal.write_now`), lets a worker with
nothing else to do commit the batch itself, with no task switch: a chain's
step then costs its commit. It is the same batch, written by the same rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, final

import anyio

from .._exceptions import RecordedError, SerializationError, told
from .._serialize import Serializer
from ..stores._base import NodeRecord, RecordState, Store

__all__ = ["Journal", "describe"]

# A global: every node's start reads it (an Enum attribute is slower).
_RECORD_RUNNING = RecordState.RUNNING

#: A store's synchronous write of one batch (see :func:`sync_writer`).
SyncWrite = Callable[[str, Sequence[NodeRecord], Sequence[NodeRecord]], bool]


def sync_writer(store: Store) -> SyncWrite | None:
    """The store's ``try_write_nodes(run_id, nodes, superseded) -> bool`` (commit the batch
    at once on the calling thread if that needs no waiting, else write nothing and say
    False), if the class that defines its ``write_nodes`` defines that too: a wrapper or a
    subclass that overrides ``write_nodes`` alone is never bypassed."""
    for cls in type(store).__mro__:
        if "write_nodes" in cls.__dict__:
            if "try_write_nodes" in cls.__dict__:
                write: SyncWrite = store.try_write_nodes  # type: ignore[attr-defined]
                return write
            return None
    return None


def describe(error: BaseException) -> str:
    """An error as stored text (``Type: message``); NUL, which PostgreSQL text refuses,
    is written as ``\\0``."""
    if isinstance(error, RecordedError):  # recorded before: keep the text as it was
        return error.text
    return f"{type(error).__name__}: {told(error)}".replace("\x00", "\\0")


@final
class Journal:
    """The checkpoint buffer of one run."""

    __slots__ = (
        "_committed",
        "_in_flight",
        "_pending",
        "_superseded",
        "_wake",
        "_woken",
        "_write_now",
        "batches",
        "closing",
        "held",
        "run_id",
        "serializer",
        "store",
        "written",
    )

    def __init__(self, store: Store, run_id: str, serializer: Serializer) -> None:
        self.store = store
        self.run_id = run_id
        self.serializer = serializer
        self._pending: dict[str, NodeRecord] = {}
        #: earlier transitions of a node in the same batch that carry an error (a retry's)
        self._superseded: list[NodeRecord] = []
        #: (kind, node index) released once the pending batch is committed
        self.held: list[tuple[str, int]] = []
        self._wake = anyio.Event()
        self._woken = False  # (_wake is set: one call less than asking it)
        #: set once the batch being filled now is committed (made when someone waits)
        self._committed: anyio.Event | None = None
        self._write_now = sync_writer(store)
        #: a batch being written: what it releases is not released yet
        self._in_flight = False
        self.closing = False
        self.batches = 0
        self.written = 0

    @property
    def holding(self) -> bool:
        """True while transitions wait to be written or are being written."""
        return bool(self._pending or self.held or self._in_flight)

    def encode(self, task: str, value: Any) -> str:
        """The stored form of a result (raises :class:`aflow.errors.SerializationError`)."""
        try:
            return self.serializer.dumps(value, task=task)
        except SerializationError:
            raise
        except Exception as exc:  # a custom serializer's own error: the same contract
            raise SerializationError(task, type(value), "result", repr(exc)) from exc

    def record(self, node: NodeRecord, hold: tuple[str, int] | None = None) -> None:
        """Buffer one transition; ``hold`` is released to the scheduler after it is written."""
        earlier = self._pending.get(node.key)
        if earlier is not None and earlier.error is not None:  # the history keeps it
            self._superseded.append(earlier)
        self._pending[node.key] = node
        if hold is not None:
            self.held.append(hold)
        if not self._woken:
            self._woken = True
            self._wake.set()

    def started(self, key: str, attempt: int) -> None:
        """Note a node's start; it goes out with the next batch."""
        self.record(NodeRecord(key, _RECORD_RUNNING, attempt, started_at=time.time()))

    async def record_now(self, node: NodeRecord) -> None:
        """Buffer one record and wait until it is committed (write-ahead)."""
        self.record(node)
        await self.committed()

    async def announce(self, key: str) -> None:
        """Note a node's start and wait until it is committed (write-ahead).

        For nodes with a revert: if the process dies while one runs, its start is
        on record, so cancelling or unwinding the dead run reverts it. Nodes that
        start together share one commit.
        """
        self.started(key, 1)
        await self.committed()

    async def committed(self) -> None:
        """Wait until the batch being filled now is committed (never, if its write fails)."""
        committed = self._committed
        if committed is None:
            committed = self._committed = anyio.Event()
        await committed.wait()

    async def next_batch(self) -> bool:
        """Wait for something to write; False once the phase is over and all is written."""
        while not self._pending and not self.held:
            if self.closing:
                return False
            self._wake = anyio.Event()
            self._woken = False
            await self._wake.wait()
        return True

    async def write(self) -> list[tuple[str, int]]:
        """Write what is pending in one transaction; return the transitions it releases."""
        batch = list(self._pending.values())
        superseded = self._superseded
        released = self.held
        committed = self._committed
        self._pending = {}
        self._superseded = []
        self.held = []
        self._committed = None
        if batch:
            self._in_flight = True
            try:
                await self.store.write_nodes(self.run_id, batch, superseded)
            finally:
                self._in_flight = False
            self.batches += 1
            self.written += len(batch)
        if committed is not None:
            committed.set()
        return released

    def write_now(self) -> list[tuple[str, int]] | None:
        """What :meth:`write` does, at once on this thread, if the store can commit the
        batch without waiting (``try_write_nodes``) and no batch is in flight; None if it
        cannot (nothing changed: :meth:`write` writes it later). A failed write drops the
        batch and releases nothing, as :meth:`write` does."""
        write = self._write_now
        if write is None or self._in_flight:
            return None
        pending = self._pending
        if pending:
            batch = list(pending.values())
            try:
                if not write(self.run_id, batch, self._superseded):
                    return None
            except BaseException:
                self._pending = {}
                self._superseded = []
                self.held = []
                self._committed = None
                raise
            self._pending = {}
            self._superseded = []
            self.batches += 1
            self.written += len(batch)
        released = self.held
        self.held = []
        committed = self._committed
        if committed is not None:
            self._committed = None
            committed.set()
        return released

    def close(self) -> None:
        """No more transitions this phase: write what is left, then stop."""
        self.closing = True
        self._woken = True
        self._wake.set()

    def reopen(self) -> None:
        self.closing = False
