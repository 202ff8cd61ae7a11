"""The graph IR: compile, validation, queries, drawing, and linear building."""

from __future__ import annotations

import pickle

import pytest

import aflow
import aflow.patterns
from aflow import Graph, NodeKind
from aflow._graph import Node
from aflow.errors import AflowInternalError


@aflow.task
async def add(x: int, y: int) -> int:
    return x + y


@aflow.task
async def tsum(xs: list[int]) -> int:
    return sum(xs)


@aflow.task
async def log_error(exc: BaseException) -> None:
    pass


def test_compile_a_chord() -> None:
    graph = aflow.compile(aflow.chord([add.s(1, 1), add.s(2, 2)], tsum.s()))
    assert [n.key for n in graph] == ["add", "add#2", "join", "tsum"]
    assert graph.node("join").kind is NodeKind.JOIN
    assert graph.node("tsum").parents == (2,)
    assert graph.node("tsum").input == 2
    assert graph.children(0) == (2,)
    assert list(graph.edges()) == [(0, 2), (1, 2), (2, 3)]
    assert graph.output == 3
    assert graph.topological_order() == [0, 1, 2, 3]
    assert repr(graph) == "<Graph [4 nodes, 3 edges]>"


def test_compile_is_idempotent_on_graphs() -> None:
    graph = aflow.compile(add.s(1, 1))
    assert aflow.compile(graph) is graph


def test_graph_and_nodes_are_immutable() -> None:
    graph = aflow.compile(add.s(1, 1) | add.s(2))
    assert isinstance(graph.nodes, tuple)
    with pytest.raises(AttributeError):
        graph.nodes[0].key = "other"  # type: ignore[misc]


def test_options_resolve_per_node_with_signature_winning() -> None:
    @aflow.task(retries=1, timeout=5)
    async def t(x: int) -> int:
        return x

    graph = aflow.compile(aflow.group(t.s(1), t.s(2).set(timeout=1)).set(retries=3, limit="db"))
    first, second = graph.nodes[0].options, graph.nodes[1].options
    assert (first.retries, first.timeout, first.limits) == (3, 5, ("db",))
    assert (second.retries, second.timeout, second.limits) == (3, 1, ("db",))


def test_limits_add_up_across_levels() -> None:
    @aflow.task(limit="db")
    async def q(x: int) -> int:
        return x

    graph = aflow.compile(aflow.group(q.s(1), q.s(2).set(limit="db")).set(limit="api"))
    assert graph.nodes[0].options.limits == ("db", "api")
    assert graph.nodes[1].options.limits == ("db", "api")


def test_an_empty_error_scope_draws_no_edge() -> None:
    graph = aflow.compile(aflow.group().link_error(log_error.s()))
    assert "on error" not in graph.to_mermaid()
    assert "n-1" not in graph.to_dot()


def test_name_option_sets_the_node_key() -> None:
    graph = aflow.compile(add.s(1, 1).set(name="charge") | add.s(1).set(name="charge"))
    assert [n.key for n in graph] == ["charge", "charge#2"]


def test_cycle_is_named() -> None:
    nodes = [
        Node(0, "a", NodeKind.TASK, add, parents=(2,)),
        Node(1, "b", NodeKind.TASK, add, parents=(0,)),
        Node(2, "c", NodeKind.TASK, add, parents=(1,)),
        Node(3, "d", NodeKind.TASK, add, parents=()),
    ]
    with pytest.raises(aflow.errors.CycleError) as info:
        Graph(nodes, output=3)
    cycle = info.value.cycle
    assert sorted(cycle) == ["a", "b", "c"]
    assert str(info.value).startswith("cycle: ")
    assert str(info.value).count("->") == 3
    assert isinstance(info.value, ValueError)


def test_out_of_order_acyclic_graph_is_accepted() -> None:
    nodes = [
        Node(0, "late", NodeKind.TASK, add, parents=(1,)),
        Node(1, "early", NodeKind.TASK, add, parents=()),
    ]
    graph = Graph(nodes, output=0)
    assert graph.topological_order() == [1, 0]


def test_duplicate_keys_are_rejected() -> None:
    nodes = [Node(0, "a", NodeKind.TASK, add), Node(1, "a", NodeKind.TASK, add)]
    with pytest.raises(aflow.errors.DuplicateTaskError, match="'a'"):
        Graph(nodes, output=1)


def test_to_dot_and_mermaid() -> None:
    wf = aflow.chord([add.s(1, 1), add.s(2, 2)], tsum.s()).link_error(log_error.s())
    graph = aflow.compile(wf)
    dot = graph.to_dot()
    assert dot.startswith('digraph "workflow" {')
    assert 'n0 [label="add", shape=box];' in dot
    assert 'n2 [label="join", shape=point];' in dot
    assert "n0 -> n2;" in dot
    assert 'n3 -> n4 [style=dashed, color=red, label="on error"];' in dot
    mermaid = graph.to_mermaid()
    assert mermaid.splitlines()[0] == "flowchart LR"
    assert '  n0["add"]' in mermaid
    assert "  n2 --> n3" in mermaid
    assert "  n3 -. on error .-> n4" in mermaid


def test_labels_are_escaped() -> None:
    graph = aflow.compile(add.s(1, 1).set(name='say "hi"'))
    assert 'label="say \\"hi\\""' in graph.to_dot()
    assert "say #quot;hi#quot;" in graph.to_mermaid()


def test_building_a_long_pipe_chain_is_linear() -> None:
    """Celery's ``|`` copies the chain each time: 2,000 steps take 15 s there.

    200,000 steps through ``|`` would be ~2e10 element copies if quadratic
    (minutes, past the test timeout); linear it is well under a second.
    """
    wf: aflow.Canvas[int] = add.s(0, 0)
    step = add.s(1)
    for _ in range(200_000):
        wf = wf | step
    assert isinstance(wf, aflow.Chain)
    assert len(wf.tasks) == 200_001
    assert len(aflow.compile(wf)) == 200_001


def test_exceptions_survive_pickle() -> None:
    errors: list[Exception] = [
        aflow.errors.CycleError(["a", "b"]),
        aflow.errors.DuplicateTaskError("a"),
        aflow.errors.SignatureError("add", "too many arguments", "y"),
        aflow.errors.RunError("r1", "went wrong"),
        aflow.errors.RunNotFinished("r1"),
        aflow.errors.RunCancelled("r1"),
        AflowInternalError("bug"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.__dict__ == error.__dict__
