"""``BigParameter`` values in a durable run: written once to the artifact store, passed
by reference (``{"__aflow_big__": sha}``) through results and records, read back (a copy
of its own) by each step that takes one."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from .._runtime._builder_api import RunView, in_thread
from ._artifacts import ArtifactStore, Origin
from ._step import Step

__all__ = ["BIG", "holds_big", "is_big", "keep_bigs", "load_bigs", "read_bigs", "show_bigs"]

BIG = "__aflow_big__"


def is_big(value: Any) -> bool:
    """A reference to a big value (what results and records hold in its place)."""
    return type(value) is dict and len(value) == 1 and BIG in value


def big_outputs(step: Step) -> tuple[str, ...]:
    """The step's output parameters declared ``BigParameter``."""
    return tuple(name for name, f in step.all_output_fields.items() if f.big)


async def keep_bigs(
    step: Step, run: RunView, store: ArtifactStore, result: dict[str, Any]
) -> dict[str, Any]:
    """``result`` with its big outputs written to ``store`` and replaced by references
    (a run with no store keeps them as they are)."""
    names = big_outputs(step)
    top = run.top
    if not names or top.store is None:
        return result
    params = dict(result["parameters"])
    for name in names:
        if name in params and not is_big(params[name]):
            text = top.encode(f"{step.node_key}.{name}", params[name])
            sha = await in_thread(functools.partial(store.put_bytes, text.encode()))
            params[name] = {BIG: sha}
    return {**result, "parameters": params}


def holds_big(value: Any) -> bool:
    """A reference, or a list of them (a fan-out's stacked outputs)."""
    if type(value) is dict:
        return len(value) == 1 and BIG in value
    if type(value) is list and value:  # stacked: every item a reference (or None)
        return any(is_big(v) for v in (value[0], value[-1]))
    return False


def read_bigs(
    run: RunView, store: ArtifactStore, values: Mapping[str, Any], origin: Origin
) -> dict[str, Any]:
    """``values`` with every big reference (alone or in a list) read back (blocking: the
    caller decides where; a condition reads them inline)."""
    top = run.top

    def read(ref: dict[str, Any]) -> Any:
        return top.decode(store.read_bytes(ref[BIG], origin).decode())

    def one(value: Any) -> Any:
        if is_big(value):
            return read(value)
        if type(value) is list:
            return [read(v) if is_big(v) else v for v in value]
        return value

    return {k: one(v) for k, v in values.items()}


async def load_bigs(
    run: RunView, store: ArtifactStore, params: Mapping[str, Any], origin: Origin
) -> dict[str, Any]:
    """``params`` with every big reference (alone or in a list) read back, in a thread."""
    if not any(holds_big(v) for v in params.values()):
        return dict(params)
    loaded: dict[str, Any] = await in_thread(
        functools.partial(read_bigs, run, store, params, origin)
    )
    return loaded


def show_bigs(
    values: Mapping[str, Any], root: Any, loads: Callable[[str], Any] | None, origin: Origin
) -> dict[str, Any]:
    """For queries: big references read back (left as they are without a reader)."""
    if loads is None:
        return dict(values)
    store = ArtifactStore(root)

    def one(value: Any) -> Any:
        if is_big(value):
            return loads(store.read_bytes(value[BIG], origin).decode())
        if type(value) is list and any(map(is_big, value)):
            return [one(v) for v in value]
        return value

    return {k: one(v) for k, v in values.items()}
