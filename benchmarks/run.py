"""aflow against hand-written asyncio, in one process, on the default loop and on uvloop.

Usage: ``python benchmarks/run.py [--repeat N] [--quick] [--markdown PATH]``

Each workload is timed end to end (building the workflow included) as the
median of ``--repeat`` runs; the figure reported is microseconds per node and
the ratio to the hand-written asyncio version measured in the same process,
on the same loop, moments before.

Workloads:
  fanout  10,000 tasks then a sum of their results (a chord)
  chain   2,000 tasks, each receiving its parent's result
  dag     a 50x50 layered DAG, every node with 2 parents in the layer above
  sleep   1,000 tasks sleeping 10 ms under a limit of 100; efficiency = 0.1 s / wall
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aflow
from aflow._graph import GraphBuilder, NodeKind

# --- tasks --------------------------------------------------------------------------------


async def inc_raw(x: int) -> int:
    return x + 1


async def tsum_raw(xs: list[int]) -> int:
    return sum(xs)


async def sleep_raw(x: int) -> int:
    await asyncio.sleep(0.01)
    return x


async def add2_raw(x: int, y: int = 0) -> int:
    return x + 1


inc = aflow.task(inc_raw)
tsum = aflow.task(tsum_raw)
nap = aflow.task(sleep_raw)
add2 = aflow.task(add2_raw)

# --- workloads: (nodes, raw asyncio, aflow) ------------------------------------------------


async def fanout_raw(n: int) -> int:
    values = await asyncio.gather(*(inc_raw(i) for i in range(n)))
    return await asyncio.create_task(tsum_raw(list(values)))


async def fanout_aflow(n: int) -> int:
    return await aflow.chord((inc.s(i) for i in range(n)), tsum.s())


async def chain_raw(n: int) -> int:
    value = 0
    for _ in range(n):
        value = await asyncio.create_task(inc_raw(value))
    return value


async def chain_aflow(n: int) -> int:
    return await aflow.chain(inc.s(0), *(inc.s() for _ in range(n - 1)))


def _dag_parents(width: int, depth: int) -> list[list[tuple[int, ...]]]:
    layers: list[list[tuple[int, ...]]] = [[() for _ in range(width)]]
    for layer in range(1, depth):
        base = (layer - 1) * width
        layers.append([(base + i, base + (i + 1) % width) for i in range(width)])
    return layers


async def dag_raw(width: int, depth: int) -> int:
    tasks: list[asyncio.Task[int]] = []

    async def node(parents: tuple[int, ...]) -> int:
        if not parents:
            return await add2_raw(0)
        a, b = await tasks[parents[0]], await tasks[parents[1]]
        return await add2_raw(a, b)

    for layer in _dag_parents(width, depth):
        for parents in layer:
            tasks.append(asyncio.create_task(node(parents)))
    return sum(await asyncio.gather(*tasks[-width:]))


async def dag_aflow(width: int, depth: int) -> int:
    builder = GraphBuilder()
    for layer in _dag_parents(width, depth):
        for parents in layer:
            if parents:
                builder.add(NodeKind.TASK, add2, parents=parents, input=parents[0], args=())
            else:
                builder.add(NodeKind.TASK, add2, args=(0,))
    last = tuple(range(len(builder.nodes) - width, len(builder.nodes)))
    join = builder.add(NodeKind.JOIN, None, parents=last)
    total = builder.add(NodeKind.TASK, tsum, parents=(join,), input=join)
    return await aflow.run(builder.build(total))


async def sleep_raw_limited(n: int, limit: int) -> int:
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> int:
        async with sem:
            return await sleep_raw(i)

    return len(await asyncio.gather(*(one(i) for i in range(n))))


async def sleep_aflow(n: int, limit: int) -> int:
    return len(await aflow.run(aflow.group(nap.s(i) for i in range(n)), max_concurrency=limit))


# --- harness ------------------------------------------------------------------------------


def timed(loop_factory: Callable[[], asyncio.AbstractEventLoop], fn: Callable[[], Awaitable[Any]]):
    async def once() -> float:
        gc.collect()
        start = time.perf_counter()
        await fn()
        return time.perf_counter() - start

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(once())


def measure(loop_factory, fn, repeat: int) -> float:
    timed(loop_factory, fn)  # warm-up
    return statistics.median(timed(loop_factory, fn) for _ in range(repeat))


def loops() -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    found: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    try:
        import uvloop
    except ImportError:
        pass
    else:
        found["uvloop"] = uvloop.new_event_loop
    return found


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def write_markdown(path: str, header: str, rows: list[tuple[Any, ...]]) -> None:
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("anyio", "structlog", "uvloop")
    )
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (`python benchmarks/run.py --markdown {path}`).",
        "",
        f"- machine: {machine()}",
        f"- {header}; {versions}",
        "- per-node figures are wall time / nodes, building the workflow included;",
        "  ratio = aflow / hand-written asyncio, measured in the same process on the same loop.",
        "- the sleep rows give efficiency (ideal 0.1 s / wall) and ratio = raw wall / aflow wall.",
        "",
        "| loop | workload | nodes | raw asyncio µs/node | aflow µs/node | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for loop, name, nodes, raw, flow, ratio in rows:
        if "sleeps" in name:
            lines.append(
                f"| {loop} | {name} | {nodes} | eff {raw:.2f} | eff {flow:.2f} | {ratio:.2f} |"
            )
        else:
            lines.append(f"| {loop} | {name} | {nodes} | {raw:.2f} | {flow:.2f} | {ratio:.2f} |")
    with open(path, "w") as out:
        out.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    fan, chn, width = 10_000 // scale, 2_000 // scale, 50 // (5 if args.quick else 1)
    workloads = [
        ("fan-out + sum", fan + 1, lambda: fanout_raw(fan), lambda: fanout_aflow(fan)),
        ("chain", chn, lambda: chain_raw(chn), lambda: chain_aflow(chn)),
        (
            f"DAG {width}x{width}, 2 parents",
            width * width,
            lambda: dag_raw(width, width),
            lambda: dag_aflow(width, width),
        ),
    ]
    rows = []
    header = (
        f"Python {platform.python_version()}, {platform.machine()}, "
        f"aflow {aflow.__version__}, median of {args.repeat}"
    )
    print(header)
    print(
        f"{'loop':8} {'workload':26} {'nodes':>6} {'raw µs/node':>12} "
        f"{'aflow µs/node':>14} {'ratio':>6}"
    )
    for loop_name, factory in loops().items():
        for name, nodes, raw, flow in workloads:
            raw_s = measure(factory, raw, args.repeat)
            flow_s = measure(factory, flow, args.repeat)
            row = (
                loop_name,
                name,
                nodes,
                raw_s / nodes * 1e6,
                flow_s / nodes * 1e6,
                flow_s / raw_s,
            )
            rows.append(row)
            print(
                f"{row[0]:8} {row[1]:26} {row[2]:>6} {row[3]:>12.2f} {row[4]:>14.2f} {row[5]:>6.2f}"
            )
        n, limit = 1000 // scale, 100 // scale
        ideal = n / limit * 0.01
        reps = max(3, args.repeat // 2)
        raw_s = measure(factory, lambda n=n, limit=limit: sleep_raw_limited(n, limit), reps)
        flow_s = measure(factory, lambda n=n, limit=limit: sleep_aflow(n, limit), reps)
        row = (
            loop_name,
            f"{n} sleeps, limit {limit}",
            n,
            ideal / raw_s,
            ideal / flow_s,
            raw_s / flow_s,
        )
        rows.append(row)
        print(
            f"{row[0]:8} {row[1]:26} {row[2]:>6} {'eff ' + format(row[3], '.2f'):>12} "
            f"{'eff ' + format(row[4], '.2f'):>14} {row[5]:>6.2f}"
        )
    if args.markdown:
        write_markdown(args.markdown, header, rows)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
