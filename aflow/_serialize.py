"""Serialising task results and run inputs for durable stores.

JSON by default, with a small set of well-known types kept exact (tuples,
sets, bytes, datetimes, dates, times, timedeltas, Decimals, UUIDs, Paths and
:class:`aflow.Failure` as text). A value outside that set raises
:class:`aflow.SerializationError` naming the task and the type. The pickle
serialiser is opt-in and only for stores nobody untrusted can write to:
loading a pickle runs code.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import pathlib
import pickle
import uuid
from typing import Any, Protocol, final

from ._exceptions import SerializationError

__all__ = ["JsonSerializer", "PickleSerializer", "Serializer", "serializer_for"]

_TAG = "__aflow__"


class Serializer(Protocol):
    """Turns values into text and back."""

    name: str

    def dumps(self, value: Any, *, task: str) -> str: ...

    def loads(self, text: str) -> Any: ...


def _encode(value: Any, task: str, path: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_encode(v, task, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            if _TAG in value:
                return {_TAG: "dict", "v": [[k, _encode(v, task, path)] for k, v in value.items()]}
            return {k: _encode(v, task, f"{path}[{k!r}]") for k, v in value.items()}
        return {
            _TAG: "dict",
            "v": [[_encode(k, task, path), _encode(v, task, path)] for k, v in value.items()],
        }
    if isinstance(value, tuple):
        return {_TAG: "tuple", "v": [_encode(v, task, path) for v in value]}
    if isinstance(value, set | frozenset):
        kind = "set" if isinstance(value, set) else "frozenset"
        return {_TAG: kind, "v": [_encode(v, task, path) for v in value]}
    if isinstance(value, bytes):
        return {_TAG: "bytes", "v": base64.b64encode(value).decode()}
    if isinstance(value, dt.datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return {_TAG: "time", "v": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {_TAG: "timedelta", "v": value.total_seconds()}
    if isinstance(value, decimal.Decimal):
        return {_TAG: "decimal", "v": str(value)}
    if isinstance(value, uuid.UUID):
        return {_TAG: "uuid", "v": str(value)}
    if isinstance(value, pathlib.PurePath):
        return {_TAG: "path", "v": str(value)}
    raise SerializationError(task, type(value), path)


_DECODERS: dict[str, Any] = {
    "tuple": lambda v: tuple(_decode(x) for x in v),
    "set": lambda v: {_decode(x) for x in v},
    "frozenset": lambda v: frozenset(_decode(x) for x in v),
    "dict": lambda v: {_decode(k): _decode(x) for k, x in v},
    "bytes": lambda v: base64.b64decode(v),
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda v: dt.timedelta(seconds=v),
    "decimal": decimal.Decimal,
    "uuid": uuid.UUID,
    "path": pathlib.Path,
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


@final
class JsonSerializer:
    """JSON plus well-known types; anything else is a :class:`~aflow.SerializationError`."""

    name = "json"

    def dumps(self, value: Any, *, task: str) -> str:
        return json.dumps(_encode(value, task, "result"), separators=(",", ":"), allow_nan=True)

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
