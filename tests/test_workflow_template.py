"""An @aflow.workflow's graph is built once per kind of parameters and filled in (issue 16),
only where that gives the graph a fresh build would, and never a marker to a task."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aflow
from aflow._graph import compile as compile_graph
from aflow._workflow_template import _UNTRACEABLE
from aflow.errors import SignatureError
from aflow.patterns import linear_flow as lf

from .strategies import Chain, Chord, Group, Leaf, leaf, trees

CALLS: list[str] = []


@aflow.task
async def echo(*args: Any, **kwargs: Any) -> Any:
    return [args, kwargs]


@aflow.task
async def double(x: Any) -> Any:
    return x * 2


@aflow.task
async def add(a: int, b: int) -> int:
    return a + b


def _expected(order: str, amount: Any) -> Any:
    echoed = [(order,), {"amount": amount}]
    return [echoed + echoed, [(order,), {}]]  # (double of a list: the list twice)


def _plain_fn(order: str, amount: int) -> aflow.Canvas[Any]:
    CALLS.append("plain")
    return echo.s(order, amount=amount) | aflow.group(double.s(), echo.si(order))


plain = aflow.workflow(_plain_fn)


async def test_a_workflow_that_only_passes_its_parameters_is_built_once_per_kind() -> None:
    CALLS.clear()
    first = await aflow.run(plain, params={"order": "o-1", "amount": 5})
    assert CALLS == ["plain", "plain"]  # the real build, then the trace
    second = await aflow.run(plain, params={"order": "o-2", "amount": 7})
    third = await aflow.run(plain, params={"amount": 8, "order": "o-3"})  # (any order)
    assert CALLS == ["plain", "plain"]
    assert first == _expected("o-1", 5)
    assert second == _expected("o-2", 7)
    assert third == _expected("o-3", 8)
    # another type for a parameter is another kind: built (and traced) again
    await aflow.run(plain, params={"order": "o-4", "amount": 2.5})
    assert CALLS == ["plain"] * 4


async def test_every_entry_point_fills_the_same_template() -> None:
    plain = aflow.workflow(_plain_fn)  # (a workflow of its own: no template yet)
    CALLS.clear()
    async with aflow.Runtime() as rt:
        assert await rt.run(plain, order="a", amount=1) == _expected("a", 1)
        run = await rt.submit(plain, order="b", amount=2)
        assert await run.result() == _expected("b", 2)
    assert await aflow.run(plain, params={"order": "c", "amount": 3}) == _expected("c", 3)
    assert CALLS == ["plain", "plain"]


@aflow.workflow
def by_value(amount: int) -> aflow.Canvas[Any]:
    CALLS.append("by_value")
    if amount > 100:  # a marker refuses to be compared: this one is built every time
        return add.s(amount, 1000)
    return add.s(amount, 1)


async def test_a_workflow_that_looks_at_a_value_is_built_every_time() -> None:
    CALLS.clear()
    assert await aflow.run(by_value, params={"amount": 5}) == 6
    assert await aflow.run(by_value, params={"amount": 500}) == 1500
    assert await aflow.run(by_value, params={"amount": 7}) == 8
    assert CALLS == ["by_value"] * 4  # (the trace once, refused: then every real build)


@aflow.workflow
def by_identity(note: str | None) -> aflow.Canvas[Any]:
    if note is None:  # no marker can refuse `is`: the check against the real build catches it
        return add.s(1, 1)
    return echo.s(note)


async def test_a_branch_no_marker_can_refuse_is_caught_by_the_check() -> None:
    assert await aflow.run(by_identity, params={"note": None}) == 2
    assert await aflow.run(by_identity, params={"note": "x"}) == [("x",), {}]
    assert await aflow.run(by_identity, params={"note": None}) == 2
    assert await aflow.run(by_identity, params={"note": "y"}) == [("y",), {}]


@aflow.workflow
def by_type(value: Any) -> aflow.Canvas[Any]:
    if isinstance(value, list):
        return aflow.group(double.si(2), double.si(3))
    return double.s(value)


async def test_a_branch_on_a_type_gets_a_template_per_type() -> None:
    assert await aflow.run(by_type, params={"value": 4}) == 8
    assert await aflow.run(by_type, params={"value": [1]}) == [4, 6]
    assert await aflow.run(by_type, params={"value": 5}) == 10
    assert await aflow.run(by_type, params={"value": "ab"}) == "abab"


@dataclasses.dataclass
class Order:
    id: str


@aflow.workflow
def nested(order_id: str, items: list[str]) -> aflow.Canvas[Any]:
    CALLS.append("nested")
    return echo.s([order_id], order=Order(order_id), items=items)


async def test_a_parameter_inside_another_argument_is_never_a_marker_to_a_task() -> None:
    CALLS.clear()
    for n in range(3):
        value = await aflow.run(nested, params={"order_id": f"o{n}", "items": [f"i{n}"]})
        assert value == [([f"o{n}"],), {"order": Order(f"o{n}"), "items": [f"i{n}"]}]
    assert CALLS == ["nested"] * 4


@aflow.workflow
def named(order_id: str) -> aflow.Canvas[Any]:
    CALLS.append("named")
    return echo.s(order_id).set(name=f"charge-{order_id}")


async def test_a_parameter_in_a_name_is_built_every_time() -> None:
    CALLS.clear()
    for n in range(3):
        assert await aflow.run(named, params={"order_id": f"o{n}"}) == [(f"o{n}",), {}]
        graph = named.build({"order_id": f"o{n}"})
        assert [node.key for node in graph.nodes] == [f"charge-o{n}"]
    assert CALLS == ["named"] * 7


class Loud:
    """An argument whose == cannot answer (as a numpy array's)."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("ambiguous")

    __hash__ = object.__hash__


@aflow.workflow
def loud(thing: Any) -> aflow.Canvas[Any]:
    return echo.s(thing)


async def test_an_argument_whose_equality_raises_is_still_passed() -> None:
    a, b = Loud(), Loud()
    assert (await aflow.run(loud, params={"thing": a}))[0][0] is a
    assert (await aflow.run(loud, params={"thing": b}))[0][0] is b


@aflow.workflow(reuse_graph=False)
def fresh(order_id: str) -> aflow.Canvas[Any]:
    CALLS.append("fresh")
    return echo.s(order_id)


async def test_reuse_graph_false_builds_every_time() -> None:
    CALLS.clear()
    for n in range(3):
        assert await aflow.run(fresh, params={"order_id": n}) == [(n,), {}]
    assert CALLS == ["fresh"] * 3


class Step(aflow.Task):
    async def execute(self, x: int) -> int:
        return x + 1


@aflow.workflow
def flow_workflow(start: int) -> Any:
    CALLS.append("flow")
    return lf.Flow("f").add(Step(provides="y", inject={"x": start}))


async def test_a_workflow_that_is_no_canvas_is_built_as_before() -> None:
    CALLS.clear()
    assert (await aflow.run(flow_workflow, params={"start": 1}))["y"] == 2
    assert (await aflow.run(flow_workflow, params={"start": 5}))["y"] == 6
    assert CALLS == ["flow"] * 3  # (the trace once: no canvas, so nothing kept)


async def test_wrong_parameters_raise_as_before_after_a_template_exists() -> None:
    await aflow.run(plain, params={"order": "o", "amount": 1})
    with pytest.raises(SignatureError, match="amount"):
        await aflow.run(plain, params={"order": "o"})
    with pytest.raises(SignatureError, match="colour"):
        await aflow.run(plain, params={"order": "o", "amount": 1, "colour": "red"})


def _workflow_of(tree: Any) -> Any:
    """A workflow whose leaves take a parameter each (k=, or a positional argument)."""
    count = [0]

    def build(node: Any, params: dict[str, Any]) -> aflow.Canvas[Any]:
        if isinstance(node, Leaf):
            name = f"p{count[0]}"
            count[0] += 1
            make = leaf.si if node.immutable else leaf.s
            if node.k % 2:
                return make(params[name], k=node.k, pause=node.pause)
            return make(k=params[name], pause=node.pause)
        if isinstance(node, Chain):
            return aflow.chain(*(build(s, params) for s in node.steps))
        if isinstance(node, Group):
            return aflow.group(build(m, params) for m in node.members)
        assert isinstance(node, Chord)
        return aflow.chord([build(m, params) for m in node.header], build(node.body, params))

    def fn(**params: Any) -> aflow.Canvas[Any]:
        count[0] = 0
        return build(tree, params)

    fn.__qualname__ = fn.__name__ = "tree_workflow"
    return aflow.workflow(fn)


def _leaves(tree: Any) -> int:
    if isinstance(tree, Leaf):
        return 1
    if isinstance(tree, Chain):
        return sum(map(_leaves, tree.steps))
    if isinstance(tree, Group):
        return sum(map(_leaves, tree.members))
    return sum(map(_leaves, tree.header)) + _leaves(tree.body)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(max_leaves=12), values=st.lists(st.integers(-5, 5), min_size=24, max_size=24))
def test_a_filled_template_is_the_graph_a_fresh_build_gives(tree: Any, values: list[int]) -> None:
    """Random canvases whose leaves take parameters, positionally or by keyword: after the
    first build, every build is the graph compiling the function's canvas gives."""
    wf = _workflow_of(tree)
    n = _leaves(tree)
    first = {f"p{i}": i for i in range(n)}
    wf.build(first)
    (kept,) = wf._templates._by_key.values()
    assert kept is not _UNTRACEABLE  # (every canvas shape is traced: the fill is tested)
    for shift in (0, 7):
        params = {f"p{i}": values[i] + shift for i in range(n)}
        filled = wf.build(params)
        fresh = compile_graph(wf.fn(**params))
        assert filled.output == fresh.output
        assert [tuple(node) for node in filled.nodes] == [tuple(node) for node in fresh.nodes]
