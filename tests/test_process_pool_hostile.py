"""A hostile look at the process pool rewritten without ProcessPoolExecutor
(aflow/executors/_process.py: a thread per worker slot, a call queue, spawned workers
that watch their parent).

The first part holds findings: each test fails on the code it was written against (commit
8a9528d) and says what goes wrong. The second part holds attacks that held. Every task is
a module-level name in tests/pool_hostile_workflows.py, so workers can import it; other
processes are waited on by polling /proc or the files they write (never a bare sleep)."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import pathlib
import signal
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import pytest

import aflow
import aflow.executors
from aflow.errors import RunCancelled, WorkerLost
from aflow.executors import Process
from tests import pool_hostile_workflows as pw
from tests.anywhere_workflows import lines

ROOT = pathlib.Path(__file__).resolve().parent.parent


# --- helpers -----------------------------------------------------------------------------


def gone(pid: int) -> bool:
    """The process has ended (a zombie nobody reaped counts: it runs nothing)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def kill(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def until_gone(pids: Iterable[int], seconds: float) -> list[int]:
    """Wait up to ``seconds`` for ``pids`` to end; the ones still alive."""
    pids = list(pids)
    with anyio.move_on_after(seconds):
        while not all(gone(pid) for pid in pids):  # noqa: ASYNC110  (other processes)
            await anyio.sleep(0.05)
    return [pid for pid in pids if not gone(pid)]


def said(log: pathlib.Path) -> list[str]:
    return [what for what, _ in lines(log)]


async def wait_for_line(log: pathlib.Path, what: str, seconds: float = 20.0) -> int:
    """Until a body has written ``what``; the pid of the process that wrote it."""
    with anyio.fail_after(seconds):
        while True:
            for line, pid in lines(log):
                if line == what:
                    return pid
            await anyio.sleep(0.01)


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("aflow process")]


def ours() -> set[threading.Thread]:
    """This process's threads, but anyio's idle worker threads (kept a while)."""
    return {t for t in threading.enumerate() if not t.name.startswith("AnyIO worker")}


def live_workers() -> list[int]:
    return [
        p.pid
        for p in multiprocessing.active_children()
        if p.name == "aflow worker" and p.pid is not None
    ]


@pytest.fixture
def log(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "log"


@pytest.fixture
async def pool1() -> AsyncIterator[Process]:
    pool = Process(max_workers=1)
    with anyio.fail_after(30):  # (a spawn takes a while: started here, not in the test)
        await aflow.run(pw.pid.s(), executor=pool)
    yield pool
    await anyio.to_thread.run_sync(pool.shutdown)


async def script(tmp_path: pathlib.Path, text: str, *args: str) -> anyio.abc.Process:
    """A Python script of the test's own, started in a process of its own (its output in
    ``out`` and ``err`` files of tmp_path)."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(text))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with (tmp_path / "out").open("wb") as out, (tmp_path / "err").open("wb") as err:
        return await anyio.open_process(
            [sys.executable, str(path), *args], cwd=ROOT, env=env, stdout=out, stderr=err
        )


# =========================================================================================
# Findings: each of these fails on the code it was written against (commit 8a9528d).
# =========================================================================================


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "sigint"])
async def test_a_worker_that_died_while_idle_does_not_fail_the_next_call(
    pool1: Process, how: signal.Signals
) -> None:
    """README: a worker that dies "fails its own call alone ... and is replaced". A
    worker that dies while it runs nothing (the OOM killer; a Ctrl-C, or a Jupyter
    interrupt, which signals the whole process group: an idle worker dies of its
    KeyboardInterrupt in ``recv_bytes``) fails the *next* call handed to its slot:
    ``_serve`` only notices the death when ``send_bytes`` meets a broken pipe, and fails
    the call it was sending with WorkerLost, though that call never started anywhere. A
    task without retries fails its run for nothing; one with retries loses an attempt."""
    worker = await aflow.run(pw.pid.s(), executor=pool1)
    os.kill(worker, how)
    assert not await until_gone([worker], 10)
    with anyio.fail_after(30):
        assert await aflow.run(pw.pid.s(), executor=pool1) != worker


async def test_a_dead_worker_is_noticed_while_a_process_it_forked_lives_on(
    pool1: Process, log: pathlib.Path
) -> None:
    """A body starts a helper by fork (multiprocessing's default context on Linux, and
    what a ``multiprocessing.Pool`` in a body does), then its worker is SIGKILLed. The
    helper inherited the worker's end of the call's pipe, so the pool's thread, blocked
    in ``recv_bytes``, sees no EOF until the helper ends: the attempt hangs as long as
    the helper lives (forever for a Pool's workers, which wait on their own queue). The
    thread should watch the worker process itself (waitpid / its sentinel...), not only
    the pipe."""
    try:
        with anyio.fail_after(5):
            with pytest.raises(WorkerLost):
                await aflow.run(pw.forks_then_dies.s(str(log), 20.0), executor=pool1)
    finally:
        kill(int(w.split()[1]) for w in said(log) if w.startswith("helper "))


FORKS_THEN_DIES = """
    import asyncio, multiprocessing, pathlib, sys, time
    import aflow, aflow.executors
    from tests import pool_hostile_workflows as pw
    from tests.anywhere_workflows import lines

    def helper(go):
        while not pathlib.Path(go).exists():
            time.sleep(0.05)  # a helper process waiting on a file (noqa: hook)

    async def main(log, go, out):
        pool = aflow.executors.Process(max_workers=1)
        run = asyncio.ensure_future(aflow.run(pw.until.s(log, "body", go, 30.0), executor=pool))
        while "start body" not in [w for w, _ in lines(pathlib.Path(log))]:
            await asyncio.sleep(0.01)
        # a fork of the caller, made while its worker runs (any multiprocessing.Process
        # or Pool of the default context on Linux, a ProcessPoolExecutor of the caller's)
        child = multiprocessing.get_context("fork").Process(target=helper, args=(go,))
        child.start()
        pathlib.Path(out).write_text(str(child.pid))
        await run

    if __name__ == "__main__":
        asyncio.run(main(*sys.argv[1:]))
    """


async def test_a_caller_killed_after_it_forked_still_takes_its_worker_along(
    tmp_path: pathlib.Path, log: pathlib.Path
) -> None:
    """README: "A caller killed mid-step takes its running bodies along: a process worker
    watches the process that started it and ends with it". The worker watches the
    *pipe* multiprocessing's spawn leaves (its sentinel is EOF on a pipe whose write end
    only the caller holds): a fork the caller makes later (multiprocessing's default
    context on Linux, a ProcessPoolExecutor, os.fork) inherits that write end, so once
    the caller is SIGKILLed the worker sees nothing and runs its body on for nobody, as
    long as the fork lives."""
    go, out = tmp_path / "go", tmp_path / "helper"
    worker = helper = None
    async with await script(tmp_path, FORKS_THEN_DIES, str(log), str(go), str(out)) as caller:
        try:
            worker = await wait_for_line(log, "start body")
            with anyio.fail_after(20):
                while not out.exists():  # noqa: ASYNC110  (another process writes it)
                    await anyio.sleep(0.01)
            helper = int(out.read_text())
            caller.kill()
            await caller.wait()
            assert not await until_gone([worker], 5), (
                f"worker {worker} still runs its body, its caller dead 5 s"
            )
        finally:
            go.write_text("")  # (the helper, and a worker left behind, end)
            kill(p for p in (worker, helper) if p is not None)


async def test_a_pool_dropped_without_shutdown_stops_its_workers() -> None:
    """A ``Process`` used and dropped without ``shutdown()`` (a pool made per request or
    per test, say) keeps a thread per slot and its worker processes for the life of the
    process: ``_workers`` registers ``self._pool.shutdown`` with atexit, a strong
    reference, so the pool is never collected. The ProcessPoolExecutor it replaced
    stopped its workers once collected (this test passes on the commit before
    d0dc6a7)."""
    threads = set(pool_threads())
    pool = Process(max_workers=1)
    worker = await aflow.run(pw.pid.s(), executor=pool)
    inner = weakref.ref(pool._pool) if pool._pool is not None else None
    del pool
    gc.collect()
    try:
        left = await until_gone([worker], 5)
        assert not left, f"worker {worker} of a dropped pool still runs"
        with anyio.fail_after(5):  # (its thread ends just after its worker)
            while not set(pool_threads()) <= threads:  # noqa: ASYNC110  (a thread ending)
                await anyio.sleep(0.02)
    finally:
        leaked = inner() if inner is not None else None
        if leaked is not None:
            await anyio.to_thread.run_sync(leaked.shutdown, True)


@pytest.mark.parametrize("body", ["nested", "keeps_a_process_pool"])
async def test_shutdown_does_not_hang_on_a_body_with_a_process_pool_of_its_own(
    body: str,
) -> None:
    """A body that uses a process pool itself (a nested ``executor="process"`` run, or a
    ProcessPoolExecutor a library keeps at module level) leaves its worker unable to
    stop: ``_worker_main`` returns into multiprocessing's ``_bootstrap``, whose
    ``_exit_function`` joins the worker's non-daemon children before anything could stop
    them (atexit handlers never run in a multiprocessing child; the inner pool's workers
    wait for calls forever). ``shutdown()`` joins the thread, which joins the worker:
    it hangs forever, and so does the caller's exit (the atexit shutdown)."""
    pool = Process(max_workers=1)
    worker = await aflow.run(pw.pid.s(), executor=pool)
    assert await aflow.run(getattr(pw, body).s(-3), executor=pool) in (3, -3)
    stopping = threading.Thread(target=pool.shutdown, daemon=True)
    stopping.start()
    try:
        with anyio.move_on_after(8):
            while stopping.is_alive():  # noqa: ASYNC110  (a thread of the pool's)
                await anyio.sleep(0.05)
        assert not stopping.is_alive(), "Process.shutdown() still waits after 8 s"
    finally:
        kill(children_of(worker))  # (the inner workers: the worker can then end)
        await anyio.to_thread.run_sync(stopping.join, 20)


class _ShutdownBeforePut:
    """Stands for a pool's call queue (the same queue underneath): before the first call
    is put in, a ``Process.shutdown()`` in another thread runs to its end. That is the
    interleaving of ``_Pool.submit``'s check of ``_closed`` and its ``put`` with a
    shutdown from another thread (``aflow.run_sync`` from threads, or a loop, while
    ``aflow.executors.shutdown()`` runs)."""

    def __init__(self, pool: Process, calls: Any) -> None:
        self.pool, self.calls, self.fired = pool, calls, False

    def put(self, item: Any) -> None:
        if item is not None and not self.fired:
            self.fired = True
            other = threading.Thread(target=self.pool.shutdown)
            other.start()
            # (it runs to its end here, unless a lock shared with submit holds it back
            # until the call is in: then it cancels the call)
            other.join(0.5)
        self.calls.put(item)

    def get(self) -> Any:
        return self.calls.get()

    def get_nowait(self) -> Any:
        return self.calls.get_nowait()


async def test_a_call_submitted_as_its_pool_shuts_down_does_not_wait_forever() -> None:
    """``_Pool.submit`` checks ``_closed`` and then puts the call on the queue; a
    shutdown between the two (it sets ``_closed``, drains the queue, puts a None per
    thread and the threads end) leaves the call in a queue no thread serves: its future
    never ends, and the run hangs (it should get WorkerLost, "its pool was shut down",
    or run on a new pool). The check and the put need one lock with the shutdown."""
    pool = Process(max_workers=1)
    inner = pool._workers()
    inner._calls = _ShutdownBeforePut(pool, inner._calls)  # type: ignore[assignment]
    try:
        with anyio.fail_after(5):
            try:
                assert await aflow.run(pw.echo.s(1), executor=pool) == 1
            except WorkerLost:
                pass
    finally:
        await anyio.to_thread.run_sync(pool.shutdown)


FORKED_USER = """
    import asyncio, multiprocessing
    import aflow
    from tests import pool_hostile_workflows as pw

    def child(answers):
        try:
            run = aflow.run(pw.echo.s(7), executor="process")
            answers.put(("ok", asyncio.run(asyncio.wait_for(run, 6))))
        except BaseException as exc:
            answers.put(("error", repr(exc)))

    if __name__ == "__main__":
        assert asyncio.run(aflow.run(pw.echo.s(1), executor="process")) == 1
        context = multiprocessing.get_context("fork")
        answers = context.Queue()
        forked = context.Process(target=child, args=(answers,))
        forked.start()
        print(answers.get(timeout=30), flush=True)
        forked.join()
    """


async def test_a_fork_of_a_caller_that_used_the_pool_can_run_on_it(
    tmp_path: pathlib.Path,
) -> None:
    """A caller that used ``executor="process"`` and then forks (a pre-forking server:
    gunicorn --preload, a Celery prefork worker, a multiprocessing.Process of the default
    context): in the fork, the inherited ``_Pool`` has none of its threads, so a call
    is queued for nobody and the run waits forever (here: until the child's 6 s
    wait_for). The pool should notice the fork (os.register_at_fork) and start anew."""
    async with await script(tmp_path, FORKED_USER) as caller:
        with anyio.fail_after(40):
            await caller.wait()
    out = (tmp_path / "out").read_text().strip()
    assert out == "('ok', 7)", f"{out}\n{(tmp_path / 'err').read_text()[-3000:]}"


async def test_a_shutdown_that_waits_after_one_that_did_not_waits_for_the_bodies(
    tmp_path: pathlib.Path, log: pathlib.Path
) -> None:
    """(Minor.) ``shutdown(wait=False)`` then ``shutdown()``: the second returns at once
    while the first pool's body still runs (``Process.shutdown`` forgot that pool), so a
    teardown that waits leaves a worker running behind it, unlike a ThreadPoolExecutor,
    whose second shutdown joins the threads the first one left."""
    pool = Process(max_workers=1)
    go = tmp_path / "go"
    try:
        async with anyio.create_task_group() as tg:

            async def body() -> None:
                assert await aflow.run(pw.until.s(str(log), "a", str(go)), executor=pool) > 0

            tg.start_soon(body)
            worker = await wait_for_line(log, "start a")
            pool.shutdown(wait=False)

            async def release() -> None:
                await anyio.sleep(1.0)
                go.write_text("")

            tg.start_soon(release)
            with anyio.fail_after(20):
                await anyio.to_thread.run_sync(pool.shutdown)
            assert "end a" in said(log), "shutdown() returned while a body still ran"
            assert gone(worker)
    finally:
        go.write_text("")
        await anyio.to_thread.run_sync(pool.shutdown)


# =========================================================================================
# Attacks that held.
# =========================================================================================


EXITS = """
    import asyncio, pathlib, sys, threading
    import aflow, aflow.executors
    from tests import pool_hostile_workflows as pw
    from tests.anywhere_workflows import lines

    def main(how, pool, body, log, go):
        pool = aflow.executors.Process(max_workers=2) if pool == "own" else "process"
        def flow():
            if body == "until":
                return aflow.group(pw.until.s(log, n, go) for n in "abc")
            return aflow.group(pw.checks_in.s(log, n) for n in "abc")

        async def two_started():
            while sum(w.startswith("start") for w, _ in lines(pathlib.Path(log))) < 2:
                await asyncio.sleep(0.01)

        if how == "thread":  # a run left in flight in a daemon thread's loop
            threading.Thread(
                target=lambda: aflow.run_sync(flow(), executor=pool), daemon=True
            ).start()
            asyncio.run(two_started())
        else:  # the main loop's run cancelled as asyncio.run ends

            async def cancelled():
                run = asyncio.ensure_future(aflow.run(flow(), executor=pool))
                await two_started()
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)

            asyncio.run(cancelled())
        print("exiting", flush=True)

    if __name__ == "__main__":
        main(*sys.argv[1:])
    """


@pytest.mark.parametrize(
    ("how", "which", "body"),
    [
        ("thread", "own", "until"),
        ("thread", "default", "until"),
        ("cancel", "default", "until"),
        ("cancel", "own", "checks_in"),
    ],
)
async def test_interpreter_exit_with_bodies_running_and_queued_leaves_no_worker(
    tmp_path: pathlib.Path, log: pathlib.Path, how: str, which: str, body: str
) -> None:
    """A script ends with two bodies running in a 2-worker pool and a third queued (in a
    daemon thread's run, or in a run cancelled as asyncio.run ends). The queued body
    never starts; the exit waits for bodies that do not check in (until they end) and
    not for ones that do (told); no worker process is left behind."""
    go = tmp_path / "go"
    async with await script(tmp_path, EXITS, how, which, body, str(log), str(go)) as caller:
        with anyio.fail_after(30):
            while "exiting" not in (tmp_path / "out").read_text():  # noqa: ASYNC110
                await anyio.sleep(0.02)
        workers = {pid for _, pid in lines(log)}
        if body == "until":
            with anyio.move_on_after(0.5):
                await caller.wait()
            assert caller.returncode is None, "the exit did not wait for running bodies"
            go.write_text("")
        with anyio.fail_after(15):
            await caller.wait()
    assert caller.returncode == 0, (tmp_path / "err").read_text()[-3000:]
    assert not await until_gone(workers, 5)
    started = sorted(w for w in said(log) if w.startswith("start"))
    assert started == ["start a", "start b"], said(log)
    if body == "checks_in":
        assert sorted(w for w in said(log) if w.startswith("stopped")) == [
            "stopped a",
            "stopped b",
        ]


KILLED = """
    import asyncio, pathlib, sys
    import aflow, aflow.executors
    from tests import pool_hostile_workflows as pw
    from tests.anywhere_workflows import lines

    async def main(log, go, out):
        pool = aflow.executors.Process(max_workers=3)
        async with aflow.Runtime(executor=pool) as rt:
            idle = await rt.submit(pw.until.s(log, "idle", go + ".idle"))
            busy = await rt.submit(pw.until.s(log, "busy", go))
            spinning = await rt.submit(pw.spins.s(log, 60.0))
            while not {"start idle", "start busy", "spinning"} <= {
                w for w, _ in lines(pathlib.Path(log))
            }:
                await asyncio.sleep(0.01)
            pathlib.Path(go + ".idle").write_text("")
            await idle.result()
            pathlib.Path(out).write_text("ready")
            await busy.result()

    if __name__ == "__main__":
        asyncio.run(main(*sys.argv[1:]))
    """


async def test_a_sigkilled_caller_takes_idle_busy_and_spinning_workers_along(
    tmp_path: pathlib.Path, log: pathlib.Path
) -> None:
    go, out = tmp_path / "go", tmp_path / "ready"
    workers: set[int] = set()
    async with await script(tmp_path, KILLED, str(log), str(go), str(out)) as caller:
        try:
            with anyio.fail_after(30):
                while not out.exists():  # noqa: ASYNC110  (another process writes it)
                    await anyio.sleep(0.02)
            workers = {pid for _, pid in lines(log)}
            assert len(workers) == 3
            assert not [pid for pid in workers if gone(pid)]
            caller.kill()
            await caller.wait()
            assert not await until_gone(workers, 5)
        finally:
            go.write_text("")
            kill(workers)


async def test_shutdown_without_waiting_lets_new_calls_start_at_once(
    tmp_path: pathlib.Path, log: pathlib.Path
) -> None:
    """``shutdown(wait=False)`` with a body running: it returns at once, the next call
    starts a new worker, the running call still gets its answer, and the old worker and
    its thread end once their body has."""
    pool = Process(max_workers=1)
    go = tmp_path / "go"
    try:
        async with anyio.create_task_group() as tg:
            got: list[int] = []

            async def body() -> None:
                got.append(await aflow.run(pw.until.s(str(log), "a", str(go)), executor=pool))

            tg.start_soon(body)
            old = await wait_for_line(log, "start a")
            old_threads = pool_threads()
            began = time.monotonic()
            pool.shutdown(wait=False)
            assert time.monotonic() - began < 1, "shutdown(wait=False) waited"
            with anyio.fail_after(30):
                new = await aflow.run(pw.pid.s(), executor=pool)
            assert new != old
            assert not gone(old)
            go.write_text("")
        assert got == [old]
        assert not await until_gone([old], 10)
        with anyio.fail_after(10):
            while any(t.is_alive() for t in old_threads):  # noqa: ASYNC110
                await anyio.sleep(0.02)
    finally:
        go.write_text("")
        await anyio.to_thread.run_sync(pool.shutdown)
    assert not pool_threads()


def test_runs_from_several_threads_racing_shutdowns_of_the_default_pool() -> None:
    """``aflow.run_sync`` from four threads (four event loops) on ``executor="process"``,
    call after call, while the main thread shuts the default pool down eight times:
    every call ends (its value, or WorkerLost), none waits forever, and the last
    shutdown leaves no thread and no worker process."""
    aflow.executors.shutdown()
    outcomes: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def caller(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                value = aflow.run_sync(pw.echo.s(n * 1000 + i), executor="process", timeout=30)
                assert value == n * 1000 + i
                outcomes.append("ok")
            except WorkerLost:
                outcomes.append("lost")
            except BaseException as exc:  # (reported below)
                errors.append(exc)
                return

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(8):
            stop.wait(0.1)
            aflow.executors.shutdown()
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    aflow.executors.shutdown()
    assert not [t for t in threads if t.is_alive()], "a call still waits"
    assert not errors, errors
    assert outcomes.count("ok") > 8, outcomes
    assert not pool_threads()
    assert not live_workers()


async def test_a_worker_that_exits_cleanly_is_a_lost_worker_and_is_replaced(
    pool1: Process, log: pathlib.Path
) -> None:
    """``os._exit(0)`` in a body: WorkerLost (not a None result), the worker is gone, the
    next call runs on a new one; ``sys.exit`` in an async body comes back as SystemExit
    and the worker (and its kept event loop) live on."""
    before = await aflow.run(pw.pid.s(), executor=pool1)
    with anyio.fail_after(20):
        with pytest.raises(WorkerLost, match="exit code 0"):
            await aflow.run(pw.exits_zero.s(str(log)), executor=pool1)
    assert gone(before)
    after = await aflow.run(pw.async_pid.s(), executor=pool1)
    assert after != before
    with pytest.raises(SystemExit):
        await aflow.run(pw.async_exits.s(4), executor=pool1)
    assert await aflow.run(pw.async_pid.s(), executor=pool1) == after


async def test_a_worker_killed_while_a_big_call_is_sent_to_it_fails_that_call_alone(
    pool1: Process,
) -> None:
    """The worker stops reading (SIGSTOP) so the send of a 64 MB argument blocks, then
    dies mid-send: the call ends (WorkerLost today; run on a new worker would do too: it
    never started), it does not hang, and the slot serves the next call on a new one."""
    worker = await aflow.run(pw.pid.s(), executor=pool1)
    os.kill(worker, signal.SIGSTOP)
    try:
        async with anyio.create_task_group() as tg:
            outcome: list[Any] = []

            async def call() -> None:
                try:
                    outcome.append(await aflow.run(pw.size_of.s(b"z" * 2**26), executor=pool1))
                except WorkerLost as exc:
                    outcome.append(exc)

            tg.start_soon(call)
            await anyio.sleep(0.5)  # (the send is under way, stuck: nothing to poll)
            assert not outcome
            os.kill(worker, signal.SIGKILL)
            with anyio.fail_after(10):
                while not outcome:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
        assert isinstance(outcome[0], WorkerLost) or outcome[0] == 2**26, outcome
    finally:
        kill([worker])
    with anyio.fail_after(30):
        assert await aflow.run(pw.pid.s(), executor=pool1) != worker


async def test_huge_answers_and_arguments_cross(pool1: Process) -> None:
    n = 200 * 2**20
    with anyio.fail_after(30):
        answer = await aflow.run(pw.big.s(n), executor=pool1)
        assert len(answer) == n
        assert answer[:1] == b"y"
        assert await aflow.run(pw.size_of.s(answer), executor=pool1) == n


async def test_many_pools_shut_down_leave_no_thread_process_or_fd() -> None:
    """Pools made, used and shut down one after another leave nothing: no thread, no
    worker process, no file descriptor more than before (the first spawn's resource
    tracker is started before counting)."""
    warmup = Process(max_workers=1)
    await aflow.run(pw.pid.s(), executor=warmup)
    await anyio.to_thread.run_sync(warmup.shutdown)
    gc.collect()
    threads = ours()
    fds = len(os.listdir("/proc/self/fd"))
    workers: set[int] = set()
    for _ in range(6):
        pool = Process(max_workers=2)
        group = aflow.group(pw.until.s(os.devnull, str(i), os.devnull, 0.2) for i in range(2))
        pids: Any = await aflow.run(group, executor=pool)
        workers.update(pids)
        await anyio.to_thread.run_sync(pool.shutdown)
    gc.collect()
    assert len(workers) == 12
    assert not [pid for pid in workers if not gone(pid)]
    assert ours() == threads, threading.enumerate()
    # (process-wide: another thread of the session, a Dask client's, may hold one or two
    # for a moment; a pool that leaked would leave at least one each: 6 or more)
    assert len(os.listdir("/proc/self/fd")) <= fds + 2
    assert not pool_threads()


@pytest.mark.parametrize("kind", ["spawn", "fork", "forkserver"])
async def test_a_body_runs_multiprocessing_children_of_its_own(pool1: Process, kind: str) -> None:
    with anyio.fail_after(30):
        assert await aflow.run(pw.pool_inside.s(kind, 6), executor=pool1) == [
            0,
            1,
            4,
            9,
            16,
            25,
        ]
        assert await aflow.run(pw.child_inside.s(kind, 0.1), executor=pool1) == 0


async def test_a_cancel_storm_on_a_one_worker_pool(
    pool1: Process, tmp_path: pathlib.Path, log: pathlib.Path
) -> None:
    """30 runs queued behind a running body on a 1-worker pool, all cancelled: none of
    them ever starts, the running one still ends with its value, and the pool keeps
    nothing of them. Then 15 runs each cancelled at a different moment of their
    body's life (queued, starting, running): every body that started is told and
    stops, nothing is kept, no marker is left, and the pool serves the next call."""
    go = tmp_path / "go"
    async with aflow.Runtime(executor=pool1) as rt:
        first = await rt.submit(pw.until.s(str(log), "first", str(go)))
        await wait_for_line(log, "start first")
        queued = [await rt.submit(pw.until.s(str(log), f"q{i}", str(go))) for i in range(30)]
        for run in reversed(queued):
            await run.cancel()
        go.write_text("")
        with anyio.fail_after(20):
            assert await first.result() > 0
        for run in queued:
            with pytest.raises(RunCancelled):
                await run.result()
        assert said(log) == ["start first", "end first"]

        storm = tmp_path / "storm"
        for i in range(15):
            run = await rt.submit(pw.checks_in.s(str(storm), str(i)))
            await anyio.sleep(0.02 * (i % 5))
            await run.cancel()
            with pytest.raises(RunCancelled):
                await run.result()
    with anyio.fail_after(20):
        while True:
            told = said(storm)
            started = {w.split()[1] for w in told if w.startswith("start")}
            stopped = {w.split()[1] for w in told if w.startswith("stopped")}
            if started == stopped:
                break
            await anyio.sleep(0.02)
        assert await aflow.run(pw.pid.s(), executor=pool1) > 0
        while pool1._abandoned:  # noqa: ASYNC110  (emptied by the pool's threads)
            await anyio.sleep(0.02)
    assert "ran out" not in " ".join(said(storm))
    assert pool1._workers()._markers is not None
    assert not os.listdir(pool1._workers()._markers)


def test_one_pool_from_two_event_loops_at_once(tmp_path: pathlib.Path, log: pathlib.Path) -> None:
    """Loop A's body waits for a file that loop B's body writes, on one 2-worker pool;
    meanwhile loop B cancels a run of its own queued behind them: both loops get their
    answers, and the cancelled body never starts."""
    pool = Process(max_workers=2)
    go = tmp_path / "go"
    got: dict[str, Any] = {}
    errors: list[BaseException] = []

    def loop_a() -> None:
        try:
            got["a"] = aflow.run_sync(pw.until.s(str(log), "a", str(go), 20.0), executor=pool)
        except BaseException as exc:
            errors.append(exc)

    async def in_b() -> None:
        with anyio.fail_after(20):
            await wait_for_line(log, "start a")
            async with aflow.Runtime(executor=pool) as rt:
                blocker = await rt.submit(pw.until.s(str(log), "b", str(go) + ".b", 20.0))
                await wait_for_line(log, "start b")
                queued = await rt.submit(pw.until.s(str(log), "never", str(go)))
                await queued.cancel()
                pathlib.Path(str(go) + ".b").write_text("")  # noqa: ASYNC240
                got["blocker"] = await blocker.result()
                got["b"] = await aflow.run(pw.touch.s(str(go)), executor=pool)

    thread = threading.Thread(target=loop_a)
    thread.start()
    try:
        asyncio.run(in_b())
    finally:
        go.write_text("")
        thread.join(20)
        pool.shutdown()
    assert not errors, errors
    assert got["a"] > 0
    assert got["b"] > 0
    assert "start never" not in said(log)
    assert "end a" in said(log)


async def test_a_worker_sigkilled_mid_body_fails_its_call_and_the_queued_one_runs(
    pool1: Process, tmp_path: pathlib.Path, log: pathlib.Path
) -> None:
    async with aflow.Runtime(executor=pool1) as rt:
        victim = await rt.submit(pw.until.s(str(log), "victim", str(tmp_path / "never")))
        worker = await wait_for_line(log, "start victim")
        after = await rt.submit(pw.pid.s())
        os.kill(worker, signal.SIGKILL)
        with anyio.fail_after(20):
            with pytest.raises(WorkerLost):
                await victim.result()
            assert await after.result() != worker
