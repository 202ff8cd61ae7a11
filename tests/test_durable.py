"""Durable runs: checkpoints, idempotency, resume after a real crash, fork, bad input."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import anyio
import anyio.lowlevel
import pytest

import aflow
from aflow.errors import ResumeMismatch, RunNotFound
from aflow.stores import Store
from aflow.testing import FakeClock

from . import durable_workflows as wf

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: A short lease, so a killed process's runs count as dead soon after the kill.
LEASE = 0.2


def later() -> FakeClock:
    """A clock ``LEASE * 1.5`` seconds on from now, that moves only when told: a runtime
    on it sees a dead process's heartbeat as stale (heartbeats are wall times, and its
    ``wall()`` is ahead), with no wall time spent waiting and no heartbeat or recovery
    tick of its own (nothing advances it)."""
    clock = FakeClock(autojump=False)
    clock.advance(LEASE * 1.5)
    return clock


async def renewed(store: Store, run_id: str, clock: FakeClock) -> None:
    """Wait until the run's lease runs past ``clock``'s wall time (its owner renewed it)."""
    with anyio.fail_after(10):
        while ((await store.get_run(run_id)).heartbeat or 0) <= clock.wall():
            await anyio.lowlevel.checkpoint()


read = wf.read_counts


async def test_a_durable_run_checkpoints_every_node(store_url: str, counts: pathlib.Path) -> None:
    async with aflow.Runtime(store=store_url) as rt:
        run = await rt.submit(wf.abc, start=1)
        assert await run.result() == 104
        assert rt.store is not None
        nodes = await rt.store.load_nodes(run.id)
        stored = await rt.store.get_run(run.id)
    assert {k: (n.state, n.result) for k, n in nodes.items()} == {
        "step_a": ("succeeded", "2"),
        "step_b": ("succeeded", "4"),
        "step_c": ("succeeded", "104"),
    }
    assert stored.status == "succeeded"
    assert stored.result == "104"
    assert stored.workflow == "tests.durable_workflows:abc"
    assert read(counts) == {"A": 1, "B": 1, "C": 1}


async def test_an_idempotency_key_runs_once_even_when_submitted_at_once(
    store_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=store_url) as rt:
        handles = []

        async def submit() -> None:
            handles.append(await rt.submit(wf.abc, start=1, idempotency_key="order-42"))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(submit)
        assert len({h.id for h in handles}) == 1
        assert [await h.result() for h in handles] == [104] * 4
    assert read(counts) == {"A": 1, "B": 1, "C": 1}
    async with aflow.Runtime(store=store_url) as rt:  # a later process: the stored result
        again = await rt.submit(wf.abc, start=1, idempotency_key="order-42")
        assert again.id == handles[0].id
        assert await again.result() == 104
    assert read(counts) == {"A": 1, "B": 1, "C": 1}


async def test_a_value_that_cannot_be_stored_fails_its_node_and_keeps_the_rest(
    tmp_path: pathlib.Path, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=f"sqlite:///{tmp_path / 'r.db'}") as rt:
        run = await rt.submit(wf.a_then_opaque, start=1)
        with pytest.raises(aflow.errors.SerializationError) as info:
            await run.result()
        assert rt.store is not None
        nodes = await rt.store.load_nodes(run.id)
    assert info.value.task == "opaque"
    assert info.value.type == "tests.durable_workflows.Opaque"
    assert (nodes["step_a"].state, nodes["step_a"].result) == ("reverted", "2")  # kept
    assert nodes["opaque"].state == "failed"
    assert "SerializationError" in (nodes["opaque"].error or "")


async def test_what_a_called_workflow_built_runs_durably_as_that_call(
    tmp_path: pathlib.Path, counts: pathlib.Path
) -> None:
    """`rt.run(order_saga(o))` (issue 17): the call checks its parameters (a type checker
    does too), and the durable run records the call, the workflow and its parameters by
    name, through every entry point; a resume rebuilds it from them."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    async with aflow.Runtime(store=url) as rt:
        by_submit = await rt.submit(wf.abc(1))
        value = await by_submit.result()
        assert await rt.run(wf.abc(start=1)) == value
        assert rt.store is not None
        records = await rt.store.list_runs()
    assert await aflow.run(wf.abc(1), store=url) == value
    assert await aflow.run(wf.abc, params={"start": 1}, store=url) == value
    assert len(records) == 2
    for record in records:
        assert (record.workflow, json.loads(record.params)) == (
            "tests.durable_workflows:abc",
            {"start": 1},
        )
    # a flow (mutable) and many built before any is submitted: no cliff after a few
    built = [wf.abc(i) for i in range(40)] + [wf.retried_pay(5)]
    async with aflow.Runtime(store=url) as rt:
        runs = [await rt.submit(b) for b in built]
        assert [await r.wait() for r in runs[:40]] == [aflow.RunStatus.SUCCEEDED] * 40
        await runs[40].wait()
        assert rt.store is not None
        stored = {r.run_id: r for r in await rt.store.list_runs(limit=1000)}
    assert json.loads(stored[runs[39].id].params) == {"start": 39}
    assert json.loads(stored[runs[40].id].params) == {"amount": 5}


async def test_what_a_call_built_is_refused_when_it_cannot_be_that_call(
    tmp_path: pathlib.Path, counts: pathlib.Path
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    async with aflow.Runtime(store=url) as rt:
        # composed after the call: no call built it
        with pytest.raises(
            aflow.errors.DefinitionError, match=r"decorate the function that builds Chain"
        ):
            await rt.submit(wf.abc(1) | wf.step_b.s())
        # a flow changed after the call built it
        flow = wf.retried_pay(5)
        flow.add(wf.Probe())
        with pytest.raises(aflow.errors.DefinitionError, match="changed after the call built it"):
            await rt.submit(flow)
        # a function that builds another graph each time
        with pytest.raises(aflow.errors.DefinitionError, match="changed after the call built it"):
            await rt.run(wf.another_graph_each_time(1))
        # parameters collected by *args cannot be passed by name
        with pytest.raises(
            aflow.errors.DefinitionError,
            match=r"by name: .*collects positional arguments in \*starts",
        ):
            await rt.submit(wf.spread(1, 2))
        # parameters beside what a call built
        with pytest.raises(TypeError, match=r"parameters can only be given to an @aflow\.workflow"):
            await rt.submit(wf.abc(1), start=2)
        assert rt.store is not None
        assert await rt.store.list_runs() == []  # nothing was recorded


async def test_a_workflow_that_cannot_be_rebuilt_is_refused(tmp_path: pathlib.Path) -> None:
    async with aflow.Runtime(store=f"sqlite:///{tmp_path / 'r.db'}") as rt:
        with pytest.raises(aflow.errors.DefinitionError, match=r"@aflow\.workflow"):
            await rt.submit(wf.step_a.s(1))

        @aflow.workflow
        def local(start: int) -> aflow.Signature[int]:
            return wf.step_a.s(start)

        with pytest.raises(aflow.errors.DefinitionError, match="inside a function"):
            await rt.submit(local, start=1)
        # (issue 14: it names the workflow and the parameter, no longer "task 'inputs'")
        with pytest.raises(
            aflow.errors.SerializationError,
            match=r"workflow 'tests\.durable_workflows:abc': cannot serialise a "
            r"tests\.durable_workflows\.Opaque at parameter 'start'",
        ):
            await rt.submit(wf.abc, start=wf.Opaque())
        assert rt.store is not None
        assert await rt.store.list_runs() == []  # nothing was recorded


async def test_resume_refuses_unknown_finished_and_changed_runs(
    tmp_path: pathlib.Path, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=f"sqlite:///{tmp_path / 'r.db'}") as rt:
        with pytest.raises(RunNotFound):
            await rt.resume("no-such-run")
        run = await rt.submit(wf.abc, start=1)
        await run.result()
        with pytest.raises(ResumeMismatch, match="finished already"):
            await rt.resume(run.id)
        assert rt.store is not None
        record = await rt.store.get_run(run.id)
        changed = aflow.stores.RunRecord(
            **{f: getattr(record, f) for f in record.__dataclass_fields__},
        )
        object.__setattr__(changed, "run_id", "changed")
        object.__setattr__(changed, "status", "running")
        object.__setattr__(changed, "fingerprint", "0" * 32)
        object.__setattr__(changed, "idempotency_key", None)
        await rt.store.create_run(changed)
        with pytest.raises(ResumeMismatch, match="different graph"):
            await rt.resume("changed")
        assert (await rt.store.get_run("changed")).status == "running"  # left as it was
    assert read(counts) == {"A": 1, "B": 1, "C": 1}


async def test_fork_reuses_the_outputs_it_is_told_to(
    tmp_path: pathlib.Path, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=f"sqlite:///{tmp_path / 'r.db'}") as rt:
        first = await rt.submit(wf.abc, start=1)
        assert await first.result() == 104
        same = await rt.fork(first.id, reuse=["step_a", "step_b"])
        assert await same.result() == 104
        changed = await rt.fork(first.id, reuse={"step_a": 10})
        assert await changed.result() == 120
    assert read(counts) == {"A": 1, "B": 2, "C": 3}


async def test_a_durable_fan_out_batches_its_checkpoints(
    tmp_path: pathlib.Path, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=f"sqlite:///{tmp_path / 'r.db'}") as rt:
        run = await rt.submit(wf.fan, n=200)
        assert await run.result() == sum(range(1, 201))
        assert rt.store is not None
        nodes = await rt.store.load_nodes(run.id)
    assert sum(1 for n in nodes.values() if n.state == "succeeded") == 201
    journal = run._execution._journal
    assert journal is not None
    assert journal.batches < 201  # several successes per transaction


# --- crashes: a real process killed with SIGKILL, then a fresh one resumes ------------------

CRASHER = textwrap.dedent(
    """
    import asyncio, sys
    import aflow, importlib
    wf = importlib.import_module(sys.argv[4] if len(sys.argv) > 4 else "tests.durable_workflows")

    async def main():
        async with aflow.Runtime(store=sys.argv[1], lease=float(sys.argv[3])) as rt:
            run = await rt.submit(getattr(wf, sys.argv[2]), start=1)
            print(run.id, flush=True)
            try:
                await run.result()
            except Exception:
                pass

    asyncio.run(main())
    """
)


def crash_in(
    store_url: str,
    workflow: str,
    hang: str,
    counts: pathlib.Path,
    module: str = "tests.durable_workflows",
) -> str:
    """Run ``workflow`` (of ``module``) in a subprocess and SIGKILL it while step ``hang``
    is blocked."""
    env = {**os.environ, "AFLOW_COUNTS": str(counts), "AFLOW_HANG": hang}
    with subprocess.Popen(
        [sys.executable, "-c", CRASHER, store_url, workflow, str(LEASE), module],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            run_id = proc.stdout.readline().strip()
            line = proc.stdout.readline().strip()  # blocks until the step says it hangs
            assert line == f"hanging {hang}", proc.stderr.read() if proc.stderr else line
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL
    return run_id


@pytest.mark.slow
async def test_a_run_killed_inside_b_resumes_without_repeating_a(
    store_url: str, counts: pathlib.Path
) -> None:
    run_id = await anyio.to_thread.run_sync(crash_in, store_url, "abc", "B", counts)
    assert read(counts) == {"A": 1, "B": 1}
    clock = later()  # the dead process's heartbeat goes stale
    async with aflow.Runtime(store=store_url, recover=True, lease=LEASE, clock=clock) as rt:
        run = rt.get(run_id)  # recovered at start-up (active, or finished already)
        assert await run.result() == 104  # what an uninterrupted run returns
    assert read(counts) == {"A": 1, "B": 2, "C": 1}  # B ran again: at-least-once


@pytest.mark.slow
async def test_a_run_killed_during_compensation_finishes_unwinding(
    store_url: str, counts: pathlib.Path
) -> None:
    run_id = await anyio.to_thread.run_sync(crash_in, store_url, "abc_fails", "revert-B", counts)
    assert read(counts) == {"A": 1, "B": 1, "C": 1, "revert-B": 1}
    clock = later()  # the dead process's heartbeat goes stale
    async with aflow.Runtime(store=store_url, lease=LEASE, clock=clock) as rt:
        assert rt.store is not None
        assert (await rt.store.get_run(run_id)).status == "reverting"
        run = await rt.resume(run_id)
        with pytest.raises(Exception, match="card declined"):
            await run.result()
        assert run.status is aflow.RunStatus.REVERTED
        assert (await rt.store.get_run(run_id)).status == "reverted"
    assert read(counts) == {"A": 1, "B": 1, "C": 1, "revert-B": 2, "revert-A": 1}


SUBMITTER = textwrap.dedent(
    """
    import asyncio, sys
    import aflow
    from tests import durable_workflows as wf

    async def main():
        async with aflow.Runtime(store=sys.argv[1]) as rt:
            run = await rt.submit(wf.abc, start=1, idempotency_key="shared-key")
            print(run.id, await run.result(), flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_an_idempotency_key_holds_across_processes(store_url: str, counts: pathlib.Path) -> None:
    env = {**os.environ, "AFLOW_COUNTS": str(counts)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, store_url],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(out.split())
    assert len({run_id for run_id, _ in outputs}) == 1  # one run, whoever submitted first
    assert {value for _, value in outputs} == {"104"}
    assert read(counts) == {"A": 1, "B": 1, "C": 1}  # executed once in all


async def test_the_pickle_serializer_is_opt_in(
    tmp_path: pathlib.Path, counts: pathlib.Path
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    async with aflow.Runtime(store=url, serializer="pickle") as rt:
        run = await rt.submit(wf.a_then_opaque, start=1)
        assert isinstance(await run.result(), wf.Opaque)
    with pytest.raises(ValueError, match="serializer must be"):
        aflow.Runtime(store=url, serializer="yaml")


@pytest.mark.slow
def test_aflow_cancel_stops_a_run_in_another_process(store_url: str, counts: pathlib.Path) -> None:
    env = {**os.environ, "AFLOW_COUNTS": str(counts)}
    with subprocess.Popen(
        [sys.executable, "-c", CRASHER, store_url, "a_then_wait", str(LEASE)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        run_id = proc.stdout.readline().strip()
        assert proc.stdout.readline().strip() == "hanging W"  # blocks until the step waits
        cancel = subprocess.run(
            [sys.executable, "-m", "aflow.cli", "--store", store_url, "cancel", run_id],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert cancel.returncode == 0, cancel.stderr
        proc.communicate(timeout=30)  # the owner notices, unwinds and ends
    assert read(counts) == {"A": 1, "W": 1, "revert-W": 1, "revert-A": 1}  # W cancelled mid-way

    async def status() -> str:
        store = aflow.stores.open_store(store_url)
        await store.open()
        try:
            return (await store.get_run(run_id)).status
        finally:
            await store.close()

    assert anyio.run(status) == "cancelled"


@pytest.mark.slow
async def test_a_dead_run_cancelled_from_the_command_line_is_unwound_on_recovery(
    store_url: str, counts: pathlib.Path
) -> None:
    run_id = await anyio.to_thread.run_sync(crash_in, store_url, "a_then_wait", "W", counts)
    cancel = await anyio.run_process(
        [sys.executable, "-m", "aflow.cli", "--store", store_url, "cancel", run_id],
        cwd=ROOT,
        check=False,
    )
    assert cancel.returncode == 0
    clock = later()  # the dead process's heartbeat goes stale
    store = aflow.stores.open_store(store_url)
    await store.open()
    try:
        nodes = await store.load_nodes(run_id)  # what the dead process left
    finally:
        await store.close()
    async with aflow.Runtime(store=store_url, recover=True, lease=LEASE, clock=clock) as rt:
        run = rt.get(run_id)
        assert (await run.wait()) is aflow.RunStatus.CANCELLED
    # Nothing ran again. The step running when the process died is reverted as
    # cancelled mid-way: a step with a revert starts only once its start is on record.
    assert nodes["wait_here"].state == "running"
    assert read(counts) == {"A": 1, "W": 1, "revert-A": 1, "revert-W": 1}


async def test_a_run_whose_owner_is_alive_is_neither_recovered_nor_resumed(
    tmp_path: pathlib.Path, counts: pathlib.Path
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    clock = FakeClock(autojump=False)  # moved by hand: the owner renews once per advance
    async with aflow.Runtime(store=url, lease=LEASE, clock=clock) as owner:
        waiting = anyio.Event()

        def on_event(event: aflow.Event) -> None:
            if event.name == "task_started" and event.node == "wait_here":
                waiting.set()

        run = await owner.submit(wf.a_then_wait, start=1, on_event=on_event)
        await waiting.wait()
        clock.advance(LEASE * 1.5)  # past the lease the run was created with...
        assert owner.store is not None
        await renewed(owner.store, run.id, clock)  # ...which the owner has renewed meanwhile
        async with aflow.Runtime(store=url, recover=True, lease=LEASE, clock=clock) as other:
            assert other.runs() == []
            with pytest.raises(ResumeMismatch, match="a live process runs it"):
                await other.resume(run.id)
        await run.cancel()
    assert read(counts)["W"] == 1  # nobody ran it a second time


async def test_aflow_run_with_a_store_is_durable_and_idempotent(
    store_url: str, counts: pathlib.Path
) -> None:
    for _ in range(2):
        value = await aflow.run(
            wf.abc, params={"start": 1}, store=store_url, idempotency_key="order-1"
        )
        assert value == 104
    assert read(counts) == {"A": 1, "B": 1, "C": 1}  # the second call got the stored result
    assert await aflow.run(wf.abc, params={"start": 2}) == 106  # built, in memory
    with pytest.raises(ValueError, match="needs a durable store"):
        await aflow.run(wf.abc, params={"start": 1}, idempotency_key="order-1")
    with pytest.raises(TypeError, match=r"@aflow\.workflow"):
        await aflow.run(wf.step_a.s(1), params={"start": 1})


def test_run_sync_with_a_store(tmp_path: pathlib.Path, counts: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert aflow.run_sync(wf.abc, params={"start": 1}, store=url) == 104
    assert read(counts) == {"A": 1, "B": 1, "C": 1}
