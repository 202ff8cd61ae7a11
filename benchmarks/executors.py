"""Executors: what a step in a worker process costs, and what CPU-bound steps gain.

Usage: ``python benchmarks/executors.py [--quick] [--repeat N] [--markdown PATH]``

1. Per node, tiny bodies: a fan-out of ``N`` tiny sync tasks with ``executor="process"``
   against the raw engine doing the same, ``N`` ``ProcessPoolExecutor.submit`` calls
   gathered (as many spawned workers as cores, both warmed). Target (issue 21): at most
   1.2x the raw engine.
2. CPU-bound: a fan-out of ``--cpu-tasks`` bodies of 50 ms of pure-Python work, on the
   loop (sync bodies in aflow's threads: the GIL runs one at a time) and in the worker
   processes; the speed-up is what this machine's cores allow (reported with them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _markdown import replace_section  # noqa: E402

import aflow  # noqa: E402
import aflow.executors  # noqa: E402

TARGET = 1.2
BURN_S = 0.05


def tiny(x: int) -> int:
    return x + 1


def burn(rounds: int) -> int:
    """Pure-Python work: ``rounds`` rounds (no sleep: it holds the GIL)."""
    total = 0
    for _ in range(rounds):
        total += sum(i * i for i in range(500)) % 7
    return total


def rounds_for(seconds: float) -> int:
    """How many rounds of :func:`burn` take ``seconds`` here, alone."""
    began, rounds = time.perf_counter(), 0
    while time.perf_counter() - began < seconds:
        burn(10)
        rounds += 10
    return rounds


@aflow.task(executor="process")
def tiny_p(x: int) -> int:
    return x + 1


@aflow.task(executor="process")
def burn_p(rounds: int) -> int:
    return burn(rounds)


@aflow.task
def burn_loop(rounds: int) -> int:
    return burn(rounds)


async def per_node(n: int, repeat: int, workers: int) -> tuple[float, float]:
    raw = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    loop = asyncio.get_running_loop()
    try:
        aflow_times, raw_times = [], []
        # warm both pools (every worker started)
        await asyncio.gather(*(loop.run_in_executor(raw, tiny, i) for i in range(workers * 4)))
        await aflow.run(aflow.group(tiny_p.s(i) for i in range(workers * 4)))
        for _ in range(repeat):
            began = time.perf_counter()
            await asyncio.gather(*(loop.run_in_executor(raw, tiny, i) for i in range(n)))
            raw_times.append((time.perf_counter() - began) / n)
            began = time.perf_counter()
            await aflow.run(aflow.group(tiny_p.s(i) for i in range(n)))
            aflow_times.append((time.perf_counter() - began) / n)
        return statistics.median(aflow_times), statistics.median(raw_times)
    finally:
        raw.shutdown()


async def cpu_bound(count: int) -> tuple[float, float]:
    await aflow.run(burn_p.s(0))  # (the default pool started)
    rounds = rounds_for(BURN_S)
    began = time.perf_counter()
    await aflow.run(aflow.group(burn_loop.s(rounds) for _ in range(count)))
    on_loop = time.perf_counter() - began
    began = time.perf_counter()
    await aflow.run(aflow.group(burn_p.s(rounds) for _ in range(count)))
    in_workers = time.perf_counter() - began
    return on_loop, in_workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer nodes and tasks")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--cpu-tasks", type=int, default=64)
    parser.add_argument("--markdown", type=Path, help="write/update this file's section")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    n = 100 if args.quick else 500
    repeat = min(args.repeat, 3) if args.quick else args.repeat
    count = 16 if args.quick else args.cpu_tasks
    ours, raw = asyncio.run(per_node(n, repeat, cores))
    ratio = ours / raw
    verdict = "met" if ratio <= TARGET else "missed"
    on_loop, in_workers = asyncio.run(cpu_bound(count))
    aflow.executors.shutdown()
    text = (
        f"This machine: {cores} cores. `python benchmarks/executors.py"
        f"{' --quick' if args.quick else ''} --repeat {repeat}`.\n\n"
        f"Per node, a fan-out of {n} tiny sync bodies in {cores} spawned worker processes "
        f"(median of {repeat}):\n\n"
        "| | µs per node | x raw | target | |\n|---|---:|---:|---:|---|\n"
        f"| `ProcessPoolExecutor.submit`, gathered | {raw * 1e6:.0f} | 1.00 | | |\n"
        f'| aflow, `executor="process"` | {ours * 1e6:.0f} | {ratio:.2f} | '
        f"<= {TARGET:g}x | {verdict} |\n\n"
        f"CPU-bound: {count} bodies of {BURN_S * 1000:.0f} ms of pure-Python work, side by "
        "side:\n\n| where | s | speed-up |\n|---|---:|---:|\n"
        f"| on the loop (sync bodies in aflow's threads) | {on_loop:.2f} | 1.00 |\n"
        f'| `executor="process"` ({cores} workers) | {in_workers:.2f} | '
        f"{on_loop / in_workers:.2f} |\n"
    )
    print(text)
    if args.markdown is not None:
        replace_section(args.markdown, "Executors", text)
        print(f"markdown: {args.markdown}")


if __name__ == "__main__":
    main()
