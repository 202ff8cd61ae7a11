"""aflow.ops step policies: continue_on_failed, retries and timeouts (on steps, slices and
sync ops) and the runtime's max_concurrency."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aflow
from aflow.ops import Slices, Step, Workflow, op
from aflow.testing import FakeClock

from .ops_helpers import PeakProbe, add, boom, run_wf

# --- continue_on_failed ---------------------------------------------------------------------------


async def test_continue_on_failed_goes_on_and_skips_what_reads_the_failed_step() -> None:
    f = Step("f", boom, parameters={"x": 1}, continue_on_failed=True)
    reader = Step("reader", add, parameters={"x": f.outputs.parameters["y"]})
    after = Step("after", add, parameters={"x": 2})
    wf = Workflow("w").add(f).add([reader, after])
    assert await run_wf(wf) == "Succeeded"
    assert {r.name: r.phase for r in wf.query_step()} == {
        "f": "Failed",
        "reader": "Skipped",
        "after": "Succeeded",
    }
    assert isinstance(wf.query_step(name="f")[0].error, ValueError)


# --- retries and timeouts really apply ------------------------------------------------------------


async def test_retries_apply_to_ops() -> None:
    calls: list[int] = []

    @op(outputs={"n": int})
    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("again")
        return {"n": len(calls)}

    wf = Workflow("r").add(Step("f", flaky, retries=2))
    assert await run_wf(wf) == "Succeeded"
    [record] = wf.query_step()
    assert (record.attempts, record.outputs.parameters["n"].value) == (3, 3)
    calls.clear()
    wf = Workflow("r").add(Step("f", flaky, retries=1))
    assert await run_wf(wf) == "Failed"
    assert wf.query_step()[0].attempts == 2


async def test_timeouts_apply_to_ops() -> None:
    @op(outputs={"n": int})
    async def stuck():
        await anyio.sleep_forever()
        raise AssertionError

    wf = Workflow("t").add(Step("s", stuck, timeout=0.05, retries=1))
    with anyio.fail_after(10):
        assert await run_wf(wf) == "Failed"
    [record] = wf.query_step()
    assert isinstance(record.error, aflow.errors.TaskTimeout)
    assert record.attempts == 2


@pytest.mark.parametrize("sliced", [False, True])
async def test_timeouts_apply_to_sync_ops_too(sliced: bool) -> None:
    release = threading.Event()

    @op(outputs={"y": int})
    def slow(x: int):
        release.wait(5)  # blocks its thread until the timeout has fired
        return {"y": x}

    options: dict[str, Any] = {"timeout": 0.05}
    if sliced:
        options["slices"] = Slices(input_parameter=["x"], output_parameter=["y"])
    wf = Workflow("t").add(Step("s", slow, parameters={"x": [1] if sliced else 1}, **options))
    clock = FakeClock(autojump=False)
    async with clock, aflow.Runtime(clock=clock):
        await wf.submit()
        with anyio.fail_after(10):
            while wf.query_step()[0].phase == "Pending" or (wf.query_step()[0].started_at is None):
                await anyio.lowlevel.checkpoint()
            await anyio.wait_all_tasks_blocked()
            clock.advance(0.05)  # the timeout fires while the thread is blocked
            release.set()
            assert await wf.wait() == "Failed"
    error = wf.query_step()[0].error
    assert isinstance(error, aflow.errors.TaskTimeout), error


async def test_an_ops_own_timeout_error_is_not_a_slice_timeout() -> None:
    @op(outputs={"y": int})
    async def db(x: int):
        raise TimeoutError("the database did not answer")

    sliced = Slices(input_parameter=["x"], output_parameter=["y"])
    wf = Workflow("w").add(Step("s", db, parameters={"x": [1]}, slices=sliced, timeout=30))
    assert await run_wf(wf) == "Failed"
    error = wf.query_step()[0].error
    assert type(error) is TimeoutError
    assert "database" in str(error)


async def test_retries_and_timeouts_apply_to_each_slice() -> None:
    tries: dict[int, int] = {}

    @op(outputs={"x": int})
    async def shaky(x: int):
        tries[x] = tries.get(x, 0) + 1
        if x == 2 and tries[x] == 1:
            raise ConnectionError("once")
        if x == 3 and tries[x] < 3:
            await anyio.sleep_forever()  # times out twice, then answers
        return {"x": x}

    sliced = Slices(input_parameter=["x"], output_parameter=["x"])
    ok = Step("s", shaky, parameters={"x": [1, 2, 3]}, slices=sliced, retries=2, timeout=0.05)
    wf = Workflow("w").add(ok)
    with anyio.fail_after(10):
        assert await run_wf(wf) == "Succeeded"
    [record] = wf.query_step()
    assert [s.attempts for s in record.slices] == [1, 2, 3]
    assert record.outputs.parameters["x"].value == [1, 2, 3]

    tries.clear()
    short = Step("s", shaky, parameters={"x": [3]}, slices=sliced, retries=1, timeout=0.05)
    wf = Workflow("w").add(short)
    with anyio.fail_after(10):
        assert await run_wf(wf) == "Failed"
    [record] = wf.query_step()
    assert isinstance(record.error, aflow.errors.TaskTimeout)
    assert record.slices[0].attempts == 2
    assert record.slices[0].phase == "Failed"


async def test_slices_wait_their_backoff_and_timeouts_on_the_runs_clock() -> None:
    tries: dict[int, int] = {}

    @op(outputs={"x": int})
    async def shaky(x: int):
        tries[x] = tries.get(x, 0) + 1
        if tries[x] == 1:
            await anyio.sleep_forever()  # its first attempt times out (at 60 s)
        if tries[x] == 2:
            raise ConnectionError("then fails once more")
        return {"x": x}

    sliced = Slices(input_parameter=["x"], output_parameter=["x"], group_size=2, pool_size=1)
    step = Step(
        "s",
        shaky,
        parameters={"x": [1, 2]},
        slices=sliced,
        retries=2,
        timeout=60,
        backoff=aflow.Backoff(base=600, factor=1, max=600),
    )
    wf = Workflow("w").add(step)
    with anyio.fail_after(10):  # an hour of backoffs and timeouts, at once
        async with FakeClock() as clock, aflow.Runtime(clock=clock):
            await wf.submit()
            assert await wf.wait() == "Succeeded"
    # one slice at a time: each waits out 60 s, then two backoffs of 600 s
    assert clock.now() == pytest.approx(2 * (60 + 600 + 600))
    [record] = wf.query_step()
    assert [s.attempts for s in record.slices] == [3, 3]


# --- concurrency ----------------------------------------------------------------------------------


async def test_max_concurrency_bounds_slices_and_steps_of_every_run() -> None:
    probe = PeakProbe(fill=2)
    sliced = Slices(input_parameter=["x"], output_parameter=["x"])  # no pool_size

    def build() -> Workflow:
        return Workflow("w").add(
            [
                Step("p", probe.op, parameters={"x": list(range(6))}, slices=sliced),
                Step("q", probe.op, parameters={"x": list(range(6))}, slices=sliced),
                Step("plain", probe.op, parameters={"x": 1}),
            ]
        )

    first, second = build(), build()
    async with aflow.Runtime(max_concurrency=2):  # shared by both runs, steps and slices
        await first.submit()
        await second.submit()
        with anyio.fail_after(10):
            assert await first.wait() == "Succeeded"
            assert await second.wait() == "Succeeded"
    assert probe.peak == 2
