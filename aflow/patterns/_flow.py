"""The flow patterns' common base: items, nesting, and running a flow like any canvas."""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from .._atom import Task
from .._canvas import Canvas
from .._exceptions import DefinitionError
from .._graph import Graph
from .._task import FunctionTask
from ..retry import Retry

if TYPE_CHECKING:
    from typing import Self

__all__ = ["Decider", "Depth", "Flow", "FlowItem"]

#: What a flow holds: tasks, function tasks, canvas pieces and other flows.
FlowItem: TypeAlias = "Task | FunctionTask[..., Any] | Canvas[Any] | Flow"
#: ``decider(history) -> bool`` where history maps the name of each task linked to the
#: target with a decider (every task of a linked flow) to its result.
Decider = Callable[[dict[str, Any]], Any]


class Depth(enum.StrEnum):
    """What a decider that says no skips (TaskFlow's ``taskflow.deciders.Depth``).

    Whatever it does not skip runs once its other predecessors end: a task there
    must not read a value from a task it skips (:func:`aflow.engines.load` says so).
    """

    #: The target and everything after it, nested flows and what follows the flow too
    #: (the default).
    ALL = "ALL"
    #: The target and what follows it in the same flow, not in nested flows.
    FLOW = "FLOW"
    #: The target and the tasks right after it in the same flow.
    NEIGHBORS = "NEIGHBORS"
    #: The target only (for a flow: the tasks it starts with).
    ATOM = "ATOM"

    @classmethod
    def parse(cls, depth: object, where: str = "decider_depth") -> Depth:
        """``depth`` as a member (a member, or its name in any case)."""
        if isinstance(depth, cls):
            return depth
        if isinstance(depth, str):
            found = cls.__members__.get(depth.upper())
            if found is not None:
                return found
        raise DefinitionError(
            f"{where}: decider_depth must be one of {[d.value for d in cls]} "
            f"(any case), got {depth!r}"
        )


#: From the widest to the narrowest: of several deciders saying no, the widest wins.
DEPTH_ORDER = (Depth.ALL, Depth.FLOW, Depth.NEIGHBORS, Depth.ATOM)


class Flow:
    """A named collection of items run in some order; nestable in any mix.

    Build one with :class:`aflow.patterns.linear_flow.Flow`,
    :class:`~aflow.patterns.unordered_flow.Flow` or
    :class:`~aflow.patterns.graph_flow.Flow`. ``retry=`` attaches a retry
    controller (:mod:`aflow.retry`) to this flow.

    A flow is awaitable like a canvas (``await flow`` returns a dict of every
    value it provides) and can sit in a ``group`` or ``chain``; in a chain it
    reads the names it needs from the dict its parent returned.
    """

    pattern: ClassVar[str] = "flow"

    def __init__(self, name: str, retry: Retry | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"a flow needs a non-empty name, got {name!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"flow {name!r}: retry must be an aflow.retry.Retry, got {retry!r}")
        self.name = name
        self.retry = retry
        self._items: list[FlowItem] = []
        self._ids: set[int] = set()  # identity of each item: add() stays O(1)
        #: (u, v, decider) links between items (graph flows).
        self._links: list[tuple[FlowItem, FlowItem, Decider | None]] = []
        #: the decider_depth of a link whose decider says so (by position in _links)
        self._depths: dict[int, Depth] = {}
        #: item id -> how many items the flow held once the add() that added it ended,
        #: for items added with resolve_requires=False (graph flows)
        self._unresolved: dict[int, int] = {}

    def add(self, *items: FlowItem) -> Self:
        """Add tasks, function tasks, signatures, chains, groups or flows; returns the flow."""
        for item in items:
            if not isinstance(item, Task | FunctionTask | Canvas | Flow):
                raise TypeError(
                    f"flow {self.name!r}: cannot add {item!r}; expected an aflow.Task, a task, "
                    "a signature/chain/group/chord or another flow"
                )
            if item is self:
                raise ValueError(f"flow {self.name!r} cannot contain itself")
            if id(item) in self._ids:
                raise ValueError(f"flow {self.name!r} already holds {item!r}")
            self._ids.add(id(item))
            self._items.append(item)
        return self

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return id(item) in self._ids

    def __iter__(self) -> Iterator[FlowItem]:
        return iter(self._items)

    def __repr__(self) -> str:
        retry = f" retry={self.retry!r}" if self.retry is not None else ""
        return f"<{self.pattern} flow {self.name!r} [{len(self._items)} items]{retry}>"

    @property
    def requires(self) -> frozenset[str]:
        """The names this flow must be given (by the store, or what encloses it): what
        its items and its retry require that no item before them in it provides, as
        TaskFlow computes ``flow.requires`` (optional parameters are not included).

        Raises the flow's definition errors (duplicate names, cycles...), as
        :func:`aflow.engines.load` would.
        """
        from ._compile import analyse

        wants = analyse(self).wants
        return frozenset(name for name, (required, _) in wants.items() if required)

    @property
    def provides(self) -> frozenset[str]:
        """Every name this flow's items (nested flows' too) and its retry provide."""
        from ._compile import analyse

        return frozenset(analyse(self).export_names)

    def iter_links(self) -> Iterator[tuple[FlowItem, FlowItem, Decider | None]]:
        """The explicit links ``(u, v, decider)`` (graph flows)."""
        return iter(self._links)

    # --- running like a canvas ------------------------------------------------------------

    def __aflow_canvas__(self) -> Canvas[dict[str, Any]]:
        from ._compile import FlowCanvas

        return FlowCanvas(self)

    def __aflow_graph__(self) -> Graph:
        return self.__aflow_canvas__().__aflow_graph__()

    def __await__(self) -> Generator[Any, None, dict[str, Any]]:
        return self.__aflow_canvas__().__await__()

    def as_canvas(self, **options: Any) -> Canvas[dict[str, Any]]:
        """This flow as a canvas object (``.set()``, ``.link()``, ``|`` and friends)."""
        canvas = self.__aflow_canvas__()
        return canvas.set(**options) if options else canvas


def item_name(item: object) -> str:
    """The name an item goes by in errors and storage."""
    if isinstance(item, Task | Flow):
        return item.name
    if isinstance(item, FunctionTask):
        return item.name
    if isinstance(item, Canvas):
        options: Mapping[str, Any] = item.options
        name = options.get("name")
        if isinstance(name, str):
            return name
        task = getattr(item, "task", None)
        if isinstance(task, FunctionTask):
            return task.name
        return type(item).__name__.lower()
    return repr(item)
