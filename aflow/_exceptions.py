"""The exception tree.

Everything aflow raises derives from :class:`AflowError`. Errors found while
building or validating a workflow (before any task runs) also derive from
``ValueError`` or ``TypeError``, so callers can catch them the usual way::

    AflowError(Exception)
    ├── DefinitionError(AflowError, ValueError)   raised before anything runs
    │   ├── CycleError              .cycle
    │   ├── DuplicateTaskError      .name
    │   └── SignatureError(DefinitionError, TypeError)   .task, .argument, .reason
    ├── RunError(AflowError)                      .run_id
    │   ├── RunNotFinished          the run has not finished yet
    │   └── RunCancelled            run.cancel() or a runtime shutdown stopped it
    └── AflowInternalError(AflowError)            a bug in aflow

A task's own exception is never wrapped: it reaches the awaiter as raised,
with notes (PEP 678) naming the task and the run. Cancellation is never
wrapped, converted or swallowed.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AflowError",
    "AflowInternalError",
    "CycleError",
    "DefinitionError",
    "DuplicateTaskError",
    "RunCancelled",
    "RunError",
    "RunNotFinished",
    "SignatureError",
]


class AflowError(Exception):
    """The root of every exception aflow raises."""


class DefinitionError(AflowError, ValueError):
    """A workflow is malformed; raised before any of its tasks runs."""


class CycleError(DefinitionError):
    """The graph has a cycle; :attr:`cycle` lists the nodes on it, in order."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle: tuple[str, ...] = tuple(cycle)
        path = " -> ".join((*self.cycle, self.cycle[0])) if self.cycle else "?"
        super().__init__(f"cycle: {path}")

    def __reduce__(self) -> tuple[type[CycleError], tuple[tuple[str, ...]]]:
        return (type(self), (self.cycle,))


class DuplicateTaskError(DefinitionError):
    """Two nodes of one graph were given the same key."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"duplicate node key {name!r}: node keys must be unique within a graph")

    def __reduce__(self) -> tuple[type[DuplicateTaskError], tuple[str]]:
        return (type(self), (self.name,))


class SignatureError(DefinitionError, TypeError):
    """A task would be called with arguments its function cannot accept.

    :attr:`task` names the node, :attr:`argument` the parameter at fault
    (or ``None`` when the fault is the number of arguments), and :attr:`reason`
    says what is wrong.
    """

    def __init__(self, task: str, reason: str, argument: str | None = None) -> None:
        self.task = task
        self.reason = reason
        self.argument = argument
        where = f"argument {argument!r} of " if argument else ""
        super().__init__(f"{where}task {task!r}: {reason}")

    def __reduce__(self) -> tuple[type[SignatureError], tuple[str, str, str | None]]:
        return (type(self), (self.task, self.reason, self.argument))


class RunError(AflowError):
    """Something about a run (rather than a task in it) went wrong."""

    def __init__(self, run_id: str, message: str) -> None:
        self.run_id = run_id
        self.message = message
        super().__init__(f"run {run_id}: {message}")

    def __reduce__(self) -> tuple[type[RunError], tuple[str, str]]:
        return (type(self), (self.run_id, self.message))


class RunNotFinished(RunError):
    """A result was asked of a run that has not finished."""

    def __init__(self, run_id: str, message: str = "the run has not finished") -> None:
        super().__init__(run_id, message)


class RunCancelled(RunError):
    """The run was cancelled (``run.cancel()``, or its runtime shut down) before it finished.

    The task that cancelled is not itself cancelled, so it gets this error
    instead of ``CancelledError``; a caller whose *own* task is cancelled
    always gets ``CancelledError``.
    """

    def __init__(self, run_id: str, message: str = "the run was cancelled") -> None:
        super().__init__(run_id, message)


class AflowInternalError(AflowError):
    """A bug in aflow: please report it with the traceback."""
