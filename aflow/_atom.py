"""TaskFlow-style tasks: the :class:`Task` base class and the naming rules flows share.

A flow item reads its inputs by *name* and stores its result under names:

* ``requires`` come from ``execute``'s parameters (those with defaults are
  optional), renamed by ``rebind`` and overridden by ``inject``;
* ``provides`` is a name (the whole result), a tuple of names (a returned
  sequence, unpacked) or a set of names (keys picked from a returned dict).

Every check here runs when the task is defined or constructed, never when
it is finally called.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, final

from ._exceptions import ProvidesError, SignatureError
from ._options import DEFAULT_OPTIONS, NodeOptions, check_options, resolve_options
from ._task import FunctionTask, Revert, _check_revert

__all__ = [
    "Params",
    "ProvidesLike",
    "ProvidesSpec",
    "Task",
    "analyse_params",
    "check_result",
    "checked_task",
    "provides_spec",
    "shape_of",
]

#: What ``provides=`` accepts: a name, a tuple of names, a set of names, or nothing.
ProvidesLike = str | tuple[str, ...] | list[str] | set[str] | frozenset[str] | None


@final
@dataclass(frozen=True, slots=True)
class ProvidesSpec:
    """Where each provided name comes from in the result.

    ``selectors[name]`` is ``None`` (the whole result), an ``int`` (an item of a
    returned sequence) or the name itself (a key of a returned dict).
    """

    kind: str  # "none" | "name" | "tuple" | "set"
    names: tuple[str, ...]

    def selector(self, name: str) -> Any:
        """Where ``name`` is in the result: ``None`` (all of it), an index, or a key."""
        if self.kind == "name":
            return None
        if self.kind == "tuple":
            return self.names.index(name)
        return name

    @property
    def selectors(self) -> dict[str, Any]:
        if self.kind == "name":
            return {self.names[0]: None}
        if self.kind == "tuple":
            return {name: i for i, name in enumerate(self.names)}
        return {name: name for name in self.names}


_NO_PROVIDES = ProvidesSpec("none", ())


def provides_spec(owner: str, provides: object) -> ProvidesSpec:
    """Check a ``provides=`` value and describe it."""
    if provides is None:
        return _NO_PROVIDES
    if isinstance(provides, str):
        if not provides:
            raise SignatureError(owner, "a provided name cannot be empty", "provides")
        return ProvidesSpec("name", (provides,))
    if isinstance(provides, tuple | list | set | frozenset):
        names = list(provides)
        bad = [n for n in names if not isinstance(n, str) or not n]
        if bad:
            raise SignatureError(
                owner, f"provided names must be strings, got {bad[0]!r}", "provides"
            )
        if len(set(names)) != len(names):
            raise SignatureError(owner, f"a name is provided twice in {provides!r}", "provides")
        if isinstance(provides, set | frozenset):
            return ProvidesSpec("set", tuple(sorted(names)))
        return ProvidesSpec("tuple", tuple(names))
    raise SignatureError(
        owner,
        f"provides must be a name, a tuple of names or a set of names, got {provides!r}",
        "provides",
    )


def check_result(owner: str, spec: ProvidesSpec, value: Any) -> None:
    """Raise :class:`aflow.errors.ProvidesError` when ``value`` lacks the shape ``spec`` asks."""
    if spec.kind == "tuple":
        try:
            n = len(value)
        except TypeError:
            raise ProvidesError(
                owner, spec.names, f"returned {type(value).__name__}, not a sequence"
            ) from None
        if n != len(spec.names) or isinstance(value, str | bytes | Mapping):
            raise ProvidesError(
                owner, spec.names, f"returned {type(value).__name__} of {n} item(s)"
            )
    elif spec.kind == "set":
        if not isinstance(value, Mapping):
            raise ProvidesError(owner, spec.names, f"returned {type(value).__name__}, not a dict")
        missing = [n for n in spec.names if n not in value]
        if missing:
            raise ProvidesError(owner, spec.names, f"the returned dict lacks {missing}")


def checked_task(task: FunctionTask[..., Any], spec: ProvidesSpec) -> FunctionTask[..., Any]:
    """``task``, or a twin that fails when its result does not have the provided shape.

    A task providing a tuple of names must return a sequence of that length, one
    providing a set of names a dict with those keys: a wrong shape fails the
    task that returned it (not, later, the task that reads it).
    """
    if spec.kind not in ("tuple", "set"):
        return task
    twins: dict[ProvidesSpec, FunctionTask[..., Any]] = task.__dict__.setdefault(
        "_aflow_checked", {}
    )
    found = twins.get(spec)
    if found is not None:
        return found
    fn = task.fn

    def owner(args: tuple[Any, ...]) -> str:
        first = args[0] if args else None
        return first.name if isinstance(first, Task) else task.name

    if task.is_async:

        @functools.wraps(fn)
        async def run_checked(*args: Any, **kwargs: Any) -> Any:
            value = await fn(*args, **kwargs)
            check_result(owner(args), spec, value)
            return value

        wrapped: Callable[..., Any] = run_checked
    else:

        @functools.wraps(fn)
        def run_checked_sync(*args: Any, **kwargs: Any) -> Any:
            value = fn(*args, **kwargs)
            check_result(owner(args), spec, value)
            return value

        wrapped = run_checked_sync
    twin: FunctionTask[..., Any] = FunctionTask(wrapped, {**task.options, "name": task.name})
    twin.reverter = task.reverter
    twins[spec] = twin
    return twin


@final
@dataclass(frozen=True, slots=True)
class Params:
    """How a callable's parameters are fed by name: ``parameter -> store name``.

    ``injected`` maps each injected name to the parameters it feeds (an ``inject``
    key is the name read, after ``rebind``, as in TaskFlow).
    """

    required: dict[str, str]
    optional: dict[str, str]
    injected: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


#: ``Params.injected`` of the many tasks that inject nothing (one object, not one each).
_NOTHING_INJECTED: Mapping[str, tuple[str, ...]] = MappingProxyType({})

_params_cache: dict[tuple[Any, ...], Params] = {}


def analyse_params(
    owner: str,
    fn: Callable[..., Any],
    *,
    skip: int = 0,
    given: Iterable[str] = (),
    rebind: Mapping[str, str] | Iterable[str] | None = None,
    inject: Mapping[str, Any] | Iterable[str] | None = None,
    requires: str | Iterable[str] = (),
    what: str = "execute",
    loose_inject: bool = False,
) -> Params:
    """Which names ``fn`` reads from the flow, after ``rebind`` and ``inject``.

    ``skip`` leading positional parameters are given positionally (``self``,
    a signature's partial arguments) and ``given`` keywords are fixed already.
    ``requires`` is a name or several (a plain string is one name, as in TaskFlow).
    ``inject`` keys are names read (after ``rebind``); one that ``fn`` does not read
    is an error unless ``loose_inject`` (the caller checks them itself). ``what``
    names ``fn`` in errors. Cached: ten thousand instances of one task class cost one
    ``inspect.signature``.
    """
    if isinstance(requires, str):
        requires = (requires,)
    try:
        if rebind is None:
            rebind_key: Any = None
        elif type(rebind) is dict or isinstance(rebind, Mapping):  # (a dict: no ABC check)
            rebind_key = ("map", tuple(rebind.items()))
        else:
            rebind_key = ("seq", tuple(rebind))
        key = (
            fn,
            skip,
            given if type(given) is tuple else tuple(given),
            rebind_key,
            tuple(inject) if inject else (),
            requires if type(requires) is tuple else tuple(requires),
            what,
            loose_inject,
        )
        hash(key)
    except TypeError:  # unhashable names: checked (and rejected) below, uncached
        return _analyse_params(owner, fn, skip, given, rebind, inject, requires, what, loose_inject)
    found = _params_cache.get(key)
    if found is None:
        found = _analyse_params(
            owner, fn, skip, given, rebind, inject, requires, what, loose_inject
        )
        if len(_params_cache) < 4096:
            _params_cache[key] = found
    return found


@functools.lru_cache(maxsize=1024)
def shape_of(
    fn: Callable[..., Any], skip: int, given: tuple[str, ...]
) -> tuple[tuple[str, ...], frozenset[str], bool] | None:
    """``fn``'s parameters passed by name (after ``skip`` positional ones and ``given``
    keywords), those with defaults, and whether it takes ``**kwargs``; ``None`` if unknown.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    skipped = {p.name for p in positional[:skip]} | set(given)
    named = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skipped
    ]
    defaults = frozenset(p.name for p in named if p.default is not p.empty)
    return tuple(p.name for p in named), defaults, var_kw


def _analyse_params(
    owner: str,
    fn: Callable[..., Any],
    skip: int,
    given: Iterable[str],
    rebind: Mapping[str, str] | Iterable[str] | None,
    inject: Mapping[str, Any] | Iterable[str] | None,
    requires: Iterable[str],
    what: str,
    loose_inject: bool,
) -> Params:
    shape = shape_of(fn, skip, given if type(given) is tuple else tuple(given))
    if shape is None:
        return Params({}, {})
    named, has_default, var_kw = shape
    names = {p: p for p in named}
    if rebind is None:
        mapping = {}
    elif type(rebind) is dict or isinstance(rebind, Mapping):
        mapping = dict(rebind)
    else:
        order = list(rebind)
        if isinstance(rebind, str) or len(order) > len(named):
            raise SignatureError(
                owner,
                f"rebind lists {len(order)} name(s) but {what} takes {len(named)} "
                f"parameter(s) by name: {list(named)}",
                "rebind",
            )
        mapping = dict(zip(named, order, strict=False))
    for param, new in mapping.items():
        if not isinstance(new, str) or not new:
            raise SignatureError(owner, f"rebind of {param!r} must be a name, got {new!r}", param)
        if param not in names and not var_kw:
            raise SignatureError(
                owner, f"rebind names {param!r}, which is not a parameter of {what}", param
            )
        names[param] = new
    for extra in requires:
        if not isinstance(extra, str) or not extra:
            raise SignatureError(owner, f"requires must list names, got {extra!r}", "requires")
        if extra not in names and not var_kw:
            raise SignatureError(
                owner,
                f"requires names {extra!r}, but {what} has no such parameter nor **kwargs",
                "requires",
            )
        names.setdefault(extra, extra)
    # inject is keyed by the name read (after rebind), as TaskFlow's storage looks it up
    injected: dict[str, tuple[str, ...]] = {}
    feeds: dict[str, list[str]] = {}
    if inject:
        for param, name in names.items():
            feeds.setdefault(name, []).append(param)
    for name in inject or ():
        params = feeds.get(name)
        if params:
            injected[name] = tuple(params)
        elif loose_inject:
            continue
        elif name in names:  # a parameter rebind renamed: it reads another name
            raise SignatureError(
                owner,
                f"inject names {name!r}, but rebind makes {what} read it as "
                f"{names[name]!r}: inject is keyed by the name read, as in TaskFlow "
                f"(inject={{{names[name]!r}: ...}})",
                name,
            )
        elif var_kw and isinstance(name, str) and name:
            injected[name] = (name,)  # one more keyword for **kwargs
        else:
            raise SignatureError(
                owner,
                f"inject names {name!r}, which is not a parameter of {what} nor a name "
                f"it reads (it reads {sorted(feeds)})",
                name if isinstance(name, str) else "inject",
            )
    if not injected:
        if not has_default:  # (the common task: every name required)
            return Params(names, {}, _NOTHING_INJECTED)
        injected = _NOTHING_INJECTED  # type: ignore[assignment]
    required: dict[str, str] = {}
    optional: dict[str, str] = {}
    fed = {p for params in injected.values() for p in params}
    extras = set(requires)
    for param, name in names.items():
        if param in fed:
            continue
        if param in has_default and param not in extras:
            optional[param] = name
        else:
            required[param] = name
    return Params(required, optional, injected)


_UNSET: Any = object()
_NO_INJECT: Mapping[str, Any] = MappingProxyType({})
#: The keyword under which a revert's own argument travels with the node's (see
#: :func:`revert_twin`); ``~`` keeps it clear of every parameter name.
REVERT_KEY = "~revert."


class Task:
    """A TaskFlow-style task: subclass it and define ``execute`` (and optionally ``revert``).

    ``execute``'s parameters are what the task *requires*, by name, from
    upstream tasks or the engine's store (parameters with defaults are
    optional). Its return value is stored under ``provides``: a name, a
    tuple of names (a returned sequence, unpacked) or a set of names (keys
    of a returned dict). ``execute`` may be ``async def`` or a plain ``def``
    (run in a worker thread). Example::

        class Reserve(aflow.Task):
            default_provides = "reservation"

            async def execute(self, order):
                return await inventory.reserve(order)

            async def revert(self, order, result, flow_failures):
                if not isinstance(result, aflow.Failure):
                    await inventory.release(result)

    ``revert`` gets the same arguments plus ``result`` (the return value, or an
    :class:`aflow.Failure` if this task failed) and ``flow_failures`` (task
    name -> Failure) when it accepts it; a revert that cannot take ``result``
    is rejected when the class is defined. With ``revert_requires`` or
    ``revert_rebind`` it reads its own arguments instead, as TaskFlow's does.

    Args:
        name: the task's name, unique in its flow (default: the class name).
        provides: overrides the class's ``default_provides``.
        requires: extra names to pass as keywords (``execute`` takes ``**kwargs``): a
            name, or several.
        rebind: ``{parameter: name}`` to read a parameter under another name, or a
            list of names for ``execute``'s parameters in order.
        inject: ``{name: value}``: fixed values, which win over everything; keyed by
            the name read, after ``rebind`` (TaskFlow's rule).
        revert_requires: names ``revert`` reads besides its parameters (it takes
            ``**kwargs``); default ``requires``.
        revert_rebind: ``rebind`` for ``revert``'s parameters; default: each reads the
            name the ``execute`` parameter of the same name reads.
        options: aflow node options (``retries``, ``timeout``, ``limit``, ``priority``...).
    """

    #: The names the result is stored under when ``provides`` is not given.
    default_provides: ClassVar[ProvidesLike] = None
    #: When more tasks are ready than may run, the higher starts (and reverts) first;
    #: equal ones in the order they became ready (TaskFlow's ``Atom.priority``). Set it
    #: on the class, on the instance, or with ``priority=``.
    priority: float = 0

    _aflow_task: ClassVar[FunctionTask[..., Any] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        execute = cls.__dict__.get("execute")
        if execute is not None and inspect.isasyncgenfunction(execute):
            raise SignatureError(cls.__name__, "execute cannot be an async generator", "execute")
        fn = cls.execute
        task: FunctionTask[..., Any] = FunctionTask(fn, {"name": cls.__name__})
        revert = getattr(cls, "revert", None)
        if revert is not None:
            task.reverter = _class_revert(cls.__name__, fn, revert)
        cls._aflow_task = task

    def __init__(
        self,
        name: str | None = None,
        provides: ProvidesLike = _UNSET,
        *,
        requires: str | Iterable[str] | None = None,
        rebind: Mapping[str, str] | Iterable[str] | None = None,
        inject: Mapping[str, Any] | None = None,
        revert_requires: str | Iterable[str] | None = None,
        revert_rebind: Mapping[str, str] | Iterable[str] | None = None,
        **options: Any,
    ) -> None:
        cls = type(self)
        if cls._aflow_task is None:
            raise TypeError("aflow.Task is a base class: subclass it and define execute()")
        self.name: str = name if name is not None else cls.__name__
        if not isinstance(self.name, str) or not self.name:
            raise SignatureError(cls.__name__, f"name must be a non-empty string, got {name!r}")
        spec = provides_spec(self.name, cls.default_provides if provides is _UNSET else provides)
        self._spec = spec
        #: The names this task's result is stored under.
        self.provides: tuple[str, ...] = spec.names
        if inject is not None and not isinstance(inject, Mapping):
            raise SignatureError(
                self.name, f"inject must be a dict of name -> value, got {inject!r}", "inject"
            )
        own_revert = revert_requires is not None or revert_rebind is not None
        self._params = analyse_params(
            self.name,
            cls.execute,
            skip=1,
            rebind=rebind,
            inject=inject,
            requires=requires or (),
            loose_inject=own_revert,
        )
        #: What ``revert`` reads by its own mapping (``None``: execute's arguments).
        self._revert_params: Params | None = None
        if own_revert:
            self._revert_params = self._revert_mapping(
                requires, rebind, inject, revert_requires, revert_rebind
            )
        self.inject: Mapping[str, Any] = dict(inject) if inject else _NO_INJECT
        #: ``inject`` as keywords of ``execute`` (and of ``revert``, under REVERT_KEY).
        self._inject_kwargs: Mapping[str, Any] = _NO_INJECT
        if inject:
            kwargs = {p: inject[n] for n, ps in self._params.injected.items() for p in ps}
            if self._revert_params is not None:
                kwargs.update(
                    (REVERT_KEY + p, inject[n])
                    for n, ps in self._revert_params.injected.items()
                    for p in ps
                )
            self._inject_kwargs = kwargs
        if options:
            checked = check_options(self.name, options)
            checked.pop("name", None)
            self._options = checked
            self._node_options = resolve_options(checked)
            if "priority" in checked:
                self.priority = checked["priority"]
        else:
            self._options = {}
            self._node_options = DEFAULT_OPTIONS

    def _revert_mapping(
        self,
        requires: str | Iterable[str] | None,
        rebind: Mapping[str, str] | Iterable[str] | None,
        inject: Mapping[str, Any] | None,
        revert_requires: str | Iterable[str] | None,
        revert_rebind: Mapping[str, str] | Iterable[str] | None,
    ) -> Params:
        """TaskFlow's revert mapping: ``revert``'s own parameters (not ``result`` nor
        ``flow_failures``), renamed by ``revert_rebind`` (else as ``execute``'s of the
        same name), plus ``revert_requires`` (else ``requires``)."""
        cls = type(self)
        reverter = cls._aflow_task.reverter if cls._aflow_task is not None else None
        if reverter is None:
            raise SignatureError(
                self.name,
                f"revert_requires / revert_rebind given, but {cls.__name__} has no revert",
                "revert_requires" if revert_rebind is None else "revert_rebind",
            )
        revert = reverter.fn
        if revert_rebind is None:
            shape = shape_of(revert, 1, ("result", "flow_failures"))
            read = {**self._params.required, **self._params.optional}
            if shape is not None:
                named, _, var_kw = shape
                revert_rebind = {p: n for p, n in read.items() if p != n and (p in named or var_kw)}
        if revert_requires is None:
            revert_requires = requires
        params = analyse_params(
            self.name,
            revert,
            skip=1,
            given=("result", "flow_failures"),
            rebind=revert_rebind,
            inject=inject,
            requires=revert_requires or (),
            what="revert",
            loose_inject=True,
        )
        for name in inject or ():  # a key neither execute nor revert reads
            if name not in self._params.injected and name not in params.injected:
                raise SignatureError(
                    self.name,
                    f"inject names {name!r}, which neither execute nor revert reads "
                    "(inject is keyed by the name read, after rebind)",
                    name,
                )
        return params

    @property
    def requires(self) -> frozenset[str]:
        """The names this task must be given (its revert's too, as in TaskFlow)."""
        names = frozenset(self._params.required.values())
        if self._revert_params is not None:
            names |= frozenset(self._revert_params.required.values())
        return names

    @property
    def optional(self) -> frozenset[str]:
        """The names this task reads if something provides them (parameters with defaults)."""
        return frozenset(self._params.optional.values())

    def _options_now(self) -> NodeOptions:
        """The node options, with ``priority`` as the task has it now (TaskFlow code sets
        it on the class or the instance after construction)."""
        if self.priority == self._node_options.priority:
            return self._node_options
        checked = check_options(self.name, {**self._options, "priority": self.priority})
        return resolve_options(checked)

    def __repr__(self) -> str:
        provides = f" provides={list(self.provides)}" if self.provides else ""
        return f"<{type(self).__name__} {self.name!r}{provides}>"

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Do the work; the parameters are what the task requires."""
        raise NotImplementedError(f"{type(self).__name__} must define execute()")


def _class_revert(owner: str, execute: Callable[..., Any], revert: Callable[..., Any]) -> Revert:
    found = _check_revert(owner, execute, revert, by_keyword=True)
    if not found.takes_result:
        raise SignatureError(
            owner,
            "revert must accept result= (the execute result, or an aflow.Failure "
            "if the task failed): add a 'result' parameter or **kwargs",
            "result",
        )
    return found


def revert_twin(task: FunctionTask[..., Any], params: Params) -> FunctionTask[..., Any]:
    """``task`` whose revert reads its own arguments (``revert_requires`` /
    ``revert_rebind``): they travel with the node's keywords under :data:`REVERT_KEY`,
    which the execute twin drops and the revert twin takes. Cached per mapping, so a
    task class costs one twin per distinct revert mapping, and the runtime sees one
    plain node whatever the mapping."""
    reverter = task.reverter
    assert reverter is not None
    cache: dict[Any, FunctionTask[..., Any]] = task.__dict__.setdefault("_aflow_revert_twins", {})
    fed = tuple(p for ps in params.injected.values() for p in ps)
    key = (tuple(params.required), tuple(params.optional), fed)
    found = cache.get(key)
    if found is not None:
        return found
    own = tuple((p, REVERT_KEY + p) for p in (*params.required, *params.optional, *fed))
    drop = tuple(k for _, k in own)
    fn = task.fn
    undo = reverter.fn

    def for_execute(kwargs: dict[str, Any]) -> dict[str, Any]:
        for k in drop:
            kwargs.pop(k, None)
        return kwargs

    def for_revert(kwargs: dict[str, Any]) -> dict[str, Any]:
        call = {p: kwargs[k] for p, k in own if k in kwargs}
        for extra in ("result", "flow_failures"):
            if extra in kwargs:
                call[extra] = kwargs[extra]
        return call

    # No functools.wraps: the graph checks a node's keywords against the signature
    # inspect finds, and these take the REVERT_KEY ones the originals do not.
    execute: Callable[..., Any]
    if task.is_async:

        async def execute_async(*args: Any, **kwargs: Any) -> Any:
            return await fn(*args, **for_execute(kwargs))

        execute = execute_async
    else:

        def execute_sync(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **for_execute(kwargs))

        execute = execute_sync
    revert: Callable[..., Any]
    if reverter.is_async:

        async def revert_async(*args: Any, **kwargs: Any) -> Any:
            return await undo(*args, **for_revert(kwargs))

        revert = revert_async
    else:

        def revert_sync(*args: Any, **kwargs: Any) -> Any:
            return undo(*args, **for_revert(kwargs))

        revert = revert_sync
    for wrapper, inner in ((execute, fn), (revert, undo)):
        wrapper.__name__ = getattr(inner, "__name__", wrapper.__name__)
        wrapper.__qualname__ = getattr(inner, "__qualname__", wrapper.__qualname__)
    twin: FunctionTask[..., Any] = FunctionTask(execute, {**task.options, "name": task.name})
    twin.asks_step = task.asks_step
    twin.reverter = Revert(
        revert, reverter.is_async, reverter.takes_result, reverter.takes_failures, reverter.options
    )
    cache[key] = twin
    return twin
