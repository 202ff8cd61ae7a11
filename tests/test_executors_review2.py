"""What a review of issue 21's executors (Dask, the shared worker side, check_cancelled,
ops elsewhere, OTel across processes) found wrong: each test fails on the code as
reviewed. Every task here is a module-level name, so a worker can import it."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import aflow
import aflow.executors
from aflow.errors import SerializationError, WorkerLost, WorkerMismatch
from aflow.executors import Call, Dask, Executor, Process
from tests import anywhere_workflows as aw
from tests.anywhere_workflows import lines, note
from tests.test_executors_anywhere import wait_for_line
from tests.test_otel import Telemetry, otel  # noqa: F401  (the fixture)

# --- bodies --------------------------------------------------------------------------


@aflow.task
def holds(log: str) -> str:
    """No retries: holds, checking in, until its attempt is given up on."""
    aw.hold_until_cancelled(log)
    return "late"


@aflow.task
def takes(value: Any) -> str:
    return "got it"


#: tasks a body left running in its worker's event loop (kept from being collected)
_LEFT: list[asyncio.Task[bool]] = []


@aflow.task
async def leaves_a_task_behind() -> None:
    _LEFT.append(asyncio.get_running_loop().create_task(asyncio.Event().wait()))


@aflow.task
async def other_tasks_in_my_loop() -> int:
    return len(asyncio.all_tasks()) - 1


@aflow.task(timeout=1.0, retries=1)
def deaf_then_again(log: str) -> bool:
    """Attempt 1 does not check in: it runs 0.4 s past its timeout; attempt 2 says
    whether attempt 1's body had ended before it began (its wait for it counts against
    its own timeout, as the process executor's does)."""
    attempt = aflow.current_step().attempt
    note(log, f"start {attempt}")
    if attempt == 1:
        time.sleep(1.4)  # a body's own blocking work, where it runs (noqa: hook)
        note(log, "end 1")
        return False
    return "end 1" in [what for what, _ in lines(pathlib.Path(log))]


@aflow.task
def deaf_until_go_then_checks_in(log: str, go: str) -> str:
    """Says "started", waits (not checking in) for the file ``go``, then checks in for
    up to 3 s: "stopped" if told its attempt was given up on, else "ran out"."""
    note(log, "started")
    while not pathlib.Path(go).exists():
        time.sleep(0.01)  # a body's own blocking work, where it runs (noqa: hook)
    aw.hold_until_cancelled(log, 3.0)
    return "late"


# --- helpers -------------------------------------------------------------------------


@pytest.fixture
def log(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "log"


@pytest.fixture
def dask(dask_address: str) -> Iterator[Dask]:
    executor = Dask(dask_address)
    yield executor
    executor.close()


@pytest.fixture
def alien(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A value that pickles here (its class is in a module only this process has) and
    that a worker cannot unpickle: what a class defined in a script's ``__main__`` is
    to a Dask worker, or a type of a newer aflow to a worker running an older one."""
    module = types.ModuleType("aflow_review_only_here")

    class Alien:
        pass

    Alien.__module__ = module.__name__
    Alien.__qualname__ = Alien.__name__ = "Alien"
    module.Alien = Alien  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return Alien()


def in_process_cluster(port: int = 0, threads: int = 1) -> Any:
    """A LocalCluster of one worker (``threads`` threads) in this process, on 127.0.0.1
    (``port``: its scheduler's), with no dashboard. Made under a config that fails a
    task at its first lost worker (aflow's retries alone)."""
    from distributed import LocalCluster

    return LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=1,
        threads_per_worker=threads,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        scheduler_port=port,
        scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.ERROR,
    )


# --- 1. Dask's own cancellation is not a WorkerLost ----------------------------------


async def test_a_task_dask_cancels_is_a_lost_worker(dask: Dask, log: pathlib.Path) -> None:
    """distributed's FutureCancelledError (what a scheduler lost mid-run, a
    ``client.cancel``, or the executor's own ``close()`` mid-run give) is a
    concurrent.futures.CancelledError, an Exception: ``_submit``'s ``except
    asyncio.CancelledError`` ("Dask cancelled it, not our caller") never sees it, so the
    run fails with Dask's raw error instead of the documented WorkerLost."""
    from distributed import Future

    async with anyio.create_task_group() as tg:
        failed: list[BaseException] = []

        async def run() -> None:
            try:
                await aflow.run(holds.s(str(log)), executor=dask)
            except Exception as exc:
                failed.append(exc)

        tg.start_soon(run)
        await wait_for_line(log, "holding")
        client = dask.client

        def cancel_ours() -> None:
            client.cancel([Future(key, client) for key in list(client.futures)])

        await anyio.to_thread.run_sync(cancel_ours)
    await wait_for_line(log, "stopped CancelledError")  # (the body was told: no leftover)
    [error] = failed
    assert isinstance(error, WorkerLost), f"{type(error).__module__}.{type(error).__name__}"


# --- 2. a scheduler that comes back is never used again ------------------------------


def test_the_executor_reconnects_to_a_scheduler_that_came_back() -> None:
    """Once its scheduler has been away longer than the connect timeout, the client the
    executor opened closes itself; ``_connected`` keeps handing out that closed client
    (its check is done and fine), so every later call fails with ClosedClientError,
    forever, even with the scheduler back at the same address."""
    import dask as dask_config
    import distributed  # noqa: F401  (its defaults in dask's config before a set)

    with dask_config.config.set(
        {
            "distributed.comm.timeouts.connect": "1s",
            "distributed.scheduler.allowed-failures": 0,
        }
    ):
        first = in_process_cluster()
        address = first.scheduler_address
        port = int(address.rsplit(":", 1)[1])
        executor = Dask(address)
        try:
            assert aflow.run_sync(aw.echo.s(1), executor=executor) == 1
            client = executor.client
            first.close()
            deadline = time.monotonic() + 20
            while client.status != "closed":  # (it gives up after the 1 s connect timeout)
                assert time.monotonic() < deadline, client.status
                time.sleep(0.05)  # a client's status: no event to wait on (noqa: hook)
            second = in_process_cluster(port=port)
            try:
                assert second.scheduler_address == address
                assert aflow.run_sync(aw.echo.s(2), executor=executor) == 2
            finally:
                second.close()
        finally:
            executor.close()


# --- 3. what a worker cannot unpickle -------------------------------------------------


async def test_an_argument_a_worker_cannot_unpickle_is_a_typed_error_naming_the_task(
    alien: Any,
) -> None:
    """``run_blob`` unpickles the call outside its try: an argument that pickles here but
    not there (a class from the caller's ``__main__`` on a Dask worker, the commonest
    Dask mistake) fails the attempt with the worker's raw ModuleNotFoundError (or
    AttributeError), retried as any failure, with no word of which argument or that it
    is what crossed that failed (what ``pickled()`` promises for the caller's side)."""
    with pytest.raises(SerializationError, match=r"'takes'.*argument 0"):
        await aflow.run(takes.s(alien), executor="process")


async def test_a_worker_of_another_aflow_is_told_before_it_unpickles_the_call(
    alien: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-call version check compares versions only after the whole call (target,
    arguments, Call) has been unpickled, so exactly the calls another aflow cannot read
    (a type it lacks; a Call with a field it does not have: this change added one) fail
    with an unpickling error instead of WorkerMismatch."""
    from aflow.executors import _remote

    monkeypatch.setattr(_remote, "CALLER", (_remote.CALLER[0], "0.0.0-other"))
    with pytest.raises(WorkerMismatch, match=r"caller runs Python .*, aflow 0\.0\.0-other"):
        await aflow.run(takes.s(alien), executor="process")


# --- 4. the worker thread's event loop, kept from call to call -------------------------


async def test_a_task_an_async_body_leaves_behind_does_not_outlive_its_call() -> None:
    """asyncio.run (before) cancelled what a body left running as it returned; the
    asyncio.Runner kept per worker thread does not, so a task one body (one attempt,
    one run) left behind goes on running inside every later body of that worker."""
    pool = Process(max_workers=1)
    try:
        await aflow.run(leaves_a_task_behind.s(), executor=pool)
        assert await aflow.run(other_tasks_in_my_loop.s(), executor=pool) == 0
    finally:
        await anyio.to_thread.run_sync(pool.shutdown)


# --- 5. on Dask, a step's next attempt does not wait for its abandoned body -----------


def test_on_dask_a_retry_waits_for_the_body_its_timeout_abandoned(log: pathlib.Path) -> None:
    """README: "A body cannot be interrupted in another process: it runs to its end
    there, and the step's next attempt, or its revert, waits for it first" (only the
    revert is excepted for Dask). On Dask the timed-out attempt's future is released and
    the retry submitted at once: two attempts of one step run side by side (here on a
    worker of 2 threads, as Dask's defaults make them)."""
    import dask as dask_config
    import distributed  # noqa: F401  (its defaults in dask's config before a set)

    with dask_config.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = in_process_cluster(threads=2)
    executor = Dask(cluster=cluster)
    try:
        assert aflow.run_sync(deaf_then_again.s(str(log)), executor=executor) is True
    finally:
        executor.close()
        cluster.close()


# --- 6. Dask(cluster=) keeps only the cluster's address -------------------------------


class _Refused(Exception):
    pass


def test_a_cluster_is_connected_to_with_its_security(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Dask(cluster=)`` keeps ``cluster.scheduler_address`` alone and opens
    ``Client(address)``: the cluster's ``security`` (TLS: dask-jobqueue's and
    dask-gateway's clusters, ``LocalCluster(security=True)``) is dropped, so a secured
    cluster cannot be reached. ``Client(cluster)`` takes both."""
    import distributed
    from distributed.security import Security

    security = Security(require_encryption=True)  # type: ignore[no-untyped-call]

    class SecuredCluster:
        scheduler_address = "tls://127.0.0.1:9"

        def __init__(self) -> None:
            self.security = security

    cluster = SecuredCluster()
    opened: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def client(*args: Any, **kwargs: Any) -> Any:
        opened.append((args, kwargs))
        raise _Refused("(not connecting anywhere in this test)")

    monkeypatch.setattr(distributed, "Client", client)
    with pytest.raises(WorkerLost):
        aflow.run_sync(aw.echo.s(1), executor=Dask(cluster=cluster))
    [(args, kwargs)] = opened
    assert (args[:1] == (cluster,)) or kwargs.get("security") is security, (args, kwargs)


# --- 7. an op run elsewhere loses its trace ---------------------------------------------


class _Recorder(Executor):
    """Runs the call right here (in a thread), keeping the Call it was given."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def call(
        self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], step: Call
    ) -> Any:
        self.calls.append(step)
        fn = getattr(target, "fn", target)
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def test_an_op_run_by_an_executor_continues_its_attempts_trace(
    otel: Telemetry,  # noqa: F811
) -> None:
    """README/CHANGELOG: "a body run by an executor continues its attempt's trace in the
    worker". A task's Call carries the trace context (``_bodies.remote_call``); an op's,
    made by ``remote_call_of`` for ``Step(executor=)``, carries none."""
    from aflow.ops import PythonOPTemplate, Step, Workflow
    from tests import ops_elsewhere as oe
    from tests.ops_helpers import run_wf

    recorder = _Recorder()
    assert await aflow.run(aw.echo.s(1), executor=recorder) == 1
    [task_call] = recorder.calls
    assert task_call.trace is not None
    assert "traceparent" in task_call.trace  # (a task's goes along)
    wf = Workflow("traced-op")
    wf.add(Step("w", PythonOPTemplate(oe.where_am_i), executor=recorder))
    assert await run_wf(wf) == "Succeeded", [s.error for s in wf.query_step()]
    op_call = recorder.calls[-1]
    assert op_call.trace is not None, "an op's call carries no trace context"
    assert "traceparent" in op_call.trace


# --- 8. executor=client: a new Dask, and a new check of every worker, per run ----------


async def test_a_client_given_as_such_checks_the_workers_once(
    dask_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``executor=client`` (README: "a distributed.Client as such") makes a new Dask
    executor in each RunOptions, so every run broadcasts the version check to every
    worker (client.run) and asks the scheduler again: on a large cluster, a round trip
    to each worker per run."""
    from distributed import Client

    from aflow.executors import _dask

    checks: list[str] = []
    real = _dask._check_workers

    async def counted(client: Any, task: str) -> None:
        checks.append(task)
        await real(client, task)

    monkeypatch.setattr(_dask, "_check_workers", counted)
    async with Client(dask_address, asynchronous=True) as client:  # type: ignore[no-untyped-call]
        for i in range(3):
            assert await aflow.run(aw.echo.s(i), executor=client) == i
    assert len(checks) == 1, checks


# --- 9. the client's loop ends under a call: a CancelledError nobody asked for --------


async def test_a_call_whose_dask_loop_ends_under_it_fails_and_is_not_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shared check (and each _submit) is a task in the client's loop, awaited here
    through run_coroutine_threadsafe. When that loop ends under it (``close()`` while a
    first call checks the workers; Dask's loop thread shutting down), distributed
    cancels its tasks, and the cancellation crosses over: the caller, which nobody
    cancelled, gets a bare CancelledError (the run ends as if cancelled) instead of a
    failed attempt (WorkerLost)."""
    import dask as dask_config
    import distributed  # noqa: F401  (its defaults in dask's config before a set)

    from aflow.executors import _dask

    checking = anyio.Event()
    loop = asyncio.get_running_loop()

    async def a_long_check(client: Any, task: str) -> None:  # (a large cluster's client.run)
        loop.call_soon_threadsafe(checking.set)
        await asyncio.Event().wait()

    monkeypatch.setattr(_dask, "_check_workers", a_long_check)
    with dask_config.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = in_process_cluster()
    executor = Dask(cluster=cluster)
    try:
        run = asyncio.ensure_future(aflow.run(aw.echo.s(1), executor=executor))
        with anyio.fail_after(20):
            await checking.wait()
            await anyio.to_thread.run_sync(executor.close)
            await asyncio.wait([run])
        assert not run.cancelled(), "the run was cancelled by Dask's loop shutting down"
        assert isinstance(run.exception(), WorkerLost), repr(run.exception())
    finally:
        await anyio.to_thread.run_sync(cluster.close)


# --- 10. the Dask figures the README cites are recorded nowhere ------------------------


def test_the_dask_figures_the_readme_cites_are_in_results_md() -> None:
    """README "When to offload" cites RESULTS.md for Dask's overhead (0.97-0.98x, 2.4 ms
    per node, 11 ms per hop) and its CPU-bound time; RESULTS.md's Executors section (the
    one benchmarks/executors.py writes) still holds the process figures alone."""
    root = pathlib.Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    assert "A step on Dask costs what a bare `client.submit`" in " ".join(readme.split())
    results = (root / "benchmarks" / "RESULTS.md").read_text()
    section = results.split("<!-- section: Executors -->", 1)[1].split("<!-- /section -->")[0]
    assert "| `aflow.executors.Dask` (" in section, section
    assert "| chain of 50 tiny bodies (one hop after another) |" in section, section


# --- 11. an asynchronous client whose loop does not run: waited on forever -------------


def test_a_client_whose_loop_is_not_running_is_refused_not_waited_on(dask_address: str) -> None:
    """``_in_loop_of`` (and the check) hand the call to the client's loop with
    run_coroutine_threadsafe without asking whether that loop runs. An asynchronous
    client made in another loop that is not running now (a session-scoped pytest-asyncio
    fixture under function-scoped loops; a client made in an earlier ``asyncio.run``)
    makes every run wait forever instead of failing with an error that says why."""
    from distributed import Client

    async def opened() -> Any:
        return await Client(dask_address, asynchronous=True)  # type: ignore[no-untyped-call]

    other = asyncio.new_event_loop()
    client = other.run_until_complete(opened())
    try:

        async def main() -> None:
            with anyio.fail_after(5):
                await aflow.run(aw.echo.s(1), executor=client)

        with pytest.raises(Exception) as caught:  # (any error but waiting)
            anyio.run(main)
        assert not isinstance(caught.value, TimeoutError), "waited on a loop that never ran"
    finally:
        other.run_until_complete(client.close())
        other.close()


# --- 12. Process.shutdown(wait=False) takes back what it told a body -------------------


async def test_a_body_told_to_stop_stays_told_after_a_shutdown_without_waiting(
    tmp_path: pathlib.Path, log: pathlib.Path
) -> None:
    """The cancel of a running body is a marker file; ``shutdown()`` removes the markers'
    folder right after ``pool.shutdown(wait=wait)``, which with ``wait=False`` returns at
    once, while given-up bodies still run: they no longer see that they were given up on,
    and run to their end for nobody."""
    pool = Process(max_workers=1)
    go = tmp_path / "go"
    try:
        run = asyncio.ensure_future(
            aflow.run(deaf_until_go_then_checks_in.s(str(log), str(go)), executor=pool)
        )
        await wait_for_line(log, "started")
        run.cancel()
        await asyncio.wait([run])
        pool.shutdown(wait=False)
        go.write_text("")
        with anyio.fail_after(20):
            while not {"stopped CancelledError", "ran out"} & {w for w, _ in lines(log)}:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert "stopped CancelledError" in [w for w, _ in lines(log)]
    finally:
        await anyio.to_thread.run_sync(pool.shutdown)
