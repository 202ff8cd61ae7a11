"""Hypothesis invariants over random nested flows: order, and reverts after a failure."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aflow
from aflow import engines
from aflow.patterns import graph_flow as gf
from aflow.patterns import linear_flow as lf
from aflow.patterns import unordered_flow as uf

# A tree is ("task",) or (kind, [children], [(i, j) links between children, i < j]).
Tree = tuple[Any, ...]


@st.composite
def flow_trees(draw: st.DrawFn, depth: int = 3) -> Tree:
    if depth == 0 or draw(st.booleans()):
        return ("task",)
    kind = draw(st.sampled_from(["linear", "unordered", "graph"]))
    children = draw(st.lists(flow_trees(depth=depth - 1), min_size=1, max_size=4))
    links: list[tuple[int, int]] = []
    if kind == "graph" and len(children) > 1:
        pairs = [(i, j) for i in range(len(children)) for j in range(i + 1, len(children))]
        links = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs)))
    return (kind, children, links)


class Boom(Exception):
    pass


@dataclass
class Built:
    log: list[tuple[str, str]] = field(default_factory=list)
    count: int = 0
    #: (before, after): every task of ``before`` ends before any task of ``after`` starts
    constraints: list[tuple[list[str], list[str]]] = field(default_factory=list)


def build(tree: Tree, built: Built, fail_at: int | None) -> tuple[Any, list[str]]:
    """The flow for ``tree`` and the names of its tasks."""
    if tree[0] == "task":
        name = f"t{built.count}"
        built.count += 1
        log = built.log
        fails = fail_at == built.count - 1

        class Step(aflow.Task):
            async def execute(self) -> str:
                log.append(("start", self.name))
                await anyio.lowlevel.checkpoint()
                if fails:
                    raise Boom(self.name)
                log.append(("end", self.name))
                return self.name

            async def revert(self, result: Any) -> None:
                log.append(("revert", self.name))

        return Step(name=name), [name]
    kind, children, links = tree
    cls = {"linear": lf.Flow, "unordered": uf.Flow, "graph": gf.Flow}[kind]
    flow = cls(f"f{built.count}_{id(tree)}")
    parts = [build(child, built, fail_at) for child in children]
    flow.add(*(item for item, _ in parts))
    if kind == "linear":
        for (_, a), (_, b) in itertools.pairwise(parts):
            built.constraints.append((a, b))
    for i, j in links:
        flow.link(parts[i][0], parts[j][0])
        built.constraints.append((parts[i][1], parts[j][1]))
    return flow, [name for _, names in parts for name in names]


def positions(log: list[tuple[str, str]], event: str) -> dict[str, int]:
    return {name: i for i, (what, name) in enumerate(log) if what == event}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=flow_trees(),
    workers=st.one_of(st.none(), st.integers(min_value=1, max_value=3)),
    data=st.data(),
)
async def test_flows_keep_their_order_and_revert_exactly_what_ran(
    tree: Tree, workers: int | None, data: st.DataObject
) -> None:
    probe = Built()
    build(tree, probe, None)
    fail_at = data.draw(st.one_of(st.none(), st.integers(0, probe.count - 1)), label="fail_at")
    built = Built()
    flow, names = build(tree, built, fail_at)
    if not isinstance(flow, lf.Flow | uf.Flow | gf.Flow):
        flow = lf.Flow("root").add(flow)
    engine = engines.load(flow, engine="parallel", max_workers=workers)
    if fail_at is None:
        await engine.run()
        assert engine.state is aflow.RunStatus.SUCCEEDED
        assert sorted(positions(built.log, "end")) == sorted(names)
    else:
        with pytest.raises(Boom):
            await engine.run()
        assert engine.state is aflow.RunStatus.REVERTED
    log = built.log
    starts, ends, reverts = (positions(log, e) for e in ("start", "end", "revert"))
    assert len(starts) == sum(1 for what, _ in log if what == "start")  # nothing ran twice
    for before, after in built.constraints:
        for b in after:
            if b in starts:
                assert all(a in ends and ends[a] < starts[b] for a in before), (before, b)
    if fail_at is not None:
        assert set(reverts) == set(starts)  # what started is reverted, each exactly once
        assert sum(1 for what, _ in log if what == "revert") == len(reverts)
        for before, after in built.constraints:  # consumers are reverted before producers
            for a in before:
                for b in after:
                    if a in reverts and b in reverts:
                        assert reverts[b] < reverts[a], (a, b)
