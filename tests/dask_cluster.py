"""A real Dask cluster for the tests: a ``LocalCluster`` of 2 worker processes (1 thread
each, each under a nanny that restarts it), on 127.0.0.1, with no dashboard, started
once for the whole test run (the ``dask_address`` fixture) and stopped at its end, its
worker processes by their process ids if they outlive the close.

The scheduler fails a task at its first lost worker (``allowed-failures: 0``): aflow's
retries are the only ones, as the README asks of a cluster aflow uses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator

__all__ = ["dask_cluster"]


@contextlib.contextmanager
def dask_cluster() -> Iterator[str]:
    """Start the cluster; yield its scheduler's address; stop it."""
    import dask
    from distributed import LocalCluster

    with dask.config.set(
        {
            "distributed.scheduler.allowed-failures": 0,
            # (a worker restarted by its nanny after a test killed it must not wait long)
            "distributed.comm.timeouts.connect": "10s",
        }
    ):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            # (no dashboard; its HTTP server, which always starts, on loopback too)
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
        )
    try:
        yield cluster.scheduler_address
    finally:
        pids = _worker_pids(cluster)
        cluster.close(timeout=30)
        for pid in pids:  # (what the close left behind)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _worker_pids(cluster: object) -> list[int]:
    pids = []
    for nanny in getattr(cluster, "workers", {}).values():
        process = getattr(nanny, "process", None)
        pid = getattr(process, "pid", None)
        if isinstance(pid, int):
            pids.append(pid)
    return pids
