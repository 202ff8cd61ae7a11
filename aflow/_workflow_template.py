"""An ``@aflow.workflow``'s graph, built once and filled in with each call's parameters
(issue 16: a handler that runs the same workflow on every request with other arguments
should not rebuild and recompile it every time).

The function is called once more with a *marker* in place of each parameter. A marker
refuses every use (comparing, formatting, hashing, iterating, reading an attribute, as
a truth value...), so a function that looks at a parameter's value to decide what to
build cannot be traced, and is built as before on every call. One that only passes its
parameters into signatures gives a canvas whose compiled graph holds the markers; the
graph is kept with where each marker sits, and later calls copy it with their values
put in. The trace is checked against the real build of the same call, node for node,
before it is kept, and a marker found anywhere else (inside a list or an object passed
as an argument, in a guard's closure) makes the workflow untraceable.

Templates are keyed by the parameters' names and types, so a function that branches
on a type (``isinstance``, which no marker can refuse) is traced again, and checked,
for each combination. What still escapes: a function that reads something other than
its parameters (a global flag, the clock) to decide its shape. Durable runs need the
same of it (another process rebuilds the graph from the parameters), and the README
says so; ``@aflow.workflow(reuse_graph=False)`` builds on every call.
"""

from __future__ import annotations

import gc
import types
from collections.abc import Callable, Mapping
from typing import Any, final

from ._graph import Graph, Node

__all__ = ["Templates"]

#: Shapes kept per workflow (a few per service: one per set of parameter types).
_LIMIT = 32
#: Objects looked through for a stray marker, per traced node; past it, not traced.
_SCAN_BUDGET = 2000
_new_node = tuple.__new__


class _Refused(Exception):
    """A marker was used for its value: the function cannot be traced."""


def _refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise _Refused


@final
class _Param:
    """Stands for one parameter while the function is traced."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def __repr__(self) -> str:
        return f"<aflow workflow parameter {self.name}>"

    def __getattr__(self, name: str) -> Any:
        raise _Refused


for _method in [
    "__bool__",
    "__eq__",
    "__ne__",
    "__lt__",
    "__le__",
    "__gt__",
    "__ge__",
    "__hash__",
    "__str__",
    "__format__",
    "__bytes__",
    "__len__",
    "__iter__",
    "__contains__",
    "__getitem__",
    "__setitem__",
    "__delitem__",
    "__call__",
    "__int__",
    "__float__",
    "__index__",
    "__complex__",
    "__round__",
    "__neg__",
    "__pos__",
    "__abs__",
    "__invert__",
    "__add__",
    "__radd__",
    "__sub__",
    "__rsub__",
    "__mul__",
    "__rmul__",
    "__truediv__",
    "__rtruediv__",
    "__floordiv__",
    "__rfloordiv__",
    "__mod__",
    "__rmod__",
    "__pow__",
    "__rpow__",
    "__and__",
    "__rand__",
    "__or__",
    "__ror__",
    "__xor__",
    "__rxor__",
    "__lshift__",
    "__rshift__",
    "__matmul__",
    "__enter__",
    "__exit__",
    "__aenter__",
    "__await__",
    "__reduce__",
    "__reduce_ex__",
    "__copy__",
    "__deepcopy__",
    "__setattr__",
    "__delattr__",
    "__fspath__",
]:
    setattr(_Param, _method, _refuse)


@final
class _Template:
    """A traced graph, and where each parameter goes: ``(node, position or keyword, name)``."""

    __slots__ = ("graph", "slots")

    def __init__(self, graph: Graph, slots: tuple[tuple[int, int | str, str], ...]) -> None:
        self.graph = graph
        self.slots = slots

    def fill(self, params: Mapping[str, Any]) -> Graph:
        nodes = list(self.graph.nodes)
        for index, where, name in self.slots:
            node = nodes[index]
            value = params[name]
            if isinstance(where, int):
                args = list(node.args)
                args[where] = value
                nodes[index] = _new_node(Node, (*node[:4], tuple(args), *node[5:]))
            else:
                kwargs = dict(node.kwargs)
                kwargs[where] = value
                nodes[index] = _new_node(Node, (*node[:5], kwargs, *node[6:]))
        return self.graph._with_nodes(tuple(nodes))


#: what a workflow that cannot be traced for a key is kept as
_UNTRACEABLE: Any = object()


@final
class Templates:
    """One workflow's templates, by the names and types of its parameters."""

    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: dict[Any, _Template | Any] = {}

    def build(
        self, fn: Callable[..., Any], params: Mapping[str, Any], build: Callable[[], Graph]
    ) -> Graph:
        """The graph of ``fn(**params)``: filled in from a template, or ``build()``'s."""
        try:
            key = frozenset([(name, type(value)) for name, value in params.items()])
        except TypeError:  # pragma: no cover - names are strings
            return build()
        found = self._by_key.get(key)
        if found is not None:
            if found is _UNTRACEABLE:
                return build()
            return found.fill(params)
        graph = build()  # the first call of a kind builds for real: its errors, as ever
        if len(self._by_key) >= _LIMIT:
            self._by_key.clear()
        self._by_key[key] = _trace(fn, params, graph) or _UNTRACEABLE
        return graph


def _trace(fn: Callable[..., Any], params: Mapping[str, Any], real: Graph) -> _Template | None:
    markers = {name: _Param(name) for name in params}
    try:
        built = fn(**markers)
        # a canvas (known by its compile: this layer may not import the canvas module)
        compile_uncached = getattr(type(built), "_compile_uncached", None)
        if compile_uncached is None:
            return None
        graph = compile_uncached(built)
    except Exception:  # (a marker refused, or anything else: built as before)
        return None
    slots: list[tuple[int, int | str, str]] = []
    seen = set(map(id, markers.values()))
    for node in graph.nodes:
        for position, value in enumerate(node.args):
            if type(value) is _Param:
                slots.append((node.index, position, value.name))
            elif _holds_marker(value, seen):
                return None
        for keyword, value in node.kwargs.items():
            if type(value) is _Param:
                slots.append((node.index, keyword, value.name))
            elif _holds_marker(value, seen):
                return None
        if node.when is not None and _holds_marker(node.when, seen):
            return None
        if any(_holds_marker(b[2], seen) for b in node.bindings):
            return None
    template = _Template(graph, tuple(slots))
    try:
        if not _same(template.fill(params), real):
            return None
    except Exception:  # an argument whose == raises (an array): built as before
        return None
    return template


#: the fields of a node compared as they are (args and kwargs are compared value by
#: value, ``when``, a guard made afresh by each build, by presence)
_PLAIN_FIELDS = tuple(
    i for i, name in enumerate(Node._fields) if name not in ("args", "kwargs", "when")
)


def _same(filled: Graph, real: Graph) -> bool:
    if filled.output != real.output or len(filled.nodes) != len(real.nodes):
        return False
    for a, b in zip(filled.nodes, real.nodes, strict=True):
        if any(a[i] != b[i] for i in _PLAIN_FIELDS) or (a.when is None) is not (b.when is None):
            return False
        if len(a.args) != len(b.args) or any(
            x is not y and not bool(x == y) for x, y in zip(a.args, b.args, strict=True)
        ):
            return False
        if a.kwargs.keys() != b.kwargs.keys() or any(
            a.kwargs[k] is not b.kwargs[k] and not bool(a.kwargs[k] == b.kwargs[k])
            for k in a.kwargs
        ):
            return False
    return True


_LEAVES = (str, bytes, int, float, complex, bool, type(None), type, types.ModuleType)


def _holds_marker(value: Any, markers: set[int]) -> bool:
    """Whether a marker is anywhere inside ``value`` (a bounded look through it)."""
    if isinstance(value, _LEAVES):
        return False
    stack = [value]
    visited: set[int] = set()
    budget = _SCAN_BUDGET
    while stack:
        obj = stack.pop()
        if id(obj) in markers:
            return True
        if id(obj) in visited or isinstance(obj, _LEAVES):
            continue
        visited.add(id(obj))
        budget -= 1
        if budget < 0:
            return True  # too much to look through: assume the worst
        if isinstance(obj, types.FunctionType):
            stack.extend(cell.cell_contents for cell in obj.__closure__ or () if _filled_cell(cell))
            stack.extend(obj.__defaults__ or ())
            continue
        stack.extend(gc.get_referents(obj))
    return False


def _filled_cell(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True
