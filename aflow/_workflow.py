"""``@aflow.workflow``: builders that any process can call again to rebuild the same graph."""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, final, overload

from ._exceptions import DefinitionError, SerializationError, SignatureError
from ._graph import Graph, NodeKind, compile
from ._workflow_template import Templates

if TYPE_CHECKING:  # (the serializers load with the first durable run: import aflow stays light)
    from ._serialize import Serializer

__all__ = [
    "ShapeNode",
    "WorkflowBuilder",
    "fingerprint",
    "registered_workflow",
    "resolve_workflow",
    "shape_of",
    "shape_text",
    "workflow",
]

P = ParamSpec("P")
R = TypeVar("R", covariant=True)


#: What calls of ``@aflow.workflow`` functions built, while it lives: id -> (a weak
#: reference to it, builder, args, kwargs). A durable runtime given what a call built
#: records that call, so any process can build it again.
_ORIGINS: dict[int, tuple[weakref.ref[Any], WorkflowBuilder[Any, Any], tuple[Any, ...], Any]] = {}
#: The same for the last few built objects that cannot be weakly referenced (kept alive
#: while here, so an id names one object).
_RECENT: OrderedDict[int, tuple[object, WorkflowBuilder[Any, Any], tuple[Any, ...], Any]] = (
    OrderedDict()
)
_RECENT_LIMIT = 16


def _remember(built: object, builder: WorkflowBuilder[Any, Any], args: Any, kwargs: Any) -> None:
    key = id(built)

    def forget(ref: weakref.ref[Any]) -> None:
        found = _ORIGINS.get(key)
        if found is not None and found[0] is ref:
            del _ORIGINS[key]

    try:
        ref = weakref.ref(built, forget)
    except TypeError:  # (a graph, a tuple...)
        _RECENT[key] = (built, builder, args, kwargs)
        if len(_RECENT) > _RECENT_LIMIT:
            _RECENT.popitem(last=False)
        return
    _ORIGINS[key] = (ref, builder, args, kwargs)


def built_by(workflow: object) -> tuple[WorkflowBuilder[Any, Any], tuple[Any, ...], Any] | None:
    """The ``@aflow.workflow`` call that built ``workflow``, if one did (and, for an object
    that cannot be weakly referenced, lately)."""
    key = id(workflow)
    origin = _ORIGINS.get(key)
    if origin is not None and origin[0]() is workflow:
        return origin[1], origin[2], origin[3]
    found = _RECENT.get(key)
    if found is None or found[0] is not workflow:
        return None
    return found[1], found[2], found[3]


@final
class WorkflowBuilder(Generic[P, R]):
    """A function that builds a workflow (canvas, flow or ops) from JSON-friendly parameters:
    what ``@aflow.workflow`` makes of a function.

    It is known by its import path (``package.module:function``), which a
    durable store records with the parameters, so that any process can
    rebuild the same graph to resume a run. Calling it builds the workflow.
    (Not a workflow itself: ``aflow.ops.Workflow`` is one, and a builder may
    return one.)
    """

    def __init__(self, fn: Callable[P, R], *, reuse_graph: bool = True) -> None:
        if not callable(fn):
            raise TypeError(f"@aflow.workflow expects a function, got {fn!r}")
        self.fn = fn
        #: graphs built once per kind of parameters and filled in (see _workflow_template)
        self._templates = Templates() if reuse_graph else None
        self.path = f"{fn.__module__}:{fn.__qualname__}"
        functools.update_wrapper(self, fn)
        _REGISTRY[self.path] = self  # (a module imported again replaces its workflows)

    def __repr__(self) -> str:
        return f"<aflow workflow {self.path}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        built = self.fn(*args, **kwargs)
        # an ops.Workflow remembers what built it, so its submit() can run it durably
        remember = getattr(built, "_remember_origin", None)
        if remember is not None:
            remember(self, args, kwargs)
        # so that a durable runtime given what it built can record this call instead
        _remember(built, self, args, kwargs)
        return built

    def named_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters a call with ``args`` and ``kwargs`` gives, by name (``**kwargs``
        spread out; a ``TypeError`` if some are only positional or collected by ``*args``,
        which :meth:`build` could not pass by name)."""
        signature = inspect.signature(self.fn)
        bound = signature.bind(*args, **kwargs)
        named: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                named.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise TypeError(f"{self.path} collects positional arguments in *{name}")
            elif kind is inspect.Parameter.POSITIONAL_ONLY:
                raise TypeError(f"{self.path} takes {name!r} by position only")
            else:
                named[name] = value
        return named

    def build(self, params: dict[str, Any]) -> Graph:
        """The graph for these parameters (:class:`aflow.errors.SignatureError` naming the
        workflow and the parameter if the function cannot take them)."""
        if self._templates is not None:
            return self._templates.build(self.fn, params, lambda: self._build(params))
        return self._build(params)

    def _build(self, params: dict[str, Any]) -> Graph:
        try:
            built = self.fn(**params)  # type: ignore[call-arg]
        except TypeError as exc:
            self._check(params, exc)
            raise
        return compile(built)

    def _check(self, params: Mapping[str, Any], error: TypeError) -> None:
        """Raise a SignatureError if ``params`` do not fit the function (``error`` came from
        the call); a TypeError raised inside its body is left as it is."""
        try:
            signature = inspect.signature(self.fn)
        except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
            return
        try:
            signature.bind(**params)
        except TypeError as exc:
            reason = str(exc)
            argument = reason.split("'")[1] if "'" in reason else None
            known = ", ".join(signature.parameters) or "none"
            raise SignatureError(
                self.path, f"{reason} (its parameters: {known})", argument, subject="workflow"
            ) from error

    def dump_params(self, params: Mapping[str, Any], serializer: Serializer) -> str:
        """The stored form of ``params``; :class:`aflow.errors.SerializationError` names this
        workflow and the parameter that cannot be stored."""
        try:
            return serializer.dumps(dict(params), task=self.path)
        except SerializationError:
            pass
        for name, value in params.items():  # find the culprit, and say where in it
            try:
                serializer.dumps(value, task=self.path)
            except SerializationError as exc:
                where = exc.path.replace("result", f"parameter {name!r}", 1)
                raise SerializationError(
                    self.path, exc.type, where, exc.detail, subject="workflow"
                ) from exc
        raise SerializationError(self.path, type(params), "its parameters", subject="workflow")

    @property
    def rebuildable(self) -> str | None:
        """Why another process could not import it, or ``None`` if it can."""
        if self.fn.__module__ == "__main__":
            return f"{self.fn.__qualname__} is defined in __main__; move it into a module"
        if "<locals>" in self.fn.__qualname__:
            return f"{self.fn.__qualname__} is defined inside a function; define it at module level"
        return None


@overload
def workflow(fn: Callable[P, R], /) -> WorkflowBuilder[P, R]: ...
@overload
def workflow(*, reuse_graph: bool = True) -> Callable[[Callable[P, R]], WorkflowBuilder[P, R]]: ...
def workflow(
    fn: Callable[P, R] | None = None, /, *, reuse_graph: bool = True
) -> WorkflowBuilder[P, R] | Callable[[Callable[P, R]], WorkflowBuilder[P, R]]:
    """Mark a function that builds a workflow, so durable runs can rebuild it.

    Its graph must follow from its parameters alone (another process rebuilds it
    from them). Run by ``rt.run(wf, ...)``, ``rt.submit`` or ``aflow.run(wf,
    params=...)``, a canvas workflow that only passes its parameters into
    signatures is built and compiled once per kind of parameters and filled in
    with each call's values; ``reuse_graph=False`` calls the function every time.

    Example::

        @aflow.workflow
        def order_saga(order_id: str):
            return charge.s(order_id) | reserve.s() | ship.s()

        run = await rt.submit(order_saga, order_id="o-42")
    """
    if fn is None:
        return lambda fn: WorkflowBuilder(fn, reuse_graph=reuse_graph)
    return WorkflowBuilder(fn, reuse_graph=reuse_graph)


#: Every ``@aflow.workflow`` this process defined, by path. A stored run is resumed only
#: through this: a module a store row names is never imported because it says so.
_REGISTRY: dict[str, WorkflowBuilder[..., Any]] = {}

_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


def _split(path: str) -> tuple[str, str]:
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        raise DefinitionError(f"a workflow path looks like 'package.module:function', got {path!r}")
    module_name, _, qualname = path.partition(":")
    return module_name, qualname


def resolve_workflow(path: str) -> WorkflowBuilder[..., Any]:
    """The workflow at ``package.module:function``, importing its module.

    Only for a path someone trusted gave (the ``aflow run`` command line, an
    application's own code); a path read from a store goes through
    :func:`registered_workflow`, which imports nothing a row names.
    """
    module_name, qualname = _split(path)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise DefinitionError(f"cannot import the module of workflow {path!r}: {exc}") from exc
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise DefinitionError(f"no workflow {qualname!r} in module {module_name!r}")
    if not isinstance(obj, WorkflowBuilder):
        raise DefinitionError(f"{path!r} is not marked @aflow.workflow")
    return obj


def registered_workflow(path: str, modules: Collection[str] = ()) -> WorkflowBuilder[..., Any]:
    """The workflow a stored run names, among those this process registered.

    The process registers a workflow by importing the module that defines it
    (the application's own imports), or by allowing its module explicitly in
    ``modules`` (``Runtime(workflows=["pkg.mod"])``, ``aflow --allow-module``),
    which is then imported here. A row naming anything else imports nothing
    and raises :class:`aflow.errors.DefinitionError` saying how to allow it.
    """
    found = _REGISTRY.get(path) if isinstance(path, str) else None
    if found is not None:
        return found
    module_name, _ = _split(path)
    if module_name in modules:
        try:
            importlib.import_module(module_name)
        except ImportError as exc:
            raise DefinitionError(f"cannot import the module of workflow {path!r}: {exc}") from exc
        found = _REGISTRY.get(path)
        if found is not None:
            return found
        raise DefinitionError(f"module {module_name!r} defines no @aflow.workflow {path!r}")
    raise DefinitionError(
        f"workflow {path!r} is not registered in this process, and aflow imports no module "
        f"a stored run names: import {module_name!r} in the application first, or allow it "
        f"(Runtime(workflows=[{module_name!r}]), aflow --allow-module {module_name})"
    )


def fingerprint(graph: Graph) -> str:
    """A hash of the graph's shape: node keys, kinds, tasks and edges (not argument values)."""
    import hashlib  # (with the first durable run: import aflow stays light)

    digest = hashlib.sha256()
    for node in graph.nodes:
        task = node.task
        name = f"{getattr(task.fn, '__module__', '')}.{task.name}" if task is not None else ""
        digest.update(f"{node.key}|{node.kind.value}|{name}|{node.parents}|{node.input}\n".encode())
    return digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ShapeNode:
    """One step of a run's graph as the dashboard draws it: its key, its task's name, what
    kind of node it is, and the steps it waits for (joins are looked through)."""

    key: str
    task: str
    kind: str
    parents: tuple[str, ...]


def shape_of(graph: Graph) -> list[ShapeNode]:
    """The steps of a graph, each with the steps it waits for; a join (a group's value)
    is not a step: a node after it waits for what it joins."""
    nodes = graph.nodes
    through: dict[int, tuple[str, ...]] = {}

    def parents_of(index: int) -> tuple[str, ...]:
        found: list[str] = []
        for parent in nodes[index].parents:
            node = nodes[parent]
            if node.kind is NodeKind.JOIN:
                if parent not in through:
                    through[parent] = parents_of(parent)
                found.extend(through[parent])
            else:
                found.append(node.key)
        return tuple(dict.fromkeys(found))

    return [
        ShapeNode(node.key, node.name, node.kind.value, parents_of(node.index))
        for node in nodes
        if node.kind is not NodeKind.JOIN
    ]


def shape_text(graph: Graph) -> str:
    """A graph's shape as a store keeps it, with its fingerprint (JSON:
    ``[[key, task, kind, [parent, ...]], ...]``; see ``aflow._feed.shape_of_text``)."""
    import json

    return json.dumps(
        [[n.key, n.task, n.kind, list(n.parents)] for n in shape_of(graph)],
        separators=(",", ":"),
    )
