"""Checkpoints of one run: node transitions buffered, then written to the store in batches.

A node's success is *held*: its children start only once the batch holding
it is committed (group commit), so a crash never loses a result something
downstream already used. While one batch is being written the next one
fills, so a fan-out pays one transaction per batch, not per node. Reverts
are held the same way: a node's revert starts only once the reverts of its
consumers are on record, so an interrupted compensation resumes where it
stopped.
"""

from __future__ import annotations

import time
from typing import Any, final

import anyio

from .._exceptions import RecordedError, SerializationError
from .._serialize import Serializer
from ..stores._base import NodeRecord, RecordState, Store

__all__ = ["Journal", "describe"]

# A global: every node's start reads it (an Enum attribute is slower).
_RECORD_RUNNING = RecordState.RUNNING


def describe(error: BaseException) -> str:
    """An error as stored text (``Type: message``); NUL, which PostgreSQL text refuses,
    is written as ``\\0``."""
    if isinstance(error, RecordedError):  # recorded before: keep the text as it was
        return error.text
    return f"{type(error).__name__}: {error}".replace("\x00", "\\0")


@final
class Journal:
    """The checkpoint buffer of one run."""

    __slots__ = (
        "_committed",
        "_in_flight",
        "_pending",
        "_superseded",
        "_wake",
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
        #: set once the batch being filled now is committed
        self._committed = anyio.Event()
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
        if not self._wake.is_set():
            self._wake.set()

    def started(self, key: str, attempt: int) -> None:
        """Note a node's start; it goes out with the next batch."""
        self.record(NodeRecord(key, _RECORD_RUNNING, attempt, started_at=time.time()))

    async def record_now(self, node: NodeRecord) -> None:
        """Buffer one record and wait until it is committed (write-ahead)."""
        self.record(node)
        await self._committed.wait()

    async def announce(self, key: str) -> None:
        """Note a node's start and wait until it is committed (write-ahead).

        For nodes with a revert: if the process dies while one runs, its start is
        on record, so cancelling or unwinding the dead run reverts it. Nodes that
        start together share one commit.
        """
        self.started(key, 1)
        await self._committed.wait()

    async def next_batch(self) -> bool:
        """Wait for something to write; False once the phase is over and all is written."""
        while not self._pending and not self.held:
            if self.closing:
                return False
            self._wake = anyio.Event()
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
        self._committed = anyio.Event()
        if batch:
            self._in_flight = True
            try:
                await self.store.write_nodes(self.run_id, batch, superseded)
            finally:
                self._in_flight = False
            self.batches += 1
            self.written += len(batch)
        committed.set()
        return released

    def close(self) -> None:
        """No more transitions this phase: write what is left, then stop."""
        self.closing = True
        self._wake.set()

    def reopen(self) -> None:
        self.closing = False
