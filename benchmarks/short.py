"""What a short run costs: aflow against the same work written by hand, per run.

Usage: ``python benchmarks/short.py [--rounds N] [--quick] [--markdown PATH]``

A web handler builds and awaits a small workflow on every request; this measures
that, as issue 16 set its targets. Every step body is the same plain coroutine
function in both versions (each awaits ``anyio.lowlevel.checkpoint()``, as
``anyio.sleep(0)`` does, so each yields to the loop once); aflow's tasks wrap
those very functions with ``aflow.task``. The hand-written version is the honest
one a service would write: ``asyncio.gather`` for the group, ``try``/``except``
compensation in reverse order.

Workloads, µs per run, building the workflow included:

* 1-step run (``aflow.run(step.s(1))`` against ``await step(1)``);
* the 5-node order saga (validate, then reserve and quote at once, charge, ship;
  reserve and charge have reverts) through every entry point: ``await canvas``,
  ``aflow.run``, ``rt.run`` and ``rt.submit`` + ``result()`` in an entered
  :class:`aflow.Runtime`;
* the same saga when its last step fails (the two reverts run, the error reaches
  the caller);
* 64 callers at once: 64 sagas gathered, through ``rt.run`` in one Runtime.

Each loop (asyncio, uvloop) runs in a fresh subprocess; inside it the two versions
alternate round by round, and the figure is the median round. The ratio is aflow /
hand-written on the same loop; targets: 1-step <= 3x, every saga row <= 1.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio.lowlevel

HERE = Path(__file__).resolve().parent
if __name__ == "__main__" and "--child" in sys.argv:
    sys.path.insert(0, str(HERE.parent))  # this tree's aflow, as the other benchmarks do

from _markdown import replace_section  # noqa: E402

import aflow  # noqa: E402

LOOPS = ("asyncio", "uvloop")
CONCURRENT = 64


# --- the step bodies, shared by both versions ------------------------------------------


class OutOfStock(Exception):
    pass


async def validate_fn(order: str) -> str:
    await anyio.lowlevel.checkpoint()
    return order


async def reserve_fn(order: str) -> str:
    await anyio.lowlevel.checkpoint()
    return "reservation"


async def release_fn(order: str, *, result: str) -> None:
    await anyio.lowlevel.checkpoint()


async def quote_fn(order: str) -> int:
    await anyio.lowlevel.checkpoint()
    return 5


async def charge_fn(parts: list[Any]) -> str:
    await anyio.lowlevel.checkpoint()
    return "receipt"


async def refund_fn(parts: list[Any], *, result: str) -> None:
    await anyio.lowlevel.checkpoint()


async def ship_fn(receipt: str) -> str:
    await anyio.lowlevel.checkpoint()
    return "shipped"


async def ship_fails_fn(receipt: str) -> str:
    await anyio.lowlevel.checkpoint()
    raise OutOfStock("nothing left to ship")


async def step_fn(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x + 1


# --- by hand ---------------------------------------------------------------------------


async def saga_by_hand(ship: Callable[[str], Awaitable[str]] = ship_fn) -> str:
    order = await validate_fn("order-1")
    done: list[tuple[Callable[..., Awaitable[None]], Any, Any]] = []
    try:
        reservation, price = await asyncio.gather(reserve_fn(order), quote_fn(order))
        done.append((release_fn, order, reservation))
        parts = [reservation, price]
        receipt = await charge_fn(parts)
        done.append((refund_fn, parts, receipt))
        return await ship(receipt)
    except Exception:
        for revert, arg, result in reversed(done):
            await revert(arg, result=result)
        raise


# --- with aflow ------------------------------------------------------------------------

step = aflow.task(step_fn)
validate = aflow.task(validate_fn)
reserve = aflow.task(reserve_fn)
reserve.revert(release_fn)
quote = aflow.task(quote_fn)
charge = aflow.task(charge_fn)
charge.revert(refund_fn)
ship = aflow.task(ship_fn)
ship_fails = aflow.task(ship_fails_fn)


def saga(last: Any = ship) -> Any:
    return validate.s("order-1") | aflow.group(reserve.s(), quote.s()) | charge.s() | last.s()


def _order_saga(order: str) -> Any:
    return validate.s(order) | aflow.group(reserve.s(), quote.s()) | charge.s() | ship.s()


def _one_step(x: int) -> Any:
    return step.s(x)


#: the same saga as an @aflow.workflow: built and compiled once, filled in per call
order_saga = aflow.workflow(_order_saga)
one_step = aflow.workflow(_one_step)
#: and built on every call, as before issue 16's templates
order_saga_rebuilt = aflow.workflow(reuse_graph=False)(_order_saga)


# --- the workloads: (name, aflow version, hand-written version) --------------------------


async def expect_failure(fn: Callable[[], Awaitable[Any]]) -> None:
    try:
        await fn()
    except OutOfStock:
        return
    raise AssertionError("the failing saga did not fail")


def workloads(rt: aflow.Runtime) -> list[tuple[str, Callable[[], Awaitable[Any]], Any]]:
    async def submitted() -> Any:
        return await (await rt.submit(saga())).result()

    async def concurrent_aflow() -> Any:
        return await asyncio.gather(*(rt.run(saga()) for _ in range(CONCURRENT)))

    async def concurrent_hand() -> Any:
        return await asyncio.gather(*(saga_by_hand() for _ in range(CONCURRENT)))

    return [
        ("1-step run, aflow.run", lambda: aflow.run(step.s(1)), lambda: step_fn(1)),
        ("saga, await canvas", lambda: _awaited(saga()), saga_by_hand),
        ("saga, aflow.run", lambda: aflow.run(saga()), saga_by_hand),
        ("saga, rt.run", lambda: rt.run(saga()), saga_by_hand),
        ("saga, rt.submit + result()", submitted, saga_by_hand),
        (
            "1-step @aflow.workflow, aflow.run",
            lambda: aflow.run(one_step, params={"x": 1}),
            lambda: step_fn(1),
        ),
        (
            "saga @aflow.workflow, aflow.run",
            lambda: aflow.run(order_saga, params={"order": "order-1"}),
            saga_by_hand,
        ),
        ("saga @aflow.workflow, rt.run", lambda: rt.run(order_saga, order="order-1"), saga_by_hand),
        (
            "saga @aflow.workflow(reuse_graph=False), rt.run",
            lambda: rt.run(order_saga_rebuilt, order="order-1"),
            saga_by_hand,
        ),
        (
            "saga compensating, aflow.run",
            lambda: expect_failure(lambda: aflow.run(saga(ship_fails))),
            lambda: expect_failure(lambda: saga_by_hand(ship_fails_fn)),
        ),
        (f"{CONCURRENT} sagas at once, rt.run", concurrent_aflow, concurrent_hand),
    ]


async def _awaited(canvas: Any) -> Any:
    return await canvas


async def per_run(fn: Callable[[], Awaitable[Any]], runs: int, scale: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        await fn()
    return (time.perf_counter() - start) / (runs * scale) * 1e6


async def measure(rounds: int, runs: int) -> dict[str, tuple[float, float]]:
    """µs per run (median round) for aflow and by hand, each workload in turn."""
    out: dict[str, tuple[float, float]] = {}
    async with aflow.Runtime() as rt:
        for name, ours, theirs in workloads(rt):
            scale = CONCURRENT if name.startswith(str(CONCURRENT)) else 1
            n = max(2, runs // scale)
            await per_run(ours, n, scale)  # warm up (and check it works)
            await per_run(theirs, n, scale)
            a: list[float] = []
            b: list[float] = []
            for _ in range(rounds):
                a.append(await per_run(ours, n, scale))
                b.append(await per_run(theirs, n, scale))
            out[name] = (statistics.median(a), statistics.median(b))
    return out


def child(loop: str, rounds: int, runs: int) -> None:
    if loop == "uvloop":
        import uvloop

        found = uvloop.run(measure(rounds, runs))
    else:
        found = asyncio.run(measure(rounds, runs))
    print(json.dumps(found))


# --- the report --------------------------------------------------------------------------


def target(name: str) -> float:
    return 3.0 if name.startswith("1-step") else 1.5


def table(results: dict[str, dict[str, tuple[float, float]]]) -> str:
    rows = [
        "| workload | loop | by hand µs | aflow µs | x by hand | target | |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name in next(iter(results.values())):
        for loop, found in results.items():
            ours, theirs = found[name]
            ratio = ours / theirs
            goal = target(name)
            mark = "met" if ratio <= goal else "missed"
            rows.append(
                f"| {name} | {loop} | {theirs:.1f} | {ours:.1f} | {ratio:.2f} | "
                f"<= {goal:g}x | {mark} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per workload")
    parser.add_argument("--runs", type=int, default=300, help="runs per round")
    parser.add_argument("--quick", action="store_true", help="5 rounds of 100 runs")
    parser.add_argument("--markdown", type=Path, help="write the table into this file's section")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.quick:
        opts.rounds, opts.runs = 5, 100
    if opts.child:
        child(opts.child, opts.rounds, opts.runs)
        return
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for loop in LOOPS:
        print(f"short runs: {loop} ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--child", loop, "--rounds", str(opts.rounds),
             "--runs", str(opts.runs)],
            capture_output=True, text=True, check=False,
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"short runs on {loop} failed:\n{done.stderr[-3000:]}")
        results[loop] = {k: tuple(v) for k, v in json.loads(done.stdout.splitlines()[-1]).items()}  # type: ignore[misc]
    text = (
        f"Median of {opts.rounds} interleaved rounds of {opts.runs} runs (the 64-caller row: "
        f"{max(2, opts.runs // CONCURRENT)} batches of {CONCURRENT}), µs per run, building "
        "included; `python benchmarks/short.py"
        + (" --quick" if opts.quick else f" --rounds {opts.rounds} --runs {opts.runs}")
        + "`.\n\n"
        + table(results)
        + "\n"
    )
    print(text)
    if opts.markdown:
        replace_section(opts.markdown, "Short runs: per run, as a web handler sees it", text)
        print(f"markdown: {opts.markdown}", file=sys.stderr)


if __name__ == "__main__":
    main()
