"""The runs dashboard's graph drawing (aflow/web/_layout.py): a layered layout and its SVG.

Invariants are checked on random graphs (hypothesis): layers follow the edges, boxes do
not overlap, long edges pass between boxes, the output is deterministic and well-formed
for any input (cycles, unknown parents, hostile text). Crossing reduction, the grouped
node and its worst-state rule, the styles and the escaping are checked on graphs made
by hand.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aflow.web import _layout
from aflow.web._layout import (
    STATE_SEVERITY,
    STATES,
    DrawNode,
    Layout,
    layout,
    render_svg,
    worst_state,
)

NS = "{http://www.w3.org/2000/svg}"
HOSTILE_KEY = "</svg><script>alert(1)</script>"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # raises on anything not well-formed
    assert root.tag == f"{NS}svg"
    return root


def node_elements(root: ET.Element) -> dict[str, ET.Element]:
    return {
        str(g.get("data-key")): g
        for g in root.iter(f"{NS}g")
        if "node" in (g.get("class") or "").split()
    }


def classes(element: ET.Element) -> set[str]:
    return set((element.get("class") or "").split())


def gap_segments(drawn: Layout) -> set[tuple[float, float, float, float]]:
    """Each distinct stretch of an edge across a gap between layers, top end first:
    (y of the gap's top, y of its bottom, x at the top, x at the bottom)."""
    found = set()
    for edge in drawn.edges:
        points = edge.points[::-1] if edge.back else edge.points
        for at in range(1, len(points) - 1, 2):
            (x0, y0), (x1, y1) = points[at], points[at + 1]
            assert y0 < y1
            found.add((y0, y1, x0, x1))
    return found


def crossings(drawn: Layout) -> int:
    """Pairs of edge stretches that cross, counted from the drawing's own coordinates."""
    segments = sorted(gap_segments(drawn))
    count = 0
    for i, (top, bottom, a0, a1) in enumerate(segments):
        for other_top, other_bottom, b0, b1 in segments[i + 1 :]:
            if (other_top, other_bottom) == (top, bottom) and (a0 - b0) * (a1 - b1) < 0:
                count += 1
    return count


def overlaps(a: _layout.NodeBox, b: _layout.NodeBox) -> bool:
    return (
        a.x < b.x + b.width
        and b.x < a.x + a.width
        and a.y < b.y + b.height
        and b.y < a.y + a.height
    )


# --- strategies ----------------------------------------------------------------------------

states = st.sampled_from(STATES)


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 24) -> list[DrawNode]:
    """A random DAG, given in a random order (not necessarily parents first)."""
    n = draw(st.integers(1, max_nodes))
    nodes = []
    for i in range(n):
        parents = draw(st.sets(st.integers(0, i - 1), max_size=min(i, 3))) if i else set()
        grouped = draw(st.booleans()) and i % 4 == 0
        counts = draw(st.dictionaries(states, st.integers(0, 9), max_size=3)) if grouped else None
        nodes.append(
            DrawNode(
                f"n{i}",
                draw(st.sampled_from(["a", "step", "charge_the_card", "x" * 60])),
                draw(states),
                tuple(f"n{p}" for p in sorted(parents)),
                counts=counts,
            )
        )
    return draw(st.permutations(nodes))


@st.composite
def any_graphs(draw: st.DrawFn) -> list[DrawNode]:
    """Anything: cycles, self-loops, repeated and unknown parents, repeated keys."""
    keys = draw(st.lists(st.sampled_from([f"k{i}" for i in range(16)]), min_size=1, max_size=16))
    pool = [*keys, "ghost", "k99"]
    return [
        DrawNode(
            key,
            key,
            draw(st.sampled_from([*STATES, "bogus"])),
            tuple(draw(st.lists(st.sampled_from(pool), max_size=4))),
        )
        for key in keys
    ]


# --- layout --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_layers_are_the_longest_path_from_a_root_and_children_are_drawn_below(
    nodes: list[DrawNode],
) -> None:
    drawn = layout(nodes)
    by_key = {node.key: node for node in nodes}
    assert set(drawn.nodes) == set(by_key)
    for node in nodes:
        box = drawn.nodes[node.key]
        parents = [drawn.nodes[parent] for parent in node.parents]
        assert box.layer == max((parent.layer + 1 for parent in parents), default=0)
        for parent in parents:
            assert box.y >= parent.y + parent.height + _layout._LAYER_GAP
    assert not any(edge.back for edge in drawn.edges)
    assert len(drawn.edges) == sum(len(node.parents) for node in nodes)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(dags(), any_graphs()))
def test_no_two_boxes_overlap_and_all_fit_the_drawing(nodes: list[DrawNode]) -> None:
    drawn = layout(nodes)
    boxes = list(drawn.nodes.values())
    for i, box in enumerate(boxes):
        assert box.x > 0
        assert box.x + box.width < drawn.width
        assert box.y > 0
        assert box.y + box.height < drawn.height
        for other in boxes[i + 1 :]:
            assert not overlaps(box, other)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(dags(), any_graphs()))
def test_edges_pass_between_boxes_and_join_their_ends(nodes: list[DrawNode]) -> None:
    drawn = layout(nodes)
    for edge in drawn.edges:
        source, target = drawn.nodes[edge.source], drawn.nodes[edge.target]
        (x0, y0), (x1, y1) = edge.points[0], edge.points[-1]
        # it leaves its parent's box at the bottom (top if turned round) and reaches
        # its child's at the top (bottom), within their width
        assert y0 == (source.y if edge.back else source.y + source.height)
        assert y1 == (target.y + target.height if edge.back else target.y)
        assert source.x < x0 < source.x + source.width
        assert target.x < x1 < target.x + target.width
        # each vertical stretch (inside a layer) crosses no other box
        for at in range(0, len(edge.points), 2):
            (xa, ya), (xb, yb) = edge.points[at], edge.points[at + 1]
            assert xa == xb
            top, bottom = min(ya, yb), max(ya, yb)
            for key, box in drawn.nodes.items():
                if key in (edge.source, edge.target):
                    continue
                beside = xa < box.x or xa > box.x + box.width
                assert beside or bottom <= box.y or top >= box.y + box.height


def test_a_long_edge_goes_round_the_boxes_in_its_way() -> None:
    nodes = [
        DrawNode("a", "a", "succeeded"),
        DrawNode("b", "b", "succeeded", ("a",)),
        DrawNode("c", "c", "succeeded", ("b",)),
        DrawNode("d", "d", "succeeded", ("c", "a")),
    ]
    drawn = layout(nodes)
    (long_edge,) = [edge for edge in drawn.edges if (edge.source, edge.target) == ("a", "d")]
    assert len(long_edge.points) == 8  # two virtual points, in b's and c's layers
    assert len({x for x, _ in long_edge.points[2:-2]}) == 1  # one straight line down
    for key in "bc":
        box = drawn.nodes[key]
        for x, y in long_edge.points[2:-2]:
            if box.y <= y <= box.y + box.height:
                assert not box.x <= x <= box.x + box.width


def test_long_edges_from_one_box_share_their_way_down() -> None:
    chain = [DrawNode("c0", "c0", "succeeded")]
    chain += [DrawNode(f"c{i}", f"c{i}", "succeeded", (f"c{i - 1}",)) for i in range(1, 5)]
    nodes = [
        *chain,
        DrawNode("root", "root", "succeeded"),
        DrawNode("x", "x", "succeeded", ("root", "c2")),
        DrawNode("y", "y", "succeeded", ("root", "c4")),
    ]
    drawn = layout(nodes)
    to_x, to_y = (
        next(edge for edge in drawn.edges if (edge.source, edge.target) == ("root", key))
        for key in "xy"
    )
    assert to_x.points[:6] == to_y.points[:6]  # root -> x's layer: the same way


def test_edges_sharing_a_box_side_leave_it_apart_in_the_order_they_go() -> None:
    nodes = [
        DrawNode("up", "up", "succeeded"),
        *(DrawNode(f"c{i}", f"c{i}", "pending", ("up",)) for i in range(3)),
        DrawNode("down", "down", "pending", ("c0", "c1", "c2")),
    ]
    drawn = layout(nodes)
    by_child = sorted(
        (drawn.nodes[e.target].x, e.points[0][0]) for e in drawn.edges if e.source == "up"
    )
    starts = [start for _, start in by_child]
    assert starts == sorted(starts)
    assert len(set(starts)) == 3
    ends = sorted(
        (drawn.nodes[e.source].x, e.points[-1][0]) for e in drawn.edges if e.target == "down"
    )
    assert [end for _, end in ends] == sorted({end for _, end in ends})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(dags(), any_graphs()), st.sampled_from([None, "run 1"]))
def test_the_same_nodes_draw_the_same_string(nodes: list[DrawNode], title: str | None) -> None:
    first = render_svg(nodes, title=title)
    copies = [
        DrawNode(n.key, n.label, n.state, tuple(n.parents), dict(n.counts or {}) or n.counts)
        for n in nodes
    ]
    assert render_svg(copies, title=title) == first
    assert layout(nodes) == layout(copies)
    parse(first)


def test_cycles_self_loops_and_unknown_parents() -> None:
    nodes = [
        DrawNode("a", "a", "succeeded", ("c", "ghost")),  # a -> b -> c -> a
        DrawNode("b", "b", "running", ("a", "a")),
        DrawNode("c", "c", "pending", ("b",)),
        DrawNode("d", "d", "pending", ("d", "c")),  # a self-loop
        DrawNode("a", "another a", "failed", ("d",)),  # a repeated key: the first wins
    ]
    drawn = layout(nodes)
    assert set(drawn.nodes) == {"a", "b", "c", "d"}
    pairs = {(edge.source, edge.target): edge for edge in drawn.edges}
    assert set(pairs) == {("c", "a"), ("a", "b"), ("b", "c"), ("c", "d")}
    assert [key for key, edge in pairs.items() if edge.back] == [("c", "a")]
    assert [drawn.nodes[key].layer for key in "abcd"] == [0, 1, 2, 3]
    root = parse(render_svg(nodes))
    (back,) = [path for path in root.iter(f"{NS}path") if "back" in classes(path)]
    assert (back.get("data-from"), back.get("data-to")) == ("c", "a")
    assert node_elements(root)["a"].find(f"{NS}text").text == "a"  # type: ignore[union-attr]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_graphs())
def test_any_graph_is_drawn_with_its_known_edges_each_once(nodes: list[DrawNode]) -> None:
    first: dict[str, DrawNode] = {}
    for node in nodes:
        first.setdefault(node.key, node)
    expected = {
        (parent, node.key)
        for node in first.values()
        for parent in node.parents
        if parent in first and parent != node.key
    }
    drawn = layout(nodes)
    assert sorted((e.source, e.target) for e in drawn.edges) == sorted(expected)
    for edge in drawn.edges:  # down, but for the edges closing cycles: those go up
        source, target = drawn.nodes[edge.source], drawn.nodes[edge.target]
        assert (source.layer > target.layer) if edge.back else (source.layer < target.layer)
    root = parse(render_svg(nodes))
    assert len(node_elements(root)) == len(first)


def test_a_long_cycle_does_not_recurse() -> None:
    n = 3000
    nodes = [DrawNode(f"k{i}", "t", "pending", (f"k{(i - 1) % n}",)) for i in range(n)]
    drawn = layout(nodes)
    assert sum(edge.back for edge in drawn.edges) == 1
    assert max(box.layer for box in drawn.nodes.values()) == n - 1


def twisted() -> list[DrawNode]:
    """Input order puts every child under the wrong parent: 6 pairs of crossing edges."""
    parents = ["p0", "p1", "p2", "p3"]
    return [
        DrawNode("root", "root", "succeeded"),
        *(DrawNode(key, key, "succeeded", ("root",)) for key in parents),
        *(DrawNode(f"c{i}", f"c{i}", "pending", (f"p{i}",)) for i in reversed(range(4))),
        *(DrawNode(f"g{i}", f"g{i}", "pending", (f"c{i}",)) for i in range(4)),
    ]


def test_crossing_reduction_untangles_what_input_order_crosses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert crossings(layout(twisted())) == 0
    drawn = layout(twisted())
    for i in range(4):  # each child right under its parent
        assert drawn.nodes[f"c{i}"].x == pytest.approx(drawn.nodes[f"p{i}"].x)
    monkeypatch.setattr(_layout, "_SWEEPS", 0)  # the order nodes came in
    monkeypatch.setattr(_layout, "_TRANSPOSE_PASSES", 0)
    assert crossings(layout(twisted())) == 12


def test_both_steps_of_crossing_reduction_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph (found by a random search) that barycenter sweeps alone leave with a
    crossing, and swapping neighbours alone with two: together they leave none."""
    nodes = [
        DrawNode("n4", "n4", "pending", ("n1", "n3")),
        DrawNode("n2", "n2", "pending", ("n0",)),
        DrawNode("n6", "n6", "pending", ("n2", "n3")),
        DrawNode("n3", "n3", "pending", ("n0", "n2")),
        DrawNode("n1", "n1", "pending", ("n0",)),
        DrawNode("n5", "n5", "pending", ("n2", "n4")),
        DrawNode("n7", "n7", "pending"),
        DrawNode("n0", "n0", "pending"),
    ]
    assert crossings(layout(nodes)) == 0
    with monkeypatch.context() as patched:
        patched.setattr(_layout, "_TRANSPOSE_PASSES", 0)
        assert crossings(layout(nodes)) == 1
    monkeypatch.setattr(_layout, "_SWEEPS", 0)
    assert crossings(layout(nodes)) == 2


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_crossing_reduction_never_makes_it_worse(nodes: list[DrawNode]) -> None:
    reduced = crossings(layout(nodes))
    saved = _layout._SWEEPS, _layout._TRANSPOSE_PASSES
    _layout._SWEEPS = _layout._TRANSPOSE_PASSES = 0  # the order nodes came in
    try:
        naive = crossings(layout(nodes))
    finally:
        _layout._SWEEPS, _layout._TRANSPOSE_PASSES = saved
    assert reduced <= naive


def test_disconnected_parts_are_side_by_side() -> None:
    nodes = [
        DrawNode("a1", "a1", "succeeded"),
        DrawNode("b1", "b1", "succeeded"),
        DrawNode("a2", "a2", "succeeded", ("a1",)),
        DrawNode("b2", "b2", "succeeded", ("b1",)),
        DrawNode("lone", "lone", "skipped"),
    ]
    drawn = layout(nodes)
    box = drawn.nodes
    assert box["a1"].y == box["b1"].y == box["lone"].y
    assert max(box[k].x + box[k].width for k in ("a1", "a2")) < min(box["b1"].x, box["b2"].x)
    assert max(box[k].x + box[k].width for k in ("b1", "b2")) < box["lone"].x


def test_a_box_fits_its_label_and_a_long_label_is_cut() -> None:
    short, longer, huge = (
        DrawNode(key, label, "succeeded")
        for key, label in (("s", "ab"), ("l", "charge_the_card_twice"), ("h", "w" * 500))
    )
    drawn = layout([short, longer, huge])
    assert drawn.nodes["s"].width == _layout._MIN_WIDTH
    assert drawn.nodes["s"].width < drawn.nodes["l"].width < drawn.nodes["h"].width
    assert drawn.nodes["h"].width <= _layout._MAX_TEXT + 2 * _layout._PAD_X
    root = parse(render_svg([huge]))
    g = node_elements(root)["h"]
    shown = g.find(f"{NS}text").text  # type: ignore[union-attr]
    assert shown is not None
    assert shown.endswith("…")
    assert 10 < len(shown) < 60
    assert "w" * 500 in g.find(f"{NS}title").text  # type: ignore[operator, union-attr]


# --- SVG -----------------------------------------------------------------------------------


def saga() -> list[DrawNode]:
    return [
        DrawNode("validate", "validate_order", "succeeded", href="/runs/1/nodes/validate"),
        DrawNode("reserve", "reserve", "succeeded", ("validate",)),
        DrawNode("charge", "charge_card", "failed", ("reserve",)),
        DrawNode(
            "ship",
            "ship_items",
            "running",
            ("reserve",),
            counts={"succeeded": 12, "failed": 3, "pending": 5, "running": 0},
        ),
        DrawNode("notify", "notify", "pending", ("charge", "ship")),
    ]


def test_the_svg_element_nodes_and_edges_carry_what_the_page_looks_for() -> None:
    svg = render_svg(saga(), title="order 42")
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg" class="aflow-graph" viewBox="')
    root = parse(svg)
    assert root.get("role") == "img"
    width, height = float(root.get("width") or 0), float(root.get("height") or 0)
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
    assert width > 0
    assert height > 0
    assert root[0].tag == f"{NS}title"
    assert root[0].text == "order 42"
    assert root.find(f"{NS}style") is not None

    nodes = node_elements(root)
    assert list(nodes) == ["validate", "reserve", "charge", "ship", "notify"]
    for key, g in nodes.items():
        state = str(g.get("data-state"))
        assert f"state-{state}" in classes(g)
        assert g[0].tag == f"{NS}title"  # first: the tooltip
        tip = str(g[0].text)
        assert f"key: {key}" in tip
        assert "task: " in tip
        assert f"state: {state}" in tip
        rect = g.find(f".//{NS}rect")
        assert rect is not None
        assert rect.get("rx")
        assert g.find(f".//{NS}text") is not None
    link = nodes["validate"].find(f"{NS}a")
    assert link is not None
    assert link.get("href") == "/runs/1/nodes/validate"
    assert link.find(f"{NS}rect") is not None
    assert link.find(f"{NS}text") is not None
    assert nodes["reserve"].find(f"{NS}a") is None

    paths = [p for p in root.iter(f"{NS}path") if "edge" in classes(p)]
    assert {(p.get("data-from"), p.get("data-to")) for p in paths} == {
        ("validate", "reserve"),
        ("reserve", "charge"),
        ("reserve", "ship"),
        ("charge", "notify"),
        ("ship", "notify"),
    }
    markers = list(root.iter(f"{NS}marker"))
    assert len(markers) == 1
    assert all(p.get("marker-end") == f"url(#{markers[0].get('id')})" for p in paths)
    assert all(re.fullmatch(r"M[\d.,]+(V[\d.]+|C[\d., ]+)+", str(p.get("d"))) for p in paths)


def test_a_grouped_node_shows_its_counts_and_takes_the_worst_state() -> None:
    root = parse(render_svg(saga()))
    group = node_elements(root)["ship"]
    assert {"node", "group", "state-failed"} <= classes(group)
    assert group.get("data-state") == "failed"
    assert json.loads(str(group.get("data-counts"))) == {"succeeded": 12, "failed": 3, "pending": 5}
    texts = [t.text for t in group.iter(f"{NS}text")]
    assert texts == ["ship_items", "12 ✓ 3 ✗ 5 …"]
    assert "items: " in str(group[0].text)
    plain = node_elements(root)["charge"]
    assert "group" not in classes(plain)
    assert plain.get("data-counts") is None


@pytest.mark.parametrize(("worse", "better"), list(itertools.pairwise(STATE_SEVERITY)))
def test_the_worst_state_rule(worse: str, better: str) -> None:
    assert worst_state([better, worse, "bogus"]) == worse
    node = DrawNode("g", "g", "succeeded", counts={better: 5, worse: 1, "bogus": 2})
    group = node_elements(parse(render_svg([node])))["g"]
    assert f"state-{worse}" in classes(group)


def test_worst_state_covers_every_state() -> None:
    assert sorted(STATE_SEVERITY) == sorted(STATES)
    assert worst_state([]) is None
    assert worst_state(["bogus"]) is None


def test_a_group_without_items_keeps_its_own_state() -> None:
    node = DrawNode("g", "g", "pending", counts={"failed": 0})
    group = node_elements(parse(render_svg([node])))["g"]
    assert "state-pending" in classes(group)
    assert group.get("data-counts") == "{}"
    assert [t.text for t in group.iter(f"{NS}text")][1] == "no items"


def _luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a: str, b: str) -> float:
    light, dark = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_every_state_is_styled_within_the_svg_with_readable_text() -> None:
    nodes = [DrawNode(state, state, state) for state in STATES]
    root = parse(render_svg(nodes))
    css = str(root.find(f"{NS}style").text)  # type: ignore[union-attr]
    for state in (*STATES, "unknown"):
        fill, stroke, text = _layout._PALETTE[state]
        assert f".aflow-graph .state-{state} rect{{fill:{fill};stroke:{stroke}}}" in css
        assert f".aflow-graph .state-{state} text{{fill:{text}}}" in css
        assert _contrast(fill, text) >= 4.5, state
    assert "animation:" in re.search(r"\.state-running rect\{[^}]*animation[^}]*\}", css)[0]  # type: ignore[index]
    assert re.search(r"@media \(prefers-reduced-motion:reduce\)\{[^}]*state-running", css)
    assert re.search(r"state-pending rect[^{]*\{stroke-dasharray", css)
    assert "<" not in css
    assert "&" not in css
    for g in node_elements(root).values():
        assert f"state-{g.get('data-state')}" in classes(g)


def test_an_empty_graph_says_so() -> None:
    root = parse(render_svg([], title="nothing"))
    assert "aflow-graph" in classes(root)
    assert root.get("role") == "img"
    assert root[0].text == "nothing"
    assert [t.text for t in root.iter(f"{NS}text")] == ["no steps"]
    assert layout([]).nodes == {}
    assert layout([]).edges == ()


# --- hostile input -------------------------------------------------------------------------


def test_hostile_text_is_inert() -> None:
    nodes = [
        DrawNode(HOSTILE_KEY, '<i onclick="alert(1)">&amp;</i>', "running", href="/r?a=1&b='2'"),
        DrawNode(
            "ctl\x00\x1b\ud800\uffff",
            "nul\x00esc\x1b\nline",
            "failed",
            (HOSTILE_KEY,),
            counts={"<b>": 2, "succeeded": 1},
            href="javascript:alert(1)",
        ),
        DrawNode("tabbed", "x", 'failed" onload="alert(1)', href=" jav\tascript:alert(1)"),
        DrawNode("data", "x", "pending", href="DATA:text/html,<script>alert(1)</script>"),
        DrawNode("web", "x", "pending", href="https://example.org/run?id=1"),
    ]
    svg = render_svg(nodes, title="</title><script>alert(1)</script>")
    assert "<script" not in svg
    assert "<i " not in svg
    assert "<b>" not in svg
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]", svg)
    root = parse(svg)
    assert not list(root.iter(f"{NS}script"))
    assert not list(root.iter("script"))
    assert root[0].text == "</title><script>alert(1)</script>"
    found = node_elements(root)
    assert set(found) == {HOSTILE_KEY, "ctl\ufffd\ufffd\ufffd\ufffd", "tabbed", "data", "web"}
    first = found[HOSTILE_KEY]
    assert first.find(f"{NS}a").get("href") == "/r?a=1&b='2'"  # type: ignore[union-attr]
    assert first.find(f".//{NS}text").text == '<i onclick="alert(1)">&amp;</i>'  # type: ignore[union-attr]
    second = found["ctl\ufffd\ufffd\ufffd\ufffd"]
    assert second.find(f"{NS}a") is None  # no javascript: link
    assert second.get("data-state") == "succeeded"  # a group: the worst of its counts
    assert [t.text for t in second.iter(f"{NS}text")] == ["nul\ufffdesc\ufffd line", "1 ✓ 2 <b>"]
    assert json.loads(str(second.get("data-counts"))) == {"<b>": 2, "succeeded": 1}
    assert found["tabbed"].find(f"{NS}a") is None
    assert found["tabbed"].get("data-state") == 'failed" onload="alert(1)'
    assert classes(found["tabbed"]) == {"node", "state-unknown"}
    assert found["data"].find(f"{NS}a") is None
    assert found["web"].find(f"{NS}a").get("href") == "https://example.org/run?id=1"  # type: ignore[union-attr]
    (edge,) = [p for p in root.iter(f"{NS}path") if "edge" in classes(p)]
    assert edge.get("data-from") == HOSTILE_KEY
    assert not any(attr.startswith("on") for el in root.iter() for attr in el.attrib)


def test_line_breaks_in_a_key_survive_its_attribute() -> None:
    key = "a\tb\nc\rd"
    g = node_elements(parse(render_svg([DrawNode(key, "x", "pending")])))
    assert set(g) == {key}


hostile_text = st.text(
    st.one_of(
        st.characters(codec=None, exclude_categories=()),
        st.sampled_from(["\x00", "\x1b", "\ud800", "\udfff", "\ufffe", "\uffff", "<", "&", '"']),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            hostile_text,
            hostile_text,
            st.one_of(states, hostile_text),
            st.lists(hostile_text, max_size=3),
            st.none() | st.dictionaries(hostile_text, st.integers(-3, 5), max_size=3),
            st.none() | hostile_text,
        ),
        max_size=8,
    ),
    st.none() | hostile_text,
)
def test_any_text_gives_one_well_formed_inert_svg(
    rows: list[tuple[str, str, str, list[str], dict[str, int] | None, str | None]],
    title: str | None,
) -> None:
    nodes = [
        DrawNode(k, label, state, tuple(p), counts, href)
        for k, label, state, p, counts, href in rows
    ]
    root = parse(render_svg(nodes, title=title))
    assert [child.tag for child in root].count(f"{NS}style") == 1
    assert {el.tag for el in root.iter()} <= {
        f"{NS}{tag}"
        for tag in ("svg", "title", "style", "defs", "marker", "path", "g", "a", "rect", "text")
    }
    assert not any(attr.startswith("on") for el in root.iter() for attr in el.attrib)
    # (counted as elements: keys that differ only in control characters, which XML
    # cannot hold, show the same data-key)
    drawn = [g for g in root.iter(f"{NS}g") if "node" in classes(g)]
    assert len(drawn) == len({node.key for node in nodes})


# --- size ----------------------------------------------------------------------------------


def big_graph(n: int = 500, edges: int = 1000, seed: int = 7) -> Iterator[DrawNode]:
    """A random DAG whose edges mostly join nearby nodes: deep, with long edges."""
    rng = random.Random(seed)
    parents: list[set[int]] = [set() for _ in range(n)]
    while sum(map(len, parents)) < edges:
        child = rng.randrange(1, n)
        parents[child].add(max(0, child - rng.randint(1, 20)))
    for i in range(n):
        counts = {"succeeded": i, "failed": 1} if i % 50 == 0 else None
        yield DrawNode(
            f"k{i}",
            f"task_{i}",
            STATES[i % len(STATES)],
            tuple(f"k{p}" for p in parents[i]),
            counts,
        )


def test_a_500_node_graph_is_drawn() -> None:
    nodes = list(big_graph())
    started = time.perf_counter()
    svg = render_svg(nodes)
    took = time.perf_counter() - started
    root = parse(svg)
    assert len(node_elements(root)) == 500
    assert len([p for p in root.iter(f"{NS}path") if "edge" in classes(p)]) == 1000
    print(f"500 nodes, 1000 edges: {took * 1000:.0f} ms")  # no assertion: machines differ
