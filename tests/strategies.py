"""Hypothesis strategies: random canvases and a plain recursive reference evaluator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
from hypothesis import strategies as st

import aflow


@aflow.task
async def leaf(*args: Any, k: int, pause: bool = False) -> list[Any]:
    if pause:
        await anyio.lowlevel.checkpoint()
    return [k, *args]


@dataclass(frozen=True)
class Leaf:
    k: int
    immutable: bool
    pause: bool


@dataclass(frozen=True)
class Chain:
    steps: tuple[Any, ...]


@dataclass(frozen=True)
class Group:
    members: tuple[Any, ...]


@dataclass(frozen=True)
class Chord:
    header: tuple[Any, ...]
    body: Any


def to_canvas(tree: Any) -> aflow.Canvas[Any]:
    """The aflow canvas a tree describes."""
    if isinstance(tree, Leaf):
        make = leaf.si if tree.immutable else leaf.s
        return make(k=tree.k, pause=tree.pause)
    if isinstance(tree, Chain):
        return aflow.chain(*(to_canvas(s) for s in tree.steps))
    if isinstance(tree, Group):
        return aflow.group(to_canvas(m) for m in tree.members)
    return aflow.chord([to_canvas(m) for m in tree.header], to_canvas(tree.body))


def evaluate(tree: Any, incoming: Any = None, has_parent: bool = False) -> Any:
    """What a tree's value must be, by the canvas rules, computed by plain recursion."""
    if isinstance(tree, Leaf):
        if tree.immutable or not has_parent:
            return [tree.k]
        return [tree.k, incoming]
    if isinstance(tree, Chain):
        value, parent = incoming, has_parent
        for step in tree.steps:
            if isinstance(step, Group) and not step.members and parent:
                continue  # Celery: an empty group is skipped once the chain has a value
            value, parent = evaluate(step, value, parent), True
        return value
    if isinstance(tree, Group):
        values: list[Any] = []
        for member in tree.members:
            if isinstance(member, Group):
                values.extend(evaluate(member, incoming, has_parent))
            else:
                values.append(evaluate(member, incoming, has_parent))
        return values
    return evaluate(tree.body, evaluate(Group(tree.header), incoming, has_parent), True)


def trees(max_leaves: int = 25) -> st.SearchStrategy[Any]:
    """Random nestings of chains, groups and chords over leaf tasks."""
    counter = st.integers(min_value=0, max_value=99)
    leaves = st.builds(Leaf, counter, st.booleans(), st.booleans())

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.builds(Chain, st.lists(children, min_size=1, max_size=4).map(tuple)),
            st.builds(Group, st.lists(children, min_size=0, max_size=4).map(tuple)),
            st.builds(Chord, st.lists(children, min_size=0, max_size=4).map(tuple), children),
        )

    return st.recursive(leaves, extend, max_leaves=max_leaves)


# --- failure injection ------------------------------------------------------------------


class Injected(Exception):
    """The failure a property test plants at a node."""


#: Reverts seen by the failure properties: ``k`` of each reverted leaf, in order.
REVERTED: list[int] = []


@aflow.task
async def step(*args: Any, k: int, fail: bool = False) -> int:
    await anyio.lowlevel.checkpoint()  # let siblings interleave
    if fail:
        raise Injected(f"k={k}")
    return k


@step.revert
async def undo_step(*args: Any, k: int, fail: bool = False, result: Any) -> None:
    await anyio.lowlevel.checkpoint()
    REVERTED.append(k)


def to_saga(tree: Any, failing: frozenset[int]) -> aflow.Canvas[Any]:
    """The canvas a tree describes, with reverting ``step`` leaves numbered in order.

    Leaf number ``i`` fails when ``i`` is in ``failing``.
    """
    numbers = iter(range(1_000_000))

    def build(node: Any) -> aflow.Canvas[Any]:
        if isinstance(node, Leaf):
            k = next(numbers)
            make = step.si if node.immutable else step.s
            return make(k=k, fail=k in failing)
        if isinstance(node, Chain):
            return aflow.chain(*(build(s) for s in node.steps))
        if isinstance(node, Group):
            return aflow.group(build(m) for m in node.members)
        header = [build(m) for m in node.header]
        return aflow.chord(header, build(node.body))

    return build(tree)


def count_leaves(tree: Any) -> int:
    """How many leaf tasks a tree holds."""
    if isinstance(tree, Leaf):
        return 1
    if isinstance(tree, Chain):
        return sum(count_leaves(s) for s in tree.steps)
    if isinstance(tree, Group):
        return sum(count_leaves(m) for m in tree.members)
    return sum(count_leaves(m) for m in tree.header) + count_leaves(tree.body)
