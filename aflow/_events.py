"""Run and node events: structlog records and in-process listeners.

structlog is used here and nowhere else, and never imported by aflow: node
transitions are logged at debug level and run transitions at info level, under
the logger name ``aflow``, only when the application has configured structlog
(which it has imported, then; a library stays quiet by default, and ``import
aflow`` does not pay for structlog's own imports). When nobody listens and that logger would
drop the record, the scheduler does no event work at all: it checks one flag.
Run hooks (:func:`add_run_hook`, process-wide: aflow.otel) give each run made afterwards
an observer, a listener that is also told as each attempt's body begins.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, final

from ._exceptions import told

__all__ = [
    "Event",
    "EventListener",
    "EventSink",
    "RunHook",
    "RunObserver",
    "add_run_hook",
    "remove_run_hook",
    "warn",
]

#: Event names, fixed: tests and dashboards match on them.
RUN_STARTED = "run_started"
RUN_SUCCEEDED = "run_succeeded"
RUN_FAILED = "run_failed"
RUN_CANCELLED = "run_cancelled"
RUN_REVERTED = "run_reverted"
RUN_SUSPENDED = "run_suspended"
RUN_RELEASED = "run_released"
RUN_WAITING = "run_waiting"
TASK_STARTED = "task_started"
TASK_SUCCEEDED = "task_succeeded"
TASK_FAILED = "task_failed"
TASK_RETRIED = "task_retried"
TASK_CANCELLED = "task_cancelled"
TASK_SKIPPED = "task_skipped"
REVERT_STARTED = "revert_started"
REVERT_SUCCEEDED = "revert_succeeded"
REVERT_FAILED = "revert_failed"
REVERT_RETRIED = "revert_retried"


@final
@dataclass(frozen=True, slots=True)
class Event:
    """One transition of a run or of one of its nodes.

    ``name`` is one of ``run_started``, ``run_succeeded``, ``run_failed``,
    ``run_reverted``, ``run_cancelled``, ``run_suspended``, ``run_released`` (a durable
    run its runtime let go of as it shut down), ``run_waiting`` (a durable run unloaded
    while all it runs waits for events or timers), ``task_started``, ``task_succeeded``,
    ``task_failed``, ``task_retried``, ``task_cancelled``, ``task_skipped``,
    ``revert_started``, ``revert_succeeded``, ``revert_failed``,
    ``revert_retried``. Run events have ``node=None``. ``replayed``: given again
    from the run's state (``run.events(replay=True)``), not as it happened.
    """

    name: str
    run_id: str
    node: str | None = None
    task: str | None = None
    attempt: int = 0
    duration_s: float | None = None
    error: BaseException | None = None
    timestamp: float = 0.0
    #: given again by ``run.events(replay=True)`` from the run's state, not as it happened
    replayed: bool = False


EventListener = Callable[[Event], None]


class RunObserver(Protocol):
    """What a run hook gives a run (aflow.otel: its spans and metrics): a listener of its
    events that is also told as each attempt's body begins."""

    def __call__(self, event: Event) -> None: ...

    def enter_body(self, key: str, attempt: int, revert: bool, executor: str) -> None:
        """Called in the body's own context before it runs (after its ``task_started``
        or ``revert_started``): what it sets there (a contextvar) the body sees.
        ``executor``: where the body runs (``loop``, ``thread``, or the run's executor's
        class name)."""


#: Called as each run's sink is made: an observer for the run, or None.
RunHook = Callable[["EventSink"], "RunObserver | None"]

#: The process-wide run hooks (aflow.otel's instrument() adds one), read once per run:
#: with none, a run pays one falsy check for them, and nothing per node.
_run_hooks: tuple[RunHook, ...] = ()


def add_run_hook(hook: RunHook) -> None:
    """Give every run made from now on what ``hook`` makes of its sink (idempotent)."""
    global _run_hooks
    if hook not in _run_hooks:
        _run_hooks = (*_run_hooks, hook)


def remove_run_hook(hook: RunHook) -> None:
    """Runs made from now on no longer get ``hook``'s observer (runs made keep theirs)."""
    global _run_hooks
    _run_hooks = tuple(h for h in _run_hooks if h is not hook)


# logging's levels (the module loads only when aflow logs without structlog)
_DEBUG = 10
_INFO = 20


def _configured_structlog() -> Any | None:
    """structlog, if the application configured it (it has imported it, then)."""
    structlog = sys.modules.get("structlog")
    if structlog is None or not structlog.is_configured():
        return None
    return structlog


def _structlog_logger(level: int) -> Any | None:
    structlog = _configured_structlog()
    if structlog is None:
        return None
    logger = structlog.get_logger("aflow").bind()
    is_enabled = getattr(logger, "is_enabled_for", None)
    if is_enabled is not None and not is_enabled(level):
        return None
    return logger


def warn(event: str, **fields: Any) -> None:
    """A problem the runtime works around (a store read that failed, a run it could not
    recover): to structlog when configured, else to the standard ``aflow`` logger."""
    structlog = _configured_structlog()
    if structlog is not None:
        structlog.get_logger("aflow").warning(event, **fields)
    else:
        details = " ".join(f"{k}={v!r}" for k, v in fields.items())
        import logging  # (only here, and for a broken listener: import aflow stays light)

        logging.getLogger("aflow").warning("%s %s", event, details)


@final
class EventSink:
    """Fans a run's events out to its listeners and to structlog."""

    __slots__ = (
        "_listeners",
        "_node_log",
        "_run_log",
        "name",
        "node_events",
        "observers",
        "run_events",
        "run_id",
    )

    def __init__(
        self,
        run_id: str,
        listeners: Sequence[EventListener],
        *,
        run_events: bool = True,
        name: str | None = None,
    ) -> None:
        self.run_id = run_id
        #: False for a nested run (a retried flow): only its node events go out.
        self.run_events = run_events
        #: the workflow's name, when the run knows it (aflow.otel names its span with it)
        self.name = name
        self._listeners = list(listeners)
        #: what the run hooks gave this run: listeners too, but not shared with a nested
        #: run (which gets its own) and not in :attr:`listeners`
        self.observers: tuple[RunObserver, ...] = ()
        if _run_hooks:
            self._observe(_run_hooks)
        self._node_log = _structlog_logger(_DEBUG)
        self._run_log = _structlog_logger(_INFO)
        #: The scheduler's one check on the hot path.
        self.node_events = bool(self._listeners) or self._node_log is not None

    def _observe(self, hooks: tuple[RunHook, ...]) -> None:
        observers = []
        for hook in hooks:
            try:
                observer = hook(self)
            except Exception as exc:  # a broken hook must not break the run
                import logging

                logging.getLogger("aflow").exception("run hook %r failed", hook, exc_info=exc)
                continue
            if observer is not None:
                observers.append(observer)
        if observers:
            self.observers = tuple(observers)
            self._listeners.extend(observers)

    @property
    def listeners(self) -> tuple[EventListener, ...]:
        """The listeners subscribed now (not the run hooks' observers)."""
        if self.observers:
            return tuple(x for x in self._listeners if x not in self.observers)
        return tuple(self._listeners)

    def add_listener(self, listener: EventListener) -> None:
        """Subscribe while the run is going (used by ``Run.events()``)."""
        self._listeners.append(listener)
        self.node_events = True

    def remove_listener(self, listener: EventListener) -> None:
        """Unsubscribe; node events stop costing anything once nobody listens."""
        self._listeners.remove(listener)
        self.node_events = bool(self._listeners) or self._node_log is not None

    def emit(
        self,
        name: str,
        node: str | None = None,
        task: str | None = None,
        attempt: int = 0,
        duration_s: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Send one event to every listener and, if enabled, to structlog."""
        if node is None and not self.run_events:
            return
        log = self._node_log if node is not None else self._run_log
        if log is None and not self._listeners:
            return  # nobody listens: nothing is built
        event = Event(name, self.run_id, node, task, attempt, duration_s, error, time.time())
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception as exc:  # a broken listener must not break the run
                import logging

                logging.getLogger("aflow").exception(
                    "event listener %r failed on %s", listener, name, exc_info=exc
                )
        if log is None:
            return
        fields: dict[str, Any] = {"run_id": self.run_id}
        if node is not None:
            fields.update(node=node, task=task, attempt=attempt)
        if duration_s is not None:
            fields["duration_s"] = round(duration_s, 6)
        if error is not None:
            fields["error"] = f"{type(error).__name__}: {told(error)}"
        if node is not None:
            log.debug(name, **fields)
        elif name in (RUN_FAILED, RUN_CANCELLED, RUN_REVERTED):
            log.warning(name, **fields)
        else:
            log.info(name, **fields)
