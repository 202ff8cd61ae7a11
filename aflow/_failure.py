"""``aflow.Failure``: what a revert and a run's record know about an error."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import final

__all__ = ["Failure"]


@final
@dataclass(frozen=True, slots=True)
class Failure:
    """An exception captured from a node, with where and when it happened.

    A revert receives one as ``result=`` for the node that failed (or was
    cancelled mid-way), and ``flow_failures=`` maps node keys to them.
    ``exception`` is the live exception object; the text fields survive
    serialisation when the exception itself cannot.
    """

    task: str
    exception: BaseException = field(compare=False)
    exc_type: str = ""
    message: str = ""
    traceback_text: str = field(default="", compare=False, repr=False)
    attempt: int = 1
    cancelled: bool = False

    @classmethod
    def capture(
        cls, task: str, exc: BaseException, attempt: int, *, cancelled: bool = False
    ) -> Failure:
        """Build a Failure from an exception raised by node ``task``."""
        return cls(
            task=task,
            exception=exc,
            exc_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
            message=str(exc),
            traceback_text="".join(traceback.format_exception(exc)),
            attempt=attempt,
            cancelled=cancelled,
        )

    def check(self, *types: type[BaseException]) -> type[BaseException] | None:
        """The first of ``types`` the exception is an instance of, else ``None`` (as TaskFlow)."""
        for kind in types:
            if isinstance(self.exception, kind):
                return kind
        return None

    def reraise(self) -> None:
        """Raise the captured exception again."""
        raise self.exception

    def __str__(self) -> str:
        what = (
            "cancelled" if self.cancelled else f"{self.exc_type.rsplit('.', 1)[-1]}: {self.message}"
        )
        return f"Failure({self.task!r}, {what})"
