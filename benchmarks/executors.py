"""Executors: what a step in a worker process costs, and what CPU-bound steps gain.

Usage: ``python benchmarks/executors.py [--quick] [--repeat N] [--markdown PATH]``

1. Per node, tiny bodies: a fan-out of ``N`` tiny sync tasks with ``executor="process"``
   against the raw engine doing the same, ``N`` ``ProcessPoolExecutor.submit`` calls
   gathered (as many spawned workers as cores, both warmed). Target (issue 21): at most
   1.2x the raw engine.
2. CPU-bound: a fan-out of ``--cpu-tasks`` bodies of 50 ms of pure-Python work, on the
   loop (sync bodies in aflow's threads: the GIL runs one at a time) and in the worker
   processes; the speed-up is what this machine's cores allow (reported with them).
3. Dask (``aflow.executors.Dask``), on a ``LocalCluster`` this script starts (one
   worker process per core, 1 thread each, loopback): per node, a fan-out of tiny
   bodies and a chain of them (one hop after another), against the raw engine doing the
   same with the same client (``client.submit`` + ``await``, gathered for the fan-out);
   then the CPU-bound fan-out on the cluster. Target: at most 1.2x the raw engine.
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
sys.path.append(str(HERE))  # (after the stdlib: benchmarks/http.py is no "http")

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


@aflow.task
def tiny_d(x: int) -> int:
    return x + 1


async def dask_figures(n: int, chain: int, repeat: int, cores: int, count: int) -> dict[str, float]:
    """Per node on Dask (fan-out and chain, aflow and raw) and the CPU-bound fan-out."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    # (aflow's retries alone: the scheduler fails a task at its first lost worker)
    dask.config.set({"distributed.scheduler.allowed-failures": 0})
    async with (
        LocalCluster(
            n_workers=cores,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
            asynchronous=True,
        ) as cluster,
        Client(cluster, asynchronous=True) as client,
    ):
        on_dask = aflow.executors.Dask(client=client)

        async def one(i: int) -> int:
            future = client.submit(tiny, i, pure=False)
            try:
                value: int = await future
                return value
            finally:
                future.release()

        async def raw_chain(x: int) -> int:
            for _ in range(chain):
                x = await one(x)
            return x

        workflow_chain = aflow.chain(*(tiny_d.s(0) if i == 0 else tiny_d.s() for i in range(chain)))
        await asyncio.gather(*(one(i) for i in range(cores * 4)))  # (warm: every worker)
        await aflow.run(aflow.group(tiny_d.s(i) for i in range(cores * 4)), executor=on_dask)
        fan, fan_raw, hop, hop_raw = [], [], [], []
        for _ in range(repeat):
            began = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            fan_raw.append((time.perf_counter() - began) / n)
            began = time.perf_counter()
            await aflow.run(aflow.group(tiny_d.s(i) for i in range(n)), executor=on_dask)
            fan.append((time.perf_counter() - began) / n)
            began = time.perf_counter()
            await raw_chain(0)
            hop_raw.append((time.perf_counter() - began) / chain)
            began = time.perf_counter()
            await aflow.run(workflow_chain, executor=on_dask)
            hop.append((time.perf_counter() - began) / chain)
        rounds = rounds_for(BURN_S)
        began = time.perf_counter()
        await aflow.run(aflow.group(burn_loop.s(rounds) for _ in range(count)), executor=on_dask)
        cpu = time.perf_counter() - began
        # the same through a client the executor opens itself (Dask's loop thread)
        by_address = aflow.executors.Dask(cluster.scheduler_address)
        try:
            await aflow.run(tiny_d.s(0), executor=by_address)
            own = []
            for _ in range(repeat):
                began = time.perf_counter()
                await aflow.run(workflow_chain, executor=by_address)
                own.append((time.perf_counter() - began) / chain)
        finally:
            await asyncio.to_thread(by_address.close)
    med = statistics.median
    return {
        "fan": med(fan),
        "fan_raw": med(fan_raw),
        "hop": med(hop),
        "hop_raw": med(hop_raw),
        "hop_own": med(own),
        "cpu": cpu,
    }


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
    chain = 20 if args.quick else 50
    dask = asyncio.run(dask_figures(n, chain, repeat, cores, count))
    fan_ratio, hop_ratio = dask["fan"] / dask["fan_raw"], dask["hop"] / dask["hop_raw"]
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
        f"| `aflow.executors.Dask` ({cores} worker processes) | {dask['cpu']:.2f} | "
        f"{on_loop / dask['cpu']:.2f} |\n\n"
        f"Dask, per node (a `LocalCluster` of {cores} worker processes, 1 thread each, "
        f"loopback; the same client for both; median of {repeat}):\n\n"
        "| | raw engine (ms) | aflow (ms) | x raw | target | |\n|---|---:|---:|---:|---:|---|\n"
        f"| fan-out of {n} tiny bodies (`client.submit` + `await`, gathered) | "
        f"{dask['fan_raw'] * 1e3:.2f} | {dask['fan'] * 1e3:.2f} | {fan_ratio:.2f} | "
        f"<= {TARGET:g}x | {'met' if fan_ratio <= TARGET else 'missed'} |\n"
        f"| chain of {chain} tiny bodies (one hop after another) | "
        f"{dask['hop_raw'] * 1e3:.2f} | {dask['hop'] * 1e3:.2f} | {hop_ratio:.2f} | "
        f"<= {TARGET:g}x | {'met' if hop_ratio <= TARGET else 'missed'} |\n"
        f"| the chain, `Dask(address)` (its own client, in Dask's loop thread) | "
        f"{dask['hop_raw'] * 1e3:.2f} | {dask['hop_own'] * 1e3:.2f} | "
        f"{dask['hop_own'] / dask['hop_raw']:.2f} | | |\n"
    )
    print(text)
    if args.markdown is not None:
        replace_section(args.markdown, "Executors", text)
        print(f"markdown: {args.markdown}")


if __name__ == "__main__":
    main()
