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

A run whose ready queue goes by priority (TaskFlow's ``priority``, and every
unwinding) is handed the slot rather than one of its nodes: its best parked node
goes back in its place in the queue, and whichever of its nodes needing the limit
pops first takes the slot, so a node that became ready meanwhile with a higher
priority is not passed over for a parked one.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, final

import anyio

from ._ready import PriorityReady

if TYPE_CHECKING:
    from ._run_state import RunState

__all__ = ["ANY_NODE", "Limit", "SlotWaiter", "acquire_slot", "release", "try_acquire"]

#: The key of a run's grants handed to whichever of its nodes needs the limit first.
ANY_NODE = -1


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
        #: parked nodes ``(run, node index)``, and work inside a node waiting in
        #: :func:`acquire_slot` ``(SlotWaiter, -1)``, first come first served
        self.waiters: deque[tuple[RunState | SlotWaiter, int]] = deque()

    def __repr__(self) -> str:
        return (
            f"<Limit {self.name!r} {self.borrowed}/{self.total} borrowed, "
            f"{len(self.waiters)} waiting>"
        )


def try_acquire(limits: tuple[Limit, ...], execution: RunState, index: int) -> bool:
    """Take one slot of every limit, or none: park the node on the first full one."""
    granted = execution.take_grants(index) if execution.grants else ()
    for limit in limits:
        if limit in granted:
            continue
        if execution.grants and execution.take_credit(limit):
            granted = (*granted, limit)
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


def release(limits: tuple[Limit, ...], releaser: RunState | None) -> None:
    """Free one slot of each limit, handing it to the first waiter of a live run if any."""
    for limit in limits:
        waiters = limit.waiters
        while waiters:
            execution, index = waiters.popleft()
            if isinstance(execution, SlotWaiter):
                execution.granted = True  # the slot stays borrowed, now on its behalf
                execution.event.set()
                break
            if not execution.starting:  # (a stopped run's waiters are forgotten at its phase's end)
                continue
            ready = getattr(execution, "_ready", None)  # (unit tests hand in fakes)
            if type(ready) is PriorityReady:
                # A queue by priority: the slot goes to the run, and its next node to pop
                # that needs it takes it, the parked one put back in its place or a better
                # one ready meanwhile (TaskFlow sorts every ready task, waiting or not).
                index = _best_waiter(waiters, execution, index, ready)
                execution.credit(limit)
                execution.put_back(index, wake=execution is not releaser)
                break
            execution.grant(index, limit)
            execution.requeue(index, wake=execution is not releaser)
            break
        else:
            limit.borrowed -= 1


def _best_waiter(
    waiters: deque[tuple[RunState | SlotWaiter, int]],
    execution: RunState,
    index: int,
    ready: PriorityReady,
) -> int:
    """The run's waiter on this limit that its ready queue puts first (the first in line
    of equal ones): it takes the slot the run's first waiter was owed, which keeps its
    place in the line. Between runs the line stays first come, first served."""
    best, at = index, -1
    best_key = ready.key(index)
    for position, (waiting, other) in enumerate(waiters):
        if waiting is execution and (key := ready.key(other)) < best_key:
            best, best_key, at = other, key, position
    if at >= 0:
        del waiters[at]
        waiters.appendleft((execution, index))
    return best


@final
class SlotWaiter:
    """Work inside a running node (a slice of a sliced step) waiting for a slot."""

    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


async def acquire_slot(limit: Limit) -> None:
    """Take one slot of ``limit`` for work inside a node, waiting in line with the nodes.

    Give it back with ``release((limit,), None)``. Cancelled while waiting, it
    leaves the line (or passes on a slot handed to it meanwhile).
    """
    if limit.borrowed < limit.total and not limit.waiters:
        limit.borrowed += 1
        if limit.borrowed > limit.peak:
            limit.peak = limit.borrowed
        return
    waiter = SlotWaiter()
    entry: tuple[RunState | SlotWaiter, int] = (waiter, -1)
    limit.waiters.append(entry)
    try:
        await waiter.event.wait()
    except BaseException:
        if waiter.granted:
            release((limit,), None)
        else:
            try:
                limit.waiters.remove(entry)
            except ValueError:  # pragma: no cover - granted and removed at once
                pass
        raise
