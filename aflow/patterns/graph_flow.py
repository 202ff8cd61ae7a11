"""Graph flows: the order follows the data (TaskFlow's ``graph_flow``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, final

from ._flow import Decider, FlowItem
from ._flow import Flow as _BaseFlow

if TYPE_CHECKING:
    from typing import Self

__all__ = ["Flow"]


@final
class Flow(_BaseFlow):
    """Runs each item once everything it needs has run.

    An item that requires a name runs after the item that provides it (edges
    are inferred); :meth:`link` adds ordering of your own. Two items providing
    one name, a cycle, or a name nothing provides are errors raised when the
    flow is compiled, before anything runs.
    """

    pattern: ClassVar[str] = "graph"

    def link(self, u: FlowItem, v: FlowItem, decider: Decider | None = None) -> Self:
        """Run ``v`` after ``u``; with ``decider``, only if ``decider({u_name: u_result})`` is true.

        When the decider says no, ``v`` and everything downstream of it are
        ``SKIPPED`` (TaskFlow's default ``decider_depth="ALL"``) and the flow
        still succeeds. When ``u`` is a flow, the decider sees the result of
        every task in it.
        """
        for item in (u, v):
            if item not in self:
                raise ValueError(f"graph flow {self.name!r}: add {item!r} before linking it")
        if decider is not None and not callable(decider):
            raise TypeError(f"graph flow {self.name!r}: decider must be callable, got {decider!r}")
        self._links.append((u, v, decider))
        return self
