"""A run's graph drawn as SVG on the server, in pure Python: no JavaScript, no layout library.

The runs dashboard inlines the ``<svg>`` this returns and fetches it again whenever the run
changes, so drawing is fast (about a millisecond for 50 nodes, tens of milliseconds for
500) and deterministic: the same nodes give the same string, byte for byte.

The drawing is layered (Sugiyama-style), top to bottom:

1. *Cycles* are broken: a depth-first walk (roots first, then the rest, in input order)
   turns round each edge that closes a cycle; it is laid out as the reverse edge and
   drawn dashed, still pointing from its parent to its child. Self-loops, repeated edges
   and parents that are not among the nodes are dropped.
2. *Layers*: a node's layer is the longest path to it from a root.
3. An edge spanning several layers gets a *virtual point* in each layer it passes, which
   takes a slot in that layer's order like a narrow node, so no box is placed on it.
   The long edges leaving one box share their points as far as they go together.
4. *Order* within layers: barycenter sweeps, down then up, a few times, keeping the
   order with the fewest crossings seen; then neighbours are swapped wherever that
   removes crossings (Graphviz dot's *transpose*).
5. *Placement*: boxes are packed left to right in their order, each layer centred; then
   sweeps pull each towards the mean of its neighbours, keeping the order and the gaps
   (an exact weighted isotonic regression per layer); a run of virtual points becomes
   one vertical line where its layers have room.
6. Disconnected parts are laid out apart and set side by side, in input order.

Each step is linear in the nodes and edges after step 3 (virtual points included), times
a few sweeps, plus sorting: O(n·e) at most.

A *grouped* node (a map's items, a slices step) shows its label and a line of counts per
state; it is coloured by the worst state among its items (see :data:`STATE_SEVERITY`).
All user text (keys, labels, states, counts' keys, hrefs) is escaped, characters XML 1.0
forbids are replaced by U+FFFD and links other than http(s) or relative are dropped, so
hostile input still gives one well-formed, inert element.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import unicodedata
from bisect import bisect_right, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import get_args

from .._runtime._report import StepState

__all__ = [
    "STATES",
    "STATE_SEVERITY",
    "DrawNode",
    "EdgeRoute",
    "Layout",
    "NodeBox",
    "layout",
    "render_svg",
    "worst_state",
]

#: The states a node is drawn in (a step's states, and ``waiting`` for a step waiting on
#: a signal). Any other word is drawn as ``unknown``.
STATES = (*get_args(StepState), "waiting")

#: The worst first: a grouped node takes the first of these any of its items is in.
#: What needs a look comes first (failures), then what is still moving (``waiting`` sits
#: with the moving states, just before ``pending``), then the quiet ends of a run.
STATE_SEVERITY = (
    "failed",
    "revert_failed",
    "running",
    "retrying",
    "reverting",
    "waiting",
    "pending",
    "cancelled",
    "reverted",
    "skipped",
    "succeeded",
)
_RANK = {state: rank for rank, state in enumerate(STATE_SEVERITY)}

#: The order and symbol of each state in a grouped node's line of counts.
_COUNT_SYMBOLS = (
    ("succeeded", "✓"),
    ("failed", "✗"),
    ("revert_failed", "↺✗"),
    ("running", "▸"),
    ("retrying", "↻"),
    ("reverting", "↶"),
    ("waiting", "◷"),
    ("reverted", "↺"),
    ("cancelled", "⊘"),
    ("skipped", "↷"),
    ("pending", "…"),
)

#: fill, stroke and text colour of each state; text on fill is at least 4.5:1 (WCAG AA).
_PALETTE: dict[str, tuple[str, str, str]] = {
    "succeeded": ("#dcfce7", "#15803d", "#14532d"),
    "failed": ("#fee2e2", "#b91c1c", "#7f1d1d"),
    "running": ("#dbeafe", "#1d4ed8", "#1e3a8a"),
    "retrying": ("#fef3c7", "#b45309", "#78350f"),
    "pending": ("#f3f4f6", "#6b7280", "#374151"),
    "cancelled": ("#4b5563", "#1f2937", "#ffffff"),
    "skipped": ("#f9fafb", "#d1d5db", "#4b5563"),
    "reverting": ("#f3e8ff", "#9333ea", "#581c87"),
    "reverted": ("#ede9fe", "#6d28d9", "#4c1d95"),
    "revert_failed": ("#7f1d1d", "#450a0a", "#ffffff"),
    "waiting": ("#ccfbf1", "#0f766e", "#134e4a"),
    "unknown": ("#ffffff", "#9ca3af", "#111827"),
}

# --- geometry (px) -------------------------------------------------------------------------

_FONT_SIZE = 12.0
_COUNTS_FONT_SIZE = 11.0
_PAD_X = 12.0
_MIN_WIDTH = 72.0
_MAX_TEXT = 200.0  # a longer label is cut with an ellipsis
_PLAIN_HEIGHT = 32.0
_GROUP_HEIGHT = 48.0
_STACK = 4.0  # a grouped node's second card shows this far below and right of the first
_NODE_GAP = 24.0  # between two nodes of a layer
_VIRTUAL_GAP = 12.0  # between an edge's virtual point and what is beside it
_LAYER_GAP = 44.0
_PART_GAP = 40.0  # between disconnected parts
_MARGIN = 16.0
_PORT_STEP = 12.0  # between the ends of edges sharing a node's side
_TOOLTIP_MAX = 1000  # characters of user text kept in a tooltip

#: Crossing reduction: down-and-up sweeps at most (it stops early at no crossings, or
#: when a sweep finds nothing better).
_SWEEPS = 6
#: Then passes swapping neighbours, at most (it stops when one swaps nothing).
_TRANSPOSE_PASSES = 4
#: Placement: sweeps pulling nodes towards their neighbours.
_PLACE_SWEEPS = 2

# --- the input and the output --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrawNode:
    """One box of the drawing: a step, or a group of items (``counts``) of a fan-out."""

    key: str
    label: str
    state: str
    parents: tuple[str, ...] = ()
    counts: Mapping[str, int] | None = None
    href: str | None = None


@dataclass(frozen=True, slots=True)
class NodeBox:
    """Where a node is drawn: its top-left corner, its size and its layer (0 at the top)."""

    x: float
    y: float
    width: float
    height: float
    layer: int


@dataclass(frozen=True, slots=True)
class EdgeRoute:
    """An edge's polyline, from its parent's box to its child's.

    Points alternate: a vertical stretch inside a layer (from the box to the layer's edge,
    or through a virtual point), then a jump across the gap to the next layer, drawn as a
    curve. ``back`` marks an edge that closed a cycle: it points up.
    """

    source: str
    target: str
    points: tuple[tuple[float, float], ...]
    back: bool


@dataclass(frozen=True, slots=True)
class Layout:
    """A drawing's geometry: a box per (distinct) key, a route per edge, the total size."""

    width: float
    height: float
    nodes: Mapping[str, NodeBox]
    edges: tuple[EdgeRoute, ...]


def worst_state(states: Iterable[str]) -> str | None:
    """The worst of ``states`` by :data:`STATE_SEVERITY` (unknown words are ignored)."""
    best: str | None = None
    for state in states:
        rank = _RANK.get(state)
        if rank is not None and (best is None or rank < _RANK[best]):
            best = state
    return best


def layout(nodes: Sequence[DrawNode]) -> Layout:
    """Lay ``nodes`` out top to bottom; a repeated key is drawn once (its first node)."""
    return _layout(_views(nodes))


def render_svg(nodes: Sequence[DrawNode], *, title: str | None = None) -> str:
    """The graph as one ``<svg>`` element (no XML prolog), styled, ready to inline."""
    views = _views(nodes)
    title_xml = f"<title>{_text(title, _TOOLTIP_MAX)}</title>" if title is not None else ""
    if not views:
        return (
            '<svg xmlns="http://www.w3.org/2000/svg" class="aflow-graph empty" '
            f'viewBox="0 0 160 48" width="160" height="48" role="img">{title_xml}'
            f"<style>{_CSS}</style>"
            '<text class="empty" x="80" y="24" dy="0.35em" text-anchor="middle">no steps</text>'
            "</svg>"
        )
    geometry = _layout(views)
    written: dict[float, str] = {}
    edges = [
        f'<path class="edge{" back" if edge.back else ""}" data-from="{_attr(edge.source)}" '
        f'data-to="{_attr(edge.target)}" d="{_path(edge.points, written)}"'
        for edge in geometry.edges
    ]
    boxes = [_node_svg(view, geometry.nodes[view.node.key]) for view in views]
    # A marker id of this drawing's own: two different drawings inlined in one page
    # never share one.
    digest = hashlib.blake2s(digest_size=6)
    for part in (*edges, *boxes):
        digest.update(part.encode())
    arrow = f"aflow-arrow-{digest.hexdigest()}"
    width, height = _num(geometry.width), _num(geometry.height)
    end = f' marker-end="url(#{arrow})"/>'
    return "".join(
        (
            '<svg xmlns="http://www.w3.org/2000/svg" class="aflow-graph" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
            f"{title_xml}<style>{_CSS}</style>",
            f'<defs><marker id="{arrow}" class="arrow" viewBox="0 0 10 10" refX="10" refY="5" '
            'markerWidth="8" markerHeight="8" markerUnits="userSpaceOnUse" orient="auto">'
            '<path d="M0,0L10,5L0,10z"/></marker></defs>',
            '<g class="edges">',
            end.join(edges),
            end if edges else "",
            '</g><g class="nodes">',
            *boxes,
            "</g></svg>",
        )
    )


# --- text ----------------------------------------------------------------------------------

#: What XML 1.0 does not allow in a document (C0 controls but tab, newline and carriage
#: return; lone surrogates; U+FFFE and U+FFFF).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_WHITESPACE = re.compile("[\t\n\r]")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_CONTROL_OR_SPACE = re.compile("[\x00-\x20\x7f]")


def _clean(text: str) -> str:
    """``text`` with what XML 1.0 forbids replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", text)


def _text(text: str, limit: int) -> str:
    """``text`` as escaped element content, cut to ``limit`` characters."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(_clean(text), quote=True)


def _attr(text: str) -> str:
    """``text`` as an escaped attribute value; tab and line breaks survive parsing."""
    escaped = html.escape(_clean(text), quote=True)
    return escaped.replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;")


def _safe_href(href: str) -> str | None:
    """``href`` if it is relative or http(s): no ``javascript:`` or ``data:`` link."""
    match = _SCHEME.match(_CONTROL_OR_SPACE.sub("", href))
    if match is not None and match.group(1).lower() not in ("http", "https"):
        return None
    return href


def _char_width(char: str) -> float:
    """An estimate of a character's advance, in em, for a sans-serif font."""
    if char < "\x80":
        if char in "iljI.,:;'|!`()[]{} ":
            return 0.32
        if char in 'frt-"/\\':
            return 0.42
        if char in "mwMW@%":
            return 0.9
        if "A" <= char <= "Z" or char in "&#_=+~<>?$":
            return 0.7
        return 0.6
    if unicodedata.combining(char):
        return 0.0
    if unicodedata.east_asian_width(char) in ("W", "F"):
        return 1.05
    return 0.7


def _fit(text: str, font_size: float, limit: float = _MAX_TEXT) -> tuple[str, float]:
    """``text`` on one line (line breaks become spaces), cut with an ellipsis to fit
    ``limit`` px, and its estimated width."""
    text = _WHITESPACE.sub(" ", _clean(text))
    width = 0.0
    ellipsis = _char_width("…") * font_size
    for at, char in enumerate(text):
        advance = _char_width(char) * font_size
        if width + advance > limit:
            # back off until the ellipsis fits too
            cut = at
            while cut > 0 and width + ellipsis > limit:
                cut -= 1
                width -= _char_width(text[cut]) * font_size
            return text[:cut] + "…", width + ellipsis
        width += advance
    return text, width


# --- the nodes as drawn --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _View:
    """A node as drawn: its shown text, its colour's state and its size."""

    node: DrawNode
    label: str  # the shown label, cut to fit
    state: str  # the state it is coloured as (a known state, or "unknown")
    counts: dict[str, int] | None  # a group's positive counts
    counts_line: str | None
    width: float
    height: float


def _views(nodes: Sequence[DrawNode]) -> list[_View]:
    seen: set[str] = set()
    views: list[_View] = []
    for node in nodes:
        if node.key in seen:
            continue
        seen.add(node.key)
        views.append(_view(node))
    return views


def _view(node: DrawNode) -> _View:
    label, text_width = _fit(node.label or node.key, _FONT_SIZE)
    state = node.state if node.state in _RANK else "unknown"
    if node.counts is None:
        width = max(_MIN_WIDTH, text_width + 2 * _PAD_X)
        return _View(node, label, state, None, None, round(width), _PLAIN_HEIGHT)
    counts = {
        name: count
        for name, count in sorted(node.counts.items(), key=lambda item: str(item[0]))
        if isinstance(name, str) and isinstance(count, int) and count > 0
    }
    state = worst_state(counts) or state
    words = [f"{counts[name]} {symbol}" for name, symbol in _COUNT_SYMBOLS if name in counts]
    words += [f"{count} {name}" for name, count in counts.items() if name not in _RANK]
    line, line_width = _fit(" ".join(words) or "no items", _COUNTS_FONT_SIZE)
    width = max(_MIN_WIDTH, text_width + 2 * _PAD_X, line_width + 2 * _PAD_X) + _STACK
    return _View(node, label, state, counts, line, round(width), _GROUP_HEIGHT)


# --- layout --------------------------------------------------------------------------------


def _layout(views: list[_View]) -> Layout:
    n = len(views)
    if n == 0:
        return Layout(2 * _MARGIN, 2 * _MARGIN, {}, ())
    index = {view.node.key: at for at, view in enumerate(views)}

    # The edges, parent -> child, each once; no self-loops, no unknown parents.
    edges: list[tuple[int, int]] = []
    children: list[list[int]] = [[] for _ in range(n)]
    has_parent = [False] * n
    seen_edges: set[tuple[int, int]] = set()
    for child, view in enumerate(views):
        for key in view.node.parents:
            parent = index.get(key)
            if parent is None or parent == child or (parent, child) in seen_edges:
                continue
            seen_edges.add((parent, child))
            edges.append((parent, child))
            children[parent].append(child)
            has_parent[child] = True

    # 1. Cycles: a depth-first walk, roots first; an edge to a node on the walk's stack
    # closes a cycle and is turned around. Its finishing order, reversed, sorts the result.
    flipped, finished = _back_edges(n, children, has_parent)

    # 2. Layers: the longest path from a root (over the edges as turned).
    ups: list[list[int]] = [[] for _ in range(n)]
    for parent, child in edges:
        if (parent, child) in flipped:
            ups[parent].append(child)
        else:
            ups[child].append(parent)
    layer = [0] * n
    for node in reversed(finished):
        for up in ups[node]:
            if layer[up] + 1 > layer[node]:
                layer[node] = layer[up] + 1

    # Disconnected parts (union-find), numbered by their first node.
    root = list(range(n))

    def find(x: int) -> int:
        while root[x] != x:
            root[x] = root[root[x]]
            x = root[x]
        return x

    for parent, child in edges:
        a, b = find(parent), find(child)
        if a != b:
            root[max(a, b)] = min(a, b)
    part_of: dict[int, int] = {}
    part = [0] * n
    for node in range(n):
        part[node] = part_of.setdefault(find(node), len(part_of))

    # 3. Virtual points: an edge across several layers becomes a chain through each. The
    # long edges leaving one box share their chain as far as they go together: one line
    # down from it that branches off to each child (and half the points to lay out).
    vlayer = layer[:]
    vpart = part[:]
    vwidth = [view.width for view in views]
    above: list[list[int]] = [[] for _ in range(n)]  # neighbours one layer up
    below: list[list[int]] = [[] for _ in range(n)]  # neighbours one layer down
    trunks: dict[tuple[int, bool], list[int]] = {}
    chains: list[tuple[int, int, bool, list[int]]] = []  # parent, child, flipped, chain
    for parent, child in edges:
        is_back = (parent, child) in flipped
        top, bottom = (child, parent) if is_back else (parent, child)
        count = layer[bottom] - layer[top] - 1
        if not count:
            below[top].append(bottom)
            above[bottom].append(top)
            chains.append((parent, child, is_back, [top, bottom]))
            continue
        trunk = trunks.setdefault((top, is_back), [])
        while len(trunk) < count:
            virtual, previous = len(vlayer), trunk[-1] if trunk else top
            vlayer.append(layer[top] + 1 + len(trunk))
            vpart.append(part[top])
            vwidth.append(0.0)
            above.append([previous])
            below.append([])
            below[previous].append(virtual)
            trunk.append(virtual)
        below[trunk[count - 1]].append(bottom)
        above[bottom].append(trunk[count - 1])
        chains.append((parent, child, is_back, [top, *trunk[:count], bottom]))
    total = len(vlayer)

    # 4 and 5, part by part.
    x = [0.0] * total
    members: list[list[int]] = [[] for _ in part_of]
    for vertex in range(total):
        members[vpart[vertex]].append(vertex)
    offset = _MARGIN
    scratch = [0] * total
    for vertices in members:
        rows: list[list[int]] = [[] for _ in range(max(vlayer[v] for v in vertices) + 1)]
        for vertex in vertices:
            rows[vlayer[vertex]].append(vertex)
        _order(rows, above, below, scratch)
        width = _place(rows, above, below, vwidth, n, x)
        for row in rows:
            for vertex in row:
                x[vertex] += offset
        offset += width + _PART_GAP
    width = float(math.ceil(offset - _PART_GAP + _MARGIN))

    # Vertical: each layer as tall as its tallest node; a node centred in its layer.
    depth = max(layer) + 1
    heights = [0.0] * depth
    for node in range(n):
        heights[layer[node]] = max(heights[layer[node]], views[node].height)
    tops = [0.0] * depth
    y = _MARGIN
    for at in range(depth):
        tops[at] = y
        y += heights[at] + _LAYER_GAP
    height = float(math.ceil(y - _LAYER_GAP + _MARGIN))

    boxes: dict[str, NodeBox] = {}
    for node, view in enumerate(views):
        box_top = tops[layer[node]] + (heights[layer[node]] - view.height) / 2
        boxes[view.node.key] = NodeBox(
            x[node] - view.width / 2, box_top, view.width, view.height, layer[node]
        )

    # Edge ends: the edges leaving (or reaching) one side of a box are spread along it,
    # in the order of where they go, so that they do not cross there. (A group's edges
    # leave from its second card, below and right of the first, where they arrive.)
    out_port: dict[tuple[int, int], float] = {}
    in_port: dict[tuple[int, int], float] = {}
    for node, view in enumerate(views):
        shift = _STACK / 2 if view.counts is not None else 0.0
        for ports, near, centre in (
            (out_port, below[node], x[node] + shift),
            (in_port, above[node], x[node] - shift),
        ):
            if not near:
                continue
            ordered = sorted(near, key=lambda other: (x[other], other))
            step = min(_PORT_STEP, (view.width - 24.0) / max(1, len(ordered) - 1))
            start = centre - step * (len(ordered) - 1) / 2
            for at, other in enumerate(ordered):
                ports[node, other] = start + at * step

    bottoms = [top + height for top, height in zip(tops, heights, strict=True)]
    routes: list[EdgeRoute] = []
    for parent, child, is_back, chain in chains:
        top, bottom = chain[0], chain[-1]
        top_x = out_port[top, chain[1]]
        bottom_x = in_port[bottom, chain[-2]]
        top_box, bottom_box = boxes[views[top].node.key], boxes[views[bottom].node.key]
        points = [(top_x, top_box.y + top_box.height), (top_x, bottoms[layer[top]])]
        for virtual in chain[1:-1]:
            through, at = x[virtual], vlayer[virtual]
            points += ((through, tops[at]), (through, bottoms[at]))
        points += ((bottom_x, tops[layer[bottom]]), (bottom_x, bottom_box.y))
        if is_back:
            points.reverse()
        routes.append(
            EdgeRoute(views[parent].node.key, views[child].node.key, tuple(points), is_back)
        )
    return Layout(width, height, boxes, tuple(routes))


def _back_edges(
    n: int, children: list[list[int]], has_parent: list[bool]
) -> tuple[set[tuple[int, int]], list[int]]:
    """The edges closing cycles and the nodes in finishing order, from an iterative
    depth-first walk from the roots, then from any node left."""
    status = [0] * n  # 0: not seen, 1: on the stack, 2: finished
    finished: list[int] = []
    flipped: set[tuple[int, int]] = set()
    starts = [node for node in range(n) if not has_parent[node]]
    starts += [node for node in range(n) if has_parent[node]]
    for start in starts:
        if status[start]:
            continue
        status[start] = 1
        stack = [(start, 0)]
        while stack:
            node, at = stack[-1]
            if at < len(children[node]):
                stack[-1] = (node, at + 1)
                child = children[node][at]
                if status[child] == 0:
                    status[child] = 1
                    stack.append((child, 0))
                elif status[child] == 1:
                    flipped.add((node, child))
            else:
                status[node] = 2
                finished.append(node)
                stack.pop()
    return flipped, finished


def _order(
    rows: list[list[int]], above: list[list[int]], below: list[list[int]], pos: list[int]
) -> None:
    """Reorder ``rows`` in place by barycenter sweeps, keeping the best order seen
    (``pos``: scratch space, a slot per vertex)."""
    for row in rows:
        for at, vertex in enumerate(row):
            pos[vertex] = at
    best = _crossings(rows, below, pos)
    best_rows = [row[:] for row in rows]
    stale = 0
    for _ in range(_SWEEPS):
        if best == 0 or stale >= 2:
            break
        improved = False
        for downwards in (True, False):
            span = range(1, len(rows)) if downwards else range(len(rows) - 2, -1, -1)
            near = above if downwards else below
            for at in span:
                row = rows[at]
                keyed: list[tuple[float, int, int]] = []
                for vertex in row:
                    others = near[vertex]
                    if len(others) == 1:
                        centre = float(pos[others[0]])
                    elif others:
                        centre = sum(map(pos.__getitem__, others)) / len(others)
                    else:
                        centre = float(pos[vertex])  # nothing pulls it: it stays
                    keyed.append((centre, pos[vertex], vertex))
                keyed.sort()
                for place, (_, _, vertex) in enumerate(keyed):
                    row[place] = vertex
                    pos[vertex] = place
            count = _crossings(rows, below, pos)
            if count < best:
                best, best_rows, improved = count, [row[:] for row in rows], True
        stale = 0 if improved else stale + 1
    rows[:] = best_rows
    for row in rows:
        for at, vertex in enumerate(row):
            pos[vertex] = at
    _transpose(rows, above, below, pos)


def _transpose(
    rows: list[list[int]], above: list[list[int]], below: list[list[int]], pos: list[int]
) -> None:
    """Swap two neighbours in a row wherever that leaves fewer crossings, until no swap
    helps (Graphviz dot's *transpose*): it mends what the barycenters miss."""
    for _ in range(_TRANSPOSE_PASSES):
        swapped = False
        for row in rows:
            for at in range(len(row) - 1):
                left, right = row[at], row[at + 1]
                gain = 0  # crossings now, less crossings once swapped
                for near in (above, below):
                    for a in near[left]:
                        pa = pos[a]
                        for b in near[right]:
                            pb = pos[b]
                            if pa > pb:
                                gain += 1
                            elif pa < pb:
                                gain -= 1
                if gain > 0:
                    row[at], row[at + 1] = right, left
                    pos[right], pos[left] = at, at + 1
                    swapped = True
        if not swapped:
            break


def _crossings(rows: list[list[int]], below: list[list[int]], pos: list[int]) -> int:
    """How many pairs of edges cross between consecutive rows: edges taken left to right
    (by their upper end, then their lower), each crosses those before it that end right
    of it."""
    total = 0
    for at in range(len(rows) - 1):
        ends: list[int] = []  # the lower ends seen so far, sorted
        for vertex in rows[at]:
            others = below[vertex]
            if len(others) == 1:
                end = pos[others[0]]
                total += len(ends) - bisect_right(ends, end)
                insort(ends, end)
                continue
            for end in sorted(map(pos.__getitem__, others)):
                total += len(ends) - bisect_right(ends, end)
                insort(ends, end)
    return total


def _place(
    rows: list[list[int]],
    above: list[list[int]],
    below: list[list[int]],
    widths: list[float],
    real: int,
    x: list[float],
) -> float:
    """Set the centre ``x`` of each vertex of ``rows``, from 0; return the part's width."""
    # Each row's room: how far right of its first vertex each one must be at least.
    rooms: list[list[float]] = []
    for row in rows:
        room = [0.0] * len(row)
        for at in range(1, len(row)):
            a, b = row[at - 1], row[at]
            room[at] = room[at - 1] + (widths[a] + widths[b]) / 2 + _gap(a, b, real)
        rooms.append(room)

    # Packed left to right, each row centred on the widest.
    widest = max(
        room[-1] + (widths[row[0]] + widths[row[-1]]) / 2
        for row, room in zip(rows, rooms, strict=True)
    )
    for row, room in zip(rows, rooms, strict=True):
        left = (widest - room[-1] - (widths[row[0]] + widths[row[-1]]) / 2) / 2 + widths[row[0]] / 2
        for vertex, offset in zip(row, room, strict=True):
            x[vertex] = left + offset

    # Pulled towards the neighbours, down then up, then both ways at once; virtual points
    # weigh more, so that long edges stay straight.
    both: dict[int, list[int]] = {}
    for row in rows:
        for vertex in row:
            both[vertex] = above[vertex] + below[vertex]
    down = range(1, len(rows))
    up = range(len(rows) - 2, -1, -1)
    passes: list[tuple[range, Sequence[list[int]] | dict[int, list[int]]]]
    passes = [(down, above), (up, below)] * _PLACE_SWEEPS + [(range(len(rows)), both)]
    for span, near in passes:
        for at in span:
            row = rows[at]
            wanted: list[float] = []
            weights: list[float] = []
            for vertex in row:
                others = near[vertex]
                count = len(others)
                if count == 1:
                    wanted.append(x[others[0]])
                elif count:
                    wanted.append(sum(map(x.__getitem__, others)) / count)
                else:
                    wanted.append(x[vertex])
                weights.append((count or 0.5) * (1.0 if vertex < real else 2.0))
            _fit_row(row, wanted, weights, rooms[at], x)

    _straighten(rows, above, below, widths, real, x)
    left = min(x[row[0]] - widths[row[0]] / 2 for row in rows)
    right = max(x[row[-1]] + widths[row[-1]] / 2 for row in rows)
    for row in rows:
        for vertex in row:
            x[vertex] -= left
    return right - left


def _straighten(
    rows: list[list[int]],
    above: list[list[int]],
    below: list[list[int]],
    widths: list[float],
    real: int,
    x: list[float],
) -> None:
    """Make each run of virtual points one vertical line where its rows have room."""
    where: dict[int, tuple[list[int], int]] = {}
    for row in rows:
        for at, vertex in enumerate(row):
            if vertex >= real:
                where[vertex] = (row, at)
    for start in where:
        if above[start][0] >= real:
            continue  # not the first of its run
        run = [start]
        while True:
            follow = [other for other in below[run[-1]] if other >= real]
            if not follow:
                break
            run.append(follow[0])
        if len(run) < 2:
            continue
        low, high = -math.inf, math.inf
        for vertex in run:
            row, at = where[vertex]
            if at:
                other = row[at - 1]
                low = max(low, x[other] + widths[other] / 2 + _gap(other, vertex, real))
            if at + 1 < len(row):
                other = row[at + 1]
                high = min(high, x[other] - widths[other] / 2 - _gap(vertex, other, real))
        if low <= high:
            line = min(max(sum(x[vertex] for vertex in run) / len(run), low), high)
            for vertex in run:
                x[vertex] = line


def _gap(a: int, b: int, real: int) -> float:
    return _NODE_GAP if a < real and b < real else _VIRTUAL_GAP


def _fit_row(
    row: list[int], wanted: list[float], weights: list[float], room: list[float], x: list[float]
) -> None:
    """Place ``row`` as near ``wanted`` as its order and gaps allow (weighted least
    squares): less each one's ``room``, the positions must not decrease, which
    pool-adjacent-violators solves exactly in one pass."""
    sums: list[float] = []
    totals: list[float] = []
    sizes: list[int] = []
    for at, weight in enumerate(weights):
        value = weight * (wanted[at] - room[at])
        size = 1
        while totals and sums[-1] * weight > value * totals[-1]:  # the mean before is more
            value += sums.pop()
            weight += totals.pop()
            size += sizes.pop()
        sums.append(value)
        totals.append(weight)
        sizes.append(size)
    at = 0
    for value, weight, size in zip(sums, totals, sizes, strict=True):
        mean = value / weight
        for _ in range(size):
            x[row[at]] = mean + room[at]
            at += 1


# --- SVG -----------------------------------------------------------------------------------


def _num(value: float) -> str:
    """A coordinate: one decimal at most, no trailing ``.0``."""
    return f"{value:.1f}".removesuffix(".0")


def _path(points: tuple[tuple[float, float], ...], cache: dict[float, str]) -> str:
    """A path along ``points``: straight down inside layers, an S-curve between them
    (``cache``: coordinates already written, shared by the edges of one drawing)."""

    def num(value: float) -> str:
        text = cache.get(value)
        if text is None:
            text = cache[value] = _num(value)
        return text

    x0, y0 = points[0]
    sx0 = num(x0)
    parts = [f"M{sx0},{num(y0)}"]
    for at in range(1, len(points)):
        x1, y1 = points[at]
        if at % 2:  # inside a layer: x stays
            if y1 != y0:
                parts.append(f"V{num(y1)}")
        else:
            middle, sx1 = num((y0 + y1) / 2), num(x1)
            parts.append(f"C{sx0},{middle} {sx1},{middle} {sx1},{num(y1)}")
            sx0 = sx1
        y0 = y1
    return "".join(parts)


def _node_svg(view: _View, box: NodeBox) -> str:
    node = view.node
    group = view.counts is not None
    lines = [f"task: {node.label}", f"key: {node.key}", f"state: {view.state}"]
    if view.state == "unknown":
        lines[-1] = f"state: {node.state}"
    if view.counts is not None:
        items = ", ".join(f"{count} {name}" for name, count in view.counts.items())
        lines.append(f"items: {items or 'none'}")
    tooltip = "\n".join(
        line if len(line) <= _TOOLTIP_MAX else line[: _TOOLTIP_MAX - 1] + "…" for line in lines
    )
    data_state = view.state if view.state != "unknown" else node.state
    out = [
        f'<g class="node{" group" if group else ""} state-{view.state}" '
        f'data-key="{_attr(node.key)}" data-state="{_attr(data_state)}"'
    ]
    if view.counts is not None:
        counts_json = json.dumps(view.counts, separators=(",", ":"), ensure_ascii=True)
        out.append(f' data-counts="{_attr(counts_json)}"')
    out.append(f"><title>{html.escape(_clean(tooltip), quote=True)}</title>")
    href = _safe_href(node.href) if node.href is not None else None
    if href is not None:
        out.append(f'<a href="{_attr(href)}">')
    x, y, w, h = box.x, box.y, box.width, box.height
    if group:
        w, h = w - _STACK, h - _STACK
        out.append(
            f'<rect class="stack" x="{_num(x + _STACK)}" y="{_num(y + _STACK)}" '
            f'width="{_num(w)}" height="{_num(h)}" rx="6"/>'
        )
    out.append(f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(w)}" height="{_num(h)}" rx="6"/>')
    centre = _num(x + w / 2)
    if view.counts_line is None:
        out.append(
            f'<text class="label" x="{centre}" y="{_num(y + h / 2)}" dy="0.35em" '
            f'text-anchor="middle">{html.escape(view.label, quote=True)}</text>'
        )
    else:
        out.append(
            f'<text class="label" x="{centre}" y="{_num(y + h / 2 - 8)}" dy="0.35em" '
            f'text-anchor="middle">{html.escape(view.label, quote=True)}</text>'
            f'<text class="counts" x="{centre}" y="{_num(y + h / 2 + 9)}" dy="0.35em" '
            f'text-anchor="middle">{html.escape(view.counts_line, quote=True)}</text>'
        )
    if href is not None:
        out.append("</a>")
    out.append("</g>")
    return "".join(out)


def _css() -> str:
    """The drawing's own style, scoped to ``.aflow-graph`` (an inline SVG's ``<style>``
    applies to the whole page)."""
    rules = [
        ".aflow-graph{font:12px system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',"
        "Arial,sans-serif}",
        ".aflow-graph .edge{fill:none;stroke:#6b7280;stroke-width:1.5}",
        ".aflow-graph .edge.back{stroke-dasharray:5 3}",
        ".aflow-graph .arrow{fill:#6b7280}",
        ".aflow-graph .node rect{stroke-width:1.5}",
        ".aflow-graph .node .counts{font-size:11px}",
        ".aflow-graph .node a:hover rect,.aflow-graph .node a:focus rect{stroke-width:3}",
        ".aflow-graph text.empty{fill:#4b5563}",
    ]
    for state, (fill, stroke, text) in _PALETTE.items():
        rules.append(f".aflow-graph .state-{state} rect{{fill:{fill};stroke:{stroke}}}")
        rules.append(f".aflow-graph .state-{state} text{{fill:{text}}}")
    rules += [
        ".aflow-graph .state-pending rect,.aflow-graph .state-reverting rect{stroke-dasharray:4 3}",
        ".aflow-graph .state-running rect{stroke-width:2;stroke-dasharray:6 4;"
        "animation:aflow-running 1s linear infinite}",
        "@keyframes aflow-running{to{stroke-dashoffset:-20}}",
        "@media (prefers-reduced-motion:reduce){.aflow-graph .state-running rect"
        "{animation:none;stroke-dasharray:none;stroke-width:2.5}}",
    ]
    return "".join(rules)


_CSS = _css()
