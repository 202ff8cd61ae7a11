"""A/B: this tree's aflow against another commit's, both against hand-written asyncio.

Usage: ``python benchmarks/ab.py BASE_REF [--repeat N] [--markdown PATH]``

Every runtime change is measured against main in the same session. The base
commit is exported (``git archive``) to a temporary folder, and each figure is
taken in a fresh subprocess whose ``PYTHONPATH`` puts that tree's ``aflow``
first, so both trees run under the same interpreter, harness and machine state.
Runs of the two trees and of hand-written asyncio are interleaved.

Figures (median of ``--repeat``): aflow's µs per node or per run under each tree,
their ratio, and each as a ratio to hand-written asyncio (the same code under both
trees, so its runs are pooled):

* graphs: ``benchmarks/worker.py`` workloads (fan-out 10k + sum, chain 2k, DAG 50x50),
  µs per node, aflow / asyncio;
* short runs: a 1-step run and a 5-node order saga (validate, then reserve and quote
  at once, charge, ship; reserve and charge have reverts), µs per run, building
  included, aflow / asyncio (``asyncio.gather`` and try/except by hand).

``--durable``: instead, the short section of ``benchmarks/durable.py`` (a durable chain
step against a bare sqlite3 commit, durable 1- and 5-step runs against the memory store
and no store; both loops), this tree's script run against each tree's ``aflow`` (it is
copied into the base tree), the trees' processes interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GRAPHS = (("fanout", 10_000), ("chain", 2_000), ("dag", 2_500))
LOOPS = ("asyncio", "uvloop")

SHORT = r"""
import asyncio, json, statistics, sys, time
import anyio, aflow

LOOP = sys.argv[1]
ROUNDS, PER_ROUND = 15, 200

@aflow.task
async def step(x):
    await anyio.sleep(0)
    return x + 1

@aflow.task
async def validate(order):
    await anyio.sleep(0)
    return order

@aflow.task
async def reserve(order):
    await anyio.sleep(0)
    return "r"

@reserve.revert
async def release(order, *, result):
    pass

@aflow.task
async def quote(order):
    await anyio.sleep(0)
    return 5

@aflow.task
async def charge(parts):
    await anyio.sleep(0)
    return "c"

@charge.revert
async def refund(parts, *, result):
    pass

@aflow.task
async def ship(receipt):
    await anyio.sleep(0)
    return "shipped"

async def one_aflow():
    return await aflow.run(step.s(1))

async def saga_aflow():
    return await aflow.run(
        validate.s("o") | aflow.group(reserve.s(), quote.s()) | charge.s() | ship.s()
    )

async def _step(x):
    await asyncio.sleep(0)
    return x + 1

async def one_asyncio():
    return await _step(1)

async def _v(o):
    await asyncio.sleep(0); return o
async def _r(o):
    await asyncio.sleep(0); return "r"
async def _q(o):
    await asyncio.sleep(0); return 5
async def _c(p):
    await asyncio.sleep(0); return "c"
async def _s(r):
    await asyncio.sleep(0); return "shipped"
async def _undo(x):
    pass

async def saga_asyncio():
    order = await _v("o")
    done = []
    try:
        parts = await asyncio.gather(_r(order), _q(order))
        done.append("reserve")
        receipt = await _c(parts)
        done.append("charge")
        return await _s(receipt)
    except Exception:
        for _ in reversed(done):
            await _undo(_)
        raise

async def timed(fn, n):
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n * 1e6

async def main():
    pairs = {"1-step run": (one_aflow, one_asyncio), "5-node saga": (saga_aflow, saga_asyncio)}
    for a, b in pairs.values():  # warm up
        await timed(a, 50); await timed(b, 50)
    out = {}
    for name, (a, b) in pairs.items():
        ours, theirs = [], []
        for _ in range(ROUNDS):
            ours.append(await timed(a, PER_ROUND))
            theirs.append(await timed(b, PER_ROUND))
        out[name] = (statistics.median(ours), statistics.median(theirs))
    print(json.dumps(out))

if LOOP == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def export(ref: str, into: Path) -> Path:
    """The tree of ``ref``, written under ``into`` (nothing of the repo changes)."""
    data = subprocess.run(
        ["git", "archive", "--format=tar", ref], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def run(tree: Path, args: list[str]) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args} failed under {tree}: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def durable(base: str, repeat: int, rounds: int) -> str:
    """The A/B table of durable.py's short section (see the module's docstring)."""
    script = HERE / "durable.py"
    found: dict[tuple[str, str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="aflow-ab-") as tmp:
        trees = {"base": export(base, Path(tmp) / "base"), "head": ROOT}
        shutil.copy(script, trees["base"] / "benchmarks" / "durable.py")
        out = Path(tmp) / "figures.json"
        for turn in range(repeat):
            for label, tree in trees.items():
                script_args = ["--short-only", "--rounds", str(rounds), "--json", str(out)]
                env = {**os.environ, "PYTHONPATH": str(tree)}
                done = subprocess.run(
                    [sys.executable, str(tree / "benchmarks" / "durable.py"), *script_args],
                    cwd=tree,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"durable.py failed under {tree}: {done.stderr[-2000:]}")
                for loop, figures in json.loads(out.read_text()).items():
                    for name, us in figures.items():
                        found.setdefault((name, loop, label), []).append(us)
            print(f"durable A/B: {turn + 1}/{repeat}", file=sys.stderr, flush=True)
    rows = [
        "| figure | loop | base µs | head µs | head / base |",
        "|---|---|---:|---:|---:|",
    ]
    med = {key: statistics.median(values) for key, values in found.items()}
    names = dict.fromkeys(k[0] for k in found)
    for name in names:
        for loop in LOOPS:
            base_us, head_us = med[name, loop, "base"], med[name, loop, "head"]
            rows.append(
                f"| {name} | {loop} | {base_us:.1f} | {head_us:.1f} | {head_us / base_us:.3f} |"
            )
    ratios = [
        "| ratio | loop | base | head |",
        "|---|---|---:|---:|",
    ]
    for what, top, bottom in (
        ("chain step sqlite / bare commit", "chain step sqlite", "bare commit"),
        ("chain step sqlite / store write", "chain step sqlite", "store write"),
        ("1-step run sqlite / memory", "1-step run sqlite", "1-step run memory"),
        ("5-step run sqlite / memory", "5-step run sqlite", "5-step run memory"),
        ("1-step run sqlite / none", "1-step run sqlite", "1-step run none"),
        ("5-step run sqlite / none", "5-step run sqlite", "5-step run none"),
    ):
        for loop in LOOPS:
            cells = [
                statistics.median(
                    a / b
                    for a, b in zip(
                        found[top, loop, label], found[bottom, loop, label], strict=True
                    )
                )
                for label in ("base", "head")
            ]
            ratios.append(f"| {what} | {loop} | {cells[0]:.2f} | {cells[1]:.2f} |")
    return (
        f"Durable A/B against {base}: median of {repeat} interleaved processes per tree "
        f"(each the median of {rounds} rounds); µs per commit, step or run; a ratio is the "
        "median of each process's own\n\n" + "\n".join(rows) + "\n\n" + "\n".join(ratios) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the commit to compare with (e.g. main's last landing)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--durable", action="store_true", help="durable.py's short section")
    parser.add_argument("--rounds", type=int, default=9, help="rounds per --durable process")
    opts = parser.parse_args()
    if opts.durable:
        text = durable(opts.base, opts.repeat, opts.rounds)
        print(text)
        if opts.markdown:
            opts.markdown.write_text(text)
        return
    worker = str(HERE / "worker.py")
    # µs per node (graphs) or per run (short runs), every repeat: aflow per tree, and
    # hand-written asyncio (the same code under both trees: pooled)
    ours: dict[tuple[str, str, str], list[float]] = {}
    theirs: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="aflow-ab-") as tmp:
        trees = {"base": export(opts.base, Path(tmp) / "base"), "head": ROOT}
        for _ in range(opts.repeat):
            for loop in LOOPS:
                for workload, n in GRAPHS:
                    for label, tree in trees.items():
                        for impl in ("asyncio", "aflow"):
                            found = run(tree, [worker, impl, workload, str(n), loop])
                            us = float(found["seconds"]) / n * 1e6  # type: ignore[arg-type]
                            if impl == "aflow":
                                ours.setdefault((workload, loop, label), []).append(us)
                            else:
                                theirs.setdefault((workload, loop), []).append(us)
                for label, tree in trees.items():
                    short = run(tree, ["-c", SHORT, loop])
                    for name, (a, b) in short.items():  # type: ignore[misc]
                        ours.setdefault((name, loop, label), []).append(a)
                        theirs.setdefault((name, loop), []).append(b)
    rows = [
        "| workload | loop | base µs | head µs | head / base | base x asyncio | head x asyncio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(k[0] for k in ours):
        for loop in LOOPS:
            base = statistics.median(ours[name, loop, "base"])
            head = statistics.median(ours[name, loop, "head"])
            hand = statistics.median(theirs[name, loop])
            rows.append(
                f"| {name} | {loop} | {base:.2f} | {head:.2f} | {head / base:.3f} | "
                f"{base / hand:.2f} | {head / hand:.2f} |"
            )
    text = (
        f"A/B against {opts.base}: median of {opts.repeat} interleaved runs; µs per node "
        "(graphs) or per run (short runs, building included); hand-written asyncio pooled "
        "over both trees\n\n" + "\n".join(rows) + "\n"
    )
    print(text)
    if opts.markdown:
        opts.markdown.write_text(text)


if __name__ == "__main__":
    main()
