"""Run options: what every entry point takes, checked once, and the one place they become a run.

``aflow.run``, ``aflow.run_sync``, :meth:`aflow.Runtime.submit`, :class:`aflow.Runtime`
and ``aflow.engines.load`` keep their keyword arguments; each builds one
:class:`RunOptions` from them (a runtime: its defaults, which ``submit`` overrides
with :meth:`RunOptions.merged`) and passes that on. :func:`new_execution` is the
only code that turns options into an :class:`Execution`.

What is not here, on purpose: *where* a run is kept (``store``, ``serializer``)
belongs to the :class:`~aflow.Runtime`, and *which* run it is (``run_id``,
``params``, ``idempotency_key``, ``reuse``) to the call.

A durable store keeps three of the options (``on_error``, ``timeout``,
``compensation_timeout``) with the run, plus its deadline as a wall time, so
that a resumed run behaves as the one that began: :func:`dump_options` and
:func:`stored_options` are that format.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, final

from .._exceptions import ResumeMismatch
from ..executors._base import Executor as AflowExecutor
from ..executors._base import executor_of
from ._limits import Limit
from ._scheduler import Execution

if TYPE_CHECKING:
    import anyio

    from .._events import EventListener
    from .._graph import Graph
    from ..stores._base import RunRecord
    from ._clock import Clock
    from ._journal import Journal

__all__ = [
    "DEFAULT_RUN_OPTIONS",
    "STORED_OPTIONS",
    "Capacity",
    "RunOptions",
    "dump_options",
    "new_execution",
    "stored_options",
]

_ON_ERROR = ("revert", "continue")
#: The run options a durable store keeps, so that a resumed run behaves the same.
STORED_OPTIONS = ("on_error", "timeout", "compensation_timeout")


def _seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds > 0, got {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")


def _count(what: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}")


@final
@dataclass(frozen=True, slots=True)
class RunOptions:
    """How a run runs: its bounds, its failure policy, its time and who hears of it.

    Built once per call by every entry point (from the keyword arguments users
    pass) and never copied field by field again. Every field is checked here,
    and an error names the field. A field at its default costs one comparison,
    so building one is cheap enough for every call.
    """

    #: At most this many task nodes in flight (``None``: no bound).
    max_concurrency: int | None = None
    #: Named limits: at most ``limits[name]`` nodes of tasks declared ``limit=name``.
    #: Kept as a read-only copy of what was given.
    limits: Mapping[str, int] | None = field(default=None, hash=False)
    #: Receives every run and node event.
    on_event: EventListener | None = None
    #: ``"revert"`` (unwind what ran) or ``"continue"`` (skip what depends on a failure).
    on_error: str = "revert"
    #: Seconds for the whole run (:class:`aflow.errors.RunTimeout`).
    timeout: float | None = None
    #: Seconds for the unwinding after a failure or a cancel.
    compensation_timeout: float | None = None
    #: Where every wait and deadline of the run reads time (the loop's clock if ``None``).
    clock: Clock | None = None
    #: Where bodies run: a ``concurrent.futures`` executor runs sync bodies instead of
    #: aflow's worker threads (``engines.load``); an :class:`aflow.executors.Executor`
    #: (or ``"process"``) runs every body whose task does not name its own.
    executor: Executor | AflowExecutor | str | None = None

    def __post_init__(self) -> None:
        if self.on_error != "revert" and self.on_error != "continue":
            raise ValueError(f"on_error must be 'revert' or 'continue', got {self.on_error!r}")
        if self.timeout is not None:
            _seconds("timeout", self.timeout)
        if self.compensation_timeout is not None:
            _seconds("compensation_timeout", self.compensation_timeout)
        if self.max_concurrency is not None:
            _count("max_concurrency", self.max_concurrency)
        if self.limits is not None:
            if not isinstance(self.limits, Mapping):
                raise TypeError(f"limits must map limit names to ints, got {self.limits!r}")
            for name, total in self.limits.items():
                _count(f"limit {name!r}", total)
            object.__setattr__(self, "limits", MappingProxyType(dict(self.limits)))
        if self.on_event is not None and not callable(self.on_event):
            raise TypeError(
                f"on_event must be a callable taking an aflow.Event, got {self.on_event!r}"
            )
        if self.clock is not None:
            for method in ("now", "sleep", "cancel_scope"):
                if not callable(getattr(self.clock, method, None)):
                    raise TypeError(
                        f"clock must be an aflow clock (now(), sleep(), cancel_scope()), "
                        f"got {self.clock!r}"
                    )
        executor = self.executor
        if executor is not None and not isinstance(executor, Executor | AflowExecutor):
            try:
                object.__setattr__(self, "executor", executor_of(executor, "the run"))
            except ValueError:
                raise TypeError(
                    f"executor must be 'loop', 'process', an aflow.executors.Executor, a "
                    f"distributed.Client or a concurrent.futures.Executor, got {executor!r}"
                ) from None

    def merged(self, **overrides: Any) -> RunOptions:
        """These options with every override that is not ``None`` (a call's options over a
        runtime's defaults); ``self`` itself when there is none."""
        changed = {name: value for name, value in overrides.items() if value is not None}
        if not changed:
            return self
        return self.replaced(**changed)

    def nested(self) -> RunOptions:
        """The options of a run nested in one with these (a retried flow's attempt): the
        defaults, but for the clock, the executor and the compensation deadline."""
        return RunOptions(
            compensation_timeout=self.compensation_timeout,
            clock=self.clock,
            executor=self.executor,
        )

    def replaced(self, **changes: Any) -> RunOptions:
        """These options with ``changes`` as they are (``None`` included)."""
        values = dict(zip(_FIELDS, _VALUES(self), strict=True))
        values.update(changes)
        return RunOptions(**values)


_FIELDS = tuple(RunOptions.__dataclass_fields__)
_VALUES = operator.attrgetter(*_FIELDS)
#: What every option at its default means.
DEFAULT_RUN_OPTIONS = RunOptions()


@final
class Capacity:
    """The slots runs take: named limits, the global bound, worker threads.

    A :class:`~aflow.Runtime` builds one from its options when it is entered and
    every run it starts shares it (its limits are first come, first served across
    runs); a run of its own (``aflow.run``, an engine) gets a fresh one.
    """

    __slots__ = ("global_limits", "limits", "threads")

    def __init__(
        self,
        limits: Mapping[str, Limit],
        global_limits: tuple[Limit, ...],
        threads: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.limits = limits
        self.global_limits = global_limits
        self.threads = threads

    @classmethod
    def of(cls, options: RunOptions, threads: anyio.CapacityLimiter | None = None) -> Capacity:
        """Fresh limits for ``options`` (``max_concurrency`` and ``limits``)."""
        if options.max_concurrency is None and not options.limits and threads is None:
            return _UNBOUNDED
        bound = options.max_concurrency
        return cls(
            {name: Limit(name, total) for name, total in (options.limits or {}).items()},
            (Limit("max_concurrency", bound),) if bound is not None else (),
            threads,
        )


#: No limits and aflow's default threads (an Execution copies what it is given).
_UNBOUNDED = Capacity({}, ())


def new_execution(
    graph: Graph,
    options: RunOptions,
    capacity: Capacity | None = None,
    *,
    run_id: str | None = None,
    journal: Journal | None = None,
) -> Execution:
    """An execution of ``graph`` with ``options``: every run aflow starts is built here.

    ``capacity`` is the runtime's (shared by its runs); without one the run gets
    limits of its own from ``options``. ``options.max_concurrency`` and
    ``options.limits`` are read only then: a runtime's are in its capacity.
    """
    if capacity is None:
        capacity = Capacity.of(options)
    listener = options.on_event
    return Execution(
        graph,
        options,
        capacity,
        run_id=run_id,
        listeners=(listener,) if listener is not None else (),
        journal=journal,
    )


# --- the stored form ------------------------------------------------------------------------


def dump_options(options: RunOptions, wall: float) -> str:
    """The options a store keeps, with the run's deadline as a wall time: a run resumed
    after its process was down for a while keeps its deadline, not a new one (issue 14)."""
    kept: dict[str, Any] = {name: getattr(options, name) for name in STORED_OPTIONS}
    timeout = options.timeout
    kept["deadline"] = None if timeout is None else wall + timeout
    return json.dumps(kept)


def stored_options(record: RunRecord, defaults: RunOptions) -> tuple[RunOptions, float | None]:
    """The options a run was submitted with (``defaults`` for what its row does not say),
    and its deadline (wall seconds), as its store keeps them; a row is data, so anything
    else is a typed error naming the run."""
    try:
        stored = json.loads(record.options) if record.options else {}
    except ValueError:
        stored = None
    problem = None if isinstance(stored, dict) else "not a JSON object"
    if stored is None or not isinstance(stored, dict):
        stored = {}
    on_error = stored.get("on_error")
    if problem is None and on_error not in (None, *_ON_ERROR):
        problem = f"on_error={on_error!r}"
    for name in ("timeout", "compensation_timeout", "deadline"):
        value = stored.get(name)
        if problem is None and value is not None:
            number = type(value) in (int, float) and math.isfinite(value)
            if not number or (name != "deadline" and not value > 0):
                problem = f"{name}={value!r}"
    if problem is not None:
        raise ResumeMismatch(
            record.run_id,
            f"its stored options are not aflow's ({problem}): {record.options!r:.200}",
        )
    # a stored option (None included) wins over the defaults, but for an unset on_error
    kept = {name: stored[name] for name in STORED_OPTIONS if name in stored}
    if kept.get("on_error") is None:
        kept.pop("on_error", None)
    deadline = stored.get("deadline")
    options = defaults.replaced(**kept) if kept else defaults
    return options, None if deadline is None else float(deadline)
