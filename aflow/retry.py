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
Once the flow is reverted for good (the controller gave up, or something
after the flow failed), the controller's own ``revert`` runs, as in TaskFlow.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, final

from ._atom import Params, ProvidesLike, analyse_params, check_result, provides_spec, shape_of
from ._exceptions import NotFound, SignatureError
from ._failure import Failure

__all__ = [
    "REVERT",
    "REVERT_ALL",
    "RETRY",
    "AlwaysRevert",
    "AlwaysRevertAll",
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
    """The attempts of a retried flow so far, oldest first.

    ``execute`` and ``on_failure`` see the failed ones; ``revert`` sees every attempt
    made, the last with no failures if it succeeded (TaskFlow's history).
    """

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

    ``execute(history, **requires)`` returns the value for the next attempt,
    stored under ``provides`` (a name, a tuple of names for a returned
    sequence, or a set of names for a returned dict, as a task's) and readable
    by the flow's tasks; parameters after ``history`` are required by name,
    like a task's. ``on_failure(history, **requires)`` returns a
    :class:`Decision`. ``revert(history, **requires)`` runs once the flow is
    reverted for good (see :meth:`revert`).
    """

    def __init__(
        self,
        name: str | None = None,
        provides: ProvidesLike = None,
        requires: str | Iterable[str] | None = None,
        rebind: Mapping[str, str] | Iterable[str] | None = None,
        revert_all: bool = False,
    ) -> None:
        self.name: str = name if name is not None else type(self).__name__
        if not isinstance(self.name, str) or not self.name:
            raise SignatureError(type(self).__name__, f"name must be a non-empty string: {name!r}")
        self._spec = provides_spec(self.name, provides)
        #: The names the attempt's value is stored under (as a task's ``provides``).
        self.provides: tuple[str, ...] = self._spec.names
        self.revert_all = revert_all
        self.params: Params = analyse_params(
            self.name, type(self).execute, skip=2, rebind=rebind, requires=requires or ()
        )
        #: What ``revert`` reads by name, and whether it takes ``flow_failures``
        #: (``None``: ``revert`` is not overridden, nothing to call).
        self.revert_params: tuple[Params, bool] | None = self._revert_params(requires)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    @property
    def requires(self) -> frozenset[str]:
        """The names this controller must be given: its ``execute``'s and its
        ``revert``'s, as TaskFlow's ``retry.requires``."""
        names = set(self.params.required.values())
        if self.revert_params is not None:
            names.update(self.revert_params[0].required.values())
        return frozenset(names)

    def execute(self, history: History, **requires: Any) -> Any:
        """The value for the next attempt (default: the attempt number, from 1)."""
        return len(history) + 1

    def on_failure(self, history: History, **requires: Any) -> Decision:
        """Whether to retry after the latest failure (default: never)."""
        return self._give_up()

    def revert(self, history: History, **requires: Any) -> Any:
        """Undo what the controller did, once its flow is reverted for good.

        Called after the flow's tasks are reverted: when the controller gave up
        (or its own ``execute`` raised), or when the flow succeeded and something
        after it failed; never between attempts. ``history`` holds every
        attempt made; parameters after it are read by name as ``execute``'s are
        (same ``rebind``), and ``flow_failures`` (task name -> Failure) is given
        if it is a parameter. Sync or async; the default does nothing.
        """

    def _give_up(self) -> Decision:
        return REVERT_ALL if self.revert_all else REVERT

    def _revert_params(self, requires: str | Iterable[str] | None) -> tuple[Params, bool] | None:
        revert = type(self).revert
        if revert is Retry.revert:
            return None
        shape = shape_of(revert, 2, ())
        if shape is None:  # a callable inspect cannot read: give it what execute reads
            return self.params, False
        named, has_default, var_kw = shape
        renamed = {**self.params.required, **self.params.optional}  # execute's rebind
        required: dict[str, str] = {}
        optional: dict[str, str] = {}
        for param in named:
            if param != "flow_failures":
                table = optional if param in has_default else required
                table[param] = renamed.get(param, param)
        if var_kw:  # **kwargs: the names given as requires=, as TaskFlow does
            extra = (requires,) if isinstance(requires, str) else tuple(requires or ())
            for name in extra:
                required.setdefault(name, name)
        return Params(required, optional), "flow_failures" in named or var_kw

    def _values(self, value: Any) -> dict[str, Any]:
        """The names an attempt's ``value`` is stored under (a wrong shape raises
        :class:`aflow.errors.ProvidesError` naming the controller)."""
        spec = self._spec
        if spec.kind == "none":
            return {}
        if spec.kind == "name":
            return {spec.names[0]: value}
        check_result(self.name, spec, value)
        return {name: value[where] for name, where in spec.selectors.items()}

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
        provides: ProvidesLike = None,
        revert_all: bool = False,
    ) -> None:
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            hint = (
                f": Times(1) is equivalent (TaskFlow runs Times({attempts}) once, as Times(1))"
                if isinstance(attempts, int) and not isinstance(attempts, bool)
                else ""
            )
            raise SignatureError(
                name or "Times", f"attempts must be an int >= 1, got {attempts!r}{hint}", "attempts"
            )
        self.attempts = attempts
        super().__init__(name, provides, revert_all=revert_all)

    def on_failure(self, history: History, **requires: Any) -> Decision:
        return RETRY if len(history) < self.attempts else self._give_up()


@final
class ForEach(Retry):
    """Try the flow with each value in turn (provided by name) until one attempt succeeds.

    An empty collection fails the flow before its first attempt with
    :class:`aflow.errors.NotFound`, as in TaskFlow.
    """

    def __init__(
        self,
        values: Iterable[Any],
        name: str | None = None,
        provides: ProvidesLike = None,
        revert_all: bool = False,
    ) -> None:
        if not isinstance(values, Iterable):
            raise SignatureError(
                name or "ForEach", f"values must be a collection, got {values!r}", "values"
            )
        self.values: tuple[Any, ...] = tuple(values)
        super().__init__(name, provides, revert_all=revert_all)

    def execute(self, history: History, **requires: Any) -> Any:
        return _next_value(self, self.values, history)

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
        provides: ProvidesLike = None,
        requires: str | Iterable[str] | None = None,
        rebind: Mapping[str, str] | Iterable[str] | None = None,
        revert_all: bool = False,
    ) -> None:
        super().__init__(name, provides, requires, rebind, revert_all)

    def execute(self, history: History, values: Sequence[Any]) -> Any:  # type: ignore[override]
        return _next_value(self, list(values), history)

    def on_failure(self, history: History, values: Sequence[Any]) -> Decision:  # type: ignore[override]
        return RETRY if len(history) < len(list(values)) else self._give_up()


def _next_value(retry: Retry, values: Sequence[Any], history: History) -> Any:
    """The value of the next attempt; :class:`aflow.errors.NotFound` when none is left."""
    if len(history) < len(values):
        return values[len(history)]
    if not values:
        raise NotFound(f"retry {retry.name!r} has no value to try: its collection is empty")
    raise NotFound(f"retry {retry.name!r} has no value left to try: all {len(values)} were tried")


class AlwaysRevert(Retry):
    """Never retries: a failure reverts the flow and escalates to the enclosing retry
    (TaskFlow's ``AlwaysRevert``). Provides ``None`` if given a name."""

    def __init__(
        self,
        name: str | None = None,
        provides: ProvidesLike = None,
        requires: str | Iterable[str] | None = None,
        rebind: Mapping[str, str] | Iterable[str] | None = None,
    ) -> None:
        super().__init__(name, provides, requires, rebind)

    def execute(self, history: History, **requires: Any) -> Any:
        return None

    def on_failure(self, history: History, **requires: Any) -> Decision:
        return REVERT


class AlwaysRevertAll(Retry):
    """Never retries: a failure reverts the flow and fails the whole run, whatever the
    enclosing retries say (TaskFlow's ``AlwaysRevertAll``). Provides ``None`` if named."""

    def __init__(
        self,
        name: str | None = None,
        provides: ProvidesLike = None,
        requires: str | Iterable[str] | None = None,
        rebind: Mapping[str, str] | Iterable[str] | None = None,
    ) -> None:
        super().__init__(name, provides, requires, rebind, revert_all=True)

    def execute(self, history: History, **requires: Any) -> Any:
        return None

    def on_failure(self, history: History, **requires: Any) -> Decision:
        return REVERT_ALL
