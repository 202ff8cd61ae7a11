"""The store protocol, its records, and opening a store from a URL."""

from __future__ import annotations

import enum
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias, runtime_checkable

from .._exceptions import StoreError

__all__ = [
    "ENDED",
    "READABLE_SCHEMA",
    "SCHEMA_VERSION",
    "NodeRecord",
    "RecordState",
    "RunRecord",
    "SendOutcome",
    "Store",
    "StoredRunStatus",
    "WaitRecord",
    "open_store",
]

#: The schema this aflow writes; a store written by a newer aflow is refused.
SCHEMA_VERSION = 5
#: The oldest schema a read-only open reads (what it lacks is only read when there:
#: schema 5's graph shapes); an older one is migrated by a process that writes to it.
READABLE_SCHEMA = 4


class StoredRunStatus(enum.StrEnum):
    """A run's status as its store keeps it (:attr:`RunRecord.status`).

    Each member is the very text stored (a member is a ``str``, equal to it), so
    rows written before this enum existed read the same. A store hands out members;
    a row holding any other text is refused with :class:`~aflow.errors.StoreError`
    as it is read. Adding a member changes the schema: :data:`SCHEMA_VERSION` goes
    up with it, so an older aflow refuses the whole store instead of one row.

    The four ends are the values of :class:`aflow.RunStatus` of the same names; the
    others say where an unfinished run is, for recovery and ``aflow cancel``.
    """

    #: Recorded by ``Runtime.submit`` / ``fork`` as the run is created, owned by the
    #: process that created it, before it starts. Unfinished: recovery takes it up once
    #: its owner's lease has run out, and runs what is not on record (a fork's reused
    #: nodes are).
    PENDING = "pending"
    #: Its owner runs it forward (``start_run`` as it starts or is resumed). Unfinished:
    #: a resume (by hand, or recovery once the lease lapsed) runs again only what is not
    #: on record as done.
    RUNNING = "running"
    #: A failure, a cancel or the deadline stopped it and its owner is undoing what ran;
    #: ``error`` holds what started the compensation. Unfinished: a resume goes on
    #: unwinding from the reverts on record.
    REVERTING = "reverting"
    #: A cancel was asked (``aflow cancel``, a following handle's ``cancel()``,
    #: :meth:`Store.request_cancel`) of an unfinished or parked run; its owner sees it at
    #: its next heartbeat and cancels. Unfinished: a resume unwinds it at once.
    CANCELLING = "cancelling"
    #: Recovery took it over from dead processes more than ``max_recoveries`` times
    #: (``Runtime(max_recoveries=)``): recovery leaves it alone and a following handle
    #: ends with a :class:`~aflow.errors.RunError`. A person resumes it (``aflow
    #: resume``: unwinding if ``error`` holds a cause, else forward) or cancels it.
    PARKED = "parked"
    #: Every node it had in flight waits for an event or a timer (``aflow.wait_for``,
    #: ``aflow.sleep``): no process holds it (``owner`` is empty). ``waiting_for`` lists
    #: the events, ``wake_at`` is when it is due (its first deadline; 0 once an event it
    #: waits for has arrived). Unfinished: a runtime that can rebuild its workflow takes
    #: it up when it is due (the wait nodes run again and find their event or deadline).
    WAITING = "waiting"
    #: Ended: every node it needed succeeded; ``result`` holds its value. Written by its
    #: owner at the end, as the other three ends are. A resume refuses an ended run; an
    #: idempotency key naming one gets its stored outcome.
    SUCCEEDED = "succeeded"
    #: Ended: a task failed (or the deadline passed) with nothing to revert, or a revert
    #: failed too; ``error`` says what.
    FAILED = "failed"
    #: Ended: a task failed (or the deadline passed) and every revert that was due
    #: succeeded; ``error`` says what stopped it.
    REVERTED = "reverted"
    #: Ended: it was cancelled and unwound cleanly (``error`` holds the cancel).
    CANCELLED = "cancelled"


class RecordState(enum.StrEnum):
    """What one node transition says happened (:attr:`NodeRecord.state`).

    Each member is the very text stored (a member is a ``str``, equal to it), so
    rows written before this enum existed read the same. A store hands out members;
    a row holding any other text is refused with :class:`~aflow.errors.StoreError`
    as it is read. Adding a member changes the schema: :data:`SCHEMA_VERSION` goes
    up with it, so an older aflow refuses the whole store instead of one row.

    A store keeps each node's latest transition (:meth:`Store.load_nodes`, what a
    resume reads) and every transition in order (:meth:`Store.load_history`).
    """

    #: The node began (attempt ``attempt``): written with the next batch, or ahead of
    #: its start for a node with a revert (so a dead run's cancel reverts it). A resume
    #: runs it again (at least once); in a run that is unwinding it counts as cancelled
    #: mid-way, and its revert runs.
    RUNNING = "running"
    #: An attempt failed and another follows (``error`` holds that attempt's failure; the
    #: history keeps it). A resume treats it as ``RUNNING``.
    RETRYING = "retrying"
    #: It ended well: ``result`` holds its serialised value (an error callback's is
    #: ``None``). Written by the checkpoint of a success; its children start only once it
    #: is committed. A resume restores the value and does not run it again.
    SUCCEEDED = "succeeded"
    #: A flow node that succeeded and ended its branch (``EndBranch``): ``result`` holds
    #: its value. A resume restores it as succeeded and skips what follows it.
    ENDED = "ended"
    #: Taken from an earlier run (``Runtime.fork``, ``submit(reuse=)``): ``result`` holds
    #: the value given. A resume restores it as succeeded and never reverts it (it ran in
    #: another run).
    REUSED = "reused"
    #: Its start was written ahead but it never began (the forward phase ended first).
    #: A resume runs it; there is nothing of it to undo.
    NOT_STARTED = "not_started"
    #: ``aflow.ops``: a step whose ``when`` condition was false (attempt 0), so a query of
    #: the stored run shows it. A resume treats it as not run (its condition is evaluated
    #: again).
    SKIPPED = "skipped"
    #: Cut short while it ran (its run was cancelled, failed elsewhere or timed out, or
    #: its runtime let go of it): ``error`` says why. A resume treats it as ``RUNNING``.
    CANCELLED = "cancelled"
    #: Its last attempt failed (``error``). A resume keeps the failure: with
    #: ``on_error="revert"``, unless tolerated, the run unwinds.
    FAILED = "failed"
    #: Its revert ran and succeeded; ``error`` keeps a failure it had before. A resume
    #: keeps it reverted, and the run goes on unwinding.
    REVERTED = "reverted"
    #: Its revert failed (``error``; the history holds the failure before it). A resume
    #: keeps it so, and the run goes on unwinding (it ends ``failed``).
    REVERT_FAILED = "revert_failed"


#: The text of each :class:`RecordState` member (a record may be given either).
StateText: TypeAlias = Literal[
    "running",
    "retrying",
    "succeeded",
    "ended",
    "reused",
    "not_started",
    "skipped",
    "cancelled",
    "failed",
    "reverted",
    "revert_failed",
]


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as stored. ``params`` and ``result`` are serialised text; ``status`` is
    a :class:`StoredRunStatus`."""

    run_id: str
    workflow: str
    params: str
    fingerprint: str
    status: StoredRunStatus
    idempotency_key: str | None
    created_at: float
    updated_at: float
    ended_at: float | None = None
    result: str | None = None
    error: str | None = None
    serializer: str = "json"
    #: The process running it (``host:pid:nonce``) and when its lease runs out
    #: (the owner renews it while alive; recovery takes only expired runs).
    owner: str | None = None
    heartbeat: float | None = None
    #: The run's options as JSON text (``on_error``, ``timeout``, ``compensation_timeout``),
    #: so a resumed run keeps them.
    options: str | None = None
    #: How many times recovery took the run over from a process that died holding it.
    recoveries: int = 0
    #: A ``waiting`` run: when it is due (wall seconds; 0: an event it waits for came;
    #: ``None``: only an event wakes it), and the events it waits for (JSON list text).
    wake_at: float | None = None
    waiting_for: str | None = None


#: What :meth:`Store.send_event` did with an event.
SendOutcome: TypeAlias = Literal["kept", "duplicate", "ended"]

#: The statuses of a run that has ended.
ENDED = frozenset(
    {
        StoredRunStatus.SUCCEEDED,
        StoredRunStatus.FAILED,
        StoredRunStatus.REVERTED,
        StoredRunStatus.CANCELLED,
    }
)


@dataclass(frozen=True, slots=True)
class WaitRecord:
    """One wait of a run as stored: the wait node (or ``key#n`` for the n-th
    ``aflow.receive`` of a task body), the event it waits for (``None``: a timer), its
    deadline (wall seconds; ``None``: none), and when it began. A wait's deadline is
    fixed when it first begins: a wait run again after a resume keeps it."""

    key: str
    event: str | None
    deadline: float | None
    started_at: float


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One transition of one node of a run: ``state`` says what happened (see
    :class:`RecordState`), ``result`` and ``error`` are stored text.

    A record a store reads back from its rows holds a :class:`RecordState` member;
    one made in a process may name its state by the member's text too (equal to it),
    and keeps it as given (the in-memory store converts nothing).
    """

    key: str
    state: RecordState | StateText
    attempt: int
    result: str | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


@runtime_checkable
class Store(Protocol):
    """What a durable store does. Every method is safe to call from several tasks at once.

    A store that keeps text (rows) converts it as it reads it: the statuses it returns
    are :class:`StoredRunStatus` members and its records' states :class:`RecordState`
    members, and text that is neither is a :class:`~aflow.errors.StoreError`.

    A store may also offer ``try_write_nodes(run_id, nodes, superseded=()) -> bool``
    (SQLite and the memory store do): :meth:`write_nodes` done at once on the calling
    thread, True once the batch is committed, or False, with nothing written, if that
    would have to wait (the runtime then awaits :meth:`write_nodes`). A worker with
    nothing else to do commits a chain's step that way, with no task switch. The
    runtime uses it only if the class that defines ``write_nodes`` defines it too, so
    a wrapper or subclass that overrides ``write_nodes`` alone is never bypassed.

    It may also keep graph shapes, for dashboards (the three stores here do):
    ``save_shape(fingerprint, shape)`` (kept once per fingerprint; a second is ignored)
    and ``load_shape(fingerprint) -> str | None``; ``shape`` is JSON text.
    """

    url: str

    async def open(self) -> None:
        """Connect, and create or check the schema (idempotent)."""

    async def close(self) -> None:
        """Release connections."""

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        """Insert a run; with an idempotency key already used, return that run instead.

        Returns ``(run, created)``; atomic across tasks (and processes, for shared stores).
        """
        ...

    async def get_run(self, run_id: str) -> RunRecord:
        """The run (raises :class:`~aflow.errors.RunNotFound`)."""
        ...

    async def list_runs(
        self, status: StoredRunStatus | None = None, limit: int = 100
    ) -> list[RunRecord]:
        """Runs, newest first, optionally of one status."""
        ...

    async def set_status(
        self,
        run_id: str,
        status: StoredRunStatus,
        *,
        result: str | None = None,
        error: str | None = None,
        ended_at: float | None = None,
    ) -> None:
        """Record a run's new status (and, at the end, its result or error)."""

    async def write_nodes(
        self, run_id: str, nodes: Sequence[NodeRecord], superseded: Sequence[NodeRecord] = ()
    ) -> None:
        """Record node transitions, in one transaction (a batch is all or nothing).

        ``nodes`` has one transition per node; ``superseded`` holds earlier ones of
        the same nodes from the same batch (a retry's failure), which only the
        history keeps.
        """

    async def start_run(
        self, run_id: str, status: StoredRunStatus, error: str | None
    ) -> StoredRunStatus:
        """Set the status of a run that (re)starts, unless a cancel was requested
        meanwhile (``cancelling`` stays); return the status now stored."""
        ...

    async def request_cancel(self, run_id: str, reason: str) -> StoredRunStatus:
        """Set an unfinished (or parked) run to ``cancelling``, atomically; return the
        run's status afterwards (a finished run keeps its own; raises
        :class:`RunNotFound`). A run that is reverting keeps its stored error: what
        started the compensation; a parked one's recoveries start again from 0."""
        ...

    async def claim(
        self,
        run_id: str,
        owner: str,
        lease: float,
        *,
        now: float | None = None,
        fresh: bool = False,
    ) -> bool:
        """Make ``owner`` the run's owner for ``lease`` seconds unless another owner's
        lease has not run out at ``now`` (wall seconds; ``time.time()`` by default);
        atomic. True if ``owner`` now owns it. Taking it from another owner (one that
        died holding it) counts one more of the run's ``recoveries``; ``fresh`` (a
        person resumes it) sets them back to 0."""
        ...

    async def release(self, run_id: str, owner: str) -> bool:
        """Let go of a run ``owner`` owns, unfinished or parked, so that any process
        may claim it at once (no lease to wait for, no recovery counted); True if it
        was ``owner``'s."""
        ...

    async def heartbeat(
        self, owner: str, lease: float, run_ids: Sequence[str], *, now: float | None = None
    ) -> dict[str, StoredRunStatus]:
        """Renew for ``lease`` seconds from ``now`` those of ``run_ids`` that ``owner``
        owns and that are unfinished; return the renewed ones with their status
        (``cancelling``: a cancel was asked). A run missing from the answer is no
        longer this owner's.

        Only the runs a process still drives are renewed: one it stopped driving
        (its store failed) lapses, and recovery can take it.
        """
        ...

    async def load_nodes(self, run_id: str) -> dict[str, NodeRecord]:
        """The latest transition of each node of a run, by node key."""
        ...

    async def load_history(self, run_id: str) -> list[NodeRecord]:
        """Every transition written for a run, oldest first (results are in
        :meth:`load_nodes`; a start and an end written in one batch are one entry)."""
        ...

    # --- events, published values and waits (durable waits, issue 22) --------------------

    async def run_of_key(self, idempotency_key: str) -> str | None:
        """The id of the run created with ``idempotency_key`` (``None``: no such run)."""
        ...

    async def send_event(
        self, run_id: str, name: str, message_id: str, payload: str | None, now: float
    ) -> tuple[SendOutcome, StoredRunStatus]:
        """Keep event ``name`` for the run, once per ``(run, name, message_id)``; a
        ``waiting`` run that waits for it becomes due at once (``wake_at`` 0). Returns
        what became of it and the run's status: ``"kept"``; ``"duplicate"``, that
        message was kept already (even if the run has ended since: a redelivery); or
        ``"ended"``, a new message to a run that has ended (nothing is written then).
        Atomic; :class:`RunNotFound`."""
        ...

    async def take_event(
        self, run_id: str, name: str, consumer: str, sent_by: float | None = None
    ) -> tuple[bool, str | None]:
        """The event ``name`` that ``consumer`` (a wait) took before, else the oldest
        one nobody took, sent at ``sent_by`` or earlier (the wait's deadline: one sent
        later came too late, even if no process was up to see the deadline pass), now
        taken by ``consumer``: (found, payload). Atomic."""
        ...

    async def begin_wait(
        self, run_id: str, key: str, event: str | None, deadline: float | None, now: float
    ) -> float | None:
        """Record wait ``key`` with its ``deadline`` unless it is recorded already;
        return the deadline on record (a wait begun again keeps its first one)."""
        ...

    async def load_waits(self, run_id: str) -> list[WaitRecord]:
        """Every wait the run began, oldest first."""
        ...

    async def park_waiting(
        self, run_id: str, owner: str, wake_at: float | None, events: Sequence[str], now: float
    ) -> bool:
        """Set a ``running`` run that ``owner`` holds to ``waiting`` and let go of it
        (no owner), due at ``wake_at`` or, if an event in ``events`` nobody took is kept
        already, at once. Atomic; False (nothing changed) if it is not ``owner``'s or not
        ``running`` (a cancel was asked)."""
        ...

    async def due_runs(self, now: float, limit: int = 100) -> list[RunRecord]:
        """Runs nobody holds that should be taken up: ``waiting`` ones due by ``now``,
        and ``cancelling`` ones with no owner (a waiting run cancelled), soonest first."""
        ...

    async def next_wake(self) -> float | None:
        """The soonest ``wake_at`` of the ``waiting`` runs (``None``: none is timed)."""
        ...

    async def set_value(self, run_id: str, name: str, payload: str | None, now: float) -> None:
        """Publish value ``name`` of a run (a later one replaces it); :class:`RunNotFound`."""

    async def get_value(self, run_id: str, name: str) -> tuple[bool, str | None]:
        """(found, payload) of value ``name`` of a run; :class:`RunNotFound` if no such run."""
        ...


def open_store(url: str | None, *, read_only: bool = False, create: bool = True) -> Store:
    """The store for a URL: ``memory://``, ``sqlite:///path.db`` or ``postgresql://...``.

    ``sqlite:///runs.db`` is a path relative to the working directory,
    ``sqlite:////var/lib/runs.db`` an absolute one; ``?busy_timeout=5`` sets how
    many seconds a statement waits for another process's lock (30 by default).
    ``read_only``: the store is only read, never created, migrated or written.
    ``create=False``: a store that does not exist yet is an error, not a new one.
    The store still has to be opened (``await store.open()``); a Runtime does that.
    """
    if url is None or url in ("memory", "memory://"):
        from ._memory import MemoryStore

        return MemoryStore()
    if not isinstance(url, str):
        raise StoreError(f"a store URL must be a string, got {url!r}")
    if url.startswith("sqlite:///"):
        from ._sqlite import DEFAULT_BUSY_TIMEOUT, SQLiteStore

        path, _, query = url[len("sqlite:///") :].partition("?")
        if not path:
            raise StoreError(f"store URL {url!r} names no file: use sqlite:///runs.db")
        busy_timeout = DEFAULT_BUSY_TIMEOUT
        for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            if name != "busy_timeout":
                raise StoreError(
                    f"unknown option {name!r} in store URL {url!r}: "
                    "the one option is busy_timeout (seconds, e.g. ?busy_timeout=5)"
                )
            try:
                busy_timeout = float(value)
            except ValueError:
                busy_timeout = -1.0
            if not 0 <= busy_timeout < float("inf"):
                raise StoreError(
                    f"busy_timeout={value!r} in store URL {url!r} is not a number of "
                    "seconds >= 0: use e.g. ?busy_timeout=5"
                )
        return SQLiteStore(path, busy_timeout=busy_timeout, read_only=read_only, create=create)
    if url.startswith(("postgresql://", "postgres://")):
        from ._postgres import PostgresStore

        return PostgresStore(url, read_only=read_only, create=create)
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise StoreError(
        f"unknown store URL scheme {scheme!r} in {url!r}: "
        "use memory://, sqlite:///path.db or postgresql://..."
    )
