"""Running one step: fresh working directory, inputs checked and materialised, the op
called, outputs checked and stored. Sliced steps fan out here: every group at once, the
items of a group ``pool_size`` at a time (dflow's meaning)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shutil
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import anyio

from .._exceptions import (
    DefinitionError,
    FatalError,
    OpIOError,
    SerializationError,
    SlicesBelowThreshold,
    TaskTimeout,
    UntrustedManifest,
    WhenError,
)
from .._options import NodeOptions, RetryOn
from .._runtime._builder_api import (
    AttemptHooks,
    FanOutHooks,
    RunView,
    current_attempt_number,
    current_run,
    remote_call_of,
)
from .._runtime._builder_api import in_thread as _in_threads
from .._task import FunctionTask
from ..executors._remote import run_coroutine
from ..stores._base import NodeRecord, RecordState
from ._artifacts import (
    ArtifactStore,
    ArtifactValue,
    Origin,
    check_artifact,
    load_input,
    store_output,
)
from ._big import holds_big, keep_bigs, load_bigs, read_bigs
from ._level import manifest_shape
from ._loops import item_key, loop_items, put_item
from ._op import OP, op_name
from ._sign import OPIO, Field, check_value, copy_value, fresh
from ._step import OutputRef, Step
from ._step import given_shape as manifest_shape_of_paths

__all__ = [
    "REUSING",
    "SLICES_ATTR",
    "Bound",
    "Reuse",
    "bring_stored",
    "check_artifacts",
    "escape_key",
    "in_template",
    "inner_key",
    "local_inputs",
    "resolve",
    "source_of",
    "unescape_key",
    "StepCall",
    "run_store",
    "slice_record",
    "run_step",
    "checkpoint_key",
    "checkpoint_prefix",
    "in_thread",
    "live_slices",
    "retryable",
    "task_for",
    "when_errors",
]

T = TypeVar("T")

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


def _admits(rule: RetryOn | None, error: BaseException) -> bool:
    if rule is None:
        return True
    if isinstance(rule, type | tuple):
        return isinstance(error, rule)
    return bool(rule(error))


def retryable(error: BaseException) -> bool:
    """The retry rule of a step without ``retry_on``: any exception but a failed
    condition, a definition error, a stored manifest refused, a value the store cannot
    hold or a :class:`FatalError` (none goes away by trying again)."""
    return isinstance(error, Exception) and not isinstance(
        error, WhenError | DefinitionError | UntrustedManifest | SerializationError | FatalError
    )


def step_retryable(step: Step, error: BaseException) -> bool:
    """:func:`retryable`, within the step's own ``retry_on`` (its template's retry policy
    when it has one): the rule of its node, and of each of its slices or items."""
    return retryable(error) and _admits(step.retry_on, error)


def retry_rule(step: Step) -> Callable[[BaseException], bool]:
    """The retry rule a step's node (or its items) goes by."""
    return retryable if step.retry_on is None else functools.partial(step_retryable, step)


def run_store(explicit: Path | None) -> ArtifactStore:
    """The artifact store of the run that is executing now."""
    try:
        store = current_run().top.store
    except RuntimeError:  # an op called outside a run
        store = None
    return ArtifactStore.for_run(explicit, store)


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking work in the run's threads (its ``Runtime(threads=)`` or executor).

    A thread cannot be interrupted: a cancel (a timeout, say) that came
    meanwhile is raised once it returns, so its result is dropped.
    """
    return await _in_threads(functools.partial(fn, *args))


def resolve(value: Any, upstream: Mapping[str, Any], names: Mapping[int, str]) -> Any:
    if isinstance(value, OutputRef):
        result = upstream[names[id(value.step)]]
        return result[value.kind][value.name]
    if isinstance(value, ArtifactValue):
        return value.manifest
    return value


def _call_op(
    step: Step,
    store: ArtifactStore,
    run_id: str,
    where: tuple[str, ...],
    attempt: int,
    params: Mapping[str, Any],
    artifacts: Mapping[str, Any],
) -> Awaitable[dict[str, Any]]:
    """One call of the op (see :func:`_call`); its step's retry rule is its node's (see
    :func:`retry_rule`)."""
    return _call(step, store, run_id, where, attempt, params, artifacts)


async def _call(
    step: Step,
    store: ArtifactStore,
    run_id: str,
    where: tuple[str, ...],
    attempt: int,
    params: Mapping[str, Any],
    artifacts: Mapping[str, Any],
) -> dict[str, Any]:
    """One call of the op; returns ``{"parameters": ..., "artifacts": manifests}``.

    Input parameters pass by value, as in dflow: the op gets its own copy of each
    (the checked value itself when checking rebuilt it all through), so changing
    one changes neither the step that gave it nor a literal of the workflow.
    """
    name = op_name(step.op)
    op_in = OPIO()
    op_in.workdir = store.workdir(run_id, *where, str(attempt))
    fields = step.input_fields
    wanted: list[tuple[Field, Any]] = []
    for field in fields.values():
        if field.artifact is None:
            if field.name in params:
                value = check_value(
                    name, "input", field.name, field.type, params[field.name], step.name
                )
                if not fresh(field.type):
                    value = copy_value(name, field.name, value)
                op_in[field.name] = value
            elif field.has_default:
                op_in[field.name] = copy_value(name, field.name, field.default)
            continue
        value = artifacts.get(field.name)
        if value is None:
            if field.required:
                raise OpIOError(name, "input", field.name, repr(field.artifact), "nothing")
            op_in[field.name] = None
        else:
            wanted.append((field, value))
    operator = step.op
    assert isinstance(operator, type | OP), "a template step runs in run_template"
    if step.executor is not None:
        return await _call_elsewhere(step, store, run_id, where, name, op_in, wanted)
    instance = operator() if isinstance(operator, type) else operator
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


async def _call_elsewhere(
    step: Step,
    store: ArtifactStore,
    run_id: str,
    where: tuple[str, ...],
    name: str,
    op_in: OPIO,
    wanted: list[tuple[Field, Any]],
) -> dict[str, Any]:
    """One call of an op whose ``execute`` runs in the step's executor: its work dir made
    and its input files put there by this process, its output files stored by it."""
    executor = step.executor
    assert executor is not None
    await in_thread(_prepare, step, run_id, store, op_in, wanted)
    call = remote_call_of(name, "/".join(where))
    own_cwd = executor.one_body_per_process
    try:
        out = await executor.call(execute_op, (step.op, op_in, own_cwd), {}, call)
    except SerializationError as exc:
        raise _unsent(name, step.op, op_in) or exc from None
    params, files, arts = _check_outputs(step, name, out)
    await in_thread(_store_files, step, store, name, op_in, files, arts)
    return {"parameters": params, "artifacts": arts}


def _prepare(
    step: Step, run_id: str, store: ArtifactStore, op_in: OPIO, wanted: list[tuple[Field, Any]]
) -> None:
    op_in.workdir  # noqa: B018  (made here: the op may run with it as its current directory)
    if wanted:
        _materialize(step, run_id, store, op_in, wanted)


def _unsent(name: str, operator: Any, op_in: OPIO) -> Exception | None:
    """What of an op's call cannot go to another process, by name (``None``: not found)."""
    import pickle

    try:
        pickle.dumps(operator)
    except Exception as exc:
        return SerializationError(
            name,
            type(operator),
            "the op",
            f"an op run elsewhere must pickle: a class at a module's top level, or an "
            f"instance of one whose attributes pickle ({exc})",
        )
    for key, value in op_in.items():
        try:
            pickle.dumps(value)
        except Exception as exc:
            return SerializationError(
                name, type(value), f"input {key!r}", f"an op run elsewhere is given a copy ({exc})"
            )
    return None


def execute_op(operator: Any, op_in: OPIO, own_cwd: bool) -> Any:
    """In a worker: the op's ``execute``, in its work dir as the current directory when
    the worker runs nothing else meanwhile (``own_cwd``), as dflow runs an op."""
    instance = operator() if isinstance(operator, type) else operator
    execute = instance.execute
    before = os.getcwd() if own_cwd else None
    if before is not None:
        os.chdir(op_in.workdir)
    try:
        if inspect.iscoroutinefunction(execute):
            return run_coroutine(execute(op_in))
        out = execute(op_in)
        if inspect.isawaitable(out):
            close = getattr(out, "close", None)
            if close is not None:
                close()
            raise OpIOError(
                op_name(operator), "output", "*", "an OPIO from a plain def", "an awaitable"
            )
        return out
    finally:
        if before is not None:
            os.chdir(before)


def _materialize(
    step: Step, run_id: str, store: ArtifactStore, op_in: OPIO, wanted: list[tuple[Field, Any]]
) -> None:
    workdir = op_in.workdir
    for field, value in wanted:
        assert field.artifact is not None
        shape = field.artifact.shape
        into = workdir / "inputs" / field.name
        origin = source_of(step, run_id, field.name)
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
            if field.artifact is None:  # a parameter left out takes its default, as in dflow
                if field.has_default:
                    params[key] = copy_value(name, key, field.default, "output")
                    continue
                defaults = getattr(step.template, "output_parameter_default", None)
                if defaults and key in defaults:
                    params[key] = copy_value(name, key, defaults[key], "output")
                    continue
            raise OpIOError(name, "output", key, field.describe(), "nothing (the key is missing)")
        if field.artifact is not None:
            files.append((key, out[key]))
        else:
            params[key] = check_value(name, "output", key, field.type, out[key], step.name)
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
    # the op's input files are materialised in its work dir: one it gives back keeps its name
    inputs = [workdir / "inputs" / f.name for f in step.input_fields.values() if f.artifact]
    for key, value in files:
        spec = step.all_output_fields[key].artifact
        assert spec is not None
        arts[key] = store_output(store, name, key, spec, value, workdir, inputs)
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
        shape = field.artifact.shape
        if shape == "any":  # a template's input: the value says
            shape = manifest_shape_of_paths(value)
        if key in sliced or shape == "list":
            out[key] = [store.put(Path(p)) for p in value]
        elif shape == "dict":
            out[key] = {k: store.put(Path(p)) for k, p in value.items()}
        else:
            out[key] = store.put(Path(value))
    return out


async def local_inputs(call: StepCall, store: ArtifactStore, run: RunView) -> dict[str, Any]:
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


class Bound:
    """A ``parallelism=`` bound of a workflow or a template: at most ``limit`` calls of
    operators at once in one run of it (made per run of its level; its limiter on first
    use, inside the run's loop)."""

    __slots__ = ("_limiter", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.limit)
        return self._limiter


async def _bounded(bounds: tuple[Bound, ...], call: Awaitable[T]) -> T:
    """``call`` awaited holding one place of each bound, outermost first."""
    async with contextlib.AsyncExitStack() as places:
        for bound in bounds:
            await places.enter_async_context(bound.limiter)
        return await call


def bounded(bounds: tuple[Bound, ...], call: Awaitable[T]) -> Awaitable[T]:
    return call if not bounds else _bounded(bounds, call)


class Reuse:
    """Outputs a run takes instead of running what made them (``submit(reuse_step=)``)
    that no node of its graph holds: slices, by their step's key (or name) and index, and
    steps inside template steps, by key."""

    __slots__ = ("inner", "slices")

    def __init__(self) -> None:
        self.inner: dict[str, Any] = {}
        self.slices: dict[str, dict[int, Any]] = {}

    def __bool__(self) -> bool:
        return bool(self.inner or self.slices)

    def slices_of(self, step: Step) -> dict[int, Any]:
        return self.slices.get(step.node_key) or self.slices.get(step.name) or {}


#: The reuse of the run being submitted (read when its graph is compiled).
REUSING: ContextVar[Reuse | None] = ContextVar("aflow.ops.reusing", default=None)


class StepCall:
    """What a step's node passes its runner: the step, its wiring, its artifact root."""

    __slots__ = (
        "bigs_in",
        "bigs_out",
        "bounds",
        "foreign",
        "has_literal",
        "names",
        "path",
        "reuse",
        "root",
        "step",
        "workpath",
    )

    def __init__(
        self,
        step: Step,
        root: Path | None,
        path: tuple[str, ...] = (),
        bounds: tuple[Bound, ...] = (),
        reuse: Reuse | None = None,
        workpath: tuple[str, ...] | None = None,
    ) -> None:
        #: where its work dirs go under the run's: ``path`` with each template step's
        #: attempt (a retried template step's steps start in fresh folders)
        self.workpath = path if workpath is None else workpath
        #: outputs taken from an earlier run, for the slices and inner steps it runs
        self.reuse = reuse
        self.step = step
        self.root = root
        #: the keys of the template steps it runs inside, outermost first
        self.path = path
        #: the parallelism bounds of the workflow and templates it runs inside
        self.bounds = bounds
        names: dict[int, str] = {}
        #: big parameters it reads (wired from big outputs) and gives (see _big)
        self.bigs_in = False
        for ref in step.refs():
            names.setdefault(id(ref.step), f"up{len(names)}")
            if ref.kind == "parameters" and ref.field.big:
                self.bigs_in = True
        self.names = names
        self.bigs_out = False
        for f in step.all_output_fields.values():
            if f.big:
                self.bigs_out = True
        self.has_literal = self.foreign = False
        for v in step.artifacts.values():
            if isinstance(v, ArtifactValue):
                #: artifacts given from the store already (maybe another store's)
                self.foreign = True
            elif not isinstance(v, OutputRef):
                self.has_literal = True

    def __repr__(self) -> str:
        return f"<StepCall {self.step.name!r}>"


def inner_key(call: StepCall) -> str:
    """Where a step inside a template step is checkpointed: ``_in:<path>/<key>`` (the
    keys of the template steps it runs inside, then its own, each escaped: a key may hold
    a ``/``). Never a node's key."""
    return "_in:" + "/".join(escape_key(k) for k in (*call.path, call.step.node_key))


def escape_key(key: str) -> str:
    """A step key as one part of an inner checkpoint's path (no ``/`` left in it)."""
    return key.replace("%", "%25").replace("/", "%2F")


def unescape_key(part: str) -> str:
    return part.replace("%2F", "/").replace("%25", "%")


async def in_template(
    call: StepCall, body: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Run ``body``, the work of a step inside a template step, checkpointed in the
    run's store (the nested run a template step makes has no journal of its own): its
    result is on record before anything downstream reads it, and a resumed run takes it
    from there instead of running it again."""
    top = current_run().top
    reused = call.reuse.inner.get(call.step.node_key) if call.reuse is not None else None
    if reused is not None:  # taken from an earlier run (and on record, for a resume)
        if top.store is not None:
            key = inner_key(call)
            value = top.encode(key, reused)
            await top.record_now(NodeRecord(key, RecordState.SUCCEEDED, 1, value))
        return dict(reused)
    if top.store is None:
        return await body()
    key = inner_key(call)
    if top.restored:
        reading = top.notes.setdefault(_STORED_LOCK, anyio.Lock())
        async with reading:  # read once per resumed run, by the first step that asks
            stored = top.notes.get(_STORED)
            if stored is None:
                stored = top.notes[_STORED] = await top.stored_nodes()
        found = stored.get(key)
        if found is not None and found.state == RecordState.SUCCEEDED and found.result is not None:
            return _checked_inner(call, top.decode(found.result), Origin(top.run_id, key))
    started = time.time()
    attempt = current_attempt_number()
    try:
        result = await body()
    except Exception as exc:  # on record, so a run read back shows where it failed
        error = f"{type(exc).__name__}: {exc}"
        top.record(NodeRecord(key, RecordState.FAILED, attempt, None, error, started, time.time()))
        raise
    await top.record_now(
        NodeRecord(
            key,
            RecordState.SUCCEEDED,
            current_attempt_number(),
            top.encode(key, result),
            None,
            started,
            time.time(),
        )
    )
    return result


_STORED = "ops.stored"
_STORED_LOCK = "ops.stored.lock"


def _checked_inner(call: StepCall, kept: Any, origin: Origin) -> dict[str, Any]:
    """An inner step's checkpoint read back from the store: data, checked as the run's own
    outputs are before anything reads it (UntrustedManifest naming the record)."""
    if (
        not isinstance(kept, dict)
        or not isinstance(kept.get("parameters"), dict)
        or not isinstance(kept.get("artifacts"), dict)
    ):
        raise origin.refuse("its record is not a step's outputs (parameters and artifacts)")
    step = call.step
    for name, field in step.output_fields.items():
        if field.artifact is not None and field.artifact.shape != "any":
            shape = "list" if step.fans_out else field.artifact.shape
            value = kept["artifacts"].get(name)
            if value is not None or not field.artifact.optional:
                check_artifact(value, shape, origin)
    return kept


async def run_step(call: StepCall, **upstream: Any) -> dict[str, Any]:
    """The task of every step's node; upstream results arrive by binding name."""
    if call.path:
        return await in_template(call, functools.partial(_run_step, call, upstream))
    return await _run_step(call, upstream)


async def _run_step(call: StepCall, upstream: Mapping[str, Any]) -> dict[str, Any]:
    step = call.step
    run = current_run()
    failed = run.notes.get(_WHEN_ERRORS, _NONE).get(step.node_key)
    if failed is not None:  # its condition raised: it fails before doing anything
        raise WhenError(step.name, failed) from failed
    names = call.names
    store = ArtifactStore.for_run(call.root, run.top.store)  # (a template's: its run's)
    literal = await local_inputs(call, store, run) if call.has_literal else {}
    params = {k: resolve(v, upstream, names) for k, v in step.parameters.items()}
    arts = {k: resolve(v, upstream, names) for k, v in step.artifacts.items()}
    arts.update(literal)
    check_artifacts(step, run.run_id, arts)
    if call.foreign:
        await bring_stored(step, store)
    if call.bigs_in or (run.top.store is not None and any(map(holds_big, params.values()))):
        params = await load_bigs(run, store, params, Origin(run.run_id, step.node_key))
    if step.loop is not None:

        def read(ref: Any) -> Any:
            value = resolve(ref, upstream, names)
            if holds_big(value):  # a loop over a big list
                value = read_bigs(run, store, {"v": value}, Origin(run.run_id, step.node_key))
                return value["v"]
            return value

        items = loop_items(step.name, step.loop, read)
        return await _run_loop(step, store, run, params, arts, items, call)
    if step.slices is None:
        attempt = current_attempt_number()
        where = (*call.workpath, step.node_key)
        made = _call_op(step, store, run.run_id, where, attempt, params, arts)
        result = await (_bounded(call.bounds, made) if call.bounds else made)
        return await keep_bigs(step, run, store, result) if call.bigs_out else result
    return await _run_slices(step, store, run, params, arts, call)


def source_of(step: Step, run_id: str, key: str) -> Origin:
    """Whose record holds artifact input ``key``: the step that made it, or this step
    for a local file (read into the store on its first run)."""
    wired = step.artifacts.get(key)
    if isinstance(wired, ArtifactValue):
        return wired.origin
    return Origin(run_id, (wired.step if isinstance(wired, OutputRef) else step).node_key)


def check_artifacts(step: Step, run_id: str, arts: Mapping[str, Any]) -> None:
    """Refuse any artifact input whose manifest is not as this aflow writes it (it may
    come from a store), naming the step whose record holds it, before any file is read."""
    sliced = set(step.sliced_inputs)
    for key, wired in step.artifacts.items():
        if isinstance(wired, ArtifactValue):  # a stored artifact given as it is
            shape = wired.shape
        elif isinstance(wired, OutputRef):
            spec = wired.field.artifact
            shape = "list" if wired.step.fans_out else spec.shape if spec else "one"
        else:  # a local file, as read on the first run
            spec = step.input_fields[key].artifact
            shape = "list" if key in sliced else spec.shape if spec else "one"
        if shape == "any":  # a template's output: its manifest tells
            shape = manifest_shape(arts.get(key))
        check_artifact(arts.get(key), shape, source_of(step, run_id, key))


async def bring_stored(step: Step, store: ArtifactStore) -> None:
    """Files of stored artifacts given as inputs from another artifact store, copied into
    this run's (off the event loop)."""
    foreign = [
        v for v in step.artifacts.values() if isinstance(v, ArtifactValue) and v.root != store.root
    ]
    if foreign:
        await in_thread(_copy_into, store, foreign)


def _copy_into(store: ArtifactStore, values: list[ArtifactValue]) -> None:
    for value in values:
        source = ArtifactStore(value.root)
        for manifest in check_artifact(value.manifest, value.shape, value.origin):
            store.copy_from(source, manifest, value.origin)


def _check_stored_outputs(step: Step, outputs: Any, origin: Origin) -> None:
    """A slice's outputs read back from its checkpoint: the artifacts in them checked."""
    arts = outputs.get("artifacts") if isinstance(outputs, dict) else None
    if not isinstance(arts, dict):
        raise origin.refuse(f"its outputs hold no artifacts by name: {type(arts).__name__}")
    for key, field in step.all_output_fields.items():
        if field.artifact is not None:
            check_artifact(arts.get(key), field.artifact.shape, origin)


_tasks: weakref.WeakKeyDictionary[Any, FunctionTask[..., Any]] = weakref.WeakKeyDictionary()


def task_for(op: Any) -> FunctionTask[..., Any]:
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
    call: StepCall,
) -> dict[str, Any]:
    slices = step.slices
    assert slices is not None
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
    return await _fan(
        step,
        store,
        run,
        records,
        call,
        (slices.output_parameter, slices.output_artifact),
        # as in dflow: every group at once (the step's parallelism bounds them), pool_size
        # items of each
        pool_size=step.parallelism,
        group_size=slices.group_size,
        per_group=slices.per_group,
    )


async def _run_loop(
    step: Step,
    store: ArtifactStore,
    run: RunView,
    params: dict[str, Any],
    arts: dict[str, Any],
    items: list[Any],
    call: StepCall,
) -> dict[str, Any]:
    """A ``with_param`` / ``with_sequence`` step: one call per item, ``{{item}}`` in its
    parameters; every output stacked into a list, in item order."""
    records = []
    for i, item in enumerate(items):
        record = slice_record(
            step,
            i,
            {
                "parameters": {k: put_item(v, item, step.name, k) for k, v in params.items()},
                "artifacts": dict(arts),
            },
        )
        record["key"] = item_key(step.key, item, step.name, i)
        records.append(record)
    fields = step.all_output_fields
    stacked = (
        tuple(n for n, f in fields.items() if not f.is_artifact),
        tuple(n for n, f in fields.items() if f.is_artifact),
    )
    return await _fan(step, store, run, records, call, stacked, pool_size=step.parallelism)


async def _fan(
    step: Step,
    store: ArtifactStore,
    run: RunView,
    records: list[dict[str, Any]],
    call: StepCall,
    stacked: tuple[tuple[str, ...], tuple[str, ...]],
    *,
    pool_size: int | None,
    group_size: int = 1,
    per_group: int = 1,
) -> dict[str, Any]:
    """Run a step's items (slices or loop items) as ``records`` describe them; their
    outputs stacked, ``stacked`` names which (parameters, artifacts)."""
    run_id = run.run_id
    n = len(records)
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
    reused = call.reuse.slices_of(step) if call.reuse is not None else {}
    for record in records:
        taken = reused.get(record["index"])
        if taken is not None and record["phase"] != "Succeeded":
            record.update(phase="Succeeded", attempts=0, outputs=taken, reused=True)
            if run.store is not None:  # on record: a resumed run takes it too
                key = checkpoint_key(step, record["index"])
                encoded = run.encode(record["key"], taken)
                run.record(NodeRecord(key, RecordState.SUCCEEDED, 1, encoded))
    live_slices(run)[step.node_key] = records
    # One rule for retries (the step's, per slice) and one for tolerating failed
    # slices (a success threshold), the runtime's: the same as a group's or a map's.
    options = NodeOptions(
        retries=step.retries,
        timeout=step.timeout,
        backoff=step.backoff,
        retry_on=retry_rule(step),
        min_success=step.continue_on_num_success,
        success_ratio=step.continue_on_success_ratio,
    )
    tolerant = options.tolerant

    hooks = _SliceRecords(step, run, records)
    bigs = call.bigs_out and run.top.store is not None

    def body(i: int, attempt: int) -> Awaitable[dict[str, Any]]:
        inputs = records[i]["inputs"]
        where = (*call.workpath, step.node_key, f"slice-{i}")
        made = bounded(
            call.bounds,
            _call_op(
                step, store, run_id, where, attempt, inputs["parameters"], inputs["artifacts"]
            ),
        )
        if bigs:
            made = _kept(step, run, store, made)
        return made if run.store is None else hooks.encoded(i, made)

    errors = await run.fan_out(
        n,
        body,
        options,
        pool_size=pool_size,
        group_size=group_size,
        per_group=per_group,
        done={r["index"] for r in records if r["phase"] == "Succeeded"},
        hooks=hooks,
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
        for p in stacked[0]
    }
    stacked_arts: dict[str, list[Any]] = {}
    for a in stacked[1]:
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


async def _kept(
    step: Step, run: RunView, store: ArtifactStore, call: Awaitable[dict[str, Any]]
) -> dict[str, Any]:
    return await keep_bigs(step, run, store, await call)


class _SliceRecords(FanOutHooks):
    """Each slice's record kept as it runs (live queries), and checkpointed."""

    __slots__ = ("_encoded", "_records", "_run", "_step")

    def __init__(self, step: Step, run: RunView, records: list[dict[str, Any]]) -> None:
        self._step = step
        self._run = run
        self._records = records
        self._encoded: dict[int, str] = {}

    async def encoded(self, item: int, call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        """A slice's outputs, encoded for its checkpoint within its attempt: outputs the
        store cannot take fail the slice (a SerializationError naming it, not retried)."""
        value = await call
        self._encoded[item] = self._run.encode(self._records[item]["key"], value)
        return value

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
        encoded = self._encoded.pop(item, None)
        if encoded is not None:  # checkpoint each slice: a crash loses only what ran
            run.record(
                NodeRecord(
                    checkpoint_key(self._step, item),
                    RecordState.SUCCEEDED,
                    attempts,
                    encoded,
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
