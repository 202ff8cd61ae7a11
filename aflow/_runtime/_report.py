"""Runs and steps as data: one JSON-ready model of a run, a step, an error and an event,
the same for a run this process drives and for one read back from a store.

pydantic loads with the first report (``import aflow`` does not pay for it). Values
(results, parameters) are made JSON-ready as they are reported: what JSON cannot hold
is given as its ``repr``.
"""

from __future__ import annotations

import reprlib
import traceback as _traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic_core import to_jsonable_python

from .._events import Event
from .._graph import Graph, NodeKind
from ..stores._base import NodeRecord, RecordState, RunRecord, StoredRunStatus
from ._run_state import Phase, StopReason
from ._states import NodeState, RunStatus, StepInfo

if TYPE_CHECKING:
    from ._handle import Run

__all__ = [
    "ErrorReport",
    "EventReport",
    "RunReport",
    "RunState",
    "StepReport",
    "StepState",
    "events_of_history",
    "events_of_run",
    "report_of_record",
    "report_of_run",
]

#: A run's status, the same words live and stored: where it is, then how it ended.
RunState = Literal[
    "pending",  # created, not started yet
    "running",  # its nodes run forward
    "suspended",  # told to suspend; running it again runs what is left
    "cancelling",  # a cancel was asked; it stops (and unwinds) next
    "reverting",  # stopped by a failure, a cancel or its deadline: its reverts run
    "parked",  # recovered too often from dying processes: a person resumes or cancels it
    "succeeded",
    "failed",
    "reverted",
    "cancelled",
]
#: A step's state, the same words live and stored (:class:`aflow.NodeState`'s values).
StepState = Literal[
    "pending",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "cancelled",
    "skipped",
    "reverting",
    "reverted",
    "revert_failed",
]

_FINISHED_STATES = frozenset({"succeeded", "failed", "reverted", "cancelled"})


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorReport(_Model):
    """An error as data: its type (``module.Name``; builtins by name alone), its message,
    its traceback text when this process saw it raised (a store keeps type and message
    only), and for an exception group (``CompensationFailed``...) the errors inside."""

    type: str
    message: str
    traceback: str | None = None
    exceptions: list[ErrorReport] = []

    @classmethod
    def of(cls, error: BaseException) -> ErrorReport:
        """The report of an exception."""
        kind = type(error)
        name = kind.__qualname__
        if kind.__module__ not in ("builtins", "__main__"):
            name = f"{kind.__module__}.{name}"
        if name.startswith("aflow._exceptions."):
            name = "aflow.errors." + kind.__qualname__
        text = None
        if error.__traceback__ is not None:
            text = "".join(_traceback.format_exception(error))
        return cls(
            type=name,
            message=str(error),
            traceback=text,
            exceptions=[cls.of(e) for e in error.exceptions]
            if isinstance(error, BaseExceptionGroup)
            else [],
        )

    @classmethod
    def of_text(cls, text: str) -> ErrorReport:
        """The report of an error as a store keeps it (``Type: message``)."""
        kind, sep, message = text.partition(": ")
        if not sep or not kind.replace(".", "").replace("_", "").isalnum():
            return cls(type="Error", message=text)
        return cls(type=kind, message=message)


class StepReport(_Model):
    """One step (task node) of a run: its state, attempts, times (wall-clock seconds since
    the epoch), its result (JSON-ready) or error, and its revert's outcome
    (``state`` ``reverted`` / ``revert_failed``, ``revert_error``). ``reused``: its
    output was taken from another run (a fork, ``submit(reuse=)``)."""

    key: str
    task: str
    state: StepState
    attempts: int
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    result: Any = None
    error: ErrorReport | None = None
    revert_error: ErrorReport | None = None
    reused: bool = False


class RunReport(_Model):
    """A run as data: what ``rt.report(run_id)``, ``run.report()`` and the web-service
    router give, live or read from a store.

    ``status`` is one of :data:`RunState`'s words whichever the source; ``finished`` is
    True once it can no longer change. ``result`` is the run's value (JSON-ready) once it
    succeeded; ``error`` what stopped it. ``counts`` has one entry per step state.
    ``steps`` is ``None`` when not asked for. ``source``: ``"live"`` (a run this process
    holds) or ``"store"``."""

    id: str
    status: RunState
    finished: bool
    workflow: str | None = None
    params: dict[str, Any] | None = None
    idempotency_key: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    duration_s: float | None = None
    result: Any = None
    error: ErrorReport | None = None
    counts: dict[str, int] = {}
    steps: list[StepReport] | None = None
    owner: str | None = None
    recoveries: int = 0
    source: Literal["live", "store"] = "live"


class EventReport(_Model):
    """One event of a run (see :class:`aflow.Event`) as data; ``replayed`` marks an event
    given again from the run's record rather than seen as it happened."""

    name: str
    run_id: str
    node: str | None = None
    task: str | None = None
    attempt: int = 0
    duration_s: float | None = None
    error: ErrorReport | None = None
    timestamp: float | None = None
    replayed: bool = False

    @classmethod
    def of(cls, event: Event, *, replayed: bool = False) -> EventReport:
        """The report of an event."""
        return cls(
            name=event.name,
            run_id=event.run_id,
            node=event.node,
            task=event.task,
            attempt=event.attempt,
            duration_s=event.duration_s,
            error=None if event.error is None else ErrorReport.of(event.error),
            timestamp=event.timestamp or None,
            replayed=replayed,
        )


def jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it (dataclasses, models, dates...), else its ``repr``."""
    return to_jsonable_python(value, fallback=reprlib.repr)


# --- a run this process holds ------------------------------------------------------------


def run_state(handle: Run[Any]) -> RunState:
    """The run's status in :data:`RunState`'s words."""
    execution = handle._execution
    status = execution.status
    if status is RunStatus.RUNNING:
        phase = execution._phase
        if phase is Phase.UNWINDING or phase is Phase.CALLBACKS:
            return "reverting"
        if StopReason.CANCEL in execution._stops:
            return "cancelling"
    value: RunState = status.value  # (the same words)
    return value


def step_report(info: StepInfo) -> StepReport:
    """A step's snapshot as data."""
    state: StepState = info.state.value  # (the same words)
    return StepReport(
        key=info.key,
        task=info.task,
        state=state,
        attempts=info.attempts,
        started_at=info.started_at,
        finished_at=info.finished_at,
        duration_s=info.duration_s,
        result=jsonable(info.result) if info.state is NodeState.SUCCEEDED else None,
        error=None if info.error is None else ErrorReport.of(info.error),
        revert_error=None if info.revert_error is None else ErrorReport.of(info.revert_error),
    )


def report_of_run(handle: Run[Any], *, steps: bool = True) -> RunReport:
    """The report of a run this process holds."""
    execution = handle._execution
    status = run_state(handle)
    finished = handle._finished.is_set() and status in _FINISHED_STATES
    infos = handle.steps()
    counts: dict[str, int] = {}
    for info in infos:
        counts[info.state.value] = counts.get(info.state.value, 0) + 1
    error = handle._error
    workflow, key, params = handle._origin or (execution.graph.name, None, None)
    journal = execution._journal
    return RunReport(
        id=handle.id,
        status=status,
        finished=finished,
        workflow=workflow,
        params=jsonable(params) if params is not None else None,
        idempotency_key=key,
        created_at=execution.started_at,
        started_at=execution.started_at,
        ended_at=execution.ended_at,
        duration_s=execution.duration_s,
        result=jsonable(handle._value) if finished and status == "succeeded" else None,
        error=None if error is None else ErrorReport.of(error),
        counts=counts,
        steps=[step_report(i) for i in infos] if steps else None,
        owner=None if journal is None else "this process",
    )


# --- a run read from a store --------------------------------------------------------------

_STORED_STEP: dict[str, StepState] = {
    RecordState.RUNNING: "running",
    RecordState.RETRYING: "retrying",
    RecordState.SUCCEEDED: "succeeded",
    RecordState.ENDED: "succeeded",
    RecordState.REUSED: "succeeded",
    RecordState.NOT_STARTED: "pending",
    RecordState.SKIPPED: "skipped",
    RecordState.CANCELLED: "cancelled",
    RecordState.FAILED: "failed",
    RecordState.REVERTED: "reverted",
    RecordState.REVERT_FAILED: "revert_failed",
}


def _loads_or_text(loads: Any, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return jsonable(loads(text))
    except Exception:  # (unreadable here: shown as stored)
        return text


def report_of_record(
    record: RunRecord,
    nodes: Mapping[str, NodeRecord] | None,
    history: Sequence[NodeRecord],
    loads: Any,
    graph: Graph | None,
) -> RunReport:
    """The report of a stored run: its row, its nodes' latest records and their history,
    read with ``loads`` (the run's serializer); ``graph`` (rebuilt, if this process can)
    adds the steps not on record yet, as pending, and puts them in graph order."""
    status: RunState = str(record.status)  # type: ignore[assignment]  # (the same words)
    finished = record.status in (
        StoredRunStatus.SUCCEEDED,
        StoredRunStatus.FAILED,
        StoredRunStatus.REVERTED,
        StoredRunStatus.CANCELLED,
    )
    steps = None
    counts: dict[str, int] = {}
    if nodes is not None:
        steps = _stored_steps(nodes, history, loads, graph)
        for step in steps:
            counts[step.state] = counts.get(step.state, 0) + 1
    try:
        params = loads(record.params)
    except Exception:
        params = None
    started = record.created_at
    ended = record.ended_at
    return RunReport(
        id=record.run_id,
        status=status,
        finished=finished,
        workflow=record.workflow,
        params=jsonable(params) if isinstance(params, dict) else None,
        idempotency_key=record.idempotency_key,
        created_at=record.created_at,
        started_at=started,
        ended_at=ended,
        duration_s=None if ended is None else ended - started,
        result=_loads_or_text(loads, record.result) if status == "succeeded" else None,
        error=None if record.error is None else ErrorReport.of_text(record.error),
        counts=counts,
        steps=steps,
        owner=record.owner,
        recoveries=record.recoveries,
        source="store",
    )


def _stored_steps(
    nodes: Mapping[str, NodeRecord],
    history: Sequence[NodeRecord],
    loads: Any,
    graph: Graph | None,
) -> list[StepReport]:
    # the failure before a revert: the history keeps it (the latest record is the revert's)
    failed_before: dict[str, str] = {}
    for entry in history:
        if entry.error is not None and entry.state in (RecordState.FAILED, RecordState.CANCELLED):
            failed_before[entry.key] = entry.error
    keys: Iterable[str] = nodes
    names: dict[str, str] = {}
    if graph is not None:
        task_nodes = [n for n in graph.nodes if n.kind is not NodeKind.JOIN]
        names = {n.key: n.name for n in task_nodes}
        keys = [n.key for n in task_nodes] + [k for k in nodes if k not in names]
    else:
        keys = sorted(nodes, key=lambda k: (nodes[k].started_at or float("inf"), k))
    steps = []
    for key in keys:
        node = nodes.get(key)
        if node is None:
            steps.append(StepReport(key=key, task=names.get(key, key), state="pending", attempts=0))
            continue
        state = _STORED_STEP[node.state]
        error = node.error
        revert_error = None
        if state == "revert_failed":
            revert_error, error = error, failed_before.get(key)
        elif state == "reverted":
            error = error or failed_before.get(key)
        started, ended = node.started_at, node.finished_at
        steps.append(
            StepReport(
                key=key,
                task=names.get(key, key),
                state=state,
                attempts=node.attempt,
                started_at=started,
                finished_at=ended,
                duration_s=None if started is None or ended is None else ended - started,
                result=_loads_or_text(loads, node.result) if state == "succeeded" else None,
                error=None if error is None else ErrorReport.of_text(error),
                revert_error=None if revert_error is None else ErrorReport.of_text(revert_error),
                reused=node.state == RecordState.REUSED,
            )
        )
    return steps


# --- replays: the events so far, from a run's state or its stored history ---------------

_END_OF_STEP = {
    "succeeded": "task_succeeded",
    "failed": "task_failed",
    "cancelled": "task_cancelled",
    "skipped": "task_skipped",
    "retrying": "task_retried",
}
_END_OF_RUN = {
    "succeeded": "run_succeeded",
    "failed": "run_failed",
    "reverted": "run_reverted",
    "cancelled": "run_cancelled",
    "suspended": "run_suspended",
}


def events_of_run(report: RunReport) -> list[EventReport]:
    """The events a run's report stands for, in order: its start, each step's start and
    end (and revert), its end. What a live run replays (its retries' earlier attempts and
    timings between events are not kept in memory; a stored run's history has them)."""
    run_id = report.id
    out: list[tuple[float, int, int, EventReport]] = []
    position = -1

    # by time; at one time, in graph order (a topological order: a parent's end before its
    # child's start), and a step's own events in the order they happen
    def add(at: float | None, order: int, name: str, step: StepReport | None = None) -> None:
        error = None
        if step is not None:
            error = step.revert_error if name == "revert_failed" else step.error
        out.append(
            (
                at if at is not None else float("inf"),
                position if step is not None else (-1 if order == 0 else 1 << 30),
                order,
                EventReport(
                    name=name,
                    run_id=run_id,
                    node=None if step is None else step.key,
                    task=None if step is None else step.task,
                    attempt=0 if step is None else step.attempts,
                    duration_s=None if step is None else step.duration_s,
                    error=error if name not in ("task_started", "revert_started") else None,
                    timestamp=at,
                    replayed=True,
                ),
            )
        )

    if report.status != "pending":
        add(report.started_at, 0, "run_started")
    for step in report.steps or ():
        position += 1
        if step.state == "pending" or (step.started_at is None and step.state != "skipped"):
            continue
        if step.state != "skipped":
            add(step.started_at, 1, "task_started", step)
        state = step.state
        if state in ("reverting", "reverted", "revert_failed"):
            add(step.finished_at, 2, "task_failed" if step.error else "task_succeeded", step)
            add(step.finished_at, 3, "revert_started", step)
            if state != "reverting":
                add(step.finished_at, 4, "revert_succeeded" if state == "reverted" else state, step)
        elif state in _END_OF_STEP:
            add(step.finished_at or step.started_at, 2, _END_OF_STEP[state], step)
    end = _END_OF_RUN.get(report.status)
    if end is not None:
        add(report.ended_at, 5, end)
    out.sort(key=lambda item: item[:3])
    return [event for *_, event in out]


_HISTORY_EVENT: dict[str, str] = {
    RecordState.RETRYING: "task_retried",
    RecordState.SUCCEEDED: "task_succeeded",
    RecordState.ENDED: "task_succeeded",
    RecordState.REUSED: "task_succeeded",
    RecordState.SKIPPED: "task_skipped",
    RecordState.CANCELLED: "task_cancelled",
    RecordState.FAILED: "task_failed",
    RecordState.REVERTED: "revert_succeeded",
    RecordState.REVERT_FAILED: "revert_failed",
}


def events_of_history(record: RunRecord, history: Sequence[NodeRecord]) -> list[EventReport]:
    """The events a stored run's history records, in order (a start and an end written
    in one batch give both events)."""
    run_id = record.run_id
    events = [EventReport(name="run_started", run_id=run_id, timestamp=record.created_at)]
    started: set[tuple[str, int]] = set()
    for entry in history:
        state = entry.state
        key, attempt = entry.key, entry.attempt
        if state == RecordState.NOT_STARTED:
            continue

        def event(
            name: str, at: float | None, error: str | None = None, entry: NodeRecord = entry
        ) -> EventReport:
            started, ended = entry.started_at, entry.finished_at
            return EventReport(
                name=name,
                run_id=run_id,
                node=entry.key,
                task=entry.key,
                attempt=entry.attempt,
                duration_s=None if started is None or ended is None else ended - started,
                error=None if error is None else ErrorReport.of_text(error),
                timestamp=at,
                replayed=True,
            )

        if state in (RecordState.REVERTED, RecordState.REVERT_FAILED):
            events.append(event("revert_started", entry.started_at))
        elif (key, attempt) not in started and state not in (
            RecordState.SKIPPED,
            RecordState.REUSED,
        ):
            started.add((key, attempt))
            events.append(event("task_started", entry.started_at))
        name = _HISTORY_EVENT.get(state)
        if name is not None:
            events.append(event(name, entry.finished_at or entry.started_at, entry.error))
    end = _END_OF_RUN.get(str(record.status))
    if end is not None:
        error = None if record.error is None else ErrorReport.of_text(record.error)
        events.append(
            EventReport(
                name=end, run_id=run_id, error=error, timestamp=record.ended_at, replayed=True
            )
        )
    events[0] = events[0].model_copy(update={"replayed": True})
    return events
