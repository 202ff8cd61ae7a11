"""What durability costs: per-node time with checkpoints in memory, SQLite and PostgreSQL.

Usage: ``python benchmarks/durable.py [--repeat N] [--quick] [--no-postgres] [--markdown PATH]
[--rounds N] [--short-only] [--json PATH]``

Each workload runs through a :class:`aflow.Runtime` as an ``@aflow.workflow``:
without a store (nothing checkpointed), then with the in-memory store, a
SQLite file and a throw-away PostgreSQL cluster (tests/pg.py). Reported: µs per
node and the ratio to the run without a store, in the same process.

Then, on asyncio and on uvloop, what a web service sees (issue 16): a durable chain's
step against a bare ``sqlite3`` WAL commit in the same process (INSERT + COMMIT of a
row shaped like a checkpoint's, ``synchronous=NORMAL``, the store's pragmas, no
automatic checkpoint inside the timing), and a durable 1-step and 5-step run against
the same run on the memory store and without a store; every figure of a round is
taken in turn, the median of ``--rounds`` rounds is reported (``--short-only``: this
section alone; ``--json``: its figures, for ``benchmarks/ab.py --durable``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aflow  # noqa: E402


@aflow.task
async def inc(x: int) -> int:
    return x + 1


@aflow.task
async def tsum(xs: list[int]) -> int:
    return sum(xs)


@aflow.workflow
def fanout(n: int) -> Any:
    return aflow.chord((inc.s(i) for i in range(n)), tsum.s())


@aflow.workflow
def chain(n: int) -> Any:
    return aflow.chain(inc.s(0), *(inc.s() for _ in range(n - 1)))


@aflow.task
async def book(x: int) -> int:
    return x + 1


@book.revert
async def unbook(x: int, *, result: Any) -> None:
    pass


@aflow.workflow
def saga_chain(n: int) -> Any:
    """A chain of steps with reverts: each start is written ahead of the step."""
    return aflow.chain(book.s(0), *(book.s() for _ in range(n - 1)))


@aflow.workflow
def short_chain(n: int) -> Any:
    """The short runs' workflow: ``n`` steps, each of which returns at once."""
    return aflow.chain(inc.s(0), *(inc.s() for _ in range(n - 1)))


async def once(store: str | None, workflow: Any, n: int) -> float:
    async with aflow.Runtime(store=store) as rt:
        start = time.perf_counter()
        if store is None:
            run = await rt.submit(workflow(n))
        else:
            run = await rt.submit(workflow, n=n)
        await run.result()
        return time.perf_counter() - start


@contextmanager
def stores(postgres: bool) -> Iterator[dict[str, str | None]]:
    with tempfile.TemporaryDirectory() as folder:
        found: dict[str, str | None] = {
            "none": None,
            "memory": "memory://",
            "sqlite": f"sqlite:///{os.path.join(folder, 'runs.db')}",
        }
        if not postgres:
            yield found
            return
        from tests.pg import postgres_cluster

        with postgres_cluster() as url:
            found["postgresql"] = url
            yield found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--markdown")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the short section")
    parser.add_argument("--short-only", action="store_true")
    parser.add_argument("--json", help="write the short section's figures here")
    parser.add_argument(
        "--postgres", action="store_true", help="with --short-only: PostgreSQL figures too"
    )
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 9)
    postgres = not args.no_postgres and (args.postgres or not args.short_only)
    # Durable runs refuse workflows defined in __main__: take them by their module name.
    from benchmarks.durable import chain, fanout, saga_chain

    sizes = {"fan-out + sum": (fanout, 200 if args.quick else 5000)}
    sizes["chain"] = (chain, 100 if args.quick else 1000)
    sizes["chain, steps with reverts"] = (saga_chain, 100 if args.quick else 1000)
    rows: list[tuple[str, int, str, float, float]] = []
    with stores(postgres) as urls:
        short = short_section(rounds, quick=args.quick, postgres=urls.get("postgresql"))
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(short))
        if args.short_only:
            for line in short_lines(short):
                print(line)
            return
        for name, (workflow, n) in sizes.items():
            graph = workflow.build({"n": n})
            tasks = sum(1 for node in graph.nodes if node.kind is not aflow.NodeKind.JOIN)
            base = None
            for label, url in urls.items():
                asyncio.run(once(url, workflow, n))  # warm-up (and schema creation)
                seconds = statistics.median(
                    asyncio.run(once(url, workflow, n)) for _ in range(args.repeat)
                )
                per_node = seconds / tasks * 1e6
                base = base or per_node
                rows.append((name, tasks, label, per_node, per_node / base))
                print(
                    f"{name:26} {tasks:>6} nodes  {label:10} {per_node:8.1f} µs/node  "
                    f"{per_node / base:5.2f}x",
                    flush=True,
                )
    if args.markdown:
        lines = [
            "# Durable runs: what checkpoints cost",
            "",
            "Written by `make bench` (`python benchmarks/durable.py`). Median of "
            f"{args.repeat}; ratio = per-node time / the same run with no store. Nodes are "
            "task nodes. In the last workload every step has a revert, so its start is "
            "written ahead of it (in its parent's commit).",
            "",
            "| workload | nodes | store | µs/node | ratio |",
            "|---|---:|---|---:|---:|",
        ]
        lines += [f"| {w} | {n:,} | {s} | {us:.1f} | {r:.2f} |" for w, n, s, us, r in rows]
        lines += ["", *target_lines(rows), "", *short_lines(short)]
        pathlib.Path(args.markdown).write_text("\n".join(lines) + "\n")
    for line in target_lines(rows):
        print(line)
    for line in short_lines(short):
        print(line)


def target_lines(rows: list[tuple[str, int, str, float, float]]) -> list[str]:
    """The issue's target: SQLite per node within 5x the in-memory store, per workload."""
    per_node = {(w, s): us for w, _, s, us, _ in rows}
    lines = ["Target: a SQLite checkpoint costs at most 5x the in-memory store's, per node.", ""]
    for workload in dict.fromkeys(w for w, *_ in rows):
        memory, sqlite = per_node.get((workload, "memory")), per_node.get((workload, "sqlite"))
        if memory and sqlite:
            verdict = "PASS" if sqlite <= 5 * memory else "MISS"
            lines.append(f"- {verdict} {workload}: sqlite / memory = {sqlite / memory:.2f}x")
    return lines


# --- what a web service sees: a step, a short run (issue 16) ----------------------------

#: A durable chain's length for the per-step figure, and short runs per figure.
CHAIN_STEPS = 300
RUNS_PER_FIGURE = 40
COMMITS_PER_FIGURE = 300
#: The figures of a round, in the order they are taken.
FIGURES = (
    "bare commit",
    "store write",
    "chain step sqlite",
    "chain step memory",
    "1-step run none",
    "1-step run memory",
    "1-step run sqlite",
    "5-step run none",
    "5-step run memory",
    "5-step run sqlite",
)
#: The PostgreSQL figures of a round, when a cluster runs (after the others).
PG_FIGURES = (
    "bare asyncpg commit",
    "pg store write",
    "chain step postgresql",
    "1-step run postgresql",
    "5-step run postgresql",
)
LOOPS = ("asyncio", "uvloop")


class BareCommit:
    """A bare sqlite3 WAL commit in this process: BEGIN, INSERT of a row shaped like a
    checkpoint's, COMMIT; ``synchronous=NORMAL`` and ``foreign_keys=ON`` (the store's
    pragmas). Its WAL is checkpointed between figures, never inside one."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self.db.execute(
            "CREATE TABLE bare (run_id TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL, "
            "attempt INTEGER NOT NULL, result TEXT, error TEXT, started_at REAL, "
            "finished_at REAL, PRIMARY KEY (run_id, key))"
        )
        self.written = 0

    def per_commit(self, n: int) -> float:
        """µs per commit, over ``n`` commits."""
        db = self.db
        start = time.perf_counter()
        for _ in range(n):
            self.written += 1
            db.execute("BEGIN")
            db.execute(
                "INSERT INTO bare VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ("a-run-id", f"inc-{self.written}", "succeeded", 1, "2", None, 1.0, 2.0),
            )
            db.execute("COMMIT")
        elapsed = time.perf_counter() - start
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return elapsed / n * 1e6

    def close(self) -> None:
        self.db.close()


async def per_run(rt: aflow.Runtime, workflow: Any, n: int, runs: int) -> float:
    """µs per ``rt.submit`` + ``result()`` of ``workflow(n)``, over ``runs`` runs."""
    stored = rt.store is not None
    start = time.perf_counter()
    for _ in range(runs):
        run = await (rt.submit(workflow, n=n) if stored else rt.submit(workflow(n)))
        await run.result()
    return (time.perf_counter() - start) / runs * 1e6


async def store_write(store: Any, run_id: str, n: int, first: int) -> float:
    """µs per ``await store.write_nodes`` of one succeeded step, over ``n`` writes."""
    from aflow.stores import NodeRecord

    start = time.perf_counter()
    for i in range(first, first + n):
        await store.write_nodes(run_id, [NodeRecord(f"inc-{i}", "succeeded", 1, "2", None, 1, 2)])
    return (time.perf_counter() - start) / n * 1e6


class BareRoundTrip:
    """A bare asyncpg round trip: one INSERT of a checkpoint-shaped row, autocommitted
    (the statement and its commit in one round trip), on a connection of its own."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.written = 0

    @classmethod
    async def open(cls, url: str) -> BareRoundTrip:
        import asyncpg

        conn = await asyncpg.connect(url)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bare (run_id TEXT NOT NULL, key TEXT NOT NULL, "
            "state TEXT NOT NULL, attempt INTEGER NOT NULL, result TEXT, error TEXT, "
            "started_at DOUBLE PRECISION, finished_at DOUBLE PRECISION, "
            "PRIMARY KEY (run_id, key))"
        )
        return cls(conn)

    async def per_commit(self, n: int) -> float:
        conn = self.conn
        start = time.perf_counter()
        for _ in range(n):
            self.written += 1
            await conn.execute(
                "INSERT INTO bare VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                "a-run-id",
                f"inc-{self.written}-{id(self)}",
                "succeeded",
                1,
                "2",
                None,
                1.0,
                2.0,
            )
        return (time.perf_counter() - start) / n * 1e6


async def short_round_trips(
    folder: str, rounds: int, quick: bool, postgres: str | None = None
) -> dict[str, float]:
    """The section's figures on the running loop: the median of ``rounds`` rounds."""
    from benchmarks.durable import short_chain

    steps = 60 if quick else CHAIN_STEPS
    runs = 10 if quick else RUNS_PER_FIGURE
    commits = 50 if quick else COMMITS_PER_FIGURE
    bare = BareCommit(os.path.join(folder, "bare.db"))
    names = FIGURES + (PG_FIGURES if postgres else ())
    samples: dict[str, list[float]] = {name: [] for name in names}
    url = f"sqlite:///{os.path.join(folder, 'runs.db')}"
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(bare.close)
        sqlite_rt = await stack.enter_async_context(aflow.Runtime(store=url))
        memory_rt = await stack.enter_async_context(aflow.Runtime(store="memory://"))
        plain_rt = await stack.enter_async_context(aflow.Runtime())
        pg_rt = pg_bare = pg_run = None
        if postgres:
            pg_rt = await stack.enter_async_context(aflow.Runtime(store=postgres))
            pg_bare = await BareRoundTrip.open(postgres)
            stack.push_async_callback(pg_bare.conn.close)
            pg_run = await pg_rt.submit(short_chain, n=1)
            await pg_run.result()
        store = sqlite_rt.store
        assert store is not None
        warm = await sqlite_rt.submit(short_chain, n=1)  # a run to write the rows into
        await warm.result()
        written = 0
        for rt in (sqlite_rt, memory_rt, plain_rt, *([pg_rt] if pg_rt else [])):  # warm-up
            for n in (1, 5):
                await per_run(rt, short_chain, n, 5)
        bare.per_commit(50)
        for _ in range(rounds):
            samples["bare commit"].append(bare.per_commit(commits))
            samples["store write"].append(await store_write(store, warm.id, commits, written))
            for label, rt in (("sqlite", sqlite_rt), ("memory", memory_rt)):
                us = await per_run(rt, short_chain, steps, 1)
                samples[f"chain step {label}"].append(us / steps)
            for n in (1, 5):
                for label, rt in (("none", plain_rt), ("memory", memory_rt)):
                    samples[f"{n}-step run {label}"].append(await per_run(rt, short_chain, n, runs))
                samples[f"{n}-step run sqlite"].append(
                    await per_run(sqlite_rt, short_chain, n, runs)
                )
            if pg_rt is not None and pg_bare is not None and pg_run is not None:
                assert pg_rt.store is not None
                samples["bare asyncpg commit"].append(await pg_bare.per_commit(commits))
                samples["pg store write"].append(
                    await store_write(pg_rt.store, pg_run.id, commits, written)
                )
                us = await per_run(pg_rt, short_chain, steps, 1)
                samples["chain step postgresql"].append(us / steps)
                for n in (1, 5):
                    samples[f"{n}-step run postgresql"].append(
                        await per_run(pg_rt, short_chain, n, runs)
                    )
            written += commits
    return {name: statistics.median(values) for name, values in samples.items()}


def short_section(
    rounds: int, *, quick: bool = False, postgres: str | None = None
) -> dict[str, dict[str, float]]:
    """The section's figures on each loop (a fresh folder each)."""
    found: dict[str, dict[str, float]] = {}
    for loop in LOOPS:
        with tempfile.TemporaryDirectory() as folder:
            main = short_round_trips(folder, rounds, quick, postgres)
            found[loop] = run_on(loop, lambda main=main: main)  # type: ignore[misc]
        print(f"short runs on {loop}: done", file=sys.stderr, flush=True)
    return found


def run_on(loop: str, main: Callable[[], Awaitable[Any]]) -> Any:
    async def body() -> Any:
        return await main()

    if loop == "uvloop":
        import uvloop

        return uvloop.run(body())
    return asyncio.run(body())


def short_lines(short: dict[str, dict[str, float]]) -> list[str]:
    """The section as markdown, with the issue's targets marked."""
    lines = [
        "## A step and a short run (issue 16)",
        "",
        "µs (median of interleaved rounds, in one process per loop). `bare commit`: a bare "
        "`sqlite3` WAL commit (BEGIN, INSERT, COMMIT, `synchronous=NORMAL`); `store write`: "
        "`await store.write_nodes(...)` of one succeeded step (the store's own statement, "
        "with its history trigger); a chain step: a "
        f"{CHAIN_STEPS}-step durable chain (60 with --quick) through `rt.submit`, per step; "
        "an n-step run: "
        "`rt.submit` + `result()` of an `@aflow.workflow`, per run.",
        "",
        "| loop | bare commit | store write | chain step sqlite | x bare | chain step memory "
        "| 1-step run none / memory / sqlite | sqlite x memory | 5-step run none / memory / "
        "sqlite | sqlite x memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for loop, f in short.items():
        step_x = f["chain step sqlite"] / f["bare commit"]
        one_x = f["1-step run sqlite"] / f["1-step run memory"]
        five_x = f["5-step run sqlite"] / f["5-step run memory"]
        lines.append(
            f"| {loop} | {f['bare commit']:.1f} | {f['store write']:.1f} | "
            f"{f['chain step sqlite']:.1f} | {step_x:.2f} | {f['chain step memory']:.1f} | "
            f"{f['1-step run none']:.0f} / {f['1-step run memory']:.0f} / "
            f"{f['1-step run sqlite']:.0f} | {one_x:.2f} | {f['5-step run none']:.0f} / "
            f"{f['5-step run memory']:.0f} / {f['5-step run sqlite']:.0f} | {five_x:.2f} |"
        )
        verdicts.append(
            f"- {'MET' if step_x <= 2 else 'MISSED'} ({loop}): a durable chain step ≤ 2x a "
            f"bare commit: {step_x:.2f}x"
        )
        verdicts.append(
            f"- {'MET' if five_x <= 3 else 'MISSED'} ({loop}): a durable 5-step run ≤ 3x the "
            f"same run on the memory store: {five_x:.2f}x"
        )
    if any("chain step postgresql" in f for f in short.values()):
        lines += [
            "",
            "PostgreSQL (the throw-away cluster of tests/pg.py, `fsync=off`), against a bare "
            "asyncpg round trip (one autocommitted INSERT of the same row on a connection of "
            "its own) and the memory store:",
            "",
            "| loop | bare asyncpg commit | store write | chain step | x bare | 1-step run "
            "memory / postgresql | x memory | 5-step run memory / postgresql | x memory |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for loop, f in short.items():
            bare = f["bare asyncpg commit"]
            lines.append(
                f"| {loop} | {bare:.1f} | {f['pg store write']:.1f} | "
                f"{f['chain step postgresql']:.1f} | {f['chain step postgresql'] / bare:.2f} | "
                f"{f['1-step run memory']:.0f} / {f['1-step run postgresql']:.0f} | "
                f"{f['1-step run postgresql'] / f['1-step run memory']:.2f} | "
                f"{f['5-step run memory']:.0f} / {f['5-step run postgresql']:.0f} | "
                f"{f['5-step run postgresql'] / f['5-step run memory']:.2f} |"
            )
    return [*lines, "", "Targets:", "", *verdicts]


if __name__ == "__main__":
    main()
