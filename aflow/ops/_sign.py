"""Typed signatures of operators: ``OPIOSign``, ``OPIO``, ``Artifact``, ``Parameter``.

Values are checked with pydantic in strict mode: ``"5"`` is not an ``int``.
"""

from __future__ import annotations

import copy
import functools
import shutil
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any, final

from pydantic import ConfigDict, PydanticSchemaGenerationError, TypeAdapter, ValidationError

from .._exceptions import OpIOError, SignatureError

__all__ = [
    "MISSING",
    "BigParameter",
    "OPIO",
    "Artifact",
    "Field",
    "OPIOSign",
    "Parameter",
    "check_sign",
    "check_value",
    "copy_value",
    "fresh",
    "type_name",
]

#: No default: the field is required.
MISSING: Any = object()


def type_name(tp: Any) -> str:
    """A short readable name of a type annotation (``int``, ``list[pathlib.Path]``)."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return (
            tp.__qualname__ if tp.__module__ == "builtins" else f"{tp.__module__}.{tp.__qualname__}"
        )
    return repr(tp).replace("typing.", "")


@final
class Artifact:
    """A file artifact in a signature: ``Artifact(Path)``, ``Artifact(list[Path])`` or
    ``Artifact(dict[str, Path])``. A ``Path`` may name a file or a directory.

    ``optional=True`` lets the value be ``None`` (an input may then be left out).
    """

    __slots__ = ("optional", "shape", "type")

    def __init__(self, type: Any = Path, *, optional: bool = False) -> None:
        origin = typing.get_origin(type)
        args = typing.get_args(type)
        if type is Path or type is str:
            shape = "one"
        elif origin in (list, typing.List) and args in ((Path,), (str,)):  # noqa: UP006
            shape = "list"
        elif origin in (dict, typing.Dict) and len(args) == 2 and args[1] in (Path, str):  # noqa: UP006
            shape = "dict"
        else:
            raise TypeError(
                f"Artifact takes Path, list[Path] or dict[str, Path], got {type_name(type)}"
            )
        self.type = type
        self.shape = shape
        self.optional = optional

    def __repr__(self) -> str:
        extra = ", optional=True" if self.optional else ""
        return f"Artifact({type_name(self.type)}{extra})"


class Parameter:
    """A parameter with options: ``Parameter(int, default=1)``; a bare type means required."""

    __slots__ = ("default", "type")

    def __init__(self, type: Any, *, default: Any = MISSING) -> None:
        self.type = type
        self.default = default

    def __repr__(self) -> str:
        extra = "" if self.default is MISSING else f", default={self.default!r}"
        return f"Parameter({type_name(self.type)}{extra})"


class BigParameter(Parameter):
    """A parameter kept out of the run's records (dflow's ``BigParameter(type)``): in a
    durable run its value is written once to the artifact store, encoded with the run's
    serializer, and steps pass a reference to it; each step that reads it gets its own
    copy. In a run without a store it is a plain parameter."""

    __slots__ = ()

    def __repr__(self) -> str:
        extra = "" if self.default is MISSING else f", default={self.default!r}"
        return f"BigParameter({type_name(self.type)}{extra})"


@final
class Field:
    """One resolved entry of a signature (what the checks and the compiler read)."""

    __slots__ = ("artifact", "big", "default", "name", "type")

    def __init__(
        self, name: str, type_: Any, artifact: Artifact | None, default: Any, big: bool = False
    ) -> None:
        #: a BigParameter: passed by reference in a durable run
        self.big = big
        self.name = name
        self.type = type_
        self.artifact = artifact
        self.default = default

    @property
    def is_artifact(self) -> bool:
        return self.artifact is not None

    @property
    def required(self) -> bool:
        """Must be given: no default, and not an optional artifact."""
        if self.artifact is not None:
            return not self.artifact.optional
        return self.default is MISSING

    @property
    def has_default(self) -> bool:
        return self.default is not MISSING

    def describe(self) -> str:
        return repr(self.artifact) if self.artifact is not None else type_name(self.type)


class OPIOSign(Mapping[str, Any]):
    """An operator's input or output signature: name -> type, ``Artifact`` or ``Parameter``.

    Example::

        OPIOSign({"msg": str, "number": Parameter(int, default=1), "out": Artifact(list[Path])})
    """

    __slots__ = ("_checked", "_fields", "_raw")

    def __init__(self, fields: Mapping[str, Any] | None = None) -> None:
        raw = dict(fields or {})
        resolved: dict[str, Field] = {}
        for name, spec in raw.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"OPIOSign keys are non-empty strings, got {name!r}")
            if isinstance(spec, Artifact):
                resolved[name] = Field(name, spec.type, spec, MISSING)
            elif isinstance(spec, Parameter):
                big = isinstance(spec, BigParameter)
                resolved[name] = Field(name, spec.type, None, spec.default, big)
            elif isinstance(spec, type) and issubclass(spec, Artifact | Parameter):
                raise TypeError(f"OPIOSign field {name!r}: write Artifact(Path), not the class")
            else:
                resolved[name] = Field(name, spec, None, MISSING)
        self._raw = raw
        self._fields = resolved
        self._checked = False  # every parameter's type can be checked (see check_sign)

    def __getitem__(self, key: str) -> Any:
        return self._raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"OPIOSign({self._raw!r})"

    @property
    def fields(self) -> Mapping[str, Field]:
        """The resolved fields, by name."""
        return self._fields


class OPIO(dict[str, Any]):
    """An operator's inputs or outputs: a dict, plus the step's working directory.

    ``op_in.workdir`` is the fresh directory this attempt of the step runs in
    (made on first use, so an op that never touches files pays nothing): write
    files there (aflow never changes the process's current directory), and
    return paths relative to it or absolute.
    """

    _path: Path | None = None
    _made: bool = False

    @property
    def workdir(self) -> Path:
        """This attempt's own, initially empty, working directory (inputs only)."""
        path = self._path
        if path is None:
            raise RuntimeError("only an op's inputs (op_in) have a working directory")
        if not self._made:
            if path.exists():  # an attempt of a resumed run: never see the dead one's files
                shutil.rmtree(path)
            path.mkdir(parents=True)
            self._made = True
        return path

    @workdir.setter
    def workdir(self, path: Path | None) -> None:
        self._path = path
        self._made = False


_ARBITRARY = ConfigDict(arbitrary_types_allowed=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _not_a_type(tp: Any) -> str | None:
    """What in annotation ``tp`` is no type (a string, a number...), or ``None``."""
    if tp is None or tp is Ellipsis or tp is Any or isinstance(tp, type | typing.TypeVar):
        return None
    if isinstance(tp, str | typing.ForwardRef):
        return f"{tp!r} is a string annotation: give the type itself"
    origin = typing.get_origin(tp)
    if origin is None:
        return None if callable(tp) else f"{tp!r} is not a type"  # a NewType is callable
    if origin is typing.Literal:
        return None
    if origin is typing.Annotated:
        return _not_a_type(typing.get_args(tp)[0])
    for arg in typing.get_args(tp):
        found = (
            next(filter(None, map(_not_a_type, arg)), None)
            if isinstance(arg, list)  # Callable[[int], str]
            else _not_a_type(arg)
        )
        if found is not None:
            return found
    return None


def _build(tp: Any) -> TypeAdapter[Any] | type | str:
    """How values of ``tp`` are checked: a pydantic adapter (a user's class inside is
    checked by ``isinstance``, pydantic's ``arbitrary_types_allowed``), a class to check
    by ``isinstance`` alone (pydantic can build no schema for it), or why neither works."""
    problem = _not_a_type(tp)
    if problem is not None:
        return problem
    try:
        adapter = TypeAdapter(tp)
        if getattr(adapter, "pydantic_complete", True):
            return adapter
        reason = "pydantic cannot resolve a name in it"
    except PydanticSchemaGenerationError as exc:
        reason = _first_line(exc)
        try:
            return TypeAdapter(tp, config=_ARBITRARY)
        except Exception as again:  # a type with its own config (a TypedDict, a dataclass)
            reason = _first_line(again)
    except Exception as exc:  # a forward reference, a value that is no type...
        reason = _first_line(exc)
    if isinstance(tp, type):
        try:
            isinstance(None, tp)
        except TypeError:  # TypedDict, a protocol that is not runtime-checkable...
            pass
        else:
            return tp
    return reason


@functools.lru_cache(maxsize=512)
def _cached(tp: Any) -> TypeAdapter[Any] | type | str:
    return _build(tp)


def _checker(tp: Any) -> TypeAdapter[Any] | type | str:
    try:
        return _cached(tp)
    except TypeError:  # an unhashable annotation (rare): built each time
        return _build(tp)


def _actual(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} ({text})"


def uncheckable(tp: Any) -> str | None:
    """Why values of ``tp`` cannot be checked (``None``: they can)."""
    if tp is Any or tp is object:
        return None
    found = _checker(tp)
    return found if isinstance(found, str) else None


def check_sign(step: str, sign: OPIOSign, direction: str) -> None:
    """Refuse, naming the step, a parameter whose type cannot be checked (a
    :class:`SignatureError`, never pydantic's own error)."""
    if not isinstance(sign, OPIOSign):
        raise SignatureError(
            step,
            f"get_{direction}_sign() must return an OPIOSign, got {type(sign).__name__} "
            f"({sign!r:.80})",
        )
    if sign._checked:
        return
    for field in sign.fields.values():
        if field.artifact is None:
            reason = uncheckable(field.type)
            if reason is not None:
                raise SignatureError(
                    step,
                    f"{direction} {field.name!r} is typed {type_name(field.type)}, which "
                    f"cannot be checked: {reason}",
                    field.name,
                )
    sign._checked = True


def check_value(
    op: str, direction: str, key: str, tp: Any, value: Any, step: str | None = None
) -> Any:
    """``value`` checked against ``tp`` in strict mode; :class:`OpIOError` when it does not fit.

    A type that cannot be checked raises :class:`SignatureError` naming ``step``
    (an :class:`OpIOError` saying so without one).
    """
    if tp is Any or tp is object:
        return value
    try:
        adapter = _cached(tp)
    except TypeError:  # an unhashable annotation (rare): built each time
        adapter = _build(tp)
    if isinstance(adapter, TypeAdapter):
        try:
            return adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = "".join(f"[{part!r}]" for part in first.get("loc", ()))
            detail = (
                f"{_actual(value)}; {where} {first['msg']}".replace("; ", "; at ", 1)
                if where
                else ""
            )
            raise OpIOError(op, direction, key, type_name(tp), detail or _actual(value)) from None
    if isinstance(adapter, str):
        if step is not None:
            raise SignatureError(
                step,
                f"{direction} {key!r} is typed {type_name(tp)}, which cannot be checked: {adapter}",
                key,
            )
        raise OpIOError(
            op, direction, key, f"{type_name(tp)}, a type that cannot be checked", adapter
        )
    if isinstance(value, adapter):  # a class pydantic builds no schema for
        return value
    raise OpIOError(op, direction, key, type_name(tp), _actual(value))


#: Values no op can change: handed over as they are.
_IMMUTABLE = frozenset({int, float, complex, str, bytes, bool, type(None)})
_CONTAINERS = frozenset({list, dict, tuple, set, frozenset, typing.Union, types.UnionType})


@functools.lru_cache(maxsize=512)
def _fresh(tp: Any) -> bool:
    if tp in _IMMUTABLE or (isinstance(tp, type) and issubclass(tp, PurePath)):
        return True
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return True
    args = typing.get_args(tp)
    return origin in _CONTAINERS and bool(args) and all(a is Ellipsis or _fresh(a) for a in args)


def fresh(tp: Any) -> bool:
    """True when a value :func:`check_value` gives for ``tp`` is a new one all through
    (pydantic rebuilds ``list[int]``, ``dict[str, list[float]]``...): no copy needed."""
    try:
        return _fresh(tp)
    except TypeError:  # unhashable annotation
        return False


def copy_value(op: str, key: str, value: Any, direction: str = "input") -> Any:
    """A deep copy of an input parameter's value, for one call of ``op`` (parameters pass
    by value, as in dflow: an op that changes its input changes nobody else's).

    A value that cannot be copied (a lock, a socket, a client holding one) is refused
    with :class:`OpIOError`: pass such an object on the op instead
    (``PythonOPTemplate(MyOp(client))``).
    """
    if type(value) in _IMMUTABLE:
        return value
    try:
        return copy.deepcopy(value)
    except Exception as exc:
        raise OpIOError(
            op,
            direction,
            key,
            "a value that can be copied (parameters pass by value; give a shared object "
            "to the op instance instead)",
            f"{type(value).__name__}: {_first_line(exc)}",
        ) from exc
