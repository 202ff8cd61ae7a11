"""The rest of Celery's canvas semantics (issue 18): empty groups and chains, a chord
header's failure reaching its body's errbacks, a lone signature as a chord header,
callbacks linked twice, ``Signature.replace``, and the errbacks of a failing group.

Behaviour taken from Celery's own canvas (celery/canvas.py, t/unit/tasks/test_canvas.py,
t/integration/test_canvas.py); where aflow differs on purpose, the test says so.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aflow

pytestmark = pytest.mark.both_loops

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
async def identity(x: Any) -> Any:
    return x


@pytest.fixture(autouse=True)
def _clear() -> None:
    calls.clear()


class TestEmptyGroupsInAChain:
    """Celery's ``prepare_steps`` skips an empty group in a chain: the chain passes its
    value on past it."""

    @pytest.mark.parametrize(
        "build",
        [
            pytest.param(lambda: aflow.chain(add.s(2, 2), aflow.group(), mul.s(2)), id="middle"),
            pytest.param(lambda: add.s(2, 2) | aflow.group() | mul.s(2), id="middle-pipe"),
            pytest.param(
                lambda: aflow.chain(add.s(2, 2), aflow.group(), aflow.group(), mul.s(2)),
                id="several",
            ),
            pytest.param(lambda: aflow.chain(add.s(2, 2), mul.s(2), aflow.group()), id="trailing"),
            pytest.param(
                lambda: aflow.chain(add.s(2, 2), aflow.group()) | mul.s(2),
                id="chain-upgraded-to-a-chord-with-an-empty-header",
            ),
            pytest.param(
                lambda: add.s(2, 2) | (aflow.group() | mul.s(2)),
                id="group()-piped-into-a-task-after-a-step",
            ),
            pytest.param(
                lambda: aflow.chain(
                    add.s(2, 2), aflow.chain(aflow.group(), mul.s(2)).set(name="c")
                ),
                id="leading-in-a-nested-chain-with-a-parent",
            ),
        ],
    )
    async def test_behaves_as_the_chain_without_it(self, build: Any) -> None:
        canvas = build()
        assert await canvas == await (add.s(2, 2) | mul.s(2)) == 8
        # nothing is added for it: no join, no step
        assert len(aflow.compile(canvas)) == len(aflow.compile(add.s(2, 2) | mul.s(2))) == 2

    async def test_pipe_stays_associative(self) -> None:
        left = (add.s(2, 2) | aflow.group()) | mul.s(2)
        right = add.s(2, 2) | (aflow.group() | mul.s(2))
        assert left == right
        assert await left == await right == 8

    async def test_before_a_chord_body(self) -> None:
        """Celery: ``group(a, b) | group()`` is ``group(a, b)``, then ``| body`` a chord."""
        header = aflow.group(add.s(1, 1), add.s(2, 2))
        assert await aflow.chain(header, aflow.group(), tsum.s()) == 6
        assert await (header | aflow.group() | tsum.s()) == 6
        assert await (header | aflow.group() | aflow.group() | tsum.s()) == 6

    async def test_after_a_group_the_group_is_the_value(self) -> None:
        """Celery's test_empty_groups_are_skipped_in_chain and
        test_empty_group_body_is_skipped_when_chain_upgrades_to_chord."""
        header = aflow.group(add.s(2, 2), add.s(4, 4))
        assert await aflow.chain(header, aflow.group(), aflow.group()) == [4, 8]
        assert await (add.s(1, 1) | aflow.group(add.s(2), add.s(3)) | aflow.group()) == [4, 5]

    async def test_before_and_after_a_chord(self) -> None:
        chord = aflow.chord([add.s(1), add.s(2)], tsum.s())
        assert await (add.s(2, 2) | aflow.group() | chord) == 11  # (4 + 1) + (4 + 2)
        assert await (chord.clone(args=(4,)) | aflow.group() | mul.s(2)) == 22

    async def test_links_of_a_skipped_group_still_get_its_empty_list(self) -> None:
        seen: list[Any] = []

        @aflow.task
        async def record(value: Any) -> None:
            seen.append(value)

        assert await (add.s(2, 2) | aflow.group().link(record.s()) | mul.s(2)) == 8
        assert seen == [[]]

    async def test_at_the_start_it_gives_the_empty_list(self) -> None:
        """Nothing before it: as Celery's ``group() | body``, a chord whose empty header
        calls the body with ``[]`` (kept from before: Celery agrees)."""
        assert await aflow.chain(aflow.group(), tsum.s()) == 0
        assert await (aflow.group() | tsum.s()) == 0
        assert await (aflow.group() | aflow.group() | tsum.s()) == 0

    async def test_a_chain_of_empty_groups_is_an_empty_group(self) -> None:
        assert await aflow.chain(aflow.group()) == []
        assert await aflow.chain(aflow.group(), aflow.group()) == []
        assert await (aflow.group() | aflow.group()) == []

    async def test_a_lone_empty_group_is_the_empty_list(self) -> None:
        """Kept from before (Celery's empty GroupResult has no results)."""
        assert await aflow.group() == []
        assert await aflow.group().clone(args=(1,)) == []

    async def test_partial_arguments_reach_the_first_real_step(self) -> None:
        c = aflow.chain(aflow.group(), add.s(1))
        assert await c.clone(args=(5,)) == 6
        assert calls[-1][1] == (5, 1)
        assert await c.clone(kwargs={"y": 7}) == 8
        assert calls[-1][1] == (1, 7)
        several = aflow.chain(aflow.group(), aflow.chain().set(name="x"), aflow.group(), add.s(1))
        assert await several.clone(args=(5,)) == 6
        assert await aflow.chord([c, c], tsum.s()).clone(args=(10,)) == 22

    async def test_partial_arguments_past_a_linked_empty_group(self) -> None:
        seen: list[Any] = []

        @aflow.task
        async def record(value: Any) -> None:
            seen.append(value)

        c = aflow.chain(aflow.group().link(record.s()), add.s(1))
        assert await c.clone(args=(5,)) == 6
        assert seen == [[]]

    def test_partial_arguments_with_no_real_step_change_nothing(self) -> None:
        c = aflow.chain(aflow.group(), aflow.group())
        assert c.clone(args=(5,)) == c

    async def test_an_explicit_chord_with_an_empty_header_still_gives_the_empty_list(
        self,
    ) -> None:
        """The design's rule: ``aflow.chord([], body)`` calls the body with ``[]``, also
        after a step (only ``group() | body``, a chain, skips its empty group)."""
        assert await (add.s(2, 2) | aflow.chord([], identity.s())) == []
        assert isinstance(aflow.group(add.s(1, 1)) | tsum.s(), aflow.Chord)
        assert isinstance(aflow.group() | tsum.s(), aflow.Chain)


class TestEmptyChains:
    """Celery's ``chain()()`` is ``None``: an empty chain is a no-op."""

    async def test_awaited_alone_it_is_none(self) -> None:
        assert await aflow.chain() is None
        assert await aflow.chain(aflow.chain()) is None
        assert await aflow.chain().set(name="nothing") is None
        assert await aflow.chain().clone(args=(1,)) is None

    async def test_in_a_chain_it_passes_the_value_on(self) -> None:
        assert await aflow.chain(add.s(2, 2), aflow.chain(), mul.s(2)) == 8
        assert await (add.s(2, 2) | aflow.chain().set(name="x") | mul.s(2)) == 8
        assert await aflow.chain(aflow.chain().set(name="x"), add.s(1, 2)) == 3

    async def test_dropped_from_a_group(self) -> None:
        g = aflow.group(add.s(1, 1), aflow.chain(), add.s(2, 2), aflow.chain())
        assert g == aflow.group(add.s(1, 1), add.s(2, 2))
        assert len(g) == 2
        assert await g == [2, 4]
        assert await aflow.group(aflow.chain(), aflow.chain()) == []

    async def test_dropped_from_a_chord_header(self) -> None:
        assert await aflow.chord([add.s(1, 1), aflow.chain()], identity.s()) == [2]
        assert await aflow.chord([aflow.chain()], identity.s()) == []
        assert await aflow.chord(aflow.chain(), identity.s()) == []

    async def test_as_a_chord_body_it_passes_the_header_list_on(self) -> None:
        assert await aflow.chord([add.s(1, 1), add.s(2, 2)], aflow.chain()) == [2, 4]

    async def test_its_link_gets_its_value(self) -> None:
        seen: list[Any] = []

        @aflow.task
        async def record(value: Any) -> None:
            seen.append(value)

        assert await aflow.chain().link(record.s()) is None
        assert await (add.s(1, 1) | aflow.chain().link(record.s()) | mul.s(3)) == 6
        assert seen == [None, 2]
        # with a callback it is something: a group keeps it (its value is None)
        assert await aflow.group(add.s(1, 1), aflow.chain().link(record.s())) == [2, None]


class HeaderBroke(Exception):
    pass


@aflow.task
async def broken(*args: Any) -> None:
    raise HeaderBroke("header broke")


errbacks_run: list[tuple[str, BaseException, list[str]]] = []


@aflow.task
async def on_error(
    exc: BaseException, tag: str, *, failures: dict[str, aflow.Failure] | None = None
) -> None:
    errbacks_run.append((tag, exc, sorted(failures or {})))


@pytest.fixture(autouse=True)
def _clear_errbacks() -> None:
    errbacks_run.clear()


def ran() -> list[str]:
    return sorted(tag for tag, _, _ in errbacks_run)


class TestChordHeaderFailureReachesTheBodyErrbacks:
    """Celery's ``chord_error_from_stack``: when a header task fails, the body never runs
    and its errbacks are called with the chord's error, once (t/integration/test_canvas.py
    test_*_errback_called_by_chord_from_*). aflow gives them the header task's own
    exception (Celery wraps it in a ChordError)."""

    HEADER = (add.s(1, 1), broken.s(), add.s(2, 2))

    async def test_an_errback_on_a_signature_body(self) -> None:
        with pytest.raises(HeaderBroke):
            await aflow.chord(self.HEADER, tsum.s().on_error(on_error.s("body")))
        assert ran() == ["body"]
        _, exc, failures = errbacks_run[0]
        assert isinstance(exc, HeaderBroke)
        assert failures == ["broken"]

    async def test_once_however_many_header_tasks_fail(self) -> None:
        header = [broken.s() for _ in range(5)]
        canvas = aflow.chord(header, tsum.s().on_error(on_error.s("body")))
        with pytest.raises(aflow.errors.GroupFailed):
            await aflow.run(canvas, on_error="continue")
        assert ran() == ["body"]
        assert len(errbacks_run[0][2]) == 5  # failures=: every header failure

    async def test_errbacks_on_the_members_of_a_group_body(self) -> None:
        body = aflow.group(
            tsum.s().on_error(on_error.s("first")),
            tsum.s(),
            identity.s().on_error(on_error.s("third")),
            aflow.group(tsum.s().on_error(on_error.s("nested"))),
        )
        with pytest.raises(HeaderBroke):
            await aflow.chord(self.HEADER, body)
        assert ran() == ["first", "nested", "third"]
        assert all(isinstance(exc, HeaderBroke) for _, exc, _ in errbacks_run)

    async def test_errbacks_on_the_body_group_itself_and_on_a_chain_body(self) -> None:
        with pytest.raises(HeaderBroke):
            await aflow.chord(self.HEADER, aflow.group(tsum.s()).on_error(on_error.s("group")))
        with pytest.raises(HeaderBroke):
            await aflow.chord(self.HEADER, (tsum.s() | add.s(1)).on_error(on_error.s("chain")))
        assert ran() == ["chain", "group"]

    async def test_not_the_errbacks_of_steps_inside_a_chain_body(self) -> None:
        """As Celery, which calls the errbacks of the body itself (the chain's)."""
        with pytest.raises(HeaderBroke):
            await aflow.chord(self.HEADER, tsum.s().on_error(on_error.s("step")) | add.s(1))
        assert ran() == []

    async def test_a_chord_body_gets_it_on_itself_not_on_its_own_body(self) -> None:
        inner = aflow.chord([identity.s()], tsum.s().on_error(on_error.s("inner body")))
        with pytest.raises(HeaderBroke):
            await aflow.chord(self.HEADER, inner.on_error(on_error.s("inner chord")))
        assert ran() == ["inner chord"]

    @pytest.mark.parametrize(
        "build",
        [
            pytest.param(lambda h, b: aflow.group(h) | b, id="group-piped-into-a-task"),
            pytest.param(lambda h, b: aflow.chain(aflow.group(h), b), id="chain-group-then-task"),
            pytest.param(
                lambda h, b: aflow.chain(aflow.group(h), aflow.group(), b),
                id="past-an-empty-group",
            ),
            pytest.param(lambda h, b: aflow.chord(h)(b), id="chord(header)(body)"),
        ],
    )
    async def test_every_way_of_building_the_chord(self, build: Any) -> None:
        with pytest.raises(HeaderBroke):
            await build(list(self.HEADER), tsum.s().on_error(on_error.s("body")))
        assert ran() == ["body"]

    async def test_the_chord_errback_and_the_body_errback_run_once_each(self) -> None:
        canvas = aflow.chord(self.HEADER, tsum.s().on_error(on_error.s("body")))
        with pytest.raises(HeaderBroke):
            await canvas.on_error(on_error.s("chord"))
        assert ran() == ["body", "chord"]

    async def test_a_header_member_errback_runs_too(self) -> None:
        header = [add.s(1, 1), broken.s().on_error(on_error.s("member"))]
        with pytest.raises(HeaderBroke):
            await aflow.chord(header, tsum.s().on_error(on_error.s("body")))
        assert ran() == ["body", "member"]

    async def test_a_body_failure_still_reaches_them_once(self) -> None:
        body = aflow.group(
            broken.s().on_error(on_error.s("failing")), tsum.s().on_error(on_error.s("ok"))
        )
        with pytest.raises(HeaderBroke):
            await aflow.chord([add.s(1, 1)], body)
        assert ran() == ["failing"]  # a member's errback is about that member

    async def test_not_called_when_nothing_fails(self) -> None:
        body = aflow.group(tsum.s().on_error(on_error.s("a")), tsum.s().on_error(on_error.s("b")))
        assert await aflow.chord([add.s(1, 1), add.s(2, 2)], body) == [6, 6]
        assert ran() == []

    async def test_a_header_threshold_that_tolerates_the_failure_is_no_failure(self) -> None:
        header = aflow.group(add.s(1, 1), broken.s(), add.s(2, 2)).set(min_success=2)

        @aflow.task
        async def total(values: list[int | None]) -> int:
            return sum(v for v in values if v is not None)

        assert await aflow.chord(header, total.s().on_error(on_error.s("body"))) == 6
        assert ran() == []
        below = header.set(min_success=3)
        with pytest.raises(aflow.errors.BelowThreshold):
            await aflow.chord(below, total.s().on_error(on_error.s("body")))
        assert ran() == ["body"]
        assert isinstance(errbacks_run[0][1], aflow.errors.BelowThreshold)

    def test_the_graph_draws_an_error_edge_from_the_header_too(self) -> None:
        graph = aflow.compile(aflow.chord([broken.s()], tsum.s().on_error(on_error.s("b"))))
        dot = graph.to_dot()
        # nodes: broken 0, join 1, tsum 2, on_error 3: edges from the header and the body
        assert 'n1 -> n3 [style=dashed, color=red, label="on error"];' in dot
        assert 'n2 -> n3 [style=dashed, color=red, label="on error"];' in dot


class TestLoneSignatureAsChordHeader:
    """Celery's ``_maybe_group``: one signature as a header is a one-member header."""

    async def test_a_signature_is_a_one_member_header(self) -> None:
        assert await aflow.chord(add.s(1, 2), identity.s()) == [3]
        assert await aflow.chord(add.s(1, 2))(tsum.s()) == 3

    async def test_a_chain_is_one_member_not_its_steps(self) -> None:
        """Differs on purpose: Celery runs a chain header's steps as parallel members."""
        assert await aflow.chord(add.s(1, 2) | add.s(3), identity.s()) == [6]

    async def test_a_chord_is_one_member(self) -> None:
        inner = aflow.chord([add.s(1, 1), add.s(2, 2)], tsum.s())
        assert await aflow.chord(inner, identity.s()) == [6]

    async def test_a_bare_task_takes_the_partial_arguments(self) -> None:
        assert await aflow.chord(add, identity.s()).clone(args=(4, 5)) == [9]

    def test_the_same_as_a_one_member_list(self) -> None:
        assert aflow.chord(add.s(1, 2), tsum.s()) == aflow.chord([add.s(1, 2)], tsum.s())
        assert aflow.Chord(add.s(1, 2), tsum.s()).header == aflow.group(add.s(1, 2))

    @pytest.mark.parametrize("header", [42, "add", {"add": 1}, None])
    def test_anything_else_is_a_typed_error_naming_the_header(self, header: Any) -> None:
        with pytest.raises(aflow.errors.SignatureError) as info:
            aflow.chord(header, tsum.s())
        assert info.value.argument == "header"
        assert "chord" in str(info.value)


class TestLinkingTwice:
    """Celery's ``append_to_list_option``: an equal callback is not added again."""

    async def test_the_same_callback_twice_runs_once(self) -> None:
        seen: list[int] = []

        @aflow.task
        async def record(value: int) -> None:
            seen.append(value)

        sig = add.s(2, 2).link(record.s()).link(record.s())
        assert len(aflow.compile(sig)) == 2
        assert await sig == 4
        assert seen == [4]

    async def test_the_same_errback_twice_runs_once(self) -> None:
        seen: list[BaseException] = []

        @aflow.task
        async def boom() -> None:
            raise KeyError("boom")

        @aflow.task
        async def on_error(exc: BaseException) -> None:
            seen.append(exc)

        sig = boom.s().link_error(on_error.s()).on_error(on_error.s()).link_error(on_error.s())
        with pytest.raises(KeyError):
            await sig
        assert len(seen) == 1

    def test_equal_callbacks_are_one_different_ones_are_kept(self) -> None:
        sig = add.s(1, 1).link(mul.s(2)).link(mul.s(2)).link(mul.s(3)).link(mul.s(2))
        assert len(aflow.compile(sig)) == 3  # add, mul(2), mul(3)
        assert sig == add.s(1, 1).link(mul.s(2)).link(mul.s(3))
        # a copy with other options is another callback
        assert len(aflow.compile(add.s(1, 1).link(mul.s(2)).link(mul.s(2).set(retries=1)))) == 3

    def test_on_a_chain_a_group_and_a_chord(self) -> None:
        for canvas in (
            add.s(1, 1) | mul.s(2),
            aflow.group(add.s(1, 1), add.s(2, 2)),
            aflow.chord([add.s(1, 1)], tsum.s()),
        ):
            once = canvas.link(identity.s())
            assert once.link(identity.s()) == once
            failing = canvas.link_error(identity.s())
            assert failing.link_error(identity.s()) == failing


class TestReplace:
    """Celery's ``Signature.replace``: args, kwargs, options replaced, not merged."""

    async def test_args_are_replaced_not_prepended(self) -> None:
        sig = add.s(1, 2, debug=True)
        new = sig.replace(args=(5, 6))
        assert new.args == (5, 6)
        assert new.kwargs == {"debug": True}
        assert await new == 11
        assert sig.args == (1, 2)  # a copy: the original is unchanged

    def test_kwargs_are_replaced_not_merged(self) -> None:
        sig = add.s(1, 2, debug=True)
        assert sig.replace(kwargs={}).kwargs == {}
        assert sig.replace(kwargs={"y": 3}).kwargs == {"y": 3}
        assert sig.replace(args=(1,), kwargs={"y": 3}) == add.s(1, y=3)

    def test_options_are_replaced_not_merged(self) -> None:
        sig = add.s(1, 2).set(timeout=1, retries=2)
        assert sig.replace(options={"retries": 5}).options == {"retries": 5}
        assert sig.replace(options={}).options == {}
        assert sig.replace(options={}) == add.s(1, 2)

    def test_none_keeps_each_part(self) -> None:
        sig = add.s(1, 2, debug=True).set(timeout=1)
        assert sig.replace() == sig
        assert sig.replace(kwargs={"debug": False}).args == (1, 2)

    def test_keeps_callbacks_and_immutability(self) -> None:
        sig = add.si(1, 2).link(identity.s()).link_error(identity.s())
        new = sig.replace(args=(3, 4))
        assert new.immutable
        assert new == add.si(3, 4).link(identity.s()).link_error(identity.s())

    async def test_a_replaced_partial_follows_a_parent(self) -> None:
        assert await (add.s(1, 1) | add.s(100).replace(args=(10,))) == 12

    @pytest.mark.parametrize(
        ("changes", "argument"),
        [
            pytest.param({"args": "12"}, "args", id="args-a-string"),
            pytest.param({"args": 3}, "args", id="args-not-iterable"),
            pytest.param({"args": {"x": 1}}, "args", id="args-a-mapping"),
            pytest.param({"kwargs": [("x", 1)]}, "kwargs", id="kwargs-a-list"),
            pytest.param({"kwargs": {1: 2}}, "kwargs", id="kwargs-not-names"),
            pytest.param({"options": ["timeout"]}, "options", id="options-a-list"),
            pytest.param({"options": {"retires": 3}}, "retires", id="an-unknown-option"),
            pytest.param({"options": {"immutable": True}}, "immutable", id="immutable-no-option"),
            pytest.param({"options": {"retries": -1}}, "retries", id="a-bad-option-value"),
        ],
    )
    def test_bad_input_is_a_typed_error_naming_it(
        self, changes: dict[str, Any], argument: str
    ) -> None:
        with pytest.raises(aflow.errors.SignatureError) as info:
            add.s(1, 2).replace(**changes)
        assert info.value.argument == argument
        assert "add" in str(info.value)


class MemberFailed(Exception):
    pass


@aflow.task
async def member_fails(i: int) -> None:
    raise MemberFailed(i)


class TestErrbacksOfAFailingGroup:
    """Celery calls the errback of every member that fails (test_group_children_with_errbacks:
    42 failing members, 42 errbacks). aflow runs an errback once per failing task too, but
    its default policy stops the run at the first failure: tasks cancelled or never
    started did not fail, so their errbacks do not run (the raised error says how many).
    ``on_error="continue"`` runs every task and so every failing task's errbacks; a group
    told to go on (``continue_on_failed``, a success threshold) runs its failed members'
    errbacks but not its own."""

    @staticmethod
    def members(n: int = 42) -> aflow.Group:
        return aflow.group(member_fails.s(i).on_error(on_error.s(f"m{i:02}")) for i in range(n))

    async def test_under_continue_every_members_errback_runs(self) -> None:
        with pytest.raises(aflow.errors.GroupFailed) as info:
            await aflow.run(self.members(), on_error="continue")
        assert ran() == [f"m{i:02}" for i in range(42)]
        # each errback got its own member's failure
        assert sorted(exc.args[0] for _, exc, _ in errbacks_run) == list(range(42))
        assert len(info.value.exceptions) == 42
        notes = "\n".join(info.value.__notes__)
        assert "42 error callback(s) ran: 'on_error', 'on_error#2'" in notes
        assert "and 37 more" in notes
        assert "did not run" not in notes

    async def test_fail_fast_runs_the_errbacks_of_those_that_failed_and_says_so(self) -> None:
        with pytest.raises(MemberFailed) as info:  # one at a time: the first stops the run
            await aflow.run(self.members(), max_concurrency=1)
        assert ran() == ["m00"]
        notes = "\n".join(info.value.__notes__)
        assert "1 error callback(s) ran: 'on_error'" in notes
        assert "41 error callback(s) did not run: the run stopped at its first failure" in notes
        assert "on_error='continue'" in notes

    async def test_fail_fast_members_failing_together_all_get_their_errbacks(self) -> None:
        """They resume in the loop turn that opens the gate, before the stop reaches them."""
        gate = anyio.Event()

        @aflow.task
        async def fails_at_the_gate(i: int) -> None:
            await gate.wait()
            raise MemberFailed(i)

        @aflow.task
        async def opens_the_gate() -> None:
            await anyio.wait_all_tasks_blocked()
            gate.set()

        group = aflow.group(
            *(fails_at_the_gate.s(i).on_error(on_error.s(f"m{i}")) for i in range(3)),
            opens_the_gate.s(),
        )
        with pytest.raises(aflow.errors.GroupFailed) as info:
            await group
        assert len(info.value.exceptions) == 3  # all three failed before the stop reached them
        assert ran() == ["m0", "m1", "m2"]

    async def test_fail_fast_members_failing_while_cancelled_get_their_errbacks(self) -> None:
        @aflow.task
        async def fails_when_cancelled(i: int) -> None:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                raise MemberFailed(f"cleanup {i}") from None  # its cleanup fails

        @aflow.task
        async def fails_first() -> None:
            await anyio.wait_all_tasks_blocked()
            raise MemberFailed("first")

        group = aflow.group(
            fails_first.s().on_error(on_error.s("first")),
            *(fails_when_cancelled.s(i).on_error(on_error.s(f"m{i}")) for i in range(3)),
        )
        with pytest.raises(aflow.errors.GroupFailed):
            await group
        assert ran() == ["first", "m0", "m1", "m2"]

    async def test_a_member_cancelled_mid_way_gets_no_errback(self) -> None:
        @aflow.task
        async def waits() -> None:
            await anyio.sleep_forever()

        @aflow.task
        async def fails_first() -> None:
            await anyio.wait_all_tasks_blocked()
            raise MemberFailed("first")

        group = aflow.group(
            fails_first.s().on_error(on_error.s("first")),
            waits.s().on_error(on_error.s("cancelled")),
        )
        with pytest.raises(MemberFailed) as info:
            await group
        assert ran() == ["first"]
        assert "1 error callback(s) did not run" in "\n".join(info.value.__notes__)

    async def test_a_group_told_to_go_on_runs_its_members_errbacks_not_its_own(self) -> None:
        group = aflow.group(
            member_fails.s(0).on_error(on_error.s("m0")),
            add.s(1, 1).on_error(on_error.s("ok")),
            member_fails.s(2).on_error(on_error.s("m2")),
        )
        kept_going = group.set(continue_on_failed=True).on_error(on_error.s("group"))
        assert await kept_going == [None, 2, None]
        assert ran() == ["m0", "m2"]
        errbacks_run.clear()
        chained = (kept_going | identity.s()).on_error(on_error.s("chain"))
        assert await chained == [None, 2, None]
        assert ran() == ["m0", "m2"]

    async def test_a_success_threshold_runs_its_failed_members_errbacks_not_its_own(
        self,
    ) -> None:
        group = aflow.group(
            member_fails.s(0).on_error(on_error.s("m0")),
            add.s(1, 1),
            add.s(2, 2),
        )
        assert await group.set(min_success=2).on_error(on_error.s("group")) == [None, 2, 4]
        assert ran() == ["m0"]

    async def test_each_errback_runs_once_per_task_not_per_failure_seen(self) -> None:
        """A group's own errback runs once for all its members (aflow differs on purpose:
        Celery links it to every member, so 42 failures call it 42 times)."""
        group = self.members(5).on_error(on_error.s("group"))
        with pytest.raises(aflow.errors.GroupFailed):
            await aflow.run(group, on_error="continue")
        assert ran() == ["group", "m00", "m01", "m02", "m03", "m04"]
