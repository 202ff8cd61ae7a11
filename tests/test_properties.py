"""Hypothesis invariants over random nested canvases, on asyncio and on uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aflow

from .strategies import evaluate, to_canvas, trees

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def run_on(loop: str, coro: Any) -> Any:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(coro)


def producers(graph: aflow.Graph, index: int) -> set[int]:
    """The task nodes a node waits for, looking through join nodes."""
    found: set[int] = set()
    stack = list(graph.nodes[index].parents)
    while stack:
        p = stack.pop()
        if graph.nodes[p].kind is aflow.NodeKind.JOIN:
            stack.extend(graph.nodes[p].parents)
        else:
            found.add(p)
    return found


@pytest.mark.parametrize("loop", list(LOOPS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(), limit=st.one_of(st.none(), st.integers(min_value=1, max_value=4)))
def test_random_canvas_matches_reference_and_respects_dependencies(
    loop: str, tree: Any, limit: int | None
) -> None:
    canvas = to_canvas(tree)
    graph = aflow.compile(canvas)
    index_of = {node.key: node.index for node in graph}
    finished: set[int] = set()
    running = 0
    peak = 0
    violations: list[str] = []

    def listen(event: aflow.Event) -> None:
        nonlocal running, peak
        if event.node is None:
            return
        i = index_of[event.node]
        if event.name == "task_started":
            running += 1
            peak = max(peak, running)
            missing = producers(graph, i) - finished
            if missing:
                violations.append(f"{event.node} started before {sorted(missing)}")
        elif event.name == "task_succeeded":
            running -= 1
            finished.add(i)

    value = run_on(loop, aflow.run(canvas, max_concurrency=limit, on_event=listen))
    assert value == evaluate(tree)
    assert violations == []
    assert len(finished) == sum(1 for n in graph if n.kind is not aflow.NodeKind.JOIN)
    if limit is not None:
        assert peak <= limit


@given(tree=trees(max_leaves=15))
@settings(max_examples=100, deadline=None)
def test_compiling_is_deterministic(tree: Any) -> None:
    """The same workflow always yields the same node keys and edges (durable runs rely on it)."""
    a, b = aflow.compile(to_canvas(tree)), aflow.compile(to_canvas(tree))
    assert [n.key for n in a] == [n.key for n in b]
    assert list(a.edges()) == list(b.edges())
    assert a.to_dot() == b.to_dot()
