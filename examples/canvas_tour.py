"""A tour of the canvas: signatures, partials, chains, groups, chords, map, callbacks."""

from __future__ import annotations

import aflow


@aflow.task
async def add(x: int, y: int) -> int:
    return x + y


@aflow.task
async def mul(x: int, y: int) -> int:
    return x * y


@aflow.task
async def tsum(numbers: list[int]) -> int:
    return sum(numbers)


@aflow.task
async def report(value: object, label: str) -> None:
    print(f"  callback {label}: {value!r}")


@aflow.task
async def fail(x: int) -> int:
    raise ValueError(f"cannot handle {x}")


async def main() -> None:
    print("direct call        ", await add(2, 2))
    print("signature          ", await add.s(2, 2))
    print("partial (prepend)  ", await add.signature((2,)).clone(args=(4,)))
    print("chain              ", await (add.s(2, 2) | add.s(4) | mul.s(8)))
    print("immutable chain    ", await (add.si(2, 2) | add.si(4, 4)))
    print("group              ", await aflow.group(add.s(i, i) for i in range(10)))
    print("chord              ", await aflow.chord((add.s(i, i) for i in range(100)), tsum.s()))
    print("group | task       ", await (aflow.group(add.s(1, 1), add.s(2, 2)) | tsum.s()))
    print("map                ", await tsum.map([range(10), range(100)]))
    print("starmap            ", await add.starmap([(1, 2), (3, 4)]))
    print("chunks             ", await add.chunks([(i, i) for i in range(6)], 4))
    print("link               ", await add.s(2, 2).link(report.s("on success")))
    try:
        await fail.s(7).link_error(report.s("on error"))
    except ValueError as exc:
        print("link_error          raised", repr(exc))
    print("empty group skipped", await aflow.chain(add.s(2, 2), aflow.group(), mul.s(2)))
    print("replace (not merge)", await add.s(1, 1).replace(args=(5, 5)))
    print("lone chord header  ", await aflow.chord(add.s(3, 3), tsum.s()))
    try:  # the header fails: the errback linked to the body runs, once
        await aflow.chord([add.s(1, 1), fail.s(2)], tsum.s().link_error(report.s("body errback")))
    except ValueError as exc:
        print("chord header failed", repr(exc))


if __name__ == "__main__":
    aflow.run_sync(aflow.chain(add.s(1, 1)))  # run_sync: for scripts without a loop
    import anyio

    anyio.run(main)
