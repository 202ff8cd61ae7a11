"""Graph flows: the order follows the data (TaskFlow's ``graph_flow``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, final

from .._exceptions import DefinitionError
from ._flow import Decider, Depth, FlowItem, item_name
from ._flow import Flow as _BaseFlow

if TYPE_CHECKING:
    from typing import Self

__all__ = ["Depth", "Flow"]


@final
class Flow(_BaseFlow):
    """Runs each item once everything it needs has run.

    An item that requires a name runs after the item that provides it (edges
    are inferred); :meth:`link` adds ordering of your own. Two items providing
    one name, a cycle, or a name nothing provides are errors raised when the
    flow is compiled, before anything runs.
    """

    pattern: ClassVar[str] = "graph"

    def add(self, *items: FlowItem, resolve_requires: bool = True) -> Self:
        """Add items; ``resolve_requires=False`` links none of them to the items that
        provide what they require among those already added (this call's included):
        those names come from the store, or from a provider they are linked to, or
        from one added by a later ``add()`` (which links to them, as TaskFlow's
        ``resolve_existing`` does)."""
        super().add(*items)
        if not resolve_requires:
            end = len(self._items)
            for item in items:
                self._unresolved[id(item)] = end
        return self

    def link(
        self,
        u: FlowItem,
        v: FlowItem,
        decider: Decider | None = None,
        decider_depth: Depth | str | None = None,
    ) -> Self:
        """Run ``v`` after ``u``; with ``decider``, only if ``decider(history)`` is true.

        ``history`` maps the name of every task linked to ``v`` with a decider to its
        result (every task of a linked flow), as TaskFlow's; the deciders are asked
        once all of ``v``'s predecessors have ended. If one says no, ``decider_depth``
        (:class:`~aflow.patterns.Depth`, ``"ALL"`` by default) says what is
        ``SKIPPED``: ``v`` and everything after it (``ALL``), ``v`` and what follows it
        in its flow (``FLOW``), ``v`` and the tasks right after it (``NEIGHBORS``) or
        ``v`` alone (``ATOM``); the widest of the deciders saying no wins. The flow
        still succeeds.
        """
        where = f"graph flow {self.name!r}"
        for item in (u, v):
            if item not in self:
                raise ValueError(f"{where}: add {item!r} before linking it")
        if decider is not None and not callable(decider):
            raise TypeError(f"{where}: decider must be callable, got {decider!r}")
        if decider_depth is not None:
            if decider is None:
                raise DefinitionError(
                    f"{where}: link({item_name(u)!r}, {item_name(v)!r}) has a decider_depth "
                    "but no decider"
                )
            self._depths[len(self._links)] = Depth.parse(
                decider_depth, f"{where}, link({item_name(u)!r}, {item_name(v)!r})"
            )
        self._links.append((u, v, decider))
        return self
