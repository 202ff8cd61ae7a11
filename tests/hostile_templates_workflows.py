"""Durable aflow.ops workflows with nested templates for tests/test_ops_templates_hostile.py;
importable by the subprocesses those tests kill.

Side effects are counted as in tests/durable_workflows.py (``AFLOW_COUNTS``); the step
named by ``AFLOW_HANG`` blocks the first time it runs, so a test can kill the process there.
"""

from __future__ import annotations

import aflow
from aflow import ops
from tests.durable_workflows import bump


@ops.op(outputs={"y": int})
async def counted(tag: str, x: int, part: str = ""):
    """``x + 1``, counted as ``tag`` (``tag-part`` with a part)."""
    await bump(f"{tag}-{part}" if part else tag)
    return {"y": x + 1}


@ops.op(outputs={"y": int})
async def fails(tag: str, x: int):
    await bump(tag)
    raise ValueError(f"fails {tag}")


@ops.op(outputs={"y": int})
async def fails_once(tag: str, x: int):
    """Fails on its first call only (counted as ``tag``)."""
    if await bump(tag) == 1:
        raise ValueError(f"first call of {tag}")
    return {"y": x + 1}


def _leaf() -> ops.DAG:
    """A DAG template: ``a`` then ``b``, each counted as ``<tag>-a`` / ``<tag>-b``."""
    leaf = ops.DAG(
        "leaf",
        inputs=ops.Inputs(
            parameters={"x": ops.InputParameter(type=int), "tag": ops.InputParameter(type=str)}
        ),
        outputs=ops.Outputs(parameters={"y": ops.OutputParameter()}),
    )
    tag = leaf.inputs.parameters["tag"]
    a = ops.Step(
        "a", counted, parameters={"tag": tag, "part": "a", "x": leaf.inputs.parameters["x"]}
    )
    b = ops.Step("b", counted, parameters={"tag": tag, "part": "b", "x": a.outputs.parameters["y"]})
    leaf.add([a, b])
    leaf.outputs.parameters["y"].value_from_parameter = b.outputs.parameters["y"]
    return leaf


@aflow.workflow
def nested_crash(start: int) -> ops.Workflow:
    """A Steps template ``mid`` running the DAG ``leaf`` twice in sequence, then a top
    step: keys ``l1-a, l1-b, l2-a, l2-b, after`` are counted."""
    leaf = _leaf()
    mid = ops.Steps(
        "mid",
        inputs=ops.Inputs(parameters={"x": ops.InputParameter(type=int)}),
        outputs=ops.Outputs(parameters={"y": ops.OutputParameter()}),
    )
    l1 = ops.Step("l1", leaf, parameters={"x": mid.inputs.parameters["x"], "tag": "l1"})
    l2 = ops.Step("l2", leaf, parameters={"x": l1.outputs.parameters["y"], "tag": "l2"})
    mid.add(l1).add(l2)
    mid.outputs.parameters["y"].value_from_parameter = l2.outputs.parameters["y"]
    m = ops.Step("m", mid, parameters={"x": start})
    after = ops.Step("after", counted, parameters={"tag": "after", "x": m.outputs.parameters["y"]})
    return ops.Workflow("nested-crash").add(m).add(after)


@aflow.workflow
def twin_templates(start: int) -> ops.Workflow:
    """One template used by two parallel steps (keys and checkpoints must not clash)."""
    leaf = _leaf()
    return ops.Workflow("twins").add(
        [
            ops.Step("t1", leaf, parameters={"x": start, "tag": "t1"}),
            ops.Step("t2", leaf, parameters={"x": start * 100, "tag": "t2"}),
        ]
    )


@aflow.workflow
def tolerated_inner_failure(start: int) -> ops.Workflow:
    """An inner step fails, tolerated (``continue_on_failed``); the output's default."""
    steps = ops.Steps("tolerant", outputs=ops.Outputs(parameters={"y": ops.OutputParameter()}))
    ok = ops.Step("ok", counted, parameters={"tag": "ok", "x": start})
    bad = ops.Step("bad", fails, parameters={"tag": "bad", "x": start}, continue_on_failed=True)
    after_bad = ops.Step(
        "after-bad", counted, parameters={"tag": "ab", "x": bad.outputs.parameters["y"]}
    )
    steps.add(ok).add(bad).add(after_bad)
    steps.outputs.parameters["y"] = ops.OutputParameter(
        value_from_parameter=after_bad.outputs.parameters["y"], default=-1
    )
    return ops.Workflow("tolerated").add(ops.Step("t", steps))


@aflow.workflow
def failing_inner(start: int) -> ops.Workflow:
    """An inner step fails: the template step and the run fail."""
    steps = ops.Steps("failing")
    ok = ops.Step("ok", counted, parameters={"tag": "ok", "x": start})
    bad = ops.Step("bad", fails, parameters={"tag": "bad", "x": ok.outputs.parameters["y"]})
    steps.add(ok).add(bad)
    return ops.Workflow("failing").add(ops.Step("t", steps))


@aflow.workflow
def retried_template(start: int) -> ops.Workflow:
    """A template step retried once: its second step fails on its first call."""
    steps = ops.Steps("flaky", outputs=ops.Outputs(parameters={"y": ops.OutputParameter()}))
    a = ops.Step("a", counted, parameters={"tag": "a", "x": start})
    b = ops.Step("b", fails_once, parameters={"tag": "b", "x": a.outputs.parameters["y"]})
    steps.add(a).add(b)
    steps.outputs.parameters["y"].value_from_parameter = b.outputs.parameters["y"]
    return ops.Workflow("retried").add(ops.Step("t", steps, retries=1))


@ops.op(outputs={"y": int})
async def triple(x: int):
    return {"y": x * 3}


@aflow.workflow
def sliced_in_twins(start: int) -> ops.Workflow:
    """A template with a sliced step over its input list, used by two parallel steps."""
    tpl = ops.Steps(
        "sliced",
        inputs=ops.Inputs(parameters={"xs": ops.InputParameter(type=list[int])}),
        outputs=ops.Outputs(parameters={"ys": ops.OutputParameter()}),
    )
    s = ops.Step(
        "s",
        triple,
        parameters={"x": tpl.inputs.parameters["xs"]},
        slices=ops.Slices(input_parameter=["x"], output_parameter=["y"]),
    )
    tpl.add(s)
    tpl.outputs.parameters["ys"].value_from_parameter = s.outputs.parameters["y"]
    return ops.Workflow("sliced-twins").add(
        [
            ops.Step("t1", tpl, parameters={"xs": [start, start + 1]}),
            ops.Step("t2", tpl, parameters={"xs": [start * 10, start * 10 + 1, start * 10 + 2]}),
        ]
    )


@aflow.workflow
def slash_keys(start: int) -> ops.Workflow:
    """Keys with '/' in them: a template step keyed ``x`` holding a step keyed ``y``, and
    beside it a step keyed ``x/y``: their checkpoints must not be taken for each other."""
    inner = ops.Steps("inner", outputs=ops.Outputs(parameters={"y": ops.OutputParameter()}))
    y = ops.Step("y", counted, parameters={"tag": "inner-y", "x": start})
    inner.add(y)
    inner.outputs.parameters["y"].value_from_parameter = y.outputs.parameters["y"]
    outer = ops.Steps("outer")
    outer.add(
        [
            ops.Step("x", inner),
            ops.Step("xy", counted, parameters={"tag": "x/y", "x": start * 100}, key="x/y"),
        ]
    )
    return ops.Workflow("slashes").add(ops.Step("t", outer))
