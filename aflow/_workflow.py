"""``@aflow.workflow``: builders that any process can call again to rebuild the same graph."""

from __future__ import annotations

import functools
import hashlib
import importlib
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, final

from ._exceptions import DefinitionError
from ._graph import Graph, compile

__all__ = ["Workflow", "fingerprint", "resolve_workflow", "workflow"]

P = ParamSpec("P")
R = TypeVar("R")


@final
class Workflow(Generic[P, R]):
    """A function that builds a workflow (canvas, flow or ops) from JSON-friendly parameters.

    It is known by its import path (``package.module:function``), which a
    durable store records with the parameters, so that any process can
    rebuild the same graph to resume a run. Calling it builds the workflow.
    """

    def __init__(self, fn: Callable[P, R]) -> None:
        if not callable(fn):
            raise TypeError(f"@aflow.workflow expects a function, got {fn!r}")
        self.fn = fn
        self.path = f"{fn.__module__}:{fn.__qualname__}"
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<aflow workflow {self.path}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        built = self.fn(*args, **kwargs)
        # an ops.Workflow remembers what built it, so its submit() can run it durably
        remember = getattr(built, "_remember_origin", None)
        if remember is not None:
            remember(self, args, kwargs)
        return built

    def build(self, params: dict[str, Any]) -> Graph:
        """The graph for these parameters."""
        return compile(self.fn(**params))  # type: ignore[call-arg]

    @property
    def rebuildable(self) -> str | None:
        """Why another process could not import it, or ``None`` if it can."""
        if self.fn.__module__ == "__main__":
            return f"{self.fn.__qualname__} is defined in __main__; move it into a module"
        if "<locals>" in self.fn.__qualname__:
            return f"{self.fn.__qualname__} is defined inside a function; define it at module level"
        return None


def workflow(fn: Callable[P, R]) -> Workflow[P, R]:
    """Mark a function that builds a workflow, so durable runs can rebuild it.

    Example::

        @aflow.workflow
        def order_saga(order_id: str):
            return charge.s(order_id) | reserve.s() | ship.s()

        run = await rt.submit(order_saga, order_id="o-42")
    """
    return Workflow(fn)


def resolve_workflow(path: str) -> Workflow[..., Any]:
    """The workflow registered under ``package.module:function`` (importing the module)."""
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise DefinitionError(f"a workflow path looks like 'package.module:function', got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise DefinitionError(f"cannot import the module of workflow {path!r}: {exc}") from exc
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise DefinitionError(f"no workflow {qualname!r} in module {module_name!r}")
    if not isinstance(obj, Workflow):
        raise DefinitionError(f"{path!r} is not marked @aflow.workflow")
    return obj


def fingerprint(graph: Graph) -> str:
    """A hash of the graph's shape: node keys, kinds, tasks and edges (not argument values)."""
    digest = hashlib.sha256()
    for node in graph.nodes:
        task = node.task
        name = f"{getattr(task.fn, '__module__', '')}.{task.name}" if task is not None else ""
        digest.update(f"{node.key}|{node.kind.value}|{name}|{node.parents}|{node.input}\n".encode())
    return digest.hexdigest()[:32]
