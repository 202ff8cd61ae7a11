"""Concurrency limits that never make a worker wait.

A node that cannot take a slot is parked on the limit's queue and its worker
moves on to other ready nodes. No acquire ever awaits, so a limit costs a
counter check on the hot path (an awaited acquire per node cost ~100x more in
the prototype: every acquire yields and wakes the herd).

Fairness: a freed slot is *handed* to the first waiter (the slot stays
borrowed, now on that node's behalf), so a run that frees a slot cannot take
it straight back for its next step while another run waits: waiters are
served first come, first served. A node that was handed one slot but finds
another limit full gives the slot back before it parks again (no
hold-and-wait, so no deadlock between limits).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from ._scheduler import Execution

__all__ = ["Limit", "release", "try_acquire"]


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
    granted = execution.take_grants(index) if execution.grants else ()
    for limit in limits:
        if limit in granted:
            continue
        if limit.borrowed >= limit.total:
            if granted:
                release(granted, execution)
            limit.waiters.append((execution, index))
            return False
    for limit in limits:
        if limit in granted:
            continue
        limit.borrowed += 1
        if limit.borrowed > limit.peak:
            limit.peak = limit.borrowed
    return True


def release(limits: tuple[Limit, ...], releaser: Execution | None) -> None:
    """Free one slot of each limit, handing it to the first waiter of a live run if any."""
    for limit in limits:
        waiters = limit.waiters
        while waiters:
            execution, index = waiters.popleft()
            if execution.stopping:
                continue
            execution.grant(index, limit)
            execution.requeue(index, wake=execution is not releaser)
            break
        else:
            limit.borrowed -= 1
