"""TaskFlow-style flows: tasks, patterns, name lookup, validation and canvas interop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aflow
import aflow.retry
from aflow import engines
from aflow.errors import MissingInputError
from aflow.patterns import graph_flow as gf
from aflow.patterns import linear_flow as lf
from aflow.patterns import unordered_flow as uf

# --- the seed's example, ported ------------------------------------------------------------


class TaskA(aflow.Task):
    def execute(self, a: int) -> int:  # sync: runs in a worker thread
        return a * a


class TaskB(aflow.Task):
    async def execute(self, b: int) -> int:
        return b * b


class TaskC(aflow.Task):
    def execute(self, c: int) -> int:
        return c + 2


class FinalTask(aflow.Task):
    async def execute(self, res_a: int, res_b: int, res_c: int) -> int:
        return res_a + res_b + res_c


def seed_flow() -> lf.Flow:
    parallel = uf.Flow("parallel_tasks").add(
        TaskA(name="taska", provides="res_a"),
        TaskB(name="taskb", provides="res_b"),
        TaskC(name="taskc", provides="res_c"),
    )
    return lf.Flow("main").add(parallel, FinalTask(name="final", provides="final_res"))


@pytest.mark.parametrize("kind", ["serial", "parallel"])
async def test_seed_example_with_an_executor(kind: str) -> None:
    pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="seedpool")
    try:
        eng = engines.load(seed_flow(), store={"a": 1, "b": 2, "c": 3}, engine=kind, executor=pool)
        await eng.run()
    finally:
        pool.shutdown()
    context = eng.storage.fetch_all()
    assert context.get("final_res") == 1 + 4 + 5
    assert context.get("res_a") == 1
    assert eng.state is aflow.RunStatus.SUCCEEDED
    assert set(eng.states().values()) == {aflow.NodeState.SUCCEEDED}
    assert eng.storage.get_atom_state("final") is aflow.NodeState.SUCCEEDED


async def test_sync_tasks_run_in_the_given_executor() -> None:
    seen: list[str] = []

    class Where(aflow.Task):
        def execute(self) -> None:
            seen.append(threading.current_thread().name)

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mypool")
    try:
        await engines.run(lf.Flow("f").add(Where()), executor=pool)
    finally:
        pool.shutdown()
    assert len(seen) == 1
    assert seen[0].startswith("mypool")


async def test_engines_run_returns_the_stored_values() -> None:
    values = await engines.run(seed_flow(), store={"a": 1, "b": 2, "c": 3}, engine="parallel")
    assert values == {"a": 1, "b": 2, "c": 3, "res_a": 1, "res_b": 4, "res_c": 5, "final_res": 10}


# --- tasks: requires, provides, rebind, inject -----------------------------------------------


class Add(aflow.Task):
    async def execute(self, x: int, y: int = 10) -> int:
        return x + y


async def test_optional_parameters_use_their_default_when_nothing_provides_them() -> None:
    eng = engines.load(lf.Flow("f").add(Add(provides="z")), store={"x": 1})
    await eng.run()
    assert eng.storage.fetch("z") == 11
    assert Add().requires == {"x"}
    assert Add().optional == {"y"}


async def test_optional_parameters_take_a_provided_value() -> None:
    values = await engines.run(lf.Flow("f").add(Add(provides="z")), store={"x": 1, "y": 2})
    assert values["z"] == 3


async def test_rebind_dict_and_list() -> None:
    flow = lf.Flow("f").add(
        Add(name="by_dict", rebind={"x": "p", "y": "q"}, provides="s1"),
        Add(name="by_list", rebind=["q", "p"], provides="s2"),
    )
    values = await engines.run(flow, store={"p": 1, "q": 100})
    assert values["s1"] == 101
    assert values["s2"] == 101
    assert Add(rebind=["p"]).requires == {"p"}


async def test_inject_wins_over_providers_and_store() -> None:
    class Make(aflow.Task):
        async def execute(self) -> int:
            return 5

    flow = lf.Flow("f").add(Make(provides="x"), Add(inject={"x": 1000}, provides="z"))
    values = await engines.run(flow, store={"x": 1})
    assert values["z"] == 1010


async def test_tuple_provides_unpacks_and_set_provides_picks_keys() -> None:
    class Split(aflow.Task):
        default_provides = ("head", "tail")

        async def execute(self, word: str) -> tuple[str, str]:
            return word[0], word[1:]

    class Pick(aflow.Task):
        default_provides = frozenset({"n", "m"})

        def execute(self) -> dict[str, int]:
            return {"n": 1, "m": 2, "ignored": 3}

    class Join(aflow.Task):
        async def execute(self, head: str, tail: str, n: int, m: int) -> str:
            return f"{head}|{tail}|{n + m}"

    flow = gf.Flow("f").add(Join(provides="out"), Split(), Pick())
    values = await engines.run(flow, store={"word": "abc"})
    assert values["out"] == "a|bc|3"
    assert "ignored" not in values


async def test_a_result_of_the_wrong_shape_fails_its_own_task() -> None:
    class Bad(aflow.Task):
        default_provides = ("a", "b", "c")

        async def execute(self) -> tuple[int, int]:
            return 1, 2

    class Reader(aflow.Task):
        async def execute(self, a: int) -> None:
            raise AssertionError("never runs")

    eng = engines.load(lf.Flow("f").add(Bad(name="bad"), Reader()))
    with pytest.raises(aflow.errors.ProvidesError, match=r"'bad' provides \['a', 'b', 'c'\]"):
        await eng.run()
    assert eng.storage.get_atom_state("bad") is aflow.NodeState.FAILED
    assert eng.storage.get_atom_state("Reader") is aflow.NodeState.PENDING


async def test_a_dict_result_missing_a_provided_key_fails_its_task() -> None:
    class Bad(aflow.Task):
        default_provides = {"n", "m"}

        async def execute(self) -> dict[str, int]:
            return {"n": 1}

    with pytest.raises(aflow.errors.ProvidesError, match=r"lacks \['m'\]"):
        await engines.run(lf.Flow("f").add(Bad()))


def test_wrong_declarations_fail_at_construction() -> None:
    with pytest.raises(aflow.errors.SignatureError, match="rebind lists 3 name") as info:
        Add(rebind=["a", "b", "c"])
    assert info.value.task == "Add"
    assert info.value.argument == "rebind"
    with pytest.raises(aflow.errors.SignatureError, match="'nope', which is not a parameter"):
        Add(rebind={"nope": "x"})
    with pytest.raises(aflow.errors.SignatureError, match="inject names 'zz'"):
        Add(inject={"zz": 1})
    with pytest.raises(aflow.errors.SignatureError, match="provides must be a name"):
        Add(provides=3)  # type: ignore[arg-type]
    with pytest.raises(aflow.errors.SignatureError, match="unknown option"):
        Add(retires=3)


def test_a_revert_that_cannot_take_result_is_rejected_when_the_class_is_defined() -> None:
    with pytest.raises(aflow.errors.SignatureError, match="revert must accept result") as info:

        class Sloppy(aflow.Task):  # the seed's own TaskA.revert(self, a) has this bug
            def execute(self, a: int) -> int:
                return a

            def revert(self, a: int) -> None:
                pass

    assert info.value.argument == "result"
    with pytest.raises(aflow.errors.SignatureError, match="cannot take the task's arguments"):

        class Narrow(aflow.Task):
            def execute(self, a: int, b: int) -> int:
                return a

            def revert(self, a: int, result: Any) -> None:
                pass


def test_the_usual_taskflow_revert_signature_is_accepted() -> None:
    class Charge(aflow.Task):
        async def execute(self, attempt: int) -> None: ...

        async def revert(self, result: Any, **kwargs: Any) -> None: ...

    assert Charge().requires == {"attempt"}


def test_task_base_class_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError, match="base class"):
        aflow.Task()


# --- function tasks and canvas pieces in flows ---------------------------------------------


@aflow.task(provides="total")
async def add_up(x: int, y: int) -> int:
    return x + y


@aflow.task
async def double(total: int) -> int:
    return total * 2


async def test_function_tasks_take_part_with_provides_on_the_decorator_or_signature() -> None:
    flow = lf.Flow("f").add(add_up, double.s().set(provides="doubled"))
    values = await engines.run(flow, store={"x": 1, "y": 2})
    assert values["total"] == 3
    assert values["doubled"] == 6


async def test_signature_partial_arguments_are_fixed_and_the_rest_comes_by_name() -> None:
    flow = lf.Flow("f").add(add_up.s(100), double.s().set(provides="doubled"))
    values = await engines.run(flow, store={"y": 2})
    assert values["doubled"] == 204


@aflow.task
async def inc(n: int) -> int:
    return n + 1


async def test_a_chain_inside_a_flow_reads_by_name_and_provides_its_value() -> None:
    flow = lf.Flow("f").add(
        add_up,
        (double.s() | inc.s() | inc.s()).set(provides="after_chain"),
        inc.s().set(name="last", provides="final", immutable=True).clone(kwargs={}),
    )
    eng = engines.load(flow.add(), store={"x": 1, "y": 2, "n": 0})
    await eng.run()
    assert eng.storage.fetch("after_chain") == 8
    assert eng.storage.fetch("final") == 1  # 'last' reads n from the store


async def test_a_flow_inside_a_group_and_a_chain() -> None:
    inner = lf.Flow("inner").add(add_up, double.s().set(provides="doubled"))
    grouped = await aflow.group(inner.as_canvas().clone(kwargs={"x": 1, "y": 1}), inc.s(41))
    assert grouped == [{"total": 2, "doubled": 4}, 42]

    @aflow.task
    async def make() -> dict[str, int]:
        return {"x": 3, "y": 4}

    @aflow.task
    async def read(values: dict[str, int]) -> int:
        return values["doubled"]

    assert await (make.s() | inner | read.s()) == 14


async def test_awaiting_a_flow_returns_what_it_provides() -> None:
    flow = lf.Flow("f").add(add_up.s(1, 2), double.s().set(provides="doubled"))
    assert await flow == {"total": 3, "doubled": 6}


async def test_a_flow_in_a_chain_whose_parent_lacks_a_name_fails_clearly() -> None:
    @aflow.task
    async def make() -> dict[str, int]:
        return {"x": 3}

    with pytest.raises(MissingInputError, match="'add_up' requires 'y'"):
        await (make.s() | lf.Flow("f").add(add_up))


async def test_an_optional_input_missing_from_the_parent_dict_keeps_its_default() -> None:
    class C(aflow.Task):
        async def execute(self, a: int, opt: int = 5) -> int:
            return a + opt

    @aflow.task
    async def parent() -> dict[str, int]:
        return {"a": 1}

    assert await (parent.s() | lf.Flow("f").add(C(provides="r"))) == {"r": 6}


# --- patterns and order ---------------------------------------------------------------------


def recorder() -> tuple[list[str], type[aflow.Task]]:
    log: list[str] = []

    class Step(aflow.Task):
        async def execute(self, **kwargs: Any) -> str:
            log.append(self.name)
            return self.name

    return log, Step


async def test_graph_flow_infers_order_from_requires_and_provides() -> None:
    log: list[str] = []

    class Node(aflow.Task):
        def __init__(self, name: str, needs: list[str], gives: str) -> None:
            super().__init__(name=name, provides=gives, requires=needs)

        async def execute(self, **kwargs: Any) -> str:
            log.append(self.name)
            return self.name

    # added in reverse order on purpose: d needs b and c, which need a
    flow = gf.Flow("g").add(
        Node("d", ["vb", "vc"], "vd"),
        Node("c", ["va"], "vc"),
        Node("b", ["va"], "vb"),
        Node("a", [], "va"),
    )
    await engines.run(flow, engine="parallel")
    assert log[0] == "a"
    assert log[-1] == "d"
    assert set(log[1:3]) == {"b", "c"}
    graph = aflow.compile(flow)
    d = graph.node("d")
    assert {graph.nodes[p].key for p in d.parents} == {"b", "c"}


async def test_graph_flow_link_adds_order() -> None:
    log, Step = recorder()
    a, b = Step(name="a"), Step(name="b")
    flow = gf.Flow("g").add(b, a).link(a, b)
    await engines.run(flow)
    assert log == ["a", "b"]


async def test_linear_flow_runs_in_order_even_on_a_parallel_engine() -> None:
    log, Step = recorder()
    flow = lf.Flow("l").add(*(Step(name=f"s{i}") for i in range(20)))
    await engines.run(flow, engine="parallel")
    assert log == [f"s{i}" for i in range(20)]


async def test_nested_patterns_in_any_mix() -> None:
    log, Step = recorder()
    flow = lf.Flow("outer").add(
        Step(name="first"),
        gf.Flow("g").add(uf.Flow("u").add(Step(name="u1"), Step(name="u2")), Step(name="g1")),
        lf.Flow("l").add(Step(name="l1"), uf.Flow("u3").add(Step(name="l2"), Step(name="l3"))),
        Step(name="last"),
    )
    await engines.run(flow, engine="parallel")
    assert log[0] == "first"
    assert set(log[1:4]) == {"u1", "u2", "g1"}
    assert log[4] == "l1"
    assert set(log[5:7]) == {"l2", "l3"}
    assert log[-1] == "last"


async def test_serial_engine_runs_one_task_at_a_time() -> None:
    running = 0
    peak = 0

    class Probe(aflow.Task):
        async def execute(self) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
            running -= 1

    await engines.run(uf.Flow("u").add(*(Probe(name=f"p{i}") for i in range(5))))
    assert peak == 1


async def test_parallel_engine_runs_independent_tasks_together() -> None:
    arrived = 0
    all_in = anyio.Event()

    class Rendezvous(aflow.Task):
        async def execute(self) -> None:
            nonlocal arrived
            arrived += 1
            if arrived == 3:
                all_in.set()
            await all_in.wait()  # deadlocks unless all three run at once

    flow = uf.Flow("u").add(*(Rendezvous(name=f"p{i}") for i in range(3)))
    with anyio.fail_after(5):
        await engines.run(flow, engine="parallel")
    assert arrived == 3


async def test_max_workers_bounds_a_parallel_engine() -> None:
    running = 0
    peak = 0

    class Probe(aflow.Task):
        async def execute(self) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            running -= 1

    flow = uf.Flow("u").add(*(Probe(name=f"p{i}") for i in range(10)))
    await engines.run(flow, engine="parallel", max_workers=2)
    assert peak == 2


def logging_step(log: list[str]) -> type[aflow.Task]:
    class Step(aflow.Task):
        async def execute(self) -> str:
            log.append(f"{self.name} start")
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            log.append(f"{self.name} end")
            return self.name

    return Step


@pytest.mark.parametrize("empty", [uf.Flow, gf.Flow, lf.Flow])
async def test_an_empty_subflow_keeps_the_order_around_it(empty: type[Any]) -> None:
    log: list[str] = []
    Step = logging_step(log)
    await engines.run(
        lf.Flow("m").add(Step(name="a"), empty("empty"), Step(name="b")), engine="parallel"
    )
    assert log == ["a start", "a end", "b start", "b end"]


# --- value lookup precedence ----------------------------------------------------------------


class Const(aflow.Task):
    def __init__(self, name: str, value: Any, provides: str) -> None:
        super().__init__(name=name, provides=provides)
        self.value = value

    async def execute(self) -> Any:
        return self.value


class Read(aflow.Task):
    async def execute(self, x: Any) -> Any:
        return x


async def test_nearest_upstream_provider_wins_over_farther_ones_and_the_store() -> None:
    flow = lf.Flow("f").add(
        Const("far", "far", "x"),
        Read(name="r1", provides="seen1"),
        lf.Flow("inner").add(Const("near", "near", "x"), Read(name="r2", provides="seen2")),
        Read(name="r3", provides="seen3"),
    )
    eng = engines.load(flow, store={"x": "store"})
    await eng.run()
    assert eng.storage.fetch("seen1") == "far"
    assert eng.storage.fetch("seen2") == "near"
    assert eng.storage.fetch("seen3") == "near"  # the inner flow exports its last provider
    assert eng.storage.fetch("x") == "near"  # a provided value beats the store (unlike TaskFlow)


async def test_the_store_serves_what_nothing_upstream_provides() -> None:
    flow = lf.Flow("f").add(Read(name="early", provides="seen"), Const("late", "late", "x"))
    eng = engines.load(flow, store={"x": "store"})
    await eng.run()
    assert eng.storage.fetch("seen") == "store"  # the later provider is not upstream


async def test_fetch_of_an_unknown_name_raises_not_found() -> None:
    eng = engines.load(lf.Flow("f").add(Const("c", 1, "x")))
    with pytest.raises(aflow.errors.NotFound, match="no value named 'x'"):
        eng.storage.fetch("x")  # not run yet
    await eng.run()
    assert eng.storage.fetch("x") == 1
    with pytest.raises(KeyError):
        eng.storage.fetch("y")


# --- validation before anything runs --------------------------------------------------------


def test_missing_inputs_name_the_task_and_every_missing_name() -> None:
    class Needy(aflow.Task):
        async def execute(self, a: int, b: int, c: int = 0) -> None: ...

    with pytest.raises(MissingInputError) as info:
        engines.load(lf.Flow("f").add(Needy(name="needy")), store={"z": 1})
    assert info.value.task == "needy"
    assert info.value.missing == ("a", "b")
    assert "store has only: z" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_inputs_of_a_retried_flow_name_the_right_task() -> None:
    class A(aflow.Task):
        async def execute(self, m1: int) -> None: ...

    class B(aflow.Task):
        async def execute(self, m2: int, m3: int) -> None: ...

    sub = uf.Flow("r", retry=aflow.retry.Times(2)).add(A(), B())
    with pytest.raises(aflow.errors.MissingInputError) as info:
        engines.load(sub)
    assert (info.value.task, info.value.missing) in {("A", ("m1",)), ("B", ("m2", "m3"))}


def test_ambiguous_providers_name_both() -> None:
    flow = gf.Flow("g").add(Const("one", 1, "x"), Const("two", 2, "x"), Read())
    with pytest.raises(aflow.errors.AmbiguousProviderError) as info:
        engines.load(flow)
    assert info.value.name == "x"
    assert info.value.providers == ("one", "two")
    with pytest.raises(aflow.errors.AmbiguousProviderError, match="unordered flow 'u'"):
        engines.load(uf.Flow("u").add(Const("one", 1, "x"), Const("two", 2, "x")))


def test_a_sibling_dependency_in_an_unordered_flow_is_rejected() -> None:
    with pytest.raises(aflow.errors.DefinitionError, match=r"'Read' requires 'x'.*sibling 'one'"):
        engines.load(uf.Flow("u").add(Const("one", 1, "x"), Read()))


def test_cycles_name_the_cycle() -> None:
    class Pass(aflow.Task):
        async def execute(self, **kwargs: Any) -> None: ...

    a = Pass(name="a", requires=["vc"], provides="va")
    b = Pass(name="b", requires=["va"], provides="vb")
    c = Pass(name="c", requires=["vb"], provides="vc")
    with pytest.raises(aflow.errors.CycleError) as info:
        engines.load(gf.Flow("g").add(a, b, c))
    cycle = info.value.cycle
    assert set(cycle) == {"a", "b", "c"}
    i = cycle.index("a")
    assert cycle[i:] + cycle[:i] == ("a", "b", "c")
    x, y = Pass(name="x"), Pass(name="y")
    with pytest.raises(aflow.errors.CycleError, match=r"x -> y -> x|y -> x -> y"):
        engines.load(gf.Flow("g2").add(x, y).link(x, y).link(y, x))


async def test_an_optional_input_from_a_later_graph_item_is_no_cycle() -> None:
    class A(aflow.Task):
        async def execute(self, y: int = 0) -> int:
            return y + 10

    class B(aflow.Task):
        async def execute(self, x: int) -> int:
            return x + 1

    values = await engines.run(gf.Flow("g").add(A(provides="x"), B(provides="y")))
    assert values == {"x": 10, "y": 11}  # A kept its default: its "provider" runs after it


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(aflow.errors.DuplicateTaskError, match="'Read'"):
        engines.load(lf.Flow("f").add(Read(), uf.Flow("u").add(Read())), store={"x": 1})


def test_bad_items_and_links_are_rejected() -> None:
    with pytest.raises(TypeError, match="cannot add 42"):
        lf.Flow("f").add(42)  # type: ignore[arg-type]
    r = Read()
    flow = gf.Flow("g").add(r)
    with pytest.raises(ValueError, match=r"add .* before linking"):
        flow.link(r, Read(name="other"))
    with pytest.raises(ValueError, match="already holds"):
        flow.add(r)
    with pytest.raises(ValueError, match="engine must be one of"):
        engines.load(flow, store={"x": 1}, engine="threaded")
    with pytest.raises(TypeError, match=r"concurrent\.futures\.Executor"):
        engines.load(flow, store={"x": 1}, executor="threaded")  # type: ignore[arg-type]


async def test_an_empty_flow_runs_and_succeeds() -> None:
    eng = engines.load(lf.Flow("empty"))
    assert eng.state is aflow.RunStatus.PENDING
    await eng.run()
    assert eng.state is aflow.RunStatus.SUCCEEDED
    assert eng.storage.fetch_all() == {}


# --- failure: reverts in reverse order, TaskFlow's revert arguments -------------------------


async def test_a_failure_reverts_completed_tasks_in_reverse_order_with_results() -> None:
    log: list[tuple[str, Any]] = []

    class Step(aflow.Task):
        async def execute(self, n: int) -> int:
            return n + 1

        async def revert(self, n: int, result: Any, flow_failures: dict[str, Any]) -> None:
            log.append((self.name, result))

    class Boom(aflow.Task):
        async def execute(self, n: int) -> None:
            raise RuntimeError("declined")

        async def revert(self, n: int, result: Any, flow_failures: dict[str, Any]) -> None:
            log.append((self.name, type(result).__name__))
            assert set(flow_failures) == {"boom"}

    flow = lf.Flow("f").add(
        Step(name="s1", provides="n", rebind=["n0"]),
        Step(name="s2", provides="n"),
        Boom(name="boom"),
    )
    eng = engines.load(flow, store={"n0": 0})
    with pytest.raises(RuntimeError, match="declined"):
        await eng.run()
    assert log == [("boom", "Failure"), ("s2", 2), ("s1", 1)]
    assert eng.state is aflow.RunStatus.REVERTED
    assert eng.storage.get_atom_state("s1") is aflow.NodeState.REVERTED
    with pytest.raises(aflow.errors.NotFound):
        eng.storage.fetch("n")  # reverted values are gone
    with pytest.raises(RuntimeError, match="declined"):  # a reverted flow runs again (issue 18)
        await eng.run()
    assert log[3:] == log[:3]


async def test_a_task_whose_inputs_never_arrived_is_not_reverted() -> None:
    reverted: list[str] = []

    class C(aflow.Task):
        async def execute(self, a: int, b: int) -> int:
            return a + b

        async def revert(self, a: int, b: int, result: Any, **kwargs: Any) -> None:
            reverted.append("C")

    @aflow.task
    async def parent() -> dict[str, int]:
        return {"a": 1}

    with pytest.raises(aflow.errors.MissingInputError, match="'C' requires 'b'"):
        await (parent.s() | lf.Flow("f").add(C()))
    assert reverted == []


async def test_a_cancelled_run_waits_for_its_executor_thread() -> None:
    loop = asyncio.get_running_loop()
    started = anyio.Event()
    release = threading.Event()
    finished: list[str] = []

    class Blocking(aflow.Task):
        def execute(self) -> None:
            loop.call_soon_threadsafe(started.set)
            release.wait(10)
            finished.append("thread")

    pool = ThreadPoolExecutor(max_workers=1)
    eng = engines.load(lf.Flow("f").add(Blocking()), executor=pool)
    scope = anyio.CancelScope()

    async def runner() -> None:
        with scope:
            await eng.run()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner)
            await started.wait()
            scope.cancel()
            for _ in range(20):  # the run cannot end while its thread still runs
                await anyio.lowlevel.checkpoint()
            assert eng.state is aflow.RunStatus.RUNNING
            assert finished == []
            release.set()
    finally:
        release.set()
        pool.shutdown()
    assert finished == ["thread"]
    assert eng.state is aflow.RunStatus.CANCELLED
