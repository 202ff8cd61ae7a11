"""Checked by ``mypy --strict`` (make lint), never run: user signatures type-check through aflow."""

from __future__ import annotations

from typing import assert_type

import aflow


@aflow.task
async def add(x: int, y: int) -> int:
    return x + y


@aflow.task(retries=2, timeout=1.5, limit="db")
async def fetch(url: str, *, retries_hint: int = 0) -> bytes:
    return b""


@aflow.task
def blocking(path: str) -> list[str]:
    return [path]


async def direct_calls() -> None:
    assert_type(await add(1, 2), int)
    assert_type(await fetch("u"), bytes)
    assert_type(await blocking("p"), list[str])
    await add(1, "2")  # type: ignore[arg-type]
    await add(1)  # type: ignore[call-arg]
    await fetch("u", retries_hint="x")  # type: ignore[arg-type]


async def signatures() -> None:
    assert_type(add.s(1, 2), aflow.Signature[int])
    assert_type(add.si(1, 2), aflow.Signature[int])
    assert_type(await add.s(1, 2), int)
    assert_type(await blocking.s("p"), list[str])
    add.s(1, "2")  # type: ignore[call-overload]
    add.si(x=1, z=2)  # type: ignore[call-arg]
    # The loosely typed form keeps the result type (and checks nothing).
    assert_type(add.signature((4,)), aflow.Signature[int])
    assert_type(aflow.signature(add, (4,)), aflow.Signature[int])
    assert_type(add.map([1, 2]), aflow.Signature[list[int]])
    assert_type(add.chunks([(1, 2)], 1), aflow.Group)


async def running() -> None:
    assert_type(await aflow.run(add.s(1, 2)), int)
    async with aflow.Runtime() as rt:
        run = await rt.submit(add.s(1, 2))
        assert_type(run, aflow.Run[int])
        assert_type(await run.result(), int)
    assert_type(aflow.run_sync(add.s(1, 2)), int)
