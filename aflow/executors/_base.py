"""What an executor is, and how a task's or a run's ``executor=`` is read."""

from __future__ import annotations

import contextvars
from typing import Any

__all__ = ["REMOTE_STEP", "Executor", "executor_of"]

#: In a worker (another process): what ``aflow.current_step()`` gives the body running
#: there (a ``StepInfo`` made by the calling process, without result or error).
REMOTE_STEP: contextvars.ContextVar[Any] = contextvars.ContextVar("aflow_remote_step")


class Executor:
    """Runs task bodies somewhere other than the event loop. aflow calls :meth:`call`
    for each attempt; the result (or error) comes back into the run, which checkpoints
    it and decides on retries: an executor never retries by itself."""

    #: the name spans and reports give it (``aflow.executor``)
    name = "executor"

    async def call(
        self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], step: Any
    ) -> Any:
        """Run ``target`` (a task, or a revert function: a module-level name another
        process can import) with ``args`` and ``kwargs``; ``step`` is what
        ``aflow.current_step()`` gives the body there. Cancelled, it stops waiting and
        discards a late result."""
        raise NotImplementedError


def executor_of(spec: Any, where: str) -> Executor | None:
    """The executor ``spec`` names (``None`` or ``"loop"``: the event loop, as today);
    a :class:`ValueError` naming ``where`` for anything else."""
    if spec is None or spec == "loop":
        return None
    if spec == "process":
        from ._process import default_pool

        return default_pool()
    if isinstance(spec, Executor):
        return spec
    raise ValueError(
        f"{where}: executor must be 'loop', 'process' or an aflow.executors.Executor, got {spec!r}"
    )
