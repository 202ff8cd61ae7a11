"""Runs and steps as data: one JSON-ready model of a run, a step, an error and an event,
the same for a run this process drives and for one read back from a store.

pydantic loads with the first report (``import aflow`` does not pay for it). Values
(results, parameters) are made JSON-ready as they are reported: what JSON cannot hold
is given as its ``repr``.
"""

from __future__ import annotations

import json
import reprlib
import traceback as _traceback
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic_core import to_json

from .._events import Event
from .._graph import Graph, NodeKind
from ..stores._base import NodeRecord, RecordState, RunRecord, StoredRunStatus, WaitRecord
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
    "history_events",
    "names_of",
    "report_of_record",
    "report_of_run",
    "WaitReport",
]

#: A run's status, the same words live and stored: where it is, then how it ended.
RunState = Literal[
    "pending",  # created, not started yet
    "running",  # its nodes run forward
    "suspended",  # told to suspend; running it again runs what is left
    "cancelling",  # a cancel was asked; it stops (and unwinds) next
    "reverting",  # stopped by a failure, a cancel or its deadline: its reverts run
    "parked",  # recovered too often from dying processes: a person resumes or cancels it
    "waiting",  # all it runs waits for events or timers (see RunReport.waits)
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
            message=_text_of(error),
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


class WaitReport(_Model):
    """A wait of a run: the wait node's key (``key#receive<n>`` for the n-th
    ``aflow.receive`` of a task body), the event it waits for (``None``: a timer), its
    deadline and when it began (wall-clock seconds since the epoch; ``deadline`` None:
    none)."""

    key: str
    event: str | None = None
    deadline: float | None = None
    since: float | None = None


class RunReport(_Model):
    """A run as data: what ``rt.report(run_id)``, ``run.report()`` and the web-service
    router give, live or read from a store.

    ``status`` is one of :data:`RunState`'s words whichever the source; ``finished`` is
    True once it can no longer change. ``result`` is the run's value (JSON-ready) once it
    succeeded; ``error`` what stopped it. ``waits``: what it waits for now (events,
    timers, with their deadlines), while it waits. ``counts`` has one entry per step state.
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
    waits: list[WaitReport] = []
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
    """``value`` as JSON can hold it (dataclasses, models, dates...), else its ``repr``:
    what a JSON reader reads back (bytes that are not UTF-8 as base64; a value that
    holds itself, or that a reader cannot read, such as an int of more digits than
    Python's ``json`` reads, as its ``repr`` as a whole)."""
    for bytes_mode in ("utf8", "base64"):
        try:
            text = to_json(value, fallback=_repr, bytes_mode=bytes_mode, inf_nan_mode="constants")
            return json.loads(text)
        except Exception:  # (bytes that are not UTF-8, a cycle, an int too long for text...)
            continue
    return _repr(value)


def _repr(value: Any) -> str:
    """A short ``repr`` that never raises."""
    try:
        return reprlib.repr(value)
    except Exception:  # (an int too long for text, a repr that fails in a way reprlib lets out)
        if isinstance(value, int):
            return f"<int of {value.bit_length()} bits>"
        return f"<{type(value).__qualname__} object>"


def _text_of(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # (a __str__ that fails: the report of the error must not)
        return f"<{type(error).__qualname__}: str() failed>"


# --- a run this process holds ------------------------------------------------------------


def run_state(handle: Run[Any]) -> RunState:
    """The run's status in :data:`RunState`'s words."""
    execution = handle._execution
    status = execution.status
    if handle._detached:
        return "waiting"
    if status is RunStatus.RUNNING:
        phase = execution._phase
        if phase is Phase.UNWINDING or phase is Phase.CALLBACKS:
            return "reverting"
        if StopReason.CANCEL in execution._stops:
            return "cancelling"
        waits = execution._waits
        if waits is not None and waits.held and execution._running == len(waits.held):
            return "waiting"
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
    report = RunReport(
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
        waits=_live_waits(execution),
        owner=None if journal is None else "this process",
    )
    if steps:
        _remember_order(report, _order_of(handle))
    return report


def _live_waits(execution: Any) -> list[WaitReport]:
    waits = execution._waits
    if waits is None:
        return []
    return [
        WaitReport(key=key, event=event, deadline=deadline, since=since)
        for key, event, deadline, since in waits.waiting_for()
    ]


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


def _loads_or_text(loads: Any, text: str | None, as_text: bool = True) -> Any:
    """A stored value, read; one that cannot be read here is shown as stored if its
    text is ``as_text`` (JSON), else left out (a pickle's base64 is no value)."""
    if text is None:
        return None
    try:
        return jsonable(loads(text))
    except Exception:  # (unreadable here)
        return text if as_text else None


def report_of_record(
    record: RunRecord,
    nodes: Mapping[str, NodeRecord] | None,
    history: Sequence[NodeRecord],
    loads: Any,
    graph: Graph | None,
    waits: Sequence[WaitRecord] | None = None,
) -> RunReport:
    """The report of a stored run: its row, its nodes' latest records and their history,
    read with ``loads`` (the run's serializer); ``graph`` (rebuilt, if this process can)
    adds the steps not on record yet, as pending, and puts them in graph order.
    ``waits``: the run's wait records (without them, a waiting run's row tells what it
    waits for, each wait known by its event's name)."""
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
        steps = _stored_steps(nodes, history, loads, graph, record.serializer == "json")
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
        result=(
            _loads_or_text(loads, record.result, record.serializer == "json")
            if status == "succeeded"
            else None
        ),
        error=None if record.error is None else ErrorReport.of_text(record.error),
        counts=counts,
        steps=steps,
        owner=record.owner,
        recoveries=record.recoveries,
        source="store",
        waits=[] if finished else _stored_waits(record, nodes, waits),
    )


#: A wait whose node has one of these records is over.
_WAIT_OVER = frozenset(
    {
        RecordState.SUCCEEDED,
        RecordState.ENDED,
        RecordState.REUSED,
        RecordState.FAILED,
        RecordState.REVERTED,
        RecordState.REVERT_FAILED,
        RecordState.SKIPPED,
    }
)


def _stored_waits(
    record: RunRecord,
    nodes: Mapping[str, NodeRecord] | None,
    waits: Sequence[WaitRecord] | None,
) -> list[WaitReport]:
    """What a stored run waits for: its waits whose node has not ended; else, for a
    waiting run, what its row says."""
    if waits is not None and nodes is not None:
        found = []
        for wait in waits:
            node = nodes.get(wait.key.partition("#receive")[0])
            if node is None or node.state not in _WAIT_OVER:
                found.append(
                    WaitReport(
                        key=wait.key,
                        event=wait.event,
                        deadline=wait.deadline,
                        since=wait.started_at,
                    )
                )
        return found
    if record.status != StoredRunStatus.WAITING:
        return []
    try:
        events = [str(e) for e in json.loads(record.waiting_for or "[]")]
    except ValueError:
        events = []
    deadline = record.wake_at if record.wake_at else None
    if not events:
        return [WaitReport(key="timer", deadline=deadline)]
    return [WaitReport(key=e, event=e, deadline=deadline) for e in events]


def _stored_steps(
    nodes: Mapping[str, NodeRecord],
    history: Sequence[NodeRecord],
    loads: Any,
    graph: Graph | None,
    as_text: bool = True,
) -> list[StepReport]:
    # the failure before a revert: the history keeps it (the latest record is the revert's)
    failed_before: dict[str, str] = {}
    for entry in history:
        if entry.error is not None and entry.state in (RecordState.FAILED, RecordState.CANCELLED):
            failed_before[entry.key] = entry.error
    keys: Iterable[str] = nodes
    names: dict[str, str] = {}
    if graph is not None:  # (a record of no step of the graph is a step's own: a slice's)
        names = names_of(graph)
        keys = list(names)
    else:
        keys = sorted(
            (k for k in nodes if not _internal(k, None)),
            key=lambda k: (nodes[k].started_at or float("inf"), k),
        )
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
                result=(
                    _loads_or_text(loads, node.result, as_text) if state == "succeeded" else None
                ),
                error=None if error is None else ErrorReport.of_text(error),
                revert_error=None if revert_error is None else ErrorReport.of_text(revert_error),
                reused=node.state == RecordState.REUSED,
            )
        )
    return steps


def names_of(graph: Graph) -> dict[str, str]:
    """Each step's task by key, in graph order."""
    return {n.key: n.name for n in graph.nodes if n.kind is not NodeKind.JOIN}


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


@dataclass(frozen=True, slots=True)
class _Order:
    """What a live run knows of the order of its events beyond its steps' snapshots (a
    report of it made here carries it on the side: the model stays what it is)."""

    #: the error callbacks (they run after the unwinding; one not needed emits nothing)
    callbacks: frozenset[str]
    #: the steps whose reverts succeeded, in the order they finished
    reverts: tuple[str, ...]
    #: the steps a cancel stopped mid-way (``task_cancelled``, whatever their state now)
    cancelled: frozenset[str]
    #: when each step skipped without a time of its own was skipped: when what it
    #: depends on ended
    skipped_at: Mapping[str, float]


#: id(report) -> (a weak reference to it, what it carries on the side)
_ORDERS: dict[int, tuple[weakref.ref[RunReport], _Order]] = {}


def _remember_order(report: RunReport, order: _Order) -> None:
    key = id(report)

    def forget(ref: weakref.ref[RunReport]) -> None:
        found = _ORDERS.get(key)
        if found is not None and found[0] is ref:
            del _ORDERS[key]

    _ORDERS[key] = (weakref.ref(report, forget), order)


def _order_known(report: RunReport) -> _Order | None:
    found = _ORDERS.get(id(report))
    if found is None or found[0]() is not report:
        return None
    return found[1]


def _order_of(handle: Run[Any]) -> _Order:
    execution = handle._execution
    nodes = execution.graph.nodes
    states = execution._states
    finished = execution._finished
    when: dict[int, float | None] = {}

    def ended(i: int) -> float | None:  # when node i ended, or what it waited for did
        if i in when:
            return when[i]
        when[i] = None  # (a graph has no cycles; this only guards the recursion)
        at = execution._wall(finished[i])
        if at is None:
            parents = [t for t in (ended(p) for p in nodes[i].parents) if t is not None]
            at = max(parents) if parents else None
        when[i] = at
        return at

    skipped_at: dict[str, float] = {}
    for node in nodes:
        if states[node.index] is NodeState.SKIPPED and finished[node.index] is None:
            at = ended(node.index)
            if at is not None:
                skipped_at[node.key] = at
    return _Order(
        callbacks=frozenset(n.key for n in nodes if n.error_scope is not None),
        reverts=tuple(nodes[i].key for i in execution._reverted),
        cancelled=frozenset(nodes[i].key for i, f in execution._failures.items() if f.cancelled),
        skipped_at=skipped_at,
    )


def events_of_run(report: RunReport) -> list[EventReport]:
    """The events a run's report stands for, in the order the run emitted them: its
    start; each step's attempts (a retried step's earlier ones as a start and a retry),
    its end; then the reverts of the unwinding (in the order they finished when this
    process ran them, else the reverse of the graph's); then the error callbacks; the
    run's end. What a live run replays: its timings between events, the errors of a
    retried step's earlier attempts and a revert's retries are not kept in memory (a
    stored run's history has them)."""
    run_id = report.id
    order = _order_known(report)
    steps = list(report.steps or ())
    callbacks = order.callbacks if order is not None else frozenset()
    cancelled = order.cancelled if order is not None else frozenset()
    # (phase, time, graph position, sequence): phase 0 the run going forward, 1 its
    # unwinding, 2 its error callbacks, 3 its end; at one time, graph order (a
    # topological order: a parent's end before its child's start)
    out: list[tuple[tuple[int, float, int, int], EventReport]] = []

    def add(
        key: tuple[int, float, int, int],
        name: str,
        step: StepReport | None = None,
        *,
        attempt: int | None = None,
        at: float | None = None,
    ) -> None:
        error = None
        if step is not None and name not in ("task_started", "revert_started"):
            error = step.revert_error if name == "revert_failed" else step.error
            if name == "task_retried" and attempt != step.attempts:
                error = None  # (an earlier attempt's error is not kept)
        out.append(
            (
                key,
                EventReport(
                    name=name,
                    run_id=run_id,
                    node=None if step is None else step.key,
                    task=None if step is None else step.task,
                    attempt=(0 if step is None else step.attempts) if attempt is None else attempt,
                    duration_s=None if step is None else step.duration_s,
                    error=error,
                    timestamp=at,
                    replayed=True,
                ),
            )
        )

    def time(at: float | None) -> float:
        return at if at is not None else float("inf")

    if report.status != "pending":
        add((0, float("-inf"), -1, 0), "run_started", at=report.started_at)
    unwound: list[tuple[int, StepReport]] = []
    latest = float("-inf")  # the latest time known up to this step in graph order
    for position, step in enumerate(steps):
        state = step.state
        phase = 2 if step.key in callbacks else 0
        if state == "skipped":
            if phase == 2:
                continue  # (an error callback that was not needed: no event)
            at = step.finished_at or step.started_at
            if at is None and order is not None:
                at = order.skipped_at.get(step.key)
            if at is None:
                at = latest if latest != float("-inf") else report.started_at
            add((phase, time(at), position, 0), "task_skipped", step, at=at)
            continue
        if state == "pending" or step.started_at is None:
            continue
        start = step.started_at
        latest = max(latest, start)
        sequence = 0
        for attempt in range(1, step.attempts):  # the earlier attempts of a retried step
            add((phase, start, position, sequence), "task_started", step, attempt=attempt, at=start)
            add((phase, start, position, sequence + 1), "task_retried", step, attempt=attempt)
            sequence += 2
        add((phase, start, position, sequence), "task_started", step, at=start)
        end = step.finished_at
        if end is not None:
            latest = max(latest, end)
        if state in ("reverting", "reverted", "revert_failed"):
            if step.key in cancelled or (order is None and _cancelled(step.error)):
                name = "task_cancelled"
            else:
                name = "task_failed" if step.error else "task_succeeded"
            add((phase, time(end), position, sequence + 1), name, step, at=end)
            unwound.append((position, step))
        elif state in _END_OF_STEP:
            if state == "failed" and step.key in cancelled:
                name = "task_cancelled"
            else:
                name = _END_OF_STEP[state]
            add((phase, time(end or start), position, sequence + 1), name, step, at=end or start)
    # the unwinding: reverse graph order, those known to have finished in their order
    backwards = sorted(unwound, key=lambda item: -item[0])
    finished_in = order.reverts if order is not None else ()
    present = {step.key for _, step in backwards}
    known = [key for key in dict.fromkeys(finished_in) if key in present]
    rank: dict[str, int] = {}
    slots = iter(known)
    for index, (_, step) in enumerate(backwards):
        key = next(slots) if step.key in finished_in else step.key
        rank[key] = index
    for _, step in backwards:
        index = rank[step.key]
        add((1, float(index), 0, 0), "revert_started", step)
        if step.state != "reverting":
            name = "revert_succeeded" if step.state == "reverted" else "revert_failed"
            add((1, float(index), 0, 1), name, step)
    last = _END_OF_RUN.get(report.status)
    if last is not None:
        add((3, 0.0, 0, 0), last, at=report.ended_at)
    out.sort(key=lambda item: item[0])
    return [event for _, event in out]


def _cancelled(error: ErrorReport | None) -> bool:
    return error is not None and error.type.rsplit(".", 1)[-1] in ("CancelledError", "Cancelled")


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


def events_of_history(
    record: RunRecord, history: Sequence[NodeRecord], names: Mapping[str, str] | None = None
) -> list[EventReport]:
    """The events a stored run's history records, in order (a start and an end written
    in one batch give both events). ``names``: each step's task by key (from the run's
    graph, when this process can rebuild it); without it, events name a step's task by
    its key. A step put on record as starting that never began (stopped first) has no
    event, as it had none live; nor have the internal records of a step (an ops step's
    slices)."""
    return [event for _, event in history_events(record, history, names)]


#: An ops step keeps each slice's output on record under these prefixes, and each step
#: inside a template step (aflow/ops/_runner.py).
_INTERNAL = ("_slice:", "_in:")


def _internal(key: str, names: Mapping[str, str] | None) -> bool:
    return key not in names if names is not None else key.startswith(_INTERNAL)


def history_events(
    record: RunRecord, history: Sequence[NodeRecord], names: Mapping[str, str] | None = None
) -> list[tuple[tuple[int, int], EventReport]]:
    """:func:`events_of_history`, each event with where it comes from: ``(i, j)``, the
    ``j``-th event of the ``i``-th transition of the history (the run's start ``(-1, 0)``,
    its end ``(len(history), 0)``): stable while the history grows, so a follower that
    reads it again sends only what it has not sent."""
    run_id = record.run_id
    found: list[tuple[tuple[int, int], EventReport] | None] = [
        ((-1, 0), EventReport(name="run_started", run_id=run_id, timestamp=record.created_at))
    ]
    started: dict[tuple[str, int], int] = {}  # (key, attempt) -> where its start is in found
    for i, entry in enumerate(history):
        state = entry.state
        key, attempt = entry.key, entry.attempt
        if _internal(key, names):
            continue
        if state == RecordState.NOT_STARTED:
            # on record as starting, but stopped before it began: it never started
            where = started.pop((key, attempt), -1)
            if where >= 0:
                found[where] = None
            continue

        def event(
            name: str, at: float | None, error: str | None = None, entry: NodeRecord = entry
        ) -> EventReport:
            began, ended = entry.started_at, entry.finished_at
            return EventReport(
                name=name,
                run_id=run_id,
                node=entry.key,
                task=entry.key if names is None else names.get(entry.key, entry.key),
                attempt=entry.attempt,
                duration_s=None if began is None or ended is None else ended - began,
                error=None if error is None else ErrorReport.of_text(error),
                timestamp=at,
                replayed=True,
            )

        j = 0
        if state in (RecordState.REVERTED, RecordState.REVERT_FAILED):
            found.append(((i, j), event("revert_started", entry.started_at)))
            j += 1
        elif (key, attempt) not in started and state not in (
            RecordState.SKIPPED,
            RecordState.REUSED,
        ):
            started[(key, attempt)] = len(found)
            found.append(((i, j), event("task_started", entry.started_at)))
            j += 1
        name = _HISTORY_EVENT.get(state)
        if name is not None:
            found.append(((i, j), event(name, entry.finished_at or entry.started_at, entry.error)))
            started[(key, attempt)] = -1  # (it ended: a later record does not unmake it)
    end = _END_OF_RUN.get(str(record.status))
    if end is not None:
        error = None if record.error is None else ErrorReport.of_text(record.error)
        found.append(
            (
                (len(history), 0),
                EventReport(
                    name=end, run_id=run_id, error=error, timestamp=record.ended_at, replayed=True
                ),
            )
        )
    events = [item for item in found if item is not None]
    first = events[0]
    events[0] = (first[0], first[1].model_copy(update={"replayed": True}))
    return events
