"""Steps: an operator with its inputs wired, and references to other steps' outputs."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, final

from .._exceptions import MissingInputError, OpIOError, SignatureError
from .._options import Backoff, RetryOn, check_options
from ..executors._base import Executor as AflowExecutor
from ..executors._base import executor_of
from ._artifacts import ArtifactValue
from ._expr import TEMPLATE_INPUT, Expression
from ._loops import ArgoSequence, check_loop, has_item, refs_of
from ._op import OP, PythonOPTemplate, Slices, op_name, template_of
from ._sign import MISSING, Artifact, Field, check_value, type_name
from ._template import InputArtifact, InputParameter, Template

__all__ = ["BUILDING", "OutputRef", "Step"]

#: The workflow a ``with Workflow(...)`` block builds: steps made there are added to it.
BUILDING: ContextVar[Any] = ContextVar("aflow.ops.building", default=None)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@final
class OutputRef:
    """``step.outputs.parameters["x"]`` or ``step.outputs.artifacts["out"]``: wiring.

    Give it as another step's input; a parameter's can also be formatted into a
    ``when`` expression (``f"{ref} > 5"``).
    """

    __slots__ = ("kind", "name", "step")

    def __init__(self, step: Step, kind: str, name: str) -> None:
        self.step = step
        self.kind = kind
        self.name = name

    def __str__(self) -> str:
        return f"{{{{steps.{self.step.name}.outputs.{self.kind}.{self.name}}}}}"

    def __format__(self, spec: str) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"<{self.step.name}.outputs.{self.kind}[{self.name!r}]>"

    @property
    def field(self) -> Field:
        return self.step.output_fields[self.name]


@final
class _RefMap(Mapping[str, OutputRef]):
    __slots__ = ("_kind", "_step")

    def __init__(self, step: Step, kind: str) -> None:
        self._step = step
        self._kind = kind

    def _names(self) -> list[str]:
        artifacts = self._kind == "artifacts"
        return [n for n, f in self._step.output_fields.items() if f.is_artifact == artifacts]

    def __getitem__(self, name: str) -> OutputRef:
        step = self._step
        field = step.output_fields.get(name)
        if field is None or field.is_artifact != (self._kind == "artifacts"):
            what = "output parameter" if self._kind == "parameters" else "output artifact"
            hint = ""
            if step.slices is not None and step.loop is None and name in step.all_output_fields:
                hint = (
                    f" (the step is sliced: name it in Slices(output_{self._kind[:-1]}=...) "
                    "to stack it)"
                )
            raise SignatureError(
                step.name, f"has no {what} {name!r}{hint}; it has {self._names()}", name
            )
        return OutputRef(step, self._kind, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


@final
class _Outputs:
    __slots__ = ("artifacts", "parameters")

    def __init__(self, step: Step) -> None:
        self.parameters = _RefMap(step, "parameters")
        self.artifacts = _RefMap(step, "artifacts")


_INPUTS = (InputParameter, InputArtifact)
#: Inputs that are not local files: wiring, a template's inputs, stored artifacts.
_REFERENCES = (OutputRef, InputParameter, InputArtifact, ArtifactValue)


def given_shape(value: Any) -> str:
    if isinstance(value, Mapping):
        return "dict"
    if isinstance(value, list | tuple):
        return "list"
    return "one"


def _is_path(value: Any) -> bool:
    return isinstance(value, str | os.PathLike)


def _absolute(value: Any) -> Any:
    """Local artifact paths made absolute (a resumed run may start in another directory)."""
    if isinstance(value, Mapping):
        return {k: Path(p).absolute() for k, p in value.items()}
    if isinstance(value, list | tuple):
        return [Path(p).absolute() for p in value]
    return Path(value).absolute()


@final
class Step:
    """One use of an operator in a workflow.

    ``parameters`` and ``artifacts`` give the op's inputs: literal values,
    local files (for artifacts), or other steps' outputs
    (``step0.outputs.parameters["x"]``). ``when`` runs the step only if a
    callable over earlier steps' parameters, or an expression string
    (``f"{s0.outputs.parameters['y']} > 5"``), is true; otherwise the step is
    ``Skipped``. ``slices`` fans it out over list inputs. ``retries``,
    ``timeout`` and ``backoff`` apply to each call of the op (over the template's
    ``retry_on_transient_error`` / ``retry_on_failure`` and ``timeout``);
    ``retry_on`` (exception types) limits the retries to those errors;
    ``continue_on_failed`` lets the workflow go on past its failure, and
    ``continue_on_num_success`` / ``continue_on_success_ratio`` past failed
    slices. ``dependencies`` (in a ``DAG``) adds ordering to what the wiring implies.
    ``executor`` runs the op's ``execute`` elsewhere (dflow's ``Step(executor=)``):
    ``"process"`` in a worker process, with its work dir as the current directory, or
    an :class:`aflow.executors.Executor` (``Dask``...).
    Missing and unknown inputs, and literals of the wrong type, raise here.
    """

    __slots__ = (
        "_fields",
        "artifacts",
        "backoff",
        "bound_inputs",
        "continue_on_failed",
        "continue_on_num_success",
        "continue_on_success_ratio",
        "dependencies",
        "executor",
        "key",
        "loop",
        "name",
        "op",
        "outputs",
        "parallelism",
        "parameters",
        "retries",
        "retry_on",
        "slices",
        "template",
        "timeout",
        "when",
    )

    def __init__(
        self,
        name: str,
        template: type[OP] | OP | PythonOPTemplate | Template,
        parameters: Mapping[str, Any] | None = None,
        artifacts: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        when: str | Callable[[Mapping[str, Mapping[str, Any]]], Any] | None = None,
        continue_on_failed: bool = False,
        continue_on_num_success: int | None = None,
        continue_on_success_ratio: float | None = None,
        slices: Slices | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        backoff: Backoff | None = None,
        retry_on: RetryOn | None = None,
        dependencies: Sequence[Step] = (),
        with_param: Any = None,
        with_sequence: ArgoSequence | None = None,
        parallelism: int | None = None,
        executor: Any = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise SignatureError(
                str(name), "a step name is letters, digits, '-' and '_', starting alnum", "name"
            )
        self.name = name
        #: the enclosing template's input values its ``when`` reads (set per level)
        self.bound_inputs: dict[str, Any] = {}
        self._fields: tuple[dict[str, Field], dict[str, Field], dict[str, Field]] | None = None
        if isinstance(template, Template):
            self.template: PythonOPTemplate | Template = template
            self.op: type[OP] | OP | Template = template
            if slices is not None:
                raise SignatureError(
                    name, "a step whose template is Steps or a DAG cannot be sliced", "slices"
                )
            self.slices: Slices | None = None
        else:
            self.template = tmpl = template_of(template, name)
            self.op = tmpl.op
            if slices is not None and tmpl.slices is not None:
                raise SignatureError(name, "slices are given both to the step and to its template")
            self.slices = slices if slices is not None else tmpl.slices
        if slices is not None and not isinstance(slices, Slices):
            raise SignatureError(name, f"must be an aflow.ops.Slices, got {slices!r}", "slices")
        #: with_param= / with_sequence=: one call per item (None: no loop)
        self.loop: Any = (
            None
            if with_param is None and with_sequence is None
            else check_loop(name, with_param, with_sequence)
        )
        if self.loop is not None and (self.slices is not None or isinstance(template, Template)):
            what = "sliced" if self.slices is not None else "a template step"
            raise SignatureError(
                name, f"with_param / with_sequence: the step is {what}", "with_param"
            )
        if parallelism is not None and (
            not isinstance(parallelism, int) or isinstance(parallelism, bool) or parallelism < 1
        ):
            raise SignatureError(name, f"must be an int >= 1, got {parallelism!r}", "parallelism")
        #: at most this many of the step's own calls (items, slice groups) at once
        self.parallelism = parallelism
        tmpl_policy = self.template  # a PythonOPTemplate's retries, errors retried and timeout
        options = check_options(
            name,
            {
                "retries": (
                    retries if retries is not None else getattr(tmpl_policy, "retries", None) or 0
                ),
                "timeout": timeout
                if timeout is not None
                else getattr(tmpl_policy, "timeout", None),
                "backoff": backoff,
                "continue_on_failed": continue_on_failed,
                "retry_on": retry_on,
            },
        )
        self.retries: int = options["retries"]
        #: the errors retried (None: any error); a FatalError never is
        self.retry_on: RetryOn | None = (
            options["retry_on"] if retry_on is not None else getattr(tmpl_policy, "retry_on", None)
        )
        self.timeout: float | None = options["timeout"]
        self.backoff: Backoff | None = options["backoff"]
        self.continue_on_failed: bool = options["continue_on_failed"]
        if (continue_on_num_success is not None or continue_on_success_ratio is not None) and (
            not self.fans_out
        ):
            raise SignatureError(
                name,
                "continue_on_num_success / continue_on_success_ratio need slices or with_param",
            )
        threshold = check_options(
            name,
            {"min_success": continue_on_num_success, "success_ratio": continue_on_success_ratio},
        )
        self.continue_on_num_success: int | None = threshold["min_success"]
        self.continue_on_success_ratio: float | None = threshold["success_ratio"]
        if key is not None and (not isinstance(key, str) or not key or key.startswith("_")):
            raise SignatureError(
                name, f"must be a non-empty string not starting with '_', got {key!r}", "key"
            )
        self.key = key
        if not isinstance(self.op, Template):  # a template's may still change: read on use
            self._fields = self._read_fields()
        self.parameters = dict(parameters or {})
        self.artifacts = dict(artifacts or {})
        self._check_inputs()
        if isinstance(when, str):
            self.when: Expression | Callable[..., Any] | None = Expression(when, name)
        elif when is not None and (
            inspect.iscoroutinefunction(when)
            or inspect.iscoroutinefunction(getattr(when, "__call__", None))  # noqa: B004
        ):
            raise SignatureError(name, "a when condition is a plain function, not async", "when")
        elif when is None or callable(when):
            self.when = when
        else:
            raise SignatureError(name, f"must be a callable or an expression, got {when!r}", "when")
        deps = tuple(dependencies)
        for dep in deps:
            if not isinstance(dep, Step):
                raise SignatureError(name, f"dependencies are steps, got {dep!r}", "dependencies")
        self.dependencies = deps
        #: where the op's ``execute`` runs (``None``: this process, in the run's threads)
        self.executor: AflowExecutor | None = None
        if executor is not None:
            if isinstance(template, Template):
                raise SignatureError(
                    name,
                    "a step whose template is Steps or a DAG: its steps name theirs",
                    "executor",
                )
            try:
                self.executor = executor_of(executor, f"step {name!r}")
            except ValueError as exc:
                raise SignatureError(name, str(exc), "executor") from None
        self.outputs = _Outputs(self)
        building = BUILDING.get()
        if building is not None:
            building._made(self, called=False)

    def __repr__(self) -> str:
        return f"<Step {self.name!r} {op_name(self.op)}>"

    def _read_fields(self) -> tuple[dict[str, Field], dict[str, Field], dict[str, Field]]:
        inputs = dict(self.op.get_input_sign().fields)
        all_out = dict(self.op.get_output_sign().fields)
        if self.loop is not None:  # every output, one per item
            return inputs, all_out, self._stacked(all_out, tuple(all_out))
        return inputs, all_out, all_out if self.slices is None else self._stacked(all_out)

    @property
    def input_fields(self) -> dict[str, Field]:
        """The inputs the step's operator (or template) takes, by name."""
        return (self._fields or self._read_fields())[0]

    @property
    def all_output_fields(self) -> dict[str, Field]:
        """Every output of one call of the operator (or of the template), by name."""
        return (self._fields or self._read_fields())[1]

    @property
    def output_fields(self) -> dict[str, Field]:
        """The step's outputs (a sliced step's: the stacked ones), by name."""
        return (self._fields or self._read_fields())[2]

    @property
    def is_template(self) -> bool:
        """True when the step runs Steps or a DAG rather than an operator."""
        return isinstance(self.op, Template)

    @property
    def node_key(self) -> str:
        """The step's key in the run (its ``key``, else its name)."""
        if self.key is not None and "{{item}}" not in self.key:
            return self.key
        return self.name

    def slice_key(self, index: int) -> str:
        """The key of slice ``index``: ``key`` with ``{{item}}`` replaced, else ``name-index``."""
        if self.key is not None and "{{item}}" in self.key:
            return self.key.replace("{{item}}", str(index))
        return f"{self.name}-{index}"

    def _stacked(
        self, fields: dict[str, Field], every: tuple[str, ...] | None = None
    ) -> dict[str, Field]:
        """The outputs of a step that fans out: one value per item, in item order."""
        if every is not None:
            stacked = (
                tuple(n for n in every if not fields[n].is_artifact),
                tuple(n for n in every if fields[n].is_artifact),
            )
        else:
            assert self.slices is not None
            stacked = (self.slices.output_parameter, self.slices.output_artifact)
        out: dict[str, Field] = {}
        for names, artifact in zip(stacked, (False, True), strict=True):
            for n in names:
                f = fields.get(n)
                if f is None or f.is_artifact != artifact:
                    kind = "artifact" if artifact else "parameter"
                    raise SignatureError(
                        self.name,
                        f"Slices names output {kind} {n!r}, which {op_name(self.op)} does not give",
                        n,
                    )
                if artifact:  # failed slices give nothing; the others' files, in order
                    out[n] = Field(n, list[Path], Artifact(list[Path], optional=True), MISSING)
                else:  # a failed slice (past a threshold) gives None
                    out[n] = Field(n, list[f.type | None], None, MISSING, f.big)  # type: ignore[name-defined]
        return out

    @property
    def fans_out(self) -> bool:
        """True when the step makes one call per item (slices, with_param, with_sequence)."""
        return self.slices is not None or self.loop is not None

    @property
    def sliced_inputs(self) -> tuple[str, ...]:
        if self.slices is None:
            return ()
        return self.slices.input_parameter + self.slices.input_artifact

    def _check_inputs(self) -> None:
        name = self.name
        fields = self.input_fields
        sliced = set(self.sliced_inputs)
        for key in sliced:
            if key not in fields:
                raise SignatureError(
                    name, f"Slices names input {key!r}, which the op does not take", key
                )
        for given, artifact in ((self.parameters, False), (self.artifacts, True)):
            for key, value in given.items():
                field = fields.get(key)
                if field is None:
                    raise SignatureError(
                        name,
                        f"{op_name(self.op)} has no input {key!r}; it takes {sorted(fields)}",
                        key,
                    )
                if field.is_artifact != artifact:
                    right = "artifacts=" if field.is_artifact else "parameters="
                    raise SignatureError(name, f"input {key!r} is given in {right}", key)
                self._check_input(field, value, key in sliced)
        for key, value in self.artifacts.items():  # local paths: absolute from now on
            if not isinstance(value, _REFERENCES):
                self.artifacts[key] = _absolute(value)
        given = {**self.parameters, **self.artifacts}
        lengths = {
            key: len(given[key])
            for key in sliced
            if key in given and isinstance(given[key], list | tuple)
        }
        if len(set(lengths.values())) > 1:
            raise SignatureError(
                name, f"sliced inputs must be lists of one length, got lengths {lengths}"
            )
        missing = [
            key
            for key, field in fields.items()
            if field.required and key not in self.parameters and key not in self.artifacts
        ]
        if missing:
            raise MissingInputError(
                name, missing, f"step of {op_name(self.op)}: give them in parameters= or artifacts="
            )

    def _check_input(self, field: Field, value: Any, sliced: bool) -> None:
        name = self.name
        key = field.name
        if isinstance(value, str) and "{{" in value:
            if "{{inputs." in value:  # a template's input, in a text
                return  # checked when the template runs, with its value
            if has_item(value):  # "{{item}}": a loop's item, checked when it is known
                if self.loop is None:
                    raise SignatureError(
                        name,
                        f"input {key!r} reads {{{{item}}}}, but the step has no with_param",
                        key,
                    )
                return
        if isinstance(value, InputParameter | InputArtifact):  # the enclosing template's
            if isinstance(value, InputArtifact) != field.is_artifact:
                what = "an artifact" if field.is_artifact else "a parameter"
                raise SignatureError(
                    name, f"input {key!r} is {what}, but is wired to {value!r}", key
                )
            return  # checked when the template runs, with its value
        if isinstance(value, ArtifactValue):  # an artifact in the store already
            if not field.is_artifact:
                raise SignatureError(name, f"input {key!r} is a parameter, got an artifact", key)
            assert field.artifact is not None
            if field.artifact.shape not in ("any", value.shape) and not sliced:
                raise SignatureError(
                    name,
                    f"input {key!r} takes {field.artifact!r}, got an artifact holding "
                    f"{value.shape}",
                    key,
                )
            return
        if isinstance(value, OutputRef):
            if (value.kind == "artifacts") != field.is_artifact:
                what = "an artifact" if field.is_artifact else "a parameter"
                raise SignatureError(
                    name, f"input {key!r} is {what}, but is wired to {value!r}", key
                )
            source = value.field.artifact
            if (
                field.artifact is not None
                and source is not None
                and "any" not in (source.shape, field.artifact.shape)
            ):
                wanted = "list" if sliced else field.artifact.shape
                if source.shape != wanted or (sliced and field.artifact.shape != "one"):
                    raise SignatureError(
                        name,
                        f"input {key!r} takes {field.artifact!r}"
                        f"{' per slice' if sliced else ''}, but is wired to {value!r}, "
                        f"an {source!r}",
                        key,
                    )
            return
        if field.is_artifact:
            shape = field.artifact.shape if field.artifact else "one"
            if shape == "any":  # a template's input: what is given says which
                shape = given_shape(value)
            items = value if sliced or shape == "list" else [value]
            if shape == "dict" and not sliced:
                if not isinstance(value, Mapping):
                    raise SignatureError(
                        name, f"input {key!r} takes a dict of local paths, got {value!r}", key
                    )
                items = list(value.values())
            if not isinstance(items, list | tuple) or not all(_is_path(p) for p in items):
                raise SignatureError(
                    name,
                    f"input {key!r} takes local paths or another step's artifact, got {value!r}",
                    key,
                )
            return  # local files are looked for when the workflow is submitted
        try:
            if sliced:
                if not isinstance(value, list | tuple):
                    raise SignatureError(
                        name,
                        f"sliced input {key!r} takes a list, got {type_name(type(value))}",
                        key,
                    )
                for item in value:
                    check_value(op_name(self.op), "input", key, field.type, item)
            else:
                check_value(op_name(self.op), "input", key, field.type, value)
        except OpIOError as exc:
            raise SignatureError(
                name, f"input {key!r}: expected {exc.expected}, got {exc.actual}", key
            ) from None

    def local_files(self) -> Iterator[tuple[str, Path]]:
        """``(input, path)`` of every local file given as an artifact input."""
        for key, value in self.artifacts.items():
            if isinstance(value, _REFERENCES):
                continue
            items = value.values() if isinstance(value, Mapping) else value
            for path in (
                items if isinstance(items, list | tuple) or isinstance(value, Mapping) else [value]
            ):
                yield key, Path(path)

    def reads_template(self) -> bool:
        """True when the step reads an input of its enclosing template (in its inputs,
        its key or its ``when``)."""
        for given in (self.parameters, self.artifacts):
            for v in given.values():
                if isinstance(v, _INPUTS) or (type(v) is str and "{{inputs." in v):
                    return True
        return (
            (self.key is not None and "{{inputs." in self.key)
            or (
                self.loop is not None
                and any(isinstance(r, InputParameter) for r in refs_of(self.loop))
            )
            or (
                isinstance(self.when, Expression)
                and any(step == TEMPLATE_INPUT for step, _ in self.when.refs)
            )
        )

    def refs(self) -> Iterator[OutputRef]:
        """Every output reference among this step's inputs and loop (its ``when`` is read
        apart)."""
        for value in (*self.parameters.values(), *self.artifacts.values()):
            if isinstance(value, OutputRef):
                yield value
        if self.loop is not None:
            for ref in refs_of(self.loop):
                if isinstance(ref, OutputRef):
                    yield ref
