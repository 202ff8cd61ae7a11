"""A run's ready queue when its nodes have priorities (TaskFlow's ``priority``)."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import final

__all__ = ["PriorityReady", "ReadyQueue"]


@final
class PriorityReady:
    """The ready queue of a graph whose nodes have priorities (TaskFlow's ``priority``):
    the highest first, equal ones in the order they became ready (TaskFlow sorts its
    ready atoms stably); a node handed a limit slot (``appendleft``) goes before all.

    It offers what the scheduler uses of a deque, in Python: only a graph with
    priorities pays for it (see ``RunShape.new_ready``)."""

    __slots__ = ("_arrival", "_front", "_heap", "_rank", "_seq", "priorities")

    def __init__(
        self,
        priorities: Sequence[float],
        items: Iterable[int] = (),
        rank: Sequence[float] | None = None,
    ) -> None:
        #: each node's priority, by index (a limit's release reads them too)
        self.priorities = priorities
        #: orders equal priorities, lowest first, by index (None: in order of arrival)
        self._rank = rank
        #: (-priority, rank or 0, arrival, node index)
        self._heap: list[tuple[float, float, int, int]] = []
        self._front: deque[int] = deque()
        self._seq = 0
        self._arrival: dict[int, int] = {}
        for index in items:
            self.append(index)

    def append(self, index: int) -> None:
        self._seq = seq = self._seq + 1
        self._arrival[index] = seq
        rank = 0.0 if self._rank is None else self._rank[index]
        heapq.heappush(self._heap, (-self.priorities[index], rank, seq, index))

    def appendleft(self, index: int) -> None:
        self._front.appendleft(index)

    def popleft(self) -> int:
        if self._front:
            return self._front.popleft()
        return heapq.heappop(self._heap)[3]

    def key(self, index: int) -> tuple[float, float]:
        """Where node ``index`` goes in the queue (lower goes first, before arrival order)."""
        return (-self.priorities[index], 0.0 if self._rank is None else self._rank[index])

    def put_back(self, index: int) -> None:
        """A node that waited for a limit slot goes back in its place: ahead of what
        became ready after it with the same priority (see :func:`._limits.release`)."""
        rank = 0.0 if self._rank is None else self._rank[index]
        # (a node parked before this queue was made, if ever: after everything here)
        arrival = self._arrival.get(index)
        if arrival is None:
            self._seq = arrival = self._seq + 1
        heapq.heappush(self._heap, (-self.priorities[index], rank, arrival, index))

    def clear(self) -> None:
        self._front.clear()
        self._heap.clear()
        self._arrival.clear()

    def __len__(self) -> int:
        return len(self._front) + len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._front) or bool(self._heap)

    def __iter__(self) -> Iterator[int]:
        yield from self._front
        yield from (entry[3] for entry in sorted(self._heap))


#: A run's ready queue: a deque, or a PriorityReady for a graph with priorities.
ReadyQueue = deque[int] | PriorityReady
