"""Durable waits across real processes (issue 22): the process that submitted a run is
killed while the run waits, and another process takes the run up when its event comes."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable, Iterator

import anyio
import pytest

import aflow

from . import wait_workflows  # noqa: F401 - registers the workflows the runtimes here take up
from .durable_workflows import read_counts

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: Seconds any one step of these tests may take before it fails with a clear message.
DEADLINE = 10.0

#: Submits ``tests.wait_workflows.<argv[3]>`` with ``order=argv[4]`` and that order as its
#: idempotency key; once the store shows the run at its wait (``waiting`` for a wait
#: node, ``running`` with a stored wait for a body in ``aflow.receive``) prints the
#: run's id, then idles until the test kills it.
WAITER = textwrap.dedent(
    """
    import asyncio, sys
    import aflow
    from tests import wait_workflows as wf

    async def main():
        url, lease, workflow, order = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
        async with aflow.Runtime(store=url, lease=lease, poll=0.05) as rt:
            run = await rt.submit(getattr(wf, workflow), order=order, idempotency_key=order)
            store = rt.store
            loop = asyncio.get_running_loop()
            deadline = loop.time() + float(sys.argv[5])
            while True:
                status = str((await store.get_run(run.id)).status)
                waits = await store.load_waits(run.id)
                if status == "waiting" if workflow == "pay_then_ship" else (
                    status == "running" and waits
                ):
                    break
                if loop.time() > deadline:
                    raise TimeoutError(f"run {run.id} never got to its wait ({status}, {waits})")
                await asyncio.sleep(0.005)
            print(run.id, flush=True)
            await asyncio.Event().wait()  # until the test kills this process

    asyncio.run(main())
    """
)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """The processes a test starts: each killed (if still alive) and waited for at the end."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


def start_waiter(
    procs: list[subprocess.Popen[str]],
    store_url: str,
    workflow: str,
    order: str,
    stderr: pathlib.Path,
    *,
    lease: float = 10.0,
) -> tuple[subprocess.Popen[str], str]:
    """A WAITER process (in ``procs``) and the id of its run, once that run waits. (Not
    async: nothing runs on the test's loop meanwhile.)"""
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", WAITER, store_url, str(lease), workflow, order, str(DEADLINE)],
            cwd=ROOT,
            env=dict(os.environ),  # AFLOW_COUNTS (the counts fixture), AFLOW_CHECK_INVARIANTS
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    procs.append(proc)
    stdout = proc.stdout
    assert stdout is not None
    lines: list[str] = []
    # in a thread: a process that hangs must fail the test, not hang it (once the
    # process is killed, the read ends)
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(DEADLINE + 5)  # (the waiter's own deadline is DEADLINE)
    if not lines:
        raise TimeoutError(f"the waiter printed no run id: {stderr.read_text()}")
    run_id = lines[0].strip()
    assert run_id, f"the waiter ended without a run id: {stderr.read_text()}"
    return proc, run_id


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL: the process leaves no word in the store."""
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=DEADLINE) == -signal.SIGKILL


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds, for at most DEADLINE seconds: what a runtime does
    with a run shows only in the store, which has no event to wait on."""
    with anyio.move_on_after(DEADLINE) as scope:
        while not await check():  # noqa: ASYNC110 - the store has no event to wait on
            await anyio.sleep(0.01)
    if scope.cancelled_caught:
        raise TimeoutError(f"waited {DEADLINE} s for {what}")


async def record_of(rt: aflow.Runtime, run_id: str) -> aflow.stores.RunRecord:
    assert rt.store is not None
    return await rt.store.get_run(run_id)


async def stored_record(store_url: str, run_id: str) -> aflow.stores.RunRecord:
    """The run as stored, read with no runtime (none takes it up meanwhile)."""
    store = aflow.stores.open_store(store_url)
    await store.open()
    try:
        return await store.get_run(run_id)
    finally:
        await store.close()


async def until_status(rt: aflow.Runtime, run_id: str, status: str) -> None:
    """Until the store records the run with ``status``."""

    async def check() -> bool:
        return str((await record_of(rt, run_id)).status) == status

    await until(check, f"run {run_id} to be {status}")


@pytest.mark.slow
async def test_a_run_waiting_when_its_process_is_killed_is_taken_up_by_the_next_send(
    store_url: str, counts: pathlib.Path, tmp_path: pathlib.Path, procs: list[subprocess.Popen[str]]
) -> None:
    stderr = tmp_path / "waiter.err"
    proc, run_id = start_waiter(procs, store_url, "pay_then_ship", "o-1", stderr)
    kill(proc)
    assert read_counts(counts) == {"charge": 1}
    async with aflow.Runtime(store=store_url, poll=0.05) as rt:
        record = await record_of(rt, run_id)
        assert (record.status, record.owner, record.idempotency_key) == ("waiting", None, "o-1")
        assert await rt.send(run_id, "paid", {"amount": 5}, message_id="evt_1")
        assert not await rt.send(run_id, "paid", {"amount": 6}, message_id="evt_1")  # again
        await until_status(rt, run_id, "succeeded")
        run = rt.get(run_id)  # taken up here (nothing else is alive to take it)
        assert await run.result() == "shipped after {'amount': 5}"
        assert (await rt.report(run_id)).waits == []
        # the provider redelivers after the run has ended: a no-op; a new message is refused
        assert not await rt.send(run_id, "paid", {"amount": 5}, message_id="evt_1")
        with pytest.raises(aflow.errors.RunEnded):
            await rt.send(run_id, "paid", {"amount": 5}, message_id="evt_9")
    assert stderr.read_text() == ""
    assert read_counts(counts) == {"charge": 1, "ship": 1}  # the charge did not run again


@pytest.mark.slow
async def test_an_event_sent_while_no_process_is_alive_is_taken_up_when_one_starts(
    store_url: str, counts: pathlib.Path, tmp_path: pathlib.Path, procs: list[subprocess.Popen[str]]
) -> None:
    stderr = tmp_path / "waiter.err"
    proc, run_id = start_waiter(procs, store_url, "pay_then_ship", "o-2", stderr)
    kill(proc)

    def send(*args: str) -> str:  # the command line: the store only, no runtime
        command = [sys.executable, "-m", "aflow.cli", "--store", store_url, "send", *args]
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    payload = json.dumps({"amount": 7})
    sent = await anyio.to_thread.run_sync(
        lambda: send("--key", "o-2", "paid", "--payload", payload, "--message-id", "evt_2")
    )
    assert f"run {run_id}: event 'paid' sent" in sent
    again = await anyio.to_thread.run_sync(
        lambda: send(run_id, "paid", "--payload", '"other"', "--message-id", "evt_2")
    )
    assert "sent already" in again
    record = await stored_record(store_url, run_id)
    assert (record.status, record.owner, record.wake_at) == ("waiting", None, 0.0)  # due now
    # A poll far longer than the test: only the waker's first look can take the run up.
    async with aflow.Runtime(store=store_url, poll=3600) as rt:
        await until_status(rt, run_id, "succeeded")
        assert await rt.get(run_id).result() == "shipped after {'amount': 7}"
    assert stderr.read_text() == ""
    assert read_counts(counts) == {"charge": 1, "ship": 1}


@pytest.mark.slow
async def test_a_body_in_receive_whose_process_is_killed_is_recovered_and_gets_the_event(
    store_url: str, counts: pathlib.Path, tmp_path: pathlib.Path, procs: list[subprocess.Popen[str]]
) -> None:
    stderr = tmp_path / "waiter.err"
    # A short lease: recovery may take the run over soon after its process dies.
    proc, run_id = start_waiter(procs, store_url, "receive_then_ship", "o-3", stderr, lease=1.0)
    kill(proc)
    async with aflow.Runtime(store=store_url, poll=0.05) as rt:
        record = await record_of(rt, run_id)
        assert record.status == "running"  # a body in receive is not unloaded
        assert record.owner is not None  # the dead process's, until its lease runs out
        (wait,) = (await rt.report(run_id)).waits
        assert wait.event == "approved"
        assert rt.store is not None
        (before,) = await rt.store.load_waits(run_id)
        assert await rt.send(run_id, "approved", "yes", message_id="evt_3")
        assert (await record_of(rt, run_id)).status == "running"  # no recovery here
        async with aflow.Runtime(store=store_url, recover=True, lease=1.0, poll=0.05) as other:
            await until_status(other, run_id, "succeeded")
            assert await other.get(run_id).result() == "shipped after yes"
        record = await record_of(rt, run_id)
        assert record.recoveries == 1
        # the body ran again and began its wait again: the first deadline was kept
        assert await rt.store.load_waits(run_id) == [before]
    assert stderr.read_text() == ""
    assert read_counts(counts) == {"charge": 1, "ship": 1}  # the charge did not run again
