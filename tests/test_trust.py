"""Trustworthy runs (issue 14): what a hostile user found, each as a regression test.

Late cancels have their own property tests (tests/test_cancel_timing.py); the store's
own hardening is in tests/test_store_errors.py and tests/test_store_processes.py.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import anyio
import pytest

import aflow

from . import durable_workflows as dw
from . import trust_workflows as tw

read = dw.read_counts


@pytest.fixture
def sqlite_url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


# --- every node of a finished run has a final state on record (item 15) -------------------


class TestCutShortNodesAreOnRecord:
    async def test_a_cancelled_run_records_its_interrupted_step_cancelled(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        waiting = anyio.Event()

        def listen(event: aflow.Event) -> None:
            if event.name == "task_started" and event.node == "plain_wait":
                waiting.set()

        async with aflow.Runtime(store=sqlite_url) as rt:
            run = await rt.submit(tw.a_then_plain_wait, start=1, on_event=listen)
            await waiting.wait()
            await run.cancel()
            assert run.status is aflow.RunStatus.CANCELLED
            assert rt.store is not None
            nodes = await rt.store.load_nodes(run.id)
            assert (await rt.store.get_run(run.id)).status == "cancelled"
        assert nodes["plain_wait"].state == "cancelled"
        assert nodes["plain_wait"].error == "cancelled mid-way: the run was cancelled"
        assert nodes["step_a"].state == "reverted"
        assert run.step("plain_wait").state is aflow.NodeState.CANCELLED

    async def test_a_sibling_failure_records_the_step_it_cut_short(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        async with aflow.Runtime(store=sqlite_url) as rt:
            run = await rt.submit(tw.wait_beside_a_failure, start=1)
            with pytest.raises(RuntimeError, match="out of stock"):
                await run.result()
            assert rt.store is not None
            nodes = await rt.store.load_nodes(run.id)
        assert nodes["plain_wait"].state == "cancelled"
        assert nodes["plain_wait"].error == "cancelled mid-way: task 'fails_soon' failed"
        assert nodes["fails_soon"].state == "failed"

    async def test_a_run_out_of_time_records_the_step_it_cut_short(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        async with aflow.Runtime(store=sqlite_url) as rt:
            run = await rt.submit(tw.plain_wait_with_deadline, start=1, timeout=0.05)
            with pytest.raises(aflow.RunTimeout):
                await run.result()
            assert rt.store is not None
            nodes = await rt.store.load_nodes(run.id)
        assert nodes["plain_wait"].state == "cancelled"
        assert nodes["plain_wait"].error == "cancelled mid-way: the run ran out of time"

    async def test_a_cancelled_awaiter_leaves_no_step_running(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        with anyio.CancelScope() as scope:

            def listen(event: aflow.Event) -> None:
                if event.name == "task_started" and event.node == "plain_wait":
                    scope.cancel()

            await aflow.run(
                tw.a_then_plain_wait, params={"start": 1}, store=sqlite_url, on_event=listen
            )
        assert scope.cancelled_caught
        store = aflow.stores.open_store(sqlite_url)
        await store.open()
        try:
            (record,) = await store.list_runs()
            nodes = await store.load_nodes(record.run_id)
        finally:
            await store.close()
        assert record.status == "cancelled"
        assert {key: node.state for key, node in nodes.items()} == {
            "step_a": "reverted",
            "plain_wait": "cancelled",
        }
        assert nodes["plain_wait"].error == "cancelled mid-way: the run was cancelled"


# --- a task that raises a BaseException that is no error (item 2) ---------------------------

UNDONE: list[str] = []


class Custom(BaseException):
    """A user's own BaseException: neither an error nor a cancellation."""


@aflow.task
async def charge(x: int) -> int:
    return x + 1


@charge.revert
async def refund(x: int, *, result: object) -> None:
    UNDONE.append("refund")


@aflow.task
def sync_generator_exit(x: int) -> int:
    raise GeneratorExit("closed under it")


@aflow.task
async def async_generator_exit(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    raise GeneratorExit("closed under it")


@aflow.task
def sync_custom(x: int) -> int:
    raise Custom("mine")


@aflow.task(retries=2, timeout=5)
async def async_custom_retried(x: int) -> int:
    raise Custom("mine")


@aflow.task
async def ok(x: int) -> int:
    return x


@ok.revert
def revert_raises_generator_exit(x: int, *, result: object) -> None:
    raise GeneratorExit("in the revert")


@aflow.task
async def then_fails(x: int) -> int:
    raise RuntimeError("declined")


@pytest.mark.both_loops
class TestBaseExceptionsThatAreNoErrors:
    @pytest.mark.parametrize(
        ("task", "what"),
        [
            (sync_generator_exit, "GeneratorExit('closed under it')"),
            (async_generator_exit, "GeneratorExit('closed under it')"),
            (sync_custom, "Custom('mine')"),
            (async_custom_retried, "Custom('mine')"),
        ],
        ids=["sync GeneratorExit", "async GeneratorExit", "sync custom", "async custom, retried"],
    )
    async def test_the_task_fails_and_the_run_unwinds(
        self, task: aflow.FunctionTask[..., int], what: str
    ) -> None:
        UNDONE.clear()
        async with aflow.Runtime() as rt:
            run = await rt.submit(charge.s(1) | task.s())
            with pytest.raises(aflow.errors.TaskFailed) as info:
                await run.result()
        assert info.value.task == task.name
        assert info.value.attempt == 1  # never retried
        assert str(info.value) == f"run {run.id}: task {task.name!r} raised {what} on attempt 1"
        assert type(info.value.__cause__).__name__ == what.split("(")[0]
        assert UNDONE == ["refund"]  # exactly once
        assert run.status is aflow.RunStatus.REVERTED
        assert run.step(task.name).state is aflow.NodeState.FAILED

    async def test_a_durable_run_records_it_as_a_failure(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        async with aflow.Runtime(store=sqlite_url) as rt:
            run = await rt.submit(tw.a_then_generator_exit, start=1)
            with pytest.raises(aflow.errors.TaskFailed):
                await run.result()
            assert rt.store is not None
            stored = await rt.store.get_run(run.id)
            nodes = await rt.store.load_nodes(run.id)
        assert stored.status == "reverted"
        assert nodes["closes_under_it"].state == "failed"
        assert "GeneratorExit('closed under it')" in (nodes["closes_under_it"].error or "")
        assert nodes["step_a"].state == "reverted"
        assert read(counts) == {"A": 1, "revert-A": 1}

    async def test_a_revert_raising_one_fails_the_compensation(self) -> None:
        with pytest.raises(aflow.CompensationFailed) as info:
            await (ok.s(1) | then_fails.s())
        original, revert_error = info.value.exceptions
        assert isinstance(original, RuntimeError)
        assert isinstance(revert_error, aflow.errors.TaskFailed)
        assert isinstance(revert_error.__cause__, GeneratorExit)


def test_keyboard_interrupt_in_a_step_propagates_after_unwinding() -> None:
    """Without a store the run unwinds, then the interrupt reaches the caller; the step
    that raised it is CANCELLED, not left RUNNING."""

    @aflow.task
    async def interrupted(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        raise KeyboardInterrupt

    UNDONE.clear()
    seen: dict[str | None, str] = {}

    def listen(event: aflow.Event) -> None:
        seen[event.node] = event.name

    with pytest.raises(KeyboardInterrupt):
        anyio.run(lambda: aflow.run(charge.s(1) | interrupted.s(), on_event=listen))
    assert UNDONE == ["refund"]
    assert seen["interrupted"] == "task_cancelled"
    assert seen[None] == "run_cancelled"


# --- an async task that returns a coroutine: a missing await (item 3) ----------------------


async def _helper(x: int) -> int:
    return x


@aflow.task
async def forgot_await(x: int) -> int:
    return _helper(x)  # type: ignore[return-value]


@aflow.task
async def forgot_await_later(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return _helper(x)  # type: ignore[return-value]


@aflow.task(retries=1)
def forgot_await_sync(x: int) -> int:
    return _helper(x)  # type: ignore[return-value]


@pytest.mark.both_loops
class TestACoroutineIsNoResult:
    @pytest.mark.parametrize(
        "task",
        [forgot_await, forgot_await_later, forgot_await_sync],
        ids=["at once", "after suspending", "sync, retried"],
    )
    async def test_it_fails_the_task_with_a_typed_error(
        self, task: aflow.FunctionTask[..., int]
    ) -> None:
        """The coroutine is closed: with warnings as errors, a 'never awaited' would fail."""
        UNDONE.clear()
        with pytest.raises(aflow.errors.ResultError) as info:
            await (charge.s(1) | task.s())
        assert info.value.task == task.name
        assert "returned a coroutine (_helper()) instead of a value: a missing 'await'?" in str(
            info.value
        )
        assert isinstance(info.value, TypeError)
        assert UNDONE == ["refund"]

    async def test_a_map_returning_coroutines_fails(self) -> None:
        with pytest.raises(aflow.errors.ResultError, match="returned coroutines"):
            await forgot_await.map([1, 2])


# --- a task body knows its step: run id, key, attempt, idempotency key (item 17) ------------


class TestCurrentStep:
    @pytest.mark.both_loops
    async def test_async_and_sync_bodies_and_their_reverts_see_their_step(self) -> None:
        seen: dict[str, aflow.StepInfo] = {}

        @aflow.task(retries=1)
        async def reserve(x: int) -> int:
            step = aflow.current_step()
            seen[f"reserve-{step.attempt}"] = step
            if step.attempt == 1:
                raise OSError("try again")
            return x

        @reserve.revert
        def release(x: int, *, result: object) -> None:
            seen["release"] = aflow.current_step()  # in a worker thread

        @aflow.task
        def charge_sync(x: int) -> int:
            seen["charge"] = aflow.current_step()
            raise RuntimeError("declined")

        async with aflow.Runtime() as rt:
            run = await rt.submit(reserve.s(1) | charge_sync.s())
            with pytest.raises(RuntimeError, match="declined"):
                await run.result()
        first, second = seen["reserve-1"], seen["reserve-2"]
        assert (first.run_id, first.key, first.task, first.attempt) == (
            run.id,
            "reserve",
            "reserve",
            1,
        )
        assert second.attempt == 2
        assert first.state is aflow.NodeState.RUNNING
        # one key for the step across its attempts; the revert has its own
        assert first.idempotency_key == second.idempotency_key == f"{run.id}/reserve"
        assert seen["release"].idempotency_key == f"{run.id}/reserve/revert"
        assert seen["release"].state is aflow.NodeState.REVERTING
        assert seen["charge"].key == "charge_sync"
        assert seen["charge"].run_id == run.id

    async def test_what_a_body_starts_inherits_its_step(self) -> None:
        seen: list[str] = []

        async def side_effect() -> None:
            seen.append(aflow.current_step().key)

        @aflow.task
        async def starts_a_task(x: int) -> int:
            async with anyio.create_task_group() as tg:
                tg.start_soon(side_effect)
            await anyio.to_thread.run_sync(lambda: seen.append(aflow.current_step().key))
            return x

        await aflow.group(starts_a_task.s(1), starts_a_task.s(2))
        assert sorted(seen) == [
            "starts_a_task",
            "starts_a_task",
            "starts_a_task#2",
            "starts_a_task#2",
        ]

    async def test_each_attempt_of_a_retried_flow_has_keys_of_its_own(self) -> None:
        from aflow.patterns import linear_flow as lf

        keys: list[str] = []

        class Charge(aflow.Task):
            async def execute(self, attempt: int) -> str:
                keys.append(aflow.current_step().idempotency_key)
                if attempt < 2:
                    raise OSError("declined, try again")
                return "paid"

        flow = lf.Flow("pay", retry=aflow.retry.Times(2, provides="attempt")).add(Charge())
        engine = aflow.engines.load(lf.Flow("order").add(flow))
        await engine.run()
        assert len(keys) == 2
        assert keys[0] != keys[1]  # an attempt that was undone is new work
        assert keys[0].endswith("pay#1/Charge")
        assert keys[1].endswith("pay#2/Charge")

    async def test_it_is_stable_across_a_resume(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        from .test_resume import dead_run, ok

        async with aflow.Runtime(store=sqlite_url) as rt:
            run_id = await dead_run(
                rt.store,
                tw.contexts,
                [ok("step_a", "2"), aflow.stores.NodeRecord("step_ctx", "running", 1)],
                status="running",
            )
            run = await rt.resume(run_id)
            value = await run.result()
        assert value == {
            "run_id": run_id,
            "key": "step_ctx",
            "task": "step_ctx",
            "attempt": 1,
            "idempotency_key": f"{run_id}/step_ctx",  # what the dead process used too
        }
        assert read(counts) == {"ctx:step_ctx:1": 1}

    def test_outside_a_body_it_is_an_error(self) -> None:
        with pytest.raises(RuntimeError, match="only available inside a task or a revert"):
            aflow.current_step()

    def test_current_attempt_is_deprecated_but_works(self) -> None:
        with pytest.warns(DeprecationWarning, match=r"current_step\(\)\.attempt"):
            current_attempt = aflow.current_attempt  # type: ignore[attr-defined]

        @aflow.task
        async def attempt(x: int) -> int:
            return int(current_attempt())

        assert anyio.run(lambda: aflow.run(attempt.s(0))) == 1


# --- a run's deadline is absolute: it does not restart on resume (item 18) -----------------


class TestDeadlineAcrossResume:
    async def test_a_deadline_that_passed_while_the_process_was_down_times_out_at_once(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        from .test_resume import ok

        async with aflow.Runtime(store=sqlite_url) as rt:
            run = await rt.submit(dw.abc, start=1, timeout=60)
            await run.result()  # (a run that ends in time: its deadline is on record)
            assert rt.store is not None
            options = json.loads((await rt.store.get_run(run.id)).options or "{}")
            assert options["deadline"] == pytest.approx(time.time() + 60, abs=5)
            # a run whose process died 59 s in, resumed 2 s later
            run_id = await _dead_run_like(rt, [ok("step_a", "2")], deadline=time.time() - 1)
            resumed = await rt.resume(run_id)
            with pytest.raises(aflow.RunTimeout):
                await resumed.result()
            assert resumed.status is aflow.RunStatus.REVERTED
            nodes = await rt.store.load_nodes(run_id)
        assert nodes["step_a"].state == "reverted"
        assert "step_b" not in nodes  # nothing ran after the deadline
        assert read(counts) == {"A": 1, "B": 1, "C": 1, "revert-A": 1}

    async def test_a_resumed_run_gets_what_is_left_of_its_deadline(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        from aflow.testing import FakeClock

        async with FakeClock() as clock, aflow.Runtime(store=sqlite_url, clock=clock) as rt:
            run_id = await _dead_run_like(
                rt, [], deadline=clock.wall() + 30, workflow=tw.plain_wait_with_deadline
            )
            resumed = await rt.resume(run_id)
            started = clock.now()
            with pytest.raises(aflow.RunTimeout):
                await resumed.result()
            assert clock.now() - started == pytest.approx(30, abs=0.5)  # not a fresh 60


async def _dead_run_like(
    rt: aflow.Runtime,
    nodes: list[aflow.stores.NodeRecord],
    *,
    deadline: float,
    workflow: Any = None,
) -> str:
    """A run a dead process left ``running``, with a stored deadline and timeout 60."""
    from .test_resume import dead_run

    run_id = await dead_run(
        rt.store,
        workflow or dw.abc,
        nodes,
        status="running",
        options={"timeout": 60, "deadline": deadline},
    )
    return run_id
