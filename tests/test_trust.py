"""Trustworthy runs (issue 14): what a hostile user found, each as a regression test.

Late cancels have their own property tests (tests/test_cancel_timing.py); the store's
own hardening is in tests/test_store_errors.py and tests/test_store_processes.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import anyio
import pytest

import aflow
from aflow.testing import capture_events

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
            with pytest.raises(aflow.errors.RunTimeout):
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
        with pytest.raises(aflow.errors.CompensationFailed) as info:
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

    async def test_a_helper_awaited_by_a_plain_body_finds_its_step(self) -> None:
        """A body that does not name current_step (started inline, its step not set up
        front) still gets it from a helper it awaits, and what it starts after that."""
        seen: list[str] = []

        @aflow.task
        async def plain(x: int) -> int:
            seen.append(await tw.key_of_this_step())
            await anyio.lowlevel.checkpoint()  # (it suspends: driven on by another frame)
            seen.append(await tw.key_of_this_step())
            seen.append(await anyio.to_thread.run_sync(tw.key_in_a_thread))
            return x

        async with aflow.Runtime() as rt:
            run = await rt.submit(aflow.group(plain.s(1), plain.s(2)))
            await run.result()
        assert sorted(seen) == [f"{run.id}/plain"] * 3 + [f"{run.id}/plain#2"] * 3

    async def test_a_thread_started_before_a_plain_body_asked_says_what_to_do(self) -> None:
        @aflow.task
        async def plain(x: int) -> str:
            return await anyio.to_thread.run_sync(tw.key_in_a_thread)

        with pytest.raises(RuntimeError, match=r"call aflow.current_step\(\) in the step's body"):
            await plain.s(1)

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
            with pytest.raises(aflow.errors.RunTimeout):
                await resumed.result()
            assert resumed.status is aflow.RunStatus.REVERTED
            nodes = await rt.store.load_nodes(run_id)
        assert nodes["step_a"].state == "reverted"
        assert "step_b" not in nodes  # nothing ran after the deadline
        assert read(counts) == {"A": 1, "B": 1, "C": 1, "revert-A": 1}

    async def test_a_resumed_run_gets_what_is_left_of_its_deadline(
        self, counts: pathlib.Path
    ) -> None:
        from aflow.testing import FakeClock

        # (the memory store: a FakeClock jumps while a thread works, as SQLite's do)
        async with FakeClock() as clock, aflow.Runtime(store="memory://", clock=clock) as rt:
            crafted = clock.now()
            run_id = await _dead_run_like(
                rt, [], deadline=clock.wall() + 30, workflow=tw.plain_wait_with_deadline
            )
            resumed = await rt.resume(run_id)
            with pytest.raises(aflow.errors.RunTimeout):
                await resumed.result()
            # not a fresh 60 s (virtual time may reach the heartbeat's next tick, 2.5 s on,
            # before this task runs again)
            assert 30 <= clock.now() - crafted <= 32.5


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


# --- idempotency keys, run ids and the handles a runtime gives out (items 12, 13, 14) -------


class TestIdempotencyKeysAndRunIds:
    async def test_a_key_reused_by_another_workflow_is_refused(
        self, store_url: str, counts: pathlib.Path
    ) -> None:
        async with aflow.Runtime(store=store_url) as rt:
            first = await rt.submit(dw.abc, start=1, idempotency_key="order-7")
            assert await first.result() == 104
            with pytest.raises(aflow.errors.IdempotencyConflict) as info:
                await rt.submit(tw.abc_again, start=1, idempotency_key="order-7")
        assert info.value.run_id == first.id
        assert info.value.key == "order-7"
        assert info.value.existing == "tests.durable_workflows:abc(start=1)"
        assert info.value.requested == "tests.trust_workflows:abc_again(start=1)"
        assert isinstance(info.value, ValueError)
        assert read(counts) == {"A": 1, "B": 1, "C": 1}  # the second ran nothing

    async def test_a_key_reused_with_other_parameters_is_refused(
        self, store_url: str, counts: pathlib.Path
    ) -> None:
        async with aflow.Runtime(store=store_url) as rt:
            first = await rt.submit(dw.abc, start=1, idempotency_key="order-8")
            await first.result()
            again = await rt.submit(dw.abc, start=1, idempotency_key="order-8")
            assert again.id == first.id  # the same work: the same run
            with pytest.raises(aflow.errors.IdempotencyConflict, match=r"abc\(start=2\)"):
                await rt.submit(dw.abc, start=2, idempotency_key="order-8")
        async with aflow.Runtime(store=store_url) as rt:  # a later process: the same
            with pytest.raises(aflow.errors.IdempotencyConflict):
                await rt.submit(tw.abc_again, start=1, idempotency_key="order-8")

    async def test_without_a_store_a_key_names_the_same_work_too(
        self, counts: pathlib.Path
    ) -> None:
        async with aflow.Runtime() as rt:
            first = await rt.submit(dw.abc, start=1, idempotency_key="k")
            assert await rt.submit(dw.abc, start=1, idempotency_key="k") is first
            with pytest.raises(aflow.errors.IdempotencyConflict):
                await rt.submit(dw.abc, start=2, idempotency_key="k")
            with pytest.raises(aflow.errors.IdempotencyConflict):
                await rt.submit(dw.step_a.s(1), idempotency_key="k")
            await first.result()

    async def test_a_finished_run_found_by_its_key_keeps_the_runtimes_limits(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        async with aflow.Runtime(store=sqlite_url, limits={"q": 2}) as rt:
            first = await rt.submit(tw.limited_one, start=5, idempotency_key="lim")
            assert await first.result() == 5
        async with aflow.Runtime(store=sqlite_url, limits={"q": 2}) as rt:
            again = await rt.submit(tw.limited_one, start=5, idempotency_key="lim")
            assert again.id == first.id
            assert await again.result() == 5
            assert again.status is aflow.RunStatus.SUCCEEDED
        assert read(counts) == {"limited": 1}

    async def test_a_run_id_that_exists_is_one_typed_error_here_and_in_the_store(
        self, store_url: str, counts: pathlib.Path
    ) -> None:
        async with aflow.Runtime(store=store_url) as rt:
            run = await rt.submit(dw.abc, start=1, run_id="order-run-1")
            await run.result()
            with pytest.raises(aflow.errors.RunExists) as here:
                await rt.submit(dw.abc, start=1, run_id="order-run-1")
        async with aflow.Runtime(store=store_url) as rt:
            with pytest.raises(aflow.errors.RunExists) as there:
                await rt.submit(dw.abc, start=1, run_id="order-run-1")
            assert rt.store is not None
            assert len(await rt.store.list_runs()) == 1
        for error in (here.value, there.value):
            assert error.run_id == "order-run-1"
            assert isinstance(error, ValueError)
        assert read(counts) == {"A": 1, "B": 1, "C": 1}


# --- bad parameters name the workflow and the parameter (item 9) ---------------------------


class TestBadParameters:
    async def test_an_unknown_or_missing_parameter_names_the_workflow(
        self, sqlite_url: str
    ) -> None:
        async with aflow.Runtime(store=sqlite_url) as rt:
            with pytest.raises(aflow.errors.SignatureError) as unknown:
                await rt.submit(dw.abc, start=1, strat=2)
            with pytest.raises(aflow.errors.SignatureError) as missing:
                await rt.submit(dw.abc)
            assert rt.store is not None
            assert await rt.store.list_runs() == []
        assert unknown.value.argument == "strat"
        assert str(unknown.value) == (
            "parameter 'strat' of workflow 'tests.durable_workflows:abc': got an unexpected "
            "keyword argument 'strat' (its parameters: start)"
        )
        assert missing.value.argument == "start"
        assert "workflow 'tests.durable_workflows:abc'" in str(missing.value)

    async def test_a_parameter_that_cannot_be_stored_is_named(self, sqlite_url: str) -> None:
        async with aflow.Runtime(store=sqlite_url) as rt:
            with pytest.raises(aflow.errors.SerializationError) as info:
                await rt.submit(tw.abc_again, start={"when": object()})
        assert info.value.task == "tests.trust_workflows:abc_again"
        assert info.value.path == "parameter 'start'['when']"
        assert str(info.value).startswith(
            "workflow 'tests.trust_workflows:abc_again': cannot serialise a builtins.object "
            "at parameter 'start'['when']"
        )

    async def test_a_type_error_inside_the_builder_is_left_as_it_is(self) -> None:
        @aflow.workflow
        def broken(n: int) -> Any:
            return len(n)  # type: ignore[arg-type]

        with pytest.raises(TypeError, match="has no len") as info:
            await aflow.run(broken, params={"n": 1})
        assert not isinstance(info.value, aflow.errors.SignatureError)


# --- a stored workflow path is data: resume and recovery import nothing it names (item 7) --

EVIL = """
import pathlib, aflow
pathlib.Path(__file__).with_name("imported.marker").write_text("top-level code ran")

@aflow.task
async def noop(x: int) -> int:
    return x

@aflow.workflow
def wf(start: int):
    return noop.s(start)
"""


class TestStoredWorkflowPaths:
    @pytest.fixture
    def evil(self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
        """A module on sys.path whose import leaves a marker file: it must never appear."""
        name = f"evil_{tmp_path.name.replace('-', '_')}"
        (tmp_path / f"{name}.py").write_text(EVIL)
        monkeypatch.syspath_prepend(str(tmp_path))
        return tmp_path / f"{name}.py"

    async def _crafted(self, url: str, path: str) -> str:
        """A run row naming ``path``, left 'running' by a dead process."""
        from aflow.stores import RunRecord

        store = aflow.stores.open_store(url)
        await store.open()
        try:
            now = time.time()
            record = RunRecord(
                "crafted",
                path,
                '{"start": 1}',
                "0" * 32,
                "running",
                None,
                now,
                now,
                owner="gone:1:x",
                heartbeat=now - 5,
            )
            await store.create_run(record)
        finally:
            await store.close()
        return "crafted"

    @pytest.mark.parametrize(
        "path",
        ["{module}:wf", "os:system", "{module}:nothing_here", "subprocess:run"],
    )
    async def test_recovery_and_resume_import_nothing_a_row_names(
        self, sqlite_url: str, evil: pathlib.Path, path: str
    ) -> None:
        path = path.format(module=evil.stem)
        run_id = await self._crafted(sqlite_url, path)
        with capture_events() as logged:
            async with aflow.Runtime(store=sqlite_url, recover=True) as rt:
                assert rt.runs() == []
                with pytest.raises(aflow.errors.ResumeMismatch, match="not registered"):
                    await rt.resume(run_id)
                assert rt.store is not None
                assert (await rt.store.get_run(run_id)).status == "running"  # left alone
        assert not evil.with_name("imported.marker").exists()
        assert any(e.get("event") == "aflow_recover_skipped" for e in logged)

    async def test_a_module_the_application_allows_is_imported_and_resumed(
        self, sqlite_url: str, evil: pathlib.Path
    ) -> None:
        run_id = await self._crafted(sqlite_url, f"{evil.stem}:wf")
        async with aflow.Runtime(store=sqlite_url, workflows=[evil.stem]) as rt:
            assert evil.with_name("imported.marker").exists()  # the application asked for it
            with pytest.raises(aflow.errors.ResumeMismatch, match="different graph"):
                await rt.resume(run_id)  # (the crafted fingerprint does not match)

    async def test_workflows_narrows_what_a_runtime_resumes(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        from .test_resume import dead_run

        async with aflow.Runtime(store=sqlite_url, workflows=[tw.abc_again]) as rt:
            run_id = await dead_run(rt.store, dw.abc, [], status="running")
            with pytest.raises(aflow.errors.ResumeMismatch, match="not among this runtime"):
                await rt.resume(run_id)
            allowed = await dead_run(rt.store, tw.abc_again, [], status="running")
            assert await (await rt.resume(allowed)).result() == 104
        with pytest.raises(TypeError, match="workflows= takes"):
            aflow.Runtime(workflows=[dw.step_a])  # type: ignore[list-item]


# --- shutting down lets go of durable runs, reverting nothing (item 11) --------------------

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _started(name: str) -> tuple[anyio.Event, Any]:
    """An event set once task ``name`` has started, and the listener that sets it."""
    event = anyio.Event()

    def listen(e: aflow.Event) -> None:
        if e.name == "task_started" and e.node == name:
            event.set()

    return event, listen


class TestShutdownReleasesDurableRuns:
    async def _assert_released_then_taken_up(
        self, url: str, run_id: str, counts: pathlib.Path
    ) -> None:
        store = aflow.stores.open_store(url)
        await store.open()
        try:
            record = await store.get_run(run_id)
            nodes = await store.load_nodes(run_id)
        finally:
            await store.close()
        assert (record.status, record.owner, record.heartbeat) == ("running", None, None)
        assert nodes["step_a"].state == "succeeded"  # nothing reverted
        assert nodes["plain_wait"].state == "cancelled"
        assert nodes["plain_wait"].error == (
            "interrupted: its runtime shut down (it runs again when the run resumes)"
        )
        assert read(counts) == {"A": 1, "P": 1}
        # a runtime with a long lease takes it up at once: there is no lease to wait for
        async with aflow.Runtime(store=url, lease=3600) as rt:
            taken = await rt.resume(run_id)
            async for event in taken.events():  # (subscribed before the run goes on)
                if event.name == "task_started" and event.node == "plain_wait":
                    break
            await taken.cancel()
        assert read(counts) == {"A": 1, "P": 2, "revert-A": 1}  # P again: at-least-once

    async def test_after_the_shutdown_timeout(self, sqlite_url: str, counts: pathlib.Path) -> None:
        event, listen = _started("plain_wait")
        async with aflow.Runtime(store=sqlite_url, shutdown_timeout=0.01) as rt:
            run = await rt.submit(tw.a_then_plain_wait, start=1, on_event=listen)
            await event.wait()
        with pytest.raises(aflow.errors.RunReleased):
            await run.result()
        assert isinstance(run._error, aflow.errors.RunCancelled)
        assert run.status is aflow.RunStatus.SUSPENDED
        await self._assert_released_then_taken_up(sqlite_url, run.id, counts)

    async def test_when_the_lifespan_is_cancelled(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        """A rolling deploy cancels the service's lifespan task: the runs are let go of,
        not cancelled and unwound."""
        event, listen = _started("plain_wait")
        found: list[aflow.Run[Any]] = []
        with anyio.CancelScope() as lifespan:
            async with aflow.Runtime(store=sqlite_url) as rt:
                found.append(await rt.submit(tw.a_then_plain_wait, start=1, on_event=listen))
                await event.wait()
                lifespan.cancel()
                await anyio.sleep_forever()
        (run,) = found
        with pytest.raises(aflow.errors.RunReleased):
            await run.result()
        await self._assert_released_then_taken_up(sqlite_url, run.id, counts)

    async def test_on_shutdown_cancel_unwinds_as_asked(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        event, listen = _started("plain_wait")
        async with aflow.Runtime(
            store=sqlite_url, shutdown_timeout=0.01, on_shutdown="cancel"
        ) as rt:
            run = await rt.submit(tw.a_then_plain_wait, start=1, on_event=listen)
            await event.wait()
        with pytest.raises(aflow.errors.RunCancelled) as info:
            await run.result()
        assert not isinstance(info.value, aflow.errors.RunReleased)
        assert read(counts) == {"A": 1, "P": 1, "revert-A": 1}
        with pytest.raises(ValueError, match="needs a store"):
            aflow.Runtime(on_shutdown="release")
        with pytest.raises(ValueError, match="'release' or 'cancel'"):
            aflow.Runtime(on_shutdown="later")

    @pytest.mark.slow
    def test_a_process_stopped_by_sigterm_hands_its_run_over_at_once(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        """A real rolling deploy: the old process gets SIGTERM and lets its run go; a new
        one (whose lease is an hour) takes it up at once and finishes it."""
        env = {**os.environ, "AFLOW_COUNTS": str(counts), "AFLOW_HANG": "B"}
        with subprocess.Popen(
            [sys.executable, "-m", "tests.trust_process", "owner", sqlite_url, "abc_again", "3600"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as old:
            assert old.stdout is not None
            run_id = old.stdout.readline().strip()
            assert old.stdout.readline().strip() == "hanging B"
            old.send_signal(signal.SIGTERM)
            out, err = old.communicate(timeout=60)
        assert old.returncode == 0, err
        assert out.strip() == "stopped"
        new = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.trust_process",
                "recoverer",
                sqlite_url,
                run_id,
                "3600",
                "5",
            ],
            cwd=ROOT,
            env={**env, "AFLOW_HANG": ""},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert new.returncode == 0, new.stderr
        assert new.stdout.split("\n")[1:3] == [f"took {run_id}", "ended succeeded"]
        assert read(counts) == {"A": 1, "B": 2, "C": 1}  # B again (it was cut short), no revert

    def test_keyboard_interrupt_in_a_durable_step_leaves_the_run_resumable(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        code = (
            "import aflow; from tests import trust_workflows as tw\n"
            f"aflow.run_sync(tw.a_then_interrupted, params={{'start': 1}}, store={sqlite_url!r})"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "AFLOW_COUNTS": str(counts)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "KeyboardInterrupt" in done.stderr
        assert read(counts) == {"A": 1, "interrupts": 1}  # nothing reverted

        async def check() -> None:
            async with aflow.Runtime(store=sqlite_url) as rt:
                assert rt.store is not None
                (record,) = await rt.store.list_runs()
                nodes = await rt.store.load_nodes(record.run_id)
                assert record.status == "running"  # resumable, not final
                assert nodes["interrupts"].state == "cancelled"
                assert nodes["interrupts"].error == (
                    "interrupted: KeyboardInterrupt() was raised while it ran"
                )
                assert await (await rt.resume(record.run_id)).result() == 2

        anyio.run(check)
        assert read(counts) == {"A": 1, "interrupts": 2}


# --- a long-lived runtime keeps recovering: within the lease and one tick (item 4) ---------


class TestRecoveryKeepsLooking:
    async def test_a_run_whose_owner_dies_later_is_taken_up_within_lease_and_a_tick(
        self, counts: pathlib.Path
    ) -> None:
        """Virtual time (the runtime's clock): the dead owner's lease runs out 5 s after
        the runtime started; it takes the run up at its first look after that."""
        from aflow.testing import FakeClock

        from .test_resume import dead_run

        lease = 2.0
        async with (
            FakeClock() as clock,
            aflow.Runtime(store="memory://", recover=True, lease=lease, clock=clock) as rt,
        ):
            assert rt.runs() == []
            start = clock.now()
            # its owner renewed its lease just before it died: 5 s left
            run_id = await dead_run(
                rt.store, tw.a_then_plain_wait, [], status="running", lease_left=5.0
            )
            while not any(run.id == run_id for run in rt.runs()):
                await clock.sleep(0.01)
            taken_after = clock.now() - start
            assert 5.0 <= taken_after <= 5.0 + lease / 4 + 0.01  # the lease, plus one tick
            await rt.get(run_id).cancel()

    @pytest.mark.slow
    def test_a_live_process_takes_over_the_run_of_one_killed_beside_it(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        env = {**os.environ, "AFLOW_COUNTS": str(counts)}
        run = [sys.executable, "-m", "tests.trust_process"]
        with subprocess.Popen(
            [*run, "owner", sqlite_url, "abc_again", "0.5"],
            cwd=ROOT,
            env={**env, "AFLOW_HANG": "B"},
            stdout=subprocess.PIPE,
            text=True,
        ) as owner:
            assert owner.stdout is not None
            run_id = owner.stdout.readline().strip()
            assert owner.stdout.readline().strip() == "hanging B"
            with subprocess.Popen(  # started before the owner dies: recovery at start-up
                [*run, "recoverer", sqlite_url, run_id, "0.5", "5"],  # finds nothing
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ) as other:
                assert other.stdout is not None
                assert other.stdout.readline().strip() == "ready"
                owner.kill()
                owner.wait(timeout=30)
                out, err = other.communicate(timeout=60)
        assert other.returncode == 0, err
        assert out.split() == ["took", run_id, "ended", "succeeded"]
        assert read(counts) == {"A": 1, "B": 2, "C": 1}


# --- a run that keeps killing its processes is parked (item 16) ----------------------------


@pytest.mark.slow
def test_a_poison_run_is_parked_after_max_recoveries_and_resumable_by_hand(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    env = {**os.environ, "AFLOW_COUNTS": str(counts), "AFLOW_POISON": "1"}
    run = [sys.executable, "-m", "tests.trust_process"]
    first = subprocess.run(
        [*run, "owner", sqlite_url, "poison", "0.2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert first.returncode == -signal.SIGKILL
    run_id = first.stdout.split()[0]
    outcomes = []
    for _ in range(3):  # max_recoveries=2: two recoveries die with it, the third parks it
        done = subprocess.run(
            [*run, "recoverer", sqlite_url, run_id, "0.2", "2"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        outcomes.append((done.returncode, done.stdout.splitlines()[-1]))
    assert outcomes == [
        (-signal.SIGKILL, "poisoned"),
        (-signal.SIGKILL, "poisoned"),
        (0, "ended parked"),
    ]
    assert read(counts) == {"A": 1, "poison": 3}
    cli = [sys.executable, "-m", "aflow.cli", "--store", sqlite_url]
    listed = subprocess.run(
        [*cli, "runs"],
        cwd=ROOT,
        env={**env, "COLUMNS": "200"},  # (rich wraps its table to the terminal's width)
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "parked (3 recoveries)" in listed.stdout
    resumed = subprocess.run(  # by hand, once the cause is fixed (no poison any more)
        [*cli, "resume", run_id, "--quiet", "--allow-module", "tests.trust_workflows"],
        cwd=ROOT,
        env={k: v for k, v in env.items() if k != "AFLOW_POISON"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "2"
    assert read(counts) == {"A": 1, "poison": 4}
