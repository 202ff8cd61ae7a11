"""Idempotency keys: what a key stands for, and the refusal to reuse one for other work.

A second submit with the same ``idempotency_key`` returns the run the key names
(issue 14), but only for the same work: the same ``@aflow.workflow`` with the
same parameters, or a canvas of the same shape with the same arguments.
Anything else raises :class:`aflow.errors.IdempotencyConflict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._exceptions import IdempotencyConflict
from .._graph import Graph
from .._workflow import WorkflowBuilder, fingerprint

__all__ = ["Identity", "identity", "same_work"]

#: (what the work is, its parameters): ``("pkg.mod:fn", {"order_id": "o-42"})``
Identity = tuple[str, Any]


def identity(workflow: object, params: Mapping[str, Any], graph: Graph) -> Identity:
    """What an idempotency key stands for: a workflow and its parameters (a canvas: its
    graph's shape and every node's arguments)."""
    if isinstance(workflow, WorkflowBuilder):
        return (workflow.path, dict(params))
    arguments = [(node.args, dict(node.kwargs)) for node in graph.nodes]
    return (f"a {type(workflow).__name__} of {len(graph)} nodes", (fingerprint(graph), arguments))


def same_work(run_id: str, key: str, existing: Identity, wanted: Identity) -> None:
    """An idempotency key names run ``run_id``: refuse it for other work (issue 14)."""
    try:
        if existing == wanted:
            return
    except Exception:  # arguments that cannot be compared (an array...) are not the same
        pass

    def text(identity: Identity) -> str:
        what, params = identity
        if not isinstance(params, dict):
            return what
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        return f"{what}({shown[:200]}{'...' if len(shown) > 200 else ''})"

    raise IdempotencyConflict(run_id, key, text(existing), text(wanted))
