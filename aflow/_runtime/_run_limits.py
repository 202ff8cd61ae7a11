"""A run's side of the limits: which limits a node takes, and slots handed to it."""

from __future__ import annotations

from collections import deque

from .._exceptions import (
    DefinitionError,
)
from .._graph import Node
from ._limits import ANY_NODE, Limit, release
from ._ready import PriorityReady
from ._run_state import RunState


class RunLimits(RunState):
    """Limits a node takes; slots the limits hand to this run's parked nodes."""

    __slots__ = ()

    def _resolve_limits(self, node: Node) -> tuple[Limit, ...]:
        found: list[Limit] = []
        for name in node.options.limits:
            limit = self._limits.get(name)
            if limit is None:
                known = ", ".join(sorted(self._limits)) or "none"
                raise DefinitionError(
                    f"task {node.key!r} uses limit {name!r}, but the run has no such limit "
                    f"(configured: {known}); pass limits={{{name!r}: N}}"
                )
            found.append(limit)
        return tuple(found)

    def _limits_of(self, node: Node) -> tuple[Limit, ...]:
        if not node.options.limits:
            return self._global_limits
        named = self._limit_cache[id(node.options)]
        return self._global_limits + named if self._global_limits else named

    def grant(self, index: int, limit: Limit) -> None:
        """A slot of ``limit`` was handed to node ``index`` (see :mod:`._limits`)."""
        held = self.grants.get(index)
        self.grants[index] = (limit,) if held is None else (*held, limit)

    def take_grants(self, index: int) -> tuple[Limit, ...]:
        """The slots handed to node ``index``, now its own."""
        return self.grants.pop(index, ())

    def credit(self, limit: Limit) -> None:
        """A slot of ``limit`` was handed to this run: the first of its nodes to need it
        takes it (a queue by priority: see :mod:`._limits`)."""
        self.grant(ANY_NODE, limit)

    def take_credit(self, limit: Limit) -> bool:
        """Take a slot of ``limit`` handed to this run, if it holds one."""
        held = self.grants.get(ANY_NODE)
        if held is None or limit not in held:
            return False
        left = list(held)
        left.remove(limit)
        if left:
            self.grants[ANY_NODE] = tuple(left)
        else:
            del self.grants[ANY_NODE]
        return True

    def put_back(self, index: int, *, wake: bool) -> None:
        """Put a node that waited for a limit slot back in its place in a queue by priority."""
        self._parked -= 1
        ready = self._ready
        assert isinstance(ready, PriorityReady)
        ready.put_back(index)
        if wake:
            self._ensure_worker()

    def _return_grants(self) -> None:
        # Slots handed to nodes this run will never start go on to the next waiters.
        while self.grants:
            _, limits = self.grants.popitem()
            release(limits, None)

    def requeue(self, index: int, *, wake: bool) -> None:
        """Put a node that waited for a limit slot back at the front of the ready queue."""
        self._parked -= 1
        self._ready.appendleft(index)
        if wake:
            self._ensure_worker()

    def _forget_waiters(self) -> None:
        """Take this run's parked nodes off the limits' queues (a later phase starts afresh)."""
        for limit in (*self._global_limits, *self._limits.values()):
            if any(execution is self for execution, _ in limit.waiters):
                limit.waiters = deque(w for w in limit.waiters if w[0] is not self)
