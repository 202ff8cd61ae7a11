"""Hypothesis invariants over random nested canvases, on asyncio and on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aflow
from aflow.testing import inject_failure

from .strategies import REVERTED, Injected, count_leaves, evaluate, to_canvas, to_saga, trees

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


def consumers_of(graph: aflow.Graph) -> dict[int, set[int]]:
    """Task node -> the task nodes that consume its output (looking through joins)."""
    out: dict[int, set[int]] = {n.index: set() for n in graph}
    for node in graph:
        if node.kind is not aflow.NodeKind.JOIN:
            for p in producers(graph, node.index):
                out[p].add(node.index)
    return out


@pytest.mark.parametrize("loop", list(LOOPS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=trees(max_leaves=20),
    data=st.data(),
    limit=st.one_of(st.none(), st.integers(min_value=1, max_value=3)),
)
def test_random_failures_unwind_exactly_once_in_reverse_dependency_order(
    loop: str, tree: Any, data: st.DataObject, limit: int | None
) -> None:
    leaves = count_leaves(tree)
    numbers = st.integers(min_value=0, max_value=max(0, leaves - 1))
    failing = frozenset(data.draw(st.sets(numbers, max_size=3)) if leaves else ())
    cancel_at = data.draw(st.one_of(st.none(), numbers)) if leaves else None
    canvas = to_saga(tree, failing)
    graph = aflow.compile(canvas)
    key_of = {n.kwargs["k"]: n.key for n in graph if n.kind is not aflow.NodeKind.JOIN}
    k_of = {key: k for k, key in key_of.items()}
    index_of = {n.key: n.index for n in graph}
    consumers = consumers_of(graph)

    started: set[int] = set()
    succeeded: set[int] = set()
    reverts_done: set[int] = set()
    running = {"forward": 0, "revert": 0}
    peaks = {"forward": 0, "revert": 0}
    violations: list[str] = []

    def listen(event: aflow.Event) -> None:
        if event.node is None:
            return
        i = index_of[event.node]
        name = event.name
        if name == "task_started":
            missing = producers(graph, i) - succeeded
            if missing:
                violations.append(f"{event.node} started before its inputs {sorted(missing)}")
            started.add(i)
            running["forward"] += 1
            peaks["forward"] = max(peaks["forward"], running["forward"])
        elif name in ("task_succeeded", "task_failed", "task_cancelled"):
            running["forward"] -= 1
            if name == "task_succeeded":
                succeeded.add(i)
        elif name == "revert_started":
            early = {c for c in consumers[i] if c in started} - reverts_done
            if early:
                violations.append(f"revert of {event.node} before its consumers' {sorted(early)}")
            running["revert"] += 1
            peaks["revert"] = max(peaks["revert"], running["revert"])
        elif name in ("revert_succeeded", "revert_failed"):
            running["revert"] -= 1
            reverts_done.add(i)

    async def scenario() -> tuple[BaseException | None, int, int]:
        REVERTED.clear()
        error: BaseException | None = None
        with contextlib.ExitStack() as stack:
            plan = None
            if cancel_at is not None:
                plan = stack.enter_context(inject_failure(key_of[cancel_at], cancel=True))
            try:
                await aflow.run(canvas, max_concurrency=limit, on_event=listen)
            except Exception as exc:
                error = exc
        alive = len(asyncio.all_tasks()) - 1  # this task
        return error, (plan.hits if plan else 0), alive

    error, cancel_hits, alive = run_on(loop, scenario())

    assert violations == []
    assert alive == 0
    if limit is not None:
        assert peaks["forward"] <= limit
        assert peaks["revert"] <= limit
    started_ks = {k_of[graph.nodes[i].key] for i in started}
    if error is None:
        assert not (failing & started_ks)
        assert cancel_hits == 0
        assert REVERTED == []
        return
    # every started node is reverted, exactly once; nothing else is
    assert sorted(REVERTED) == sorted(started_ks)
    roots = error.exceptions if isinstance(error, aflow.errors.GroupFailed) else (error,)
    for root in roots:
        if isinstance(root, aflow.errors.RunCancelled):
            assert cancel_hits == 1
        else:
            assert isinstance(root, Injected), repr(root)
            k = int(str(root).removeprefix("k="))
            assert k in failing
            assert k in started_ks
