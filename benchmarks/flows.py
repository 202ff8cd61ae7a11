"""TaskFlow-style flows: aflow's per-task cost at 1k, 10k and 100k tasks, against TaskFlow 6.x.

Usage: ``python benchmarks/flows.py [--repeat N] [--quick] [--taskflow-python PATH]
[--markdown PATH]``

Workloads (each timed end to end: building the flow, ``engines.load`` and the run):
  linear     N tasks in a linear flow, task i reads ``v{i}`` and provides ``v{i+1}``
  unordered  N independent tasks in an unordered flow, each providing its own name

aflow runs in this process on the default loop and on uvloop, next to a
hand-written asyncio baseline of the same shape (a task per step awaited in
turn; a ``gather`` collected into a dict) measured moments before on the same
loop. TaskFlow runs in its own subprocess under ``--taskflow-python`` (a venv
``make bench`` creates; aflow's own venv never gets TaskFlow), at the sizes it
can finish: its linear flow is quadratic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

from run import loops, machine, measure  # the shared timing harness

import aflow
from aflow import engines
from aflow.patterns import linear_flow as lf
from aflow.patterns import unordered_flow as uf

HERE = pathlib.Path(__file__).resolve().parent


class Inc(aflow.Task):
    async def execute(self, x: int) -> int:
        return x + 1


class Noop(aflow.Task):
    async def execute(self) -> int:
        return 1


async def inc_raw(x: int) -> int:
    return x + 1


async def noop_raw() -> int:
    return 1


async def linear_raw(n: int) -> int:
    values = {"v0": 0}
    for i in range(n):
        values[f"v{i + 1}"] = await asyncio.create_task(inc_raw(values[f"v{i}"]))
    return values[f"v{n}"]


async def linear_aflow(n: int) -> int:
    flow = lf.Flow("l").add(
        *(Inc(name=f"t{i}", rebind={"x": f"v{i}"}, provides=f"v{i + 1}") for i in range(n))
    )
    engine = engines.load(flow, store={"v0": 0}, engine="parallel")
    await engine.run()
    value: int = engine.storage.fetch(f"v{n}")
    assert value == n
    return value


async def unordered_raw(n: int) -> dict[str, int]:
    values = await asyncio.gather(*(noop_raw() for _ in range(n)))
    return {f"v{i}": v for i, v in enumerate(values)}


async def unordered_aflow(n: int) -> dict[str, Any]:
    flow = uf.Flow("u").add(*(Noop(name=f"t{i}", provides=f"v{i}") for i in range(n)))
    engine = engines.load(flow, engine="parallel")
    await engine.run()
    return engine.storage.fetch_all()


WORKLOADS: dict[str, tuple[Callable[[int], Awaitable[Any]], Callable[[int], Awaitable[Any]]]] = {
    "linear": (linear_raw, linear_aflow),
    "unordered": (unordered_raw, unordered_aflow),
}


def taskflow(python: str, pattern: str, n: int, timeout: float) -> dict[str, Any] | None:
    """One TaskFlow run in its own subprocess; ``None`` if it did not finish in time."""
    try:
        done = subprocess.run(
            [python, str(HERE / "taskflow_peer.py"), pattern, str(n)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    except subprocess.TimeoutExpired:
        return None
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def taskflow_version(python: str) -> str:
    done = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('taskflow'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--taskflow-python", help="a Python with TaskFlow 6.x installed")
    parser.add_argument(
        "--taskflow-timeout", type=float, default=300.0, help="seconds per TaskFlow run"
    )
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args()

    sizes = [100, 1000] if args.quick else [1000, 10_000, 100_000]
    rows: list[tuple[str, str, int, float, float, float]] = []
    for loop_name, factory in loops().items():
        for name, (raw, flow) in WORKLOADS.items():
            for n in sizes:
                raw_s = measure(factory, lambda raw=raw, n=n: raw(n), args.repeat)
                flow_s = measure(factory, lambda flow=flow, n=n: flow(n), args.repeat)
                row = (loop_name, name, n, raw_s / n * 1e6, flow_s / n * 1e6, flow_s / raw_s)
                rows.append(row)
                print(
                    f"{loop_name:8} {name:10} {n:>7} tasks  raw {row[3]:7.2f} µs/task  "
                    f"aflow {row[4]:7.2f} µs/task  ratio {row[5]:5.2f}",
                    flush=True,
                )

    peer_rows: list[tuple[str, int, float | None, float | None, float, int | None]] = []
    peer_version = None
    if args.taskflow_python:
        peer_version = taskflow_version(args.taskflow_python)
        plan = {"linear": [100, 300, 1000, 3000, 10_000], "unordered": [100, 1000, 10_000]}
        if args.quick:
            plan = {"linear": [50], "unordered": [50]}
        for pattern, ns in plan.items():
            for n in ns:
                found = taskflow(args.taskflow_python, pattern, n, args.taskflow_timeout)
                ours = next(
                    (r[4] for r in rows if r[0] == "asyncio" and r[1] == pattern and r[2] == n),
                    None,
                )
                if ours is None:  # a size aflow's table lacks: time it here too
                    work = WORKLOADS[pattern][1]
                    seconds = measure(asyncio.new_event_loop, lambda w=work, n=n: w(n), args.repeat)
                    ours = seconds / n * 1e6
                theirs = found["seconds"] / n * 1e6 if found else None
                ratio = theirs / ours if theirs is not None else None
                rss = found["peak_rss_kib"] if found else None
                peer_rows.append((pattern, n, theirs, ratio, ours, rss))
                shown = f"{theirs:,.0f} µs/task" if theirs is not None else "timed out"
                print(f"taskflow {pattern:10} {n:>7} tasks  {shown}", flush=True)

    if args.markdown:
        write(args.markdown, args.repeat, rows, peer_rows, peer_version, args.taskflow_timeout)


def write(
    path: str,
    repeat: int,
    rows: list[tuple[str, str, int, float, float, float]],
    peer_rows: list[tuple[str, int, float | None, float | None, float, int | None]],
    peer_version: str | None,
    timeout: float = 0.0,
) -> None:
    lines = [
        "# Flow benchmark results (TaskFlow-style flows)",
        "",
        f"Written by `make bench` (`python benchmarks/flows.py --markdown {path} ...`).",
        "",
        f"- machine: {machine()}",
        f"- Python {sys.version.split()[0]}, aflow {aflow.__version__}, median of {repeat}",
        "- µs/task = wall time / tasks: building the flow, `engines.load` and the run;",
        "  ratio = aflow / hand-written asyncio of the same shape, same process, same loop.",
        "",
        "| loop | flow | tasks | raw asyncio µs/task | aflow µs/task | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for loop, name, n, raw, flow, ratio in rows:
        lines.append(f"| {loop} | {name} | {n:,} | {raw:.2f} | {flow:.2f} | {ratio:.2f} |")
    if peer_rows:
        lines += [
            "",
            f"## TaskFlow {peer_version} (own venv, one subprocess per run, 1 run each)",
            "",
            "Serial engine for the linear flow, parallel engine for the unordered one.",
            "",
            "| flow | tasks | TaskFlow µs/task | aflow µs/task (asyncio) | TaskFlow / aflow | "
            "TaskFlow peak RSS |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for pattern, n, theirs, ratio, ours, rss in peer_rows:
            t = f"{theirs:,.0f}" if theirs is not None else f"not done in {timeout:.0f} s"
            r = f"{ratio:,.0f}x" if ratio is not None else "-"
            m = f"{rss / 1024:,.0f} MiB" if rss is not None else "-"
            lines.append(f"| {pattern} | {n:,} | {t} | {ours:.2f} | {r} | {m} |")
    pathlib.Path(path).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
