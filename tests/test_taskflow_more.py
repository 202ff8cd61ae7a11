"""TaskFlow's semantics, the rest of issue 18's TaskFlow part: arguments, storage, deciders,
priority, suspending a revert, revert scope. The reference is TaskFlow 6.5 (atom.py,
storage.py, patterns/, engines/action_engine/), checked by running it."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aflow
import aflow.retry
from aflow import engines
from aflow.errors import MissingInputError, SignatureError
from aflow.patterns import graph_flow as gf
from aflow.patterns import linear_flow as lf
from aflow.patterns import unordered_flow as uf
from aflow.retry import History

S = aflow.NodeState


class Declined(Exception):
    pass


class Boom(aflow.Task):
    async def execute(self) -> None:
        raise Declined("boom")


# --- arguments: revert_requires / revert_rebind -------------------------------------------


class Reserve(aflow.Task):
    """execute reads ``order``; revert reads ``order`` and whatever ``**kwargs`` is given."""

    log: list[tuple[str, Any]]

    async def execute(self, order: str) -> str:
        type(self).log.append(("do", order))
        return f"r-{order}"

    async def revert(self, order: str, result: Any, **kwargs: Any) -> None:
        kwargs.pop("flow_failures", None)
        type(self).log.append(("undo", (order, result, kwargs)))


@pytest.fixture
def reserve_log() -> list[tuple[str, Any]]:
    Reserve.log = []
    return Reserve.log


async def test_revert_requires_gives_the_revert_a_name_execute_does_not_read(
    reserve_log: list[tuple[str, Any]],
) -> None:
    """TaskFlow: revert_requires=["ticket"] -> revert(**kwargs) gets ticket; the task
    requires it (atom.requires is execute's names plus the revert's)."""
    task = Reserve(revert_requires=["ticket"])
    assert task.requires == {"order", "ticket"}
    with pytest.raises(Declined):
        await engines.run(lf.Flow("f").add(task, Boom()), store={"order": "o1", "ticket": 7})
    assert reserve_log == [("do", "o1"), ("undo", ("o1", "r-o1", {"ticket": 7}))]


async def test_a_name_only_the_revert_reads_is_checked_before_anything_runs(
    reserve_log: list[tuple[str, Any]],
) -> None:
    with pytest.raises(MissingInputError, match="'ticket'") as info:
        engines.load(lf.Flow("f").add(Reserve(revert_requires="ticket")), store={"order": "o"})
    assert info.value.task == "Reserve"
    assert reserve_log == []


async def test_revert_rebind_reads_a_revert_parameter_under_another_name(
    reserve_log: list[tuple[str, Any]],
) -> None:
    task = Reserve(revert_rebind={"order": "refund_order"})
    assert task.requires == {"order", "refund_order"}
    with pytest.raises(Declined):
        await engines.run(
            lf.Flow("f").add(task, Boom()), store={"order": "o1", "refund_order": "o2"}
        )
    assert reserve_log == [("do", "o1"), ("undo", ("o2", "r-o1", {}))]


async def test_without_revert_rebind_a_revert_parameter_reads_what_execute_reads(
    reserve_log: list[tuple[str, Any]],
) -> None:
    """TaskFlow falls back to ``rebind``: the revert's ``order`` reads ``o`` too."""
    task = Reserve(rebind={"order": "o"}, revert_requires=["ticket"])
    assert task.requires == {"o", "ticket"}
    with pytest.raises(Declined):
        await engines.run(lf.Flow("f").add(task, Boom()), store={"o": "o9", "ticket": 1})
    assert reserve_log == [("do", "o9"), ("undo", ("o9", "r-o9", {"ticket": 1}))]


async def test_with_its_own_mapping_the_revert_gets_only_what_it_reads() -> None:
    """TaskFlow: revert(self, result, **kwargs) with revert_requires=["c"] gets c (and
    flow_failures), not execute's arguments."""
    seen: list[dict[str, Any]] = []

    class Wide(aflow.Task):
        def execute(self, a: int, b: int = 2) -> int:  # sync: both run in a thread
            return a

        def revert(self, result: Any, **kwargs: Any) -> None:
            seen.append(kwargs)

    with pytest.raises(Declined):
        await engines.run(
            lf.Flow("f").add(Wide(revert_requires=["c"]), Boom()), store={"a": 1, "b": 3, "c": 4}
        )
    assert len(seen) == 1
    assert set(seen[0]) == {"c", "flow_failures"}
    assert seen[0]["c"] == 4


async def test_a_revert_reading_a_name_a_sibling_provides_runs_after_it_in_a_graph_flow() -> None:
    """TaskFlow's graph flow links on ``requires``, which holds the revert's names too."""
    log: list[str] = []

    class Make(aflow.Task):
        default_provides = "ticket"

        async def execute(self) -> int:
            log.append("make")
            return 5

    class Use(aflow.Task):
        async def execute(self) -> None:
            log.append("use")

        async def revert(self, result: Any, **kwargs: Any) -> None:
            log.append(f"undo use {kwargs['ticket']}")

    flow = gf.Flow("g").add(Use(revert_requires="ticket"), Make(), Boom())
    flow.link(flow_item(flow, "Use"), flow_item(flow, "Boom"))
    with pytest.raises(Declined):
        await engines.run(flow)
    assert log == ["make", "use", "undo use 5"]


def flow_item(flow: aflow.patterns.Flow, name: str) -> Any:
    return next(item for item in flow if getattr(item, "name", None) == name)


def test_revert_arguments_need_a_revert() -> None:
    class NoRevert(aflow.Task):
        async def execute(self, a: int) -> None: ...

    with pytest.raises(SignatureError, match="NoRevert has no revert") as info:
        NoRevert(revert_requires=["x"])
    assert info.value.task == "NoRevert"
    assert info.value.argument == "revert_requires"
    with pytest.raises(SignatureError, match="has no revert") as info:
        NoRevert(revert_rebind={"a": "x"})
    assert info.value.argument == "revert_rebind"


def test_revert_rebind_of_a_parameter_the_revert_lacks_is_refused() -> None:
    class Narrow(aflow.Task):
        async def execute(self, a: int) -> None: ...

        async def revert(self, a: int, result: Any) -> None: ...

    with pytest.raises(SignatureError, match="'zz', which is not a parameter of revert") as info:
        Narrow(revert_rebind={"zz": "x"})
    assert info.value.task == "Narrow"
    assert info.value.argument == "zz"
    with pytest.raises(SignatureError, match="revert has no such parameter nor"):
        Narrow(revert_requires=["other"])


# --- arguments: inject is keyed by the name read ------------------------------------------


class Echo(aflow.Task):
    async def execute(self, a: Any) -> Any:
        return a


async def test_inject_is_keyed_by_the_name_read_after_rebind() -> None:
    """TaskFlow: rebind={"a": "x"}, inject={"x": 5} -> a == 5 and nothing is required."""
    task = Echo(rebind={"a": "x"}, inject={"x": 5}, provides="out")
    assert task.requires == frozenset()
    assert (await engines.run(lf.Flow("f").add(task)))["out"] == 5


def test_inject_keyed_by_a_rebound_parameter_name_is_refused_naming_the_name_read() -> None:
    """TaskFlow ignores such a key silently (a is still read from x); aflow says so."""
    with pytest.raises(SignatureError, match=r"rebind makes execute read it as 'x'") as info:
        Echo(rebind={"a": "x"}, inject={"a": 5})
    assert info.value.task == "Echo"
    assert info.value.argument == "a"
    assert "inject={'x': ...}" in str(info.value)


async def test_inject_feeds_every_parameter_reading_the_name() -> None:
    class Two(aflow.Task):
        async def execute(self, a: int, b: int) -> int:
            return a * 10 + b

    task = Two(rebind={"a": "n", "b": "n"}, inject={"n": 3}, provides="out")
    assert (await engines.run(lf.Flow("f").add(task)))["out"] == 33


async def test_inject_feeds_the_revert_by_the_name_it_reads(
    reserve_log: list[tuple[str, Any]],
) -> None:
    task = Reserve(revert_rebind={"order": "z"}, inject={"z": "from-inject"})
    assert task.requires == {"order"}
    with pytest.raises(Declined):
        await engines.run(lf.Flow("f").add(task, Boom()), store={"order": "o1"})
    assert reserve_log == [("do", "o1"), ("undo", ("from-inject", "r-o1", {}))]


def test_inject_of_a_name_neither_execute_nor_revert_reads_is_refused() -> None:
    with pytest.raises(SignatureError, match="'nope', which neither execute nor revert"):
        Reserve(revert_requires=["t"], inject={"nope": 1})


# --- arguments: a flow's requires and provides ----------------------------------------------


class Kw(aflow.Task):
    def execute(self, **kwargs: Any) -> int:
        return 1


class Opt(aflow.Task):
    def execute(self, x: Any, y: int = 1) -> int:
        return 1


class RevertReads(aflow.retry.Retry):
    def on_failure(self, history: History, **requires: Any) -> aflow.retry.Decision:
        return aflow.retry.RETRY

    def revert(self, history: History, w: Any, **requires: Any) -> None: ...


def kw(name: str, requires: tuple[str, ...] = (), provides: Any = None) -> Kw:
    return Kw(name, requires=list(requires), provides=provides)


#: Each flow with the requires and provides TaskFlow 6.5 gives the same flow (measured).
FLOWS = [
    pytest.param(
        lambda: lf.Flow("l").add(kw("a", ("x",), "y"), kw("b", ("y", "z"), "w")),
        {"x", "z"},
        {"w", "y"},
        id="linear",
    ),
    pytest.param(
        lambda: lf.Flow("l").add(kw("b", ("y", "z"), "w"), kw("a", ("x",), "y")),
        {"x", "y", "z"},
        {"w", "y"},
        id="linear-provided-too-late",
    ),
    pytest.param(
        lambda: gf.Flow("g").add(kw("b", ("y", "z"), "w"), kw("a", ("x",), "y")),
        {"x", "z"},
        {"w", "y"},
        id="graph",
    ),
    pytest.param(
        lambda: uf.Flow(
            "u", retry=aflow.retry.ParameterizedForEach(provides="p", rebind=["vals"])
        ).add(kw("a", ("p", "q"), "r")),
        {"q", "vals"},
        {"p", "r"},
        id="unordered-with-retry",
    ),
    pytest.param(lambda: lf.Flow("o").add(Opt("o", provides="y")), {"x"}, {"y"}, id="optional"),
    pytest.param(
        lambda: lf.Flow("n").add(
            uf.Flow("in").add(kw("a", ("x",), "y"), kw("b", (), ("m", "n"))),
            kw("c", ("m", "y", "k")),
        ),
        {"k", "x"},
        {"m", "n", "y"},
        id="nested",
    ),
    pytest.param(
        lambda: lf.Flow("rr", retry=RevertReads(provides="att")).add(kw("a", ("att",))),
        {"w"},
        {"att"},
        id="retry-revert-reads",
    ),
]


@pytest.mark.parametrize(("make", "requires", "provides"), FLOWS)
def test_a_flow_requires_and_provides_as_taskflow_computes_them(
    make: Any, requires: set[str], provides: set[str]
) -> None:
    flow = make()
    assert flow.requires == requires
    assert flow.provides == provides
    assert isinstance(flow.requires, frozenset)


def test_a_flow_requires_what_only_a_revert_reads() -> None:
    flow = lf.Flow("f").add(Reserve(revert_rebind={"order": "z"}))
    assert flow.requires == {"order", "z"}


def test_a_retry_requires_what_its_execute_and_revert_read() -> None:
    assert RevertReads().requires == {"w"}
    assert aflow.retry.ParameterizedForEach(rebind=["vals"]).requires == {"vals"}


def test_what_a_flow_requires_is_what_its_engine_needs_in_the_store() -> None:
    flow = lf.Flow("l").add(kw("a", ("x",), "y"), kw("b", ("y", "z"), "w"))
    with pytest.raises(MissingInputError):
        engines.load(flow, store={"x": 1})
    engines.load(flow, store=dict.fromkeys(flow.requires, 1))


# --- storage: revert results and failures ---------------------------------------------------


class Undo(aflow.Task):
    """Returns its name; its revert returns ``undone <name>``."""

    async def execute(self) -> str:
        return self.name

    async def revert(self, result: Any) -> str:
        return f"undone {result}"


class BadUndo(aflow.Task):
    async def execute(self) -> None: ...

    async def revert(self, result: Any) -> None:
        raise KeyError("cannot undo")


async def test_get_revert_result_is_what_the_revert_returned() -> None:
    eng = engines.load(lf.Flow("f").add(Undo("a"), Boom("boom")))
    with pytest.raises(Declined):
        await eng.run()
    assert eng.storage.get_revert_result("a") == "undone a"
    failures = eng.storage.get_execute_failures()
    assert list(failures) == ["boom"]
    assert isinstance(failures["boom"], aflow.Failure)
    assert isinstance(failures["boom"].exception, Declined)
    assert eng.storage.get_revert_failures() == {}


async def test_get_revert_result_of_a_failed_revert_is_its_failure() -> None:
    """TaskFlow: the revert's Failure; get_revert_failures() lists it by name."""
    eng = engines.load(lf.Flow("f").add(Undo("a"), BadUndo("bad"), Boom("boom")))
    with pytest.raises(aflow.errors.CompensationFailed):
        await eng.run()
    got = eng.storage.get_revert_result("bad")
    assert isinstance(got, aflow.Failure)
    assert isinstance(got.exception, KeyError)
    reverts = eng.storage.get_revert_failures()
    assert list(reverts) == ["bad"]
    assert reverts["bad"].task == "bad"
    assert isinstance(reverts["bad"].exception, KeyError)
    assert list(eng.storage.get_execute_failures()) == ["boom"]


async def test_get_revert_result_of_what_was_not_reverted_raises_not_found() -> None:
    eng = engines.load(lf.Flow("f").add(Undo("a"), BadUndo("bad"), Boom("boom")))
    with pytest.raises(aflow.errors.NotFound, match="no task named 'nope' in flow 'f'"):
        eng.storage.get_revert_result("nope")
    with pytest.raises(aflow.errors.NotFound, match="'a': it did not run"):
        eng.storage.get_revert_result("a")
    with pytest.raises(aflow.errors.CompensationFailed):
        await eng.run()
    with pytest.raises(aflow.errors.NotFound, match="'a': it is SUCCEEDED, not reverted"):
        eng.storage.get_revert_result("a")  # kept: the failed revert stopped the unwinding
    with pytest.raises(aflow.errors.NotFound, match=r"FAILED, not reverted \(it has no revert\)"):
        eng.storage.get_revert_result("boom")


async def test_a_revert_returning_none_gives_none() -> None:
    log: list[tuple[str, Any]] = []
    Reserve.log = log
    eng = engines.load(lf.Flow("f").add(Reserve(), Boom()), store={"order": "o"})
    with pytest.raises(Declined):
        await eng.run()
    assert eng.storage.get_revert_result("Reserve") is None


async def test_failures_start_empty_and_stay_so_after_a_success() -> None:
    eng = engines.load(lf.Flow("f").add(Undo("a")))
    assert eng.storage.get_execute_failures() == {}
    await eng.run()
    assert eng.storage.get_execute_failures() == {}
    assert eng.storage.get_revert_failures() == {}


async def test_tasks_cancelled_by_a_failure_are_not_execute_failures() -> None:
    started = anyio.Event()

    class Waits(aflow.Task):
        async def execute(self) -> None:
            started.set()
            await anyio.sleep_forever()

    class FailsOnceStarted(aflow.Task):
        async def execute(self) -> None:
            await started.wait()
            raise Declined("late")

    eng = engines.load(uf.Flow("u").add(Waits(), FailsOnceStarted()), engine="parallel")
    with pytest.raises(Declined):
        await eng.run()
    assert eng.states()["Waits"] is S.CANCELLED
    assert list(eng.storage.get_execute_failures()) == ["FailsOnceStarted"]


async def test_a_retried_task_keeps_its_earlier_failure_as_in_taskflow() -> None:
    """TaskFlow 6.5: after Times(2) succeeds on the second attempt,
    get_execute_failures() still holds the first attempt's failure of that task."""
    calls: list[int] = []

    class Flaky(aflow.Task):
        async def execute(self) -> int:
            calls.append(1)
            if len(calls) == 1:
                raise Declined("first")
            return len(calls)

        async def revert(self, result: Any) -> str:
            return "flaky undone"

    flow = lf.Flow("f").add(
        Undo("x"),
        lf.Flow("sub", retry=aflow.retry.Times(2)).add(Undo("a"), Flaky("flaky")),
        Boom("boom"),
    )
    eng = engines.load(flow)
    with pytest.raises(Declined, match="boom"):
        await eng.run()
    failures = eng.storage.get_execute_failures()
    assert set(failures) == {"flaky", "boom"}
    assert str(failures["flaky"].exception) == "first"
    assert eng.storage.get_revert_result("flaky") == "flaky undone"
    assert eng.storage.get_revert_result("a") == "undone a"
    assert eng.storage.get_revert_result("x") == "undone x"
    assert eng.storage.get_revert_result("sub") is None


async def test_a_failed_revert_in_a_retried_flow_is_listed_once_by_its_task() -> None:
    flow = lf.Flow("f").add(
        lf.Flow("sub", retry=aflow.retry.Times(2)).add(Undo("a"), BadUndo("bad"), Boom("boom"))
    )
    eng = engines.load(flow)
    with pytest.raises(aflow.errors.CompensationFailed):
        await eng.run()
    assert list(eng.storage.get_revert_failures()) == ["bad"]
    assert list(eng.storage.get_execute_failures()) == ["boom"]


async def test_a_controller_that_raised_is_listed_under_its_flow() -> None:
    flow = lf.Flow("f").add(
        lf.Flow("sub", retry=aflow.retry.ForEach([], provides="v")).add(Echo(rebind=["v"]))
    )
    eng = engines.load(flow)
    with pytest.raises(aflow.errors.NotFound):
        await eng.run()
    failures = eng.storage.get_execute_failures()
    assert list(failures) == ["sub"]
    assert isinstance(failures["sub"].exception, aflow.errors.NotFound)


# --- deciders -------------------------------------------------------------------------------


class Named(aflow.Task):
    """Logs its run; returns its name upper-cased."""

    log: list[str] = []

    async def execute(self, **kwargs: Any) -> str:
        await anyio.lowlevel.checkpoint()
        type(self).log.append(self.name)
        return self.name.upper()


@pytest.fixture
def ran() -> list[str]:
    Named.log = []
    return Named.log


def recorder(seen: list[Any], answer: bool) -> Any:
    def decider(history: dict[str, Any]) -> bool:
        seen.append(dict(history))
        return answer

    return decider


async def test_every_decider_into_a_task_sees_every_decider_linked_predecessor(
    ran: list[str],
) -> None:
    """TaskFlow 6.5: link(a, c, d1), link(b, c, d2): both see {a, b}; a plain link's
    source is not in the history (measured)."""
    seen: list[Any] = []
    a, b, p, c = Named("a"), Named("b"), Named("p"), Named("c")
    flow = gf.Flow("g").add(a, b, p, c)
    flow.link(a, c, decider=recorder(seen, True)).link(b, c, decider=recorder(seen, True))
    flow.link(p, c)
    await engines.run(flow, engine="parallel")
    assert seen == [{"a": "A", "b": "B"}, {"a": "A", "b": "B"}]
    assert ran[-1] == "c"


async def test_a_decider_is_asked_once_every_predecessor_has_ended(ran: list[str]) -> None:
    """TaskFlow decides when the target is about to run: after a slow plain predecessor."""
    gate = anyio.Event()
    seen: list[str] = []

    class Slow(aflow.Task):
        async def execute(self) -> None:
            await gate.wait()
            seen.append("slow done")

    def decider(history: dict[str, Any]) -> bool:
        seen.append("decided")
        return True

    a, slow, c = Named("a"), Slow(), Named("c")
    flow = gf.Flow("g").add(a, slow, c).link(a, c, decider=decider).link(slow, c)
    eng = engines.load(flow, engine="parallel")
    async with anyio.create_task_group() as tg:
        tg.start_soon(eng.run)
        await anyio.wait_all_tasks_blocked()
        assert seen == []  # a ended long ago; the decider waits for slow
        gate.set()
    assert seen == ["slow done", "decided"]


async def test_one_decider_saying_no_skips_its_target(ran: list[str]) -> None:
    seen: list[Any] = []
    a, b, c = Named("a"), Named("b"), Named("c")
    flow = gf.Flow("g").add(a, b, c)
    flow.link(a, c, decider=recorder(seen, False)).link(b, c, decider=recorder(seen, True))
    eng = engines.load(flow)
    await eng.run()
    assert eng.states() == {"a": S.SUCCEEDED, "b": S.SUCCEEDED, "c": S.SKIPPED}


def depth_flows(depth: str) -> dict[str, Any]:
    """TaskFlow 6.5's shapes A, C, D and G of a decider saying no at ``depth``."""
    a, b, c, x = Named("a"), Named("b"), Named("c"), Named("x")
    shape_a = gf.Flow("A").add(a, b, c, x)
    shape_a.link(a, b, decider=lambda h: False, decider_depth=depth).link(b, c).link(c, x)
    a, b, e = Named("a"), Named("b"), Named("e")
    inner = gf.Flow("g").add(a, b).link(a, b, decider=lambda h: False, decider_depth=depth)
    shape_c = lf.Flow("C").add(inner, e)
    a, t1, t2, c = Named("a"), Named("t1"), Named("t2"), Named("c")
    sub = lf.Flow("sub").add(t1, t2)
    shape_d = gf.Flow("D").add(a, sub, c)
    shape_d.link(a, sub, decider=lambda h: False, decider_depth=depth).link(sub, c)
    a, b, s1, s2 = Named("a"), Named("b"), Named("s1"), Named("s2")
    nested = lf.Flow("s").add(s1, s2)
    shape_g = gf.Flow("G").add(a, b, nested)
    shape_g.link(a, b, decider=lambda h: False, decider_depth=depth).link(b, nested)
    return {"A": shape_a, "C": shape_c, "D": shape_d, "G": shape_g}


#: What TaskFlow 6.5 ignores (IGNORE) for each depth and shape, measured; the rest ran.
DEPTHS = {
    "ALL": {"A": {"b", "c", "x"}, "C": {"b", "e"}, "D": {"t1", "t2", "c"}, "G": {"b", "s1", "s2"}},
    "FLOW": {"A": {"b", "c", "x"}, "C": {"b"}, "D": {"t1", "t2"}, "G": {"b"}},
    "NEIGHBORS": {"A": {"b", "c"}, "C": {"b"}, "D": {"t1", "t2"}, "G": {"b"}},
    "ATOM": {"A": {"b"}, "C": {"b"}, "D": {"t1"}, "G": {"b"}},
}


@pytest.mark.parametrize("depth", list(DEPTHS))
@pytest.mark.parametrize("shape", ["A", "C", "D", "G"])
async def test_decider_depth_skips_what_taskflow_ignores(
    depth: str, shape: str, ran: list[str]
) -> None:
    eng = engines.load(depth_flows(depth)[shape])
    await eng.run()
    assert eng.state is aflow.RunStatus.SUCCEEDED
    skipped = {name for name, state in eng.states().items() if state is S.SKIPPED}
    assert skipped == DEPTHS[depth][shape]
    assert set(ran) == set(eng.states()) - skipped


async def test_decider_depth_is_an_enum_or_its_name_in_any_case(ran: list[str]) -> None:
    from aflow.patterns import Depth

    a, b, c = Named("a"), Named("b"), Named("c")
    flow = gf.Flow("g").add(a, b, c).link(b, c)
    flow.link(a, b, decider=lambda h: False, decider_depth=Depth.ATOM)
    assert (await engines.run(flow)) is not None
    assert ran == ["a", "c"]
    assert Depth.parse("neighbors") is Depth.NEIGHBORS is gf.Depth.NEIGHBORS


async def test_the_widest_depth_of_the_deciders_saying_no_wins(ran: list[str]) -> None:
    """TaskFlow: ATOM and FLOW both say no to c -> FLOW (x after c is ignored too)."""
    a, b, c, x = Named("a"), Named("b"), Named("c"), Named("x")
    flow = gf.Flow("g").add(a, b, c, x).link(c, x)
    flow.link(a, c, decider=lambda h: False, decider_depth="ATOM")
    flow.link(b, c, decider=lambda h: False, decider_depth="FLOW")
    eng = engines.load(flow)
    await eng.run()
    assert ran == ["a", "b"]
    assert eng.states()["x"] is S.SKIPPED


async def test_a_decider_whose_source_was_skipped_has_no_say(ran: list[str]) -> None:
    """TaskFlow: b is ignored (ATOM), so the decider on b -> c is not asked and c runs."""
    asked: list[Any] = []
    a, b, c, d = Named("a"), Named("b"), Named("c"), Named("d")
    flow = gf.Flow("g").add(a, b, c, d).link(c, d)
    flow.link(a, b, decider=lambda h: False, decider_depth="ATOM")
    flow.link(b, c, decider=recorder(asked, False))
    eng = engines.load(flow)
    await eng.run()
    assert asked == []
    assert ran == ["a", "c", "d"]


async def test_a_narrow_decider_in_a_retried_flow_lets_what_follows_it_run(
    ran: list[str],
) -> None:
    a, b = Named("a"), Named("b")
    inner = gf.Flow("g", retry=aflow.retry.Times(2)).add(a, b)
    inner.link(a, b, decider=lambda h: False, decider_depth="FLOW")
    eng = engines.load(lf.Flow("m").add(inner, Named("after")))
    await eng.run()
    assert ran == ["a", "after"]
    assert eng.states()["b"] is S.SKIPPED


def test_a_task_reading_from_what_a_narrow_decider_skips_is_refused_at_load() -> None:
    class Make(aflow.Task):
        default_provides = "x"

        async def execute(self) -> int:
            return 1

    class Read(aflow.Task):
        async def execute(self, x: int) -> int:
            return x

    a, make, read = Named("a"), Make(), Read()
    flow = gf.Flow("g").add(a, make, read)
    flow.link(a, make, decider=lambda h: False, decider_depth="ATOM")
    with pytest.raises(aflow.errors.DefinitionError, match="'Read' reads 'x' from 'Make'") as info:
        engines.load(flow)
    assert "decider_depth='ATOM'" in str(info.value)
    flow = gf.Flow("g").add(a, make, read)
    flow.link(a, make, decider=lambda h: False, decider_depth="NEIGHBORS")
    engines.load(flow)  # NEIGHBORS skips Read with Make


def test_bad_decider_depths_are_refused_naming_the_link() -> None:
    a, b = Named("a"), Named("b")
    flow = gf.Flow("g").add(a, b)
    with pytest.raises(aflow.errors.DefinitionError, match=r"link\('a', 'b'\).*got 'DEEP'"):
        flow.link(a, b, decider=lambda h: True, decider_depth="DEEP")
    with pytest.raises(ValueError, match="has a decider_depth but no decider"):
        flow.link(a, b, decider_depth="ALL")
    assert list(flow.iter_links()) == []


# --- add(..., resolve_requires=False) -------------------------------------------------------


class Give(aflow.Task):
    default_provides = "x"

    async def execute(self) -> int:
        return 1


class Take(aflow.Task):
    default_provides = "got"

    async def execute(self, x: int) -> int:
        return x


async def test_resolve_requires_false_reads_the_store_not_an_earlier_provider() -> None:
    """TaskFlow: no link to the provider added before; the flow requires x; the store's x."""
    flow = gf.Flow("g")
    flow.add(Give())
    flow.add(Take(), resolve_requires=False)
    assert flow.requires == {"x"}
    assert list(flow.iter_links()) == []
    values = await engines.run(flow, store={"x": 100})
    assert values["got"] == 100
    with pytest.raises(MissingInputError, match="'x'"):
        engines.load(flow)


async def test_resolve_requires_false_is_linked_by_a_provider_added_later() -> None:
    """TaskFlow's resolve_existing: a provider added by a later add() links to it."""
    flow = gf.Flow("g")
    flow.add(Take(), resolve_requires=False)
    flow.add(Give())
    assert flow.requires == frozenset()
    assert (await engines.run(flow))["got"] == 1


async def test_resolve_requires_false_in_one_add_call_links_nothing_in_it() -> None:
    flow = gf.Flow("g").add(Take(), Give(), resolve_requires=False)
    assert flow.requires == {"x"}
    assert (await engines.run(flow, store={"x": 7}))["got"] == 7


async def test_resolve_requires_false_reads_a_provider_it_is_linked_to() -> None:
    give, take = Give(), Take()
    flow = gf.Flow("g").add(give)
    flow.add(take, resolve_requires=False)
    flow.link(give, take)
    assert flow.requires == frozenset()
    assert (await engines.run(flow, store={"x": 100}))["got"] == 1


# --- scheduling: priority -------------------------------------------------------------------


class Ranked(aflow.Task):
    """Logs its start, lets the loop run, then logs its end; its revert logs too."""

    log: list[str] = []

    async def execute(self) -> None:
        type(self).log.append(self.name)
        await anyio.lowlevel.checkpoint()

    async def revert(self, result: Any) -> None:
        type(self).log.append(f"undo {self.name}")
        await anyio.lowlevel.checkpoint()


@pytest.fixture
def ranked() -> list[str]:
    Ranked.log = []
    return Ranked.log


def six() -> list[Ranked]:
    return [
        Ranked("p1", priority=1),
        Ranked("p5", priority=5),
        Ranked("p3", priority=3),
        Ranked("p0"),
        Ranked("n1", priority=-1),
        Ranked("p3b", priority=3),
    ]


@pytest.mark.parametrize(
    ("engine", "workers"),
    [("serial", None), ("parallel", 1), ("parallel", 2)],
    ids=["serial", "parallel-1", "parallel-2"],
)
async def test_priority_orders_ready_tasks_as_taskflow(
    engine: Any, workers: int | None, ranked: list[str]
) -> None:
    """TaskFlow 6.5's serial engine: p5, p3, p3b, p1, p0, n1 (stable, highest first)."""
    await engines.run(uf.Flow("u").add(*six()), engine=engine, max_workers=workers)
    assert ranked == ["p5", "p3", "p3b", "p1", "p0", "n1"]


async def test_reverts_that_are_ready_together_go_by_priority(ranked: list[str]) -> None:
    """TaskFlow 6.5: root, p5, p3, p1, then undo p5, p3, p1, root."""
    flow = lf.Flow("l").add(
        Ranked("root"),
        uf.Flow("u").add(
            Ranked("p1", priority=1), Ranked("p5", priority=5), Ranked("p3", priority=3)
        ),
        Boom("boom"),
    )
    with pytest.raises(Declined):
        await engines.run(flow)
    assert ranked == ["root", "p5", "p3", "p1", "undo p5", "undo p3", "undo p1", "undo root"]


async def test_priority_set_on_the_class_or_the_instance_counts(ranked: list[str]) -> None:
    class Urgent(Ranked):
        priority = 10

    late = Ranked("late")
    late.priority = 20  # as TaskFlow code does, after construction
    await engines.run(uf.Flow("u").add(Ranked("plain"), Urgent("urgent"), late))
    assert ranked == ["late", "urgent", "plain"]


async def test_function_tasks_take_a_priority_too() -> None:
    order: list[str] = []

    @aflow.task
    async def step(name: str) -> None:
        order.append(name)

    @aflow.task(priority=2)
    async def urgent(name: str) -> None:
        order.append(name)

    await aflow.run(
        aflow.group(step.s("a"), urgent.s("b"), step.s("c").set(priority=1)), max_concurrency=1
    )
    assert order == ["b", "c", "a"]


def test_a_priority_must_be_a_number() -> None:
    with pytest.raises(SignatureError, match="must be a number, got 'high'") as info:
        Ranked("r", priority="high")
    assert info.value.task == "r"
    assert info.value.argument == "priority"
    late = Ranked("late")
    late.priority = None  # type: ignore[assignment]
    with pytest.raises(SignatureError, match="must be a number, got None"):
        engines.load(lf.Flow("f").add(late))


# --- suspend while reverting ------------------------------------------------------------------


class Undoes(aflow.Task):
    """Logs; its revert logs and, for the name in ``suspend_at``, suspends the engine."""

    log: list[str] = []
    engine: list[engines.Engine] = []
    suspend_at: set[str] = set()

    async def execute(self) -> None:
        type(self).log.append(self.name)

    async def revert(self, result: Any) -> None:
        type(self).log.append(f"undo {self.name}")
        if self.name in type(self).suspend_at:
            type(self).suspend_at.discard(self.name)
            type(self).engine[0].suspend()
        await anyio.lowlevel.checkpoint()


@pytest.fixture
def undoes() -> list[str]:
    Undoes.log, Undoes.engine, Undoes.suspend_at = [], [], set()
    return Undoes.log


def loaded(flow: Any, suspend_at: set[str]) -> engines.Engine:
    eng = engines.load(flow)
    Undoes.engine.append(eng)
    Undoes.suspend_at = set(suspend_at)
    return eng


async def test_suspend_while_reverting_stops_after_the_running_revert(undoes: list[str]) -> None:
    """TaskFlow 6.5: run() returns SUSPENDED after 'undo b'; the next run() reverts a,
    raises the task's error and ends REVERTED."""
    flow = lf.Flow("l").add(Undoes("a"), Undoes("b"), Undoes("c"), Boom("boom"))
    eng = loaded(flow, {"b"})
    await eng.run()
    assert undoes == ["a", "b", "c", "undo c", "undo b"]
    assert eng.state is aflow.RunStatus.SUSPENDED
    assert eng.states()["a"] is S.SUCCEEDED
    assert eng.states()["b"] is S.REVERTED
    undoes.clear()
    with pytest.raises(Declined, match="boom") as info:
        await eng.run()
    assert undoes == ["undo a"]
    assert eng.state is aflow.RunStatus.REVERTED
    assert set(eng.states().values()) == {S.REVERTED, S.FAILED}
    assert any("reverted c, b, a" in note for note in info.value.__notes__)


async def test_suspend_from_outside_lets_every_running_revert_finish(undoes: list[str]) -> None:
    gate = anyio.Event()
    started: list[str] = []

    class Slow(aflow.Task):
        async def execute(self) -> None: ...

        async def revert(self, result: Any) -> None:
            started.append(self.name)
            await gate.wait()
            undoes.append(f"undo {self.name}")

    flow = lf.Flow("l").add(Undoes("root"), uf.Flow("u").add(Slow("s1"), Slow("s2")), Boom())
    eng = engines.load(flow, engine="parallel")
    async with anyio.create_task_group() as tg:
        tg.start_soon(eng.run)
        await anyio.wait_all_tasks_blocked()
        assert sorted(started) == ["s1", "s2"]
        eng.suspend()
        gate.set()
    assert eng.state is aflow.RunStatus.SUSPENDED
    assert sorted(undoes[1:]) == ["undo s1", "undo s2"]
    assert eng.states()["root"] is S.SUCCEEDED
    with pytest.raises(Declined):
        await eng.run()
    assert undoes[-1] == "undo root"
    assert eng.state is aflow.RunStatus.REVERTED


async def test_a_suspend_with_nothing_left_to_revert_ends_the_run(undoes: list[str]) -> None:
    eng = loaded(lf.Flow("l").add(Undoes("a"), Boom()), {"a"})
    with pytest.raises(Declined):
        await eng.run()
    assert eng.state is aflow.RunStatus.REVERTED


async def test_a_revert_failing_after_a_suspend_is_reported_when_the_run_goes_on(
    undoes: list[str],
) -> None:
    flow = lf.Flow("l").add(BadUndo("bad"), Undoes("a"), Undoes("b"), Boom("boom"))
    eng = loaded(flow, {"b"})
    await eng.run()
    assert eng.state is aflow.RunStatus.SUSPENDED
    with pytest.raises(aflow.errors.CompensationFailed):
        await eng.run()
    assert eng.state is aflow.RunStatus.FAILED
    assert list(eng.storage.get_revert_failures()) == ["bad"]
    assert eng.states()["a"] is S.REVERTED


async def test_an_engine_suspended_while_reverting_can_be_reset(undoes: list[str]) -> None:
    eng = loaded(lf.Flow("l").add(Undoes("a"), Undoes("b"), Boom()), {"b"})
    await eng.run()
    assert eng.state is aflow.RunStatus.SUSPENDED
    eng.reset()
    assert eng.state is aflow.RunStatus.PENDING


async def test_a_cancelled_caller_is_unwound_to_the_end_even_if_suspended(
    undoes: list[str],
) -> None:
    """Cancelling the task awaiting run() unwinds the run; a suspend meanwhile does not
    leave it half undone (there is no caller left to run it again)."""
    blocked = anyio.Event()

    class Waits(aflow.Task):
        async def execute(self) -> None:
            blocked.set()
            await anyio.sleep_forever()

    eng = loaded(lf.Flow("l").add(Undoes("a"), Undoes("b"), Waits()), {"b"})
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(eng.run)
            await blocked.wait()
            scope.cancel()
    assert undoes == ["a", "b", "undo b", "undo a"]
    assert eng.state is aflow.RunStatus.CANCELLED


# --- revert scope: defer_reverts ------------------------------------------------------------


class Fails(aflow.Task):
    """Logs, then raises Declined; its revert logs."""

    async def execute(self) -> None:
        Undoes.log.append(self.name)
        raise Declined(f"fail {self.name}")

    async def revert(self, result: Any) -> None:
        Undoes.log.append(f"undo {self.name}")


def scope_shapes() -> dict[str, Any]:
    """TaskFlow 6.5's shapes (Times(2) unless said otherwise), built afresh."""

    def sub(retry: Any = None) -> Any:
        retry = retry if retry is not None else aflow.retry.Times(2)
        return lf.Flow("sub", retry=retry).add(Undoes("B"), Fails("F"))

    z_after = gf.Flow("o")
    inner = lf.Flow("sub", retry=aflow.retry.Times(1)).add(Fails("F"))
    z_after.add(inner, Undoes("X"), Undoes("Z")).link(inner, flow_item(z_after, "Z"))
    return {
        "linear": lf.Flow("o").add(Undoes("A"), sub(), Undoes("C")),
        "unordered": uf.Flow("o").add(Undoes("A"), sub()),
        "nested-retry": lf.Flow("o").add(
            Undoes("A"), lf.Flow("mid", retry=aflow.retry.Times(2)).add(Undoes("M"), sub())
        ),
        "nested-always-revert": lf.Flow("o").add(
            Undoes("A"), lf.Flow("mid", retry=aflow.retry.AlwaysRevert()).add(Undoes("M"), sub())
        ),
        "revert-all": lf.Flow("o").add(
            Undoes("A"), sub(aflow.retry.Times(2, revert_all=True)), Undoes("C")
        ),
        "other-branch-goes-on": uf.Flow("o").add(
            lf.Flow("sub", retry=aflow.retry.Times(1)).add(Fails("F")),
            lf.Flow("xy").add(Undoes("X"), Undoes("Y")),
        ),
        "dependent-skipped": z_after,
    }


#: What TaskFlow 6.5 leaves done (SUCCESS) with defer_reverts=False; with True, nothing.
KEPT_WITHOUT_DEFER = {
    "linear": {"A"},
    "unordered": {"A"},
    "nested-retry": {"A", "M"},
    "nested-always-revert": {"A", "M"},
    "revert-all": set(),
    "other-branch-goes-on": {"X", "Y"},
    "dependent-skipped": {"X"},
}


@pytest.mark.parametrize("shape", list(KEPT_WITHOUT_DEFER))
@pytest.mark.parametrize("defer", [False, True], ids=["defer_reverts=False", "default"])
async def test_revert_scope_as_taskflow(shape: str, defer: bool, undoes: list[str]) -> None:
    flow = scope_shapes()[shape]
    eng = engines.load(flow) if defer else engines.load(flow, defer_reverts=False)
    with pytest.raises(Declined):
        await eng.run()
    states = eng.states()
    kept = {name for name, state in states.items() if state is S.SUCCEEDED}
    assert kept == (set() if defer else KEPT_WITHOUT_DEFER[shape])
    assert states.get("F") is S.REVERTED  # the flow that gave up is reverted either way
    if defer or not KEPT_WITHOUT_DEFER[shape]:
        assert eng.state is aflow.RunStatus.REVERTED
    else:
        assert eng.state is aflow.RunStatus.FAILED  # TaskFlow says REVERTED; it is not undone


async def test_without_defer_reverts_an_enclosing_retry_still_retries(undoes: list[str]) -> None:
    """TaskFlow: the inner flow gives up (REVERT) but the enclosing retry says RETRY,
    so the enclosing flow is reverted and run again; once it gives up too, only the
    inner flow is reverted (M and A are kept)."""
    flow = scope_shapes()["nested-retry"]
    with pytest.raises(Declined):
        await engines.run(flow, defer_reverts=False)
    assert undoes == [
        *["A", "M", "B", "F", "undo F", "undo B", "B", "F", "undo F", "undo B", "undo M"],
        *["M", "B", "F", "undo F", "undo B", "B", "F", "undo F", "undo B"],
    ]


async def test_without_defer_reverts_the_given_up_controller_is_reverted_once(
    undoes: list[str],
) -> None:
    reverted: list[int] = []

    class Counting(aflow.retry.Retry):
        def on_failure(self, history: History, **requires: Any) -> aflow.retry.Decision:
            return aflow.retry.REVERT

        def revert(self, history: History, **requires: Any) -> None:
            reverted.append(len(history))

    flow = lf.Flow("o").add(
        Undoes("A"), lf.Flow("sub", retry=Counting()).add(Fails("F")), Undoes("C")
    )
    eng = engines.load(flow, defer_reverts=False)
    with pytest.raises(Declined) as info:
        await eng.run()
    assert reverted == [1]
    assert any("was reverted alone (defer_reverts=False)" in n for n in info.value.__notes__)
    assert list(eng.storage.get_execute_failures()) == ["F"]


def test_defer_reverts_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="defer_reverts must be True or False, got 'no'"):
        engines.load(lf.Flow("f").add(Undoes("a")), defer_reverts="no")  # type: ignore[arg-type]
