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
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, final

from ._exceptions import ProvidesError, SignatureError
from ._options import DEFAULT_OPTIONS, check_options, resolve_options
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
    """How a callable's parameters are fed by name: ``parameter -> store name``."""

    required: dict[str, str]
    optional: dict[str, str]


_params_cache: dict[tuple[Any, ...], Params] = {}


def analyse_params(
    owner: str,
    fn: Callable[..., Any],
    *,
    skip: int = 0,
    given: Iterable[str] = (),
    rebind: Mapping[str, str] | Iterable[str] | None = None,
    inject: Mapping[str, Any] | None = None,
    requires: str | Iterable[str] = (),
) -> Params:
    """Which names ``fn`` reads from the flow, after ``rebind`` and ``inject``.

    ``skip`` leading positional parameters are given positionally (``self``,
    a signature's partial arguments) and ``given`` keywords are fixed already.
    ``requires`` is a name or several (a plain string is one name, as in TaskFlow).
    Cached: ten thousand instances of one task class cost one ``inspect.signature``.
    """
    if isinstance(requires, str):
        requires = (requires,)
    try:
        if isinstance(rebind, Mapping):
            rebind_key: Any = ("map", tuple(rebind.items()))
        else:
            rebind_key = ("seq", tuple(rebind) if rebind is not None else None)
        key = (fn, skip, tuple(given), rebind_key, tuple(inject or ()), tuple(requires))
        hash(key)
    except TypeError:  # unhashable names: checked (and rejected) below, uncached
        return _analyse_params(owner, fn, skip, given, rebind, inject, requires)
    found = _params_cache.get(key)
    if found is None:
        found = _analyse_params(owner, fn, skip, given, rebind, inject, requires)
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
    inject: Mapping[str, Any] | None,
    requires: Iterable[str],
) -> Params:
    shape = shape_of(fn, skip, tuple(given))
    if shape is None:
        return Params({}, {})
    named, has_default, var_kw = shape
    names = {p: p for p in named}
    if isinstance(rebind, Mapping):
        mapping = dict(rebind)
    elif rebind is not None:
        order = list(rebind)
        if isinstance(rebind, str) or len(order) > len(named):
            raise SignatureError(
                owner,
                f"rebind lists {len(order)} name(s) but execute takes {len(named)} "
                f"parameter(s) by name: {list(named)}",
                "rebind",
            )
        mapping = dict(zip(named, order, strict=False))
    else:
        mapping = {}
    for param, new in mapping.items():
        if not isinstance(new, str) or not new:
            raise SignatureError(owner, f"rebind of {param!r} must be a name, got {new!r}", param)
        if param not in names and not var_kw:
            raise SignatureError(
                owner, f"rebind names {param!r}, which is not a parameter of execute", param
            )
        names[param] = new
    injected = dict(inject or {})
    for param in injected:
        if param not in names and not var_kw:
            raise SignatureError(
                owner, f"inject names {param!r}, which is not a parameter of execute", param
            )
    required: dict[str, str] = {}
    optional: dict[str, str] = {}
    for param, name in names.items():
        if param in injected:
            continue
        if param in has_default:
            optional[param] = name
        else:
            required[param] = name
    for extra in requires:
        if not isinstance(extra, str) or not extra:
            raise SignatureError(owner, f"requires must list names, got {extra!r}", "requires")
        if extra not in names and not var_kw:
            raise SignatureError(
                owner,
                f"requires names {extra!r}, but execute has no such parameter nor **kwargs",
                "requires",
            )
        if extra not in injected:
            required.setdefault(extra, extra)
            optional.pop(extra, None)
    return Params(required, optional)


_UNSET: Any = object()
_NO_INJECT: Mapping[str, Any] = MappingProxyType({})


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
    is rejected when the class is defined.

    Args:
        name: the task's name, unique in its flow (default: the class name).
        provides: overrides the class's ``default_provides``.
        requires: extra names to pass as keywords (``execute`` takes ``**kwargs``): a
            name, or several.
        rebind: ``{parameter: name}`` to read a parameter under another name, or a
            list of names for ``execute``'s parameters in order.
        inject: ``{parameter: value}``: fixed values, which win over everything.
        options: aflow node options (``retries``, ``timeout``, ``limit``...).
    """

    #: The names the result is stored under when ``provides`` is not given.
    default_provides: ClassVar[ProvidesLike] = None

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
        self._params = analyse_params(
            self.name,
            cls.execute,
            skip=1,
            rebind=rebind,
            inject=inject,
            requires=requires or (),
        )
        self.inject: Mapping[str, Any] = dict(inject) if inject else _NO_INJECT
        if options:
            checked = check_options(self.name, options)
            checked.pop("name", None)
            self._options = checked
            self._node_options = resolve_options(checked)
        else:
            self._options = {}
            self._node_options = DEFAULT_OPTIONS

    @property
    def requires(self) -> frozenset[str]:
        """The names this task must be given."""
        return frozenset(self._params.required.values())

    @property
    def optional(self) -> frozenset[str]:
        """The names this task reads if something provides them (parameters with defaults)."""
        return frozenset(self._params.optional.values())

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
