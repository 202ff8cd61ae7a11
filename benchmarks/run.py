"""aflow against hand-written asyncio and anyio: every run in a fresh interpreter.

Usage: ``python benchmarks/run.py [--repeat N] [--quick] [--markdown PATH] [--json PATH]
[--chart PATH] [--only W1,W2] [--sizes N1,N2] [--impls I1,I2] [--loops L1,L2]
[--timeout S] [--anyio-max-nodes N] [--peers-python PATH] [--peer-timeout S]``

Method. Each measurement is ``python benchmarks/worker.py IMPL WORKLOAD N LOOP``,
a fresh subprocess that imports only its own library, draws the inputs, warms
up at a tiny size, then times the workload end to end (building the workflow
included) and reports wall seconds, RSS just before building and peak RSS
(VmHWM). See worker.py for what each IMPL writes by hand and what each WORKLOAD
is. A figure is the median of ``--repeat`` runs (default 3); the runs of one
comparison (same workload, size and loop) are interleaved across IMPLs, so a
slow spell of the machine hits all of them alike. Reported:

  µs/node      median wall / nodes
  x asyncio    µs/node / hand-written asyncio's, same size and loop, this invocation
  peak MiB     median VmHWM of the worker (its imports included)
  KiB/node     median (peak RSS - RSS before building) / nodes: what the run itself costs

Sections: the main table (the issue's workloads at its sizes, plus a fan-out
with a 10 s timeout per node), scaling runs (fan-out and chain at 1k..1M nodes,
a random DAG at 100k) with a chart, the issue's targets with PASS/MISS computed
from the data, and with ``--peers-python`` the peers (TaskFlow, Celery, Dask,
Prefect) run by ``benchmarks/peer_worker.py`` under their own venv.

``loops``, ``machine`` and ``measure`` stay here for benchmarks/flows.py, which
still times in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _markdown import sections as sections_of

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
IMPLS = ("asyncio", "anyio", "aflow")
WORKLOADS = ("fanout", "fanout_timeout", "waiting", "chain", "dag", "randdag", "sleep")
BASELINE = "asyncio"  # the impl every ratio divides by
PEERS = ("taskflow", "celery", "dask", "prefect")
PEER_WORKLOADS = ("fanout", "chain", "dag", "sleep")
# Peers too slow for the sizes run smaller ones (as the issue's own table did).
PEER_SIZE_OVERRIDES: dict[str, dict[str, int]] = {
    "taskflow": {"fanout": 1_000, "chain": 500, "dag": 400},
    "prefect": {"fanout": 1_000, "chain": 500, "dag": 400},
}
# anyio runs above this many nodes are skipped (None: no cap); --anyio-max-nodes overrides.
ANYIO_MAX_NODES: int | None = None


@dataclass(frozen=True)
class Plan:
    """What to measure: (workload, N) pairs for the main table and the scaling runs."""

    main: tuple[tuple[str, int], ...]
    scaling: tuple[tuple[str, int], ...]
    scale_ref: int  # the scaling targets compare the largest size to this one


FULL = Plan(
    main=(
        ("fanout", 10_000),
        ("chain", 2_000),
        ("dag", 2_500),
        ("sleep", 1_000),
        ("fanout_timeout", 10_000),
        ("waiting", 100_000),
    ),
    scaling=(
        *((w, n) for w in ("fanout", "chain") for n in (1_000, 10_000, 100_000, 1_000_000)),
        ("randdag", 100_000),
    ),
    scale_ref=10_000,
)
QUICK = Plan(
    main=(
        ("fanout", 1_000),
        ("chain", 200),
        ("dag", 100),
        ("sleep", 1_000),
        ("fanout_timeout", 1_000),
        ("waiting", 1_000),
    ),
    scaling=(
        *((w, n) for w in ("fanout", "chain") for n in (100, 1_000, 10_000)),
        ("randdag", 10_000),
    ),
    scale_ref=1_000,
)

# --- in-process timing, kept for benchmarks/flows.py --------------------------------------


def timed(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], fn: Callable[[], Awaitable[Any]]
) -> float:
    async def once() -> float:
        gc.collect()
        start = time.perf_counter()
        await fn()
        return time.perf_counter() - start

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(once())


def measure(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    fn: Callable[[], Awaitable[Any]],
    repeat: int,
) -> float:
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


# --- measurements -------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One thing to measure; ``loop`` is ``-`` for a peer (it brings its own)."""

    impl: str
    workload: str
    n: int
    loop: str


@dataclass
class Measured:
    spec: Spec
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def median(self, key: Callable[[dict[str, Any]], float]) -> float | None:
        if self.error or not self.runs:
            return None
        return statistics.median(key(run) for run in self.runs)

    @property
    def nodes(self) -> int:
        return int(self.runs[0]["nodes"]) if self.runs else 0

    @property
    def us_per_node(self) -> float | None:
        return self.median(lambda r: r["seconds"] / r["nodes"] * 1e6)

    @property
    def peak_mib(self) -> float | None:
        return self.median(lambda r: r["peak_rss_kib"] / 1024)

    @property
    def kib_per_node(self) -> float | None:
        if any("rss_before_kib" not in r for r in self.runs):
            return None
        return self.median(lambda r: (r["peak_rss_kib"] - r["rss_before_kib"]) / r["nodes"])

    @property
    def efficiency(self) -> float | None:
        if any(r.get("efficiency") is None for r in self.runs):
            return None
        return self.median(lambda r: r["efficiency"])

    def as_json(self) -> dict[str, Any]:
        return {
            **vars(self.spec),
            "runs": self.runs,
            "error": self.error,
            "us_per_node": self.us_per_node,
            "peak_mib": self.peak_mib,
            "kib_per_node": self.kib_per_node,
            "efficiency": self.efficiency,
        }


def run_json(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run one measuring subprocess; its last stdout line as JSON, or ``{"error": ...}``."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    except OSError as exc:
        return {"error": f"cannot run {cmd[0]}: {exc}"}
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if "error" in result or (done.returncode == 0 and result):
        return result
    if done.returncode == 0:
        return {"error": f"no JSON line on stdout: {(lines or [''])[-1][:200]!r}"}
    tail = (done.stderr.strip().splitlines() or [""])[-1]
    return {"error": f"exit status {done.returncode}{': ' if tail else ''}{tail[:200]}"}


class Bench:
    """Runs specs in subprocesses, ``repeat`` times each, and keeps every result."""

    def __init__(self, args: argparse.Namespace):
        self.repeat: int = args.repeat
        self.timeout: float = args.timeout
        self.peer_timeout: float = args.peer_timeout
        self.peers_python: str | None = args.peers_python
        self.anyio_max_nodes: int | None = args.anyio_max_nodes
        self.results: dict[Spec, Measured] = {}

    def command(self, spec: Spec) -> list[str]:
        if spec.impl in PEERS:
            assert self.peers_python is not None
            worker = str(HERE / "peer_worker.py")
            return [self.peers_python, worker, spec.impl, spec.workload, str(spec.n)]
        worker = str(HERE / "worker.py")
        return [sys.executable, worker, spec.impl, spec.workload, str(spec.n), spec.loop]

    def run(self, specs: Iterable[Spec]) -> list[Measured]:
        """Measure the specs not measured yet, their repeats interleaved; return all of them."""
        specs = list(dict.fromkeys(specs))
        todo = [s for s in specs if s not in self.results]
        for spec in todo:
            self.results[spec] = Measured(spec)
            cap = self.anyio_max_nodes
            if spec.impl == "anyio" and cap and spec.n > cap:
                self.results[spec].error = f"skipped (anyio capped at {cap:,} nodes)"
        for _ in range(self.repeat):
            for spec in todo:
                measured = self.results[spec]
                if measured.error:
                    continue  # one failure is enough: do not wait out a timeout thrice
                timeout = self.peer_timeout if spec.impl in PEERS else self.timeout
                out = run_json(self.command(spec), timeout)
                if "error" in out:
                    measured.error = str(out["error"])
                else:
                    measured.runs.append(out)
        self.check_agreement(todo)
        return [self.results[s] for s in specs]

    def check_agreement(self, specs: list[Spec]) -> None:
        """Every impl of one (workload, n) must return the same value; flag the odd ones out."""
        expected: dict[tuple[str, int], Any] = {}
        for spec in specs:
            measured = self.results[spec]
            for run in measured.runs:
                if "result" not in run:
                    continue
                value = expected.setdefault((spec.workload, spec.n), run["result"])
                if run["result"] != value and not measured.error:
                    measured.error = f"wrong result {run['result']!r} (expected {value!r})"


# --- the sections -------------------------------------------------------------------------


def label(workload: str, n: int) -> str:
    """The workload's name in tables (the size goes in its own column)."""
    width = math.isqrt(n)
    return {
        "fanout": "fan-out + sum",
        "fanout_timeout": "fan-out + sum, 10 s timeout per node",
        "waiting": "fan-out, every node waiting at once",
        "chain": "chain",
        "dag": f"DAG {width}x{width}, 2 parents",
        "randdag": "random DAG, 1-3 parents",
        "sleep": "10 ms sleeps, limit 100",
    }[workload]


def named(workload: str, n: int) -> str:
    """The workload's name with its size, for targets and progress lines."""
    return f"{label(workload, n)} ({n:,})"


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def sig(value: float | None) -> str:
    """Three significant figures at most, for the peers' wide range (0.123, 12.3, 1234)."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def ratio(bench: Bench, measured: Measured) -> float | None:
    spec = measured.spec
    base_loop = spec.loop if spec.impl in IMPLS else "asyncio"
    base = bench.results.get(Spec(BASELINE, spec.workload, spec.n, base_loop))
    if base is None or base.us_per_node is None or measured.us_per_node is None:
        return None
    return measured.us_per_node / base.us_per_node


def measure_section(
    bench: Bench, pairs: Iterable[tuple[str, int]], impls: list[str], loop_names: list[str]
) -> list[Measured]:
    """Measure each (workload, n) on each loop, the impls of one comparison interleaved."""
    rows: list[Measured] = []
    for workload, n in pairs:
        for loop in loop_names:
            group = bench.run(Spec(impl, workload, n, loop) for impl in impls)
            rows += group
            print_group(bench, group)
    return rows


def print_group(bench: Bench, group: list[Measured]) -> None:
    spec = group[0].spec
    cells = []
    for m in group:
        if m.error:
            cells.append(f"{m.spec.impl} {m.error}")
        else:
            cells.append(
                f"{m.spec.impl} {fmt(m.us_per_node, '.2f')} µs/node "
                f"(x{fmt(ratio(bench, m))}, {fmt(m.kib_per_node, '.2f')} KiB/node)"
            )
    print(f"{named(spec.workload, spec.n):46} {spec.loop:8} " + "  ".join(cells), flush=True)


def result_table(bench: Bench, rows: list[Measured], with_efficiency: bool) -> list[str]:
    head = "| workload | nodes | loop | impl | µs/node | x asyncio | peak RSS MiB | KiB/node |"
    rule = "|---|---:|---|---|---:|---:|---:|---:|"
    if with_efficiency:
        head, rule = head + " efficiency |", rule + "---:|"
    lines = [head, rule]
    for m in rows:
        s = m.spec
        start = f"| {label(s.workload, s.n)} | {m.nodes or s.n:,} | {s.loop} | {s.impl} |"
        if m.error:
            cells = [m.error, "", "", ""] + ([""] if with_efficiency else [])
        else:
            cells = [
                fmt(m.us_per_node),
                fmt(ratio(bench, m)),
                fmt(m.peak_mib, ".0f"),
                fmt(m.kib_per_node),
            ]
            if with_efficiency:
                cells.append(fmt(m.efficiency))
        lines.append(start + " " + " | ".join(cells) + " |")
    return lines


# --- targets ------------------------------------------------------------------------------


@dataclass
class Target:
    text: str
    figures: list[str]
    verdict: str  # PASS, MISS or "-" (not measured)


def judge(checks: list[bool | None]) -> str:
    if not checks or any(c is None for c in checks):
        return "-"
    return "PASS" if all(checks) else "MISS"


def aflow_result(bench: Bench, workload: str, n: int, loop: str) -> Measured | None:
    return bench.results.get(Spec("aflow", workload, n, loop))


def per_loop(
    loop_names: list[str], figure: Callable[[str], tuple[str, bool | None]]
) -> tuple[list[str], str]:
    """``figure(loop)`` gives (text, passed or None if unknown) for each loop; judge them all."""
    shown = [figure(loop) for loop in loop_names]
    texts = [f"{loop} {text}" for loop, (text, _) in zip(loop_names, shown, strict=True)]
    return texts, judge([ok for _, ok in shown])


def ratio_target(
    bench: Bench, workload: str, n: int, limit: float, loop_names: list[str]
) -> Target:
    def figure(loop: str) -> tuple[str, bool | None]:
        m = aflow_result(bench, workload, n, loop)
        r = ratio(bench, m) if m else None
        return fmt(r, suffix="x"), None if r is None else r <= limit

    figures, verdict = per_loop(loop_names, figure)
    return Target(f"{named(workload, n)}: aflow <= {limit:g}x asyncio per node", figures, verdict)


def efficiency_target(bench: Bench, n: int, loop_names: list[str]) -> Target:
    def figure(loop: str) -> tuple[str, bool | None]:
        m = aflow_result(bench, "sleep", n, loop)
        eff = m.efficiency if m else None
        return fmt(eff), None if eff is None else eff >= 0.85

    figures, verdict = per_loop(loop_names, figure)
    return Target(f"{named('sleep', n)}: aflow efficiency >= 0.85", figures, verdict)


def memory_target(bench: Bench, workload: str, n: int, loop_names: list[str]) -> Target:
    def figure(loop: str) -> tuple[str, bool | None]:
        m = aflow_result(bench, workload, n, loop)
        kib = m.kib_per_node if m else None
        return fmt(kib, suffix=" KiB/node"), None if kib is None else kib <= 2.0

    figures, verdict = per_loop(loop_names, figure)
    return Target(f"{named(workload, n)}: aflow memory <= 2 KiB/node", figures, verdict)


def growth_target(bench: Bench, workload: str, top: int, ref: int, loop_names: list[str]) -> Target:
    def figure(loop: str) -> tuple[str, bool | None]:
        big, small = (
            aflow_result(bench, workload, top, loop),
            aflow_result(bench, workload, ref, loop),
        )
        if big is None or big.error:  # not completing is a miss; not running it is unknown
            return (big.error or "", False) if big else ("not run", None)
        us_big, us_small = big.us_per_node, small.us_per_node if small else None
        growth = us_big / us_small if us_big is not None and us_small else None
        text = f"{fmt(us_big)} vs {fmt(us_small)} µs/node = {fmt(growth, suffix='x')}"
        return text, None if growth is None else growth <= 2.0

    figures, verdict = per_loop(loop_names, figure)
    name = "fan-out" if workload == "fanout" else "chain"
    text = f"{name} {top:,} completes; aflow µs/node within 2x of {ref:,} nodes"
    return Target(text, figures, verdict)


def targets(bench: Bench, plan: Plan, loop_names: list[str]) -> list[Target]:
    """The issue's targets, for the sizes this plan measured."""
    main = dict(plan.main)
    found = [
        ratio_target(bench, w, main[w], 1.0, loop_names)
        for w in ("fanout", "chain", "dag")
        if w in main
    ]
    if "fanout_timeout" in main:
        found.append(ratio_target(bench, "fanout_timeout", main["fanout_timeout"], 3.0, loop_names))
    if "sleep" in main:
        found.append(efficiency_target(bench, main["sleep"], loop_names))
    scaled = {w: sorted(n for w2, n in plan.scaling if w2 == w) for w in ("fanout", "chain")}
    if scaled["fanout"]:
        found.append(memory_target(bench, "fanout", scaled["fanout"][-1], loop_names))
    if "waiting" in main:  # every node in flight at once
        found.append(memory_target(bench, "waiting", main["waiting"], loop_names))
    for workload, sizes in scaled.items():
        if plan.scale_ref in sizes and sizes[-1] > plan.scale_ref:
            found.append(growth_target(bench, workload, sizes[-1], plan.scale_ref, loop_names))
    return found


def target_table(found: list[Target]) -> list[str]:
    lines = ["| target | measured | result |", "|---|---|---|"]
    for t in found:
        lines.append(f"| {t.text} | {'; '.join(t.figures)} | {t.verdict} |")
    return lines


# --- peers --------------------------------------------------------------------------------


def peer_sizes(peer: str, plan: Plan) -> dict[str, int]:
    main = dict(plan.main)
    sizes = {w: main[w] for w in PEER_WORKLOADS if w in main}
    for workload, n in PEER_SIZE_OVERRIDES.get(peer, {}).items():
        if workload in sizes:
            sizes[workload] = min(sizes[workload], n)
    return sizes


def peer_size_note(plan: Plan) -> str:
    """The peers' sizes in words: the default, then each override."""

    def words(sizes: dict[str, int]) -> str:
        short = {"fanout": "fan-out", "chain": "chain", "sleep": "sleeps"}
        return ", ".join(
            f"DAG {math.isqrt(n)}x{math.isqrt(n)}" if w == "dag" else f"{short[w]} {n:,}"
            for w, n in sizes.items()
        )

    notes = [words(peer_sizes("", plan))]
    notes += [f"{p} at {words(peer_sizes(p, plan))}" for p in PEER_SIZE_OVERRIDES]
    return "; ".join(notes)


def peer_versions(python: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json\n"
        "def v(d):\n"
        "    try:\n"
        "        return m.version(d)\n"
        "    except m.PackageNotFoundError:\n"
        "        return 'not installed'\n"
        f"print(json.dumps({{d: v(d) for d in {list(PEERS)!r}}}))"
    )
    out = run_json([python, "-c", code], timeout=60)
    return {p: str(out.get(p, "unknown")) for p in PEERS}


def measure_peers(bench: Bench, plan: Plan, workloads: set[str]) -> list[Measured]:
    rows: list[Measured] = []
    for peer in PEERS:
        for workload, n in peer_sizes(peer, plan).items():
            if workload not in workloads:
                continue
            bench.run([Spec(BASELINE, workload, n, "asyncio")])
            (measured,) = bench.run([Spec(peer, workload, n, "-")])
            rows.append(measured)
            shown = measured.error or (
                f"{sig(measured.us_per_node)} µs/node (x{sig(ratio(bench, measured))})"
            )
            print(f"{peer:9} {named(workload, n):46} {shown}", flush=True)
    return rows


def peer_table(bench: Bench, rows: list[Measured], versions: dict[str, str]) -> list[str]:
    lines = [
        "| peer | workload | nodes | µs/node | x asyncio | peak RSS MiB | efficiency |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        s = m.spec
        start = f"| {s.impl} {versions.get(s.impl, '')} | {label(s.workload, s.n)} |"
        if m.error:
            lines.append(f"{start} {s.n:,} | {m.error} | | | |")
        else:
            lines.append(
                f"{start} {m.nodes:,} | {sig(m.us_per_node)} | {sig(ratio(bench, m))} | "
                f"{fmt(m.peak_mib, '.0f')} | {fmt(m.efficiency)} |"
            )
    return lines


# --- outputs ------------------------------------------------------------------------------


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def write_chart(bench: Bench, rows: list[Measured], path: Path) -> bool:
    try:
        from chart import plot_scaling
    except ImportError as exc:
        print(f"warning: no chart ({exc}); `pip install -e '.[bench]'` adds matplotlib")
        return False
    points: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for m in rows:
        s = m.spec
        if s.workload in ("fanout", "chain") and m.us_per_node is not None:
            points.setdefault((s.workload, s.impl, s.loop), []).append((m.nodes, m.us_per_node))
    plot_scaling(points, path, f"µs/node vs nodes ({machine()})")
    print(f"chart: {path}")
    return True


def write_markdown(
    path: Path,
    bench: Bench,
    args: argparse.Namespace,
    plan: Plan,
    sections: dict[str, list[Measured]],
    chart: Path | None,
    found: list[Target],
    peer_info: dict[str, str],
) -> None:
    command = shlex.join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{command}`; every figure below is from that one invocation.",
        "",
        f"- machine: {machine()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}); "
        f"aflow {version('aflow')}, anyio {version('anyio')}, uvloop {version('uvloop')}",
        f"- each run: `python benchmarks/worker.py IMPL WORKLOAD N LOOP` in a fresh "
        f"subprocess; median of {args.repeat} runs (per-run timeout {args.timeout:.0f} s)",
        "",
        "## Method",
        "",
        "- wall time is the workload end to end, building the workflow included, after the",
        "  imports and a warm-up at a tiny size in the same process; inputs (DAG parent",
        "  lists) are drawn before the clock starts.",
        "- asyncio: hand-written, a task per node (`gather`, `create_task`, a task per DAG",
        "  node awaiting its parents' tasks, `Semaphore`, `asyncio.timeout`). anyio:",
        "  hand-written, a task group with `start_soon` per node writing into a list, a task",
        "  group per chain step, an `Event` per DAG node, `CapacityLimiter`, `fail_after`.",
        "  aflow: `chord`, `chain`, a `GraphBuilder` DAG, `group` with `max_concurrency`,",
        "  a task declared `timeout=10`. Details in `benchmarks/worker.py`.",
        "- x asyncio = µs/node / hand-written asyncio's at the same size on the same loop.",
        "- peak RSS is the worker's VmHWM, its imports included (only the impl's own library",
        "  is imported); KiB/node = (peak RSS - RSS just before building) / nodes.",
        "- the random DAG: `random.Random(7)`, node i > 0 has 1-3 parents among the previous",
        "  min(i, 1000) nodes; the sleeps' efficiency = ideal (N / 100 x 10 ms) / wall.",
    ]
    if args.anyio_max_nodes:
        lines.append(f"- anyio is not run above {args.anyio_max_nodes:,} nodes (too slow there).")
    lines += ["", "## Main workloads", "", *result_table(bench, sections["main"], True)]
    lines += ["", "## Scaling", ""]
    if chart is not None:
        lines += [f"![µs/node vs nodes]({os.path.relpath(chart, path.parent)})", ""]
    lines += result_table(bench, sections["scaling"], False)
    lines += ["", "## Targets", "", *target_table(found)]
    if sections.get("peers"):
        lines += [
            "",
            "## Peers",
            "",
            f"Each peer runs as `{args.peers_python} benchmarks/peer_worker.py PEER WORKLOAD N`",
            f"under its own venv, median of {args.repeat} fresh subprocesses, timeout",
            f"{args.peer_timeout:.0f} s each. Sizes: {peer_size_note(plan)}",
            "(`PEER_SIZE_OVERRIDES` in run.py). x asyncio divides by hand-written asyncio on",
            "the default loop at the same size, measured in this invocation. What each peer's",
            "time and peak RSS include (setup, warm-up, child processes) is described in",
            "`benchmarks/peer_worker.py`.",
            "",
            *peer_table(bench, sections["peers"], peer_info),
        ]
    kept = sections_of(path)  # what short.py and http.py wrote there stays
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + "".join("\n" + text for text in kept))
    print(f"markdown: {path}")


def write_json(path: Path, bench: Bench, args: argparse.Namespace) -> None:
    payload = {
        "machine": machine(),
        "python": platform.python_version(),
        "versions": {d: version(d) for d in ("aflow", "anyio", "uvloop")},
        "argv": sys.argv,
        "repeat": args.repeat,
        "results": [m.as_json() for m in bench.results.values()],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"json: {path}")


# --- command line -------------------------------------------------------------------------


def csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--markdown", type=Path, help="write the results (RESULTS.md) here")
    parser.add_argument("--json", type=Path, help="dump every raw run here")
    parser.add_argument(
        "--chart", type=Path, help="scaling chart (default: scaling.png next to --markdown)"
    )
    parser.add_argument("--only", type=csv, help="comma-separated workloads to run")
    parser.add_argument("--sizes", type=csv, help="comma-separated scaling sizes (fan-out, chain)")
    parser.add_argument("--impls", type=csv, default=list(IMPLS), help="comma-separated impls")
    parser.add_argument("--loops", type=csv, help="comma-separated loops (default: all found)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per worker run")
    parser.add_argument(
        "--anyio-max-nodes", type=int, default=ANYIO_MAX_NODES, help="skip anyio above this"
    )
    parser.add_argument("--peers-python", help="a Python with the peers (.venv-peers)")
    parser.add_argument("--peer-timeout", type=float, default=300.0, help="seconds per peer run")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    for name, given, known in (
        ("--impls", args.impls, IMPLS),
        ("--loops", args.loops or [], ("asyncio", "uvloop")),
        ("--only", args.only or [], WORKLOADS),
    ):
        unknown = sorted(set(given) - set(known))
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    if BASELINE not in args.impls:
        args.impls.insert(0, BASELINE)  # every ratio needs it
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    scaling = plan.scaling
    if args.sizes:
        sizes = [int(s.replace("_", "")) for s in args.sizes]
        scaling = (
            *((w, n) for w in ("fanout", "chain") for n in sizes),
            *((w, n) for w, n in scaling if w not in ("fanout", "chain")),
        )
    if args.only:
        main = tuple(p for p in plan.main if p[0] in args.only)
        scaling = tuple(p for p in scaling if p[0] in args.only)
        return Plan(main, scaling, plan.scale_ref)
    return Plan(plan.main, scaling, plan.scale_ref)


def main() -> None:
    args = parse_args()
    plan = make_plan(args)
    loop_names = args.loops or list(loops())
    bench = Bench(args)
    started = time.perf_counter()
    print(f"{machine()}; Python {platform.python_version()}; median of {args.repeat} runs")
    sections = {
        "main": measure_section(bench, plan.main, args.impls, loop_names),
        "scaling": measure_section(bench, plan.scaling, args.impls, loop_names),
    }
    peer_info: dict[str, str] = {}
    if args.peers_python:
        peer_info = peer_versions(args.peers_python)
        sections["peers"] = measure_peers(bench, plan, set(args.only or PEER_WORKLOADS))
    chart = args.chart or (args.markdown.parent / "scaling.png" if args.markdown else None)
    if chart is not None and not write_chart(bench, sections["scaling"], chart):
        chart = None
    found = targets(bench, plan, loop_names)
    for target in found:
        print(f"{target.verdict:4}  {target.text}: {'; '.join(target.figures)}")
    if args.markdown:
        write_markdown(args.markdown, bench, args, plan, sections, chart, found, peer_info)
    if args.json:
        write_json(args.json, bench, args)
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
