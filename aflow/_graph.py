"""The graph IR: the one immutable form every workflow compiles to.

Builders (the canvas today; flows and typed operators later) only produce
nodes and edges through :class:`GraphBuilder`; the scheduler only reads a
:class:`Graph`. A node never learns which builder made it.
"""

from __future__ import annotations

import enum
import functools
import gc
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, final

from ._exceptions import AflowInternalError, CycleError, DuplicateTaskError, SignatureError
from ._options import DEFAULT_OPTIONS, NodeOptions

if TYPE_CHECKING:
    from ._task import FunctionTask

__all__ = [
    "INPUT_ERROR",
    "EndBranch",
    "Graph",
    "GraphBuilder",
    "Node",
    "NodeKind",
    "OptionalKey",
    "SkipOnly",
    "compile",
    "errback_extras",
    "find_cycle",
]

#: ``Node.input`` of an error callback that receives the exception first.
INPUT_ERROR = -2

_NO_KWARGS: Mapping[str, Any] = MappingProxyType({})
_UNCHECKED = object()


class NodeKind(enum.Enum):
    """What a node does when it runs."""

    #: Call the task once: ``fn(parent_result?, *args, **kwargs)``.
    TASK = "task"
    #: Call the task on each item in turn and collect a list.
    MAP = "map"
    #: Like MAP, unpacking each item as positional arguments.
    STARMAP = "starmap"
    #: Call the task, which runs a nested graph of its own (a flow under a retry
    #: controller): it takes no limit slot itself, the nodes it runs do.
    SUBGRAPH = "subgraph"
    #: No task: the list of its parents' results, in order (a group's value);
    #: ``args[0]``, when given, lists the nodes whose results it collects instead.
    JOIN = "join"


class Node(NamedTuple):
    """One task invocation in a graph (immutable).

    ``parents`` must all finish before the node starts. ``input`` is the
    parent whose result is prepended to ``args`` (``-1``: none, as for an
    immutable signature). A node with ``error_scope`` set is an error
    callback: it runs only when a node with an index in one of its half-open
    ranges fails (``(start, end)``, or more pairs ``(start, end, start2, end2)``:
    an errback on a chord's body also sees the chord's header), and receives
    the exception as its first argument when ``input`` is ``INPUT_ERROR``.
    """

    # A NamedTuple rather than a frozen dataclass: building one costs 0.2 µs
    # instead of 1.2 µs, which is a third of aflow's whole per-node overhead.
    index: int  # type: ignore[assignment]  # shadows tuple.index, on purpose
    key: str
    kind: NodeKind
    task: FunctionTask[..., Any] | None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = _NO_KWARGS
    parents: tuple[int, ...] = ()
    input: int = -1
    options: NodeOptions = DEFAULT_OPTIONS
    error_scope: tuple[int, ...] | None = None
    #: For the join of a group with a success threshold: the half-open range of
    #: the group's own nodes, whose failures it tolerates up to that threshold.
    tolerates: tuple[int, int] | None = None
    #: Keyword arguments taken from other nodes' results by name (flows):
    #: ``(parameter, source node, selector)``; the value is the source's result,
    #: or ``result[selector]`` when the selector is not ``None``.
    bindings: tuple[tuple[str, int, Any], ...] = ()
    #: For a join: a guard called with ``{key: result}`` of the nodes it collects that
    #: were not skipped; when false the join is SKIPPED, and everything downstream of it too
    #: (a :class:`SkipOnly` it returns names the only nodes to skip).
    when: Callable[[dict[str, Any]], Any] | None = None
    #: Runs once its parents end, even if some were SKIPPED (it is not skipped with
    #: them); bindings to a source that did not succeed are left out.
    after_all: bool = False
    #: Set by the builder: an async task called once (no retries, timeout or deadline),
    #: with no named inputs and no error scope, which a worker may start inline (one
    #: that asks aflow.current_step() is not: see FunctionTask.asks_step).
    inline: bool = False

    @property
    def name(self) -> str:
        """The task's name (``join`` for a join node)."""
        return self.task.name if self.task is not None else "join"

    def __repr__(self) -> str:
        return f"<Node {self.index} {self.key!r} {self.kind.value} parents={list(self.parents)}>"

    # Nodes are identities in a graph, not values: compare and hash them as objects.
    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def __hash__(self) -> int:
        return id(self)


@final
class Graph:
    """An immutable, validated workflow graph.

    Get one with :func:`aflow.compile`. ``graph.nodes[i].parents`` and
    ``graph.children(i)`` give the edges; :meth:`to_dot` and
    :meth:`to_mermaid` draw it.
    """

    __slots__ = ("_by_key", "_children", "_shape", "name", "nodes", "output")

    def __init__(
        self, nodes: Sequence[Node], output: int, name: str | None = None, *, _unique: bool = False
    ) -> None:
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self.output = output
        self.name = name
        self._by_key: dict[str, int] | None = None
        #: what every run of this graph starts from (see _run_state.RunShape), made by the
        #: first run; a box shared with the copies that differ only in arguments
        self._shape: list[Any] = [None]
        self._children = (self._link() if _unique else None) or self._validate()
        if not _unique:  # GraphBuilder guarantees unique keys; hand-made graphs are checked
            by_key: dict[str, int] = {}
            for node in self.nodes:
                if by_key.setdefault(node.key, node.index) != node.index:
                    raise DuplicateTaskError(node.key)
            self._by_key = by_key

    def _with_nodes(self, nodes: tuple[Node, ...]) -> Graph:
        """This graph with ``nodes`` in place of its own: the same edges, keys and
        output, other arguments (see :mod:`aflow._canvas_cache`)."""
        graph = object.__new__(Graph)
        graph.nodes = nodes
        graph.output = self.output
        graph.name = self.name
        graph._by_key = self._by_key
        graph._children = self._children
        graph._shape = self._shape  # (arguments are not part of it)
        return graph

    # --- validation ------------------------------------------------------------------------

    def _validate(self) -> tuple[tuple[int, ...], ...]:
        nodes = self.nodes
        n = len(nodes)
        if not 0 <= self.output < n:
            raise AflowInternalError(f"graph output {self.output} is not a node")
        children: list[list[int]] = [[] for _ in range(n)]
        ordered = True
        for i, node in enumerate(nodes):
            if node.index != i:
                raise AflowInternalError(f"node {node.key!r} has index {node.index}, expected {i}")
            for p in node.parents:
                if not 0 <= p < n:
                    raise AflowInternalError(f"node {node.key!r} has an unknown parent {p}")
                if p >= i:
                    ordered = False
                children[p].append(i)
            if node.input >= 0 and node.input not in node.parents:
                raise AflowInternalError(f"node {node.key!r} takes input from a non-parent")
            for _, source, _ in node.bindings:
                if not 0 <= source < i:
                    raise AflowInternalError(f"node {node.key!r} binds an unknown node {source}")
        if not ordered:  # builders that emit in topological order skip this pass
            self._check_acyclic(children)
        return tuple(tuple(c) for c in children)

    def _link(self) -> tuple[tuple[int, ...], ...] | None:
        """The children of each node of a graph from :class:`GraphBuilder`, which numbers
        the nodes itself; ``None`` when a parent comes later (or is unknown): then
        :meth:`_validate` checks it all and looks for a cycle."""
        nodes = self.nodes
        children: list[list[int]] = [[] for _ in nodes]
        for node in nodes:
            if node.parents:
                i = node.index
                for p in node.parents:
                    if not 0 <= p < i:
                        return None
                    children[p].append(i)
        if not 0 <= self.output < len(nodes):
            return None
        return tuple([tuple(c) if c else () for c in children])

    def _check_acyclic(self, children: list[list[int]]) -> None:
        remaining = [len(node.parents) for node in self.nodes]
        stack = [i for i, r in enumerate(remaining) if r == 0]
        seen = 0
        while stack:
            i = stack.pop()
            seen += 1
            for c in children[i]:
                remaining[c] -= 1
                if remaining[c] == 0:
                    stack.append(c)
        if seen == len(self.nodes):
            return
        cycle = find_cycle([node.parents for node in self.nodes], remaining)
        raise CycleError([self.nodes[j].key for j in cycle])

    # --- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __repr__(self) -> str:
        edges = sum(len(node.parents) for node in self.nodes)
        label = f" {self.name!r}" if self.name else ""
        return f"<Graph{label} [{len(self.nodes)} nodes, {edges} edges]>"

    def children(self, index: int) -> tuple[int, ...]:
        """The nodes that depend on node ``index``."""
        return self._children[index]

    def find(self, key: str) -> Node | None:
        """The node with this key, or ``None``."""
        if self._by_key is None:
            self._by_key = {node.key: node.index for node in self.nodes}
        index = self._by_key.get(key)
        return None if index is None else self.nodes[index]

    def node(self, key: str) -> Node:
        """The node with this key (raises ``KeyError`` naming the known keys when absent)."""
        found = self.find(key)
        if found is not None:
            return found
        known = ", ".join(sorted(self._by_key or ())[:20])
        raise KeyError(f"no node {key!r} in this graph; known: {known}")

    def edges(self) -> Iterator[tuple[int, int]]:
        """Every ``(parent, child)`` edge, in node order."""
        for node in self.nodes:
            for p in node.parents:
                yield p, node.index

    def topological_order(self) -> list[int]:
        """Node indices such that every parent comes before its children."""
        if all(p < node.index for node in self.nodes for p in node.parents):
            return list(range(len(self.nodes)))
        remaining = [len(node.parents) for node in self.nodes]
        order = [i for i, r in enumerate(remaining) if r == 0]
        for i in order:  # order grows while we walk it
            for c in self._children[i]:
                remaining[c] -= 1
                if remaining[c] == 0:
                    order.append(c)
        return order

    # --- drawing ---------------------------------------------------------------------------

    def _label(self, node: Node) -> str:
        if node.kind is NodeKind.JOIN:
            return "decider" if node.when is not None else "join"
        if node.kind is NodeKind.SUBGRAPH:
            return f"{node.key} (nested)"
        if node.kind is not NodeKind.TASK:
            return f"{node.key} ({node.kind.value})"
        return node.key

    def _error_edges(self) -> Iterator[tuple[int, int]]:
        for node in self.nodes:
            scope = node.error_scope
            if scope is not None:
                for at in range(0, len(scope), 2):
                    if scope[at + 1] > scope[at]:  # an empty range can never fail
                        yield scope[at + 1] - 1, node.index

    def to_dot(self) -> str:
        """The graph in Graphviz DOT; error callbacks hang off dashed edges."""

        def quote(text: str) -> str:
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = [f"digraph {quote(self.name or 'workflow')} {{", "  rankdir=LR;"]
        for node in self.nodes:
            shape = "point" if node.kind is NodeKind.JOIN else "box"
            lines.append(f"  n{node.index} [label={quote(self._label(node))}, shape={shape}];")
        for p, c in self.edges():
            lines.append(f"  n{p} -> n{c};")
        for p, c in self._error_edges():
            lines.append(f'  n{p} -> n{c} [style=dashed, color=red, label="on error"];')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart."""

        def quote(text: str) -> str:
            return '"' + text.replace('"', "#quot;") + '"'

        lines = ["flowchart LR"]
        for node in self.nodes:
            if node.kind is NodeKind.JOIN:
                lines.append(f"  n{node.index}(({quote(self._label(node))}))")
            else:
                lines.append(f"  n{node.index}[{quote(self._label(node))}]")
        for p, c in self.edges():
            lines.append(f"  n{p} --> n{c}")
        for p, c in self._error_edges():
            lines.append(f"  n{p} -. on error .-> n{c}")
        return "\n".join(lines) + "\n"


_TASK = NodeKind.TASK
#: ``Node(...)`` goes through a Python-level ``__new__`` with 15 defaults; the builder,
#: which passes every field, builds the tuple directly (0.6 -> 0.15 µs a node).
_new_node = tuple.__new__


@final
class OptionalKey:
    """A binding selector for an optional input: when the source's result lacks
    ``key``, the parameter is left out (it keeps its default) instead of failing.
    """

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"OptionalKey({self.key!r})"


@final
class SkipOnly:
    """What a guard join's ``when`` may return to say no to some nodes only: the guard
    and ``nodes`` are SKIPPED, and what follows them runs once its other parents end
    (a TaskFlow decider with a ``decider_depth`` narrower than ``ALL``). Falsy."""

    __slots__ = ("nodes",)

    def __init__(self, nodes: tuple[int, ...]) -> None:
        self.nodes = nodes

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"SkipOnly({self.nodes!r})"


@final
class EndBranch:
    """Returned by a node's task: the node succeeds with ``value``, and everything
    downstream of it is SKIPPED (a retried flow whose inner branch a decider ended).
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def find_cycle(parents: Sequence[Sequence[int]], remaining: Sequence[int]) -> list[int]:
    """A cycle among the nodes a topological walk left over (``remaining[i] > 0``).

    Walks parents from any left-over node until one repeats; returns the
    cycle in parent -> child order.
    """
    start = next(i for i, r in enumerate(remaining) if r > 0)
    path: list[int] = []
    position: dict[int, int] = {}
    i = start
    while i not in position:
        position[i] = len(path)
        path.append(i)
        i = next(p for p in parents[i] if remaining[p] > 0)
    cycle = path[position[i] :]
    cycle.reverse()
    return cycle


def errback_extras(task: FunctionTask[..., Any]) -> frozenset[str]:
    """Which of ``failures`` / ``results`` an error callback takes (by name or ``**kwargs``).

    The scheduler passes exactly these; the call-shape check counts them as given.
    """
    return _errback_extras_of(task.fn)


@functools.lru_cache(maxsize=256)
def _errback_extras_of(fn: Callable[..., Any]) -> frozenset[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return frozenset({"failures", "results"})
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return frozenset(named & {"failures", "results"})


def _check_call(
    task: FunctionTask[..., Any],
    key: str,
    n_pos: int,
    kw: tuple[str, ...],
    prepended: str | None = None,
) -> None:
    """Raise SignatureError if ``task`` cannot be called with this shape of arguments.

    Shapes are cached on the task, so a million calls of one task cost one ``bind``.
    """
    shapes = task.checked_shapes
    shape = (n_pos, kw)
    if shape in shapes:
        reason = shapes[shape]
    else:
        try:
            sig = inspect.signature(task.fn)
        except (TypeError, ValueError):  # builtins without a signature: cannot check
            reason = None
        else:
            try:
                sig.bind(*([None] * n_pos), **dict.fromkeys(kw))
                reason = None
            except TypeError as exc:
                reason = str(exc)
        shapes[shape] = reason
    if reason is not None:
        argument = reason.split("'")[1] if "'" in reason else None
        hint = f" ({prepended} comes first)" if prepended else ""
        raise SignatureError(
            key, f"cannot be called with {_shape(n_pos, kw)}{hint}: {reason}", argument
        )


def _shape(n_pos: int, kw: tuple[str, ...]) -> str:
    parts = [f"{n_pos} positional argument{'s' if n_pos != 1 else ''}"]
    if kw:
        parts.append("keywords " + ", ".join(kw))
    return " and ".join(parts)


@final
class GraphBuilder:
    """Builds a graph node by node, giving each a unique, stable key.

    Keys are the task's name, then ``name#2``, ``name#3``... in build order,
    so the same workflow always yields the same keys.
    """

    __slots__ = ("_counts", "_keys", "_reserved", "nodes")

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self._counts: dict[str, int] = {}
        self._keys: set[str] = set()
        self._reserved: set[str] = set()

    def reserve(self, keys: Iterable[str]) -> None:
        """Keep these keys for nodes added later with ``key=`` (generated keys avoid them)."""
        for key in keys:
            if key in self._keys:
                raise DuplicateTaskError(key)
            self._keys.add(key)
            self._reserved.add(key)

    def _key(self, base: str) -> str:
        count = self._counts.get(base, 0)
        while True:
            count += 1
            key = base if count == 1 else f"{base}#{count}"
            if key not in self._keys:
                break
        self._counts[base] = count
        self._keys.add(key)
        return key

    def _next_key(self, name: str) -> str:
        """:meth:`_key` without the search, in the usual case where the next one is free."""
        keys = self._keys
        count = self._counts.get(name)
        if count is None:
            if name in keys:
                return self._key(name)
            self._counts[name] = 1
            keys.add(name)
            return name
        key = f"{name}#{count + 1}"
        if key in keys:  # taken by a key=: search on
            return self._key(name)
        self._counts[name] = count + 1
        keys.add(key)
        return key

    def add(
        self,
        kind: NodeKind,
        task: FunctionTask[..., Any] | None,
        *,
        name: str | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        parents: tuple[int, ...] = (),
        input: int = -1,
        options: NodeOptions = DEFAULT_OPTIONS,
        error_scope: tuple[int, ...] | None = None,
        key: str | None = None,
        tolerates: tuple[int, int] | None = None,
        bindings: tuple[tuple[str, int, Any], ...] = (),
        when: Callable[[dict[str, Any]], Any] | None = None,
        after_all: bool = False,
    ) -> int:
        """Append a node and return its index; checks the call shape against the task."""
        index = len(self.nodes)
        if key is not None:
            if key in self._reserved:
                self._reserved.discard(key)
            elif key in self._keys:
                raise DuplicateTaskError(key)
            self._keys.add(key)
        else:
            key = self._next_key(name or (task.name if task is not None else "join"))
        kwargs = kwargs if kwargs else _NO_KWARGS
        if task is not None:
            extra = 1 if input != -1 else 0
            if kind is _TASK and not bindings and error_scope is None:  # the usual call
                n_pos = extra + len(args)
                kw = tuple(kwargs) if kwargs else ()
                if task.checked_shapes.get((n_pos, kw), _UNCHECKED) is not None:
                    _check_call(task, key, n_pos, kw, "its parent's result" if input >= 0 else None)
            elif kind is NodeKind.TASK or kind is NodeKind.SUBGRAPH:
                prepended = None
                if input >= 0:
                    prepended = "its parent's result"
                elif input == INPUT_ERROR:
                    prepended = "the exception"
                kw = tuple(kwargs) + tuple(b[0] for b in bindings if b[0] not in kwargs)
                if error_scope is not None:
                    kw += tuple(sorted(errback_extras(task) - set(kw)))
                _check_call(task, key, extra + len(args), kw, prepended)
            elif kind is NodeKind.MAP:
                _check_call(task, key, 1, tuple(kwargs))
            elif kind is NodeKind.STARMAP and args:
                for n_pos in {len(item) for item in args[0]}:
                    _check_call(task, key, n_pos, tuple(kwargs))
        inline = (
            kind is _TASK
            and task is not None
            and task.is_async
            and options.single_shot
            and not bindings
            and error_scope is None
            and not task.asks_step
            and task.executor is None
        )
        self.nodes.append(
            _new_node(
                Node,
                (
                    index,
                    key,
                    kind,
                    task,
                    args,
                    kwargs,
                    parents,
                    input,
                    options,
                    error_scope,
                    tolerates,
                    bindings,
                    when,
                    after_all,
                    inline,
                ),
            )
        )
        return index

    def add_calls(
        self,
        task: FunctionTask[..., Any],
        calls: Sequence[tuple[tuple[Any, ...], Mapping[str, Any]]],
        options: NodeOptions,
        pred: int,
        *,
        immutable: bool = False,
        chained: bool = False,
        name: str | None = None,
    ) -> range:
        """The hot path of :meth:`add`: plain calls of one task; returns their indices.

        Each call runs after ``pred`` (a fan-out), or, ``chained``, after the call
        before it (the first after ``pred``); ``immutable`` calls ignore its result.
        Keys come from ``name`` (the task's name by default), as :meth:`add` makes them.
        """
        nodes = self.nodes
        keys = self._keys
        first = len(nodes)
        name = name or task.name
        count = self._counts.get(name, 0)
        inline = (
            task.is_async and options.single_shot and not task.asks_step and task.executor is None
        )
        shapes = task.checked_shapes
        last_shape: tuple[int, tuple[str, ...]] | None = None
        parents = (pred,) if pred != -1 else ()
        input = -1 if immutable else pred
        for index, (args, kwargs) in enumerate(calls, first):
            # _next_key, inlined: a call per node costs a tenth of compiling a fan-out
            count += 1
            key = f"{name}#{count}" if count > 1 else name
            if key in keys:  # taken (a key=): search on from there
                self._counts[name] = count - 1
                key = self._key(name)
                count = self._counts[name]
            else:
                keys.add(key)
            shape = (len(args) + (input != -1), tuple(kwargs) if kwargs else ())
            if shape != last_shape:  # a call shape is checked once per task (cached there)
                if shapes.get(shape, _UNCHECKED) is not None:
                    prepended = "its parent's result" if input >= 0 else None
                    _check_call(task, key, shape[0], shape[1], prepended)
                last_shape = shape
            nodes.append(
                _new_node(
                    Node,
                    (
                        index,
                        key,
                        _TASK,
                        task,
                        args,
                        kwargs or _NO_KWARGS,
                        parents,
                        input,
                        options,
                        None,
                        None,
                        (),
                        None,
                        False,
                        inline,
                    ),
                )
            )
            if chained:
                parents = (index,)
                if not immutable:
                    input = index
        self._counts[name] = count
        return range(first, len(nodes))

    def build(self, output: int, name: str | None = None) -> Graph:
        """Freeze the nodes into a validated :class:`Graph`."""
        return Graph(self.nodes, output, name, _unique=True)


def compile(workflow: object) -> Graph:
    """Compile any workflow (signature, chain, group, chord, ...) to its :class:`Graph`.

    Validation happens here, before anything runs: an argument a task cannot
    take raises :class:`~aflow.errors.SignatureError` naming the node, a cycle raises
    :class:`~aflow.errors.CycleError` naming the nodes on it.
    """
    if isinstance(workflow, Graph):
        return workflow
    build = getattr(workflow, "__aflow_graph__", None)
    if build is None:
        raise TypeError(
            f"cannot compile {type(workflow).__name__!r}: expected a signature, chain, group, "
            "chord or another aflow workflow"
        )
    # Compiling allocates a few container objects per node and frees none of them, so
    # the cyclic collector would run again and again over a growing heap that cannot
    # hold a cycle yet (half of a 20k-step chain's compile time): it waits until the
    # graph is built, and then runs as it would have.
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        graph = build()
    finally:
        if paused:
            gc.enable()
    if not isinstance(graph, Graph):
        raise AflowInternalError(f"{type(workflow).__name__}.__aflow_graph__ returned {graph!r}")
    return graph
