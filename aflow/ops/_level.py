"""One run of a template: its steps with the template's inputs bound to values."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, final

from .._exceptions import SignatureError
from ._artifacts import ArtifactValue
from ._expr import TEMPLATE_INPUT, Expression
from ._loops import map_loop
from ._step import OutputRef, Step, _Outputs
from ._template import InputArtifact, InputParameter, Template

__all__ = ["Level", "bind_level", "manifest_shape"]

_INPUT_IN_KEY = re.compile(r"\{\{\s*inputs\.parameters\.([^\s{}]+)\s*\}\}")


@final
class Level:
    """A template with values for its inputs: what one run of it compiles.

    Steps that read the template's inputs (in their inputs, key or ``when``) are copies
    made for this level, with those values in place and their wiring pointing at the
    level's other copies; the rest are the template's own steps.
    """

    __slots__ = ("artifacts", "copies", "is_dag", "path", "stages", "template", "values")

    def __init__(
        self,
        template: Template,
        values: Mapping[str, Any],
        artifacts: Mapping[str, ArtifactValue | None],
        path: tuple[str, ...],
        stages: list[list[Step]],
        copies: Mapping[int, Step],
    ) -> None:
        self.template = template
        self.values = dict(values)
        self.artifacts = dict(artifacts)
        self.path = path
        self.stages = stages
        self.copies = copies
        self.is_dag = template.is_dag

    @property
    def name(self) -> str:
        return self.template.name

    @property
    def steps(self) -> list[Step]:
        return [s for stage in self.stages for s in stage]

    def bound(self, step: Step) -> Step:
        """This level's copy of one of the template's steps (the step itself if it has none)."""
        return self.copies.get(id(step), step)

    def step_named(self, name: str) -> Step | None:
        for step in self.steps:
            if step.name == name:
                return step
        return None

    def __repr__(self) -> str:
        return f"<Level {self.name!r} {self.values!r} at {'/'.join(self.path) or '.'}>"


def bind_level(
    template: Template,
    values: Mapping[str, Any],
    artifacts: Mapping[str, ArtifactValue | None],
    path: tuple[str, ...] = (),
) -> Level:
    """``template``'s steps with its inputs' ``values`` in place (raises SignatureError
    naming the step when a value does not fit, or a step reads an input the template does
    not declare)."""
    originals = template.steps
    if not any(s.reads_template() for s in originals):
        return Level(template, values, artifacts, path, template.stages, {})  # (read only)
    copies: dict[int, Step] = {id(s): copy.copy(s) for s in originals}

    def wire(value: Any, step: Step, key: str) -> Any:
        if isinstance(value, str) and "{{inputs." in value:  # an input rendered in a text
            whole = _INPUT_IN_KEY.fullmatch(value.strip())
            if whole is not None:
                _input_text(whole, template, values)  # (names an unknown input)
                return values[whole.group(1)]
            return _INPUT_IN_KEY.sub(lambda m: _input_text(m, template, values), value)
        if isinstance(value, OutputRef):
            return OutputRef(copies.get(id(value.step), value.step), value.kind, value.name)
        if isinstance(value, InputParameter | InputArtifact):
            if value.template is not template:
                owner = value.template.name if value.template is not None else "no template"
                raise SignatureError(
                    step.name,
                    f"input {key!r} reads {value!r}, an input of {owner}, but the step runs "
                    f"in template {template.name!r}",
                    key,
                )
            name = value.name or ""
            if isinstance(value, InputParameter):
                return values[name]
            return artifacts.get(name)
        return value

    for original in originals:
        step = copies[id(original)]
        step.parameters = {k: wire(v, original, k) for k, v in original.parameters.items()}
        arts = {k: wire(v, original, k) for k, v in original.artifacts.items()}
        step.artifacts = {k: v for k, v in arts.items() if v is not None}
        step.dependencies = tuple(copies.get(id(d), d) for d in original.dependencies)
        if original.loop is not None:
            step.loop = map_loop(original.loop, functools.partial(_wire_loop, wire, original))
        if original.key is not None and "{{inputs." in original.key:
            step.key = _INPUT_IN_KEY.sub(lambda m: _input_text(m, template, values), original.key)
        when = original.when
        if isinstance(when, Expression):
            bound: dict[str, Any] = {}
            for ref_step, name in when.refs:
                if ref_step == TEMPLATE_INPUT:
                    if name not in values:
                        raise SignatureError(
                            original.name,
                            f"its when expression reads input {name!r}, which template "
                            f"{template.name!r} does not take",
                            "when",
                        )
                    bound[name] = values[name]
            step.bound_inputs = bound
        step.outputs = _Outputs(step)
        step._check_inputs()  # the values in place: types, shapes, what is missing
    stages = [[copies[id(s)] for s in stage] for stage in template.stages]
    return Level(template, values, artifacts, path, stages, copies)


def _wire_loop(wire: Callable[[Any, Step, str], Any], step: Step, ref: Any) -> Any:
    return wire(ref, step, "with_param")


def _input_text(match: re.Match[str], template: Template, values: Mapping[str, Any]) -> str:
    name = match.group(1)
    if name not in values:
        raise SignatureError(
            template.name,
            f"a step key reads input {name!r}, which template {template.name!r} does not take",
            "key",
        )
    return str(values[name])


def manifest_shape(manifest: Any) -> str:
    """The shape of a stored artifact's manifest: one file or folder, a list, or a dict."""
    if isinstance(manifest, list):
        return "list"
    if isinstance(manifest, dict) and not ({"file", "dir"} & manifest.keys()):
        return "dict"
    return "one"
