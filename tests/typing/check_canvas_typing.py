"""Checked by ``mypy --strict`` (make lint), never run: the canvas idioms of the README.

``task.s()`` may leave out the first argument, which the parent's result fills in a
chain (Celery's rule); ``|``, ``.link()``, ``.link_error()`` and ``chord()`` then check
that the parent's result fits it. Every ``# type: ignore[code]`` line must fail:
``--strict`` reports an ignore that is not needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, assert_type

import aflow
from aflow import Signature

if TYPE_CHECKING:  # (typing only: no such class at run time)
    from aflow._canvas import PartialSignature  # noqa: F401 (in assert_type strings)


@dataclass
class Order:
    id: str


@dataclass
class Receipt:
    order_id: str
    amount: int


@aflow.task
async def load(order_id: str) -> Order:
    return Order(order_id)


@aflow.task
async def charge(order: Order) -> Receipt:
    return Receipt(order.id, 10)


@aflow.task
async def ship(receipt: Receipt, address: str, *, express: bool = False) -> str:
    return address


@aflow.task
async def add(x: int, y: int) -> int:
    return x + y


@aflow.task
async def inc(x: int, by: int = 1) -> int:
    return x + by


@aflow.task
async def tsum(numbers: list[int]) -> int:
    return sum(numbers)


@aflow.task
async def first(values: tuple[int, ...]) -> int:
    return values[0]


@aflow.task
async def report(value: object, label: str) -> None:
    pass


@aflow.task
async def on_failure(error: BaseException) -> None:
    pass


@aflow.task
async def on_value_error(error: ValueError) -> None:
    pass


@aflow.task
async def on_failures(
    error: Exception, *, failures: dict[str, aflow.Failure], results: dict[str, Any]
) -> None:
    pass


@aflow.task
async def on_failures_only(error: BaseException, *, failures: dict[str, aflow.Failure]) -> None:
    pass


@aflow.task
async def on_results_only(error: BaseException, *, results: dict[str, Any]) -> None:
    pass


async def signatures() -> None:
    # the full argument list, as before: a plain Signature
    assert_type(add.s(2, 2), Signature[int])
    assert_type(await add.s(2, 2), int)
    # all but the first argument: a Signature that knows what its parent must give
    assert_type(charge.s(), "PartialSignature[Order, Receipt]")
    assert_type(ship.s("1 Main St"), "PartialSignature[Receipt, str]")
    assert_type(inc.s(), "PartialSignature[int, int]")
    assert_type(on_failures.s(), "PartialSignature[Exception, None]")
    assert_type(await charge.s(Order("o-1")), Receipt)
    partial: Signature[str] = ship.s("1 Main St", express=True)
    assert_type(await partial, str)
    add.s("2")  # type: ignore[call-overload]
    add.s()  # type: ignore[call-overload]
    add.s(1, 2, 3)  # type: ignore[call-overload]
    charge.s(Order("o-1"), 3)  # type: ignore[call-overload]
    ship.s("1 Main St", express="yes")  # type: ignore[call-overload]
    ship.s("1 Main St", fast=True)  # type: ignore[call-overload]
    # .si() ignores the parent's result: always the full argument list
    assert_type(charge.si(Order("o-1")), Signature[Receipt])
    charge.si()  # type: ignore[call-arg]
    # the loosely typed forms keep the result type and check nothing
    assert_type(add.signature((4,)), Signature[int])
    assert_type(aflow.signature(add, (4,)), Signature[int])


async def chains() -> None:
    saga = load.s("o-1") | charge.s() | ship.s("1 Main St")
    assert_type(saga, aflow.Canvas[str])
    assert_type(await saga, str)
    assert_type(await (add.s(2, 2) | add.s(4) | inc.s()), int)
    assert_type(await (add.s(2, 2) | inc.s(by=3)), int)
    # a full signature or an immutable one takes any parent (Celery prepends anyway)
    assert_type(load.s("o-1") | add.si(1, 2), aflow.Canvas[int])
    # the parent's result must fit the first parameter
    load.s("o-1") | ship.s("1 Main St")  # type: ignore[operator]
    add.s(1, 2) | charge.s()  # type: ignore[operator]
    (load.s("o-1") | charge.s()) | charge.s()  # type: ignore[operator]
    # options keep the check; .set(immutable=True) lifts it
    assert_type(load.s("o-1") | charge.s().set(retries=2), aflow.Canvas[Receipt])
    add.s(1, 2) | charge.s().set(retries=2)  # type: ignore[operator]
    assert_type(add.s(1, 2) | charge.s().set(immutable=True), aflow.Canvas[Receipt])
    assert_type(aflow.chain(add.s(1, 2), inc.s()), aflow.Chain[Any])


async def groups_and_chords() -> None:
    assert_type(await aflow.group(add.s(i, i) for i in range(10)), list[Any])
    assert_type(await aflow.chord((add.s(i, i) for i in range(100)), tsum.s()), int)
    assert_type(await aflow.chord([add.s(1, 1)])(tsum.s()), int)
    assert_type(await (aflow.group(add.s(1, 1), add.s(2, 2)) | tsum.s()), int)
    # a chord body gets the header's list
    aflow.chord([add.s(1, 1)], charge.s())  # type: ignore[arg-type]
    aflow.chord([add.s(1, 1)])(first.s())  # type: ignore[arg-type]
    assert_type(add.chunks([(1, 2)], 1), aflow.Group)
    # a success threshold keeps a group a group (failed members leave None)
    quotes = aflow.group(add.s(i, i) for i in range(5)).set(min_success=3)
    assert_type(quotes, aflow.Group)
    assert_type(await (quotes | tsum.s()), int)
    # one signature, chain or chord as a header is a one-member header
    assert_type(await aflow.chord(add.s(1, 1), tsum.s()), int)
    assert_type(await aflow.chord(add.s(1, 1) | inc.s(), tsum.s()), int)
    aflow.chord(add.s(1, 1), charge.s())  # type: ignore[arg-type]
    aflow.chord(42, tsum.s())  # type: ignore[call-overload]


async def replacing() -> None:
    # replace() says what the call is: a plain Signature of the same result
    assert_type(add.s(1, 2).replace(args=(3, 4)), Signature[int])
    assert_type(add.s(1, 2).replace(kwargs={}, options={"retries": 2}), Signature[int])
    # a partial signature may be given all its arguments: no longer known to be partial
    assert_type(charge.s().replace(args=(Order("o-1"),)), Signature[Receipt])
    assert_type(await charge.s().replace(args=(Order("o-1"),)), Receipt)
    add.s(1, 2).replace(args=(3, 4), timeout=1)  # type: ignore[call-arg]
    add.s(1, 2).replace(kwargs=[("y", 1)])  # type: ignore[arg-type]


async def mapping() -> None:
    assert_type(await tsum.map([range(10), range(100)]), list[int])
    assert_type(await add.starmap([(1, 2), (3, 4)]), list[int])
    assert_type(await (add.s(1, 2) | tsum.map()), list[int])


async def callbacks() -> None:
    # a link gets the result
    assert_type(add.s(2, 2).link(report.s("on success")), Signature[int])
    assert_type(load.s("o-1").link(charge.s()), Signature[Order])
    add.s(2, 2).link(charge.s())  # type: ignore[arg-type]
    # an errback gets the exception, and failures= / results= if it names them
    assert_type(add.s(1, 2).link_error(on_failure.s()), Signature[int])
    assert_type(add.s(1, 2).link_error(report.s("on error")), Signature[int])
    chord = aflow.chord((add.s(i, i) for i in range(3)), tsum.s())
    assert_type(chord.on_error(on_failures.s()), aflow.Chord[int])
    assert_type(chord.link_error(on_failures_only.s()), aflow.Chord[int])
    assert_type(chord.link_error(on_results_only.s()), aflow.Chord[int])
    # an errback must take any exception
    add.s(1, 2).link_error(on_value_error.s())  # type: ignore[arg-type]
    add.s(1, 2).link_error(charge.s())  # type: ignore[arg-type]
    # in a flow (aflow.patterns), a chain of open signatures is one item
    assert_type((load.s("o-1") | charge.s()).set(provides="receipt"), aflow.Canvas[Receipt])
