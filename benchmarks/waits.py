"""What a waiting run costs: memory and time of N runs waiting at once (issue 22).

Usage: ``python benchmarks/waits.py [--runs N] [--rounds R] [--loop asyncio|uvloop|both]
[--quick] [--markdown PATH]``

Every row submits ``--runs`` runs (default 10,000) of the same three-node workflow to a
fresh :class:`aflow.Runtime`, waits until all of them are stopped in their middle node,
measures, then lets them all go on and waits until all have ended. The rows:

* **wait_for, unloaded** (``memory://``, a SQLite file): ``before | wait_for("go") |
  after``; each run is unloaded once it waits (recorded ``waiting`` in its store, no
  task, no lease). The caller keeps only the run ids, as a web service that answers
  with the id and gets the webhook later does; a second ``memory://`` row keeps the
  :class:`aflow.Run` handles instead (a held handle keeps its run in memory).
* **wait_for, in memory** (no store): the same workflow; the wait lives in the run.
* **not waiting: blocked in a task** (each store, and no store): ``before | hold |
  after``, where ``hold`` is a plain task whose body awaits an ``anyio.Event``: the
  same runs held in memory by their tasks, as a run with no durable wait would be.
  This is the baseline: in brackets, a row's figure over this row's for the same
  store, measured in the same process, on the same loop.

Figures per run: the Python heap it adds (``tracemalloc``, after ``gc.collect()``, in a
pass of its own, since tracing slows everything) when every run has just begun to wait,
and again ``SETTLE`` seconds later, past a heartbeat tick: until its next tick a
heartbeat keeps the runs it renewed last, unloaded since or not; the resident set it
adds, settled (``/proc/self/statm`` after ``gc.collect()`` and ``malloc_trim``, in the
untraced passes; memory freed but kept by the allocator, as after the runs' tasks
ended, makes this the rougher figure); the asyncio tasks alive while they wait (over
those before); the time from the first submit until every run waits (recorded
``waiting`` in its store, for an unloaded run), and from the first send (or setting
the event) until every run has ended. Each loop runs in a fresh subprocess; every row
is taken in turn in each round, after a small warm-up of each, and the median round
is reported (tracemalloc: one pass per row).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this tree's aflow, as the other benchmarks do

import aflow  # noqa: E402
from aflow._runtime._leases import DEFAULT_LEASE  # noqa: E402
from aflow.stores import StoredRunStatus  # noqa: E402

LOOPS = ("asyncio", "uvloop")
#: Seconds between "every run waits" and the settled figures: past a heartbeat tick (every
#: lease / 4, 2.5 s by default), which until then keeps the runs it renewed last.
SETTLE = DEFAULT_LEASE / 4 + 0.5


# --- the workflows -------------------------------------------------------------------------


class State:
    """What the task bodies count, reset before each row."""

    target = 0
    blocked = 0
    done = 0
    gate = anyio.Event()
    arrived = anyio.Event()
    finished = anyio.Event()

    @classmethod
    def reset(cls, target: int) -> None:
        cls.target, cls.blocked, cls.done = target, 0, 0
        cls.gate, cls.arrived, cls.finished = anyio.Event(), anyio.Event(), anyio.Event()


@aflow.task
async def before(i: int) -> int:
    return i


@aflow.task
async def hold(i: int) -> int:
    State.blocked += 1
    if State.blocked == State.target:
        State.arrived.set()
    await State.gate.wait()
    return i


@aflow.task
async def after(payload: Any) -> Any:
    State.done += 1
    if State.done == State.target:
        State.finished.set()
    return payload


@aflow.workflow
def waits(i: int) -> Any:
    """Waits for ``go`` (its payload is the result)."""
    return before.s(i) | aflow.wait_for("go") | after.s()


@aflow.workflow
def blocks(i: int) -> Any:
    """The same shape, held in a task until :attr:`State.gate` is set."""
    return before.s(i) | hold.s() | after.s()


# --- one row ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    store: str  # none, memory, sqlite
    what: str
    waiting: bool  # a wait_for row (else blocked in a task)
    handles: bool  # the caller keeps the Run handles (else only ids)


ROWS = (
    Row("none-blocked", "none", "not waiting: blocked in a task (anyio.Event)", False, True),
    Row("none-wait", "none", "wait_for, in memory (no store: not unloaded)", True, True),
    Row("memory-blocked", "memory", "not waiting: blocked in a task (anyio.Event)", False, False),
    Row("memory-wait", "memory", "wait_for, unloaded; caller keeps run ids", True, False),
    Row(
        "memory-wait-handles", "memory", "wait_for, unloaded; caller keeps Run handles", True, True
    ),
    Row("sqlite-blocked", "sqlite", "not waiting: blocked in a task (anyio.Event)", False, False),
    Row("sqlite-wait", "sqlite", "wait_for, unloaded; caller keeps run ids", True, False),
)
BASELINE = {"none": "none-blocked", "memory": "memory-blocked", "sqlite": "sqlite-blocked"}


def rss() -> int | None:
    """Resident set size in bytes (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def give_back() -> None:
    """Collect, and hand freed heap back to the system where glibc lets us."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def store_url(kind: str) -> Iterator[str | None]:
    if kind == "none":
        yield None
    elif kind == "memory":
        yield "memory://"
    else:
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{os.path.join(folder, 'runs.db')}"


async def all_waiting(rt: aflow.Runtime, row: Row, n: int, handles: list[Any]) -> None:
    """Until every run is stopped in its middle node."""
    if not row.waiting:
        await State.arrived.wait()
        return
    if rt.store is None:  # the wait lives in the run: its report says so
        pending = list(handles)
        while pending:
            pending = [h for h in pending if h.report(steps=False).status != "waiting"]
            if pending:
                await anyio.sleep(0.005)
        return
    # Unloaded: no run left here, and each recorded waiting (parking writes it just after);
    # neither has an event to wait on.
    while rt.runs():  # noqa: ASYNC110
        await anyio.sleep(0.005)
    store, waiting = rt.store, StoredRunStatus.WAITING
    assert store is not None
    while len(await store.list_runs(waiting, limit=n + 1)) < n:  # noqa: ASYNC110
        await anyio.sleep(0.005)


async def one(row: Row, n: int, traced: bool, settle: float = SETTLE) -> dict[str, float]:
    """Run ``row`` once with ``n`` runs; its figures."""
    State.reset(n)
    figures: dict[str, float] = {}
    with store_url(row.store) as url:
        async with aflow.Runtime(store=url) as rt:
            workflow = waits if row.waiting else blocks
            give_back()
            tasks_before = len(asyncio.all_tasks())
            if traced:
                tracemalloc.start()
                heap_before = tracemalloc.get_traced_memory()[0]
            rss_before = rss()
            start = time.perf_counter()
            ids: list[str] = []
            handles: list[Any] = []
            for i in range(n):
                if url is None:
                    run = await rt.submit(workflow(i))
                else:
                    run = await rt.submit(workflow, i=i)
                ids.append(run.id)
                if row.handles:
                    handles.append(run)
            del run
            await all_waiting(rt, row, n, handles)
            figures["to_waiting"] = (time.perf_counter() - start) / n * 1e6
            figures["tasks"] = len(asyncio.all_tasks()) - tasks_before
            if row.waiting and url is not None:  # unloaded: no run of theirs is live here
                assert not set(ids) & {r.id for r in rt.runs()}
            gc.collect()
            if traced:
                figures["heap_at_once"] = (tracemalloc.get_traced_memory()[0] - heap_before) / n
            await anyio.sleep(settle)  # (a heartbeat lets go of what it last renewed)
            give_back()
            if traced:
                figures["heap"] = (tracemalloc.get_traced_memory()[0] - heap_before) / n
                tracemalloc.stop()
            now = rss()
            if now is not None and rss_before is not None:
                figures["rss"] = (now - rss_before) / n
            start = time.perf_counter()
            if row.waiting:
                for i, run_id in enumerate(ids):
                    await rt.send(run_id, "go", i)
            else:
                State.gate.set()
            await State.finished.wait()
            while live := rt.runs():  # (each ends just after its last step)
                for handle in live:
                    await handle.wait()
            figures["to_done"] = (time.perf_counter() - start) / n * 1e6
            await check(rt, row, ids, handles)
    del ids, handles
    give_back()
    return figures


async def check(rt: aflow.Runtime, row: Row, ids: list[str], handles: list[Any]) -> None:
    """Every run gave its own number back."""
    if handles:
        got = [await h.result() for h in handles]
    else:
        assert rt.store is not None
        records = await rt.store.list_runs(StoredRunStatus.SUCCEEDED, limit=len(ids) + 1)
        by_id = {r.run_id: r.result for r in records}
        got = [json.loads(by_id[run_id] or "null") for run_id in ids]
    if got != list(range(len(ids))):
        raise AssertionError(f"{row.key}: wrong results")


async def measure(n: int, rounds: int, settle: float) -> dict[str, dict[str, float]]:
    """Every row: the median round of the untraced figures, and one traced pass."""
    for row in ROWS:  # warm up: imports, schema, code paths
        await one(row, min(n, 200), traced=False, settle=0)
    found: dict[str, list[dict[str, float]]] = {row.key: [] for row in ROWS}
    for _ in range(rounds):
        for row in ROWS:
            found[row.key].append(await one(row, n, traced=False, settle=settle))
    out: dict[str, dict[str, float]] = {}
    for row in ROWS:
        figures = {k: statistics.median(f[k] for f in found[row.key]) for k in found[row.key][0]}
        traced = await one(row, n, traced=True, settle=settle)
        figures["heap"], figures["heap_at_once"] = traced["heap"], traced["heap_at_once"]
        out[row.key] = figures
        print(f"  {row.key}: {figures}", file=sys.stderr, flush=True)
    return out


def child(loop: str, n: int, rounds: int, settle: float) -> None:
    if loop == "uvloop":
        import uvloop

        found = uvloop.run(measure(n, rounds, settle))
    else:
        found = asyncio.run(measure(n, rounds, settle))
    print(json.dumps(found))


# --- the report ------------------------------------------------------------------------------


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    rows = [
        "| loop | store | the runs are | asyncio tasks while they wait | heap KiB/run, "
        "all just waiting | heap KiB/run, settled | RSS KiB/run, settled | "
        "submit→waiting µs/run | send→done µs/run |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(figure: str, f: dict[str, float], base: dict[str, float], scale: float) -> str:
        if figure not in f or not base.get(figure):
            return "n/a"
        value = f[figure] * scale
        text = f"{value:.0f}" if value >= 100 else f"{value:.2f}"
        return f"{text} ({f[figure] / base[figure]:.2f}x)"

    for loop, found in results.items():
        for row in ROWS:
            f, base = found[row.key], found[BASELINE[row.store]]
            rows.append(
                f"| {loop} | {row.store} | {row.what} | {f['tasks']:,.0f} | "
                f"{cell('heap_at_once', f, base, 1 / 1024)} | {cell('heap', f, base, 1 / 1024)} | "
                f"{cell('rss', f, base, 1 / 1024)} | {cell('to_waiting', f, base, 1)} | "
                f"{cell('to_done', f, base, 1)} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs waiting at once")
    parser.add_argument("--rounds", type=int, default=3, help="untraced rounds per row")
    parser.add_argument("--loop", choices=(*LOOPS, "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="1 round of 1,000 runs")
    parser.add_argument("--markdown", type=Path, help="write the table into this file's section")
    parser.add_argument(
        "--settle", type=float, default=SETTLE, help="seconds before the settled figures"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.quick:
        opts.runs, opts.rounds = min(opts.runs, 1000), 1
    if opts.child:
        child(opts.child, opts.runs, opts.rounds, opts.settle)
        return
    results: dict[str, dict[str, dict[str, float]]] = {}
    for loop in LOOPS if opts.loop == "both" else (opts.loop,):
        print(f"waiting runs: {loop} ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--child", loop, "--runs", str(opts.runs),
             "--rounds", str(opts.rounds), "--settle", str(opts.settle)],
            stdout=subprocess.PIPE, text=True, check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"waiting runs on {loop} failed (exit status {done.returncode})")
        results[loop] = json.loads(done.stdout.splitlines()[-1])
    text = (
        f'{opts.runs:,} runs waiting at once (`before | wait_for("go") | after`), against '
        "the same runs blocked in a task (`before | hold | after`) on the same store, in "
        "the same process; in brackets, a figure over that baseline's. Heap: tracemalloc, "
        f"one pass per row, when every run has just begun to wait and {opts.settle:g} s later "
        f"(past a heartbeat tick); RSS (settled) and times: the median of {opts.rounds} "
        f"untraced round(s). `python benchmarks/waits.py --runs {opts.runs} "
        f"--rounds {opts.rounds}`.\n\n" + table(results) + "\n"
    )
    print(text)
    if opts.markdown:
        from _markdown import replace_section

        replace_section(opts.markdown, "Runs waiting at once: memory and time per run", text)
        print(f"markdown: {opts.markdown}", file=sys.stderr)


if __name__ == "__main__":
    if "--child" in sys.argv:  # the workflows by module name: durable runs refuse __main__'s
        from benchmarks.waits import main as imported_main

        imported_main()
    else:
        main()
