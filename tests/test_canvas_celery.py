"""The rest of Celery's canvas semantics (issue 18): empty groups and chains, a chord
header's failure reaching its body's errbacks, a lone signature as a chord header,
callbacks linked twice, ``Signature.replace``, and the errbacks of a failing group.

Behaviour taken from Celery's own canvas (celery/canvas.py, t/unit/tasks/test_canvas.py,
t/integration/test_canvas.py); where aflow differs on purpose, the test says so.
"""

from __future__ import annotations

from typing import Any

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
