"""What a running task can ask about itself, and the failure-injection registry for tests."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from ._scheduler import Execution

__all__ = ["ATTEMPT", "EXECUTION", "INJECTIONS", "Injection", "current_attempt"]

ATTEMPT: contextvars.ContextVar[int] = contextvars.ContextVar("aflow_attempt")
#: The run a task belongs to (a retried flow starts its nested run from it).
EXECUTION: contextvars.ContextVar[Execution] = contextvars.ContextVar("aflow_execution")


def current_attempt() -> int:
    """The attempt number (1 for the first) of the task that is running now.

    Raises ``RuntimeError`` when called outside a task run by aflow.
    """
    try:
        return ATTEMPT.get()
    except LookupError:
        raise RuntimeError("aflow.current_attempt() is only available inside a task") from None


@final
@dataclass(slots=True)
class Injection:
    """A failure planned at a node (see ``aflow.testing.inject_failure``)."""

    node: str
    attempt: int | None
    action: str  # "raise" | "hang" | "cancel"
    error: BaseException | None
    hits: int = 0


#: node key or task name -> planned injections. Empty except inside
#: ``aflow.testing.inject_failure``; the scheduler checks it with one truth test.
INJECTIONS: dict[str, list[Injection]] = {}
