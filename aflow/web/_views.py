"""What the dashboard's pages show of a run: its steps merged with its graph's shape (fan-outs
grouped), the graph drawn, a timeline of attempts and reverts, and one step's detail.

Pure functions over the report models: the pages and the JSON API share them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from .._feed import ShapeNode
from .._runtime._report import ErrorReport, EventReport, RunReport, StepReport
from ._layout import worst_state

__all__ = [
    "GROUP_MIN",
    "Attempt",
    "GraphNode",
    "GraphView",
    "StepDetail",
    "graph_view",
    "step_detail",
    "timeline_svg",
]

#: Siblings (same task, same parents, same children) drawn as one node from this many on.
GROUP_MIN = 6


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GraphNode(_Model):
    """One node of a run's graph as drawn: a step, or a group of sibling steps (a fan-out:
    ``members`` holds their keys and ``counts`` how many are in each state)."""

    key: str
    task: str
    state: str
    parents: list[str] = []
    attempts: int = 0
    members: list[str] = []
    counts: dict[str, int] = {}


class GraphView(_Model):
    """A run's graph: its nodes in graph order (``edges``: False when only the steps on
    record are known, not what they wait for)."""

    run_id: str
    nodes: list[GraphNode]
    steps: int
    edges: bool


class Attempt(_Model):
    """One attempt of a step (or its revert), from the run's events."""

    attempt: int
    kind: str  # "run" or "revert"
    outcome: str  # succeeded, failed, retried, cancelled, running, reverted, revert_failed...
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    error: ErrorReport | None = None


class ShownStep(StepReport):
    """A step as the dashboard shows it: its report, with ``waiting`` for a step that
    waits now (an event, a timer), whatever its record says."""

    state: str  # type: ignore[assignment]  # (StepState's words, and "waiting")


class StepDetail(_Model):
    """One step in full: its report, its attempts (and its revert's) with their timings,
    what it waits for, and the artifacts its result holds."""

    run_id: str
    step: ShownStep
    parents: list[str] = []
    inputs: dict[str, Any] = {}
    attempts: list[Attempt] = []
    artifacts: list[dict[str, Any]] = []


def _state_of(step: StepReport | None, waiting: frozenset[str]) -> str:
    if step is None:
        return "pending"
    # (a durable run unloaded while it waits has its wait on record as stopped: it waits)
    if step.key in waiting and step.state in ("pending", "running", "cancelled"):
        return "waiting"
    return step.state


def _waiting_keys(report: RunReport) -> Iterable[str]:
    """The steps that wait now: each wait node, and a task body's ``aflow.receive``
    (its wait is ``<key>#receive<n>``)."""
    for wait in report.waits:
        yield wait.key
        key, mark, number = wait.key.rpartition("#receive")
        if mark and number.isdigit():
            yield key


def worst(states: Iterable[str]) -> str:
    """The state a group shows: its members' worst (``_layout.STATE_SEVERITY``'s order)."""
    return worst_state(states) or "pending"


def graph_view(report: RunReport, shape: Sequence[ShapeNode] | None) -> GraphView:
    """The run's graph with each step's state: ``shape``'s nodes (with the steps not begun
    yet) or, without one, the steps on record; siblings of one task with the same parents
    and children are grouped from :data:`GROUP_MIN` on."""
    steps = {step.key: step for step in report.steps or ()}
    waiting = frozenset(_waiting_keys(report))
    if shape is None:
        alone = [
            GraphNode(key=s.key, task=s.task, state=_state_of(s, waiting), attempts=s.attempts)
            for s in steps.values()
        ]
        return GraphView(run_id=report.id, nodes=alone, steps=len(alone), edges=False)
    known = {node.key for node in shape}
    children: dict[str, list[str]] = {}
    for node in shape:
        for parent in node.parents:
            children.setdefault(parent, []).append(node.key)
    # siblings: the same task, parents and children
    families: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[ShapeNode]] = {}
    for node in shape:
        family = (node.task, node.parents, tuple(children.get(node.key, ())))
        families.setdefault(family, []).append(node)
    grouped: dict[str, str] = {}  # member key -> its group's key
    for family_nodes in families.values():
        if len(family_nodes) >= GROUP_MIN:
            head = f"{family_nodes[0].key} (+{len(family_nodes) - 1})"
            for member in family_nodes:
                grouped[member.key] = head
    # (plain values first: a GraphNode per member of a 10,000-step fan-out is slow)
    plain: dict[str, dict[str, Any]] = {}
    for node in shape:
        step = steps.get(node.key)
        parents = list(dict.fromkeys(grouped.get(p, p) for p in node.parents if p in known))
        group = grouped.get(node.key)
        state = _state_of(step, waiting)
        attempts = step.attempts if step is not None else 0
        if group is None:
            plain[node.key] = {
                "key": node.key,
                "task": step.task if step is not None else node.task,
                "state": state,
                "parents": parents,
                "attempts": attempts,
            }
            continue
        found = plain.get(group)
        if found is None:
            found = plain[group] = {
                "key": group,
                "task": node.task,
                "parents": parents,
                "attempts": 0,
                "members": [],
                "counts": {},
            }
        found["members"].append(node.key)
        found["counts"][state] = found["counts"].get(state, 0) + 1
        found["attempts"] = max(found["attempts"], attempts)
    nodes: dict[str, GraphNode] = {}
    for key, fields in plain.items():
        if "counts" in fields:
            fields["state"] = worst(fields["counts"])
        nodes[key] = GraphNode(**fields)
    # steps on record the shape does not have (a slice, a step of a nested run)
    for key, step in steps.items():
        if key not in known and key not in nodes:
            nodes[key] = GraphNode(
                key=key, task=step.task, state=_state_of(step, waiting), attempts=step.attempts
            )
    return GraphView(run_id=report.id, nodes=list(nodes.values()), steps=len(shape), edges=True)


# --- one step ------------------------------------------------------------------------------

_ENDS = {
    "task_succeeded": "succeeded",
    "task_failed": "failed",
    "task_retried": "retried",
    "task_cancelled": "cancelled",
    "task_skipped": "skipped",
    "revert_succeeded": "reverted",
    "revert_failed": "revert_failed",
    "revert_retried": "retried",
}


def attempts_of(key: str, events: Sequence[EventReport]) -> list[Attempt]:
    """A step's attempts and its revert's, oldest first, from the run's events."""
    found: list[Attempt] = []
    open_: dict[tuple[str, int], int] = {}
    for event in events:
        if event.node != key:
            continue
        kind = "revert" if event.name.startswith("revert_") else "run"
        if event.name in ("task_started", "revert_started"):
            open_[(kind, event.attempt)] = len(found)
            found.append(
                Attempt(
                    attempt=event.attempt,
                    kind=kind,
                    outcome="running" if kind == "run" else "reverting",
                    started_at=event.timestamp,
                )
            )
            continue
        outcome = _ENDS.get(event.name)
        if outcome is None:
            continue
        started = None
        where = open_.pop((kind, event.attempt), None)
        if where is not None:
            started = found[where].started_at
        ended = event.timestamp
        duration = event.duration_s
        if duration is None and started is not None and ended is not None:
            duration = ended - started
        if started is None and ended is not None and duration is not None:
            started = ended - duration
        done = Attempt(
            attempt=event.attempt,
            kind=kind,
            outcome=outcome,
            started_at=started,
            finished_at=ended,
            duration_s=duration,
            error=event.error,
        )
        if where is None:
            found.append(done)
        else:
            found[where] = done
    return found


def artifacts_in(value: Any, depth: int = 0) -> list[dict[str, Any]]:
    """The file manifests (``{"file": sha, "name": ..., "size": ...}``) a result holds,
    however nested (a directory's entries are listed one by one)."""
    if depth > 20:
        return []
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        sha, name = value.get("file"), value.get("name")
        if isinstance(sha, str) and isinstance(name, str):
            found.append({"sha": sha, "name": name, "size": value.get("size")})
        elif isinstance(value.get("dir"), str) and isinstance(value.get("entries"), list):
            for entry in value["entries"]:
                if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], str):
                    found.append(
                        {"sha": entry[1], "name": f"{value['dir']}/{entry[0]}", "size": entry[2]}
                    )
        else:
            for item in value.values():
                found.extend(artifacts_in(item, depth + 1))
    elif isinstance(value, list):
        for item in value:
            found.extend(artifacts_in(item, depth + 1))
    return found


def step_detail(
    report: RunReport,
    key: str,
    shape: Sequence[ShapeNode] | None,
    events: Sequence[EventReport],
    inputs: Mapping[str, Any] | None = None,
) -> StepDetail | None:
    """One step of the run in full; ``None`` if the run has no such step."""
    step = next((s for s in report.steps or () if s.key == key), None)
    node = next((n for n in shape or () if n.key == key), None)
    if step is None:
        if node is None:
            return None
        step = StepReport(key=key, task=node.task, state="pending", attempts=0)
    parents = list(node.parents) if node is not None else []
    found_inputs: dict[str, Any] = dict(inputs or {})
    by_key = {s.key: s for s in report.steps or ()}
    for parent in parents:
        upstream = by_key.get(parent)
        if upstream is not None and upstream.state == "succeeded":
            found_inputs.setdefault(f"from {parent}", upstream.result)
    shown = ShownStep(
        **{**step.model_dump(), "state": _state_of(step, frozenset(_waiting_keys(report)))}
    )
    return StepDetail(
        run_id=report.id,
        step=shown,
        parents=parents,
        inputs=found_inputs,
        attempts=attempts_of(key, events),
        artifacts=artifacts_in(step.result),
    )


# --- the timeline ----------------------------------------------------------------------------

_ROW = 18
_LABEL = 180
_WIDTH = 900


@dataclass(slots=True)
class _Bar:
    row: int
    start: float
    end: float
    state: str
    title: str


@dataclass(slots=True)
class _Rows:
    keys: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def of(self, key: str) -> int:
        found = self.index.get(key)
        if found is None:
            found = self.index[key] = len(self.keys)
            self.keys.append(key)
        return found


def timeline_svg(
    report: RunReport, events: Sequence[EventReport] | None, *, now: float, max_rows: int = 200
) -> str:
    """A Gantt chart of the run's attempts and reverts (an SVG element): one row per
    step, in the order they started, at most ``max_rows`` rows. ``events`` None: each
    step's last attempt from the report (a big run's page does not read its history)."""
    rows = _Rows()
    bars: list[_Bar] = []
    started: dict[tuple[str, str, int], float] = {}
    if events is None:
        begun = sorted(
            (s for s in report.steps or () if s.started_at is not None),
            key=lambda s: (s.started_at or 0.0, s.key),
        )
        for step in begun[:max_rows]:
            assert step.started_at is not None
            end = step.finished_at if step.finished_at is not None else now
            label = f"{step.key} #{step.attempts} {step.state}"
            bars.append(_Bar(rows.of(step.key), step.started_at, end, step.state, label))
        events = ()
    # A store keeps when a revert ended, not when it began (its record's start is the
    # step's): such a revert is drawn from when the unwinding began (the first failure
    # or cancel), or its step's end if later, and its tooltip says so.
    unwinding = min(
        (
            e.timestamp
            for e in events
            if e.timestamp is not None and e.name in ("task_failed", "task_cancelled")
        ),
        default=None,
    )
    ended: dict[str, float] = {}
    for event in events:
        key = event.node
        if key is None or event.timestamp is None:
            continue
        kind = "revert" if event.name.startswith("revert_") else "run"
        if event.name in ("task_started", "revert_started"):
            if len(rows.keys) < max_rows or key in rows.index:
                rows.of(key)
                started[(kind, key, event.attempt)] = event.timestamp
            continue
        outcome = _ENDS.get(event.name)
        if outcome is None or key not in rows.index:
            continue
        begin = started.pop((kind, key, event.attempt), None)
        if begin is None and event.duration_s is not None:
            begin = event.timestamp - event.duration_s
        if begin is None:
            continue
        guessed = ""
        if kind == "revert" and begin < ended.get(key, begin + 1):
            begin = max(ended[key], unwinding or ended[key])
            guessed = ", start estimated"
        elif kind == "run":
            ended[key] = event.timestamp
        state = {"retried": "retrying", "skipped": "skipped"}.get(outcome, outcome)
        label = f"{key} #{event.attempt} {'revert ' if kind == 'revert' else ''}{outcome}{guessed}"
        bars.append(_Bar(rows.of(key), begin, event.timestamp, state, label))
    if not report.finished:
        for (kind, key, attempt), begin in started.items():  # still going
            state = "reverting" if kind == "revert" else "running"
            bars.append(_Bar(rows.of(key), begin, now, state, f"{key} #{attempt} {state}"))
    waiting = frozenset(_waiting_keys(report))
    if waiting:  # (a durable run unloaded while it waits: its wait's record says stopped)
        last: dict[int, int] = {}
        for i, bar in enumerate(bars):
            last[bar.row] = i
        for key in waiting & rows.index.keys():
            i = last.get(rows.index[key], -1)
            if i >= 0 and bars[i].state in ("cancelled", "running"):
                bar = bars[i]
                bars[i] = _Bar(bar.row, bar.start, now, "waiting", f"{key} waiting")
    if not bars:
        return '<p class="muted">No attempts yet.</p>'
    t0 = min(bar.start for bar in bars)
    t1 = max(max(bar.end for bar in bars), t0 + 1e-3)
    scale = (_WIDTH - _LABEL - 10) / (t1 - t0)
    height = len(rows.keys) * _ROW + 24
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="aflow-timeline" '
        f'viewBox="0 0 {_WIDTH} {height}" width="{_WIDTH}" height="{height}" role="img">',
        "<title>Timeline of attempts and reverts</title>",
    ]
    for i, key in enumerate(rows.keys):
        y = i * _ROW
        shown = key if len(key) <= 26 else key[:25] + "…"
        out.append(
            f'<text class="tl-label" x="4" y="{y + 13}">{html.escape(_xml_text(shown))}</text>'
        )
    for bar in bars:
        x = _LABEL + (bar.start - t0) * scale
        width = max(2.0, (bar.end - bar.start) * scale)
        y = bar.row * _ROW + 3
        out.append(
            f'<rect class="tl-bar state-{bar.state}" x="{x:.1f}" y="{y}" '
            f'width="{width:.1f}" height="{_ROW - 6}" rx="2">'
            f"<title>{html.escape(_xml_text(bar.title))} "
            f"({_seconds(bar.end - bar.start)})</title></rect>"
        )
    axis = len(rows.keys) * _ROW + 16
    for tick in range(5):
        at = t0 + (t1 - t0) * tick / 4
        x = _LABEL + (at - t0) * scale
        anchor = "start" if tick == 0 else "end" if tick == 4 else "middle"
        out.append(
            f'<text class="tl-axis" x="{x:.1f}" y="{axis}" text-anchor="{anchor}">'
            f"+{_seconds(at - t0)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.2f} s"
    return f"{math.floor(value / 60)} min {value % 60:.0f} s"


def _xml_text(text: str) -> str:
    """Text with what XML 1.0 cannot hold (control characters) replaced."""
    return "".join(
        ch if ch in "\t\n\r" or (ord(ch) >= 0x20 and not 0xD800 <= ord(ch) <= 0xDFFF) else "\ufffd"
        for ch in text
    )
