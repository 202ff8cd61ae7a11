"""The store protocol, its records, and opening a store from a URL."""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .._exceptions import StoreError

__all__ = ["SCHEMA_VERSION", "NodeRecord", "RunRecord", "Store", "open_store"]

#: The schema this aflow writes; a store written by a newer aflow is refused.
SCHEMA_VERSION = 3


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as stored. ``params`` and ``result`` are serialised text."""

    run_id: str
    workflow: str
    params: str
    fingerprint: str
    status: str
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


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One transition of one node of a run.

    ``state`` is ``running``, ``retrying`` (``error`` holds the attempt's failure),
    ``succeeded``, ``ended`` (succeeded and ended its branch), ``reused`` (taken
    from an earlier run by a fork), ``not_started`` (its start was written ahead
    but it never began), ``cancelled`` (cut short while it ran: ``error`` says
    why), ``failed``, ``reverted`` (``error`` keeps a failure it had) or
    ``revert_failed``.
    """

    key: str
    state: str
    attempt: int
    result: str | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


@runtime_checkable
class Store(Protocol):
    """What a durable store does. Every method is safe to call from several tasks at once."""

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

    async def list_runs(self, status: str | None = None, limit: int = 100) -> list[RunRecord]:
        """Runs, newest first, optionally of one status."""
        ...

    async def set_status(
        self,
        run_id: str,
        status: str,
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

    async def start_run(self, run_id: str, status: str, error: str | None) -> str:
        """Set the status of a run that (re)starts, unless a cancel was requested
        meanwhile (``cancelling`` stays); return the status now stored."""
        ...

    async def request_cancel(self, run_id: str, reason: str) -> str:
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
    ) -> dict[str, str]:
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
