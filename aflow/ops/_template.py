"""Templates made of steps (dflow's ``Steps`` and ``DAG``): declared inputs and outputs,
usable as a step's template, nestable and recursive; ``if_expression`` outputs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, final

from .._exceptions import SignatureError
from ._sign import MISSING, Artifact, OPIOSign, Parameter

if TYPE_CHECKING:
    from ._step import OutputRef, Step

__all__ = [
    "DAG",
    "IfExpression",
    "InputArtifact",
    "InputParameter",
    "Inputs",
    "OutputArtifact",
    "OutputParameter",
    "Outputs",
    "Steps",
    "Template",
    "if_expression",
]


class _Declared:
    """An input or output of a template: named, and known by its template, once it is put
    in that template's ``inputs`` / ``outputs``."""

    __slots__ = ("name", "template")
    kind = ""

    def __init__(self) -> None:
        self.name: str | None = None
        self.template: Template | None = None

    def _where(self) -> str:
        return f"{self.template.name if self.template else '?'}.{self.kind}[{self.name!r}]"


@final
class InputParameter(_Declared):
    """An input parameter of a template: ``InputParameter(value=0, type=int)``.

    Put in ``Steps(inputs=Inputs(parameters={"iter": InputParameter(value=0)}))``, it is
    also the reference the template's steps read it by: ``steps.inputs.parameters["iter"]``
    as a step's parameter, in a ``key`` (``f"iter-{ref}"``) or a ``when`` expression.
    ``value`` is its default; ``type`` (default ``Any``) is checked when the template runs.
    """

    __slots__ = ("type", "value")
    kind = "parameters"

    def __init__(self, value: Any = MISSING, *, type: Any = Any) -> None:
        super().__init__()
        self.value = value
        self.type = type

    def __str__(self) -> str:
        return f"{{{{inputs.parameters.{self.name}}}}}"

    def __format__(self, spec: str) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"<input parameter {self._where()}>"


@final
class InputArtifact(_Declared):
    """An input artifact of a template (``optional=True``: it may be left out); the
    reference its steps read it by, as ``steps.inputs.artifacts["data"]``."""

    __slots__ = ("optional",)
    kind = "artifacts"

    def __init__(self, *, optional: bool = False) -> None:
        super().__init__()
        self.optional = optional

    def __str__(self) -> str:
        return f"{{{{inputs.artifacts.{self.name}}}}}"

    def __repr__(self) -> str:
        return f"<input artifact {self._where()}>"


@final
class IfExpression:
    """``if_expression(_if=, _then=, _else=)``: a template output taken from ``_then`` when
    ``_if`` holds, else from ``_else`` (two steps' outputs, say), as in dflow.

    ``_if`` is a ``when``-style expression string (``f"{ref} > 5"``) or a parameter
    reference (true when its value is true, or the text ``"true"``); ``_then`` and
    ``_else`` are output references (parameters or artifacts, both of one kind), template
    inputs or literal values.
    """

    __slots__ = ("_bare", "_else", "_if", "_then", "condition")

    def __init__(self, _if: Any, _then: Any, _else: Any) -> None:
        from ._expr import Expression
        from ._step import OutputRef

        #: ``_if`` is a reference alone: true for a true value or the text "true" (Argo's)
        self._bare = isinstance(_if, OutputRef | InputParameter)
        if isinstance(_if, OutputRef | InputParameter):
            if isinstance(_if, OutputRef) and _if.kind != "parameters":
                raise SignatureError(
                    "if_expression", "_if reads a parameter, not an artifact", "_if"
                )
            text = str(_if)
        elif isinstance(_if, str):
            text = _if
        else:
            raise SignatureError(
                "if_expression",
                f"_if is an expression string or a parameter reference, got {_if!r}",
                "_if",
            )
        self.condition = Expression(text, "if_expression")
        kinds = {_kind_of(v) for v in (_then, _else)} - {None}
        if len(kinds) > 1:
            raise SignatureError(
                "if_expression", "_then and _else are both parameters or both artifacts", "_then"
            )
        self._if = _if
        self._then = _then
        self._else = _else

    @property
    def kind(self) -> str | None:
        """``"artifacts"`` or ``"parameters"`` when either branch is a reference."""
        kinds = {_kind_of(v) for v in (self._then, self._else)} - {None}
        return next(iter(kinds), None)

    def holds(self, value: Any) -> bool:
        """Whether the condition's value selects ``_then``."""
        if self._bare and isinstance(value, str):
            return value.strip().lower() == "true"
        return bool(value)

    def branches(self) -> tuple[Any, Any]:
        return self._then, self._else

    def __repr__(self) -> str:
        return f"if_expression({self.condition.text!r}, {self._then!r}, {self._else!r})"


def if_expression(_if: Any, _then: Any, _else: Any) -> IfExpression:
    """An output taken from ``_then`` if ``_if`` holds, else from ``_else`` (dflow's)."""
    return IfExpression(_if, _then, _else)


def _kind_of(value: Any) -> str | None:
    from ._step import OutputRef

    if isinstance(value, OutputRef):
        return value.kind
    if isinstance(value, InputParameter):
        return "parameters"
    if isinstance(value, InputArtifact):
        return "artifacts"
    return None


@final
class OutputParameter(_Declared):
    """An output parameter of a template: from one of its steps' outputs or its inputs
    (``value_from_parameter=``), from an :func:`if_expression` (``value_from_expression=``),
    else ``default``. Either may be set after the steps are added, as in dflow."""

    __slots__ = ("default", "type", "value_from_expression", "value_from_parameter")
    kind = "parameters"

    def __init__(
        self,
        value_from_parameter: OutputRef | InputParameter | None = None,
        value_from_expression: IfExpression | None = None,
        *,
        type: Any = Any,
        default: Any = MISSING,
    ) -> None:
        super().__init__()
        self.value_from_parameter = value_from_parameter
        self.value_from_expression = value_from_expression
        self.type = type
        self.default = default

    def source(self) -> Any:
        """Where the value comes from (checked), or ``MISSING``."""
        if self.value_from_expression is not None:
            expr = self.value_from_expression
            if not isinstance(expr, IfExpression):
                raise SignatureError(
                    self._where(), f"value_from_expression takes if_expression(...), got {expr!r}"
                )
            if expr.kind == "artifacts":
                raise SignatureError(self._where(), "its if_expression chooses artifacts")
            return expr
        src = self.value_from_parameter
        if src is None:
            return MISSING
        if _kind_of(src) != "parameters":
            raise SignatureError(
                self._where(), f"value_from_parameter takes a parameter reference, got {src!r}"
            )
        return src

    def __repr__(self) -> str:
        return f"<output parameter {self._where()}>"


@final
class OutputArtifact(_Declared):
    """An output artifact of a template: from one of its steps' output artifacts or its
    input artifacts (``_from=``), or an :func:`if_expression` (``from_expression=``)."""

    __slots__ = ("_from", "from_expression", "optional")
    kind = "artifacts"

    def __init__(
        self,
        _from: OutputRef | InputArtifact | None = None,
        from_expression: IfExpression | None = None,
        *,
        optional: bool = False,
    ) -> None:
        super().__init__()
        self._from = _from
        self.from_expression = from_expression
        self.optional = optional

    def source(self) -> Any:
        if self.from_expression is not None:
            expr = self.from_expression
            if not isinstance(expr, IfExpression) or expr.kind != "artifacts":
                raise SignatureError(
                    self._where(),
                    f"from_expression takes if_expression(...) over artifacts, got {expr!r}",
                )
            return expr
        src = self._from
        if src is None:
            return MISSING
        if _kind_of(src) != "artifacts":
            raise SignatureError(self._where(), f"_from takes an artifact reference, got {src!r}")
        return src

    def shape(self) -> str:
        """``one``, ``list`` or ``dict`` as its source gives; ``any`` when not known yet."""
        from ._step import OutputRef

        src = self.from_expression._then if self.from_expression is not None else self._from
        if isinstance(src, OutputRef):
            if src.step.fans_out:
                return "list"
            art = src.step.all_output_fields[src.name].artifact
            return art.shape if art is not None else "any"
        return "any"

    def __repr__(self) -> str:
        return f"<output artifact {self._where()}>"


class _Named(dict[str, Any]):
    """A template's inputs or outputs of one kind: each entry learns its name and template."""

    __slots__ = ("_kind", "_owner", "_types")

    def __init__(self, owner: _IO, kind: str, types: tuple[type, ...]) -> None:
        super().__init__()
        self._owner = owner
        self._kind = kind
        self._types = types

    def __setitem__(self, name: str, value: Any) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"template {self._kind} are named by non-empty strings, got {name!r}")
        if not isinstance(value, self._types):
            wanted = " or ".join(t.__name__ for t in self._types)
            raise TypeError(f"{self._kind}[{name!r}] takes a {wanted}, got {value!r}")
        declared = cast("_Declared", value)
        if declared.name is not None:
            raise ValueError(f"{value!r} is declared already; declare a new one for {name!r}")
        declared.name = name
        declared.template = self._owner.template
        super().__setitem__(name, declared)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for name, value in dict(*args, **kwargs).items():
            self[name] = value


class _IO:
    __slots__ = ("_pending", "artifacts", "parameters", "template")

    def __init__(
        self,
        parameters: Mapping[str, Any] | None,
        artifacts: Mapping[str, Any] | None,
        types: tuple[tuple[type, ...], tuple[type, ...]],
    ) -> None:
        self.template: Template | None = None
        self.parameters = _Named(self, "parameters", types[0])
        self.artifacts = _Named(self, "artifacts", types[1])
        self._pending = (dict(parameters or {}), dict(artifacts or {}))

    def _adopt(self, template: Template) -> None:
        if self.template is not None:
            raise ValueError(f"these inputs/outputs belong to template {self.template.name!r}")
        self.template = template
        params, arts = self._pending
        self.parameters.update(params)
        self.artifacts.update(arts)


class Inputs(_IO):
    """A template's inputs: ``Inputs(parameters={"iter": InputParameter(value=0)},
    artifacts={"data": InputArtifact()})``."""

    __slots__ = ()

    def __init__(
        self,
        parameters: Mapping[str, InputParameter] | None = None,
        artifacts: Mapping[str, InputArtifact] | None = None,
    ) -> None:
        super().__init__(parameters, artifacts, ((InputParameter,), (InputArtifact,)))


class Outputs(_IO):
    """A template's outputs: ``Outputs(parameters={"msg": OutputParameter()},
    artifacts={"res": OutputArtifact()})``; their sources may be set later."""

    __slots__ = ()

    def __init__(
        self,
        parameters: Mapping[str, OutputParameter] | None = None,
        artifacts: Mapping[str, OutputArtifact] | None = None,
    ) -> None:
        super().__init__(parameters, artifacts, ((OutputParameter,), (OutputArtifact,)))


class Template:
    """Steps as a step's template, with declared inputs and outputs (see :class:`Steps`,
    :class:`DAG`)."""

    __slots__ = ("inputs", "name", "outputs", "parallelism", "stages")
    #: whether the wiring alone orders the steps (a DAG), or the order they were added
    is_dag = False

    def __init__(
        self,
        name: str,
        inputs: Inputs | None,
        outputs: Outputs | None,
        parallelism: int | None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise SignatureError(str(name), "a template's name is a non-empty string", "name")
        if parallelism is not None and (
            not isinstance(parallelism, int) or isinstance(parallelism, bool) or parallelism < 1
        ):
            raise SignatureError(name, f"must be an int >= 1, got {parallelism!r}", "parallelism")
        self.name = name
        self.inputs = inputs if inputs is not None else Inputs()
        self.outputs = outputs if outputs is not None else Outputs()
        if not isinstance(self.inputs, Inputs) or not isinstance(self.outputs, Outputs):
            raise SignatureError(name, "inputs= takes Inputs(...), outputs= Outputs(...)")
        self.inputs._adopt(self)
        self.outputs._adopt(self)
        self.parallelism = parallelism
        self.stages: list[list[Step]] = []

    @property
    def steps(self) -> list[Step]:
        """Every step, in the order added."""
        return [s for stage in self.stages for s in stage]

    def add(self, step: Step | Sequence[Step]) -> Any:
        """Add a step (or, for ``Steps``, a list of steps that run in parallel)."""
        self.stages.append(_as_steps(step))
        return self

    # What a step using this template reads, as an operator's signatures are read.
    def get_input_sign(self) -> OPIOSign:
        fields: dict[str, Any] = {}
        for name, p in self.inputs.parameters.items():
            fields[name] = Parameter(p.type, default=p.value)
        for name, a in self.inputs.artifacts.items():
            fields[name] = _any_artifact(a.optional)
        return OPIOSign(fields)

    def get_output_sign(self) -> OPIOSign:
        fields: dict[str, Any] = {}
        for name, p in self.outputs.parameters.items():
            fields[name] = Parameter(p.type, default=p.default)
        for name, a in self.outputs.artifacts.items():
            art = _any_artifact(a.optional)
            art.shape = a.shape()
            fields[name] = art
        return OPIOSign(fields)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} [{len(self.steps)} steps]>"


def _any_artifact(optional: bool) -> Artifact:
    art = Artifact(Path, optional=optional)
    art.shape = "any"  # what it is wired to says (checked when the template runs)
    return art


def _step_module() -> Any:
    """``aflow.ops._step`` (which imports this module: read once, on first use)."""
    global _STEP_MODULE
    if _STEP_MODULE is None:
        from . import _step

        _STEP_MODULE = _step
    return _STEP_MODULE


_STEP_MODULE: Any = None


def _as_steps(step: Step | Iterable[Step]) -> list[Step]:
    module = _step_module()
    step_type = module.Step
    items: list[Step] = [step] if isinstance(step, step_type) else list(step)  # type: ignore[arg-type]
    for item in items:
        if not isinstance(item, step_type):
            raise TypeError(f"add() takes a Step or a list of steps, got {item!r}")
    building = module.BUILDING.get()
    if building is not None:  # made in a `with Workflow()` block: added where asked instead
        for item in items:
            building._claimed(item)
    return items


@final
class Steps(Template):
    """Steps in sequence (``add(step)``) and in parallel (``add([s1, s2])``), with
    declared inputs and outputs: a workflow's entry (``Workflow(steps=...)``) or a step's
    template (``Step("sub", steps, parameters=...)``), nestable and recursive::

        steps = Steps("iter", inputs=Inputs(parameters={"i": InputParameter(value=0)}))
        plus1 = Step("plus1", Plus1, parameters={"i": steps.inputs.parameters["i"]})
        steps.add(plus1)
        steps.add(Step("next", steps, parameters={"i": plus1.outputs.parameters["i"]},
                       when=f"{plus1.outputs.parameters['i']} < 5"))
    """

    __slots__ = ()

    def __init__(
        self,
        name: str = "steps",
        inputs: Inputs | None = None,
        outputs: Outputs | None = None,
        *,
        parallelism: int | None = None,
    ) -> None:
        super().__init__(name, inputs, outputs, parallelism)

    def add(self, step: Step | Sequence[Step]) -> Steps:
        """Append a step, or a list of steps that run in parallel; returns the steps."""
        self.stages.append(_as_steps(step))
        return self


@final
class DAG(Template):
    """Steps whose order comes from their wiring (plus ``Step(dependencies=...)``), with
    declared inputs and outputs like :class:`Steps`."""

    __slots__ = ()
    is_dag = True

    def __init__(
        self,
        name: str = "dag",
        inputs: Inputs | None = None,
        outputs: Outputs | None = None,
        *,
        parallelism: int | None = None,
    ) -> None:
        super().__init__(name, inputs, outputs, parallelism)

    def add(self, step: Step | Sequence[Step]) -> DAG:
        """Add a step (or several); returns the DAG."""
        for s in _as_steps(step):
            self.stages.append([s])
        return self


def walk(template: Template) -> Iterator[Template]:
    """``template`` and every template its steps use, each once (recursion included)."""
    seen: set[int] = set()
    stack = [template]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        yield t
        for step in t.steps:
            if isinstance(step.op, Template):
                stack.append(step.op)
