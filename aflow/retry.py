"""Retry controllers for flows (TaskFlow's ``taskflow.retry``).

Attach one to a flow and a failure inside that flow reverts the flow's
completed tasks and runs the flow again, as long as the controller says so::

    from aflow.patterns import linear_flow as lf
    import aflow.retry

    flow = lf.Flow("upload", retry=aflow.retry.ForEach(["eu", "us"], provides="region"))
    flow.add(Upload())          # Upload.execute(self, region) gets "eu", then "us"

A controller that gives up lets the failure escalate to the retry of the
enclosing flow, if any, else the run fails (everything is reverted).
``revert_all=True`` skips the enclosing retries and fails the run at once.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, final

from ._atom import Params, analyse_params, provides_spec
from ._exceptions import SignatureError
from ._failure import Failure

__all__ = [
    "REVERT",
    "REVERT_ALL",
    "RETRY",
    "Attempt",
    "Decision",
    "ForEach",
    "History",
    "ParameterizedForEach",
    "Retry",
    "Times",
]


class Decision(enum.Enum):
    """What a controller decides after its flow failed."""

    #: Revert the flow and run it again.
    RETRY = "retry"
    #: Revert the flow and let the failure escalate to the enclosing retry.
    REVERT = "revert"
    #: Revert the flow and fail the whole run, whatever the enclosing retries say.
    REVERT_ALL = "revert_all"


RETRY = Decision.RETRY
REVERT = Decision.REVERT
REVERT_ALL = Decision.REVERT_ALL


@final
@dataclass(frozen=True, slots=True)
class Attempt:
    """One failed run of a retried flow: the controller's value and what failed."""

    value: Any
    failures: Mapping[str, Failure]


@final
@dataclass(slots=True)
class History:
    """The failed attempts of a retried flow so far, oldest first."""

    attempts: list[Attempt] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.attempts)

    def __iter__(self) -> Iterator[Attempt]:
        return iter(self.attempts)

    def values(self) -> list[Any]:
        """The controller values already tried."""
        return [a.value for a in self.attempts]


class Retry:
    """The base of retry controllers: subclass it to decide differently.

    ``execute(history, **requires)`` returns the value for the next attempt
    (stored under ``provides``, readable by the flow's tasks); parameters
    after ``history`` are required by name, like a task's.
    ``on_failure(history, **requires)`` returns a :class:`Decision`.
    """

    def __init__(
        self,
        name: str | None = None,
        provides: str | None = None,
        requires: Iterable[str] | None = None,
        rebind: Mapping[str, str] | Iterable[str] | None = None,
        revert_all: bool = False,
    ) -> None:
        self.name: str = name if name is not None else type(self).__name__
        if not isinstance(self.name, str) or not self.name:
            raise SignatureError(type(self).__name__, f"name must be a non-empty string: {name!r}")
        spec = provides_spec(self.name, provides)
        if spec.kind not in ("none", "name"):
            raise SignatureError(self.name, "a retry provides one name", "provides")
        #: The name the attempt's value is stored under (``None``: not stored).
        self.provides: str | None = spec.names[0] if spec.names else None
        self.revert_all = revert_all
        self.params: Params = analyse_params(
            self.name, type(self).execute, skip=2, rebind=rebind, requires=requires or ()
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def execute(self, history: History, **requires: Any) -> Any:
        """The value for the next attempt (default: the attempt number, from 1)."""
        return len(history) + 1

    def on_failure(self, history: History, **requires: Any) -> Decision:
        """Whether to retry after the latest failure (default: never)."""
        return self._give_up()

    def _give_up(self) -> Decision:
        return REVERT_ALL if self.revert_all else REVERT

    async def _call(self, method: str, history: History, inputs: Mapping[str, Any]) -> Any:
        value = getattr(self, method)(history, **inputs)
        if inspect.isawaitable(value):
            value = await value
        return value


@final
class Times(Retry):
    """Run the flow at most ``attempts`` times in total; provides the attempt number (1, 2...)."""

    def __init__(
        self,
        attempts: int = 1,
        name: str | None = None,
        provides: str | None = None,
        revert_all: bool = False,
    ) -> None:
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise SignatureError(
                name or "Times", f"attempts must be an int >= 1, got {attempts!r}", "attempts"
            )
        self.attempts = attempts
        super().__init__(name, provides, revert_all=revert_all)

    def on_failure(self, history: History, **requires: Any) -> Decision:
        return RETRY if len(history) < self.attempts else self._give_up()


@final
class ForEach(Retry):
    """Try the flow with each value in turn (provided by name) until one attempt succeeds."""

    def __init__(
        self,
        values: Iterable[Any],
        name: str | None = None,
        provides: str | None = None,
        revert_all: bool = False,
    ) -> None:
        self.values: tuple[Any, ...] = tuple(values)
        if not self.values:
            raise SignatureError(name or "ForEach", "needs at least one value", "values")
        super().__init__(name, provides, revert_all=revert_all)

    def execute(self, history: History, **requires: Any) -> Any:
        return self.values[len(history)]

    def on_failure(self, history: History, **requires: Any) -> Decision:
        return RETRY if len(history) < len(self.values) else self._give_up()


@final
class ParameterizedForEach(Retry):
    """Like :class:`ForEach`, with the values read by name from the flow (``values``).

    ``rebind=["regions"]`` (or ``{"values": "regions"}``) reads them from another name.
    """

    def __init__(
        self,
        name: str | None = None,
        provides: str | None = None,
        requires: Iterable[str] | None = None,
        rebind: Mapping[str, str] | Iterable[str] | None = None,
        revert_all: bool = False,
    ) -> None:
        super().__init__(name, provides, requires, rebind, revert_all)

    def execute(self, history: History, values: Sequence[Any]) -> Any:  # type: ignore[override]
        values = list(values)
        if len(history) >= len(values):
            raise ValueError(f"retry {self.name!r} has no value left to try ({len(values)} given)")
        return values[len(history)]

    def on_failure(self, history: History, values: Sequence[Any]) -> Decision:  # type: ignore[override]
        return RETRY if len(history) < len(list(values)) else self._give_up()
