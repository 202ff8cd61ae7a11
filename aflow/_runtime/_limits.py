"""Concurrency limits that never make a worker wait.

A node that cannot take a slot is parked on the limit's queue and its worker
moves on to other ready nodes; the node that frees the slot puts the parked
node back at the front of its run's ready queue. No acquire ever awaits, so a
limit costs a counter check on the hot path (an awaited acquire per node cost
~100x more in the prototype: every acquire yields and wakes the herd).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from ._scheduler import Execution

__all__ = ["Limit"]


@final
class Limit:
    """A named slot counter, shared by every run of a :class:`~aflow.Runtime` that uses it."""

    __slots__ = ("borrowed", "name", "peak", "total", "waiters")

    def __init__(self, name: str, total: int) -> None:
        if not isinstance(total, int) or isinstance(total, bool) or total < 1:
            raise ValueError(f"limit {name!r} must be an int >= 1, got {total!r}")
        self.name = name
        self.total = total
        self.borrowed = 0
        self.peak = 0
        self.waiters: deque[tuple[Execution, int]] = deque()

    def __repr__(self) -> str:
        return (
            f"<Limit {self.name!r} {self.borrowed}/{self.total} borrowed, "
            f"{len(self.waiters)} waiting>"
        )


def try_acquire(limits: tuple[Limit, ...], execution: Execution, index: int) -> bool:
    """Take one slot of every limit, or none: park the node on the first full one."""
    for limit in limits:
        if limit.borrowed >= limit.total:
            limit.waiters.append((execution, index))
            return False
    for limit in limits:
        limit.borrowed += 1
        if limit.borrowed > limit.peak:
            limit.peak = limit.borrowed
    return True


def release(limits: tuple[Limit, ...], releaser: Execution) -> None:
    """Give the slots back and hand each freed slot's next waiter back to its run."""
    for limit in limits:
        limit.borrowed -= 1
        wake(limit, 1, releaser)


def wake(limit: Limit, count: int, releaser: Execution | None = None) -> None:
    """Hand up to ``count`` waiters back to their runs, skipping runs that are stopping.

    A woken node retries its acquire when a worker pops it, so waking one too
    many costs a retry, never a lost slot; waking too few could strand a
    waiter forever, which is why a stopping run wakes its limits' waiters.
    """
    waiters = limit.waiters
    while count > 0 and waiters:
        execution, index = waiters.popleft()
        if execution.stopping:
            continue
        execution.requeue(index, wake=execution is not releaser)
        count -= 1


def wake_free(limits: tuple[Limit, ...]) -> None:
    """Wake as many waiters as each limit has free slots (a run stopped holding some)."""
    for limit in limits:
        free = limit.total - limit.borrowed
        if free > 0:
            wake(limit, free)
