"""Where aflow's time goes: one benchmark workload under pyinstrument.

Usage: ``python benchmarks/profile.py WORKLOAD [N] [--loop asyncio|uvloop] [--repeat R]``

Runs the aflow side of ``benchmarks/worker.py``'s WORKLOAD (fanout, fanout_timeout,
chain, dag, randdag, sleep) R times after a warm-up, under pyinstrument's
sampling profiler, and prints the call tree. This is what the optimisations of
issue #7 were read from; ``make bench`` does not run it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=worker.WORKLOADS)
    parser.add_argument("n", nargs="?", type=int, default=10_000)
    parser.add_argument("--loop", choices=worker.LOOPS, default="asyncio")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    try:
        from pyinstrument import Profiler
    except ImportError:
        sys.exit("pyinstrument is missing: pip install -e '.[bench]'")
    work = worker.aflow_impl()[args.workload]

    async def runs() -> None:
        await work(worker.prepare(args.workload, worker.WARMUP_N))
        data = worker.prepare(args.workload, args.n)
        profiler = Profiler(interval=0.0001, async_mode="disabled")
        with profiler:
            for _ in range(args.repeat):
                await work(data)
        print(profiler.output_text(unicode=True, color=False, show_all=False))

    with asyncio.Runner(loop_factory=worker.loop_factory(args.loop)) as runner:
        runner.run(runs())


if __name__ == "__main__":
    main()
