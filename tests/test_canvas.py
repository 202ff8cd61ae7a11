"""The canvas, ported from Celery's canvas guide, plus the places where aflow differs on purpose.

Every test runs on asyncio and on uvloop (see conftest.py).
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import aflow

calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []


@aflow.task
async def add(x: int, y: int, debug: bool = False) -> int:
    calls.append(("add", (x, y), {"debug": debug}))
    return x + y


@aflow.task
async def mul(x: int, y: int) -> int:
    return x * y


@aflow.task
async def tsum(numbers: list[int]) -> int:
    return sum(numbers)


@aflow.task
def xsum(numbers: list[int]) -> int:  # a plain function: runs in a worker thread
    return sum(numbers)


@aflow.task
async def identity(x: Any) -> Any:
    return x


class Boom(Exception):
    pass


@aflow.task
async def fail(*args: Any) -> None:
    raise Boom("boom")


errors_seen: list[BaseException] = []


@aflow.task
async def log_error(exc: BaseException, tag: str = "") -> str:
    errors_seen.append(exc)
    return tag


@pytest.fixture(autouse=True)
def _clear() -> None:
    calls.clear()
    errors_seen.clear()


class TestSignatures:
    """Celery guide: "Signatures"."""

    def test_signature_fields(self) -> None:
        s = aflow.signature(add, args=(2, 2), timeout=10)
        assert s.args == (2, 2)
        assert s.kwargs == {}
        assert s.options == {"timeout": 10}
        assert s.task is add

    def test_task_signature_method_and_star_shortcut(self) -> None:
        assert add.signature((2, 2), timeout=10) == aflow.signature(add, (2, 2), timeout=10)
        assert add.s(2, 2) == add.signature((2, 2))

    def test_keyword_arguments(self) -> None:
        s = add.s(2, 2, debug=True)
        assert s.args == (2, 2)
        assert s.kwargs == {"debug": True}

    async def test_signature_is_awaitable(self) -> None:
        assert await add.s(2, 2) == 4

    async def test_direct_call_runs_the_function_without_a_graph(self) -> None:
        assert await add(2, 2) == 4
        assert await xsum([1, 2, 3]) == 6

    def test_set_returns_a_new_signature(self) -> None:
        s = add.s(2, 2)
        t = s.set(timeout=1)
        assert s.options == {}
        assert t.options == {"timeout": 1}

    def test_repr_reads_like_the_call(self) -> None:
        assert repr(add.s(2, y=3)) == "add.s(2, y=3)"
        assert repr(add.si(1, 1).set(retries=2)) == "add.si(1, 1).set(retries=2)"

    def test_unknown_option_is_a_typed_error_naming_it(self) -> None:
        with pytest.raises(aflow.errors.SignatureError) as info:
            add.s(1, 2).set(retires=3)
        assert info.value.argument == "retires"
        assert "add" in str(info.value)


class TestPartials:
    """Celery guide: "Partials"."""

    async def test_args_are_prepended(self) -> None:
        partial = add.signature((2,))
        assert await partial.clone(args=(4,)) == 6
        assert calls[-1][1] == (4, 2)

    async def test_kwargs_merge_new_wins(self) -> None:
        s = add.s(2, 2, debug=False)
        await s.clone(kwargs={"debug": True})
        assert calls[-1][2] == {"debug": True}

    def test_options_merge_new_wins(self) -> None:
        s = add.signature((2, 2), timeout=10)
        assert s.clone(timeout=1).options == {"timeout": 1}
        assert s.set(retries=2).options == {"timeout": 10, "retries": 2}

    async def test_clone_with_args_and_kwargs(self) -> None:
        s = add.signature((2,))
        assert await s.clone(args=(4,), kwargs={"debug": True}) == 6
        assert calls[-1] == ("add", (4, 2), {"debug": True})

    async def test_parent_result_is_prepended_in_a_chain(self) -> None:
        @aflow.task
        async def sub(x: int, y: int) -> int:
            return x - y

        assert await (identity.s(30) | sub.signature((10,))) == 20


class TestImmutability:
    """Celery guide: "Immutability"."""

    def test_si_and_immutable_flag(self) -> None:
        assert add.si(2, 2).immutable
        assert add.signature((2, 2), immutable=True) == add.si(2, 2)
        assert not add.s(2, 2).immutable

    async def test_immutable_ignores_partial_arguments(self) -> None:
        s = add.si(2, 2)
        assert await s.clone(args=(100,), kwargs={"debug": True}) == 4
        assert calls[-1][2] == {"debug": False}

    async def test_immutable_chain_of_independent_tasks(self) -> None:
        async with aflow.Runtime() as rt:
            run = await rt.submit(add.si(2, 2) | add.si(4, 4) | add.si(8, 8))
            assert await run.result() == 16
        assert run.results() == {"add": 4, "add#2": 8, "add#3": 16}

    def test_set_immutable(self) -> None:
        assert add.s(1, 1).set(immutable=True).immutable
        assert aflow.signature(add.s(5), immutable=True).immutable


class TestCallbacks:
    """Celery guide: "Callbacks"."""

    async def test_link_gets_the_parent_result(self) -> None:
        async with aflow.Runtime() as rt:
            run = await rt.submit(add.s(2, 2).link(add.s(8)))
            assert await run.result() == 4  # the workflow's value is the parent's
        assert run.results()["add#2"] == 12  # 4 + 8

    async def test_link_is_immutable_value_semantics(self) -> None:
        s = add.s(2, 2)
        linked = s.link(mul.s(16))
        assert s != linked
        assert len(aflow.compile(s)) == 1
        assert len(aflow.compile(linked)) == 2

    async def test_link_error_gets_the_exception(self) -> None:
        with pytest.raises(Boom):
            await fail.s().link_error(log_error.s(tag="x"))
        assert len(errors_seen) == 1
        assert isinstance(errors_seen[0], Boom)

    async def test_link_error_not_called_on_success(self) -> None:
        async with aflow.Runtime() as rt:
            run = await rt.submit(add.s(1, 1).link_error(log_error.s()))
            assert await run.result() == 2
        assert errors_seen == []
        assert run.step("log_error").state is aflow.NodeState.SKIPPED


class TestChains:
    """Celery guide: "The Primitives", "Chains"."""

    async def test_simple_chain(self) -> None:
        assert await aflow.chain(add.s(2, 2), add.s(4), add.s(8)) == 16

    async def test_pipe(self) -> None:
        assert await (add.s(2, 2) | add.s(4) | add.s(8)) == 16

    async def test_intermediate_results(self) -> None:
        async with aflow.Runtime() as rt:
            run = await rt.submit(add.s(2, 2) | add.s(4) | add.s(8))
            await run.result()
        assert run.step("add#2").result == 8
        assert run.step("add").result == 4

    async def test_chains_can_be_partial(self) -> None:
        c1 = add.signature((4,)) | mul.signature((8,))
        assert await c1.clone(args=(16,)) == 160  # (16 + 4) * 8

    async def test_chains_combine_and_flatten(self) -> None:
        c2 = add.s(4, 16) | mul.signature((2,)) | (add.signature((4,)) | mul.signature((8,)))
        assert isinstance(c2, aflow.Chain)
        assert len(c2.tasks) == 4  # flattened
        assert await c2 == 352  # ((4 + 16) * 2 + 4) * 8

    def test_chain_accepts_an_iterable(self) -> None:
        assert aflow.chain([add.s(1, 1), add.s(1)]) == aflow.chain(add.s(1, 1), add.s(1))

    async def test_empty_chain_is_a_no_op(self) -> None:
        """Celery's ``chain()()`` is ``None`` (issue 18; it was a SignatureError)."""
        assert len(aflow.compile(aflow.chain())) == 1
        assert await aflow.chain() is None

    async def test_sync_task_in_chain(self) -> None:
        assert await (aflow.group(add.s(1, 1), add.s(2, 2)) | xsum.s()) == 6


class TestGroups:
    """Celery guide: "Groups" and "Group Results"."""

    async def test_simple_group(self) -> None:
        assert await aflow.group(add.s(2, 2), add.s(4, 4)) == [4, 8]

    async def test_group_from_generator(self) -> None:
        assert await aflow.group(add.s(i, i) for i in range(10)) == list(range(0, 20, 2))

    async def test_empty_group_is_an_empty_list(self) -> None:
        assert await aflow.group() == []

    async def test_empty_group_in_a_chain_keeps_the_order(self) -> None:
        order: list[str] = []

        @aflow.task
        async def first() -> int:
            await anyio.lowlevel.checkpoint()
            order.append("first")
            return 1

        @aflow.task
        async def after(x: Any) -> Any:
            order.append("after")
            return x

        # Celery skips an empty group in a chain (issue 18; the next step got [] before)
        assert await aflow.chain(first.s(), aflow.group(), after.s()) == 1
        assert await (first.s() | aflow.chord([], after.s())) == []
        assert order == ["first", "after", "first", "after"]

    async def test_one_member_group_keeps_its_shape(self) -> None:
        assert await aflow.group(add.s(1, 1)) == [2]

    async def test_nested_groups_flatten_in_declaration_order(self) -> None:
        g = aflow.group(
            add.s(0, 0), aflow.group(add.s(1, 1), aflow.group(add.s(2, 2))), add.s(3, 3)
        )
        assert await g == [0, 2, 4, 6]

    async def test_chain_inside_group_stays_one_value(self) -> None:
        g = aflow.group(add.s(1, 1), add.s(1, 1) | aflow.group(add.s(1), add.s(2)))
        assert await g == [2, [3, 4]]

    async def test_group_forwards_parent_result_to_every_member(self) -> None:
        assert await (add.s(4, 4) | aflow.group(add.s(1), add.s(2))) == [9, 10]

    async def test_immutable_members_do_not_receive_it(self) -> None:
        assert await (add.s(4, 4) | aflow.group(add.si(2, 2), add.si(4, 4))) == [4, 8]

    async def test_group_partial_args_reach_every_member(self) -> None:
        g = aflow.group(add.signature((1,)), add.signature((2,)))
        assert await g.clone(args=(10,)) == [11, 12]

    async def test_group_link_gets_the_whole_list(self) -> None:
        """Unlike Celery, which links the callback to the first member only."""
        seen: list[Any] = []

        @aflow.task
        async def record(values: list[int]) -> None:
            seen.append(values)

        assert await aflow.group(add.s(2, 2), add.s(4, 4)).link(record.s()) == [4, 8]
        assert seen == [[4, 8]]

    async def test_group_errback_runs_once(self) -> None:
        g = aflow.group(fail.s(), fail.s(), add.s(1, 1)).link_error(log_error.s())
        with pytest.raises(Boom):
            await g
        assert len(errors_seen) == 1

    async def test_group_result_api(self) -> None:
        async with aflow.Runtime() as rt:
            run = await rt.submit(aflow.group(add.s(2, 2), add.s(4, 4)))
            assert await run.join() == [4, 8]
        assert run.ready()
        assert run.successful()
        assert not run.failed()
        assert not run.waiting()
        assert run.completed_count() == 2

    async def test_join_without_propagate_returns_exceptions_in_place(self) -> None:
        async with aflow.Runtime() as rt:
            run = await rt.submit(aflow.group(fail.s(), add.si(1, 1).set(name="slow")))
            values = await run.join(propagate=False)
        assert isinstance(values[0], Boom)
        assert run.failed()
        assert not run.successful()


class TestChords:
    """Celery guide: "Chords"."""

    async def test_simple_chord(self) -> None:
        assert await aflow.chord((add.s(i, i) for i in range(100)), tsum.s()) == 9900

    async def test_celery_call_form(self) -> None:
        assert await aflow.chord(add.s(i, i) for i in range(10))(xsum.s()) == 90

    async def test_group_piped_into_task_is_a_chord(self) -> None:
        c3 = aflow.group(add.s(i, i) for i in range(10)) | xsum.s()
        assert isinstance(c3, aflow.Chord)
        assert await c3 == 90

    async def test_empty_header_calls_body_with_empty_list(self) -> None:
        assert await aflow.chord([], identity.s()) == []

    async def test_immutable_body_ignores_results(self) -> None:
        assert await aflow.chord([add.s(1, 1)], identity.si("done")) == "done"

    async def test_header_order_is_declaration_order_at_every_level(self) -> None:
        """Celery reverses nested groups in a chord header; aflow does not."""
        header = [add.s(0, 0), aflow.group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)]
        assert await aflow.chord(header, identity.s()) == [0, 2, 4, 6]

    async def test_chord_whose_header_holds_chords(self) -> None:
        inner = [aflow.chord([add.s(i, 1), add.s(i, 2)], tsum.s()) for i in range(3)]
        assert await aflow.chord(inner, identity.s()) == [3, 5, 7]

    async def test_chord_partial_args_go_to_the_header(self) -> None:
        c = aflow.chord([add.signature((1,)), add.signature((2,))], tsum.s())
        assert await c.clone(args=(10,)) == 23

    async def test_failing_header_task_raises_the_original_error(self) -> None:
        c = aflow.chord([add.s(4, 4), fail.s(), add.s(8, 8)], tsum.s())
        with pytest.raises(Boom) as info:
            await c
        assert any("fail" in note for note in info.value.__notes__)

    async def test_chord_errback_runs_exactly_once(self) -> None:
        c = aflow.chord([fail.s(), fail.s()], tsum.s()).on_error(log_error.s())
        with pytest.raises(Boom):
            await c
        assert len(errors_seen) == 1


class TestMapStarmapChunks:
    """Celery guide: "Map & Starmap" and "Chunks"."""

    async def test_map(self) -> None:
        assert await tsum.map([range(10), range(100)]) == [45, 4950]

    async def test_starmap(self) -> None:
        assert await add.starmap(zip(range(10), range(10), strict=True)) == list(range(0, 20, 2))

    async def test_map_is_one_node(self) -> None:
        graph = aflow.compile(add.starmap([(1, 2), (3, 4)]))
        assert len(graph) == 1
        assert graph.nodes[0].kind is aflow.NodeKind.STARMAP

    async def test_map_over_parent_result(self) -> None:
        @aflow.task
        async def numbers(n: int) -> list[int]:
            return list(range(n))

        @aflow.task
        async def double(x: int) -> int:
            return 2 * x

        assert await (numbers.s(4) | double.map()) == [0, 2, 4, 6]

    async def test_map_passes_kwargs_to_every_call(self) -> None:
        assert await add.map([1, 2]).clone(kwargs={"y": 100}) == [101, 102]
        assert await add.starmap([(1, 2)]).clone(kwargs={"debug": True}) == [3]
        assert calls[-1][2] == {"debug": True}

    def test_map_refuses_partial_positional_args(self) -> None:
        with pytest.raises(aflow.errors.SignatureError, match="items"):
            add.map([1, 2]).clone(args=(5,))

    async def test_sync_map_runs_in_a_thread(self) -> None:
        assert await xsum.map([[1, 2], [3]]) == [3, 3]

    def test_map_with_items_and_parent_is_a_clear_error(self) -> None:
        with pytest.raises(aflow.errors.SignatureError, match="parent"):
            aflow.compile(add.s(1, 1) | tsum.map([[1]]))

    async def test_chunks(self) -> None:
        res = await add.chunks(zip(range(100), range(100), strict=True), 10)
        assert len(res) == 10
        assert res[0] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
        assert [x for part in res for x in part] == [2 * i for i in range(100)]

    def test_chunks_is_a_group_of_starmaps(self) -> None:
        g = add.chunks([(1, 1)] * 25, 10)
        assert isinstance(g, aflow.Group)
        assert len(g) == 3


class TestValidation:
    """Bad canvases fail before any task runs, naming the node at fault."""

    async def test_too_many_arguments_after_parent_result(self) -> None:
        with pytest.raises(aflow.errors.SignatureError) as info:
            await (add.s(1, 2) | mul.s(3, 4))
        assert info.value.task == "mul"
        assert "parent's result" in str(info.value)
        assert calls == []  # nothing ran

    async def test_unknown_keyword_is_named(self) -> None:
        with pytest.raises(aflow.errors.SignatureError) as info:
            aflow.compile(add.s(1, 2, colour="red"))
        assert info.value.argument == "colour"

    def test_errback_must_be_a_task_signature(self) -> None:
        with pytest.raises(aflow.errors.SignatureError):
            aflow.compile(add.s(1, 1).link_error(aflow.group(log_error.s())))

    def test_compile_rejects_non_workflows(self) -> None:
        with pytest.raises(TypeError, match="cannot compile 'int'"):
            aflow.compile(42)
