"""Canvases as awaitables everywhere (issue 17, item 5): ``asyncio.gather``, ``wait_for``,
``ensure_future``, ``shield``, ``as_completed``, ``TaskGroup``, anyio task groups (on trio
too), on asyncio and on uvloop; and the hash that lets asyncio key them.

A canvas is an immutable value with value equality, so asyncio treats two *equal*
canvases as one awaitable, as it does a future passed twice: ``gather(wf, wf)`` runs the
workflow once and gives both slots its value. ``aflow.run(wf)`` is the coroutine form,
for ``create_task`` and for running equal workflows each on its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import math
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any
from unittest import mock

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aflow
from aflow.patterns import linear_flow as lf

from .helpers import on_each_backend

pytestmark = pytest.mark.both_loops

LOG: list[str] = []
#: Opened by a test to let ``hold`` finish; a fresh one per test (see the fixture).
GATE: dict[str, anyio.Event] = {}
REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST", default="unset")


class Boom(Exception):
    pass


@aflow.task
async def book(name: str) -> str:
    LOG.append(f"do {name}")
    return name


@book.revert
async def unbook(name: str, *, result: Any) -> None:
    await anyio.lowlevel.checkpoint()  # an unwind that yields: the caller must wait for it
    LOG.append(f"undo {name}")


@aflow.task
async def hold(value: Any) -> Any:
    """Stays running until the test opens the gate."""
    LOG.append(f"hold {value}")
    GATE["started"].set()
    await GATE["open"].wait()
    LOG.append(f"released {value}")
    return value


@aflow.task
async def fail(*args: Any) -> None:
    raise Boom("boom")


@aflow.task
async def add(x: int, y: int) -> int:
    LOG.append(f"add {x} {y}")
    return x + y


@aflow.task
async def request_id(*args: Any) -> str:
    return REQUEST.get()


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    LOG.clear()
    GATE.clear()
    yield
    GATE.clear()


def gate() -> None:
    """Fresh events for ``hold`` (made inside the test: on its loop and backend)."""
    GATE["started"] = anyio.Event()
    GATE["open"] = anyio.Event()


def held(name: str) -> aflow.Canvas[Any]:
    """``book(name)``, whose revert records ``undo name``, then a step that holds."""
    return book.s(name) | hold.s()


# --- asyncio.gather -----------------------------------------------------------------------


async def test_gather_runs_each_canvas_and_returns_their_values_in_order() -> None:
    chained = add.s(1, 2) | add.s(10)
    grouped = aflow.group(add.s(i, i) for i in range(3))
    assert await asyncio.gather(add.s(2, 2), chained, grouped) == [4, 13, [0, 2, 4]]


async def test_gather_of_many_canvases_of_one_task() -> None:
    # (each has its own hash: the arguments are plain scalars, so nothing degrades to
    # comparing every canvas with every other as asyncio keys them)
    values = await asyncio.gather(*(add.s(i, 1) for i in range(300)))
    assert values == [i + 1 for i in range(300)]


async def test_gather_of_equal_canvases_runs_the_workflow_once_for_both_slots() -> None:
    """asyncio's own rule: equal awaitables are one (as a future passed twice)."""
    assert add.s(5, 5) == add.s(5, 5)
    assert await asyncio.gather(add.s(5, 5), add.s(5, 5)) == [10, 10]
    assert LOG == ["add 5 5"]
    LOG.clear()
    wf = add.s(1, 1)
    assert await asyncio.gather(wf, wf) == [2, 2]
    assert LOG == ["add 1 1"]


async def test_gather_of_run_coroutines_runs_equal_workflows_each_on_its_own() -> None:
    wf = add.s(5, 5)
    assert await asyncio.gather(aflow.run(wf), aflow.run(wf)) == [10, 10]
    assert LOG == ["add 5 5", "add 5 5"]


async def test_gather_raises_the_tasks_own_exception_after_its_run_unwound() -> None:
    with pytest.raises(Boom):
        await asyncio.gather(add.s(1, 1), book.s("a") | fail.s())
    assert "undo a" in LOG  # that run's revert ran before its exception reached gather
    results = await asyncio.gather(add.s(1, 1), fail.s(), return_exceptions=True)
    assert results[0] == 2
    assert isinstance(results[1], Boom)


async def test_cancelling_a_gather_cancels_and_unwinds_every_run() -> None:
    gate()
    outer = asyncio.ensure_future(asyncio.gather(held("a"), add.s(1, 1)))
    await GATE["started"].wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    # gather's future ends only once every child has: the revert has run by now
    assert LOG[-1] == "undo a"
    assert "released a" not in LOG


# --- wait_for, ensure_future, shield, as_completed --------------------------------------


async def test_wait_for_returns_the_value_or_raises_the_tasks_own_exception() -> None:
    assert await asyncio.wait_for(add.s(2, 3), timeout=30) == 5
    LOG.clear()
    with pytest.raises(Boom):
        await asyncio.wait_for(book.s("a") | fail.s(), timeout=30)
    assert LOG == ["do a", "undo a"]


async def test_cancelling_a_wait_for_unwinds_the_run_before_it_returns() -> None:
    gate()
    waiting = asyncio.ensure_future(asyncio.wait_for(held("a"), timeout=30))
    await GATE["started"].wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert LOG == ["do a", "hold a", "undo a"]


async def test_a_wait_for_timeout_unwinds_the_run_before_raising() -> None:
    gate()  # never opened: only the timeout ends the run
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(held("a"), timeout=0.1)
    # Whatever had run when the time was up (in practice "do a" and "hold a") was undone,
    # in reverse, before wait_for raised; nothing runs after.
    done = [entry.removeprefix("do ") for entry in LOG if entry.startswith("do ")]
    undone = [entry.removeprefix("undo ") for entry in LOG if entry.startswith("undo ")]
    assert undone == list(reversed(done))
    after = list(LOG)
    await anyio.wait_all_tasks_blocked()
    assert after == LOG
    assert "released a" not in LOG


async def test_ensure_future_makes_a_task_of_a_canvas() -> None:
    task = asyncio.ensure_future(add.s(20, 22))
    assert isinstance(task, asyncio.Task)
    assert await task == 42
    failing = asyncio.ensure_future(book.s("a") | fail.s())
    with pytest.raises(Boom):
        await failing
    assert LOG[-1] == "undo a"


async def test_cancelling_an_ensure_future_task_unwinds_the_run() -> None:
    gate()
    task = asyncio.ensure_future(held("a"))
    await GATE["started"].wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert LOG == ["do a", "hold a", "undo a"]


async def test_shield_keeps_the_run_going_when_its_caller_is_cancelled() -> None:
    assert await asyncio.shield(add.s(1, 2)) == 3
    LOG.clear()
    gate()
    caller = asyncio.ensure_future(asyncio.shield(held("a")))
    await GATE["started"].wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    GATE["open"].set()  # the shielded run was not cancelled: it finishes, nothing undone
    others = asyncio.all_tasks() - {asyncio.current_task()}
    await asyncio.gather(*others)
    assert LOG == ["do a", "hold a", "released a"]


async def test_as_completed_yields_each_canvas_value() -> None:
    results = [await done for done in asyncio.as_completed([add.s(1, 1), add.s(2, 2)])]
    assert sorted(results) == [2, 4]
    # as_completed makes a set of its arguments: equal canvases are one
    results = [await done for done in asyncio.as_completed([add.s(3, 3), add.s(3, 3)])]
    assert results == [6]


# --- create_task, TaskGroup ----------------------------------------------------------------


async def test_create_task_takes_the_run_coroutine_and_refuses_a_canvas() -> None:
    assert await asyncio.create_task(aflow.run(add.s(1, 2))) == 3
    # Task() wants a coroutine, and asyncio builds the message itself (from the repr):
    # aflow cannot add "use aflow.run(wf)" to it.
    with pytest.raises(TypeError, match=r"a coroutine was expected, got add\.s\(1, 2\)"):
        asyncio.create_task(add.s(1, 2))  # type: ignore[arg-type]  # noqa: RUF006 (never made)


async def test_a_task_group_runs_canvases_through_run_coroutines() -> None:
    async with asyncio.TaskGroup() as tg:
        first = tg.create_task(aflow.run(add.s(1, 1)))
        second = tg.create_task(aflow.run(add.s(1, 1)))
        with pytest.raises(TypeError, match="a coroutine was expected"):
            tg.create_task(add.s(1, 1))  # type: ignore[arg-type]
    assert (first.result(), second.result()) == (2, 2)
    assert LOG == ["add 1 1", "add 1 1"]  # coroutines: each its own run


async def test_a_failing_run_in_a_task_group_unwinds_and_cancels_its_siblings() -> None:
    gate()

    async def failing_after_start() -> None:
        await GATE["started"].wait()
        await aflow.run(fail.s())

    async def both() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(aflow.run(held("a")))
            tg.create_task(failing_after_start())

    with pytest.raises(ExceptionGroup) as info:
        await both()
    assert [type(e) for e in info.value.exceptions] == [Boom]
    assert LOG == ["do a", "hold a", "undo a"]  # the sibling run was cancelled, and undone


# --- anyio task groups: asyncio, uvloop and trio ---------------------------------------


@on_each_backend
async def test_an_anyio_task_group_starts_runs_with_start_soon() -> None:
    values: list[Any] = []

    async def keep(wf: aflow.Canvas[Any]) -> None:
        values.append(await wf)

    async with anyio.create_task_group() as tg:
        tg.start_soon(aflow.run, add.s(1, 1))
        tg.start_soon(keep, add.s(1, 1) | add.s(2))
        tg.start_soon(keep, aflow.group(add.s(3, 3), add.s(4, 4)))
    assert sorted(map(str, values)) == ["4", "[6, 8]"]
    assert LOG.count("add 1 1") == 2


@on_each_backend
async def test_a_canvas_is_not_a_start_soon_function() -> None:
    with pytest.raises(ExceptionGroup) as info:  # (anyio raises it inside the group)
        async with anyio.create_task_group() as tg:
            tg.start_soon(add.s(1, 1))  # type: ignore[arg-type]
    assert [type(e) for e in info.value.exceptions] == [TypeError]
    assert "not callable" in str(info.value.exceptions[0])


@on_each_backend
async def test_a_failing_run_in_an_anyio_task_group_raises_its_exception_and_unwinds() -> None:
    with pytest.raises(ExceptionGroup) as info:
        async with anyio.create_task_group() as tg:
            tg.start_soon(aflow.run, book.s("a") | fail.s())
    assert [type(e) for e in info.value.exceptions] == [Boom]
    assert LOG == ["do a", "undo a"]


@on_each_backend
async def test_cancelling_an_anyio_task_group_unwinds_its_runs() -> None:
    gate()
    async with anyio.create_task_group() as tg:
        tg.start_soon(aflow.run, held("a"))
        await GATE["started"].wait()
        tg.cancel_scope.cancel()
    assert LOG == ["do a", "hold a", "undo a"]


@on_each_backend
async def test_a_canvas_is_awaited_directly_on_every_backend() -> None:
    assert await (add.s(1, 1) | add.s(1)) == 3


# --- contextvars ----------------------------------------------------------------------------


async def test_the_callers_context_reaches_the_tasks_through_every_form() -> None:
    REQUEST.set("req-1")
    wf = request_id.s()
    assert await wf == "req-1"
    assert await asyncio.gather(wf, request_id.s(1)) == ["req-1", "req-1"]
    assert await asyncio.wait_for(wf, timeout=30) == "req-1"
    assert await asyncio.ensure_future(wf) == "req-1"
    assert await asyncio.shield(wf) == "req-1"
    assert await asyncio.create_task(aflow.run(wf)) == "req-1"
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(aflow.run(wf))
    assert task.result() == "req-1"
    # a task made in another context sees that one
    other = contextvars.copy_context()
    other.run(REQUEST.set, "req-2")
    assert await asyncio.create_task(aflow.run(wf), context=other) == "req-2"


@on_each_backend
async def test_the_callers_context_reaches_the_tasks_of_an_anyio_task_group() -> None:
    REQUEST.set("req-3")
    seen: list[str] = []

    async def keep() -> None:
        seen.append(await request_id.s())

    async with anyio.create_task_group() as tg:
        tg.start_soon(keep)
    assert seen == ["req-3"]


# --- the hash -------------------------------------------------------------------------------


class Unhashable:
    """A value with value equality and no hash (as a dataclass(eq=True) has)."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Unhashable):
            return NotImplemented
        return bool(self.value == other.value)

    def __repr__(self) -> str:
        return f"Unhashable({self.value!r})"


class HashRaises:
    """Claims a hash and fails to give it: a canvas's hash must not ask."""

    def __hash__(self) -> int:
        raise AssertionError("hashed")

    def __eq__(self, other: object) -> bool:
        return True if other is self else NotImplemented


class Level(enum.IntEnum):
    ONE = 1


def test_canvases_hash_whatever_their_arguments() -> None:
    odd = [[1], {"k": [1]}, {1}, Unhashable([1]), HashRaises(), mock.ANY, float("nan")]
    canvases: list[aflow.Canvas[Any]] = [
        book.s(*odd),
        book.s(x=odd, y=HashRaises()),
        book.si([1]).set(name="named", retries=2),
        book.s([1]) | hold.s() | add.s([2]),
        aflow.group(book.s([i]) for i in range(3)),
        aflow.chord([book.s({1: 2})], hold.s()),
        aflow.group().link(hold.s([1])).link_error(fail.s({})),
        lf.Flow("f").add(book).as_canvas().clone(kwargs={"name": ["x"]}),
    ]
    assert len({hash(canvas) for canvas in canvases}) == len(canvases)
    assert len(set(canvases)) == len(canvases)
    for canvas in canvases:
        assert canvas in set(canvases)
        assert canvas in {canvas: 1}


def test_equal_canvases_hash_equal() -> None:
    pairs = [
        (add.s(1, 2), add.signature((1, 2))),
        (add.s(1, [2]), add.s(1, [2])),  # unhashable, and equal
        (add.s(1, y={"k": [2]}), add.s(1).clone(kwargs={"y": {"k": [2]}})),
        (add.s(1), add.s(1.0)),
        (add.s(True), add.s(1)),
        (add.s(0.0), add.s(-0.0)),
        (add.si(1, 1), add.signature((1, 1), immutable=True)),
        (aflow.chain(add.s(1, 1), add.s(1)), add.s(1, 1) | add.s(1)),
        (add.s(1, 1) | add.s(2) | add.s(3), aflow.chain(add.s(1, 1), add.s(2) | add.s(3))),
        (aflow.group(add.s(i, i) for i in range(3)), aflow.group([add.s(i, i) for i in range(3)])),
        (aflow.chord([add.s(1, 1)], add.s(2)), aflow.group(add.s(1, 1)) | add.s(2)),
        (add.s(1).set(retries=2, timeout=3), add.s(1).set(timeout=3).set(retries=2)),
        (add.s(1).link(add.s(2)), add.s(1).link(add.s(2))),
    ]
    flow = lf.Flow("f").add(book)
    pairs.append((flow.as_canvas(), flow.as_canvas()))
    for a, b in pairs:
        assert a == b
        assert hash(a) == hash(b)
        assert len({a, b}) == 1


def test_a_scalar_and_a_look_alike_of_another_type_are_not_equal_signatures() -> None:
    """The one place where equality is stricter than comparing the arguments: where
    one signature holds a plain scalar (hashed by value) and the other an object of
    another type that compares equal to it (not hashed)."""
    assert add.s(1) != add.s(Decimal(1))
    assert add.s(1) != add.s(Fraction(1))
    assert add.s(1) != add.s(Level.ONE)
    assert add.s(1) != add.s(mock.ANY)
    assert add.s(x=1) != add.s(x=mock.ANY)
    # objects that are not plain scalars still compare by value, as before
    assert add.s(mock.ANY) == add.s(mock.ANY)
    assert add.s([1], {1}) == add.s([1], frozenset({1}))
    assert add.s(Decimal(1)) == add.s(Fraction(1))
    assert add.s(Unhashable([1])) == add.s(Unhashable([1]))


def test_the_hash_reads_a_big_group_only_at_its_head() -> None:
    """Hashing never walks a group's members: 10,000 of them hash as fast as one."""
    members = [add.s(i, i) for i in range(10_000)]
    big = aflow.group(members)
    other = aflow.group([members[0], *(add.s([i], i) for i in range(1, 10_000))])
    assert hash(big) == hash(other)  # (only the count and the first member count)
    assert big != other
    assert len({big, other}) == 2
    deep: aflow.Canvas[Any] = add.s(1)
    for _ in range(5_000):  # deeper than the recursion limit: the hash does not recurse
        deep = aflow.group(deep)
    hash(deep)


# random canvases: a == b implies hash(a) == hash(b), and the hash never raises

NAN = float("nan")
SHARED_LIST = [1, 2]
#: Values, each with the values that compare equal to it (some hashable, some not)
TWINS: dict[str, list[Any]] = {
    "one": [1, 1.0, True, Decimal(1), Fraction(1), Level.ONE, complex(1, 0), mock.ANY],
    "zero": [0, 0.0, -0.0, False, Decimal(0), mock.ANY],
    "text": ["a", mock.ANY],
    "bytes": [b"a", mock.ANY],
    "none": [None, mock.ANY],
    "list": [[1, 2], SHARED_LIST, mock.ANY],
    "tuple": [(1, 2), (1.0, 2), mock.ANY],
    "set": [{1}, frozenset({1}), {1.0}, mock.ANY],
    "dict": [{"k": [1]}, {"k": [1.0]}, mock.ANY],
    "object": [Unhashable([1]), Unhashable([1.0]), mock.ANY],
    "nan": [NAN, mock.ANY],
    "raises": [HashRaises(), mock.ANY],
}
TASKS = [add, book, hold]


@st.composite
def canvas_pairs(draw: st.DrawFn) -> tuple[aflow.Canvas[Any], aflow.Canvas[Any]]:
    """Two canvases of one shape whose arguments are drawn from the same families of
    look-alikes: often equal, often equal but for one argument's type."""

    def value() -> tuple[Any, Any]:
        family = TWINS[draw(st.sampled_from(sorted(TWINS)))]
        pick = st.integers(0, len(family) - 1)  # (sampled_from would hash the values)
        return family[draw(pick)], family[draw(pick)]

    def build(depth: int) -> tuple[aflow.Canvas[Any], aflow.Canvas[Any]]:
        kind = draw(
            st.sampled_from(["sig", "sig", "chain", "group", "chord"] if depth else ["sig"])
        )
        if kind == "sig":
            task = draw(st.sampled_from(TASKS))
            args = [value() for _ in range(draw(st.integers(0, 2)))]
            names = draw(st.lists(st.sampled_from(["x", "y"]), max_size=2, unique=True))
            kwargs = [(name, value()) for name in names]
            immutable = draw(st.booleans())
            options = draw(st.sampled_from([{}, {"name": "n"}, {"retries": 1}]))

            def sig(side: int) -> aflow.Canvas[Any]:
                return aflow.signature(
                    task,
                    tuple(pair[side] for pair in args),
                    {name: pair[side] for name, pair in kwargs},
                    immutable=immutable,
                    **options,
                )

            return sig(0), sig(1)
        members = [
            build(depth - 1) for _ in range(draw(st.integers(1 if kind != "group" else 0, 3)))
        ]
        firsts, seconds = [m[0] for m in members], [m[1] for m in members]
        if kind == "chain":
            if draw(st.booleans()):
                return aflow.chain(*firsts), aflow.chain(*seconds)
            first, second = firsts[0], seconds[0]
            for a, b in zip(firsts[1:], seconds[1:], strict=True):
                first, second = first | a, second | b
            return first, second
        if kind == "group":
            return aflow.group(firsts), aflow.group(seconds)
        body = build(depth - 1)
        return aflow.chord(firsts, body[0]), aflow.chord(seconds, body[1])

    return build(draw(st.integers(0, 3)))


@settings(max_examples=400, deadline=None)
@given(pair=canvas_pairs())
def test_equal_random_canvases_hash_equal(
    pair: tuple[aflow.Canvas[Any], aflow.Canvas[Any]],
) -> None:
    a, b = pair
    assert isinstance(hash(a), int)
    assert isinstance(hash(b), int)
    assert a == a
    if a == b:
        assert hash(a) == hash(b)
        assert b == a
        assert len({a, b}) == 1


def test_nan_arguments_keep_equality_by_identity() -> None:
    nan = float("nan")
    assert add.s(nan) == add.s(nan)  # the same object: equal, as in a tuple
    assert hash(add.s(nan)) == hash(add.s(nan))
    assert add.s(nan) != add.s(float("nan"))
    assert math.isnan(add.s(nan).args[0])
