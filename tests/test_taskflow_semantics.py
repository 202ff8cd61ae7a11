"""TaskFlow's own semantics where aflow used to differ (issue 18): bugs, engines, retry
controllers. The reference is TaskFlow 6.5 (taskflow/retry.py, engines/helpers.py,
engines/action_engine/engine.py and actions/retry.py), checked by running it."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import aflow
import aflow.retry
from aflow import engines
from aflow.errors import CompensationFailed, EngineNotFound, NotFound
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


# --- bugs -----------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("retry", "store", "error", "message"),
    [
        pytest.param(
            aflow.retry.ParameterizedForEach(provides="v"),
            {"values": []},
            NotFound,
            "retry 'ParameterizedForEach' has no value to try: its collection is empty",
            id="ParameterizedForEach-empty",
        ),
        pytest.param(
            aflow.retry.ForEach([], provides="v"),
            {},
            NotFound,
            "retry 'ForEach' has no value to try: its collection is empty",
            id="ForEach-empty",
        ),
    ],
)
async def test_a_controller_that_raises_before_its_first_attempt_raises_its_own_error(
    retry: aflow.retry.Retry, store: dict[str, Any], error: type[Exception], message: str
) -> None:
    """TaskFlow: NotFound("No elements left in collection of iterable retry controller ...")
    and the tasks before the flow are reverted; no revert failure about a resumed run."""
    log: list[Any] = []
    Step = step_class(log)

    class Inner(aflow.Task):
        async def execute(self, v: Any) -> None:
            log.append(f"inner {v}")

    flow = lf.Flow("m").add(Step(name="before"), lf.Flow("sub", retry=retry).add(Inner()))
    eng = engines.load(flow, store=store)
    with pytest.raises(error, match=message) as info:
        await eng.run()
    assert isinstance(info.value, LookupError)  # TaskFlow code catching NotFound/KeyError
    assert any("of flow 'sub' raised before attempt 1" in n for n in info.value.__notes__)
    assert log == ["do before", "undo before"]
    assert eng.state is aflow.RunStatus.REVERTED
    assert eng.states() == {"before": S.REVERTED, "sub": S.REVERTED, "Inner": S.PENDING}


async def test_a_custom_controller_whose_execute_raises_raises_that_error() -> None:
    class Broken(aflow.retry.Retry):
        def execute(self, history: History, **requires: Any) -> Any:
            raise PermissionError("no token to retry with")

    class Inner(aflow.Task):
        async def execute(self) -> None:
            raise AssertionError("never runs")

    with pytest.raises(PermissionError, match="no token"):
        await engines.run(lf.Flow("m").add(lf.Flow("sub", retry=Broken()).add(Inner())))


async def test_the_tasks_of_a_root_flow_with_a_retry_are_seen() -> None:
    calls: list[int] = []

    class Flaky(aflow.Task):
        async def execute(self, attempt: int) -> int:
            calls.append(attempt)
            if attempt < 2:
                raise Declined(attempt)
            return attempt

    class After(aflow.Task):
        async def execute(self, got: int) -> int:
            return got * 10

    flow = lf.Flow("root", retry=aflow.retry.Times(3, provides="attempt")).add(
        Flaky(provides="got"), After(provides="out")
    )
    eng = engines.load(flow)
    assert eng.states() == {"root": S.PENDING, "Flaky": S.PENDING, "After": S.PENDING}
    assert eng.storage.get_atom_state("Flaky") is S.PENDING
    await eng.run()
    assert calls == [1, 2]
    assert eng.states() == {"root": S.SUCCEEDED, "Flaky": S.SUCCEEDED, "After": S.SUCCEEDED}
    assert eng.storage.get_atom_state("After") is S.SUCCEEDED
    assert eng.storage.fetch_all() == {"attempt": 2, "got": 2, "out": 20}
    with pytest.raises(NotFound, match="no task named 'nope'"):
        eng.storage.get_atom_state("nope")


async def test_the_tasks_of_a_root_flow_with_a_retry_that_gave_up_are_reverted() -> None:
    log: list[Any] = []
    Step = step_class(log)

    class Boom(aflow.Task):
        async def execute(self) -> None:
            raise Declined("always")

    flow = lf.Flow("root", retry=aflow.retry.Times(2)).add(Step(name="a"), Boom())
    eng = engines.load(flow)
    with pytest.raises(Declined):
        await eng.run()
    assert eng.states() == {"root": S.REVERTED, "a": S.REVERTED, "Boom": S.FAILED}
    assert eng.storage.get_atom_state("a") is S.REVERTED


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


# --- engines --------------------------------------------------------------------------------


async def test_an_engine_runs_a_reverted_flow_again() -> None:
    """TaskFlow's prepare() resets a REVERTED flow: run() runs it again from the start."""
    log: list[Any] = []
    Step = step_class(log)
    failing = [True]

    class Charge(aflow.Task):
        async def execute(self, attempt: int) -> str:
            log.append(f"charge {attempt}")
            if failing[0]:
                raise Declined("card declined")
            return "paid"

    sub = lf.Flow("pay", retry=aflow.retry.Times(2, provides="attempt")).add(
        Charge(provides="receipt")
    )
    eng = engines.load(lf.Flow("order").add(Step(name="reserve"), sub))
    with pytest.raises(Declined):
        await eng.run()
    assert eng.state is aflow.RunStatus.REVERTED
    failing[0] = False
    log.clear()
    await eng.run()
    assert log == ["do reserve", "charge 1"]  # from the start, attempts counted afresh
    assert eng.state is aflow.RunStatus.SUCCEEDED
    assert eng.states() == {"reserve": S.SUCCEEDED, "pay": S.SUCCEEDED, "Charge": S.SUCCEEDED}
    assert eng.storage.fetch("receipt") == "paid"
    await eng.run()  # after a success: nothing left to run
    assert log == ["do reserve", "charge 1"]


async def test_an_engine_whose_flow_failed_without_reverts_runs_it_again() -> None:
    """Nothing had a revert, so the run is FAILED rather than REVERTED: nothing was kept."""
    tries: list[int] = []

    class Once(aflow.Task):
        async def execute(self) -> None:
            tries.append(1)
            if len(tries) == 1:
                raise Declined("first")

    eng = engines.load(Once())
    with pytest.raises(Declined):
        await eng.run()
    await eng.run()
    assert len(tries) == 2
    assert eng.state is aflow.RunStatus.SUCCEEDED


async def test_an_engine_whose_revert_failed_runs_again_only_after_reset() -> None:
    class Once(aflow.Task):
        async def execute(self) -> None:
            if not ran:
                ran.append(1)
                raise Declined("first")

    ran: list[int] = []
    eng = engines.load(lf.Flow("f").add(BadRevert(), Once()))
    with pytest.raises(CompensationFailed):
        await eng.run()
    assert eng.state is aflow.RunStatus.FAILED
    with pytest.raises(RuntimeError, match=r"a revert failed.*engine\.reset\(\)"):
        await eng.run()
    eng.reset()
    await eng.run()
    assert eng.state is aflow.RunStatus.SUCCEEDED


async def test_reset_forgets_the_run() -> None:
    log: list[Any] = []
    Step = step_class(log)

    class Give(aflow.Task):
        async def execute(self, base: int) -> int:
            return base + 1

    flow = lf.Flow("f").add(Step(name="a"), Give(provides="out"))
    eng = engines.load(flow, store={"base": 1})
    eng.reset()  # before a run: nothing to forget
    assert eng.state is aflow.RunStatus.PENDING
    await eng.run()
    assert eng.storage.fetch_all() == {"base": 1, "out": 2}
    eng.reset()
    assert eng.state is aflow.RunStatus.PENDING
    assert eng.run_id is None
    assert eng.states() == {"a": S.PENDING, "Give": S.PENDING}
    assert eng.storage.fetch_all() == {"base": 1}  # the store stays, provided values go
    await eng.run()
    assert log == ["do a", "do a"]
    assert eng.state is aflow.RunStatus.SUCCEEDED


async def test_reset_of_a_suspended_engine_starts_over() -> None:
    log: list[Any] = []
    box: list[engines.Engine] = []

    class Step(aflow.Task):
        async def execute(self) -> None:
            log.append(self.name)
            if self.name == "a" and len(log) == 1:
                box[0].suspend()

    eng = engines.load(lf.Flow("f").add(Step(name="a"), Step(name="b")))
    box.append(eng)
    await eng.run()
    assert eng.state is aflow.RunStatus.SUSPENDED
    eng.reset()
    await eng.run()
    assert log == ["a", "a", "b"]


async def test_reset_while_running_is_refused() -> None:
    started = anyio.Event()
    release = anyio.Event()

    class Wait(aflow.Task):
        async def execute(self) -> None:
            started.set()
            await release.wait()

    eng = engines.load(Wait())
    async with anyio.create_task_group() as tg:
        tg.start_soon(eng.run)
        await started.wait()
        with pytest.raises(RuntimeError, match="'Wait' is running"):
            eng.reset()
        release.set()
    assert eng.state is aflow.RunStatus.SUCCEEDED


async def test_an_engine_cancelled_and_unwound_runs_the_flow_again() -> None:
    log: list[Any] = []
    Step = step_class(log)
    started = anyio.Event()
    hang = [True]

    class Hang(aflow.Task):
        async def execute(self) -> None:
            if hang[0]:
                started.set()
                await anyio.sleep_forever()

    eng = engines.load(lf.Flow("f").add(Step(name="a"), Hang()))
    async with anyio.create_task_group() as tg:
        tg.start_soon(eng.run)
        await started.wait()
        tg.cancel_scope.cancel()
    assert eng.state is aflow.RunStatus.CANCELLED
    hang[0] = False
    await eng.run()
    assert log == ["do a", "undo a", "do a"]
    assert eng.state is aflow.RunStatus.SUCCEEDED


async def test_load_takes_a_single_task_as_a_flow() -> None:
    class Square(aflow.Task):
        default_provides = "square"

        def execute(self, x: int) -> int:
            return x * x

    eng = engines.load(Square(), store={"x": 3})
    assert eng.flow.name == "Square"
    await eng.run()
    assert eng.storage.fetch("square") == 9
    assert eng.storage.get_atom_state("Square") is S.SUCCEEDED

    @aflow.task(provides="double")
    async def double(x: int) -> int:
        return 2 * x

    assert await engines.run(double, store={"x": 4}) == {"x": 4, "double": 8}
    assert await engines.run(double.s(5).set(name="five")) == {"double": 10}


def test_load_refuses_what_is_neither_a_flow_nor_a_task() -> None:
    with pytest.raises(TypeError, match=r"a flow from aflow\.patterns or a single task, got 42"):
        engines.load(42)  # type: ignore[arg-type]


def test_an_unknown_engine_name_raises_not_found() -> None:
    """TaskFlow: NotFound("Could not find engine 'threaded'")."""
    with pytest.raises(EngineNotFound, match="no engine named 'threaded'") as info:
        engines.load(lf.Flow("f"), engine="threaded")  # type: ignore[arg-type]
    error = info.value
    assert isinstance(error, NotFound)
    assert isinstance(error, LookupError)
    assert isinstance(error, ValueError)  # found before anything runs: a definition error
    assert error.name == "threaded"
    assert error.known == ("serial", "parallel")


# --- retry controllers ----------------------------------------------------------------------


class Recording(aflow.retry.Retry):
    """Times(n) that records its reverts."""

    def __init__(self, attempts: int, log: list[Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attempts = attempts
        self.log = log

    def on_failure(self, history: History, **requires: Any) -> aflow.retry.Decision:
        return aflow.retry.RETRY if len(history) < self.attempts else aflow.retry.REVERT

    def revert(self, history: History, flow_failures: dict[str, aflow.Failure]) -> None:
        self.log.append(
            (
                "retry revert",
                [(a.value, sorted(a.failures)) for a in history],
                {name: type(f.exception).__name__ for name, f in flow_failures.items()},
            )
        )


async def test_retry_revert_runs_after_its_flow_when_the_controller_gives_up() -> None:
    """TaskFlow: history of both attempts, flow_failures of the last one ({'b': ...})."""
    log: list[Any] = []
    Step = step_class(log)

    class Fail(aflow.Task):
        async def execute(self, attempt: int) -> None:
            log.append(f"fail {attempt}")
            raise Declined(attempt)

    sub = lf.Flow("sub", retry=Recording(2, log, provides="attempt"))
    sub.add(Step(name="in"), Fail(name="b"))
    eng = engines.load(lf.Flow("m").add(Step(name="out"), sub))
    with pytest.raises(Declined):
        await eng.run()
    assert log == [
        "do out",
        "do in",
        "fail 1",
        "undo in",  # between attempts: the tasks only
        "do in",
        "fail 2",
        "undo in",
        ("retry revert", [(1, ["b"]), (2, ["b"])], {"b": "Declined"}),
        "undo out",
    ]
    assert eng.states()["sub"] is S.REVERTED


async def test_retry_revert_runs_when_a_later_task_fails() -> None:
    """TaskFlow: the successful attempt is in the history, with no failures."""
    log: list[Any] = []
    Step = step_class(log)

    class Late(aflow.Task):
        async def execute(self) -> None:
            raise Declined("late")

    sub = lf.Flow("sub", retry=Recording(2, log, provides="attempt")).add(Step(name="in"))
    with pytest.raises(Declined):
        await engines.run(lf.Flow("m").add(sub, Late(name="late")))
    assert log == ["do in", "undo in", ("retry revert", [(1, [])], {"late": "Declined"})]


async def test_retry_revert_runs_when_its_own_execute_raised() -> None:
    """TaskFlow: an empty history, and the controller's own failure in flow_failures."""
    log: list[Any] = []

    class Empty(aflow.retry.Retry):
        def execute(self, history: History, **requires: Any) -> Any:
            raise NotFound("nothing to try")

        def revert(self, history: History, **kwargs: Any) -> None:
            failures = kwargs.pop("flow_failures")
            log.append((len(history), sorted(failures), kwargs))

    class Inner(aflow.Task):
        async def execute(self) -> None: ...

    with pytest.raises(NotFound, match="nothing to try"):
        await engines.run(lf.Flow("m").add(lf.Flow("sub", retry=Empty()).add(Inner())))
    assert log == [(0, ["sub"], {})]


async def test_retry_revert_is_not_called_on_success_nor_between_attempts() -> None:
    log: list[Any] = []
    tries: list[int] = []

    class Flaky(aflow.Task):
        async def execute(self) -> None:
            tries.append(1)
            if len(tries) < 3:
                raise Declined("again")

    sub = lf.Flow("sub", retry=Recording(3, log)).add(Flaky())
    await engines.run(lf.Flow("m").add(sub))
    assert len(tries) == 3
    assert log == []


async def test_retry_revert_reads_what_it_requires_as_execute_does() -> None:
    log: list[Any] = []

    class Ports(aflow.retry.ParameterizedForEach):
        async def revert(self, history: History, values: list[int], note: str = "-") -> None:
            log.append((values, note, history.values()))

    class Bind(aflow.Task):
        async def execute(self, port: int) -> None:
            raise OSError(port)

    sub = lf.Flow("bind", retry=Ports(rebind=["ports"], provides="port")).add(Bind())
    with pytest.raises(OSError, match="8001"):
        await engines.run(lf.Flow("m").add(sub), store={"ports": [8000, 8001], "note": "n"})
    assert log == [([8000, 8001], "n", [8000, 8001])]


async def test_retry_revert_reads_what_nothing_else_requires() -> None:
    class Needs(aflow.retry.Retry):
        def revert(self, history: History, audit: list[str]) -> None:
            audit.append("retry reverted")

    class Fail(aflow.Task):
        async def execute(self) -> None:
            raise Declined("no")

    flow = lf.Flow("m").add(lf.Flow("sub", retry=Needs()).add(Fail()))
    with pytest.raises(aflow.errors.MissingInputError, match="'Needs' requires 'audit'"):
        engines.load(flow)
    audit: list[str] = []
    with pytest.raises(Declined):
        await engines.run(flow, store={"audit": audit})
    assert audit == ["retry reverted"]


async def test_a_retry_revert_that_fails_keeps_what_precedes_it() -> None:
    log: list[Any] = []
    Step = step_class(log)

    class Unrevertible(aflow.retry.Retry):
        def revert(self, history: History) -> None:
            raise OSError("controller cannot undo")

    class Fail(aflow.Task):
        async def execute(self) -> None:
            raise Declined("no")

    sub = lf.Flow("sub", retry=Unrevertible()).add(Step(name="in"), Fail())
    eng = engines.load(lf.Flow("m").add(Step(name="out"), sub))
    with pytest.raises(CompensationFailed) as info:
        await eng.run()
    assert [type(e) for e in leaves(info.value)] == [Declined, OSError]
    assert log == ["do out", "do in", "undo in"]  # "out" precedes the failed revert: kept
    assert eng.states()["sub"] is S.REVERT_FAILED


@pytest.mark.parametrize(
    ("provides", "returned"),
    [
        pytest.param(("region", "zone"), lambda n: (f"r{n}", f"z{n}"), id="tuple"),
        pytest.param({"region", "zone"}, lambda n: {"region": f"r{n}", "zone": f"z{n}"}, id="set"),
    ],
)
async def test_a_retry_provides_several_names(provides: Any, returned: Any) -> None:
    class Places(aflow.retry.Retry):
        def execute(self, history: History, **requires: Any) -> Any:
            return returned(len(history) + 1)

        def on_failure(self, history: History, **requires: Any) -> aflow.retry.Decision:
            return aflow.retry.RETRY

    class Deploy(aflow.Task):
        async def execute(self, region: str, zone: str) -> str:
            if region == "r1":
                raise Declined(region)
            return f"{region}/{zone}"

    retry = Places(provides=provides)
    assert set(retry.provides) == {"region", "zone"}
    flow = lf.Flow("deploy", retry=retry).add(Deploy(provides="where"))
    eng = engines.load(lf.Flow("m").add(flow))
    await eng.run()
    assert eng.storage.fetch_all() == {"region": "r2", "zone": "z2", "where": "r2/z2"}


async def test_a_retry_value_of_the_wrong_shape_fails_naming_the_retry() -> None:
    class Wrong(aflow.retry.Retry):
        def execute(self, history: History, **requires: Any) -> Any:
            return "just one"

    class Use(aflow.Task):
        async def execute(self, a: str, b: str) -> None: ...

    flow = lf.Flow("f", retry=Wrong(name="pick", provides=("a", "b"))).add(Use())
    with pytest.raises(aflow.errors.ProvidesError, match=r"task 'pick' provides \['a', 'b'\]"):
        await engines.run(lf.Flow("m").add(flow))


async def test_always_revert_escalates_to_the_enclosing_retry() -> None:
    """TaskFlow: the inner flow ran three times, once per attempt of the outer Times(3)."""
    runs: list[int] = []

    class Fail(aflow.Task):
        async def execute(self, outer: int) -> None:
            runs.append(outer)
            raise Declined(outer)

    inner = lf.Flow("inner", retry=aflow.retry.AlwaysRevert()).add(Fail())
    outer = lf.Flow("outer", retry=aflow.retry.Times(3, provides="outer")).add(inner)
    with pytest.raises(Declined):
        await engines.run(lf.Flow("m").add(outer))
    assert runs == [1, 2, 3]


async def test_always_revert_all_fails_the_run_whatever_the_enclosing_retry_says() -> None:
    """TaskFlow: the inner flow ran once, the outer Times(3) was not consulted."""
    runs: list[int] = []

    class Fail(aflow.Task):
        async def execute(self, outer: int) -> None:
            runs.append(outer)
            raise Declined(outer)

    inner = lf.Flow("inner", retry=aflow.retry.AlwaysRevertAll()).add(Fail())
    outer = lf.Flow("outer", retry=aflow.retry.Times(3, provides="outer")).add(inner)
    with pytest.raises(Declined):
        await engines.run(lf.Flow("m").add(outer))
    assert runs == [1]


async def test_always_revert_provides_none_when_named() -> None:
    class Use(aflow.Task):
        async def execute(self, token: Any) -> Any:
            return token

    flow = lf.Flow("f", retry=aflow.retry.AlwaysRevert(provides="token")).add(Use(provides="out"))
    assert await engines.run(flow) == {"token": None, "out": None}


@pytest.mark.parametrize("attempts", [0, -1])
def test_times_below_one_is_refused_saying_times_1_is_what_taskflow_runs(attempts: int) -> None:
    """TaskFlow accepts Times(0) and Times(-1) and runs the flow once, like Times(1)."""
    with pytest.raises(aflow.errors.SignatureError, match=r"Times\(1\) is equivalent") as info:
        aflow.retry.Times(attempts)
    assert info.value.argument == "attempts"
    with pytest.raises(aflow.errors.SignatureError, match=r"got True$"):
        aflow.retry.Times(True)
