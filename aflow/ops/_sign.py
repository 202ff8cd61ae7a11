"""Typed signatures of operators: ``OPIOSign``, ``OPIO``, ``Artifact``, ``Parameter``.

Values are checked with pydantic in strict mode: ``"5"`` is not an ``int``.
"""

from __future__ import annotations

import functools
import shutil
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, final

from pydantic import TypeAdapter, ValidationError

from .._exceptions import OpIOError

__all__ = [
    "MISSING",
    "OPIO",
    "Artifact",
    "Field",
    "OPIOSign",
    "Parameter",
    "check_value",
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


@final
class Parameter:
    """A parameter with options: ``Parameter(int, default=1)``; a bare type means required."""

    __slots__ = ("default", "type")

    def __init__(self, type: Any, *, default: Any = MISSING) -> None:
        self.type = type
        self.default = default

    def __repr__(self) -> str:
        extra = "" if self.default is MISSING else f", default={self.default!r}"
        return f"Parameter({type_name(self.type)}{extra})"


@final
class Field:
    """One resolved entry of a signature (what the checks and the compiler read)."""

    __slots__ = ("artifact", "default", "name", "type")

    def __init__(self, name: str, type_: Any, artifact: Artifact | None, default: Any) -> None:
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

    __slots__ = ("_fields", "_raw")

    def __init__(self, fields: Mapping[str, Any] | None = None) -> None:
        raw = dict(fields or {})
        resolved: dict[str, Field] = {}
        for name, spec in raw.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"OPIOSign keys are non-empty strings, got {name!r}")
            if isinstance(spec, Artifact):
                resolved[name] = Field(name, spec.type, spec, MISSING)
            elif isinstance(spec, Parameter):
                resolved[name] = Field(name, spec.type, None, spec.default)
            elif isinstance(spec, type) and issubclass(spec, Artifact | Parameter):
                raise TypeError(f"OPIOSign field {name!r}: write Artifact(Path), not the class")
            else:
                resolved[name] = Field(name, spec, None, MISSING)
        self._raw = raw
        self._fields = resolved

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


@functools.lru_cache(maxsize=512)
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def _actual(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} ({text})"


def check_value(op: str, direction: str, key: str, tp: Any, value: Any) -> Any:
    """``value`` checked against ``tp`` in strict mode; :class:`OpIOError` when it does not fit."""
    if tp is Any or tp is object:
        return value
    try:
        adapter = _adapter(tp)
    except TypeError:  # unhashable annotation (rare): build one each time
        adapter = TypeAdapter(tp)
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{part!r}]" for part in first.get("loc", ()))
        detail = (
            f"{_actual(value)}; {where} {first['msg']}".replace("; ", "; at ", 1) if where else ""
        )
        raise OpIOError(op, direction, key, type_name(tp), detail or _actual(value)) from None
