"""Loops without slices, as dflow writes them: ``Step(with_param=...)`` over a list (a
literal, an upstream list output, ``argo_range(...)``) or ``with_sequence=argo_sequence(...)``,
with ``"{{item}}"`` in the step's parameters and key."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, final

from .._exceptions import SignatureError

__all__ = [
    "ArgoLen",
    "ArgoRange",
    "ArgoSequence",
    "argo_len",
    "argo_range",
    "argo_sequence",
    "has_item",
    "loop_items",
    "map_loop",
    "put_item",
    "refs_of",
]

#: ``{{item}}`` or ``{{item.field}}`` (a field of a dict item)
_ITEM = re.compile(r"\{\{\s*item(?:\.([A-Za-z0-9_-]+))?\s*\}\}")


@final
class ArgoLen:
    """``argo_len(ref)``: the length of a list parameter, known when the step runs."""

    __slots__ = ("ref",)

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def __repr__(self) -> str:
        return f"argo_len({self.ref!r})"


@final
class ArgoRange:
    """``argo_range(end)``, ``argo_range(start, end[, step])``: ``range``'s integers, each
    argument an int, a parameter reference or ``argo_len(...)``."""

    __slots__ = ("end", "start", "step")

    def __init__(self, start: Any, end: Any, step: Any) -> None:
        self.start = start
        self.end = end
        self.step = step

    def __repr__(self) -> str:
        return f"argo_range({self.start!r}, {self.end!r}, {self.step!r})"


@final
class ArgoSequence:
    """``argo_sequence(count=, start=, end=, format=)``: Argo's ``withSequence``: ``count``
    numbers from ``start``, or ``start`` to ``end`` inclusive (counting down when ``end``
    is below ``start``); with ``format`` (printf style, ``"%02d"``) each is that text."""

    __slots__ = ("count", "end", "format", "start")

    def __init__(self, count: Any, start: Any, end: Any, format: str | None) -> None:
        self.count = count
        self.start = start
        self.end = end
        self.format = format

    def __repr__(self) -> str:
        return (
            f"argo_sequence(count={self.count!r}, start={self.start!r}, end={self.end!r}, "
            f"format={self.format!r})"
        )


def argo_len(ref: Any) -> ArgoLen:
    """The length of a list parameter (a step's output, a template's input)."""
    return ArgoLen(ref)


def argo_range(*args: Any) -> ArgoRange:
    """Integers as ``range(*args)`` gives them, for ``with_param=``; each argument may be a
    parameter reference or ``argo_len(...)``, read when the step runs."""
    if len(args) == 1:
        return ArgoRange(0, args[0], 1)
    if len(args) == 2:
        return ArgoRange(args[0], args[1], 1)
    if len(args) == 3:
        return ArgoRange(*args)
    raise TypeError(f"argo_range takes 1 to 3 arguments, got {len(args)}")


def argo_sequence(
    count: Any = None, start: Any = None, end: Any = None, format: str | None = None
) -> ArgoSequence:
    """A sequence for ``with_sequence=`` (see :class:`ArgoSequence`)."""
    if count is not None and end is not None:
        raise TypeError("argo_sequence takes count= or end=, not both")
    if format is not None and not isinstance(format, str):
        raise TypeError(f"argo_sequence format= is a printf-style string, got {format!r}")
    return ArgoSequence(count, start, end, format)


def _parts(spec: Any) -> Iterator[Any]:
    if isinstance(spec, ArgoRange):
        yield from (spec.start, spec.end, spec.step)
    elif isinstance(spec, ArgoSequence):
        yield from (spec.count, spec.start, spec.end)
    elif isinstance(spec, ArgoLen):
        yield spec.ref
    else:
        yield spec


def refs_of(spec: Any) -> Iterator[Any]:
    """Every reference a loop spec reads (step outputs, template inputs)."""
    for part in _parts(spec):
        if isinstance(part, ArgoLen):
            yield from refs_of(part)
        elif not isinstance(part, int | str | list | tuple | type(None)):
            yield part


def map_loop(spec: Any, wire: Callable[[Any], Any]) -> Any:
    """``spec`` with every reference passed through ``wire`` (a template level's values)."""
    if isinstance(spec, ArgoRange):
        return ArgoRange(*(map_loop(p, wire) for p in (spec.start, spec.end, spec.step)))
    if isinstance(spec, ArgoSequence):
        return ArgoSequence(
            map_loop(spec.count, wire),
            map_loop(spec.start, wire),
            map_loop(spec.end, wire),
            spec.format,
        )
    if isinstance(spec, ArgoLen):
        return ArgoLen(map_loop(spec.ref, wire))
    if isinstance(spec, int | str | list | tuple | type(None)):
        return spec
    return wire(spec)


def check_loop(step: str, with_param: Any, with_sequence: Any) -> Any:
    """The step's loop spec, checked (``None``: no loop)."""
    from ._step import OutputRef
    from ._template import InputParameter

    if with_param is not None and with_sequence is not None:
        raise SignatureError(step, "takes with_param= or with_sequence=, not both", "with_param")
    if with_sequence is not None:
        if not isinstance(with_sequence, ArgoSequence):
            raise SignatureError(
                step,
                f"with_sequence= takes argo_sequence(...), got {with_sequence!r}",
                "with_sequence",
            )
        return with_sequence
    if with_param is None:
        return None
    if isinstance(with_param, str):
        raise SignatureError(
            step,
            f"with_param= takes a list, a list parameter or argo_range(...), got the text "
            f"{with_param!r}",
            "with_param",
        )
    if isinstance(with_param, list | tuple | ArgoRange):
        return list(with_param) if isinstance(with_param, tuple) else with_param
    if isinstance(with_param, OutputRef):
        if with_param.kind != "parameters":
            raise SignatureError(
                step, f"with_param= reads a parameter, not {with_param!r}", "with_param"
            )
        return with_param
    if isinstance(with_param, InputParameter):
        return with_param
    raise SignatureError(
        step,
        f"with_param= takes a list, a list parameter or argo_range(...), got {with_param!r}",
        "with_param",
    )


def loop_items(step: str, spec: Any, read: Callable[[Any], Any]) -> list[Any]:
    """The items of a loop when its step runs; ``read(ref)`` is a reference's value."""

    def number(value: Any, what: str) -> int:
        if isinstance(value, ArgoLen):
            got = read(value.ref) if not isinstance(value.ref, list | tuple) else value.ref
            if not isinstance(got, list | tuple):
                raise SignatureError(step, f"argo_len() reads a list, got {got!r}", what)
            return len(got)
        if not isinstance(value, int | str | list | tuple | type(None)):
            value = read(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)  # an Argo parameter is text
        if not isinstance(value, int) or isinstance(value, bool):
            raise SignatureError(step, f"{what} is an integer, got {value!r}", "with_param")
        return value

    if isinstance(spec, list):
        return list(spec)
    if isinstance(spec, ArgoRange):
        return list(
            range(number(spec.start, "start"), number(spec.end, "end"), number(spec.step, "step"))
        )
    if isinstance(spec, ArgoSequence):
        start = 0 if spec.start is None else number(spec.start, "start")
        if spec.end is not None:
            end = number(spec.end, "end")
            values = (
                list(range(start, end + 1)) if end >= start else list(range(start, end - 1, -1))
            )
        else:
            values = list(
                range(start, start + (0 if spec.count is None else number(spec.count, "count")))
            )
        if spec.format is None:
            return values
        try:
            return [spec.format % v for v in values]
        except (TypeError, ValueError) as exc:
            raise SignatureError(step, f"format {spec.format!r}: {exc}", "with_sequence") from None
    value = read(spec)
    if isinstance(value, str):  # an Argo parameter holding a JSON list
        import json

        try:
            value = json.loads(value)
        except ValueError:
            pass
    if not isinstance(value, list | tuple):
        raise SignatureError(
            step, f"with_param= reads {spec!r}, which is not a list: {value!r}", "with_param"
        )
    return list(value)


def has_item(value: Any) -> bool:
    return isinstance(value, str) and _ITEM.search(value) is not None


def put_item(value: Any, item: Any, step: str, key: str) -> Any:
    """``value`` with ``{{item}}`` (or ``{{item.field}}``) in place: the item itself when the
    value is only that, else its text."""
    if not isinstance(value, str):
        return value

    def field(match: re.Match[str]) -> Any:
        name = match.group(1)
        if name is None:
            return item
        if not isinstance(item, dict) or name not in item:
            raise SignatureError(
                step, f"{{{{item.{name}}}}}: the item {item!r} has no {name!r}", key
            )
        return item[name]

    whole = _ITEM.fullmatch(value.strip())
    if whole is not None:
        return field(whole)
    return _ITEM.sub(lambda m: str(field(m)), value)


def item_key(pattern: str | None, item: Any, name: str, index: int) -> str:
    """A loop item's record key: the step's key with the item in it, else ``name-index``."""
    if pattern is not None and has_item(pattern):
        return str(put_item(pattern, item, name, "key"))
    return f"{name}-{index}"
