"""aflow.ops conditions: `when` expressions and callables, their typed references, their
safety limits, and a condition that raises."""

from __future__ import annotations

from typing import Any

import pytest

import aflow
from aflow.ops import Step, Workflow, op

from .ops_helpers import add, run_wf, to_text

# --- conditions skip steps ------------------------------------------------------------------------


async def test_when_expressions_and_callables_skip_steps_which_queries_still_show() -> None:
    ran: list[str] = []

    @op(outputs={"x": int})
    async def mark(tag: str, x: int = 0):
        ran.append(tag)
        return {"x": x}

    s1 = Step("s1", add, parameters={"x": 4})  # sum = 5
    big = Step("big", mark, parameters={"tag": "big"}, when=f"{s1.outputs.parameters['sum']} > 5")
    small = Step(
        "small", mark, parameters={"tag": "small"}, when=f"{s1.outputs.parameters['sum']} <= 5"
    )
    odd = Step("odd", mark, parameters={"tag": "odd"}, when=lambda seen: seen["s1"]["sum"] % 2)
    uses_big = Step(
        "uses-big", mark, parameters={"tag": "uses-big", "x": big.outputs.parameters["x"]}
    )
    after = Step("after", mark, parameters={"tag": "after"})
    wf = Workflow("cond").add(s1).add([big, small, odd]).add(uses_big).add(after)
    assert await run_wf(wf) == "Succeeded"
    assert sorted(ran) == ["after", "odd", "small"]
    phases = {r.name: r.phase for r in wf.query_step()}
    assert phases == {
        "s1": "Succeeded",
        "big": "Skipped",
        "small": "Succeeded",
        "odd": "Succeeded",
        "uses-big": "Skipped",  # it reads a skipped step's output
        "after": "Succeeded",  # ordering only: it runs after a skipped step
    }
    assert [r.name for r in wf.query_step(phase="Skipped")] == ["big", "uses-big"]
    assert [r.name for r in wf.query_step(name=["s1", "after"])] == ["s1", "after"]


async def test_expression_values_are_typed_not_pasted_text() -> None:
    @op(outputs={"word": str})
    async def say():
        return {"word": "a b"}

    s = Step("s", say)
    yes = Step(
        "yes", add, parameters={"x": 1}, when=f"{s.outputs.parameters['word']} == 'a b' && true"
    )
    no = Step("no", add, parameters={"x": 1}, when=f"{s.outputs.parameters['word']} in ['x', 'y']")
    wf = Workflow("w").add(s).add([yes, no])
    assert await run_wf(wf) == "Succeeded"
    assert {r.name: r.phase for r in wf.query_step()} == {
        "s": "Succeeded",
        "yes": "Succeeded",
        "no": "Skipped",
    }


async def test_quoted_references_and_logical_words_inside_strings() -> None:
    @op(outputs={"msg": str})
    async def say():
        return {"msg": "a||b"}

    s = Step("s", say)
    ref = s.outputs.parameters["msg"]
    yes = Step("yes", add, parameters={"x": 1}, when=f"'{ref}' == 'a||b' && true")
    also = Step("also", add, parameters={"x": 1}, when=f'"{ref}" != "a or b"')
    wf = Workflow("w").add(s).add([yes, also])
    assert await run_wf(wf) == "Succeeded"
    assert {r.name: r.phase for r in wf.query_step()} == {
        "s": "Succeeded",
        "yes": "Succeeded",
        "also": "Succeeded",
    }


# --- expressions are evaluated safely -------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "{{steps.s1.outputs.parameters.sum}}.__class__",
        "[x for x in (1,)]",
        "'a' * 100000000",
        "lambda: 1",
        "open",
    ],
)
def test_when_expressions_are_evaluated_safely(expression: str) -> None:
    try:
        step = Step("t", add, parameters={"x": 1}, when=expression)
    except aflow.errors.SignatureError:
        return  # refused when built
    # what parses must still be harmless: only the multiplication case gets here
    assert step.when is not None
    with pytest.raises(TypeError):
        step.when.evaluate({})  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "expression",
    ['"%0999999999d" % 1 == "x"', "-" * 2000 + "1 > 0", "1" + " + 1" * 3000 + " > 0"],
)
async def test_when_expressions_cannot_exhaust_memory_or_the_stack(expression: str) -> None:
    try:
        step = Step("t", add, parameters={"x": 1}, when=expression)
    except aflow.errors.SignatureError:
        return  # refused when built
    wf = Workflow("w").add(step)
    assert await run_wf(wf) == "Failed"
    assert isinstance(wf.query_step()[0].error, aflow.errors.WhenError)


def test_the_bound_name_is_reserved_in_expressions() -> None:
    with pytest.raises(aflow.errors.SignatureError, match="reserved"):
        Step("s", add, parameters={"x": 1}, when="__aflow_ref_0 == 1")


# --- what a condition may name, and what it may be ------------------------------------------------


def test_when_expressions_name_real_outputs() -> None:
    s1 = Step("s1", add, parameters={"x": 4})
    t = Step("t", add, parameters={"x": 1}, when="{{steps.s1.outputs.parameters.nope}} > 1")
    with pytest.raises(aflow.errors.SignatureError, match="no output parameter 'nope'"):
        aflow.compile(Workflow("w").add(s1).add(t))
    u = Step("u", add, parameters={"x": 1}, when="{{steps.ghost.outputs.parameters.sum}} > 1")
    with pytest.raises(aflow.errors.SignatureError, match="step 'ghost'"):
        aflow.compile(Workflow("w").add(s1).add(u))


def test_a_reference_inside_a_longer_string_is_refused() -> None:
    for text in (
        "'pre-{{steps.a.outputs.parameters.x}}' == 'pre-yes'",
        "'{{steps.a.outputs.parameters.x}}-suf' == 'yes-suf'",
    ):
        with pytest.raises(aflow.errors.SignatureError, match="inside a longer string"):
            Step("s", add, parameters={"x": 1}, when=text)
    Step("s", add, parameters={"x": 1}, when="'{{steps.a.outputs.parameters.x}}' == '__refund'")


def test_an_async_when_is_refused() -> None:
    async def later(seen: Any) -> bool:
        return False

    with pytest.raises(aflow.errors.SignatureError, match="not async"):
        Step("s", add, parameters={"x": 1}, when=later)


@pytest.mark.parametrize(
    "when",
    ["{{steps.s1.outputs.parameters.text}} > 5", lambda seen: seen["nope"]],
    ids=["expression", "callable"],
)
async def test_a_when_that_raises_fails_its_step_which_continue_on_failed_covers(
    when: Any,
) -> None:
    s1 = Step("s1", to_text, parameters={"x": 1})  # text "1": "1" > 5 raises TypeError
    s2 = Step("s2", add, parameters={"x": 1}, when=when, continue_on_failed=True, retries=2)
    s3 = Step("s3", add, parameters={"x": 2})
    wf = Workflow("w").add(s1).add(s2).add(s3)
    assert await run_wf(wf) == "Succeeded"
    records = {r.name: r for r in wf.query_step()}
    assert records["s2"].phase == "Failed"
    assert isinstance(records["s2"].error, aflow.errors.WhenError)
    assert records["s2"].attempts == 1  # a broken condition is not retried
    assert records["s3"].phase == "Succeeded"
    strict = Step("s2", add, parameters={"x": 1}, when=when)
    wf = Workflow("w").add(Step("s1", to_text, parameters={"x": 1})).add(strict)
    assert await run_wf(wf) == "Failed"
    assert isinstance(wf.query_step(name="s2")[0].error, aflow.errors.WhenError)
