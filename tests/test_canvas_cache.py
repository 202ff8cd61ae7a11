"""Canvases compiled once per shape (issue 16): a cached graph is the graph compiling
would have made, with the arguments of the canvas at hand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aflow
from aflow import _canvas_cache
from aflow.errors import SignatureError

from .strategies import Chain, Chord, Group, Leaf, evaluate, leaf, trees


def uncached(canvas: aflow.Canvas[Any]) -> aflow.Graph:
    return canvas._compile_uncached()


def same_graph(a: aflow.Graph, b: aflow.Graph) -> bool:
    """Node by node, field by field (nodes compare by identity)."""
    return (
        a.output == b.output
        and a.name == b.name
        and len(a.nodes) == len(b.nodes)
        and all(tuple(x) == tuple(y) for x, y in zip(a.nodes, b.nodes, strict=True))
        and [a.children(i) for i in range(len(a))] == [b.children(i) for i in range(len(b))]
    )


def numbered(tree: Any, offset: int) -> aflow.Canvas[Any]:
    """The canvas of ``tree`` with ``offset`` added to every leaf's number."""
    if isinstance(tree, Leaf):
        make = leaf.si if tree.immutable else leaf.s
        return make(k=tree.k + offset, pause=tree.pause)
    if isinstance(tree, Chain):
        return aflow.chain(*(numbered(s, offset) for s in tree.steps))
    if isinstance(tree, Group):
        return aflow.group(numbered(m, offset) for m in tree.members)
    return aflow.chord([numbered(m, offset) for m in tree.header], numbered(tree.body, offset))


def shifted(tree: Any, offset: int) -> Any:
    if isinstance(tree, Leaf):
        return Leaf(tree.k + offset, tree.immutable, tree.pause)
    if isinstance(tree, Chain):
        return Chain(tuple(shifted(s, offset) for s in tree.steps))
    if isinstance(tree, Group):
        return Group(tuple(shifted(m, offset) for m in tree.members))
    return Chord(tuple(shifted(m, offset) for m in tree.header), shifted(tree.body, offset))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(), offsets=st.lists(st.integers(0, 1000), min_size=2, max_size=4))
def test_a_shape_compiled_again_is_what_compiling_makes(tree: Any, offsets: list[int]) -> None:
    for offset in offsets:
        canvas = numbered(tree, offset)
        try:
            expected = uncached(canvas)
        except SignatureError:  # (an empty chain in the tree: refused, cached or not)
            with pytest.raises(SignatureError):
                aflow.compile(canvas)
            continue
        assert same_graph(aflow.compile(canvas), expected)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(max_leaves=12), offsets=st.lists(st.integers(0, 1000), min_size=2, max_size=3))
async def test_runs_of_one_shape_get_their_own_arguments(tree: Any, offsets: list[int]) -> None:
    for offset in offsets:
        canvas = numbered(tree, offset)
        try:
            aflow.compile(canvas)
        except SignatureError:
            continue
        assert await aflow.run(canvas) == evaluate(shifted(tree, offset))


@aflow.task
async def add(x: int, y: int = 0, *, z: int = 0) -> int:
    return x + y + z


@aflow.task
async def collect(values: list[int], *, bonus: int = 0) -> int:
    return sum(values) + bonus


@aflow.task
async def record(error: BaseException, tag: str) -> None:
    SEEN.append(tag)


SEEN: list[str] = []


@aflow.task
async def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


async def test_positional_keyword_and_partial_arguments_each_reach_their_node() -> None:
    for n in range(3):
        canvas = (
            add.s(n, n)
            | aflow.group(add.s(10 * n), add.s(z=100 * n), add.si(1, y=n))
            | collect.s(bonus=n)
        )
        graph = aflow.compile(canvas)
        assert same_graph(graph, uncached(canvas))
        expected = (2 * n + 10 * n) + (2 * n + 100 * n) + (1 + n) + n
        assert await aflow.run(canvas) == expected
        # a chain given partial arguments: they reach its first step
        partial = (add.s() | add.s(n)).clone((5 + n,))
        assert same_graph(aflow.compile(partial), uncached(partial))
        assert await aflow.run(partial) == 5 + 2 * n


async def test_callbacks_and_error_callbacks_take_their_own_arguments() -> None:
    SEEN.clear()
    for tag in ("first", "second"):
        canvas = boom.s(1).link_error(record.s(tag)).link(add.s(tag == "first"))
        assert same_graph(aflow.compile(canvas), uncached(canvas))
        with pytest.raises(ValueError, match="boom 1"):
            await aflow.run(canvas)
    assert SEEN == ["first", "second"]


async def test_options_are_part_of_the_shape() -> None:
    plain = aflow.compile(add.s(1))
    named = aflow.compile(add.s(1).set(name="other"))
    assert plain.nodes[0].key == "add"
    assert named.nodes[0].key == "other"
    retried = aflow.compile(add.s(2).set(retries=2))
    assert retried.nodes[0].options.retries == 2
    assert not retried.nodes[0].inline
    # 1 == True: the type of an option's value is part of the shape too
    once = aflow.compile(aflow.group(add.s(1)).set(min_success=1))
    assert same_graph(once, uncached(aflow.group(add.s(1)).set(min_success=1)))


async def test_an_option_that_cannot_be_hashed_compiles_every_time() -> None:
    for n in range(2):
        canvas = add.s(n).set(limit=["api"])
        assert same_graph(aflow.compile(canvas), uncached(canvas))
        assert await aflow.run(canvas, limits={"api": 1}) == n


async def test_maps_are_compiled_every_time() -> None:
    for items in ([1, 2], [1, 2, 3]):
        canvas = add.map(items)
        assert len(aflow.compile(canvas)) == len(uncached(canvas))
        assert await aflow.run(canvas) == items


def test_a_shape_that_does_not_compile_is_refused_every_time() -> None:
    for _ in range(3):
        with pytest.raises(SignatureError, match="add"):
            aflow.compile(add.s(1, 2, 3))


def test_a_renamed_task_gets_its_new_name() -> None:
    @aflow.task
    async def renamed(x: int) -> int:
        return x

    assert aflow.compile(renamed.s(1)).nodes[0].key == "renamed"
    renamed.name = "new_name"
    assert aflow.compile(renamed.s(1)).nodes[0].key == "new_name"


def test_the_cache_is_bounded() -> None:
    tasks = [aflow.task(add.fn, name=f"t{i}") for i in range(_canvas_cache._LIMIT + 10)]
    for task in tasks:
        aflow.compile(task.s(1))
    assert len(_canvas_cache._templates) <= _canvas_cache._LIMIT
    for n, task in enumerate(tasks):
        assert aflow.compile(task.s(n)).nodes[0].args == (n,)


async def test_a_big_canvas_is_compiled_every_time() -> None:
    """Past 64 signatures there is no template (a first compile costs three plain ones,
    and a big graph's shape changes with its size); its graph is what compiling makes."""
    n = _canvas_cache._MAX_SIGNATURES + 1
    small = aflow.chord((add.s(i, 1) for i in range(n - 2)), collect.s())
    big = aflow.chord((add.s(i, 1) for i in range(n - 1)), collect.s())
    _canvas_cache._templates.clear()
    assert same_graph(aflow.compile(big), uncached(big))
    assert same_graph(aflow.compile(big), uncached(big))
    again = aflow.chord((add.s(i, 2) for i in range(n - 1)), collect.s())
    assert await aflow.run(again) == sum(range(2, n + 1))
    assert not _canvas_cache._templates
    aflow.compile(small)  # (one short of the bound: kept)
    assert len(_canvas_cache._templates) == 1


@dataclass
class Unhashable:
    values: list[int]


async def test_arguments_are_not_part_of_the_shape() -> None:
    # unhashable, mutable, equal-but-different-type arguments: each run gets its own
    first = Unhashable([1])
    second = Unhashable([2])

    @aflow.task
    async def echo(value: Any) -> Any:
        return value

    assert await aflow.run(echo.s(first)) is first
    assert await aflow.run(echo.s(second)) is second
    assert await aflow.run(echo.s(True)) is True
    assert await aflow.run(echo.s(1)) == 1
    assert type(await aflow.run(echo.s(1))) is int


def test_compiling_from_threads_with_the_cache_full() -> None:
    """Two threads may evict the same oldest shape at once: neither fails."""
    import random
    import sys
    import threading

    tasks = [aflow.task(add.fn, name=f"threaded{i}") for i in range(40)]
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(1500):  # (a new shape most of the time: the cache stays full)
            sigs = [rng.choice(tasks).s(*range(rng.randint(1, 2))) for _ in range(3)]
            try:
                aflow.compile(aflow.group(*sigs))
            except Exception as exc:
                errors.append(repr(exc))
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
