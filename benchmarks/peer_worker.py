"""One measurement of a peer workflow engine, run in a fresh process under the peers' venv.

Usage: ``.venv-peers/bin/python benchmarks/peer_worker.py PEER WORKLOAD N``

PEER is ``taskflow`` (TaskFlow 6), ``celery`` (Celery 5, eager), ``dask``
(dask.distributed, in-process threads) or ``prefect`` (Prefect 3, ephemeral local
API). This script must never run under aflow's venv: the peers live in
``.venv-peers`` only.

Prints exactly one JSON line on stdout, ``{"seconds": float, "peak_rss_kib": int,
"nodes": int, "efficiency": float | null}``, or ``{"error": "..."}`` with exit
code 1. Everything else (the peers' logs, warnings, a child server's output) goes
to stderr: file descriptor 1 is pointed at stderr for the whole run and the JSON
line is written to a saved copy of it.

Workloads (the same shapes as benchmarks/run.py's):
  fanout  N independent tasks returning x + 1, then one task summing them (N + 1 nodes)
  chain   N tasks, each adding 1 to its parent's result (N nodes)
  dag     W = isqrt(N); W layers of W nodes, node i of layer k > 0 adding nodes i and
          (i + 1) % W of layer k - 1; layer 0 returns 1 (W * W nodes, no final sum:
          the last layer is fetched and checked to be all 2 ** (W - 1))
  sleep   N tasks each sleeping 10 ms with at most 100 at a time (N nodes);
          efficiency = (N / 100 * 0.01) / seconds, 1.0 being the ideal

``seconds`` is the wall time (perf_counter) of building the workflow and running it
to the end, results fetched. Excluded, and done before the clock starts: importing
the peer, one-time setup (the Celery app; the Dask ``Client`` and its in-process
cluster; Prefect's ephemeral API server, a uvicorn subprocess with a fresh SQLite
database under a temporary ``PREFECT_HOME``, whose start-up and migrations take
seconds), and one warm-up run of the same workload at a tiny size (so first-use
costs such as Prefect's flow registration are not charged to the measurement).
Also excluded: whatever the peer does after the results are in (Prefect's
background event worker draining task-run events to its API server at exit, the
Dask client's shutdown). ``peak_rss_kib`` is this process's ``VmHWM``: imports,
setup and warm-up included; Prefect's API server runs in a child process whose
memory is not counted (nor its CPU time, though it competes for the same cores
during the run). For Prefect the clock also waits 1 s after the warm-up, for the
server to record the warm-up's events. On SIGTERM (``timeout 300``) the script
kills Prefect's server, prints an ``{"error": ...}`` line and exits 1 at once.

Per peer:
  taskflow  fanout: a linear flow of an unordered flow of N tasks (distinct names,
            each ``provides`` its own value) and a sum task requiring them all,
            parallel engine; chain: a linear flow with ``rebind``/``provides``
            naming, serial engine (as benchmarks/taskflow_peer.py); dag: a graph flow
            whose edges TaskFlow infers from ``provides``/``rebind``, parallel engine;
            sleep: an unordered flow on the parallel engine, 100 threads. The parallel
            engine gets a futurist thread pool made during setup (futurist's default
            size, 5 per core; 100 for sleep): a pool the engine makes itself is shut
            down at the end of ``run()``, and futurist's idle workers poll every second,
            which would add about 1 s to every parallel run whatever N is.
  celery    eager mode (``task_always_eager``), memory broker and cache backend, no
            worker: everything runs serially in this thread, so sleep's efficiency
            is about 0.01. fanout: ``chord(group(inc.s(i)...), tsum.s()).apply()``;
            chain: ``chain(inc.s(0), inc.s(), ...).apply()``; dag: a chain of groups,
            one group of W tasks per layer: each task receives the whole previous
            layer's results and adds its two parents from that list, so every layer
            waits for all of the previous one (a barrier, an approximation of the DAG);
            sleep: a group of N sleeping tasks.
  dask      ``Client(processes=False, n_workers=1)``: scheduler and worker in this
            process, tasks on a thread pool (threads_per_worker = cores, 100 for
            sleep, which is how sleep's limit of 100 is enforced). Every node is a
            ``client.submit(..., pure=False)`` taking its parents' futures; fanout's
            sum is ``client.submit(sum, futures)``.
  prefect   a ``@flow`` whose ``@task``s are ``.submit()``-ed to the default
            ``ThreadPoolTaskRunner`` (unbounded: a thread per waiting task), futures
            passed as parameters giving the dependencies; sleep uses
            ``ThreadPoolTaskRunner(max_workers=100)``. Tasks have ``cache_policy=NONE``
            and ``persist_result=False``; logging at WARNING, analytics off, no
            server or cloud: only the ephemeral API on 127.0.0.1. Timed and not
            avoidable: each flow call creates its flow run and sets its states through
            synchronous calls to that server (which, on this same machine, is also busy
            recording the task runs' events), and the flow's heartbeat thread sleeps in
            1 s steps and is joined when the flow ends, so a flow call returns up to
            about 1 s late whatever N is (flows.heartbeat_frequency cannot be unset).
            A task whose parameter is a future not yet finished reads that task run
            from the server (parent inference); when the server's SQLite database is
            locked it answers 503 and the client backs off 2, 4, 8... s, so chain and
            dag times are bimodal (dag 400: 9-14 s, or 25-72 s after such back-offs).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

PEERS = ("taskflow", "celery", "dask", "prefect")
WORKLOADS = ("fanout", "chain", "dag", "sleep")
SLEEP = 0.01
LIMIT = 100
WARMUP = {"fanout": 4, "chain": 4, "dag": 4, "sleep": 4}

_out_fd: int | None = None  # the real stdout, kept for the one JSON line
_emitted = threading.Lock()  # held by whoever writes that line, never released
_cleanups: list[Callable[[], None]] = []  # run on SIGTERM: stop Prefect's server, remove its home


class CheckFailed(Exception):
    pass


def emit(payload: dict[str, Any]) -> None:
    if not _emitted.acquire(blocking=False):
        return  # the watchdog or the main thread already wrote the line
    line = (json.dumps(payload) + "\n").encode()
    fd = _out_fd if _out_fd is not None else 1
    os.write(fd, line)


def check(ok: bool, what: str) -> None:
    if not ok:
        raise CheckFailed(f"wrong result: {what}")


def expected_fanout(n: int) -> int:
    return sum(range(1, n + 1))


def dag_width(n: int) -> int:
    return max(1, math.isqrt(n))


def peak_rss_kib() -> int:
    """This process's own peak RSS (``ru_maxrss`` would carry over the parent's across exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --- TaskFlow -----------------------------------------------------------------------------


def taskflow_peer(workload: str) -> tuple[Callable[[int], int], Callable[[], None]]:
    import futurist
    from taskflow import engines, task
    from taskflow.patterns import graph_flow as gf
    from taskflow.patterns import linear_flow as lf
    from taskflow.patterns import unordered_flow as uf

    # The parallel engine's thread pool, made here rather than by each engine: an engine that
    # owns its pool shuts it down at the end of run(), and futurist's idle workers poll
    # their queue every second, so run() would return about 1 s late whatever N is.
    pool = futurist.ThreadPoolExecutor(max_workers=LIMIT if workload == "sleep" else None)

    class Inc(task.Task):
        def execute(self, x):
            return x + 1

    class Sum(task.Task):
        def execute(self, **values):
            return sum(values.values())

    class One(task.Task):
        def execute(self):
            return 1

    class Add(task.Task):
        def execute(self, a, b):
            return a + b

    class Nap(task.Task):
        def execute(self):
            time.sleep(SLEEP)
            return 1

    def fanout(n: int) -> int:
        names = [f"v{i}" for i in range(n)]
        incs = uf.Flow("incs").add(
            *(Inc(name=f"t{i}", inject={"x": i}, provides=names[i]) for i in range(n))
        )
        flow = lf.Flow("fanout").add(incs, Sum(name="sum", requires=names, provides="total"))
        engine = engines.load(flow, engine="parallel", executor=pool)
        engine.run()
        check(engine.storage.fetch("total") == expected_fanout(n), "fanout sum")
        return n + 1

    def chain(n: int) -> int:
        flow = lf.Flow("chain").add(
            *(Inc(name=f"t{i}", rebind={"x": f"v{i}"}, provides=f"v{i + 1}") for i in range(n))
        )
        engine = engines.load(flow, store={"v0": 0}, engine="serial")
        engine.run()
        check(engine.storage.fetch(f"v{n}") == n, "chain result")
        return n

    def dag(n: int) -> int:
        w = dag_width(n)
        flow = gf.Flow("dag")
        flow.add(*(One(name=f"n0_{i}", provides=f"v0_{i}") for i in range(w)))
        for k in range(1, w):
            flow.add(
                *(
                    Add(
                        name=f"n{k}_{i}",
                        rebind={"a": f"v{k - 1}_{i}", "b": f"v{k - 1}_{(i + 1) % w}"},
                        provides=f"v{k}_{i}",
                    )
                    for i in range(w)
                )
            )
        engine = engines.load(flow, engine="parallel", executor=pool)
        engine.run()
        last = [engine.storage.fetch(f"v{w - 1}_{i}") for i in range(w)]
        check(last == [2 ** (w - 1)] * w, "dag last layer")
        return w * w

    def sleep(n: int) -> int:
        flow = uf.Flow("sleep").add(*(Nap(name=f"t{i}", provides=f"v{i}") for i in range(n)))
        engine = engines.load(flow, engine="parallel", executor=pool)
        engine.run()
        check(engine.storage.fetch(f"v{n - 1}") == 1, "sleep result")
        return n

    def close() -> None:
        pool.shutdown(wait=False)

    return {"fanout": fanout, "chain": chain, "dag": dag, "sleep": sleep}[workload], close


# --- Celery -------------------------------------------------------------------------------


def celery_peer(workload: str) -> tuple[Callable[[int], int], Callable[[], None]]:
    from celery import Celery, chain, chord, group

    app = Celery("peer_worker", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    app.conf.worker_hijack_root_logger = False

    @app.task
    def inc(x):
        return x + 1

    @app.task
    def tsum(xs):
        return sum(xs)

    @app.task
    def one():
        return 1

    @app.task
    def add2(prev, i, w):
        return prev[i] + prev[(i + 1) % w]

    @app.task
    def nap(i):
        time.sleep(SLEEP)
        return i

    def fanout(n: int) -> int:
        total = chord(group(inc.s(i) for i in range(n)), tsum.s()).apply().get()
        check(total == expected_fanout(n), "fanout sum")
        return n + 1

    def chain_(n: int) -> int:
        result = chain(inc.s(0), *(inc.s() for _ in range(n - 1))).apply().get()
        check(result == n, "chain result")
        return n

    def dag(n: int) -> int:
        w = dag_width(n)
        layers = [group(one.s() for _ in range(w))]
        layers += [group(add2.s(i, w) for i in range(w)) for _ in range(1, w)]
        last = chain(*layers).apply().get()
        check(list(last) == [2 ** (w - 1)] * w, "dag last layer")
        return w * w

    def sleep(n: int) -> int:
        done = group(nap.s(i) for i in range(n)).apply().get()
        check(list(done) == list(range(n)), "sleep results")
        return n

    table = {"fanout": fanout, "chain": chain_, "dag": dag, "sleep": sleep}
    return table[workload], lambda: None


# --- Dask ---------------------------------------------------------------------------------


def dask_peer(workload: str) -> tuple[Callable[[int], int], Callable[[], None]]:
    import logging

    from dask.distributed import Client

    logging.getLogger("distributed").setLevel(logging.WARNING)
    threads = LIMIT if workload == "sleep" else (os.cpu_count() or 1)
    client = Client(
        processes=False, n_workers=1, threads_per_worker=threads, dashboard_address=None
    )

    def inc(x):
        return x + 1

    def one():
        return 1

    def add(a, b):
        return a + b

    def nap(i):
        time.sleep(SLEEP)
        return i

    def fanout(n: int) -> int:
        futures = [client.submit(inc, i, pure=False) for i in range(n)]
        total = client.submit(sum, futures, pure=False).result()
        check(total == expected_fanout(n), "fanout sum")
        return n + 1

    def chain(n: int) -> int:
        future = client.submit(inc, 0, pure=False)
        for _ in range(n - 1):
            future = client.submit(inc, future, pure=False)
        check(future.result() == n, "chain result")
        return n

    def dag(n: int) -> int:
        w = dag_width(n)
        layer = [client.submit(one, pure=False) for _ in range(w)]
        for _ in range(1, w):
            layer = [client.submit(add, layer[i], layer[(i + 1) % w], pure=False) for i in range(w)]
        check(client.gather(layer) == [2 ** (w - 1)] * w, "dag last layer")
        return w * w

    def sleep(n: int) -> int:
        futures = [client.submit(nap, i, pure=False) for i in range(n)]
        check(client.gather(futures) == list(range(n)), "sleep results")
        return n

    def close() -> None:
        client.close()

    return {"fanout": fanout, "chain": chain, "dag": dag, "sleep": sleep}[workload], close


# --- Prefect ------------------------------------------------------------------------------


def prefect_env() -> str:
    """Point Prefect at a throwaway home and its ephemeral local API; must precede its import."""
    home = tempfile.mkdtemp(prefix="peer-prefect-")
    for name in list(os.environ):
        if name.startswith("PREFECT_"):
            del os.environ[name]
    os.environ.update(
        {
            "PREFECT_HOME": home,
            "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
            "PREFECT_TASKS_DEFAULT_PERSIST_RESULT": "false",
            "PREFECT_TASKS_DEFAULT_NO_CACHE": "true",
            "DO_NOT_TRACK": "1",
        }
    )
    return home


def prefect_peer(workload: str) -> tuple[Callable[[int], int], Callable[[], None]]:
    home = prefect_env()
    from prefect import flow, task
    from prefect.cache_policies import NONE
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.task_runners import ThreadPoolTaskRunner

    server = SubprocessASGIServer()  # the instance get_client() will use: start it now
    # The server must not inherit this process's blocked SIGTERM (see watchdog()).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    try:
        server.start()
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    process = server.server_process
    _cleanups.append(lambda: process and process.kill())
    _cleanups.append(lambda: shutil.rmtree(home, ignore_errors=True))

    options: dict[str, Any] = {"cache_policy": NONE, "persist_result": False, "log_prints": False}

    @task(**options)
    def inc(x):
        return x + 1

    @task(**options)
    def tsum(xs):
        return sum(xs)

    @task(**options)
    def one():
        return 1

    @task(**options)
    def add(a, b):
        return a + b

    @task(**options)
    def nap(i):
        time.sleep(SLEEP)
        return i

    flow_options: dict[str, Any] = {
        "persist_result": False,
        "log_prints": False,
        "validate_parameters": False,
    }

    @flow(name="fanout", **flow_options)
    def fanout_flow(n: int) -> int:
        futures = [inc.submit(i) for i in range(n)]
        return tsum.submit(futures).result()

    @flow(name="chain", **flow_options)
    def chain_flow(n: int) -> int:
        future = inc.submit(0)
        for _ in range(n - 1):
            future = inc.submit(future)
        return future.result()

    @flow(name="dag", **flow_options)
    def dag_flow(w: int) -> list[int]:
        layer = [one.submit() for _ in range(w)]
        for _ in range(1, w):
            layer = [add.submit(layer[i], layer[(i + 1) % w]) for i in range(w)]
        return [f.result() for f in layer]

    @flow(name="sleep", task_runner=ThreadPoolTaskRunner(max_workers=LIMIT), **flow_options)
    def sleep_flow(n: int) -> list[int]:
        futures = [nap.submit(i) for i in range(n)]
        return [f.result() for f in futures]

    def fanout(n: int) -> int:
        check(fanout_flow(n) == expected_fanout(n), "fanout sum")
        return n + 1

    def chain(n: int) -> int:
        check(chain_flow(n) == n, "chain result")
        return n

    def dag(n: int) -> int:
        w = dag_width(n)
        check(dag_flow(w) == [2 ** (w - 1)] * w, "dag last layer")
        return w * w

    def sleep(n: int) -> int:
        check(sleep_flow(n) == list(range(n)), "sleep results")
        return n

    def close() -> None:
        start = time.perf_counter()
        try:  # let the task-run events reach the server before it goes
            from prefect.events.worker import EventsWorker

            EventsWorker.drain_all(timeout=120)
        except Exception as exc:
            print(f"prefect: draining events failed: {exc!r}", file=sys.stderr)
        drained = time.perf_counter() - start
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
        print(f"prefect: events drained in {drained:.2f}s (not timed)", file=sys.stderr)

    return {"fanout": fanout, "chain": chain, "dag": dag, "sleep": sleep}[workload], close


# --- main ---------------------------------------------------------------------------------


def watchdog() -> None:
    """Answer SIGTERM (``timeout``) with an error line and an exit, whatever the main thread does.

    SIGTERM is blocked in every thread (they inherit the main thread's mask) and taken here
    with sigwait: a Python handler would run only when the main thread gets to it, and
    Prefect swaps its own in during a flow run and then winds the run down through a
    server that ``timeout`` has already stopped, which can take many minutes.
    """
    signum = signal.sigwait({signal.SIGTERM})
    for cleanup in _cleanups:
        try:
            cleanup()
        except Exception:
            pass
    emit({"error": f"killed by signal {signum} (timeout?)"})
    os._exit(1)


def main() -> int:
    global _out_fd
    _out_fd = os.dup(1)
    os.dup2(2, 1)  # anything else written to stdout, by us, a peer or a child, lands on stderr
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # before any other thread starts
    threading.Thread(target=watchdog, name="sigterm-watchdog", daemon=True).start()

    if len(sys.argv) != 4 or sys.argv[1] not in PEERS or sys.argv[2] not in WORKLOADS:
        emit({"error": f"usage: peer_worker.py {'|'.join(PEERS)} {'|'.join(WORKLOADS)} N"})
        return 1
    peer, workload = sys.argv[1], sys.argv[2]
    try:
        n = int(sys.argv[3])
        if n < 1:
            raise ValueError
    except ValueError:
        emit({"error": f"N must be a positive integer, not {sys.argv[3]!r}"})
        return 1

    factory = {
        "taskflow": taskflow_peer,
        "celery": celery_peer,
        "dask": dask_peer,
        "prefect": prefect_peer,
    }[peer]
    close: Callable[[], None] = lambda: None  # noqa: E731
    try:
        setup_start = time.perf_counter()
        run, close = factory(workload)
        setup_done = time.perf_counter()
        run(WARMUP[workload])
        if peer == "prefect":
            time.sleep(1)  # let the API server record the warm-up's events before the clock starts
        start = time.perf_counter()
        print(
            f"{peer}: setup {setup_done - setup_start:.2f}s, warm-up {start - setup_done:.2f}s"
            " (not timed)",
            file=sys.stderr,
        )
        nodes = run(n)
        seconds = time.perf_counter() - start
        rss = peak_rss_kib()
    except CheckFailed as exc:
        emit({"error": str(exc)})
        return 1
    except BaseException as exc:  # a peer's failure, reported rather than raised
        emit({"error": f"{type(exc).__name__}: {exc}"[:300]})
        return 1
    finally:
        try:
            close()
        except Exception as exc:
            print(f"peer close failed: {exc!r}", file=sys.stderr)
    efficiency = (n / LIMIT * SLEEP) / seconds if workload == "sleep" else None
    emit({"seconds": seconds, "peak_rss_kib": rss, "nodes": nodes, "efficiency": efficiency})
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # Everything is cleaned up by now; skip interpreter shutdown, where a peer's leftover
    # threads (Prefect's event worker, a thread pool's workers) could keep the process alive.
    os._exit(code)
