"""Flows to graph nodes: analysis (names, order, validation), then emission.

Analysis walks the flow tree once, bottom-up. Each flow (a *level*) learns
what it provides to what follows it (``exports``), what it needs from
outside (``wants``) and, for a graph flow, the order its items must run in
(edges inferred from who provides what, plus explicit links). Duplicate
names, ambiguous providers and cycles are reported here, before anything runs.

Emission walks the levels in that order and appends one node per task to a
graph builder, so every parent has a smaller index than its children. A task
reads each name from the *nearest* provider upstream of it, found by walking
its enclosing levels outwards (a linear level: the last earlier item that
provides the name, by binary search; a graph level: the item providing it);
only when no task provides the name does the store (or, for a flow inside a
chain, the dict its parent returned) supply it. ``inject`` beats both.

A flow with a retry controller becomes one SUBGRAPH node whose task runs the
flow's own graph as a nested run, once per attempt (see :class:`RetriedFlow`).
"""

from __future__ import annotations

import bisect
import heapq
import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, final

import anyio
import anyio.lowlevel

from .._atom import (
    REVERT_KEY,
    Params,
    ProvidesSpec,
    Task,
    analyse_params,
    checked_task,
    provides_spec,
    revert_twin,
)
from .._canvas import Canvas, Signature, _Compiler
from .._exceptions import (
    AmbiguousProviderError,
    CompensationFailed,
    CycleError,
    DefinitionError,
    DuplicateTaskError,
    MissingInputError,
    SignatureError,
)
from .._failure import Failure
from .._graph import EndBranch, Graph, GraphBuilder, NodeKind, OptionalKey, SkipOnly, find_cycle
from .._options import DEFAULT_OPTIONS, NodeOptions, layer_options, resolve_options
from .._runtime._builder_api import RunView, contain, current_run, run_subflow, undo_subflow
from .._runtime._states import NodeState
from .._task import FunctionTask, Revert
from ..retry import RETRY, REVERT_ALL, Attempt, History, Retry
from ._flow import DEPTH_ORDER, Decider, Depth, Flow, FlowItem, item_name

__all__ = ["CompiledFlow", "FlowCanvas", "Level", "analyse", "compile_flow"]

_REVERT_ALL_FLAG = "_aflow_revert_all"

#: A decider link into a graph flow's item: (the source item's position, the decider,
#: its decider_depth).
Gate = tuple[int, Decider, Depth]


@dataclass(eq=False, slots=True)
class Atom:
    """One flow item that becomes nodes: a task, or a canvas piece."""

    name: str
    task: FunctionTask[..., Any] | None
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    params: Params
    spec: ProvidesSpec
    options: NodeOptions
    canvas: Canvas[Any] | None
    #: For a canvas piece only: name -> (required, who) of what its signatures read.
    canvas_wants: dict[str, tuple[bool, str]] | None = None
    node: int = -1

    def wants(self) -> Iterator[tuple[str, bool, str]]:
        """(name, required, who) for each name it reads from outside."""
        if self.canvas_wants is not None:
            for name, (required, who) in self.canvas_wants.items():
                yield name, required, who
            return
        for name in self.params.required.values():
            yield name, True, self.name
        for name in self.params.optional.values():
            yield name, False, self.name


@dataclass(eq=False, slots=True)
class Level:
    """One flow, analysed."""

    flow: Flow
    name: str
    kind: str
    items: list[Atom | Level]
    retry: Retry | None
    preds: list[list[int]]
    gates: list[list[Gate]]
    order: list[int]
    exports: dict[str, int]
    positions: dict[str, list[int]]
    wants: dict[str, tuple[bool, str]]
    names: list[str]
    node: int = -1
    runner: RetriedFlow | None = None
    reach: dict[tuple[int, int], bool] = field(default_factory=dict)
    name_set: frozenset[str] = frozenset()
    #: a decider narrower than ALL is in this flow or one nested in it
    narrow: bool = False

    def reaches(self, source: int, target: int) -> bool:
        """True when item ``source`` runs before item ``target`` (graph flows)."""
        if source in self.preds[target]:
            return True
        key = (source, target)
        found = self.reach.get(key)
        if found is None:
            seen = {target}
            stack = [target]
            found = False
            while stack and not found:
                i = stack.pop()
                for j in (*self.preds[i], *(g[0] for g in self.gates[i])):
                    if j == source:
                        found = True
                        break
                    if j not in seen:
                        seen.add(j)
                        stack.append(j)
            self.reach[key] = found
        return found

    @property
    def export_names(self) -> list[str]:
        names = list(self.exports)
        if self.retry is not None:
            names.extend(name for name in self.retry.provides if name not in self.exports)
        return names


def _merge(into: dict[str, tuple[bool, str]], name: str, required: bool, who: str) -> None:
    old = into.get(name)
    if old is None or (required and not old[0]):
        into[name] = (required, who)


# --- analysis --------------------------------------------------------------------------------


def _atom_of(item: FlowItem) -> Atom:
    if isinstance(item, Task):
        cls_task = type(item)._aflow_task
        assert cls_task is not None
        spec = item._spec
        params = item._params
        undo = item._revert_params
        if undo is not None:  # the revert reads its own names, under REVERT_KEY
            cls_task = revert_twin(cls_task, undo)
            params = Params(
                {**params.required, **{REVERT_KEY + p: n for p, n in undo.required.items()}},
                {**params.optional, **{REVERT_KEY + p: n for p, n in undo.optional.items()}},
            )
        return Atom(
            item.name,
            checked_task(cls_task, spec),
            (item,),
            item._inject_kwargs,
            params,
            spec,
            opts if item.priority == (opts := item._node_options).priority else item._options_now(),
            None,
        )
    if isinstance(item, FunctionTask):
        item = Signature(item)
    if isinstance(item, Signature) and item._mode == "call" and not (item._links or item._errbacks):
        task = item.task
        own = item._options
        name: str = own.get("name", task.name)
        spec = provides_spec(name, own.get("provides", task.options.get("provides")))
        params = analyse_params(name, task.fn, skip=len(item.args), given=tuple(item._kwargs))
        merged = layer_options(task.options, own)
        merged.pop("name", None)
        return Atom(
            name,
            checked_task(task, spec),
            item.args,
            item._kwargs,
            params,
            spec,
            resolve_options(merged) if own else task.node_options,
            None,
        )
    assert isinstance(item, Canvas)
    name = item_name(item)
    spec = provides_spec(name, item.options.get("provides"))
    if spec.kind not in ("none", "name"):
        raise SignatureError(name, "a chain, group or chord provides one name", "provides")
    wants: dict[str, tuple[bool, str]] = {}

    def record(
        task: FunctionTask[..., Any], key: str, n_pos: int, kw: tuple[str, ...]
    ) -> tuple[tuple[tuple[str, int, Any], ...], Mapping[str, Any]]:
        params = analyse_params(key, task.fn, skip=n_pos, given=kw)
        for n in params.required.values():
            _merge(wants, n, True, name)
        for n in params.optional.values():
            _merge(wants, n, False, name)
        return tuple((p, 0, None) for p in (*params.required, *params.optional)), {}

    dry = _Compiler()
    dry.resolve = record
    item._compile(dry, -1, {})  # finds what it reads by name, and checks its calls
    return Atom(name, None, (), {}, Params({}, {}), spec, DEFAULT_OPTIONS, item, wants)


def analyse(flow: Flow) -> Level:
    """Analyse a flow tree; raises the definition errors before anything runs."""
    seen: dict[str, str] = {}
    return _analyse(flow, seen, set())


def _claim(seen: dict[str, str], name: str, what: str) -> None:
    if name in seen:
        raise DuplicateTaskError(name)
    seen[name] = what


def _analyse(flow: Flow, seen: dict[str, str], stack: set[int]) -> Level:
    if id(flow) in stack:
        raise DefinitionError(f"flow {flow.name!r} contains itself")
    stack.add(id(flow))
    items: list[Atom | Level] = []
    names: list[str] = []
    narrow = False  # (an inner level's deciders look past it: see Level.narrow)
    for item in flow:
        if isinstance(item, Flow):
            level = _analyse(item, seen, stack)
            narrow = narrow or level.narrow
            items.append(level)
            names.extend(level.names)
        else:
            atom = _atom_of(item)
            _claim(seen, atom.name, "task")
            items.append(atom)
            names.append(atom.name)
    stack.discard(id(flow))
    kind = flow.pattern
    n = len(items)
    exported = [_exports_of(it) for it in items]
    preds: list[list[int]] = [[] for _ in range(n)]
    gates: list[list[Gate]] = [[] for _ in range(n)]
    exports: dict[str, int] = {}
    positions: dict[str, list[int]] = {}
    wants: dict[str, tuple[bool, str]] = {}
    where = f"{kind} flow {flow.name!r}"
    if kind == "linear":
        provided: set[str] = set()
        for i in range(n):
            for name, required, who in _wants(items[i]):
                if name not in provided:
                    _merge(wants, name, required, who)
            for name in exported[i]:
                positions.setdefault(name, []).append(i)
                exports[name] = i
            provided.update(exported[i])
            if i:
                preds[i].append(i - 1)
        order = list(range(n))
    else:
        for i in range(n):
            for name in exported[i]:
                j = exports.setdefault(name, i)
                if j != i:
                    raise AmbiguousProviderError(name, [_label(items[j]), _label(items[i])], where)
        optional: list[tuple[int, str, str, int]] = []
        unlinked: list[tuple[int, str, str, int]] = []
        unresolved = flow._unresolved
        flow_items = list(flow) if unresolved else []
        for i in range(n):
            # added with resolve_requires=False: not linked to providers added up to then
            limit = unresolved.get(id(flow_items[i]), -1) if unresolved else -1
            for name, required, who in _wants(items[i]):
                j = exports.get(name, i)
                if j == i:
                    _merge(wants, name, required, who)
                elif not required:  # an optional input never orders anything
                    optional.append((i, name, who, j))
                elif j < limit:
                    unlinked.append((i, name, who, j))
                elif kind == "graph":
                    preds[i].append(j)
                else:
                    raise DefinitionError(
                        f"{where}: {who!r} requires {name!r}, which its sibling "
                        f"{_label(items[j])!r} provides, but the items of an unordered flow "
                        "run in any order; put them in a linear or graph flow"
                    )
        order = list(range(n))
        if kind == "graph":
            position = {id(item): i for i, item in enumerate(flow)}
            depths = flow._depths
            for link, (u, v, decider) in enumerate(flow.iter_links()):
                iu, iv = position.get(id(u)), position.get(id(v))
                if iu is None or iv is None:
                    missing = u if iu is None else v
                    raise DefinitionError(
                        f"{where}: cannot link {item_name(missing)!r}, which is not in this flow"
                    )
                if decider is None:
                    preds[iv].append(iu)
                else:
                    gates[iv].append((iu, decider, depths.get(link, Depth.ALL)))
            preds = [list(dict.fromkeys(p)) for p in preds]
            order = _order(items, preds, gates)
    retry = flow.retry
    if retry is not None:
        _claim(seen, flow.name, "retried flow")
        for name in retry.params.required.values():
            _merge(wants, name, True, retry.name)
        for name in retry.params.optional.values():
            _merge(wants, name, False, retry.name)
        if retry.revert_params is not None:  # its revert reads what the flow's node is given
            for name in retry.revert_params[0].required.values():
                _merge(wants, name, True, retry.name)
            for name in retry.revert_params[0].optional.values():
                _merge(wants, name, False, retry.name)
        for name in retry.provides:
            wants.pop(name, None)  # the flow's tasks read the attempt's value
    level = Level(
        flow, flow.name, kind, items, retry, preds, gates, order, exports, positions, wants, names
    )
    level.narrow = narrow or (
        kind == "graph" and any(g[2] is not Depth.ALL for gs in gates for g in gs)
    )
    if kind != "linear":
        for i, name, who, j in optional:  # read from a provider only if it runs before
            if kind == "unordered" or not level.reaches(j, i):
                _merge(wants, name, False, who)
        for i, name, who, j in unlinked:  # from a provider it is linked to, else outside
            if not level.reaches(j, i):
                _merge(wants, name, True, who)
    if retry is not None:
        level.runner = RetriedFlow(level)
        names.append(flow.name)
        level.name_set = frozenset(names)
    return level


def _exports_of(item: Atom | Level) -> Sequence[str]:
    return item.spec.names if isinstance(item, Atom) else item.export_names


def _wants(item: Atom | Level) -> Iterator[tuple[str, bool, str]]:
    if isinstance(item, Atom):
        return item.wants()
    return ((name, required, who) for name, (required, who) in item.wants.items())


def _label(item: Atom | Level) -> str:
    return item.name


def _order(
    items: Sequence[Atom | Level],
    preds: list[list[int]],
    gates: list[list[Gate]],
) -> list[int]:
    """Kahn's order of a graph flow's items (ties in insertion order); names a cycle."""
    n = len(items)
    before = [list(dict.fromkeys([*preds[i], *(g[0] for g in gates[i])])) for i in range(n)]
    after: list[list[int]] = [[] for _ in range(n)]
    remaining = [len(b) for b in before]
    for i, bs in enumerate(before):
        for j in bs:
            after[j].append(i)
    ready = [i for i in range(n) if remaining[i] == 0]
    order: list[int] = []
    heapq.heapify(ready)
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for k in after[i]:
            remaining[k] -= 1
            if remaining[k] == 0:
                heapq.heappush(ready, k)
    if len(order) == n:
        return order
    raise CycleError([items[j].name for j in find_cycle(before, remaining)])


# --- emission --------------------------------------------------------------------------------

#: (level, position of the item in it, the enclosing frame)
Frame = tuple[Level, int, "Frame | None"]
_Found = tuple[str, Any, Any]  # ("node", index, selector) | ("value", v, None) | ("parent", i, key)


@final
class _Emitter:
    __slots__ = ("c", "guards", "owner", "parent", "skipped_only", "store", "track", "units")

    def __init__(
        self, c: _Compiler, store: Mapping[str, Any] | None, parent: int, track: bool = False
    ) -> None:
        self.c = c
        self.store = store
        self.parent = parent
        #: record who owns each node (a decider narrower than ALL needs it)
        self.track = track
        #: the guards of deciders narrower than ALL (their regions are checked at the end)
        self.guards: list[_Guard] = []
        #: node -> the flow (level) it belongs to; recorded only once a graph flow has a
        #: decider narrower than ALL (no cost otherwise)
        self.owner: dict[int, Level] = {}
        #: a canvas piece's node -> all of that piece's nodes (skipped together)
        self.units: dict[int, tuple[int, ...]] = {}
        #: nodes a narrow decider skipped (see _ended_a_branch), shared by its guards
        self.skipped_only: set[int] = set()

    @property
    def builder(self) -> GraphBuilder:
        return self.c.builder

    # lookups

    def _ref(self, item: Atom | Level, name: str) -> tuple[int, Any]:
        while True:
            if isinstance(item, Atom):
                return item.node, item.spec.selector(name)
            if item.node != -1 and item.retry is not None:
                return item.node, name
            item = item.items[item.exports[name]]

    def find(self, name: str, frame: Frame | None, required: bool = True) -> _Found | None:
        f = frame
        while f is not None:
            level, pos, outer = f
            if level.kind == "linear":
                found = level.positions.get(name)
                if found:
                    k = bisect.bisect_left(found, pos) - 1
                    if k >= 0:
                        return ("node", *self._ref(level.items[found[k]], name))
            elif level.kind == "graph":
                q = level.exports.get(name)
                if q is not None and q != pos and level.reaches(q, pos):
                    return ("node", *self._ref(level.items[q], name))
            f = outer
        if self.store is not None and name in self.store:
            return ("value", self.store[name], None)
        if self.parent != -1:  # the dict the parent returns; an optional name may be absent
            return ("parent", self.parent, name if required else OptionalKey(name))
        return None

    def bind(
        self, params: Params, frame: Frame | None
    ) -> tuple[list[tuple[str, int, Any]], dict[str, Any], list[str]]:
        """Look up each parameter's name; returns bindings, literal values, missing names."""
        bindings: list[tuple[str, int, Any]] = []
        literals: dict[str, Any] = {}
        missing: list[str] = []
        for table, required in ((params.required, True), (params.optional, False)):
            for param, name in table.items():
                found = self.find(name, frame, required)
                if found is None:
                    if required:
                        missing.append(name)
                    continue
                how, a, b = found
                if how == "value":
                    literals[param] = a
                else:
                    bindings.append((param, a, b))
        return bindings, literals, missing

    def _missing(self, who: str, missing: list[str]) -> MissingInputError:
        if self.store:
            known = ", ".join(sorted(self.store)[:12])
            detail = f"no upstream task provides it and the store has only: {known}"
        elif self.parent != -1:
            detail = "no upstream task provides it; it may come from the parent's dict"
        else:
            detail = "no upstream task provides it and no store was given"
        return MissingInputError(who, missing, detail)

    # emission

    def emit(
        self, level: Level, preds: tuple[int, ...], frame: Frame | None, *, root: bool
    ) -> tuple[int, ...]:
        if level.retry is not None and not root:
            return self._emit_retried(level, preds, frame)
        items = level.items
        if level.kind == "linear":
            cur = preds
            for pos, item in enumerate(items):
                if isinstance(item, Level) and len(cur) > 1:
                    cur = (self._barrier(cur),)
                    if self.track:
                        self.owner[cur[0]] = level
                cur = self._emit_item(item, cur, (level, pos, frame))
            return cur
        if level.kind == "unordered":
            sinks: list[int] = []
            for pos, item in enumerate(items):
                sinks.extend(self._emit_item(item, preds, (level, pos, frame)))
            return tuple(sinks) or preds  # an empty flow: what follows waits for what preceded
        done: dict[int, tuple[int, ...]] = {}
        followed = [False] * len(items)
        guards: list[_Guard] = []
        for pos in level.order:
            parents: list[int] = []
            for j in level.preds[pos]:
                parents.extend(done[j])
                followed[j] = True
            if level.gates[pos]:
                # One guard for every decider into the item, asked once all of the item's
                # predecessors have ended (TaskFlow's IgnoreDecider): it waits for them all.
                for j, _, _ in level.gates[pos]:
                    parents.extend(done[j])
                    followed[j] = True
                guard = self._gate(level, pos, tuple(dict.fromkeys(parents)), done)
                parents = [guard.gate]
                if guard.depths:
                    guards.append(guard)
            elif not level.preds[pos]:
                parents.extend(preds)
            done[pos] = self._emit_item(
                items[pos], tuple(dict.fromkeys(parents)), (level, pos, frame)
            )
        for guard in guards:  # every node of this flow exists now: what each depth skips
            self._regions(guard)
        sinks = [x for pos in level.order if not followed[pos] for x in done[pos]]
        return tuple(sinks) or preds

    def _emit_item(
        self, item: Atom | Level, preds: tuple[int, ...], frame: Frame
    ) -> tuple[int, ...]:
        if isinstance(item, Level):
            return self.emit(item, preds, frame, root=False)
        if item.canvas is not None:
            return self._emit_canvas(item, preds, frame)
        bindings, literals, missing = self.bind(item.params, frame)
        if missing:
            raise self._missing(item.name, missing)
        index = self.builder.add(
            NodeKind.TASK,
            item.task,
            key=item.name,
            args=item.args,
            kwargs={**literals, **item.kwargs} if literals else item.kwargs,
            parents=preds,
            options=item.options,
            bindings=tuple(bindings),
        )
        item.node = index
        if self.track:
            self.owner[index] = frame[0]
        return (index,)

    def _emit_canvas(self, atom: Atom, preds: tuple[int, ...], frame: Frame) -> tuple[int, ...]:
        c = self.c
        assert atom.canvas is not None
        start = len(c.builder.nodes)

        def resolve(
            task: FunctionTask[..., Any], key: str, n_pos: int, kw: tuple[str, ...]
        ) -> tuple[tuple[tuple[str, int, Any], ...], Mapping[str, Any]]:
            params = analyse_params(key, task.fn, skip=n_pos, given=kw)
            bindings, literals, missing = self.bind(params, frame)
            if missing:
                raise self._missing(key, missing)
            return tuple(bindings), literals

        saved = c.resolve
        c.resolve = resolve
        try:
            out = atom.canvas._compile(c, -1, {})
        finally:
            c.resolve = saved
        value = c.materialize(out, -1)
        nodes = c.builder.nodes
        if preds:  # the piece's first nodes wait for what precedes it in the flow
            for i in range(start, len(nodes)):
                node = nodes[i]
                if not node.parents and node.error_scope is None:
                    nodes[i] = node._replace(parents=preds)
        atom.node = value
        if self.track:
            unit = tuple(range(start, len(nodes)))
            for i in unit:
                self.owner[i] = frame[0]
                self.units[i] = unit
        return (value,)

    def _emit_retried(
        self, level: Level, preds: tuple[int, ...], frame: Frame | None
    ) -> tuple[int, ...]:
        assert level.runner is not None
        wanted = Params(
            {name: name for name, (required, _) in level.wants.items() if required},
            {name: name for name, (required, _) in level.wants.items() if not required},
        )
        bindings, literals, missing = self.bind(wanted, frame)
        if missing:
            who = level.wants[missing[0]][1]
            raise self._missing(who, [m for m in missing if level.wants[m][1] == who])
        index = self.builder.add(
            NodeKind.SUBGRAPH,
            level.runner.task,
            key=level.name,
            kwargs=literals,
            parents=preds,
            bindings=tuple(bindings),
        )
        level.node = index
        if self.track:  # a flow of its own: no narrow decider reaches past it
            self.owner[index] = level
        return (index,)

    def _barrier(self, parents: tuple[int, ...]) -> int:
        return self.builder.add(NodeKind.JOIN, None, name="~barrier", parents=parents, args=((),))

    def _gate(
        self,
        level: Level,
        pos: int,
        parents: tuple[int, ...],
        done: Mapping[int, tuple[int, ...]],
    ) -> _Guard:
        votes: list[tuple[tuple[str, ...], Decider, Depth]] = []
        sources: list[int] = []
        nodes = self.builder.nodes
        for j, decider, depth in level.gates[pos]:
            seen = _value_nodes(level.items[j])
            votes.append((tuple(nodes[n].key for n in seen), _by_keyword(decider), depth))
            sources.extend(seen)
        narrow = tuple(dict.fromkeys(d for _, _, d in votes if d is not Depth.ALL))
        guard = _Guard(level.items[pos].name, votes, narrow, self.skipped_only)
        guard.gate = self.builder.add(
            NodeKind.JOIN,
            None,
            name=f"~decider:{level.items[pos].name}",
            parents=parents,
            args=(tuple(dict.fromkeys(sources)),),
            when=guard,
        )
        if self.track:
            self.owner[guard.gate] = level
        return guard

    def _regions(self, guard: _Guard) -> None:
        """What each narrow depth of ``guard`` skips, as TaskFlow's deciders affect the
        atoms of its execution graph: ``ATOM`` the item's first tasks, ``NEIGHBORS``
        those and the tasks right after them, ``FLOW`` those and all that follows them
        in the same flow (never into a nested flow, a retried one included)."""
        nodes = self.builder.nodes
        owner = self.owner
        units = self.units
        gate = guard.gate
        children: dict[int, list[int]] = {}
        for node in nodes[gate + 1 :]:
            for p in node.parents:
                children.setdefault(p, []).append(node.index)
        entries = children.get(gate, [])

        def whole(found: list[int]) -> set[int]:
            out: set[int] = set()
            for i in found:
                out.update(units.get(i, (i,)))
            return out

        for depth in guard.depths:
            region = whole(entries)
            if depth is not Depth.ATOM:
                stack = [(i, owner.get(i)) for i in region]
                seen = set(region)
                while stack:
                    i, where = stack.pop()
                    for child in children.get(i, ()):
                        if child in seen or owner.get(child) is not where:
                            continue  # (another flow: a nested one, or the one around)
                        seen.add(child)
                        is_join = nodes[child].kind is NodeKind.JOIN
                        for k in units.get(child, (child,)):
                            region.add(k)
                            seen.add(k)
                            if depth is Depth.FLOW or is_join:
                                stack.append((k, where))
            guard.regions[depth] = tuple(sorted(region))
        self.guards.append(guard)

    def check_regions(self) -> None:
        """Refuse a task that reads a value from a task a narrow decider skips while it
        still runs (TaskFlow fails it then, with NotFound: "user beware")."""
        if not self.guards:
            return
        nodes = self.builder.nodes
        for guard in self.guards:
            for depth, region in guard.regions.items():
                skipped = set(region)
                for node in nodes:
                    if node.index in skipped or node.after_all:
                        continue
                    for param, source, _ in node.bindings:
                        if source in skipped:
                            raise DefinitionError(
                                f"{node.key!r} reads {param!r} from {nodes[source].key!r}, "
                                f"which a decider on {guard.target!r} with decider_depth="
                                f"{depth.value!r} skips while {node.key!r} still runs; "
                                f"use a wider decider_depth (ALL, the default, skips "
                                f"{node.key!r} too) or read {param!r} from elsewhere"
                            )


@final
class _Guard:
    """The ``when`` of the join before a graph flow's item with deciders: asks each
    decider with the results of every decider-linked predecessor (a predecessor that
    was skipped has no result and its decider no vote, as in TaskFlow), and when one
    says no, skips what the widest depth saying no covers."""

    __slots__ = ("depths", "gate", "regions", "skipped_only", "target", "votes")

    def __init__(
        self,
        target: str,
        votes: list[tuple[tuple[str, ...], Decider, Depth]],
        depths: tuple[Depth, ...],
        skipped_only: set[int],
    ) -> None:
        self.target = target
        self.votes = votes
        #: the depths narrower than ALL among the votes, and the nodes each skips
        self.depths = depths
        self.regions: dict[Depth, tuple[int, ...]] = {}
        self.skipped_only = skipped_only
        self.gate = -1

    def __call__(self, history: dict[str, Any]) -> Any:
        nays: list[Depth] = []
        for keys, decider, depth in self.votes:
            if keys and not any(k in history for k in keys):
                continue  # what it is linked from was skipped: it has no say
            if not decider(history):
                nays.append(depth)
        if not nays:
            return True
        widest = min(nays, key=DEPTH_ORDER.index)
        if widest is Depth.ALL:
            return False
        region = self.regions[widest]
        self.skipped_only.update(region)
        return SkipOnly(region)


def _by_keyword(decider: Decider) -> Decider:
    """``decider``, called as TaskFlow calls it (``decider(history=...)``) when it cannot
    take the history positionally (``def decider(*, history)``, ``def decider(**kw)``);
    else as it is (``lambda h: ...`` works too)."""
    try:
        params = inspect.signature(decider).parameters.values()
    except (TypeError, ValueError):  # a callable without a signature: as it is
        return decider
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind in positional or p.kind is p.VAR_POSITIONAL for p in params):
        return decider
    return lambda history: decider(history=history)  # type: ignore[call-arg]


def _value_nodes(item: Atom | Level) -> list[int]:
    """The nodes whose results a decider on ``item`` sees: its tasks' (or its retried flow's)."""
    if isinstance(item, Atom):
        return [item.node]
    if item.retry is not None and item.node != -1:
        return [item.node]
    return [n for sub in item.items for n in _value_nodes(sub)]


@final
@dataclass(slots=True)
class CompiledFlow:
    """A flow's graph (``None`` when it has no task) and where each provided name lives."""

    graph: Graph | None
    level: Level
    storage: dict[str, tuple[int, Any]] = field(default_factory=dict)
    #: True for a retried flow's body (one attempt), False for the flow as a whole.
    body: bool = False
    #: nodes a decider narrower than ALL skipped (what follows them went on)
    skipped_only: set[int] = field(default_factory=set)

    def value(self, execution: RunView | None, name: str) -> tuple[bool, Any]:
        """``(True, value)`` if the provider of ``name`` gave it, else ``(False, None)``."""
        where = self.storage.get(name)
        if where is None or execution is None:
            return False, None
        index, selector = where
        if execution.state_of(index) is not NodeState.SUCCEEDED:
            return False, None
        value = execution.result_of(index)
        if selector is None:
            return True, value
        try:
            return True, value[selector]
        except (KeyError, IndexError, TypeError):  # a retried flow whose provider was skipped
            return False, None

    def values(self, execution: RunView | None) -> dict[str, Any]:
        """Every provided name whose provider succeeded, with its value."""
        out: dict[str, Any] = {}
        for name in self.storage:
            found, value = self.value(execution, name)
            if found:
                out[name] = value
        return out


def _storage_of(emitter: _Emitter, level: Level, *, root: bool) -> dict[str, tuple[int, Any]]:
    if level.retry is not None and not root:
        return {name: (level.node, name) for name in level.export_names}
    return {name: emitter._ref(level.items[i], name) for name, i in level.exports.items()}


def compile_flow(
    flow: Flow | Level, store: Mapping[str, Any] | None = None, *, root: bool = False
) -> CompiledFlow:
    """Compile a flow for an engine: store values are bound as literals.

    ``root=True`` compiles a retried flow's own body (one attempt) rather than
    the one node that retries it.
    """
    level = flow if isinstance(flow, Level) else analyse(flow)
    c = _Compiler()
    c.builder.reserve(level.names)
    emitter = _Emitter(c, store or {}, -1, level.narrow)
    emitter.emit(level, (), None, root=root)
    emitter.check_regions()
    storage = _storage_of(emitter, level, root=root)
    nodes = c.builder.nodes
    graph = c.builder.build(len(nodes) - 1, name=level.name) if nodes else None
    return CompiledFlow(
        graph,
        level,
        storage,
        body=root and level.retry is not None,
        skipped_only=emitter.skipped_only,
    )


# --- retried flows ---------------------------------------------------------------------------


@final
class RetriedFlow:
    """A flow under its retry controller, as the task of one SUBGRAPH node.

    The runtime runs it (:func:`run_subflow`): each attempt compiles the flow
    with the attempt's value and runs it as a nested run sharing the outer run's
    limits; a failed attempt is unwound (its reverts run) before the controller
    decides. The node's result is the dict of the names the flow provides; its
    revert undoes the last attempt, then calls the controller's ``revert``.
    """

    __slots__ = ("level", "task")

    def __init__(self, level: Level) -> None:
        self.level = level
        key = level.name

        async def run(**inputs: Any) -> Any:
            outer = current_run()
            parent: _Attempts | None = outer.notes.get(_CONTROLLER)
            defer = parent.defer if parent is not None else outer.notes.get(DEFER_REVERTS, True)
            attempts = _Attempts(level, inputs, parent, defer)
            outer.notes.setdefault(_ATTEMPTS, {})[key] = attempts
            return await run_subflow(attempts)

        async def undo(**inputs: Any) -> None:
            outer = current_run()
            attempts: _Attempts | None = outer.notes.get(_ATTEMPTS, {}).get(key)
            if attempts is None:  # its body ran in a process that is gone (a resumed run)
                if _has_reverts(level):
                    raise RuntimeError(
                        f"retried flow {key!r} ran before this run was resumed; its "
                        "attempts are not checkpointed, so its inner steps cannot be undone here"
                    )
                return
            # The last attempt's tasks (one that failed was unwound then: what its reverts
            # raised is raised again), then the controller, as TaskFlow reverts its retry
            # atom after the atoms of its subflow. A controller whose execute raised made
            # no attempt: only its revert runs.
            await undo_subflow(key)
            await attempts.revert(outer)

        run.__name__ = undo.__name__ = key
        task: FunctionTask[..., Any] = FunctionTask(run, {"name": key})
        task.reverter = Revert(undo, True, False, False, DEFAULT_OPTIONS)
        self.task = task

    def attempts(self, outer: RunView | None) -> list[tuple[CompiledFlow, RunView]]:
        """Every attempt made within the run ``outer``, oldest first."""
        made = outer.made_by(self.level.name) if outer is not None else []
        return [(attempt.notes[_COMPILED], attempt) for attempt in made]

    def controller_raised(self, outer: RunView | None) -> bool:
        """True when the controller's own ``execute`` raised within the run ``outer``."""
        if outer is None:
            return False
        attempts: _Attempts | None = outer.notes.get(_ATTEMPTS, {}).get(self.level.name)
        return attempts is not None and attempts.raised

    def revert_error(self, outer: RunView | None) -> Exception | None:
        """What the controller's ``revert`` raised within the run ``outer`` when its flow
        was reverted alone (``defer_reverts=False``: the node failed with it)."""
        if outer is None:
            return None
        attempts: _Attempts | None = outer.notes.get(_ATTEMPTS, {}).get(self.level.name)
        return attempts.revert_error if attempts is not None else None

    def last(self, outer: RunView | None) -> tuple[CompiledFlow, RunView] | None:
        """The latest attempt made within the run ``outer``, if one started."""
        made = outer.made_by(self.level.name) if outer is not None else None
        if not made:
            return None
        attempt = made[-1]
        compiled: CompiledFlow = attempt.notes[_COMPILED]
        return compiled, attempt


#: Where an attempt's run keeps the compiled flow it runs (for the engine's queries).
_COMPILED = "patterns.compiled"
#: Where a run keeps the controller state of each retried flow it ran, by the flow's name.
_ATTEMPTS = "patterns.attempts"
#: Where an attempt's run keeps the controller that made it (the enclosing controller of
#: the retried flows inside it).
_CONTROLLER = "patterns.controller"
#: A run's note: ``False`` for TaskFlow's engine option ``defer_reverts=False`` (a retried
#: flow that gives up is reverted alone, unless an enclosing retry retries or reverts all).
DEFER_REVERTS = "patterns.defer_reverts"


@final
class _Attempts:
    """TaskFlow's retry semantics as the runtime's subflow controller: the controller's
    ``execute`` gives each attempt's value, its ``on_failure`` decides after a failure,
    its ``revert`` runs once the flow is reverted for good."""

    __slots__ = (
        "_compiled",
        "_decided",
        "_history",
        "_inputs",
        "_level",
        "_params",
        "_reverted",
        "_succeeded",
        "_value",
        "defer",
        "parent",
        "raised",
        "revert_error",
    )

    def __init__(
        self,
        level: Level,
        inputs: Mapping[str, Any],
        parent: _Attempts | None = None,
        defer: bool = True,
    ) -> None:
        retry = level.retry
        assert retry is not None
        self._level = level
        self._inputs = inputs
        #: the controller of the retried flow this one is inside, if any
        self.parent = parent
        #: TaskFlow's defer_reverts (see DEFER_REVERTS)
        self.defer = defer
        #: what on_failure said when a retried flow inside asked ahead (see _contained)
        self._decided: Any = None
        self._reverted = False
        self._params = {p: inputs[n] for p, n in retry.params.required.items()}
        self._params.update({p: inputs[n] for p, n in retry.params.optional.items() if n in inputs})
        self._history = History()
        self._value: Any = None
        self._compiled: CompiledFlow | None = None
        self._succeeded = False
        #: the controller's own execute raised (the node's failure is its own, not an
        #: attempt's echoed)
        self.raised = False
        #: what the controller's revert raised when its flow was reverted alone
        #: (defer_reverts=False): the node failed with it, a revert failure
        self.revert_error: Exception | None = None

    async def next_graph(self) -> Graph | None:
        retry = self._level.retry
        assert retry is not None
        try:
            self._value = await retry._call("execute", self._history, self._params)
            provided = retry._values(self._value)
        except Exception as exc:
            self.raised = True
            exc.add_note(
                f"aflow: retry {retry.name!r} of flow {self._level.name!r} raised before "
                f"attempt {len(self._history) + 1}"
            )
            raise
        store = {**self._inputs, **provided}
        self._compiled = compile_flow(self._level, store, root=True)
        return self._compiled.graph

    def started(self, attempt: RunView) -> None:
        attempt.notes[_COMPILED] = self._compiled
        attempt.notes[_CONTROLLER] = self

    async def failed(self, attempt: RunView, error: Exception) -> bool:
        self._history.attempts.append(Attempt(self._value, attempt.failures()))
        asked, self._decided = self._decided, None
        if isinstance(error, CompensationFailed) or _reverts_all(error):
            return False
        retry = self._level.retry
        assert retry is not None
        if asked is not None:  # a retried flow inside asked already (TaskFlow asks once)
            decision = asked
        else:
            decision = await retry._call("on_failure", self._history, self._params)
        if decision is RETRY:
            return True
        error.add_note(
            f"aflow: retry {retry.name!r} of flow {self._level.name!r} gave up after "
            f"{len(self._history)} attempt(s)"
        )
        if decision is REVERT_ALL:
            setattr(error, _REVERT_ALL_FLAG, True)
        elif asked is None and not self.defer and await self._contained(error):
            # TaskFlow without defer_reverts: this flow is reverted alone (its attempt
            # was unwound; its controller's revert runs now), the rest is kept.
            error.add_note(
                f"aflow: flow {self._level.name!r} was reverted alone (defer_reverts=False); "
                "what ran outside it is kept"
            )
            contain(error)
            try:
                # A revert: it runs to its end even if the run is cancelled meanwhile (as
                # the unwinding's reverts do), since it is never called again.
                with anyio.CancelScope(shield=True):
                    await self.revert(current_run())
            except Exception as exc:
                # As a failed revert anywhere: what ran outside the flow is kept, and the
                # run fails with it (TaskFlow raises it too, and lists it as the
                # controller's revert failure).
                self.revert_error = exc
                contain(exc)
                exc.add_note(
                    f"aflow: the revert of retry {retry.name!r} of flow {self._level.name!r} "
                    "failed; what ran outside the flow is kept"
                )
                raise exc from error
            await anyio.lowlevel.checkpoint_if_cancelled()  # a cancel held off meanwhile
        return False

    async def _contained(self, error: Exception) -> bool:
        """Ask the enclosing controllers, innermost first, as TaskFlow resolves a REVERT
        without defer_reverts: ``False`` once one retries or reverts all (the failure
        escalates to it; each one asked keeps its answer for when it gets there),
        ``True`` when every one says REVERT (or there is none)."""
        parent = self.parent
        while parent is not None:
            decision = await parent._ask(self._level.name, error)
            if decision is RETRY:
                return False
            if decision is REVERT_ALL:
                setattr(error, _REVERT_ALL_FLAG, True)
                return False
            parent = parent.parent
        return True

    async def _ask(self, inner: str, error: Exception) -> Any:
        """What ``on_failure`` says of the failure of retried flow ``inner`` inside this
        flow's attempt under way (kept for :meth:`failed`)."""
        retry = self._level.retry
        assert retry is not None
        failure = Failure.capture(inner, error, 1)
        history = History([*self._history.attempts, Attempt(self._value, {inner: failure})])
        self._decided = await retry._call("on_failure", history, self._params)
        return self._decided

    def value(self, attempt: RunView | None) -> dict[str, Any] | EndBranch:
        retry = self._level.retry
        assert retry is not None
        self._succeeded = True
        if attempt is None:
            return retry._values(self._value)
        compiled = self._compiled
        assert compiled is not None
        assert compiled.graph is not None
        values = compiled.values(attempt)
        values.update(retry._values(self._value))
        if _ended_a_branch(compiled, attempt):
            return EndBranch(values)  # a decider said no: what follows is SKIPPED
        return values

    async def revert(self, outer: RunView) -> None:
        """Call the controller's ``revert`` (TaskFlow's arguments: ``history`` of every
        attempt made, what it requires, ``flow_failures`` if it takes them)."""
        retry = self._level.retry
        assert retry is not None
        if retry.revert_params is None or self._reverted:
            return
        self._reverted = True
        params, takes_failures = retry.revert_params
        inputs = self._inputs
        kwargs = {p: inputs[n] for p, n in params.required.items()}
        kwargs.update({p: inputs[n] for p, n in params.optional.items() if n in inputs})
        history = History(list(self._history.attempts))
        if self._succeeded:
            history.attempts.append(Attempt(self._value, {}))
        if takes_failures:
            failures = outer.failures()
            if history.attempts and not self._succeeded:  # the failures inside, not their echo
                failures.pop(self._level.name, None)
                failures.update(history.attempts[-1].failures)
            kwargs["flow_failures"] = failures
        await retry._call("revert", history, kwargs)


def _has_reverts(level: Level) -> bool:
    """True when something inside ``level`` may have a revert (a canvas piece may)."""
    if level.retry is not None and level.retry.revert_params is not None:
        return True
    for item in level.items:
        if isinstance(item, Level):
            if _has_reverts(item):
                return True
        elif item.canvas is not None or (item.task is not None and item.task.reverter):
            return True
    return False


def _reverts_all(exc: BaseException) -> bool:
    """True when a controller gave up with ``revert_all`` (inside a group too)."""
    if getattr(exc, _REVERT_ALL_FLAG, False):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_reverts_all(e) for e in exc.exceptions)
    return False


def _ended_a_branch(compiled: CompiledFlow, execution: RunView) -> bool:
    """True when a last node of the run was SKIPPED (everything after it is, too), other
    than by a decider narrower than ALL (what follows the flow goes on then)."""
    graph = compiled.graph
    assert graph is not None
    narrow = compiled.skipped_only
    return any(
        not graph.children(node.index)
        and node.error_scope is None
        and execution.state_of(node.index) is NodeState.SKIPPED
        and node.index not in narrow
        for node in graph.nodes
    )


# --- a flow inside a canvas ------------------------------------------------------------------


async def _collect(**values: Any) -> dict[str, Any]:
    return values


_COLLECT: FunctionTask[..., Any] = FunctionTask(_collect, {"name": "flow"})


@final
class FlowCanvas(Canvas[dict[str, Any]]):
    """A flow seen as a canvas object: its value is the dict of the names it provides.

    In a chain, the names it needs and nothing in it provides are read from
    the dict its parent returned (partial keyword arguments, given with
    ``.clone(kwargs=...)``, come first).
    """

    __slots__ = ("_flow", "_store")

    def __init__(self, flow: Flow, store: Mapping[str, Any] | None = None) -> None:
        self._flow = flow
        self._store = dict(store or {})
        self._init_canvas(None)

    def _owner(self) -> str:
        return self._flow.name

    def _value(self) -> tuple[Any, ...]:
        return (id(self._flow), self._store)

    def __repr__(self) -> str:
        return f"{self._flow!r}.as_canvas()"

    def _with_partial(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> FlowCanvas:
        if args:
            raise SignatureError(
                self._flow.name, "a flow takes values by name: pass kwargs, not args"
            )
        return self._copy(_store={**self._store, **kwargs})

    def _compile_body(
        self,
        c: _Compiler,
        pred: int,
        inherited: Mapping[str, Any],
        inner: Mapping[str, Any],
    ) -> tuple[tuple[int, ...], bool]:
        level = analyse(self._flow)
        c.builder.reserve(level.names)
        emitter = _Emitter(c, self._store, pred, level.narrow)
        preds = (pred,) if pred != -1 else ()
        sinks = emitter.emit(level, preds, None, root=False)
        emitter.check_regions()
        storage = _storage_of(emitter, level, root=False)
        out = c.builder.add(
            NodeKind.TASK,
            _COLLECT,
            name=self._flow.name,
            parents=tuple(dict.fromkeys(sinks)) or preds,
            bindings=tuple((name, index, sel) for name, (index, sel) in storage.items()),
            after_all=True,  # the flow's value is what it provided, deciders or not
        )
        return ((out,), False)
