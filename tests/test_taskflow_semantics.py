"""TaskFlow's own semantics where aflow used to differ (issue 18): bugs, engines, retry
controllers. The reference is TaskFlow 6.5 (taskflow/retry.py, engines/helpers.py,
engines/action_engine/engine.py and actions/retry.py), checked by running it."""

from __future__ import annotations

from typing import Any

import pytest

import aflow
import aflow.retry
from aflow import engines
from aflow.errors import CompensationFailed
from aflow.patterns import linear_flow as lf
from aflow.retry import History

S = aflow.NodeState


class Declined(Exception):
    pass


def leaves(error: BaseException) -> list[BaseException]:
    """Every exception ``error`` is made of, groups opened."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def step_class(log: list[Any]) -> type[aflow.Task]:
    class Step(aflow.Task):
        async def execute(self) -> str:
            log.append(f"do {self.name}")
            return self.name

        async def revert(self, result: Any) -> None:
            log.append(f"undo {self.name}")

    return Step


async def test_requires_given_as_a_plain_string_names_one_argument() -> None:
    class Kw(aflow.Task):
        async def execute(self, **kwargs: Any) -> dict[str, Any]:
            return kwargs

    task = Kw(requires="long_arg_name", provides="got")
    assert task.requires == {"long_arg_name"}
    values = await engines.run(lf.Flow("f").add(task), store={"long_arg_name": 5})
    assert values["got"] == {"long_arg_name": 5}
    with pytest.raises(aflow.errors.MissingInputError, match="'long_arg_name'"):
        engines.load(lf.Flow("f").add(Kw(requires="long_arg_name")))


async def test_a_retry_takes_requires_as_a_plain_string_too() -> None:
    class FromBase(aflow.retry.Retry):
        def execute(self, history: History, **requires: Any) -> Any:
            return requires["base_value"] + len(history)

    class Use(aflow.Task):
        async def execute(self, n: int) -> int:
            return n

    retry = FromBase(provides="n", requires="base_value")
    assert set(retry.params.required.values()) == {"base_value"}
    flow = lf.Flow("f", retry=retry).add(Use(provides="out"))
    assert (await engines.run(flow, store={"base_value": 10}))["out"] == 10


class BadRevert(aflow.Task):
    async def execute(self) -> None: ...

    async def revert(self, result: Any) -> None:
        raise OSError("cannot undo")


class Boom(aflow.Task):
    async def execute(self) -> None:
        raise ValueError("boom")


async def test_a_revert_that_fails_inside_a_retried_flow_is_reported_once() -> None:
    log: list[Any] = []
    Step = step_class(log)
    sub = lf.Flow("r", retry=aflow.retry.Times(2)).add(BadRevert(), Boom())
    eng = engines.load(lf.Flow("m").add(Step(name="first"), sub))
    with pytest.raises(CompensationFailed) as info:
        await eng.run()
    found = leaves(info.value)
    assert [type(e) for e in found].count(OSError) == 1
    assert [type(e) for e in found].count(ValueError) == 1
    (oserror,) = (e for e in found if isinstance(e, OSError))
    assert info.value.reverts == {"r": oserror}  # the retried flow's revert failed with it
    assert log == ["do first"]  # what precedes the failed revert is kept
    assert eng.states()["r"] is S.REVERT_FAILED
    assert eng.states()["BadRevert"] is S.REVERT_FAILED


async def test_a_revert_that_fails_two_retried_flows_deep_is_reported_once() -> None:
    inner = lf.Flow("inner", retry=aflow.retry.Times(2)).add(BadRevert(), Boom())
    outer = lf.Flow("outer", retry=aflow.retry.Times(2)).add(inner)
    with pytest.raises(CompensationFailed) as info:
        await engines.run(lf.Flow("m").add(outer))
    assert [type(e) for e in leaves(info.value)] == [ValueError, OSError]


async def test_a_revert_that_fails_undoing_a_finished_retried_flow_is_reported_once() -> None:
    class Late(aflow.Task):
        async def execute(self) -> None:
            raise Declined("late")

    sub = lf.Flow("r", retry=aflow.retry.Times(2)).add(BadRevert())
    with pytest.raises(CompensationFailed) as info:
        await engines.run(lf.Flow("m").add(sub, Late()))
    assert [type(e) for e in leaves(info.value)] == [Declined, OSError]
