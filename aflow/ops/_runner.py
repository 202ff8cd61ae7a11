"""Running one step: fresh working directory, inputs checked and materialised, the op
called, outputs checked and stored. Sliced steps fan out here, bounded by ``pool_size``."""

from __future__ import annotations

import functools
import inspect
import shutil
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from .._exceptions import (
    DefinitionError,
    OpIOError,
    SlicesBelowThreshold,
    TaskTimeout,
    UntrustedManifest,
    WhenError,
)
from .._options import NodeOptions
from .._runtime._builder_api import (
    AttemptHooks,
    FanOutHooks,
    RunView,
    current_attempt_number,
    current_run,
)
from .._runtime._builder_api import in_thread as _in_threads
from .._task import FunctionTask
from ..stores._base import NodeRecord, RecordState
from ._artifacts import (
    ArtifactStore,
    Origin,
    check_artifact,
    load_input,
    store_output,
)
from ._op import OP, op_name
from ._sign import OPIO, Field, check_value
from ._step import OutputRef, Step

__all__ = [
    "SLICES_ATTR",
    "StepCall",
    "run_store",
    "slice_record",
    "run_step",
    "checkpoint_key",
    "checkpoint_prefix",
    "in_thread",
    "live_slices",
    "retryable",
    "source_names",
    "task_for",
    "when_errors",
]

#: The attribute of a sliced step's error that holds its slices' records.
SLICES_ATTR = "__aflow_slices__"


_WHEN_ERRORS = "ops.when_errors"
_NONE: dict[str, BaseException] = {}


def when_errors(run: RunView) -> dict[str, BaseException]:
    """Conditions that raised in ``run``, by step key (the guard lets the step run, to
    fail with it)."""
    found: dict[str, BaseException] = run.notes.setdefault(_WHEN_ERRORS, {})
    return found


def live_slices(run: RunView) -> dict[str, list[dict[str, Any]]]:
    """The slices of each sliced step of ``run`` that started, by step key (live
    progress for queries)."""
    found: dict[str, list[dict[str, Any]]] = run.notes.setdefault("ops.live_slices", {})
    return found


def checkpoint_prefix(step: Step) -> str:
    """Where a step's slice checkpoints are stored: ``_slice:<step key>:<index>``.

    Not the slice's templated key, which only names it in queries: a step key
    never starts with ``_``, so these never clash with each other or a node.
    """
    return f"_slice:{step.node_key}:"


def checkpoint_key(step: Step, index: int) -> str:
    """The stored key of slice ``index``'s checkpoint."""
    return f"{checkpoint_prefix(step)}{index}"


def slice_record(step: Step, index: int, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A slice's record before it runs (live queries and stored ones share this form)."""
    return {
        "index": index,
        "key": step.slice_key(index),
        "phase": "Pending",
        "attempts": 0,
        "started_at": None,
        "finished_at": None,
        "error": None,
        "inputs": inputs,
        "outputs": None,
    }


def retryable(error: BaseException) -> bool:
    """A step's retry rule: any exception but a failed condition, a definition error or
    a stored manifest refused (none goes away by trying again)."""
    return isinstance(error, Exception) and not isinstance(
        error, WhenError | DefinitionError | UntrustedManifest
    )


def run_store(explicit: Path | None) -> ArtifactStore:
    """The artifact store of the run that is executing now."""
    try:
        store = current_run().store
    except RuntimeError:  # an op called outside a run
        store = None
    return ArtifactStore.for_run(explicit, store)


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking work in the run's threads (its ``Runtime(threads=)`` or executor).

    A thread cannot be interrupted: a cancel (a timeout, say) that came
    meanwhile is raised once it returns, so its result is dropped.
    """
    return await _in_threads(functools.partial(fn, *args))


def source_names(step: Step) -> dict[int, str]:
    """id(source step) -> the binding name it arrives under."""
    out: dict[int, str] = {}
    for ref in step.refs():
        out.setdefault(id(ref.step), f"up{len(out)}")
    return out


def _resolve(value: Any, upstream: Mapping[str, Any], names: Mapping[int, str]) -> Any:
    if isinstance(value, OutputRef):
        result = upstream[names[id(value.step)]]
        return result[value.kind][value.name]
    return value


async def _call_op(
    step: Step,
    store: ArtifactStore,
    run_id: str,
    where: tuple[str, ...],
    attempt: int,
    params: Mapping[str, Any],
    artifacts: Mapping[str, Any],
) -> dict[str, Any]:
    """One call of the op; returns ``{"parameters": ..., "artifacts": manifests}``."""
    name = op_name(step.op)
    op_in = OPIO()
    op_in.workdir = store.workdir(run_id, *where, str(attempt))
    fields = step.input_fields
    wanted: list[tuple[Field, Any]] = []
    for field in fields.values():
        if field.artifact is None:
            if field.name in params:
                value = params[field.name]
                op_in[field.name] = check_value(name, "input", field.name, field.type, value)
            elif field.has_default:
                op_in[field.name] = field.default
            continue
        value = artifacts.get(field.name)
        if value is None:
            if field.required:
                raise OpIOError(name, "input", field.name, repr(field.artifact), "nothing")
            op_in[field.name] = None
        else:
            wanted.append((field, value))
    instance = step.op() if isinstance(step.op, type) else step.op
    execute = instance.execute
    if inspect.iscoroutinefunction(execute):
        if wanted:  # file work happens in a worker thread
            await in_thread(_materialize, step, run_id, store, op_in, wanted)
        out = await execute(op_in)
        params, files, arts = _check_outputs(step, name, out)
        if files or op_in._made:
            await in_thread(_store_files, step, store, name, op_in, files, arts)
        return {"parameters": params, "artifacts": arts}

    def whole_attempt() -> dict[str, Any]:  # a sync op: one trip to a worker thread in all
        if wanted:
            _materialize(step, run_id, store, op_in, wanted)
        out = execute(op_in)
        if inspect.isawaitable(out):
            close = getattr(out, "close", None)
            if close is not None:
                close()
            raise OpIOError(name, "output", "*", "an OPIO from a plain def", "an awaitable")
        params, files, arts = _check_outputs(step, name, out)
        if files or op_in._made:
            _store_files(step, store, name, op_in, files, arts)
        return {"parameters": params, "artifacts": arts}

    result: dict[str, Any] = await in_thread(whole_attempt)
    return result


def _materialize(
    step: Step, run_id: str, store: ArtifactStore, op_in: OPIO, wanted: list[tuple[Field, Any]]
) -> None:
    workdir = op_in.workdir
    for field, value in wanted:
        assert field.artifact is not None
        shape = field.artifact.shape
        into = workdir / "inputs" / field.name
        origin = _source(step, run_id, field.name)
        op_in[field.name] = load_input(store, field.artifact, shape, value, into, origin)


def _check_outputs(
    step: Step, name: str, out: Any
) -> tuple[dict[str, Any], list[tuple[str, Any]], dict[str, Any]]:
    """Checked parameters, the artifact outputs still to store, and the optional ones left out."""
    if not isinstance(out, Mapping):
        raise OpIOError(name, "output", "*", "an OPIO (a dict of outputs)", type(out).__name__)
    fields: dict[str, Field] = step.all_output_fields
    for key in out:
        if key not in fields:
            raise OpIOError(name, "output", str(key), f"one of {sorted(fields)}", "an unknown key")
    params: dict[str, Any] = {}
    files: list[tuple[str, Any]] = []
    arts: dict[str, Any] = {}
    for key, field in fields.items():
        if key not in out:
            if field.artifact is not None and field.artifact.optional:
                arts[key] = None
                continue
            raise OpIOError(name, "output", key, field.describe(), "nothing (the key is missing)")
        if field.artifact is not None:
            files.append((key, out[key]))
        else:
            params[key] = check_value(name, "output", key, field.type, out[key])
    return params, files, arts


def _store_files(
    step: Step,
    store: ArtifactStore,
    name: str,
    op_in: OPIO,
    files: list[tuple[str, Any]],
    arts: dict[str, Any],
) -> None:
    """Copy artifact outputs into the store, then drop the working directory (blocking)."""
    workdir = op_in._path
    assert workdir is not None
    for key, value in files:
        spec = step.all_output_fields[key].artifact
        assert spec is not None
        arts[key] = store_output(store, name, key, spec, value, workdir)
    shutil.rmtree(workdir, ignore_errors=True)


def _literal_artifacts(step: Step, store: ArtifactStore) -> dict[str, Any]:
    """Local files given as artifact inputs, put in the store (blocking: call in a thread)."""
    out: dict[str, Any] = {}
    sliced = set(step.sliced_inputs)
    for key, path in step.local_files():
        if not path.exists():
            raise OpIOError(
                op_name(step.op), "input", key, "an existing file or directory", f"missing {path}"
            )
    for key, value in step.artifacts.items():
        if isinstance(value, OutputRef):
            continue
        field = step.input_fields[key]
        assert field.artifact is not None
        if key in sliced or field.artifact.shape == "list":
            out[key] = [store.put(Path(p)) for p in value]
        elif field.artifact.shape == "dict":
            out[key] = {k: store.put(Path(p)) for k, p in value.items()}
        else:
            out[key] = store.put(Path(value))
    return out


async def _local_inputs(call: StepCall, store: ArtifactStore, run: RunView) -> dict[str, Any]:
    """A step's local input files, stored once per run: a resumed run reads what the
    first attempt read, whatever became of the files since."""
    key = f"_inputs-{call.step.node_key}"
    if run.restored:
        found = (await run.stored_nodes()).get(key)
        if found is not None and found.result is not None:
            stored: dict[str, Any] = run.decode(found.result)
            return stored
    manifests: dict[str, Any] = await in_thread(_literal_artifacts, call.step, store)
    if run.store is not None:  # on record before the op starts
        await run.record_now(NodeRecord(key, RecordState.SUCCEEDED, 1, run.encode(key, manifests)))
    return manifests


class StepCall:
    """What a step's node passes its runner: the step, its wiring, its artifact root."""

    __slots__ = ("has_literal", "names", "root", "step")

    def __init__(self, step: Step, root: Path | None) -> None:
        self.step = step
        self.root = root
        self.names = source_names(step)
        self.has_literal = any(not isinstance(v, OutputRef) for v in step.artifacts.values())

    def __repr__(self) -> str:
        return f"<StepCall {self.step.name!r}>"


async def run_step(call: StepCall, **upstream: Any) -> dict[str, Any]:
    """The task of every step's node; upstream results arrive by binding name."""
    step = call.step
    run = current_run()
    failed = run.notes.get(_WHEN_ERRORS, _NONE).get(step.node_key)
    if failed is not None:  # its condition raised: it fails before doing anything
        raise WhenError(step.name, failed) from failed
    names = call.names
    store = ArtifactStore.for_run(call.root, run.store)
    literal = await _local_inputs(call, store, run) if call.has_literal else {}
    params = {k: _resolve(v, upstream, names) for k, v in step.parameters.items()}
    arts = {k: _resolve(v, upstream, names) for k, v in step.artifacts.items()}
    arts.update(literal)
    _check_artifacts(step, run.run_id, arts)
    if step.slices is None:
        attempt = current_attempt_number()
        return await _call_op(step, store, run.run_id, (step.node_key,), attempt, params, arts)
    return await _run_slices(step, store, run, params, arts)


def _source(step: Step, run_id: str, key: str) -> Origin:
    """Whose record holds artifact input ``key``: the step that made it, or this step
    for a local file (read into the store on its first run)."""
    wired = step.artifacts.get(key)
    return Origin(run_id, (wired.step if isinstance(wired, OutputRef) else step).node_key)


def _check_artifacts(step: Step, run_id: str, arts: Mapping[str, Any]) -> None:
    """Refuse any artifact input whose manifest is not as this aflow writes it (it may
    come from a store), naming the step whose record holds it, before any file is read."""
    sliced = set(step.sliced_inputs)
    for key, wired in step.artifacts.items():
        if isinstance(wired, OutputRef):
            spec = wired.field.artifact
            shape = "list" if wired.step.slices is not None else spec.shape if spec else "one"
        else:  # a local file, as read on the first run
            spec = step.input_fields[key].artifact
            shape = "list" if key in sliced else spec.shape if spec else "one"
        check_artifact(arts.get(key), shape, _source(step, run_id, key))


def _check_stored_outputs(step: Step, outputs: Any, origin: Origin) -> None:
    """A slice's outputs read back from its checkpoint: the artifacts in them checked."""
    arts = outputs.get("artifacts") if isinstance(outputs, dict) else None
    if not isinstance(arts, dict):
        raise origin.refuse(f"its outputs hold no artifacts by name: {type(arts).__name__}")
    for key, field in step.all_output_fields.items():
        if field.artifact is not None:
            check_artifact(arts.get(key), field.artifact.shape, origin)


_tasks: weakref.WeakKeyDictionary[Any, FunctionTask[..., Any]] = weakref.WeakKeyDictionary()


def task_for(op: type[OP] | OP) -> FunctionTask[..., Any]:
    """One task per operator class, named after it (call shapes are checked once per class;
    keyed by class, so an unhashable OP instance is fine)."""
    cls = op if isinstance(op, type) else type(op)
    task = _tasks.get(cls)
    if task is None:
        task = _tasks[cls] = FunctionTask(run_step, {"name": op_name(op)})
    return task


async def _run_slices(
    step: Step,
    store: ArtifactStore,
    run: RunView,
    params: dict[str, Any],
    arts: dict[str, Any],
) -> dict[str, Any]:
    slices = step.slices
    assert slices is not None
    run_id = run.run_id
    name = op_name(step.op)
    sliced = step.sliced_inputs
    lengths = {}
    for key in sliced:
        value = params[key] if key in params else arts.get(key)
        if not isinstance(value, list | tuple):
            raise OpIOError(name, "input", key, "a list to slice", type(value).__name__)
        lengths[key] = len(value)
    n = next(iter(lengths.values()))
    for key, length in lengths.items():
        if length != n:
            raise OpIOError(
                name, "input", key, f"a list of {n} items like {sliced[0]!r}", f"{length} items"
            )
    records = [
        slice_record(
            step,
            i,
            {
                "parameters": {k: (v[i] if k in sliced else v) for k, v in params.items()},
                "artifacts": {k: (v[i] if k in sliced else v) for k, v in arts.items()},
            },
        )
        for i in range(n)
    ]
    if run.restored:  # slices on record are not run again
        stored = await run.stored_nodes()
        for record in records:
            found = stored.get(checkpoint_key(step, record["index"]))
            if (
                found is not None
                and found.state == RecordState.SUCCEEDED
                and found.result is not None
            ):
                outputs = run.decode(found.result)
                _check_stored_outputs(step, outputs, Origin(run_id, record["key"]))
                record.update(
                    phase="Succeeded",
                    attempts=found.attempt,
                    started_at=found.started_at,
                    finished_at=found.finished_at,
                    outputs=outputs,
                )
    live_slices(run)[step.node_key] = records
    # One rule for retries (the step's, per slice) and one for tolerating failed
    # slices (a success threshold), the runtime's: the same as a group's or a map's.
    options = NodeOptions(
        retries=step.retries,
        timeout=step.timeout,
        backoff=step.backoff,
        retry_on=retryable,
        min_success=step.continue_on_num_success,
        success_ratio=step.continue_on_success_ratio,
    )
    tolerant = options.tolerant

    def body(i: int, attempt: int) -> Awaitable[dict[str, Any]]:
        inputs = records[i]["inputs"]
        where = (step.node_key, f"slice-{i}")
        return _call_op(
            step, store, run_id, where, attempt, inputs["parameters"], inputs["artifacts"]
        )

    errors = await run.fan_out(
        n,
        body,
        options,
        pool_size=slices.pool_size,
        group_size=slices.group_size,
        done={r["index"] for r in records if r["phase"] == "Succeeded"},
        hooks=_SliceRecords(step, run, records),
    )
    for record in records:
        if record["phase"] in ("Pending", "Running"):
            record["phase"] = "Cancelled" if record["phase"] == "Running" else "Skipped"
    ok = sum(1 for r in records if r["phase"] == "Succeeded")
    if errors and not (tolerant and options.threshold_met(ok, n)):
        first = errors[min(errors)]
        if tolerant:
            failed = [errors[i] for i in sorted(errors)]
            error: BaseException = SlicesBelowThreshold(run_id, step.node_key, ok, n, failed)
            error.__cause__ = first
        else:
            error = first
            where = records[min(errors)]["key"]
            error.add_note(f"aflow: slice {where!r} of step {step.name!r} failed")
        setattr(error, SLICES_ATTR, records)
        raise error
    stacked_params = {
        p: [r["outputs"]["parameters"][p] if r["outputs"] else None for r in records]
        for p in slices.output_parameter
    }
    stacked_arts: dict[str, list[Any]] = {}
    for a in slices.output_artifact:
        shape = step.all_output_fields[a].artifact.shape  # type: ignore[union-attr]
        flat: list[Any] = []
        for r in records:
            value = None if r["outputs"] is None else r["outputs"]["artifacts"][a]
            if shape == "one":  # one file per slice: positions kept, None for a failed one
                flat.append(value)
            elif value is None:
                continue
            elif shape == "list":
                flat.extend(value)
            else:
                flat.extend(value.values())
        stacked_arts[a] = flat
    return {"parameters": stacked_params, "artifacts": stacked_arts, "slices": records}


class _SliceRecords(FanOutHooks):
    """Each slice's record kept as it runs (live queries), and checkpointed."""

    __slots__ = ("_records", "_run", "_step")

    def __init__(self, step: Step, run: RunView, records: list[dict[str, Any]]) -> None:
        self._step = step
        self._run = run
        self._records = records

    def attempts(self, item: int) -> AttemptHooks:
        return _SliceAttempts(self._records[item])

    def timed_out(self, item: int, attempt: int, seconds: float) -> Exception:
        return TaskTimeout(self._run.run_id, self._records[item]["key"], attempt, seconds)

    def started(self, item: int) -> None:
        record = self._records[item]
        record["phase"] = "Running"
        record["attempts"] = 1
        record["started_at"] = time.time()
        if self._run.store is None:
            return
        # so a stored run shows it was running (then cut short)
        self._run.record(
            NodeRecord(
                checkpoint_key(self._step, item),
                RecordState.RUNNING,
                1,
                started_at=record["started_at"],
            )
        )

    def succeeded(self, item: int, value: Any, attempts: int) -> None:
        record = self._records[item]
        record["phase"] = "Succeeded"
        record["finished_at"] = time.time()
        record["outputs"] = value
        run = self._run
        if run.store is not None:  # checkpoint each slice: a crash loses only what ran
            run.record(
                NodeRecord(
                    checkpoint_key(self._step, item),
                    RecordState.SUCCEEDED,
                    attempts,
                    run.encode(record["key"], value),
                    None,
                    record["started_at"],
                    record["finished_at"],
                )
            )

    def failed(self, item: int, error: Exception) -> None:
        record = self._records[item]
        record["phase"] = "Failed"
        record["finished_at"] = time.time()
        record["error"] = f"{type(error).__name__}: {error}"
        if self._run.store is None:
            return
        self._run.record(  # for queries: a resume runs it again anyway
            NodeRecord(
                checkpoint_key(self._step, item),
                RecordState.FAILED,
                record["attempts"],
                None,
                record["error"],
                record["started_at"],
                record["finished_at"],
            )
        )


class _SliceAttempts(AttemptHooks):
    __slots__ = ("_record",)

    def __init__(self, record: dict[str, Any]) -> None:
        self._record = record

    def started(self, attempt: int) -> None:
        self._record["attempts"] = attempt
