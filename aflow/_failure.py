"""``aflow.Failure``: what a revert and a run's record know about an error."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, final

from ._exceptions import RemoteError, told

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
    attempt: int = 1
    cancelled: bool = False
    # the traceback as it was captured, formatted when first asked (formatting one costs
    # more than a whole short run: a failing run formats only what someone reads)
    _traceback: TracebackType | None = field(default=None, compare=False, repr=False)
    _text: list[str] = field(default_factory=list, compare=False, repr=False, init=False)

    @classmethod
    def capture(
        cls, task: str, exc: BaseException, attempt: int, *, cancelled: bool = False
    ) -> Failure:
        """Build a Failure from an exception raised by node ``task``."""
        return cls(
            task=task,
            exception=exc,
            exc_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
            message=told(exc),
            attempt=attempt,
            cancelled=cancelled,
            _traceback=exc.__traceback__,
        )

    @property
    def traceback_text(self) -> str:
        """The exception's traceback as it was captured (with the notes it has now), formatted."""
        if not self._text:
            exc = self.exception
            import traceback  # (when first read: import aflow stays light)

            self._text.append("".join(traceback.format_exception(type(exc), exc, self._traceback)))
        return self._text[0]

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (for a revert in a worker process, a pickle store) with its traceback
        # as text, and its exception as itself if that pickles, else as its text.
        import pickle

        exc = self.exception
        try:
            pickle.loads(pickle.dumps(exc))  # (a type whose __init__ pickling breaks: no)
        except Exception:
            exc = RemoteError(self.exc_type, self.message, self.traceback_text)
        fields = (self.task, exc, self.exc_type, self.message, self.attempt, self.cancelled)
        return (_unpickled, (*fields, self.traceback_text))

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


def _unpickled(
    task: str,
    exception: BaseException,
    exc_type: str,
    message: str,
    attempt: int,
    cancelled: bool,
    text: str,
) -> Failure:
    failure = Failure(task, exception, exc_type, message, attempt, cancelled)
    failure._text.append(text)
    return failure
