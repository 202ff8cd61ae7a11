"""Property: random step graphs with skips and tolerated failures run exactly as a model says."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aflow
from aflow.ops import DAG, OP, OPIO, OPIOSign, Parameter, Step, Workflow

INPUTS = ("a", "b", "c")


class Node(OP):
    """Adds its inputs and 1; logs when it starts and ends; fails when told to."""

    log: list[tuple[str, str]] = []

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        fields: dict[str, Any] = {k: Parameter(int, default=0) for k in INPUTS}
        return OPIOSign({**fields, "name": str, "fail": Parameter(bool, default=False)})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"v": int})

    async def execute(self, op_in: OPIO) -> OPIO:
        Node.log.append(("start", op_in["name"]))
        if op_in["fail"]:
            Node.log.append(("fail", op_in["name"]))
            raise RuntimeError(op_in["name"])
        Node.log.append(("end", op_in["name"]))
        return OPIO({"v": sum(op_in[k] for k in INPUTS) + 1})


@st.composite
def graphs(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 8))
    specs: list[dict[str, Any]] = []
    for i in range(n):
        earlier = list(range(i))
        sources = draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True)) if i else []
        deps = draw(st.lists(st.sampled_from(earlier), max_size=2, unique=True)) if i else []
        specs.append(
            {
                "sources": sources,
                "deps": [d for d in deps if d not in sources],
                "fail": draw(st.booleans()) and draw(st.booleans()),
                "skip": draw(st.booleans()) and draw(st.booleans()),
            }
        )
    return specs


def model(specs: list[dict[str, Any]]) -> dict[int, tuple[str, int | None]]:
    """What each step ends as: its phase, and its value when it succeeded."""
    out: dict[int, tuple[str, int | None]] = {}
    for i, spec in enumerate(specs):
        if any(out[s][0] != "Succeeded" for s in spec["sources"]) or spec["skip"]:
            out[i] = ("Skipped", None)
        elif spec["fail"]:
            out[i] = ("Failed", None)
        else:
            out[i] = ("Succeeded", sum(out[s][1] or 0 for s in spec["sources"]) + 1)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=graphs())
async def test_random_step_graphs_match_the_model(specs: list[dict[str, Any]]) -> None:
    Node.log = []
    steps: list[Step] = []
    for i, spec in enumerate(specs):
        params: dict[str, Any] = {"name": f"s{i}", "fail": spec["fail"]}
        for k, s in zip(INPUTS, spec["sources"], strict=False):
            params[k] = steps[s].outputs.parameters["v"]
        steps.append(
            Step(
                f"s{i}",
                Node,
                parameters=params,
                dependencies=[steps[d] for d in spec["deps"]],
                continue_on_failed=True,  # failures are tolerated, so every step is decided
                when=(lambda seen: False) if spec["skip"] else None,
            )
        )
    wf = Workflow("prop", dag=DAG().add(list(reversed(steps))))
    async with aflow.Runtime():
        await wf.submit()
        assert await wf.wait() == "Succeeded"
    expected = model(specs)
    records = {r.name: r for r in wf.query_step()}
    for i, (phase, value) in expected.items():
        record = records[f"s{i}"]
        assert record.phase == phase, (i, specs)
        if value is not None:
            assert record.outputs.parameters["v"].value == value
    # a step starts only after every step it reads or depends on has ended
    ended = {name: pos for pos, (what, name) in enumerate(Node.log) if what in ("end", "fail")}
    started = {name: pos for pos, (what, name) in enumerate(Node.log) if what == "start"}
    assert set(started) == {f"s{i}" for i, (p, _) in expected.items() if p != "Skipped"}
    for i, spec in enumerate(specs):
        if f"s{i}" in started:
            for before in (*spec["sources"], *spec["deps"]):
                if f"s{before}" in ended:
                    assert ended[f"s{before}"] < started[f"s{i}"], (i, before, specs)
