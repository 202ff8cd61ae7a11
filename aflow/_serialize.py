"""Serialising task results and run inputs for durable stores.

JSON by default, with a small set of well-known types kept exact (tuples,
sets, bytes, datetimes, dates, times, timedeltas, Decimals, UUIDs, paths of
each pathlib class, enum members and named tuples, the last two by their
class's import path). A value that would not come back as it went in (any
other type, or a subclass of a builtin such as a ``str`` subclass) raises
:class:`aflow.errors.SerializationError` naming the task, the type and where in the
value it sits. The pickle
serialiser is opt-in and only for stores nobody untrusted can write to:
loading a pickle runs code.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import json
import pathlib
import pickle
import sys
import uuid
import zoneinfo
from typing import Any, Protocol, final

from ._exceptions import SerializationError

__all__ = ["JsonSerializer", "PickleSerializer", "Serializer", "serializer_for"]

_TAG = "__aflow__"


class Serializer(Protocol):
    """Turns values into text and back."""

    name: str

    def dumps(self, value: Any, *, task: str) -> str: ...

    def loads(self, text: str) -> Any: ...


_SCALARS = frozenset({type(None), bool, int, float, str})
_PATHS = {
    cls.__name__: cls
    for cls in (
        pathlib.Path,
        pathlib.PurePath,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
        pathlib.PosixPath,
        pathlib.WindowsPath,
    )
}


#: What ``Path(...)`` makes here (PosixPath or WindowsPath): stored as plain text.
_CONCRETE_PATH = type(pathlib.Path())


def _class_path(cls: type, task: str, path: str) -> str:
    """Where another process imports ``cls`` from (an enum's or named tuple's class)."""
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        where = "in __main__" if cls.__module__ == "__main__" else "inside a function"
        raise SerializationError(
            task, cls, path, f"its class is defined {where}; define it at module level"
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def _encode(value: Any, task: str, path: str) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, enum.Enum):  # before int and str: IntEnum and StrEnum are both
        return {
            _TAG: "enum",
            "v": [_class_path(kind, task, path), _encode(value.value, task, path)],
        }
    if kind is list:
        return [_encode(v, task, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind is dict:
        if all(type(k) is str for k in value):
            if _TAG in value:
                return {_TAG: "dict", "v": [[k, _encode(v, task, path)] for k, v in value.items()]}
            return {k: _encode(v, task, f"{path}[{k!r}]") for k, v in value.items()}
        return {
            _TAG: "dict",
            "v": [[_encode(k, task, path), _encode(v, task, path)] for k, v in value.items()],
        }
    if kind is tuple:
        return {_TAG: "tuple", "v": [_encode(v, task, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, tuple) and hasattr(kind, "_fields"):  # a named tuple
        items = [_encode(v, task, f"{path}.{f}") for f, v in zip(kind._fields, value, strict=True)]
        return {_TAG: "namedtuple", "v": [_class_path(kind, task, path), items]}
    if kind is set or kind is frozenset:
        return {_TAG: kind.__name__, "v": [_encode(v, task, path) for v in value]}
    if kind is bytes:
        return {_TAG: "bytes", "v": base64.b64encode(value).decode()}
    if kind is dt.datetime or kind is dt.time:
        return _encode_clock(value, task, path)
    if kind is dt.date:
        return {_TAG: "date", "v": value.isoformat()}
    if kind is dt.timedelta:  # exact: float seconds lose microseconds past ~300 years
        return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if kind is decimal.Decimal:
        return {_TAG: "decimal", "v": str(value)}
    if kind is uuid.UUID:
        return {_TAG: "uuid", "v": str(value)}
    if _PATHS.get(kind.__name__) is kind:
        return {
            _TAG: "path",
            "v": str(value) if kind is _CONCRETE_PATH else [kind.__name__, str(value)],
        }
    detail = ""
    for base in (int, float, str, bytes, list, dict, tuple, set, dt.datetime, dt.date):
        if isinstance(value, base):
            detail = (
                f"a subclass of {base.__name__} would come back as a plain {base.__name__}; "
                "convert it, or opt in to pickle"
            )
            break
    raise SerializationError(task, kind, path, detail)


def _encode_clock(value: dt.datetime | dt.time, task: str, path: str) -> Any:
    """A datetime or time: ISO text, plus ``fold`` (which of a repeated wall-clock hour)
    and the zone key of a :class:`zoneinfo.ZoneInfo`, which ISO text (a fixed offset)
    would lose: six months later the offset differs."""
    kind = "datetime" if type(value) is dt.datetime else "time"
    zone = value.tzinfo
    if zone is None or type(zone) is dt.timezone:
        text = value.isoformat()
        return {_TAG: kind, "v": [text, 1] if value.fold else text}
    if isinstance(zone, zoneinfo.ZoneInfo) and zone.key is not None:
        wall = value.replace(tzinfo=None).isoformat()
        return {_TAG: kind, "v": [wall, value.fold, zone.key]}
    raise SerializationError(
        task,
        type(value),
        path,
        f"its tzinfo {type(zone).__name__} would come back as a fixed offset; "
        "use zoneinfo.ZoneInfo or datetime.timezone",
    )


def _load_class(spec: str, check: Any, what: str) -> Any:
    """A class named in stored data. It is looked up in modules already imported (the
    workflow's own imports), never imported because a store says so."""
    module_name, _, qualname = spec.partition(":")
    obj: Any = sys.modules.get(module_name)
    if obj is None:
        raise TypeError(f"{spec}: module {module_name!r} is not imported; refusing to import it")
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type) or not check(obj):
        raise TypeError(f"{spec} is not {what}: refusing to load it")
    return obj


def _decode_enum(v: list[Any]) -> Any:
    cls = _load_class(v[0], lambda c: issubclass(c, enum.Enum), "an Enum")
    return cls(_decode(v[1]))


def _decode_namedtuple(v: list[Any]) -> Any:
    cls = _load_class(
        v[0], lambda c: issubclass(c, tuple) and hasattr(c, "_fields"), "a named tuple"
    )
    return cls(*(_decode(x) for x in v[1]))


def _clock(parse: Any, v: Any) -> Any:
    if isinstance(v, str):
        return parse(v)
    if len(v) == 2:
        return parse(v[0]).replace(fold=v[1])
    text, fold, key = v
    return parse(text).replace(fold=fold, tzinfo=zoneinfo.ZoneInfo(key))


def _decode_path(v: Any) -> Any:
    if isinstance(v, str):
        return pathlib.Path(v)
    name, text = v
    return _PATHS[name](text)


_DECODERS: dict[str, Any] = {
    "tuple": lambda v: tuple(_decode(x) for x in v),
    "set": lambda v: {_decode(x) for x in v},
    "frozenset": lambda v: frozenset(_decode(x) for x in v),
    "dict": lambda v: {_decode(k): _decode(x) for k, x in v},
    "bytes": lambda v: base64.b64decode(v),
    "datetime": lambda v: _clock(dt.datetime.fromisoformat, v),
    "date": dt.date.fromisoformat,
    "time": lambda v: _clock(dt.time.fromisoformat, v),
    "timedelta": lambda v: dt.timedelta(*v) if isinstance(v, list) else dt.timedelta(seconds=v),
    "decimal": decimal.Decimal,
    "uuid": uuid.UUID,
    "path": _decode_path,
    "enum": _decode_enum,
    "namedtuple": _decode_namedtuple,
}


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        tag = value.get(_TAG)
        if isinstance(tag, str) and tag in _DECODERS and set(value) == {_TAG, "v"}:
            return _DECODERS[tag](value["v"])
        return {k: _decode(v) for k, v in value.items()}
    return value


#: One encoder for every result: ``json.dumps`` with options builds a new one per call.
_JSON = json.JSONEncoder(separators=(",", ":")).encode


@final
class JsonSerializer:
    """JSON plus well-known types; anything else is a :class:`~aflow.errors.SerializationError`."""

    name = "json"

    def dumps(self, value: Any, *, task: str) -> str:
        try:
            if type(value) is int:  # the commonest result, as json writes it
                return int.__repr__(value)
            return _JSON(_encode(value, task, "result"))
        except SerializationError:
            raise
        except (ValueError, RecursionError) as exc:  # an int too long for JSON, deep nesting
            raise SerializationError(task, type(value), "result", str(exc)) from exc

    def loads(self, text: str) -> Any:
        return _decode(json.loads(text))


@final
class PickleSerializer:
    """Any picklable value. Only for trusted stores: loading a pickle runs code."""

    name = "pickle"

    def dumps(self, value: Any, *, task: str) -> str:
        try:
            return base64.b64encode(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).decode()
        except Exception as exc:
            raise SerializationError(task, type(value), "result", str(exc)) from exc

    def loads(self, text: str) -> Any:
        return pickle.loads(base64.b64decode(text))


def serializer_for(name: str | Serializer) -> Serializer:
    """``"json"`` (default), ``"pickle"``, or a serializer object."""
    if not isinstance(name, str):
        return name
    if name == "json":
        return JsonSerializer()
    if name == "pickle":
        return PickleSerializer()
    raise ValueError(f"serializer must be 'json', 'pickle' or a Serializer, got {name!r}")
