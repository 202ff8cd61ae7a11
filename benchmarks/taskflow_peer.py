"""TaskFlow's side of benchmarks/flows.py: run under a venv that has TaskFlow 6.x, never aflow's.

Usage: ``python taskflow_peer.py linear|unordered N`` prints one JSON line:
``{"seconds": ..., "peak_rss_kib": ...}`` for building, loading and running a flow
of N trivial tasks (linear: task i adds 1 to ``v{i}`` and provides ``v{i+1}``,
distinct names because TaskFlow's store would shadow a repeated one; unordered:
each provides its own name), the serial engine for linear flows and the parallel one for unordered.
"""

from __future__ import annotations

import json
import sys
import time

from peer_worker import peak_rss_kib  # beside this file; the standard library only
from taskflow import engines, task
from taskflow.patterns import linear_flow as lf
from taskflow.patterns import unordered_flow as uf


class Inc(task.Task):
    def execute(self, x):
        return x + 1


class Noop(task.Task):
    def execute(self):
        return 1


def main() -> None:
    pattern, n = sys.argv[1], int(sys.argv[2])
    start = time.perf_counter()
    if pattern == "linear":
        flow = lf.Flow("l").add(
            *(Inc(name=f"t{i}", rebind={"x": f"v{i}"}, provides=f"v{i + 1}") for i in range(n))
        )
        engine = engines.load(flow, store={"v0": 0}, engine="serial")
        engine.run()
        assert engine.storage.fetch(f"v{n}") == n
    else:
        flow = uf.Flow("u").add(*(Noop(name=f"t{i}", provides=f"v{i}") for i in range(n)))
        engine = engines.load(flow, engine="parallel")
        engine.run()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_kib": peak_rss_kib()}))


if __name__ == "__main__":
    main()
