"""dflow-style workflows: steps in sequence or parallel, DAGs, submit / wait / query."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import re
import shutil
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar, final

import anyio
import anyio.to_thread

from .._events import EventListener
from .._exceptions import (
    CycleError,
    DefinitionError,
    DuplicateTaskError,
    MissingInputError,
    OpIOError,
    RecordedError,
    ResumeMismatch,
    SignatureError,
    WhenError,
)
from .._graph import Graph, GraphBuilder, NodeKind, find_cycle
from .._options import resolve_options
from .._runtime._builder_api import (
    RunView,
    current_attempt_number,
    current_run,
    runtime_clock,
    stored_loads,
    stored_workflow,
    view_of,
)
from .._runtime._clock import wall_time
from .._runtime._handle import Run
from .._runtime._runtime import CURRENT_RUNTIME, Runtime
from .._runtime._states import NodeState, RunStatus, StepInfo
from .._task import FunctionTask
from ..stores._base import NodeRecord, RecordState, RunRecord
from ._artifacts import ArtifactStore, ArtifactValue, Origin, check_artifact, default_root
from ._big import holds_big, load_bigs, read_bigs, show_bigs
from ._expr import TEMPLATE_INPUT, Expression
from ._level import Level, bind_level, manifest_shape
from ._loops import loop_items
from ._op import op_name
from ._runner import (
    REUSING,
    SLICES_ATTR,
    Bound,
    Reuse,
    StepCall,
    bring_stored,
    check_artifacts,
    checkpoint_prefix,
    escape_key,
    in_template,
    in_thread,
    live_slices,
    local_inputs,
    resolve,
    retry_rule,
    run_store,
    slice_record,
    source_of,
    task_for,
    unescape_key,
    when_errors,
)
from ._script import Ready, ReadyText, in_script, on_script_loop, on_script_thread, script_runtime
from ._sign import MISSING, check_value
from ._step import BUILDING, OutputRef, Step
from ._template import DAG, IfExpression, InputArtifact, InputParameter, Steps, Template, walk

if TYPE_CHECKING:
    from .._workflow import WorkflowBuilder

T = TypeVar("T")

__all__ = ["ParameterValue", "StepIO", "StepRecord", "Workflow"]

#: a slice's index in its checkpoint key: ASCII digits, no leading zero (``str.isdigit``
#: would take "²", which ``int`` refuses)
_SLICE_INDEX = re.compile(r"0|[1-9][0-9]*")

_PHASES = {
    NodeState.PENDING: "Pending",
    NodeState.RUNNING: "Running",
    NodeState.RETRYING: "Running",
    NodeState.SUCCEEDED: "Succeeded",
    NodeState.FAILED: "Failed",
    NodeState.CANCELLED: "Cancelled",
    NodeState.SKIPPED: "Skipped",
    NodeState.REVERTING: "Succeeded",
    NodeState.REVERTED: "Succeeded",
    NodeState.REVERT_FAILED: "Succeeded",
}
_STATUS = {
    RunStatus.PENDING: "Pending",
    RunStatus.RUNNING: "Running",
    RunStatus.SUSPENDED: "Running",
    RunStatus.SUCCEEDED: "Succeeded",
    RunStatus.FAILED: "Failed",
    RunStatus.REVERTED: "Failed",
    RunStatus.CANCELLED: "Failed",
}
_RESULT_KEY = "_outputs"


@final
class ParameterValue:
    """An output parameter in a :class:`StepRecord`: its ``value``."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"ParameterValue({self.value!r})"


@final
class StepIO:
    """``record.inputs`` / ``record.outputs``: ``parameters`` and ``artifacts`` by name."""

    __slots__ = ("artifacts", "parameters")

    def __init__(
        self, parameters: dict[str, Any], artifacts: dict[str, ArtifactValue | None]
    ) -> None:
        self.parameters = parameters
        self.artifacts = artifacts

    def __repr__(self) -> str:
        return f"StepIO(parameters={self.parameters!r}, artifacts={self.artifacts!r})"


@final
class StepRecord:
    """What :meth:`Workflow.query_step` returns for one step (or one slice of a step).

    ``phase`` is ``Pending``, ``Running``, ``Succeeded``, ``Failed``,
    ``Skipped`` or ``Cancelled``; ``outputs.parameters[name].value`` and
    ``outputs.artifacts[name]`` (give that to ``download_artifact``);
    ``inputs`` likewise (input parameters are plain values); ``attempts``,
    ``started_at`` / ``finished_at`` (epoch seconds), ``error``;
    ``slices`` holds a sliced step's per-slice records; ``reused`` is true
    for a step taken from an earlier run; ``run_id`` names the run.
    """

    __slots__ = (
        "_raw",
        "_shapes",
        "attempts",
        "error",
        "finished_at",
        "inputs",
        "key",
        "name",
        "outputs",
        "phase",
        "reused",
        "root",
        "run_id",
        "slice_index",
        "slices",
        "started_at",
    )

    def __init__(
        self,
        *,
        name: str,
        key: str,
        phase: str,
        inputs: StepIO,
        raw: dict[str, Any] | None,
        root: Path,
        shapes: Mapping[str, str],
        attempts: int,
        started_at: float | None,
        finished_at: float | None,
        error: BaseException | str | None,
        slices: tuple[StepRecord, ...] = (),
        slice_index: int | None = None,
        reused: bool = False,
        run_id: str | None = None,
    ) -> None:
        self.name = name
        self.key = key
        self.phase = phase
        self.inputs = inputs
        self._raw = raw
        self.root = root
        self.run_id = run_id
        self._shapes = dict(shapes)
        self.outputs = _outputs_view(raw, root, shapes, run_id, key)
        self.attempts = attempts
        self.started_at = started_at
        self.finished_at = finished_at
        self.error = error
        self.slices = slices
        self.slice_index = slice_index
        self.reused = reused

    def __repr__(self) -> str:
        return f"<StepRecord {self.key!r} {self.phase}>"

    @property
    def duration(self) -> float | None:
        """Seconds from start to end, if both are known."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def modify_output_parameter(self, name: str, value: Any) -> None:
        """Change an output before giving this record to ``submit(reuse_step=...)``."""
        if self._raw is None or name not in self._raw["parameters"]:
            raise KeyError(f"step {self.key!r} has no output parameter {name!r}")
        self._raw["parameters"][name] = value
        self.outputs.parameters[name] = ParameterValue(value)

    def modify_output_artifact(self, name: str, artifact: ArtifactValue) -> None:
        """Replace an output artifact (another step's, say) before reusing this record."""
        if self._raw is None or name not in self._raw["artifacts"]:
            raise KeyError(f"step {self.key!r} has no output artifact {name!r}")
        shape = self._shapes.get(name, "one")
        if artifact.shape != shape:
            raise TypeError(
                f"output artifact {name!r} of step {self.key!r} holds "
                f"{'one file or folder' if shape == 'one' else 'a ' + shape}; "
                f"the new one holds {'one' if artifact.shape == 'one' else 'a ' + artifact.shape}"
            )
        manifests = check_artifact(artifact.manifest, artifact.shape, artifact.origin)
        if artifact.root != self.root:
            store = ArtifactStore(self.root)
            for manifest in manifests:
                store.copy_from(ArtifactStore(artifact.root), manifest, artifact.origin)
        self._raw["artifacts"][name] = artifact.manifest
        self.outputs.artifacts[name] = ArtifactValue(
            self.root, artifact.manifest, artifact.shape, artifact.run_id, artifact.step
        )


def _outputs_view(
    raw: dict[str, Any] | None,
    root: Path,
    shapes: Mapping[str, str],
    run_id: str | None,
    key: str,
) -> StepIO:
    if raw is None:
        return StepIO({}, {})
    params = {k: ParameterValue(v) for k, v in raw.get("parameters", {}).items()}
    arts: dict[str, ArtifactValue | None] = {
        k: None if v is None else ArtifactValue(root, v, shapes.get(k, "one"), run_id, key)
        for k, v in raw.get("artifacts", {}).items()
    }
    return StepIO(params, arts)


#: A stored node's state as a query shows it (every RecordState has its entry).
_STORED_STATES: dict[str, NodeState] = {
    RecordState.SKIPPED: NodeState.SKIPPED,
    RecordState.RUNNING: NodeState.RUNNING,
    RecordState.RETRYING: NodeState.RETRYING,
    RecordState.SUCCEEDED: NodeState.SUCCEEDED,
    RecordState.ENDED: NodeState.SUCCEEDED,
    RecordState.REUSED: NodeState.SUCCEEDED,
    RecordState.NOT_STARTED: NodeState.PENDING,
    RecordState.CANCELLED: NodeState.CANCELLED,
    RecordState.FAILED: NodeState.FAILED,
    RecordState.REVERTED: NodeState.REVERTED,
    RecordState.REVERT_FAILED: NodeState.REVERT_FAILED,
}


@final
class _StoredRun:
    """A run read back from a durable store: what ``query_step`` needs, from its records."""

    __slots__ = (
        "_deep",
        "_infos",
        "_results",
        "finished",
        "heartbeat",
        "loads",
        "reused",
        "status",
    )

    def __init__(
        self, record: RunRecord, nodes: Mapping[str, NodeRecord], loads: Callable[[str], Any]
    ) -> None:
        #: how the run's stored values read back (big parameters too)
        self.loads = loads
        #: (an inner view's) the records of steps deeper down, by their escaped path
        self._deep: tuple[dict[str, StepInfo], dict[str, Any]] | None = None
        try:
            self.status = RunStatus(record.status)
        except ValueError:  # "cancelling", "reverting": still going
            self.status = RunStatus.RUNNING
        self.finished = self.status.finished
        #: when the owner's lease runs out (it renews it while alive)
        self.heartbeat = record.heartbeat
        self._results: dict[str, Any] = {}
        self._infos: dict[str, StepInfo] = {}
        self.reused = {key for key, node in nodes.items() if node.state == RecordState.REUSED}
        for key, node in nodes.items():
            state = _STORED_STATES.get(node.state, NodeState.PENDING)
            if state is NodeState.SUCCEEDED and node.result is not None:
                self._results[key] = loads(node.result)
            if self.finished and state in (NodeState.RUNNING, NodeState.RETRYING):
                state = NodeState.CANCELLED
            self._infos[key] = StepInfo(
                key=key,
                task=key,
                state=state,
                result=None,
                error=RecordedError(node.error) if node.error else None,
                attempts=node.attempt,
                started_at=node.started_at,
                finished_at=node.finished_at,
                duration_s=None,
            )

    def find(self, key: str) -> StepInfo | None:
        return self._infos.get(key)

    def inner(self, prefix: str) -> _StoredRun:
        """The records of the steps inside one template step (keys under ``prefix``; its
        own steps' keys come back as they are, deeper ones stay escaped under theirs)."""
        view = _StoredRun.__new__(_StoredRun)
        view.status = self.status
        view.finished = self.finished
        view.heartbeat = self.heartbeat
        view.loads = self.loads
        view.reused = set()
        infos, results = self._deep if self._deep is not None else (self._infos, self._results)
        cut = len(prefix)
        view._infos, view._results = {}, {}
        deep: tuple[dict[str, StepInfo], dict[str, Any]] = ({}, {})
        view._deep = deep
        for key, info in infos.items():
            if key.startswith(prefix):
                rest = key[cut:]
                if "/" in rest:  # a step of a template step in there: for its own view
                    deep[0][rest] = info
                else:
                    own = unescape_key(rest)
                    view._infos[own] = dataclasses.replace(info, key=own, task=own)
        for key, value in results.items():
            if key.startswith(prefix):
                rest = key[cut:]
                if "/" in rest:
                    deep[1][rest] = value
                else:
                    view._results[unescape_key(rest)] = value
        return view

    def step(self, key: str) -> StepInfo:
        """A step's record (not on record: never started, see ``Workflow._record``)."""
        found = self._infos.get(key)
        if found is not None:
            return found
        return StepInfo(key, key, NodeState.PENDING, None, None, 0, None, None, None)

    def results(self) -> dict[str, Any]:
        return self._results

    def slices(self, step: Step, count: int | None) -> list[dict[str, Any]]:
        """A sliced step's slices, from their own checkpoints (gaps: never recorded).

        ``count`` is how many it has, when its inputs tell."""
        prefix = checkpoint_prefix(step)
        found = {
            int(key[len(prefix) :]): info
            for key, info in self._infos.items()
            if key.startswith(prefix) and _SLICE_INDEX.fullmatch(key[len(prefix) :])
        }
        if not found and step.node_key not in self._infos:
            return []  # the step never started: no slices, as a live run shows
        # A stored key is data: an index past the slices the inputs make (or, when they
        # do not tell, far past those on record) is not a slice, and builds nothing.
        top = max(found, default=-1) + 1
        if count is not None:
            found = {i: info for i, info in found.items() if i < count}
            top = count
        elif top > 2 * len(found) + 64:
            bound = 2 * len(found) + 64
            found = {i: info for i, info in found.items() if i < bound}
            top = max(found, default=-1) + 1
        out: list[dict[str, Any]] = []
        for i in range(top):
            info = found.get(i)
            item = slice_record(step, i)
            if info is not None:
                item.update(
                    phase=_PHASES[info.state],
                    attempts=info.attempts,
                    started_at=info.started_at,
                    finished_at=info.finished_at,
                    error=str(info.error) if info.error is not None else None,
                    outputs=self._results.get(info.key),
                )
            out.append(item)
        return out


def _match(value: str, wanted: str | Sequence[str] | None) -> bool:
    if wanted is None:
        return True
    if isinstance(wanted, str):
        return value == wanted
    return value in wanted


class Workflow:
    """A dflow-style workflow run by aflow's scheduler, in this process.

    ``add(step)`` appends a step that runs after everything added before;
    ``add([s1, s2])`` appends steps that run in parallel. Give ``dag=`` to let
    the wiring alone order the steps. ``artifacts`` is the folder of the
    artifact store (default: beside a SQLite run store, else
    ``$AFLOW_ARTIFACTS``, else a folder that lives as long as the process).

    Example::

        wf = Workflow("hello").add(Step("step0", WriteFile, parameters={"msg": "hi", "number": 1}))
        async with aflow.Runtime():
            await wf.submit()
            assert await wf.wait() == "Succeeded"
            step = wf.query_step(name="step0")[0]
            download_artifact(step.outputs.artifacts["out_art"], path="out")

    ``await aflow.run(wf)`` works too; its value maps each last step's key to
    its output parameters.
    """

    def __init__(
        self,
        name: str = "workflow",
        *,
        steps: Steps | None = None,
        dag: DAG | None = None,
        parameters: Mapping[str, Any] | None = None,
        artifacts: str | os.PathLike[str] | None = None,
        parallelism: int | None = None,
    ) -> None:
        self.name = name
        if parallelism is not None and (
            not isinstance(parallelism, int) or isinstance(parallelism, bool) or parallelism < 1
        ):
            raise SignatureError(name, f"must be an int >= 1, got {parallelism!r}", "parallelism")
        #: at most this many operator calls (steps, slices, loop items) at once in a run
        self.parallelism = parallelism
        if steps is not None and dag is not None:
            raise TypeError("a workflow runs steps= or dag=, not both")
        entry = steps if steps is not None else dag
        if entry is not None and not isinstance(entry, Steps | DAG):
            raise TypeError(f"steps= takes aflow.ops.Steps, dag= an aflow.ops.DAG, got {entry!r}")
        self._entry: Template = entry if entry is not None else Steps(name)
        self._parameters = dict(parameters or {})
        for key in self._parameters:
            if key not in self._entry.inputs.parameters:
                raise SignatureError(
                    name,
                    f"parameters= gives {key!r}, which {self._entry.name!r} does not take; it "
                    f"takes {sorted(self._entry.inputs.parameters)}",
                    key,
                )
        self._root: Path | None = Path(artifacts).resolve() if artifacts is not None else None
        self._origin: tuple[WorkflowBuilder[..., Any], dict[str, Any]] | None = None
        self._run: Run[Any] | None = None
        self._run_root: Path | None = None
        self._reused: set[str] = set()
        self._stored: _StoredRun | None = None
        self._store_runtime: Runtime | None = None
        self._run_id: str | None = None
        #: submitted from a plain script: its run lives on aflow's script loop
        self._script = False
        self._context: list[contextvars.Token[Any]] = []
        self._called_stage: list[Step] | None = None
        self._calls: dict[str, int] = {}
        #: the steps a ``with self:`` block added (see _claimed)
        self._auto: set[int] = set()

    def __repr__(self) -> str:
        return f"<ops.Workflow {self.name!r} [{len(self.steps)} steps]>"

    def add(self, step: Step | Sequence[Step]) -> Workflow:
        """Append a step, or a list of steps that run in parallel; returns the workflow."""
        if self._entry.is_dag:
            raise TypeError("this workflow runs a DAG: add steps to the DAG")
        self._entry.add(step)
        return self

    def _claimed(self, step: Step) -> None:
        """``step``, made inside ``with self:`` and so added here, is added somewhere
        explicitly (to a template, or here again): it leaves the place it was given."""
        if id(step) not in self._auto:
            return
        self._auto.discard(id(step))
        for stage in self._entry.stages:
            if any(s is step for s in stage):
                stage[:] = [s for s in stage if s is not step]
        self._entry.stages[:] = [stage for stage in self._entry.stages if stage]
        if self._called_stage is not None and not self._called_stage:
            self._called_stage = None

    @property
    def steps(self) -> list[Step]:
        """Every step of the workflow's entry template, in the order added."""
        return self._entry.steps

    def _level(self) -> Level:
        """The entry template with its inputs' values (defaults, then ``parameters=``)."""
        entry = self._entry
        values: dict[str, Any] = {}
        for name, declared in entry.inputs.parameters.items():
            if name in self._parameters:
                values[name] = check_value(
                    entry.name, "input", name, declared.type, self._parameters[name]
                )
            elif declared.value is not MISSING:
                values[name] = declared.value
        missing = [n for n, d in entry.inputs.parameters.items() if n not in values]
        if missing:
            raise MissingInputError(
                entry.name,
                missing,
                "an input of the workflow's entry: give it a value, or Workflow(parameters=...)",
            )
        return bind_level(entry, values, {})

    def _remember_origin(
        self, builder: WorkflowBuilder[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        bound = inspect.signature(builder.fn).bind(*args, **kwargs)
        self._origin = (builder, dict(bound.arguments))

    # --- compiling -------------------------------------------------------------------------

    def __aflow_graph__(self) -> Graph:
        return _compile(self)

    # --- running ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        """``with Workflow("wf") as wf:``: steps made inside are added to it (in order;
        function-style ops called inside add theirs, ordered by their wiring). In a plain
        script the block's end submits it, as dflow's does; under a running event loop,
        ``await wf.submit()`` after the block."""
        self._context.append(BUILDING.set(self))
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        BUILDING.reset(self._context.pop())
        if exc_type is None and in_script() and self._run is None:
            self.submit()

    def _made(self, step: Step, *, called: bool) -> None:
        """A step made inside ``with self:``: a call of a function-style op joins the
        calls just before it (their wiring orders them), any other step follows all."""
        if self._entry.is_dag:
            self._entry.add(step)
        elif called and self._entry.stages and self._called_stage is self._entry.stages[-1]:
            self._entry.stages[-1].append(step)
        else:
            self._entry.add(step)
            self._called_stage = self._entry.stages[-1] if called else None
        self._auto.add(id(step))  # (after: adding it goes through _claimed)

    def submit(
        self,
        *,
        runtime: Runtime | None = None,
        reuse_step: Sequence[StepRecord] | None = None,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        on_event: EventListener | None = None,
    ) -> Awaitable[Run[Any]]:
        """Start a run in ``runtime`` (default: the innermost ``async with aflow.Runtime()``)
        and return its handle at once: ``run = await wf.submit()``.

        ``reuse_step`` takes records from an earlier run's :meth:`query_step`
        (optionally changed with ``modify_output_parameter``): those steps are
        not run, their outputs are taken. With a durable runtime the workflow
        must come from an ``@aflow.workflow`` function, so another process can
        rebuild it.

        In a plain script (no event loop running here) it submits to the runtime of
        aflow's script loop and returns when the run has started, as dflow's
        ``submit()`` does; then :meth:`wait`, :meth:`query_status` and
        :meth:`query_step` work there too.
        """
        options: dict[str, Any] = {
            "reuse_step": reuse_step,
            "run_id": run_id,
            "idempotency_key": idempotency_key,
            "timeout": timeout,
            "on_event": on_event,
        }
        if not in_script():
            return self._submit(runtime=runtime, **options)
        if runtime is not None:
            raise TypeError(
                "runtime= is for a running event loop ('await wf.submit(runtime=rt)'); a "
                "plain script's workflows run in aflow's script runtime"
            )
        self._script = True
        run = on_script_loop(lambda: self._submit(runtime=script_runtime(), **options)).result()
        return Ready(run)

    async def _submit(
        self,
        *,
        runtime: Runtime | None = None,
        reuse_step: Sequence[StepRecord] | None = None,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        on_event: EventListener | None = None,
    ) -> Run[Any]:
        rt = runtime if runtime is not None else CURRENT_RUNTIME.get(None)
        if rt is None:
            raise RuntimeError(
                "Workflow.submit() needs a running aflow.Runtime: "
                "'async with aflow.Runtime(): await wf.submit()'"
            )
        root = self._artifact_root(rt.store)
        reused_keys = {r.key for r in reuse_step or ()}
        for step in self.steps:  # before anything runs: the local files it will read
            if step.node_key in reused_keys:
                continue
            for key, path in step.local_files():
                if not path.exists():
                    raise SignatureError(
                        step.name, f"input {key!r}: no such file or directory {path}", key
                    )
        reuse: dict[str, Any] = {}
        beyond = Reuse()  # slices, and steps inside template steps
        entry = self._level().steps  # (keys rendered with the entry's inputs)
        keys = {s.node_key for s in entry}
        by_name = {s.name: s for s in entry}
        nested = any(s.is_template for t in walk(self._entry) for s in t.steps)
        for record in reuse_step or ():
            if not isinstance(record, StepRecord):
                raise TypeError(f"reuse_step takes records from query_step(), got {record!r}")
            parent = by_name.get(record.name) if record.slice_index is not None else None
            if record.slice_index is None and record.key not in keys and not nested:
                raise KeyError(
                    f"workflow {self.name!r} has no step with key {record.key!r} to reuse"
                )
            if record.slice_index is not None and parent is None and not nested:
                raise KeyError(f"workflow {self.name!r} has no step {record.name!r} to reuse")
            if record._raw is None:
                raise ValueError(
                    f"step {record.key!r} has no outputs to reuse (it is {record.phase})"
                )
            for value in record.outputs.artifacts.values():  # refused before anything runs
                if value is not None:
                    check_artifact(value.manifest, value.shape, value.origin)
            if record.root != root:  # file copies: off the event loop
                await anyio.to_thread.run_sync(_copy_artifacts, record, root)
            if record.slice_index is not None:
                owner = parent.node_key if parent is not None else record.name
                beyond.slices.setdefault(owner, {})[record.slice_index] = record._raw
            elif record.key in keys:
                reuse[record.key] = record._raw
            else:  # a step inside a template step (recursion keys are known as it runs)
                beyond.inner[record.key] = record._raw
        self._reused = set(reuse) | set(beyond.inner)
        options: dict[str, Any] = {
            "run_id": run_id,
            "idempotency_key": idempotency_key,
            "timeout": timeout,
            "reuse": reuse or None,
            "on_event": on_event,
        }
        token = REUSING.set(beyond)  # read when the graph is compiled, in rt.submit
        try:
            if self._origin is not None and rt.store is not None:
                builder, params = self._origin
                rebuilt = builder.fn(**params)
                if not isinstance(rebuilt, Workflow) or _digest(rebuilt) != _digest(self):
                    raise DefinitionError(
                        f"workflow {self.name!r} was changed after {builder.path} built it; a "
                        "durable run is rebuilt from that function, so make the change there"
                    )
                run = await rt.submit(builder, params=params, **options)
            else:
                run = await rt.submit(self, **options)
        finally:
            REUSING.reset(token)
        self._run = run
        self._run_id = run.id
        self._stored = None
        self._run_root = root
        self._store_runtime = None
        if rt.store is not None:
            try:
                rt.get(run.id)
            except KeyError:  # an earlier run under this key, or one another process drives
                self._store_runtime = rt
                self._stored = await _load_stored(rt, run.id)
        return run

    def _artifact_root(self, store: object | None) -> Path:
        """Where this workflow's artifacts go with this run store (raises, for a PostgreSQL
        store with no folder given, only if some step passes files)."""
        if self._root is not None:
            return self._root
        try:
            return default_root(store)
        except DefinitionError:
            files = any(
                f.is_artifact
                for step in self.steps
                for f in (*step.input_fields.values(), *step.all_output_fields.values())
            )
            if files:
                raise
            return default_root(None)

    @property
    def run(self) -> Run[Any]:
        """The handle of the last submitted run (``await wf.run.result()`` raises on failure)."""
        if self._run is None:
            if self._stored is not None:
                raise RuntimeError(
                    f"workflow {self.name!r} is read from the store (another process runs it, "
                    "or ran it): use wait(), query_status() and query_step()"
                )
            raise RuntimeError(f"workflow {self.name!r} has not been submitted")
        return self._run

    @classmethod
    async def load(cls, run_id: str, *, runtime: Runtime | None = None) -> Workflow:
        """A workflow run by any process, read back from a durable store, to query its
        steps and download its artifacts (dflow's ``Workflow(id=...)``).

        The run's ``@aflow.workflow`` is called again with the run's parameters;
        a run this runtime is driving is followed live.
        """
        rt = runtime if runtime is not None else CURRENT_RUNTIME.get(None)
        if rt is None or rt.store is None:
            raise RuntimeError("Workflow.load() needs an entered aflow.Runtime with a store")
        store = rt.store
        record = await store.get_run(run_id)
        builder = stored_workflow(rt, record)  # registered workflows only: a row is data
        loads = stored_loads(rt, record)
        built = builder(**loads(record.params))
        if not isinstance(built, Workflow):
            raise TypeError(f"run {run_id} is a {type(built).__name__}, not an ops.Workflow")
        built._run_root = built._artifact_root(store)
        built._run_id = run_id
        nodes = await store.load_nodes(run_id)
        built._reused = {key for key, node in nodes.items() if node.state == RecordState.REUSED}
        try:
            built._run = rt.get(run_id)
        except KeyError:  # run by another process, or finished: read from the store
            built._store_runtime = rt
            built._stored = _StoredRun(record, nodes, loads)
        return built

    async def refresh(self) -> None:
        """Read a run that another process drives (or drove) from the store again."""
        if self._store_runtime is not None and self._run_id is not None:
            self._stored = await _load_stored(self._store_runtime, self._run_id)

    def wait(self, *, poll: float = 0.25) -> Awaitable[str]:
        """Wait for the run to end and return its status (``await wf.wait()``); never
        raises for a failed run. In a plain script it blocks until then and returns the
        status (``wf.wait() == "Succeeded"``).

        A run another process drives is read from the store every ``poll`` seconds, on
        the clock of the runtime that reads it (its heartbeat is stale once that clock's
        wall time is past it).
        """
        if self._run is None and self._stored is None and not self._script:
            raise RuntimeError(f"workflow {self.name!r} has not been submitted")
        if not self._script or on_script_thread():
            return self._wait(poll)
        future = on_script_loop(lambda: self._wait(poll))
        if in_script():
            return ReadyText(future.result())
        return asyncio.wrap_future(future)

    async def _wait(self, poll: float) -> str:
        if self._run is not None:
            await self._run.wait()
            await self.refresh()
        elif self._stored is not None:
            rt = self._store_runtime
            clock = runtime_clock(rt)
            while not self._stored.finished:
                lease = self._stored.heartbeat
                now = wall_time(clock)
                if self._store_runtime is not None and lease is not None and lease < now:
                    # its process died: take the run up here, as recovery would
                    try:
                        self._run = await self._store_runtime.resume(self._run_id or "")
                    except ResumeMismatch:
                        await self.refresh()
                        taken = self._stored.heartbeat
                        now = wall_time(clock)
                        if not self._stored.finished and (taken is None or taken < now):
                            raise  # not taken up elsewhere: it cannot be resumed (say why)
                        continue  # another process took it up meanwhile: keep watching
                    else:
                        await self._run.wait()
                        self._stored = None
                        self._store_runtime = None
                        break
                await clock.sleep(poll)
                await self.refresh()
        else:
            raise RuntimeError(f"workflow {self.name!r} has not been submitted")
        return self.query_status()

    def terminate(self) -> Awaitable[None]:
        """Stop the run now (dflow's ``terminate()``): the steps running are cancelled,
        nothing more starts, and it ends ``Failed`` (``wf.run.status``: cancelled).
        ``await wf.terminate()``; in a plain script it returns once the run has stopped.
        A run another process drives (read with :meth:`load`) is asked to stop through
        the store, as ``aflow cancel`` does: it returns once the ask is on record (its
        process stops it; :meth:`wait` follows)."""
        if self._run is None and self._stored is None:
            raise RuntimeError(f"workflow {self.name!r} has not been submitted")

        async def stop() -> None:
            if self._run is not None:
                await self._run.cancel()
                return
            rt, run_id = self._store_runtime, self._run_id
            if rt is not None and rt.store is not None and run_id is not None:
                reason = "RunCancelled: terminated (ops.Workflow.terminate)"
                await rt.store.request_cancel(run_id, reason)
                await self.refresh()

        if not self._script or on_script_thread():
            return stop()
        future = on_script_loop(stop)
        if in_script():
            return Ready(future.result())
        return asyncio.wrap_future(future)

    def query_status(self) -> str:
        """``Pending``, ``Running``, ``Succeeded`` or ``Failed`` (reverted and cancelled
        runs are ``Failed``; ``wf.run.status`` tells them apart)."""
        if self._script and not on_script_thread():
            return on_script_loop(_async(self.query_status)).result()
        if self._stored is not None:
            return _STATUS[self._stored.status]
        if self._run is None:
            return "Pending"
        return _STATUS[self._run.status]

    def query_step(
        self,
        name: str | Sequence[str] | None = None,
        key: str | Sequence[str] | None = None,
        phase: str | Sequence[str] | None = None,
    ) -> list[StepRecord]:
        """Records of the steps that match (all of them without arguments), skipped
        steps included, in an order where every step follows those it depends on.
        A sliced step's slices match by their own keys (``name-0`` or the step's
        templated key)."""
        if self._script and not on_script_thread():
            return on_script_loop(_async(self.query_step, name, key, phase)).result()
        run: Run[Any] | _StoredRun = self._stored if self._stored is not None else self.run
        root = self._run_root or self._root or default_root(None)
        found: list[StepRecord] = []
        for record in self._records(self._level(), run, root):
            candidates = [record, *record.slices] if key is not None else [record]
            for candidate in candidates:
                if (
                    _match(candidate.name, name)
                    and _match(candidate.key, key)
                    and _match(candidate.phase, phase)
                ):
                    found.append(candidate)
        return found

    def _records(
        self, level: Level, run: Run[Any] | _StoredRun | RunView, root: Path
    ) -> list[StepRecord]:
        """The records of one level's steps, each template step's own steps after it (a
        walk with a stack of its own: a recursion may be thousands of levels deep)."""
        found: list[StepRecord] = []
        stack = [iter(self._level_records(level, run, root))]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            record, inner = item
            found.append(record)
            if inner is not None:
                stack.append(iter(self._level_records(*inner, root)))
        return found

    def _level_records(
        self, level: Level, run: Run[Any] | _StoredRun | RunView, root: Path
    ) -> list[tuple[StepRecord, tuple[Level, _StoredRun | RunView] | None]]:
        """One level's records, each with the level a template step ran (if it ran)."""
        run_id = self._run_id
        results = run.results()
        found: list[tuple[StepRecord, tuple[Level, _StoredRun | RunView] | None]] = []
        ordered, data, _ = _order(level)
        phases: dict[int, str] = {}
        for step in ordered:
            unrecorded: str | None = None
            if isinstance(run, _StoredRun) and run.find(step.node_key) is None:
                # not on record: skipped if what it reads did not succeed (or the run
                # succeeded without it); otherwise it never started
                skipped = any(
                    phases[id(src)] == "Skipped"
                    or (phases[id(src)] == "Failed" and src.continue_on_failed)
                    for src in data[id(step)]
                )
                if skipped or run.status is RunStatus.SUCCEEDED:
                    unrecorded = "Skipped"
            record = self._record(step, run, results, root, run_id, unrecorded)
            phases[id(step)] = record.phase
            inner: tuple[Level, _StoredRun | RunView] | None = None
            if step.is_template and isinstance(run, _StoredRun):
                if record.phase not in ("Pending", "Skipped"):
                    inner_level = _stored_level(step, level, record.inputs)
                    if inner_level is not None:
                        # (an inner level's records are keyed under its template step's)
                        prefix = ("" if level.path else "_in:") + escape_key(step.node_key) + "/"
                        inner = (inner_level, run.inner(prefix))
            elif step.is_template and not isinstance(run, _StoredRun):
                view = view_of(run) if isinstance(run, Run) else run
                made = view.made_by(step.node_key)
                nested = made[-1] if made else None
                inner_level = None if nested is None else nested.notes.get(_LEVEL)
                if nested is not None and isinstance(inner_level, Level):
                    inner = (inner_level, nested)
            found.append((record, inner))
        return found

    def _record(
        self,
        step: Step,
        run: Run[Any] | _StoredRun | RunView,
        results: Mapping[str, Any],
        root: Path,
        run_id: str | None,
        phase: str | None = None,
    ) -> StepRecord:
        info = run.step(step.node_key)
        raw = results.get(step.node_key) if info.state is NodeState.SUCCEEDED else None
        loads = _loads_of(run)
        origin = Origin(run_id, step.node_key)
        if raw is not None:
            raw = {
                "parameters": show_bigs(raw["parameters"], root, loads, origin),
                "artifacts": dict(raw["artifacts"]),
            } | ({"slices": raw["slices"]} if "slices" in raw else {})
        shapes = {
            k: ("list" if step.fans_out else f.artifact.shape)
            for k, f in step.output_fields.items()
            if f.artifact is not None
        }
        inputs = _inputs_of(step, results, root, run_id)
        inputs.parameters = show_bigs(inputs.parameters, root, loads, origin)
        slice_dicts = (raw or {}).get("slices") or getattr(info.error, SLICES_ATTR, None)
        if not slice_dicts and step.fans_out:
            if isinstance(run, Run | RunView):  # in progress here
                view = view_of(run) if isinstance(run, Run) else run
                slice_dicts = live_slices(view).get(step.node_key)
            else:  # from each slice's own checkpoint
                slice_dicts = run.slices(step, _slice_count(step, results))
        item_shapes = {k: f.artifact.shape for k, f in step.all_output_fields.items() if f.artifact}
        in_shapes = {k: f.artifact.shape for k, f in step.input_fields.items() if f.artifact}
        ended = info.state not in (NodeState.RUNNING, NodeState.RETRYING)
        slices = tuple(
            StepRecord(
                name=step.name,
                key=item["key"],
                phase=_slice_phase(item["phase"], ended),
                inputs=_slice_inputs(item.get("inputs"), in_shapes, root, run_id, item["key"]),
                raw=_shown(item["outputs"], root, loads, origin),
                root=root,
                run_id=run_id,
                shapes=item_shapes,
                attempts=item["attempts"],
                started_at=item["started_at"],
                finished_at=item["finished_at"],
                error=item["error"],
                slice_index=item["index"],
                reused=bool(item.get("reused")),
            )
            for item in slice_dicts or ()
        )
        started = finished = None
        if info.started_at is not None:
            started = info.started_at
        if info.finished_at is not None:
            finished = info.finished_at
        return StepRecord(
            name=step.name,
            key=step.node_key,
            phase=phase or _PHASES[info.state],
            inputs=inputs,
            raw=raw,
            root=root,
            shapes=shapes,
            attempts=info.attempts,
            started_at=started,
            finished_at=finished,
            error=info.error,
            slices=slices,
            reused=step.node_key in self._reused
            or (isinstance(run, _StoredRun) and step.node_key in run.reused),
            run_id=run_id,
        )


def _loads_of(run: Run[Any] | _StoredRun | RunView) -> Callable[[str], Any] | None:
    """How a run's stored values read back (``None``: a run in memory keeps none)."""
    if isinstance(run, _StoredRun):
        return run.loads
    top = (view_of(run) if isinstance(run, Run) else run).top
    return top.decode if top.store is not None else None


def _shown(outputs: Any, root: Path, loads: Callable[[str], Any] | None, origin: Origin) -> Any:
    """A slice's outputs with big references read back."""
    if not isinstance(outputs, dict) or "parameters" not in outputs:
        return outputs
    return {**outputs, "parameters": show_bigs(outputs["parameters"], root, loads, origin)}


async def _load_stored(rt: Runtime, run_id: str) -> _StoredRun:
    store = rt.store
    assert store is not None
    record = await store.get_run(run_id)
    return _StoredRun(record, await store.load_nodes(run_id), stored_loads(rt, record))


def _slice_count(step: Step, results: Mapping[str, Any]) -> int | None:
    """How many slices a step has, from its first sliced input or its loop (None: not
    known)."""
    if step.loop is not None:

        def read(ref: Any) -> Any:
            upstream = results.get(ref.step.node_key) if isinstance(ref, OutputRef) else None
            if upstream is None:
                raise LookupError(ref)
            return upstream[ref.kind].get(ref.name)

        try:
            return len(loop_items(step.name, step.loop, read))
        except (LookupError, SignatureError):
            return None
    key = step.sliced_inputs[0]
    value = step.parameters.get(key, step.artifacts.get(key))
    if isinstance(value, OutputRef):
        upstream = results.get(value.step.node_key)
        if upstream is None:
            return None
        value = upstream[value.kind].get(value.name)
    return len(value) if isinstance(value, list | tuple) else None


def _slice_phase(phase: str, ended: bool) -> str:
    """A slice left running or pending when its step was stopped from outside."""
    if ended and phase == "Running":
        return "Cancelled"
    if ended and phase == "Pending":
        return "Skipped"
    return phase


def _slice_inputs(
    inputs: Any, shapes: Mapping[str, str], root: Path, run_id: str | None, key: str
) -> StepIO:
    if not inputs:
        return StepIO({}, {})
    arts: dict[str, ArtifactValue | None] = {
        k: None if v is None else ArtifactValue(root, v, shapes.get(k, "one"), run_id, key)
        for k, v in inputs["artifacts"].items()
    }
    return StepIO(dict(inputs["parameters"]), arts)


def _copy_artifacts(record: StepRecord, root: Path) -> None:
    """A reused record's files, brought into this run's artifact store."""
    assert record._raw is not None
    target = ArtifactStore(root)
    source = ArtifactStore(record.root)
    for value in record.outputs.artifacts.values():
        if value is not None:
            for manifest in check_artifact(value.manifest, value.shape, value.origin):
                target.copy_from(source, manifest, value.origin)


def _inputs_of(step: Step, results: Mapping[str, Any], root: Path, run_id: str | None) -> StepIO:
    params: dict[str, Any] = {}
    arts: dict[str, ArtifactValue | None] = {}
    for k, v in step.parameters.items():
        if isinstance(v, OutputRef):
            upstream = results.get(v.step.node_key)
            params[k] = None if upstream is None else upstream["parameters"].get(v.name)
        else:
            params[k] = v
    for k, v in step.artifacts.items():
        if isinstance(v, OutputRef):
            upstream = results.get(v.step.node_key)
            manifest = None if upstream is None else upstream["artifacts"].get(v.name)
            field = v.field
            shape = (
                "list" if v.step.fans_out else (field.artifact.shape if field.artifact else "one")
            )
            arts[k] = (
                None
                if manifest is None
                else ArtifactValue(root, manifest, shape, run_id, v.step.node_key)
            )
        else:
            arts[k] = None  # a local file: it is where the caller left it
    return StepIO(params, arts)


# --- compiling to the graph IR ----------------------------------------------------------------


def _order(wf: Level) -> tuple[list[Step], dict[int, list[Step]], dict[int, list[Step]]]:
    """Steps in a topological order, each step's data sources and its order-only dependencies."""
    steps = wf.steps
    by_id = {id(s): s for s in steps}
    names: dict[str, Step] = {}
    for s in steps:
        if names.setdefault(s.name, s) is not s:
            raise DuplicateTaskError(s.name)
    data: dict[int, list[Step]] = {}
    order_deps: dict[int, list[Step]] = {}
    previous: list[Step] = []
    stages = [[s] for s in steps] if wf.is_dag else wf.stages
    for stage in stages:
        for s in stage:
            sources: dict[int, Step] = {}
            for ref in s.refs():
                if id(ref.step) not in by_id:
                    raise SignatureError(
                        s.name,
                        f"reads {ref!r}, but step {ref.step.name!r} is not in workflow {wf.name!r}",
                        ref.name,
                    )
                sources[id(ref.step)] = ref.step
            if isinstance(s.when, Expression):
                for step_name, param in s.when.refs:
                    if step_name == TEMPLATE_INPUT:
                        continue  # bound with the level (see bind_level)
                    src = names.get(step_name)
                    if src is None:
                        raise SignatureError(
                            s.name,
                            f"its when expression reads step {step_name!r}, which is not in "
                            f"workflow {wf.name!r}",
                            "when",
                        )
                    src.outputs.parameters[param]
                    sources[id(src)] = src
            for dep in s.dependencies:
                if id(dep) not in by_id:
                    raise SignatureError(
                        s.name,
                        f"depends on step {dep.name!r}, which is not in workflow {wf.name!r}",
                        "dependencies",
                    )
            data[id(s)] = list(sources.values())
            extra = [
                d
                for d in (*(previous if not wf.is_dag else ()), *s.dependencies)
                if id(d) not in sources
            ]
            order_deps[id(s)] = list({id(d): d for d in extra}.values())
        previous = stage
    # Kahn's walk over every dependency; a cycle names its steps
    index = {id(s): i for i, s in enumerate(steps)}
    parents = [[index[id(d)] for d in (*data[id(s)], *order_deps[id(s)])] for s in steps]
    children: list[list[int]] = [[] for _ in steps]
    remaining = [len(p) for p in parents]
    for i, ps in enumerate(parents):
        for p in ps:
            children[p].append(i)
    ordered = [i for i, r in enumerate(remaining) if r == 0]
    for i in ordered:
        for c in children[i]:
            remaining[c] -= 1
            if remaining[c] == 0:
                ordered.append(c)
    if len(ordered) != len(steps):
        cycle = find_cycle(parents, remaining)
        raise CycleError([steps[j].name for j in cycle])
    return [steps[i] for i in ordered], data, order_deps


def _guard(
    step: Step, data: list[Step], collected: list[tuple[int, Step]], root: Path | None
) -> Callable[[dict[str, Any]], bool]:
    """A step's guard: every data source gave outputs, and its ``when`` holds."""
    data_keys = [s.node_key for s in data]
    when = step.when

    def read(params: Mapping[str, Any]) -> dict[str, Any]:
        """Parameters as the condition reads them: big references read back."""
        if not any(map(holds_big, params.values())):
            return dict(params)
        run = current_run()
        store = ArtifactStore.for_run(root, run.top.store)
        return read_bigs(run, store, params, Origin(run.run_id, step.node_key))

    def holds(results: dict[str, Any]) -> bool:
        if isinstance(when, Expression):
            values = {}
            for step_name, param in when.refs:
                if step_name == TEMPLATE_INPUT:
                    values[(step_name, param)] = step.bound_inputs[param]
                    continue
                src = next(s for _, s in collected if s.name == step_name)
                given = results[src.node_key]["parameters"]
                values[(step_name, param)] = read({param: given[param]})[param]
            return bool(when.evaluate(values))
        if when is not None:
            seen = {
                s.name: (
                    None
                    if results.get(s.node_key) is None
                    else read(results[s.node_key]["parameters"])
                )
                for _, s in collected
            }
            # a copy: a condition that changes what it reads changes no step's outputs
            return bool(when(copy.deepcopy(seen)))
        return True

    def guard(results: dict[str, Any]) -> bool:
        # a source that failed (and the run went on past it) gave nothing to read
        go = all(results.get(k) is not None for k in data_keys)
        try:
            go = go and holds(results)
        except Exception as exc:  # the step itself fails with it (see run_step)
            when_errors(current_run())[step.node_key] = exc
            return True
        return go

    return guard


def _ancestors(
    step: Step, data: Mapping[int, list[Step]], order_deps: Mapping[int, list[Step]]
) -> list[Step]:
    seen: dict[int, Step] = {}
    stack = [*data[id(step)], *order_deps[id(step)]]
    while stack:
        s = stack.pop()
        if id(s) not in seen:
            seen[id(s)] = s
            stack.extend((*data[id(s)], *order_deps[id(s)]))
    return list(seen.values())


def _describe_value(value: Any) -> str:
    """A value as the change check compares it: wiring by reference, data by content."""
    if isinstance(value, OutputRef | InputParameter | InputArtifact):
        return str(value)
    if isinstance(value, ArtifactValue):
        return json.dumps(value.manifest, sort_keys=True)
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)  # an object whose repr holds its address compares by type
        return type(value).__qualname__ if " at 0x" in text else text


def _digest(wf: Workflow) -> str:
    """Everything that makes the workflow what it is: steps, wiring, options, conditions,
    and those of every template its steps use."""
    digest = hashlib.sha256()
    digest.update(repr(sorted((k, _describe_value(v)) for k, v in wf._parameters.items())).encode())
    digest.update(repr(wf.parallelism).encode())
    for template in walk(wf._entry):
        digest.update(_template_digest(template).encode())
    return digest.hexdigest()


def _template_digest(template: Template) -> str:
    digest = hashlib.sha256()
    digest.update(f"{type(template).__name__} {template.name} {template.parallelism}".encode())
    for name, p in template.inputs.parameters.items():
        digest.update(f"in {name} {_describe_value(p.value)} {p.type!r}".encode())
    for name, a in template.inputs.artifacts.items():
        digest.update(f"in-art {name} {a.optional}".encode())
    for name, o in template.outputs.parameters.items():
        source = o.value_from_expression or o.value_from_parameter
        digest.update(f"out {name} {source!r} {_describe_value(o.default)}".encode())
    for name, oa in template.outputs.artifacts.items():
        digest.update(f"out-art {name} {(oa.from_expression or oa._from)!r}".encode())
    for step in template.steps:
        when = step.when
        condition = when.text if isinstance(when, Expression) else getattr(when, "__qualname__", "")
        parts = [
            step.name,
            repr(step.key),
            op_name(step.op),
            repr(sorted((k, _describe_value(v)) for k, v in step.parameters.items())),
            # local files may move between builds (a temp dir, say): what is read is recorded
            repr(
                sorted(
                    (k, _describe_value(v))
                    for k, v in step.artifacts.items()
                    if isinstance(v, OutputRef)
                )
            ),
            condition,
            repr((step.retries, step.timeout, step.backoff, step.continue_on_failed)),
            repr((step.continue_on_num_success, step.continue_on_success_ratio, step.slices)),
            repr((step.loop, step.parallelism, step.retry_on)),
            repr([d.name for d in step.dependencies]),
        ]
        digest.update("\x1f".join(parts).encode() + b"\n")
    digest.update(repr([[s.name for s in stage] for stage in template.stages]).encode())
    return digest.hexdigest()


def _check_slice_keys(steps: list[Step]) -> None:
    """Slice keys (``name-3``, or a ``{{item}}`` key template) clash with no step's key, and
    no two steps share a template. (Templates that merely overlap, as ``p{{item}}`` and
    ``p1{{item}}`` do at ``p10``, are allowed: such a key names a slice of each in queries.
    Checkpoints and work dirs go by step key and index, never by these keys.)"""
    patterns: dict[str, Step] = {}
    for step in steps:
        if step.slices is None:
            continue
        pattern = step.key if step.key and "{{item}}" in step.key else f"{step.name}-{{{{item}}}}"
        other = patterns.setdefault(pattern, step)
        if other is not step:
            raise DuplicateTaskError(
                f"{pattern} (slice keys of steps {other.name!r} and {step.name!r})"
            )
    regexes = {
        pattern: re.compile(re.escape(pattern).replace(re.escape("{{item}}"), r"(0|[1-9]\d*)"))
        for pattern in patterns
    }
    for pattern, owner in patterns.items():
        for step in steps:
            if regexes[pattern].fullmatch(step.node_key):
                raise DuplicateTaskError(
                    f"{step.node_key} (a step's key, and a slice key of step {owner.name!r})"
                )


def _compile(wf: Workflow) -> Graph:
    if not wf.steps:
        raise SignatureError(wf.name, "a workflow needs at least one step", "steps")
    bounds = tuple(Bound(n) for n in (wf.parallelism, wf._entry.parallelism) if n is not None)
    reuse = REUSING.get()
    return _compile_level(wf._level(), wf._root, nested=False, bounds=bounds, reuse=reuse or None)


def _compile_level(
    level: Level,
    root: Path | None,
    *,
    nested: bool,
    bounds: tuple[Bound, ...] = (),
    reuse: Reuse | None = None,
    workpath: tuple[str, ...] | None = None,
) -> Graph:
    """The graph of one run of a template: the workflow's own (its last node gives the
    last steps' outputs and clears the work dirs), or a template step's (``nested``)."""
    if not level.steps:
        raise SignatureError(level.name, "a template needs at least one step", "steps")
    ordered, data, order_deps = _order(level)
    builder = GraphBuilder()
    _check_slice_keys(ordered)
    builder.reserve(s.node_key for s in ordered)
    node_of: dict[int, int] = {}
    gates: dict[tuple[int, ...], int] = {}
    consumed: set[int] = set()
    for step in ordered:
        sources = data[id(step)]
        deps = order_deps[id(step)]
        parents = [node_of[id(s)] for s in sources]
        consumed.update(id(s) for s in (*sources, *deps))
        if (
            deps
        ):  # ordering only: runs once they end, whether they succeeded, failed or were skipped
            dep_nodes = tuple(sorted(node_of[id(d)] for d in deps))
            gate = gates.get(dep_nodes)
            if gate is None:
                gate = gates[dep_nodes] = builder.add(
                    NodeKind.JOIN, None, name="_after", parents=dep_nodes, after_all=True
                )
            parents.append(gate)
        needs_guard = step.when is not None or any(s.continue_on_failed for s in sources)
        if needs_guard:
            if callable(step.when) and not isinstance(step.when, Expression):
                collected = [(node_of[id(s)], s) for s in _ancestors(step, data, order_deps)]
            else:
                collected = [(node_of[id(s)], s) for s in sources]
            guard = builder.add(
                NodeKind.JOIN,
                None,
                name=f"_when-{step.name}",
                args=(tuple(i for i, _ in collected),),
                parents=tuple(parents),
                when=_guard(step, sources, collected, root),
            )
            parents.append(guard)
        call = StepCall(step, root, level.path, bounds, reuse, workpath)
        binding_names = call.names
        bindings = tuple(
            (binding_names[id(s)], node_of[id(s)], None) for s in sources if id(s) in binding_names
        )
        sliced = step.fans_out
        options = resolve_options(
            {
                "retries": 0 if sliced else step.retries,
                "timeout": None if sliced else step.timeout,
                "backoff": None if sliced else step.backoff,
                "continue_on_failed": step.continue_on_failed,
                "retry_on": retry_rule(step),
            }
        )
        node_of[id(step)] = builder.add(
            # a sliced step's node holds no slot of the limits: its slices take them (and
            # a template step's, its steps)
            NodeKind.SUBGRAPH if sliced or step.is_template else NodeKind.TASK,
            _TEMPLATE_TASK if step.is_template else task_for(step.op),
            args=(call,),
            key=step.node_key,
            parents=tuple(dict.fromkeys(parents)),
            options=options,
            bindings=bindings,
        )
    sinks = [s for s in ordered if id(s) not in consumed]
    if nested:  # the template step reads its inner steps' results itself
        end = builder.add(
            NodeKind.JOIN,
            None,
            name="_end",
            parents=tuple(node_of[id(s)] for s in sinks),
            after_all=True,
        )
        return builder.build(end, name=level.name)

    async def outputs(**results: Any) -> dict[str, Any]:
        # the run went through: its outputs are stored, its work dirs can go
        store = run_store(root)
        run = current_run()
        await in_thread(shutil.rmtree, store.run_workdirs(run.run_id), True)
        return {  # (big parameters as their values)
            key: await load_bigs(run, store, value["parameters"], Origin(run.run_id, key))
            for key, value in results.items()
        }

    final = builder.add(
        NodeKind.TASK,
        FunctionTask(outputs, {"name": _RESULT_KEY}),
        key=_RESULT_KEY,
        parents=tuple(node_of[id(s)] for s in sinks),
        bindings=tuple((s.node_key, node_of[id(s)], None) for s in sinks),
        after_all=True,
    )
    return builder.build(final, name=level.name)


# --- a step whose template is Steps or a DAG ----------------------------------------------

#: In a template step's run, its level (what queries show of it).
_LEVEL = "ops.level"
_NOTHING: Any = object()


async def run_template(call: StepCall, **upstream: Any) -> dict[str, Any]:
    """The task of a template step's node: its template run as a nested run, with the
    step's inputs as the template's; its value is the template's outputs."""
    if call.path:  # itself inside a template step: checkpointed as the steps there are
        return await in_template(call, functools.partial(_run_template, call, upstream))
    return await _run_template(call, upstream)


async def _run_template(call: StepCall, upstream: Mapping[str, Any]) -> dict[str, Any]:
    step = call.step
    template = step.op
    assert isinstance(template, Template)
    run = current_run()
    failed = when_errors(run).get(step.node_key)
    if failed is not None:
        raise WhenError(step.name, failed) from failed
    store = ArtifactStore.for_run(call.root, run.top.store)
    literal = await local_inputs(call, store, run) if call.has_literal else {}
    params = {k: resolve(v, upstream, call.names) for k, v in step.parameters.items()}
    arts = {k: resolve(v, upstream, call.names) for k, v in step.artifacts.items()}
    arts.update(literal)
    check_artifacts(step, run.run_id, arts)
    await bring_stored(step, store)
    params = await load_bigs(run, store, params, Origin(run.run_id, step.node_key))
    name = op_name(template)
    values: dict[str, Any] = {}
    for key, declared in template.inputs.parameters.items():
        if key in params:
            values[key] = check_value(name, "input", key, declared.type, params[key])
        elif declared.value is not MISSING:
            values[key] = declared.value
        else:
            raise MissingInputError(step.name, [key], f"an input of {name}")
    art_values: dict[str, ArtifactValue | None] = {}
    for key in template.inputs.artifacts:
        manifest = arts.get(key)
        if manifest is None:
            art_values[key] = None
            continue
        origin = source_of(step, run.run_id, key)
        art_values[key] = ArtifactValue(
            store.root, manifest, manifest_shape(manifest), origin.run_id, origin.step
        )
    level = bind_level(template, values, art_values, (*call.path, step.node_key))
    bounds = call.bounds
    if template.parallelism is not None:  # one bound per run of the template
        bounds = (*bounds, Bound(template.parallelism))
    workpath = (*call.workpath, step.node_key, f"attempt-{current_attempt_number()}")
    graph = _compile_level(
        level, call.root, nested=True, bounds=bounds, reuse=call.reuse, workpath=workpath
    )
    inner = run.nested(graph)
    inner.notes[_LEVEL] = level
    await _execute_apart(inner)
    origin = Origin(run.run_id, step.node_key)

    def read(value: Any) -> Any:
        return read_bigs(run, store, {"v": value}, origin)["v"] if holds_big(value) else value

    return _template_outputs(level, inner.results(), read)


async def _execute_apart(inner: RunView) -> None:
    """Run a template step's level in a task of its own, outside the cancel scopes of the
    levels around it. (Awaited inline, each level of a recursion would add its frames to
    the Python stack of the one before, and in a task group of the level before, its
    cancel scope to theirs: a few dozen levels reach the interpreter's recursion limit,
    and a cancel of a few hundred recurses through every scope.) A cancel of this level
    cancels that task and waits, shielded, for it to end; its error is raised as it is."""
    level = asyncio.get_running_loop().create_task(inner.execute())  # (the context: copied)
    try:
        await asyncio.shield(level)
    except asyncio.CancelledError:
        if not level.done():
            level.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait([level])
        if level.done() and not level.cancelled() and level.exception() is not None:
            level.exception()  # (retrieved: the cancel is what goes on)
        raise


def _stored_level(step: Step, level: Level, inputs: StepIO) -> Level | None:
    """The level a template step ran, from its inputs on record (``None``: they no
    longer bind, so it cannot have run)."""
    template = step.op
    assert isinstance(template, Template)
    values = {
        k: inputs.parameters.get(k, p.value)
        for k, p in template.inputs.parameters.items()
        if k in inputs.parameters or p.value is not MISSING
    }
    arts = {k: inputs.artifacts.get(k) for k in template.inputs.artifacts}
    try:
        return bind_level(template, values, arts, (*level.path, step.node_key))
    except (SignatureError, KeyError):
        return None


def _template_outputs(
    level: Level, results: Mapping[str, Any], read: Callable[[Any], Any] = lambda v: v
) -> dict[str, Any]:
    """A template's outputs, from its steps' results and its inputs (``read``: a big
    parameter's value, for a condition that compares it)."""
    template = level.template
    name = op_name(template)
    params: dict[str, Any] = {}
    for key, declared in template.outputs.parameters.items():
        value = _pick(declared.source(), level, results, read)
        if value is _NOTHING:
            if declared.default is MISSING:
                raise OpIOError(name, "output", key, "a value", _no_value(declared.source()))
            value = declared.default
        if holds_big(value):  # passed on by reference (its step checked its type)
            params[key] = value
        else:
            params[key] = check_value(name, "output", key, declared.type, value)
    arts: dict[str, Any] = {}
    for key, art in template.outputs.artifacts.items():
        value = _pick(art.source(), level, results, read)
        if value is _NOTHING:
            if not art.optional:
                raise OpIOError(name, "output", key, "an artifact", _no_value(art.source()))
            value = None
        arts[key] = value
    return {"parameters": params, "artifacts": arts}


def _no_value(source: Any) -> str:
    if source is MISSING:
        return "nothing: it has no source (value_from_parameter / _from) and no default"
    return f"nothing: {source!r} gave no value (its step was skipped or failed)"


def _pick(
    source: Any,
    level: Level,
    results: Mapping[str, Any],
    read: Callable[[Any], Any] = lambda v: v,
) -> Any:
    """What an output's source holds in this level's run (``_NOTHING``: no value)."""
    if source is MISSING:
        return _NOTHING
    if isinstance(source, InputParameter | InputArtifact) and source.template is not level.template:
        owner = source.template.name if source.template is not None else "no template"
        raise SignatureError(
            level.name,
            f"an output reads {source!r}, an input of {owner}, not of {level.name!r}",
            "outputs",
        )
    if isinstance(source, IfExpression):
        if isinstance(source._if, InputParameter):
            _pick(source._if, level, {})  # (refuses another template's input)
        values: dict[tuple[str, str], Any] = {}
        for step_name, param in source.condition.refs:
            if step_name == TEMPLATE_INPUT:
                if param not in level.values:
                    raise SignatureError(
                        level.name,
                        f"an if_expression reads input {param!r}, which template "
                        f"{level.name!r} does not take",
                        "outputs",
                    )
                values[(step_name, param)] = level.values[param]
                continue
            found = level.step_named(step_name)
            if found is None:
                raise SignatureError(
                    level.name,
                    f"an if_expression reads step {step_name!r}, which is not in it",
                    "outputs",
                )
            result = results.get(found.node_key)
            if result is None:
                return _NOTHING
            values[(step_name, param)] = read(result["parameters"][param])
        chosen = source.holds(source.condition.evaluate(values))
        return _pick(source.branches()[0 if chosen else 1], level, results, read)
    if isinstance(source, OutputRef):
        bound = level.bound(source.step)
        if all(s is not bound for s in level.steps):
            raise SignatureError(
                level.name,
                f"an output reads {source!r}, but step {source.step.name!r} is not in it",
                "outputs",
            )
        result = results.get(bound.node_key)
        if result is None:
            return _NOTHING
        return result[source.kind][source.name]
    if isinstance(source, InputParameter):
        return level.values[source.name or ""]
    if isinstance(source, InputArtifact):
        given = level.artifacts.get(source.name or "")
        return _NOTHING if given is None else given.manifest
    return source  # a literal value


_TEMPLATE_TASK: FunctionTask[..., Any] = FunctionTask(run_template, {"name": "template"})


def _async(call: Callable[..., T], *args: Any) -> Callable[[], Awaitable[T]]:
    """``call(*args)`` as a coroutine function (to run it on the script loop's thread)."""

    async def run() -> T:
        return call(*args)

    return run
