"""Compiled canvases, cached by shape: a handler that builds the same workflow on every
request with other arguments compiles (and validates) it once (issue 16).

A canvas's *shape* is everything that decides its graph but its arguments' values: the
kind and nesting of its objects, each signature's task (and its name), the number of its
positional arguments and the names of its keyword arguments, immutability and options,
callbacks. Compiling depends on arguments only through that shape (a call's shape is
what is checked against the task), so two canvases of one shape compile to the same
graph but for the ``args`` and ``kwargs`` of the nodes the signatures became.

The first canvas of a shape is compiled with a marker in place of each argument; the
markers say which node took which signature's arguments. Later canvases of that shape
get a copy of that graph with their own arguments put in: no walk of the builder, no
call checks, no key generation. What is not a plain shape (map and starmap, whose items
make nodes; options that cannot be hashed) and a canvas of more than 64 signatures are
compiled as before, every time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, final

from ._graph import Graph, Node

if TYPE_CHECKING:
    from ._canvas import Canvas

__all__ = ["compile_canvas"]

#: Shapes kept, most recent last (a service has a few; a generator of shapes cannot grow
#: this without bound).
_LIMIT = 256
#: Larger canvases are compiled every time: a first compile of a shape costs three
#: plain ones (the walk, the marked copy), which a big graph, whose size (and so shape)
#: changes from one run to the next, would pay on every run; and its nodes' own work
#: dwarfs its compile anyway.
_MAX_SIGNATURES = 64
_new_node = tuple.__new__


@final
class _Slot:
    """Stands for the arguments of the ``at``-th signature of a canvas (in walk order)."""

    __slots__ = ("at",)

    def __init__(self, at: int) -> None:
        self.at = at


class _Uncacheable(Exception):
    pass


@final
class _Template:
    """A compiled shape: its graph, and which nodes take which signature's arguments."""

    __slots__ = ("graph", "takes")

    def __init__(self, graph: Graph, takes: tuple[tuple[int, int], ...]) -> None:
        self.graph = graph
        #: (node index, signature position) for every node that has arguments
        self.takes = takes


#: shape -> its template, or None for a shape whose graph could not be templated
_templates: dict[Any, _Template | None] = {}


def compile_canvas(canvas: Canvas[Any], compile_it: Callable[[Canvas[Any]], Graph]) -> Graph:
    """The graph of ``canvas``: a cached one with its arguments, or ``compile_it(canvas)``."""
    if _Signature is None:
        _bind()
    arguments: list[tuple[tuple[Any, ...], Any]] = []
    try:
        key = _shape(canvas, arguments)
        template = _templates.get(key, _MISSING)
    except (_Uncacheable, TypeError):  # (TypeError: an option that cannot be hashed)
        return compile_it(canvas)
    if template is _MISSING:
        graph = compile_it(canvas)  # first: errors are raised as they always are
        _remember(key, _template_of(canvas, arguments, compile_it))
        return graph
    if template is None:
        return compile_it(canvas)
    return _filled(template, arguments)


_MISSING: Any = object()
_Signature: Any = None
_Chain: Any = None
_Group: Any = None
_Chord: Any = None


def _bind() -> None:
    """The canvas classes (that module imports this one)."""
    global _Signature, _Chain, _Group, _Chord
    from ._canvas import Chain, Chord, Group, Signature

    _Signature, _Chain, _Group, _Chord = Signature, Chain, Group, Chord


def _remember(key: Any, template: _Template | None) -> None:
    if len(_templates) >= _LIMIT:
        try:
            del _templates[next(iter(_templates))]
        except (KeyError, RuntimeError, StopIteration):
            pass  # another thread evicted it first (compiling from threads)
    _templates[key] = template


def _filled(template: _Template, arguments: list[tuple[tuple[Any, ...], Any]]) -> Graph:
    graph = template.graph
    nodes = list(graph.nodes)
    for index, at in template.takes:
        node = nodes[index]
        args, kwargs = arguments[at]
        nodes[index] = _new_node(Node, (*node[:4], args, kwargs or node[5], *node[6:]))
    return graph._with_nodes(tuple(nodes))


def _shape(canvas: Canvas[Any], arguments: list[tuple[tuple[Any, ...], Any]]) -> Any:
    """The shape of ``canvas`` (hashable); appends each signature's arguments."""
    kind = type(canvas)
    if kind is _Signature:
        sig: Any = canvas
        if sig._mode != "call":
            raise _Uncacheable
        if len(arguments) >= _MAX_SIGNATURES:
            raise _Uncacheable
        args = sig._args
        kwargs = sig._kwargs
        arguments.append((args, kwargs))
        task = sig._task
        own: Any = (task, task.name, len(args), tuple(kwargs) if kwargs else (), sig._immutable)
    elif kind is _Chain:
        own = ("chain", *[_shape(t, arguments) for t in canvas.tasks])  # type: ignore[attr-defined]
    elif kind is _Group:
        own = ("group", *[_shape(t, arguments) for t in canvas._tasks])  # type: ignore[attr-defined]
    elif kind is _Chord:
        header = _shape(canvas._header, arguments)  # type: ignore[attr-defined]
        own = ("chord", header, _shape(canvas._body, arguments))  # type: ignore[attr-defined]
    else:
        raise _Uncacheable
    options = canvas._options
    links = canvas._links
    errbacks = canvas._errbacks
    if options or links or errbacks:
        # (an option's type too: 1 == True, and one may be checked as the other is not)
        return (
            own,
            tuple((name, type(value), value) for name, value in options.items()),
            tuple(_shape(link, arguments) for link in links),
            tuple(_shape(errback, arguments) for errback in errbacks),
        )
    return own


def _template_of(
    canvas: Canvas[Any],
    arguments: list[tuple[tuple[Any, ...], Any]],
    compile_it: Callable[[Canvas[Any]], Graph],
) -> _Template | None:
    """Compile ``canvas`` with markers for its arguments, and find where each went."""
    graph = compile_it(_marked(canvas, iter(range(len(arguments)))))
    takes: list[tuple[int, int]] = []
    for node in graph.nodes:
        at = _slot_of(node)
        if at >= 0:
            args, kwargs = arguments[at]
            if len(node.args) != len(args) or len(node.kwargs) != len(kwargs or ()):
                at = -2  # it took a part of them
        if at == -2:
            return None  # an argument went somewhere this cannot follow: do not cache
        if at >= 0:
            takes.append((node.index, at))
    return _Template(graph, tuple(takes))


def _slot_of(node: Node) -> int:
    """The signature whose arguments ``node`` took (its args and kwargs are all one
    marker), -1 for a node with no marker, -2 for anything else."""
    values = (*node.args, *node.kwargs.values())
    marker = None
    for value in values:
        if type(value) is _Slot:
            if marker is not None and value is not marker:
                return -2
            marker = value
        elif type(value) in (tuple, list) and any(type(v) is _Slot for v in value):
            return -2
    if marker is None:
        return -1
    if any(value is not marker for value in values):
        return -2
    return marker.at


def _marked(canvas: Canvas[Any], positions: Any) -> Canvas[Any]:
    """A copy of ``canvas`` whose every argument is a marker naming its signature."""
    from ._canvas import Chain, Chord, Group, Signature, _ChainNode

    kind = type(canvas)
    if kind is Signature:
        sig: Signature[Any] = canvas  # type: ignore[assignment]
        slot = _Slot(next(positions))
        new: Canvas[Any] = sig._copy(
            _args=(slot,) * len(sig._args),
            _kwargs=dict.fromkeys(sig._kwargs, slot) if sig._kwargs else sig._kwargs,
        )
    elif kind is Chain:
        flat = tuple(_marked(t, positions) for t in canvas.tasks)  # type: ignore[attr-defined]
        new = canvas._copy(_cell=_ChainNode(None, flat), _flat=flat)
    elif kind is Group:
        new = canvas._copy(_tasks=tuple(_marked(t, positions) for t in canvas._tasks))  # type: ignore[attr-defined]
    else:
        assert kind is Chord
        header = _marked(canvas._header, positions)  # type: ignore[attr-defined]
        new = canvas._copy(_header=header, _body=_marked(canvas._body, positions))  # type: ignore[attr-defined]
    links = canvas._links
    errbacks = canvas._errbacks
    if links or errbacks:
        new = new._copy(
            _links=tuple(_marked(link, positions) for link in links),
            _errbacks=tuple(_marked(errback, positions) for errback in errbacks),
        )
    return new
