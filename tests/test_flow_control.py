"""Flow control in TaskFlow-style flows: retry controllers, deciders, suspend and continue."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aflow
import aflow.retry
from aflow import engines
from aflow.patterns import graph_flow as gf
from aflow.patterns import linear_flow as lf
from aflow.patterns import unordered_flow as uf
from aflow.testing import FakeClock

# --- retry controllers ----------------------------------------------------------------------


class Declined(Exception):
    pass


def saga_tasks(log: list[str], fail_while: Any) -> tuple[type[aflow.Task], type[aflow.Task]]:
    """A reserve task and a charge task that fails while ``fail_while(**inputs)`` is true."""

    class Reserve(aflow.Task):
        default_provides = "reservation"

        async def execute(self, order: str) -> str:
            log.append(f"reserve {order}")
            return f"r-{order}"

        async def revert(self, order: str, result: Any) -> None:
            log.append(f"release {result}")

    class Charge(aflow.Task):
        async def execute(self, reservation: str, attempt: int) -> str:
            log.append(f"charge {attempt}")
            if fail_while(attempt=attempt):
                raise Declined(f"attempt {attempt}")
            return "paid"

        async def revert(self, reservation: str, attempt: int, result: Any) -> None:
            log.append(f"refund {attempt} {type(result).__name__}")

    return Reserve, Charge


async def test_times_retry_succeeds_on_the_third_attempt_with_reverts_between() -> None:
    log: list[str] = []
    Reserve, Charge = saga_tasks(log, lambda attempt: attempt < 3)
    sub = lf.Flow("pay", retry=aflow.retry.Times(3, provides="attempt"))
    sub.add(Reserve(), Charge(provides="receipt"))
    eng = engines.load(lf.Flow("order").add(sub), store={"order": "o1"})
    await eng.run()
    assert log == [
        "reserve o1",
        "charge 1",
        "refund 1 Failure",  # the failed task's own revert, with a Failure
        "release r-o1",
        "reserve o1",
        "charge 2",
        "refund 2 Failure",
        "release r-o1",
        "reserve o1",
        "charge 3",
    ]
    assert eng.storage.fetch("receipt") == "paid"
    assert eng.storage.fetch("attempt") == 3
    assert eng.states() == {
        "pay": aflow.NodeState.SUCCEEDED,
        "Reserve": aflow.NodeState.SUCCEEDED,
        "Charge": aflow.NodeState.SUCCEEDED,
    }


async def test_an_exhausted_retry_fails_the_run_and_reverts_everything() -> None:
    log: list[str] = []
    Reserve, Charge = saga_tasks(log, lambda attempt: True)

    class Validate(aflow.Task):
        async def execute(self, order: str) -> None:
            log.append("validate")

        async def revert(self, order: str, result: Any) -> None:
            log.append("unvalidate")

    sub = lf.Flow("pay", retry=aflow.retry.Times(2, provides="attempt"))
    sub.add(Reserve(), Charge())
    eng = engines.load(lf.Flow("order").add(Validate(), sub), store={"order": "o1"})
    with pytest.raises(Declined, match="attempt 2") as info:
        await eng.run()
    assert log.count("charge 1") == log.count("charge 2") == 1
    assert log[-1] == "unvalidate"  # after the retry gave up, the outer flow is reverted
    assert any("gave up after 2 attempt(s)" in note for note in info.value.__notes__)
    assert eng.state is aflow.RunStatus.REVERTED
    assert eng.storage.get_atom_state("Validate") is aflow.NodeState.REVERTED


async def test_nested_retries_escalate_to_the_outer_controller() -> None:
    runs: list[tuple[int, int]] = []

    class Flaky(aflow.Task):
        async def execute(self, outer: int, inner: int) -> str:
            runs.append((outer, inner))
            if outer == 1:
                raise Declined("first outer attempt always fails")
            return "ok"

    inner = lf.Flow("inner", retry=aflow.retry.Times(2, provides="inner")).add(
        Flaky(provides="out")
    )
    outer = lf.Flow("outer", retry=aflow.retry.Times(3, provides="outer")).add(inner)
    values = await engines.run(lf.Flow("main").add(outer))
    assert runs == [(1, 1), (1, 2), (2, 1)]
    assert values["out"] == "ok"


async def test_revert_all_skips_the_enclosing_retries() -> None:
    runs: list[int] = []

    class Fails(aflow.Task):
        async def execute(self, outer: int) -> None:
            runs.append(outer)
            raise Declined("no")

    inner = lf.Flow("inner", retry=aflow.retry.Times(1, revert_all=True)).add(Fails())
    outer = lf.Flow("outer", retry=aflow.retry.Times(5, provides="outer")).add(inner)
    with pytest.raises(Declined):
        await engines.run(outer)
    assert runs == [1]


async def test_revert_all_holds_when_a_sibling_fails_at_the_same_time() -> None:
    attempts: list[int] = []
    both_in = anyio.Event()
    arrived = 0

    class F1(aflow.Task):
        async def execute(self) -> None:
            nonlocal arrived
            attempts.append(1)
            arrived += 1
            if arrived == 2:
                both_in.set()
            await both_in.wait()
            raise ValueError("f1")

    class F2(aflow.Task):
        async def execute(self) -> None:
            nonlocal arrived
            arrived += 1
            if arrived == 2:
                both_in.set()
            await both_in.wait()
            raise ValueError("f2")

    inner = lf.Flow("inner", retry=aflow.retry.Times(1, revert_all=True)).add(F1())
    outer = uf.Flow("outer", retry=aflow.retry.Times(3)).add(inner, F2())
    # Both are released by one event; whether the second raises before the first
    # failure's cancel reaches it depends on the loop's order (GroupFailed, or the
    # first error with the sibling cancelled). Either way nothing is retried.
    with anyio.fail_after(5), pytest.raises((aflow.errors.GroupFailed, ValueError)):
        await engines.run(outer, engine="parallel")
    assert attempts == [1]


async def test_for_each_tries_values_in_turn() -> None:
    tried: list[str] = []

    class Upload(aflow.Task):
        async def execute(self, region: str) -> str:
            tried.append(region)
            if region != "ap":
                raise ConnectionError(region)
            return f"stored in {region}"

    flow = lf.Flow("up", retry=aflow.retry.ForEach(["eu", "us", "ap"], provides="region"))
    values = await engines.run(flow.add(Upload(provides="where")))
    assert tried == ["eu", "us", "ap"]
    assert values["where"] == "stored in ap"
    assert values["region"] == "ap"


async def test_for_each_that_runs_out_of_values_fails() -> None:
    class Upload(aflow.Task):
        async def execute(self, region: str) -> None:
            raise ConnectionError(region)

    flow = lf.Flow("up", retry=aflow.retry.ForEach(["eu", "us"], provides="region"))
    with pytest.raises(ConnectionError, match="us"):
        await engines.run(flow.add(Upload()))


async def test_parameterized_for_each_reads_its_values_by_name() -> None:
    tried: list[int] = []

    class Try(aflow.Task):
        async def execute(self, port: int) -> int:
            tried.append(port)
            if port < 8002:
                raise OSError(port)
            return port

    retry = aflow.retry.ParameterizedForEach(rebind=["ports"], provides="port")
    flow = lf.Flow("bind", retry=retry).add(Try(provides="bound"))
    values = await engines.run(flow, store={"ports": [8000, 8001, 8002, 8003]})
    assert tried == [8000, 8001, 8002]
    assert values["bound"] == 8002


def test_retry_controllers_check_their_arguments() -> None:
    with pytest.raises(aflow.errors.SignatureError, match="attempts must be an int >= 1"):
        aflow.retry.Times(0)
    # an empty ForEach raises NotFound when the flow runs, as TaskFlow's does (issue 18:
    # tests/test_taskflow_semantics.py)
    assert aflow.retry.ForEach([]).values == ()
    with pytest.raises(TypeError, match=r"aflow\.retry\.Retry"):
        lf.Flow("f", retry=3)  # type: ignore[arg-type]
    flow = lf.Flow("f", retry=aflow.retry.ParameterizedForEach(provides="v"))
    with pytest.raises(aflow.errors.MissingInputError, match="'values'"):
        engines.load(flow.add(aflow.task(lambda: None)))


async def test_a_custom_retry_decides_from_the_history() -> None:
    class OnlyOnTimeouts(aflow.retry.Retry):
        def on_failure(self, history: aflow.retry.History, **kw: Any) -> aflow.retry.Decision:
            last = history.attempts[-1]
            failure = next(iter(last.failures.values()))
            if failure.check(TimeoutError) and len(history) < 5:
                return aflow.retry.RETRY
            return aflow.retry.REVERT

    errors: list[type[Exception]] = [TimeoutError, TimeoutError, ValueError]

    class Call(aflow.Task):
        async def execute(self) -> None:
            raise errors.pop(0)("x")

    flow = lf.Flow("f", retry=OnlyOnTimeouts(provides="n")).add(Call())
    with pytest.raises(ValueError, match="x"):
        await engines.run(flow)
    assert errors == []  # two timeouts retried, the ValueError was not


async def test_a_succeeded_retried_flow_is_reverted_when_a_later_task_fails() -> None:
    log: list[str] = []

    class Step(aflow.Task):
        async def execute(self) -> None:
            log.append(f"do {self.name}")

        async def revert(self, result: Any) -> None:
            log.append(f"undo {self.name}")

    class Boom(aflow.Task):
        async def execute(self) -> None:
            raise Declined("late")

    sub = lf.Flow("sub", retry=aflow.retry.Times(2)).add(Step(name="a"), Step(name="b"))
    eng = engines.load(lf.Flow("main").add(sub, Boom()))
    with pytest.raises(Declined):
        await eng.run()
    assert log == ["do a", "do b", "undo b", "undo a"]
    assert eng.storage.get_atom_state("a") is aflow.NodeState.REVERTED
    assert eng.storage.get_atom_state("sub") is aflow.NodeState.REVERTED


async def test_a_failed_revert_inside_a_retried_flow_keeps_what_precedes_it() -> None:
    class First(aflow.Task):
        async def execute(self) -> None: ...

        async def revert(self, result: Any) -> None:
            raise AssertionError("must be kept: a revert after it failed")

    class BadRevert(aflow.Task):
        async def execute(self) -> None: ...

        async def revert(self, result: Any) -> None:
            raise OSError("cannot undo")

    class Boom(aflow.Task):
        async def execute(self) -> None:
            raise ValueError("boom")

    sub = lf.Flow("r", retry=aflow.retry.Times(3)).add(BadRevert(), Boom())
    eng = engines.load(lf.Flow("m").add(First(), sub))
    with pytest.raises(aflow.errors.CompensationFailed):
        await eng.run()
    assert eng.state is aflow.RunStatus.FAILED
    states = eng.states()
    assert states["First"] is aflow.NodeState.SUCCEEDED
    assert states["r"] is aflow.NodeState.REVERT_FAILED
    assert states["BadRevert"] is aflow.NodeState.REVERT_FAILED


async def test_siblings_of_a_retried_flow_keep_running_while_it_retries() -> None:
    attempts = 0
    sibling_done = anyio.Event()

    class Flaky(aflow.Task):
        async def execute(self) -> str:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                await sibling_done.wait()  # the sibling is not cancelled by this failure
                raise Declined("once")
            return "ok"

    class Sibling(aflow.Task):
        async def execute(self) -> str:
            sibling_done.set()
            return "sib"

    sub = lf.Flow("sub", retry=aflow.retry.Times(2)).add(Flaky(provides="f"))
    flow = uf.Flow("u").add(sub, Sibling(provides="s"))
    with anyio.fail_after(5):
        values = await engines.run(flow, engine="parallel")
    assert values["f"] == "ok"
    assert values["s"] == "sib"


async def test_concurrent_runs_of_one_graph_keep_their_retried_attempts_apart() -> None:
    log: list[tuple[str, int]] = []
    count = 0
    second_done = anyio.Event()

    class Work(aflow.Task):
        async def execute(self) -> int:
            nonlocal count
            count += 1
            log.append(("work", count))
            return count

        async def revert(self, result: Any, **kwargs: Any) -> None:
            log.append(("revert work", result))

    class Later(aflow.Task):
        async def execute(self, w: int) -> int:
            if w == 1:
                await second_done.wait()
                raise ValueError("run 1 fails")
            return w

    flow = lf.Flow("m").add(
        lf.Flow("r", retry=aflow.retry.Times(1)).add(Work(provides="w")), Later()
    )
    graph = aflow.compile(flow)

    async def first() -> None:
        with pytest.raises(ValueError, match="run 1 fails"):
            await aflow.run(graph)

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.lowlevel.checkpoint()
        await aflow.run(graph)
        second_done.set()
    assert log == [("work", 1), ("work", 2), ("revert work", 1)]


# --- deciders -------------------------------------------------------------------------------


def decider_flow(log: list[str], threshold: int) -> gf.Flow:
    class Measure(aflow.Task):
        async def execute(self) -> int:
            log.append("measure")
            return 7

    class Step(aflow.Task):
        async def execute(self, **kwargs: Any) -> str:
            log.append(self.name)
            return self.name

    measure = Measure(name="measure")
    alert = Step(name="alert", provides="alerted")
    escalate = Step(name="escalate", requires=["alerted"])
    report = Step(name="report")
    flow = gf.Flow("g").add(measure, alert, escalate, report)
    flow.link(measure, alert, decider=lambda history: history["measure"] > threshold)
    flow.link(measure, report)
    return flow


async def test_a_decider_that_says_no_skips_the_task_and_everything_downstream() -> None:
    log: list[str] = []
    eng = engines.load(decider_flow(log, threshold=10), engine="parallel")
    await eng.run()
    assert sorted(log) == ["measure", "report"]
    assert eng.state is aflow.RunStatus.SUCCEEDED
    states = eng.states()
    assert states["alert"] is aflow.NodeState.SKIPPED
    assert states["escalate"] is aflow.NodeState.SKIPPED
    assert states["report"] is aflow.NodeState.SUCCEEDED
    with pytest.raises(aflow.errors.NotFound):
        eng.storage.fetch("alerted")


async def test_a_decider_that_says_yes_lets_the_task_run() -> None:
    log: list[str] = []
    await engines.run(decider_flow(log, threshold=5), engine="parallel")
    assert sorted(log) == ["alert", "escalate", "measure", "report"]


async def test_a_decider_that_raises_fails_the_run() -> None:
    class Step(aflow.Task):
        async def execute(self) -> int:
            return 1

    a, b = Step(name="a"), Step(name="b")

    def broken(history: dict[str, Any]) -> bool:
        raise LookupError("bad decider")

    with pytest.raises(LookupError, match="bad decider"):
        await engines.run(gf.Flow("g").add(a, b).link(a, b, decider=broken))


async def test_a_decider_on_a_flow_sees_every_task_result_in_it() -> None:
    seen: list[dict[str, Any]] = []

    class Step(aflow.Task):
        async def execute(self) -> str:
            return self.name

    prep = uf.Flow("prep").add(Step(name="p1"), Step(name="p2"))
    last = Step(name="last")
    flow = gf.Flow("g").add(prep, last)
    flow.link(prep, last, decider=lambda history: seen.append(history) or True)
    await engines.run(flow)
    assert seen == [{"p1": "p1", "p2": "p2"}]


@pytest.mark.parametrize("retried", [False, True])
async def test_a_decider_skip_inside_a_flow_skips_what_follows_it(retried: bool) -> None:
    class A(aflow.Task):
        async def execute(self) -> int:
            return 1

    class B(aflow.Task):
        async def execute(self) -> int:
            return 2

    class Reader(aflow.Task):
        async def execute(self, b: int) -> int:
            return b

    def make() -> gf.Flow:
        a, b = A(provides="a"), B(provides="b")
        retry = aflow.retry.Times(2) if retried else None
        return gf.Flow("g", retry=retry).add(a, b).link(a, b, decider=lambda history: False)

    eng = engines.load(lf.Flow("m").add(make(), Reader(provides="r")))
    await eng.run()
    assert eng.state is aflow.RunStatus.SUCCEEDED
    assert eng.states()["B"] is aflow.NodeState.SKIPPED
    assert eng.states()["Reader"] is aflow.NodeState.SKIPPED
    assert eng.storage.fetch_all() == {"a": 1}
    assert await make() == {"a": 1}  # a flow's value is what it provided


async def test_tasks_of_a_skipped_retried_flow_show_as_skipped() -> None:
    class A(aflow.Task):
        async def execute(self) -> int:
            return 1

    class P(aflow.Task):
        async def execute(self) -> None: ...

    a = A(name="a", provides="x")
    sub = lf.Flow("r", retry=aflow.retry.Times(2)).add(P(name="p"), P(name="q"))
    eng = engines.load(gf.Flow("g").add(a, sub).link(a, sub, decider=lambda h: False))
    await eng.run()
    states = eng.states()
    assert states["r"] is states["p"] is states["q"] is aflow.NodeState.SKIPPED
    assert eng.storage.get_atom_state("p") is aflow.NodeState.SKIPPED


# --- suspend and continue -------------------------------------------------------------------


async def test_suspend_lets_the_running_task_finish_and_run_continues() -> None:
    log: list[str] = []
    engine_box: list[engines.Engine] = []

    class Step(aflow.Task):
        async def execute(self) -> str:
            log.append(self.name)
            if self.name == "s2":
                engine_box[0].suspend()
            return self.name

    flow = lf.Flow("f").add(*(Step(name=f"s{i}", provides=f"v{i}") for i in range(1, 5)))
    eng = engines.load(flow)
    engine_box.append(eng)
    await eng.run()
    assert log == ["s1", "s2"]
    assert eng.state is aflow.RunStatus.SUSPENDED
    assert eng.storage.fetch("v2") == "s2"
    assert eng.storage.get_atom_state("s3") is aflow.NodeState.PENDING
    await eng.run()
    assert log == ["s1", "s2", "s3", "s4"]  # only what was left ran
    assert eng.state is aflow.RunStatus.SUCCEEDED


async def test_suspend_from_outside_while_parallel_tasks_run() -> None:
    started = anyio.Event()
    release = anyio.Event()
    ran: list[str] = []

    class Slow(aflow.Task):
        async def execute(self) -> None:
            ran.append(self.name)
            if len(ran) == 2:  # both workers are busy
                started.set()
            await release.wait()

    flow = uf.Flow("u").add(*(Slow(name=f"t{i}") for i in range(4)))
    eng = engines.load(flow, engine="parallel", max_workers=2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(eng.run)
        await started.wait()
        eng.suspend()
        release.set()
    assert eng.state is aflow.RunStatus.SUSPENDED
    assert sorted(ran) == ["t0", "t1"]  # running tasks finished, queued ones never started
    await eng.run()
    assert sorted(ran) == ["t0", "t1", "t2", "t3"]
    assert eng.state is aflow.RunStatus.SUCCEEDED


async def test_a_failure_while_suspending_still_reverts() -> None:
    log: list[str] = []
    engine_box: list[engines.Engine] = []

    class Step(aflow.Task):
        async def execute(self) -> None:
            log.append(self.name)

        async def revert(self, result: Any) -> None:
            log.append(f"undo {self.name}")

    class SuspendThenFail(aflow.Task):
        async def execute(self) -> None:
            engine_box[0].suspend()
            raise Declined("while suspending")

    eng = engines.load(lf.Flow("f").add(Step(name="a"), SuspendThenFail(), Step(name="b")))
    engine_box.append(eng)
    with pytest.raises(Declined):
        await eng.run()
    assert log == ["a", "undo a"]
    assert eng.state is aflow.RunStatus.REVERTED


async def test_suspend_lets_a_running_task_use_its_retries() -> None:
    box: list[engines.Engine] = []
    calls: list[int] = []

    class Flaky(aflow.Task):
        async def execute(self) -> str:
            calls.append(1)
            if len(calls) == 1:
                box[0].suspend()
                raise ConnectionError("transient")
            return "ok"

    class After(aflow.Task):
        async def execute(self, v: str) -> str:
            return v

    eng = engines.load(lf.Flow("m").add(Flaky(provides="v", retries=2), After(provides="w")))
    box.append(eng)
    await eng.run()
    assert eng.state is aflow.RunStatus.SUSPENDED
    assert len(calls) == 2
    await eng.run()
    assert eng.storage.fetch("w") == "ok"


# --- the run around a flow: cancellation, timeouts, runtimes and events ----------------------


async def test_cancelling_the_caller_reverts_the_flow_and_reraises() -> None:
    log: list[str] = []
    started = anyio.Event()

    class Step(aflow.Task):
        async def execute(self) -> None:
            log.append(self.name)

        async def revert(self, result: Any) -> None:
            log.append(f"undo {self.name}")

    class Hang(aflow.Task):
        async def execute(self) -> None:
            started.set()
            await anyio.sleep_forever()

    sub = lf.Flow("sub", retry=aflow.retry.Times(3)).add(Step(name="inner"), Hang())
    eng = engines.load(lf.Flow("main").add(Step(name="outer"), sub))
    async with anyio.create_task_group() as tg:
        tg.start_soon(eng.run)
        await started.wait()
        tg.cancel_scope.cancel()
    assert log == ["outer", "inner", "undo inner", "undo outer"]
    assert eng.state is aflow.RunStatus.CANCELLED


async def test_task_options_apply_to_flow_tasks() -> None:
    attempts: list[int] = []

    class Slow(aflow.Task):
        async def execute(self) -> None:
            attempts.append(aflow.current_step().attempt)
            await anyio.Event().wait()  # never set: only the timeout ends it

    async with FakeClock() as clock:
        eng = engines.load(lf.Flow("f").add(Slow(timeout=5, retries=1)), clock=clock)
        with pytest.raises(aflow.errors.TaskTimeout):
            await eng.run()
    assert attempts == [1, 2]


async def test_a_flow_runs_in_a_runtime_and_reports_events() -> None:
    events: list[aflow.Event] = []

    class Step(aflow.Task):
        async def execute(self, n: int) -> int:
            return n + 1

    sub = lf.Flow("sub", retry=aflow.retry.Times(2)).add(Step(name="inner", provides="m"))
    flow = lf.Flow("main").add(sub, Step(name="after", rebind=["m"], provides="out"))
    async with aflow.Runtime() as rt:
        run = await rt.submit(flow.as_canvas().clone(kwargs={"n": 1}), on_event=events.append)
        assert await run.result() == {"m": 2, "out": 3}
    names = [(e.name, e.node) for e in events]
    assert ("task_succeeded", "inner") in names  # a node event from the nested run
    assert [n for n, node in names if node is None] == ["run_started", "run_succeeded"]
