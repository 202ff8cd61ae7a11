"""One measurement in a fresh interpreter, for benchmarks/run.py.

Usage: ``python benchmarks/worker.py IMPL WORKLOAD N LOOP`` prints one JSON line::

    {"impl": ..., "workload": ..., "n": ..., "loop": ...,
     "seconds": wall time of the workload, building the workflow included,
     "rss_before_kib": VmRSS just before building, "peak_rss_kib": VmHWM after the run,
     "nodes": node count, "efficiency": ideal / wall for ``sleep`` (else null),
     "result": the workload's return value, equal across IMPLs}

IMPL is how the workload is written:

  asyncio  by hand, a task per node: ``asyncio.gather`` for a fan-out, ``create_task``
           awaited in turn for a chain, a task per DAG node awaiting its parents' tasks,
           a ``Semaphore`` for the limit, ``asyncio.timeout`` for per-node timeouts.
  anyio    by hand, structured: one task group, ``start_soon`` per node, each node writing
           its result into a list; a chain step (and the final sum) is a task group of
           one task, started and awaited in turn; a DAG node waits on its parents'
           ``anyio.Event``; a ``CapacityLimiter`` for the limit, ``fail_after`` for timeouts.
  aflow    ``aflow.chord`` for a fan-out, ``aflow.chain`` for a chain, a ``GraphBuilder``
           graph for a DAG (a join of its sinks and a sum), ``aflow.group`` run with
           ``max_concurrency`` for the sleeps, a task declared ``timeout=10`` for timeouts.

WORKLOAD and N (see ``nodes()`` for the node count):

  fanout          N tasks ``inc(i)``, then one task summing their results (a chord)
  fanout_timeout  the same, every ``inc`` under its own 10 s timeout
  waiting         the same fan-out, but every task waits until the last one has started
                  (a rendezvous on one event): all N nodes are in flight at once, which
                  is what the memory figure of this workload measures
  chain           N tasks, each receiving its parent's result plus one
  dag             W x W layered DAG with W = isqrt(N): every node below the first layer has
                  2 parents in the layer above (i and i+1 mod W); the result sums the last layer
  randdag         N nodes drawn by ``random.Random(7)``: node i > 0 has 1-3 parents (uniform
                  count) sampled without replacement among the previous min(i, 1000) nodes;
                  a node returns its first parent's value + 1, the result sums the sinks
  sleep           N tasks sleeping 10 ms under a limit of 100; efficiency = ideal / wall with
                  ideal = ceil(N / 100) * 10 ms

LOOP is ``asyncio`` (the default loop) or ``uvloop``; anyio runs on it through
``anyio.run(..., backend_options={"loop_factory": ...})``.

Only the IMPL's own library is imported, so peak RSS is not inflated by the
others. Inputs (the DAGs' parent lists) are drawn before the clock starts. A
warm-up run of the same workload at a tiny size runs first on the same loop so
that first-call costs (lazy imports, caches) are not billed to the measurement;
then ``gc.collect()``, RSS is read and the clock starts.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

WORKLOADS = ("fanout", "fanout_timeout", "waiting", "chain", "dag", "randdag", "sleep")
IMPLS = ("asyncio", "anyio", "aflow")
LOOPS = ("asyncio", "uvloop")

LIMIT = 100  # concurrency limit of the sleep workload
NAP = 0.01  # seconds each sleep task sleeps
TIMEOUT = 10.0  # per-node timeout of fanout_timeout
WINDOW = 1000  # randdag: parents are drawn among this many previous nodes
WARMUP_N = 500  # past the scheduler's first pass (128 nodes), so its task group path is warm too

Parents = list[tuple[int, ...]]  # parents[i]: the indices node i waits for
Workload = Callable[[Any], Awaitable[int]]

# --- inputs and node counts ---------------------------------------------------------------


def dag_parents(n: int) -> Parents:
    """The W x W layered DAG, W = isqrt(n): node (layer, i) waits for (layer-1, i) and (i+1)."""
    width = math.isqrt(n)
    parents: Parents = [() for _ in range(width)]
    for layer in range(1, width):
        base = (layer - 1) * width
        parents.extend((base + i, base + (i + 1) % width) for i in range(width))
    return parents


def randdag_parents(n: int) -> Parents:
    """A seeded random DAG of n nodes (see the module docstring)."""
    rng = random.Random(7)
    parents: Parents = [()] if n else []
    for i in range(1, n):
        window = min(i, WINDOW)
        k = rng.randint(1, min(3, window))
        parents.append(tuple(sorted(rng.sample(range(i - window, i), k))))
    return parents


def sinks(parents: Parents) -> list[int]:
    """The nodes no other node waits for."""
    has_child = bytearray(len(parents))
    for ps in parents:
        for p in ps:
            has_child[p] = 1
    return [i for i, flag in enumerate(has_child) if not flag]


def prepare(workload: str, n: int) -> Any:
    """The workload's input, built before the clock starts."""
    if workload == "dag":
        parents = dag_parents(n)
        return parents, list(range(len(parents) - math.isqrt(n), len(parents)))
    if workload == "randdag":
        parents = randdag_parents(n)
        return parents, sinks(parents)
    return n


def nodes(workload: str, n: int) -> int:
    """Tasks the workload runs: fan-outs count their final sum, a DAG has W * W nodes."""
    if workload in ("fanout", "fanout_timeout", "waiting"):
        return n + 1
    if workload == "dag":
        return math.isqrt(n) ** 2
    return n


def ideal_seconds(n: int) -> float:
    return math.ceil(n / LIMIT) * NAP


# --- the task bodies, shared by every IMPL ------------------------------------------------


async def inc(x: int) -> int:
    return x + 1


async def tsum(xs: list[int]) -> int:
    return sum(xs)


async def nap(x: int) -> int:
    await asyncio.sleep(NAP)
    return x


async def node(x: int, *others: int) -> int:
    """A DAG node: its first parent's value + 1 (the others only order it)."""
    return x + 1


class Rendezvous:
    """N callers of :meth:`arrive`: each waits until the last one has arrived."""

    def __init__(self, n: int, opened: Any) -> None:
        self.n = n
        self.arrived = 0
        self.opened = opened  # an asyncio.Event or an anyio.Event

    async def arrive(self, x: int) -> int:
        self.arrived += 1
        if self.arrived == self.n:
            self.opened.set()
        else:
            await self.opened.wait()
        return x + 1


# --- IMPL asyncio: hand-written, a task per node ------------------------------------------


def asyncio_impl() -> dict[str, Workload]:
    async def fanout(n: int) -> int:
        values = await asyncio.gather(*(inc(i) for i in range(n)))
        return await asyncio.create_task(tsum(list(values)))

    async def inc_timeout(i: int) -> int:
        async with asyncio.timeout(TIMEOUT):
            return await inc(i)

    async def fanout_timeout(n: int) -> int:
        values = await asyncio.gather(*(inc_timeout(i) for i in range(n)))
        return await asyncio.create_task(tsum(list(values)))

    async def waiting(n: int) -> int:
        meet = Rendezvous(n, asyncio.Event())
        values = await asyncio.gather(*(meet.arrive(i) for i in range(n)))
        return await asyncio.create_task(tsum(list(values)))

    async def chain(n: int) -> int:
        value = 0
        for _ in range(n):
            value = await asyncio.create_task(inc(value))
        return value

    async def dag(data: tuple[Parents, list[int]]) -> int:
        parents, out = data
        tasks: list[asyncio.Task[int]] = []

        async def one(ps: tuple[int, ...]) -> int:
            if not ps:
                return await node(0)
            return await node(*[await tasks[p] for p in ps])

        for ps in parents:
            tasks.append(asyncio.create_task(one(ps)))
        return sum(await asyncio.gather(*(tasks[i] for i in out)))

    async def sleep(n: int) -> int:
        sem = asyncio.Semaphore(LIMIT)

        async def one(i: int) -> int:
            async with sem:
                return await nap(i)

        return len(await asyncio.gather(*(one(i) for i in range(n))))

    return {
        "fanout": fanout,
        "fanout_timeout": fanout_timeout,
        "waiting": waiting,
        "chain": chain,
        "dag": dag,
        "randdag": dag,
        "sleep": sleep,
    }


# --- IMPL anyio: hand-written, structured concurrency -------------------------------------


def anyio_impl() -> dict[str, Workload]:
    import anyio

    async def call(fn: Callable[..., Awaitable[int]], *args: Any) -> int:
        """Run fn(*args) as a task of its own and return its result."""
        box: list[int] = []

        async def one() -> None:
            box.append(await fn(*args))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
        return box[0]

    async def fanout(n: int) -> int:
        results = [0] * n

        async def one(i: int) -> None:
            results[i] = await inc(i)

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        return await call(tsum, results)

    async def fanout_timeout(n: int) -> int:
        results = [0] * n

        async def one(i: int) -> None:
            with anyio.fail_after(TIMEOUT):
                results[i] = await inc(i)

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        return await call(tsum, results)

    async def waiting(n: int) -> int:
        meet = Rendezvous(n, anyio.Event())
        results = [0] * n

        async def one(i: int) -> None:
            results[i] = await meet.arrive(i)

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        return await call(tsum, results)

    async def chain(n: int) -> int:
        value = 0
        for _ in range(n):
            value = await call(inc, value)
        return value

    async def dag(data: tuple[Parents, list[int]]) -> int:
        parents, out = data
        results = [0] * len(parents)
        done = [anyio.Event() for _ in parents]

        async def one(i: int, ps: tuple[int, ...]) -> None:
            for p in ps:
                await done[p].wait()
            results[i] = await node(*[results[p] for p in ps]) if ps else await node(0)
            done[i].set()

        async with anyio.create_task_group() as tg:
            for i, ps in enumerate(parents):
                tg.start_soon(one, i, ps)
        return sum(results[i] for i in out)

    async def sleep(n: int) -> int:
        limiter = anyio.CapacityLimiter(LIMIT)
        results = [0] * n

        async def one(i: int) -> None:
            async with limiter:
                results[i] = await nap(i)

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        return len(results)

    return {
        "fanout": fanout,
        "fanout_timeout": fanout_timeout,
        "waiting": waiting,
        "chain": chain,
        "dag": dag,
        "randdag": dag,
        "sleep": sleep,
    }


# --- IMPL aflow ---------------------------------------------------------------------------


def aflow_impl() -> dict[str, Workload]:
    import aflow
    from aflow._graph import GraphBuilder, NodeKind

    inc_t, tsum_t, nap_t, node_t = (
        aflow.task(inc),
        aflow.task(tsum),
        aflow.task(nap),
        aflow.task(node),
    )
    inc_timeout_t = aflow.task(timeout=TIMEOUT)(inc)

    async def fanout(n: int) -> int:
        return await aflow.chord((inc_t.s(i) for i in range(n)), tsum_t.s())

    async def fanout_timeout(n: int) -> int:
        return await aflow.chord((inc_timeout_t.s(i) for i in range(n)), tsum_t.s())

    async def waiting(n: int) -> int:
        arrive = aflow.task(Rendezvous(n, asyncio.Event()).arrive)
        return await aflow.chord((arrive.s(i) for i in range(n)), tsum_t.s())

    async def chain(n: int) -> int:
        return await aflow.chain(inc_t.s(0), *(inc_t.s() for _ in range(n - 1)))

    async def dag(data: tuple[Parents, list[int]]) -> int:
        parents, out = data
        builder = GraphBuilder()
        for ps in parents:
            if ps:
                builder.add(NodeKind.TASK, node_t, parents=ps, input=ps[0], args=())
            else:
                builder.add(NodeKind.TASK, node_t, args=(0,))
        join = builder.add(NodeKind.JOIN, None, parents=tuple(out))
        total = builder.add(NodeKind.TASK, tsum_t, parents=(join,), input=join)
        return await aflow.run(builder.build(total))

    async def sleep(n: int) -> int:
        group = aflow.group(nap_t.s(i) for i in range(n))
        return len(await aflow.run(group, max_concurrency=LIMIT))

    return {
        "fanout": fanout,
        "fanout_timeout": fanout_timeout,
        "waiting": waiting,
        "chain": chain,
        "dag": dag,
        "randdag": dag,
        "sleep": sleep,
    }


# --- measuring ----------------------------------------------------------------------------


def proc_status_kib(field: str) -> int:
    """A ``VmRSS``/``VmHWM``-style line of /proc/self/status, in KiB (0 if unavailable)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


async def measure(work: Workload, workload: str, n: int) -> dict[str, Any]:
    await work(prepare(workload, min(n, WARMUP_N)))
    data = prepare(workload, n)
    gc.collect()
    rss_before = proc_status_kib("VmRSS")
    start = time.perf_counter()
    result = await work(data)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rss_before_kib": rss_before,
        "peak_rss_kib": proc_status_kib("VmHWM"),
        "nodes": nodes(workload, n),
        "efficiency": ideal_seconds(n) / seconds if workload == "sleep" else None,
        "result": result,
    }


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_one(impl: str, workload: str, n: int, loop: str) -> dict[str, Any]:
    """Measure one (impl, workload, n, loop) on a loop of its own."""
    work = {"asyncio": asyncio_impl, "anyio": anyio_impl, "aflow": aflow_impl}[impl]()[workload]
    factory = loop_factory(loop)
    if impl == "anyio":
        import anyio

        return anyio.run(
            measure, work, workload, n, backend="asyncio", backend_options={"loop_factory": factory}
        )
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(measure(work, workload, n))


def main(argv: list[str]) -> None:
    usage = (
        f"usage: worker.py {{{'|'.join(IMPLS)}}} {{{'|'.join(WORKLOADS)}}} N {{{'|'.join(LOOPS)}}}"
    )
    if len(argv) != 4 or argv[0] not in IMPLS or argv[1] not in WORKLOADS or argv[3] not in LOOPS:
        sys.exit(usage)
    impl, workload, n, loop = argv[0], argv[1], int(argv[2]), argv[3]
    out = {"impl": impl, "workload": workload, "n": n, "loop": loop}
    out.update(run_one(impl, workload, n, loop))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
