"""dflow's function-style ops (``@OP.function``): call one inside ``with Workflow(...)``
to add a step; its outputs come back as references to wire into the next call."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._exceptions import SignatureError
from ._op import OP, _make_op
from ._step import BUILDING, OutputRef, Step

__all__ = ["function_op"]


def function_op(fn: Callable[..., Any], outputs: Mapping[str, Any] | None) -> OP:
    """An op made of ``fn`` (as ``@op`` makes one), as an instance that can be called."""
    made = _make_op(fn, outputs)
    base_name = getattr(fn, "__name__", "op").lower().replace("_", "-").strip("-") or "op"

    def __call__(self: OP, *args: Any, **kwargs: Any) -> Any:
        fields = type(self).get_input_sign().fields
        names = list(fields)
        if len(args) > len(names):
            raise SignatureError(
                base_name, f"takes {len(names)} inputs, got {len(args)} positional"
            )
        for name, value in zip(names, args, strict=False):
            if name in kwargs:
                raise SignatureError(base_name, "got two values for the input", name)
            kwargs[name] = value
        building = BUILDING.get()
        if building is None:  # outside a workflow: the function itself
            return fn(**kwargs)
        token = BUILDING.set(None)  # the step is added below, as a call
        try:
            count = building._calls.get(base_name, 0)
            building._calls[base_name] = count + 1
            step = Step(
                f"{base_name}-{count}",
                self,
                parameters={
                    k: v for k, v in kwargs.items() if k in fields and not fields[k].is_artifact
                },
                artifacts={
                    k: v for k, v in kwargs.items() if k not in fields or fields[k].is_artifact
                },
            )
        finally:
            BUILDING.reset(token)
        building._made(step, called=True)
        out: dict[str, OutputRef] = {**step.outputs.parameters, **step.outputs.artifacts}
        return out

    callable_op = type(
        made.__name__, (made,), {"__call__": __call__, "__module__": made.__module__}
    )
    callable_op.__qualname__ = made.__qualname__
    instance: OP = callable_op()
    return instance
